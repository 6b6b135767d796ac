//! Thin adapters: one per server, each speaking that server's own protocol over a WebSocket.
//!
//! | kind       | wire                                   | "room"              | login            |
//! |------------|----------------------------------------|---------------------|------------------|
//! | `palaver`  | palaver frames (JSON or MessagePack)   | room id             | register, login, authenticate |
//! | `nats`     | NATS text protocol in WebSocket frames | subject             | `CONNECT`        |
//! | `socketio` | Engine.IO v4 / Socket.IO v5 packets    | Socket.IO room      | namespace connect |
//! | `xmpp`     | RFC 7395 framing, XMPP stanzas         | MUC room JID        | SASL ANONYMOUS, bind |
//!
//! After set-up every connection is just a WebSocket: [`publish`] makes the frame that posts a
//! body to a room and [`keepalive`] answers the server's application-level pings (NATS `PING`,
//! Engine.IO `2`). Received bodies are found by the marker scan, whatever the framing.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use protocol::{ClientFrame, Encoding, ErrorCode, ServerFrame};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// How long one set-up step (connect, a request and its reply) may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Palaver,
    Nats,
    Socketio,
    Xmpp,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Palaver => "palaver",
            Kind::Nats => "nats",
            Kind::Socketio => "socketio",
            Kind::Xmpp => "xmpp",
        }
    }
}

/// One server (or, for palaver, the nodes of one cluster) to measure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub kind: Kind,
    /// WebSocket URLs; connection `i` uses `urls[i % len]` unless a scenario says otherwise.
    pub urls: Vec<String>,
    /// Server processes whose resident memory is measured.
    pub pids: Vec<u32>,
    /// palaver: `json` or `msgpack`.
    pub encoding: String,
    /// xmpp: the virtual host; rooms live on `conference.<domain>`.
    pub xmpp_domain: String,
    /// palaver: ask the node for batched frames (several per WebSocket message), as a client
    /// built for throughput would; `--no-batch` measures one frame per message.
    #[serde(default)]
    pub batch: bool,
    /// palaver: the admin port (`host:port`) of the node behind each of `urls`, in the same order
    /// (`--palaver-admin`); `/metrics` and `/cluster` are read there.
    #[serde(default)]
    pub admin: Vec<String>,
    /// palaver: the store behind the node when it is not the default (SQLite), as labels show
    /// it: `--palaver-fdb URL` names a node on FoundationDB, measured beside `--palaver`.
    #[serde(default)]
    pub store: Option<String>,
}

impl Target {
    pub fn label(&self) -> String {
        let label = self.kind_label();
        match &self.store {
            Some(store) => format!("{label} on {store}"),
            None => label,
        }
    }

    fn kind_label(&self) -> String {
        match self.kind {
            Kind::Palaver if !self.batch => {
                format!("palaver{} (unbatched)", if self.encoding == "msgpack" { " msgpack" } else { "" })
            }
            Kind::Palaver if self.encoding == "msgpack" => "palaver (msgpack)".into(),
            Kind::Socketio => "socket.io (python)".into(),
            Kind::Xmpp => "ejabberd (muc)".into(),
            Kind::Nats => "nats (ws)".into(),
            Kind::Palaver => "palaver".into(),
        }
    }

    /// The admin port of the node behind WebSocket URL `url`.
    pub fn admin_of(&self, url: &str) -> anyhow::Result<&str> {
        let index = self.urls.iter().position(|u| u == url).with_context(|| format!("{url} is not a server URL"))?;
        self.admin.get(index).map(String::as_str).with_context(|| {
            format!("no admin port for {url}: pass --palaver-admin HOST:PORT[,…], one per --palaver URL")
        })
    }

    pub fn palaver_encoding(&self) -> Encoding {
        if self.encoding == "msgpack" {
            Encoding::MessagePack
        } else {
            Encoding::Json
        }
    }

