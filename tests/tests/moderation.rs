//! Moderation against the real binary (docs/PROTOCOL.md, "Roles and moderation"): the creator
//! owns a room and makes admins; admins kick, ban and mute members ranked below them and delete
//! any message; every action is an entry members see (the audit trail); bans hold through
//! rejoin attempts and invitations until they end.

use anyhow::{bail, ensure};
use tests::{
    Audience, Client, ClientFrame, Encoding, EntryKind, ErrorCode, Node, NodeOptions, Role, RoomSettings,
    RoomSettingsChange, ServerFrame,
};

async fn ok(client: &mut Client, frame: ClientFrame) -> anyhow::Result<()> {
    match client.request(frame).await? {
        ServerFrame::Ok { .. } => Ok(()),
        other => bail!("expected ok, got {other:?}"),
    }
}

async fn refused(client: &mut Client, frame: ClientFrame) -> anyhow::Result<ErrorCode> {
    match client.request(frame).await? {
        ServerFrame::Error { code, .. } => Ok(code),
        other => bail!("expected a refusal, got {other:?}"),
    }
}

async fn my_role(client: &mut Client, room: &str) -> anyhow::Result<Option<Role>> {
    let req = client.next_req();
    let ServerFrame::Rooms { rooms, .. } = client.request(ClientFrame::ListRooms { req }).await? else {
        bail!("rooms")
    };
    Ok(rooms.iter().find(|r| r.id == room).map(|r| r.role))
}

/// The entry of `kind` about `user` that `client` received.
async fn audit_entry(client: &mut Client, room: &str, kind: EntryKind, user: &str) -> anyhow::Result<tests::Entry> {
    loop {
        let found = client
            .ledger
            .iter()
            .map(|(_, e)| e)
            .find(|e| e.room == room && e.kind == kind && e.user.as_deref() == Some(user));
        if let Some(entry) = found {
            return Ok(entry.clone());
        }
        client.recv().await?;
    }
}

#[tokio::test]
async fn roles_kicks_bans_and_mutes() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    let (mut alice, _) = Client::user(&node, Encoding::Json, "alice").await?;
    let (mut bob, _) = Client::user(&node, Encoding::MessagePack, "bob").await?;
    let (mut carol, _) = Client::user(&node, Encoding::Json, "carol").await?;
    let room = alice.create_room("moderated").await?;
    bob.join(&room).await?;
    carol.join(&room).await?;
    ensure!(my_role(&mut alice, &room).await? == Some(Role::Owner), "the creator owns the room");

    // The owner makes bob an admin; everyone sees it.
    let req = carol.next_req();
    let frame = ClientFrame::SetRole { req, room: room.clone(), user: "carol".into(), role: Role::Admin };
    ensure!(refused(&mut carol, frame).await? == ErrorCode::Forbidden, "a member makes no admins");
    let req = alice.next_req();
    ok(&mut alice, ClientFrame::SetRole { req, room: room.clone(), user: "bob".into(), role: Role::Admin }).await?;
    let made = audit_entry(&mut carol, &room, EntryKind::Role, "bob").await?;
    ensure!(made.from == "alice" && made.body == "admin", "{made:?}");
    ensure!(my_role(&mut bob, &room).await? == Some(Role::Admin));
    let req = carol.next_req();
    let list = ClientFrame::ListMembers { req, room: room.clone(), after: None, limit: None };
    let ServerFrame::Members { members, roles, .. } = carol.request(list).await? else { bail!("members") };
    let listed: Vec<(&str, Role)> = members.iter().map(String::as_str).zip(roles).collect();
    ensure!(
        listed == [("alice", Role::Owner), ("bob", Role::Admin), ("carol", Role::Member)],
        "every member sees the roles: {listed:?}"
    );

    // The admin kicks carol, who learns why and is out; she may come back.
    let req = bob.next_req();
    ok(&mut bob, ClientFrame::Kick { req, room: room.clone(), user: "carol".into(), reason: Some("off topic".into()) })
        .await?;
    let kick = audit_entry(&mut carol, &room, EntryKind::Kick, "carol").await?;
    ensure!(kick.from == "bob" && kick.body == "off topic", "{kick:?}");
    let req = carol.next_req();
    let send = ClientFrame::send(req, room.clone(), "c1", "still here?");
    ensure!(refused(&mut carol, send).await? == ErrorCode::NotMember, "a kicked member cannot post");
    carol.join(&room).await?;

    // A member cannot act on an admin, nor an admin on the owner.
    let req = carol.next_req();
    let frame = ClientFrame::Kick { req, room: room.clone(), user: "bob".into(), reason: None };
    ensure!(refused(&mut carol, frame).await? == ErrorCode::Forbidden);
    let req = bob.next_req();
    let frame = ClientFrame::Ban { req, room: room.clone(), user: "alice".into(), reason: None, until: None };
    ensure!(refused(&mut bob, frame).await? == ErrorCode::Forbidden);

    // A ban holds through rejoining and invitations until it is lifted.
    let req = bob.next_req();
    ok(
        &mut bob,
        ClientFrame::Ban { req, room: room.clone(), user: "carol".into(), reason: Some("spam".into()), until: None },
    )
    .await?;
    audit_entry(&mut carol, &room, EntryKind::Ban, "carol").await?;
    let req = carol.next_req();
    ensure!(refused(&mut carol, ClientFrame::Join { req, room: room.clone() }).await? == ErrorCode::Banned);
    let req = alice.next_req();
    let invite = ClientFrame::Invite { req, room: room.clone(), user: "carol".into() };
    ensure!(refused(&mut alice, invite).await? == ErrorCode::Banned, "an invitation is no way around a ban");
    let req = alice.next_req();
    ok(&mut alice, ClientFrame::Unban { req, room: room.clone(), user: "carol".into() }).await?;
    carol.join(&room).await?;

    // A ban with an end: out until then.
    let until = tests::now_ms() + 1_500;
    let req = bob.next_req();
    ok(&mut bob, ClientFrame::Ban { req, room: room.clone(), user: "carol".into(), reason: None, until: Some(until) })
        .await?;
    let req = carol.next_req();
    ensure!(refused(&mut carol, ClientFrame::Join { req, room: room.clone() }).await? == ErrorCode::Banned);
    tokio::time::sleep(std::time::Duration::from_millis(until.saturating_sub(tests::now_ms()) + 100)).await;
    carol.join(&room).await?;

    // A mute: carol reads but cannot post until it is lifted; an admin deletes her message.
    let (seq, _) = carol.say(&room, "before-mute", "noise").await?;
    let req = bob.next_req();
    ok(
        &mut bob,
        ClientFrame::Mute { req, room: room.clone(), user: "carol".into(), until: Some(tests::now_ms() + 3_600_000) },
    )
    .await?;
    let req = carol.next_req();
    let send = ClientFrame::send(req, room.clone(), "c2", "let me talk");
    ensure!(refused(&mut carol, send).await? == ErrorCode::Forbidden, "a muted member cannot post");
    let req = bob.next_req();
    match bob.request(ClientFrame::Delete { req, room: room.clone(), id: "mod-del".into(), seq }).await? {
        ServerFrame::Ack { .. } => {}
        other => bail!("an admin deletes any message: {other:?}"),
    }
    let req = bob.next_req();
    ok(&mut bob, ClientFrame::Mute { req, room: room.clone(), user: "carol".into(), until: None }).await?;
    carol.say(&room, "after-mute", "thanks").await?;
    Ok(())
}

