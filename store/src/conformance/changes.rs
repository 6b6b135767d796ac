//! Conformance cases for messages that change: edits, deletes, reactions, replies, mentions.

use std::sync::Arc;

use protocol::{EntryKind, ReactionCount};

use super::{refused, room_with, send, text, users, whole_history, whole_log, TS};
use crate::{AppendRequest, EntryDetails, Epoch, HistoryPage, Store, StoreError};

/// A change by `from` (edit, delete, react, unreact) of message `target`.
fn change(room: &str, epoch: Epoch, kind: EntryKind, from: &str, id: &str, target: u64, body: &str) -> AppendRequest {
    AppendRequest {
        kind,
        details: EntryDetails { target: Some(target), ..EntryDetails::default() },
        ts: TS + 2,
        ..text(room, epoch, from, id, body)
    }
}

fn reply(room: &str, epoch: Epoch, from: &str, id: &str, to: u64) -> AppendRequest {
    AppendRequest {
        details: EntryDetails { reply_to: Some(to), ..EntryDetails::default() },
        ..text(room, epoch, from, id, id)
    }
}

pub(super) fn mentioning(room: &str, epoch: Epoch, from: &str, id: &str, names: &[&str]) -> AppendRequest {
    let mentions = names.iter().map(|n| (*n).to_owned()).collect();
    AppendRequest { details: EntryDetails { mentions, ..EntryDetails::default() }, ..text(room, epoch, from, id, id) }
}

async fn unread_mentions(store: &dyn Store, user: &str, room: &str) -> u32 {
    let rooms = store.rooms_of(user).await.expect("rooms of");
    rooms.iter().find(|r| r.room.id == room).expect("member").unread_mentions
}

async fn entry_at(store: &dyn Store, room: &str, seq: u64) -> protocol::Entry {
    let (page, _) = store.history(room, HistoryPage::After(seq - 1), 1).await.expect("history");
    page.into_iter().next().expect("entry")
}

/// An edit is a new entry naming its target, delivered like any entry, and the target reads
/// back (history and replay) with the new body and when it was edited.
pub async fn edit_changes_the_message_and_is_logged(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    let seq = send(store, text("r", epoch, "a", "m1", "helo")).await.delivery.entry.seq;
    let edit = send(store, change("r", epoch, EntryKind::Edit, "a", "e1", seq, "hello")).await.delivery;
    assert_eq!(edit.entry.kind, EntryKind::Edit);
    assert_eq!((edit.entry.target, edit.entry.body.as_str(), edit.entry.seq), (Some(seq), "hello", seq + 1));
    assert_eq!(super::recipient_names(&edit), ["a", "b"].map(String::from).into(), "members get the edit");
    let message = entry_at(store, "r", seq).await;
    assert_eq!((message.body.as_str(), message.edited_at, message.deleted), ("hello", Some(TS + 2), false));
    let log = whole_log(store, "b").await;
    let replayed = log.iter().find(|e| e.entry.seq == seq && e.entry.room == "r").expect("in b's log");
    assert_eq!(replayed.entry.body, "hello", "replay shows the current body");
    assert!(log.iter().any(|e| e.entry.kind == EntryKind::Edit && e.entry.target == Some(seq)), "edit in b's log");
}

