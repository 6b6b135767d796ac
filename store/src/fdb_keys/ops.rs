//! The store's operations over an ordered key-value transaction: the FoundationDB backend's
//! logic, one function per [`Store`] method, each one attempt of one transaction.
//!
//! Every function reads what it decides on inside its transaction (room head, owner epoch,
//! memberships, user-log heads), collects its writes in a [`WriteSet`], checks them against
//! FoundationDB's limits and only then sends them, so a refused request writes nothing. The
//! rules (error precedence, ids of creation joins, automatic retention, when a room becomes
//! large) are those of the SQLite backend, so both pass one conformance suite.
//!
//! Large rooms: the room's meta value holds `large_since`, set by the join (or creation) that
//! takes the room past `fanout_max_members` and never cleared. An entry with seq ≥
//! `large_since` is written to the room log only: its append reads no user-log head and writes
//! no pointer (a join, leave, kick or ban of a member still rewrites its subject's head, for
//! the room count), and it reads no member list either: it names no recipients
//! ([`Recipients::Unnamed`]), since the room's owner tracks its members. So such an append costs
//! the same few reads and writes whatever the room's size.
//!
//! `commit_unknown_result`: FoundationDB may not know whether a commit was applied, and then
//! runs the attempt again with [`Attempt::maybe_committed`] set. Each write that is not
//! naturally idempotent carries the means to recognise itself:
//! - an append of text or of a change (edit, delete, react, unreact) finds its client message id
//!   in the dedup index;
//! - every entry stores a `writer` number drawn once per call, so a retried join, leave,
//!   moderation (role, kick, ban, unban, mute) or room creation recognises the entry its own
//!   first attempt wrote and answers with that delivery (recipients recovered from their logs;
//!   for an entry of a large room, none named) instead of `AlreadyMember`, `NotMember`,
//!   `Unchanged` or "room existed";
//! - a retried account creation recognises its own password hash (salted, so unique);
//! - a retried `claim_room` recognises its own claim by the same kind of number;
//! - `mark_read` and `set_presence_note` are idempotent; a retried `trim_user_log` leaves the same floor but may count
//!   0 dropped entries; a retried `revoke_tokens` bumps once more, which only revokes more.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use protocol::{Audience, Cursor, Entry, EntryKind, NotifyLevel, ReactionCount, Role, RoomKind};

use super::amend::{self, CheckedDetails};
use super::api_keys;
use super::devices;
use super::kv::{corrupt, Attempt, KvDb, KvTxn, TxnError, TxnResult};
use super::layout::Keyspace;
use super::limits::{
    auto_trim_through, history_scan, page_rows, split_page, trim_plan, WriteSet, RECOVERY_SCAN_ROWS,
    TRANSACTION_BYTES_BUDGET,
};
use super::media;
use super::moderate;
use super::push;
use super::values::{
    decode_u64, encode_marker, encode_u64, AccountValue, BanValue, CodecError, EntryValue, MemberValue,
    MembershipValue, NoteValue, OwnerValue, Pointer, RoomHead, RoomMeta, UserHead,
};
use super::webhooks;
use crate::webhooks::Subscribers;
use crate::{
    ApiKeyRecord, AppendRequest, Appended, Delivery, DeviceRecord, Epoch, HistoryPage, LogBounds, LogEntry,
    MediaRecord, MembershipLimits, MyRoom, NewRoom, OutboxEvent, PresenceNote, PushClear, PushMember, Recipients,
    RoomRecord, Store, StoreError, StoreResult, UserRecord, WebhookHealth, WebhookRecord,
};

pub(super) type R<T, X> = TxnResult<T, <X as KvTxn>::Error>;

/// The [`Store`] over any [`KvDb`]: `FdbStore` in production, an in-memory map in tests.
pub struct KvStore<D> {
    db: D,
    keys: Keyspace,
    /// Automatic retention per user log (0: keep everything); see `FdbOptions`.
    user_log_max_entries: u64,
}

impl<D: KvDb> KvStore<D> {
    pub fn new(db: D, keys: Keyspace, user_log_max_entries: u64) -> Self {
        KvStore { db, keys, user_log_max_entries }
    }

    pub fn db(&self) -> &D {
        &self.db
    }

    pub fn keyspace(&self) -> &Keyspace {
        &self.keys
    }
}

/// Positions that follow each other with no gap (room seqs in a page, cursors in a page).
fn is_dense(positions: impl IntoIterator<Item = u64>) -> bool {
    let mut previous: Option<u64> = None;
    positions.into_iter().all(|p| {
        let ok = match previous {
            Some(q) => q.checked_add(1) == Some(p),
            None => true,
        };
        previous = Some(p);
        ok
    })
}

pub(super) fn decode_at<X: KvTxn, V>(
    key: &[u8],
    bytes: Option<Vec<u8>>,
    decode: fn(&[u8]) -> Result<V, CodecError>,
) -> R<Option<V>, X> {
    bytes.map(|b| decode(&b).map_err(|e| corrupt(key, e))).transpose()
}

pub(super) async fn read<X: KvTxn, V>(
    t: &X,
    key: &[u8],
    decode: fn(&[u8]) -> Result<V, CodecError>,
) -> R<Option<V>, X> {
    let bytes = t.get(key).await?;
    decode_at::<X, V>(key, bytes, decode)
}

/// A room as one transaction sees it.
pub(super) struct RoomState {
    pub(super) meta: RoomMeta,
    head: RoomHead,
    /// 0 until the room is first claimed (the SQLite backend starts rooms at epoch 0 too).
    epoch: Epoch,
}

impl RoomState {
    fn record(&self, id: &str) -> RoomRecord {
        RoomRecord {
            id: id.to_string(),
            name: self.meta.name.clone(),
            kind: self.meta.kind,
            private: self.meta.private,
            created_by: self.meta.created_by.clone(),
            last_seq: self.head.last_seq,
            members: self.head.members,
            large_since: self.meta.large_since,
            topic: self.meta.topic.clone(),
            who_may_post: self.meta.who_may_post,
            who_may_invite: self.meta.who_may_invite,
        }
    }
}

/// Meta, head and owner of a room in one round trip, the three keys counted as reads.
async fn load_room<X: KvTxn>(t: &X, ks: &Keyspace, room: &str, writes: &mut WriteSet) -> R<Option<RoomState>, X> {
    let keys = vec![ks.room(room), ks.room_head(room), ks.owner(room)];
    for key in &keys {
        writes.read(key);
    }
    let mut values = t.get_many(&keys).await?.into_iter();
    let meta = decode_at::<X, _>(&keys[0], values.next().flatten(), RoomMeta::decode)?;
    let head = decode_at::<X, _>(&keys[1], values.next().flatten(), RoomHead::decode)?;
    let owner = decode_at::<X, _>(&keys[2], values.next().flatten(), OwnerValue::decode)?;
    match (meta, head) {
        (None, _) => Ok(None),
        (Some(meta), Some(head)) => Ok(Some(RoomState { meta, head, epoch: owner.map_or(0, |o| o.epoch) })),
        (Some(_), None) => Err(corrupt(&keys[1], CodecError::Empty)),
    }
}

pub(super) async fn require_room<X: KvTxn>(t: &X, ks: &Keyspace, room: &str, writes: &mut WriteSet) -> R<RoomState, X> {
    load_room(t, ks, room, writes).await?.ok_or_else(|| StoreError::NoSuchRoom(room.to_string()).into())
}

/// Each user's log head; a user without one does not exist.
async fn user_heads<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    users: &[String],
    writes: &mut WriteSet,
) -> R<Vec<Option<UserHead>>, X> {
    let keys: Vec<Vec<u8>> = users.iter().map(|u| ks.user_head(u)).collect();
    for key in &keys {
        writes.read(key);
    }
    let values = t.get_many(&keys).await?;
    keys.iter().zip(values).map(|(key, value)| decode_at::<X, _>(key, value, UserHead::decode)).collect()
}

async fn require_user_head<X: KvTxn>(t: &X, ks: &Keyspace, user: &str) -> R<UserHead, X> {
    read(t, &ks.user_head(user), UserHead::decode).await?.ok_or_else(|| StoreError::NoSuchUser(user.to_string()).into())
}

