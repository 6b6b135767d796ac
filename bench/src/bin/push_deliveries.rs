//! `push_deliveries`: how many pushes per second one node hands to a local provider (a push
//! gateway of the `webhook` platform in this program, checking every signature), the lag from
//! a message's commit to the provider, and the node's memory while it works through pushes to
//! many offline recipients.
//!
//! Set-up, on a fresh SQLite store shared by two nodes: `--users` users, each a member of one
//! of `--rooms` rooms with one gateway device, all offline; a bot posts. The first node has
//! `push.send` off, so what is posted there only queues.
//! - **drain**: `--messages` messages per room are posted on the first node; then the second
//!   node (sending, `push.delay_ms` 0) starts, and the time until every recipient's
//!   notification arrived gives pushes/s (one per recipient: a room's messages collapse), with
//!   the second node's CPU time per push and its peak resident memory;
//! - **live**: one message per room posted on the second node, paced; the lag from each
//!   message's commit (its ack's `ts`) to each notification's arrival (p50, p99).
//!
//! The sending node is pinned to CPU 0 (`taskset`, where there are two CPUs or more); run this
//! program on another:
//!
//! `PALAVER_BIN=target/release/palaver taskset -c 1 target/release/push_deliveries [--users 10000]`
//! `[--rooms 100] [--messages 3]`
//!
//! A program rather than a test, so `cargo test` never spends its time measuring.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bench::{busy_percent, cpu_ticks, new_histogram, rss_kib};
use protocol::{NewDevice, Platform};
use serde_json::json;
use tests::api::{call, expect};
use tests::push_receivers::webhook::Webhook;
use tests::push_receivers::Receiver;
use tests::{Client, ClientFrame, Encoding, Node, NodeOptions, ServerFrame, TestStore};

const ADMIN_TOKEN: &str = "admin-token-for-the-push-benchmark";
const SECRET: &str = "push-gateway-secret-for-the-benchmark";
/// Users set up at once.
const SETUP_TASKS: usize = 16;

struct Options {
    users: usize,
    rooms: usize,
    messages: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options { users: 10_000, rooms: 100, messages: 3 };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [key, value] = pair else { bail!("`{}` needs a value", pair[0]) };
        match key.as_str() {
            "--users" => options.users = value.parse()?,
            "--rooms" => options.rooms = value.parse()?,
            "--messages" => options.messages = value.parse()?,
            other => bail!("unknown option `{other}`: --users N --rooms N --messages N"),
        }
    }
    ensure!(options.rooms > 0 && options.users >= options.rooms, "at least one user per room");
    Ok(options)
}

/// Provision user `n`, make them a member of their room, register their gateway device with a
/// connection of theirs, and close it.
async fn set_up_user(node: &Node, key: &str, room: &str, n: usize, device_url: String) -> anyhow::Result<()> {
    let user = format!("u{n}");
    expect(node.admin, "POST", "/api/v1/users", key, Some(json!({ "name": user })), 201).await?;
    let path = format!("/api/v1/rooms/{room}/members/{user}?as={user}");
    let answer = call(node.admin, "PUT", &path, Some(key), None).await?;
    ensure!(answer.status / 100 == 2, "join: {answer:?}");
    let token = expect(node.admin, "POST", &format!("/api/v1/users/{user}/tokens"), key, None, 201).await?;
    let token = token["token"].as_str().context("no token")?.to_string();
    let mut client = Client::connect(node, Encoding::Json).await?;
    client.authenticate(&token, None).await?;
    let device = NewDevice {
        platform: Platform::Webhook,
        token: Some(device_url),
        subscription: None,
        app: String::new(),
        locale: String::new(),
        preview: false,
    };
    let req = client.next_req();
    match client.request(ClientFrame::RegisterDevice { req, device }).await? {
        ServerFrame::Device { .. } => {}
        other => bail!("register_device: {other:?}"),
    }
    client.close().await
}

/// Post one message to each of `rooms` as the bot; each message's commit time by (room, seq).
async fn post_round(
    node: &Node,
    key: &str,
    rooms: &[String],
    tag: &str,
) -> anyhow::Result<HashMap<(String, u64), u64>> {
    let mut committed = HashMap::new();
    for room in rooms {
        let path = format!("/api/v1/rooms/{room}/messages?as=bot");
        let body = json!({ "id": format!("{tag}-{room}"), "body": "a message of about a hundred bytes, as the fan-out benchmarks send, for a push" });
        let ack = expect(node.admin, "POST", &path, key, Some(body), 201).await?;
        committed.insert((room.clone(), ack["seq"].as_u64().context("seq")?), ack["ts"].as_u64().context("ts")?);
    }
    Ok(committed)
}

