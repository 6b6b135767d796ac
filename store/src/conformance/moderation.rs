//! Conformance cases for moderation: roles, kicks, bans and mutes, blocks, and room settings.

use std::sync::Arc;

use protocol::{Audience, EntryKind, Role, RoomKind, RoomSettings, RoomSettingsChange};

use super::{join, refused, room_with, send, text, users, whole_log, TS};
use crate::{AppendRequest, EntryDetails, Epoch, Store, StoreError};
use crate::{HistoryPage, NewRoom};

/// A moderation entry by `from` on `user`.
fn act(room: &str, epoch: Epoch, kind: EntryKind, from: &str, user: &str, body: &str) -> AppendRequest {
    AppendRequest {
        kind,
        id: format!("{kind:?}.{from}.{user}.{body}"),
        user: Some(user.to_owned()),
        ..text(room, epoch, from, "unused", body)
    }
}

fn until(request: AppendRequest, until: u64) -> AppendRequest {
    AppendRequest { details: EntryDetails { until: Some(until), ..EntryDetails::default() }, ..request }
}

async fn role(store: &dyn Store, user: &str, room: &str) -> Option<Role> {
    let rooms = store.rooms_of(user).await.expect("rooms of");
    rooms.iter().find(|r| r.room.id == room).map(|r| r.role)
}

fn not_allowed(err: StoreError) {
    assert!(matches!(err, StoreError::NotAllowed(_)), "expected NotAllowed, got {err:?}");
}

/// The creator owns a group room; only the owner makes admins; roles rank who may act on whom.
pub async fn the_owner_makes_admins_and_ranks_decide(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["o", "a", "m", "n"]).await;
    let epoch = room_with(store, "r", &["o", "a", "m", "n"], false).await;
    assert_eq!(role(store, "o", "r").await, Some(Role::Owner));
    assert_eq!(role(store, "a", "r").await, Some(Role::Member));
    not_allowed(refused(store, act("r", epoch, EntryKind::Role, "m", "a", "admin")).await);
    let made = send(store, act("r", epoch, EntryKind::Role, "o", "a", "admin")).await.delivery;
    assert_eq!(
        (made.entry.kind, made.entry.user.as_deref(), made.entry.body.as_str()),
        (EntryKind::Role, Some("a"), "admin")
    );
    assert_eq!(super::recipient_names(&made).len(), 4, "every member sees the audit entry");
    assert_eq!(role(store, "a", "r").await, Some(Role::Admin));
    // An admin cannot make admins, nor act on the owner or another admin.
    not_allowed(refused(store, act("r", epoch, EntryKind::Role, "a", "m", "admin")).await);
    not_allowed(refused(store, act("r", epoch, EntryKind::Kick, "a", "o", "")).await);
    send(store, act("r", epoch, EntryKind::Role, "o", "m", "admin")).await;
    not_allowed(refused(store, act("r", epoch, EntryKind::Mute, "a", "m", "")).await);
    send(store, act("r", epoch, EntryKind::Role, "o", "m", "member")).await;
    assert_eq!(role(store, "m", "r").await, Some(Role::Member));
    let names: Vec<String> = ["o", "a", "m", "nobody"].iter().map(|n| n.to_string()).collect();
    let roles = store.roles("r", &names).await.expect("roles");
    assert_eq!(roles, [Some(Role::Owner), Some(Role::Admin), Some(Role::Member), None]);
    assert_eq!(store.roles("nowhere", &names).await, Err(StoreError::NoSuchRoom("nowhere".into())));
    let err = refused(store, act("r", epoch, EntryKind::Role, "o", "n", "king")).await;
    assert!(matches!(err, StoreError::InvalidReference(_)), "{err:?}");
    not_allowed(refused(store, act("r", epoch, EntryKind::Role, "o", "o", "member")).await);
    // Members and non-members.
    not_allowed(refused(store, act("r", epoch, EntryKind::Kick, "n", "m", "")).await);
    users(store, &["x"]).await;
    let err = refused(store, act("r", epoch, EntryKind::Kick, "x", "m", "")).await;
    assert!(matches!(err, StoreError::NotMember { .. }), "{err:?}");
}

