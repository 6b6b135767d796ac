//! The push path's state as SQL (see `crate::push`): the queue is the webhook outbox under
//! the reserved id `push`; `push_told` holds, per (user, room), the seq of the latest entry a
//! push told the user of; `push_clears` the clears a read owes their devices.

use rusqlite::{params, Connection, OptionalExtension};

use super::ops::{notify_column, require_room, sql_int};
use super::threads::Context;
use crate::push::{self, PushClear, PushMember};
use crate::StoreResult;
use protocol::Entry;

const MEMBERS: &str = "SELECT u.name, m.joined_seq, m.read_seq, m.notify, m.notify_muted_until \
                       FROM members m JOIN users u ON u.uid = m.uid WHERE m.rid = ?1 ORDER BY u.name";
const QUEUE: &str = "INSERT OR IGNORE INTO webhook_outbox (hook, stream, seq, event) VALUES (?1, ?2, ?3, ?4)";
const ACK: &str = "DELETE FROM webhook_outbox WHERE hook = ?1 AND stream = ?2 AND seq <= ?3";
const TOLD: &str = "INSERT INTO push_told (user, room, seq) VALUES (?1, ?2, ?3) \
                    ON CONFLICT (user, room) DO UPDATE SET seq = max(seq, excluded.seq)";
const TOLD_THROUGH: &str = "SELECT seq FROM push_told WHERE user = ?1 AND room = ?2";
const FORGET_TOLD: &str = "DELETE FROM push_told WHERE user = ?1 AND room = ?2";
const OWE_CLEAR: &str = "INSERT INTO push_clears (user, room, read_seq) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (user, room) DO UPDATE SET read_seq = max(read_seq, excluded.read_seq)";
const CLEARS: &str = "SELECT user, room, read_seq FROM push_clears ORDER BY user, room LIMIT ?1";
const CLEARED: &str = "DELETE FROM push_clears WHERE user = ?1 AND room = ?2 AND read_seq <= ?3";
pub(super) const ERASE_USER: &[&str] =
    &["DELETE FROM push_told WHERE user = ?1", "DELETE FROM push_clears WHERE user = ?1"];

/// Queue `entry` for the push worker if it may notify anyone: in the transaction committing it.
pub(super) fn queue_entry(conn: &Connection, entry: &Entry, large: bool) -> StoreResult<()> {
    if push::queues(entry, large) {
        let event = crate::EventType::MessagePosted.code();
        conn.prepare_cached(QUEUE)
            .and_then(|mut s| s.execute(params![push::QUEUE, entry.room, sql_int(entry.seq), event]))
            .ctx("queue push")?;
    }
    Ok(())
}

pub(super) fn members(conn: &Connection, room: &str) -> StoreResult<Vec<PushMember>> {
    let rid = require_room(conn, room)?.rid;
    conn.prepare_cached(MEMBERS)
        .and_then(|mut s| {
            s.query_map([rid], |r| {
                Ok(PushMember {
                    user: r.get(0)?,
                    joined_seq: r.get::<_, i64>(1)?.max(0) as u64,
                    read_seq: r.get::<_, i64>(2)?.max(0) as u64,
                    notify: notify_column(r, 3)?,
                    muted_until: r.get::<_, Option<i64>>(4)?.map(|ms| ms.max(0) as u64),
                })
            })?
            .collect()
        })
        .ctx("read push members")
}

pub(super) fn done(conn: &Connection, room: &str, through: u64, told: &[(String, u64)]) -> StoreResult<()> {
    conn.prepare_cached(ACK)
        .and_then(|mut s| s.execute(params![push::QUEUE, room, sql_int(through)]))
        .ctx("acknowledge pushes")?;
    for (user, seq) in told {
        conn.prepare_cached(TOLD).and_then(|mut s| s.execute(params![user, room, sql_int(*seq)])).ctx("record push")?;
    }
    Ok(())
}

/// After `user`'s read position in `room` became `read`: owe a clear if it reaches what a push
/// told them. Called in the transaction that moves the position.
pub(super) fn after_read(conn: &Connection, user: &str, room: &str, read: u64) -> StoreResult<()> {
    let told: Option<i64> = conn
        .prepare_cached(TOLD_THROUGH)
        .and_then(|mut s| s.query_row(params![user, room], |r| r.get(0)).optional())
        .ctx("read push record")?;
    if told.is_some_and(|seq| seq.max(0) as u64 <= read) {
        conn.prepare_cached(FORGET_TOLD).and_then(|mut s| s.execute(params![user, room])).ctx("forget push")?;
        conn.prepare_cached(OWE_CLEAR)
            .and_then(|mut s| s.execute(params![user, room, sql_int(read)]))
            .ctx("owe push clear")?;
    }
    Ok(())
}

pub(super) fn clears(conn: &Connection, limit: u32) -> StoreResult<Vec<PushClear>> {
    conn.prepare_cached(CLEARS)
        .and_then(|mut s| {
            s.query_map([limit], |r| {
                Ok(PushClear { user: r.get(0)?, room: r.get(1)?, read_seq: r.get::<_, i64>(2)?.max(0) as u64 })
            })?
            .collect()
        })
        .ctx("read push clears")
}

pub(super) fn cleared(conn: &Connection, clears: &[PushClear]) -> StoreResult<()> {
    for clear in clears {
        conn.prepare_cached(CLEARED)
            .and_then(|mut s| s.execute(params![clear.user, clear.room, sql_int(clear.read_seq)]))
            .ctx("forget push clear")?;
    }
    Ok(())
}
