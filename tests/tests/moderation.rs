//! Moderation against the real binary (docs/PROTOCOL.md, "Roles and moderation"): the creator
//! owns a room and makes admins; admins kick, ban and mute members ranked below them and delete
//! any message; every action is an entry members see (the audit trail); bans hold through
//! rejoin attempts and invitations until they end.

use anyhow::{bail, ensure};
use tests::{Client, ClientFrame, Encoding, EntryKind, ErrorCode, Node, NodeOptions, Role, ServerFrame};

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
