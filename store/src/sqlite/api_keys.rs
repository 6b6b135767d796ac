//! Server API keys as SQL: one row per key in `api_keys`, never deleted (a revoked key stays,
//! with when it was revoked, so the list answers "which key was that" after the fact).

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::ops::sql_int;
use super::threads::Context;
use crate::{ApiKeyRecord, StoreError, StoreResult};

const INSERT: &str = "INSERT INTO api_keys (id, name, scopes, secret_sha256, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)";
const BY_ID: &str = "SELECT id, name, scopes, secret_sha256, created_ms, revoked_ms FROM api_keys WHERE id = ?1";
const ALL: &str = "SELECT id, name, scopes, secret_sha256, created_ms, revoked_ms FROM api_keys ORDER BY id";
const REVOKE: &str = "UPDATE api_keys SET revoked_ms = coalesce(revoked_ms, ?2) WHERE id = ?1";

pub(super) fn create(conn: &Connection, key: &ApiKeyRecord) -> StoreResult<()> {
    let scopes = key.scopes.join(" ");
    let inserted = conn.prepare_cached(INSERT).and_then(|mut s| {
        s.execute(params![key.id, key.name, scopes, &key.secret_sha256[..], sql_int(key.created_ms)])
    });
    match inserted {
        Ok(_) => Ok(()),
        Err(err) if err.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
            Err(StoreError::Backend(format!("api key id `{}` is taken", key.id)))
        }
        Err(err) => Err(err).ctx("insert api key"),
    }
}

pub(super) fn by_id(conn: &Connection, id: &str) -> StoreResult<Option<ApiKeyRecord>> {
    conn.prepare_cached(BY_ID).and_then(|mut s| s.query_row([id], record).optional()).ctx("read api key")
}

pub(super) fn all(conn: &Connection) -> StoreResult<Vec<ApiKeyRecord>> {
    conn.prepare_cached(ALL).and_then(|mut s| s.query_map([], record)?.collect()).ctx("list api keys")
}

pub(super) fn revoke(conn: &Connection, id: &str, ts: u64) -> StoreResult<bool> {
    let changed =
        conn.prepare_cached(REVOKE).and_then(|mut s| s.execute(params![id, sql_int(ts)])).ctx("revoke api key")?;
    Ok(changed > 0)
}

fn record(row: &Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    let scopes: String = row.get(2)?;
    let hash: Vec<u8> = row.get(3)?;
    let secret_sha256 = <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Blob, "api key hash is not 32 bytes".into())
    })?;
    Ok(ApiKeyRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        secret_sha256,
        created_ms: row.get::<_, i64>(4)?.max(0) as u64,
        revoked_ms: row.get::<_, Option<i64>>(5)?.map(|ms| ms.max(0) as u64),
    })
}