pub async fn only_the_author_edits_within_the_window(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    let seq = send(store, text("r", epoch, "a", "m1", "mine")).await.delivery.entry.seq;
    let err = refused(store, change("r", epoch, EntryKind::Edit, "b", "e1", seq, "yours")).await;
    assert!(matches!(err, StoreError::NotAllowed(_)), "{err:?}");
    let mut late = change("r", epoch, EntryKind::Edit, "a", "e2", seq, "late");
    late.ts = TS + 1 + 60_001;
    assert!(matches!(refused(store, late).await, StoreError::NotAllowed(_)));
    let err = refused(store, change("r", epoch, EntryKind::Edit, "a", "e3", 999, "none")).await;
    assert_eq!(err, StoreError::NoSuchMessage { room: "r".into(), seq: 999 });
    // Seq 1 is a's join: not a message.
    let err = refused(store, change("r", epoch, EntryKind::Edit, "a", "e4", 1, "join")).await;
    assert_eq!(err, StoreError::NoSuchMessage { room: "r".into(), seq: 1 });
    let err = refused(store, change("r", epoch, EntryKind::Edit, "c", "e5", seq, "outsider")).await;
    assert!(matches!(err, StoreError::NotMember { .. }), "{err:?}");
    assert_eq!(entry_at(store, "r", seq).await.body, "mine", "a refused edit changed the message");
    // Exactly at the window's end is still in time.
    let mut last_moment = change("r", epoch, EntryKind::Edit, "a", "e6", seq, "just in time");
    last_moment.ts = TS + 1 + 60_000;
    send(store, last_moment).await;
}

/// A delete leaves a tombstone and erases everything the message said: its body, the bodies of
/// its edits, its reactions and its mentions. Nothing more can be done to it.
pub async fn delete_erases_the_message_its_edits_reactions_and_mentions(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    let seq = send(store, mentioning("r", epoch, "a", "secret one", &["b"])).await.delivery.entry.seq;
    let edit_seq =
        send(store, change("r", epoch, EntryKind::Edit, "a", "e1", seq, "secret two")).await.delivery.entry.seq;
    send(store, change("r", epoch, EntryKind::React, "b", "x1", seq, "👍")).await;
    assert_eq!(unread_mentions(store, "b", "r").await, 1);
    let delete = send(store, change("r", epoch, EntryKind::Delete, "a", "d1", seq, "ignored")).await.delivery.entry;
    assert_eq!((delete.kind, delete.target, delete.body.as_str()), (EntryKind::Delete, Some(seq), ""));

    let message = entry_at(store, "r", seq).await;
    assert!(message.deleted, "tombstone");
    assert_eq!((message.body.as_str(), message.mentions.len()), ("", 0));
    let edit = entry_at(store, "r", edit_seq).await;
    assert!(edit.deleted && edit.body.is_empty(), "the edit kept the text: {edit:?}");
    assert_eq!(store.reactions("r", &[seq], "b").await.expect("reactions"), vec![vec![]]);
    assert_eq!(unread_mentions(store, "b", "r").await, 0, "a deleted message is no unread mention");
    for user in ["a", "b"] {
        let log = whole_log(store, user).await;
        assert!(log.iter().all(|e| !e.entry.body.contains("secret")), "{user}'s replay shows the text");
    }
    assert!(whole_history(store, "r").await.iter().all(|e| !e.body.contains("secret")));

    let gone = StoreError::MessageDeleted { room: "r".into(), seq };
    assert_eq!(refused(store, change("r", epoch, EntryKind::Delete, "a", "d2", seq, "")).await, gone);
    assert_eq!(refused(store, change("r", epoch, EntryKind::Edit, "a", "e2", seq, "again")).await, gone);
    assert_eq!(refused(store, change("r", epoch, EntryKind::React, "b", "x2", seq, "👍")).await, gone);
    assert_eq!(refused(store, reply("r", epoch, "b", "re", seq)).await, gone);
}

pub async fn the_room_creator_deletes_any_message_other_members_only_their_own(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;
    let epoch = room_with(store, "r", &["a", "b", "c"], false).await;
    let of_b = send(store, text("r", epoch, "b", "m1", "b's")).await.delivery.entry.seq;
    let of_c = send(store, text("r", epoch, "c", "m2", "c's")).await.delivery.entry.seq;
    let err = refused(store, change("r", epoch, EntryKind::Delete, "c", "d1", of_b, "")).await;
    assert!(matches!(err, StoreError::NotAllowed(_)), "{err:?}");
    send(store, change("r", epoch, EntryKind::Delete, "a", "d2", of_b, "")).await;
    send(store, change("r", epoch, EntryKind::Delete, "c", "d3", of_c, "")).await;
    assert!(entry_at(store, "r", of_b).await.deleted && entry_at(store, "r", of_c).await.deleted);
}

