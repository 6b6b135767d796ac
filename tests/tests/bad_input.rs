//! Bad input (docs/DESIGN.md §1.6): every kind of bad frame or request
//! gets a precise error frame with a stable code, and the connection stays usable afterwards (a
//! ping still gets its pong) except where it must close (oversize frame: 1009; unsupported
//! version: 1002; revoked token: the user's connections close). No input takes the node down or
//! touches stored data.
//!
//! Each case is its own test, in both encodings, on a fresh node with a room written before the
//! case ran; afterwards the room's history must be unchanged and the node must still serve. The
//! storm test then runs every case, in both encodings, one after the other against one node.

use std::time::Duration;

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};
use tests::{Client, ClientFrame, Encoding, Entry, ErrorCode, Node, NodeOptions, ServerFrame};
use tokio_tungstenite::tungstenite::Message;

/// The body limit the fixture node runs with (`LIMITS__MAX_BODY_BYTES`).
const MAX_BODY: usize = 100;

/// A node with a room whose history is known, and the means to check it afterwards.
struct Fixture {
    node: Node,
    keeper_token: String,
    room: String,
    history: Vec<Entry>,
    login_max_failures: u32,
}

impl Fixture {
    async fn start() -> anyhow::Result<Fixture> {
        Fixture::start_with(NodeOptions::default()).await
    }

    async fn start_with(options: NodeOptions) -> anyhow::Result<Fixture> {
        let options = options.env("LIMITS__MAX_BODY_BYTES", MAX_BODY);
        let login_max_failures = options
            .env
            .iter()
            .find(|(key, _)| key == "AUTH__LOGIN_MAX_FAILURES")
            .map_or(Ok(5), |(_, value)| value.parse())?;
        let node = Node::start(options).await?;
        let (mut keeper, keeper_token) = Client::user(&node, Encoding::Json, "keeper").await?;
        let (mut guest, _) = Client::user(&node, Encoding::MessagePack, "guest").await?;
        let room = keeper.create_room("kept").await?;
        guest.join(&room).await?;
        for i in 0..5 {
            keeper.say(&room, &format!("k-{i}"), &format!("kept message {i}")).await?;
            guest.say(&room, &format!("g-{i}"), &format!("guest message {i}")).await?;
        }
        let history = history(&mut keeper, &room).await?;
        ensure!(history.len() == 12, "2 joins and 10 messages: {history:?}");
        Ok(Fixture { node, keeper_token, room, history, login_max_failures })
    }

    /// The node still runs and serves, and the room written before is exactly as it was.
    async fn check_intact(&mut self) -> anyhow::Result<()> {
        ensure!(self.node.is_running(), "the node is still running");
        let (status, _) = self.node.http_get("/healthz").await?;
        ensure!(status == 200, "/healthz: {status}");
        let mut keeper = Client::connect(&self.node, Encoding::Json).await?;
        keeper.authenticate(&self.keeper_token, None).await?;
        let now = history(&mut keeper, &self.room).await?;
        ensure!(now == self.history, "the room's history changed:\nbefore {:?}\nafter {now:?}", self.history);
        ensure!(!self.node.log().contains("panicked"), "the node log shows a panic:\n{}", self.node.log());
        Ok(())
    }
}

async fn history(client: &mut Client, room: &str) -> anyhow::Result<Vec<Entry>> {
    let req = client.next_req();
    let frame = ClientFrame::History { req, room: room.into(), before: None, after: Some(0), limit: Some(200) };
    match client.request(frame).await? {
        ServerFrame::History { entries, more: false, .. } => Ok(entries),
        other => bail!("history: {other:?}"),
    }
}

/// Send a typed request; the reply must be an error with `code` and the request's `req`.
async fn refused(client: &mut Client, frame: ClientFrame, code: ErrorCode) -> anyhow::Result<ServerFrame> {
    let req = frame.req();
    let what = format!("{frame:?}");
    let reply = client.request(frame).await?;
    match &reply {
        ServerFrame::Error { req: Some(got), code: got_code, message, .. }
            if *got == req && *got_code == code && !message.is_empty() => {}
        other => bail!("{what}: expected error {code:?} for req {req}, got {other:?}"),
    }
    Ok(reply)
}

/// Send a document; the next error frame must have `code` and `req`.
async fn refused_value(client: &mut Client, value: Value, req: Option<u64>, code: ErrorCode) -> anyhow::Result<()> {
    client.send_value(&value).await?;
    expect_error(client, req, code).await.with_context(|| format!("after sending {value}"))
}

/// Send raw WebSocket data; the next error frame must have `code` and no `req`.
async fn refused_wire(client: &mut Client, message: Message, code: ErrorCode) -> anyhow::Result<()> {
    let mut what = format!("{message:?}");
    if what.len() > 200 {
        what = format!("{}… ({} bytes)", what.chars().take(200).collect::<String>(), message.len());
    }
    client.send_raw(message).await?;
    expect_error(client, None, code).await.with_context(|| format!("after sending {what}"))
}

async fn expect_error(client: &mut Client, req: Option<u64>, code: ErrorCode) -> anyhow::Result<()> {
    match client.recv_matching(|f| matches!(f, ServerFrame::Error { .. })).await? {
        ServerFrame::Error { req: got, code: got_code, message, .. }
            if got == req && got_code == code && !message.is_empty() =>
        {
            Ok(())
        }
        other => bail!("expected error {code:?} with req {req:?}, got {other:?}"),
    }
}

/// A unique, valid user name for a case and encoding.
fn name(base: &str, encoding: Encoding) -> String {
    format!("{base}-{}", if encoding == Encoding::Json { "j" } else { "m" })
}

