//! The store's operations as SQL, one function per [`Store`](crate::Store) method.
//!
//! Each function runs inside a transaction its caller opened: writes inside the writer's
//! `BEGIN IMMEDIATE` batch (within their own savepoint), reads inside a reader's snapshot. They
//! read everything another process could change (sequence numbers, log heads, epochs, member
//! counts) afresh inside that transaction and cache nothing across transactions, which is what
//! makes one database file safe to share between node processes.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::amend;
use super::invariants;
use super::moderate;
use super::threads::Context;
use super::webhooks;
use crate::{
    AppendRequest, Appended, Delivery, Epoch, HistoryPage, LogBounds, LogEntry, MembershipLimits, MyRoom, NewRoom,
    PresenceNote, Recipients, RoomRecord, StoreError, StoreResult, UserRecord,
};
use protocol::{Attachment, Audience, Cursor, Entry, EntryKind, NotifyLevel, Role, RoomKind, RoomSettings};

/// Automatic retention trims a user's log only when its head reaches a multiple of this, so the
/// cost is one range delete per 64 appends instead of a one-row delete on every append, and
/// between trims a log holds at most `user_log_max_entries + TRIM_PERIOD - 1` entries.
pub(super) const TRIM_PERIOD: u64 = 64;

// The statements. Each one on a hot path is an index lookup or an index range scan; the
// `hot_queries_use_indexes` test runs EXPLAIN QUERY PLAN over `HOT_QUERIES` to keep it so.

const USER_INSERT: &str = "INSERT INTO users (name, password_hash, created_ms) VALUES (?1, ?2, ?3) \
                           ON CONFLICT (name) DO NOTHING RETURNING uid";
const USER_LOG_INSERT: &str = "INSERT INTO user_logs (uid) VALUES (?1)";
// A deleted account's row stays (see `erase`); to everything else it is no user.
const USER_BY_NAME: &str =
    "SELECT name, password_hash, token_epoch, created_ms FROM users WHERE name = ?1 AND deleted_ms IS NULL";
const UID_BY_NAME: &str = "SELECT uid FROM users WHERE name = ?1 AND deleted_ms IS NULL";
const REVOKE_TOKENS: &str = "UPDATE users SET token_epoch = token_epoch + 1 WHERE name = ?1 RETURNING token_epoch";
const NOTE_UPSERT: &str = "INSERT INTO presence_notes (uid, status, set_ms) VALUES (?1, ?2, ?3) \
                           ON CONFLICT (uid) DO UPDATE SET status = excluded.status, set_ms = excluded.set_ms \
                           WHERE excluded.set_ms > presence_notes.set_ms";
const NOTE_BY_UID: &str = "SELECT status, set_ms FROM presence_notes WHERE uid = ?1";

const ROOM_BY_ID: &str = "SELECT rid, id, name, kind, private, created_by, last_seq, members, epoch, owner, \
                          large_since, topic, who_may_post, who_may_invite FROM rooms WHERE id = ?1";
const ROOM_INSERT: &str = "INSERT INTO rooms (id, name, kind, private, created_by, created_ms) \
                           VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING rid";
const ROOM_ADVANCE: &str =
    "UPDATE rooms SET last_seq = last_seq + 1, members = members + ?2 WHERE rid = ?1 RETURNING last_seq, members";
const ROOM_MAKE_LARGE: &str = "UPDATE rooms SET large_since = ?2 WHERE rid = ?1 AND large_since IS NULL";
const ROOM_CLAIM: &str = "UPDATE rooms SET epoch = epoch + 1, owner = ?2 WHERE id = ?1 RETURNING epoch";

const MEMBER_EXISTS: &str = "SELECT 1 FROM members WHERE rid = ?1 AND uid = ?2";
const MEMBER_INSERT: &str = "INSERT INTO members (rid, uid, joined_seq) VALUES (?1, ?2, ?3)";
const MEMBER_DELETE: &str = "DELETE FROM members WHERE rid = ?1 AND uid = ?2";
const MEMBER_RECIPIENTS: &str = "SELECT m.uid, u.name FROM members m JOIN users u ON u.uid = m.uid WHERE m.rid = ?1";
const MEMBERS_IN_JOIN_ORDER: &str =
    "SELECT u.name FROM members m JOIN users u ON u.uid = m.uid WHERE m.rid = ?1 ORDER BY m.joined_seq";
const ROOM_COUNT_OF_USER: &str = "SELECT count(*) FROM members WHERE uid = ?1";
const MARK_READ: &str =
    "UPDATE members SET read_seq = max(read_seq, min(?3, ?4)) WHERE rid = ?1 AND uid = ?2 RETURNING read_seq";
// Sorted by name in SQL: BINARY collation compares UTF-8 bytes, which is `str`'s order, so both
// backends list names alike. The sort is of at most `max_room_members` rows, like join order's.
const READ_POSITIONS: &str = "SELECT u.name, m.read_seq FROM members m JOIN users u ON u.uid = m.uid \
                              WHERE m.rid = ?1 ORDER BY u.name";
const ROOMS_OF_USER: &str = "SELECT r.rid, r.id, r.name, r.kind, r.private, r.created_by, r.last_seq, r.members, \
                             r.epoch, r.owner, r.large_since, r.topic, r.who_may_post, r.who_may_invite, \
                             m.read_seq, m.joined_seq, m.role, \
                             (SELECT count(*) FROM mentions x WHERE x.uid = m.uid AND x.rid = m.rid \
                              AND x.seq > m.read_seq), m.notify, m.notify_muted_until \
                             FROM members m JOIN rooms r ON r.rid = m.rid WHERE m.uid = ?1 ORDER BY m.rid";