pub async fn reactions_are_once_per_user_and_bounded(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    let seq = send(store, text("r", epoch, "a", "m1", "react to me")).await.delivery.entry.seq;
    let other = send(store, text("r", epoch, "a", "m2", "not me")).await.delivery.entry.seq;
    let given = send(store, change("r", epoch, EntryKind::React, "b", "x1", seq, "👍")).await.delivery.entry;
    assert_eq!((given.kind, given.target, given.body.as_str()), (EntryKind::React, Some(seq), "👍"));
    let err = refused(store, change("r", epoch, EntryKind::React, "b", "x2", seq, "👍")).await;
    assert!(matches!(err, StoreError::Unchanged(_)), "{err:?}");
    send(store, change("r", epoch, EntryKind::React, "a", "x3", seq, "👍")).await;
    send(store, change("r", epoch, EntryKind::React, "a", "x4", seq, "🎉")).await;
    let count = |reaction: &str, count, me| ReactionCount { reaction: reaction.into(), count, me };
    let seen_by_b = store.reactions("r", &[seq, other], "b").await.expect("reactions");
    assert_eq!(seen_by_b, vec![vec![count("🎉", 1, false), count("👍", 2, true)], vec![]]);

    send(store, change("r", epoch, EntryKind::Unreact, "b", "u1", seq, "👍")).await;
    let err = refused(store, change("r", epoch, EntryKind::Unreact, "b", "u2", seq, "👍")).await;
    assert!(matches!(err, StoreError::Unchanged(_)), "{err:?}");
    assert_eq!(
        store.reactions("r", &[seq], "b").await.expect("reactions")[0],
        vec![count("🎉", 1, false), count("👍", 1, false)]
    );

    // Three different reactions at most (RULES); more of an existing one is fine.
    send(store, change("r", epoch, EntryKind::React, "b", "x5", seq, "❤")).await;
    let err = refused(store, change("r", epoch, EntryKind::React, "b", "x6", seq, "🔥")).await;
    assert!(matches!(err, StoreError::InvalidReference(_)), "{err:?}");
    send(store, change("r", epoch, EntryKind::React, "b", "x7", seq, "🎉")).await;
    let err = refused(store, change("r", epoch, EntryKind::React, "b", "x8", 1, "🎉")).await;
    assert_eq!(err, StoreError::NoSuchMessage { room: "r".into(), seq: 1 }, "reactions are to messages only");
}

pub async fn replies_form_threads(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    let root = send(store, text("r", epoch, "a", "root", "question")).await.delivery.entry.seq;
    let mut replies = Vec::new();
    for i in 0..5 {
        if i == 2 {
            send(store, text("r", epoch, "b", "aside", "not in the thread")).await;
        }
        let entry = send(store, reply("r", epoch, "b", &format!("re{i}"), root)).await.delivery.entry;
        assert_eq!(entry.reply_to, Some(root));
        replies.push(entry.seq);
    }
    let (first, page, more) = store.thread("r", root, 0, 3).await.expect("thread");
    assert_eq!((first.seq, first.body.as_str()), (root, "question"));
    assert_eq!((super::seqs(&page), more), (replies[..3].to_vec(), true));
    let (_, page, more) = store.thread("r", root, replies[2], 3).await.expect("thread");
    assert_eq!((super::seqs(&page), more), (replies[3..].to_vec(), false));
    assert_eq!(
        store.thread("r", 1, 0, 3).await.unwrap_err(),
        StoreError::NoSuchMessage { room: "r".into(), seq: 1 },
        "a join is no thread root"
    );
    let err = refused(store, reply("r", epoch, "a", "re-none", 999)).await;
    assert_eq!(err, StoreError::NoSuchMessage { room: "r".into(), seq: 999 });
    assert_eq!(entry_at(store, "r", replies[0]).await.reply_to, Some(root), "history keeps reply_to");
}