/// The room's members with the seq of their join, in join order.
async fn member_list<X: KvTxn>(t: &X, ks: &Keyspace, room: &str, writes: &mut WriteSet) -> R<Vec<(String, u64)>, X> {
    let range = ks.members_range(room);
    writes.read_range(&range);
    let mut members = Vec::new();
    for (key, value) in t.get_range(&range, None, false).await? {
        let user = ks.member_user(room, &key).map_err(|e| corrupt(&key, e))?;
        let member = MemberValue::decode(&value).map_err(|e| corrupt(&key, e))?;
        members.push((user, member.join_seq));
    }
    members.sort_by_key(|&(_, join_seq)| join_seq);
    Ok(members)
}

/// The entry at `seq` of a room log, with the writer number it was stored with.
async fn entry_at<X: KvTxn>(t: &X, ks: &Keyspace, room: &str, seq: u64) -> R<Option<(Entry, u64)>, X> {
    Ok(read(t, &ks.room_log(room, seq), EntryValue::decode).await?.map(|v| {
        let writer = v.writer;
        (v.into_entry(room, seq), writer)
    }))
}

/// Append a pointer to (room, seq) to each user's log, moving their heads; applies automatic
/// retention. Returns each recipient's new cursor, in the order given.
fn fan_out(
    ks: &Keyspace,
    writes: &mut WriteSet,
    heads: &mut [(String, UserHead)],
    room: &str,
    seq: u64,
    max_entries: u64,
) -> Vec<(String, Cursor)> {
    let pointer = Pointer { room: room.to_string(), seq }.encode();
    let mut recipients = Vec::with_capacity(heads.len());
    for (user, head) in heads.iter_mut() {
        head.head += 1;
        writes.set(ks.user_log(user, head.head), pointer.clone());
        if let Some(through) = auto_trim_through(head.floor, head.head, max_entries) {
            writes.clear_range(ks.user_log_through(user, through));
            head.floor = through;
        }
        debug_assert!(head.floor <= head.head, "user {user} log floor {} above head {}", head.floor, head.head);
        recipients.push((user.clone(), head.head));
    }
    recipients
}

/// Whether entry `seq` of a room that is large since `large_since` lives in the room log only.
fn in_room_log_only(large_since: Option<u64>, seq: u64) -> bool {
    large_since.is_some_and(|since| seq >= since)
}

/// After `commit_unknown_result`: the cursors at which the entry (room, seq) that this call's
/// earlier attempt committed reached each candidate, found by reading back from each log's
/// head. A pointer already trimmed or buried deeper than [`RECOVERY_SCAN_ROWS`] is left out
/// (that device then catches up from its cursor).
async fn recover_recipients<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    room: &str,
    seq: u64,
    candidates: &[String],
    maybe: &[String],
) -> R<Vec<(String, Cursor)>, X> {
    let mut recipients = Vec::with_capacity(candidates.len());
    let maybe = maybe.iter().filter(|user| !candidates.contains(user));
    for (user, expected) in candidates.iter().map(|user| (user, true)).chain(maybe.map(|user| (user, false))) {
        let rows = t.get_range(&ks.user_log_after(user, 0), Some(RECOVERY_SCAN_ROWS), true).await?;
        let mut found = None;
        for (key, value) in rows {
            let pointer = Pointer::decode(&value).map_err(|e| corrupt(&key, e))?;
            if pointer.room == room && pointer.seq == seq {
                found = Some(ks.user_log_cursor(user, &key).map_err(|e| corrupt(&key, e))?);
                break;
            }
        }
        match found {
            Some(cursor) => recipients.push((user.clone(), cursor)),
            None if expected => {
                tracing::warn!(room, seq, user, "recovered delivery: pointer not found near the log head")
            }
            None => {}
        }
    }
    Ok(recipients)
}

// Accounts.

async fn create_user<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    name: &str,
    password_hash: &str,
    created_ms: u64,
    attempt: Attempt,
) -> R<(), X> {
    let key = ks.account(name);
    let gone = ks.gone(name);
    let mut found = t.get_many(&[key.clone(), gone.clone()]).await?.into_iter();
    let (existing, gone_value) = (found.next().flatten(), found.next().flatten());
    if gone_value.is_some() {
        // The name of a deleted account stays taken.
        return Err(StoreError::UserExists(name.to_string()).into());
    }
    if let Some(existing) = decode_at::<X, _>(&key, existing, AccountValue::decode)? {
        // A hash is salted, so an account with this very hash and time is our own earlier
        // attempt, committed after all.
        if attempt.maybe_committed && existing.password_hash == password_hash && existing.created_ms == created_ms {
            return Ok(());
        }
        return Err(StoreError::UserExists(name.to_string()).into());
    }
    let mut writes = WriteSet::new();
    writes.read(&key);
    writes.read(&gone);
    writes.set(key, AccountValue { password_hash: password_hash.to_string(), token_epoch: 0, created_ms }.encode());
    writes.set(ks.user_head(name), UserHead::default().encode());
    writes.check("create user")?;
    t.apply(writes);
    Ok(())
}

async fn user<X: KvTxn>(t: &X, ks: &Keyspace, name: &str) -> R<Option<UserRecord>, X> {
    Ok(read(t, &ks.account(name), AccountValue::decode).await?.map(|a| UserRecord {
        name: name.to_string(),
        password_hash: a.password_hash,
        token_epoch: a.token_epoch,
        created_ms: a.created_ms,
    }))
}

async fn revoke_tokens<X: KvTxn>(t: &X, ks: &Keyspace, name: &str) -> R<u64, X> {
    let key = ks.account(name);
    let mut account =
        read(t, &key, AccountValue::decode).await?.ok_or_else(|| StoreError::NoSuchUser(name.to_string()))?;
    account.token_epoch += 1;
    t.set(&key, &account.encode());
    Ok(account.token_epoch)
}

async fn set_presence_note<X: KvTxn>(t: &X, ks: &Keyspace, user: &str, note: &PresenceNote) -> R<(), X> {
    if t.get(&ks.account(user)).await?.is_none() {
        return Err(StoreError::NoSuchUser(user.to_string()).into());
    }
    let key = ks.presence_note(user);
    let stored = read(t, &key, NoteValue::decode).await?;
    if stored.is_none_or(|stored| note.set_ms > stored.set_ms) {
        t.set(&key, &NoteValue { status: note.status.clone(), set_ms: note.set_ms }.encode());
    }
    Ok(())
}

async fn set_blocked<X: KvTxn>(t: &X, ks: &Keyspace, user: &str, other: &str, blocked: bool) -> R<(), X> {
    for name in [user, other] {
        if t.get(&ks.account(name)).await?.is_none() {
            return Err(StoreError::NoSuchUser(name.to_string()).into());
        }
    }
    if blocked {
        t.set(&ks.block(user, other), &[]);
    } else {
        t.clear(&ks.block(user, other));
    }
    Ok(())
}

async fn blocked_by<X: KvTxn>(t: &X, ks: &Keyspace, user: &str) -> R<Vec<String>, X> {
    if t.get(&ks.account(user)).await?.is_none() {
        return Err(StoreError::NoSuchUser(user.to_string()).into());
    }
    let mut names = Vec::new();
    for (key, _) in t.get_range(&ks.blocks_range(user), None, false).await? {
        names.push(ks.blocked_user(user, &key).map_err(|e| corrupt(&key, e))?);
    }
    // Users deleted since are left out (their accounts are gone; see `erase`).
    let accounts: Vec<Vec<u8>> = names.iter().map(|name| ks.account(name)).collect();
    let found = if accounts.is_empty() { Vec::new() } else { t.get_many(&accounts).await? };
    Ok(names.into_iter().zip(found).filter(|(_, account)| account.is_some()).map(|(name, _)| name).collect())
}

async fn presence_note<X: KvTxn>(t: &X, ks: &Keyspace, user: &str) -> R<Option<PresenceNote>, X> {
    if t.get(&ks.account(user)).await?.is_none() {
        return Err(StoreError::NoSuchUser(user.to_string()).into());
    }
    let note = read(t, &ks.presence_note(user), NoteValue::decode).await?;
    Ok(note.map(|note| PresenceNote { status: note.status, set_ms: note.set_ms }))
}

// Rooms.

/// The id of the join entries `create_room` writes (as in the SQLite backend).
fn creation_join_id(seq: u64) -> String {
    format!("join-{seq}")
}