fn send(req: u64, room: &str, id: &str, body: &str) -> ClientFrame {
    ClientFrame::send(req, room, id, body)
}

/// The cases, one per kind of bad input.
#[derive(Debug, Clone, Copy)]
enum Case {
    MalformedJson,
    MalformedMessagePack,
    UnknownType,
    MissingField,
    WrongFieldType,
    OversizeFrame,
    BeforeHello,
    BeforeAuthentication,
    NotMember,
    NoSuchRoom,
    ForgedToken,
    RevokedToken,
    WrongPassword,
    EmptyBody,
    OversizeBody,
    InvalidUserName,
    InvalidRoomName,
    InvalidMessageId,
    PrivateRoomSelfJoin,
    DirectConversationRules,
    UnsupportedVersion,
    SecondHello,
    InvalidRequests,
    UnusualContent,
    /// Last in the storm: it locks logins from this address for the window.
    RateLimited,
}

const ALL: [Case; 25] = [
    Case::MalformedJson,
    Case::MalformedMessagePack,
    Case::UnknownType,
    Case::MissingField,
    Case::WrongFieldType,
    Case::OversizeFrame,
    Case::BeforeHello,
    Case::BeforeAuthentication,
    Case::NotMember,
    Case::NoSuchRoom,
    Case::ForgedToken,
    Case::RevokedToken,
    Case::WrongPassword,
    Case::EmptyBody,
    Case::OversizeBody,
    Case::InvalidUserName,
    Case::InvalidRoomName,
    Case::InvalidMessageId,
    Case::PrivateRoomSelfJoin,
    Case::DirectConversationRules,
    Case::UnsupportedVersion,
    Case::SecondHello,
    Case::InvalidRequests,
    Case::UnusualContent,
    Case::RateLimited,
];

