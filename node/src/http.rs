//! The client port: a small HTTP/1.1 server that upgrades `/ws` to WebSocket and answers the
//! operational endpoints.
//!
//! Routes: `GET /ws` (WebSocket, the protocol of docs/PROTOCOL.md), `/healthz` (the process
//! answers), `/readyz` (the store answers and the node is not draining), `/metrics`
//! (Prometheus), `/status` (JSON operator view of this node), `/cluster` (the cluster as this
//! node sees it; `?room=ID` names the room's owner), and `/` plus `/app/*` (the
//! bundled web client, when present).
//!
//! The HTTP side is deliberately minimal: one request per connection, `Connection: close`, a
//! bounded request head. The handshake is done here rather than by tungstenite so that one
//! port serves both, and the WebSocket is then built with the configured limits (frame size,
//! small buffers: memory per idle connection is a target).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actors::hub::Hub;
use actors::session::{run_session, Peer, Wire, WireError};
use actors::store::WriteStats;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

use crate::{http_head, web};

/// Accept connections until `stop` turns true, then wait for open connections to finish (the
/// hub's shutdown makes WebSocket sessions send `reconnect` and close) for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    hub: Arc<Hub>,
    web: Arc<web::WebClient>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let permits = Arc::new(Semaphore::new(hub.limits.max_connections));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let hub = hub.clone();
                    let permits = permits.clone();
                    let web = web.clone();
                    tasks.spawn(async move {
                        if let Err(err) = handle(stream, peer, hub, &web, permits).await {
                            debug!(%peer, error = %err, "http connection ended with an error");
                        }
                    });
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(err) => {
                    warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    info!(open = tasks.len(), "listener closed; draining connections");
    let drained = tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(open = tasks.len(), "drain timeout; closing the remaining connections");
        tasks.abort_all();
    }
}

