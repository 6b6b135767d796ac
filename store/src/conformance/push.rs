//! Conformance cases for the push path's state: the queue, what a push told, and clears.

use std::sync::Arc;

use protocol::NotifyLevel;

use super::changes::mentioning;
use super::{join, room_with, send, text, users, with_limits, SMALL_FANOUT, TS};
use crate::{EventType, OutboxEvent, PushClear, PushMember, Store};

fn queued(room: &str, seq: u64) -> OutboxEvent {
    OutboxEvent { stream: room.into(), seq, event: EventType::MessagePosted }
}

/// Every text entry is queued in its own transaction (a duplicate or a join is not); in a
/// large room only one that mentions someone; acknowledging drops a room's rows through a seq;
/// and no webhook endpoint id reaches the queue.
pub async fn messages_are_queued_for_push_until_done(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    send(store, text("r", epoch, "a", "m1", "hello")).await;
    assert!(store.append(text("r", epoch, "a", "m1", "hello")).await.expect("retry").duplicate);
    send(store, text("r", epoch, "b", "m2", "hi")).await;
    assert_eq!(store.push_queue("", 10).await, Ok(vec![queued("r", 3), queued("r", 4)]), "texts only, once each");
    assert_eq!(store.delete_webhook(crate::push::QUEUE).await, Ok(false));
    assert_eq!(store.push_queue("", 10).await.expect("queue").len(), 2, "deleting a webhook id cannot clear it");

    store.push_done("r", 3, &[]).await.expect("done");
    assert_eq!(store.push_queue("", 10).await, Ok(vec![queued("r", 4)]));
    store.push_done("r", 4, &[]).await.expect("done");

    let big = room_with(store, "big", &["a", "b"], false).await;
    send(store, with_limits(join("big", big, "c", "c", "j"), SMALL_FANOUT)).await;
    send(store, with_limits(text("big", big, "a", "x1", "to everyone"), SMALL_FANOUT)).await;
    send(store, with_limits(mentioning("big", big, "a", "x2", &["b"]), SMALL_FANOUT)).await;
    assert_eq!(store.push_queue("", 10).await, Ok(vec![queued("big", 5)]), "a large room queues mentions only");

    // Paging by room: from a room on, that room included.
    let other = room_with(store, "c-room", &["a", "b"], false).await;
    send(store, text("c-room", other, "a", "c1", "x")).await;
    send(store, text("r", epoch, "a", "m3", "x")).await;
    let all = vec![queued("big", 5), queued("c-room", 3), queued("r", 5)];
    assert_eq!(store.push_queue("", 10).await, Ok(all.clone()));
    assert_eq!(store.push_queue("c-room", 10).await, Ok(all[1..].to_vec()));
    assert_eq!(store.push_queue("c", 10).await, Ok(all[1..].to_vec()), "a room id between two");
    assert_eq!(store.push_queue("s", 10).await, Ok(vec![]));
    assert_eq!(store.push_queue("", 2).await, Ok(all[..2].to_vec()));
}

/// The push worker sees each member's join, read position and notification settings.
pub async fn push_members_carry_settings_and_read_positions(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    send(store, text("r", epoch, "a", "m1", "x")).await;
    send(store, join("r", epoch, "c", "c", "j")).await;
    store.mark_read("b", "r", 3).await.expect("read");
    store.set_notifications("c", "r", NotifyLevel::Mentions, Some(TS + 60_000)).await.expect("settings");
    let member = |user: &str, joined_seq, read_seq, notify, muted_until| PushMember {
        user: user.into(),
        joined_seq,
        read_seq,
        notify,
        muted_until,
    };
    assert_eq!(
        store.push_members("r").await,
        Ok(vec![
            member("a", 1, 0, NotifyLevel::All, None),
            member("b", 2, 3, NotifyLevel::All, None),
            member("c", 4, 0, NotifyLevel::Mentions, Some(TS + 60_000)),
        ])
    );
    assert!(store.push_members("nope").await.is_err());
}

/// A read that reaches what a push told owes a clear (one per room, the newest read), a read
/// short of it or of a room never pushed owes none; a clear stays until sent, and a newer read
/// since it was read is kept; deleting the account forgets both.
pub async fn reads_after_a_push_owe_a_clear(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    let quiet = room_with(store, "q", &["a", "b"], false).await;
    for n in 0..4 {
        send(store, text("r", epoch, "a", &format!("m{n}"), "x")).await;
        send(store, text("q", quiet, "a", &format!("m{n}"), "x")).await;
    }
    store.push_done("r", 4, &[("b".into(), 4)]).await.expect("done");
    store.mark_read("b", "r", 3).await.expect("read");
    store.mark_read("b", "q", 6).await.expect("read");
    assert_eq!(store.push_clears(10).await, Ok(vec![]), "short of the push, or never pushed");
    store.mark_read("b", "r", 5).await.expect("read");
    let clear = PushClear { user: "b".into(), room: "r".into(), read_seq: 5 };
    assert_eq!(store.push_clears(10).await, Ok(vec![clear.clone()]));
    store.mark_read("b", "r", 6).await.expect("read");
    assert_eq!(store.push_clears(10).await, Ok(vec![clear.clone()]), "the push record went with the first clear");

    store.push_done("r", 6, &[("b".into(), 6)]).await.expect("done");
    store.mark_read("b", "r", 6).await.expect("read again");
    assert_eq!(store.push_clears(10).await, Ok(vec![PushClear { read_seq: 6, ..clear.clone() }]), "newest read kept");
    store.push_cleared(&[clear]).await.expect("cleared");
    assert_eq!(store.push_clears(10).await.expect("clears").len(), 1, "a newer one than the one sent stays");
    store.push_cleared(&store.push_clears(10).await.expect("clears")).await.expect("cleared");
    assert_eq!(store.push_clears(10).await, Ok(vec![]));

    store.push_done("r", 6, &[("b".into(), 6)]).await.expect("done");
    store.mark_read("b", "r", 6).await.expect("read");
    send(store, super::leave("r", epoch, "b", "l")).await;
    send(store, super::leave("q", quiet, "b", "l")).await;
    store.delete_account("b", TS + 1).await.expect("delete");
    assert_eq!(store.push_clears(10).await, Ok(vec![]), "erased with the account");
}