async fn run(case: Case, fx: &mut Fixture, encoding: Encoding) -> anyhow::Result<()> {
    let node = &fx.node;
    match case {
        Case::MalformedJson => {
            // Before hello the error comes in the frame's encoding, and hello still works after.
            let mut client = Client::connect_raw(&node.ws_url(), Encoding::Json).await?;
            refused_wire(&mut client, Message::Text("{\"type\": \"hello\", ".into()), ErrorCode::MalformedFrame)
                .await?;
            let mut client = Client::connect(node, encoding).await?;
            // Deep nesting must not exhaust the node's stack.
            let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
            let deep_object = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
            for text in [
                "{not json",
                "",
                "[1, 2]",
                "\"hello\"",
                "null",
                "{\"type\": \"ping\", \"req\": 1,}",
                &deep,
                &deep_object,
            ] {
                refused_wire(&mut client, Message::Text(text.into()), ErrorCode::MalformedFrame).await?;
            }
            // A document without `type` is malformed too, but its `req` is recovered.
            refused_value(&mut client, json!({"req": 41}), Some(41), ErrorCode::MalformedFrame).await?;
            client.ping().await?;
        }
        Case::MalformedMessagePack => {
            let mut client = Client::connect(node, encoding).await?;
            let not_a_map = rmp_serde::to_vec(&5u32)?;
            let mut truncated = rmp_serde::to_vec_named(&json!({"type": "ping", "req": 3}))?;
            truncated.truncate(truncated.len() - 2);
            let invalid_utf8 = vec![0x81, 0xa4, b't', b'y', b'p', b'e', 0xa4, 0xff, 0xfe, 0xfd, 0xfc];
            let integer_key = vec![0x81, 0x01, 0x02];
            let binary_type = vec![0x81, 0xa4, b't', b'y', b'p', b'e', 0xc4, 0x04, b'p', b'i', b'n', b'g'];
            // Deep nesting (one-element arrays, one-entry maps) must not exhaust the node's stack.
            let mut deep = vec![0x91; 60_000];
            deep.push(0xc0);
            let mut deep_map = [0x81, 0xa1, b'a'].repeat(20_000);
            deep_map.push(0xc0);
            let mut shallow_but_hostile = vec![0x91; 600];
            shallow_but_hostile.push(0xc0);
            let malformed = [
                // 0xc1 is never used in MessagePack.
                vec![0xc1],
                vec![],
                not_a_map,
                truncated,
                vec![0x81, 0xa4, b't', b'y', b'p', b'e'],
                invalid_utf8,
                integer_key,
                binary_type,
                deep,
                deep_map,
                shallow_but_hostile,
            ];
            for bytes in malformed {
                refused_wire(&mut client, Message::Binary(bytes.into()), ErrorCode::MalformedFrame).await?;
            }
            client.ping().await?;
        }
        Case::UnknownType => {
            let mut client = Client::connect(node, encoding).await?;
            refused_value(&mut client, json!({"type": "teleport", "req": 7}), Some(7), ErrorCode::UnknownType).await?;
            refused_value(&mut client, json!({"type": "", "req": 8}), Some(8), ErrorCode::UnknownType).await?;
            refused_value(&mut client, json!({"type": "Ping", "req": 9}), Some(9), ErrorCode::UnknownType).await?;
            client.ping().await?;
        }
        Case::MissingField => {
            let mut client = Client::connect(node, encoding).await?;
            let room = fx.room.clone();
            refused_value(
                &mut client,
                json!({"type": "send", "req": 8, "room": room, "id": "m"}),
                Some(8),
                ErrorCode::InvalidField,
            )
            .await?;
            refused_value(
                &mut client,
                json!({"type": "login", "req": 9, "user": "keeper"}),
                Some(9),
                ErrorCode::InvalidField,
            )
            .await?;
            refused_value(&mut client, json!({"type": "authenticate", "req": 10}), Some(10), ErrorCode::InvalidField)
                .await?;
            client.ping().await?;
        }
        Case::WrongFieldType => {
            let mut client = Client::connect(node, encoding).await?;
            let room = fx.room.clone();
            let cases = [
                (json!({"type": "send", "req": 9, "room": room, "id": "m", "body": 42}), Some(9)),
                (json!({"type": "history", "req": 10, "room": room, "limit": -1}), Some(10)),
                (json!({"type": "mark_read", "req": 11, "room": room, "seq": "all"}), Some(11)),
                (json!({"type": "hello", "versions": "1"}), None),
                (json!({"type": "create_room", "req": 12, "name": ["a"]}), Some(12)),
                (json!({"type": 5, "req": 13}), Some(13)),
                // A `req` that is not a number cannot be echoed.
                (json!({"type": "ping", "req": "x"}), None),
            ];
            for (value, req) in cases {
                refused_value(&mut client, value, req, ErrorCode::InvalidField).await?;
            }
            client.ping().await?;
        }
        Case::OversizeFrame => {
            let mut bystander = Client::connect(node, encoding).await?;
            let mut client = Client::connect(node, encoding).await?;
            let limit = 64 * 1024;
            let message = match encoding {
                Encoding::Json => Message::Text("x".repeat(limit + 1).into()),
                Encoding::MessagePack => Message::Binary(vec![0x90; limit + 1].into()),
            };
            client.send_raw(message).await?;
            let closed = client.closed().await?;
            ensure!(closed.code == Some(1009), "an oversize frame closes with 1009: {closed:?}");
            let told = client.backlog().any(|f| matches!(f, ServerFrame::Error { code: ErrorCode::FrameTooLarge, .. }));
            ensure!(
                told,
                "the close is preceded by a frame_too_large error: {:?}",
                client.backlog().collect::<Vec<_>>()
            );
            // A frame of exactly the limit is fine (it is not valid, so it gets a decode error).
            let mut client = Client::connect(node, encoding).await?;
            let message = match encoding {
                Encoding::Json => Message::Text("x".repeat(limit).into()),
                Encoding::MessagePack => Message::Binary(vec![0xc1; limit].into()),
            };
            refused_wire(&mut client, message, ErrorCode::MalformedFrame).await?;
            client.ping().await?;
            // The node keeps serving the others.
            bystander.ping().await?;
        }
        Case::BeforeHello => {
            let mut client = Client::connect_raw(&node.ws_url(), encoding).await?;
            refused_value(&mut client, json!({"type": "ping", "req": 1}), Some(1), ErrorCode::HelloRequired).await?;
            let login = json!({"type": "login", "req": 2, "user": "keeper", "password": "whatever1"});
            refused_value(&mut client, login, Some(2), ErrorCode::HelloRequired).await?;
            client.send_value(&json!({"type": "hello", "versions": [1]})).await?;
            let welcome = client.recv().await?;
            ensure!(matches!(welcome, ServerFrame::Welcome { version: 1, .. }), "hello after the error: {welcome:?}");
            client.ping().await?;
        }
        Case::BeforeAuthentication => {
            let mut client = Client::connect(node, encoding).await?;
            let room = fx.room.clone();
            let mut frames = vec![
                ClientFrame::LogoutAll { req: 0 },
                ClientFrame::CreateRoom { req: 0, name: "x".into(), private: false },
                ClientFrame::Join { req: 0, room: room.clone() },
                ClientFrame::Leave { req: 0, room: room.clone() },
                ClientFrame::Invite { req: 0, room: room.clone(), user: "guest".into() },
                ClientFrame::OpenDirect { req: 0, user: "guest".into() },
                ClientFrame::ListRooms { req: 0 },
                ClientFrame::ListMembers { req: 0, room: room.clone(), after: None, limit: None },
                send(0, &room, "sneaky", "let me in"),
                ClientFrame::History { req: 0, room: room.clone(), before: None, after: None, limit: None },
                ClientFrame::MarkRead { req: 0, room: room.clone(), seq: 1 },
            ];
            for frame in &mut frames {
                let req = client.next_req();
                set_req(frame, req);
                refused(&mut client, frame.clone(), ErrorCode::NotAuthenticated).await?;
            }
            client.ping().await?;
            // Register and log in need no account, and then authentication works.
            let token = client.register_and_login(&name("late", encoding), "password-late").await?;
            client.authenticate(&token, None).await?;
            client.ping().await?;
        }
        Case::NotMember => {
            let (mut carol, _) = Client::user(node, encoding, &name("carol", encoding)).await?;
            let (_, _) = Client::user(node, encoding, &name("cleo", encoding)).await?;
            let room = fx.room.clone();
            let frames = [
                send(carol.next_req(), &room, "c-1", "hello?"),
                ClientFrame::History {
                    req: carol.next_req(),
                    room: room.clone(),
                    before: None,
                    after: None,
                    limit: None,
                },
                ClientFrame::ListMembers { req: carol.next_req(), room: room.clone(), after: None, limit: None },
                ClientFrame::MarkRead { req: carol.next_req(), room: room.clone(), seq: 3 },
                // Inviting someone who is a member already must not answer `ok` to an outsider
                // (that would tell anyone who is in any room), nor inviting a newcomer.
                ClientFrame::Invite { req: carol.next_req(), room: room.clone(), user: "guest".into() },
                ClientFrame::Invite { req: carol.next_req(), room: room.clone(), user: name("cleo", encoding) },
                ClientFrame::Leave { req: carol.next_req(), room: room.clone() },
            ];
            for frame in frames {
                refused(&mut carol, frame, ErrorCode::NotMember).await?;
            }
            carol.ping().await?;
        }
        Case::NoSuchRoom => {
            let (mut carol, _) = Client::user(node, encoding, &name("dora", encoding)).await?;
            for room in ["r_doesnotexist", "not a room id", &"r".repeat(81), "", "dm:dora-j:nobody"] {
                let frames = [
                    send(carol.next_req(), room, "d-1", "hello?"),
                    ClientFrame::Join { req: carol.next_req(), room: room.into() },
                    ClientFrame::Leave { req: carol.next_req(), room: room.into() },
                    ClientFrame::History {
                        req: carol.next_req(),
                        room: room.into(),
                        before: None,
                        after: None,
                        limit: None,
                    },
                    ClientFrame::ListMembers { req: carol.next_req(), room: room.into(), after: None, limit: None },
                    ClientFrame::MarkRead { req: carol.next_req(), room: room.into(), seq: 1 },
                    ClientFrame::Invite { req: carol.next_req(), room: room.into(), user: "guest".into() },
                ];
                for frame in frames {
                    // Leaving or inviting into a direct conversation is refused before the room is
                    // looked up.
                    let direct = |room: &str| room.starts_with("dm:");
                    let code = if matches!(&frame, ClientFrame::Leave { room, .. } | ClientFrame::Invite { room, .. } if direct(room))
                    {
                        ErrorCode::Forbidden
                    } else {
                        ErrorCode::NoSuchRoom
                    };
                    refused(&mut carol, frame, code).await?;
                }
            }
            carol.ping().await?;
        }
        Case::ForgedToken => {
            let mut keeper = Client::connect(node, encoding).await?;
            let (mut other, other_token) = Client::user(node, encoding, &name("eve", encoding)).await?;
            other.ping().await?;
            let token = fx.keeper_token.clone();
            let (payload, signature) = token.split_once('.').context("token has two parts")?;
            let (other_payload, _) = other_token.split_once('.').context("token has two parts")?;
            let mut flipped = signature.to_string();
            let last = flipped.pop().context("signature")?;
            flipped.push(if last == 'A' { 'B' } else { 'A' });
            let forged = [
                format!("{payload}.{flipped}"),
                // Eve's claims under keeper's signature: a user who edits the claims.
                format!("{other_payload}.{signature}"),
                format!("{payload}."),
                payload.to_string(),
                "not-a-token".to_string(),
                String::new(),
                format!("{payload}.{signature}.extra"),
            ];
            for token in forged {
                let req = keeper.next_req();
                refused(
                    &mut keeper,
                    ClientFrame::Authenticate { req, token, cursor: None, rooms: Default::default() },
                    ErrorCode::TokenInvalid,
                )
                .await?;
            }
            keeper.ping().await?;
            let req = keeper.next_req();
            refused(&mut keeper, ClientFrame::ListRooms { req }, ErrorCode::NotAuthenticated).await?;
        }
        Case::RevokedToken => {
            let user = name("frank", encoding);
            let (mut first, token) = Client::user(node, encoding, &user).await?;
            let mut second = Client::connect(node, encoding).await?;
            second.authenticate(&token, None).await?;
            let mut bystander = Client::connect(node, encoding).await?;
            bystander.authenticate(&fx.keeper_token, None).await?;
            let req = first.next_req();
            let reply = first.request(ClientFrame::LogoutAll { req }).await?;
            ensure!(reply == ServerFrame::Ok { req }, "logout_all: {reply:?}");
            // Every connection of the user is told and closed, this one included.
            for (which, client) in [("first", &mut first), ("second", &mut second)] {
                let closed = client.closed().await?;
                let told =
                    client.backlog().any(|f| matches!(f, ServerFrame::Error { code: ErrorCode::TokenRevoked, .. }));
                ensure!(
                    told && closed.code == Some(1008),
                    "{which}: {closed:?} {:?}",
                    client.backlog().collect::<Vec<_>>()
                );
            }
            // Another user's connection is untouched.
            bystander.ping().await?;
            // The old token is refused; a fresh login works.
            let mut again = Client::connect(node, encoding).await?;
            let req = again.next_req();
            refused(
                &mut again,
                ClientFrame::Authenticate { req, token: token.clone(), cursor: None, rooms: Default::default() },
                ErrorCode::TokenRevoked,
            )
            .await?;
            again.ping().await?;
            let fresh = again.login(&user, &format!("password-of-{user}")).await?;
            again.authenticate(&fresh, None).await?;
            again.ping().await?;
        }
        Case::WrongPassword => {
            let user = name("gina", encoding);
            let (_, _) = Client::user(node, encoding, &user).await?;
            let mut client = Client::connect(node, encoding).await?;
            let req = client.next_req();
            let wrong = ClientFrame::Login { req, user: user.clone(), password: "not-the-password".into() };
            let ServerFrame::Error { message, .. } = refused(&mut client, wrong, ErrorCode::InvalidCredentials).await?
            else {
                unreachable!()
            };
            let req = client.next_req();
            let unknown =
                ClientFrame::Login { req, user: name("nobody", encoding), password: "not-the-password".into() };
            let ServerFrame::Error { message: unknown_message, .. } =
                refused(&mut client, unknown, ErrorCode::InvalidCredentials).await?
            else {
                unreachable!()
            };
            ensure!(message == unknown_message, "a wrong password and an unknown user look the same");
            client.ping().await?;
            // A successful login still works, on the same connection.
            client.login(&user, &format!("password-of-{user}")).await?;
        }
        Case::RateLimited => {
            let user = name("hank", encoding);
            let password = format!("password-of-{user}");
            let mut client = Client::connect(node, encoding).await?;
            let req = client.next_req();
            client.request(ClientFrame::Register { req, user: user.clone(), password: password.clone() }).await?;
            // Failures count per user name and per client address; other cases may have used up
            // some of this address's allowance, so the limit may come sooner, never later.
            let mut attempts = 0;
            let retry_after = loop {
                attempts += 1;
                let req = client.next_req();
                match client
                    .request(ClientFrame::Login { req, user: user.clone(), password: "wrong-guess".into() })
                    .await?
                {
                    ServerFrame::Error { code: ErrorCode::InvalidCredentials, .. } => {}
                    ServerFrame::Error { code: ErrorCode::RateLimited, retry_after_ms, .. } => break retry_after_ms,
                    other => bail!("failed login {attempts}: {other:?}"),
                }
                ensure!(attempts <= fx.login_max_failures, "still no rate limit after {attempts} failures");
            };
            let retry_after = retry_after.context("rate_limited carries retry_after_ms")?;
            ensure!(retry_after > 0 && retry_after <= 60_000, "retry after {retry_after} ms, within the 60 s window");
            // Now even the right password is refused until the window ends.
            let req = client.next_req();
            refused(
                &mut client,
                ClientFrame::Login { req, user: user.clone(), password: password.clone() },
                ErrorCode::RateLimited,
            )
            .await?;
            // A new connection does not reset the count.
            let mut client = Client::connect(node, encoding).await?;
            let req = client.next_req();
            refused(&mut client, ClientFrame::Login { req, user, password }, ErrorCode::RateLimited).await?;
            client.ping().await?;
        }
        Case::EmptyBody => {
            let (mut client, _) = Client::user(node, encoding, &name("ivy", encoding)).await?;
            let room = client.create_room("empty bodies").await?;
            for body in ["", " ", "\n\t "] {
                let req = client.next_req();
                refused(&mut client, send(req, &room, "e-1", body), ErrorCode::EmptyBody).await?;
            }
            client.ping().await?;
            // The id was not used up by the refusals.
            let (_, duplicate) = client.say(&room, "e-1", "now with a body").await?;
            ensure!(!duplicate, "a refused send stores nothing");
        }
        Case::OversizeBody => {
            let (mut client, _) = Client::user(node, encoding, &name("jack", encoding)).await?;
            let room = client.create_room("big bodies").await?;
            // Bytes, not characters: 34 euro signs are 102 bytes.
            for body in ["x".repeat(MAX_BODY + 1), "€".repeat(34), "y".repeat(10 * MAX_BODY)] {
                let req = client.next_req();
                refused(&mut client, send(req, &room, "big", &body), ErrorCode::BodyTooLarge).await?;
            }
            client.ping().await?;
            let (_, duplicate) = client.say(&room, "big", &"z".repeat(MAX_BODY)).await?;
            ensure!(!duplicate, "a body of exactly the limit is accepted");
        }
        Case::InvalidUserName => {
            let mut client = Client::connect(node, encoding).await?;
            for user in ["Alice", "a", "al:ice", "", "_x", "a b", &"a".repeat(33), "ünï"] {
                let req = client.next_req();
                let frame = ClientFrame::Register { req, user: user.into(), password: "long enough".into() };
                refused(&mut client, frame, ErrorCode::InvalidName).await?;
            }
            client.ping().await?;
            let token = client.register_and_login(&name("kim", encoding), "password-kim").await?;
            client.authenticate(&token, None).await?;
            let room = client.create_room("invites").await?;
            let req = client.next_req();
            refused(&mut client, ClientFrame::OpenDirect { req, user: "Bad Name".into() }, ErrorCode::InvalidName)
                .await?;
            let req = client.next_req();
            refused(&mut client, ClientFrame::Invite { req, room, user: "x y".into() }, ErrorCode::InvalidName).await?;
            client.ping().await?;
        }
        Case::InvalidRoomName => {
            let (mut client, _) = Client::user(node, encoding, &name("lena", encoding)).await?;
            for room in ["", "   ", &"x".repeat(65), "a\u{0}b", "tab\there"] {
                let req = client.next_req();
                refused(
                    &mut client,
                    ClientFrame::CreateRoom { req, name: room.into(), private: false },
                    ErrorCode::InvalidName,
                )
                .await?;
            }
            client.ping().await?;
            let req = client.next_req();
            let ServerFrame::Rooms { rooms, .. } = client.request(ClientFrame::ListRooms { req }).await? else {
                bail!("rooms")
            };
            ensure!(rooms.is_empty(), "no room was created: {rooms:?}");
        }
        Case::InvalidMessageId => {
            let (mut client, _) = Client::user(node, encoding, &name("mona", encoding)).await?;
            let room = client.create_room("ids").await?;
            for id in ["", "a b", &"x".repeat(65), "ünï", "slash/no", "new\nline"] {
                let req = client.next_req();
                refused(&mut client, send(req, &room, id, "body"), ErrorCode::InvalidMessageId).await?;
            }
            client.ping().await?;
            client.say(&room, &"x".repeat(64), "an id of exactly 64 characters").await?;
        }
        Case::PrivateRoomSelfJoin => {
            let (mut owner, _) = Client::user(node, encoding, &name("nina", encoding)).await?;
            let (mut other, _) = Client::user(node, encoding, &name("otto", encoding)).await?;
            let req = owner.next_req();
            let ServerFrame::Room { room, .. } =
                owner.request(ClientFrame::CreateRoom { req, name: "secret".into(), private: true }).await?
            else {
                bail!("create_room")
            };
            // To an outsider a private room answers as a room that does not exist.
            let req = other.next_req();
            refused(&mut other, ClientFrame::Join { req, room: room.id.clone() }, ErrorCode::NoSuchRoom).await?;
            let req = other.next_req();
            refused(
                &mut other,
                ClientFrame::ListMembers { req, room: room.id.clone(), after: None, limit: None },
                ErrorCode::NoSuchRoom,
            )
            .await?;
            other.ping().await?;
            // The way in is an invitation.
            let req = owner.next_req();
            let reply = owner
                .request(ClientFrame::Invite { req, room: room.id.clone(), user: other.user.clone().unwrap() })
                .await?;
            ensure!(reply == ServerFrame::Ok { req }, "invite: {reply:?}");
            other.say(&room.id, "in", "thanks").await?;
        }
        Case::DirectConversationRules => {
            let (first, second, third) = (name("pat", encoding), name("quin", encoding), name("ruth", encoding));
            let (mut pat, _) = Client::user(node, encoding, &first).await?;
            let (mut quin, _) = Client::user(node, encoding, &second).await?;
            let (mut ruth, _) = Client::user(node, encoding, &third).await?;
            let req = pat.next_req();
            let ServerFrame::Room { room, .. } =
                pat.request(ClientFrame::OpenDirect { req, user: second.clone() }).await?
            else {
                bail!("open_direct")
            };
            ensure!(room.id == format!("dm:{first}:{second}") && room.members == 2, "{room:?}");
            // A third user can neither walk in nor be brought in, and an outsider's invitation is
            // refused the same way whoever is named (it reveals nothing).
            let req = ruth.next_req();
            refused(&mut ruth, ClientFrame::Join { req, room: room.id.clone() }, ErrorCode::NoSuchRoom).await?;
            let req = pat.next_req();
            refused(
                &mut pat,
                ClientFrame::Invite { req, room: room.id.clone(), user: third.clone() },
                ErrorCode::Forbidden,
            )
            .await?;
            let req = ruth.next_req();
            refused(
                &mut ruth,
                ClientFrame::Invite { req, room: room.id.clone(), user: second.clone() },
                ErrorCode::Forbidden,
            )
            .await?;
            let req = ruth.next_req();
            refused(&mut ruth, send(req, &room.id, "r-1", "let me in"), ErrorCode::NoSuchRoom).await?;
            let req = quin.next_req();
            refused(&mut quin, ClientFrame::Leave { req, room: room.id.clone() }, ErrorCode::Forbidden).await?;
            let req = quin.next_req();
            let ServerFrame::Members { members, .. } =
                quin.request(ClientFrame::ListMembers { req, room: room.id.clone(), after: None, limit: None }).await?
            else {
                bail!("members")
            };
            ensure!(members == [first, second], "still exactly the two: {members:?}");
            ruth.ping().await?;
        }
        Case::UnsupportedVersion => {
            for versions in [vec![99], vec![], vec![0, 2]] {
                let mut client = Client::connect_raw(&node.ws_url(), encoding).await?;
                client.send_value(&json!({"type": "hello", "versions": versions})).await?;
                let closed = client.closed().await?;
                let told = client
                    .backlog()
                    .any(|f| matches!(f, ServerFrame::Error { code: ErrorCode::UnsupportedVersion, .. }));
                ensure!(
                    told && closed.code == Some(1002),
                    "versions {versions:?}: {closed:?} {:?}",
                    client.backlog().collect::<Vec<_>>()
                );
            }
            // A client offering several versions gets the one the node speaks.
            let mut client = Client::connect_raw(&node.ws_url(), encoding).await?;
            client.send_value(&json!({"type": "hello", "versions": [1, 2, 99]})).await?;
            let welcome = client.recv().await?;
            ensure!(matches!(welcome, ServerFrame::Welcome { version: 1, .. }), "{welcome:?}");
        }
        Case::SecondHello => {
            let mut client = Client::connect(node, encoding).await?;
            refused_value(&mut client, json!({"type": "hello", "versions": [1]}), Some(0), ErrorCode::AlreadyGreeted)
                .await?;
            client.ping().await?;
            // Still greeted in the first encoding, and authentication works.
            client.authenticate(&fx.keeper_token, None).await?;
            refused_value(&mut client, json!({"type": "hello", "versions": [1]}), Some(0), ErrorCode::AlreadyGreeted)
                .await?;
            client.ping().await?;
        }
        Case::UnusualContent => {
            // Valid input that a careless layer might mangle: it is stored and returned as sent.
            let (mut client, _) = Client::user(node, encoding, &name("quirk", encoding)).await?;
            let room_name = "caf\u{e9} \u{2615} \u{5ba4} 'quoted' \"double\" \\ %s";
            let req = client.next_req();
            let ServerFrame::Room { room, .. } =
                client.request(ClientFrame::CreateRoom { req, name: room_name.into(), private: false }).await?
            else {
                bail!("create_room")
            };
            ensure!(room.name == room_name, "room name {:?}", room.name);
            let bodies = [
                "nul \u{0} inside".to_string(),
                "emoji \u{1f600}\u{1f469}\u{200d}\u{1f4bb} and rtl \u{5e9}\u{5dc}\u{5d5}\u{5dd}".to_string(),
                "'; DROP TABLE entries; --".to_string(),
                "{\"type\":\"ping\"} \\u0000 \\".to_string(),
                "line\nbreaks\r\nand\ttabs".to_string(),
                // Exactly the body limit in bytes, in three-byte characters plus one.
                format!("{}x", "\u{20ac}".repeat((MAX_BODY - 1) / 3)),
            ];
            for (i, body) in bodies.iter().enumerate() {
                client.say(&room.id, &format!("u-{i}"), body).await?;
            }
            let stored = history(&mut client, &room.id).await?;
            let texts: Vec<&str> = stored.iter().skip(1).map(|e| e.body.as_str()).collect();
            ensure!(
                texts == bodies.iter().map(String::as_str).collect::<Vec<_>>(),
                "bodies came back changed: {texts:?}"
            );
            client.wait_for_message(&room.id, &format!("u-{}", bodies.len() - 1)).await?;
            let delivered: Vec<&str> = client.ledger.iter().skip(1).map(|(_, e)| e.body.as_str()).collect();
            ensure!(delivered == texts, "delivered bodies differ: {delivered:?}");
        }
        Case::InvalidRequests => {
            // Requests that decode but ask for something impossible.
            let user = name("pia", encoding);
            let mut client = Client::connect(node, encoding).await?;
            let req = client.next_req();
            let short = ClientFrame::Register { req, user: user.clone(), password: "short".into() };
            refused(&mut client, short, ErrorCode::InvalidPassword).await?;
            let token = client.register_and_login(&user, "password-pia").await?;
            let req = client.next_req();
            let again = ClientFrame::Register { req, user: user.clone(), password: "password-pia".into() };
            refused(&mut client, again, ErrorCode::UserExists).await?;
            // A cursor beyond the end of the log is answered, and the connection goes on live.
            let req = client.next_req();
            let reply = client
                .request(ClientFrame::Authenticate {
                    req,
                    token: token.clone(),
                    cursor: Some(1_000_000),
                    rooms: Default::default(),
                })
                .await?;
            ensure!(matches!(reply, ServerFrame::Authenticated { .. }), "authenticate: {reply:?}");
            expect_error(&mut client, Some(req), ErrorCode::CursorAhead).await?;
            let req = client.next_req();
            refused(
                &mut client,
                ClientFrame::Authenticate { req, token, cursor: None, rooms: Default::default() },
                ErrorCode::AlreadyAuthenticated,
            )
            .await?;
            let room = client.create_room("pages").await?;
            let bad_pages = [(Some(1), Some(1), None), (None, None, Some(0)), (None, None, Some(100_000))];
            for (before, after, limit) in bad_pages {
                let req = client.next_req();
                let frame = ClientFrame::History { req, room: room.clone(), before, after, limit };
                refused(&mut client, frame, ErrorCode::InvalidField).await?;
            }
            let req = client.next_req();
            refused(&mut client, ClientFrame::OpenDirect { req, user: user.clone() }, ErrorCode::Forbidden).await?;
            let req = client.next_req();
            refused(&mut client, ClientFrame::OpenDirect { req, user: name("ghost", encoding) }, ErrorCode::NoSuchUser)
                .await?;
            let req = client.next_req();
            let invite = ClientFrame::Invite { req, room: room.clone(), user: name("ghost", encoding) };
            refused(&mut client, invite, ErrorCode::NoSuchUser).await?;
            client.ping().await?;
        }
    }
    Ok(())
}

