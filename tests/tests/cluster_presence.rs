//! Presence, typing and receipts across a cluster of real processes: a user's presence is
//! aggregated over every node they are connected to and replicated to every node's watchers;
//! a node's death turns its users offline elsewhere; typing and receipts reach recipients on
//! whatever node they are; a non-member's presence never leaks across nodes.
//!
//! Nodes run with short presence timings (grace 300 ms, flush 50 ms, typing ttl 800 ms) and the
//! harness's default heartbeats (250 ms / 2 s). Waits are generous; timings are only checked
//! from below.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use protocol::{PresenceState, ReceiptKind, UserPresence};
use tests::cluster::{Cluster, ClusterOptions};
use tests::presence::*;
use tests::{Client, ClientFrame, Encoding, ErrorCode, ServerFrame};

use PresenceState::{Away, Offline, Online};

const QUIET: Duration = Duration::from_millis(1000);
const TYPING_TTL_MS: u64 = 800;

fn options() -> ClusterOptions {
    let env = [("PRESENCE__GRACE_MS", "300"), ("PRESENCE__FLUSH_MS", "50"), ("PRESENCE__TYPING_TTL_MS", "800")];
    ClusterOptions {
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..ClusterOptions::default()
    }
}

/// Register (or log in) `name` on node `k` and authenticate there.
async fn user_at(cluster: &Cluster, k: usize, encoding: Encoding, name: &str) -> anyhow::Result<(Client, String)> {
    let mut client = Client::connect_url(&cluster.node(k).ws_url(), encoding).await?;
    let token = client.register_and_login(name, &format!("password-of-{name}")).await?;
    client.authenticate(&token, None).await?;
    Ok((client, token))
}

/// Another connection of a user, on node `k`.
async fn connect_at(cluster: &Cluster, k: usize, encoding: Encoding, token: &str) -> anyhow::Result<Client> {
    let mut client = Client::connect_url(&cluster.node(k).ws_url(), encoding).await?;
    client.authenticate(token, None).await?;
    Ok(client)
}

/// Create a room, retrying while the cluster is still settling room ownership.
async fn create_room(client: &mut Client, name: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let req = client.next_req();
        match client.request(ClientFrame::CreateRoom { req, name: name.into(), private: false }).await? {
            ServerFrame::Room { room, .. } => return Ok(room.id),
            ServerFrame::Error { code: ErrorCode::Unavailable, .. } if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => bail!("create_room: {other:?}"),
        }
    }
}

async fn join(client: &mut Client, room: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let req = client.next_req();
        match client.request(ClientFrame::Join { req, room: room.into() }).await? {
            ServerFrame::Room { .. } => return Ok(()),
            ServerFrame::Error { code: ErrorCode::Unavailable, .. } if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => bail!("join {room}: {other:?}"),
        }
    }
}

async fn say(client: &mut Client, room: &str, id: &str, body: &str) -> anyhow::Result<u64> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let req = client.next_req();
        match client.request(ClientFrame::send(req, room, id, body)).await? {
            ServerFrame::Ack { seq, .. } => return Ok(seq),
            ServerFrame::Error { code: ErrorCode::Unavailable, .. } if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => bail!("send {id}: {other:?}"),
        }
    }
}

/// Watch `users` and wait until each is online (on another node, a fresh connection reaches
/// the watcher's node within a flush interval or so). Returns what the watcher knows now.
async fn watch_until_online(client: &mut Client, users: &[&str]) -> anyhow::Result<Vec<UserPresence>> {
    let (mut list, hidden) = watch(client, users).await?;
    ensure!(hidden.is_empty() && list.len() == users.len(), "watching {users:?}: {list:?}, hidden {hidden:?}");
    for (i, user) in users.iter().enumerate() {
        ensure!(list[i].user == *user, "presence_list order: {list:?}");
        while list[i].state != Online {
            list[i] = next_change(client, user, &list[i].clone())
                .await
                .with_context(|| format!("{user} never came online for {:?}", client.user))?;
        }
    }
    Ok(list)
}

