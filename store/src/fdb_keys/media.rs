//! Uploaded media over the key-value transaction (see `crate::media`), by the rules of the
//! SQLite backend's `media`.
//!
//! A record lives under `(P, "media", id)`. Three kinds of key stand for the questions asked of
//! many records at once, so none of them reads every record:
//! - `mused` holds, per owner, the bytes of their records that are not doomed: the quota check
//!   and `media_usage` are one point read, and two reservations of one owner both read and
//!   write it, so FoundationDB lets only one of them commit on what it read (the other retries
//!   and sees the first one's bytes);
//! - `mown` lists an owner's records, for the account deletion that dooms them all;
//! - `mwait` lists the records still uploading or ready by creation time, for the collector to
//!   doom those that went stale (a range read up to the staleness bound), and `mdoom` the doomed
//!   ones by id, for it to delete (a range read from the start).
//!
//! Every change of state keeps them in step, in the transaction that makes it: reserving sets
//! `media`, `mown`, `mwait` and raises `mused`; completing rewrites `media` (and `mused` by the
//! size measured); attaching (in the append's transaction) rewrites `media` and clears `mwait`;
//! dooming rewrites `media`, clears `mwait`, sets `mdoom` and lowers `mused`; dropping clears
//! them all (lowering `mused` for a record not doomed).

use std::collections::{BTreeMap, BTreeSet};

use protocol::Attachment;

use super::kv::{corrupt, Attempt, KvTxn};
use super::layout::Keyspace;
use super::limits::{page_rows, WriteSet, TRANSACTION_BYTES_BUDGET};
use super::ops::{decode_at, R};
use super::values::{decode_media, decode_u64, encode_marker, encode_media, encode_u64, CodecError};
use crate::{AppendRequest, MediaRecord, MediaState, StoreError};

/// Most stale records one `media_garbage` call dooms: the rest are doomed by the next call
/// (the collector runs again). Bounds the transaction, which also stops early at half the
/// transaction budget whatever the records' sizes.
pub const DOOM_PER_PASS: usize = 256;

/// The records of `ids` (`None` for an id without one), in one round trip.
async fn records<X: KvTxn>(t: &X, ks: &Keyspace, ids: &[String]) -> R<Vec<Option<MediaRecord>>, X> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<Vec<u8>> = ids.iter().map(|id| ks.media(id)).collect();
    let values = t.get_many(&keys).await?;
    ids.iter()
        .zip(&keys)
        .zip(values)
        .map(|((id, key), value)| {
            value.map(|bytes| decode_media(id.clone(), &bytes).map_err(|e| corrupt(key, e))).transpose()
        })
        .collect()
}

pub(super) async fn by_id<X: KvTxn>(t: &X, ks: &Keyspace, id: &str) -> R<Option<MediaRecord>, X> {
    Ok(records(t, ks, &[id.to_string()]).await?.pop().flatten())
}

pub(super) async fn usage<X: KvTxn>(t: &X, ks: &Keyspace, user: &str) -> R<u64, X> {
    let key = ks.media_usage(user);
    let bytes = t.get(&key).await?;
    Ok(decode_at::<X, _>(&key, bytes, decode_u64)?.unwrap_or(0))
}

/// Set `owner`'s usage to `bytes` (no key for none).
fn set_usage(writes: &mut WriteSet, ks: &Keyspace, owner: &str, bytes: u64) {
    if bytes == 0 {
        writes.clear(ks.media_usage(owner));
    } else {
        writes.set(ks.media_usage(owner), encode_u64(bytes));
    }
}

/// Lower each owner's usage by the bytes given for them.
async fn lower_usage<X: KvTxn>(t: &X, ks: &Keyspace, freed: &BTreeMap<String, u64>, writes: &mut WriteSet) -> R<(), X> {
    if freed.is_empty() {
        return Ok(());
    }
    let keys: Vec<Vec<u8>> = freed.keys().map(|owner| ks.media_usage(owner)).collect();
    for key in &keys {
        writes.read(key);
    }
    let values = t.get_many(&keys).await?;
    for (((owner, bytes), key), value) in freed.iter().zip(&keys).zip(values) {
        let used = decode_at::<X, _>(key, value, decode_u64)?.unwrap_or(0);
        set_usage(writes, ks, owner, used.saturating_sub(*bytes));
    }
    Ok(())
}

