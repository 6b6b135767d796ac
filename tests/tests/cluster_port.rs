//! The cluster port before a link authenticates (cluster/src/gate.rs), against a real
//! node: a stranger may send only small handshake frames, must finish the handshake within
//! `cluster.handshake_timeout_ms`, and may hold only so many connections; none of it costs the
//! node memory worth measuring, and real nodes still form a cluster.
//!
//! Node links are framed as a big-endian `u64` length and a protobuf payload (ractor_cluster's
//! wire format); the frames here are written by hand.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use tests::cluster::{Cluster, ClusterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `cluster.handshake_timeout_ms` of these tests' nodes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(2_000);

/// How late a close may come after the deadline on a loaded machine.
const SLACK: Duration = Duration::from_millis(2_500);

/// One node with its cluster port reachable directly (no proxy) and a short handshake timeout.
async fn one_node() -> anyhow::Result<(Cluster, SocketAddr)> {
    let options = ClusterOptions {
        proxied: false,
        env: vec![("CLUSTER__HANDSHAKE_TIMEOUT_MS".into(), HANDSHAKE_TIMEOUT.as_millis().to_string())],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(1, options).await?;
    let addr = cluster.member(0).advertise.parse()?;
    Ok((cluster, addr))
}

/// Resident memory of a process in bytes (`VmRSS` of /proc/PID/status).
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).context("no VmRSS")?;
    let kb: u64 = line.split_whitespace().nth(1).context("no VmRSS value")?.parse()?;
    Ok(kb * 1024)
}

/// A protobuf length-delimited field.
fn field(number: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![(number << 3) | 2];
    let mut len = body.len();
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(body);
    out
}

/// A frame: the length, then the payload.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u64).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// The first frame of a handshake: `NetworkMessage { auth { name { name, flags, connection_string } } }`.
fn name_frame(name: &str) -> Vec<u8> {
    let flags = [0x08, 0x01];
    let message = [field(1, name.as_bytes()), field(2, &flags), field(3, b"127.0.0.1:1")].concat();
    frame(&field(1, &field(1, &message)))
}

/// Read one frame's payload.
async fn read_frame(stream: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let len = stream.read_u64().await?;
    ensure!(len < 1 << 20, "a frame of {len} bytes from the node");
    let mut payload = vec![0; len as usize];
    stream.read_exact(&mut payload).await?;
    Ok(payload)
}

/// Wait until the node closes `stream` (reading and dropping anything it sends), at most `within`.
/// Returns when it closed, measured from `since`.
async fn closed_after(stream: &mut TcpStream, since: Instant, within: Duration) -> anyhow::Result<Duration> {
    let mut sink = [0u8; 4096];
    let until = since + within;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(since.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => anyhow::bail!("the node kept the connection open for {within:?}"),
        }
    }
}

/// Four connections announce a 16 MiB frame and then trickle its bytes: before authenticating
/// that is refused at the length, so each is closed at once and the node's memory does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_announced_16_mib_frame_before_authenticating_is_refused_at_once() -> anyhow::Result<()> {
    let (cluster, addr) = one_node().await?;
    let pid = cluster.member(0).pid().context("no pid")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss(pid)?;
    let started = Instant::now();
    let attacks: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await?;
                stream.write_all(&(16u64 << 20).to_be_bytes()).await?;
                // 16 MiB in 64 KiB pieces, a piece every 10 ms, until the node closes.
                let piece = vec![0x0a; 64 << 10];
                let mut sent = 0usize;
                while sent < 16 << 20 {
                    if stream.write_all(&piece).await.is_err() {
                        return anyhow::Ok((started.elapsed(), sent));
                    }
                    sent += piece.len();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let closed = closed_after(&mut stream, started, HANDSHAKE_TIMEOUT + SLACK).await?;
                Ok((closed, sent))
            })
        })
        .collect();
    let mut peak = baseline;
    while !attacks.iter().all(|attack| attack.is_finished()) {
        peak = peak.max(rss(pid)?);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for attack in attacks {
        let (closed, sent) = attack.await??;
        eprintln!("closed after {closed:?} with {} KiB sent", sent >> 10);
        ensure!(closed < HANDSHAKE_TIMEOUT + SLACK, "closed only after {closed:?}");
    }
    peak = peak.max(rss(pid)?);
    let growth = peak.saturating_sub(baseline);
    eprintln!("node RSS {} MiB, peak {} MiB during the attack", baseline >> 20, peak >> 20);
    ensure!(growth < 8 << 20, "the node grew by {} MiB", growth >> 20);
    Ok(())
}

/// A stranger that starts the handshake and stalls, one that sends nothing, and one that
/// trickles a frame's length a byte at a time are each closed at the handshake deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handshake_that_does_not_finish_is_closed_at_the_deadline() -> anyhow::Result<()> {
    let (cluster, addr) = one_node().await?;
    let silent = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await?;
        let since = Instant::now();
        closed_after(&mut stream, since, HANDSHAKE_TIMEOUT + SLACK).await
    });
    let stalled = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await?;
        let since = Instant::now();
        stream.write_all(&name_frame("mallory@127.0.0.1")).await?;
        // The node answers with its status and its challenge: the handshake is under way.
        for _ in 0..2 {
            let payload = read_frame(&mut stream).await?;
            ensure!(payload.first() == Some(&0x0a), "not a handshake message: {payload:?}");
        }
        closed_after(&mut stream, since, HANDSHAKE_TIMEOUT + SLACK).await
    });
    let trickle = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await?;
        let since = Instant::now();
        for byte in 100u64.to_be_bytes() {
            if stream.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        closed_after(&mut stream, since, HANDSHAKE_TIMEOUT + SLACK).await
    });
    for (what, task) in [("silent", silent), ("stalled", stalled), ("trickle", trickle)] {
        let closed = task.await?.with_context(|| format!("{what} connection\n{}", cluster.logs()))?;
        eprintln!("{what} connection closed after {closed:?}");
        ensure!(
            closed >= HANDSHAKE_TIMEOUT - Duration::from_millis(300),
            "{what} connection closed after {closed:?}, before the deadline"
        );
    }
    ensure!(cluster.node(0).log().contains("the handshake did not finish in time"), "no log line names the reason");
    Ok(())
}

/// At most 64 links may be unauthenticated at once: one more is closed at once. Once they are
/// gone, a real node joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unauthenticated_links_are_capped_and_real_nodes_still_join() -> anyhow::Result<()> {
    let (mut cluster, addr) = one_node().await?;
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(TcpStream::connect(addr).await?);
    }
    // Let the node accept all of them before the one too many.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(addr).await?;
    let since = Instant::now();
    let closed = closed_after(&mut extra, since, HANDSHAKE_TIMEOUT / 2).await.context("the 65th connection")?;
    eprintln!("the 65th connection was closed after {closed:?}");
    // A frame that is not a handshake message is refused too (once a slot is free).
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut foreign = TcpStream::connect(addr).await?;
    let since = Instant::now();
    foreign.write_all(&frame(&field(2, &[]))).await?;
    closed_after(&mut foreign, since, HANDSHAKE_TIMEOUT / 2).await.context("a node message before authenticating")?;
    cluster.add_node().await.with_context(|| cluster.logs())?;
    Ok(())
}
