//! Abuse by clients that follow the protocol's letter: replies made large on purpose, text that
//! is not UTF-8, connections that greet and never authenticate, probing for rooms and users
//! one is not meant to see, and names that do not look like what they are. Each is answered
//! without losing a connection, a slot or a secret (docs/PROTOCOL.md, "Limits", "Error codes",
//! "What a user can learn").

use std::time::Duration;

use anyhow::{bail, ensure};
use serde_json::json;
use tests::{Client, ClientFrame, Encoding, Entry, ErrorCode, Node, NodeOptions, ServerFrame, TestStore};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const ENCODINGS: [Encoding; 2] = [Encoding::Json, Encoding::MessagePack];

fn tag(encoding: Encoding) -> &'static str {
    if encoding == Encoding::Json {
        "j"
    } else {
        "m"
    }
}

/// Every page of a room's history, read forwards (`after`) or backwards (`before`) with the
/// largest page allowed; returns the entries oldest first and how many pages it took.
async fn all_history(client: &mut Client, room: &str, forwards: bool) -> anyhow::Result<(Vec<Entry>, usize)> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut pages = 0;
    let (mut before, mut after) = if forwards { (None, Some(0)) } else { (None, None) };
    loop {
        let req = client.next_req();
        let frame = ClientFrame::History { req, room: room.into(), before, after, limit: Some(200) };
        let ServerFrame::History { entries: page, more, .. } = client.request(frame).await? else {
            bail!("history page {pages}")
        };
        ensure!(!page.is_empty(), "page {pages} is empty");
        pages += 1;
        if forwards {
            after = page.last().map(|entry| entry.seq);
            entries.extend(page);
        } else {
            before = page.first().map(|entry| entry.seq);
            entries.splice(0..0, page);
        }
        if !more {
            return Ok((entries, pages));
        }
    }
}

/// Bodies built to make replies large: 18 of 15,000 bytes (270 KB together), then 3 of 16,000
/// control characters (each escaped to six bytes in JSON: 96 KB a message).
fn large_bodies() -> Vec<String> {
    let mut bodies: Vec<String> = (0..18).map(|i| format!("{i:02}{}", "x".repeat(14_998))).collect();
    bodies.extend((0..3).map(|i| format!("{i}{}", "\u{1}".repeat(15_999))));
    bodies
}

/// The oversized-reply attack: a member fills a room with messages whose history page,
/// replay or member list would not fit the connection's write buffer. Every reply arrives
/// complete, pages say `more`, and the connections stay up: the reader's, and one that resumes
/// over the same messages.
#[tokio::test]
async fn large_messages_arrive_in_pages_and_keep_the_connection() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    for encoding in ENCODINGS {
        let t = tag(encoding);
        // The writer sends MessagePack: 16,000 control characters as JSON text would exceed
        // `max_frame_bytes` on the way in.
        let (mut alice, _) = Client::user(&node, Encoding::MessagePack, &format!("alice-{t}")).await?;
        let (mut bob, bob_token) = Client::user(&node, encoding, &format!("bob-{t}")).await?;
        let room = alice.create_room("heavy").await?;
        bob.join(&room).await?;
        let bob_cursor = bob.cursor;
        let bodies = large_bodies();
        for (i, body) in bodies.iter().enumerate() {
            alice.say(&room, &format!("big-{i}"), body).await?;
        }
        // Live delivery of every one of them.
        bob.wait_for_message(&room, &format!("big-{}", bodies.len() - 1)).await?;
        let live: Vec<&str> =
            bob.ledger.iter().filter(|(_, e)| e.id.starts_with("big-")).map(|(_, e)| e.body.as_str()).collect();
        ensure!(live == bodies.iter().map(String::as_str).collect::<Vec<_>>(), "{encoding:?}: live bodies differ");

        // History, forwards and backwards: complete, in order, in several pages.
        for forwards in [true, false] {
            let (entries, pages) = all_history(&mut bob, &room, forwards).await?;
            let texts: Vec<&str> =
                entries.iter().filter(|entry| entry.id.starts_with("big-")).map(|e| e.body.as_str()).collect();
            ensure!(texts == bodies.iter().map(String::as_str).collect::<Vec<_>>(), "{encoding:?}: bodies differ");
            let seqs: Vec<u64> = entries.iter().map(|entry| entry.seq).collect();
            ensure!(seqs == (1..=seqs.len() as u64).collect::<Vec<_>>(), "{encoding:?}: seqs {seqs:?}");
            ensure!(pages > 2, "{encoding:?}: {pages} pages for {} KB", bodies.len() * 15);
            bob.ping().await?;
        }

        // A resume over the same messages, one frame per message and batched.
        for batched in [false, true] {
            let mut again = if batched {
                Client::connect_batched(&node, encoding).await?
            } else {
                Client::connect(&node, encoding).await?
            };
            again.authenticate(&bob_token, Some(bob_cursor)).await?;
            again.until_live().await?;
            let replayed: Vec<&str> =
                again.ledger.iter().filter(|(_, e)| e.id.starts_with("big-")).map(|(_, e)| e.body.as_str()).collect();
            ensure!(replayed.len() == bodies.len(), "{encoding:?} batched {batched}: {} replayed", replayed.len());
            ensure!(replayed.iter().zip(&bodies).all(|(got, sent)| got == sent), "{encoding:?}: replay differs");
            again.ping().await?;
        }
    }
    ensure!(!node.log().contains("panicked"), "no panic");
    Ok(())
}