const ENTRY_INSERT: &str = "INSERT INTO entries (rid, seq, id, sender, kind, subject, body, ts, target, reply_to, \
                            mentions, until, settings, attachments) \
                            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";
// The kinds spelled exactly as in the partial index's WHERE, so the planner can use it.
pub(super) const ENTRY_BY_CLIENT_ID: &str = "SELECT seq, id, sender, kind, subject, body, ts, target, reply_to, \
                                  mentions, edited_ts, deleted, until, settings, attachments FROM entries \
                                  WHERE rid = ?1 AND sender = ?2 AND id = ?3 \
                                  AND kind IN ('text', 'edit', 'delete', 'react', 'unreact')";
const HISTORY_BEFORE: &str = "SELECT seq, id, sender, kind, subject, body, ts, target, reply_to, mentions, \
                              edited_ts, deleted, until, settings, attachments FROM entries \
                              WHERE rid = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3";
const HISTORY_AFTER: &str = "SELECT seq, id, sender, kind, subject, body, ts, target, reply_to, mentions, \
                             edited_ts, deleted, until, settings, attachments FROM entries \
                             WHERE rid = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3";

const LOG_ADVANCE_MEMBERS: &str = "UPDATE user_logs SET head = head + 1 \
                                   WHERE uid IN (SELECT uid FROM members WHERE rid = ?1) RETURNING uid, head, floor";
/// Runs right after [`LOG_ADVANCE_MEMBERS`]: each member's new head is the pointer's cursor.
const LOG_POINTERS_INSERT: &str = "INSERT INTO user_log (uid, cursor, rid, seq) \
                                   SELECT l.uid, l.head, ?1, ?2 FROM members m JOIN user_logs l ON l.uid = m.uid \
                                   WHERE m.rid = ?1";
const LOG_BOUNDS_BY_NAME: &str =
    "SELECT u.uid, l.floor, l.head FROM users u JOIN user_logs l ON l.uid = u.uid WHERE u.name = ?1";
const LOG_TRIM: &str = "DELETE FROM user_log WHERE uid = ?1 AND cursor > ?2 AND cursor <= ?3";
const LOG_SET_FLOOR: &str = "UPDATE user_logs SET floor = ?2 WHERE uid = ?1";
const LOG_PAGE: &str = "SELECT l.cursor, r.id, e.seq, e.id, e.sender, e.kind, e.subject, e.body, e.ts, \
                        e.target, e.reply_to, e.mentions, e.edited_ts, e.deleted, e.until, e.settings, \
                        e.attachments \
                        FROM user_log l \
                        JOIN entries e ON e.rid = l.rid AND e.seq = l.seq \
                        JOIN rooms r ON r.rid = l.rid \
                        WHERE l.uid = ?1 AND l.cursor > ?2 ORDER BY l.cursor LIMIT ?3";

/// Statements that run on every append or every page read, for the query-plan test.
#[cfg(test)]
pub(super) const HOT_QUERIES: &[&str] = &[
    UID_BY_NAME,
    ROOM_BY_ID,
    ROOM_ADVANCE,
    MEMBER_EXISTS,
    MEMBER_RECIPIENTS,
    MEMBERS_IN_JOIN_ORDER,
    ROOM_COUNT_OF_USER,
    MARK_READ,
    READ_POSITIONS,
    ROOMS_OF_USER,
    ENTRY_BY_CLIENT_ID,
    HISTORY_BEFORE,
    HISTORY_AFTER,
    LOG_ADVANCE_MEMBERS,
    LOG_POINTERS_INSERT,
    LOG_BOUNDS_BY_NAME,
    LOG_TRIM,
    LOG_PAGE,
];

/// A u64 as an SQLite integer parameter. Stored values never exceed `i64::MAX`, so clamping
/// keeps comparisons right: `seq < u64::MAX` must mean "every entry", not an overflow error.
pub(super) fn sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn room_kind_str(kind: RoomKind) -> &'static str {
    match kind {
        RoomKind::Group => "group",
        RoomKind::Direct => "direct",
    }
}

fn entry_kind_str(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Text => "text",
        EntryKind::Join => "join",
        EntryKind::Leave => "leave",
        EntryKind::Edit => "edit",
        EntryKind::Delete => "delete",
        EntryKind::React => "react",
        EntryKind::Unreact => "unreact",
        EntryKind::Role => "role",
        EntryKind::Kick => "kick",
        EntryKind::Ban => "ban",
        EntryKind::Unban => "unban",
        EntryKind::Mute => "mute",
        EntryKind::Settings => "settings",
    }
}

/// A value the schema's CHECK constraints should have made impossible.
#[derive(Debug)]
struct CorruptValue(String);

impl std::fmt::Display for CorruptValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unexpected value `{}`", self.0)
    }
}

impl std::error::Error for CorruptValue {}

pub(super) fn audience_str(audience: Audience) -> &'static str {
    match audience {
        Audience::Members => "members",
        Audience::Moderators => "moderators",
    }
}

fn audience_column(row: &Row<'_>, index: usize) -> rusqlite::Result<Audience> {
    let text: String = row.get(index)?;
    match text.as_str() {
        "members" => Ok(Audience::Members),
        "moderators" => Ok(Audience::Moderators),
        _ => Err(rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(CorruptValue(text)))),
    }
}

/// A settings entry's settings as stored: JSON, NULL for every other kind.
fn settings_column(settings: Option<&RoomSettings>) -> Option<String> {
    settings.map(|settings| serde_json::to_string(settings).expect("settings serialise"))
}