/// One TCP connection: read the request head, then route.
async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    hub: Arc<Hub>,
    web: &web::WebClient,
    permits: Arc<Semaphore>,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let timeout = Duration::from_millis(hub.limits.hello_timeout_ms);
    let (head, rest) = match tokio::time::timeout(timeout, http_head::read_head(&mut stream)).await {
        Ok(Ok(Some(read))) => read,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(err)) if err.kind() == io::ErrorKind::InvalidData => {
            return respond(&mut stream, 431, "text/plain", b"request head too large\n").await;
        }
        Ok(Err(err)) => return Err(err),
        Err(_) => return Ok(()),
    };
    let mut headers = [httparse::EMPTY_HEADER; http_head::MAX_HEADERS];
    let Some(request) = http_head::parse(&head, &mut headers) else {
        return respond(&mut stream, 400, "text/plain", b"malformed HTTP request\n").await;
    };
    let method = request.method.unwrap_or("");
    let path = request.path.unwrap_or("/").split('?').next().unwrap_or("/");
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    if method == "POST" && path == "/cluster/forget" {
        let query = request.path.and_then(|path| path.split_once('?')).map(|(_, query)| query);
        let (status, body) = crate::operator::forget(&hub, query, header("authorization"));
        return respond(&mut stream, status, "application/json", body.to_string().as_bytes()).await;
    }
    if method != "GET" {
        return respond(&mut stream, 405, "text/plain", b"only GET is served here (and POST /cluster/forget)\n").await;
    }
    match path {
        "/ws" => {
            let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            let (Some(key), true) = (header("sec-websocket-key"), upgrade) else {
                return respond(
                    &mut stream,
                    426,
                    "text/plain",
                    b"this endpoint speaks WebSocket; see docs/PROTOCOL.md\n",
                )
                .await;
            };
            if header("sec-websocket-version") != Some("13") {
                return respond(&mut stream, 426, "text/plain", b"WebSocket version 13 required\n").await;
            }
            let accept = derive_accept_key(key.as_bytes());
            let Ok(permit) = permits.try_acquire_owned() else {
                actors::metrics::Metrics::inc(&hub.metrics.connections_refused_total);
                return respond(&mut stream, 503, "text/plain", b"node at limits.max_connections; try another node\n")
                    .await;
            };
            if hub.is_shutting_down() {
                return respond(&mut stream, 503, "text/plain", b"node is shutting down\n").await;
            }
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            stream.write_all(response.as_bytes()).await?;
            // The request head is not needed any more; don't hold it for the connection's life.
            drop(head);
            websocket(stream, rest, peer, hub).await;
            drop(permit);
            Ok(())
        }
        "/healthz" => respond(&mut stream, 200, "text/plain", b"ok\n").await,
        "/readyz" => {
            let (status, body) = readiness(&hub).await;
            respond(&mut stream, status, "text/plain", body.as_bytes()).await
        }
        "/metrics" => {
            let (users, connections) = hub.connection_counts();
            let mut body = hub.metrics.render();
            body.push_str(&gauge("users_online", "Users with at least one authenticated connection.", users as u64));
            body.push_str(&gauge("connections_authenticated", "Authenticated connections.", connections as u64));
            if let Some(stats) = hub.store.write_stats() {
                body.push_str(&store_metrics(&stats));
            }
            respond(&mut stream, 200, "text/plain; version=0.0.4", body.as_bytes()).await
        }
        "/status" => {
            let (users, connections) = hub.connection_counts();
            let body = serde_json::json!({
                "node": hub.node,
                "store": hub.store.backend(),
                "draining": hub.is_shutting_down(),
                "users_online": users,
                "connections": connections,
                "rooms": hub.active_rooms(),
            });
            respond(&mut stream, 200, "application/json", body.to_string().as_bytes()).await
        }
        // Cluster operator view (node/src/cluster.rs); `?room=ID` adds that room's owner.
        "/cluster" => {
            let query = request.path.and_then(|path| path.split_once('?')).map(|(_, query)| query);
            let body = crate::cluster::status(&hub, query).await;
            respond(&mut stream, 200, "application/json", body.to_string().as_bytes()).await
        }
        _ => match web.asset(path) {
            Some((content_type, body)) => respond_with(&mut stream, 200, content_type, web.headers(), body).await,
            None => respond(&mut stream, 404, "text/plain", b"not found\n").await,
        },
    }
}

/// Ready when not draining and the store answers a read.
/// Ready when not draining, serving rooms (in a cluster: linked to a quorum of its nodes) and
/// the store answers a read. A load balancer checks this, so an unready node is taken out of
/// rotation; the reason goes into the body and, at most every 30 s, into the log.
async fn readiness(hub: &Hub) -> (u16, String) {
    if hub.is_shutting_down() {
        return (503, "draining\n".into());
    }
    if let Some(reason) = hub.cluster().and_then(|cluster| cluster.view().reason.clone()) {
        log_unready(&format!("cluster: {reason}"));
        return (503, format!("cluster: {reason}\n"));
    }
    let unready = match tokio::time::timeout(Duration::from_secs(2), hub.store.room("readyz-probe")).await {
        Ok(Ok(_)) => return (200, "ready\n".into()),
        Ok(Err(err)) => format!("store: {err}"),
        Err(_) => "store: no answer within 2 s".to_string(),
    };
    log_unready(&unready);
    (503, format!("{unready}\n"))
}

/// Warn that the node is not ready, at most every 30 seconds (health checks come every second).
fn log_unready(reason: &str) {
    static LAST_WARNED_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = actors::names::now_ms();
    let last = LAST_WARNED_MS.load(std::sync::atomic::Ordering::Relaxed);
    if now.saturating_sub(last) >= 30_000
        && LAST_WARNED_MS
            .compare_exchange(last, now, std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed)
            .is_ok()
    {
        warn!(reason, "not ready: /readyz answers 503");
    }
}