/// Presence batches node `k` has handed to other nodes so far (each batch counts once per node
/// that took it).
async fn batches_sent(cluster: &Cluster, k: usize) -> anyhow::Result<f64> {
    Ok(metric(cluster.node(k), "palaver_presence_batches_sent_total").await?.unwrap_or(0.0))
}

/// Wait until node `k` has handed other nodes `at_least` presence batches in all: what its
/// table held before its latest one is on its way to them, ahead of anything it sends later.
async fn wait_batches_sent(cluster: &Cluster, k: usize, at_least: f64) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let sent = batches_sent(cluster, k).await?;
        if sent >= at_least {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "n{}: {sent} presence batches sent, expected {at_least}", k + 1);
        tokio::time::sleep(POLL).await;
    }
}

async fn next_frame(
    client: &mut Client,
    what: &str,
    wanted: impl Fn(&ServerFrame) -> bool,
) -> anyhow::Result<ServerFrame> {
    client
        .recv_matching_within(DEADLINE, wanted)
        .await?
        .with_context(|| format!("{:?}: no {what} within {DEADLINE:?}", client.user))
}

/// Run a test body against a cluster; on failure, add every node's log tail.
async fn with_logs<T>(
    cluster: &Cluster,
    body: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    body.await.map_err(|err| anyhow!("{err:#}\n{}", cluster.logs()))
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_on_one_node_is_seen_on_another() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(2, options()).await?;
    with_logs(&cluster, async {
        let (mut alice, _) = user_at(&cluster, 0, Encoding::Json, "alice").await?;
        let (mut bob, _) = user_at(&cluster, 1, Encoding::MessagePack, "bob").await?;
        let room = create_room(&mut alice, "across").await?;
        join(&mut bob, &room).await?;

        let known = watch_until_online(&mut bob, &["alice"]).await?;
        check_presence(&known[0], "alice", Online, None)?;
        set_presence(&mut alice, Away, Some("in a meeting")).await?;
        let away = next_change(&mut bob, "alice", &known[0]).await?;
        check_presence(&away, "alice", Away, Some("in a meeting")).context("bob on n2 after alice on n1 went away")?;
        // A fresh list on n2 agrees.
        let (list, _) = watch(&mut bob, &["alice"]).await?;
        check_presence(&list[0], "alice", Away, Some("in a meeting"))?;

        let closed_ms = now_ms();
        alice.close().await?;
        let offline = next_change(&mut bob, "alice", &away).await?;
        check_offline(&offline, "alice", closed_ms).context("bob on n2 after alice's only connection (n1) closed")?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_two_nodes_stays_online_until_both_connections_go() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(3, options()).await?;
    with_logs(&cluster, async {
        // alice first on n2 only; carol watches from n1, bob from n3.
        let (mut alice_n2, token) = user_at(&cluster, 1, Encoding::Json, "alice").await?;
        let (mut carol, _) = user_at(&cluster, 0, Encoding::MessagePack, "carol").await?;
        let (mut bob, _) = user_at(&cluster, 2, Encoding::Json, "bob").await?;
        let room = create_room(&mut alice_n2, "two devices").await?;
        join(&mut carol, &room).await?;
        join(&mut bob, &room).await?;
        // Both watchers' nodes know alice through n2's records.
        let carol_knows = watch_until_online(&mut carol, &["alice"]).await?.remove(0);
        let bob_knows = watch_until_online(&mut bob, &["alice"]).await?.remove(0);

        // A second device on n1, kept until n1 has published it (a batch to each other node since
        // it connected); then that one goes. n2's connection keeps her online, on n1 (which has
        // no connection of hers left) and on n3 alike.
        let before = batches_sent(&cluster, 0).await?;
        let alice_n1 = connect_at(&cluster, 0, Encoding::MessagePack, &token).await?;
        wait_batches_sent(&cluster, 0, before + 2.0).await.context("n1 publishing alice's second device")?;
        alice_n1.close().await?;
        no_change(&mut carol, "alice", &carol_knows, Duration::from_millis(3_000))
            .await
            .context("carol (n1): alice still has a connection on n2")?;
        no_change(&mut bob, "alice", &bob_knows, Duration::from_millis(200))
            .await
            .context("bob (n3): alice still has a connection on n2")?;
        for client in [&mut carol, &mut bob] {
            let (list, _) = watch(client, &["alice"]).await?;
            check_presence(&list[0], "alice", Online, None)
                .with_context(|| format!("{:?}'s list while alice is on n2", client.user))?;
        }

        // Her last connection goes: offline everywhere.
        let closed_ms = now_ms();
        alice_n2.close().await?;
        check_offline(&next_change(&mut carol, "alice", &carol_knows).await?, "alice", closed_ms)
            .context("carol (n1)")?;
        check_offline(&next_change(&mut bob, "alice", &bob_knows).await?, "alice", closed_ms).context("bob (n3)")?;
        Ok(())
    })
    .await
}

/// [`options`] with another grace period.
fn options_with_grace(grace_ms: u64) -> ClusterOptions {
    let mut options = options();
    options.env.retain(|(key, _)| key != "PRESENCE__GRACE_MS");
    options.env.push(("PRESENCE__GRACE_MS".into(), grace_ms.to_string()));
    options
}

/// `watcher` watches `user` and is told `state` with `status` by the list.
async fn listed(watcher: &mut Client, user: &str, state: PresenceState, status: Option<&str>) -> anyhow::Result<()> {
    let (list, _) = watch(watcher, &[user]).await?;
    check_presence(&list[0], user, state, status).with_context(|| format!("{:?}'s fresh list", watcher.user))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn away_and_status_follow_the_user_to_a_second_node() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(2, options()).await?;
    with_logs(&cluster, async {
        let (mut dave, token) = user_at(&cluster, 0, Encoding::Json, "dave").await?;
        let (mut bob, _) = user_at(&cluster, 1, Encoding::MessagePack, "bob").await?;
        let room = create_room(&mut dave, "commute").await?;
        join(&mut bob, &room).await?;
        let known = watch_until_online(&mut bob, &["dave"]).await?.remove(0);
        set_presence(&mut dave, Away, Some("on a train")).await?;
        let away = next_change(&mut bob, "dave", &known).await?;
        check_presence(&away, "dave", Away, Some("on a train"))?;

        // A second connection, on bob's node: no one is told anything, and both nodes still
        // list him away with his status.
        let mut dave_n2 = connect_at(&cluster, 1, Encoding::MessagePack, &token).await?;
        no_push(&mut bob, "dave", QUIET).await.context("dave's second connection, on n2")?;
        listed(&mut bob, "dave", Away, Some("on a train")).await?;
        listed(&mut dave_n2, "dave", Away, Some("on a train")).await?;

        // The first connection goes: nothing changes either, during the grace or after it.
        dave.close().await?;
        no_push(&mut bob, "dave", QUIET).await.context("dave closed his connection on n1, kept n2's")?;
        listed(&mut bob, "dave", Away, Some("on a train")).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_kept_after_the_grace_follows_the_user_to_another_node() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(2, options()).await?;
    with_logs(&cluster, async {
        let (mut dave, token) = user_at(&cluster, 0, Encoding::Json, "dave").await?;
        let (mut bob, _) = user_at(&cluster, 1, Encoding::MessagePack, "bob").await?;
        let room = create_room(&mut dave, "commute").await?;
        join(&mut bob, &room).await?;
        let known = watch_until_online(&mut bob, &["dave"]).await?.remove(0);
        set_presence(&mut dave, Online, Some("on a bus")).await?;
        let on_a_bus = next_change(&mut bob, "dave", &known).await?;
        check_presence(&on_a_bus, "dave", Online, Some("on a bus"))?;

        let closed_ms = now_ms();
        dave.close().await?;
        let offline = next_change(&mut bob, "dave", &on_a_bus).await?;
        check_offline(&offline, "dave", closed_ms)?;
        ensure!(offline.status.as_deref() == Some("on a bus"), "offline keeps the status: {offline:?}");

        // Back, on n2 only.
        let _dave_n2 = connect_at(&cluster, 1, Encoding::MessagePack, &token).await?;
        let back = next_change(&mut bob, "dave", &offline).await?;
        check_presence(&back, "dave", Online, Some("on a bus")).context("dave back on n2")?;
        no_push(&mut bob, "dave", QUIET).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_on_another_node_within_the_grace_is_seen_by_no_one() -> anyhow::Result<()> {
    const GRACE_MS: u64 = 3_000;
    let cluster = Cluster::start_with(2, options_with_grace(GRACE_MS)).await?;
    with_logs(&cluster, async {
        let (mut alice, token) = user_at(&cluster, 0, Encoding::Json, "alice").await?;
        let (mut bob, _) = user_at(&cluster, 1, Encoding::MessagePack, "bob").await?;
        let (mut carol, _) = user_at(&cluster, 0, Encoding::MessagePack, "carol").await?;
        let room = create_room(&mut alice, "flaky wifi").await?;
        join(&mut bob, &room).await?;
        join(&mut carol, &room).await?;
        set_presence(&mut alice, Online, Some("back soon")).await?;
        for watcher in [&mut bob, &mut carol] {
            let mut known = watch_until_online(watcher, &["alice"]).await?.remove(0);
            while known.status.is_none() {
                known = next_change(watcher, "alice", &known).await?;
            }
            check_presence(&known, "alice", Online, Some("back soon"))?;
        }

        // Drop on n1, come back on n2 at once.
        alice.close().await?;
        let closed_at = Instant::now();
        let _alice_n2 = connect_at(&cluster, 1, Encoding::Json, &token).await?;
        let took = closed_at.elapsed();
        ensure!(took < Duration::from_millis(GRACE_MS / 2), "the reconnect took {took:?}: too slow for the grace");

        // Nothing is pushed, then or after n1's grace ran out.
        no_push(&mut bob, "alice", Duration::from_millis(GRACE_MS) + QUIET).await.context("bob on n2")?;
        no_push(&mut carol, "alice", Duration::from_millis(200)).await.context("carol on n1")?;
        listed(&mut bob, "alice", Online, Some("back soon")).await?;
        listed(&mut carol, "alice", Online, Some("back soon")).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_survives_every_node_restarting() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(2, options()).await?;
    let result = async {
        let (mut dave, _) = user_at(&cluster, 0, Encoding::Json, "dave").await?;
        let (mut bob, _) = user_at(&cluster, 1, Encoding::MessagePack, "bob").await?;
        let room = create_room(&mut dave, "commute").await?;
        join(&mut bob, &room).await?;
        let known = watch_until_online(&mut bob, &["dave"]).await?.remove(0);
        set_presence(&mut dave, Away, Some("on a train")).await?;
        check_presence(&next_change(&mut bob, "dave", &known).await?, "dave", Away, Some("on a train"))?;
        drop((dave, bob));
        // The status reaches the store just after the `ok` (docs/PROTOCOL.md): a node killed
        // before that forgets it, so wait for the node to say it is stored.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cluster.node(0).log().contains(r#"presence note stored user="dave""#) {
            ensure!(Instant::now() < deadline, "the status was never stored");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Every node dies; two new ones open the same store and remember nothing.
        cluster.kill(0).await?;
        cluster.kill(1).await?;
        let first = cluster.add_node().await?;
        let second = cluster.add_node().await?;
        let (_dave, _) = user_at(&cluster, first, Encoding::Json, "dave").await?;
        let (mut bob, _) = user_at(&cluster, second, Encoding::MessagePack, "bob").await?;
        // Back after being offline: online, not away, with the status he set.
        let mut seen = watch_until_online(&mut bob, &["dave"]).await?.remove(0);
        let deadline = Instant::now() + Duration::from_secs(2);
        while seen.status.is_none() && Instant::now() < deadline {
            match client_change(&mut bob, "dave", &seen, deadline).await? {
                Some(next) => seen = next,
                None => break,
            }
        }
        check_presence(&seen, "dave", Online, Some("on a train")).context("dave after every node restarted")?;
        listed(&mut bob, "dave", Online, Some("on a train")).await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.map_err(|err| anyhow!("{err:#}\n{}", cluster.logs()))
}

/// The next presence push for `user` other than `known` before `deadline`, if any.
async fn client_change(
    client: &mut Client,
    user: &str,
    known: &UserPresence,
    deadline: Instant,
) -> anyhow::Result<Option<UserPresence>> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.recv_matching_within(left, presence_of(user)).await? {
            Some(ServerFrame::Presence { presence }) if presence == *known => continue,
            Some(ServerFrame::Presence { presence }) => return Ok(Some(presence)),
            Some(other) => bail!("not a presence frame: {other:?}"),
            None => return Ok(None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_turns_its_users_offline_elsewhere() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(3, options()).await?;
    let result = async {
        // alice only on n3; dave on n3 and n1; bob watches from n2.
        let (mut bob, _) = user_at(&cluster, 1, Encoding::Json, "bob").await?;
        let (mut alice, _) = user_at(&cluster, 2, Encoding::MessagePack, "alice").await?;
        let (mut dave_n3, dave_token) = user_at(&cluster, 2, Encoding::Json, "dave").await?;
        let mut dave_n1 = connect_at(&cluster, 0, Encoding::MessagePack, &dave_token).await?;
        let room = create_room(&mut bob, "watchers").await?;
        join(&mut alice, &room).await?;
        join(&mut dave_n3, &room).await?;
        let known = watch_until_online(&mut bob, &["alice", "dave"]).await?;
        // n1's record of dave spreads too: dave is n1's only user, so a batch from n1 to each
        // other node carries his connection.
        wait_batches_sent(&cluster, 0, 2.0).await.context("n1 publishing dave's connection")?;

        let killed_ms = now_ms();
        let killed_at = Instant::now();
        cluster.kill(2).await?;
        drop((alice, dave_n3));
        let offline = next_change(&mut bob, "alice", &known[0]).await.context("alice after kill -9 of n3")?;
        let took = killed_at.elapsed();
        check_offline(&offline, "alice", killed_ms)?;
        println!(
            "kill -9 of n3 → alice offline on n2 after {took:?} (heartbeat timeout {} ms)",
            cluster.options.heartbeat_timeout_ms
        );
        // dave still has n1: no change, and he is listed online.
        no_change(&mut bob, "dave", &known[1], Duration::from_millis(2_000))
            .await
            .context("dave still has a connection on n1")?;
        let (list, _) = watch(&mut bob, &["alice", "dave"]).await?;
        ensure!(list[0].state == Offline && list[0].last_seen == offline.last_seen, "alice in a fresh list: {list:?}");
        check_presence(&list[1], "dave", Online, None)?;
        dave_n1.ping().await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.map_err(|err| anyhow!("{err:#}\n{}", cluster.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_receipts_cross_nodes() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(2, options()).await?;
    with_logs(&cluster, async {
        let (mut alice, _) = user_at(&cluster, 0, Encoding::Json, "alice").await?;
        let (mut bob, bob_token) = user_at(&cluster, 1, Encoding::MessagePack, "bob").await?;
        let room = create_room(&mut alice, "typing").await?;
        join(&mut bob, &room).await?;
        // n1's presence table knows bob's connection on n2 (pushes are routed by it, and it is
        // replicated within a flush interval or so) before bob also connects on n1.
        watch_until_online(&mut alice, &["bob"]).await?;
        let mut bob_n1 = connect_at(&cluster, 0, Encoding::Json, &bob_token).await?;

        // Typing on n1 reaches bob on n2 (and on n1), then lapses there.
        let sent_at = Instant::now();
        send_typing(&mut alice, &room, true).await?;
        let active =
            ServerFrame::Typing { room: room.clone(), user: "alice".into(), active: true, expires_in_ms: TYPING_TTL_MS };
        for client in [&mut bob, &mut bob_n1] {
            let frame = next_frame(client, "typing", typing_in(&room)).await?;
            ensure!(frame == active, "{:?}: expected {active:?}, got {frame:?}", client.user);
        }
        for client in [&mut bob, &mut bob_n1] {
            let frame = next_frame(client, "typing lapse", typing_in(&room)).await?;
            ensure!(
                matches!(&frame, ServerFrame::Typing { room: r, user, active: false, .. } if *r == room && user == "alice"),
                "expected alice's typing to lapse (active: false), got {frame:?}"
            );
        }
        let lapsed = sent_at.elapsed();
        ensure!(lapsed >= Duration::from_millis(TYPING_TTL_MS - 100), "lapsed after {lapsed:?}, before the ttl");
        none_arrives(&mut alice, Duration::from_millis(200), "its own typing", |f| matches!(f, ServerFrame::Typing { .. }))
            .await?;

        // Receipts: alice (n1) writes; bob's connection on n2 gets it → delivered to alice.
        let receipt_in = |f: &ServerFrame| matches!(f, ServerFrame::Receipt { room: r, .. } if *r == room);
        let s1 = say(&mut alice, &room, "m1", "hello across").await?;
        bob.wait_for_message(&room, "m1").await?;
        let frame = next_frame(&mut alice, "delivered receipt", receipt_in).await?;
        let expected = ServerFrame::Receipt { room: room.clone(), user: "bob".into(), kind: ReceiptKind::Delivered, seq: s1 };
        ensure!(frame == expected, "expected {expected:?}, got {frame:?}");
        // Bob reads on n2 → read receipt to alice on n1.
        let req = bob.next_req();
        match bob.request(ClientFrame::MarkRead { req, room: room.clone(), seq: s1 }).await? {
            ServerFrame::Ok { .. } => {}
            other => bail!("mark_read: {other:?}"),
        }
        let frame = next_frame(&mut alice, "read receipt", |f| {
            matches!(f, ServerFrame::Receipt { room: r, kind: ReceiptKind::Read, .. } if *r == room)
        })
        .await?;
        let expected = ServerFrame::Receipt { room: room.clone(), user: "bob".into(), kind: ReceiptKind::Read, seq: s1 };
        ensure!(frame == expected, "expected {expected:?}, got {frame:?}");
        // Any receipt alice got in between is a delivered one for bob at s1 (one per device).
        for frame in alice.discard(receipt_in) {
            ensure!(
                matches!(&frame, ServerFrame::Receipt { user, kind: ReceiptKind::Delivered, seq, .. } if user == "bob" && *seq == s1),
                "unexpected receipt: {frame:?}"
            );
        }

        // The other way: bob writes on n2; alice on n1 gets it → both of bob's connections are told.
        let s2 = say(&mut bob, &room, "m2", "hello back").await?;
        alice.wait_for_message(&room, "m2").await?;
        let expected =
            ServerFrame::Receipt { room: room.clone(), user: "alice".into(), kind: ReceiptKind::Delivered, seq: s2 };
        for client in [&mut bob, &mut bob_n1] {
            let frame = next_frame(client, "delivered receipt", |f| {
                matches!(f, ServerFrame::Receipt { room: r, user, .. } if *r == room && user == "alice")
            })
            .await?;
            ensure!(frame == expected, "{:?}: expected {expected:?}, got {frame:?}", client.user);
        }

        // The metrics say presence batches and ephemeral pushes crossed between the nodes, and
        // each node's table holds both users (the gauges are refreshed about once a second).
        let deadline = Instant::now() + DEADLINE;
        for k in 0..2 {
            loop {
                let (_, metrics) = cluster.node(k).admin_get("/metrics").await?;
                let value = |name: &str| {
                    metrics
                        .lines()
                        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
                        .and_then(|v| v.trim().parse::<f64>().ok())
                };
                let batches = value("palaver_presence_batches_sent_total");
                let records = value("palaver_presence_records_sent_total");
                let pushes = value("palaver_ephemeral_pushes_sent_total");
                let users = value("palaver_presence_users");
                let online = value("palaver_presence_online_users");
                let snapshots = value("palaver_presence_snapshots_sent_total");
                let what = format!(
                    "n{}: batches {batches:?} records {records:?} snapshots {snapshots:?} pushes {pushes:?} users {users:?} online {online:?}",
                    k + 1
                );
                ensure!(snapshots.is_some(), "{what}");
                let settled = batches.is_some_and(|b| b >= 1.0)
                    && records.is_some_and(|r| r >= batches.unwrap_or(0.0))
                    && pushes.is_some_and(|p| p >= 1.0)
                    && users.is_some_and(|u| u >= 2.0)
                    && online.is_some_and(|o| o >= 2.0);
                if settled {
                    break;
                }
                ensure!(Instant::now() < deadline, "{what}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_members_presence_is_never_revealed_across_nodes() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(2, options()).await?;
    with_logs(&cluster, async {
        let (mut alice, _) = user_at(&cluster, 0, Encoding::Json, "alice").await?;
        let (mut bob, _) = user_at(&cluster, 0, Encoding::MessagePack, "bob").await?;
        let (mut carol, _) = user_at(&cluster, 1, Encoding::Json, "carol").await?;
        let room = create_room(&mut alice, "no carol").await?;
        join(&mut bob, &room).await?;
        create_room(&mut carol, "carol's own").await?;
        // Carol is listed online to herself (a fresh connection listed at once is the
        // single-node tests' job).
        wait_listed_online(&mut carol, &["carol"]).await?;

        let (users, hidden) = watch(&mut carol, &["alice", "nosuchuser", "carol"]).await?;
        ensure!(users.len() == 1, "carol on n2 sees only herself: {users:?}");
        check_presence(&users[0], "carol", Online, None)?;
        ensure!(hidden == ["alice", "nosuchuser"], "hidden: {hidden:?}");
        let bob_knows = watch_until_online(&mut bob, &["alice"]).await?.remove(0);

        // Away, typing, offline: bob hears of each, carol of none.
        set_presence(&mut alice, Away, Some("secret")).await?;
        let bob_knows = next_change(&mut bob, "alice", &bob_knows).await?;
        check_presence(&bob_knows, "alice", Away, Some("secret"))?;
        send_typing(&mut alice, &room, true).await?;
        next_frame(&mut bob, "typing", typing_in(&room)).await?;
        let closed_ms = now_ms();
        alice.close().await?;
        check_offline(&next_change(&mut bob, "alice", &bob_knows).await?, "alice", closed_ms)?;
        none_arrives(&mut carol, QUIET, "news of alice", |f| {
            matches!(f, ServerFrame::Presence { .. } | ServerFrame::Typing { .. } | ServerFrame::Receipt { .. })
        })
        .await?;

        // Nor can she ask n2 about the room.
        cannot_read_room(&mut carol, &room).await?;
        let req = carol.next_req();
        refused(&mut carol, ClientFrame::Typing { req, room: room.clone(), active: true }, ErrorCode::NotMember)
            .await?;
        let (users, hidden) = watch(&mut carol, &["alice"]).await?;
        ensure!(users.is_empty() && hidden == ["alice"], "after all that: {users:?} {hidden:?}");
        Ok(())
    })
    .await
}
