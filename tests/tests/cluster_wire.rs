//! Bad inter-node messages over a real node link: a node of a real two-node cluster receives
//! messages that are not palaver's wire format, from a peer that knows the cookie, and counts
//! (`palaver_cluster_invalid_messages_total`) and logs every one, never panics, keeps the link,
//! and goes on serving. The peer is this test process: it runs a ractor_cluster `NodeServer` of
//! its own ("intruder-with-cookie"), links to n1, finds n1's router through the mirrored
//! process group `palaver.router.n1`, and casts it raw bytes: empty, wrong version bytes,
//! garbage, a truncated heartbeat, an unknown message kind, deliveries and pushes that do not
//! decode, a well-formed push of a frame nodes may not push (pong), a deeply nested value and a
//! 1 MB random blob. The intruder sends no heartbeats, so it must never enter n1's live set.
//!
//! Its own test binary: ractor's process groups (and node server) are global to a process.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::cluster::wire::{self, Heartbeat, RouterMessage, WIRE_VERSION};
use anyhow::{bail, ensure, Context};
use ractor::message::SerializedMessage;
use ractor::{Actor, ActorCell};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage};
use serde::Serialize;
use tests::cluster::{Cluster, ClusterOptions, TEST_COOKIE};
use tests::{Client, Encoding, ServerFrame};

const INTRUDER: &str = "intruder-with-cookie";
const METRIC: &str = "palaver_cluster_invalid_messages_total";
const LOGGED: &str = "dropped an inter-node message that did not decode";
/// Generous: a noisy 2-core machine.
const PATIENCE: Duration = Duration::from_secs(20);

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// What the intruder's node server saw happen to its links.
#[derive(Clone, Default)]
struct Links(Arc<Mutex<Vec<String>>>);

impl Links {
    fn record(&self, what: &str, ses: &NodeServerSessionInformation) {
        let peer = ses.peer_name.as_ref().map_or("-".to_string(), |name| name.name.clone());
        self.0.lock().unwrap().push(format!("{what} {peer} ({})", ses.peer_addr));
    }

    fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn closed(&self) -> bool {
        self.events().iter().any(|event| event.starts_with("closed"))
    }

    /// Fail clearly if a link of the intruder closed (n1 refused or dropped it).
    fn ensure_open(&self, when: &str) -> anyhow::Result<()> {
        if self.closed() {
            let events = self.events();
            println!("the intruder's link to n1 was closed {when}: {events:?}");
            bail!("n1 refused or closed the intruder's link {when} (link events: {events:?})");
        }
        Ok(())
    }
}

struct LinkEvents(Links);

impl NodeEventSubscription for LinkEvents {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        self.0.record("opened", &ses);
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        self.0.record("closed", &ses);
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        self.0.record("authenticated", &ses);
    }

    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        self.0.record("ready", &ses);
    }
}

/// A bad message, and what n1's log says about it (a substring of the reason).
struct Bad {
    what: &'static str,
    bytes: Vec<u8>,
    reason: String,
}

/// A message kind a newer node might send: valid MessagePack, unknown to this version.
#[derive(Serialize)]
enum FutureEnvelope {
    Gossip { rumour: String },
}

fn heartbeat() -> RouterMessage {
    RouterMessage::Heartbeat(Heartbeat {
        from: INTRUDER.into(),
        incarnation: 7,
        addr: "127.0.0.1:1".into(),
        live: vec![INTRUDER.into()],
        known: vec![(INTRUDER.into(), "127.0.0.1:1".into())],
        leaving: false,
        presence_seq: 0,
        forgotten: vec![],
        delivers_runs: false,
        presence_applied: vec![],
        targeted: false,
    })
}

/// Pseudo-random bytes (xorshift64*), seeded so a failure can be replayed.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

