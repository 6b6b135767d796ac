//! The session: one per WebSocket connection, the client's representative on the node.
//!
//! A session is an actor in the plain sense: a task that owns its state and handles one event
//! at a time from a `select!` over the client's socket, its delivery inbox, its out-of-band
//! signals, the replies of its pipelined requests and the node's shutdown. It is generic over
//! the socket (a `Sink` and a `Stream` of [`Wire`] messages), so the node plugs in a WebSocket
//! and tests plug in channels.
//!
//! The seam between replay and live delivery, which is where resume bugs live:
//! 1. On `authenticate` the session registers with the hub *before* reading the store, so every
//!    entry committed from then on also lands in its inbox.
//! 2. It replays the user's log from the client's cursor, page by page, while the inbox fills.
//! 3. It then takes inbox entries in cursor order: a cursor at or below the last one sent is a
//!    duplicate and is skipped; the next cursor is sent; a cursor beyond the next one means
//!    something is missing (entries of different rooms can race), so it reads the store again.
//! 4. A full inbox drops deliveries but raises the `lagged` signal, which also sends it back to
//!    the store. The store, not the inbox, is the truth; so no gap and no duplicate.
//! 5. Entries of large rooms are not in the user's log: the same rules apply to them per room,
//!    by seq (`large_rooms`), and every catch-up ends by reading those rooms' logs.
//!
//! Requests are answered in the order they came. Those that only read or that go to a room are
//! pipelined (up to `limits.max_inflight_per_connection`); commands to a room enter the room's
//! mailbox in arrival order, so one connection's sends to one room keep their order.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use protocol::{
    decode_client, encode_server, ClientFrame, Cursor, Encoding, Entry, EntryKind, ErrorCode, ReqId, ServerFrame,
};
use tracing::{debug, info, warn, Instrument};

use crate::encoded::{SharedEntry, SharedRun, Wire, WireError};
use crate::hub::{Hub, Registration};
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::requests::{self, error_frame, store_error_frame, Ctx};
use crate::room::AppendCommand;
use crate::store::HistoryPage;
use crate::store::{LogEntry, StoreResult};
use large_rooms::{LargeRooms, Live, RoomRead};

/// WebSocket close codes the session uses (RFC 6455 §7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// Where the connection comes from, for logs and per-address login limits.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: String,
}

/// Serve one connection until it closes.
pub async fn run_session<Tx, Rx>(hub: Arc<Hub>, peer: Peer, tx: Tx, rx: Rx)
where
    Tx: Sink<Wire> + Unpin + Send,
    Tx::Error: Display,
    Rx: Stream<Item = Result<Wire, WireError>> + Unpin + Send,
{
    Metrics::gauge(&hub.metrics().connections_open, 1);
    Metrics::inc(&hub.metrics().connections_total);
    let mut session = Session::new(hub.clone(), peer, tx);
    let reason = session.run(rx).await;
    debug!(peer = %session.peer.addr, user = session.user().unwrap_or("-"), reason, "session ended");
    drop(session);
    Metrics::gauge(&hub.metrics().connections_open, -1);
}

/// The session's hold on its registration; unregisters when dropped, whatever ends the session.
struct Bound {
    hub: Arc<Hub>,
    user: String,
    registration: Registration,
}

impl Drop for Bound {
    fn drop(&mut self) {
        self.hub.unregister(&self.user, self.registration.id);
    }
}

/// The replay in progress, if any: first the user's log, then the large rooms' logs.
struct CatchUp {
    /// `Some(req)` when this replay answers a resume and must end with `live`.
    announce: Option<ReqId>,
    /// For the replay that answers a resume: the client's positions in large rooms.
    presented: Option<BTreeMap<String, u64>>,
    page: BoxFuture<'static, StoreResult<Page>>,
}

/// What a catch-up read.
enum Page {
    /// A page of the user's log.
    Log(Vec<LogEntry>),
    /// A page of each large room's log: where it was read from, the entries, whether more follow.
    Rooms(Vec<(RoomPlan, Vec<Arc<SharedEntry>>, bool)>),
}

/// A large room to read in a catch-up, and how far: `until` is the room's last seq as the store
/// reported it when the catch-up began (unknown for a room the user has left since). The
/// node's recent entries of the room (`Hub::recent_room_entries`) may serve the read, but the
/// catch-up goes on until it has sent `until`, from the store if they do not reach it: they
/// hold what reached this node, and an entry lost on the way would otherwise be missed.
#[derive(Debug, Clone)]
struct RoomPlan {
    read: RoomRead,
    until: Option<u64>,
}

/// What woke the session.
enum Event {
    Shutdown,
    HelloTimeout,
    AuthTimeout,
    TokenExpired,
    Client(Option<Result<Wire, WireError>>),
    Reply(Vec<ServerFrame>),
    Page(StoreResult<Page>),
    Inbox(Option<Outbound>),
    Signal,
}

/// Whether the session goes on.
type Flow = Result<(), &'static str>;

struct Session<Tx> {
    hub: Arc<Hub>,
    peer: Peer,
    tx: Tx,
    /// Chosen by the kind of the `hello` frame; `None` until then.
    encoding: Option<Encoding>,
    /// The client asked in `hello` for several frames per WebSocket message.
    batch: bool,
    bound: Option<Bound>,
    /// Highest cursor of the user's log sent on this connection.
    last_cursor: Cursor,
    /// Highest seq sent of each large room the user is in.
    large: LargeRooms,
    catch_up: Option<CatchUp>,
    pending: FuturesOrdered<BoxFuture<'static, Vec<ServerFrame>>>,
    bucket: TokenBucket,
    /// When the token this connection authenticated with expires: then it closes.
    token_expiry: Option<Instant>,
}

