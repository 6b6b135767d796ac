//! The operational HTTP endpoints: health and readiness on the client port, next to the
//! WebSocket endpoint, and metrics on the admin port.

use anyhow::ensure;
use tests::{Client, Encoding, Node, NodeOptions};

/// The value of an unlabelled metric in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn health_readiness_metrics_and_errors() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;

    let (status, body) = node.http_get("/healthz").await?;
    ensure!(status == 200, "/healthz: {status} {body}");
    let (status, body) = node.http_get("/readyz").await?;
    ensure!(status == 200, "/readyz: {status} {body}");

    // Metrics count WebSocket connections: one open now.
    let client = Client::connect(&node, Encoding::Json).await?;
    let (status, body) = node.admin_get("/metrics").await?;
    ensure!(status == 200, "/metrics: {status}");
    ensure!(body.contains("# TYPE palaver_connections_open gauge"), "/metrics declares its gauge:\n{body}");
    ensure!(metric(&body, "palaver_connections_open") == Some(1), "one connection open:\n{body}");
    client.close().await?;

    // The store's write path: an account is a write, in a transaction of its own or shared.
    let mut writer = Client::connect(&node, Encoding::Json).await?;
    let token = writer.register_and_login("metrics-user", "a long enough password").await?;
    let (_, body) = node.admin_get("/metrics").await?;
    ensure!(body.contains("# TYPE palaver_store_write_transactions_total counter"), "store metrics declared:\n{body}");
    let transactions = metric(&body, "palaver_store_write_transactions_total").unwrap_or(0);
    let requests = metric(&body, "palaver_store_write_requests_total").unwrap_or(0);
    ensure!(transactions >= 1 && requests >= transactions, "{requests} writes in {transactions} transactions:\n{body}");
    ensure!(metric(&body, "palaver_store_write_failed_transactions_total") == Some(0), "no failed commit:\n{body}");

    // A message's way through the node, timed: its wait in the room, the commit, and its wait
    // in the connection's queue (the sender gets its own message).
    writer.authenticate(&token, None).await?;
    let room = writer.create_room("timed").await?;
    writer.say(&room, "m-1", "hello").await?;
    writer.wait_for_message(&room, "m-1").await?;
    let (_, body) = node.admin_get("/metrics").await?;
    for histogram in ["palaver_append_wait_seconds", "palaver_commit_seconds", "palaver_delivery_wait_seconds"] {
        ensure!(body.contains(&format!("# TYPE {histogram} histogram\n")), "{histogram} declared:\n{body}");
        let count = metric(&body, &format!("{histogram}_count")).unwrap_or(0);
        let all = metric(&body, &format!("{histogram}_bucket{{le=\"+Inf\"}}")).unwrap_or(0);
        ensure!(count >= 1 && all == count, "{histogram}: {count} observations, {all} in the buckets:\n{body}");
    }
    writer.close().await?;

    // /ws is WebSocket only: a plain GET is told to upgrade.
    let (status, body) = node.http_get("/ws").await?;
    ensure!(status == 426, "/ws without upgrade: {status} {body}");
    let (status, _) = node.http_get("/no/such/path").await?;
    ensure!(status == 404, "unknown path: {status}");
    let (status, _) = node.http_raw("POST /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n").await?;
    ensure!(status == 405, "POST: {status}");
    let (status, _) = node.http_raw("this is not HTTP\r\n\r\n").await?;
    ensure!(status == 400, "garbage request: {status}");

    // None of that hurt the node.
    let (status, _) = node.http_get("/healthz").await?;
    ensure!(status == 200, "/healthz after bad requests: {status}");
    let mut client = Client::connect(&node, Encoding::MessagePack).await?;
    client.ping().await?;
    Ok(())
}
