//! Opening connections and creating or migrating the schema.
//!
//! Every connection gets the same pragmas (busy timeout, `synchronous = FULL`, foreign keys);
//! the writer connection additionally switches the file to WAL and brings the schema to
//! [`SCHEMA_VERSION`] inside one `BEGIN IMMEDIATE` transaction, so two processes opening a fresh
//! file at the same moment cannot both create it.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::threads::Context;
use crate::{StoreError, StoreResult};

/// The schema this build reads and writes, stored in `PRAGMA user_version`.
pub(super) const SCHEMA_VERSION: i64 = 9;

/// `PRAGMA application_id` of a palaver database ("plvr"), so that pointing `path` at some
/// other application's SQLite file fails on open instead of growing palaver tables inside it.
pub(super) const APPLICATION_ID: i64 = 0x706c_7672;

/// Statements cached per connection. The store issues about 40 distinct statements; a few spare
/// slots keep the cache from thrashing if that grows.
const STATEMENT_CACHE_CAPACITY: usize = 64;

/// Version 1 of the schema; a fresh file gets it and then every migration. See the module
/// documentation of `sqlite` for the reasons behind each table and index.
const SCHEMA_V1: &str = "
CREATE TABLE users (
    uid           INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    token_epoch   INTEGER NOT NULL DEFAULT 0,
    created_ms    INTEGER NOT NULL
);

CREATE TABLE user_logs (
    uid   INTEGER PRIMARY KEY REFERENCES users (uid),
    head  INTEGER NOT NULL DEFAULT 0,
    floor INTEGER NOT NULL DEFAULT 0,
    CHECK (0 <= floor AND floor <= head)
);

CREATE TABLE user_log (
    uid    INTEGER NOT NULL,
    cursor INTEGER NOT NULL,
    rid    INTEGER NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (uid, cursor)
) WITHOUT ROWID;

CREATE TABLE rooms (
    rid        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('group', 'direct')),
    private    INTEGER NOT NULL CHECK (private IN (0, 1)),
    created_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    members    INTEGER NOT NULL DEFAULT 0 CHECK (members >= 0),
    epoch      INTEGER NOT NULL DEFAULT 0,
    owner      TEXT
);

CREATE TABLE members (
    rid        INTEGER NOT NULL REFERENCES rooms (rid),
    uid        INTEGER NOT NULL REFERENCES users (uid),
    joined_seq INTEGER NOT NULL,
    read_seq   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (rid, uid)
) WITHOUT ROWID;

CREATE INDEX members_by_user ON members (uid, rid);

CREATE TABLE entries (
    eid     INTEGER PRIMARY KEY,
    rid     INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    id      TEXT NOT NULL,
    sender  TEXT NOT NULL,
    kind    TEXT NOT NULL CHECK (kind IN ('text', 'join', 'leave')),
    subject TEXT,
    body    TEXT NOT NULL,
    ts      INTEGER NOT NULL
);

CREATE UNIQUE INDEX entries_by_seq ON entries (rid, seq);

CREATE UNIQUE INDEX entries_by_client_id ON entries (rid, sender, id) WHERE kind = 'text';
";