/// With bodies as large as a node may be configured to take, one entry alone (200,000 control
/// characters: 1.2 MB as JSON; 90,000 on FoundationDB, whose values are at most 100,000 bytes)
/// is still a message the connection can carry: the write buffer is sized from the limits,
/// live, in history and on resume.
#[tokio::test]
async fn the_largest_entry_the_limits_allow_fits_the_connection() -> anyhow::Result<()> {
    let largest = if TestStore::from_env() == TestStore::Sqlite { 200_000 } else { 90_000 };
    let options = NodeOptions::default().env("LIMITS__MAX_FRAME_BYTES", 262_144).env("LIMITS__MAX_BODY_BYTES", largest);
    let node = Node::start(options).await?;
    let (mut writer, _) = Client::user(&node, Encoding::MessagePack, "writer").await?;
    let (mut reader, token) = Client::user(&node, Encoding::Json, "reader").await?;
    let room = writer.create_room("huge").await?;
    reader.join(&room).await?;
    let cursor = reader.cursor;
    let body = "\u{1}".repeat(largest);
    writer.say(&room, "huge-1", &body).await?;
    ensure!(reader.wait_for_message(&room, "huge-1").await?.body == body, "live");
    let (entries, _) = all_history(&mut reader, &room, true).await?;
    ensure!(entries.iter().any(|entry| entry.body == body), "history");
    let mut again = Client::connect(&node, Encoding::Json).await?;
    again.authenticate(&token, Some(cursor)).await?;
    again.until_live().await?;
    ensure!(again.ledger.iter().any(|(_, entry)| entry.body == body), "replay");
    again.ping().await?;
    reader.ping().await?;
    Ok(())
}

/// A member list whose status texts would make one page larger than a message may be comes in
/// pages, each with `more` until the last.
#[tokio::test]
async fn member_lists_with_long_statuses_come_in_pages() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default().env("PRESENCE__STATUS_MAX_BYTES", 60_000)).await?;
    let mut members = Vec::new();
    let (mut owner, _) = Client::user(&node, Encoding::Json, "owner").await?;
    let room = owner.create_room("talkative").await?;
    for i in 0..6 {
        let (mut member, _) = Client::user(&node, Encoding::MessagePack, &format!("member-{i}")).await?;
        member.join(&room).await?;
        let req = member.next_req();
        let status = format!("{i}{}", "\"".repeat(59_000));
        let frame = ClientFrame::SetPresence { req, state: protocol::PresenceState::Online, status: Some(status) };
        ensure!(member.request(frame).await? == ServerFrame::Ok { req }, "set_presence");
        members.push(member);
    }
    for encoding in ENCODINGS {
        let mut reader = Client::connect(&node, encoding).await?;
        let token = reader.login("owner", "password-of-owner").await?;
        reader.authenticate(&token, None).await?;
        let (mut listed, mut after, mut pages) = (Vec::new(), None, 0);
        loop {
            let req = reader.next_req();
            let frame = ClientFrame::ListMembers { req, room: room.clone(), after: after.clone(), limit: None };
            let ServerFrame::Members { members: page, presence, total, more, .. } = reader.request(frame).await? else {
                bail!("{encoding:?}: members page {pages}")
            };
            ensure!(total == 7 && page.len() == presence.len() && !page.is_empty(), "{encoding:?}: {page:?}");
            pages += 1;
            after = page.last().cloned();
            listed.extend(page);
            if !more {
                break;
            }
        }
        let mut expected: Vec<String> = (0..6).map(|i| format!("member-{i}")).collect();
        expected.push("owner".into());
        ensure!(listed == expected, "{encoding:?}: {listed:?}");
        ensure!(pages > 1, "{encoding:?}: one page of 360 KB");
        reader.ping().await?;
    }
    Ok(())
}

