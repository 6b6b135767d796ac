//! The embedded store backend: one SQLite database file (bundled SQLite, WAL mode) that every
//! node process on a host may share.
//!
//! The node opens a [`SqliteStore`] at start-up and hands it to the actors as an
//! `Arc<dyn Store>`. It owns one writer thread and a few reader threads (see `threads`); no
//! SQLite call runs on the node's async runtime, with one deliberate exception: the rooms'
//! own one-thread runtime commits the rooms' appends itself when the writer connection is free
//! (`Store::append_batch_on_committing_thread`, see `inline`).
//!
//! # Schema (version 9, kept in `PRAGMA user_version`)
//!
//! One table per concept. Names (user names, room ids) are interned to integer ids once, in
//! `users` and `rooms`, so the tables that grow with traffic (`entries`, `user_log`) carry small
//! integer keys rather than repeated strings: a fan-out to 100 members writes 100 rows of four
//! integers each.
//!
//! | table       | key                                         | holds                                  |
//! |-------------|---------------------------------------------|----------------------------------------|
//! | `users`     | `uid` (rowid); `name` unique                | password hash, token epoch             |
//! | `user_logs` | `uid` (rowid)                               | `head` and `floor` of the user's log   |
//! | `user_log`  | (`uid`, `cursor`), WITHOUT ROWID            | pointer (`rid`, `seq`) to an entry     |
//! | `rooms`     | `rid` (rowid); `id` unique                  | name, kind, `last_seq`, member count, owner, epoch, `large_since`, topic, `who_may_post`, `who_may_invite` |
//! | `members`   | (`rid`, `uid`), WITHOUT ROWID; (`uid`, `rid`) | `joined_seq`, `read_seq`             |
//! | `entries`   | `eid` (rowid); unique (`rid`, `seq`); unique (`rid`, `sender`, `id`) where text | room logs |
//! | `presence_notes` | `uid` (rowid)                          | the status text a user set last, `set_ms` |
//! | `devices`   | (`uid`, `id`), WITHOUT ROWID                | devices for push notifications: platform, app, locale, token or Web Push endpoint and keys, whether previews may show |
//! | `api_keys`  | `id`, WITHOUT ROWID                         | server API keys: name, scopes, the secret's SHA-256, created, revoked |
//! | `webhooks`  | `id`, WITHOUT ROWID                         | webhook endpoints: URL, subscribed events (a mask), signing secret, health |
//! | `webhook_outbox` | (`hook`, `stream`, `seq`), WITHOUT ROWID | events an endpoint has not acknowledged: a pointer to the room entry and its event type |
//! | `leases`    | `name`, WITHOUT ROWID                       | which node holds a lease (webhook delivery) and until when |
//! | `push_told` | (`user`, `room`), WITHOUT ROWID             | the seq of the latest entry a push told the user of, until a read reaches it |
//! | `push_clears` | (`user`, `room`), WITHOUT ROWID           | clears a read owes the user's devices (see `crate::push`) |
//! | `media`     | `id`, WITHOUT ROWID; (`owner`, `state`, `size`); `created_ms` where uploading or ready; `id` where doomed | uploads (see `crate::media`): owner, name, sniffed type, size, SHA-256, image and thumbnail sizes, created, state, and the `room` and `seq` it is attached to |
//!
//! Why this shape:
//! - `rooms` holds everything an append must check or bump (epoch, `last_seq`, member count,
//!   privacy) so the append reads and updates exactly one room row; owner and epoch live there
//!   rather than in a table of their own for that reason.
//! - `user_logs` is apart from `users` so the row updated once per recipient per append is a
//!   few bytes, not the account row with its password hash.
//! - `user_log` and `members` are WITHOUT ROWID: small rows, always reached by their key, so
//!   the key's b-tree is the table and a page read or a range scan costs one b-tree walk.
//! - `entries` is a rowid table with a unique index on (`rid`, `seq`) rather than a WITHOUT
//!   ROWID table: rows carry message bodies of up to a frame's size, and SQLite's guidance is
//!   that WITHOUT ROWID pays off only for rows under about 1/20 of a page, since the whole row
//!   lives in the b-tree's cells. The unique (`rid`, `seq`) index also makes a duplicate seq
//!   impossible, not just unlikely.
//! - The partial unique index on (`rid`, `sender`, `id`) `WHERE kind = 'text'` is the
//!   idempotent-send key; join and leave ids are not deduplicated, so they stay out of it.
//! - `user_log` rows point at (`rid`, `seq`), the entry's meaning, rather than at `eid`, so
//!   they stay right even if room logs are ever trimmed and rowids reused.
//! - `large_since` (version 2) marks a large room and the seq from which its entries have no
//!   `user_log` rows; an append of a large room reads the member names and writes only the
//!   entry. NULL for every room of a version 1 file, which the migration leaves fanning out.
//! - Version 4 added what messages that change and moderation need (see `amend` and
//!   `moderate`); version 5 deleted accounts (`users.deleted_ms`, see `erase`) and room settings: the rooms' new columns, and a `settings` column of
//!   entries holding a settings entry's settings as JSON. Version 5 rebuilt `entries` without a
//!   CHECK on `kind`, so a new kind no longer costs a table rebuild; kinds are validated where
//!   rows are read.
//! - Version 9 added media: the `media` table, and an `attachments` column of `entries` holding
//!   a text entry's attachments as JSON (NULL for none), as they were when it was posted; a
//!   delete sets it NULL with the body. A media row names its owner by name, like the push
//!   tables, so an owner's usage is one range of `media_by_owner` (which covers the sizes) and
//!   an account deletion dooms the owner's rows by name. The collector's two questions (stale
//!   uploads by age, doomed ones by id) each have a partial index holding only their rows.
//! - `presence_notes` (version 3) is apart from `users` so that setting a status rewrites a
//!   small row and leaves the account row, with its password hash, alone.
//! - Read positions live in the membership row: they exist exactly as long as the membership,
//!   and `rooms_of` and `read_positions` get them with no extra lookup.
//! - Foreign keys guard `members` and `user_logs`; the per-message tables have none (see
//!   `schema::open_connection`).
//!
//! # Sharing the file between processes
//!
//! Every write transaction is `BEGIN IMMEDIATE`, which takes SQLite's single write lock up
//! front (waiting up to `busy_timeout_ms` for another process), and every value another process
//! could change (room seq, user log heads and floors, epochs, member counts) is read inside the
//! transaction that uses it. Nothing is cached across transactions, so two processes appending
//! to one room still produce a dense seq.
//!
//! # Durability
//!
//! `synchronous = FULL` with WAL: each commit syncs the WAL before the writer replies, so an
//! acknowledged write survives kill -9 and power loss. Group commit (see `threads`) spreads that
//! fsync over every request in the batch; the rooms' appends group-commit on the rooms' own
//! thread when the writer is free (see `inline`).
//!
//! # Retention
//!
//! With `user_log_max_entries = n > 0`, a user's log is trimmed to its newest `n` entries
//! whenever its head reaches a multiple of 64, in the transaction that appends. Amortised: one
//! range delete per 64 appends rather than a one-row delete per append. So a log always keeps
//! at least its newest `n` entries (the promise a resuming client relies on) and never holds
//! more than `n + 63`. `trim_user_log` trims explicitly. The floor records what was trimmed so a
//! cursor below it gets an explicit resync answer rather than a silent gap.