    /// The identifier of a logical room for this server.
    pub fn room_name(&self, logical: &str) -> String {
        match self.kind {
            Kind::Xmpp => format!("{logical}@conference.{}", self.xmpp_domain),
            Kind::Nats => logical.replace('-', "."),
            _ => logical.to_string(),
        }
    }
}

/// The `k`-th source address: 127.0.0.1, then 127.0.1.1, 127.0.2.1 … (`sources` of them).
/// Each source address has its own range of ephemeral ports towards one server port.
pub fn source_addr(index: usize, sources: usize) -> Option<Ipv4Addr> {
    if sources <= 1 {
        return None;
    }
    let k = (index % sources) as u8;
    Some(Ipv4Addr::new(127, 0, k, 1))
}

/// Open a WebSocket from `src` with small buffers (the client side of 20,000 connections must
/// fit too).
pub async fn ws_connect(url: &str, src: Option<Ipv4Addr>, subprotocol: Option<&str>) -> anyhow::Result<Ws> {
    let mut request = url.into_client_request()?;
    if let Some(subprotocol) = subprotocol {
        request.headers_mut().insert("Sec-WebSocket-Protocol", subprotocol.parse()?);
    }
    let host = request.uri().host().ok_or_else(|| anyhow!("no host in {url}"))?.trim_matches(|c| c == '[' || c == ']');
    let port = request.uri().port_u16().unwrap_or(80);
    let addr: SocketAddr = tokio::net::lookup_host((host, port))
        .await?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| anyhow!("{host} has no IPv4 address"))?;
    let socket = TcpSocket::new_v4()?;
    if let Some(src) = src {
        socket.bind(SocketAddr::new(src.into(), 0)).with_context(|| format!("binding {src}"))?;
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(64 << 20)
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20));
    let work = async {
        let stream = socket.connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
        Ok::<_, anyhow::Error>(ws)
    };
    tokio::time::timeout(STEP_TIMEOUT, work)
        .await
        .map_err(|_| anyhow!("WebSocket to {url} not open within {STEP_TIMEOUT:?}"))?
}

/// The next data payload (text or binary), answering nothing; fails on close or timeout.
pub async fn next_payload(ws: &mut Ws) -> anyhow::Result<Vec<u8>> {
    loop {
        let message = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .map_err(|_| anyhow!("no frame within {STEP_TIMEOUT:?}"))?
            .ok_or_else(|| anyhow!("connection ended"))??;
        match message {
            Message::Text(text) => return Ok(text.as_bytes().to_vec()),
            Message::Binary(bytes) => return Ok(bytes.to_vec()),
            Message::Close(frame) => bail!("closed by server: {frame:?}"),
            _ => {}
        }
    }
}

/// The frame that publishes `body` to `room`; `seq` numbers the connection's publications.
pub fn publish(target: &Target, room: &str, run: &str, seq: u64, body: &str) -> Message {
    match target.kind {
        Kind::Palaver => {
            let frame = ClientFrame::send(seq + 1_000, room.to_string(), format!("{run}-{seq}"), body.to_string());
            palaver_message(target.palaver_encoding(), &frame)
        }
        Kind::Nats => Message::Binary(format!("PUB {room} {}\r\n{body}\r\n", body.len()).into_bytes().into()),
        Kind::Socketio => Message::Text(format!("42[\"msg\",{{\"room\":\"{room}\",\"body\":\"{body}\"}}]").into()),
        Kind::Xmpp => Message::Text(
            format!("<message to='{room}' type='groupchat' id='{run}-{seq}'><body>{body}</body></message>").into(),
        ),
    }
}

/// The answer to an application-level keep-alive in `payload`, if it is one.
pub fn keepalive(kind: Kind, payload: &[u8]) -> Option<Message> {
    match kind {
        Kind::Nats => {
            let ping = payload.starts_with(b"PING\r\n") || memchr::memmem::find(payload, b"\r\nPING\r\n").is_some();
            ping.then(|| Message::Binary(b"PONG\r\n".to_vec().into()))
        }
        Kind::Socketio => (payload == b"2").then(|| Message::Text("3".into())),
        Kind::Palaver | Kind::Xmpp => None,
    }
}

