//! Deleting an account as SQL. What belongs to the user alone goes: their log, mentions,
//! presence note, bans, and blocks made by them or of them; their media records are doomed. The `users` row stays, without a
//! password hash and marked `deleted_ms`, for two reasons: the name stays taken (the UNIQUE
//! name), so nobody registers it again and appears as the author of the entries the user left
//! in room logs; and the `uid` is never handed out again, so the reactions the user gave, kept
//! by `uid`, are never counted as someone else's. Every lookup of a user by name
//! (`ops::find_uid`, `ops::user`) passes over deleted rows, so to the rest of the store the user
//! no longer exists.

use rusqlite::{params, Connection, OptionalExtension};

use super::ops::{require_uid, sql_int};
use super::threads::Context;
use crate::{StoreError, StoreResult};

const A_ROOM_OF: &str = "SELECT r.id FROM members m JOIN rooms r ON r.rid = m.rid WHERE m.uid = ?1 LIMIT 1";
const ERASE: &[&str] = &[
    "DELETE FROM user_log WHERE uid = ?1",
    "DELETE FROM user_logs WHERE uid = ?1",
    "DELETE FROM mentions WHERE uid = ?1",
    "DELETE FROM presence_notes WHERE uid = ?1",
    "DELETE FROM devices WHERE uid = ?1",
    "DELETE FROM blocks WHERE uid = ?1 OR blocked = ?1",
    "DELETE FROM bans WHERE uid = ?1",
];
const MARK_DELETED: &str =
    "UPDATE users SET password_hash = '', token_epoch = token_epoch + 1, deleted_ms = ?2 WHERE uid = ?1";

/// Delete `user`'s account at `ts` (see `Store::delete_account`).
pub(super) fn delete_account(conn: &Connection, user: &str, ts: u64) -> StoreResult<()> {
    let uid = require_uid(conn, user)?;
    // Memberships end by entries of their rooms, which only the rooms' owners append.
    let room: Option<String> = conn
        .prepare_cached(A_ROOM_OF)
        .and_then(|mut s| s.query_row([uid], |r| r.get(0)).optional())
        .ctx("read rooms")?;
    if let Some(room) = room {
        return Err(StoreError::AlreadyMember { room, user: user.to_owned() });
    }
    for sql in ERASE {
        conn.prepare_cached(sql).and_then(|mut s| s.execute([uid])).ctx("erase account data")?;
    }
    for sql in super::push::ERASE_USER {
        conn.prepare_cached(sql).and_then(|mut s| s.execute([user])).ctx("erase push state")?;
    }
    // Their uploads, attached or not, are doomed: the collector deletes the files.
    conn.prepare_cached(super::media::DOOM_OWNER).and_then(|mut s| s.execute([user])).ctx("doom media")?;
    conn.prepare_cached(MARK_DELETED).and_then(|mut s| s.execute(params![uid, sql_int(ts)])).ctx("delete account")?;
    super::webhooks::queue_user_deleted(conn, user, ts)
}