impl<Tx> Session<Tx>
where
    Tx: Sink<Wire> + Unpin + Send,
    Tx::Error: Display,
{
    fn new(hub: Arc<Hub>, peer: Peer, tx: Tx) -> Self {
        let bucket = TokenBucket::new(hub.limits().frames_per_second);
        Session {
            hub,
            peer,
            tx,
            encoding: None,
            batch: false,
            bound: None,
            last_cursor: 0,
            large: LargeRooms::default(),
            catch_up: None,
            pending: FuturesOrdered::new(),
            bucket,
            token_expiry: None,
        }
    }

    fn user(&self) -> Option<&str> {
        self.bound.as_ref().map(|bound| bound.user.as_str())
    }

    async fn run<Rx>(&mut self, mut rx: Rx) -> &'static str
    where
        Rx: Stream<Item = Result<Wire, WireError>> + Unpin + Send,
    {
        let mut shutdown = self.hub.shutdown_signal();
        let hello_deadline = tokio::time::sleep(Duration::from_millis(self.hub.limits().hello_timeout_ms));
        tokio::pin!(hello_deadline);
        // Armed by `hello`: from then on the connection has `limits.auth_timeout_ms` to
        // authenticate.
        let auth_deadline = tokio::time::sleep(Duration::from_secs(86_400 * 365));
        tokio::pin!(auth_deadline);
        let mut auth_armed = false;
        // Armed once the connection authenticates (one timer for the connection's life, not
        // one per event).
        let token_deadline = tokio::time::sleep(Duration::from_secs(86_400 * 365));
        tokio::pin!(token_deadline);
        let mut armed: Option<Instant> = None;
        let max_inflight = self.hub.limits().max_inflight_per_connection;
        loop {
            let catching_up = self.catch_up.is_some();
            let greeted = self.encoding.is_some();
            let authenticated = self.bound.is_some();
            let event = {
                let signals = self.bound.as_ref().map(|bound| bound.registration.signals.clone());
                let inbox = self.bound.as_mut().map(|bound| &mut bound.registration.inbox);
                let page = self.catch_up.as_mut().map(|catch_up| &mut catch_up.page);
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|down| *down) => Event::Shutdown,
                    _ = &mut hello_deadline, if !greeted => Event::HelloTimeout,
                    _ = &mut auth_deadline, if auth_armed && !authenticated => Event::AuthTimeout,
                    _ = &mut token_deadline, if armed.is_some() => Event::TokenExpired,
                    _ = notified(signals) => Event::Signal,
                    Some(frames) = self.pending.next(), if !self.pending.is_empty() => Event::Reply(frames),
                    result = poll_page(page), if catching_up => Event::Page(result),
                    outbound = recv_inbox(inbox), if !catching_up => Event::Inbox(outbound),
                    wire = rx.next(), if self.pending.len() < max_inflight => Event::Client(wire),
                }
            };
            let flow = match event {
                Event::Shutdown => {
                    let reason = "node is shutting down; reconnect to any node and resume".to_string();
                    let _ = self.send(vec![self.reconnect(reason)]).await;
                    self.close(close_code::GOING_AWAY, "shutting down").await;
                    Err("shutdown")
                }
                Event::HelloTimeout => {
                    self.close(close_code::POLICY_VIOLATION, "no hello within limits.hello_timeout_ms").await;
                    Err("hello timeout")
                }
                Event::AuthTimeout => {
                    self.close(close_code::POLICY_VIOLATION, "not authenticated within limits.auth_timeout_ms").await;
                    Err("authentication timeout")
                }
                Event::TokenExpired => {
                    let message = "your token expired; log in again, then resume from your cursor";
                    let _ = self.send(vec![error_frame(None, ErrorCode::TokenExpired, message)]).await;
                    self.close(close_code::POLICY_VIOLATION, "token expired").await;
                    Err("token expired")
                }
                Event::Client(None) => Err("client went away"),
                Event::Client(Some(Err(WireError::TooLarge(detail)))) => {
                    let message = format!(
                        "frame exceeds limits.max_frame_bytes ({}): {detail}",
                        self.hub.limits().max_frame_bytes
                    );
                    let _ = self.send(vec![error_frame(None, ErrorCode::FrameTooLarge, message)]).await;
                    self.close(close_code::TOO_BIG, "frame too large").await;
                    Err("frame too large")
                }
                Event::Client(Some(Err(WireError::InvalidText(detail)))) => {
                    // RFC 6455 §8.1: text that is not UTF-8 fails the connection with 1007.
                    debug!(peer = %self.peer.addr, detail, "text message is not UTF-8");
                    self.close(close_code::INVALID_PAYLOAD, "text message is not valid UTF-8").await;
                    Err("invalid UTF-8")
                }
                Event::Client(Some(Err(WireError::Broken(_)))) => Err("socket error"),
                Event::Client(Some(Ok(wire))) => self.on_wire(wire).await,
                Event::Reply(frames) => self.send(frames).await,
                Event::Page(result) => self.on_page(result).await,
                Event::Inbox(Some(outbound)) => self.on_outbound(outbound).await,
                Event::Inbox(None) => Err("inbox closed"),
                Event::Signal => self.on_signal().await,
            };
            if let Err(reason) = flow {
                return reason;
            }
            if !auth_armed && self.encoding.is_some() {
                auth_armed = true;
                let at = Instant::now() + Duration::from_millis(self.hub.limits().auth_timeout_ms);
                auth_deadline.as_mut().reset(at.into());
            }
            if self.token_expiry != armed {
                armed = self.token_expiry;
                if let Some(at) = armed {
                    token_deadline.as_mut().reset(at.into());
                }
            }
        }
    }

    /// A message from the client.
    async fn on_wire(&mut self, wire: Wire) -> Flow {
        let (encoding, result) = match &wire {
            Wire::Text(text) => (Encoding::Json, decode_client(Encoding::Json, text.as_bytes())),
            // Never made by the WebSocket layer; treated like any text should a test send one.
            Wire::SharedText(text) => (Encoding::Json, decode_client(Encoding::Json, text.as_bytes())),
            Wire::Binary(bytes) => (Encoding::MessagePack, decode_client(Encoding::MessagePack, bytes)),
            Wire::Close { .. } => {
                // Answer the close (RFC 6455 §5.5.1). The WebSocket layer has queued its echo of
                // the client's close frame and sends it on the next flush (it refuses a close
                // frame of ours now); ending without that flush makes every close the client
                // starts look abnormal (1006) to the client.
                let deadline = Instant::now() + Duration::from_millis(1_000);
                let _ = self.write(deadline, Vec::new()).await;
                return Err("client closed");
            }
        };
        Metrics::inc(&self.hub.metrics().frames_in_total);
        if let Err(retry_after) = self.bucket.take() {
            let mut frame = error_frame(
                result.as_ref().ok().map(ClientFrame::req),
                ErrorCode::SlowDown,
                format!(
                    "more than limits.frames_per_second ({}) frames per second",
                    self.hub.limits().frames_per_second
                ),
            );
            if let ServerFrame::Error { retry_after_ms, .. } = &mut frame {
                *retry_after_ms = Some(retry_after.as_millis() as u64);
            }
            return self.reply_in_order(vec![frame]);
        }
        let frame = match result {
            Ok(frame) => frame,
            Err(err) => {
                Metrics::inc(&self.hub.metrics().frames_invalid_total);
                // The decoder's message may quote the input, which can be as large as a frame.
                let frame = error_frame(err.req, err.code, requests::bounded_message(&err.message));
                if self.encoding.is_none() {
                    return self.send_in(encoding, vec![frame]).await;
                }
                return self.reply_in_order(vec![frame]);
            }
        };
        if self.encoding.is_none() {
            return self.greet(encoding, frame).await;
        }
        self.on_frame(frame).await
    }

    /// The first frame: version negotiation.
    async fn greet(&mut self, encoding: Encoding, frame: ClientFrame) -> Flow {
        let ClientFrame::Hello { versions, client, batch } = frame else {
            let message = "the first frame must be `hello`, e.g. {\"type\":\"hello\",\"versions\":[1]}".to_string();
            return self
                .send_in(encoding, vec![error_frame(Some(frame.req()), ErrorCode::HelloRequired, message)])
                .await;
        };
        match protocol::negotiate_version(&versions) {
            Some(version) => {
                self.encoding = Some(encoding);
                self.batch = batch;
                debug!(peer = %self.peer.addr, client = client.as_deref().unwrap_or("-"), version, ?encoding, batch, "greeted");
                let limits = self.hub.limits();
                self.send(vec![ServerFrame::Welcome {
                    version,
                    node: self.hub.node().to_string(),
                    max_frame_bytes: limits.max_frame_bytes,
                    max_body_bytes: limits.max_body_bytes,
                    batch,
                }])
                .await
            }
            None => {
                let message = format!(
                    "no common protocol version: client offers {versions:?}, node speaks {:?}",
                    protocol::SUPPORTED_VERSIONS
                );
                let _ = self.send_in(encoding, vec![error_frame(None, ErrorCode::UnsupportedVersion, message)]).await;
                self.close(close_code::PROTOCOL_ERROR, "unsupported protocol version").await;
                Err("unsupported version")
            }
        }
    }

    /// A decoded frame after `hello`.
    async fn on_frame(&mut self, frame: ClientFrame) -> Flow {
        let hub = self.hub.clone();
        let req = frame.req();
        // Frames that need no account.
        match frame {
            ClientFrame::Hello { .. } => {
                return self.reply_in_order(vec![error_frame(
                    Some(req),
                    ErrorCode::AlreadyGreeted,
                    "`hello` was already sent",
                )])
            }
            ClientFrame::Ping { req } => return self.reply_in_order(vec![ServerFrame::Pong { req }]),
            ClientFrame::Register { req, user, password } => {
                let addr = self.peer.addr.clone();
                return self
                    .pipeline(async move { vec![requests::register(&hub, req, user, password, addr).await] }.boxed());
            }
            ClientFrame::Login { req, user, password } => {
                let addr = self.peer.addr.clone();
                return self
                    .pipeline(async move { vec![requests::login(&hub, req, user, password, addr).await] }.boxed());
            }
            ClientFrame::Authenticate { req, token, cursor, rooms } => {
                return self.authenticate(req, token, cursor, rooms).await
            }
            _ => {}
        }
        let Some(bound) = &self.bound else {
            let message = "authenticate first: log in for a token, then send `authenticate`";
            return self.reply_in_order(vec![error_frame(Some(req), ErrorCode::NotAuthenticated, message)]);
        };
        let ctx = Ctx { hub: hub.clone(), user: bound.user.clone(), conn_id: bound.registration.id };
        match frame {
            ClientFrame::LogoutAll { req } => self.logout_all(req).await,
            ClientFrame::DeleteAccount { req, password } => self.delete_account(req, password).await,
            ClientFrame::CreateRoom { req, name, private } => {
                self.pipeline(async move { vec![requests::create_room(&ctx, req, name, private).await] }.boxed())
            }
            ClientFrame::OpenDirect { req, user } => {
                self.pipeline(async move { vec![requests::open_direct(&ctx, req, user).await] }.boxed())
            }
            ClientFrame::ListRooms { req } => {
                self.pipeline(async move { vec![requests::list_rooms(&ctx, req).await] }.boxed())
            }
            ClientFrame::ListMembers { req, room, after, limit } => self.pipeline(
                async move { vec![requests::presence::list_members(&ctx, req, room, after, limit).await] }.boxed(),
            ),
            ClientFrame::SetPresence { req, state, status } => {
                self.reply_in_order(vec![requests::presence::set_presence(&ctx, req, state, status)])
            }
            ClientFrame::WatchPresence { req, users } => {
                self.pipeline(async move { vec![requests::presence::watch_presence(&ctx, req, users).await] }.boxed())
            }
            ClientFrame::Typing { req, room, active } => self.pipeline(
                async move { requests::presence::typing(&ctx, req, room, active).await.into_iter().collect() }.boxed(),
            ),
            ClientFrame::SetNotifications { req, room, level, muted_until } => self.pipeline(
                async move { vec![requests::set_notifications(&ctx, req, room, level, muted_until).await] }.boxed(),
            ),
            ClientFrame::Receipts { req, room } => {
                self.pipeline(async move { vec![requests::presence::receipts(&ctx, req, room).await] }.boxed())
            }
            ClientFrame::History { req, room, before, after, limit } => self
                .pipeline(async move { vec![requests::history(&ctx, req, room, before, after, limit).await] }.boxed()),
            ClientFrame::MarkRead { req, room, seq } => {
                self.pipeline(async move { vec![requests::mark_read(&ctx, req, room, seq).await] }.boxed())
            }
            ClientFrame::Send { req, room, id, body, reply_to, mentions, attachments } => {
                let message = requests::NewMessage { id, body, reply_to, mentions, attachments };
                match requests::send_command(&ctx, req, &room, message).await {
                    Ok(command) => self.forward_to_room(req, room, command).await,
                    Err(frame) => self.reply_in_order(vec![*frame]),
                }
            }
            frame @ (ClientFrame::Edit { .. } | ClientFrame::Delete { .. } | ClientFrame::React { .. }) => {
                match requests::messages::change_command(hub.limits(), &ctx.user, frame) {
                    Ok((req, room, command)) => {
                        if let Err(frame) = requests::messages::check_not_blocked(&ctx, req, &room).await {
                            return self.reply_in_order(vec![*frame]);
                        }
                        self.forward_to_room(req, room, command).await
                    }
                    Err(frame) => self.reply_in_order(vec![*frame]),
                }
            }
            frame @ (ClientFrame::SetRole { .. }
            | ClientFrame::Kick { .. }
            | ClientFrame::Ban { .. }
            | ClientFrame::Unban { .. }
            | ClientFrame::Mute { .. }) => match requests::messages::moderation_command(&ctx.user, frame) {
                Ok((req, room, command)) => self.forward_to_room(req, room, command).await,
                Err(frame) => self.reply_in_order(vec![*frame]),
            },
            frame @ ClientFrame::SetRoom { .. } => match requests::messages::settings_command(&ctx.user, frame) {
                Ok((req, room, command)) => self.forward_to_room(req, room, command).await,
                Err(frame) => self.reply_in_order(vec![*frame]),
            },
            frame @ (ClientFrame::Block { .. } | ClientFrame::Unblock { .. } | ClientFrame::ListBlocked { .. }) => {
                self.pipeline(async move { vec![requests::messages::blocks(&ctx, frame).await] }.boxed())
            }
            ClientFrame::RegisterDevice { req, device } => {
                self.pipeline(async move { vec![requests::devices::register(&ctx, req, device).await] }.boxed())
            }
            ClientFrame::ListDevices { req } => {
                self.pipeline(async move { vec![requests::devices::list(&ctx, req).await] }.boxed())
            }
            ClientFrame::MediaUrl { req, media } => {
                self.pipeline(async move { vec![requests::media::media_url(&ctx, req, media).await] }.boxed())
            }
            ClientFrame::RemoveDevice { req, id } => {
                self.pipeline(async move { vec![requests::devices::remove(&ctx, req, id).await] }.boxed())
            }
            ClientFrame::Thread { req, room, root, after, limit } => self.pipeline(
                async move { vec![requests::messages::thread(&ctx, req, room, root, after, limit).await] }.boxed(),
            ),
            ClientFrame::Join { req, room } => {
                self.forward_to_room(req, room, requests::membership_command(EntryKind::Join, &ctx.user, &ctx.user))
                    .await
            }
            ClientFrame::Leave { req, room } => match requests::leave_command(req, &room, &ctx.user) {
                Ok(command) => self.forward_to_room(req, room, command).await,
                Err(frame) => self.reply_in_order(vec![*frame]),
            },
            ClientFrame::Invite { req, room, user } => {
                if let Some(frame) = requests::check_invite(&ctx, req, &room, &user).await {
                    return self.reply_in_order(vec![frame]);
                }
                self.forward_to_room(req, room, requests::membership_command(EntryKind::Join, &ctx.user, &user)).await
            }
            ClientFrame::Hello { .. }
            | ClientFrame::Ping { .. }
            | ClientFrame::Register { .. }
            | ClientFrame::Login { .. }
            | ClientFrame::Authenticate { .. } => {
                // Answered before the authentication check above; kept exhaustive on purpose.
                self.reply_in_order(vec![error_frame(Some(req), ErrorCode::Internal, "frame routed twice")])
            }
        }
    }

    /// Put a command in the room's mailbox now; answer when the room has applied it.
    async fn forward_to_room(&mut self, req: ReqId, room: String, command: AppendCommand) -> Flow {
        if let Err(message) = crate::names::validate_room_id(&room) {
            return self.reply_in_order(vec![error_frame(Some(req), ErrorCode::NoSuchRoom, message)]);
        }
        let Some(bound) = &self.bound else { return Ok(()) };
        let ctx = Ctx { hub: self.hub.clone(), user: bound.user.clone(), conn_id: bound.registration.id };
        let kind = command.kind;
        let invited = command.user.clone().filter(|user| *user != command.from);
        // The request's span: the room's commit and delivery, on this node or the owner, are its
        // children (exported when `[tracing]` says so).
        let span = tracing::debug_span!("palaver.request", kind = ?kind, room = %room, user = %ctx.user);
        match self.hub.append(&room, command).instrument(span.clone()).await {
            Ok(outcome) => self.pipeline(
                async move {
                    let timeout = Duration::from_millis(ctx.hub.limits().request_timeout_ms);
                    let result = crate::hub::append_outcome(&room, outcome, timeout).await;
                    vec![requests::room_reply(&ctx, req, &room, kind, invited, result).await]
                }
                .instrument(span)
                .boxed(),
            ),
            Err(err) => self.reply_in_order(vec![store_error_frame(&self.hub, Some(req), err)]),
        }
    }

    /// Bind the connection to a user, then resume from `cursor` (and `rooms`, positions in large
    /// rooms) if given.
    async fn authenticate(
        &mut self,
        req: ReqId,
        token: String,
        cursor: Option<Cursor>,
        rooms: BTreeMap<String, u64>,
    ) -> Flow {
        self.drain_pending().await?;
        let max_rooms = self.hub.limits().max_rooms_per_user as usize;
        if rooms.len() > max_rooms {
            let message = format!("`rooms` lists {} rooms; a user is in at most {max_rooms}", rooms.len());
            return self.send(vec![error_frame(Some(req), ErrorCode::InvalidField, message)]).await;
        }
        if self.bound.is_some() {
            return self
                .send(vec![error_frame(
                    Some(req),
                    ErrorCode::AlreadyAuthenticated,
                    "this connection is already authenticated",
                )])
                .await;
        }
        let user = match requests::verify_token(&self.hub, req, &token).await {
            Ok((user, expires_ms)) => {
                // The connection lives no longer than the token that opened it.
                let left = Duration::from_millis(expires_ms.saturating_sub(crate::names::now_ms()));
                self.token_expiry = Some(Instant::now() + left);
                user
            }
            Err(frame) => return self.send(vec![*frame]).await,
        };
        // Register before reading the log: from here on every commit also reaches the inbox.
        let registration = self.hub.register(&user);
        self.bound = Some(Bound { hub: self.hub.clone(), user: user.clone(), registration });
        let bounds = match self.hub.store().user_log_bounds(&user).await {
            Ok(bounds) => bounds,
            Err(err) => {
                self.bound = None;
                return self.send(vec![store_error_frame(&self.hub, Some(req), err)]).await;
            }
        };
        info!(peer = %self.peer.addr, user, cursor = ?cursor, head = bounds.head, "authenticated");
        let mut frames = vec![ServerFrame::Authenticated { req, user: user.clone(), cursor: bounds.head }];
        if cursor.is_none_or(|cursor| cursor > bounds.head || cursor < bounds.floor) {
            // Not resuming: large rooms start live too, from their newest entry.
            match self.hub.store().rooms_of(&user).await {
                Ok(mine) => self.large.start_live(&mine),
                Err(err) => {
                    self.bound = None;
                    return self.send(vec![store_error_frame(&self.hub, Some(req), err)]).await;
                }
            }
        }
        match cursor {
            None => self.last_cursor = bounds.head,
            Some(cursor) if cursor > bounds.head => {
                self.last_cursor = bounds.head;
                let message = format!(
                    "cursor {cursor} is beyond the end of your log ({}); continuing live from there",
                    bounds.head
                );
                frames.push(error_frame(Some(req), ErrorCode::CursorAhead, message));
            }
            Some(cursor) if cursor < bounds.floor => {
                self.last_cursor = bounds.head;
                frames.push(ServerFrame::Resync { req, floor: bounds.floor, cursor: bounds.head });
            }
            Some(cursor) => {
                self.last_cursor = cursor;
                self.start_catch_up(Some(req), Some(rooms));
            }
        }
        self.send(frames).await
    }

    async fn logout_all(&mut self, req: ReqId) -> Flow {
        self.drain_pending().await?;
        let Some(user) = self.user().map(str::to_string) else { return Ok(()) };
        match self.hub.store().revoke_tokens(&user).await {
            Ok(_) => {
                info!(user, "logged out everywhere");
                // Every connection of the user, this one included, closes on the signal.
                self.hub.revoke_user(&user);
                self.send(vec![ServerFrame::Ok { req }]).await
            }
            Err(err) => self.send(vec![store_error_frame(&self.hub, Some(req), err)]).await,
        }
    }

    async fn delete_account(&mut self, req: ReqId, password: String) -> Flow {
        self.drain_pending().await?;
        let Some(user) = self.user().map(str::to_string) else { return Ok(()) };
        match requests::account::delete_account(&self.hub, req, &user, password, &self.peer.addr).await {
            Ok(()) => {
                info!(user, "account deleted");
                // As for `logout_all`: every connection of the user closes on the signal.
                self.hub.revoke_user(&user);
                self.send(vec![ServerFrame::Ok { req }]).await
            }
            Err(frame) => self.send(vec![frame]).await,
        }
    }

    /// Begin reading the user's log from `last_cursor` (then the large rooms' logs).
    fn start_catch_up(&mut self, announce: Option<ReqId>, presented: Option<BTreeMap<String, u64>>) {
        let Some(bound) = &self.bound else { return };
        // Anything dropped from now on is covered by this read or flagged again.
        bound.registration.signals.lagged.store(false, Ordering::Release);
        let (announce, presented) = match self.catch_up.take() {
            Some(previous) => (previous.announce.or(announce), previous.presented.or(presented)),
            None => (announce, presented),
        };
        let page = self.read_page(bound.user.clone());
        self.catch_up = Some(CatchUp { announce, presented, page });
    }

    fn read_page(&self, user: String) -> BoxFuture<'static, StoreResult<Page>> {
        let store = self.hub.store().clone();
        let after = self.last_cursor;
        let limit = self.hub.limits().replay_page_len;
        async move { store.user_log(&user, after, limit).await.map(Page::Log) }.boxed()
    }

    /// Read a page of each large room to replay: `reads`, or when `None`, the ones the user's
    /// rooms call for now (see `large_rooms`). A read the node's recent entries hold is served
    /// from memory: the entries live delivery shares, already encoded. When many connections
    /// fall behind at once, reading the store and encoding each entry for each of them costs
    /// far more than the live fan-out it replaces (bench/findings.md).
    fn read_rooms(&self, user: String, reads: Option<Vec<RoomPlan>>) -> BoxFuture<'static, StoreResult<Page>> {
        let hub = self.hub.clone();
        let limit = self.hub.limits().replay_page_len;
        let replay_max = self.hub.limits().large_room_replay_max;
        let large = self.large.clone();
        let presented = self.catch_up.as_ref().and_then(|catch_up| catch_up.presented.clone());
        async move {
            let reads = match reads {
                Some(reads) => reads,
                None => {
                    let rooms = hub.store().rooms_of(&user).await?;
                    let last_seq: HashMap<&str, u64> =
                        rooms.iter().map(|mine| (mine.room.id.as_str(), mine.room.last_seq)).collect();
                    let plan = large.plan(&rooms, presented.as_ref(), replay_max);
                    plan.into_iter()
                        .map(|read| RoomPlan { until: last_seq.get(read.room.as_str()).copied(), read })
                        .collect()
                }
            };
            let mut pages = Vec::with_capacity(reads.len());
            let mut from_memory = 0;
            for plan in reads {
                let RoomRead { room, after } = &plan.read;
                // An empty answer short of `until` would read the same again: the store has it.
                let recent = plan.until.and_then(|until| {
                    let entries = hub.recent_room_entries(room, *after, limit as usize)?;
                    (!entries.is_empty() || *after >= until).then_some((entries, until))
                });
                let (entries, more) = match recent {
                    Some((entries, until)) => {
                        from_memory += entries.len() as u64;
                        let last = entries.last().map_or(*after, |entry| entry.entry().seq);
                        (entries, last < until)
                    }
                    None => {
                        let (entries, more) = hub.store().history(room, HistoryPage::After(*after), limit).await?;
                        (entries.into_iter().map(|entry| Arc::new(SharedEntry::new(entry))).collect(), more)
                    }
                };
                pages.push((plan, entries, more));
            }
            Metrics::add(&hub.metrics().replayed_from_memory_total, from_memory);
            Ok(Page::Rooms(pages))
        }
        .boxed()
    }

    /// A page of the catch-up arrived.
    async fn on_page(&mut self, result: StoreResult<Page>) -> Flow {
        match result {
            Ok(Page::Log(entries)) => self.on_log_page(entries).await,
            Ok(Page::Rooms(pages)) => self.on_rooms_page(pages).await,
            Err(err) => {
                warn!(user = self.user().unwrap_or("-"), error = %err, "replay failed; closing so the client resumes");
                let reason = format!("replay failed ({err}); reconnect and resume");
                let _ = self.send(vec![self.reconnect(reason)]).await;
                self.close(close_code::INTERNAL_ERROR, "replay failed").await;
                Err("replay failed")
            }
        }
    }

    /// A page of the user's log: send it, then read the next page or the large rooms.
    async fn on_log_page(&mut self, entries: Vec<LogEntry>) -> Flow {
        let full_page = entries.len() as u32 >= self.hub.limits().replay_page_len;
        let mut frames = Vec::with_capacity(entries.len() + 1);
        for LogEntry { cursor, entry } in entries {
            debug_assert_eq!(cursor, self.last_cursor + 1, "user log cursors are dense");
            if cursor <= self.last_cursor {
                continue;
            }
            self.last_cursor = cursor;
            frames.push(ServerFrame::Message { cursor: Some(cursor), entry });
        }
        Metrics::add(&self.hub.metrics().replayed_total, frames.len() as u64);
        let user = self.user().unwrap_or_default().to_string();
        let page = if full_page { self.read_page(user) } else { self.read_rooms(user, None) };
        if let Some(catch_up) = &mut self.catch_up {
            catch_up.page = page;
        }
        // Writing with back-pressure is the flow control: the next page is read only once this
        // one is in the socket.
        self.send_entries(frames.into_iter().map(Out::Frame).collect()).await
    }

    /// A page of each large room's log: send what this connection has not sent, then read on
    /// where a room has more, or end the catch-up.
    async fn on_rooms_page(&mut self, pages: Vec<(RoomPlan, Vec<Arc<SharedEntry>>, bool)>) -> Flow {
        let user = self.user().unwrap_or_default().to_string();
        let mut frames = Vec::new();
        let mut more = Vec::new();
        for (plan, entries, has_more) in pages {
            let read = &plan.read;
            if has_more {
                let after = entries.last().map_or(read.after, |entry| entry.entry().seq);
                more.push(RoomPlan { read: RoomRead { room: read.room.clone(), after }, until: plan.until });
            }
            frames.extend(self.large.replayed(&user, &read.room, read.after, entries).into_iter().map(Out::Shared));
        }
        Metrics::add(&self.hub.metrics().replayed_total, frames.len() as u64);
        if !more.is_empty() {
            let page = self.read_rooms(user, Some(more));
            if let Some(catch_up) = &mut self.catch_up {
                catch_up.page = page;
            }
        } else {
            let announce = self.catch_up.take().and_then(|catch_up| catch_up.announce);
            if let Some(req) = announce {
                frames.push(Out::Frame(ServerFrame::Live {
                    req,
                    cursor: self.last_cursor,
                    rooms: self.large.snapshot(),
                }));
            }
            let lagged =
                self.bound.as_ref().is_some_and(|bound| bound.registration.signals.lagged.load(Ordering::Acquire));
            if lagged {
                self.start_catch_up(None, None);
            }
        }
        self.send_entries(frames).await
    }

    /// The `reconnect` frame: where this connection got to, for the client to resume from.
    fn reconnect(&self, reason: String) -> ServerFrame {
        let cursor = self.bound.as_ref().map(|_| self.last_cursor);
        ServerFrame::Reconnect { reason, cursor, rooms: self.large.snapshot() }
    }

    /// Live traffic from the hub; takes whatever else is already queued too (up to
    /// `TAKE_MAX_ENTRIES`), then flushes once.
    async fn on_outbound(&mut self, first: Outbound) -> Flow {
        let mut frames = Vec::new();
        let mut taken = 0;
        let mut next = Some(first);
        while let Some(outbound) = next.take() {
            taken += outbound.weight();
            match outbound {
                Outbound::Frame(frame) => frames.push(Out::Frame(*frame)),
                Outbound::Deliver { cursor, entry } => {
                    if cursor <= self.last_cursor {
                        // Already sent by the replay.
                    } else if cursor == self.last_cursor + 1 {
                        self.last_cursor = cursor;
                        frames.push(Out::Entry(Some(cursor), entry));
                    } else {
                        // Something before this entry has not arrived: read it from the store.
                        self.start_catch_up(None, None);
                        break;
                    }
                }
                Outbound::RoomRun(run) => {
                    let Some(bound) = &self.bound else { continue };
                    let mut behind = false;
                    if self.large.live_run(&run) {
                        frames.push(Out::Run(run));
                    } else {
                        // Not the next run as a whole: entry by entry.
                        for shared in run.entries() {
                            match self.large.live(&bound.user, shared.entry()) {
                                Live::Send => frames.push(Out::Shared(shared.clone())),
                                Live::Skip => {}
                                Live::CatchUp => {
                                    behind = true;
                                    break;
                                }
                            }
                        }
                    }
                    if behind {
                        self.start_catch_up(None, None);
                        break;
                    }
                }
            }
            if taken < TAKE_MAX_ENTRIES {
                next = self.bound.as_mut().and_then(|bound| bound.registration.inbox.try_recv());
            }
        }
        if let Some(waited) = self.bound.as_mut().and_then(|bound| bound.registration.inbox.take_wait()) {
            self.hub.metrics().delivery_wait_seconds.observe(waited);
        }
        self.send_entries(frames).await
    }

    /// Send frames that include log entries; once they are in the socket, tell the senders of
    /// text entries they were delivered, and re-check presence watches if a membership ended.
    async fn send_entries(&mut self, frames: Vec<Out>) -> Flow {
        let encoding = self.encoding.unwrap_or(Encoding::Json);
        let Some(bound) = &self.bound else { return self.send_outs(encoding, frames).await };
        let ctx = Ctx { hub: self.hub.clone(), user: bound.user.clone(), conn_id: bound.registration.id };
        let mut delivered: Vec<(String, u64, Vec<String>)> = Vec::new();
        let mut left = false;
        let max_members = self.hub.presence().settings.room_max_members;
        // Whether each room of the batch may get receipts, asked of presence once per room (a
        // batch is often dozens of one room's entries, and the lookup takes a shared lock).
        let mut receipts: Vec<(&str, bool)> = Vec::new();
        let presence = self.hub.presence();
        let mut room_takes_receipts = |room| {
            takes_receipts(&mut receipts, room, |room| {
                // Rooms known to be too large for receipts are skipped here, before any work.
                presence.cached_room_size(room).is_none_or(|size| size <= max_members)
            })
        };
        let mut note_delivered = |entry: &Entry| {
            if entry.kind != EntryKind::Text || entry.from == ctx.user {
                return;
            }
            match delivered.iter_mut().find(|(room, _, _)| *room == entry.room) {
                Some((_, seq, senders)) => {
                    *seq = (*seq).max(entry.seq);
                    if !senders.contains(&entry.from) {
                        senders.push(entry.from.clone());
                    }
                }
                None => delivered.push((entry.room.clone(), entry.seq, vec![entry.from.clone()])),
            }
        };
        for frame in &frames {
            let entry = match frame {
                // A run: its room is asked about once, and its entries are looked at only if
                // the room takes receipts (a large room usually does not).
                Out::Run(run) => {
                    left |= run.has_leave();
                    if room_takes_receipts(run.room()) {
                        run.entries().iter().for_each(|shared| note_delivered(shared.entry()));
                    }
                    continue;
                }
                Out::Entry(_, entry) => &**entry,
                Out::Shared(shared) => shared.entry(),
                Out::Frame(ServerFrame::Message { entry, .. }) => entry,
                Out::Frame(_) => continue,
            };
            left |= entry.kind.ends_membership();
            if entry.kind == EntryKind::Text && entry.from != ctx.user && room_takes_receipts(&entry.room) {
                note_delivered(entry);
            }
        }
        self.send_outs(encoding, frames).await?;
        if !delivered.is_empty() {
            crate::presence::Presence::delivered(ctx.hub.clone(), &ctx.user, delivered);
        }
        if left {
            tokio::spawn(async move { requests::presence::revalidate_watch(&ctx).await });
        }
        Ok(())
    }

    /// Out-of-band: revoked or lagged.
    async fn on_signal(&mut self) -> Flow {
        let Some(bound) = &self.bound else { return Ok(()) };
        let signals = bound.registration.signals.clone();
        if signals.revoked.load(Ordering::Acquire) {
            let message = "you logged out everywhere; log in again";
            let _ = self.send(vec![error_frame(None, ErrorCode::TokenRevoked, message)]).await;
            self.close(close_code::POLICY_VIOLATION, "logged out").await;
            return Err("logged out");
        }
        if signals.lagged.load(Ordering::Acquire) && self.catch_up.is_none() {
            self.start_catch_up(None, None);
        }
        Ok(())
    }

    /// Queue a request's reply future behind earlier ones.
    fn pipeline(&mut self, reply: BoxFuture<'static, Vec<ServerFrame>>) -> Flow {
        self.pending.push_back(reply);
        Ok(())
    }

    /// A reply that is ready now but must not overtake earlier replies.
    fn reply_in_order(&mut self, frames: Vec<ServerFrame>) -> Flow {
        self.pipeline(futures_util::future::ready(frames).boxed())
    }

    /// Finish every pipelined request (before a request that changes the session's state).
    async fn drain_pending(&mut self) -> Flow {
        while let Some(frames) = self.pending.next().await {
            self.send(frames).await?;
        }
        Ok(())
    }

    async fn send(&mut self, frames: Vec<ServerFrame>) -> Flow {
        let encoding = self.encoding.unwrap_or(Encoding::Json);
        self.send_in(encoding, frames).await
    }

    /// Write frames with one flush; a socket that takes longer than the slow-client limit is
    /// closed (its cursor lets the client resume elsewhere).
    async fn send_in(&mut self, encoding: Encoding, frames: Vec<ServerFrame>) -> Flow {
        self.send_outs(encoding, frames.into_iter().map(Out::Frame).collect()).await
    }

    /// [`Session::send_in`] for frames and shared log entries.
    async fn send_outs(&mut self, encoding: Encoding, frames: Vec<Out>) -> Flow {
        if frames.is_empty() {
            return Ok(());
        }
        let frames = self.split_runs(encoding, frames);
        let deadline = Instant::now() + Duration::from_millis(self.hub.limits().slow_client_timeout_ms);
        // Encoded and written a chunk at a time: a replay page of large entries (256 of 96 KiB
        // each, at worst) never exists encoded all at once.
        let mut rest = frames.into_iter().peekable();
        while rest.peek().is_some() {
            let mut chunk = Vec::new();
            let mut bytes = 0;
            while let Some(frame) = rest.peek() {
                let size = encoded_size_bound(encoding, frame);
                if !chunk.is_empty() && bytes + size > WRITE_CHUNK_BYTES {
                    break;
                }
                bytes += size;
                chunk.extend(rest.next());
            }
            let wires = if self.batch && chunk.len() > 1 {
                self.batched(encoding, chunk)
            } else {
                chunk.into_iter().map(|frame| self.one_wire(encoding, frame)).collect()
            };
            self.write(deadline, wires).await?;
        }
        Ok(())
    }

    /// Runs that one message cannot carry whole, as their entries: every run for a client that
    /// takes one frame per message, and a run larger than a batch may be.
    fn split_runs(&self, encoding: Encoding, frames: Vec<Out>) -> Vec<Out> {
        let too_big = |run: &SharedRun| !self.batch || run.bytes(encoding).len() > BATCH_MAX_BYTES;
        if !frames.iter().any(|frame| matches!(frame, Out::Run(run) if too_big(run))) {
            return frames;
        }
        let mut split = Vec::with_capacity(frames.len());
        for frame in frames {
            match frame {
                Out::Run(run) if too_big(&run) => split.extend(run.entries().iter().cloned().map(Out::Shared)),
                frame => split.push(frame),
            }
        }
        split
    }

    /// One frame (or a run, for a batching client) as one WebSocket message; a shared buffer
    /// is referenced, not copied.
    fn one_wire(&self, encoding: Encoding, frame: Out) -> Wire {
        match shared_wire(encoding, &frame) {
            Some(wire) => wire,
            None => wire_of(encoding, self.encode_out(encoding, &frame).into_owned()),
        }
    }

    /// Frames packed into as few WebSocket messages as `BATCH_MAX_BYTES` allows, for a client
    /// that asked for batches: one message header and one client wake-up for many frames. A
    /// shared entry or run is copied into the batch, unless it is the batch's only frame.
    fn batched(&self, encoding: Encoding, frames: Vec<Out>) -> Vec<Wire> {
        let separator = protocol::batch_separator(encoding);
        let encoded: Vec<Cow<'_, [u8]>> = frames.iter().map(|frame| self.encode_out(encoding, frame)).collect();
        let mut wires = Vec::new();
        let mut rest = &encoded[..];
        while !rest.is_empty() {
            // As many frames as fit (at least one), then one buffer of exactly their size: a
            // growing buffer would copy the batch again at every doubling.
            let mut size = rest[0].len();
            let mut count = 1;
            while let Some(next) = rest.get(count) {
                if size + separator.len() + next.len() > BATCH_MAX_BYTES {
                    break;
                }
                size += separator.len() + next.len();
                count += 1;
            }
            let taken = frames.len() - rest.len();
            if let (1, Some(wire)) = (count, shared_wire(encoding, &frames[taken])) {
                wires.push(wire);
                rest = &rest[1..];
                continue;
            }
            let mut batch = Vec::with_capacity(size);
            for (i, bytes) in rest[..count].iter().enumerate() {
                if i > 0 {
                    batch.extend_from_slice(separator);
                }
                batch.extend_from_slice(bytes);
            }
            wires.push(wire_of(encoding, batch));
            rest = &rest[count..];
        }
        wires
    }

    /// The encoded frame: a shared entry's bytes borrowed, anything else encoded now.
    fn encode_out<'a>(&self, encoding: Encoding, frame: &'a Out) -> Cow<'a, [u8]> {
        match frame {
            Out::Shared(shared) => Cow::Borrowed(shared.bytes(encoding)),
            Out::Run(run) => Cow::Borrowed(run.bytes(encoding)),
            Out::Entry(cursor, entry) => Cow::Owned(protocol::encode_message(encoding, *cursor, entry)),
            Out::Frame(frame) => Cow::Owned(self.encode_frame(encoding, frame)),
        }
    }

    /// A frame encoded for this connection. Every reply is bounded by the limits its parts
    /// come from (`Limits::max_message_bytes`), and the WebSocket layer buffers a message of
    /// that size; should a reply still come out larger, the client gets an error in its place
    /// rather than a connection the WebSocket layer would have to drop.
    fn encode_frame(&self, encoding: Encoding, frame: &ServerFrame) -> Vec<u8> {
        let bytes = encode_server(encoding, frame);
        let max = self.hub.limits().max_message_bytes();
        if bytes.len() <= max {
            if matches!(frame, ServerFrame::Error { .. }) {
                Metrics::inc(&self.hub.metrics().errors_sent_total);
            }
            return bytes;
        }
        let req = serde_json::to_value(frame).ok().and_then(|value| value.get("req")?.as_u64());
        warn!(peer = %self.peer.addr, bytes = bytes.len(), max, ?req, "reply larger than the largest message; refused");
        let message =
            format!("the reply would take {} bytes, more than the {max} a message may; ask for less", bytes.len());
        Metrics::inc(&self.hub.metrics().errors_sent_total);
        encode_server(encoding, &error_frame(req, ErrorCode::Internal, message))
    }

    /// Write `wires` and flush once, all within `deadline` (one timer for the whole batch: a
    /// socket that cannot take the batch in time is a slow client, whichever frame it stalls on).
    async fn write(&mut self, deadline: Instant, wires: Vec<Wire>) -> Flow {
        let tx = &mut self.tx;
        let batch = async move {
            for wire in wires {
                tx.feed(wire).await?;
            }
            tx.flush().await
        };
        match tokio::time::timeout_at(deadline.into(), batch).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => {
                debug!(peer = %self.peer.addr, error = %err, "write failed");
                Err("write failed")
            }
            Err(_) => {
                Metrics::inc(&self.hub.metrics().slow_clients_closed_total);
                warn!(peer = %self.peer.addr, user = self.user().unwrap_or("-"), "client too slow; closing");
                Err("slow client")
            }
        }
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let deadline = Instant::now() + Duration::from_millis(1_000);
        let _ = self.write(deadline, vec![Wire::Close { code, reason: reason.to_string() }]).await;
    }
}

