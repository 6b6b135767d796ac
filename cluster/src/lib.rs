//! palaver's cluster: many nodes serving as one, behind the hub's two calls.
//!
//! Layers: this crate sits above `actors` (and `protocol`, and `store` through
//! `actors::store`) and below `node`, which starts it after the hub. `actors` does not depend
//! on it: the hub knows the cluster only as [`Peers`] (`actors/src/peers.rs`), which
//! [`Cluster`] implements, and presence only as its part of it, [`PresencePeers`]; the
//! dependency runs one way, from here to the hub, and the crate boundary enforces it.
//!
//! Application code never asks where a room lives. [`Hub::append`] asks [`Peers::route`]: a
//! room this node owns goes to its local room actor as on a single node; a room another node
//! owns goes to that node's **router** ([`router`]), which runs it through its own hub and
//! replies. [`Hub::deliver`] hands a committed entry to the local connections and to every
//! other live node's router, which hands it to its own connections (two-tier fan-out).
//!
//! Pieces (one file each):
//! - [`wire`]: the inter-node message and its versioned encoding (ours, not ractor's).
//! - [`placement`]: rendezvous hashing of room ids over the live set.
//! - [`membership`]: heartbeats → live set, known set, quorum: whether this node may serve.
//! - [`router`]: the one remotable actor per node (process groups `palaver.routers` and
//!   `palaver.router.<node>`); everything else (rooms, sessions) stays local-only, because every
//!   remotable actor costs a proxy on every other node (docs/DESIGN.md §3).
//! - [`link`]: ractor_cluster's `NodeServer`, the reconnect loop, and the heartbeat ticker.
//! - [`gate`]: the cluster port's accept loop, which bounds what a link may send and how long it
//!   may take before it authenticates.
//! - [`tls`]: optional mutual TLS on node links (rustls), under one cluster CA.
//!
//! Supervision: the node starts the cluster after the hub ([`start`]); the `NodeServer` and the
//! router are unsupervised top-level actors living as long as the process; a ticker task sends
//! heartbeats, re-evaluates membership, reconnects links and expires forwarded requests.
//!
//! Safety comes from the store, not from agreement: each room actor claims the room with a new
//! epoch and every append is fenced by it, so two nodes that disagree about an owner (views
//! differ for a heartbeat or two; a paused node wakes up believing it still owns rooms) can
//! cost a retry, never a lost or doubled message. The quorum rule keeps a partition's minority
//! from writing at all.

pub mod gate;
pub mod link;
pub mod membership;
pub mod placement;
pub mod router;
pub mod tls;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::{Mutex, RwLock};
use std::time::{Duration, Instant};

use protocol::{EntryKind, ServerFrame};
use ractor::ActorRef;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use tracing::{info, warn};

use actors::encoded::SharedEntry;
use actors::hub::{delivery_runs, Hub};
use actors::metrics::Metrics;
use actors::peers::{Peers, Route};
use actors::presence::{PresenceBatch, PresencePeers};
use actors::room::AppendCommand;
use actors::store::{Appended, Delivery, Recipients, StoreError};
use actors::supervise::spawn_essential;
use membership::{Membership, View};
use wire::{AppendReply, ForwardedAppend, Heartbeat, RouterMessage, RunMessages, WireOutcome};

/// Process group of every node's router.
pub const ROUTERS_GROUP: &str = "palaver.routers";

/// At most this many deliveries from other nodes are fanned out together: a room owner's
/// commit batch (`limits.room_batch_max`) fits, and a burst of many rooms does not hold one
/// room's entries back for long.
const DELIVERIES_PER_FAN_OUT: usize = 256;

/// Process group of one node's router: how a node finds another by name.
pub fn router_group(node: &str) -> String {
    format!("palaver.router.{node}")
}

/// What the cluster needs from the configuration (the node crate fills it in).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub node: String,
    /// Where the node listens for other nodes.
    pub listen: SocketAddr,
    /// `host:port` other nodes use to reach this one (default: `listen`).
    pub advertise: String,
    /// `host:port` of nodes to join through; empty for the first node of a cluster.
    pub seeds: Vec<String>,
    /// Shared secret of the cluster's node links.
    pub cookie: String,
    /// TLS on node links (`cluster.tls_*`); `None`: plain TCP.
    pub tls: Option<Arc<tls::LinkTls>>,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// How long an accepted link may take to authenticate (TLS and cookie handshakes).
    pub handshake_timeout: Duration,
    /// How long a forwarded append may wait for its owner's reply before `unavailable`.
    pub request_timeout: Duration,
    /// Forwarded appends awaiting a reply, at most (flow control above ractor_cluster's
    /// unbounded writer queue): beyond it new ones are refused with `unavailable`.
    pub max_pending_requests: usize,
    /// Deliveries from other nodes queued for this node's fan-out, at most (see
    /// [`Cluster::accept_delivery`]).
    pub delivery_queue_len: usize,
}