/// Wait until the gateway accepted `count` pushes; the peak resident memory of `pid` meanwhile.
async fn wait_for_pushes(gateway: &Receiver<Webhook>, count: usize, pid: u32) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(1_800);
    let mut peak = 0;
    while gateway.accepted() < count {
        peak = peak.max(rss_kib(&[pid]));
        ensure!(Instant::now() < deadline, "{} of {count} pushes arrived", gateway.accepted());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(peak.max(rss_kib(&[pid])))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let shared = tempfile::tempdir()?;
    let store = TestStore::Sqlite;
    let gateway = Receiver::<Webhook>::start(SECRET).await?;
    gateway.count_only();
    let prefixes = format!("[\"{}/\"]", gateway.base_url());
    let node_options = |name: &str, send: bool| {
        let mut node = NodeOptions { name: name.into(), ..NodeOptions::default() }
            .env("ADMIN__TOKEN", ADMIN_TOKEN)
            .env("PUSH__SEND", send)
            .env("PUSH__DELAY_MS", 0)
            .env("PUSH__POLL_MS", 20)
            .env("PUSH__WEBHOOK__SECRET", SECRET)
            .env("PUSH__WEBHOOK__URL_PREFIXES", &prefixes)
            .env("PRESENCE__GRACE_MS", 100)
            .env("LIMITS__MAX_ROOM_MEMBERS", options.users / options.rooms + 10)
            .env("LIMITS__FANOUT_MAX_MEMBERS", options.users / options.rooms + 10)
            // The bot is in every room.
            .env("LIMITS__MAX_ROOMS_PER_USER", options.rooms + 10);
        for (key, value) in store.env_for(shared.path()) {
            node = node.env(&key, value);
        }
        node
    };
    let queuing = Node::start(node_options("queuing", false)).await?;
    let scopes = json!({ "name": "bench", "scopes": ["users", "rooms", "messages"] });
    let minted = expect(queuing.admin, "POST", "/api/v1/keys", ADMIN_TOKEN, Some(scopes), 201).await?;
    let key = minted["key"].as_str().context("no key")?.to_string();
    expect(queuing.admin, "POST", "/api/v1/users", &key, Some(json!({"name": "bot"})), 201).await?;
    let mut rooms = Vec::new();
    for i in 0..options.rooms {
        let room =
            expect(queuing.admin, "POST", "/api/v1/rooms?as=bot", &key, Some(json!({ "name": format!("r{i}") })), 201)
                .await?;
        rooms.push(room["id"].as_str().context("no room id")?.to_string());
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..SETUP_TASKS)
        .map(|task| {
            let (node, key, rooms) = (&queuing, key.clone(), rooms.clone());
            let urls: Vec<(usize, String)> =
                (task..options.users).step_by(SETUP_TASKS).map(|n| (n, gateway.device_url(&format!("u{n}")))).collect();
            async move {
                for (n, url) in urls {
                    set_up_user(node, &key, &rooms[n % rooms.len()], n, url).await?;
                }
                anyhow::Ok(())
            }
        })
        .collect();
    for outcome in futures_util::future::join_all(tasks).await {
        outcome?;
    }
    eprintln!("set-up: {} users with a device in {:.0} s", options.users, started.elapsed().as_secs_f64());
    // Offline past the grace, so every message comes after their last connection.
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    for round in 0..options.messages {
        post_round(&queuing, &key, &rooms, &format!("drain{round}")).await?;
    }
    let sending = Node::start(node_options("sending", true)).await?;
    let pid = sending.pid().context("the sending node is not running")?;
    let pinned = std::process::Command::new("taskset")
        .args(["-a", "-cp", "0", &pid.to_string()])
        .output()
        .is_ok_and(|out| out.status.success());
    let me = std::process::id();
    let rss_idle = rss_kib(&[pid]);
    let (ticks_before, mine_before, started) = (cpu_ticks(&[pid]), cpu_ticks(&[me]), Instant::now());
    let peak = wait_for_pushes(&gateway, options.users, pid).await?;
    let elapsed = started.elapsed();
    let (ticks, mine) = (cpu_ticks(&[pid]) - ticks_before, cpu_ticks(&[me]) - mine_before);
    ensure!(gateway.rejections().is_empty(), "refused: {:?}", gateway.rejections().first());
    println!(
        "push_deliveries: {} offline users with one device each, {} rooms, {} messages per room queued; sending node {} CPU 0",
        options.users,
        options.rooms,
        options.messages,
        if pinned { "pinned to" } else { "NOT pinned to" }
    );
    println!("| phase | pushes | pushes/s | node CPU per push | node RSS idle → peak | gateway CPU busy | commit → provider p50 | p99 |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| drain | {} | {:.0} | {:.1} µs | {} → {} MiB | {:.0} % | | |",
        gateway.accepted(),
        options.users as f64 / elapsed.as_secs_f64(),
        ticks as f64 * 10_000.0 / options.users as f64,
        rss_idle / 1024,
        peak / 1024,
        busy_percent(mine, elapsed),
    );

    // Live: one message per room on the sending node, a room every 20 ms.
    let before = gateway.accepted();
    let (ticks_before, mine_before, started) = (cpu_ticks(&[pid]), cpu_ticks(&[me]), Instant::now());
    let mut committed = HashMap::new();
    for room in &rooms {
        committed.extend(post_round(&sending, &key, std::slice::from_ref(room), "live").await?);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peak = wait_for_pushes(&gateway, before + options.users, pid).await?;
    let elapsed = started.elapsed();
    let (ticks, mine) = (cpu_ticks(&[pid]) - ticks_before, cpu_ticks(&[me]) - mine_before);
    let mut lags = new_histogram();
    for (room, seq, arrived_ms) in gateway.arrivals().into_iter().skip(before) {
        if let Some(ts) = committed.get(&(room, seq)) {
            lags.record(arrived_ms.saturating_sub(*ts).max(1)).ok();
        }
    }
    println!(
        "| live (posting too) | {} | {:.0} | {:.1} µs (post and push) | peak {} MiB | {:.0} % | {} ms | {} ms |",
        gateway.accepted() - before,
        options.users as f64 / elapsed.as_secs_f64(),
        ticks as f64 * 10_000.0 / options.users as f64,
        peak / 1024,
        busy_percent(mine, elapsed),
        lags.value_at_quantile(0.5),
        lags.value_at_quantile(0.99),
    );
    Ok(())
}