/// An error that quotes its input stays small: a `type` of 60,000 control characters sent as
/// MessagePack on a JSON connection would quote back as 360 KB of JSON.
#[tokio::test]
async fn errors_quoting_large_input_stay_small() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    let mut client = Client::connect(&node, Encoding::Json).await?;
    let frame = rmp_serde::to_vec_named(&json!({"type": "\u{1}".repeat(60_000), "req": 7}))?;
    client.send_raw(Message::Binary(frame.into())).await?;
    match client.reply_to(7).await? {
        ServerFrame::Error { code: ErrorCode::UnknownType, message, .. } if message.len() < 4_096 => {}
        other => bail!("expected a short unknown_type, got {other:?}"),
    }
    client.ping().await?;
    Ok(())
}

/// Text that is not UTF-8 fails the connection with 1007 (RFC 6455 §8.1), whole or fragmented,
/// before or after `hello`.
#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    let bad: &[u8] = b"{\"type\":\"ping\",\"req\":1,\"x\":\"\xff\xfe\"}";
    for greeted in [false, true] {
        for fragmented in [false, true] {
            let mut client = if greeted {
                Client::connect(&node, Encoding::Json).await?
            } else {
                Client::connect_raw(&node.ws_url(), Encoding::Json).await?
            };
            if fragmented {
                let (first, rest) = bad.split_at(10);
                client
                    .send_raw(Message::Frame(Frame::message(first.to_vec(), OpCode::Data(Data::Text), false)))
                    .await?;
                client
                    .send_raw(Message::Frame(Frame::message(rest.to_vec(), OpCode::Data(Data::Continue), true)))
                    .await?;
            } else {
                client.send_raw(Message::Frame(Frame::message(bad.to_vec(), OpCode::Data(Data::Text), true))).await?;
            }
            let closed = client.closed().await?;
            ensure!(
                closed.code == Some(1007) && closed.reason.contains("UTF-8"),
                "greeted {greeted}, fragmented {fragmented}: {closed:?}"
            );
        }
    }
    let mut fine = Client::connect(&node, Encoding::Json).await?;
    fine.ping().await?;
    Ok(())
}

/// A connection that greets but does not authenticate within `limits.auth_timeout_ms` is
/// closed with 1008, and logging in (even successfully) does not extend it; an authenticated
/// connection is not affected.
#[tokio::test]
async fn unauthenticated_connections_are_closed_after_the_auth_timeout() -> anyhow::Result<()> {
    const TIMEOUT_MS: u64 = 3_000;
    let node = Node::start(NodeOptions::default().env("LIMITS__AUTH_TIMEOUT_MS", TIMEOUT_MS)).await?;
    let mut first = Client::connect(&node, Encoding::Json).await?;
    let token = first.register_and_login("patient", "password-of-patient").await?;
    let mut authenticated = Client::connect(&node, Encoding::MessagePack).await?;
    authenticated.authenticate(&token, None).await?;
    let started = std::time::Instant::now();
    let mut idle = Client::connect(&node, Encoding::Json).await?;
    let mut busy = Client::connect(&node, Encoding::MessagePack).await?;
    // Logging in again and again is not authenticating.
    while started.elapsed() < Duration::from_millis(TIMEOUT_MS / 2) {
        busy.login("patient", "password-of-patient").await?;
        busy.ping().await?;
    }
    for (what, client) in [("idle", &mut idle), ("logging in", &mut busy), ("first", &mut first)] {
        let closed = client.closed().await?;
        ensure!(closed.code == Some(1008) && closed.reason.contains("limits.auth_timeout_ms"), "{what}: {closed:?}");
    }
    ensure!(started.elapsed() >= Duration::from_millis(TIMEOUT_MS), "closed before the timeout");
    tokio::time::sleep(Duration::from_millis(500)).await;
    authenticated.ping().await?;
    Ok(())
}