struct Pending {
    node: String,
    /// What was asked, to check the reply against (see [`Pending::answers`]).
    asked: Asked,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
    deadline: Instant,
}

/// The part of a forwarded append that its committed entry must repeat.
struct Asked {
    room: String,
    kind: EntryKind,
    sender: String,
    message_id: String,
}

impl Pending {
    /// Whether `reply` can be the answer to this request: it comes from the node asked and,
    /// if it carries an entry, the entry is of the room asked (and for a message, is that
    /// message: a retry's answer is the original entry, which has the same sender and id).
    /// Anything else is a reply meant for another request, which must not become this one's
    /// ack: the client would be told its message has another message's seq.
    fn answers(&self, reply: &AppendReply) -> bool {
        if reply.from != self.node {
            return false;
        }
        match &reply.outcome {
            WireOutcome::Appended { entry, .. } => {
                entry.room == self.asked.room
                    && (self.asked.kind != EntryKind::Text
                        || (entry.kind == EntryKind::Text
                            && entry.from == self.asked.sender
                            && entry.id == self.asked.message_id))
            }
            WireOutcome::Error(_) => true,
        }
    }
}

/// One node's membership in the cluster, shared by the hub, the router and the ticker.
pub struct Cluster {
    pub settings: ClusterSettings,
    /// Random per process start: tells a restarted node from a hiccup, and two nodes that
    /// were given the same name from one.
    pub incarnation: u64,
    membership: Mutex<Membership>,
    view: RwLock<Arc<View>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_request: AtomicU64,
    hub: OnceLock<Weak<Hub>>,
    /// Forwarded appends from other nodes, applied in arrival order by one task so that
    /// commands keep their order into the room's mailbox.
    forwarded: mpsc::UnboundedSender<ForwardedAppend>,
    forwarded_rx: Mutex<Option<mpsc::UnboundedReceiver<ForwardedAppend>>>,
    /// Deliveries from other nodes, fanned out to this node's connections by one task, not by
    /// the router: a flood of them must not hold up heartbeats behind it.
    deliveries: mpsc::Sender<Delivery>,
    deliveries_rx: Mutex<Option<mpsc::Receiver<Delivery>>>,
    pub(crate) node_server: OnceLock<ActorRef<ractor_cluster::NodeServerMessage>>,
}

impl Cluster {
    pub fn new(settings: ClusterSettings) -> Arc<Cluster> {
        // A peer whose links all closed is dead unless a heartbeat follows within four
        // intervals: enough for the reconnect loop to redial a link that merely dropped.
        let membership = Membership::new(
            &settings.node,
            &settings.advertise,
            settings.heartbeat_timeout,
            !settings.seeds.is_empty(),
        )
        .with_link_grace(settings.heartbeat_interval * 4);
        let view = membership.view(Instant::now());
        let (forwarded, forwarded_rx) = mpsc::unbounded_channel();
        let (deliveries, deliveries_rx) = mpsc::channel(settings.delivery_queue_len.max(1));
        Arc::new(Cluster {
            settings,
            incarnation: rand::random(),
            membership: Mutex::new(membership),
            view: RwLock::new(Arc::new(view)),
            pending: Mutex::new(HashMap::new()),
            // From a random point, so that a reply to a request of this node's previous
            // process (same name, same counter) cannot match one of this process's.
            next_request: AtomicU64::new(rand::random()),
            hub: OnceLock::new(),
            forwarded,
            forwarded_rx: Mutex::new(Some(forwarded_rx)),
            deliveries,
            deliveries_rx: Mutex::new(Some(deliveries_rx)),
            node_server: OnceLock::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.settings.node
    }

    fn hub(&self) -> Option<Arc<Hub>> {
        self.hub.get().and_then(Weak::upgrade)
    }

    /// The current view (live set, quorum) — what placement uses.
    pub fn view(&self) -> Arc<View> {
        self.view.read().clone()
    }

    /// Which node owns `room` now, by this node's view.
    pub fn owner(&self, room: &str) -> Option<String> {
        let view = self.view();
        placement::owner(room, view.live.iter().map(String::as_str)).map(str::to_string)
    }

    /// The routers of the other live nodes in `view`, with their names: where a broadcast goes.
    fn other_routers<'a>(&'a self, view: &'a View) -> impl Iterator<Item = (&'a String, ActorRef<RouterMessage>)> + 'a {
        view.live
            .iter()
            .filter(move |node| **node != self.settings.node)
            .filter_map(|node| router_of(node).map(|router| (node, router)))
    }

