//! Conformance case for deleting an account.

use std::sync::Arc;

use protocol::{EntryKind, RoomKind};

use super::{join, leave, refused, room_with, send, text, users, PresenceNote, TS};
use crate::{AppendRequest, EntryDetails, HistoryPage, NewRoom, Store, StoreError};

fn react(room: &str, epoch: u64, from: &str, id: &str, seq: u64) -> AppendRequest {
    AppendRequest {
        kind: EntryKind::React,
        details: EntryDetails { target: Some(seq), ..EntryDetails::default() },
        ..text(room, epoch, from, id, "👍")
    }
}

/// An account is deleted once its memberships ended; then it is gone everywhere but in the
/// room logs, and its name stays taken.
pub async fn deleting_an_account_erases_it_and_keeps_the_name(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    let mentioning_b = AppendRequest {
        details: EntryDetails { mentions: vec!["b".into()], ..EntryDetails::default() },
        ..text("r", epoch, "a", "a1", "hi b")
    };
    let by_a = send(store, mentioning_b).await.delivery.entry.seq;
    let mentioning_a = AppendRequest {
        details: EntryDetails { mentions: vec!["a".into()], ..EntryDetails::default() },
        ..text("r", epoch, "b", "b1", "hi a")
    };
    let by_b = send(store, mentioning_a).await.delivery.entry.seq;
    send(store, react("r", epoch, "a", "a2", by_b)).await;
    send(store, react("r", epoch, "b", "b2", by_a)).await;
    store.set_presence_note("a", PresenceNote { status: Some("busy".into()), set_ms: TS }).await.expect("note");
    store.set_blocked("a", "c", true).await.expect("block");
    store.set_blocked("c", "a", true).await.expect("block");
    store.set_blocked("c", "b", true).await.expect("block");

    // Still a member: the room must be left first, by an entry of the room.
    let err = store.delete_account("a", TS + 5).await.expect_err("still a member");
    assert_eq!(err, StoreError::AlreadyMember { room: "r".into(), user: "a".into() });
    assert!(store.user("a").await.expect("user").is_some(), "a refused deletion changes nothing");
    send(store, leave("r", epoch, "a", "l1")).await;
    store.delete_account("a", TS + 6).await.expect("delete account");

    // Gone: no account, log, note or blocks; the name cannot be taken or named again.
    assert_eq!(store.user("a").await.expect("user"), None);
    assert_eq!(store.delete_account("a", TS + 7).await, Err(StoreError::NoSuchUser("a".into())));
    assert_eq!(store.create_user("a", "another hash", TS + 8).await, Err(StoreError::UserExists("a".into())));
    assert!(store.user_log("a", 0, 10).await.map_or(true, |log| log.is_empty()), "the log is gone");
    assert!(store.presence_note("a").await.is_err(), "the note is gone");
    assert_eq!(store.blocked_by("c").await.expect("blocked by"), ["b"], "others' block lists leave a out");
    assert_eq!(store.set_blocked("b", "a", true).await, Err(StoreError::NoSuchUser("a".into())));
    let err = refused(store, join("r", epoch, "b", "a", "j1")).await;
    assert_eq!(err, StoreError::NoSuchUser("a".into()), "nobody invites a deleted user");
    let direct = NewRoom {
        id: "dm:a:b".into(),
        name: String::new(),
        kind: RoomKind::Direct,
        private: true,
        creator: "b".into(),
        members: vec!["b".into(), "a".into()],
        ts: TS,
    };
    assert_eq!(store.create_room(direct, super::LIMITS).await.err(), Some(StoreError::NoSuchUser("a".into())));

    // The room log keeps what a wrote, under the name, and the reactions a gave.
    let (history, _) = store.history("r", HistoryPage::After(0), 50).await.expect("history");
    let message = history.iter().find(|e| e.seq == by_a).expect("a's message");
    assert_eq!((message.from.as_str(), message.body.as_str()), ("a", "hi b"));
    let reactions = store.reactions("r", &[by_b], "b").await.expect("reactions");
    assert_eq!(reactions[0].len(), 1);
    assert_eq!((reactions[0][0].count, reactions[0][0].me), (1, false), "a's reaction still counts");
    // b's mention of a is b's message; b's unread mentions are untouched.
    let b_rooms = store.rooms_of("b").await.expect("rooms of b");
    assert_eq!(b_rooms[0].unread_mentions, 1);
}