/// Give `frame` the request number `value` (frames without one, `hello`, stay as they are).
/// Through the frame's JSON form, so that no list of frame kinds here has to follow the enum.
fn set_req(frame: &mut ClientFrame, value: u64) {
    let mut json = serde_json::to_value(&*frame).expect("frames serialise");
    if let Some(req) = json.get_mut("req") {
        *req = value.into();
        *frame = serde_json::from_value(json).expect("the same frame with another req");
    }
}

/// One case in both encodings on a fresh node, then the integrity check.
async fn single(case: Case) -> anyhow::Result<()> {
    let mut fx = Fixture::start().await?;
    for encoding in [Encoding::Json, Encoding::MessagePack] {
        run(case, &mut fx, encoding).await.with_context(|| format!("{case:?} in {encoding:?}"))?;
    }
    fx.check_intact().await
}

macro_rules! single_tests {
    ($($test:ident: $case:ident,)*) => {
        $(
            #[tokio::test]
            async fn $test() -> anyhow::Result<()> {
                single(Case::$case).await
            }
        )*
    };
}

single_tests! {
    malformed_json: MalformedJson,
    malformed_messagepack: MalformedMessagePack,
    unknown_frame_type: UnknownType,
    missing_field: MissingField,
    wrong_field_type: WrongFieldType,
    oversize_frame_closes_with_1009: OversizeFrame,
    operations_before_hello: BeforeHello,
    operations_before_authentication: BeforeAuthentication,
    send_to_a_room_one_is_not_a_member_of: NotMember,
    rooms_that_do_not_exist: NoSuchRoom,
    forged_tokens: ForgedToken,
    revoked_token_after_logout_all: RevokedToken,
    wrong_password: WrongPassword,
    rate_limited_logins: RateLimited,
    empty_body: EmptyBody,
    oversize_body: OversizeBody,
    invalid_user_names: InvalidUserName,
    invalid_room_names: InvalidRoomName,
    invalid_message_ids: InvalidMessageId,
    private_room_self_join: PrivateRoomSelfJoin,
    direct_conversations_stay_between_two: DirectConversationRules,
    unsupported_version_closes: UnsupportedVersion,
    second_hello: SecondHello,
    impossible_requests: InvalidRequests,
    unusual_but_valid_content_round_trips: UnusualContent,
}