/// The error a request gets, with the room id taken out of the message (so answers about two
/// rooms can be compared).
async fn answer(client: &mut Client, frame: ClientFrame, room: &str) -> anyhow::Result<(ErrorCode, String)> {
    let what = format!("{frame:?}");
    match client.request(frame).await? {
        ServerFrame::Error { code, message, .. } => Ok((code, message.replace(room, "ROOM"))),
        other => bail!("{what}: expected an error, got {other:?}"),
    }
}

/// Every request an outsider can make about a room.
fn probes(client: &mut Client, room: &str, named: &str) -> Vec<ClientFrame> {
    let room = room.to_string();
    vec![
        ClientFrame::send(client.next_req(), room.clone(), "probe-1", "hi"),
        ClientFrame::Join { req: client.next_req(), room: room.clone() },
        ClientFrame::Leave { req: client.next_req(), room: room.clone() },
        ClientFrame::Invite { req: client.next_req(), room: room.clone(), user: named.into() },
        ClientFrame::Invite { req: client.next_req(), room: room.clone(), user: "ghost".into() },
        ClientFrame::Invite { req: client.next_req(), room: room.clone(), user: client.user.clone().unwrap() },
        ClientFrame::History { req: client.next_req(), room: room.clone(), before: None, after: None, limit: None },
        ClientFrame::MarkRead { req: client.next_req(), room: room.clone(), seq: 1 },
        ClientFrame::Receipts { req: client.next_req(), room: room.clone() },
        ClientFrame::ListMembers { req: client.next_req(), room: room.clone(), after: None, limit: None },
        ClientFrame::Typing { req: client.next_req(), room: room.clone(), active: true },
    ]
}