/// `Store::reserve_media`: the record is stored uploading, whatever `media.state` says.
pub(super) async fn reserve<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    media: &MediaRecord,
    quota_bytes: u64,
    attempt: Attempt,
) -> R<(), X> {
    let (account, key, usage_key) = (ks.account(&media.owner), ks.media(&media.id), ks.media_usage(&media.owner));
    let mut writes = WriteSet::new();
    for read in [&account, &key, &usage_key] {
        writes.read(read);
    }
    let mut got = t.get_many(&[account, key.clone(), usage_key.clone()]).await?.into_iter();
    // An upload of an unknown or deleted user would outlive the deletion that dooms the rest.
    if got.next().flatten().is_none() {
        return Err(StoreError::NoSuchUser(media.owner.clone()).into());
    }
    let record = MediaRecord { state: MediaState::Uploading, ..media.clone() };
    if let Some(bytes) = got.next().flatten() {
        let existing = decode_media(media.id.clone(), &bytes).map_err(|e| corrupt(&key, e))?;
        // Our own earlier attempt, committed after all (ids are random: nobody else's).
        if attempt.maybe_committed && existing == record {
            return Ok(());
        }
        return Err(StoreError::Backend("media id collision".into()).into());
    }
    let used = decode_at::<X, _>(&usage_key, got.next().flatten(), decode_u64)?.unwrap_or(0);
    let total = used.saturating_add(media.size);
    if total > quota_bytes {
        return Err(StoreError::QuotaExceeded { user: media.owner.clone(), quota: quota_bytes }.into());
    }
    writes.set(key, encode_media(&record));
    writes.set(ks.media_of(&media.owner, &media.id), encode_marker());
    writes.set(ks.media_waiting(media.created_ms, &media.id), encode_marker());
    set_usage(&mut writes, ks, &media.owner, total);
    writes.check("reserve media")?;
    t.apply(writes);
    Ok(())
}

/// `Store::complete_media`: owner and creation time stay as reserved.
pub(super) async fn complete<X: KvTxn>(t: &X, ks: &Keyspace, media: &MediaRecord, attempt: Attempt) -> R<(), X> {
    let Some(stored) = by_id(t, ks, &media.id).await? else {
        return Err(StoreError::NoSuchMedia(media.id.clone()).into());
    };
    let ready = MediaRecord {
        owner: stored.owner.clone(),
        created_ms: stored.created_ms,
        state: MediaState::Ready,
        ..media.clone()
    };
    if stored.owner != media.owner || stored.state != MediaState::Uploading {
        // Our own earlier attempt, committed after all.
        if attempt.maybe_committed && stored == ready {
            return Ok(());
        }
        return Err(StoreError::NoSuchMedia(media.id.clone()).into());
    }
    let mut writes = WriteSet::new();
    let used = usage(t, ks, &stored.owner).await?;
    set_usage(&mut writes, ks, &stored.owner, used.saturating_sub(stored.size).saturating_add(ready.size));
    writes.set(ks.media(&media.id), encode_media(&ready));
    writes.check("complete media")?;
    t.apply(writes);
    Ok(())
}

/// Doom `records` (those doomed already are left as they are): their state, their `mwait` and
/// `mdoom` keys, their owners' usage.
async fn doom<X: KvTxn>(t: &X, ks: &Keyspace, records: Vec<MediaRecord>, writes: &mut WriteSet) -> R<(), X> {
    let mut freed: BTreeMap<String, u64> = BTreeMap::new();
    let mut done = BTreeSet::new();
    for record in records {
        if record.state == MediaState::Doomed || !done.insert(record.id.clone()) {
            continue;
        }
        writes.clear(ks.media_waiting(record.created_ms, &record.id));
        writes.set(ks.media_doomed(&record.id), encode_marker());
        *freed.entry(record.owner.clone()).or_default() += record.size;
        writes.set(ks.media(&record.id), encode_media(&MediaRecord { state: MediaState::Doomed, ..record }));
    }
    lower_usage(t, ks, &freed, writes).await
}

/// `Store::media_garbage`: at most [`DOOM_PER_PASS`] stale records doomed per call, at most
/// `PAGE_ROWS_MAX` doomed ones returned.
pub(super) async fn garbage<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    stale_before_ms: u64,
    limit: u32,
) -> R<Vec<MediaRecord>, X> {
    let mut writes = WriteSet::new();
    let waiting = ks.media_waiting_before(stale_before_ms);
    writes.read_range(&waiting);
    let mut waiting_keys = Vec::new();
    let mut ids = Vec::new();
    for (key, _) in t.get_range(&waiting, Some(DOOM_PER_PASS), false).await? {
        let (_, id) = ks.media_waiting_entry(&key).map_err(|e| corrupt(&key, e))?;
        waiting_keys.push(key);
        ids.push(id);
    }
    let mut stale = Vec::with_capacity(ids.len());
    let mut estimate = 0;
    for (key, record) in waiting_keys.into_iter().zip(records(t, ks, &ids).await?) {
        match record {
            Some(record) if matches!(record.state, MediaState::Uploading | MediaState::Ready) => {
                // What dooming it writes, roughly thrice over: stop well inside the budget.
                estimate += 3 * (encode_media(&record).len() + 6 * key.len());
                if estimate > TRANSACTION_BYTES_BUDGET / 2 {
                    break;
                }
                stale.push(record);
            }
            // An index key its record does not match (it never happens while every write keeps
            // them in step): cleared, so it cannot hold up the collector.
            _ => writes.clear(key),
        }
    }
    doom(t, ks, stale, &mut writes).await?;
    writes.check("doom stale media")?;
    t.apply(writes);

    let mut doomed = Vec::new();
    // Like every page, at most `PAGE_ROWS_MAX` records (FoundationDB reads a limit of 0 as none).
    let rows = page_rows(limit);
    if rows > 0 {
        for (key, _) in t.get_range(&ks.media_doomed_range(), Some(rows), false).await? {
            doomed.push(ks.media_doomed_id(&key).map_err(|e| corrupt(&key, e))?);
        }
    }
    let found = records(t, ks, &doomed).await?;
    doomed
        .iter()
        .zip(found)
        .map(|(id, record)| record.ok_or_else(|| corrupt::<X::Error>(&ks.media_doomed(id), CodecError::Empty)))
        .collect()
}