/// Every case, both encodings, against one node; stored data intact afterwards.
#[tokio::test]
async fn bad_input_storm() -> anyhow::Result<()> {
    let mut fx = Fixture::start_with(NodeOptions::default().env("AUTH__LOGIN_MAX_FAILURES", 10)).await?;
    for case in ALL {
        for encoding in [Encoding::Json, Encoding::MessagePack] {
            run(case, &mut fx, encoding).await.with_context(|| format!("{case:?} in {encoding:?}"))?;
        }
    }
    fx.check_intact().await
}

/// Failed logins are counted per client address too, not per connection: a guesser who tries
/// many user names, each from a fresh connection, is stopped after `auth.login_max_failures`.
#[tokio::test]
async fn rate_limited_per_address_across_connections() -> anyhow::Result<()> {
    let mut fx = Fixture::start_with(NodeOptions::default().env("AUTH__LOGIN_MAX_FAILURES", 3)).await?;
    for i in 0..3 {
        let mut client = Client::connect(&fx.node, Encoding::Json).await?;
        let req = client.next_req();
        let guess = ClientFrame::Login { req, user: format!("guess-{i}"), password: "password123".into() };
        refused(&mut client, guess, ErrorCode::InvalidCredentials).await?;
    }
    let mut client = Client::connect(&fx.node, Encoding::MessagePack).await?;
    let req = client.next_req();
    let login = ClientFrame::Login { req, user: "guess-3".into(), password: "password123".into() };
    let reply = refused(&mut client, login, ErrorCode::RateLimited).await?;
    ensure!(matches!(reply, ServerFrame::Error { retry_after_ms: Some(ms), .. } if ms > 0), "{reply:?}");
    client.ping().await?;
    fx.check_intact().await
}