/// Initial members without repeats, each at its first place.
fn distinct_members(members: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(members.len());
    for name in members {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

async fn create_room<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    room: &NewRoom,
    limits: MembershipLimits,
    max_entries: u64,
    writer: u64,
    attempt: Attempt,
) -> R<(RoomRecord, Option<Vec<Delivery>>), X> {
    let mut writes = WriteSet::new();
    if let Some(existing) = load_room(t, ks, &room.id, &mut writes).await? {
        if attempt.maybe_committed {
            if let Some(deliveries) = recover_creation(t, ks, room, writer, existing.meta.large_since).await? {
                return Ok((existing.record(&room.id), Some(deliveries)));
            }
        }
        return Ok((existing.record(&room.id), None));
    }
    let names = distinct_members(&room.members);
    if names.is_empty() {
        return Err(StoreError::Backend(format!("invalid room `{}`: no initial members", room.id)).into());
    }
    if names.len() as u64 > u64::from(limits.max_room_members) {
        return Err(StoreError::RoomFull { room: room.id.clone(), limit: limits.max_room_members }.into());
    }
    let heads = user_heads(t, ks, &names, &mut writes).await?;
    let mut heads: Vec<(String, UserHead)> = names
        .iter()
        .zip(heads)
        .map(|(name, head)| match head {
            None => Err(StoreError::NoSuchUser(name.clone())),
            Some(head) if head.rooms >= limits.max_rooms_per_user => {
                Err(StoreError::TooManyRooms { user: name.clone(), limit: limits.max_rooms_per_user })
            }
            Some(head) => Ok((name.clone(), head)),
        })
        .collect::<Result<_, _>>()?;

    // More initial members than the limit: large from the first join on (as in SQLite).
    let large_since = (names.len() as u64 > u64::from(limits.fanout_max_members)).then_some(1);
    let meta = RoomMeta {
        name: room.name.clone(),
        kind: room.kind,
        private: room.private,
        created_by: room.creator.clone(),
        large_since,
        topic: String::new(),
        who_may_post: Audience::Members,
        who_may_invite: Audience::Members,
    };
    writes.set(ks.room(&room.id), meta.encode());
    let subscribers = webhooks::subscribers(t, ks).await?;
    let mut entries = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let seq = i as u64 + 1;
        let role = if room.kind == RoomKind::Group && *name == room.creator { Role::Owner } else { Role::Member };
        writes.set(ks.member(&room.id, name), MemberValue::joined(seq, role).encode());
        writes.set(ks.member_of(name, &room.id), MembershipValue::joined(seq).encode());
        let value = EntryValue {
            kind: EntryKind::Join,
            from: room.creator.clone(),
            id: creation_join_id(seq),
            user: Some(name.clone()),
            body: String::new(),
            ts: room.ts,
            writer,
            ..EntryValue::default()
        };
        writes.set(ks.room_log(&room.id, seq), value.encode());
        let entry = value.into_entry(&room.id, seq);
        webhooks::queue_entry(&mut writes, ks, &subscribers, &entry);
        entries.push(entry);
    }
    // Every initial member is a member when the transaction commits, so each join reaches all
    // of them, entry by entry so every log lists the joins in seq order; a room created large
    // writes no pointer at all.
    // A room created large has no owner yet to name its members: the creation names them.
    let everyone = Arc::new(names.clone());
    let mut deliveries = Vec::with_capacity(entries.len());
    for entry in entries {
        let recipients = if in_room_log_only(large_since, entry.seq) {
            Recipients::Members(everyone.clone())
        } else {
            Recipients::Logs(fan_out(ks, &mut writes, &mut heads, &room.id, entry.seq, max_entries))
        };
        deliveries.push(Delivery { entry, recipients });
    }
    for (name, head) in &mut heads {
        head.rooms += 1;
        writes.set(ks.user_head(name), head.encode());
    }
    let head = RoomHead { last_seq: names.len() as u64, members: names.len() as u32 };
    writes.set(ks.room_head(&room.id), head.encode());
    writes.check("create room")?;
    t.apply(writes);
    let state = RoomState { meta, head, epoch: 0 };
    Ok((state.record(&room.id), Some(deliveries)))
}

/// The deliveries of a room creation that this call's earlier attempt committed, if it did.
/// `large_since` is the stored room's.
async fn recover_creation<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    room: &NewRoom,
    writer: u64,
    large_since: Option<u64>,
) -> R<Option<Vec<Delivery>>, X> {
    match entry_at(t, ks, &room.id, 1).await? {
        Some((_, stored)) if stored == writer => {}
        _ => return Ok(None),
    }
    let names = distinct_members(&room.members);
    let everyone = Arc::new(names.clone());
    let mut deliveries = Vec::with_capacity(names.len());
    for seq in 1..=names.len() as u64 {
        let Some((entry, _)) = entry_at(t, ks, &room.id, seq).await? else { break };
        let recipients = if in_room_log_only(large_since, seq) {
            Recipients::Members(everyone.clone())
        } else {
            Recipients::Logs(recover_recipients(t, ks, &room.id, seq, &names, &[]).await?)
        };
        deliveries.push(Delivery { entry, recipients });
    }
    Ok(Some(deliveries))
}

async fn room<X: KvTxn>(t: &X, ks: &Keyspace, id: &str) -> R<Option<RoomRecord>, X> {
    Ok(load_room(t, ks, id, &mut WriteSet::new()).await?.map(|s| s.record(id)))
}

async fn members<X: KvTxn>(t: &X, ks: &Keyspace, room: &str) -> R<Vec<String>, X> {
    let mut reads = WriteSet::new();
    require_room(t, ks, room, &mut reads).await?;
    Ok(member_list(t, ks, room, &mut reads).await?.into_iter().map(|(user, _)| user).collect())
}

async fn is_member<X: KvTxn>(t: &X, ks: &Keyspace, room: &str, user: &str) -> R<bool, X> {
    require_room(t, ks, room, &mut WriteSet::new()).await?;
    Ok(t.get(&ks.member(room, user)).await?.is_some())
}

async fn roles<X: KvTxn>(t: &X, ks: &Keyspace, room: &str, users: &[String]) -> R<Vec<Option<Role>>, X> {
    let state = require_room(t, ks, room, &mut WriteSet::new()).await?;
    let keys: Vec<Vec<u8>> = users.iter().map(|user| ks.member(room, user)).collect();
    let found = if keys.is_empty() { Vec::new() } else { t.get_many(&keys).await? };
    let mut roles = Vec::with_capacity(users.len());
    for ((user, key), value) in users.iter().zip(&keys).zip(found) {
        let member = decode_at::<X, _>(key, value, MemberValue::decode)?;
        roles.push(member.map(|member| member.role_in(&state.meta, user)));
    }
    Ok(roles)
}

async fn rooms_of<X: KvTxn>(t: &X, ks: &Keyspace, user: &str) -> R<Vec<MyRoom>, X> {
    require_user_head(t, ks, user).await?;
    let mut memberships = Vec::new();
    for (key, value) in t.get_range(&ks.member_of_range(user), None, false).await? {
        let room = ks.member_of_room(user, &key).map_err(|e| corrupt(&key, e))?;
        let membership = MembershipValue::decode(&value).map_err(|e| corrupt(&key, e))?;
        memberships.push((room, membership));
    }
    // Each room's meta and head, and the user's `mem` value there (their role).
    let keys: Vec<Vec<u8>> =
        memberships.iter().flat_map(|(room, _)| [ks.room(room), ks.room_head(room), ks.member(room, user)]).collect();
    let mut values = t.get_many(&keys).await?.into_iter();
    let positions: Vec<(&str, u64)> = memberships.iter().map(|(room, m)| (room.as_str(), m.read_seq)).collect();
    let mentions = amend::unread_mentions(t, ks, user, &positions).await?;
    let mut rooms = Vec::with_capacity(memberships.len());
    for (((room, membership), keys), unread_mentions) in memberships.into_iter().zip(keys.chunks(3)).zip(mentions) {
        let meta = decode_at::<X, _>(&keys[0], values.next().flatten(), RoomMeta::decode)?;
        let head = decode_at::<X, _>(&keys[1], values.next().flatten(), RoomHead::decode)?;
        let (Some(meta), Some(head)) = (meta, head) else {
            return Err(corrupt(&keys[0], CodecError::Empty));
        };
        // Both directions of a membership are written and cleared together.
        let member = decode_at::<X, _>(&keys[2], values.next().flatten(), MemberValue::decode)?
            .ok_or_else(|| corrupt::<X::Error>(&keys[2], CodecError::Empty))?;
        let role = member.role_in(&meta, user);
        let state = RoomState { meta, head, epoch: 0 };
        debug_assert!(membership.read_seq <= head.last_seq, "read position past the room's last entry");
        rooms.push(MyRoom {
            room: state.record(&room),
            read_seq: membership.read_seq,
            joined_seq: membership.join_seq,
            unread_mentions,
            role,
            notify: membership.notify,
            notify_muted_until: membership.notify_muted_until,
        });
    }
    Ok(rooms)
}

