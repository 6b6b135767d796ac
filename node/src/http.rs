//! The client port: a small HTTP/1.1 server that upgrades `/ws` to WebSocket and serves the
//! health checks and the web client.
//!
//! Routes: `GET /ws` (WebSocket, the protocol of docs/PROTOCOL.md), `/healthz` (the process
//! answers), `/readyz` (the store answers and the node is not draining), `/` plus `/app/*`
//! (the bundled web client), and the media service's `POST /media` (uploads) and `GET`/`HEAD`
//! `/media/{id}[/thumb]` (downloads by signed link; `crate::media`). The operator endpoints
//! are on the admin port (`crate::admin`), and answer 404 here.
//!
//! Every connection is admitted first (`crate::admission`: `limits.max_connections` and
//! `limits.max_connections_per_address`), then, with `client.tls_*` set, the TLS handshake runs
//! (`crate::tls`), then the request head is read (`crate::request`), all within
//! `limits.hello_timeout_ms`. A WebSocket upgrade from a page of another origin is refused
//! with 403 (`crate::origin`). The handshake is done here rather than by tungstenite so that one
//! port serves both, and the WebSocket is then built with the configured limits (frame size,
//! small buffers: memory per idle connection is a target).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actors::encoded::{Wire, WireError};
use actors::hub::Hub;
use actors::session::{run_session, Peer};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

use crate::admission::Admission;
use crate::origin::AllowedOrigins;
use crate::request::{self, respond};
use crate::web;

/// How the client port is served besides its address.
pub struct ClientPort {
    /// TLS on the port, when configured.
    pub tls: Option<TlsAcceptor>,
    pub origins: AllowedOrigins,
    /// The bundled web client, with the nodes it may connect to.
    pub web: web::WebClient,
    /// Uploads and downloads under `/media`.
    pub media: Arc<crate::media::MediaService>,
}

/// Accept connections until `stop` turns true, then wait for open connections to finish (the
/// hub's shutdown makes WebSocket sessions send `reconnect` and close) for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    hub: Arc<Hub>,
    port: ClientPort,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let admission = Admission::new(hub.limits().max_connections, hub.limits().max_connections_per_address);
    let port = Arc::new(port);
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match admission.admit(peer.ip()) {
                    Ok(admitted) => {
                        let (hub, port) = (hub.clone(), port.clone());
                        tasks.spawn(async move {
                            let _admitted = admitted;
                            if let Err(err) = connection(stream, peer, hub, &port).await {
                                debug!(%peer, error = %err, "http connection ended with an error");
                            }
                        });
                    }
                    Err(refused) => {
                        actors::metrics::Metrics::inc(&hub.metrics().connections_refused_total);
                        debug!(%peer, ?refused, "connection refused at accept");
                        if let Some(answer) = admission.refuse(stream, refused) {
                            tasks.spawn(answer);
                        }
                    }
                },
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

/// One admitted TCP connection: the TLS handshake if the port has TLS, then the request.
async fn connection(stream: TcpStream, peer: SocketAddr, hub: Arc<Hub>, port: &ClientPort) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    // The handshake and the request head share one deadline.
    let deadline = Instant::now() + Duration::from_millis(hub.limits().hello_timeout_ms);
    match &port.tls {
        None => handle(stream, peer, hub, port, deadline).await,
        // Boxed: inline, the TLS handshake's and stream's state would size every plain
        // connection's task (a task is as large as its largest branch for as long as it lives).
        Some(acceptor) => Box::pin(tls_connection(stream, peer, hub, port, acceptor, deadline)).await,
    }
}

/// The TLS handshake, then the request over TLS.
async fn tls_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    hub: Arc<Hub>,
    port: &ClientPort,
    acceptor: &TlsAcceptor,
    deadline: Instant,
) -> io::Result<()> {
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return Ok(()),
    }
    if first[0] != crate::tls::HANDSHAKE_RECORD {
        // Plain HTTP to a TLS port: say so in plain HTTP, once the request is read (closing
        // with it unread would reset the connection before the answer is seen).
        if request::read_request(&mut stream, deadline).await.is_ok() {
            return respond(&mut stream, 400, "text/plain", b"this port speaks TLS: use https:// or wss://\n").await;
        }
        return Ok(());
    }
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => handle(stream, peer, hub, port, deadline).await,
        Ok(Err(err)) => {
            debug!(%peer, error = %err, "TLS handshake failed");
            Ok(())
        }
        Err(_) => Ok(()),
    }
}

