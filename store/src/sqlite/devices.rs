//! Devices for push notifications as SQL: one `devices` row per (user, device id), erased with
//! the account.

use protocol::Platform;
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::ops::{require_uid, sql_int};
use super::threads::Context;
use crate::{DeviceRecord, StoreError, StoreResult};

const CREATED: &str = "SELECT created_ms FROM devices WHERE uid = ?1 AND id = ?2";
const COUNT: &str = "SELECT count(*) FROM devices WHERE uid = ?1";
const UPSERT: &str = "INSERT INTO devices (uid, id, platform, app, locale, token, p256dh, auth, created_ms, preview) \
                      VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                      ON CONFLICT (uid, id) DO UPDATE SET platform = excluded.platform, app = excluded.app, \
                      locale = excluded.locale, token = excluded.token, p256dh = excluded.p256dh, auth = excluded.auth, \
                      preview = excluded.preview";
const OF_USER: &str = "SELECT id, platform, app, locale, token, p256dh, auth, created_ms, preview FROM devices \
                       WHERE uid = ?1 ORDER BY created_ms, id";
const REMOVE: &str = "DELETE FROM devices WHERE uid = ?1 AND id = ?2";

pub(super) fn put(conn: &Connection, user: &str, device: &DeviceRecord, max: u32) -> StoreResult<DeviceRecord> {
    let uid = require_uid(conn, user)?;
    let created: Option<i64> = conn
        .prepare_cached(CREATED)
        .and_then(|mut s| s.query_row(params![uid, device.id], |r| r.get(0)).optional())
        .ctx("read device")?;
    if created.is_none() {
        let count: i64 =
            conn.prepare_cached(COUNT).and_then(|mut s| s.query_row([uid], |r| r.get(0))).ctx("count devices")?;
        if count >= i64::from(max) {
            return Err(StoreError::NotAllowed(format!("a user has at most {max} devices; remove one first")));
        }
    }
    let created_ms = created.map_or(device.created_ms, |ms| ms.max(0) as u64);
    conn.prepare_cached(UPSERT)
        .and_then(|mut s| {
            s.execute(params![
                uid,
                device.id,
                device.platform.name(),
                device.app,
                device.locale,
                device.token,
                device.p256dh,
                device.auth,
                sql_int(created_ms),
                device.preview
            ])
        })
        .ctx("store device")?;
    Ok(DeviceRecord { created_ms, ..device.clone() })
}

pub(super) fn of_user(conn: &Connection, user: &str) -> StoreResult<Vec<DeviceRecord>> {
    let uid = require_uid(conn, user)?;
    conn.prepare_cached(OF_USER).and_then(|mut s| s.query_map([uid], record)?.collect()).ctx("read devices")
}

pub(super) fn remove(conn: &Connection, user: &str, id: &str) -> StoreResult<bool> {
    let uid = require_uid(conn, user)?;
    let removed = conn.prepare_cached(REMOVE).and_then(|mut s| s.execute(params![uid, id])).ctx("remove device")?;
    Ok(removed > 0)
}

fn record(row: &Row<'_>) -> rusqlite::Result<DeviceRecord> {
    let platform: String = row.get(1)?;
    let platform = Platform::from_name(&platform).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(1, Type::Text, format!("platform `{platform}`").into())
    })?;
    Ok(DeviceRecord {
        id: row.get(0)?,
        platform,
        app: row.get(2)?,
        locale: row.get(3)?,
        token: row.get(4)?,
        p256dh: row.get(5)?,
        auth: row.get(6)?,
        created_ms: row.get::<_, i64>(7)?.max(0) as u64,
        preview: row.get(8)?,
    })
}