    /// A reply to one of this node's forwarded appends. One that does not answer the request
    /// of its id is dropped and counted, and the request stays pending: its own answer may
    /// still come, and otherwise it times out and the client retries with the same id.
    fn complete(&self, reply: AppendReply) {
        let mut pending = self.pending.lock();
        match pending.get(&reply.id) {
            Some(waiting) if waiting.answers(&reply) => {
                let waiting = pending.remove(&reply.id).expect("present");
                drop(pending);
                let _ = waiting.reply.send(reply.outcome.into());
            }
            Some(waiting) => {
                let asked = format!("{}/{} to {}", waiting.asked.room, waiting.asked.message_id, waiting.node);
                drop(pending);
                warn!(id = reply.id, from = %reply.from, asked, "dropped a reply that answers another request");
                if let Some(hub) = self.hub() {
                    Metrics::inc(&hub.metrics().cluster_invalid_messages_total);
                }
            }
            None => {}
        }
    }

    /// A heartbeat arrived.
    fn on_heartbeat(&self, hb: &Heartbeat) {
        let result = self.membership.lock().on_heartbeat(hb, self.incarnation, Instant::now());
        if let Err(message) = result {
            if let Some(hub) = self.hub() {
                Metrics::inc(&hub.metrics().cluster_invalid_messages_total);
            }
            tracing::error!(node = %self.settings.node, "{message}");
            return;
        }
        self.refresh();
        if !hb.leaving {
            if let Some(hub) = self.hub() {
                // How far the sender applied this process's presence batches.
                let acked = hb
                    .presence_applied
                    .iter()
                    .find(|(node, incarnation, _)| *node == self.settings.node && *incarnation == self.incarnation)
                    .map_or(0, |(_, _, seq)| *seq);
                hub.presence().on_heartbeat(self, &hb.from, hb.incarnation, hb.presence_seq, acked);
            }
        }
    }

    /// Recompute the view; if it changed, act on it.
    pub fn refresh(&self) {
        let new = self.membership.lock().view(Instant::now());
        let old = {
            let mut view = self.view.write();
            if **view == new {
                return;
            }
            std::mem::replace(&mut *view, Arc::new(new.clone()))
        };
        if old.live != new.live || old.serving != new.serving {
            info!(
                node = %self.settings.node,
                live = ?new.live,
                known = new.known,
                serving = new.serving,
                reason = new.reason.as_deref().unwrap_or("-"),
                "cluster view changed"
            );
        }
        let Some(hub) = self.hub() else { return };
        Metrics::set(&hub.metrics().cluster_nodes_live, new.live.len() as i64);
        // Users connected only to nodes that left are offline now (their records stay as
        // last-seen until those nodes are back with a snapshot).
        let gone: Vec<String> = old.live.iter().filter(|node| !new.live.contains(node)).cloned().collect();
        if !gone.is_empty() {
            hub.presence().on_view(&gone);
        }
        // Rooms this node no longer owns: stop their actors (queued commands fail as
        // `unavailable` and are retried at the new owner, which claims the next epoch).
        let me = self.settings.node.clone();
        let stopped = hub.stop_rooms_where(|room| {
            !new.serving || placement::owner(room, new.live.iter().map(String::as_str)) != Some(me.as_str())
        });
        if stopped > 0 {
            info!(stopped, "stopped room actors of rooms that moved");
        }
        // Requests waiting on nodes that are gone will never be answered.
        self.fail_pending(|pending| !new.live.contains(&pending.node));
        // A delivery in flight from a node that died, or sent while a peer did not count this
        // node as live, may be lost: every connection re-reads its log from the store (the
        // truth), which costs one read each and closes any such gap.
        if old.live != new.live || old.seen_by != new.seen_by {
            hub.catch_up_all();
        }
    }

    fn fail_pending(&self, mut which: impl FnMut(&Pending) -> bool) {
        let mut pending = self.pending.lock();
        let ids: Vec<u64> = pending.iter().filter(|(_, p)| which(p)).map(|(id, _)| *id).collect();
        for id in ids {
            if let Some(p) = pending.remove(&id) {
                let _ = p
                    .reply
                    .send(Err(StoreError::Unavailable(format!("node `{}` left before answering; retry", p.node))));
            }
        }
    }

    /// Drop forwarded requests past their deadline (their sessions have given up already).
    fn expire_pending(&self) {
        let now = Instant::now();
        self.fail_pending(|pending| pending.deadline <= now);
    }