mod amend;
mod api_keys;
mod devices;
mod erase;
mod inline;
mod invariants;
mod media;
mod moderate;
mod ops;
mod push;
mod schema;
mod threads;
mod webhooks;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use async_trait::async_trait;
use protocol::{Cursor, Entry, EntryKind, NotifyLevel, ReactionCount, Role};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use self::inline::InlineWriter;
use self::threads::{sqlite_error, BatchLimits, Job, ReadJob, WriteJob, WriterCounters};
use crate::{
    ApiKeyRecord, AppendRequest, Appended, Delivery, DeviceRecord, Epoch, HistoryPage, LogBounds, LogEntry,
    MediaRecord, MembershipLimits, MyRoom, NewRoom, OutboxEvent, PresenceNote, PushClear, PushMember, RoomRecord,
    Store, StoreError, StoreResult, UserRecord, WebhookHealth, WebhookRecord, WriteStats,
};

pub use self::invariants::{bounds_ordered, is_dense, read_within_room, seq_follows};

/// How to open the SQLite store. Build with [`SqliteOptions::new`] and adjust fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// The database file, created if missing (with its parent directory). Node processes on one
    /// host may point at the same file. It must be on a local file system: WAL needs shared
    /// memory between the processes, which network file systems do not provide.
    pub path: PathBuf,
    /// Each user's log keeps at least its newest this-many entries (0 keeps everything).
    /// Default 100 000: a pointer row costs about 20 bytes, so a user's log stays under a few
    /// megabytes, while a client would need to miss 100 000 messages before it has to resync;
    /// a client that far behind is better served by a fresh room history anyway.
    pub user_log_max_entries: u64,
    /// How long a transaction waits for another process's write lock before failing with
    /// `Unavailable`. Default 5 000 ms: a write batch holds the lock for milliseconds, so this is
    /// far beyond normal contention between node processes, yet short enough that a wedged
    /// process holding the lock turns into a retryable error well within a client's patience.
    pub busy_timeout_ms: u64,
    /// Reader threads, each with its own connection. Default 2, the core count of this
    /// project's machines: SQLite reads of cached pages are CPU-bound, so more threads than
    /// cores only add switching, while WAL lets these run alongside the writer.
    pub read_connections: usize,
    /// Writes queued for the writer before callers wait (back-pressure). Default 1 024: four
    /// full batches, enough to keep the writer busy through one slow fsync.
    pub write_queue_capacity: usize,
    /// Reads queued for the readers before callers wait. Default 1 024, for the same reason.
    pub read_queue_capacity: usize,
    /// Most requests committed in one transaction. Default 256: enough to spread one fsync (a
    /// few milliseconds) over a busy node's traffic, small enough that one transaction, which
    /// holds the write lock every process shares, stays short.
    pub max_batch_requests: usize,
    /// Most payload bytes (ids and bodies) committed in one transaction. Default 1 MiB, which
    /// bounds the WAL written per commit and the time the lock is held when messages are large.
    pub max_batch_bytes: usize,
}

