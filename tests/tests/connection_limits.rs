//! Connection admission on the client port: every connection, plain HTTP included, holds one of
//! `limits.max_connections` from the moment it is accepted, and one address holds at most
//! `limits.max_connections_per_address`. Refused connections get an HTTP answer (503: node
//! full, 429: address full), and a slot freed is a slot usable again.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure};
use tests::{Client, Encoding, Node, NodeOptions, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite;

/// A WebSocket connect that must be refused with `status`.
async fn refused_with(url: &str, stream: TcpStream, status: u16) -> anyhow::Result<()> {
    match tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream)).await? {
        Err(tungstenite::Error::Http(response)) if response.status().as_u16() == status => Ok(()),
        Err(other) => bail!("expected a refusal with {status}, got {other}"),
        Ok(_) => bail!("expected a refusal with {status}, but the WebSocket opened"),
    }
}

/// A TCP connection to `node` from `source` (an address of 127.0.0.0/8).
async fn connect_from(source: &str, node: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse()?)?;
    Ok(socket.connect(node).await?)
}

/// Retry `attempt` until it succeeds: the node sees a closed connection a moment after the client.
async fn eventually<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    mut attempt: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) if tokio::time::Instant::now() > deadline => return Err(err),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn one_address_holds_at_most_its_share_of_connections() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default().env("LIMITS__MAX_CONNECTIONS_PER_ADDRESS", 3)).await?;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(&node, Encoding::Json).await?;
        client.ping().await?;
        open.push(client);
    }
    // The fourth from 127.0.0.1, WebSocket or plain HTTP, is refused.
    refused_with(&node.ws_url(), TcpStream::connect(node.addr).await?, 429).await?;
    let (status, body) = node.http_get("/healthz").await?;
    ensure!(status == 429 && body.contains("max_connections_per_address"), "/healthz: {status} {body}");
    // Another address is not affected (127.0.0.2 is loopback too).
    let other = connect_from("127.0.0.2", node.addr).await?;
    let mut stranger = Client::connect_over(node.ws_url(), Box::new(other), Encoding::Json).await?;
    stranger.greet().await?;
    stranger.ping().await?;
    // The ones open keep working, and a closed one frees its slot.
    open[1].ping().await?;
    open.pop().expect("three open").close().await?;
    let mut again = eventually(|| Client::connect(&node, Encoding::Json)).await?;
    again.ping().await?;
    Ok(())
}

#[tokio::test]
async fn plain_http_connections_hold_a_slot_from_accept() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default().env("LIMITS__MAX_CONNECTIONS", 3)).await?;
    // Three connections that never finish a request: accepted, nothing read yet.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(node.addr).await?;
        stream.write_all(b"GET /healthz HTTP/1.1\r\n").await?;
        idle.push(stream);
    }
    // They fill the node: a WebSocket is refused with 503, and so is HTTP.
    refused_with(&node.ws_url(), TcpStream::connect(node.addr).await?, 503).await?;
    let (status, body) = node.http_get("/healthz").await?;
    ensure!(status == 503 && body.contains("max_connections"), "/healthz on a full node: {status} {body}");
    // One finishes its request and is answered: its slot comes back with it.
    let mut first = idle.remove(0);
    first.write_all(b"Host: x\r\n\r\n").await?;
    let mut response = String::new();
    tokio::time::timeout(WAIT, first.read_to_string(&mut response)).await??;
    ensure!(response.starts_with("HTTP/1.1 200"), "the idle request, finished: {response}");
    let mut client = eventually(|| Client::connect(&node, Encoding::Json)).await?;
    client.ping().await?;
    Ok(())
}
