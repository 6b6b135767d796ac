//! The push path's state over the key-value transaction (see `crate::push`), as in the SQLite
//! backend: the queue is the webhook outbox under the id `push` (`hookq`), `ptold` holds per
//! (user, room) the seq of the latest entry a push told the user of, `pclr` the clears a read
//! owes their devices.

use protocol::Entry;

use super::kv::{corrupt, KvTxn};
use super::layout::Keyspace;
use super::limits::WriteSet;
use super::ops::{decode_at, read, require_room, R};
use super::values::{decode_u64, encode_u64, CodecError, MembershipValue};
use crate::push::{self, PushClear, PushMember};
use crate::EventType;

/// Queue `entry` for the push worker if it may notify anyone: in the transaction committing it.
pub(super) fn queue_entry(writes: &mut WriteSet, ks: &Keyspace, entry: &Entry, large: bool) {
    if push::queues(entry, large) {
        writes.set(ks.outbox_event(push::QUEUE, &entry.room, entry.seq), vec![EventType::MessagePosted.code()]);
    }
}

/// The room's members from one range read of `mem`, then their `memof` values (join seq, read
/// position, notification settings) in one batch of point reads.
pub(super) async fn members<X: KvTxn>(t: &X, ks: &Keyspace, room: &str) -> R<Vec<PushMember>, X> {
    require_room(t, ks, room, &mut WriteSet::new()).await?;
    let mut users = Vec::new();
    for (key, _) in t.get_range(&ks.members_range(room), None, false).await? {
        users.push(ks.member_user(room, &key).map_err(|e| corrupt(&key, e))?);
    }
    let keys: Vec<Vec<u8>> = users.iter().map(|user| ks.member_of(user, room)).collect();
    let values = t.get_many(&keys).await?;
    let mut members = Vec::with_capacity(users.len());
    for ((user, key), value) in users.into_iter().zip(&keys).zip(values) {
        let membership = decode_at::<X, _>(key, value, MembershipValue::decode)?
            .ok_or_else(|| corrupt::<X::Error>(key, CodecError::Empty))?;
        members.push(PushMember {
            user,
            joined_seq: membership.join_seq,
            read_seq: membership.read_seq,
            notify: membership.notify,
            muted_until: membership.notify_muted_until,
        });
    }
    Ok(members)
}

pub(super) async fn done<X: KvTxn>(t: &X, ks: &Keyspace, room: &str, through: u64, told: &[(String, u64)]) -> R<(), X> {
    t.clear_range(&ks.outbox_through(push::QUEUE, room, through));
    let keys: Vec<Vec<u8>> = told.iter().map(|(user, _)| ks.push_told(user, room)).collect();
    let before = t.get_many(&keys).await?;
    for ((key, (_, seq)), value) in keys.iter().zip(told).zip(before) {
        let earlier = decode_at::<X, _>(key, value, decode_u64)?.unwrap_or(0);
        t.set(key, &encode_u64(earlier.max(*seq)));
    }
    Ok(())
}

/// After `user`'s read position in `room` became `read`: owe a clear if it reaches what a push
/// told them. Called in the transaction that moves the position.
pub(super) async fn after_read<X: KvTxn>(t: &X, ks: &Keyspace, user: &str, room: &str, read_seq: u64) -> R<(), X> {
    let told_key = ks.push_told(user, room);
    let Some(told) = read(t, &told_key, decode_u64).await? else { return Ok(()) };
    if told <= read_seq {
        t.clear(&told_key);
        let clear_key = ks.push_clear(user, room);
        let owed = read(t, &clear_key, decode_u64).await?.unwrap_or(0);
        t.set(&clear_key, &encode_u64(owed.max(read_seq)));
    }
    Ok(())
}

pub(super) async fn clears<X: KvTxn>(t: &X, ks: &Keyspace, limit: u32) -> R<Vec<PushClear>, X> {
    let mut clears = Vec::new();
    for (key, value) in t.get_range(&ks.push_clears_range(), Some(limit as usize), false).await? {
        let (user, room) = ks.push_clear_names(&key).map_err(|e| corrupt(&key, e))?;
        let read_seq = decode_u64(&value).map_err(|e| corrupt(&key, e))?;
        clears.push(PushClear { user, room, read_seq });
    }
    Ok(clears)
}

pub(super) async fn cleared<X: KvTxn>(t: &X, ks: &Keyspace, clears: &[PushClear]) -> R<(), X> {
    for clear in clears {
        let key = ks.push_clear(&clear.user, &clear.room);
        // A newer read since the clear was read owes a clear of its own.
        if read(t, &key, decode_u64).await?.is_some_and(|owed| owed <= clear.read_seq) {
            t.clear(&key);
        }
    }
    Ok(())
}
