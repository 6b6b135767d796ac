//! A client for palaver's WebSocket protocol (docs/PROTOCOL.md) that keeps the delivery contract
//! for you, as `sdk/js/palaver.js` does in JavaScript:
//!
//! - it connects, says `hello` (asking for batched frames), authenticates and resumes: the
//!   highest `cursor` of the user's log and the highest `seq` of each large room are kept in a
//!   [`State`] (persist it with [`Client::state`] if you like) and presented on every connect,
//!   and entries at or below them are dropped, so [`Event::Message`] gives every entry once, in
//!   order;
//! - [`Client::send`] puts the message in the outbox with a client id before sending it, and
//!   every reconnect sends what is still there again with the same id until acknowledged (the
//!   node answers a repeat with the original ack): nothing lost, nothing doubled;
//! - it reconnects by itself with exponential backoff and full jitter, across the URLs given,
//!   at once when a draining node says `reconnect`;
//! - [`Client::request`] sends any request and waits for its reply, matched by `req`.
//!
//! One task owns the connection; the [`Client`] handle talks to it over channels.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::{ClientFrame, Cursor, Encoding, Entry, ErrorCode, ReqId, ServerFrame};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Where the client stands: what it has received and what it has not had acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub cursor: Cursor,
    /// The highest seq received in each large room.
    pub positions: BTreeMap<String, u64>,
    /// Messages not acknowledged yet, oldest first.
    pub outbox: Vec<Outgoing>,
}

/// A message in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    pub id: String,
    pub room: String,
    pub body: String,
}

/// How to reach the node and behave.
#[derive(Debug, Clone)]
pub struct Config {
    /// `ws://…/ws` URLs, tried in turn.
    pub urls: Vec<String>,
    pub token: String,
    pub encoding: Encoding,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub request_timeout: Duration,
}

impl Config {
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Config {
        Config {
            urls: vec![url.into()],
            token: token.into(),
            encoding: Encoding::Json,
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(15),
            request_timeout: Duration::from_secs(15),
        }
    }
}

/// What the client tells the application.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A room entry, once, in order.
    Message { cursor: Option<Cursor>, entry: Entry },
    /// Caught up after a (re)connect; live from here.
    Live,
    /// The cursor was older than the node keeps: reload rooms and history.
    Resync,
    /// A message of the outbox was committed.
    Acked { id: String, room: String, seq: u64, duplicate: bool },
    /// A message of the outbox was refused for good (not a member, too long, …) and dropped.
    Refused { id: String, code: ErrorCode, message: String },
    /// The connection went down; the client is reconnecting.
    Offline,
    /// The token no longer opens anything: the client has stopped.
    Stopped(ErrorCode),
    /// Anything else the node pushed unasked (presence, typing, receipts, reactions, reads).
    Push(ServerFrame),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the node refused: {code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("not connected")]
    NotConnected,
    #[error("no reply within the request timeout")]
    Timeout,
    #[error("the client has stopped")]
    Stopped,
}

enum Command {
    Request(ClientFrame, oneshot::Sender<Result<ServerFrame, Error>>),
    Send(Outgoing),
    Close,
}

/// A handle on the client's connection task.
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<State>,
    live: watch::Receiver<bool>,
    timeout: Duration,
}