/// The store's write-path counters in the Prometheus text format.
fn store_metrics(stats: &WriteStats) -> String {
    [
        counter(
            "store_write_transactions_total",
            "Write transactions committed by the store (group commits).",
            stats.write_transactions,
        ),
        counter(
            "store_write_transactions_inline_total",
            "Of those, committed on the rooms' thread without a hand-over to the store's writer.",
            stats.inline_write_transactions,
        ),
        counter(
            "store_write_requests_total",
            "Writes taken into a transaction; divided by the transactions, the mean group-commit batch.",
            stats.write_requests,
        ),
        counter(
            "store_write_failed_transactions_total",
            "Write transactions that failed to begin or commit.",
            stats.failed_transactions,
        ),
        gauge("store_writes_queued", "Writes waiting for the store's writer.", stats.queued_writes as u64),
    ]
    .concat()
}

/// One metric computed at request time (the rest are `actors::metrics::Metrics`).
fn counter(name: &str, help: &str, value: u64) -> String {
    metric(name, "counter", help, value)
}

fn gauge(name: &str, help: &str, value: u64) -> String {
    metric(name, "gauge", help, value)
}

fn metric(name: &str, kind: &str, help: &str, value: u64) -> String {
    format!("# HELP palaver_{name} {help}\n# TYPE palaver_{name} {kind}\npalaver_{name} {value}\n")
}

async fn respond(stream: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) -> io::Result<()> {
    respond_with(stream, status, content_type, "", body).await
}

/// `headers`: more header lines, each ending in CRLF.
async fn respond_with(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    headers: &str,
    body: &[u8],
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n{headers}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

/// Run a session over the upgraded connection, adapting tungstenite's messages to [`Wire`].
async fn websocket(stream: TcpStream, rest: Vec<u8>, peer: SocketAddr, hub: Arc<Hub>) {
    let max_frame = hub.limits.max_frame_bytes as usize;
    // Small buffers: tungstenite's defaults (128 KiB each) would cost far more than the whole
    // per-connection budget. Client frames are small; a larger one grows the buffer as needed.
    // A message is refused (and the connection lost) unless it fits the write buffer on top of
    // what is left of the last one (at most `write_buffer_size`: the sink flushes before taking
    // more), so the bound is the largest message the node writes, with room for its header.
    let write_buffer = 8 * 1024;
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(write_buffer)
        .max_write_buffer_size(write_buffer + hub.limits.max_message_bytes() + 16)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame));
    let ws = WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(config)).await;
    let (sink, stream) = ws.split();
    let sink = sink.with(|wire: Wire| async move {
        Ok::<Message, tungstenite::Error>(match wire {
            Wire::Text(text) => Message::Text(text.into()),
            // SAFETY: `SharedText` is made only from a `String` or `&str`, so its bytes are UTF-8;
            // the unchecked conversion skips validating the same bytes again for every one of a
            // large room's recipients.
            Wire::SharedText(text) => Message::Text(unsafe { Utf8Bytes::from_bytes_unchecked(text.into_bytes()) }),
            Wire::Binary(bytes) => Message::Binary(bytes),
            Wire::Close { code, reason } => {
                Message::Close(Some(CloseFrame { code: code.into(), reason: reason.into() }))
            }
        })
    });
    let stream = stream.filter_map(|message| async move {
        match message {
            Ok(Message::Text(text)) => Some(Ok(Wire::Text(text.as_str().to_owned()))),
            Ok(Message::Binary(bytes)) => Some(Ok(Wire::Binary(bytes))),
            Ok(Message::Close(frame)) => Some(Ok(Wire::Close {
                code: frame.as_ref().map_or(1005, |f| f.code.into()),
                reason: frame.map(|f| f.reason.as_str().to_owned()).unwrap_or_default(),
            })),
            // tungstenite answers pings itself.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => None,
            Err(tungstenite::Error::Capacity(err)) => Some(Err(WireError::TooLarge(err.to_string()))),
            Err(tungstenite::Error::Utf8) => Some(Err(WireError::InvalidText("invalid UTF-8".into()))),
            Err(err) => Some(Err(WireError::Broken(err.to_string()))),
        }
    });
    run_session(hub, Peer { addr: peer.to_string() }, Box::pin(sink), Box::pin(stream)).await;
}