/// `Store::drop_media`: every key of each record, whatever its state; unknown ids are skipped.
pub(super) async fn drop_records<X: KvTxn>(t: &X, ks: &Keyspace, ids: &[String]) -> R<(), X> {
    let mut writes = WriteSet::new();
    let mut freed: BTreeMap<String, u64> = BTreeMap::new();
    for record in records(t, ks, ids).await?.into_iter().flatten() {
        writes.clear(ks.media(&record.id));
        writes.clear(ks.media_of(&record.owner, &record.id));
        writes.clear(ks.media_waiting(record.created_ms, &record.id));
        writes.clear(ks.media_doomed(&record.id));
        if record.state != MediaState::Doomed {
            *freed.entry(record.owner.clone()).or_default() += record.size;
        }
    }
    lower_usage(t, ks, &freed, &mut writes).await?;
    writes.check("drop media")?;
    t.apply(writes);
    Ok(())
}

/// The records a text append attaches, checked: each attachment names a ready upload of the
/// sender (`NoSuchMedia` otherwise, and for one named twice `MediaInUse`), not attached yet
/// (`MediaInUse`). Reads only; the append writes them ([`attach`]) once it has its seq.
pub(super) async fn check_attachments<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    request: &AppendRequest,
    writes: &mut WriteSet,
) -> R<Vec<MediaRecord>, X> {
    let mut ids: Vec<String> = Vec::with_capacity(request.details.attachments.len());
    for attachment in &request.details.attachments {
        if ids.contains(&attachment.media) {
            return Err(StoreError::MediaInUse(attachment.media.clone()).into());
        }
        ids.push(attachment.media.clone());
    }
    for id in &ids {
        writes.read(&ks.media(id));
    }
    let found = records(t, ks, &ids).await?;
    let mut attachable = Vec::with_capacity(ids.len());
    for (id, record) in ids.iter().zip(found) {
        attachable.push(crate::media::attachable(record, id, &request.from)?);
    }
    Ok(attachable)
}

/// Attach the checked `records` to entry `seq` of `room`; the attachments the entry carries, as
/// the records say.
pub(super) fn attach(
    writes: &mut WriteSet,
    ks: &Keyspace,
    records: &[MediaRecord],
    room: &str,
    seq: u64,
) -> Vec<Attachment> {
    for record in records {
        writes.clear(ks.media_waiting(record.created_ms, &record.id));
        let attached = MediaRecord { state: MediaState::Attached { room: room.to_string(), seq }, ..record.clone() };
        writes.set(ks.media(&record.id), encode_media(&attached));
    }
    records.iter().map(MediaRecord::attachment).collect()
}

/// Doom the media a deleted message `seq` of `room` carried (`attachments`): those still
/// attached to it.
pub(super) async fn doom_attachments<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    room: &str,
    seq: u64,
    attachments: &[Attachment],
    writes: &mut WriteSet,
) -> R<(), X> {
    let ids: Vec<String> = attachments.iter().map(|a| a.media.clone()).collect();
    for id in &ids {
        writes.read(&ks.media(id));
    }
    let attached_here = MediaState::Attached { room: room.to_string(), seq };
    let records = records(t, ks, &ids).await?.into_iter().flatten().filter(|r| r.state == attached_here).collect();
    doom(t, ks, records, writes).await
}

/// Doom every record of `owner` (their account is being deleted).
pub(super) async fn doom_owner<X: KvTxn>(t: &X, ks: &Keyspace, owner: &str, writes: &mut WriteSet) -> R<(), X> {
    let mut ids = Vec::new();
    for (key, _) in t.get_range(&ks.media_of_range(owner), None, false).await? {
        ids.push(ks.media_of_id(owner, &key).map_err(|e| corrupt(&key, e))?);
    }
    let records = records(t, ks, &ids).await?.into_iter().flatten().collect();
    doom(t, ks, records, writes).await
}