/// Migrations from version `n` to `n + 1`, indexed by `n - 1`. A new version appends its
/// `ALTER`/`CREATE` script here and bumps [`SCHEMA_VERSION`]; `migrate` applies every step in
/// the same transaction.
const MIGRATIONS: &[&str] = &[
    // 1 → 2: large rooms. `large_since` is the seq of a room's first entry kept in the room log
    // only (NULL while the room fans out on write). Existing rooms keep fanning out.
    "ALTER TABLE rooms ADD COLUMN large_since INTEGER CHECK (large_since >= 1);",
    // 2 → 3: presence notes, the status text a user set last and when, so it outlives every
    // node's memory. A row only for users who ever set one.
    "CREATE TABLE presence_notes (
        uid    INTEGER PRIMARY KEY REFERENCES users (uid),
        status TEXT,
        set_ms INTEGER NOT NULL
    );",
    // 3 → 4: messages that change, and moderation. New entry kinds (edit, delete, react,
    // unreact; role, kick, ban, unban, mute) need a new CHECK, which SQLite can only get by
    // rebuilding the table. Entries gain the message they act on (`target`), the one they reply
    // to, their mentions (names, one per line), when they were last edited, whether they were
    // deleted, and until when a ban or mute holds. Client ids are deduplicated for every kind a
    // client sends. Reactions and unread mentions get tables of their own, keyed for their one
    // lookup each (a message's reactions; a user's mentions in a room after a seq). Members get
    // a role (the creator of a group room owns it) and a mute; bans are kept per room and user,
    // members or not. Users keep the users they blocked.
    "CREATE TABLE entries_v4 (
        eid       INTEGER PRIMARY KEY,
        rid       INTEGER NOT NULL,
        seq       INTEGER NOT NULL,
        id        TEXT NOT NULL,
        sender    TEXT NOT NULL,
        kind      TEXT NOT NULL CHECK (kind IN ('text', 'join', 'leave', 'edit', 'delete', 'react', 'unreact',
                                                'role', 'kick', 'ban', 'unban', 'mute')),
        subject   TEXT,
        body      TEXT NOT NULL,
        ts        INTEGER NOT NULL,
        target    INTEGER,
        reply_to  INTEGER,
        mentions  TEXT,
        edited_ts INTEGER,
        deleted   INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
        until     INTEGER
    );
    INSERT INTO entries_v4 (eid, rid, seq, id, sender, kind, subject, body, ts)
        SELECT eid, rid, seq, id, sender, kind, subject, body, ts FROM entries;
    DROP TABLE entries;
    ALTER TABLE entries_v4 RENAME TO entries;
    CREATE UNIQUE INDEX entries_by_seq ON entries (rid, seq);
    CREATE UNIQUE INDEX entries_by_client_id ON entries (rid, sender, id)
        WHERE kind IN ('text', 'edit', 'delete', 'react', 'unreact');
    CREATE INDEX entries_by_target ON entries (rid, target) WHERE target IS NOT NULL;
    CREATE INDEX entries_by_reply ON entries (rid, reply_to, seq) WHERE reply_to IS NOT NULL;
    CREATE TABLE reactions (
        rid      INTEGER NOT NULL,
        seq      INTEGER NOT NULL,
        reaction TEXT NOT NULL,
        uid      INTEGER NOT NULL,
        PRIMARY KEY (rid, seq, reaction, uid)
    ) WITHOUT ROWID;
    CREATE TABLE mentions (
        uid INTEGER NOT NULL,
        rid INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (uid, rid, seq)
    ) WITHOUT ROWID;
    ALTER TABLE members ADD COLUMN role TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member'));
    ALTER TABLE members ADD COLUMN muted_until INTEGER NOT NULL DEFAULT 0;
    UPDATE members SET role = 'owner' WHERE EXISTS
        (SELECT 1 FROM rooms r JOIN users u ON u.name = r.created_by
         WHERE r.rid = members.rid AND u.uid = members.uid AND r.kind = 'group');
    CREATE TABLE blocks (
        uid     INTEGER NOT NULL REFERENCES users (uid),
        blocked INTEGER NOT NULL REFERENCES users (uid),
        PRIMARY KEY (uid, blocked)
    ) WITHOUT ROWID;
    CREATE TABLE bans (
        rid    INTEGER NOT NULL,
        uid    INTEGER NOT NULL,
        until  INTEGER,
        reason TEXT NOT NULL,
        PRIMARY KEY (rid, uid)
    ) WITHOUT ROWID;",
    // 4 → 5: room settings and deleted accounts. Rooms gain a topic and who may post and invite; a `settings` entry
    // keeps all of a room's settings after its change (JSON of the protocol's `RoomSettings`,
    // read back as they were written). The new kind needs the entries table rebuilt once more
    // for its CHECK; this rebuild drops the CHECK on kinds instead, so the next new kind costs
    // no rebuild: every kind is validated where it is read (`entry_kind_column`). A deleted
    // account keeps its `users` row, marked `deleted_ms` (see `erase`).
    "CREATE TABLE entries_v5 (
        eid       INTEGER PRIMARY KEY,
        rid       INTEGER NOT NULL,
        seq       INTEGER NOT NULL,
        id        TEXT NOT NULL,
        sender    TEXT NOT NULL,
        kind      TEXT NOT NULL,
        subject   TEXT,
        body      TEXT NOT NULL,
        ts        INTEGER NOT NULL,
        target    INTEGER,
        reply_to  INTEGER,
        mentions  TEXT,
        edited_ts INTEGER,
        deleted   INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
        until     INTEGER,
        settings  TEXT
    );
    INSERT INTO entries_v5 (eid, rid, seq, id, sender, kind, subject, body, ts, target, reply_to, mentions,
                            edited_ts, deleted, until)
        SELECT eid, rid, seq, id, sender, kind, subject, body, ts, target, reply_to, mentions,
               edited_ts, deleted, until FROM entries;
    DROP TABLE entries;
    ALTER TABLE entries_v5 RENAME TO entries;
    CREATE UNIQUE INDEX entries_by_seq ON entries (rid, seq);
    CREATE UNIQUE INDEX entries_by_client_id ON entries (rid, sender, id)
        WHERE kind IN ('text', 'edit', 'delete', 'react', 'unreact');
    CREATE INDEX entries_by_target ON entries (rid, target) WHERE target IS NOT NULL;
    CREATE INDEX entries_by_reply ON entries (rid, reply_to, seq) WHERE reply_to IS NOT NULL;
    ALTER TABLE rooms ADD COLUMN topic TEXT NOT NULL DEFAULT '';
    ALTER TABLE rooms ADD COLUMN who_may_post TEXT NOT NULL DEFAULT 'members'
        CHECK (who_may_post IN ('members', 'moderators'));
    ALTER TABLE rooms ADD COLUMN who_may_invite TEXT NOT NULL DEFAULT 'members'
        CHECK (who_may_invite IN ('members', 'moderators'));
    ALTER TABLE users ADD COLUMN deleted_ms INTEGER;",
    // 5 → 6: keys of the server API (the secret's SHA-256 only; revoked keys stay listed), and
    // the devices users register for push notifications, by user.
    "CREATE TABLE devices (
        uid        INTEGER NOT NULL REFERENCES users (uid),
        id         TEXT NOT NULL,
        platform   TEXT NOT NULL CHECK (platform IN ('fcm', 'apns', 'webpush', 'webhook')),
        app        TEXT NOT NULL,
        locale     TEXT NOT NULL,
        token      TEXT NOT NULL,
        p256dh     TEXT NOT NULL,
        auth       TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (uid, id)
    ) WITHOUT ROWID;
    CREATE TABLE api_keys (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL,
        scopes        TEXT NOT NULL,
        secret_sha256 BLOB NOT NULL,
        created_ms    INTEGER NOT NULL,
        revoked_ms    INTEGER
    ) WITHOUT ROWID;",
    // 6 → 7: webhook endpoints, their outboxes (a pointer to an entry per subscribed endpoint,
    // written with the entry) and leases (which node delivers them); each member's own
    // notification level and silence in a room.
    "CREATE TABLE webhooks (
        id         TEXT PRIMARY KEY,
        url        TEXT NOT NULL,
        events     INTEGER NOT NULL,
        secret     TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        failures   INTEGER NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        dead_since INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE webhook_outbox (
        hook   TEXT NOT NULL,
        stream TEXT NOT NULL,
        seq    INTEGER NOT NULL,
        event  INTEGER NOT NULL,
        PRIMARY KEY (hook, stream, seq)
    ) WITHOUT ROWID;
    CREATE TABLE leases (
        name     TEXT PRIMARY KEY,
        holder   TEXT NOT NULL,
        until_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    ALTER TABLE members ADD COLUMN notify TEXT NOT NULL DEFAULT 'all' CHECK (notify IN ('all', 'mentions', 'none'));
    ALTER TABLE members ADD COLUMN notify_muted_until INTEGER;",
    // 7 → 8: push notifications. The queue is the webhook outbox under the id `push`;
    // `push_told` remembers what a push told a user of a room, `push_clears` what a read owes.
    "CREATE TABLE push_told (
        user TEXT NOT NULL,
        room TEXT NOT NULL,
        seq  INTEGER NOT NULL,
        PRIMARY KEY (user, room)
    ) WITHOUT ROWID;
    CREATE TABLE push_clears (
        user     TEXT NOT NULL,
        room     TEXT NOT NULL,
        read_seq INTEGER NOT NULL,
        PRIMARY KEY (user, room)
    ) WITHOUT ROWID;
    ALTER TABLE devices ADD COLUMN preview INTEGER NOT NULL DEFAULT 0 CHECK (preview IN (0, 1));",
    // 8 → 9: media attachments. One `media` row per upload (see `crate::media`), keyed by its
    // random id, with what its state needs: the room and seq it is attached to. Indexed for
    // its three questions besides the id: an owner's usage (covering: owner, state, size), the
    // unattached uploads by age (what the collector dooms) and the doomed ones by id (what it
    // deletes). Entries gain the attachments they carry, as JSON (NULL for none).
    "CREATE TABLE media (
        id           TEXT PRIMARY KEY,
        owner        TEXT NOT NULL,
        name         TEXT NOT NULL,
        content_type TEXT NOT NULL,
        size         INTEGER NOT NULL CHECK (size >= 0),
        sha256       TEXT NOT NULL,
        width        INTEGER,
        height       INTEGER,
        thumb_width  INTEGER,
        thumb_height INTEGER,
        created_ms   INTEGER NOT NULL,
        state        TEXT NOT NULL CHECK (state IN ('uploading', 'ready', 'attached', 'doomed')),
        room         TEXT,
        seq          INTEGER,
        CHECK ((state = 'attached') = (room IS NOT NULL AND seq IS NOT NULL))
    ) WITHOUT ROWID;
    CREATE INDEX media_by_owner ON media (owner, state, size);
    CREATE INDEX media_unattached ON media (created_ms) WHERE state IN ('uploading', 'ready');
    CREATE INDEX media_doomed ON media (id) WHERE state = 'doomed';
    ALTER TABLE entries ADD COLUMN attachments TEXT;",
];

