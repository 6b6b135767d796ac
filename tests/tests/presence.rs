//! Presence, typing indicators and receipts on one node (the behaviour in the presence spec):
//! watchers are told when a user comes, goes away or leaves (after a grace period that hides a
//! quick reconnect); only users who share a room are visible; typing reaches the room's other
//! members and lapses; delivered and read receipts reach the sender; members are listed a page
//! at a time with their presence; bad presence requests are refused precisely and leave the
//! connection usable.
//!
//! Nodes run with short presence timings (grace 300 ms, flush 50 ms, typing ttl 800 ms) so the
//! tests are quick; waits are generous (15 s) and timings are only ever checked from below.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use protocol::{PresenceState, ReadPosition, ReceiptKind, UserPresence};
use tests::presence::*;
use tests::{Client, ClientFrame, Encoding, ErrorCode, Node, NodeOptions, ServerFrame};

use PresenceState::{Away, Offline, Online};

/// How long to listen for something that must not happen (after the thing it would have come
/// with has been seen).
const QUIET: Duration = Duration::from_millis(1000);

const GRACE_MS: u64 = 300;
const FLUSH_MS: u64 = 50;

/// How long `a_former_room_mate_stops_being_watched` gives the node to re-check a watch after a
/// leave: the re-check runs in the background, and nothing a client can see marks its end.
/// (Tests about other guarantees poll with `wait_listed_online` before their first
/// `watch_presence`; that a fresh connection is listed online at once is
/// `a_fresh_connection_is_listed_online_at_once`.)
const RECHECK: Duration = Duration::from_millis(300);
const TYPING_TTL_MS: u64 = 800;

fn options() -> NodeOptions {
    NodeOptions::default()
        .env("PRESENCE__GRACE_MS", GRACE_MS)
        .env("PRESENCE__FLUSH_MS", FLUSH_MS)
        .env("PRESENCE__TYPING_TTL_MS", TYPING_TTL_MS)
}

/// Run a test body against a node; on failure, add the tail of the node's log.
async fn with_log<T>(node: &Node, body: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    body.await.map_err(|err| {
        let log = node.log();
        let lines: Vec<&str> = log.lines().collect();
        anyhow!("{err:#}\n----- node log (tail) -----\n{}", lines[lines.len().saturating_sub(60)..].join("\n"))
    })
}

async fn list_members(
    client: &mut Client,
    room: &str,
    after: Option<&str>,
    limit: Option<u32>,
) -> anyhow::Result<(Vec<String>, Vec<UserPresence>, u32, u32, bool)> {
    let req = client.next_req();
    let frame = ClientFrame::ListMembers { req, room: room.into(), after: after.map(String::from), limit };
    match client.request(frame).await? {
        ServerFrame::Members { req: got, room: got_room, members, presence, roles, total, online, more }
            if got == req && got_room == room =>
        {
            ensure!(roles.len() == members.len(), "a role per member: {roles:?} for {members:?}");
            Ok((members, presence, total, online, more))
        }
        other => bail!("list_members after {after:?} limit {limit:?}: {other:?}"),
    }
}

async fn mark_read(client: &mut Client, room: &str, seq: u64) -> anyhow::Result<()> {
    let req = client.next_req();
    match client.request(ClientFrame::MarkRead { req, room: room.into(), seq }).await? {
        ServerFrame::Ok { req: got } if got == req => Ok(()),
        other => bail!("mark_read {room} {seq}: {other:?}"),
    }
}

async fn receipts(client: &mut Client, room: &str) -> anyhow::Result<Vec<ReadPosition>> {
    let req = client.next_req();
    match client.request(ClientFrame::Receipts { req, room: room.into() }).await? {
        ServerFrame::Receipts { req: got, room: got_room, reads } if got == req && got_room == room => Ok(reads),
        other => bail!("receipts {room}: {other:?}"),
    }
}

fn reads(list: &[(&str, u64)]) -> Vec<ReadPosition> {
    list.iter().map(|(user, seq)| ReadPosition { user: user.to_string(), seq: *seq }).collect()
}

async fn next_typing(client: &mut Client, room: &str) -> anyhow::Result<ServerFrame> {
    client
        .recv_matching_within(DEADLINE, typing_in(room))
        .await?
        .with_context(|| format!("{:?}: no typing frame for {room} within {DEADLINE:?}", client.user))
}

async fn next_receipt(client: &mut Client, room: &str) -> anyhow::Result<ServerFrame> {
    client
        .recv_matching_within(DEADLINE, receipt_in(room))
        .await?
        .with_context(|| format!("{:?}: no receipt for {room} within {DEADLINE:?}", client.user))
}