fn settings_from_column(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<Box<RoomSettings>>> {
    let text: Option<String> = row.get(index)?;
    text.map(|text| {
        serde_json::from_str(&text)
            .map_err(|err| rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(err)))
    })
    .transpose()
}

fn room_kind_column(row: &Row<'_>, index: usize) -> rusqlite::Result<RoomKind> {
    let text: String = row.get(index)?;
    match text.as_str() {
        "group" => Ok(RoomKind::Group),
        "direct" => Ok(RoomKind::Direct),
        _ => Err(rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(CorruptValue(text)))),
    }
}

fn entry_kind_column(row: &Row<'_>, index: usize) -> rusqlite::Result<EntryKind> {
    let text: String = row.get(index)?;
    match text.as_str() {
        "text" => Ok(EntryKind::Text),
        "join" => Ok(EntryKind::Join),
        "leave" => Ok(EntryKind::Leave),
        "edit" => Ok(EntryKind::Edit),
        "delete" => Ok(EntryKind::Delete),
        "react" => Ok(EntryKind::React),
        "unreact" => Ok(EntryKind::Unreact),
        "role" => Ok(EntryKind::Role),
        "kick" => Ok(EntryKind::Kick),
        "ban" => Ok(EntryKind::Ban),
        "unban" => Ok(EntryKind::Unban),
        "mute" => Ok(EntryKind::Mute),
        "settings" => Ok(EntryKind::Settings),
        _ => Err(rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(CorruptValue(text)))),
    }
}

/// An entry from the columns `seq, id, sender, kind, subject, body, ts, target, reply_to,
/// mentions, edited_ts, deleted, until, settings, attachments` starting at `first`.
pub(super) fn entry_columns(room: String, row: &Row<'_>, first: usize) -> rusqlite::Result<Entry> {
    let mentions: Option<String> = row.get(first + 9)?;
    Ok(Entry {
        room,
        seq: row.get(first)?,
        id: row.get(first + 1)?,
        from: row.get(first + 2)?,
        kind: entry_kind_column(row, first + 3)?,
        user: row.get(first + 4)?,
        body: row.get(first + 5)?,
        ts: row.get(first + 6)?,
        target: row.get(first + 7)?,
        reply_to: row.get(first + 8)?,
        mentions: mentions.map(|names| names.split('\n').map(str::to_owned).collect()).unwrap_or_default(),
        edited_at: row.get(first + 10)?,
        deleted: row.get(first + 11)?,
        until: row.get(first + 12)?,
        reactions: Vec::new(),
        settings: settings_from_column(row, first + 13)?,
        attachments: attachments_from_column(row, first + 14)?,
    })
}

/// A text entry's attachments as stored: JSON of the protocol's `Attachment`s, NULL for none.
fn attachments_column(attachments: &[Attachment]) -> Option<String> {
    (!attachments.is_empty()).then(|| serde_json::to_string(attachments).expect("attachments serialise"))
}

pub(super) fn attachments_from_column(row: &Row<'_>, index: usize) -> rusqlite::Result<Vec<Attachment>> {
    let text: Option<String> = row.get(index)?;
    text.map(|text| {
        serde_json::from_str(&text)
            .map_err(|err| rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(err)))
    })
    .transpose()
    .map(Option::unwrap_or_default)
}

/// Mentions as stored: names one per line (names cannot hold a line break), NULL for none.
fn mentions_column(mentions: &[String]) -> Option<String> {
    (!mentions.is_empty()).then(|| mentions.join("\n"))
}

/// A room header as the transaction sees it.
#[derive(Clone)]
pub(super) struct RoomRow {
    pub(super) rid: i64,
    pub(super) record: RoomRecord,
    epoch: Epoch,
    owner: Option<String>,
}

/// A room from the columns `rid, id, name, kind, private, created_by, last_seq, members, epoch,
/// owner, large_since, topic, who_may_post, who_may_invite` (the order of `ROOM_BY_ID` and
/// `ROOMS_OF_USER`).
fn room_columns(row: &Row<'_>) -> rusqlite::Result<RoomRow> {
    Ok(RoomRow {
        rid: row.get(0)?,
        record: RoomRecord {
            id: row.get(1)?,
            name: row.get(2)?,
            kind: room_kind_column(row, 3)?,
            private: row.get(4)?,
            created_by: row.get(5)?,
            last_seq: row.get(6)?,
            members: row.get(7)?,
            large_since: row.get(10)?,
            topic: row.get(11)?,
            who_may_post: audience_column(row, 12)?,
            who_may_invite: audience_column(row, 13)?,
        },
        epoch: row.get(8)?,
        owner: row.get(9)?,
    })
}

fn find_room(conn: &Connection, id: &str) -> StoreResult<Option<RoomRow>> {
    conn.prepare_cached(ROOM_BY_ID).and_then(|mut s| s.query_row([id], room_columns).optional()).ctx("read room")
}

pub(super) fn require_room(conn: &Connection, id: &str) -> StoreResult<RoomRow> {
    find_room(conn, id)?.ok_or_else(|| StoreError::NoSuchRoom(id.to_owned()))
}

pub(super) fn find_uid(conn: &Connection, name: &str) -> StoreResult<Option<i64>> {
    conn.prepare_cached(UID_BY_NAME).and_then(|mut s| s.query_row([name], |r| r.get(0)).optional()).ctx("read user id")
}

pub(super) fn require_uid(conn: &Connection, name: &str) -> StoreResult<i64> {
    find_uid(conn, name)?.ok_or_else(|| StoreError::NoSuchUser(name.to_owned()))
}