/// Open a connection with palaver's per-connection settings.
pub(super) fn open_connection(path: &Path, busy_timeout: Duration, read_only: bool) -> StoreResult<Connection> {
    // NO_MUTEX: each connection lives on exactly one thread, so SQLite's own per-connection
    // mutex would only cost time.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Backend(format!("sqlite: open `{}`: {e}", path.display())))?;
    // Wait for another process's write transaction instead of failing at once. Set before any
    // other statement, since even reading the schema can meet a lock.
    conn.busy_timeout(busy_timeout).ctx("set busy timeout")?;
    // FULL: in WAL mode, NORMAL already survives a process crash (kill -9), but after a power
    // loss or kernel panic the last transactions may roll back because the WAL is not synced at
    // each commit. We ack a message only after commit and promise it survives power loss, so
    // every commit syncs the WAL. Group commit pays that fsync once per batch, not per message.
    conn.pragma_update(None, "synchronous", "FULL").ctx("set synchronous = FULL")?;
    // Membership rows reference users and rooms; the hot, many-row tables (entries, user_log)
    // carry no foreign keys because only this module writes them, from ids it just read in the
    // same transaction, and a check per fanned-out pointer would cost a lookup each.
    conn.pragma_update(None, "foreign_keys", "ON").ctx("enable foreign keys")?;
    // Statement journals (one per SAVEPOINT in a group commit) and temporary b-trees stay in
    // memory: on disk they were 15% of the fan-out profile (docs/BENCHMARKS.md), and they are
    // never needed after a crash, so nothing durable depends on them.
    conn.pragma_update(None, "temp_store", "MEMORY").ctx("set temp_store = MEMORY")?;
    // A deleted message's body must be gone from the file, not merely unreachable: SQLite then
    // zeroes the space a row gave up instead of leaving the old bytes in free space.
    conn.pragma_update(None, "secure_delete", "ON").ctx("set secure_delete = ON")?;
    if read_only {
        // Reader connections must never write: a bug that tried would otherwise bypass the
        // writer's group commit and take the write lock behind its back.
        conn.pragma_update(None, "query_only", "ON").ctx("set query_only")?;
    }
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    Ok(conn)
}