// Logs.

/// Everything an append needs besides the transaction.
pub(super) struct AppendContext<'a> {
    pub(super) ks: &'a Keyspace,
    pub(super) request: &'a AppendRequest,
    max_entries: u64,
    /// Drawn once per call, stored in the entry: how a retry recognises its own commit.
    writer: u64,
    attempt: Attempt,
    /// Bytes this append wrote to the transaction (a batch stops filling one at its budget).
    spent: AtomicUsize,
    /// The webhook endpoints, read in this transaction: the entry is queued for them.
    subscribers: &'a Subscribers,
    /// This transaction runs again after an unknown commit result: what it finds done may be
    /// its own earlier attempt's.
    retried: bool,
}

async fn append<X: KvTxn>(t: &X, cx: &AppendContext<'_>) -> R<Appended, X> {
    let AppendContext { ks, request, attempt, writer, .. } = *cx;
    let mut writes = WriteSet::new();
    let state = require_room(t, ks, &request.room, &mut writes).await?;
    // Fencing first, inside the transaction: the owner key was read above, so a concurrent
    // claim conflicts with this transaction and its retry sees the new epoch. A stale owner
    // learns it is stale before anything else and writes nothing. (A client retrying through
    // the new owner still gets its original ack from the dedup index.)
    if state.epoch != request.epoch {
        return Err(
            StoreError::Fenced { room: request.room.clone(), epoch: request.epoch, current: state.epoch }.into()
        );
    }
    match request.kind {
        kind if kind.has_client_id() => {
            // Dedup before the membership check: a retry of an acknowledged send or change gets
            // its ack back even if the sender has left since (and a change is not applied twice).
            let dedup_key = ks.dedup(&request.room, &request.from, &request.id);
            writes.read(&dedup_key);
            if let Some(seq) = read(t, &dedup_key, decode_u64).await? {
                let (entry, stored_writer) = entry_at(t, ks, &request.room, seq)
                    .await?
                    .ok_or_else(|| corrupt::<X::Error>(&dedup_key, CodecError::Empty))?;
                if attempt.maybe_committed && stored_writer == writer {
                    return recovered(t, ks, entry, state.meta.large_since).await;
                }
                return Ok(Appended { delivery: Delivery { entry, recipients: Recipients::none() }, duplicate: true });
            }
            let from_key = ks.member(&request.room, &request.from);
            writes.read(&from_key);
            let from_value = t.get(&from_key).await?;
            let Some(sender) = decode_at::<X, _>(&from_key, from_value, MemberValue::decode)? else {
                return Err(StoreError::NotMember { room: request.room.clone(), user: request.from.clone() }.into());
            };
            let details = if kind == EntryKind::Text {
                moderate::check_not_muted(&request.room, &request.from, &sender, request.ts)?;
                let role = sender.role_in(&state.meta, &request.from);
                crate::rules::check_may_post(&request.room, state.meta.who_may_post, role)?;
                amend::check_message_refs(t, cx, &mut writes).await?
            } else if matches!(kind, EntryKind::React | EntryKind::Unreact) && state.meta.large_since.is_some() {
                // Counted, not logged (see `AppendRequest`). After an unknown commit result
                // the earlier attempt may have counted it already: then it is done.
                let target = request.details.target.unwrap_or_default();
                return match amend::apply_change(t, cx, &state, &sender, &mut writes).await {
                    Ok(_) => {
                        writes.check("reaction")?;
                        t.apply(writes);
                        Ok(Appended::counted(request, target))
                    }
                    Err(TxnError::Store(StoreError::Unchanged(_))) if cx.retried => {
                        Ok(Appended::counted(request, target))
                    }
                    Err(err) => Err(err),
                };
            } else {
                amend::apply_change(t, cx, &state, &sender, &mut writes).await?
            };
            commit_entry(t, cx, state, writes, None, details).await
        }
        // Join, leave and moderation: their ids are the node's, so a retry recognises its entry
        // by writer.
        _ => {
            if attempt.maybe_committed {
                if let Some((entry, stored_writer)) = entry_at(t, ks, &request.room, state.head.last_seq).await? {
                    if stored_writer == writer {
                        return recovered(t, ks, entry, state.meta.large_since).await;
                    }
                }
            }
            if request.kind == EntryKind::Settings {
                let details = moderate::apply_settings(t, cx, &state, &mut writes).await?;
                return commit_entry(t, cx, state, writes, None, details).await;
            }
            if request.kind.is_moderation() {
                let (subject, details) = moderate::apply_moderation(t, cx, &state, &mut writes).await?;
                return commit_entry(t, cx, state, writes, Some(subject), details).await;
            }
            let user = request.user.clone().unwrap_or_else(|| request.from.clone());
            let change = if request.kind == EntryKind::Join {
                check_join(t, cx, &state, &user, &mut writes).await?;
                MembershipChange::Begins
            } else {
                check_leave(t, cx, &user, &mut writes).await?;
                MembershipChange::Ends
            };
            commit_entry(t, cx, state, writes, Some(Subject { user, change }), CheckedDetails::default()).await
        }
    }
}

impl<D: KvDb> KvStore<D> {
    /// One transaction of [`Store::append_batch`]: appends of one room from the start of
    /// `requests` until the transaction's budget is spent; one outcome for each one taken.
    async fn append_some(&self, requests: &[AppendRequest]) -> StoreResult<Vec<StoreResult<Appended>>> {
        let (ks, max_entries) = (&self.keys, self.user_log_max_entries);
        let writers: Vec<u64> = requests.iter().map(|_| rand::random()).collect();
        let writers = &writers;
        self.db
            .transact("append batch", |t, attempt| async move {
                // After `commit_unknown_result` the batch committed whole or not at all: find
                // the entries it wrote by their writer numbers, among the room's newest.
                let mine = if attempt.maybe_committed {
                    batch_entries(&t, ks, &requests[0].room, writers).await?
                } else {
                    Vec::new()
                };
                let subscribers = webhooks::subscribers(&t, ks).await?;
                let mut outcomes = Vec::with_capacity(requests.len());
                let mut spent = 0usize;
                for (request, &writer) in requests.iter().zip(writers) {
                    if spent >= TRANSACTION_BYTES_BUDGET {
                        break;
                    }
                    let found = mine.iter().find(|(_, found_writer, _)| *found_writer == writer);
                    if let Some((entry, _, large_since)) = found {
                        let left: Vec<String> = mine
                            .iter()
                            .filter(|(other, _, _)| other.kind.ends_membership() && other.seq > entry.seq)
                            .filter_map(|(other, _, _)| other.user.clone())
                            .collect();
                        outcomes.push(Ok(recovered_among(&t, ks, entry.clone(), *large_since, &left).await?));
                        continue;
                    }
                    let cx = AppendContext {
                        ks,
                        request,
                        max_entries,
                        writer,
                        attempt: Attempt::default(),
                        spent: AtomicUsize::new(0),
                        subscribers: &subscribers,
                        retried: attempt.maybe_committed,
                    };
                    match append(&t, &cx).await {
                        Ok(appended) => outcomes.push(Ok(appended)),
                        // An answer for this request alone: it wrote nothing.
                        Err(TxnError::Store(err)) => outcomes.push(Err(err)),
                        Err(kv) => return Err(kv),
                    }
                    spent += cx.spent.load(Ordering::Relaxed);
                }
                Ok(outcomes)
            })
            .await
    }
}

