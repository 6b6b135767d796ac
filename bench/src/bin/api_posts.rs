//! `api_posts`: how many messages per second the server API (`POST /api/v1/rooms/{room}/messages`)
//! takes with its durable ack, at a given number of concurrent callers, and the node's CPU time
//! per post. Each caller posts one message at a time and waits for its answer (the node closes
//! each connection after one request, so every post pays a TCP handshake, as a backend without
//! a pooled connection would).
//!
//! The node is the release `palaver` beside this program, started on a fresh SQLite store and
//! pinned to CPU 0 (`taskset`, where there are two CPUs or more); run this program on another:
//!
//! `PALAVER_BIN=target/release/palaver taskset -c 1 target/release/api_posts [--callers 1,8,32]`
//! `[--posts 3000] [--members 10]` (`PALAVER_BIN`: the harness looks beside test executables).
//!
//! A program rather than a test, so `cargo test` never spends its time measuring.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bench::{cpu_ticks, new_histogram};
use serde_json::{json, Value};
use tests::api::call;
use tests::{Node, NodeOptions};

const ADMIN_TOKEN: &str = "admin-token-for-the-api-benchmark";

struct Options {
    callers: Vec<usize>,
    posts: usize,
    members: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options { callers: vec![8, 32], posts: 4_000, members: 10 };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [key, value] = pair else { bail!("`{}` needs a value", pair[0]) };
        match key.as_str() {
            "--callers" => options.callers = value.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--posts" => options.posts = value.parse()?,
            "--members" => options.members = value.parse()?,
            other => bail!("unknown option `{other}`: --callers N[,N…] --posts N --members N"),
        }
    }
    Ok(options)
}

async fn expect(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: &str,
    body: Value,
    status: u16,
) -> anyhow::Result<Value> {
    let answer = call(addr, method, path, Some(bearer), Some(&body)).await?;
    ensure!(answer.status == status, "{method} {path}: {answer:?}");
    Ok(answer.body)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let node = Node::start(NodeOptions::default().env("ADMIN__TOKEN", ADMIN_TOKEN)).await?;
    let pid = node.pid().context("the node is not running")?;
    // (This program's own affinity, set by the taskset it runs under, hides the other CPUs
    // from `available_parallelism`, so taskset's answer is the test.)
    let pinned = std::process::Command::new("taskset")
        .args(["-a", "-cp", "0", &pid.to_string()])
        .output()
        .is_ok_and(|out| out.status.success());
    let admin = node.admin;
    let scopes = json!({ "name": "bench", "scopes": ["users", "rooms", "messages"] });
    let minted = expect(admin, "POST", "/api/v1/keys", ADMIN_TOKEN, scopes, 201).await?;
    let key = minted["key"].as_str().context("no key")?.to_string();
    expect(admin, "POST", "/api/v1/users", &key, json!({"name": "bot"}), 201).await?;
    let room = expect(admin, "POST", "/api/v1/rooms?as=bot", &key, json!({"name": "bench"}), 201).await?;
    let room = room["id"].as_str().context("no room id")?.to_string();
    for member in 1..options.members {
        let name = format!("member-{member}");
        expect(admin, "POST", "/api/v1/users", &key, json!({ "name": name }), 201).await?;
        let path = format!("/api/v1/rooms/{room}/members/{name}?as=bot");
        let answer = call(admin, "PUT", &path, Some(&key), None).await?;
        ensure!(answer.status == 200, "{answer:?}");
    }
    println!(
        "api_posts: {} posts per round into a room of {} members, node {} CPU 0",
        options.posts,
        options.members,
        if pinned { "pinned to" } else { "NOT pinned to" }
    );
    println!("| callers | posts/s | p50 ms | p99 ms | node CPU per post |");
    println!("|---|---|---|---|---|");
    for (round, &callers) in options.callers.iter().enumerate() {
        let path = format!("/api/v1/rooms/{room}/messages?as=bot");
        let per_caller = options.posts / callers.max(1);
        let ticks_before = cpu_ticks(&[pid]);
        let started = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|caller| {
                let (path, key) = (path.clone(), key.clone());
                tokio::spawn(async move {
                    let mut latencies = new_histogram();
                    for n in 0..per_caller {
                        let body = json!({ "id": format!("r{round}-c{caller}-{n}"), "body": "a message of about a hundred bytes, as the fan-out benchmarks send, for the API"});
                        let sent = Instant::now();
                        let answer = call(admin, "POST", &path, Some(&key), Some(&body)).await?;
                        ensure!(answer.status == 201, "post: {answer:?}");
                        latencies.record(sent.elapsed().as_micros() as u64).ok();
                    }
                    Ok::<_, anyhow::Error>(latencies)
                })
            })
            .collect();
        let mut latencies = new_histogram();
        for task in tasks {
            latencies.add(task.await??).ok();
        }
        let elapsed = started.elapsed();
        let ticks = cpu_ticks(&[pid]) - ticks_before;
        let posts = (per_caller * callers) as f64;
        let cpu_us = ticks as f64 * 10_000.0 / posts;
        println!(
            "| {callers} | {:.0} | {:.2} | {:.2} | {cpu_us:.0} µs |",
            posts / elapsed.as_secs_f64(),
            latencies.value_at_quantile(0.5) as f64 / 1000.0,
            latencies.value_at_quantile(0.99) as f64 / 1000.0,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
