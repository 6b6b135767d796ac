//! Deleting an account over the key-value transaction, by the rules of the SQLite backend's
//! `erase`: what belongs to the user alone goes (their account, log, mentions, presence note, devices,
//! the blocks they made; their media records are doomed); the name stays taken, marked by a `gone` key, so nobody registers it
//! again and appears as the author of the entries the user left in room logs.
//!
//! Blocks other users made of the deleted user are their keys, under their names: reading a
//! block list leaves out names without an account instead of finding those keys with a scan.

use super::kv::{corrupt, KvTxn};
use super::layout::Keyspace;
use super::limits::WriteSet;
use super::ops::R;
use super::values::encode_u64;
use crate::StoreError;

/// Erase `user`'s account at `ts` (see `Store::delete_account`).
pub(super) async fn delete_account<X: KvTxn>(t: &X, ks: &Keyspace, user: &str, ts: u64) -> R<(), X> {
    let account = ks.account(user);
    if t.get(&account).await?.is_none() {
        return Err(StoreError::NoSuchUser(user.to_string()).into());
    }
    // Memberships end by entries of their rooms, which only the rooms' owners append.
    if let Some((key, _)) = t.get_range(&ks.member_of_range(user), Some(1), false).await?.first() {
        let room = ks.member_of_room(user, key).map_err(|e| corrupt(key, e))?;
        return Err(StoreError::AlreadyMember { room, user: user.to_string() }.into());
    }
    t.clear(&account);
    t.set(&ks.gone(user), &encode_u64(ts));
    t.clear(&ks.user_head(user));
    t.clear_range(&ks.user_log_through(user, u64::MAX));
    t.clear_range(&ks.mentions_of(user));
    t.clear(&ks.presence_note(user));
    t.clear_range(&ks.devices_range(user));
    t.clear_range(&ks.blocks_range(user));
    t.clear_range(&ks.push_told_range(user));
    t.clear_range(&ks.push_clears_of(user));
    // Their uploads, attached or not, are doomed: the collector deletes the files.
    let mut writes = WriteSet::new();
    super::media::doom_owner(t, ks, user, &mut writes).await?;
    writes.check("delete account")?;
    t.apply(writes);
    super::webhooks::queue_user_deleted(t, ks, user, ts).await
}