    /// The heartbeat this node sends now.
    fn heartbeat(&self) -> Heartbeat {
        // Read before the membership lock: presence is never read under it.
        let presence_applied = self.hub().map_or_else(Vec::new, |hub| hub.presence().applied());
        let membership = self.membership.lock();
        let live = self.view().live.clone();
        Heartbeat {
            from: self.settings.node.clone(),
            incarnation: self.incarnation,
            addr: self.settings.advertise.clone(),
            live,
            known: membership.known(),
            leaving: membership.is_leaving(),
            presence_seq: self.hub().map_or(0, |hub| hub.presence().sent_seq()),
            forgotten: membership.tombstones(),
            delivers_runs: true,
            presence_applied,
            targeted: true,
        }
    }

    /// ractor_cluster says the last link to `node` closed: it is dead soon unless it heartbeats.
    pub(crate) fn link_closed(&self, node: &str) {
        self.membership.lock().link_closed(node, Instant::now());
    }

    /// Known nodes and their addresses.
    pub fn known(&self) -> Vec<(String, String)> {
        self.membership.lock().known()
    }

    /// SIGTERM: stop serving rooms, and tell every peer that this node leaves (so they re-home
    /// its rooms at once and stop counting it for the quorum).
    pub async fn leave(&self) {
        self.membership.lock().leave();
        self.refresh();
        // Said a few times: a lost "leaving" only costs the peers a heartbeat timeout.
        for _ in 0..3 {
            link::send_heartbeats(self);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        info!(node = %self.settings.node, "left the cluster");
    }

    /// Operator: forget a node that is gone for good (killed, its host lost), so that it no
    /// longer counts towards the quorum. The other nodes learn it from this node's heartbeats.
    pub fn forget(&self, node: &str) -> Result<(), String> {
        self.membership.lock().forget(node, Instant::now())?;
        info!(node = %self.settings.node, forgotten = node, "forgot a node at the operator's request");
        self.refresh();
        Ok(())
    }

    /// A delivery from another node: queue it for the fan-out task. When the queue is full the
    /// fan-out has fallen behind: rather than queue without bound, the delivery's recipients
    /// on this node are marked lagged, and each of their connections reads what it missed (the
    /// entry is committed before any node is told of it), in pages: a large room's entries
    /// from the node's recent entries, where every arriving one is kept first (one copy for
    /// all its members), anything older from the store.
    pub fn accept_delivery(&self, hub: &Hub, delivery: Delivery) {
        self.accept_run(hub, std::iter::once(delivery));
    }

    /// [`accept_delivery`](Self::accept_delivery) a run of one room's deliveries (one member
    /// list): once one is shed, so is the rest of the run (they are behind it), and the
    /// recipients are marked lagged once for all of them.
    pub fn accept_run<I>(&self, hub: &Hub, run: I)
    where
        I: IntoIterator<Item = Delivery>,
        I::IntoIter: ExactSizeIterator,
    {
        let mut run = run.into_iter().peekable();
        if let Some(first) = run.peek().filter(|first| matches!(first.recipients, Recipients::Members(_))) {
            let room = first.entry.room.clone();
            let mut kept = Vec::with_capacity(run.len());
            let run: Vec<Delivery> =
                run.inspect(|delivery| kept.push(Arc::new(SharedEntry::new(delivery.entry.clone())))).collect();
            hub.keep_recent(&room, &kept);
            return self.queue_run(hub, run.into_iter());
        }
        self.queue_run(hub, run);
    }

    /// Queue a run for the fan-out task, shedding it from the first delivery that does not fit.
    fn queue_run(&self, hub: &Hub, mut run: impl ExactSizeIterator<Item = Delivery>) {
        while let Some(delivery) = run.next() {
            if let Err(mpsc::error::TrySendError::Full(delivery)) = self.deliveries.try_send(delivery) {
                Metrics::add(&hub.metrics().cluster_deliveries_shed_total, 1 + run.len() as u64);
                hub.lag_recipients(&delivery);
                return;
            }
        }
    }

    /// Fan out deliveries from other nodes, in arrival order (one task; see `deliveries`).
    async fn run_deliveries(self: Arc<Self>) {
        let Some(mut rx) = self.deliveries_rx.lock().take() else { return };
        let mut lists = MemberLists::default();
        let mut batch = Vec::new();
        // Everything waiting is fanned out together, so that a run of one large room's entries
        // reaches each connection in one push (`Hub::deliver_local`), as on the owner.
        while rx.recv_many(&mut batch, DELIVERIES_PER_FAN_OUT).await > 0 {
            let Some(hub) = self.hub() else { return };
            for delivery in &mut batch {
                lists.share(delivery);
            }
            hub.deliver_local(&batch.iter().collect::<Vec<_>>());
            batch.clear();
        }
    }

    /// Apply an append forwarded by another node, in arrival order (one task; see `forwarded`).
    async fn run_forwarded(self: Arc<Self>) {
        let Some(mut rx) = self.forwarded_rx.lock().take() else { return };
        while let Some(append) = rx.recv().await {
            let Some(hub) = self.hub() else { return };
            let reply_to = append.from.clone();
            let id = append.id;
            let room = append.room.clone();
            let span = tracing::debug_span!("palaver.forwarded_append", room = %room, from = %reply_to);
            if let Some(traceparent) = &append.traceparent {
                actors::trace_context::adopt(&span, traceparent);
            }
            let outcome = match self.route(&room) {
                Route::Local => hub.append_here(&room, append.command()).instrument(span).await,
                Route::Remote(owner) => {
                    Err(StoreError::Unavailable(format!("room `{room}` moved to `{owner}`; retry")))
                }
                Route::Unavailable(reason) => Err(StoreError::Unavailable(reason)),
            };
            let me = self.settings.node.clone();
            let timeout = self.settings.request_timeout;
            tracing::debug!(room, from = %reply_to, trace = append.trace, "forwarded append");
            tokio::spawn(async move {
                let result = match outcome {
                    Ok(receiver) => actors::hub::append_outcome(&room, receiver, timeout).await,
                    Err(err) => Err(err),
                };
                match router_of(&reply_to) {
                    Some(router) => {
                        let reply = AppendReply { id, from: me, outcome: result.into() };
                        let _ = router.cast(RouterMessage::Reply(reply));
                    }
                    None => warn!(node = %reply_to, "cannot reply to a forwarded append: no route to its node"),
                }
            });
        }
    }
}

/// The router of `node`, if a link to it is up.
pub fn router_of(node: &str) -> Option<ActorRef<RouterMessage>> {
    ractor::pg::get_members(&router_group(node)).into_iter().next().map(ActorRef::from)
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterStartError {
    #[error("binding cluster.listen {listen}: {source}")]
    Bind { listen: std::net::SocketAddr, source: std::io::Error },
    #[error("starting {what}: {reason}")]
    Actor { what: &'static str, reason: String },
}

/// Start the cluster for `hub`: node links, the router, the ticker. The node calls this once,
/// before it accepts clients.
pub async fn start(hub: &Arc<Hub>, settings: ClusterSettings) -> Result<Arc<Cluster>, ClusterStartError> {
    let cluster = Cluster::new(settings);
    let _ = cluster.hub.set(Arc::downgrade(hub));
    hub.set_peers(cluster.clone());
    link::start(&cluster, hub.clone()).await?;
    // Each owns its queue's receiving end: a panic there stops the node (supervise.rs).
    spawn_essential("cluster: forwarded appends", cluster.clone().run_forwarded());
    spawn_essential("cluster: deliveries from other nodes", cluster.clone().run_deliveries());
    cluster.refresh();
    Ok(cluster)
}

/// The hub reaches the other nodes through these calls alone, and presence through those of
/// [`PresencePeers`] below (see `peers.rs`).
impl Peers for Cluster {
    /// Where commands for `room` go.
    fn route(&self, room: &str) -> Route {
        let view = self.view();
        if let Some(reason) = &view.reason {
            return Route::Unavailable(format!("{reason}; retry, or reconnect to another node"));
        }
        match placement::owner(room, view.live.iter().map(String::as_str)) {
            Some(owner) if owner == self.settings.node => Route::Local,
            Some(owner) => Route::Remote(owner.to_string()),
            None => Route::Unavailable("no live node".into()),
        }
    }

    /// Send an append to `node`'s router; the outcome arrives on the returned receiver (or the
    /// sender is dropped on timeout or when the node dies, which the session reports as
    /// `unavailable`, and the client retries with the same message id).
    fn forward_append(
        &self,
        node: &str,
        room: &str,
        command: AppendCommand,
    ) -> Result<oneshot::Receiver<Result<Appended, StoreError>>, StoreError> {
        let unavailable = |why: &str| StoreError::Unavailable(format!("room `{room}` lives on `{node}`, {why}; retry"));
        let router = router_of(node).ok_or_else(|| unavailable("which is not reachable"))?;
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (reply, outcome) = oneshot::channel();
        {
            let mut pending = self.pending.lock();
            if pending.len() >= self.settings.max_pending_requests {
                return Err(unavailable("and too many requests wait for other nodes"));
            }
            let deadline = Instant::now() + self.settings.request_timeout;
            let asked = Asked {
                room: room.to_string(),
                kind: command.kind,
                sender: command.from.clone(),
                message_id: command.id.clone(),
            };
            pending.insert(id, Pending { node: node.to_string(), asked, reply, deadline });
        }
        let message = RouterMessage::Append(ForwardedAppend {
            id,
            from: self.settings.node.clone(),
            room: room.to_string(),
            kind: command.kind,
            sender: command.from,
            message_id: command.id,
            user: command.user,
            body: command.body,
            trace: id ^ self.incarnation,
            target: command.details.target,
            reply_to: command.details.reply_to,
            mentions: command.details.mentions,
            until: command.details.until,
            settings: command.details.settings,
            attachments: command.details.attachments,
            traceparent: actors::trace_context::traceparent(&tracing::Span::current()),
        });
        if router.cast(message).is_err() {
            self.pending.lock().remove(&id);
            return Err(unavailable("and its link just closed"));
        }
        if let Some(hub) = self.hub() {
            Metrics::inc(&hub.metrics().cluster_forwarded_total);
        }
        Ok(outcome)
    }

    /// Hand committed entries (in commit order) to the other live nodes that have a connection
    /// of a recipient; each fans out to its own connections. Which nodes those are comes from
    /// the presence table (`Presence::peers_for`), which also names nodes it is not in step
    /// with, and nodes older than targeted delivery get everything; a connection the table did
    /// not know of yet is caught up from the store by its node once every peer knows of it
    /// (`Hub::announced`). A run of a large room's entries under one member list goes as one
    /// [`RouterMessage::DeliverRun`], the list once, to nodes that read it (a 1,000-member list
    /// is most of each delivery's bytes); other deliveries, and runs to older nodes, go one
    /// [`RouterMessage::Deliver`] per entry. Each message is encoded once for every node.
    fn send_deliveries(&self, deliveries: &[&Delivery]) {
        let view = self.view();
        let peers: Vec<(&String, ActorRef<RouterMessage>)> = self.other_routers(&view).collect();
        let Some(hub) = self.hub().filter(|_| !peers.is_empty()) else { return };
        let (mut sent, mut spared) = (0, 0);
        for run in delivery_runs(deliveries) {
            let first = run[0];
            let wanted = hub.presence().peers_for(&first.entry.room, &first.recipients, &view.targeted);
            let mut messages = RunMessages::new(run);
            for (node, router) in &peers {
                if view.targeted.contains(node) && !wanted.contains(node) {
                    spared += run.len() as u64;
                    continue;
                }
                for message in messages.for_node(view.reads_runs.contains(node)) {
                    let entries = match &message {
                        RouterMessage::DeliverRun(_) => run.len() as u64,
                        _ => 1,
                    };
                    if router.cast(message).is_ok() {
                        sent += entries;
                    }
                }
            }
        }
        Metrics::add(&hub.metrics().cluster_deliveries_sent_total, sent);
        Metrics::add(&hub.metrics().cluster_deliveries_spared_total, spared);
    }

    fn push(&self, nodes: &[String], users: &[String], frame: &ServerFrame) -> u64 {
        let view = self.view();
        // Encoded once, and only if some node is to get it.
        let mut bytes = None;
        let mut sent = 0;
        for node in nodes.iter().filter(|node| view.live.contains(*node)) {
            let Some(router) = router_of(node) else { continue };
            let bytes = bytes.get_or_insert_with(|| wire::encode_push(users, frame)).clone();
            if router.cast(RouterMessage::Push(bytes)).is_ok() {
                sent += 1;
            }
        }
        sent
    }

    fn not_serving(&self) -> Option<String> {
        self.view().reason.clone()
    }
}

/// Presence's part of [`Peers`]: batches and snapshots between the nodes' presence tables.
impl PresencePeers for Cluster {
    fn is_live(&self, node: &str) -> bool {
        self.view().live.iter().any(|live| live == node)
    }

    fn incarnation(&self) -> u64 {
        self.incarnation
    }

    fn send_presence(&self, to: Option<&str>, batch: PresenceBatch) -> u64 {
        let message = RouterMessage::Presence(batch);
        let Some(node) = to else {
            let view = self.view();
            return self.other_routers(&view).filter(|(_, router)| router.cast(message.clone()).is_ok()).count() as u64;
        };
        router_of(node).is_some_and(|router| router.cast(message).is_ok()).into()
    }

    fn want_presence(&self, node: &str) {
        if let Some(router) = router_of(node) {
            let _ = router.cast(RouterMessage::PresenceWant(self.settings.node.clone()));
        }
    }

    fn live_peers(&self) -> Vec<String> {
        self.view().live.iter().filter(|node| **node != self.settings.node).cloned().collect()
    }
}

/// The last member list received per large room. Every delivery decodes its own copy of the
/// list; handing the hub the previous `Arc` when the list is unchanged lets the hub's per-room
/// fan-out cache hit for deliveries from other nodes as it does for local ones (comparing two
/// lists is cheaper than looking every member's connections up again).
///
/// The deliveries of one run share the list they were decoded with (`wire::decode_run`), so
/// that list is compared once: `last` remembers it with the list it was resolved to.
#[derive(Default)]
struct MemberLists {
    by_room: HashMap<String, MemberList>,
    /// The list the last delivery was decoded with, and the list it was resolved to.
    last: Option<(MemberList, MemberList)>,
}

type MemberList = Arc<Vec<String>>;

impl MemberLists {
    /// Rooms remembered at most; past it the map starts over (a cache, not a registry).
    const MAX_ROOMS: usize = 1024;

    fn share(&mut self, delivery: &mut Delivery) {
        let Recipients::Members(members) = &mut delivery.recipients else { return };
        if let Some((decoded, resolved)) = &self.last {
            if Arc::ptr_eq(decoded, members) {
                *members = resolved.clone();
                return;
            }
        }
        let decoded = members.clone();
        match self.by_room.get(&delivery.entry.room) {
            Some(known) if known == members => *members = known.clone(),
            _ => {
                if self.by_room.len() >= Self::MAX_ROOMS {
                    self.by_room.clear();
                }
                self.by_room.insert(delivery.entry.room.clone(), members.clone());
            }
        }
        self.last = Some((decoded, members.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use protocol::{Entry, EntryKind};

    use super::*;
    use actors::auth::{AuthConfig, Authenticator};
    use actors::limits::Limits;
    use actors::store::sqlite::{SqliteOptions, SqliteStore};
    use actors::store::Store;

    fn settings(delivery_queue_len: usize) -> ClusterSettings {
        ClusterSettings {
            node: "n1".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: "127.0.0.1:0".into(),
            seeds: Vec::new(),
            cookie: "cookie".into(),
            tls: None,
            heartbeat_interval: Duration::from_millis(250),
            heartbeat_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
            max_pending_requests: 10,
            delivery_queue_len,
        }
    }

    fn delivery(seq: u64) -> Delivery {
        let entry = Entry {
            room: "r".into(),
            seq,
            id: format!("m{seq}"),
            from: "ann".into(),
            kind: EntryKind::Text,
            user: None,
            body: String::new(),
            ts: 1,
            ..Default::default()
        };
        Delivery { entry, recipients: Recipients::Members(Arc::new(vec!["ann".into()])) }
    }

    /// A hub on a fresh SQLite store (the store is not touched; the hub needs one).
    fn hub() -> (Arc<Hub>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path().join("t.db"))).unwrap());
        let auth = Authenticator::new(AuthConfig::for_tests()).unwrap();
        (Hub::new("n1".into(), Limits::default(), Default::default(), store, auth), dir)
    }

    /// A delivery from another node that finds the fan-out queue full is not queued: the
    /// connections of its recipients (only theirs) are told to read the store instead.
    #[tokio::test]
    async fn a_full_delivery_queue_sends_its_recipients_to_the_store() {
        let (hub, _dir) = hub();
        // No fan-out task runs here, so the queue of one is full after one delivery.
        let cluster = Cluster::new(settings(1));
        let (ann, bob) = (hub.register("ann"), hub.register("bob"));
        cluster.accept_delivery(&hub, delivery(1));
        assert!(!ann.signals.lagged.load(Ordering::Acquire), "queued, not shed");
        cluster.accept_delivery(&hub, delivery(2));
        assert!(ann.signals.lagged.load(Ordering::Acquire), "shed: ann must read the store");
        assert!(!bob.signals.lagged.load(Ordering::Acquire), "bob is not a recipient");
        assert_eq!(hub.metrics().cluster_deliveries_shed_total.load(Ordering::Relaxed), 1);
    }

    /// A run that does not fit the fan-out queue: what fits is queued, the rest of the run is
    /// shed with it (behind the first shed entry), and each recipient's connection is marked
    /// lagged once for the run.
    #[tokio::test]
    async fn a_run_that_overflows_the_queue_is_shed_from_there_on_at_once() {
        let (hub, _dir) = hub();
        let cluster = Cluster::new(settings(2));
        let ann = hub.register("ann");
        let members = Arc::new(vec!["ann".to_string()]);
        let run: Vec<Delivery> =
            (1..=5).map(|seq| Delivery { recipients: Recipients::Members(members.clone()), ..delivery(seq) }).collect();
        cluster.accept_run(&hub, run);
        let rx = cluster.deliveries_rx.lock().take().expect("receiver");
        assert_eq!(rx.len(), 2, "two fit");
        assert_eq!(hub.metrics().cluster_deliveries_shed_total.load(Ordering::Relaxed), 3);
        assert!(ann.signals.lagged.load(Ordering::Acquire), "ann must read the store");
        assert_eq!(hub.metrics().deliveries_lagged_total.load(Ordering::Relaxed), 1, "marked once for the run");
    }

    /// A reply is taken as the answer to the request of its id only if it answers it: from the
    /// node asked, about the room and message asked. Anything else (a reply routed to the wrong
    /// node, or to a restarted node whose counter met the same id) is dropped, and the request
    /// waits on for its own answer.
    #[tokio::test]
    async fn a_reply_that_answers_another_request_is_not_taken() {
        let cluster = Cluster::new(settings(1));
        let (reply, mut outcome) = oneshot::channel();
        let asked = Asked { room: "r".into(), kind: EntryKind::Text, sender: "ann".into(), message_id: "m7".into() };
        let deadline = Instant::now() + Duration::from_secs(60);
        cluster.pending.lock().insert(42, Pending { node: "n2".into(), asked, reply, deadline });
        let appended = |from: &str, entry: Entry| AppendReply {
            id: 42,
            from: from.into(),
            outcome: WireOutcome::Appended { entry: Box::new(entry), duplicate: false },
        };
        let mine = Entry { seq: 7, id: "m7".into(), ..delivery(7).entry };
        let someone_elses = Entry { seq: 9, id: "m9".into(), from: "bob".into(), ..delivery(9).entry };
        let another_room = Entry { room: "r2".into(), ..mine.clone() };
        for wrong in [appended("n3", mine.clone()), appended("n2", someone_elses), appended("n2", another_room)] {
            cluster.complete(wrong);
            assert!(outcome.try_recv().is_err(), "a reply to another request was taken");
        }
        assert_eq!(cluster.pending.lock().len(), 1, "the request still waits");
        cluster.complete(appended("n2", mine));
        let taken = outcome.try_recv().expect("answered").expect("appended");
        assert_eq!((taken.delivery.entry.id.as_str(), taken.delivery.entry.seq), ("m7", 7));
        assert!(cluster.pending.lock().is_empty());
    }

    /// A list equal to the last one of its room is replaced by that one (the hub's fan-out cache
    /// keys on it); a changed list replaces it.
    #[test]
    fn an_unchanged_member_list_is_shared_with_the_last_delivery_of_its_room() {
        let mut lists = MemberLists::default();
        let with = |names: &[&str]| {
            let mut delivery = delivery(1);
            delivery.recipients = Recipients::Members(Arc::new(names.iter().map(|n| n.to_string()).collect()));
            delivery
        };
        let list_of = |delivery: &Delivery| match &delivery.recipients {
            Recipients::Members(members) => members.clone(),
            other => panic!("{other:?}"),
        };
        let mut first = with(&["ann", "bob"]);
        lists.share(&mut first);
        let mut again = with(&["ann", "bob"]);
        lists.share(&mut again);
        assert!(Arc::ptr_eq(&list_of(&first), &list_of(&again)), "the same list is shared");
        let mut changed = with(&["ann"]);
        lists.share(&mut changed);
        assert!(!Arc::ptr_eq(&list_of(&first), &list_of(&changed)));
        assert_eq!(*list_of(&changed), ["ann"]);
        let mut after = with(&["ann"]);
        lists.share(&mut after);
        assert!(Arc::ptr_eq(&list_of(&changed), &list_of(&after)), "the changed list is the one kept");

        // A run's deliveries arrive with one decoded list between them: each gets the kept one.
        let decoded = Arc::new(vec!["ann".to_string()]);
        let mut run: Vec<Delivery> =
            (0..3).map(|_| Delivery { recipients: Recipients::Members(decoded.clone()), ..delivery(1) }).collect();
        for delivery in &mut run {
            lists.share(delivery);
        }
        assert!(run.iter().all(|delivery| Arc::ptr_eq(&list_of(delivery), &list_of(&changed))));
        // Another room's list in between is its own.
        let mut other = with(&["ann"]);
        other.entry.room = "elsewhere".into();
        lists.share(&mut other);
        assert!(!Arc::ptr_eq(&list_of(&other), &list_of(&changed)));
    }
}