/// A connection that floods the node gets `slow_down` (with `retry_after_ms`) for the frames
/// beyond `limits.frames_per_second`, answered in order, and is served again once it waits.
#[tokio::test]
async fn flooding_frames_gets_slow_down() -> anyhow::Result<()> {
    // One frame a second, bursts of two: 40 frames cannot pass, however slowly the node reads.
    let node = Node::start(NodeOptions::default().env("LIMITS__FRAMES_PER_SECOND", 1)).await?;
    for encoding in [Encoding::Json, Encoding::MessagePack] {
        let mut client = Client::connect(&node, encoding).await?;
        let reqs: Vec<u64> = (0..40).map(|_| client.next_req()).collect();
        for &req in &reqs {
            client.send(&ClientFrame::Ping { req }).await?;
        }
        let (mut slowed, mut wait_ms) = (0, 0);
        for &req in &reqs {
            match client.reply_to(req).await? {
                ServerFrame::Pong { .. } => {}
                ServerFrame::Error { code: ErrorCode::SlowDown, retry_after_ms: Some(ms), .. }
                    if ms > 0 && ms <= 1_000 =>
                {
                    slowed += 1;
                    wait_ms = ms;
                }
                other => bail!("ping {req}: {other:?}"),
            }
        }
        // At most the burst and ten seconds' worth of refill pass.
        ensure!(slowed >= 40 - 2 - 10, "only {slowed} of 40 frames slowed down");
        // The rate limit is a clock, so honouring `retry_after_ms` means waiting for it.
        tokio::time::sleep(Duration::from_millis(wait_ms + 50)).await;
        client.ping().await?;
    }
    ensure!(!node.log().contains("panicked"), "no panic");
    Ok(())
}