impl Client {
    /// Start the connection task (it connects at once and keeps reconnecting until
    /// [`Client::close`]), resuming from `state`; events arrive on the returned receiver.
    pub fn start(config: Config, state: State) -> (Client, mpsc::UnboundedReceiver<Event>) {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (events, event_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(state.clone());
        let (live_tx, live_rx) = watch::channel(false);
        let timeout = config.request_timeout;
        let task = Connection {
            config,
            state,
            state_tx,
            live_tx,
            events,
            pending: HashMap::new(),
            next_req: 1,
            outbox_sent: HashMap::new(),
            next_outbox_req: OUTBOX_REQS,
        };
        tokio::spawn(task.run(command_rx));
        (Client { commands, state: state_rx, live: live_rx, timeout }, event_rx)
    }

    /// Wait until the client is live (caught up after connecting).
    pub async fn wait_live(&mut self) -> Result<(), Error> {
        self.live.wait_for(|live| *live).await.map(|_| ()).map_err(|_| Error::Stopped)
    }

    /// Send a text message: into the outbox at once, to the node when live, again after every
    /// reconnect until acknowledged ([`Event::Acked`] says when). Returns its client id.
    pub fn send(&self, room: impl Into<String>, body: impl Into<String>) -> String {
        let id = new_message_id();
        self.send_with_id(id.clone(), room, body);
        id
    }

    /// [`Client::send`] with the id chosen by the caller (a retry of a message it already sent).
    pub fn send_with_id(&self, id: String, room: impl Into<String>, body: impl Into<String>) {
        let _ = self.commands.send(Command::Send(Outgoing { id, room: room.into(), body: body.into() }));
    }

    /// Send any request (its `req` is set here) and wait for the reply.
    pub async fn request(&self, frame: ClientFrame) -> Result<ServerFrame, Error> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Request(frame, reply)).map_err(|_| Error::Stopped)?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::NotConnected),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Where the client stands now: save it to resume in another process.
    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Stop: close the connection, no reconnect.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }
}

/// A client id: unique per sender, reused on every retry of that message.
pub fn new_message_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Connection {
    config: Config,
    state: State,
    state_tx: watch::Sender<State>,
    live_tx: watch::Sender<bool>,
    events: mpsc::UnboundedSender<Event>,
    pending: HashMap<ReqId, oneshot::Sender<Result<ServerFrame, Error>>>,
    next_req: ReqId,
    /// Outbox messages sent on this connection, by the req they went with.
    outbox_sent: HashMap<ReqId, String>,
    next_outbox_req: ReqId,
}

/// How a connection ended.
enum Ended {
    Lost,
    Drained,
    Closed,
    Stopped,
}

