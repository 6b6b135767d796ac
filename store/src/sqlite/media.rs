//! Uploaded media as SQL (see `crate::media`): one `media` row per upload, keyed by its random
//! id. Its state is a column (`uploading`, `ready`, `attached` with the `room` and `seq` of the
//! message that posted it, `doomed`); three indexes answer the questions other than "this id":
//! `media_by_owner` (owner, state, size) covers an owner's usage, the partial index
//! `media_unattached` lists the uploads still `uploading` or `ready` by creation time (what the
//! collector dooms when they are stale), and the partial index `media_doomed` lists the doomed
//! ones by id (what the collector deletes). The quota check reads the owner's usage in the
//! transaction that inserts the row, and every write runs in the writer's one `BEGIN IMMEDIATE`
//! transaction, so two reservations cannot both pass the check.
//!
//! Attaching happens in the append's transaction (`ops::append_text`, via [`check_attachments`]
//! and [`attach`]); a delete of the message dooms them ([`doom_attachments`]), and so does the
//! deletion of the owner's account ([`DOOM_OWNER`]).

use std::collections::HashSet;

use protocol::Attachment;
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::ops::{find_uid, sql_int};
use super::threads::Context;
use crate::{AppendRequest, MediaRecord, MediaState, StoreError, StoreResult};

/// The columns [`record`] reads, in its order.
macro_rules! columns {
    () => {
        "id, owner, name, content_type, size, sha256, width, height, thumb_width, thumb_height, created_ms, state, room, seq"
    };
}
const INSERT: &str = "INSERT INTO media (id, owner, name, content_type, size, sha256, width, height, thumb_width, \
                      thumb_height, created_ms, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'uploading')";
const EXISTS: &str = "SELECT 1 FROM media WHERE id = ?1";
const USAGE: &str = "SELECT coalesce(sum(size), 0) FROM media WHERE owner = ?1 AND state <> 'doomed'";
const COMPLETE: &str = "UPDATE media SET name = ?3, content_type = ?4, size = ?5, sha256 = ?6, width = ?7, \
                        height = ?8, thumb_width = ?9, thumb_height = ?10, state = 'ready' \
                        WHERE id = ?1 AND owner = ?2 AND state = 'uploading'";
const DOOM_STALE: &str = "UPDATE media SET state = 'doomed' WHERE state IN ('uploading', 'ready') AND created_ms < ?1";
const ATTACH: &str = "UPDATE media SET state = 'attached', room = ?2, seq = ?3 WHERE id = ?1 AND state = 'ready'";
const DOOM_ATTACHED: &str = "UPDATE media SET state = 'doomed', room = NULL, seq = NULL \
                             WHERE id = ?1 AND state = 'attached' AND room = ?2 AND seq = ?3";
/// Every record of the user named `?1` that is not doomed yet becomes doomed: run by
/// `erase::delete_account` in the deletion's transaction.
pub(super) const DOOM_OWNER: &str =
    "UPDATE media SET state = 'doomed', room = NULL, seq = NULL WHERE owner = ?1 AND state <> 'doomed'";
const DROP: &str = "DELETE FROM media WHERE id = ?1";

const BY_ID: &str = concat!("SELECT ", columns!(), " FROM media WHERE id = ?1");
const DOOMED: &str = concat!("SELECT ", columns!(), " FROM media WHERE state = 'doomed' ORDER BY id LIMIT ?1");