impl SqliteOptions {
    /// The defaults, with the given database file.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            path: path.into(),
            user_log_max_entries: 100_000,
            busy_timeout_ms: 5_000,
            read_connections: 2,
            write_queue_capacity: 1_024,
            read_queue_capacity: 1_024,
            max_batch_requests: 256,
            max_batch_bytes: 1 << 20,
        }
    }

    fn validate(&self) -> StoreResult<()> {
        let at_least_one = [
            ("read_connections", self.read_connections),
            ("write_queue_capacity", self.write_queue_capacity),
            ("read_queue_capacity", self.read_queue_capacity),
            ("max_batch_requests", self.max_batch_requests),
            ("max_batch_bytes", self.max_batch_bytes),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                return Err(StoreError::Backend(format!("invalid sqlite option `{key}`: must be at least 1")));
            }
        }
        if self.path.as_os_str().is_empty() || self.path.as_os_str() == ":memory:" {
            return Err(StoreError::Backend(
                "invalid sqlite option `path`: must name a file (WAL mode and sharing need one)".into(),
            ));
        }
        Ok(())
    }
}

/// The SQLite store. Dropping it closes the queues; the threads finish what is queued and
/// exit, closing their connections.
pub struct SqliteStore {
    writes: mpsc::Sender<Box<dyn WriteJob>>,
    /// The rooms' appends, committed on the rooms' thread when the writer is free.
    inline: Arc<InlineWriter>,
    reads: mpsc::Sender<ReadJob>,
    counters: Arc<WriterCounters>,
    user_log_max_entries: u64,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open (creating or migrating) the database and start the writer and reader threads.
    ///
    /// This blocks: it opens files and may wait up to `busy_timeout_ms` for another process to
    /// finish creating the schema. Call it at start-up, or through `spawn_blocking` from async
    /// code. A database written by a newer palaver (higher schema version) is refused.
    pub fn open(options: SqliteOptions) -> StoreResult<SqliteStore> {
        options.validate()?;
        let path = options.path.clone();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::Backend(format!("sqlite: create directory `{}`: {e}", parent.display())))?;
        }
        let busy_timeout = Duration::from_millis(options.busy_timeout_ms);
        let writer = schema::open_connection(&path, busy_timeout, false)?;
        schema::prepare_database(&writer, busy_timeout)?;
        // A node that died after a delete may have left the deleted text in old WAL frames:
        // they go now, before anything reads or writes (see `threads::checkpointer_loop`). When
        // other processes share the file and one is reading, the WAL cannot be truncated yet:
        // the checkpointer then retries every round until it can, as after a delete.
        let truncate_pending = match threads::truncate_wal(&writer) {
            Ok(()) => false,
            Err(StoreError::Unavailable(reason)) => {
                tracing::info!(%reason, "sqlite: the WAL is in use by another process; truncating it later");
                true
            }
            Err(err) => return Err(err),
        };
        // Checkpoints run on their own thread (threads.rs), not inside the writer's commits.
        writer.pragma_update(None, "wal_autocheckpoint", 0).map_err(|e| sqlite_error(e, "turn off autocheckpoint"))?;
        // A message to a large room dirties a page of every member's log: with SQLite's default
        // 2 MB cache the writer spilled pages to the WAL mid-transaction and read them back.
        // 32 MB holds a batch of them (memory is taken only as pages are used).
        writer
            .pragma_update(None, "cache_size", -32_768)
            .map_err(|e| sqlite_error(e, "set the writer's cache size"))?;
        let checkpointer = schema::open_connection(&path, busy_timeout, false)?;
        let readers = (0..options.read_connections)
            .map(|_| schema::open_connection(&path, busy_timeout, true))
            .collect::<StoreResult<Vec<Connection>>>()?;

        let counters = Arc::new(WriterCounters::default());
        if truncate_pending {
            counters.erasures.fetch_add(1, Ordering::Relaxed);
        }
        let (writes, write_queue) = mpsc::channel(options.write_queue_capacity);
        let limits = BatchLimits { max_requests: options.max_batch_requests, max_bytes: options.max_batch_bytes };
        let writer_counters = Arc::clone(&counters);
        let writer = Arc::new(Mutex::new(writer));
        let inline = Arc::new(InlineWriter::new(
            Arc::clone(&writer),
            writes.clone(),
            Arc::clone(&counters),
            limits,
            busy_timeout,
        ));
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || threads::writer_loop(writer, write_queue, limits, writer_counters))
            .map_err(|e| StoreError::Backend(format!("sqlite: start writer thread: {e}")))?;

        let weak_counters = Arc::downgrade(&counters);
        thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || threads::checkpointer_loop(checkpointer, weak_counters))
            .map_err(|e| StoreError::Backend(format!("sqlite: start checkpoint thread: {e}")))?;

        let (reads, read_queue) = mpsc::channel(options.read_queue_capacity);
        let read_queue = Arc::new(Mutex::new(read_queue));
        for (index, conn) in readers.into_iter().enumerate() {
            let queue = Arc::clone(&read_queue);
            thread::Builder::new()
                .name(format!("sqlite-reader-{index}"))
                .spawn(move || threads::reader_loop(conn, queue))
                .map_err(|e| StoreError::Backend(format!("sqlite: start reader thread: {e}")))?;
        }
        tracing::info!(
            path = %path.display(),
            read_connections = options.read_connections,
            user_log_max_entries = options.user_log_max_entries,
            "sqlite store open"
        );
        Ok(SqliteStore { writes, inline, reads, counters, user_log_max_entries: options.user_log_max_entries, path })
    }

    /// The database file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Write-path counters.
    pub fn stats(&self) -> WriteStats {
        WriteStats {
            write_transactions: self.counters.transactions.load(Ordering::Relaxed),
            inline_write_transactions: self.counters.inline_transactions.load(Ordering::Relaxed),
            write_requests: self.counters.requests.load(Ordering::Relaxed),
            failed_transactions: self.counters.failed_transactions.load(Ordering::Relaxed),
            queued_writes: self.writes.max_capacity() - self.writes.capacity(),
        }
    }

    /// Run `op` in a read snapshot on a reader thread.
    async fn read<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, response) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn: &mut Connection| {
            // One deferred transaction per read, so a read of several statements (a page and
            // its "more" flag, a room and its members) sees one snapshot. Dropping it rolls back,
            // which for a reader only ends the snapshot.
            let result = match conn.transaction() {
                Ok(snapshot) => op(&snapshot),
                Err(e) => Err(sqlite_error(e, "begin read transaction")),
            };
            let _ = reply.send(result);
        });
        self.reads
            .send(job)
            .await
            .map_err(|_| StoreError::Backend("sqlite: the reader threads have stopped".into()))?;
        response.await.map_err(|_| StoreError::Backend("sqlite: a reader failed before answering".into()))?
    }

    /// Queue `op` for the writer's next batch and wait until that batch commits. If the caller
    /// stops waiting, the write still happens; callers make writes idempotent (client message
    /// ids) so a retry after a lost reply is safe.
    async fn write<T, F>(&self, cost_bytes: usize, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, response) = oneshot::channel();
        let job: Box<dyn WriteJob> = Box::new(Job::new(op, reply, cost_bytes));
        self.writes.send(job).await.map_err(|_| StoreError::Backend("sqlite: the writer thread has stopped".into()))?;
        response.await.map_err(|_| StoreError::Backend("sqlite: the writer failed before committing".into()))?
    }
}

