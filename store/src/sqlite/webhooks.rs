//! Webhook endpoints, their outboxes and leases as SQL (see `crate::webhooks`): `webhooks` holds
//! the endpoints, `webhook_outbox` one row per event an endpoint has not acknowledged, written
//! in the transaction of the entry it points to, and `leases` who delivers.

use rusqlite::{params, Connection, Row};

use super::ops::sql_int;
use super::threads::Context;
use crate::webhooks::{self, EventMask, EventType, OutboxEvent, Subscribers, WebhookHealth, WebhookRecord};
use crate::{StoreError, StoreResult};
use protocol::Entry;

const INSERT: &str = "INSERT INTO webhooks (id, url, events, secret, created_ms, failures, last_error, dead_since) \
                      VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
const ALL: &str =
    "SELECT id, url, events, secret, created_ms, failures, last_error, dead_since FROM webhooks ORDER BY id";
const SUBSCRIBERS: &str = "SELECT id, events FROM webhooks";
const DELETE: &str = "DELETE FROM webhooks WHERE id = ?1";
const DELETE_OUTBOX: &str = "DELETE FROM webhook_outbox WHERE hook = ?1";
const SET_HEALTH: &str = "UPDATE webhooks SET failures = ?2, last_error = ?3, dead_since = ?4 WHERE id = ?1";
const QUEUE: &str = "INSERT OR IGNORE INTO webhook_outbox (hook, stream, seq, event) VALUES (?1, ?2, ?3, ?4)";
const OUTBOX: &str =
    "SELECT stream, seq, event FROM webhook_outbox WHERE hook = ?1 AND stream >= ?3 ORDER BY stream, seq LIMIT ?2";
const ACK: &str = "DELETE FROM webhook_outbox WHERE hook = ?1 AND stream = ?2 AND seq <= ?3";
const LEASE: &str = "INSERT INTO leases (name, holder, until_ms) VALUES (?1, ?2, ?4) \
                     ON CONFLICT (name) DO UPDATE SET holder = ?2, until_ms = ?4 \
                     WHERE leases.holder = ?2 OR leases.until_ms <= ?3";

pub(super) fn create(conn: &Connection, hook: &WebhookRecord) -> StoreResult<()> {
    let health = &hook.health;
    let inserted = conn.prepare_cached(INSERT).and_then(|mut s| {
        s.execute(params![
            hook.id,
            hook.url,
            hook.events.0,
            hook.secret,
            sql_int(hook.created_ms),
            health.failures,
            health.last_error,
            health.dead_since.map(sql_int),
        ])
    });
    match inserted {
        Ok(_) => Ok(()),
        Err(err) if err.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
            Err(StoreError::Backend(format!("webhook id `{}` is taken", hook.id)))
        }
        Err(err) => Err(err).ctx("insert webhook"),
    }
}

pub(super) fn all(conn: &Connection) -> StoreResult<Vec<WebhookRecord>> {
    conn.prepare_cached(ALL).and_then(|mut s| s.query_map([], record)?.collect()).ctx("list webhooks")
}

pub(super) fn delete(conn: &Connection, id: &str) -> StoreResult<bool> {
    let deleted = conn.prepare_cached(DELETE).and_then(|mut s| s.execute([id])).ctx("delete webhook")?;
    // Only an endpoint's own outbox: the push queue (`crate::push::QUEUE`) shares the table
    // but has no endpoint row, so no id the API is given can clear it.
    if deleted > 0 {
        conn.prepare_cached(DELETE_OUTBOX).and_then(|mut s| s.execute([id])).ctx("delete webhook outbox")?;
    }
    Ok(deleted > 0)
}

pub(super) fn set_health(conn: &Connection, id: &str, health: &WebhookHealth) -> StoreResult<bool> {
    let changed = conn
        .prepare_cached(SET_HEALTH)
        .and_then(|mut s| s.execute(params![id, health.failures, health.last_error, health.dead_since.map(sql_int)]))
        .ctx("set webhook health")?;
    Ok(changed > 0)
}

pub(super) fn outbox(conn: &Connection, id: &str, from: &str, limit: u32) -> StoreResult<Vec<OutboxEvent>> {
    conn.prepare_cached(OUTBOX)
        .and_then(|mut s| {
            s.query_map(params![id, limit, from], |row| {
                let code: u8 = row.get(2)?;
                let event = EventType::from_code(code).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        2,
                        rusqlite::types::Type::Integer,
                        format!("unknown webhook event code {code}").into(),
                    )
                })?;
                Ok(OutboxEvent { stream: row.get(0)?, seq: row.get::<_, i64>(1)?.max(0) as u64, event })
            })?
            .collect()
        })
        .ctx("read webhook outbox")
}

pub(super) fn ack(conn: &Connection, id: &str, stream: &str, through: u64) -> StoreResult<()> {
    conn.prepare_cached(ACK)
        .and_then(|mut s| s.execute(params![id, stream, sql_int(through)]))
        .ctx("acknowledge webhook events")?;
    Ok(())
}

pub(super) fn take_lease(conn: &Connection, name: &str, holder: &str, now_ms: u64, ttl_ms: u64) -> StoreResult<bool> {
    let until = now_ms.saturating_add(ttl_ms);
    let changed = conn
        .prepare_cached(LEASE)
        .and_then(|mut s| s.execute(params![name, holder, sql_int(now_ms), sql_int(until)]))
        .ctx("take lease")?;
    Ok(changed > 0)
}

/// Queue `entry` for every endpoint subscribed to its event: called in the transaction that
/// commits it.
pub(super) fn queue_entry(conn: &Connection, entry: &Entry) -> StoreResult<()> {
    if EventType::of_entry(entry).is_none() {
        return Ok(());
    }
    let subscribers = subscribers(conn)?;
    for (hook, event) in webhooks::rows_for(&subscribers, entry) {
        queue(conn, hook, &entry.room, entry.seq, event)?;
    }
    Ok(())
}

/// Queue the deletion of `user`'s account at `ts`, in the transaction that deletes it.
pub(super) fn queue_user_deleted(conn: &Connection, user: &str, ts: u64) -> StoreResult<()> {
    let stream = webhooks::user_stream(user);
    for (hook, mask) in subscribers(conn)? {
        if mask.contains(EventType::UserDeleted) {
            queue(conn, &hook, &stream, ts, EventType::UserDeleted)?;
        }
    }
    Ok(())
}

fn subscribers(conn: &Connection) -> StoreResult<Subscribers> {
    conn.prepare_cached(SUBSCRIBERS)
        .and_then(|mut s| s.query_map([], |row| Ok((row.get(0)?, EventMask(row.get(1)?))))?.collect())
        .ctx("read webhook subscribers")
}

fn queue(conn: &Connection, hook: &str, stream: &str, seq: u64, event: EventType) -> StoreResult<()> {
    conn.prepare_cached(QUEUE)
        .and_then(|mut s| s.execute(params![hook, stream, sql_int(seq), event.code()]))
        .ctx("queue webhook event")?;
    Ok(())
}

fn record(row: &Row<'_>) -> rusqlite::Result<WebhookRecord> {
    Ok(WebhookRecord {
        id: row.get(0)?,
        url: row.get(1)?,
        events: EventMask(row.get(2)?),
        secret: row.get(3)?,
        created_ms: row.get::<_, i64>(4)?.max(0) as u64,
        health: WebhookHealth {
            failures: row.get(5)?,
            last_error: row.get(6)?,
            dead_since: row.get::<_, Option<i64>>(7)?.map(|ms| ms.max(0) as u64),
        },
    })
}
