//! `webhook_deliveries`: how many webhook events per second one node delivers to a local
//! receiver, and the node's CPU time per event.
//!
//! Two measurements, on a fresh SQLite store:
//! - **drain**: the receiver is down while `--events` messages are posted across `--rooms`
//!   rooms (they queue in the store's outbox); it comes back, and the time until every event
//!   has arrived (signature checked) gives events/s with the node doing nothing else;
//! - **live**: the receiver is up while the same number of messages is posted through the
//!   server API by 32 callers; it reports events/s and the lag from each message's commit to its
//!   arrival at the receiver (p50, p99).
//!
//! The node is the release `palaver` beside this program, pinned to CPU 0 (`taskset`, where
//! there are two CPUs or more); run this program (the receiver and the posting callers) on
//! another:
//!
//! `PALAVER_BIN=target/release/palaver taskset -c 1 target/release/webhook_deliveries [--events 20000]`
//! `[--rooms 10]`
//!
//! A program rather than a test, so `cargo test` never spends its time measuring.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bench::{busy_percent, cpu_ticks, new_histogram};
use serde_json::json;
use tests::api::{call, expect};
use tests::webhooks::Receiver;
use tests::{Node, NodeOptions};

const ADMIN_TOKEN: &str = "admin-token-for-the-webhook-benchmark";
const CALLERS: usize = 32;

struct Options {
    events: usize,
    rooms: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options { events: 20_000, rooms: 10 };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [key, value] = pair else { bail!("`{}` needs a value", pair[0]) };
        match key.as_str() {
            "--events" => options.events = value.parse()?,
            "--rooms" => options.rooms = value.parse()?,
            other => bail!("unknown option `{other}`: --events N --rooms N"),
        }
    }
    Ok(options)
}

/// Post `count` messages spread over `rooms`, from `CALLERS` callers at once.
async fn post_all(node: &Node, key: &str, rooms: &[String], count: usize, tag: &str) -> anyhow::Result<()> {
    let per_caller = count / CALLERS;
    let tasks: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (admin, key, rooms, tag) = (node.admin, key.to_string(), rooms.to_vec(), tag.to_string());
            tokio::spawn(async move {
                for n in 0..per_caller {
                    let room = &rooms[(caller + n) % rooms.len()];
                    let path = format!("/api/v1/rooms/{room}/messages?as=bot");
                    let body = json!({ "id": format!("{tag}-{caller}-{n}"), "body": "a message of about a hundred bytes, as the fan-out benchmarks send, for webhooks" });
                    let answer = call(admin, "POST", &path, Some(&key), Some(&body)).await?;
                    ensure!(answer.status == 201, "post: {answer:?}");
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let events = options.events / CALLERS * CALLERS;
    let node = Node::start(
        NodeOptions::default()
            .env("ADMIN__TOKEN", ADMIN_TOKEN)
            // The receiver is down on purpose during the drain's set-up: retry soon after it returns.
            .env("WEBHOOKS__RETRY_BASE_MS", "50")
            .env("WEBHOOKS__RETRY_MAX_MS", "100")
            .env("WEBHOOKS__MAX_ATTEMPTS", "100000")
            .env("WEBHOOKS__POLL_MS", "20"),
    )
    .await?;
    let pid = node.pid().context("the node is not running")?;
    let pinned = std::process::Command::new("taskset")
        .args(["-a", "-cp", "0", &pid.to_string()])
        .output()
        .is_ok_and(|out| out.status.success());
    let scopes = json!({ "name": "bench", "scopes": ["users", "rooms", "messages", "webhooks"] });
    let minted = expect(node.admin, "POST", "/api/v1/keys", ADMIN_TOKEN, Some(scopes), 201).await?;
    let key = minted["key"].as_str().context("no key")?.to_string();
    expect(node.admin, "POST", "/api/v1/users", &key, Some(json!({"name": "bot"})), 201).await?;
    let mut rooms = Vec::new();
    for i in 0..options.rooms {
        let room =
            expect(node.admin, "POST", "/api/v1/rooms?as=bot", &key, Some(json!({ "name": format!("r{i}") })), 201)
                .await?;
        rooms.push(room["id"].as_str().context("no room id")?.to_string());
    }
    let mut receiver = Receiver::start().await?;
    let hook = json!({ "url": receiver.url(), "events": ["message.posted"] });
    let created = expect(node.admin, "POST", "/api/v1/webhooks", &key, Some(hook), 201).await?;
    receiver.set_secret(created["secret"].as_str().context("no secret")?).await;
    receiver.count_only().await;
    println!(
        "webhook_deliveries: {events} message.posted events over {} rooms, node {} CPU 0",
        options.rooms,
        if pinned { "pinned to" } else { "NOT pinned to" }
    );
    println!("| phase | events/s | requests | node CPU per event | receiver CPU busy | commit → receiver p50 | p99 |");
    println!("|---|---|---|---|---|---|---|");
    let me = std::process::id();

    // Drain: everything queued first, then delivered with nothing else going on.
    receiver.go_down();
    post_all(&node, &key, &rooms, events, "drain").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ticks_before = cpu_ticks(&[pid]);
    let mine_before = cpu_ticks(&[me]);
    let started = Instant::now();
    receiver.come_back().await?;
    let want = events as u64;
    receiver.wait_until(Duration::from_secs(600), |seen| seen.event_count >= want).await?;
    let elapsed = started.elapsed();
    let ticks = cpu_ticks(&[pid]) - ticks_before;
    let mine = cpu_ticks(&[me]) - mine_before;
    let (requests, bad) = {
        let seen = receiver.seen.lock().await;
        (seen.requests, seen.bad_signatures)
    };
    ensure!(bad == 0, "{bad} requests failed their signature check");
    println!(
        "| drain | {:.0} | {requests} | {:.1} µs | {:.0} % | | |",
        events as f64 / elapsed.as_secs_f64(),
        ticks as f64 * 10_000.0 / events as f64,
        busy_percent(mine, elapsed),
    );

    // Live: posts and deliveries at once.
    {
        let mut seen = receiver.seen.lock().await;
        seen.lags_ms.clear();
        seen.event_count = 0;
        seen.requests = 0;
    }
    let ticks_before = cpu_ticks(&[pid]);
    let mine_before = cpu_ticks(&[me]);
    let started = Instant::now();
    post_all(&node, &key, &rooms, events, "live").await?;
    receiver.wait_until(Duration::from_secs(600), |seen| seen.event_count >= want).await?;
    let elapsed = started.elapsed();
    let ticks = cpu_ticks(&[pid]) - ticks_before;
    let mine = cpu_ticks(&[me]) - mine_before;
    let seen = receiver.seen.lock().await;
    let mut lags = new_histogram();
    for lag in &seen.lags_ms {
        lags.record((*lag).max(1)).ok();
    }
    println!(
        "| live (posting too) | {:.0} | {} | {:.1} µs (post and delivery) | {:.0} % (posting too) | {} ms | {} ms |",
        events as f64 / elapsed.as_secs_f64(),
        seen.requests,
        ticks as f64 * 10_000.0 / events as f64,
        busy_percent(mine, elapsed),
        lags.value_at_quantile(0.5),
        lags.value_at_quantile(0.99),
    );
    Ok(())
}