/// What a connection is after set-up.
pub struct Opened {
    pub ws: Ws,
    /// palaver: the user's log head when it authenticated (where a resume would start).
    pub cursor: u64,
    /// The rooms it is in, in this server's naming (direct rooms included).
    pub rooms: Vec<String>,
}

/// Credentials of connection `index` of a run.
pub fn user_name(run: &str, index: usize) -> String {
    format!("u{run}-{index}")
}

pub fn password(user: &str) -> String {
    format!("password-of-{user}")
}

/// [`open`], tried three times with a growing pause: with thousands of connections opening at
/// once, a server (or the loopback) refuses a few, and one refusal should not fail a run.
#[allow(clippy::too_many_arguments)]
pub async fn open_retrying(
    target: &Target,
    url: &str,
    src: Option<Ipv4Addr>,
    run: &str,
    index: usize,
    token: Option<&str>,
    rooms: &[String],
    direct_with: Option<usize>,
) -> anyhow::Result<Opened> {
    let mut last = None;
    for attempt in 0..3u64 {
        match open(target, url, src, run, index, token, rooms, direct_with).await {
            Ok(opened) => return Ok(opened),
            Err(err) => last = Some(err),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200 * (attempt + 1))).await;
    }
    Err(last.expect("three attempts failed"))
}