pub(super) fn member_exists(conn: &Connection, rid: i64, uid: i64) -> StoreResult<bool> {
    conn.prepare_cached(MEMBER_EXISTS).and_then(|mut s| s.exists(params![rid, uid])).ctx("read membership")
}

/// Whether the named user exists and is a member (an unknown user is nobody's member).
pub(super) fn is_named_member(conn: &Connection, rid: i64, name: &str) -> StoreResult<bool> {
    match find_uid(conn, name)? {
        Some(uid) => member_exists(conn, rid, uid),
        None => Ok(false),
    }
}

fn rooms_count(conn: &Connection, uid: i64) -> StoreResult<u64> {
    conn.prepare_cached(ROOM_COUNT_OF_USER)
        .and_then(|mut s| s.query_row([uid], |r| r.get(0)))
        .ctx("count rooms of user")
}

/// Give the room its next seq and change its member count by `member_delta`; returns the new
/// seq. The caller read `room` in this same transaction.
pub(super) fn advance_room(conn: &Connection, room: &RoomRow, member_delta: i64) -> StoreResult<u64> {
    let (seq, members): (u64, u64) = conn
        .prepare_cached(ROOM_ADVANCE)
        .and_then(|mut s| s.query_row(params![room.rid, member_delta], |r| Ok((r.get(0)?, r.get(1)?))))
        .ctx("advance room seq")?;
    debug_assert!(
        invariants::seq_follows(room.record.last_seq, seq),
        "room {} seq {} after last_seq {}",
        room.record.id,
        seq,
        room.record.last_seq
    );
    debug_assert_eq!(
        i128::from(members),
        i128::from(room.record.members) + i128::from(member_delta),
        "room {} member count",
        room.record.id
    );
    Ok(seq)
}

pub(super) fn insert_entry(conn: &Connection, rid: i64, entry: &Entry) -> StoreResult<()> {
    conn.prepare_cached(ENTRY_INSERT)
        .and_then(|mut s| {
            s.execute(params![
                rid,
                sql_int(entry.seq),
                entry.id,
                entry.from,
                entry_kind_str(entry.kind),
                entry.user,
                entry.body,
                sql_int(entry.ts),
                entry.target.map(sql_int),
                entry.reply_to.map(sql_int),
                mentions_column(&entry.mentions),
                entry.until.map(sql_int),
                settings_column(entry.settings.as_deref()),
                attachments_column(&entry.attachments),
            ])
        })
        .ctx("insert entry")?;
    Ok(())
}

/// The recipients of entry `seq` of `room`: every current member. Unless the room is large at
/// `seq`, this also appends a pointer to the entry to each member's log, in this transaction,
/// and returns each member's new cursor; an entry of a large room lives in the room log only,
/// and its owner names its recipients ([`Recipients::Unnamed`]).
pub(super) fn deliver(conn: &Connection, room: &RoomRow, seq: u64, retention: u64) -> StoreResult<Recipients> {
    if in_room_log_only(room, seq) {
        return Ok(Recipients::Unnamed);
    }
    Ok(Recipients::Logs(fan_out(conn, room.rid, seq, retention)?))
}

/// Whether entry `seq` of `room` is kept in the room log only (the room is large at `seq`).
fn in_room_log_only(room: &RoomRow, seq: u64) -> bool {
    room.record.large_since.is_some_and(|since| seq >= since)
}

/// Make the room large from entry `seq` on if `members` (its count with this entry) passes
/// the limit; a room that is large stays large.
fn maybe_make_large(conn: &Connection, room: &mut RoomRow, members: u32, seq: u64, limit: u32) -> StoreResult<()> {
    if room.record.large_since.is_none() && members > limit {
        conn.prepare_cached(ROOM_MAKE_LARGE)
            .and_then(|mut s| s.execute(params![room.rid, sql_int(seq)]))
            .ctx("make room large")?;
        room.record.large_since = Some(seq);
    }
    Ok(())
}