/// A user blocks another: no direct messages from them, in a conversation that existed before
/// or a new one, until the block is lifted; the blocker may still write.
#[tokio::test]
async fn blocked_users_send_no_direct_messages() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    let (mut alice, _) = Client::user(&node, Encoding::Json, "alice").await?;
    let (mut bob, _) = Client::user(&node, Encoding::Json, "bob").await?;
    let (mut carol, _) = Client::user(&node, Encoding::Json, "carol").await?;
    let req = bob.next_req();
    let ServerFrame::Room { room: dm, .. } = bob.request(ClientFrame::OpenDirect { req, user: "alice".into() }).await?
    else {
        bail!("open_direct")
    };
    bob.say(&dm.id, "b1", "hi alice").await?;

    let req = alice.next_req();
    ok(&mut alice, ClientFrame::Block { req, user: "bob".into() }).await?;
    let req = alice.next_req();
    ok(&mut alice, ClientFrame::Block { req, user: "carol".into() }).await?;
    let req = alice.next_req();
    let ServerFrame::Blocked { users, .. } = alice.request(ClientFrame::ListBlocked { req }).await? else {
        bail!("list")
    };
    ensure!(users == ["bob", "carol"], "{users:?}");

    let req = bob.next_req();
    let send = ClientFrame::send(req, dm.id.clone(), "b2", "hello?");
    ensure!(refused(&mut bob, send).await? == ErrorCode::Forbidden, "a blocked user's direct message");
    let req = carol.next_req();
    let open = ClientFrame::OpenDirect { req, user: "alice".into() };
    ensure!(refused(&mut carol, open).await? == ErrorCode::Forbidden, "a blocked user opening a conversation");
    alice.say(&dm.id, "a1", "I can still write").await?;

    let req = alice.next_req();
    ok(&mut alice, ClientFrame::Unblock { req, user: "bob".into() }).await?;
    bob.say(&dm.id, "b3", "thanks").await?;
    let req = alice.next_req();
    let frame = ClientFrame::Block { req, user: "nobody".into() };
    ensure!(refused(&mut alice, frame).await? == ErrorCode::NoSuchUser);
    Ok(())
}

/// A `set_room` by `client` asking for `change`.
fn set_room(client: &mut Client, room: &str, change: RoomSettingsChange) -> ClientFrame {
    let RoomSettingsChange { name, topic, private, who_may_post, who_may_invite } = change;
    ClientFrame::SetRoom {
        req: client.next_req(),
        room: room.to_owned(),
        name,
        topic,
        private,
        who_may_post,
        who_may_invite,
    }
}