/// Inviting oneself is never a way in, and an outsider learns nothing
/// from a private room's id (a direct conversation's included) that a made-up id would not
/// tell; a public room answers `not_member`, whatever the request names. User names are public
/// (`open_direct` needs them), and a member may learn that one does not exist.
#[tokio::test]
async fn outsiders_learn_nothing_about_private_rooms_and_cannot_invite_themselves() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    for encoding in ENCODINGS {
        let t = tag(encoding);
        let (alice, bob, carol, zed) =
            (format!("alice-{t}"), format!("bob-{t}"), format!("carol-{t}"), format!("zed-{t}"));
        let (mut alice_c, _) = Client::user(&node, encoding, &alice).await?;
        let (_bob_c, _) = Client::user(&node, encoding, &bob).await?;
        let (mut carol_c, _) = Client::user(&node, encoding, &carol).await?;
        let (_zed_c, _) = Client::user(&node, encoding, &zed).await?;
        let public = alice_c.create_room("open").await?;
        let req = alice_c.next_req();
        let ServerFrame::Room { room: private, .. } =
            alice_c.request(ClientFrame::CreateRoom { req, name: "closed".into(), private: true }).await?
        else {
            bail!("create_room")
        };
        let req = alice_c.next_req();
        let ServerFrame::Room { room: direct, .. } =
            alice_c.request(ClientFrame::OpenDirect { req, user: bob.clone() }).await?
        else {
            bail!("open_direct")
        };
        // A private room and a direct conversation answer exactly as ids that exist nowhere.
        let pairs =
            [(private.id.clone(), "r_nosuchroom00".to_string()), (direct.id.clone(), format!("dm:{alice}:{zed}"))];
        for (real, made_up) in pairs {
            for (frame, twin) in probes(&mut carol_c, &real, &bob).into_iter().zip(probes(&mut carol_c, &made_up, &bob))
            {
                let what = format!("{frame:?}");
                let got = answer(&mut carol_c, frame, &real).await?;
                let expected = answer(&mut carol_c, twin, &made_up).await?;
                ensure!(got == expected, "{encoding:?} {what}: {got:?}, but for an unknown room {expected:?}");
                let dm_rule = real.starts_with("dm:") && matches!(got.0, ErrorCode::Forbidden);
                ensure!(got.0 == ErrorCode::NoSuchRoom || dm_rule, "{encoding:?} {what}: {got:?}");
            }
        }
        // A public room: `not_member` for every request but `join`, whoever an invitation names.
        for frame in probes(&mut carol_c, &public, &bob) {
            if matches!(frame, ClientFrame::Join { .. }) {
                continue;
            }
            let what = format!("{frame:?}");
            let got = answer(&mut carol_c, frame, &public).await?;
            ensure!(got.0 == ErrorCode::NotMember, "{encoding:?} {what}: {got:?}");
        }
        // The self-invitations above let carol in nowhere.
        let req = carol_c.next_req();
        let ServerFrame::Rooms { rooms, .. } = carol_c.request(ClientFrame::ListRooms { req }).await? else {
            bail!("list_rooms")
        };
        ensure!(rooms.is_empty(), "{encoding:?}: carol got into {rooms:?}");
        // A member inviting themself is told `ok`; inviting someone unknown, `no_such_user`.
        for room in [&public, &private.id] {
            let req = alice_c.next_req();
            let reply = alice_c.request(ClientFrame::Invite { req, room: room.clone(), user: alice.clone() }).await?;
            ensure!(reply == ServerFrame::Ok { req }, "{encoding:?}: self-invite of a member: {reply:?}");
            let req = alice_c.next_req();
            let frame = ClientFrame::Invite { req, room: room.clone(), user: "ghost".into() };
            ensure!(answer(&mut alice_c, frame, room).await?.0 == ErrorCode::NoSuchUser, "{encoding:?}: ghost");
        }
        let req = carol_c.next_req();
        let frame = ClientFrame::OpenDirect { req, user: "ghost".into() };
        ensure!(answer(&mut carol_c, frame, "-").await?.0 == ErrorCode::NoSuchUser, "open_direct ghost");
        carol_c.ping().await?;
    }
    Ok(())
}

/// Room names and status texts with characters that hide or reorder text are refused with a
/// message naming the character; right-to-left scripts and emoji are fine.
#[tokio::test]
async fn names_that_hide_or_reorder_text_are_refused() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    for encoding in ENCODINGS {
        let (mut client, _) = Client::user(&node, encoding, &format!("namer-{}", tag(encoding))).await?;
        for (name, code) in [("gen\u{200B}eral", "U+200B"), ("\u{202E}gnp.exe", "U+202E"), ("a\u{2067}b", "U+2067")] {
            let req = client.next_req();
            match client.request(ClientFrame::CreateRoom { req, name: name.into(), private: false }).await? {
                ServerFrame::Error { code: ErrorCode::InvalidName, message, .. } if message.contains(code) => {}
                other => bail!("{encoding:?} room name {name:?}: {other:?}"),
            }
            let req = client.next_req();
            let status = Some(format!("busy {name}"));
            let frame = ClientFrame::SetPresence { req, state: protocol::PresenceState::Away, status };
            match client.request(frame).await? {
                ServerFrame::Error { code: ErrorCode::InvalidField, message, .. } if message.contains(code) => {}
                other => bail!("{encoding:?} status {name:?}: {other:?}"),
            }
        }
        for name in ["שלום", "☕\u{FE0F} corner"] {
            let req = client.next_req();
            match client.request(ClientFrame::CreateRoom { req, name: name.into(), private: false }).await? {
                ServerFrame::Room { room, .. } if room.name == name => {}
                other => bail!("{encoding:?} room name {name:?}: {other:?}"),
            }
        }
    }
    Ok(())
}