/// A connection that never says `hello` is closed after `limits.hello_timeout_ms` (1008).
#[tokio::test]
async fn silent_connection_is_closed_after_the_hello_timeout() -> anyhow::Result<()> {
    let mut fx = Fixture::start_with(NodeOptions::default().env("LIMITS__HELLO_TIMEOUT_MS", 300)).await?;
    let mut silent = Client::connect_raw(&fx.node.ws_url(), Encoding::Json).await?;
    let closed = silent.closed().await?;
    ensure!(closed.code == Some(1008), "closed with {closed:?}");
    fx.check_intact().await
}

/// An expired token (the node issues tokens that live one second; the test waits for the
/// wall clock to pass the `expires_at` the node announced).
#[tokio::test]
async fn expired_token() -> anyhow::Result<()> {
    let mut fx = Fixture::start_with(NodeOptions::default().env("AUTH__TOKEN_TTL_SECS", 1)).await?;
    for encoding in [Encoding::Json, Encoding::MessagePack] {
        let mut client = Client::connect(&fx.node, encoding).await?;
        let req = client.next_req();
        let user = name("olga", encoding);
        client.request(ClientFrame::Register { req, user: user.clone(), password: "password-olga".into() }).await?;
        let req = client.next_req();
        let ServerFrame::LoggedIn { token, expires_at, .. } =
            client.request(ClientFrame::Login { req, user, password: "password-olga".into() }).await?
        else {
            bail!("login")
        };
        // The expiry is the thing tested, so waiting for the clock is the point here.
        while now_ms() <= expires_at + 50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let req = client.next_req();
        refused(
            &mut client,
            ClientFrame::Authenticate { req, token, cursor: None, rooms: Default::default() },
            ErrorCode::TokenExpired,
        )
        .await?;
        client.ping().await?;
        let req = client.next_req();
        refused(&mut client, ClientFrame::ListRooms { req }, ErrorCode::NotAuthenticated).await?;
    }
    // The fixture's keeper token has expired too; the integrity check logs in afresh.
    let mut keeper = Client::connect(&fx.node, Encoding::Json).await?;
    fx.keeper_token = keeper.login("keeper", "password-of-keeper").await?;
    fx.check_intact().await
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