/// Connect as user `index`, log in (palaver: with `token` if given, else register and log in
/// first), join `rooms`, open a direct room with `direct_with` if given.
// Eight plain arguments read better at the call sites than a one-use options struct.
#[allow(clippy::too_many_arguments)]
pub async fn open(
    target: &Target,
    url: &str,
    src: Option<Ipv4Addr>,
    run: &str,
    index: usize,
    token: Option<&str>,
    rooms: &[String],
    direct_with: Option<usize>,
) -> anyhow::Result<Opened> {
    match target.kind {
        Kind::Palaver => {
            let enc = target.palaver_encoding();
            let user = user_name(run, index);
            let mut ws = ws_connect(url, src, None).await?;
            palaver_hello(&mut ws, enc, target.batch).await?;
            let token = match token {
                Some(token) => token.to_string(),
                None => palaver_account(&mut ws, enc, &user).await?,
            };
            let cursor = palaver_authenticate(&mut ws, enc, &token, None).await?;
            let mut joined = Vec::new();
            for room in rooms {
                palaver_join(&mut ws, enc, room).await?;
                joined.push(room.clone());
            }
            if let Some(peer) = direct_with {
                let reply =
                    palaver_request(&mut ws, enc, ClientFrame::OpenDirect { req: 7, user: user_name(run, peer) })
                        .await?;
                match reply {
                    ServerFrame::Room { room, .. } => joined.push(room.id),
                    other => bail!("open_direct: {other:?}"),
                }
            }
            Ok(Opened { ws, cursor, rooms: joined })
        }
        Kind::Nats => {
            let mut ws = ws_connect(url, src, None).await?;
            let info = next_payload(&mut ws).await?;
            if !info.starts_with(b"INFO") {
                bail!("NATS: expected INFO, got {:?}", String::from_utf8_lossy(&info));
            }
            let mut setup = String::from(
                "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"echo\":true,\"name\":\"loadgen\",\"lang\":\"rust\",\"version\":\"0\"}\r\n",
            );
            let mut joined: Vec<String> = rooms.to_vec();
            if let Some(peer) = direct_with {
                joined.push(target.room_name(&direct_room(run, index, peer)));
            }
            for (sid, room) in joined.iter().enumerate() {
                setup.push_str(&format!("SUB {room} {}\r\n", sid + 1));
            }
            setup.push_str("PING\r\n");
            ws.send(Message::Binary(setup.into_bytes().into())).await?;
            loop {
                let payload = next_payload(&mut ws).await?;
                if memchr::memmem::find(&payload, b"PONG").is_some() {
                    break;
                }
                if payload.starts_with(b"-ERR") {
                    bail!("NATS: {}", String::from_utf8_lossy(&payload));
                }
                if let Some(reply) = keepalive(Kind::Nats, &payload) {
                    ws.send(reply).await?;
                }
            }
            Ok(Opened { ws, cursor: 0, rooms: joined })
        }
        Kind::Socketio => {
            let mut ws = ws_connect(url, src, None).await?;
            let open = next_payload(&mut ws).await?;
            if !open.starts_with(b"0") {
                bail!("Engine.IO: expected open packet, got {:?}", String::from_utf8_lossy(&open));
            }
            ws.send(Message::Text("40".into())).await?;
            loop {
                let payload = next_payload(&mut ws).await?;
                if payload.starts_with(b"40") {
                    break;
                }
                if payload.starts_with(b"44") {
                    bail!("Socket.IO connect refused: {}", String::from_utf8_lossy(&payload));
                }
                if let Some(reply) = keepalive(Kind::Socketio, &payload) {
                    ws.send(reply).await?;
                }
            }
            let mut joined: Vec<String> = rooms.to_vec();
            if let Some(peer) = direct_with {
                joined.push(direct_room(run, index, peer));
            }
            for (ack, room) in joined.iter().enumerate() {
                ws.send(Message::Text(format!("42{ack}[\"join\",\"{room}\"]").into())).await?;
                let want = format!("43{ack}[");
                loop {
                    let payload = next_payload(&mut ws).await?;
                    if payload.starts_with(want.as_bytes()) {
                        break;
                    }
                    if let Some(reply) = keepalive(Kind::Socketio, &payload) {
                        ws.send(reply).await?;
                    }
                }
            }
            Ok(Opened { ws, cursor: 0, rooms: joined })
        }
        Kind::Xmpp => {
            let mut ws = ws_connect(url, src, Some("xmpp")).await?;
            let domain = &target.xmpp_domain;
            let open = format!("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='{domain}' version='1.0'/>");
            ws.send(Message::Text(open.clone().into())).await?;
            xmpp_until(&mut ws, "</stream:features>").await?;
            ws.send(Message::Text("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>".into()))
                .await?;
            let reply = xmpp_until_any(&mut ws, &["<success", "<failure"]).await?;
            if reply.contains("<failure") {
                bail!("XMPP SASL ANONYMOUS refused: {reply}");
            }
            ws.send(Message::Text(open.into())).await?;
            xmpp_until(&mut ws, "</stream:features>").await?;
            ws.send(Message::Text(
                "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>".into(),
            ))
            .await?;
            xmpp_until(&mut ws, "bind1").await?;
            let mut joined: Vec<String> = rooms.to_vec();
            if let Some(peer) = direct_with {
                joined.push(target.room_name(&direct_room(run, index, peer)));
            }
            let nick = user_name(run, index);
            for room in &joined {
                let presence = format!(
                    "<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>"
                );
                ws.send(Message::Text(presence.into())).await?;
                // The self-presence (status 110) ends the join; others' presences come before it.
                let reply = xmpp_until_any(
                    &mut ws,
                    &["status code='110'", "status code=\"110\"", "type='error'", "type=\"error\""],
                )
                .await?;
                if reply.contains("error") && !reply.contains("110") {
                    bail!("XMPP join of {room} refused: {reply}");
                }
            }
            Ok(Opened { ws, cursor: 0, rooms: joined })
        }
    }
}

/// The logical name of the direct room of users `a` and `b` (peers without direct rooms model
/// one as a two-member room).
pub fn direct_room(run: &str, a: usize, b: usize) -> String {
    format!("dm-{run}-{}-{}", a.min(b), a.max(b))
}

async fn xmpp_until(ws: &mut Ws, needle: &str) -> anyhow::Result<String> {
    xmpp_until_any(ws, &[needle]).await
}

async fn xmpp_until_any(ws: &mut Ws, needles: &[&str]) -> anyhow::Result<String> {
    loop {
        let payload = next_payload(ws).await?;
        let text = String::from_utf8_lossy(&payload).into_owned();
        if needles.iter().any(|needle| text.contains(needle)) {
            return Ok(text);
        }
        if text.contains("<close") || text.contains("stream:error") {
            bail!("XMPP stream closed: {text}");
        }
    }
}