pub async fn mentions_are_members_and_count_until_read(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    let first = send(store, mentioning("r", epoch, "a", "m1", &["b"])).await.delivery.entry;
    assert_eq!(first.mentions, vec!["b".to_owned()]);
    send(store, mentioning("r", epoch, "a", "m2", &["b", "a"])).await;
    assert_eq!(unread_mentions(store, "b", "r").await, 2);
    assert_eq!(unread_mentions(store, "a", "r").await, 0, "mentioning oneself is no unread mention");
    store.mark_read("b", "r", first.seq).await.expect("mark read");
    assert_eq!(unread_mentions(store, "b", "r").await, 1);
    let err = refused(store, mentioning("r", epoch, "a", "m3", &["c"])).await;
    assert!(matches!(err, StoreError::InvalidReference(_)), "{err:?}");
    let err = refused(store, mentioning("r", epoch, "a", "m4", &["nobody"])).await;
    assert!(matches!(err, StoreError::InvalidReference(_)), "{err:?}");
    assert_eq!(entry_at(store, "r", first.seq).await.mentions, vec!["b".to_owned()], "history keeps mentions");
}

/// A retried change returns its first outcome and changes nothing more.
pub async fn changes_are_deduplicated_by_client_id(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    let seq = send(store, text("r", epoch, "a", "m1", "one")).await.delivery.entry.seq;
    let first = send(store, change("r", epoch, EntryKind::React, "b", "x1", seq, "👍")).await.delivery.entry;
    let again = store.append(change("r", epoch, EntryKind::React, "b", "x1", seq, "👍")).await.expect("retry");
    assert!(again.duplicate);
    assert_eq!(again.delivery.entry, first);
    let edit = send(store, change("r", epoch, EntryKind::Edit, "a", "e1", seq, "two")).await.delivery.entry;
    let retry = store.append(change("r", epoch, EntryKind::Edit, "a", "e1", seq, "three")).await.expect("retry");
    assert!(retry.duplicate);
    assert_eq!(retry.delivery.entry, edit);
    assert_eq!(entry_at(store, "r", seq).await.body, "two", "a retried edit applied twice");
}

/// In a large room a reaction is counted, not logged: no entry, no seq, the same rules (one
/// per user, the limit of kinds, members only), the counts read back; in a small room of the
/// same store it is still an entry.
pub async fn reactions_in_large_rooms_are_counted_not_logged(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c", "d"]).await;
    let limits = crate::MembershipLimits { fanout_max_members: 2, ..super::LIMITS };
    let (_, _) = store
        .create_room(
            crate::NewRoom {
                members: vec!["a".into(), "b".into(), "c".into()],
                ..super::new_room("big", &["a"], false)
            },
            limits,
        )
        .await
        .expect("create a room created large");
    let epoch = store.claim_room("big", "node-1").await.expect("claim");
    assert!(store.room("big").await.expect("room").expect("exists").large_since.is_some());
    let message = send(store, text("big", epoch, "a", "m1", "hello")).await.delivery.entry.seq;
    let last = message;

    for (i, from) in ["a", "b", "c"].into_iter().enumerate() {
        let counted = send(store, change("big", epoch, EntryKind::React, from, &format!("r{i}"), message, "👍")).await;
        assert!(counted.is_counted(), "{counted:?}");
        assert_eq!(counted.delivery.entry.target, Some(message));
        assert_eq!(counted.delivery.recipients.users().count(), 0);
    }
    let again = refused(store, change("big", epoch, EntryKind::React, "b", "r9", message, "👍")).await;
    assert!(matches!(again, StoreError::Unchanged(_)), "{again:?}");
    let outsider = refused(store, change("big", epoch, EntryKind::React, "d", "r8", message, "👍")).await;
    assert!(matches!(outsider, StoreError::NotMember { .. }), "{outsider:?}");
    for (i, reaction) in ["a", "b"].into_iter().enumerate() {
        send(store, change("big", epoch, EntryKind::React, "a", &format!("k{i}"), message, reaction)).await;
    }
    let over = refused(store, change("big", epoch, EntryKind::React, "a", "k9", message, "c")).await;
    assert!(matches!(over, StoreError::InvalidReference(_)), "the limit of kinds holds: {over:?}");
    let taken_back = send(store, change("big", epoch, EntryKind::Unreact, "c", "u1", message, "👍")).await;
    assert!(taken_back.is_counted());

    assert_eq!(store.room("big").await.expect("room").expect("exists").last_seq, last, "no entry was written");
    let counts = store.reactions("big", &[message], "b").await.expect("reactions");
    let count = |reaction: &str, count: u32, me: bool| ReactionCount { reaction: reaction.into(), count, me };
    assert_eq!(counts, vec![vec![count("a", 1, false), count("b", 1, false), count("👍", 2, true)]]);
    let (history, _) = store.history("big", HistoryPage::After(0), 100).await.expect("history");
    assert!(history.iter().all(|e| e.kind != EntryKind::React && e.kind != EntryKind::Unreact));

    // A small room still logs its reactions.
    let small = room_with(store, "small", &["a", "b"], false).await;
    let m = send(store, text("small", small, "a", "s1", "hi")).await.delivery.entry.seq;
    let logged = send(store, change("small", small, EntryKind::React, "b", "sr", m, "👍")).await;
    assert!(!logged.is_counted() && logged.delivery.entry.seq == m + 1);
}