fn bad_messages(seed: u64) -> Vec<Bad> {
    let undecodable = |len: usize| format!("undecodable message of {len} bytes");
    let mut out = Vec::new();
    let mut add = |what: &'static str, bytes: Vec<u8>, reason: Option<String>| {
        let reason = reason.unwrap_or_else(|| undecodable(bytes.len()));
        out.push(Bad { what, bytes, reason });
    };
    add("an empty message", vec![], Some("empty message".into()));
    add("version byte 0 and garbage", vec![0, 0xde, 0xad], Some("unsupported wire version 0".into()));
    let mut newer = wire::encode(&heartbeat());
    newer[0] = WIRE_VERSION + 1;
    add(
        "a heartbeat under a newer version byte",
        newer,
        Some(format!("unsupported wire version {}", WIRE_VERSION + 1)),
    );
    add("the version byte alone", vec![WIRE_VERSION], None);
    add("the version byte and a reserved MessagePack byte", vec![WIRE_VERSION, 0xc1], None);
    let mut garbage = vec![WIRE_VERSION];
    garbage.extend_from_slice(b"this is not MessagePack, just some text that ends abruptly");
    add("the version byte and text", garbage, None);
    let mut truncated = wire::encode(&heartbeat());
    truncated.truncate(truncated.len() / 2);
    add("a truncated heartbeat", truncated, None);
    let mut future = vec![WIRE_VERSION];
    rmp_serde::encode::write_named(&mut future, &FutureEnvelope::Gossip { rumour: "psst".into() }).unwrap();
    add("an unknown message kind", future, None);
    add(
        "a delivery whose entry does not decode",
        wire::encode(&RouterMessage::Deliver(vec![0x93, 1, 2, 3].into())),
        Some("delivery:".into()),
    );
    add(
        "a push that does not decode",
        wire::encode(&RouterMessage::Push(vec![0xc1, 0xc1].into())),
        Some("push:".into()),
    );
    let pong = wire::encode_push(&["alice".to_string()], &ServerFrame::Pong { req: 1 });
    add(
        "a well-formed push of a pong (nodes may push only typing, receipts and reaction counts)",
        wire::encode(&RouterMessage::Push(pong)),
        Some("other than typing, receipt or reactions".into()),
    );
    let mut blob = vec![WIRE_VERSION];
    blob.extend(random_bytes(seed, 1 << 20));
    add("the version byte and 1 MiB of random bytes", blob, None);
    out
}

/// What n1's router refuses (it decodes deliveries and pushes a second time).
fn refused(bytes: &[u8]) -> bool {
    match wire::decode(bytes) {
        RouterMessage::Invalid(_) => true,
        RouterMessage::Deliver(inner) => wire::decode_delivery(&inner).is_err(),
        RouterMessage::Push(inner) => wire::decode_push(&inner).is_err(),
        _ => false,
    }
}

/// `{"Heartbeat": {"zzz": [[[[…]]]]}}`, `depth` arrays deep: decoding skips the unknown field
/// recursively (rmp_serde stops at 1024 levels).
fn deeply_nested(depth: usize) -> Bad {
    let mut bytes = vec![WIRE_VERSION, 0x81, 0xa9];
    bytes.extend_from_slice(b"Heartbeat");
    bytes.extend_from_slice(&[0x81, 0xa3, b'z', b'z', b'z']);
    bytes.resize(bytes.len() + depth, 0x91);
    bytes.push(0xc0);
    let reason = format!("undecodable message of {} bytes", bytes.len());
    Bad { what: "a heartbeat with a 100 000-deep nested unknown field", bytes, reason }
}

fn cast(router: &ActorCell, bytes: Vec<u8>) -> anyhow::Result<()> {
    router
        .send_serialized(SerializedMessage::Cast { variant: String::new(), args: bytes, metadata: None })
        .map_err(|err| anyhow::anyhow!("casting to n1's router: {err}"))
}

