//! The database failing under a node (docs/STORAGE.md, "Errors"), on FoundationDB: its only
//! server killed with SIGKILL and started again, and stopped with SIGSTOP and resumed, while a
//! client sends. Clients get `unavailable` (never an ack for anything not committed), `/readyz`
//! answers 503 and recovers by itself, and once the database is back every acknowledged
//! message is in the room exactly once, with the sends that were in flight at the crash (their
//! commit result unknown) retried under the same ids and neither lost nor doubled.
//!
//! Runs with `PALAVER_TEST_STORE=fdb` (a binary built with `--features fdb`) and an installed
//! FoundationDB that `.ci/fdb-server.sh` finds: the test starts a FoundationDB server of its own,
//! since it kills it. Anywhere else it says SKIPPED and why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use tests::{Client, ClientFrame, Encoding, ErrorCode, Node, NodeOptions, ServerFrame, TestStore};

/// A FoundationDB server of this test's own, in a temporary directory.
struct OwnDatabase {
    dir: tempfile::TempDir,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/fdb-server.sh")
}

impl OwnDatabase {
    fn run(&self, action: &str) -> anyhow::Result<()> {
        let output = Command::new("bash").arg(script()).arg(action).arg(self.dir.path()).output()?;
        ensure!(
            output.status.success(),
            "fdb-server.sh {action}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    fn start() -> anyhow::Result<OwnDatabase> {
        let database = OwnDatabase { dir: tempfile::tempdir()? };
        database.run("start")?;
        Ok(database)
    }

    fn cluster_file(&self) -> PathBuf {
        self.dir.path().join("fdb.cluster")
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = std::fs::read_to_string(self.dir.path().join("fdbserver.pid"))?;
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.trim()).status()?;
        ensure!(status.success(), "kill -{signal} fdbserver");
        Ok(())
    }
}

impl Drop for OwnDatabase {
    fn drop(&mut self) {
        let _ = self.run("stop");
    }
}

/// Whether this run can take its own FoundationDB down; if not, say so.
fn runnable(test: &str) -> bool {
    let reason = if TestStore::from_env() == TestStore::Sqlite {
        Some("it runs on FoundationDB only (PALAVER_TEST_STORE=fdb)".to_string())
    } else {
        match Command::new("bash").arg(script()).arg("find").output() {
            Ok(output) if output.status.success() => None,
            _ => Some("FoundationDB is not installed where .ci/fdb-server.sh looks (set FDB_PREFIX)".to_string()),
        }
    };
    if let Some(reason) = &reason {
        tests::say_skipped(test, reason);
    }
    reason.is_none()
}

async fn start_node(database: &OwnDatabase) -> anyhow::Result<Node> {
    let options = NodeOptions::default()
        .env("STORE__FDB_CLUSTER_FILE", database.cluster_file().display())
        .env("STORE__FDB_SUBSPACE_PREFIX", "palaver-faults");
    Node::start(options).await
}

/// Send `id` until it is acknowledged; `unavailable` answers (and a connection the node closed)
/// are retried with the same id, as a client does, reconnecting to `url` when needed. Returns
/// the seq and how many refusals came first.
async fn send_until_acked(
    url: &str,
    client: &mut Client,
    token: &str,
    room: &str,
    id: &str,
) -> anyhow::Result<(u64, u32)> {
    let mut refusals = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        ensure!(Instant::now() < deadline, "`{id}` not acknowledged within two minutes");
        let req = client.next_req();
        let frame = ClientFrame::send(req, room, id, format!("body of {id}"));
        match client.request(frame).await {
            Ok(ServerFrame::Ack { seq, .. }) => return Ok((seq, refusals)),
            Ok(ServerFrame::Error { code: ErrorCode::Unavailable | ErrorCode::Internal, .. }) => {
                refusals += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(other) => bail!("`{id}`: unexpected {other:?}"),
            Err(_) => {
                refusals += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                *client = Client::connect_raw(url, Encoding::MessagePack).await?;
                client.greet().await?;
                client.authenticate(token, None).await?;
            }
        }
    }
}