/// A member's notification settings are theirs per room: kept, listed by `rooms_of`, refused
/// for non-members, and gone with the membership (a rejoin starts at the defaults).
pub async fn notification_settings_are_per_member_and_room(store: Arc<dyn Store>) {
    use protocol::NotifyLevel;
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    room_with(store, "s", &["a"], false).await;
    let settings = |store_rooms: Vec<crate::MyRoom>, room: &str| {
        let mine = store_rooms.into_iter().find(|r| r.room.id == room).expect("a member");
        (mine.notify, mine.notify_muted_until)
    };
    assert_eq!(settings(store.rooms_of("a").await.expect("rooms"), "r"), (NotifyLevel::All, None));
    store.set_notifications("a", "r", NotifyLevel::Mentions, Some(TS + 60_000)).await.expect("set");
    store.set_notifications("b", "r", NotifyLevel::None, None).await.expect("set");
    assert_eq!(settings(store.rooms_of("a").await.expect("rooms"), "r"), (NotifyLevel::Mentions, Some(TS + 60_000)));
    assert_eq!(settings(store.rooms_of("a").await.expect("rooms"), "s"), (NotifyLevel::All, None), "per room");
    assert_eq!(settings(store.rooms_of("b").await.expect("rooms"), "r"), (NotifyLevel::None, None), "per member");
    // Reading on keeps them.
    store.mark_read("a", "r", 2).await.expect("mark read");
    assert_eq!(settings(store.rooms_of("a").await.expect("rooms"), "r"), (NotifyLevel::Mentions, Some(TS + 60_000)));

    let refused = store.set_notifications("c", "r", NotifyLevel::None, None).await;
    assert!(matches!(refused, Err(StoreError::NotMember { .. })), "{refused:?}");
    let unknown = store.set_notifications("a", "nowhere", NotifyLevel::None, None).await;
    assert!(matches!(unknown, Err(StoreError::NoSuchRoom(_))), "{unknown:?}");
    send(store, super::leave("r", epoch, "b", "l1")).await;
    let left = store.set_notifications("b", "r", NotifyLevel::All, None).await;
    assert!(matches!(left, Err(StoreError::NotMember { .. })), "{left:?}");
    send(store, super::join("r", epoch, "b", "b", "j1")).await;
    assert_eq!(
        settings(store.rooms_of("b").await.expect("rooms"), "r"),
        (NotifyLevel::All, None),
        "a rejoin starts afresh"
    );
}