/// Append a pointer to entry (`rid`, `seq`) to the log of every current member, in this
/// transaction; returns each member's new cursor. With retention on, trims a log whose head
/// just reached a multiple of [`TRIM_PERIOD`].
///
/// Three statements whatever the room's size, each over all members at once, rather than two
/// per member: per statement SQLite opens and releases a statement journal and runs its VM
/// set-up, which for a 1,000-member room was over half of the writer's time
/// (docs/BENCHMARKS.md).
fn fan_out(conn: &Connection, rid: i64, seq: u64, retention: u64) -> StoreResult<Vec<(String, Cursor)>> {
    let advanced: Vec<(i64, u64, u64)> = conn
        .prepare_cached(LOG_ADVANCE_MEMBERS)
        .and_then(|mut s| s.query_map([rid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
        .ctx("advance members' user log heads")?;
    let inserted = conn
        .prepare_cached(LOG_POINTERS_INSERT)
        .and_then(|mut s| s.execute(params![rid, sql_int(seq)]))
        .ctx("insert user log pointers")?;
    debug_assert_eq!(inserted, advanced.len(), "one pointer per advanced log");
    let names: HashMap<i64, String> = conn
        .prepare_cached(MEMBER_RECIPIENTS)
        .and_then(|mut s| s.query_map([rid], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .ctx("read room members")?;
    let mut recipients = Vec::with_capacity(advanced.len());
    for (uid, head, floor) in advanced {
        debug_assert!(invariants::bounds_ordered(floor, head), "user {uid} log floor {floor} above head {head}");
        if retention > 0 && head % TRIM_PERIOD == 0 && head - floor > retention {
            trim_range(conn, uid, floor, head - retention)?;
        }
        let name = names
            .get(&uid)
            .cloned()
            .ok_or_else(|| StoreError::Backend(format!("sqlite: member {uid} of room {rid} has no user row")))?;
        recipients.push((name, head));
    }
    Ok(recipients)
}

/// Delete the user's log entries with `floor < cursor <= through` and raise the floor to
/// `through`. The caller ensures `floor < through <= head`.
fn trim_range(conn: &Connection, uid: i64, floor: u64, through: u64) -> StoreResult<u64> {
    let deleted = conn
        .prepare_cached(LOG_TRIM)
        .and_then(|mut s| s.execute(params![uid, sql_int(floor), sql_int(through)]))
        .ctx("trim user log")?;
    conn.prepare_cached(LOG_SET_FLOOR)
        .and_then(|mut s| s.execute(params![uid, sql_int(through)]))
        .ctx("raise user log floor")?;
    let deleted = deleted as u64;
    // Every cursor in floor+1..=head has a row (cursors are dense and only trimming removes
    // rows, from the bottom), so the range held exactly this many.
    debug_assert_eq!(deleted, through - floor, "user log {uid} has a gap between {floor} and {through}");
    Ok(deleted)
}

// Accounts.

pub(super) fn create_user(conn: &Connection, name: &str, password_hash: &str, created_ms: u64) -> StoreResult<()> {
    let uid: Option<i64> = conn
        .prepare_cached(USER_INSERT)
        .and_then(|mut s| s.query_row(params![name, password_hash, sql_int(created_ms)], |r| r.get(0)).optional())
        .ctx("insert user")?;
    let uid = uid.ok_or_else(|| StoreError::UserExists(name.to_owned()))?;
    conn.prepare_cached(USER_LOG_INSERT).and_then(|mut s| s.execute([uid])).ctx("insert user log")?;
    Ok(())
}

pub(super) fn user(conn: &Connection, name: &str) -> StoreResult<Option<UserRecord>> {
    conn.prepare_cached(USER_BY_NAME)
        .and_then(|mut s| {
            s.query_row([name], |r| {
                Ok(UserRecord {
                    name: r.get(0)?,
                    password_hash: r.get(1)?,
                    token_epoch: r.get(2)?,
                    created_ms: r.get(3)?,
                })
            })
            .optional()
        })
        .ctx("read user")
}

pub(super) fn revoke_tokens(conn: &Connection, name: &str) -> StoreResult<u64> {
    conn.prepare_cached(REVOKE_TOKENS)
        .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
        .ctx("bump token epoch")?
        .ok_or_else(|| StoreError::NoSuchUser(name.to_owned()))
}

pub(super) fn set_presence_note(conn: &Connection, user: &str, note: &PresenceNote) -> StoreResult<()> {
    let uid = require_uid(conn, user)?;
    conn.prepare_cached(NOTE_UPSERT)
        .and_then(|mut s| s.execute(params![uid, note.status, sql_int(note.set_ms)]))
        .ctx("write presence note")?;
    Ok(())
}

pub(super) fn presence_note(conn: &Connection, user: &str) -> StoreResult<Option<PresenceNote>> {
    let uid = require_uid(conn, user)?;
    conn.prepare_cached(NOTE_BY_UID)
        .and_then(|mut s| s.query_row([uid], |r| Ok(PresenceNote { status: r.get(0)?, set_ms: r.get(1)? })).optional())
        .ctx("read presence note")
}

// Rooms.

/// The id of the join entries `create_room` writes: the node makes ids for membership entries,
/// and these are not deduplicated, so the seq keeps them readable and unique.
fn creation_join_id(seq: u64) -> String {
    format!("join-{seq}")
}

pub(super) fn create_room(
    conn: &Connection,
    room: &NewRoom,
    limits: MembershipLimits,
    retention: u64,
) -> StoreResult<(RoomRecord, Option<Vec<Delivery>>)> {
    if let Some(existing) = find_room(conn, &room.id)? {
        return Ok((existing.record, None));
    }
    // A name listed twice joins once, at its first place.
    let mut names: Vec<&str> = Vec::with_capacity(room.members.len());
    for name in &room.members {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(StoreError::Backend(format!("invalid room `{}`: no initial members", room.id)));
    }
    if names.len() as u64 > u64::from(limits.max_room_members) {
        return Err(StoreError::RoomFull { room: room.id.clone(), limit: limits.max_room_members });
    }
    let mut uids = Vec::with_capacity(names.len());
    for name in &names {
        let uid = require_uid(conn, name)?;
        if rooms_count(conn, uid)? >= u64::from(limits.max_rooms_per_user) {
            return Err(StoreError::TooManyRooms { user: (*name).to_owned(), limit: limits.max_rooms_per_user });
        }
        uids.push(uid);
    }

    let rid: i64 = conn
        .prepare_cached(ROOM_INSERT)
        .and_then(|mut s| {
            s.query_row(
                params![room.id, room.name, room_kind_str(room.kind), room.private, room.creator, sql_int(room.ts)],
                |r| r.get(0),
            )
        })
        .ctx("insert room")?;
    let mut header = RoomRow {
        rid,
        record: RoomRecord {
            id: room.id.clone(),
            name: room.name.clone(),
            kind: room.kind,
            private: room.private,
            created_by: room.creator.clone(),
            last_seq: 0,
            members: 0,
            large_since: None,
            topic: String::new(),
            who_may_post: Audience::Members,
            who_may_invite: Audience::Members,
        },
        epoch: 0,
        owner: None,
    };
    maybe_make_large(conn, &mut header, names.len() as u32, 1, limits.fanout_max_members)?;
    // Every initial member is a member at commit time, so each join entry reaches all of them:
    // first all memberships and entries, then the pointers, entry by entry so every user's log
    // lists the joins in seq order.
    let mut entries = Vec::with_capacity(names.len());
    for (name, uid) in names.iter().zip(&uids) {
        let seq = advance_room(conn, &header, 1)?;
        header.record.last_seq = seq;
        header.record.members += 1;
        conn.prepare_cached(MEMBER_INSERT)
            .and_then(|mut s| s.execute(params![rid, uid, sql_int(seq)]))
            .ctx("insert member")?;
        if room.kind == RoomKind::Group && *name == room.creator {
            moderate::set_role(conn, rid, *uid, Role::Owner)?;
        }
        let entry = Entry {
            room: room.id.clone(),
            seq,
            id: creation_join_id(seq),
            from: room.creator.clone(),
            kind: EntryKind::Join,
            user: Some((*name).to_owned()),
            body: String::new(),
            ts: room.ts,
            ..Entry::default()
        };
        insert_entry(conn, rid, &entry)?;
        webhooks::queue_entry(conn, &entry)?;
        entries.push(entry);
    }
    // A room created large has no owner yet to name its members: the creation names them,
    // all of them for every join.
    let everyone = Arc::new(names.iter().map(|name| (*name).to_owned()).collect::<Vec<_>>());
    let mut deliveries = Vec::with_capacity(entries.len());
    for entry in entries {
        let recipients = match deliver(conn, &header, entry.seq, retention)? {
            Recipients::Unnamed => Recipients::Members(everyone.clone()),
            named => named,
        };
        deliveries.push(Delivery { entry, recipients });
    }
    Ok((header.record, Some(deliveries)))
}

pub(super) fn room(conn: &Connection, id: &str) -> StoreResult<Option<RoomRecord>> {
    Ok(find_room(conn, id)?.map(|r| r.record))
}

pub(super) fn members(conn: &Connection, room: &str) -> StoreResult<Vec<String>> {
    let rid = require_room(conn, room)?.rid;
    conn.prepare_cached(MEMBERS_IN_JOIN_ORDER)
        .and_then(|mut s| s.query_map([rid], |r| r.get(0))?.collect())
        .ctx("read members")
}

pub(super) fn is_member(conn: &Connection, room: &str, user: &str) -> StoreResult<bool> {
    let rid = require_room(conn, room)?.rid;
    is_named_member(conn, rid, user)
}

pub(super) fn rooms_of(conn: &Connection, user: &str) -> StoreResult<Vec<MyRoom>> {
    let uid = require_uid(conn, user)?;
    let rooms: Vec<MyRoom> = conn
        .prepare_cached(ROOMS_OF_USER)
        .and_then(|mut s| {
            s.query_map([uid], |r| {
                Ok(MyRoom {
                    room: room_columns(r)?.record,
                    read_seq: r.get(14)?,
                    joined_seq: r.get(15)?,
                    role: moderate::role_column(r, 16)?,
                    unread_mentions: r.get(17)?,
                    notify: notify_column(r, 18)?,
                    notify_muted_until: r.get::<_, Option<i64>>(19)?.map(|ms| ms.max(0) as u64),
                })
            })?
            .collect()
        })
        .ctx("read rooms of user")?;
    debug_assert!(rooms.iter().all(|r| invariants::read_within_room(r.read_seq, r.room.last_seq)));
    Ok(rooms)
}

const SET_NOTIFICATIONS: &str = "UPDATE members SET notify = ?3, notify_muted_until = ?4 \
                                 WHERE rid = ?1 AND uid = ?2";

pub(super) fn notify_column(row: &Row<'_>, index: usize) -> rusqlite::Result<NotifyLevel> {
    let text: String = row.get(index)?;
    NotifyLevel::from_name(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(index, Type::Text, format!("unknown notify level `{text}`").into())
    })
}

pub(super) fn set_notifications(
    conn: &Connection,
    user: &str,
    room: &str,
    level: NotifyLevel,
    muted_until: Option<u64>,
) -> StoreResult<()> {
    let rid = require_room(conn, room)?.rid;
    let not_member = || StoreError::NotMember { room: room.to_owned(), user: user.to_owned() };
    let uid = find_uid(conn, user)?.ok_or_else(not_member)?;
    let changed = conn
        .prepare_cached(SET_NOTIFICATIONS)
        .and_then(|mut s| s.execute(params![rid, uid, level.name(), muted_until.map(sql_int)]))
        .ctx("set notifications")?;
    if changed == 0 {
        return Err(not_member());
    }
    Ok(())
}

// Logs.

pub(super) fn append(conn: &Connection, request: &AppendRequest, retention: u64) -> StoreResult<Appended> {
    let room = require_room(conn, &request.room)?;
    // Fencing first: a stale owner learns it is stale before anything else, and writes nothing.
    if room.epoch != request.epoch {
        return Err(StoreError::Fenced { room: room.record.id, epoch: request.epoch, current: room.epoch });
    }
    let appended = match request.kind {
        EntryKind::Text => append_text(conn, &room, request, retention),
        EntryKind::Join => append_join(conn, &room, request, retention),
        EntryKind::Leave => append_leave(conn, &room, request, retention),
        EntryKind::Edit | EntryKind::Delete | EntryKind::React | EntryKind::Unreact => {
            amend::append_change(conn, &room, request, retention)
        }
        EntryKind::Role | EntryKind::Kick | EntryKind::Ban | EntryKind::Unban | EntryKind::Mute => {
            moderate::append_moderation(conn, &room, request, retention)
        }
        EntryKind::Settings => moderate::append_settings(conn, &room, request, retention),
    }?;
    if !appended.duplicate {
        webhooks::queue_entry(conn, &appended.delivery.entry)?;
        super::push::queue_entry(conn, &appended.delivery.entry, in_room_log_only(&room, appended.delivery.entry.seq))?;
    }
    Ok(appended)
}

/// The entry a client id already named in this room, if any (a retried request).
pub(super) fn entry_by_client_id(
    conn: &Connection,
    room: &RoomRow,
    request: &AppendRequest,
) -> StoreResult<Option<Entry>> {
    conn.prepare_cached(ENTRY_BY_CLIENT_ID)
        .and_then(|mut s| {
            s.query_row(params![room.rid, request.from, request.id], |r| entry_columns(room.record.id.clone(), r, 0))
                .optional()
        })
        .ctx("look up client message id")
}

fn append_text(conn: &Connection, room: &RoomRow, request: &AppendRequest, retention: u64) -> StoreResult<Appended> {
    // Dedup before the membership check: a retry of an acknowledged send gets its ack back
    // even if the sender has left the room since.
    if let Some(entry) = entry_by_client_id(conn, room, request)? {
        return Ok(Appended { delivery: Delivery { entry, recipients: Recipients::none() }, duplicate: true });
    }
    // One read answers "a member?", "muted?" and "a moderator?": it is on every message's path.
    let role = moderate::check_unmuted_member(conn, room, &request.from, request.ts)?;
    crate::rules::check_may_post(&room.record.id, room.record.who_may_post, role)?;
    let mention_uids = amend::check_message_refs(conn, room, request)?;
    let media = super::media::check_attachments(conn, request)?;
    let seq = advance_room(conn, room, 0)?;
    let attachments = super::media::attach(conn, &media, &room.record.id, seq)?;
    let entry = Entry {
        room: room.record.id.clone(),
        seq,
        id: request.id.clone(),
        from: request.from.clone(),
        kind: EntryKind::Text,
        body: request.body.clone(),
        ts: request.ts,
        reply_to: request.details.reply_to,
        mentions: request.details.mentions.clone(),
        attachments,
        ..Entry::default()
    };
    insert_entry(conn, room.rid, &entry)?;
    amend::insert_mentions(conn, room.rid, seq, &mention_uids)?;
    let recipients = deliver(conn, room, seq, retention)?;
    Ok(Appended { delivery: Delivery { entry, recipients }, duplicate: false })
}

fn append_join(conn: &Connection, room: &RoomRow, request: &AppendRequest, retention: u64) -> StoreResult<Appended> {
    let room_id = &room.record.id;
    let user = request.user.as_deref().unwrap_or(&request.from);
    let uid = require_uid(conn, user)?;
    if member_exists(conn, room.rid, uid)? {
        return Err(StoreError::AlreadyMember { room: room_id.clone(), user: user.to_owned() });
    }
    if user == request.from {
        if room.record.private {
            return Err(StoreError::Forbidden(room_id.clone()));
        }
    } else {
        let inviter = match find_uid(conn, &request.from)? {
            Some(from_uid) => moderate::standing(conn, room.rid, from_uid)?,
            None => None,
        };
        let Some((role, _)) = inviter else {
            return Err(StoreError::NotMember { room: room_id.clone(), user: request.from.clone() });
        };
        crate::rules::check_may_invite(room_id, room.record.who_may_invite, role)?;
    }
    moderate::check_not_banned(conn, room, uid, user, request.ts)?;
    let limits = request.limits;
    if room.record.members >= limits.max_room_members {
        return Err(StoreError::RoomFull { room: room_id.clone(), limit: limits.max_room_members });
    }
    if rooms_count(conn, uid)? >= u64::from(limits.max_rooms_per_user) {
        return Err(StoreError::TooManyRooms { user: user.to_owned(), limit: limits.max_rooms_per_user });
    }
    let seq = advance_room(conn, room, 1)?;
    // The join that takes the room past the limit is its first entry kept in the room log only.
    let mut room = room.clone();
    let members = room.record.members + 1;
    maybe_make_large(conn, &mut room, members, seq, limits.fanout_max_members)?;
    conn.prepare_cached(MEMBER_INSERT)
        .and_then(|mut s| s.execute(params![room.rid, uid, sql_int(seq)]))
        .ctx("insert member")?;
    let entry = membership_entry(&room, request, EntryKind::Join, user, seq);
    insert_entry(conn, room.rid, &entry)?;
    // The new member is a member at commit time, so their log starts with their own join.
    let recipients = deliver(conn, &room, seq, retention)?;
    Ok(Appended { delivery: Delivery { entry, recipients }, duplicate: false })
}

fn append_leave(conn: &Connection, room: &RoomRow, request: &AppendRequest, retention: u64) -> StoreResult<Appended> {
    let user = request.user.as_deref().unwrap_or(&request.from);
    if user != request.from {
        // Removing someone else is not a feature (yet); refusing keeps a caller bug from
        // silently removing the wrong member.
        return Err(StoreError::Backend(format!(
            "invalid append to `{}`: `{}` cannot leave on behalf of `{user}`",
            room.record.id, request.from
        )));
    }
    let uid = find_uid(conn, user)?;
    let uid = match uid {
        Some(uid) if member_exists(conn, room.rid, uid)? => uid,
        _ => return Err(StoreError::NotMember { room: room.record.id.clone(), user: user.to_owned() }),
    };
    let seq = advance_room(conn, room, -1)?;
    let entry = membership_entry(room, request, EntryKind::Leave, user, seq);
    insert_entry(conn, room.rid, &entry)?;
    // Fan out while the leaver is still a member, so their other devices learn of the leave,
    // then drop the membership in the same transaction.
    let recipients = deliver(conn, room, seq, retention)?;
    conn.prepare_cached(MEMBER_DELETE).and_then(|mut s| s.execute(params![room.rid, uid])).ctx("delete member")?;
    Ok(Appended { delivery: Delivery { entry, recipients }, duplicate: false })
}

fn membership_entry(room: &RoomRow, request: &AppendRequest, kind: EntryKind, user: &str, seq: u64) -> Entry {
    Entry {
        room: room.record.id.clone(),
        seq,
        id: request.id.clone(),
        from: request.from.clone(),
        kind,
        user: Some(user.to_owned()),
        body: request.body.clone(),
        ts: request.ts,
        ..Entry::default()
    }
}

pub(super) fn history(conn: &Connection, room: &str, page: HistoryPage, limit: u32) -> StoreResult<(Vec<Entry>, bool)> {
    let rid = require_room(conn, room)?.rid;
    // One row past the limit tells whether more lie beyond, without a second query.
    let fetch = i64::from(limit) + 1;
    let (sql, bound) = match page {
        HistoryPage::Before(n) => (HISTORY_BEFORE, n),
        HistoryPage::After(n) => (HISTORY_AFTER, n),
    };
    let mut entries: Vec<Entry> = conn
        .prepare_cached(sql)
        .and_then(|mut s| {
            s.query_map(params![rid, sql_int(bound), fetch], |r| entry_columns(room.to_owned(), r, 0))?.collect()
        })
        .ctx("read history")?;
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    if matches!(page, HistoryPage::Before(_)) {
        entries.reverse();
    }
    debug_assert!(invariants::is_dense(entries.iter().map(|e| e.seq)), "room {room} history has a gap");
    Ok((entries, more))
}

pub(super) fn user_log(conn: &Connection, user: &str, after: Cursor, limit: u32) -> StoreResult<Vec<LogEntry>> {
    let uid = require_uid(conn, user)?;
    let entries: Vec<LogEntry> = conn
        .prepare_cached(LOG_PAGE)
        .and_then(|mut s| {
            s.query_map(params![uid, sql_int(after), i64::from(limit)], |r| {
                Ok(LogEntry { cursor: r.get(0)?, entry: entry_columns(r.get(1)?, r, 2)? })
            })?
            .collect()
        })
        .ctx("read user log")?;
    debug_assert!(invariants::is_dense(entries.iter().map(|e| e.cursor)), "user {user} log has a gap");
    Ok(entries)
}

fn log_bounds(conn: &Connection, user: &str) -> StoreResult<(i64, LogBounds)> {
    conn.prepare_cached(LOG_BOUNDS_BY_NAME)
        .and_then(|mut s| {
            s.query_row([user], |r| Ok((r.get(0)?, LogBounds { floor: r.get(1)?, head: r.get(2)? }))).optional()
        })
        .ctx("read user log bounds")?
        .ok_or_else(|| StoreError::NoSuchUser(user.to_owned()))
}

pub(super) fn user_log_bounds(conn: &Connection, user: &str) -> StoreResult<LogBounds> {
    Ok(log_bounds(conn, user)?.1)
}

pub(super) fn trim_user_log(conn: &Connection, user: &str, through: Cursor) -> StoreResult<u64> {
    let (uid, bounds) = log_bounds(conn, user)?;
    // Never past the head: the floor above the head would claim entries were trimmed that do
    // not exist yet, and the next append would land below the floor.
    let through = through.min(bounds.head);
    if through <= bounds.floor {
        return Ok(0);
    }
    trim_range(conn, uid, bounds.floor, through)
}

// Read positions.

pub(super) fn mark_read(conn: &Connection, user: &str, room: &str, seq: u64) -> StoreResult<u64> {
    let header = require_room(conn, room)?;
    let uid = require_uid(conn, user)?;
    let stored: Option<u64> = conn
        .prepare_cached(MARK_READ)
        .and_then(|mut s| {
            s.query_row(params![header.rid, uid, sql_int(seq), sql_int(header.record.last_seq)], |r| r.get(0))
                .optional()
        })
        .ctx("update read position")?;
    let stored = stored.ok_or_else(|| StoreError::NotMember { room: room.to_owned(), user: user.to_owned() })?;
    debug_assert!(invariants::read_within_room(stored, header.record.last_seq));
    super::push::after_read(conn, user, room, stored)?;
    Ok(stored)
}

pub(super) fn read_positions(conn: &Connection, room: &str) -> StoreResult<Vec<(String, u64)>> {
    let header = require_room(conn, room)?;
    let positions: Vec<(String, u64)> = conn
        .prepare_cached(READ_POSITIONS)
        .and_then(|mut s| s.query_map([header.rid], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .ctx("read read positions")?;
    debug_assert!(positions.windows(2).all(|p| p[0].0 < p[1].0), "room {room} read positions not sorted by name");
    debug_assert!(positions.iter().all(|(_, read)| invariants::read_within_room(*read, header.record.last_seq)));
    Ok(positions)
}

// Ownership.

pub(super) fn claim_room(conn: &Connection, room: &str, node: &str) -> StoreResult<Epoch> {
    conn.prepare_cached(ROOM_CLAIM)
        .and_then(|mut s| s.query_row([room, node], |r| r.get(0)).optional())
        .ctx("claim room")?
        .ok_or_else(|| StoreError::NoSuchRoom(room.to_owned()))
}

pub(super) fn room_owner(conn: &Connection, room: &str) -> StoreResult<Option<(String, Epoch)>> {
    Ok(find_room(conn, room)?.and_then(|r| r.owner.map(|owner| (owner, r.epoch))))
}