async fn ready(node: &Node) -> u16 {
    node.http_get("/readyz").await.map(|(status, _)| status).unwrap_or(0)
}

async fn wait_ready(node: &Node, want: u16, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while ready(node).await != want {
        ensure!(Instant::now() < deadline, "/readyz did not answer {want} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Every acknowledged id is in the room's history exactly once, at its acked seq.
async fn check_history(client: &mut Client, room: &str, acked: &BTreeMap<String, u64>) -> anyhow::Result<()> {
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut after = 0;
    loop {
        let req = client.next_req();
        let page = ClientFrame::History { req, room: room.into(), before: None, after: Some(after), limit: Some(200) };
        let ServerFrame::History { entries, more, .. } = client.request(page).await? else { bail!("history") };
        for entry in &entries {
            seen.entry(entry.id.clone()).or_default().push(entry.seq);
            after = entry.seq;
        }
        if !more {
            break;
        }
    }
    for (id, seq) in acked {
        let found = seen.get(id).cloned().unwrap_or_default();
        ensure!(found == vec![*seq], "`{id}` acked at {seq}, in history at {found:?}");
    }
    Ok(())
}

async fn run_fault(fault: &str) -> anyhow::Result<()> {
    let database = OwnDatabase::start()?;
    let node = start_node(&database).await?;
    let url = node.ws_url();
    let (mut alice, token) = Client::user(&node, Encoding::Json, "alice").await?;
    let room = alice.create_room("faults").await?;
    let mut acked = BTreeMap::new();
    for i in 0..30 {
        let id = format!("before-{i}");
        acked.insert(id.clone(), send_until_acked(&url, &mut alice, &token, &room, &id).await?.0);
    }

    // Sends in flight when the database goes away; they must not be acknowledged before it is
    // back, and each must end up in the room once.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let mut client = Client::connect(&node, Encoding::MessagePack).await?;
        client.authenticate(&token, None).await?;
        let (room, token, url, stop) = (room.clone(), token.clone(), url.clone(), stop.clone());
        // Sends one after another, each until acked, from before the fault until the database
        // is back, so that some are in flight when it goes.
        tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut refused = 0;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("during-{i}");
                let (seq, refusals) = send_until_acked(&url, &mut client, &token, &room, &id).await?;
                refused += refusals;
                acked.insert(id, seq);
                i += 1;
            }
            anyhow::Ok((acked, refused))
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    match fault {
        "kill" => database.signal("KILL")?,
        _ => database.signal("STOP")?,
    }
    wait_ready(&node, 503, Duration::from_secs(30)).await.context("the node kept saying it is ready")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    match fault {
        "kill" => database.run("restart")?,
        _ => database.signal("CONT")?,
    }
    wait_ready(&node, 200, Duration::from_secs(60)).await.context("the node did not become ready again")?;
    let outage = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (during, refused) = writer.await??;
    ensure!(refused > 0, "no send was refused during a {outage:?} outage");
    acked.extend(during);
    for i in 0..10 {
        let id = format!("after-{i}");
        acked.insert(id.clone(), send_until_acked(&url, &mut alice, &token, &room, &id).await?.0);
    }
    let mut reader = Client::connect(&node, Encoding::Json).await?;
    reader.authenticate(&token, None).await?;
    check_history(&mut reader, &room, &acked).await?;
    println!("{fault}: {} acked, {refused} refusals during a {outage:?} outage, none lost or doubled", acked.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_killed_and_restarted_under_load() -> anyhow::Result<()> {
    if !runnable("database_killed_and_restarted_under_load") {
        return Ok(());
    }
    run_fault("kill").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_paused_and_resumed_under_load() -> anyhow::Result<()> {
    if !runnable("database_paused_and_resumed_under_load") {
        return Ok(());
    }
    run_fault("pause").await
}