/// The entries among the room's newest `writers.len()` that one of `writers` wrote, with each
/// one's writer and the room's `large_since`.
async fn batch_entries<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    room: &str,
    writers: &[u64],
) -> R<Vec<(Entry, u64, Option<u64>)>, X> {
    let mut writes = WriteSet::new();
    let state = require_room(t, ks, room, &mut writes).await?;
    let last = state.head.last_seq;
    let first = last.saturating_sub(writers.len() as u64).max(1);
    let mut found = Vec::new();
    for seq in (first..=last).rev() {
        if let Some((entry, writer)) = entry_at(t, ks, room, seq).await? {
            if writers.contains(&writer) {
                found.push((entry, writer, state.meta.large_since));
            }
        }
    }
    Ok(found)
}

/// The rules of a join, in the SQLite backend's order.
async fn check_join<X: KvTxn>(
    t: &X,
    cx: &AppendContext<'_>,
    state: &RoomState,
    user: &str,
    writes: &mut WriteSet,
) -> R<(), X> {
    let (ks, request) = (cx.ks, cx.request);
    let room = &request.room;
    let head_key = ks.user_head(user);
    let user_key = ks.member(room, user);
    let from_key = ks.member(room, &request.from);
    let ban_key = ks.ban(room, user);
    for key in [&head_key, &user_key, &from_key, &ban_key] {
        writes.read(key);
    }
    let mut got = t.get_many(&[head_key.clone(), user_key, from_key.clone(), ban_key.clone()]).await?.into_iter();
    let head = decode_at::<X, _>(&head_key, got.next().flatten(), UserHead::decode)?
        .ok_or_else(|| StoreError::NoSuchUser(user.to_string()))?;
    let is_member = got.next().flatten().is_some();
    let inviter = decode_at::<X, _>(&from_key, got.next().flatten(), MemberValue::decode)?;
    let ban = decode_at::<X, _>(&ban_key, got.next().flatten(), BanValue::decode)?;
    if is_member {
        return Err(StoreError::AlreadyMember { room: room.clone(), user: user.to_string() }.into());
    }
    if user == request.from {
        if state.meta.private {
            return Err(StoreError::Forbidden(room.clone()).into());
        }
    } else {
        let Some(inviter) = inviter else {
            return Err(StoreError::NotMember { room: room.clone(), user: request.from.clone() }.into());
        };
        let role = inviter.role_in(&state.meta, &request.from);
        crate::rules::check_may_invite(room, state.meta.who_may_invite, role)?;
    }
    moderate::check_not_banned(room, user, ban, request.ts)?;
    let limits = request.limits;
    if state.head.members >= limits.max_room_members {
        return Err(StoreError::RoomFull { room: room.clone(), limit: limits.max_room_members }.into());
    }
    if head.rooms >= limits.max_rooms_per_user {
        return Err(StoreError::TooManyRooms { user: user.to_string(), limit: limits.max_rooms_per_user }.into());
    }
    Ok(())
}

/// The rules of a leave, in the SQLite backend's order.
async fn check_leave<X: KvTxn>(t: &X, cx: &AppendContext<'_>, user: &str, writes: &mut WriteSet) -> R<(), X> {
    let request = cx.request;
    if user != request.from {
        // Removing someone else is not a feature; refusing keeps a caller bug from silently
        // removing the wrong member.
        return Err(StoreError::Backend(format!(
            "invalid append to `{}`: `{}` cannot leave on behalf of `{user}`",
            request.room, request.from
        ))
        .into());
    }
    let key = cx.ks.member(&request.room, user);
    writes.read(&key);
    if t.get(&key).await?.is_none() {
        return Err(StoreError::NotMember { room: request.room.clone(), user: user.to_string() }.into());
    }
    Ok(())
}

/// What an entry does to the membership of the user it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MembershipChange {
    /// They become a member (a join).
    Begins,
    /// They stop being one, once the entry has reached them (a leave, a kick, the ban of a
    /// member).
    Ends,
    /// Nothing (a role, a mute, an unban, the ban of a non-member).
    Keeps,
}

/// The user an entry names (its `user`) and what it does to their membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Subject {
    pub(super) user: String,
    pub(super) change: MembershipChange,
}

/// Write the entry at the next seq with what it refers to (and the index keys that point back
/// at it), fan it out to every member (the joiner included, the leaver or removed member
/// included) unless the room is large at that seq, and change the membership, then check the
/// limits and send it all (with whatever the caller collected in `writes`, such as a change's
/// effect on its target or a moderation's on its subject).
async fn commit_entry<X: KvTxn>(
    t: &X,
    cx: &AppendContext<'_>,
    state: RoomState,
    mut writes: WriteSet,
    subject: Option<Subject>,
    details: CheckedDetails,
) -> R<Appended, X> {
    let (ks, request) = (cx.ks, cx.request);
    let room = &request.room;
    let seq = state.head.last_seq + 1;
    // A room already large names no recipients and moves no member's log: its members need
    // not be read (a range read of every member per message).
    let mut members: Vec<String> = if in_room_log_only(state.meta.large_since, seq) {
        Vec::new()
    } else {
        member_list(t, ks, room, &mut writes).await?.into_iter().map(|(user, _)| user).collect()
    };
    let mut head = state.head;
    head.last_seq = seq;
    let mut large_since = state.meta.large_since;
    let change = subject.as_ref().map_or(MembershipChange::Keeps, |s| s.change);
    let subject_user = subject.as_ref().map(|s| s.user.as_str());
    if let (MembershipChange::Begins, Some(joiner)) = (change, subject_user) {
        // The new member is a member at commit time: their log starts with their own join.
        members.push(joiner.to_string());
        head.members += 1;
        // The join that takes the room past the limit is its first entry kept in the room log
        // only; the switch is stored once and never undone.
        if large_since.is_none() && head.members > request.limits.fanout_max_members {
            large_since = Some(seq);
            writes.set(ks.room(room), RoomMeta { large_since, ..state.meta.clone() }.encode());
        }
    } else if change == MembershipChange::Ends {
        head.members = head.members.saturating_sub(1);
    }
    let large = in_room_log_only(large_since, seq);
    // The heads this append rewrites: every member's when it fans out; in a large room only
    // the head of a subject who joins or stops being a member (its room count), and no log
    // position moves.
    let moved: &[String] = match &subject {
        _ if !large => &members,
        Some(subject) if subject.change != MembershipChange::Keeps => std::slice::from_ref(&subject.user),
        _ => &[],
    };
    let found = user_heads(t, ks, moved, &mut writes).await?;
    let mut heads = Vec::with_capacity(moved.len());
    for (user, user_head) in moved.iter().cloned().zip(found) {
        let user_head = user_head.ok_or_else(|| corrupt::<X::Error>(&ks.user_head(&user), CodecError::Empty))?;
        heads.push((user, user_head));
    }

    let value = EntryValue {
        kind: request.kind,
        from: request.from.clone(),
        id: request.id.clone(),
        user: subject_user.map(str::to_string),
        // A delete carries no body: the point is that the text is gone.
        body: if request.kind == EntryKind::Delete { String::new() } else { request.body.clone() },
        ts: request.ts,
        writer: cx.writer,
        target: details.target,
        reply_to: details.reply_to,
        mentions: details.mentions,
        edited_at: None,
        deleted: false,
        until: details.until,
        settings: details.settings,
        attachments: media::attach(&mut writes, ks, &details.media, room, seq),
    };
    writes.set(ks.room_log(room, seq), value.encode());
    let entry = value.into_entry(room, seq);
    webhooks::queue_entry(&mut writes, ks, cx.subscribers, &entry);
    push::queue_entry(&mut writes, ks, &entry, large);
    if request.kind.has_client_id() {
        writes.set(ks.dedup(room, &request.from, &request.id), encode_u64(seq));
    }
    if let (EntryKind::Edit, Some(target)) = (request.kind, details.target) {
        writes.set(ks.edit(room, target, seq), encode_marker());
    }
    if let Some(root) = details.reply_to {
        writes.set(ks.reply(room, root, seq), encode_marker());
    }
    for user in &details.notify {
        writes.set(ks.mention(user, room, seq), encode_marker());
    }
    // A large room's owner names the recipients (`Recipients::Unnamed`).
    let recipients = if large {
        Recipients::Unnamed
    } else {
        Recipients::Logs(fan_out(ks, &mut writes, &mut heads, room, seq, cx.max_entries))
    };
    match (change, subject_user) {
        (MembershipChange::Begins, Some(user)) => {
            writes.set(ks.member(room, user), MemberValue::joined(seq, Role::Member).encode());
            writes.set(ks.member_of(user, room), MembershipValue::joined(seq).encode());
        }
        (MembershipChange::Ends, Some(user)) => {
            writes.clear(ks.member(room, user));
            writes.clear(ks.member_of(user, room));
        }
        _ => {}
    }
    for (user, user_head) in &mut heads {
        if subject_user == Some(user.as_str()) {
            match change {
                MembershipChange::Begins => user_head.rooms += 1,
                MembershipChange::Ends => user_head.rooms = user_head.rooms.saturating_sub(1),
                MembershipChange::Keeps => {}
            }
        }
        writes.set(ks.user_head(user), user_head.encode());
    }
    writes.set(ks.room_head(room), head.encode());
    writes.check("append")?;
    cx.spent.store(writes.bytes(), Ordering::Relaxed);
    t.apply(writes);
    debug_assert_eq!(seq, state.head.last_seq + 1, "room {room} seq must follow its last seq");
    Ok(Appended { delivery: Delivery { entry, recipients }, duplicate: false })
}

