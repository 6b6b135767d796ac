//! `cluster_latency`: delivery latency, single node vs. across nodes. A program rather than a
//! test, so `cargo test` does not spend its time measuring; it still fails on a lost, doubled
//! or reordered message (the receiver's ledger is checked), never on speed.
//!
//! `cargo build --release -p node -p bench && target/release/cluster_latency` prints, for N
//! sequential messages (send → the receiver's `message` frame, measured in this process):
//! - single node: sender, receiver and room on one node without a cluster;
//! - cluster, local: sender, receiver and the room's owner on the same node of a 2-node cluster;
//! - cluster, 1 hop: sender on the owner, receiver on the other node (delivery crosses once);
//! - cluster, 2 hops: sender and receiver on the node that does not own the room (the append is
//!   forwarded to the owner, the delivery comes back).
//!
//! The nodes are the `palaver` binary beside this one, or `$PALAVER_BIN`.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tests::cluster::{placement_owner, Cluster, ClusterOptions};
use tests::{Client, Encoding, Node, NodeOptions, ServerFrame};

const MESSAGES: usize = 200;

async fn measure(
    sender: &mut Client,
    receiver: &mut Client,
    room: &str,
    label: &str,
) -> anyhow::Result<Histogram<u64>> {
    let mut histogram = Histogram::<u64>::new(3)?;
    for i in 0..MESSAGES {
        let id = format!("{label}-{i}");
        let started = Instant::now();
        let req = sender.next_req();
        sender.send(&tests::ClientFrame::send(req, room, id.clone(), "x")).await?;
        receiver
            .wait_for_message(room, &id)
            .await
            .map_err(|err| anyhow::anyhow!("{label}: message {i} not received: {err}"))?;
        histogram.record(started.elapsed().as_micros() as u64)?;
        match sender.reply_to(req).await.map_err(|err| anyhow::anyhow!("{label}: no ack for {i}: {err}"))? {
            ServerFrame::Ack { .. } => {}
            other => anyhow::bail!("send: {other:?}"),
        }
    }
    tests::check_ledger(&receiver.ledger, receiver.ledger.first().map_or(0, |(c, _)| c - 1))?;
    Ok(histogram)
}

fn line(label: &str, h: &Histogram<u64>) -> String {
    format!(
        "{label:<18} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms  (n={})",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    )
}

/// Create rooms as `creator` until one is owned by `owner` (among `nodes`); `joiner` joins it.
async fn room_owned_by(
    creator: &mut Client,
    joiner: &mut Client,
    owner: &str,
    nodes: &[&str],
) -> anyhow::Result<String> {
    loop {
        let room = creator.create_room("bench").await?;
        if placement_owner(&room, nodes) == owner {
            joiner.join(&room).await?;
            return Ok(room);
        }
    }
}

fn main() -> anyhow::Result<()> {
    if std::env::var_os("PALAVER_BIN").is_none() {
        // The harness looks for the node beside a test executable (target/<profile>/deps/…);
        // this program sits in target/<profile>/ itself. Set before any thread starts.
        let exe = std::env::current_exe()?;
        std::env::set_var("PALAVER_BIN", exe.with_file_name("palaver"));
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let mut lines = Vec::new();
    {
        // The bench sends faster than the default per-connection frame rate allows.
        let node = Node::start(NodeOptions::default().env("LIMITS__FRAMES_PER_SECOND", 100_000)).await?;
        let (mut a, _) = Client::user(&node, Encoding::MessagePack, "sa").await?;
        let (mut b, _) = Client::user(&node, Encoding::MessagePack, "sb").await?;
        let room = a.create_room("bench").await?;
        b.join(&room).await?;
        lines.push(line("single node", &measure(&mut a, &mut b, &room, "s").await?));
    }
    let env = vec![("LIMITS__FRAMES_PER_SECOND".to_string(), "100000".to_string())];
    let cluster = Cluster::start_with(2, ClusterOptions { proxied: false, env, ..ClusterOptions::default() }).await?;
    let nodes = ["n1", "n2"];
    let (mut a1, _) = Client::user(cluster.node(0), Encoding::MessagePack, "a1").await?;
    let (mut b1, _) = Client::user(cluster.node(0), Encoding::MessagePack, "b1").await?;
    let (mut c2, _) = Client::user(cluster.node(1), Encoding::MessagePack, "c2").await?;
    let (mut d2, _) = Client::user(cluster.node(1), Encoding::MessagePack, "d2").await?;
    let local = room_owned_by(&mut a1, &mut b1, "n1", &nodes).await?;
    lines.push(line("cluster, local", &measure(&mut a1, &mut b1, &local, "l").await?));
    let one_hop = room_owned_by(&mut a1, &mut c2, "n1", &nodes).await?;
    lines.push(line(
        "cluster, 1 hop",
        &measure(&mut a1, &mut c2, &one_hop, "h1").await.map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))?,
    ));
    let two_hops = room_owned_by(&mut c2, &mut d2, "n1", &nodes).await?;
    lines.push(line("cluster, 2 hops", &measure(&mut c2, &mut d2, &two_hops, "h2").await?));
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!("delivery latency, {MESSAGES} sequential messages each, loopback, {profile} build, SQLite store:");
    for line in &lines {
        println!("  {line}");
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
