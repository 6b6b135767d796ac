//! Webhook endpoints, their outboxes and leases over the key-value transaction (see
//! `crate::webhooks`), as in the SQLite backend: one `hook` key per endpoint, one `hookq` key
//! per event an endpoint has not acknowledged (set in the transaction of the entry it points
//! to), one `lease` key per lease.

use protocol::Entry;

use super::kv::{corrupt, KvTxn};
use super::layout::Keyspace;
use super::limits::WriteSet;
use super::ops::{read, R};
use super::values::{decode_lease, decode_webhook, encode_lease, encode_webhook};
use crate::webhooks::{self, EventType, OutboxEvent, Subscribers};
use crate::{StoreError, WebhookHealth, WebhookRecord};

pub(super) async fn create<X: KvTxn>(t: &X, ks: &Keyspace, hook: &WebhookRecord) -> R<(), X> {
    let at = ks.webhook(&hook.id);
    if t.get(&at).await?.is_some() {
        return Err(StoreError::Backend(format!("webhook id `{}` is taken", hook.id)).into());
    }
    t.set(&at, &encode_webhook(hook));
    Ok(())
}

pub(super) async fn all<X: KvTxn>(t: &X, ks: &Keyspace) -> R<Vec<WebhookRecord>, X> {
    let mut hooks = Vec::new();
    for (key, bytes) in t.get_range(&ks.webhooks_range(), None, false).await? {
        let id = ks.webhook_id(&key).map_err(|e| corrupt(&key, e))?;
        hooks.push(decode_webhook(id, &bytes).map_err(|e| corrupt(&key, e))?);
    }
    Ok(hooks)
}

pub(super) async fn delete<X: KvTxn>(t: &X, ks: &Keyspace, id: &str) -> R<bool, X> {
    let at = ks.webhook(id);
    let found = t.get(&at).await?.is_some();
    // Only an endpoint's own outbox: the push queue (`crate::push::QUEUE`) shares the key
    // family but has no endpoint key, so no id the API is given can clear it.
    if found {
        t.clear(&at);
        t.clear_range(&ks.outbox_range(id));
    }
    Ok(found)
}

pub(super) async fn set_health<X: KvTxn>(t: &X, ks: &Keyspace, id: &str, health: &WebhookHealth) -> R<bool, X> {
    let at = ks.webhook(id);
    let Some(bytes) = t.get(&at).await? else { return Ok(false) };
    let mut hook = decode_webhook(id.to_owned(), &bytes).map_err(|e| corrupt(&at, e))?;
    hook.health = health.clone();
    t.set(&at, &encode_webhook(&hook));
    Ok(true)
}

pub(super) async fn outbox<X: KvTxn>(t: &X, ks: &Keyspace, id: &str, from: &str, limit: u32) -> R<Vec<OutboxEvent>, X> {
    let mut events = Vec::new();
    for (key, value) in t.get_range(&ks.outbox_from(id, from), Some(limit as usize), false).await? {
        let (stream, seq) = ks.outbox_position(id, &key).map_err(|e| corrupt(&key, e))?;
        let code = value.first().copied().unwrap_or(u8::MAX);
        let event = EventType::from_code(code).ok_or_else(|| {
            corrupt(&key, super::values::CodecError::UnknownCode { what: "webhook event", code: u64::from(code) })
        })?;
        events.push(OutboxEvent { stream, seq, event });
    }
    Ok(events)
}

pub(super) fn ack<X: KvTxn>(t: &X, ks: &Keyspace, id: &str, stream: &str, through: u64) {
    t.clear_range(&ks.outbox_through(id, stream, through));
}

pub(super) async fn take_lease<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    name: &str,
    holder: &str,
    now_ms: u64,
    ttl_ms: u64,
) -> R<bool, X> {
    let at = ks.lease(name);
    if let Some((current, until)) = read(t, &at, decode_lease).await? {
        if current != holder && until > now_ms {
            return Ok(false);
        }
    }
    t.set(&at, &encode_lease(holder, now_ms.saturating_add(ttl_ms)));
    Ok(true)
}

/// Every endpoint's id and subscriptions: read once by each transaction that commits entries.
/// Every append reads this range, so creating or deleting an endpoint conflicts with the
/// appends in flight and they retry: an endpoint sees exactly the events committed after it.
pub(super) async fn subscribers<X: KvTxn>(t: &X, ks: &Keyspace) -> R<Subscribers, X> {
    Ok(all(t, ks).await?.into_iter().map(|hook| (hook.id, hook.events)).collect())
}

/// Queue `entry` for every endpoint in `subscribers` that takes its event.
pub(super) fn queue_entry(writes: &mut WriteSet, ks: &Keyspace, subscribers: &Subscribers, entry: &Entry) {
    for (hook, event) in webhooks::rows_for(subscribers, entry) {
        writes.set(ks.outbox_event(hook, &entry.room, entry.seq), vec![event.code()]);
    }
}

/// Queue the deletion of `user`'s account at `ts`, in the transaction that deletes it.
pub(super) async fn queue_user_deleted<X: KvTxn>(t: &X, ks: &Keyspace, user: &str, ts: u64) -> R<(), X> {
    let stream = webhooks::user_stream(user);
    for (hook, mask) in subscribers(t, ks).await? {
        if mask.contains(EventType::UserDeleted) {
            t.set(&ks.outbox_event(&hook, &stream, ts), &[EventType::UserDeleted.code()]);
        }
    }
    Ok(())
}