/// The settings entry `client` received last for `room`, waiting for one after `after`.
async fn settings_entry(client: &mut Client, room: &str, after: u64) -> anyhow::Result<tests::Entry> {
    loop {
        let found = client
            .ledger
            .iter()
            .map(|(_, e)| e)
            .rfind(|e| e.room == room && e.kind == EntryKind::Settings && e.seq > after);
        if let Some(entry) = found {
            return Ok(entry.clone());
        }
        client.recv().await?;
    }
}

#[tokio::test]
async fn room_settings_decide_who_posts_and_invites() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    let (mut alice, _) = Client::user(&node, Encoding::Json, "alice").await?;
    let (mut bob, _) = Client::user(&node, Encoding::MessagePack, "bob").await?;
    let (mut carol, _) = Client::user(&node, Encoding::Json, "carol").await?;
    let (mut dave, _) = Client::user(&node, Encoding::Json, "dave").await?;
    let room = alice.create_room("announcements").await?;
    bob.join(&room).await?;
    carol.join(&room).await?;
    let (first, _) = alice.say(&room, "a1", "welcome").await?;

    // Only the owner and admins change settings; a change names at least one.
    let frame =
        set_room(&mut carol, &room, RoomSettingsChange { topic: Some("release notes".into()), ..Default::default() });
    ensure!(refused(&mut carol, frame).await? == ErrorCode::Forbidden, "a member changes no settings");
    let frame = set_room(&mut alice, &room, RoomSettingsChange::default());
    ensure!(refused(&mut alice, frame).await? == ErrorCode::InvalidField, "a change of nothing");
    let frame =
        set_room(&mut alice, &room, RoomSettingsChange { topic: Some("bell\u{7}".into()), ..Default::default() });
    ensure!(refused(&mut alice, frame).await? == ErrorCode::InvalidField, "control characters in a topic");
    let frame = set_room(&mut alice, &room, RoomSettingsChange { name: Some("x".repeat(200)), ..Default::default() });
    ensure!(refused(&mut alice, frame).await? == ErrorCode::InvalidField, "a name too long");

    // The owner makes it an announcement room: every member gets the whole settings.
    let announcements = RoomSettingsChange {
        topic: Some("release notes".into()),
        who_may_post: Some(Audience::Moderators),
        ..Default::default()
    };
    let frame = set_room(&mut alice, &room, announcements.clone());
    ok(&mut alice, frame).await?;
    let change = settings_entry(&mut bob, &room, first).await?;
    let expected = RoomSettings {
        name: "announcements".into(),
        topic: "release notes".into(),
        private: false,
        who_may_post: Audience::Moderators,
        who_may_invite: Audience::Members,
    };
    ensure!(change.from == "alice" && change.settings.as_deref() == Some(&expected), "{change:?}");
    let again = set_room(&mut alice, &room, announcements);
    ensure!(refused(&mut alice, again).await? == ErrorCode::Unchanged, "the same settings again");
    let req = carol.next_req();
    let ServerFrame::Rooms { rooms, .. } = carol.request(ClientFrame::ListRooms { req }).await? else { bail!("rooms") };
    let listed = rooms.iter().find(|r| r.id == room).expect("listed");
    ensure!(listed.topic == "release notes" && listed.who_may_post == Audience::Moderators, "{listed:?}");

    // Members no longer post, but still react; admins post.
    let req = carol.next_req();
    let send = ClientFrame::send(req, room.clone(), "c1", "can I?");
    ensure!(refused(&mut carol, send).await? == ErrorCode::Forbidden, "members do not post");
    let req = carol.next_req();
    let react = ClientFrame::React {
        req,
        room: room.clone(),
        id: "c2".into(),
        seq: first,
        reaction: "🎉".into(),
        remove: false,
    };
    ensure!(matches!(carol.request(react).await?, ServerFrame::Ack { .. }), "members still react");
    let req = alice.next_req();
    ok(&mut alice, ClientFrame::SetRole { req, room: room.clone(), user: "bob".into(), role: Role::Admin }).await?;
    bob.say(&room, "b1", "v1.2 is out").await?;

    // Invitations for moderators only: carol cannot bring dave in, bob can.
    let frame = set_room(
        &mut bob,
        &room,
        RoomSettingsChange { who_may_invite: Some(Audience::Moderators), ..Default::default() },
    );
    ok(&mut bob, frame).await?;
    let req = carol.next_req();
    let invite = ClientFrame::Invite { req, room: room.clone(), user: "dave".into() };
    ensure!(refused(&mut carol, invite).await? == ErrorCode::Forbidden, "members do not invite");
    let req = bob.next_req();
    ok(&mut bob, ClientFrame::Invite { req, room: room.clone(), user: "dave".into() }).await?;

    // A device that was away gets the changes in its history, in order.
    let req = dave.next_req();
    let history = ClientFrame::History { req, room: room.clone(), before: None, after: Some(0), limit: None };
    let ServerFrame::History { entries, .. } = dave.request(history).await? else { bail!("history") };
    let changes: Vec<_> = entries.iter().filter_map(|e| e.settings.as_deref()).collect();
    ensure!(changes.len() == 2, "both changes in history: {changes:?}");
    ensure!(changes[1].who_may_invite == Audience::Moderators && changes[1].topic == "release notes");
    Ok(())
}