// ---- palaver ------------------------------------------------------------------------------

pub fn palaver_message(enc: Encoding, frame: &ClientFrame) -> Message {
    let bytes = protocol::encode_client(enc, frame);
    match enc {
        Encoding::Json => Message::Text(String::from_utf8(bytes).expect("JSON is UTF-8").into()),
        Encoding::MessagePack => Message::Binary(bytes.into()),
    }
}

/// The frames of the next WebSocket message (several when the connection asked for batches).
pub async fn palaver_recv(ws: &mut Ws) -> anyhow::Result<Vec<ServerFrame>> {
    loop {
        let message = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .map_err(|_| anyhow!("no frame within {STEP_TIMEOUT:?}"))?
            .ok_or_else(|| anyhow!("connection ended"))??;
        return Ok(match message {
            Message::Text(text) => protocol::decode_server_batch(Encoding::Json, text.as_bytes())?,
            Message::Binary(bytes) => protocol::decode_server_batch(Encoding::MessagePack, &bytes)?,
            Message::Close(frame) => bail!("closed by node: {frame:?}"),
            _ => continue,
        });
    }
}

/// Send a request and wait for its reply, skipping deliveries and other frames.
pub async fn palaver_request(ws: &mut Ws, enc: Encoding, frame: ClientFrame) -> anyhow::Result<ServerFrame> {
    let req = frame.req();
    ws.send(palaver_message(enc, &frame)).await?;
    loop {
        for reply in palaver_recv(ws).await? {
            if ::tests::reply_req(&reply) == Some(req) {
                return Ok(reply);
            }
        }
    }
}

pub async fn palaver_hello(ws: &mut Ws, enc: Encoding, batch: bool) -> anyhow::Result<()> {
    let hello = ClientFrame::Hello { versions: vec![1], client: Some("loadgen".into()), batch };
    ws.send(palaver_message(enc, &hello)).await?;
    match palaver_recv(ws).await?.as_slice() {
        [ServerFrame::Welcome { batch: granted, .. }] if *granted == batch => Ok(()),
        other => bail!("hello: {other:?}"),
    }
}

/// Register (an existing account is fine) and log in; returns the token.
pub async fn palaver_account(ws: &mut Ws, enc: Encoding, user: &str) -> anyhow::Result<String> {
    let password = password(user);
    for attempt in 0..20 {
        match palaver_request(ws, enc, ClientFrame::Register { req: 1, user: user.into(), password: password.clone() })
            .await?
        {
            ServerFrame::Registered { .. } | ServerFrame::Error { code: ErrorCode::UserExists, .. } => break,
            ServerFrame::Error {
                code: ErrorCode::RateLimited | ErrorCode::SlowDown | ErrorCode::Unavailable, ..
            } if attempt < 19 => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => bail!("register {user}: {other:?}"),
        }
    }
    for attempt in 0..20 {
        match palaver_request(ws, enc, ClientFrame::Login { req: 2, user: user.into(), password: password.clone() })
            .await?
        {
            ServerFrame::LoggedIn { token, .. } => return Ok(token),
            ServerFrame::Error {
                code: ErrorCode::RateLimited | ErrorCode::SlowDown | ErrorCode::Unavailable,
                retry_after_ms,
                ..
            } if attempt < 19 => {
                tokio::time::sleep(Duration::from_millis(retry_after_ms.unwrap_or(200).min(5_000))).await;
            }
            other => bail!("login {user}: {other:?}"),
        }
    }
    bail!("login {user}: rate limited too long")
}

/// Authenticate; returns the user's log head. With a cursor, the replay follows (not read here).
pub async fn palaver_authenticate(ws: &mut Ws, enc: Encoding, token: &str, cursor: Option<u64>) -> anyhow::Result<u64> {
    match palaver_request(
        ws,
        enc,
        ClientFrame::Authenticate { req: 3, token: token.into(), cursor, rooms: Default::default() },
    )
    .await?
    {
        ServerFrame::Authenticated { cursor, .. } => Ok(cursor),
        other => bail!("authenticate: {other:?}"),
    }
}