/// Whether `room` takes receipts, asked of `ask` only the first time (`seen` remembers).
fn takes_receipts<'a>(seen: &mut Vec<(&'a str, bool)>, room: &'a str, ask: impl FnOnce(&str) -> bool) -> bool {
    if let Some((_, takes)) = seen.iter().find(|(known, _)| *known == room) {
        return *takes;
    }
    let takes = ask(room);
    seen.push((room, takes));
    takes
}

/// The shared buffer of a shared entry or run as a WebSocket message (no copy); `None` for
/// frames encoded for this connection.
fn shared_wire(encoding: Encoding, frame: &Out) -> Option<Wire> {
    match frame {
        Out::Shared(shared) => Some(shared.wire(encoding)),
        Out::Run(run) => Some(run.wire(encoding)),
        Out::Entry(..) | Out::Frame(_) => None,
    }
}

/// Encoded frames (one, or a batch) as the WebSocket message of their encoding.
fn wire_of(encoding: Encoding, bytes: Vec<u8>) -> Wire {
    match encoding {
        Encoding::Json => Wire::Text(String::from_utf8(bytes).expect("JSON frames and newlines are UTF-8")),
        Encoding::MessagePack => Wire::Binary(Bytes::from(bytes)),
    }
}

/// The most bytes the node packs into one WebSocket message for a batching client; a single
/// frame larger than this still goes alone. Small enough for any client's default message
/// limit and to bound the copy, large enough for a burst of deliveries in one message.
const BATCH_MAX_BYTES: usize = 64 * 1024;