/// Wait until n1's counter rose to at least `target`; returns it. Fails clearly if n1 died or
/// closed the link meanwhile (`after` says after what).
async fn wait_for_count(cluster: &mut Cluster, target: u64, links: &Links, after: &str) -> anyhow::Result<u64> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        ensure_alive(cluster, after)?;
        let (code, body) = match cluster.node(0).admin_get("/metrics").await {
            Ok(answer) => answer,
            Err(err) => {
                // Perhaps it is dying: say so rather than "connection refused".
                tokio::time::sleep(Duration::from_secs(1)).await;
                ensure_alive(cluster, after)?;
                return Err(err.context("GET /metrics on n1"));
            }
        };
        ensure!(code == 200, "/metrics answered {code}");
        let count = metric(&body, METRIC);
        if count >= target {
            return Ok(count);
        }
        if links.closed() {
            // Perhaps n1 is dying: say so rather than only "link closed".
            tokio::time::sleep(Duration::from_secs(1)).await;
            ensure_alive(cluster, after)?;
            links.ensure_open(after)?;
        }
        ensure!(
            Instant::now() < deadline,
            "{METRIC} on n1 is {count} {PATIENCE:?} {after}, expected at least {target}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fail with what n1's log says if its process is gone.
fn ensure_alive(cluster: &mut Cluster, after: &str) -> anyhow::Result<()> {
    let n1 = &mut cluster.members[0].as_mut().context("n1 gone")?.node;
    if n1.is_running() {
        return Ok(());
    }
    let log = n1.log();
    let last: Vec<&str> = log.lines().filter(|line| !line.is_empty()).collect();
    let last = last[last.len().saturating_sub(3)..].join("\n");
    println!("n1 died {after}; the end of its log:\n{last}");
    bail!("n1 died {after} (the end of its log: {last})")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inter_node_messages_are_counted_logged_and_survived() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(2, ClusterOptions { proxied: false, ..Default::default() }).await?;
    let result = intrude(&mut cluster).await;
    result.map_err(|err| anyhow::anyhow!("{err:#}\n{}", cluster.logs()))
}

async fn intrude(cluster: &mut Cluster) -> anyhow::Result<()> {
    // Not proxied: what n1 advertises is its own cluster listener.
    let n1_cluster = cluster.member(0).advertise.clone();
    let (_, before) = cluster.node(0).admin_get("/metrics").await?;
    let before = metric(&before, METRIC);

    // The intruder: a node server of this process, with the cluster's cookie.
    let server = NodeServer::new(
        0,
        TEST_COOKIE.into(),
        INTRUDER.into(),
        "localhost".into(),
        None,
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(std::net::Ipv4Addr::LOCALHOST.into());
    let (server, _) = Actor::spawn(None, server, ()).await.context("starting the intruder's node server")?;
    let links = Links::default();
    server
        .cast(NodeServerMessage::SubscribeToEvents {
            id: "test".into(),
            subscription: Box::new(LinkEvents(links.clone())),
        })
        .map_err(|err| anyhow::anyhow!("subscribing: {err}"))?;
    ractor_cluster::client_connect(&server, n1_cluster.as_str())
        .await
        .map_err(|err| anyhow::anyhow!("connecting to n1 at {n1_cluster}: {err}"))?;

    // n1's router shows up here once the link is authenticated and process groups synced.
    let group = ::cluster::router_group("n1");
    let deadline = Instant::now() + PATIENCE;
    let router = loop {
        if let Some(cell) = ractor::pg::get_members(&group).into_iter().find(|cell| !cell.get_id().is_local()) {
            break cell;
        }
        links.ensure_open("before n1's router became reachable")?;
        if Instant::now() > deadline {
            bail!(
                "n1's router never appeared in `{group}` here within {PATIENCE:?} (link events: {:?})",
                links.events()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "linked to n1 at {n1_cluster} as {INTRUDER}; n1's router is {:?}; link events {:?}",
        router.get_id(),
        links.events()
    );

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
    println!("random blob seed {seed}");
    let mut bad = bad_messages(seed);
    for message in &bad {
        assert!(refused(&message.bytes), "{} decodes as a valid message", message.what);
        println!("sending {} ({} bytes)", message.what, message.bytes.len());
        cast(&router, message.bytes.clone())?;
    }
    // Casts counted so far by n1 (a rise of at least that much is expected; extra counts are fine).
    let mut sent = bad.len() as u64;
    let count = wait_for_count(cluster, before + sent, &links, "after the bad messages").await?;
    println!("{METRIC} on n1: {before} → {count} after {sent} bad messages");

    // An RPC call (the router takes only casts): counted and logged like bad bytes. The empty
    // cast behind it on the same link shows when n1 got that far.
    let (tx, rx) = ractor::concurrency::oneshot();
    router
        .send_serialized(SerializedMessage::Call {
            variant: String::new(),
            args: wire::encode(&heartbeat()),
            reply: (tx, Duration::from_secs(3)).into(),
            metadata: None,
        })
        .map_err(|err| anyhow::anyhow!("calling n1's router: {err}"))?;
    cast(&router, Vec::new())?;
    sent += 2;
    let after_call = wait_for_count(cluster, count + 2, &links, "after an RPC call and an empty cast").await?;
    let reply = tokio::time::timeout(Duration::from_secs(3), rx).await;
    println!(
        "an RPC call to n1's router: reply {}; {METRIC} rose by {} for it and the empty cast behind it",
        match reply {
            Ok(Ok(bytes)) => format!("of {} bytes", bytes.len()),
            Ok(Err(_)) => "port dropped".into(),
            Err(_) => "none within 3 s".into(),
        },
        after_call - count
    );

    // Last, on its own: the one message whose decoding recurses deeply.
    let nested = deeply_nested(100_000);
    let bytes = nested.bytes.clone();
    // The decoder's depth bound refuses it without recursing (it used to overflow a worker
    // thread's 2 MiB stack in a debug build and abort the node).
    assert!(refused(&bytes), "{} decodes as a valid message", nested.what);
    println!("sending {} ({} bytes)", nested.what, nested.bytes.len());
    cast(&router, nested.bytes.clone())?;
    sent += 1;
    let count = wait_for_count(cluster, after_call + 1, &links, "after a deeply nested message").await?;
    bad.push(nested);
    ensure!(count - before >= sent, "{METRIC} on n1 rose by {} for {sent} bad casts", count - before);

    // Logged, once per counted message, each with its reason; no panic.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let log = cluster.node(0).log();
        let logged = log.matches(LOGGED).count() as u64;
        let missing: Vec<&str> =
            bad.iter().filter(|message| !log.contains(&message.reason)).map(|message| message.what).collect();
        if logged >= sent && missing.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "n1 logged `{LOGGED}` {logged} times for {sent} bad casts; reasons missing for {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(!cluster.node(0).log().contains("panicked"), "n1 panicked");
    ensure!(cluster.node(0).log().contains("routers take casts only"), "the RPC call was not logged as invalid");

    // n1 is alive, kept the link, and never counted the intruder as a member.
    ensure_alive(cluster, "after the bad messages")?;
    links.ensure_open("after the bad messages")?;
    let sessions = match server.call(NodeServerMessage::GetSessions, Some(Duration::from_secs(5))).await? {
        ractor::rpc::CallResult::Success(sessions) => sessions,
        other => bail!("the intruder's node server did not list its sessions: {other:?}"),
    };
    ensure!(
        sessions.values().any(|ses| ses.peer_name.as_ref().is_some_and(|name| name.name.starts_with("n1@"))),
        "the intruder has no link to n1 any more: {:?}",
        sessions.values().map(|ses| (&ses.peer_name, &ses.peer_addr)).collect::<Vec<_>>()
    );
    for i in 0..2 {
        let (live, serving) = cluster.view(i).await?;
        ensure!(live == ["n1", "n2"] && serving, "n{} reports live {live:?}, serving {serving}", i + 1);
        let (_, status) = cluster.node(i).admin_get("/cluster").await?;
        ensure!(!status.contains(INTRUDER), "the intruder shows in n{}'s /cluster: {status}", i + 1);
    }

    // And the cluster still serves: users on both nodes chat.
    tokio::time::timeout(PATIENCE, async {
        let (mut alice, _) = Client::user(cluster.node(0), Encoding::Json, "alice").await?;
        let (mut bob, _) = Client::user(cluster.node(1), Encoding::MessagePack, "bob").await?;
        let room = alice.create_room("after the intrusion").await?;
        bob.join(&room).await?;
        alice.say(&room, "a1", "still here?").await?;
        bob.wait_for_message(&room, "a1").await?;
        bob.say(&room, "b1", "still here").await?;
        alice.wait_for_message(&room, "b1").await?;
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("chatting after the bad messages timed out")??;
    let (_, metrics) = cluster.node(0).admin_get("/metrics").await?;
    println!(
        "n1 survived: still running, link kept ({:?}), live [n1, n2], chat works; {METRIC} = {}",
        links.events(),
        metric(&metrics, METRIC)
    );
    Ok(())
}
