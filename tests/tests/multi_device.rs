//! Multi-device (docs/DESIGN.md §1.5): every live connection of a user receives every message
//! of the user's log, and read positions are per user and room, synced to the user's other
//! connections. The two devices speak different encodings, which must not matter.

use anyhow::{bail, ensure};
use tests::{check_ledger, Client, ClientFrame, Encoding, Node, NodeOptions, ServerFrame};

#[tokio::test]
async fn two_connections_json_and_messagepack() -> anyhow::Result<()> {
    two_connections(Encoding::Json, Encoding::MessagePack).await
}

#[tokio::test]
async fn two_connections_messagepack_and_json() -> anyhow::Result<()> {
    two_connections(Encoding::MessagePack, Encoding::Json).await
}

async fn two_connections(phone_encoding: Encoding, laptop_encoding: Encoding) -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    let (mut phone, token) = Client::user(&node, phone_encoding, "alice").await?;
    let mut laptop = Client::connect(&node, laptop_encoding).await?;
    laptop.authenticate(&token, None).await?;
    let (mut bob, _) = Client::user(&node, Encoding::Json, "bob").await?;

    let room = bob.create_room("devices").await?;
    let req = bob.next_req();
    let reply = bob.request(ClientFrame::Invite { req, room: room.clone(), user: "alice".into() }).await?;
    ensure!(reply == ServerFrame::Ok { req }, "invite: {reply:?}");

    // Bob writes; both of alice's connections receive everything, at the same cursors.
    let messages: Vec<_> = (0..50).map(|i| (room.clone(), format!("b-{i}"), format!("message {i}"))).collect();
    bob.say_many(&messages, 16).await?;
    // And alice writes from one device: the other gets it too (and so does the writer).
    let (alice_seq, _) = laptop.say(&room, "from-laptop", "sent from the laptop").await?;
    let expected = 1 + messages.len() + 1; // the invitation's join, bob's messages, alice's own
    phone.wait_ledger_len(expected).await?;
    laptop.wait_ledger_len(expected).await?;
    ensure!(phone.ledger == laptop.ledger, "both devices hold the same log");
    check_ledger(&phone.ledger, 0)?;
    let last = phone.ledger.last().map(|(_, e)| (e.id.clone(), e.seq));
    ensure!(last == Some(("from-laptop".to_string(), alice_seq)), "alice's own message is last: {last:?}");

    // The phone marks a read position: the laptop is told, the phone only gets `ok`.
    let req = phone.next_req();
    let reply = phone.request(ClientFrame::MarkRead { req, room: room.clone(), seq: 20 }).await?;
    ensure!(reply == ServerFrame::Ok { req }, "mark_read: {reply:?}");
    let read = laptop.recv_matching(|f| matches!(f, ServerFrame::Read { .. })).await?;
    ensure!(read == ServerFrame::Read { room: room.clone(), seq: 20 }, "laptop: {read:?}");
    // A ping round trip: a `read` for the phone itself would have been queued before the `ok`.
    phone.ping().await?;
    ensure!(!phone.backlog().any(|f| matches!(f, ServerFrame::Read { .. })), "the phone is not told its own read");

    // A lower position never moves it back; a position past the end is clamped to it.
    let req = laptop.next_req();
    laptop.request(ClientFrame::MarkRead { req, room: room.clone(), seq: 5 }).await?;
    let read = phone.recv_matching(|f| matches!(f, ServerFrame::Read { .. })).await?;
    ensure!(read == ServerFrame::Read { room: room.clone(), seq: 20 }, "not lowered: {read:?}");
    let req = laptop.next_req();
    laptop.request(ClientFrame::MarkRead { req, room: room.clone(), seq: 1_000_000 }).await?;
    let read = phone.recv_matching(|f| matches!(f, ServerFrame::Read { .. })).await?;
    ensure!(read == ServerFrame::Read { room: room.clone(), seq: alice_seq }, "clamped to the last seq: {read:?}");

    // The read position is stored per user: a third device sees it in its room list, bob does not.
    let mut tablet = Client::connect(&node, phone_encoding).await?;
    tablet.authenticate(&token, None).await?;
    let req = tablet.next_req();
    let ServerFrame::Rooms { rooms, .. } = tablet.request(ClientFrame::ListRooms { req }).await? else {
        bail!("rooms")
    };
    ensure!(rooms.len() == 1 && rooms[0].read_seq == alice_seq && rooms[0].last_seq == alice_seq, "{rooms:?}");
    let req = bob.next_req();
    let ServerFrame::Rooms { rooms, .. } = bob.request(ClientFrame::ListRooms { req }).await? else { bail!("rooms") };
    ensure!(rooms.len() == 1 && rooms[0].read_seq == 0, "bob's own position is untouched: {rooms:?}");

    // One device leaving does not stop delivery to the others.
    phone.close().await?;
    bob.say(&room, "after-phone", "still there?").await?;
    laptop.wait_for_message(&room, "after-phone").await?;
    tablet.wait_for_message(&room, "after-phone").await?;
    Ok(())
}