async fn reconnect(node: &Node, encoding: Encoding, token: &str) -> anyhow::Result<Client> {
    let mut client = Client::connect(node, encoding).await?;
    client.authenticate(token, None).await?;
    Ok(client)
}

// ---------------------------------------------------------------------------------------------
// 1. online → away (with status) → offline after the grace; a reconnect comes back online.

#[tokio::test]
async fn presence_online_away_offline_json_watched_by_messagepack() -> anyhow::Result<()> {
    presence_lifecycle(Encoding::Json, Encoding::MessagePack).await
}

#[tokio::test]
async fn presence_online_away_offline_messagepack_watched_by_json() -> anyhow::Result<()> {
    presence_lifecycle(Encoding::MessagePack, Encoding::Json).await
}

async fn presence_lifecycle(alice_encoding: Encoding, bob_encoding: Encoding) -> anyhow::Result<()> {
    let node = Node::start(options()).await?;
    with_log(&node, async {
        let (mut alice, alice_token) = Client::user(&node, alice_encoding, "alice").await?;
        let (mut bob, _) = Client::user(&node, bob_encoding, "bob").await?;
        let (carol, _) = Client::user(&node, bob_encoding, "carol").await?;
        carol.close().await?;
        let room = alice.create_room("lobby").await?;
        bob.join(&room).await?;
        wait_listed_online(&mut bob, &["alice", "bob"]).await?;

        // The list: request order, duplicates removed, the caller itself visible, carol (no
        // shared room) hidden.
        let (users, hidden) = watch(&mut bob, &["alice", "bob", "alice", "carol"]).await?;
        let names: Vec<&str> = users.iter().map(|p| p.user.as_str()).collect();
        ensure!(names == ["alice", "bob"], "presence_list users: {users:?}");
        check_presence(&users[0], "alice", Online, None)?;
        check_presence(&users[1], "bob", Online, None)?;
        ensure!(hidden == ["carol"], "hidden: {hidden:?}");
        let mut known = users[0].clone();

        // Each change is pushed; absent and empty status clear it.
        let steps: [(PresenceState, Option<&str>, Option<&str>); 5] = [
            (Away, Some("lunch"), Some("lunch")),
            (Online, None, None),
            (Online, Some("brb"), Some("brb")),
            (Away, Some(""), None),
            (Away, Some("back soon"), Some("back soon")),
        ];
        for (state, status, shown) in steps {
            set_presence(&mut alice, state, status).await?;
            let pushed = next_change(&mut bob, "alice", &known).await?;
            check_presence(&pushed, "alice", state, shown)
                .with_context(|| format!("after alice set {state:?} with status {status:?}"))?;
            known = pushed;
        }
        // A fresh list says the same.
        let (users, _) = watch(&mut bob, &["alice"]).await?;
        check_presence(&users[0], "alice", Away, Some("back soon"))?;

        // Alice's only connection closes: offline with last_seen, after the grace.
        let closed_ms = now_ms();
        let closed_at = Instant::now();
        alice.close().await?;
        let pushed = next_change(&mut bob, "alice", &known).await?;
        let took = closed_at.elapsed();
        check_offline(&pushed, "alice", closed_ms).context("the first push after alice's last connection closed")?;
        ensure!(
            took >= Duration::from_millis(GRACE_MS - 20),
            "offline pushed {took:?} after the close, before the {GRACE_MS} ms grace was over"
        );
        known = pushed;
        let (users, _) = watch(&mut bob, &["alice"]).await?;
        ensure!(
            users[0].state == Offline && users[0].last_seen == known.last_seen,
            "list after offline: {users:?}, push was {known:?}"
        );

        // A fresh connection: online again, status text kept.
        let _alice = reconnect(&node, alice_encoding, &alice_token).await?;
        let pushed = next_change(&mut bob, "alice", &known).await?;
        check_presence(&pushed, "alice", Online, Some("back soon")).context("after alice reconnected")?;
        bob.ping().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_reconnect_within_the_grace_is_invisible() -> anyhow::Result<()> {
    let node =
        Node::start(NodeOptions::default().env("PRESENCE__GRACE_MS", 2_000).env("PRESENCE__FLUSH_MS", 50)).await?;
    with_log(&node, async {
        let (mut alice, token) = Client::user(&node, Encoding::MessagePack, "alice").await?;
        let (mut bob, _) = Client::user(&node, Encoding::Json, "bob").await?;
        let room = alice.create_room("flaky wifi").await?;
        bob.join(&room).await?;
        wait_listed_online(&mut bob, &["alice"]).await?;
        let (users, _) = watch(&mut bob, &["alice"]).await?;
        check_presence(&users[0], "alice", Online, None)?;
        let known = users[0].clone();

        // Drop and come back at once.
        alice.close().await?;
        let closed_at = Instant::now();
        let alice = reconnect(&node, Encoding::MessagePack, &token).await?;
        let took = closed_at.elapsed();
        ensure!(took < Duration::from_millis(1_500), "the reconnect took {took:?}: too slow to test a 2 s grace");

        // Neither offline nor online is pushed, now or after the grace would have run out.
        no_change(&mut bob, "alice", &known, Duration::from_millis(3_000))
            .await
            .context("a reconnect within the grace must be invisible")?;
        let (users, _) = watch(&mut bob, &["alice"]).await?;
        check_presence(&users[0], "alice", Online, None)?;

        // A real disconnect is announced.
        let closed_ms = now_ms();
        alice.close().await?;
        let pushed = next_change(&mut bob, "alice", &known).await?;
        check_offline(&pushed, "alice", closed_ms)?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_fresh_connection_is_listed_online_at_once() -> anyhow::Result<()> {
    // A long flush interval: the list must not wait for the next publication to show a user
    // who is connected right now (only *pushes* are coalesced per flush).
    let node = Node::start(NodeOptions::default().env("PRESENCE__GRACE_MS", GRACE_MS).env("PRESENCE__FLUSH_MS", 2_000))
        .await?;
    with_log(&node, async {
        let (mut alice, _) = Client::user(&node, Encoding::Json, "alice").await?;
        // The caller itself, the moment it is authenticated.
        let (users, hidden) = watch(&mut alice, &["alice"]).await?;
        ensure!(hidden.is_empty() && users.len() == 1, "{users:?} {hidden:?}");
        check_presence(&users[0], "alice", Online, None)
            .context("alice watching herself right after authenticating")?;
        // A room-mate who just connected.
        let (mut bob, _) = Client::user(&node, Encoding::MessagePack, "bob").await?;
        let room = alice.create_room("fresh").await?;
        bob.join(&room).await?;
        let (users, _) = watch(&mut alice, &["bob"]).await?;
        check_presence(&users[0], "bob", Online, None).context("bob, connected a moment ago, in alice's list")?;
        let (_, presence, _, online, _) = list_members(&mut alice, &room, None, None).await?;
        ensure!(online == 2, "list_members right after both connected: online {online}, {presence:?}");
        // The flush that publishes bob's connection tells alice nothing: her list said so.
        no_push(&mut alice, "bob", Duration::from_millis(2_500))
            .await
            .context("alice was listed bob online; the flush after his connect must not push it again")?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 2. Privacy: only users sharing a room or a direct conversation are visible.

#[tokio::test]
async fn presence_is_private_to_users_sharing_a_room() -> anyhow::Result<()> {
    let node = Node::start(options()).await?;
    with_log(&node, async {
        let (mut alice, _) = Client::user(&node, Encoding::Json, "alice").await?;
        let (mut bob, _) = Client::user(&node, Encoding::MessagePack, "bob").await?;
        let (mut carol, _) = Client::user(&node, Encoding::Json, "carol").await?;
        let (mut dave, _) = Client::user(&node, Encoding::MessagePack, "dave").await?;
        let room = alice.create_room("alice and bob").await?;
        bob.join(&room).await?;
        // Carol is in a room of her own, dave in a direct conversation with alice.
        carol.create_room("carol alone").await?;
        let req = dave.next_req();
        match dave.request(ClientFrame::OpenDirect { req, user: "alice".into() }).await? {
            ServerFrame::Room { .. } => {}
            other => bail!("open_direct: {other:?}"),
        }
        wait_listed_online(&mut bob, &["alice"]).await?;
        wait_listed_online(&mut dave, &["alice"]).await?;
        wait_listed_online(&mut carol, &["carol"]).await?;

        let (users, hidden) = watch(&mut carol, &["carol", "alice"]).await?;
        ensure!(users.len() == 1, "carol sees only herself: {users:?}");
        check_presence(&users[0], "carol", Online, None)?;
        ensure!(hidden == ["alice"], "hidden: {hidden:?}");
        // An existing user and a missing one look the same.
        let (users, hidden) = watch(&mut carol, &["alice", "nosuchuser"]).await?;
        ensure!(users.is_empty(), "carol must see nobody: {users:?}");
        ensure!(hidden == ["alice", "nosuchuser"], "hidden: {hidden:?}");

        let (users, hidden) = watch(&mut bob, &["alice"]).await?;
        check_presence(&users[0], "alice", Online, None)?;
        ensure!(hidden.is_empty(), "{hidden:?}");
        let mut bob_knows = users[0].clone();
        let (users, hidden) = watch(&mut dave, &["alice"]).await?;
        check_presence(&users[0], "alice", Online, None).context("a direct conversation makes alice visible")?;
        ensure!(hidden.is_empty(), "{hidden:?}");
        let mut dave_knows = users[0].clone();

        // Alice goes away: bob and dave are told, carol is not.
        set_presence(&mut alice, Away, Some("not for carol")).await?;
        bob_knows = next_change(&mut bob, "alice", &bob_knows).await?;
        check_presence(&bob_knows, "alice", Away, Some("not for carol"))?;
        dave_knows = next_change(&mut dave, "alice", &dave_knows).await?;
        check_presence(&dave_knows, "alice", Away, Some("not for carol"))?;
        none_arrives(&mut carol, QUIET, "a presence push", |f| matches!(f, ServerFrame::Presence { .. })).await?;

        // Alice leaves: the same.
        let closed_ms = now_ms();
        alice.close().await?;
        check_offline(&next_change(&mut bob, "alice", &bob_knows).await?, "alice", closed_ms)?;
        check_offline(&next_change(&mut dave, "alice", &dave_knows).await?, "alice", closed_ms)?;
        none_arrives(&mut carol, QUIET, "a presence push", |f| matches!(f, ServerFrame::Presence { .. })).await?;

        // Nor can she list the room's members or read positions.
        cannot_read_room(&mut carol, &room).await?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 3. Typing.

#[tokio::test]
async fn typing_reaches_the_other_members_and_lapses_after_the_ttl() -> anyhow::Result<()> {
    let node = Node::start(options().env("PRESENCE__ROOM_MAX_MEMBERS", 2)).await?;
    with_log(&node, async {
        let (mut alice, alice_token) = Client::user(&node, Encoding::Json, "alice").await?;
        let mut alice2 = reconnect(&node, Encoding::MessagePack, &alice_token).await?;
        let (mut bob, bob_token) = Client::user(&node, Encoding::MessagePack, "bob").await?;
        let mut bob2 = reconnect(&node, Encoding::Json, &bob_token).await?;
        let (mut carol, _) = Client::user(&node, Encoding::Json, "carol").await?;
        let room = alice.create_room("pair").await?;
        bob.join(&room).await?;
        let big = alice.create_room("trio").await?;
        bob.join(&big).await?;
        carol.join(&big).await?;
        let elsewhere = carol.create_room("carol's").await?;

        let sent_at = Instant::now();
        send_typing(&mut alice, &room, true).await?;
        let active = ServerFrame::Typing {
            room: room.clone(),
            user: "alice".into(),
            active: true,
            expires_in_ms: TYPING_TTL_MS,
        };
        for (who, client) in [("bob", &mut bob), ("bob's second connection", &mut bob2)] {
            let frame = next_typing(client, &room).await?;
            ensure!(frame == active, "{who}: expected {active:?}, got {frame:?}");
        }
        // Not refreshed: it lapses, and the node says so.
        for (who, client) in [("bob", &mut bob), ("bob's second connection", &mut bob2)] {
            let frame = next_typing(client, &room).await?;
            ensure!(
                matches!(&frame, ServerFrame::Typing { room: r, user, active: false, .. } if *r == room && user == "alice"),
                "{who}: expected alice's typing to end (active: false), got {frame:?}"
            );
        }
        let lapsed = sent_at.elapsed();
        ensure!(
            lapsed >= Duration::from_millis(TYPING_TTL_MS - 100),
            "active: false came {lapsed:?} after the typing, before the {TYPING_TTL_MS} ms ttl"
        );
        // A repeat within ttl/2 is not forwarded but keeps the indicator alive: it lapses a ttl
        // after the repeat, not after the first.
        let first_at = Instant::now();
        send_typing(&mut alice, &room, true).await?;
        let frame = next_typing(&mut bob, &room).await?;
        ensure!(frame == active, "typing again: expected {active:?}, got {frame:?}");
        // Real time on purpose: the repeat comes a while after the first, so the lapse tells them apart.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let repeat_at = Instant::now();
        send_typing(&mut alice, &room, true).await?;
        let mut frame = next_typing(&mut bob, &room).await?;
        if frame == active {
            // Forwarded again: allowed only if the repeat really came after ttl/2 (a stalled machine).
            let gap = repeat_at.duration_since(first_at);
            ensure!(
                gap >= Duration::from_millis(TYPING_TTL_MS / 2),
                "a repeat {gap:?} after the start (within ttl/2) was forwarded again"
            );
            frame = next_typing(&mut bob, &room).await?;
        }
        ensure!(
            matches!(&frame, ServerFrame::Typing { active: false, .. }),
            "after the repeat, expected the lapse, got {frame:?}"
        );
        let lapsed = repeat_at.elapsed();
        ensure!(
            lapsed >= Duration::from_millis(TYPING_TTL_MS - 100),
            "the indicator lapsed {lapsed:?} after a repeat: the repeat did not extend it to a full ttl"
        );
        let frame = next_typing(&mut bob2, &room).await?;
        ensure!(frame == active, "bob's second connection: {frame:?}");
        let frame = next_typing(&mut bob2, &room).await?;
        ensure!(matches!(&frame, ServerFrame::Typing { active: false, .. }), "bob's second connection: {frame:?}");

        // The typer's own connections hear nothing of it.
        for client in [&mut alice, &mut alice2] {
            none_arrives(client, Duration::from_millis(300), "its own typing", |f| {
                matches!(f, ServerFrame::Typing { .. })
            })
            .await?;
        }

        // Refused: not a member, no such room, a room above room_max_members (3 > 2).
        let req = carol.next_req();
        refused(&mut carol, ClientFrame::Typing { req, room: room.clone(), active: true }, ErrorCode::NotMember).await?;
        let req = alice.next_req();
        refused(&mut alice, ClientFrame::Typing { req, room: elsewhere.clone(), active: true }, ErrorCode::NotMember)
            .await?;
        let req = alice.next_req();
        refused(&mut alice, ClientFrame::Typing { req, room: "r_doesnotexist".into(), active: true }, ErrorCode::NoSuchRoom)
            .await?;
        let req = alice.next_req();
        refused(&mut alice, ClientFrame::Typing { req, room: big.clone(), active: true }, ErrorCode::Forbidden).await?;
        let req = carol.next_req();
        refused(&mut carol, ClientFrame::Typing { req, room: big.clone(), active: true }, ErrorCode::Forbidden).await?;
        none_arrives(&mut bob, QUIET, "typing in a room above room_max_members", typing_in(&big)).await?;
        none_arrives(&mut carol, Duration::from_millis(100), "typing in a room above room_max_members", typing_in(&big))
            .await?;
        none_arrives(&mut bob, Duration::from_millis(100), "typing from a non-member", typing_in(&room)).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn typing_ends_when_stopped_or_when_the_typer_sends() -> anyhow::Result<()> {
    // A long ttl: an `active: false` seen well before it cannot be the lapse.
    let node = Node::start(options().env("PRESENCE__TYPING_TTL_MS", 10_000)).await?;
    with_log(&node, async {
        let (mut alice, _) = Client::user(&node, Encoding::MessagePack, "alice").await?;
        let (mut bob, _) = Client::user(&node, Encoding::Json, "bob").await?;
        let room = alice.create_room("chat").await?;
        bob.join(&room).await?;
        let is_alice = |frame: &ServerFrame, want: bool| {
            matches!(frame, ServerFrame::Typing { room: r, user, active, .. } if *r == room && user == "alice" && *active == want)
        };

        let started = Instant::now();
        send_typing(&mut alice, &room, true).await?;
        let frame = next_typing(&mut bob, &room).await?;
        let expected = ServerFrame::Typing { room: room.clone(), user: "alice".into(), active: true, expires_in_ms: 10_000 };
        ensure!(frame == expected, "expected {expected:?}, got {frame:?}");
        // A refresh within ttl/2 is not forwarded; then she stops. (That a repeat after ttl/2 is
        // forwarded again, and when an indicator lapses, is the rule of presence/typing.rs,
        // tested there with an injected clock instead of waiting here.)
        send_typing(&mut alice, &room, true).await?;
        send_typing(&mut alice, &room, false).await?;
        let frame = next_typing(&mut bob, &room).await?;
        ensure!(is_alice(&frame, false), "after a refresh and a stop, expected active: false first, got {frame:?}");
        ensure!(started.elapsed() < Duration::from_secs(8), "the stop took {:?}: that is the lapse", started.elapsed());
        alice.ping().await?;

        // Typing again, then sending: the send ends the indicator.
        let started = Instant::now();
        send_typing(&mut alice, &room, true).await?;
        let frame = next_typing(&mut bob, &room).await?;
        ensure!(frame == expected, "typing again after a stop: expected {expected:?}, got {frame:?}");
        alice.say(&room, "m1", "done typing").await?;
        let frame = next_typing(&mut bob, &room).await?;
        ensure!(is_alice(&frame, false), "after alice's send, expected active: false, got {frame:?}");
        ensure!(
            started.elapsed() < Duration::from_secs(8),
            "active: false came {:?} after the typing: that is the lapse, not the send",
            started.elapsed()
        );
        bob.wait_for_message(&room, "m1").await?;
        // Nothing more about it (no second stop, no resurrected indicator).
        none_arrives(&mut bob, QUIET, "another typing frame", typing_in(&room)).await?;
        none_arrives(&mut alice, Duration::from_millis(100), "its own typing", |f| matches!(f, ServerFrame::Typing { .. }))
            .await?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 4. Receipts.

#[tokio::test]
async fn receipts_json_sender_messagepack_reader() -> anyhow::Result<()> {
    receipts_flow(Encoding::Json, Encoding::MessagePack).await
}

#[tokio::test]
async fn receipts_messagepack_sender_json_reader() -> anyhow::Result<()> {
    receipts_flow(Encoding::MessagePack, Encoding::Json).await
}

async fn receipts_flow(alice_encoding: Encoding, bob_encoding: Encoding) -> anyhow::Result<()> {
    let node = Node::start(options().env("PRESENCE__ROOM_MAX_MEMBERS", 3)).await?;
    with_log(&node, async {
        let (mut alice, _) = Client::user(&node, alice_encoding, "alice").await?;
        let (mut bob, bob_token) = Client::user(&node, bob_encoding, "bob").await?;
        let (mut carol, _) = Client::user(&node, bob_encoding, "carol").await?;
        let (mut dave, _) = Client::user(&node, alice_encoding, "dave").await?;
        let (mut erin, _) = Client::user(&node, alice_encoding, "erin").await?;
        // room: alice, bob, carol (3 = room_max_members); crowd: alice, bob, dave, erin (4 > 3).
        let room = alice.create_room("receipts").await?;
        bob.join(&room).await?;
        carol.join(&room).await?;
        carol.close().await?;
        let crowd = alice.create_room("crowd").await?;
        bob.join(&crowd).await?;
        dave.join(&crowd).await?;
        erin.join(&crowd).await?;
        erin.close().await?;
        let (users, _) = watch(&mut alice, &["bob"]).await?;
        check_presence(&users[0], "bob", Online, None)?;
        let alice_knows_bob = users[0].clone();

        // Live delivery to bob → delivered to alice.
        let (s1, _) = alice.say(&room, "m1", "first").await?;
        bob.wait_for_message(&room, "m1").await?;
        let receipt = next_receipt(&mut alice, &room).await?;
        let expected =
            ServerFrame::Receipt { room: room.clone(), user: "bob".into(), kind: ReceiptKind::Delivered, seq: s1 };
        ensure!(receipt == expected, "expected {expected:?}, got {receipt:?}");

        // Bob goes away (alice sees him offline, so his connection is surely gone); alice
        // writes three more: nobody got them, so no receipt.
        let cursor = bob.cursor;
        bob.close().await?;
        let offline = next_change(&mut alice, "bob", &alice_knows_bob).await?;
        ensure!(offline.state == Offline, "{offline:?}");
        let mut seqs = Vec::new();
        for i in 2..=4 {
            seqs.push(alice.say(&room, &format!("m{i}"), &format!("message {i}")).await?.0);
        }
        let s4 = *seqs.last().expect("three sends");
        none_arrives(&mut alice, QUIET, "a receipt while nobody else is connected", receipt_in(&room)).await?;

        // Bob resumes from his cursor: the replay counts as delivery, up to the highest seq.
        let mut bob = Client::connect(&node, bob_encoding).await?;
        bob.authenticate(&bob_token, Some(cursor)).await?;
        bob.cursor = cursor;
        bob.until_live().await?;
        let replayed: Vec<&str> =
            bob.ledger.iter().filter(|(_, e)| e.room == room).map(|(_, e)| e.id.as_str()).collect();
        ensure!(replayed == ["m2", "m3", "m4"], "replayed: {replayed:?}");
        let mut last = s1;
        while last < s4 {
            match next_receipt(&mut alice, &room).await? {
                ServerFrame::Receipt { room: r, user, kind: ReceiptKind::Delivered, seq }
                    if r == room && user == "bob" && seq > last && seq <= s4 =>
                {
                    last = seq
                }
                other => bail!("after bob's resume, expected delivered receipts for bob up to seq {s4}, got {other:?}"),
            }
        }

        // Bob reads: alice is told; bob is not told about himself.
        mark_read(&mut bob, &room, s4).await?;
        let receipt = next_receipt(&mut alice, &room).await?;
        let expected =
            ServerFrame::Receipt { room: room.clone(), user: "bob".into(), kind: ReceiptKind::Read, seq: s4 };
        ensure!(receipt == expected, "expected {expected:?}, got {receipt:?}");
        none_arrives(&mut bob, Duration::from_millis(300), "a receipt about himself", receipt_in(&room)).await?;
        mark_read(&mut alice, &room, seqs[0]).await?;
        let receipt = next_receipt(&mut bob, &room).await?;
        let expected =
            ServerFrame::Receipt { room: room.clone(), user: "alice".into(), kind: ReceiptKind::Read, seq: seqs[0] };
        ensure!(receipt == expected, "expected {expected:?}, got {receipt:?}");

        // The stored positions, every member, sorted by user.
        let want = reads(&[("alice", seqs[0]), ("bob", s4), ("carol", 0)]);
        for client in [&mut alice, &mut bob] {
            let got = receipts(client, &room).await?;
            ensure!(got == want, "{:?}: receipts {got:?}, expected {want:?}", client.user);
        }
        let req = dave.next_req();
        refused(&mut dave, ClientFrame::Receipts { req, room: room.clone() }, ErrorCode::NotMember).await?;

        // A room above room_max_members: no receipt pushes, but the request works.
        let (c1, _) = alice.say(&crowd, "c1", "to the crowd").await?;
        bob.wait_for_message(&crowd, "c1").await?;
        dave.wait_for_message(&crowd, "c1").await?;
        mark_read(&mut bob, &crowd, c1).await?;
        none_arrives(&mut alice, QUIET, "a receipt in a room above room_max_members", receipt_in(&crowd)).await?;
        none_arrives(
            &mut dave,
            Duration::from_millis(100),
            "a receipt in a room above room_max_members",
            receipt_in(&crowd),
        )
        .await?;
        let got = receipts(&mut dave, &crowd).await?;
        ensure!(got == reads(&[("alice", 0), ("bob", c1), ("dave", 0), ("erin", 0)]), "crowd receipts: {got:?}");
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 5. list_members paging, and bad presence requests.

/// A page of `list_members` a test expects: (after, names, their states, more).
type ExpectedPage<'a> = (Option<&'a str>, &'a [&'a str], &'a [PresenceState], bool);

#[tokio::test]
async fn members_pages_and_bad_presence_requests_json() -> anyhow::Result<()> {
    members_and_bad_requests(Encoding::Json).await
}

#[tokio::test]
async fn members_pages_and_bad_presence_requests_messagepack() -> anyhow::Result<()> {
    members_and_bad_requests(Encoding::MessagePack).await
}

async fn members_and_bad_requests(encoding: Encoding) -> anyhow::Result<()> {
    let other = if encoding == Encoding::Json { Encoding::MessagePack } else { Encoding::Json };
    let node = Node::start(options().env("PRESENCE__MAX_WATCHED", 3)).await?;
    with_log(&node, async {
        let (mut amy, _) = Client::user(&node, encoding, "amy").await?;
        let room = amy.create_room("five").await?;
        let mut others = Vec::new();
        for name in ["ben", "cal", "dan", "eve"] {
            let (mut client, _) = Client::user(&node, other, name).await?;
            client.join(&room).await?;
            others.push(client);
        }
        let mut eve = others.pop().expect("eve");
        let dan = others.pop().expect("dan");
        let mut cal = others.pop().expect("cal");
        let ben = others.pop().expect("ben");
        let (users, _) = watch(&mut eve, &["amy"]).await?;
        check_presence(&users[0], "amy", Online, None)?;
        let eve_knows_amy = users[0].clone();
        ben.close().await?;
        dan.close().await?;
        set_presence(&mut cal, Away, None).await?;

        // Wait until the node has seen ben and dan go (after the grace).
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (_, presence, _, online, _) = list_members(&mut amy, &room, None, None).await?;
            let states: Vec<PresenceState> = presence.iter().map(|p| p.state).collect();
            if online == 3 && states == [Online, Offline, Away, Offline, Online] {
                break;
            }
            ensure!(Instant::now() < deadline, "members never settled: online {online}, presence {presence:?}");
            tokio::time::sleep(POLL).await;
        }

        // Pages of two, by name, presence in the same order.
        let pages: [ExpectedPage; 3] = [
            (None, &["amy", "ben"], &[Online, Offline], true),
            (Some("ben"), &["cal", "dan"], &[Away, Offline], true),
            (Some("dan"), &["eve"], &[Online], false),
        ];
        for (after, names, states, more_expected) in pages {
            let (members, presence, total, online, more) = list_members(&mut amy, &room, after, Some(2)).await?;
            let what =
                format!("page after {after:?}: {members:?} {presence:?} total {total} online {online} more {more}");
            ensure!(members == names, "{what}");
            ensure!(presence.iter().map(|p| p.user.as_str()).collect::<Vec<_>>() == names, "{what}");
            ensure!(presence.iter().map(|p| p.state).collect::<Vec<_>>() == states, "{what}");
            ensure!(total == 5 && online == 3 && more == more_expected, "{what}");
            for p in presence.iter().filter(|p| p.state == Offline) {
                ensure!(p.last_seen.is_some(), "offline without last_seen: {what}");
            }
        }
        // `after` need not be a member; past the end the page is empty; 200 is allowed.
        let (members, _, _, _, more) = list_members(&mut amy, &room, Some("bz"), Some(2)).await?;
        ensure!(members == ["cal", "dan"] && more, "after \"bz\": {members:?} more {more}");
        let (members, presence, total, online, more) = list_members(&mut amy, &room, Some("eve"), Some(2)).await?;
        ensure!(
            members.is_empty() && presence.is_empty() && total == 5 && online == 3 && !more,
            "after the last: {members:?}"
        );
        let (members, presence, _, _, more) = list_members(&mut amy, &room, None, Some(200)).await?;
        ensure!(
            members == ["amy", "ben", "cal", "dan", "eve"] && presence.len() == 5 && !more,
            "limit 200: {members:?}"
        );

        // Bad requests, each refused with invalid_field, the connection still usable.
        for limit in [0, 201] {
            let req = amy.next_req();
            let frame = ClientFrame::ListMembers { req, room: room.clone(), after: None, limit: Some(limit) };
            refused(&mut amy, frame, ErrorCode::InvalidField).await?;
        }
        let req = amy.next_req();
        refused(&mut amy, ClientFrame::SetPresence { req, state: Offline, status: None }, ErrorCode::InvalidField)
            .await?;
        let req = amy.next_req();
        let frame = ClientFrame::SetPresence { req, state: Online, status: Some("x".repeat(141)) };
        refused(&mut amy, frame, ErrorCode::InvalidField).await?;
        // 71 characters but 142 bytes: the limit is in bytes.
        let req = amy.next_req();
        let frame = ClientFrame::SetPresence { req, state: Away, status: Some("é".repeat(71)) };
        refused(&mut amy, frame, ErrorCode::InvalidField).await?;
        let req = amy.next_req();
        let frame = ClientFrame::WatchPresence { req, users: ["ben", "cal", "dan", "eve"].map(String::from).to_vec() };
        refused(&mut amy, frame, ErrorCode::InvalidField).await?;
        let (users, hidden) = watch(&mut amy, &["ben", "cal", "dan"]).await?;
        ensure!(users.len() == 3 && hidden.is_empty(), "watching max_watched users: {users:?} {hidden:?}");

        // None of the refused ones changed amy's presence: the first push eve gets is the
        // valid 140-byte status.
        let status = "é".repeat(70);
        set_presence(&mut amy, Online, Some(&status)).await?;
        let pushed = next_change(&mut eve, "amy", &eve_knows_amy).await?;
        check_presence(&pushed, "amy", Online, Some(&status))?;
        amy.ping().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_former_room_mate_stops_being_watched() -> anyhow::Result<()> {
    let node = Node::start(options()).await?;
    with_log(&node, async {
        let (mut alice, _) = Client::user(&node, Encoding::Json, "alice").await?;
        let (mut bob, _) = Client::user(&node, Encoding::MessagePack, "bob").await?;
        let room = alice.create_room("only shared room").await?;
        bob.join(&room).await?;
        wait_listed_online(&mut alice, &["bob"]).await?;
        let (users, hidden) = watch(&mut alice, &["bob"]).await?;
        check_presence(&users[0], "bob", Online, None)?;
        ensure!(hidden.is_empty(), "{hidden:?}");
        let known = users[0].clone();

        // Bob leaves their only shared room: alice sees the leave, and from then on nothing of
        // bob's presence.
        let req = bob.next_req();
        match bob.request(ClientFrame::Leave { req, room: room.clone() }).await? {
            ServerFrame::Ok { .. } => {}
            other => bail!("leave: {other:?}"),
        }
        alice
            .recv_matching(
                |f| matches!(f, ServerFrame::Message { entry, .. } if entry.kind == protocol::EntryKind::Leave),
            )
            .await?;
        // The watch is re-checked after the leave is delivered; give that a moment, then change.
        // Real time: the re-check shows no sign, and a fresh watch_presence would replace the watch.
        tokio::time::sleep(RECHECK).await;
        set_presence(&mut bob, Away, Some("gone")).await?;
        no_change(&mut alice, "bob", &known, QUIET).await.context("bob's presence still reaches alice")?;
        let (users, hidden) = watch(&mut alice, &["bob"]).await?;
        ensure!(users.is_empty() && hidden == ["bob"], "after the leave: {users:?} hidden {hidden:?}");
        Ok(())
    })
    .await
}