/// A kick removes a member, who gets the entry; they may join again.
pub async fn a_kick_removes_a_member_who_may_come_back(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["o", "m"]).await;
    let epoch = room_with(store, "r", &["o", "m"], false).await;
    let kick = send(store, act("r", epoch, EntryKind::Kick, "o", "m", "spam")).await.delivery;
    assert!(super::recipient_names(&kick).contains("m"), "the kicked member learns of it");
    assert_eq!(kick.entry.body, "spam");
    assert!(!store.is_member("r", "m").await.expect("member"));
    assert_eq!(store.room("r").await.expect("room").expect("room").members, 1);
    let err = refused(store, text("r", epoch, "m", "after", "still here?")).await;
    assert!(matches!(err, StoreError::NotMember { .. }), "{err:?}");
    let err = refused(store, act("r", epoch, EntryKind::Kick, "o", "m", "")).await;
    assert!(matches!(err, StoreError::NotMember { .. }), "kicking a non-member: {err:?}");
    send(store, join("r", epoch, "m", "m", "back")).await;
    assert_eq!(role(store, "m", "r").await, Some(Role::Member));
    assert!(whole_log(store, "m").await.iter().any(|e| e.entry.kind == EntryKind::Kick), "kick in m's log");
}

/// A ban removes a member and keeps them out (self-join and invitation) until it expires or
/// is lifted; non-members can be banned too.
pub async fn a_ban_keeps_a_user_out_until_it_ends(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["o", "m", "p"]).await;
    let epoch = room_with(store, "r", &["o", "m"], false).await;
    let ban = send(store, act("r", epoch, EntryKind::Ban, "o", "m", "abuse")).await.delivery;
    assert!(super::recipient_names(&ban).contains("m"));
    assert_eq!(ban.entry.until, None);
    assert!(!store.is_member("r", "m").await.expect("member"));
    let banned = StoreError::Banned { room: "r".into(), user: "m".into(), until: None };
    assert_eq!(refused(store, join("r", epoch, "m", "m", "j1")).await, banned);
    assert_eq!(refused(store, join("r", epoch, "o", "m", "j2")).await, banned, "nor invited");
    send(store, act("r", epoch, EntryKind::Unban, "o", "m", "")).await;
    let err = refused(store, act("r", epoch, EntryKind::Unban, "o", "m", "")).await;
    assert!(matches!(err, StoreError::Unchanged(_)), "{err:?}");
    send(store, join("r", epoch, "m", "m", "j3")).await;

    // A non-member, banned for a while: out until then, in after.
    let timed = send(store, until(act("r", epoch, EntryKind::Ban, "o", "p", ""), TS + 100)).await.delivery;
    assert!(!super::recipient_names(&timed).contains("p"), "a non-member is not told");
    assert_eq!(timed.entry.until, Some(TS + 100));
    let mut early = join("r", epoch, "p", "p", "j4");
    early.ts = TS + 99;
    assert_eq!(
        refused(store, early).await,
        StoreError::Banned { room: "r".into(), user: "p".into(), until: Some(TS + 100) }
    );
    let mut late = join("r", epoch, "p", "p", "j5");
    late.ts = TS + 100;
    send(store, late).await;
}

/// A muted member can read and delete their own messages but not post, edit or react, until the
/// mute ends or is lifted.
pub async fn a_mute_stops_posting_until_it_ends(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["o", "m"]).await;
    let epoch = room_with(store, "r", &["o", "m"], false).await;
    let own = send(store, text("r", epoch, "m", "before", "mine")).await.delivery.entry.seq;
    let muted = send(store, until(act("r", epoch, EntryKind::Mute, "o", "m", ""), TS + 100)).await.delivery.entry;
    assert_eq!(muted.until, Some(TS + 100));
    not_allowed(refused(store, text("r", epoch, "m", "during", "let me talk")).await);
    let react = AppendRequest {
        kind: EntryKind::React,
        details: EntryDetails { target: Some(own), ..EntryDetails::default() },
        ..text("r", epoch, "m", "x", "👍")
    };
    not_allowed(refused(store, react).await);
    let delete = AppendRequest {
        kind: EntryKind::Delete,
        details: EntryDetails { target: Some(own), ..EntryDetails::default() },
        ..text("r", epoch, "m", "d", "")
    };
    send(store, delete).await;
    let mut later = text("r", epoch, "m", "later", "free again");
    later.ts = TS + 100;
    send(store, later).await;
    send(store, until(act("r", epoch, EntryKind::Mute, "o", "m", ""), TS + 1_000_000)).await;
    send(store, act("r", epoch, EntryKind::Mute, "o", "m", "")).await;
    send(store, text("r", epoch, "m", "unmuted", "thanks")).await;
}