pub async fn palaver_join(ws: &mut Ws, enc: Encoding, room: &str) -> anyhow::Result<()> {
    for attempt in 0..20 {
        match palaver_request(ws, enc, ClientFrame::Join { req: 4, room: room.into() }).await? {
            ServerFrame::Room { .. } => return Ok(()),
            ServerFrame::Error { code: ErrorCode::SlowDown | ErrorCode::Unavailable, .. } if attempt < 19 => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => bail!("join {room}: {other:?}"),
        }
    }
    bail!("join {room}: node kept refusing")
}

pub async fn palaver_create_room(ws: &mut Ws, enc: Encoding, name: &str) -> anyhow::Result<String> {
    match palaver_request(ws, enc, ClientFrame::CreateRoom { req: 5, name: name.into(), private: false }).await? {
        ServerFrame::Room { room, .. } => Ok(room.id),
        other => bail!("create_room {name}: {other:?}"),
    }
}

/// GET `path` from a node's admin port (`host:port`), as JSON.
pub async fn http_get_json(admin: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&http_get_text(admin, path).await?)?)
}

/// The body of `GET path` on a node's admin port (`host:port`).
pub async fn http_get_text(admin: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = admin;
    let mut stream = tokio::net::TcpStream::connect(authority).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP response")?;
    anyhow::ensure!(head.split_whitespace().nth(1) == Some("200"), "GET {path}: {head}");
    Ok(body.to_string())
}

/// The latency histograms a palaver node keeps of a message's way through it (see README,
/// Operations), by their name in the load generator's output.
const NODE_HISTOGRAMS: [(&str, &str); 3] = [
    ("append_wait", "palaver_append_wait_seconds"),
    ("commit", "palaver_commit_seconds"),
    ("delivery_wait", "palaver_delivery_wait_seconds"),
];

/// Counters read with the histograms: the entries the node committed, and what it sent to other
/// nodes and spared them (targeted delivery), so a phase can say how many inter-node
/// deliveries each of its entries cost. A node without a counter (one before targeted
/// delivery has no `spared`) reads 0 for it.
const NODE_COUNTERS: [(&str, &str); 3] = [
    ("entries", "palaver_entries_appended_total"),
    ("sent_to_nodes", "palaver_cluster_deliveries_sent_total"),
    ("spared_nodes", "palaver_cluster_deliveries_spared_total"),
];

/// One reading of the node's latency histograms (`/metrics` on its admin port): sum and count
/// of each of [`NODE_HISTOGRAMS`], the commit histogram's cumulative buckets, and
/// [`NODE_COUNTERS`].
pub struct NodeReading {
    totals: Vec<(f64, f64)>,
    counters: Vec<f64>,
    /// `(upper bound in seconds, observations at or under it)`, in the order rendered.
    commit_buckets: Vec<(f64, f64)>,
}

/// Read the node's latency histograms from `/metrics` on its admin port.
pub async fn node_latency_totals(admin: &str) -> anyhow::Result<NodeReading> {
    let text = http_get_text(admin, "/metrics").await?;
    let sample = |name: String| {
        text.lines().find_map(|line| line.strip_prefix(name.as_str())?.strip_prefix(' ')?.trim().parse::<f64>().ok())
    };
    let totals = NODE_HISTOGRAMS
        .iter()
        .map(|(_, metric)| {
            let sum = sample(format!("{metric}_sum")).with_context(|| format!("{metric}_sum on /metrics"))?;
            let count = sample(format!("{metric}_count")).with_context(|| format!("{metric}_count on /metrics"))?;
            Ok((sum, count))
        })
        .collect::<anyhow::Result<_>>()?;
    let counters = NODE_COUNTERS.iter().map(|(_, metric)| sample(metric.to_string()).unwrap_or(0.0)).collect();
    let commit_buckets = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("palaver_commit_seconds_bucket{le=\"")?;
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound == "+Inf" { f64::INFINITY } else { bound.parse().ok()? };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect();
    Ok(NodeReading { totals, counters, commit_buckets })
}