/// The most encoded bytes a session holds for one write (at least one frame, whatever its size).
const WRITE_CHUNK_BYTES: usize = 256 * 1024;

/// At least the bytes `frame` encodes to, cheaply: exact for shared buffers, the worst escaping
/// of a body for an entry (six bytes a byte), nothing for other frames (small, or alone anyway).
fn encoded_size_bound(encoding: Encoding, frame: &Out) -> usize {
    let entry = |entry: &Entry| 6 * entry.body.len() + 512;
    match frame {
        Out::Shared(shared) => shared.bytes(encoding).len(),
        Out::Run(run) => run.bytes(encoding).len(),
        Out::Entry(_, shared) => entry(shared),
        Out::Frame(ServerFrame::Message { entry: message, .. }) => entry(message),
        Out::Frame(_) => 0,
    }
}

/// The most entries a session takes from its queue before it writes them: bounds one write's
/// size and the time before the session looks at its socket's input again.
const TAKE_MAX_ENTRIES: usize = 64;

/// What a session writes: a frame; a log entry shared with every other recipient's
/// connection, encoded straight from the shared entry (no copy of it per recipient) with its
/// cursor; a large room's entry, whose encoding is shared too; or a run of a large room's
/// entries, sent as one batch whose bytes are shared too.
#[allow(
    clippy::large_enum_variant,
    reason = "an `Out` lives for one flush (at most a take of entries and the replies ready), so its size costs nothing \
              lasting, while boxing would cost an allocation for every reply"
)]
enum Out {
    Frame(ServerFrame),
    Entry(Option<Cursor>, Arc<Entry>),
    Shared(Arc<SharedEntry>),
    Run(Arc<SharedRun>),
}

async fn notified(signals: Option<Arc<crate::hub::ConnSignals>>) {
    match signals {
        Some(signals) => signals.notify.notified().await,
        None => std::future::pending().await,
    }
}

async fn recv_inbox(inbox: Option<&mut crate::outbound::Inbox>) -> Option<Outbound> {
    match inbox {
        Some(inbox) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

async fn poll_page(page: Option<&mut BoxFuture<'static, StoreResult<Page>>>) -> StoreResult<Page> {
    match page {
        Some(page) => page.await,
        None => std::future::pending().await,
    }
}

/// A token bucket: `rate` tokens per second, holding at most twice that.
struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        TokenBucket { rate, capacity: rate * 2.0, tokens: rate * 2.0, refilled: Instant::now() }
    }

    /// Take a token, or say how long until one is there.
    fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * self.rate).min(self.capacity);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

mod large_rooms;
#[cfg(test)]
mod tests;