/// Fixed per-request overhead counted against `max_batch_bytes`, on top of strings.
const REQUEST_OVERHEAD_BYTES: usize = 64;

/// What an append counts against the writer's `max_batch_bytes`.
fn append_cost(request: &AppendRequest) -> usize {
    REQUEST_OVERHEAD_BYTES
        + request.room.len()
        + request.from.len()
        + request.id.len()
        + request.body.len()
        + request.user.as_ref().map_or(0, String::len)
        + request.details.mentions.iter().map(String::len).sum::<usize>()
        + request.details.attachments.iter().map(|a| a.media.len() + a.name.len() + a.content_type.len()).sum::<usize>()
}

/// What a media record counts against the writer's `max_batch_bytes`.
fn media_cost(media: &MediaRecord) -> usize {
    REQUEST_OVERHEAD_BYTES + media.id.len() + media.owner.len() + media.name.len() + media.content_type.len()
}

impl SqliteStore {
    /// The appends of [`Store::append_batch`] as write jobs, queued in order, and their
    /// outcomes. Every job is queued before any reply is awaited, so the writer applies them
    /// in that order and usually in one transaction; `inline` commits them on the calling
    /// thread instead, when the writer connection is free (see `inline`).
    async fn append_jobs(&self, requests: Vec<AppendRequest>, inline: bool) -> Vec<StoreResult<Appended>> {
        let retention = self.user_log_max_entries;
        let mut jobs = Vec::with_capacity(requests.len());
        let mut replies = Vec::with_capacity(requests.len());
        for request in requests {
            let (reply, response) = oneshot::channel();
            let cost = append_cost(&request);
            let job: Box<dyn WriteJob> =
                Box::new(Job::new(move |conn: &Connection| ops::append(conn, &request, retention), reply, cost));
            jobs.push(job);
            replies.push(response);
        }
        if inline {
            self.inline.submit(jobs);
        } else {
            for job in jobs {
                // A closed queue drops the job and its reply sender: its caller hears below.
                if self.writes.send(job).await.is_err() {
                    break;
                }
            }
        }
        let mut outcomes = Vec::with_capacity(replies.len());
        for response in replies {
            outcomes.push(
                response
                    .await
                    .unwrap_or_else(|_| Err(StoreError::Backend("sqlite: the writer failed before committing".into()))),
            );
        }
        self.note_erasures(&outcomes);
        outcomes
    }