/// Read the request head, then route.
async fn handle<S>(
    mut stream: S,
    peer: SocketAddr,
    hub: Arc<Hub>,
    port: &ClientPort,
    deadline: Instant,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut request = match request::read_request(&mut stream, deadline).await {
        Ok(request) => request,
        Err(err) => return request::answer_read_error(&mut stream, err).await,
    };
    if crate::media::is_media_path(&request.path) {
        // Boxed: an upload's or download's state is twice a WebSocket session's, and a
        // connection's task is as large as its largest branch for as long as it lives.
        return Box::pin(crate::media::serve(&mut stream, request, &hub, &port.media)).await;
    }
    if request.method != "GET" {
        // Paths not served here (the admin port's among them) are not found whatever the method.
        let served =
            matches!(request.path.as_str(), "/ws" | "/healthz" | "/readyz") || port.web.asset(&request.path).is_some();
        return match served {
            true => respond(&mut stream, 405, "text/plain", b"only GET is served here\n").await,
            false => respond(&mut stream, 404, "text/plain", b"not found\n").await,
        };
    }
    match request.path.as_str() {
        "/ws" => {
            let upgrade = request.header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            let (Some(key), true) = (request.header("sec-websocket-key"), upgrade) else {
                return respond(
                    &mut stream,
                    426,
                    "text/plain",
                    b"this endpoint speaks WebSocket; see docs/PROTOCOL.md\n",
                )
                .await;
            };
            if request.header("sec-websocket-version") != Some("13") {
                return respond(&mut stream, 426, "text/plain", b"WebSocket version 13 required\n").await;
            }
            if !port.origins.allows(request.header("origin"), request.header("host")) {
                debug!(%peer, origin = request.header("origin"), "WebSocket upgrade from another origin refused");
                return respond(
                    &mut stream,
                    403,
                    "text/plain",
                    b"this page's origin may not connect here (client.allowed_origins)\n",
                )
                .await;
            }
            if hub.is_shutting_down() {
                return respond(&mut stream, 503, "text/plain", b"node is shutting down\n").await;
            }
            let accept = derive_accept_key(key.as_bytes());
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            stream.write_all(response.as_bytes()).await?;
            // Only the bytes past the head are needed from here on: the rest of the request
            // (its headers on the heap) is dropped rather than held for the session's life.
            let rest = std::mem::take(&mut request.rest);
            drop((request, response));
            websocket(stream, rest, peer, hub).await;
            Ok(())
        }
        "/healthz" => respond(&mut stream, 200, "text/plain", b"ok\n").await,
        "/readyz" => {
            let (status, body) = readiness(&hub).await;
            respond(&mut stream, status, "text/plain", body.as_bytes()).await
        }
        path => match port.web.asset(path) {
            Some((content_type, body)) => {
                request::respond_with(&mut stream, 200, content_type, port.web.headers(), body).await
            }
            None => respond(&mut stream, 404, "text/plain", b"not found\n").await,
        },
    }
}

/// Ready when not draining, serving rooms (in a cluster: linked to a quorum of its nodes) and
/// the store answers a read. A load balancer checks this, so an unready node is taken out of
/// rotation; the reason goes into the body and, at most every 30 s, into the log.
async fn readiness(hub: &Hub) -> (u16, String) {
    if hub.is_shutting_down() {
        return (503, "draining\n".into());
    }
    if let Some(reason) = hub.not_serving() {
        log_unready(&format!("cluster: {reason}"));
        return (503, format!("cluster: {reason}\n"));
    }
    let unready = match tokio::time::timeout(Duration::from_secs(2), hub.store().room("readyz-probe")).await {
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

/// Run a session over the upgraded connection, adapting tungstenite's messages to [`Wire`].
async fn websocket<S>(stream: S, rest: Vec<u8>, peer: SocketAddr, hub: Arc<Hub>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max_frame = hub.limits().max_frame_bytes as usize;
    // Small buffers: tungstenite's defaults (128 KiB each) would cost far more than the whole
    // per-connection budget. Client frames are small; a larger one grows the buffer as needed.
    // A message is refused (and the connection lost) unless it fits the write buffer on top of
    // what is left of the last one (at most `write_buffer_size`: the sink flushes before taking
    // more), so the bound is the largest message the node writes, with room for its header.
    let write_buffer = 8 * 1024;
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(write_buffer)
        .max_write_buffer_size(write_buffer + hub.limits().max_message_bytes() + 16)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `make` would return, without calling it.
    fn future_size<A, B, C, D, F: std::future::Future>(_make: impl FnOnce(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every open connection holds its task's future, which is as large as its largest branch
    /// for as long as the connection lives, so a large rare branch (a media transfer, TLS) left
    /// inline costs every idle WebSocket its size. The bound is for this unoptimised test build
    /// (an optimised build's futures are smaller); inline, the media branch alone is larger.
    #[test]
    fn a_connection_task_is_not_sized_by_its_rare_branches() {
        let connection = future_size(|s: TcpStream, p: SocketAddr, h: Arc<Hub>, port: &'static ClientPort| {
            connection(s, p, h, port)
        });
        let media = future_size(
            |s: &'static mut TcpStream,
             r: request::Request,
             h: &'static Hub,
             m: &'static crate::media::MediaService| { crate::media::serve(s, r, h, m) },
        );
        assert!(connection <= 6 * 1024, "a connection's future is {connection} bytes");
        assert!(media > connection, "the media branch ({media} bytes) is no longer the large one: revisit this bound");
    }
}
