//! A webhook receiver for the black-box tests and the benchmark, written from docs/WEBHOOKS.md:
//! an HTTP/1.1 server (keep-alive, `Content-Length` bodies) that checks every request's
//! `Palaver-Signature` with its own HMAC-SHA256 and keeps the events it accepted, in arrival
//! order. Tests steer it: answer 500 to the next requests, hold the next ones unanswered (the
//! node's timeout fires), or go down (the port refuses connections) and come back on the same
//! port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// What the receiver does with the next requests; anything not planned is answered 200.
#[derive(Debug, Default)]
struct Plan {
    fail_next: usize,
    /// Answer those failures 503 with this `Retry-After` (seconds) instead of 500.
    retry_after: Option<u64>,
    hang_next: usize,
    /// Count the events but do not keep them (the benchmark's receiver).
    count_only: bool,
}

/// What the receiver saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Events of requests answered 200, in arrival order (repeats included).
    pub events: Vec<Value>,
    /// Events counted (all of them, `count_only` or not).
    pub event_count: u64,
    /// Requests received, answered or not.
    pub requests: u64,
    /// Requests whose signature did not verify (answered 401, their events dropped).
    pub bad_signatures: u64,
    /// The `palaver-webhook-id` header of the last request.
    pub endpoint: String,
    /// For each event accepted: ms from its `ts` (its commit) to its arrival here.
    pub lags_ms: Vec<u64>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    secret: Arc<Mutex<String>>,
    plan: Arc<Mutex<Plan>>,
    pub seen: Arc<Mutex<Seen>>,
    server: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Listen on a free port of 127.0.0.1. The secret is set once the endpoint is created.
    pub async fn start() -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut receiver =
            Receiver { addr, secret: Arc::default(), plan: Arc::default(), seen: Arc::default(), server: None };
        receiver.serve(listener);
        Ok(receiver)
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub async fn set_secret(&self, secret: &str) {
        *self.secret.lock().await = secret.to_string();
    }

    pub async fn fail_next(&self, n: usize, retry_after: Option<u64>) {
        let mut plan = self.plan.lock().await;
        plan.fail_next = n;
        plan.retry_after = retry_after;
    }

    pub async fn hang_next(&self, n: usize) {
        self.plan.lock().await.hang_next = n;
    }

    pub async fn count_only(&self) {
        self.plan.lock().await.count_only = true;
    }

    /// Stop listening and drop every open connection: the port refuses connections.
    pub fn go_down(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// Listen again on the same port.
    pub async fn come_back(&mut self) -> anyhow::Result<()> {
        let listener = TcpListener::bind(self.addr).await.context("binding the receiver's port again")?;
        self.serve(listener);
        Ok(())
    }

    /// The events accepted so far.
    pub async fn events(&self) -> Vec<Value> {
        self.seen.lock().await.events.clone()
    }

    /// Wait until `done` holds for what was seen, or fail after `within`.
    pub async fn wait_until(&self, within: Duration, done: impl Fn(&Seen) -> bool) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            {
                let seen = self.seen.lock().await;
                if done(&seen) {
                    return Ok(());
                }
                if tokio::time::Instant::now() > deadline {
                    bail!(
                        "the receiver did not see what was awaited within {within:?}: {} requests, {} events",
                        seen.requests,
                        seen.events.len()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn serve(&mut self, listener: TcpListener) {
        let (secret, plan, seen) = (self.secret.clone(), self.plan.clone(), self.seen.clone());
        self.server = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let (secret, plan, seen) = (secret.clone(), plan.clone(), seen.clone());
                        connections.spawn(async move {
                            let _ = serve_connection(stream, secret, plan, seen).await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
            // Aborting this task drops the JoinSet, which aborts every connection with it.
        }));
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.go_down();
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    secret: Arc<Mutex<String>>,
    plan: Arc<Mutex<Plan>>,
    seen: Arc<Mutex<Seen>>,
) -> anyhow::Result<()> {
    let mut buffer = Vec::new();
    loop {
        let Some((head, body)) = read_request(&mut stream, &mut buffer).await? else { return Ok(()) };
        let header = |name: &str| {
            head.lines()
                .find_map(|line| line.split_once(':').filter(|(key, _)| key.trim().eq_ignore_ascii_case(name)))
                .map(|(_, value)| value.trim().to_string())
        };
        seen.lock().await.requests += 1;
        let (fail, retry_after, hang, count_only) = {
            let mut plan = plan.lock().await;
            if plan.hang_next > 0 {
                plan.hang_next -= 1;
                (false, None, true, plan.count_only)
            } else if plan.fail_next > 0 {
                plan.fail_next -= 1;
                (true, plan.retry_after, false, plan.count_only)
            } else {
                (false, None, false, plan.count_only)
            }
        };
        if hang {
            // Never answer: the node's request timeout fires and it closes the connection.
            tokio::time::sleep(Duration::from_secs(3_600)).await;
            return Ok(());
        }
        if fail {
            let status = match retry_after {
                Some(secs) => format!("503 Service Unavailable\r\nretry-after: {secs}"),
                None => "500 Internal Server Error".to_string(),
            };
            respond(&mut stream, &status).await?;
            continue;
        }
        let signature = header("palaver-signature").unwrap_or_default();
        let secret = secret.lock().await.clone();
        if !verify(&secret, &signature, &body) {
            let mut seen = seen.lock().await;
            seen.bad_signatures += 1;
            drop(seen);
            respond(&mut stream, "401 Unauthorized").await?;
            continue;
        }
        let parsed: Value = serde_json::from_slice(&body).context("a webhook body that is not JSON")?;
        let events = parsed["events"].as_array().cloned().unwrap_or_default();
        {
            let mut seen = seen.lock().await;
            seen.event_count += events.len() as u64;
            let now = crate::now_ms();
            let lags = events.iter().map(|e| now.saturating_sub(e["ts"].as_u64().unwrap_or(now)));
            seen.lags_ms.extend(lags);
            seen.endpoint = header("palaver-webhook-id").unwrap_or_default();
            if !count_only {
                seen.events.extend(events);
            }
        }
        respond(&mut stream, "200 OK").await?;
    }
}

pub(crate) async fn respond(stream: &mut TcpStream, status: &str) -> anyhow::Result<()> {
    stream.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes()).await?;
    Ok(())
}

/// The next request on the connection: its head and body; `None` when the peer closed.
pub(crate) async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> anyhow::Result<Option<(String, Vec<u8>)>> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|line| line.split_once(':').filter(|(key, _)| key.trim().eq_ignore_ascii_case("content-length")))
        .map(|(_, value)| value.trim().parse())
        .transpose()?
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the connection closed inside a body");
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = buffer[head_end..head_end + length].to_vec();
    buffer.drain(..head_end + length);
    Ok(Some((head, body)))
}

/// docs/WEBHOOKS.md, "Verifying a request": `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`,
/// the time within five minutes of now.
pub fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => signatures.push(value.to_string()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if t.abs_diff(crate::now_ms() / 1_000) > 300 {
        return false;
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return false };
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    signatures.contains(&expected)
}