/// Admins moderate messages: they delete anyone's; members only their own.
pub async fn admins_delete_any_message(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["o", "a", "m"]).await;
    let epoch = room_with(store, "r", &["o", "a", "m"], false).await;
    send(store, act("r", epoch, EntryKind::Role, "o", "a", "admin")).await;
    let seq = send(store, text("r", epoch, "m", "m1", "rude")).await.delivery.entry.seq;
    let delete = AppendRequest {
        kind: EntryKind::Delete,
        details: EntryDetails { target: Some(seq), ..EntryDetails::default() },
        ..text("r", epoch, "a", "d", "")
    };
    send(store, delete).await;
}

/// Direct conversations have no moderators.
pub async fn direct_conversations_have_no_moderation(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let room = crate::NewRoom { kind: protocol::RoomKind::Direct, ..super::new_room("dm:a:b", &["a", "b"], true) };
    store.create_room(room, super::LIMITS).await.expect("create");
    let epoch = store.claim_room("dm:a:b", "node-1").await.expect("claim");
    assert_eq!(role(store, "a", "dm:a:b").await, Some(Role::Member));
    not_allowed(refused(store, act("dm:a:b", epoch, EntryKind::Kick, "a", "b", "")).await);
}

/// Blocks are a user's own list: set, listed in name order, lifted; unknown users are errors.
pub async fn users_block_and_unblock(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;
    assert!(!store.is_blocked("a", "b").await.expect("is blocked"));
    store.set_blocked("a", "c", true).await.expect("block");
    store.set_blocked("a", "b", true).await.expect("block");
    store.set_blocked("a", "b", true).await.expect("blocking twice changes nothing");
    assert!(store.is_blocked("a", "b").await.expect("is blocked"));
    assert!(!store.is_blocked("b", "a").await.expect("is blocked"), "a block goes one way");
    assert_eq!(store.blocked_by("a").await.expect("blocked by"), ["b", "c"]);
    store.set_blocked("a", "b", false).await.expect("unblock");
    store.set_blocked("a", "b", false).await.expect("unblocking twice changes nothing");
    assert_eq!(store.blocked_by("a").await.expect("blocked by"), ["c"]);
    assert_eq!(store.set_blocked("a", "nobody", true).await, Err(StoreError::NoSuchUser("nobody".into())));
    assert!(store.blocked_by("b").await.expect("blocked by").is_empty());
}

/// A settings entry by `from`.
fn settings(room: &str, epoch: Epoch, from: &str, id: &str, change: RoomSettingsChange) -> AppendRequest {
    AppendRequest {
        kind: EntryKind::Settings,
        details: EntryDetails { settings: Some(change), ..EntryDetails::default() },
        ..text(room, epoch, from, id, "")
    }
}