/// The answer to an append whose earlier attempt committed after all: the original entry, as
/// a fresh (not duplicate) delivery, so the caller still fans it out live. `large_since` is the
/// room's as stored now (the earlier attempt's switch included): an entry it covers reached
/// the members without a cursor, so no log is searched.
async fn recovered<X: KvTxn>(t: &X, ks: &Keyspace, entry: Entry, large_since: Option<u64>) -> R<Appended, X> {
    recovered_among(t, ks, entry, large_since, &[]).await
}

/// [`recovered`], looking for the entry's pointer also in the logs of `maybe`: users who were
/// members when it was written but may not be any more (a batch's later leaves).
async fn recovered_among<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    entry: Entry,
    large_since: Option<u64>,
    maybe: &[String],
) -> R<Appended, X> {
    if in_room_log_only(large_since, entry.seq) {
        // The room's owner names a large room's recipients.
        return Ok(Appended { delivery: Delivery { entry, recipients: Recipients::Unnamed }, duplicate: false });
    }
    let mut candidates: Vec<String> =
        member_list(t, ks, &entry.room, &mut WriteSet::new()).await?.into_iter().map(|(user, _)| user).collect();
    let mut maybe = maybe.to_vec();
    match entry.kind {
        // The leaver or kicked member got the entry before the membership ended.
        EntryKind::Leave | EntryKind::Kick => candidates.extend(entry.user.clone()),
        // So did a banned member; a user banned while not a member did not.
        EntryKind::Ban => maybe.extend(entry.user.clone()),
        _ => {}
    }
    let recipients = Recipients::Logs(recover_recipients(t, ks, &entry.room, entry.seq, &candidates, &maybe).await?);
    Ok(Appended { delivery: Delivery { entry, recipients }, duplicate: false })
}

async fn history<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    room: &str,
    page: HistoryPage,
    limit: u32,
) -> R<(Vec<Entry>, bool), X> {
    require_room(t, ks, room, &mut WriteSet::new()).await?;
    let Some(scan) = history_scan(page) else { return Ok((Vec::new(), false)) };
    let rows = page_rows(limit);
    // One row past the limit tells whether more lie beyond, without a second read.
    let range = ks.room_log_range(room, scan.first, scan.end);
    let mut entries = Vec::new();
    for (key, value) in t.get_range(&range, Some(rows + 1), scan.reverse).await? {
        let seq = ks.room_log_seq(room, &key).map_err(|e| corrupt(&key, e))?;
        let value = EntryValue::decode(&value).map_err(|e| corrupt(&key, e))?;
        entries.push(value.into_entry(room, seq));
    }
    let (entries, more) = split_page(entries, rows, scan.reverse);
    debug_assert!(is_dense(entries.iter().map(|e| e.seq)), "room {room} history has a gap");
    Ok((entries, more))
}

async fn user_log<X: KvTxn>(t: &X, ks: &Keyspace, user: &str, after: Cursor, limit: u32) -> R<Vec<LogEntry>, X> {
    require_user_head(t, ks, user).await?;
    let rows = page_rows(limit);
    if rows == 0 {
        return Ok(Vec::new());
    }
    // Paged by the last key: a range read from (user, after + 1), never an offset.
    let mut pointers = Vec::new();
    for (key, value) in t.get_range(&ks.user_log_after(user, after), Some(rows), false).await? {
        let cursor = ks.user_log_cursor(user, &key).map_err(|e| corrupt(&key, e))?;
        let pointer = Pointer::decode(&value).map_err(|e| corrupt(&key, e))?;
        pointers.push((cursor, pointer));
    }
    let keys: Vec<Vec<u8>> = pointers.iter().map(|(_, p)| ks.room_log(&p.room, p.seq)).collect();
    let values = t.get_many(&keys).await?;
    let mut entries = Vec::with_capacity(pointers.len());
    for (((cursor, pointer), key), value) in pointers.into_iter().zip(&keys).zip(values) {
        let value = decode_at::<X, _>(key, value, EntryValue::decode)?.ok_or_else(|| {
            StoreError::Backend(format!(
                "fdb: user `{user}` log entry {cursor} points at missing entry {} of room `{}`",
                pointer.seq, pointer.room
            ))
        })?;
        entries.push(LogEntry { cursor, entry: value.into_entry(&pointer.room, pointer.seq) });
    }
    debug_assert!(is_dense(entries.iter().map(|e| e.cursor)), "user {user} log has a gap");
    Ok(entries)
}

async fn user_log_bounds<X: KvTxn>(t: &X, ks: &Keyspace, user: &str) -> R<LogBounds, X> {
    let head = require_user_head(t, ks, user).await?;
    Ok(LogBounds { floor: head.floor, head: head.head })
}

async fn trim_user_log<X: KvTxn>(t: &X, ks: &Keyspace, user: &str, through: Cursor) -> R<u64, X> {
    let mut head = require_user_head(t, ks, user).await?;
    let Some((through, dropped)) = trim_plan(head.floor, head.head, through) else { return Ok(0) };
    // One range clear, whatever the number of entries: retention costs the same at any depth.
    t.clear_range(&ks.user_log_through(user, through));
    head.floor = through;
    t.set(&ks.user_head(user), &head.encode());
    Ok(dropped)
}

// Read positions.

async fn mark_read<X: KvTxn>(t: &X, ks: &Keyspace, user: &str, room: &str, seq: u64) -> R<u64, X> {
    let state = require_room(t, ks, room, &mut WriteSet::new()).await?;
    require_user_head(t, ks, user).await?;
    let key = ks.member_of(user, room);
    let mut membership = read(t, &key, MembershipValue::decode)
        .await?
        .ok_or_else(|| StoreError::NotMember { room: room.to_string(), user: user.to_string() })?;
    // Raised, never lowered, never past the room's newest entry: idempotent under retries.
    let stored = membership.read_seq.max(seq.min(state.head.last_seq));
    if stored != membership.read_seq {
        membership.read_seq = stored;
        t.set(&key, &membership.encode());
    }
    push::after_read(t, ks, user, room, stored).await?;
    Ok(stored)
}

async fn set_notifications<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    user: &str,
    room: &str,
    level: NotifyLevel,
    muted_until: Option<u64>,
) -> R<(), X> {
    require_room(t, ks, room, &mut WriteSet::new()).await?;
    let key = ks.member_of(user, room);
    let mut membership = read(t, &key, MembershipValue::decode)
        .await?
        .ok_or_else(|| StoreError::NotMember { room: room.to_string(), user: user.to_string() })?;
    membership.notify = level;
    membership.notify_muted_until = muted_until;
    t.set(&key, &membership.encode());
    Ok(())
}

/// The room's members with their read positions: `push::members` (one range read of `mem`,
/// keyed by user name and so already in name order, then one batch of `memof` point reads).
async fn read_positions<X: KvTxn>(t: &X, ks: &Keyspace, room: &str) -> R<Vec<(String, u64)>, X> {
    let members = push::members(t, ks, room).await?;
    // No sort needed: the tuple encoding orders text by its UTF-8 bytes, a name before every
    // name it prefixes, which is `str`'s order (the layout tests check it).
    debug_assert!(members.windows(2).all(|p| p[0].user < p[1].user), "room {room} members not in name order");
    Ok(members.into_iter().map(|member| (member.user, member.read_seq)).collect())
}