impl Connection {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut attempt: u32 = 0;
        for url in self.config.urls.clone().iter().cycle() {
            let ended = match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok((socket, _)) => {
                    let ended = self.serve(socket, &mut commands).await;
                    if *self.live_tx.borrow() {
                        // It was up: the next failure starts the backoff afresh.
                        attempt = 0;
                    }
                    ended
                }
                Err(err) => {
                    tracing::debug!(%url, %err, "palaver-client: cannot connect");
                    Ended::Lost
                }
            };
            self.live_tx.send_replace(false);
            for (_, reply) in self.pending.drain() {
                let _ = reply.send(Err(Error::NotConnected));
            }
            let pause = match ended {
                Ended::Closed | Ended::Stopped => return,
                Ended::Drained => Duration::ZERO,
                Ended::Lost => {
                    let _ = self.events.send(Event::Offline);
                    attempt = attempt.saturating_add(1);
                    let ceiling =
                        self.config.min_backoff.saturating_mul(1 << attempt.min(16)).min(self.config.max_backoff);
                    // Full jitter: clients cut off together do not come back together.
                    ceiling.mul_f64(rand::random_range(0.0..1.0))
                }
            };
            // Commands that arrive while waiting: a send joins the outbox, a request fails.
            let wake = tokio::time::sleep(pause);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    _ = &mut wake => break,
                    command = commands.recv() => match command {
                        None | Some(Command::Close) => return,
                        Some(Command::Send(outgoing)) => self.queue(outgoing),
                        Some(Command::Request(_, reply)) => { let _ = reply.send(Err(Error::NotConnected)); }
                    },
                }
            }
            if matches!(ended, Ended::Drained) {
                attempt = 0;
            }
        }
    }

    fn queue(&mut self, outgoing: Outgoing) {
        if !self.state.outbox.iter().any(|o| o.id == outgoing.id) {
            self.state.outbox.push(outgoing);
            self.state_tx.send_replace(self.state.clone());
        }
    }

    /// One connection, from `hello` to its end.
    async fn serve(&mut self, mut socket: Socket, commands: &mut mpsc::UnboundedReceiver<Command>) -> Ended {
        let encoding = self.config.encoding;
        self.outbox_sent.clear();
        let hello = ClientFrame::Hello { versions: vec![1], client: Some("palaver-client".into()), batch: true };
        let authenticate = ClientFrame::Authenticate {
            req: 0,
            token: self.config.token.clone(),
            cursor: Some(self.state.cursor),
            rooms: self.state.positions.clone(),
        };
        for frame in [hello, authenticate] {
            if write(&mut socket, encoding, &frame).await.is_err() {
                return Ended::Lost;
            }
        }
        let mut live = false;
        loop {
            tokio::select! {
                message = socket.next() => {
                    let bytes = match message {
                        Some(Ok(WsMessage::Text(text))) => text.as_bytes().to_vec(),
                        Some(Ok(WsMessage::Binary(bytes))) => bytes.to_vec(),
                        Some(Ok(_)) => continue,
                        _ => return Ended::Lost,
                    };
                    let Ok(frames) = protocol::decode_server_batch(encoding, &bytes) else { return Ended::Lost };
                    for frame in frames {
                        if let Some(ended) = self.on_frame(frame, &mut live) {
                            return ended;
                        }
                    }
                    if live && self.flush_outbox(&mut socket).await.is_err() {
                        return Ended::Lost;
                    }
                }
                command = commands.recv() => match command {
                    None | Some(Command::Close) => {
                        let _ = socket.close(None).await;
                        return Ended::Closed;
                    }
                    Some(Command::Send(outgoing)) => {
                        self.queue(outgoing);
                        if live && self.flush_outbox(&mut socket).await.is_err() {
                            return Ended::Lost;
                        }
                    }
                    Some(Command::Request(frame, reply)) => {
                        if !live {
                            let _ = reply.send(Err(Error::NotConnected));
                            continue;
                        }
                        let req = self.take_req();
                        self.pending.insert(req, reply);
                        if write(&mut socket, encoding, &with_req(frame, req)).await.is_err() {
                            return Ended::Lost;
                        }
                    }
                },
            }
        }
    }

    /// Apply one frame from the node; `Some` when the connection is over.
    fn on_frame(&mut self, frame: ServerFrame, live: &mut bool) -> Option<Ended> {
        match frame {
            ServerFrame::Message { cursor, entry } => {
                let fresh = match cursor {
                    Some(cursor) if cursor > self.state.cursor => {
                        self.state.cursor = cursor;
                        true
                    }
                    Some(_) => false,
                    None => advance(&mut self.state.positions, &entry.room, entry.seq),
                };
                if fresh {
                    self.state_tx.send_replace(self.state.clone());
                    let _ = self.events.send(Event::Message { cursor, entry });
                }
            }
            ServerFrame::Live { rooms, .. } => {
                for (room, seq) in rooms {
                    advance(&mut self.state.positions, &room, seq);
                }
                self.state_tx.send_replace(self.state.clone());
                *live = true;
                self.live_tx.send_replace(true);
                let _ = self.events.send(Event::Live);
            }
            ServerFrame::Resync { cursor, .. } => {
                self.state.cursor = cursor;
                self.state_tx.send_replace(self.state.clone());
                let _ = self.events.send(Event::Resync);
            }
            ServerFrame::Reconnect { rooms, .. } => {
                for (room, seq) in rooms {
                    advance(&mut self.state.positions, &room, seq);
                }
                return Some(Ended::Drained);
            }
            ServerFrame::Error { code, .. }
                if !*live
                    && matches!(code, ErrorCode::TokenInvalid | ErrorCode::TokenExpired | ErrorCode::TokenRevoked) =>
            {
                let _ = self.events.send(Event::Stopped(code));
                return Some(Ended::Stopped);
            }
            ServerFrame::Ack { req, room, id, seq, duplicate, .. } if self.outbox_sent.contains_key(&req) => {
                self.outbox_sent.remove(&req);
                self.acked(id, room, seq, duplicate);
            }
            ServerFrame::Error { req: Some(req), code, message, .. } if self.outbox_sent.contains_key(&req) => {
                let id = self.outbox_sent.remove(&req).unwrap_or_default();
                // Refused for good: out of the outbox. Retryable (the room's owner or the store
                // was away, a rate limit): kept, and sent again on the next flush or connection.
                if !matches!(
                    code,
                    ErrorCode::Unavailable | ErrorCode::RateLimited | ErrorCode::SlowDown | ErrorCode::Internal
                ) {
                    self.state.outbox.retain(|o| o.id != id);
                    self.state_tx.send_replace(self.state.clone());
                    let _ = self.events.send(Event::Refused { id, code, message });
                }
            }
            frame => match reply_req(&frame).and_then(|req| self.pending.remove(&req)) {
                Some(reply) => {
                    let _ = reply.send(match frame {
                        ServerFrame::Error { code, message, .. } => Err(Error::Refused { code, message }),
                        frame => Ok(frame),
                    });
                }
                None => match frame {
                    ServerFrame::Authenticated { .. } | ServerFrame::Welcome { .. } | ServerFrame::Pong { .. } => {}
                    frame => {
                        let _ = self.events.send(Event::Push(frame));
                    }
                },
            },
        }
        None
    }

    fn acked(&mut self, id: String, room: String, seq: u64, duplicate: bool) {
        let before = self.state.outbox.len();
        self.state.outbox.retain(|o| !(o.id == id && o.room == room));
        if self.state.outbox.len() != before {
            self.state_tx.send_replace(self.state.clone());
            let _ = self.events.send(Event::Acked { id, room, seq, duplicate });
        }
    }

    /// Send what the outbox holds that this connection has not sent yet (after `live`, and
    /// whenever something joins it). Outbox sends carry reqs from `OUTBOX_REQS` on, so their
    /// acks and refusals are told from the application's replies.
    async fn flush_outbox(&mut self, socket: &mut Socket) -> Result<(), ()> {
        let unsent: Vec<Outgoing> =
            self.state.outbox.iter().filter(|o| !self.outbox_sent.values().any(|id| *id == o.id)).cloned().collect();
        for outgoing in unsent {
            let req = self.next_outbox_req;
            self.next_outbox_req += 1;
            let frame = ClientFrame::send(req, &outgoing.room, &outgoing.id, &outgoing.body);
            write(socket, self.config.encoding, &frame).await?;
            self.outbox_sent.insert(req, outgoing.id);
        }
        Ok(())
    }

    fn take_req(&mut self) -> ReqId {
        let req = self.next_req;
        self.next_req = if req + 1 >= OUTBOX_REQS { 1 } else { req + 1 };
        req
    }
}

