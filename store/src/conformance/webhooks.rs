//! Conformance cases for webhook endpoints, their outboxes and leases.

use std::sync::Arc;

use protocol::EntryKind;

use super::{join, leave, room_with, send, text, users, TS};
use crate::webhooks::user_stream;
use crate::{AppendRequest, EventMask, EventType, OutboxEvent, Store, StoreError, WebhookHealth, WebhookRecord};

fn hook(id: &str, events: &[EventType]) -> WebhookRecord {
    WebhookRecord {
        id: id.into(),
        url: format!("http://127.0.0.1:9/{id}"),
        events: EventMask::of(events),
        secret: format!("secret-{id}"),
        created_ms: TS,
        health: WebhookHealth::default(),
    }
}

fn row(stream: &str, seq: u64, event: EventType) -> OutboxEvent {
    OutboxEvent { stream: stream.into(), seq, event }
}

/// Endpoints are kept whole and listed in id order; an id is never given twice; health is
/// kept; deleting forgets the endpoint and its outbox.
pub async fn webhooks_are_kept_listed_and_deleted(store: Arc<dyn Store>) {
    let store = store.as_ref();
    assert_eq!(store.webhooks().await, Ok(vec![]));
    let (b, a) = (hook("h2", &[EventType::MessagePosted]), hook("h1", &EventType::ALL));
    store.create_webhook(b.clone()).await.expect("create h2");
    store.create_webhook(a.clone()).await.expect("create h1");
    assert_eq!(store.webhooks().await, Ok(vec![a.clone(), b.clone()]));
    let taken = store.create_webhook(hook("h2", &[])).await;
    assert!(matches!(taken, Err(StoreError::Backend(_))), "{taken:?}");

    let health = WebhookHealth { failures: 3, last_error: "HTTP 500".into(), dead_since: Some(TS + 9) };
    assert_eq!(store.set_webhook_health("h2", health.clone()).await, Ok(true));
    assert_eq!(store.set_webhook_health("nope", health.clone()).await, Ok(false));
    let b = WebhookRecord { health, ..b };
    assert_eq!(store.webhooks().await, Ok(vec![a.clone(), b]));

    users(store, &["a"]).await;
    room_with(store, "r", &["a"], false).await;
    assert_eq!(store.webhook_outbox("h1", 10).await.expect("outbox").len(), 1, "the creation is queued");
    assert_eq!(store.delete_webhook("h1").await, Ok(true));
    assert_eq!(store.delete_webhook("h1").await, Ok(false));
    assert_eq!(store.webhook_outbox("h1", 10).await, Ok(vec![]), "its outbox is gone with it");
    assert_eq!(store.webhooks().await.expect("list").len(), 1);
}

/// Every committed entry of a subscribed type is queued for each endpoint that takes it, in
/// the transaction that commits it: from the endpoint's creation on, never for a duplicate or
/// a refused append, in (stream, seq) order; acknowledging drops a stream's rows up to a seq.
pub async fn committed_events_are_queued_per_endpoint_until_acknowledged(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;
    let before = room_with(store, "early", &["a"], false).await;
    send(store, text("early", before, "a", "e1", "before any endpoint")).await;
    store.create_webhook(hook("all", &EventType::ALL)).await.expect("create");
    store.create_webhook(hook("messages", &[EventType::MessagePosted])).await.expect("create");

    let epoch = room_with(store, "r", &["a", "b"], false).await;
    send(store, text("r", epoch, "a", "m1", "hello")).await;
    let again = store.append(text("r", epoch, "a", "m1", "hello")).await.expect("retry");
    assert!(again.duplicate);
    let refused = store.append(text("r", epoch, "c", "m2", "not a member")).await;
    assert!(refused.is_err());
    send(store, join("r", epoch, "a", "c", "j1")).await;
    let react = AppendRequest {
        kind: EntryKind::React,
        details: crate::EntryDetails { target: Some(3), ..Default::default() },
        ..text("r", epoch, "b", "x1", "👍")
    };
    send(store, react).await;
    send(store, leave("r", epoch, "c", "l1")).await;
    send(store, text("early", before, "a", "e2", "after")).await;

    let all = store.webhook_outbox("all", 100).await.expect("outbox");
    assert_eq!(
        all,
        vec![
            row("early", 3, EventType::MessagePosted),
            row("r", 1, EventType::RoomCreated),
            row("r", 2, EventType::MemberJoined),
            row("r", 3, EventType::MessagePosted),
            row("r", 4, EventType::MemberJoined),
            row("r", 6, EventType::MemberLeft),
        ],
        "nothing from before the endpoint; no reaction (not an event), duplicate or refusal"
    );
    let messages = store.webhook_outbox("messages", 100).await.expect("outbox");
    assert_eq!(messages, vec![row("early", 3, EventType::MessagePosted), row("r", 3, EventType::MessagePosted)]);
    assert_eq!(store.webhook_outbox("all", 2).await.expect("outbox"), all[..2].to_vec(), "the oldest first");

    store.ack_webhook_events("all", "r", 3).await.expect("ack");
    let left = store.webhook_outbox("all", 100).await.expect("outbox");
    assert_eq!(left, vec![all[0].clone(), all[4].clone(), all[5].clone()]);
    assert_eq!(store.webhook_outbox("messages", 100).await, Ok(messages), "other endpoints keep theirs");
}

/// An account's deletion is queued under its own stream, with when it happened.
pub async fn account_deletions_are_queued(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    store.create_webhook(hook("users", &[EventType::UserDeleted])).await.expect("create");
    store.create_webhook(hook("rooms", &[EventType::MemberLeft])).await.expect("create");
    store.delete_account("b", TS + 7).await.expect("delete b");
    assert_eq!(
        store.webhook_outbox("users", 10).await,
        Ok(vec![row(&user_stream("b"), TS + 7, EventType::UserDeleted)])
    );
    assert_eq!(store.webhook_outbox("rooms", 10).await, Ok(vec![]));
    let refused = store.delete_account("a-nobody", TS + 8).await;
    assert!(refused.is_err());
    assert_eq!(store.webhook_outbox("users", 10).await.expect("outbox").len(), 1);
}

/// A lease is held by one holder until it expires or is taken again by the same holder.
pub async fn leases_are_held_until_they_expire(store: Arc<dyn Store>) {
    let store = store.as_ref();
    assert_eq!(store.take_lease("hooks", "n1", TS, 1_000).await, Ok(true));
    assert_eq!(store.take_lease("hooks", "n2", TS + 500, 1_000).await, Ok(false), "held by n1");
    assert_eq!(store.take_lease("other", "n2", TS + 500, 1_000).await, Ok(true), "leases are by name");
    assert_eq!(store.take_lease("hooks", "n1", TS + 900, 1_000).await, Ok(true), "renewed to TS + 1900");
    assert_eq!(store.take_lease("hooks", "n2", TS + 1_500, 1_000).await, Ok(false), "still n1's");
    assert_eq!(store.take_lease("hooks", "n2", TS + 1_900, 1_000).await, Ok(true), "expired: n2 takes it");
    assert_eq!(store.take_lease("hooks", "n1", TS + 2_000, 1_000).await, Ok(false), "n1 lost it");
}