// Ownership.

async fn claim_room<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    room: &str,
    node: &str,
    writer: u64,
    attempt: Attempt,
) -> R<Epoch, X> {
    let key = ks.owner(room);
    if read(t, &ks.room(room), RoomMeta::decode).await?.is_none() {
        return Err(StoreError::NoSuchRoom(room.to_string()).into());
    }
    let owner = read(t, &key, OwnerValue::decode).await?;
    if let Some(owner) = &owner {
        if attempt.maybe_committed && owner.writer == writer {
            // Our earlier attempt's claim committed: claiming again would hand out an epoch
            // nobody uses and fence our own first one.
            return Ok(owner.epoch);
        }
    }
    let epoch = owner.map_or(0, |o| o.epoch) + 1;
    let mut writes = WriteSet::new();
    writes.set(key, OwnerValue { node: node.to_string(), epoch, writer }.encode());
    writes.check("claim room")?;
    t.apply(writes);
    Ok(epoch)
}

async fn room_owner<X: KvTxn>(t: &X, ks: &Keyspace, room: &str) -> R<Option<(String, Epoch)>, X> {
    Ok(read(t, &ks.owner(room), OwnerValue::decode).await?.map(|o| (o.node, o.epoch)))
}

#[async_trait]
impl<D: KvDb> Store for KvStore<D> {
    fn backend(&self) -> &'static str {
        D::NAME
    }

    async fn create_user(&self, name: &str, password_hash: &str, created_ms: u64) -> StoreResult<()> {
        let ks = &self.keys;
        self.db
            .transact("create user", |t, attempt| async move {
                create_user(&t, ks, name, password_hash, created_ms, attempt).await
            })
            .await
    }

    async fn user(&self, name: &str) -> StoreResult<Option<UserRecord>> {
        let ks = &self.keys;
        self.db.transact("read user", |t, _| async move { user(&t, ks, name).await }).await
    }

    async fn revoke_tokens(&self, name: &str) -> StoreResult<u64> {
        let ks = &self.keys;
        self.db.transact("revoke tokens", |t, _| async move { revoke_tokens(&t, ks, name).await }).await
    }

    async fn set_presence_note(&self, user: &str, note: PresenceNote) -> StoreResult<()> {
        let (ks, note) = (&self.keys, &note);
        self.db.transact("set presence note", |t, _| async move { set_presence_note(&t, ks, user, note).await }).await
    }

    async fn roles(&self, room: &str, users: &[String]) -> StoreResult<Vec<Option<Role>>> {
        let ks = &self.keys;
        self.db.transact("read roles", |t, _| async move { roles(&t, ks, room, users).await }).await
    }

    async fn delete_account(&self, user: &str, ts: u64) -> StoreResult<()> {
        let ks = &self.keys;
        self.db
            .transact("delete account", |t, _| async move { super::erase::delete_account(&t, ks, user, ts).await })
            .await
    }

    async fn set_blocked(&self, user: &str, other: &str, blocked: bool) -> StoreResult<()> {
        let ks = &self.keys;
        self.db.transact("set block", |t, _| async move { set_blocked(&t, ks, user, other, blocked).await }).await
    }

    async fn blocked_by(&self, user: &str) -> StoreResult<Vec<String>> {
        let ks = &self.keys;
        self.db.transact("read blocks", |t, _| async move { blocked_by(&t, ks, user).await }).await
    }

    async fn is_blocked(&self, user: &str, other: &str) -> StoreResult<bool> {
        let ks = &self.keys;
        self.db.transact("read block", |t, _| async move { Ok(t.get(&ks.block(user, other)).await?.is_some()) }).await
    }

    async fn put_device(&self, user: &str, device: DeviceRecord, max: u32) -> StoreResult<DeviceRecord> {
        let (ks, device) = (&self.keys, &device);
        self.db.transact("store device", |t, _| async move { devices::put(&t, ks, user, device, max).await }).await
    }

    async fn devices(&self, user: &str) -> StoreResult<Vec<DeviceRecord>> {
        let ks = &self.keys;
        self.db.transact("read devices", |t, _| async move { devices::of_user(&t, ks, user).await }).await
    }

    async fn remove_device(&self, user: &str, id: &str) -> StoreResult<bool> {
        let ks = &self.keys;
        self.db.transact("remove device", |t, _| async move { devices::remove(&t, ks, user, id).await }).await
    }

    async fn create_api_key(&self, key: ApiKeyRecord) -> StoreResult<()> {
        let (ks, key) = (&self.keys, &key);
        self.db.transact("create api key", |t, _| async move { api_keys::create(&t, ks, key).await }).await
    }

    async fn api_key(&self, id: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let ks = &self.keys;
        self.db.transact("read api key", |t, _| async move { api_keys::by_id(&t, ks, id).await }).await
    }

    async fn api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>> {
        let ks = &self.keys;
        self.db.transact("list api keys", |t, _| async move { api_keys::all(&t, ks).await }).await
    }

    async fn revoke_api_key(&self, id: &str, ts: u64) -> StoreResult<bool> {
        let ks = &self.keys;
        self.db.transact("revoke api key", |t, _| async move { api_keys::revoke(&t, ks, id, ts).await }).await
    }

    async fn create_webhook(&self, hook: WebhookRecord) -> StoreResult<()> {
        let (ks, hook) = (&self.keys, &hook);
        self.db.transact("create webhook", |t, _| async move { webhooks::create(&t, ks, hook).await }).await
    }

    async fn webhooks(&self) -> StoreResult<Vec<WebhookRecord>> {
        let ks = &self.keys;
        self.db.transact("list webhooks", |t, _| async move { webhooks::all(&t, ks).await }).await
    }

    async fn delete_webhook(&self, id: &str) -> StoreResult<bool> {
        let ks = &self.keys;
        self.db.transact("delete webhook", |t, _| async move { webhooks::delete(&t, ks, id).await }).await
    }

    async fn set_webhook_health(&self, id: &str, health: WebhookHealth) -> StoreResult<bool> {
        let (ks, health) = (&self.keys, &health);
        self.db
            .transact("set webhook health", |t, _| async move { webhooks::set_health(&t, ks, id, health).await })
            .await
    }

    async fn outbox_from(&self, id: &str, from: &str, limit: u32) -> StoreResult<Vec<OutboxEvent>> {
        let ks = &self.keys;
        self.db.transact("read outbox", |t, _| async move { webhooks::outbox(&t, ks, id, from, limit).await }).await
    }

    async fn ack_webhook_events(&self, id: &str, stream: &str, through: u64) -> StoreResult<()> {
        let ks = &self.keys;
        self.db
            .transact("acknowledge webhook events", |t, _| async move {
                webhooks::ack(&t, ks, id, stream, through);
                Ok(())
            })
            .await
    }

    async fn take_lease(&self, name: &str, holder: &str, now_ms: u64, ttl_ms: u64) -> StoreResult<bool> {
        let ks = &self.keys;
        self.db
            .transact(
                "take lease",
                |t, _| async move { webhooks::take_lease(&t, ks, name, holder, now_ms, ttl_ms).await },
            )
            .await
    }

    async fn reserve_media(&self, record: MediaRecord, quota_bytes: u64) -> StoreResult<()> {
        let (ks, record) = (&self.keys, &record);
        self.db
            .transact("reserve media", |t, attempt| async move {
                media::reserve(&t, ks, record, quota_bytes, attempt).await
            })
            .await
    }

    async fn complete_media(&self, record: MediaRecord) -> StoreResult<()> {
        let (ks, record) = (&self.keys, &record);
        self.db
            .transact("complete media", |t, attempt| async move { media::complete(&t, ks, record, attempt).await })
            .await
    }

    async fn media(&self, id: &str) -> StoreResult<Option<MediaRecord>> {
        let ks = &self.keys;
        self.db.transact("read media", |t, _| async move { media::by_id(&t, ks, id).await }).await
    }

    async fn media_usage(&self, user: &str) -> StoreResult<u64> {
        let ks = &self.keys;
        self.db.transact("read media usage", |t, _| async move { media::usage(&t, ks, user).await }).await
    }

    async fn media_garbage(&self, stale_before_ms: u64, limit: u32) -> StoreResult<Vec<MediaRecord>> {
        let ks = &self.keys;
        self.db
            .transact("media garbage", |t, _| async move { media::garbage(&t, ks, stale_before_ms, limit).await })
            .await
    }

    async fn drop_media(&self, ids: &[String]) -> StoreResult<()> {
        let ks = &self.keys;
        self.db.transact("drop media", |t, _| async move { media::drop_records(&t, ks, ids).await }).await
    }

    async fn presence_note(&self, user: &str) -> StoreResult<Option<PresenceNote>> {
        let ks = &self.keys;
        self.db.transact("read presence note", |t, _| async move { presence_note(&t, ks, user).await }).await
    }

    async fn create_room(
        &self,
        room: NewRoom,
        limits: MembershipLimits,
    ) -> StoreResult<(RoomRecord, Option<Vec<Delivery>>)> {
        let (ks, max_entries, room) = (&self.keys, self.user_log_max_entries, &room);
        let writer: u64 = rand::random();
        self.db
            .transact("create room", |t, attempt| async move {
                create_room(&t, ks, room, limits, max_entries, writer, attempt).await
            })
            .await
    }

    async fn room(&self, id: &str) -> StoreResult<Option<RoomRecord>> {
        let ks = &self.keys;
        self.db.transact("read room", |t, _| async move { room(&t, ks, id).await }).await
    }

    async fn members(&self, room: &str) -> StoreResult<Vec<String>> {
        let ks = &self.keys;
        self.db.transact("read members", |t, _| async move { members(&t, ks, room).await }).await
    }

    async fn is_member(&self, room: &str, user: &str) -> StoreResult<bool> {
        let ks = &self.keys;
        self.db.transact("read membership", |t, _| async move { is_member(&t, ks, room, user).await }).await
    }

    async fn rooms_of(&self, user: &str) -> StoreResult<Vec<MyRoom>> {
        let ks = &self.keys;
        self.db.transact("read rooms of user", |t, _| async move { rooms_of(&t, ks, user).await }).await
    }

    async fn append(&self, request: AppendRequest) -> StoreResult<Appended> {
        let (ks, max_entries, request) = (&self.keys, self.user_log_max_entries, &request);
        let writer: u64 = rand::random();
        self.db
            .transact("append", |t, attempt| async move {
                let spent = AtomicUsize::new(0);
                let subscribers = &webhooks::subscribers(&t, ks).await?;
                let retried = attempt.maybe_committed;
                let cx = AppendContext { ks, request, max_entries, writer, attempt, spent, subscribers, retried };
                append(&t, &cx).await
            })
            .await
    }

    /// A room's waiting appends in as few transactions as fit FoundationDB's limits: each
    /// transaction takes appends in order until it has written `TRANSACTION_BYTES_BUDGET`
    /// bytes (the last one may pass it by at most its own size, itself within the budget, so
    /// a transaction stays far under FoundationDB's 10 MB). Appends of one transaction see
    /// each other's writes (seqs follow on), a refused one writes nothing and the rest go on,
    /// and the transaction commits them together: one commit's latency for the whole batch.
    async fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<StoreResult<Appended>> {
        let one_room = requests.windows(2).all(|pair| pair[0].room == pair[1].room);
        if requests.len() < 2 || !one_room {
            let mut outcomes = Vec::with_capacity(requests.len());
            for request in requests {
                outcomes.push(self.append(request).await);
            }
            return outcomes;
        }
        let mut outcomes = Vec::with_capacity(requests.len());
        while outcomes.len() < requests.len() {
            let rest = &requests[outcomes.len()..];
            match self.append_some(rest).await {
                Ok(done) => outcomes.extend(done),
                Err(err) => {
                    // Unknown or failed commit: none of these is acknowledged; the clients
                    // retry with the same message ids and the dedup index sorts them out.
                    outcomes.extend(rest.iter().map(|_| Err(err.clone())));
                }
            }
        }
        outcomes
    }

    async fn history(&self, room: &str, page: HistoryPage, limit: u32) -> StoreResult<(Vec<Entry>, bool)> {
        let ks = &self.keys;
        self.db.transact("read history", |t, _| async move { history(&t, ks, room, page, limit).await }).await
    }

    async fn thread(&self, room: &str, root: u64, after: u64, limit: u32) -> StoreResult<(Entry, Vec<Entry>, bool)> {
        let ks = &self.keys;
        self.db
            .transact("read thread", |t, _| async move { amend::thread(&t, ks, room, root, after, limit).await })
            .await
    }

    async fn reactions(&self, room: &str, seqs: &[u64], viewer: &str) -> StoreResult<Vec<Vec<ReactionCount>>> {
        let ks = &self.keys;
        self.db
            .transact("read reactions", |t, _| async move { amend::reactions(&t, ks, room, seqs, viewer).await })
            .await
    }

    async fn user_log(&self, user: &str, after: Cursor, limit: u32) -> StoreResult<Vec<LogEntry>> {
        let ks = &self.keys;
        self.db.transact("read user log", |t, _| async move { user_log(&t, ks, user, after, limit).await }).await
    }

    async fn user_log_bounds(&self, user: &str) -> StoreResult<LogBounds> {
        let ks = &self.keys;
        self.db.transact("read user log bounds", |t, _| async move { user_log_bounds(&t, ks, user).await }).await
    }

    async fn trim_user_log(&self, user: &str, through: Cursor) -> StoreResult<u64> {
        let ks = &self.keys;
        self.db.transact("trim user log", |t, _| async move { trim_user_log(&t, ks, user, through).await }).await
    }

    async fn set_notifications(
        &self,
        user: &str,
        room: &str,
        level: NotifyLevel,
        muted_until: Option<u64>,
    ) -> StoreResult<()> {
        let ks = &self.keys;
        self.db
            .transact("set notifications", |t, _| async move {
                set_notifications(&t, ks, user, room, level, muted_until).await
            })
            .await
    }

    async fn mark_read(&self, user: &str, room: &str, seq: u64) -> StoreResult<u64> {
        let ks = &self.keys;
        self.db.transact("mark read", |t, _| async move { mark_read(&t, ks, user, room, seq).await }).await
    }

    async fn push_members(&self, room: &str) -> StoreResult<Vec<PushMember>> {
        let ks = &self.keys;
        self.db.transact("read push members", |t, _| async move { push::members(&t, ks, room).await }).await
    }

    async fn push_done(&self, room: &str, through: u64, told: &[(String, u64)]) -> StoreResult<()> {
        let ks = &self.keys;
        self.db.transact("record pushes", |t, _| async move { push::done(&t, ks, room, through, told).await }).await
    }

    async fn push_clears(&self, limit: u32) -> StoreResult<Vec<PushClear>> {
        let ks = &self.keys;
        self.db.transact("read push clears", |t, _| async move { push::clears(&t, ks, limit).await }).await
    }

    async fn push_cleared(&self, clears: &[PushClear]) -> StoreResult<()> {
        let ks = &self.keys;
        self.db.transact("forget push clears", |t, _| async move { push::cleared(&t, ks, clears).await }).await
    }

    async fn read_positions(&self, room: &str) -> StoreResult<Vec<(String, u64)>> {
        let ks = &self.keys;
        self.db.transact("read read positions", |t, _| async move { read_positions(&t, ks, room).await }).await
    }

    async fn claim_room(&self, room: &str, node: &str) -> StoreResult<Epoch> {
        let ks = &self.keys;
        let writer: u64 = rand::random();
        self.db
            .transact("claim room", |t, attempt| async move { claim_room(&t, ks, room, node, writer, attempt).await })
            .await
    }

    async fn room_owner(&self, room: &str) -> StoreResult<Option<(String, Epoch)>> {
        let ks = &self.keys;
        self.db.transact("read room owner", |t, _| async move { room_owner(&t, ks, room).await }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_positions() {
        assert!(is_dense([]));
        assert!(is_dense([4, 5, 6]));
        assert!(!is_dense([4, 6]));
        assert!(!is_dense([u64::MAX, 0]));
    }

    #[test]
    fn initial_members_are_distinct_in_first_place_order() {
        let names = ["b", "a", "b", "c", "a"].map(String::from);
        assert_eq!(distinct_members(&names), ["b", "a", "c"].map(String::from));
    }
}