    /// Count committed deletes, so the checkpointer clears the deleted text out of the WAL.
    fn note_erasures(&self, outcomes: &[StoreResult<Appended>]) {
        let erased = outcomes
            .iter()
            .filter(|outcome| {
                matches!(outcome, Ok(appended) if !appended.duplicate && appended.delivery.entry.kind == EntryKind::Delete)
            })
            .count();
        if erased > 0 {
            self.counters.erasures.fetch_add(erased as u64, Ordering::Relaxed);
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn write_stats(&self) -> Option<WriteStats> {
        Some(self.stats())
    }

    async fn create_user(&self, name: &str, password_hash: &str, created_ms: u64) -> StoreResult<()> {
        let (name, password_hash) = (name.to_owned(), password_hash.to_owned());
        let cost = REQUEST_OVERHEAD_BYTES + name.len() + password_hash.len();
        self.write(cost, move |conn| ops::create_user(conn, &name, &password_hash, created_ms)).await
    }

    async fn user(&self, name: &str) -> StoreResult<Option<UserRecord>> {
        let name = name.to_owned();
        self.read(move |conn| ops::user(conn, &name)).await
    }

    async fn revoke_tokens(&self, name: &str) -> StoreResult<u64> {
        let name = name.to_owned();
        self.write(REQUEST_OVERHEAD_BYTES + name.len(), move |conn| ops::revoke_tokens(conn, &name)).await
    }

    async fn set_presence_note(&self, user: &str, note: PresenceNote) -> StoreResult<()> {
        let user = user.to_owned();
        let cost = REQUEST_OVERHEAD_BYTES + user.len() + note.status.as_ref().map_or(0, String::len);
        self.write(cost, move |conn| ops::set_presence_note(conn, &user, &note)).await
    }

    async fn presence_note(&self, user: &str) -> StoreResult<Option<PresenceNote>> {
        let user = user.to_owned();
        self.read(move |conn| ops::presence_note(conn, &user)).await
    }

    async fn roles(&self, room: &str, users: &[String]) -> StoreResult<Vec<Option<Role>>> {
        let (room, users) = (room.to_owned(), users.to_vec());
        self.read(move |conn| moderate::roles(conn, &room, &users)).await
    }

    async fn delete_account(&self, user: &str, ts: u64) -> StoreResult<()> {
        let user = user.to_owned();
        self.write(REQUEST_OVERHEAD_BYTES + user.len(), move |conn| erase::delete_account(conn, &user, ts)).await?;
        // The erased rows' old pages leave the WAL as a deleted message's do.
        self.counters.erasures.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn put_device(&self, user: &str, device: DeviceRecord, max: u32) -> StoreResult<DeviceRecord> {
        let user = user.to_owned();
        let cost = REQUEST_OVERHEAD_BYTES + device.token.len();
        self.write(cost, move |conn| devices::put(conn, &user, &device, max)).await
    }

    async fn devices(&self, user: &str) -> StoreResult<Vec<DeviceRecord>> {
        let user = user.to_owned();
        self.read(move |conn| devices::of_user(conn, &user)).await
    }

    async fn remove_device(&self, user: &str, id: &str) -> StoreResult<bool> {
        let (user, id) = (user.to_owned(), id.to_owned());
        self.write(REQUEST_OVERHEAD_BYTES, move |conn| devices::remove(conn, &user, &id)).await
    }

    async fn create_api_key(&self, key: ApiKeyRecord) -> StoreResult<()> {
        self.write(REQUEST_OVERHEAD_BYTES, move |conn| api_keys::create(conn, &key)).await
    }

    async fn api_key(&self, id: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let id = id.to_owned();
        self.read(move |conn| api_keys::by_id(conn, &id)).await
    }

    async fn api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>> {
        self.read(api_keys::all).await
    }

    async fn revoke_api_key(&self, id: &str, ts: u64) -> StoreResult<bool> {
        let id = id.to_owned();
        self.write(REQUEST_OVERHEAD_BYTES, move |conn| api_keys::revoke(conn, &id, ts)).await
    }

    async fn create_webhook(&self, hook: WebhookRecord) -> StoreResult<()> {
        self.write(REQUEST_OVERHEAD_BYTES, move |conn| webhooks::create(conn, &hook)).await
    }

    async fn webhooks(&self) -> StoreResult<Vec<WebhookRecord>> {
        self.read(webhooks::all).await
    }

    async fn delete_webhook(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        self.write(REQUEST_OVERHEAD_BYTES, move |conn| webhooks::delete(conn, &id)).await
    }

    async fn set_webhook_health(&self, id: &str, health: WebhookHealth) -> StoreResult<bool> {
        let id = id.to_owned();
        self.write(REQUEST_OVERHEAD_BYTES, move |conn| webhooks::set_health(conn, &id, &health)).await
    }

    async fn outbox_from(&self, id: &str, from: &str, limit: u32) -> StoreResult<Vec<OutboxEvent>> {
        let (id, from) = (id.to_owned(), from.to_owned());
        self.read(move |conn| webhooks::outbox(conn, &id, &from, limit)).await
    }

    async fn ack_webhook_events(&self, id: &str, stream: &str, through: u64) -> StoreResult<()> {
        let (id, stream) = (id.to_owned(), stream.to_owned());
        self.write(REQUEST_OVERHEAD_BYTES, move |conn| webhooks::ack(conn, &id, &stream, through)).await
    }

    async fn take_lease(&self, name: &str, holder: &str, now_ms: u64, ttl_ms: u64) -> StoreResult<bool> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(REQUEST_OVERHEAD_BYTES, move |conn| webhooks::take_lease(conn, &name, &holder, now_ms, ttl_ms)).await
    }

    async fn reserve_media(&self, media: MediaRecord, quota_bytes: u64) -> StoreResult<()> {
        self.write(media_cost(&media), move |conn| media::reserve(conn, &media, quota_bytes)).await
    }

    async fn complete_media(&self, media: MediaRecord) -> StoreResult<()> {
        self.write(media_cost(&media), move |conn| media::complete(conn, &media)).await
    }

    async fn media(&self, id: &str) -> StoreResult<Option<MediaRecord>> {
        let id = id.to_owned();
        self.read(move |conn| media::by_id_in(conn, &id)).await
    }

    async fn media_usage(&self, user: &str) -> StoreResult<u64> {
        let user = user.to_owned();
        self.read(move |conn| media::usage(conn, &user)).await
    }

    async fn media_garbage(&self, stale_before_ms: u64, limit: u32) -> StoreResult<Vec<MediaRecord>> {
        self.write(REQUEST_OVERHEAD_BYTES, move |conn| media::garbage(conn, stale_before_ms, limit)).await
    }

    async fn drop_media(&self, ids: &[String]) -> StoreResult<()> {
        let ids = ids.to_vec();
        let cost = REQUEST_OVERHEAD_BYTES + ids.iter().map(String::len).sum::<usize>();
        self.write(cost, move |conn| media::drop_records(conn, &ids)).await
    }

    async fn set_notifications(
        &self,
        user: &str,
        room: &str,
        level: NotifyLevel,
        muted_until: Option<u64>,
    ) -> StoreResult<()> {
        let (user, room) = (user.to_owned(), room.to_owned());
        self.write(REQUEST_OVERHEAD_BYTES, move |conn| ops::set_notifications(conn, &user, &room, level, muted_until))
            .await
    }

    async fn set_blocked(&self, user: &str, other: &str, blocked: bool) -> StoreResult<()> {
        let (user, other) = (user.to_owned(), other.to_owned());
        self.write(0, move |conn| moderate::set_blocked(conn, &user, &other, blocked)).await
    }

    async fn blocked_by(&self, user: &str) -> StoreResult<Vec<String>> {
        let user = user.to_owned();
        self.read(move |conn| moderate::blocked_by(conn, &user)).await
    }

    async fn is_blocked(&self, user: &str, other: &str) -> StoreResult<bool> {
        let (user, other) = (user.to_owned(), other.to_owned());
        self.read(move |conn| moderate::is_blocked(conn, &user, &other)).await
    }

    async fn create_room(
        &self,
        room: NewRoom,
        limits: MembershipLimits,
    ) -> StoreResult<(RoomRecord, Option<Vec<Delivery>>)> {
        let retention = self.user_log_max_entries;
        let cost = REQUEST_OVERHEAD_BYTES
            + room.id.len()
            + room.name.len()
            + room.members.iter().map(|m| m.len() + REQUEST_OVERHEAD_BYTES).sum::<usize>();
        self.write(cost, move |conn| ops::create_room(conn, &room, limits, retention)).await
    }

    async fn room(&self, id: &str) -> StoreResult<Option<RoomRecord>> {
        let id = id.to_owned();
        self.read(move |conn| ops::room(conn, &id)).await
    }

    async fn members(&self, room: &str) -> StoreResult<Vec<String>> {
        let room = room.to_owned();
        self.read(move |conn| ops::members(conn, &room)).await
    }

    async fn is_member(&self, room: &str, user: &str) -> StoreResult<bool> {
        let (room, user) = (room.to_owned(), user.to_owned());
        self.read(move |conn| ops::is_member(conn, &room, &user)).await
    }

    async fn rooms_of(&self, user: &str) -> StoreResult<Vec<MyRoom>> {
        let user = user.to_owned();
        self.read(move |conn| ops::rooms_of(conn, &user)).await
    }

    async fn append(&self, request: AppendRequest) -> StoreResult<Appended> {
        let retention = self.user_log_max_entries;
        let cost = append_cost(&request);
        let outcome = self.write(cost, move |conn| ops::append(conn, &request, retention)).await;
        self.note_erasures(std::slice::from_ref(&outcome));
        outcome
    }

    /// Every request is queued before any reply is awaited, in order, so the writer applies
    /// them in that order and usually in one transaction (group commit): one sync and one write
    /// of each member's log page for the whole batch instead of one per message.
    async fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<StoreResult<Appended>> {
        self.append_jobs(requests, false).await
    }

    async fn append_batch_on_committing_thread(&self, requests: Vec<AppendRequest>) -> Vec<StoreResult<Appended>> {
        // Committed on the calling thread when they can be (see `inline`); the flush is spawned
        // on the caller's runtime, so without one the writer thread it is.
        let inline = tokio::runtime::Handle::try_current().is_ok();
        self.append_jobs(requests, inline).await
    }

    async fn history(&self, room: &str, page: HistoryPage, limit: u32) -> StoreResult<(Vec<Entry>, bool)> {
        let room = room.to_owned();
        self.read(move |conn| ops::history(conn, &room, page, limit)).await
    }

    async fn thread(&self, room: &str, root: u64, after: u64, limit: u32) -> StoreResult<(Entry, Vec<Entry>, bool)> {
        let room = room.to_owned();
        self.read(move |conn| amend::thread(conn, &room, root, after, limit)).await
    }

    async fn reactions(&self, room: &str, seqs: &[u64], viewer: &str) -> StoreResult<Vec<Vec<ReactionCount>>> {
        let (room, seqs, viewer) = (room.to_owned(), seqs.to_vec(), viewer.to_owned());
        self.read(move |conn| amend::reactions(conn, &room, &seqs, &viewer)).await
    }

    async fn user_log(&self, user: &str, after: Cursor, limit: u32) -> StoreResult<Vec<LogEntry>> {
        let user = user.to_owned();
        self.read(move |conn| ops::user_log(conn, &user, after, limit)).await
    }

    async fn user_log_bounds(&self, user: &str) -> StoreResult<LogBounds> {
        let user = user.to_owned();
        self.read(move |conn| ops::user_log_bounds(conn, &user)).await
    }

    async fn trim_user_log(&self, user: &str, through: Cursor) -> StoreResult<u64> {
        let user = user.to_owned();
        self.write(REQUEST_OVERHEAD_BYTES + user.len(), move |conn| ops::trim_user_log(conn, &user, through)).await
    }

    async fn mark_read(&self, user: &str, room: &str, seq: u64) -> StoreResult<u64> {
        let (user, room) = (user.to_owned(), room.to_owned());
        let cost = REQUEST_OVERHEAD_BYTES + user.len() + room.len();
        self.write(cost, move |conn| ops::mark_read(conn, &user, &room, seq)).await
    }

    async fn push_members(&self, room: &str) -> StoreResult<Vec<PushMember>> {
        let room = room.to_owned();
        self.read(move |conn| push::members(conn, &room)).await
    }

    async fn push_done(&self, room: &str, through: u64, told: &[(String, u64)]) -> StoreResult<()> {
        let (room, told) = (room.to_owned(), told.to_vec());
        let cost = REQUEST_OVERHEAD_BYTES + told.iter().map(|(user, _)| user.len() + 16).sum::<usize>();
        self.write(cost, move |conn| push::done(conn, &room, through, &told)).await
    }

    async fn push_clears(&self, limit: u32) -> StoreResult<Vec<PushClear>> {
        self.read(move |conn| push::clears(conn, limit)).await
    }

    async fn push_cleared(&self, clears: &[PushClear]) -> StoreResult<()> {
        let clears = clears.to_vec();
        let cost = REQUEST_OVERHEAD_BYTES * clears.len().max(1);
        self.write(cost, move |conn| push::cleared(conn, &clears)).await
    }

    async fn read_positions(&self, room: &str) -> StoreResult<Vec<(String, u64)>> {
        let room = room.to_owned();
        self.read(move |conn| ops::read_positions(conn, &room)).await
    }

    async fn claim_room(&self, room: &str, node: &str) -> StoreResult<Epoch> {
        let (room, node) = (room.to_owned(), node.to_owned());
        let cost = REQUEST_OVERHEAD_BYTES + room.len() + node.len();
        self.write(cost, move |conn| ops::claim_room(conn, &room, &node)).await
    }

    async fn room_owner(&self, room: &str) -> StoreResult<Option<(String, Epoch)>> {
        let room = room.to_owned();
        self.read(move |conn| ops::room_owner(conn, &room)).await
    }
}