/// Reqs of outbox sends start here; the application's requests stay below.
const OUTBOX_REQS: ReqId = 1 << 40;

fn advance(positions: &mut BTreeMap<String, u64>, room: &str, seq: u64) -> bool {
    let known = positions.get(room).copied().unwrap_or(0);
    if seq > known {
        positions.insert(room.to_string(), seq);
        true
    } else {
        false
    }
}

async fn write(socket: &mut Socket, encoding: Encoding, frame: &ClientFrame) -> Result<(), ()> {
    let bytes = protocol::encode_client(encoding, frame);
    let message = match encoding {
        Encoding::Json => WsMessage::Text(String::from_utf8(bytes).map_err(|_| ())?.into()),
        Encoding::MessagePack => WsMessage::Binary(bytes.into()),
    };
    socket.send(message).await.map_err(|_| ())
}

/// `frame` with its `req` set.
fn with_req(frame: ClientFrame, req: ReqId) -> ClientFrame {
    let mut value = serde_json::to_value(&frame).expect("client frames serialize");
    value["req"] = req.into();
    serde_json::from_value(value).expect("a client frame with its req")
}

fn reply_req(frame: &ServerFrame) -> Option<ReqId> {
    let value = serde_json::to_value(frame).ok()?;
    value.get("req").and_then(|req| req.as_u64())
}