/// The mean of each histogram between two readings of [`node_latency_totals`], in
/// milliseconds (`null` where nothing was observed), and the commit's p50 and p99 as the upper
/// bound of the bucket they fall in (`commit_p50_le_ms`, `commit_p99_le_ms`): the node keeps
/// buckets, not samples, so "at most" is what it can say. Also how much each of
/// [`NODE_COUNTERS`] grew.
pub fn node_latency_means(before: &NodeReading, after: &NodeReading) -> serde_json::Value {
    let mut means = serde_json::Map::new();
    for ((name, _), ((sum0, count0), (sum1, count1))) in
        NODE_HISTOGRAMS.iter().zip(before.totals.iter().zip(&after.totals))
    {
        let count = count1 - count0;
        let mean = (count > 0.0).then(|| 1000.0 * (sum1 - sum0) / count);
        means.insert(format!("{name}_ms"), serde_json::json!(mean));
    }
    let buckets: Vec<(f64, f64)> = after
        .commit_buckets
        .iter()
        .map(|&(bound, count)| {
            let earlier = before.commit_buckets.iter().find(|(b, _)| *b == bound).map_or(0.0, |(_, c)| *c);
            (bound, count - earlier)
        })
        .collect();
    means.insert("commits".into(), serde_json::json!(buckets.last().map_or(0.0, |(_, c)| *c)));
    for ((name, _), (c0, c1)) in NODE_COUNTERS.iter().zip(before.counters.iter().zip(&after.counters)) {
        means.insert((*name).into(), serde_json::json!(c1 - c0));
    }
    for (key, quantile) in [("commit_p50_le_ms", 0.50), ("commit_p99_le_ms", 0.99)] {
        means.insert(key.into(), serde_json::json!(bucket_quantile_ms(&buckets, quantile)));
    }
    serde_json::Value::Object(means)
}

/// The upper bound (ms) of the bucket holding quantile `q` of cumulative `buckets`; `None`
/// with no observation, or past the last finite bound.
fn bucket_quantile_ms(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = (q * total).ceil().max(1.0);
    let (bound, _) = buckets.iter().find(|(_, count)| *count >= rank)?;
    bound.is_finite().then_some(bound * 1000.0)
}

/// A fresh connection of user `index` that creates a room and returns its id (the creator is
/// its first member).
pub async fn palaver_new_room(
    target: &Target,
    url: &str,
    run: &str,
    index: usize,
    name: &str,
) -> anyhow::Result<String> {
    let opened = open(target, url, None, run, index, None, &[], None).await?;
    let mut ws = opened.ws;
    let id = palaver_create_room(&mut ws, target.palaver_encoding(), name).await?;
    let _ = ws.close(None).await;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::bucket_quantile_ms;

    #[test]
    fn a_quantile_is_the_bound_of_the_bucket_it_falls_in() {
        // 10 at ≤ 1 ms, 89 more at ≤ 2 ms, one at ≤ 5 ms.
        let buckets = [(0.0005, 0.0), (0.001, 10.0), (0.002, 99.0), (0.005, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(bucket_quantile_ms(&buckets, 0.10), Some(1.0));
        assert_eq!(bucket_quantile_ms(&buckets, 0.50), Some(2.0));
        assert_eq!(bucket_quantile_ms(&buckets, 0.99), Some(2.0));
        assert_eq!(bucket_quantile_ms(&buckets, 1.0), Some(5.0));
    }

    #[test]
    fn no_observation_or_one_past_the_last_bound_has_no_quantile() {
        assert_eq!(bucket_quantile_ms(&[(0.001, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        assert_eq!(bucket_quantile_ms(&[(0.001, 0.0), (f64::INFINITY, 3.0)], 0.5), None);
        assert_eq!(bucket_quantile_ms(&[], 0.5), None);
    }
}