/// Statements on the paths of this module, for the query-plan test.
#[cfg(test)]
pub(super) fn hot_queries() -> Vec<String> {
    [EXISTS, USAGE, COMPLETE, DOOM_STALE, ATTACH, DOOM_ATTACHED, DOOM_OWNER, DROP, BY_ID, DOOMED]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

fn opt_u32(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<u32>> {
    let value: Option<i64> = row.get(index)?;
    value
        .map(|n| {
            u32::try_from(n).map_err(|_| {
                rusqlite::Error::FromSqlConversionFailure(index, Type::Integer, format!("`{n}` is no u32").into())
            })
        })
        .transpose()
}

/// A record from the columns of `columns!()`, in that order.
fn record(row: &Row<'_>) -> rusqlite::Result<MediaRecord> {
    let state: String = row.get(11)?;
    let state = match state.as_str() {
        "uploading" => MediaState::Uploading,
        "ready" => MediaState::Ready,
        "attached" => MediaState::Attached { room: row.get(12)?, seq: row.get::<_, i64>(13)?.max(0) as u64 },
        "doomed" => MediaState::Doomed,
        _ => {
            return Err(rusqlite::Error::FromSqlConversionFailure(
                11,
                Type::Text,
                format!("unknown media state `{state}`").into(),
            ))
        }
    };
    let thumbnail = match (opt_u32(row, 8)?, opt_u32(row, 9)?) {
        (Some(width), Some(height)) => Some((width, height)),
        _ => None,
    };
    Ok(MediaRecord {
        id: row.get(0)?,
        owner: row.get(1)?,
        name: row.get(2)?,
        content_type: row.get(3)?,
        size: row.get::<_, i64>(4)?.max(0) as u64,
        sha256: row.get(5)?,
        width: opt_u32(row, 6)?,
        height: opt_u32(row, 7)?,
        thumbnail,
        created_ms: row.get::<_, i64>(10)?.max(0) as u64,
        state,
    })
}

pub(super) fn by_id_in(conn: &Connection, id: &str) -> StoreResult<Option<MediaRecord>> {
    conn.prepare_cached(BY_ID).and_then(|mut s| s.query_row([id], record).optional()).ctx("read media")
}

fn usage_of(conn: &Connection, user: &str) -> StoreResult<u64> {
    let bytes: i64 =
        conn.prepare_cached(USAGE).and_then(|mut s| s.query_row([user], |r| r.get(0))).ctx("read media usage")?;
    Ok(bytes.max(0) as u64)
}

/// `Store::reserve_media`: the record is stored `uploading`, whatever `media.state` says.
pub(super) fn reserve(conn: &Connection, media: &MediaRecord, quota_bytes: u64) -> StoreResult<()> {
    // An upload of an unknown or deleted user would outlive the deletion that dooms the rest.
    if find_uid(conn, &media.owner)?.is_none() {
        return Err(StoreError::NoSuchUser(media.owner.clone()));
    }
    if conn.prepare_cached(EXISTS).and_then(|mut s| s.exists([&media.id])).ctx("look up media id")? {
        return Err(StoreError::Backend("media id collision".into()));
    }
    // Read in the transaction that inserts: the writer runs one transaction at a time (and other
    // processes wait for its lock), so no other reservation slips in between.
    let used = usage_of(conn, &media.owner)?;
    if used.saturating_add(media.size) > quota_bytes {
        return Err(StoreError::QuotaExceeded { user: media.owner.clone(), quota: quota_bytes });
    }
    write_record(conn, INSERT, media, Some(media.created_ms)).ctx("insert media")?;
    Ok(())
}

/// Run `sql` (INSERT or COMPLETE) with the record's own fields as ?1 to ?10, and `created_ms`
/// as ?11 when given; the rows changed.
fn write_record(conn: &Connection, sql: &str, media: &MediaRecord, created_ms: Option<u64>) -> rusqlite::Result<usize> {
    let (thumb_width, thumb_height) = media.thumbnail.unzip();
    let (size, created) = (sql_int(media.size), created_ms.map(sql_int));
    let mut fields: Vec<&dyn rusqlite::ToSql> = vec![
        &media.id,
        &media.owner,
        &media.name,
        &media.content_type,
        &size,
        &media.sha256,
        &media.width,
        &media.height,
        &thumb_width,
        &thumb_height,
    ];
    if let Some(created) = &created {
        fields.push(created);
    }
    conn.prepare_cached(sql)?.execute(&*fields)
}

/// `Store::complete_media`: owner and creation time stay as reserved.
pub(super) fn complete(conn: &Connection, media: &MediaRecord) -> StoreResult<()> {
    let changed = write_record(conn, COMPLETE, media, None).ctx("complete media")?;
    if changed == 0 {
        return Err(StoreError::NoSuchMedia(media.id.clone()));
    }
    Ok(())
}

pub(super) fn usage(conn: &Connection, user: &str) -> StoreResult<u64> {
    usage_of(conn, user)
}

pub(super) fn garbage(conn: &Connection, stale_before_ms: u64, limit: u32) -> StoreResult<Vec<MediaRecord>> {
    conn.prepare_cached(DOOM_STALE).and_then(|mut s| s.execute([sql_int(stale_before_ms)])).ctx("doom stale media")?;
    conn.prepare_cached(DOOMED)
        .and_then(|mut s| s.query_map([i64::from(limit)], record)?.collect())
        .ctx("read doomed media")
}

pub(super) fn drop_records(conn: &Connection, ids: &[String]) -> StoreResult<()> {
    for id in ids {
        conn.prepare_cached(DROP).and_then(|mut s| s.execute([id])).ctx("drop media")?;
    }
    Ok(())
}

/// The records a text append attaches, checked: each attachment names a `ready` upload of the
/// sender (`NoSuchMedia` otherwise, and for one named twice `MediaInUse`), not attached yet
/// (`MediaInUse`). Runs before the append writes anything.
pub(super) fn check_attachments(conn: &Connection, request: &AppendRequest) -> StoreResult<Vec<MediaRecord>> {
    let mut seen = HashSet::with_capacity(request.details.attachments.len());
    let mut records = Vec::with_capacity(request.details.attachments.len());
    for attachment in &request.details.attachments {
        let id = &attachment.media;
        if !seen.insert(id.as_str()) {
            return Err(StoreError::MediaInUse(id.clone()));
        }
        let found = by_id_in(conn, id)?;
        records.push(crate::media::attachable(found, id, &request.from)?);
    }
    Ok(records)
}

/// Attach the checked `records` to entry `seq` of `room`; the attachments the entry carries, as
/// the records say.
pub(super) fn attach(conn: &Connection, records: &[MediaRecord], room: &str, seq: u64) -> StoreResult<Vec<Attachment>> {
    for media in records {
        let changed = conn
            .prepare_cached(ATTACH)
            .and_then(|mut s| s.execute(params![media.id, room, sql_int(seq)]))
            .ctx("attach media")?;
        debug_assert_eq!(changed, 1, "media {} was checked ready in this transaction", media.id);
    }
    Ok(records.iter().map(MediaRecord::attachment).collect())
}

/// Doom the media a deleted message `seq` of `room` carried (`attachments`): those still
/// attached to it (a record doomed already, with its owner's account, stays so).
pub(super) fn doom_attachments(conn: &Connection, room: &str, seq: u64, attachments: &[Attachment]) -> StoreResult<()> {
    for attachment in attachments {
        conn.prepare_cached(DOOM_ATTACHED)
            .and_then(|mut s| s.execute(params![attachment.media, room, sql_int(seq)]))
            .ctx("doom media")?;
    }
    Ok(())
}