/// Switch the file to WAL (a persistent property of the file) and bring the schema to
/// [`SCHEMA_VERSION`]. Runs on the writer connection before any reader opens.
pub(super) fn prepare_database(conn: &Connection, busy_timeout: Duration) -> StoreResult<()> {
    enable_wal(conn, busy_timeout)?;
    conn.execute_batch("BEGIN IMMEDIATE").ctx("begin schema transaction")?;
    match migrate(conn) {
        Ok(()) => conn.execute_batch("COMMIT").ctx("commit schema"),
        Err(e) => {
            // The error being reported matters more than a failed rollback, which SQLite
            // completes anyway when the connection closes.
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// `PRAGMA journal_mode = WAL`. Changing the journal mode needs a lock that another process
/// opening the same fresh file may hold, and SQLite may report `SQLITE_BUSY` for it without
/// consulting the busy handler, so retry until the busy timeout has passed.
fn enable_wal(conn: &Connection, busy_timeout: Duration) -> StoreResult<()> {
    let deadline = Instant::now() + busy_timeout;
    loop {
        let result = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0));
        match result {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => {
                return Err(StoreError::Backend(format!(
                    "sqlite: could not switch to WAL mode (journal mode is `{mode}`); the store needs a file on a \
                     local file system"
                )))
            }
            Err(e)
                if matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
                    && Instant::now() < deadline =>
            {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).ctx("switch to WAL mode"),
        }
    }
}

/// Check the file is ours and at a version we understand, then create or migrate. Runs inside
/// the caller's `BEGIN IMMEDIATE`, so it sees a stable file.
fn migrate(conn: &Connection) -> StoreResult<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).ctx("read user_version")?;
    let application_id: i64 =
        conn.pragma_query_value(None, "application_id", |row| row.get(0)).ctx("read application_id")?;
    if application_id != 0 && application_id != APPLICATION_ID {
        return Err(StoreError::Backend(format!(
            "sqlite: the database belongs to another application (application_id {application_id:#x}, palaver's is \
             {APPLICATION_ID:#x}); refusing to open it"
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "sqlite: database schema version {version} is newer than this build of palaver supports \
             ({SCHEMA_VERSION}); run a newer palaver, or restore a backup made before the upgrade"
        )));
    }
    if version == 0 {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema WHERE type = 'table'", [], |row| row.get(0))
            .ctx("inspect schema")?;
        if tables > 0 {
            return Err(StoreError::Backend(
                "sqlite: the database has tables but no palaver schema version; refusing to open a file palaver \
                 did not create"
                    .into(),
            ));
        }
        conn.execute_batch(SCHEMA_V1).ctx("create schema")?;
    }
    for step in version.max(1)..SCHEMA_VERSION {
        let index = usize::try_from(step - 1).map_err(|_| StoreError::Backend("sqlite: bad schema step".into()))?;
        let script = MIGRATIONS.get(index).ok_or_else(|| {
            StoreError::Backend(format!("sqlite: no migration from schema version {step} to {}", step + 1))
        })?;
        conn.execute_batch(script).ctx("migrate schema")?;
    }
    conn.pragma_update(None, "application_id", APPLICATION_ID).ctx("write application_id")?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION).ctx("write user_version")?;
    Ok(())
}