/// The owner and admins change a room's settings; the entry carries all of them, every member
/// gets it, and the room reads back changed (alone and in the member's list).
pub async fn moderators_change_the_room_settings(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["o", "a", "m"]).await;
    let epoch = room_with(store, "r", &["o", "a", "m"], false).await;
    let topic = RoomSettingsChange { topic: Some("plans for the week".into()), ..RoomSettingsChange::default() };
    not_allowed(refused(store, settings("r", epoch, "m", "s0", topic.clone())).await);
    let changed = send(store, settings("r", epoch, "o", "s1", topic.clone())).await.delivery;
    assert_eq!(changed.entry.kind, EntryKind::Settings);
    let expected = RoomSettings {
        name: "room r".into(),
        topic: "plans for the week".into(),
        private: false,
        who_may_post: Audience::Members,
        who_may_invite: Audience::Members,
    };
    assert_eq!(changed.entry.settings.as_deref(), Some(&expected), "the entry carries every setting");
    assert_eq!(super::recipient_names(&changed).len(), 3, "every member sees the change");
    let err = refused(store, settings("r", epoch, "o", "s2", topic)).await;
    assert!(matches!(err, StoreError::Unchanged(_)), "the same settings again: {err:?}");

    send(store, act("r", epoch, EntryKind::Role, "o", "a", "admin")).await;
    let rename = RoomSettingsChange {
        name: Some("Plans".into()),
        private: Some(true),
        who_may_invite: Some(Audience::Moderators),
        ..RoomSettingsChange::default()
    };
    let renamed = send(store, settings("r", epoch, "a", "s3", rename)).await.delivery.entry;
    let expected =
        RoomSettings { name: "Plans".into(), private: true, who_may_invite: Audience::Moderators, ..expected };
    assert_eq!(renamed.settings.as_deref(), Some(&expected), "unchanged settings are kept");
    let record = store.room("r").await.expect("room").expect("room");
    assert_eq!(record.settings(), expected);
    let mine = store.rooms_of("m").await.expect("rooms of");
    assert_eq!(mine[0].room.settings(), expected, "the member's list shows the new settings");
    let history = store.history("r", HistoryPage::After(renamed.seq - 1), 1).await.expect("history").0;
    assert_eq!(history[0].settings.as_deref(), Some(&expected), "history reads the entry back whole");
    // A private room now: nobody joins by themselves.
    users(store, &["x"]).await;
    let err = refused(store, join("r", epoch, "x", "x", "j1")).await;
    assert!(matches!(err, StoreError::Forbidden(_)), "{err:?}");
    // Direct conversations have no settings.
    let direct = NewRoom {
        id: "dm:m:o".into(),
        name: String::new(),
        kind: RoomKind::Direct,
        private: true,
        creator: "m".into(),
        members: vec!["m".into(), "o".into()],
        ts: TS,
    };
    store.create_room(direct, super::LIMITS).await.expect("direct");
    let epoch = store.claim_room("dm:m:o", "node-1").await.expect("claim");
    let name = RoomSettingsChange { name: Some("ours".into()), ..RoomSettingsChange::default() };
    not_allowed(refused(store, settings("dm:m:o", epoch, "m", "s4", name)).await);
}

/// `who_may_post` and `who_may_invite` set to moderators hold members to them; reactions stay
/// open, and opening the room again lets members post.
pub async fn settings_decide_who_posts_and_invites(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["o", "a", "m", "x", "y"]).await;
    let epoch = room_with(store, "r", &["o", "a", "m"], false).await;
    send(store, act("r", epoch, EntryKind::Role, "o", "a", "admin")).await;
    let first = send(store, text("r", epoch, "m", "m1", "before")).await.delivery.entry.seq;
    let closed = RoomSettingsChange {
        who_may_post: Some(Audience::Moderators),
        who_may_invite: Some(Audience::Moderators),
        ..RoomSettingsChange::default()
    };
    send(store, settings("r", epoch, "o", "s1", closed)).await;
    not_allowed(refused(store, text("r", epoch, "m", "m2", "now?")).await);
    not_allowed(refused(store, join("r", epoch, "m", "x", "j1")).await);
    send(store, text("r", epoch, "a", "a1", "announcement")).await;
    send(store, text("r", epoch, "o", "o1", "announcement")).await;
    send(store, join("r", epoch, "a", "x", "j2")).await;
    let react = AppendRequest {
        kind: EntryKind::React,
        details: EntryDetails { target: Some(first), ..EntryDetails::default() },
        ..text("r", epoch, "m", "r1", "👍")
    };
    send(store, react).await;
    let open = RoomSettingsChange { who_may_post: Some(Audience::Members), ..RoomSettingsChange::default() };
    send(store, settings("r", epoch, "a", "s2", open)).await;
    send(store, text("r", epoch, "m", "m3", "thanks")).await;
    not_allowed(refused(store, join("r", epoch, "m", "y", "j3")).await);
}
