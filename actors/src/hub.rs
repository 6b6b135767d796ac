//! The hub: one per node, the place application code goes to reach a room or a user by id.
//!
//! It owns the node's registries: room actors by room id (spawned on first use, stopped when
//! idle) and live connections by user. Sessions call [`Hub::append`] to reach a room and never
//! ask where the room lives; rooms call [`Hub::deliver`] to reach members and never ask where
//! their connections are. On a single node both are local; in a cluster the hub reaches the
//! other nodes through [`Peers`](crate::peers::Peers), behind the same two calls, and knows
//! nothing else of the cluster.
//!
//! Room actors and presence, which the hub starts and owns, see the hub only through a trait
//! each declares for what it needs of the node ([`RoomHost`], [`PresenceHost`]), implemented
//! at the end of this file: they call back into the hub (deliver, push, the store, the
//! metrics) without importing it, so the hub sits above them as it sits below the cluster.
//! What the hub and presence push to a connection, and the queue it waits in, are in
//! [`outbound`](crate::outbound).
//!
//! Supervision: the hub is not an actor; it holds the room actors' references, and each room
//! actor removes itself from the registry when it stops. Connections register themselves when
//! they authenticate and unregister when they end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use protocol::{Cursor, Entry, ServerFrame};
use ractor::{Actor, ActorRef};
use tokio::sync::{oneshot, watch, Notify, OnceCell};
use tracing::error;

use crate::auth::Authenticator;
use crate::encoded::{SharedEntry, SharedRun};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::outbound::{outbound_queue, Inbox, Outbound, OutboundQueue};
use crate::peers::{Peers, Route};
use crate::presence::{Presence, PresenceHost, PresencePeers, PresenceSettings};
use crate::room::{AppendCommand, Handed, RoomActor, RoomArgs, RoomHost, RoomMessage, RoomsRuntime};
use crate::store::{Appended, Delivery, Recipients, Store, StoreError};

mod tails;
use tails::RoomTails;

/// Out-of-band signals to a connection, which work even when its queue is full.
#[derive(Debug, Default)]
pub struct ConnSignals {
    pub notify: Notify,
    /// A delivery was dropped on a full queue: catch up from the store.
    pub lagged: AtomicBool,
    /// The user logged out everywhere: close.
    pub revoked: AtomicBool,
}

/// A connection opened while the other nodes may not know of it yet: they learn of it from
/// this node's presence batch `seq`, and until they have applied it they may leave this node
/// out of its user's deliveries (targeted delivery, `Presence::peers_for`).
struct Unannounced {
    seq: u64,
    since: Instant,
    signals: Weak<ConnSignals>,
}

/// How long a connection waits for every peer to acknowledge its announcement before it reads
/// the store anyway. Only a peer that is out of step with this node's presence (which then
/// sends this node every delivery) or older than targeted delivery (which sends every delivery
/// too) takes that long; the bound keeps the waiting list from growing on their account.
const UNANNOUNCED_LIMIT: Duration = Duration::from_secs(10);

/// The hub's side of one live connection.
#[derive(Debug, Clone)]
struct ConnHandle {
    id: u64,
    queue: OutboundQueue,
    signals: Arc<ConnSignals>,
}

/// A connection's side of its registration.
pub struct Registration {
    pub id: u64,
    pub inbox: Inbox,
    pub signals: Arc<ConnSignals>,
}

type RoomSlot = Arc<OnceCell<ActorRef<RoomMessage>>>;

/// The node's live connections, and what it derived from them.
#[derive(Default)]
struct Connections {
    by_user: HashMap<String, Vec<ConnHandle>>,
    /// Per large room, the live connections on this node of the members of its latest member
    /// list: a large room's entries go to every member, and its owner hands the same shared
    /// list to every delivery until the membership changes, so the connections are looked up
    /// once per list instead of once per member per message (a tenth of the node's time when
    /// fanning out to a thousand members). An entry is valid while its list is the delivery's
    /// (the same `Arc`) and no connection came or went: `register` and `unregister` empty the
    /// cache.
    room_fanouts: HashMap<String, RoomFanout>,
}

struct RoomFanout {
    members: Arc<Vec<String>>,
    conns: Vec<ConnHandle>,
}

impl Connections {
    /// The live connections of `members`, a large room's current list, from the cache (built
    /// on a miss).
    fn fanout(&mut self, room: &str, members: &Arc<Vec<String>>) -> &RoomFanout {
        let Connections { by_user, room_fanouts } = self;
        let cached = room_fanouts.get(room).is_some_and(|fanout| Arc::ptr_eq(&fanout.members, members));
        if !cached {
            let conns = members.iter().flat_map(|user| by_user.get(user).into_iter().flatten()).cloned().collect();
            room_fanouts.insert(room.to_owned(), RoomFanout { members: members.clone(), conns });
        }
        &room_fanouts[room]
    }
}

/// The node's registries and shared services. Its fields are private: the rest of the node
/// reads the shared services through the accessors below, and reaches rooms only through the
/// hub's own calls (`append`, `deliver`), so that every write to a room's log goes through its
/// owner (ARCHITECTURE.md, "Invariants", lists the writes that need no owner).
pub struct Hub {
    node: String,
    limits: Limits,
    store: Arc<dyn Store>,
    auth: Authenticator,
    metrics: Metrics,
    presence: Presence,
    rooms: Mutex<HashMap<String, RoomSlot>>,
    connections: Mutex<Connections>,
    /// The newest entries of each large room seen here, for connections that fell behind.
    tails: Mutex<RoomTails>,
    /// Connections the other nodes may not know of yet (see [`Hub::announced`]).
    unannounced: Mutex<Vec<Unannounced>>,
    next_conn_id: AtomicU64,
    shutdown: watch::Sender<bool>,
    /// The other nodes, when the node runs in a cluster (the `cluster` crate); unset on a
    /// single node.
    peers: std::sync::OnceLock<Arc<dyn Peers>>,
    /// Signs media links (`media_url`); set by the node that serves media.
    media_links: std::sync::OnceLock<crate::media::MediaLinks>,
    /// Where the room actors and their committers run (`room/runtime.rs` says why not on the
    /// main runtime).
    pub(crate) rooms_runtime: RoomsRuntime,
}

impl Hub {
    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The bounds the operator set.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The store, for what needs no room owner: reads, a user's own state, and the writes
    /// ARCHITECTURE.md ("Invariants") names.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn auth(&self) -> &Authenticator {
        &self.auth
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// The hub, with its presence ticker running on the current tokio runtime.
    pub fn new(
        node: String,
        limits: Limits,
        presence: PresenceSettings,
        store: Arc<dyn Store>,
        auth: Authenticator,
    ) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            presence: Presence::new(&node, presence),
            tails: Mutex::new(RoomTails::new(limits.large_room_tail_bytes)),
            unannounced: Mutex::new(Vec::new()),
            node,
            limits,
            store,
            auth,
            metrics: Metrics::default(),
            rooms: Mutex::new(HashMap::new()),
            connections: Mutex::new(Connections::default()),
            next_conn_id: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
            peers: std::sync::OnceLock::new(),
            media_links: std::sync::OnceLock::new(),
            rooms_runtime: RoomsRuntime::start(),
        });
        let host = Arc::downgrade(&hub);
        hub.presence().start(host);
        hub
    }

    /// Serve media: `media_url` requests are signed with these links from now on.
    pub fn set_media_links(&self, links: crate::media::MediaLinks) {
        let _ = self.media_links.set(links);
    }

    /// The media link signer, when this node serves media.
    pub fn media_links(&self) -> Option<&crate::media::MediaLinks> {
        self.media_links.get()
    }

    /// Join a cluster: from now on `append`, `deliver` and `push` reach other nodes too.
    pub fn set_peers(&self, peers: Arc<dyn Peers>) {
        let _ = self.peers.set(peers);
    }

    /// Why this node serves no rooms now (in a cluster: joining, no quorum, leaving), or `None`
    /// if it does. A node that does not serve must not write, whatever the write.
    pub fn not_serving(&self) -> Option<String> {
        self.peers.get().and_then(|peers| peers.not_serving())
    }

    /// Hand a command to the room's actor and return where its outcome will arrive. For a local
    /// room the command is in the room's mailbox when this returns; for a room another node owns
    /// it is queued, in order, to that node's router, which applies forwarded commands in
    /// arrival order. Either way commands given in order are applied in order, while the caller
    /// waits for replies as it likes (pipelining).
    pub async fn append(
        self: &Arc<Self>,
        room: &str,
        command: AppendCommand,
    ) -> Result<oneshot::Receiver<Result<Appended, StoreError>>, StoreError> {
        // Cluster: location transparency. A room another node owns is reached through that
        // node's router, and the reply comes back on the same kind of receiver.
        if let Some(peers) = self.peers.get() {
            match peers.route(room) {
                Route::Local => {}
                Route::Remote(owner) => return peers.forward_append(&owner, room, command),
                Route::Unavailable(reason) => return Err(StoreError::Unavailable(reason)),
            }
        }
        self.append_here(room, command).await
    }

    /// [`Hub::append`] to this node's own room actor (the cluster's router calls this for
    /// appends forwarded to this node, after checking that it owns the room).
    pub async fn append_here(
        self: &Arc<Self>,
        room: &str,
        command: AppendCommand,
    ) -> Result<oneshot::Receiver<Result<Appended, StoreError>>, StoreError> {
        // Boxed: a command with its references is several hundred bytes, moved through the
        // room's mailbox and its committer's queue.
        let mut command = Some(Box::new(command));
        // A room actor may stop (idle, fenced) between lookup and send; one fresh lookup fixes it.
        for _ in 0..2 {
            let actor = self.room_actor(room).await?;
            let (reply, outcome) = oneshot::channel();
            let message = RoomMessage::Append(command.take().expect("command present"), reply.into(), Handed::now());
            match actor.send_message(message) {
                Ok(()) => return Ok(outcome),
                Err(err) => {
                    self.forget_room(room, actor.get_id());
                    command = match err {
                        ractor::MessagingErr::SendErr(RoomMessage::Append(command, _, _)) => Some(command),
                        _ => return Err(StoreError::Unavailable(format!("room `{room}` is restarting"))),
                    };
                }
            }
        }
        Err(StoreError::Unavailable(format!("room `{room}` is restarting")))
    }

    /// The running actor of `room`, spawned if needed. Fails with `NoSuchRoom` for unknown ids.
    async fn room_actor(self: &Arc<Self>, room: &str) -> Result<ActorRef<RoomMessage>, StoreError> {
        let slot = {
            let mut rooms = self.rooms.lock();
            rooms.entry(room.to_string()).or_default().clone()
        };
        let spawned = slot
            .get_or_try_init(|| async {
                if self.store.room(room).await?.is_none() {
                    return Err(StoreError::NoSuchRoom(room.to_string()));
                }
                let args = RoomArgs { host: self.clone(), room: room.to_string() };
                let failed =
                    |err: &dyn std::fmt::Display| StoreError::Unavailable(format!("starting room `{room}`: {err}"));
                // Spawned from the rooms' thread, so the actor and its committer run there (a
                // spawn after `stop_rooms` is cancelled: the node is stopping).
                let (actor, _) = self
                    .rooms_runtime
                    .spawn(Actor::spawn(None, RoomActor, args))
                    .await
                    .map_err(|err| failed(&err))?
                    .map_err(|err| failed(&err))?;
                Ok(actor)
            })
            .await;
        match spawned {
            Ok(actor) => Ok(actor.clone()),
            Err(err) => {
                // Drop the empty slot so the map does not collect ids of rooms that don't exist.
                let mut rooms = self.rooms.lock();
                if rooms.get(room).is_some_and(|current| Arc::ptr_eq(current, &slot)) {
                    rooms.remove(room);
                }
                Err(err)
            }
        }
    }

    /// Remove `room`'s registry entry if it still points at the actor `id` (called by a room
    /// actor as it stops, and by senders that found it stopped).
    pub(crate) fn forget_room(&self, room: &str, id: ractor::ActorId) {
        let mut rooms = self.rooms.lock();
        let same = rooms.get(room).and_then(|slot| slot.get()).is_some_and(|actor| actor.get_id() == id);
        if same {
            rooms.remove(room);
        }
        drop(rooms);
        // The next owner hands out its own member list; the old one need not stay alive here.
        self.connections.lock().room_fanouts.remove(room);
    }

    /// The running actor of `room`, if there is one (tests reach into a room through it).
    #[cfg(test)]
    pub(crate) fn running_room(&self, room: &str) -> Option<ActorRef<RoomMessage>> {
        self.rooms.lock().get(room).and_then(|slot| slot.get().cloned())
    }

    /// Room ids with a running actor on this node (operator view).
    pub fn active_rooms(&self) -> Vec<String> {
        let rooms = self.rooms.lock();
        let mut ids: Vec<String> =
            rooms.iter().filter(|(_, slot)| slot.get().is_some()).map(|(id, _)| id.clone()).collect();
        ids.sort();
        ids
    }

    /// Hand committed entries (a room's, in commit order) to every live connection of their
    /// recipients, on every node (in a cluster, each other live node gets them once and fans
    /// out locally). Never blocks. A run of a large room's entries under one member list
    /// reaches each connection as one push (see [`deliver_local`](Self::deliver_local)).
    pub fn deliver(&self, deliveries: &[&Delivery]) {
        self.fan_out(deliveries, true);
        if let Some(peers) = self.peers.get() {
            let named: Vec<&Delivery> =
                deliveries.iter().copied().filter(|delivery| delivery.recipients != Recipients::Unnamed).collect();
            peers.send_deliveries(&named);
        }
    }

    /// Hand committed entries, in order, to this node's live connections of their recipients.
    /// Never blocks: a full queue marks the connection lagged, and it reads what it missed from
    /// the store. Consecutive entries of one large room with the same member list go to each
    /// connection in one push, as one queue item (a `SharedRun`): one queue lock and at most
    /// one wake-up of its session for the run, so the session finds the whole run waiting and
    /// writes it to the socket at once.
    /// Pushed one by one, a session on the other core woke for the first entry and wrote the
    /// rest in more, smaller writes: the kernel's per-write cost is most of what a delivery
    /// costs.
    pub fn deliver_local(&self, deliveries: &[&Delivery]) {
        self.fan_out(deliveries, false);
    }

    /// [`deliver_local`](Self::deliver_local), and with `keep` also keep a large room's
    /// entries among the node's recent ones (the owner does; deliveries from another node are
    /// kept as they arrive, see [`keep_recent`](Self::keep_recent)).
    fn fan_out(&self, deliveries: &[&Delivery], keep: bool) {
        let mut delivered = 0;
        for run in delivery_runs(deliveries) {
            let first = run[0];
            delivered += match &first.recipients {
                Recipients::Logs(logs) => self.deliver_to_logs(&first.entry, logs),
                Recipients::Members(members) => {
                    let new_shared = || run.iter().map(|delivery| Arc::new(SharedEntry::new(delivery.entry.clone())));
                    let shared: Vec<Arc<SharedEntry>> = if keep {
                        let shared: Vec<_> = new_shared().collect();
                        self.keep_recent(&first.entry.room, &shared);
                        shared
                    } else {
                        self.recent_run(run).unwrap_or_else(|| new_shared().collect())
                    };
                    self.deliver_to_members(&first.entry.room, Arc::new(SharedRun::new(shared)), members)
                }
                Recipients::Unnamed => {
                    // A bug (the room's owner names a large room's recipients before
                    // delivering), but not a lost message: every connection here reads its
                    // logs from the store.
                    error!(room = %first.entry.room, seq = first.entry.seq, "delivery without recipients");
                    self.catch_up_all();
                    0
                }
            };
        }
        Metrics::add(&self.metrics.deliveries_total, delivered);
    }

    /// An entry at a cursor of each recipient's user log (each recipient's cursor differs).
    fn deliver_to_logs(&self, entry: &Entry, logs: &[(String, Cursor)]) -> u64 {
        let mut shared: Option<Arc<Entry>> = None;
        let connections = self.connections.lock();
        let mut delivered = 0;
        for (user, cursor) in logs {
            for conn in connections.by_user.get(user).into_iter().flatten() {
                let entry = shared.get_or_insert_with(|| Arc::new(entry.clone())).clone();
                delivered += self.offer(conn, std::iter::once(Outbound::Deliver { cursor: *cursor, entry }));
            }
        }
        delivered
    }

    /// Entries of one large room under one member list: the same run (and bytes) for every
    /// member's connections, found through the room's fan-out cache, one push each.
    fn deliver_to_members(&self, room: &str, run: Arc<SharedRun>, members: &Arc<Vec<String>>) -> u64 {
        let mut guard = self.connections.lock();
        let fanout = guard.fanout(room, members);
        let mut delivered = 0;
        for conn in &fanout.conns {
            delivered += self.offer(conn, std::iter::once(Outbound::RoomRun(run.clone())));
        }
        delivered
    }

    /// Keep entries of large rooms that arrived from another node among the node's recent
    /// ones, as they arrive and before any is shed (a shed entry is what the connections that
    /// missed it will ask for). `entries` are one room's, in seq order.
    pub fn keep_recent(&self, room: &str, entries: &[Arc<SharedEntry>]) {
        let mut tails = self.tails.lock();
        tails.append(room, entries);
        Metrics::set(&self.metrics.recent_entries_bytes, tails.bytes() as i64);
    }

    /// The node's recent entries of `run` (one large room's deliveries, in seq order), if it
    /// holds every one: entries from another node were kept as they arrived, so their fan-out
    /// shares those (and their encodings) rather than copying and encoding each entry again.
    fn recent_run(&self, run: &[&Delivery]) -> Option<Vec<Arc<SharedEntry>>> {
        let first = run.first()?;
        let kept = self.recent_room_entries(&first.entry.room, first.entry.seq.checked_sub(1)?, run.len())?;
        let all = kept.len() == run.len()
            && kept.iter().zip(run).all(|(kept, delivery)| kept.entry().seq == delivery.entry.seq);
        all.then_some(kept)
    }

    /// Up to `limit` of the node's recent entries of `room` after seq `after`, shared with
    /// live delivery; `None` if they do not hold the entry right after `after` (read the
    /// store). See `hub/tails.rs` for what a caller must still check.
    pub fn recent_room_entries(&self, room: &str, after: u64, limit: usize) -> Option<Vec<Arc<SharedEntry>>> {
        self.tails.lock().after(room, after, limit)
    }

    /// Queue `outbounds` for `conn` in one push; how many entries were queued. If not all
    /// were (the queue filled up, or the connection has ended), the connection is marked
    /// lagged and reads the rest from the store.
    fn offer(&self, conn: &ConnHandle, outbounds: impl Iterator<Item = Outbound>) -> u64 {
        let (queued, refused) = conn.queue.try_send_all(outbounds);
        if refused.is_some() {
            self.mark_lagged(&conn.signals);
        }
        queued
    }

    /// Mark every live connection of the delivery's recipients on this node lagged: each reads
    /// what it missed from the store (used when a delivery could not be queued).
    pub fn lag_recipients(&self, delivery: &Delivery) {
        let mut connections = self.connections.lock();
        if let Recipients::Members(members) = &delivery.recipients {
            // A large room's members: through the fan-out cache, not a lookup per member (a
            // node that sheds does so under load, for many deliveries in a row).
            for conn in &connections.fanout(&delivery.entry.room, members).conns {
                self.mark_lagged(&conn.signals);
            }
            return;
        }
        for user in delivery.recipients.users() {
            for conn in connections.by_user.get(user).into_iter().flatten() {
                self.mark_lagged(&conn.signals);
            }
        }
    }

    /// A connection missed a delivery: it will read the store. Woken only when the flag was
    /// clear: a set flag has woken it already, and it reads everything missed since it last
    /// cleared the flag.
    fn mark_lagged(&self, signals: &ConnSignals) {
        if !signals.lagged.swap(true, Ordering::AcqRel) {
            signals.notify.notify_one();
        }
        Metrics::inc(&self.metrics.deliveries_lagged_total);
    }

    /// Stop the room actors of rooms for which `moved` is true (the cluster calls this when
    /// ownership changes); returns how many. Commands already queued fail as `unavailable`.
    pub fn stop_rooms_where(&self, moved: impl Fn(&str) -> bool) -> usize {
        let rooms = self.rooms.lock();
        let mut stopped = 0;
        for (room, slot) in rooms.iter() {
            if let Some(actor) = slot.get().filter(|_| moved(room)) {
                actor.stop(Some("room moved to another node".into()));
                stopped += 1;
            }
        }
        stopped
    }

    /// Make every connection re-read its log from the store (the cluster calls this when the
    /// live set changes, since a delivery in flight from a lost node may be gone).
    pub fn catch_up_all(&self) {
        let connections = self.connections.lock();
        for conn in connections.by_user.values().flatten() {
            conn.signals.lagged.store(true, Ordering::Release);
            conn.signals.notify.notify_one();
        }
    }

    /// Register a connection of `user` for live delivery.
    pub fn register(&self, user: &str) -> Registration {
        let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let (queue, inbox) = outbound_queue(self.limits.outbound_queue_len);
        let signals = Arc::new(ConnSignals::default());
        let handle = ConnHandle { id, queue, signals: signals.clone() };
        {
            let mut connections = self.connections.lock();
            connections.by_user.entry(user.to_string()).or_default().push(handle);
            connections.room_fanouts.clear();
        }
        let announced_in = self.presence.connected(user);
        if let (Some(seq), Some(_)) = (announced_in, self.peers.get()) {
            let waiting = Unannounced { seq, since: Instant::now(), signals: Arc::downgrade(&signals) };
            self.unannounced.lock().push(waiting);
        }
        Registration { id, inbox, signals }
    }

    /// Every live peer has applied this node's presence batches through `through`: each
    /// connection announced up to it (or waiting longer than [`UNANNOUNCED_LIMIT`]) reads the
    /// store once. That brings what a peer committed before it knew of the connection; from
    /// then on the peers send its deliveries here. Closed connections are dropped.
    pub fn announced(&self, through: u64) {
        let mut waiting = self.unannounced.lock();
        if waiting.is_empty() {
            return;
        }
        let now = Instant::now();
        waiting.retain(|conn| {
            let Some(signals) = conn.signals.upgrade() else { return false };
            if conn.seq > through && now.duration_since(conn.since) < UNANNOUNCED_LIMIT {
                return true;
            }
            signals.lagged.store(true, Ordering::Release);
            signals.notify.notify_one();
            false
        });
    }

    pub fn unregister(&self, user: &str, id: u64) {
        {
            let mut connections = self.connections.lock();
            if let Some(list) = connections.by_user.get_mut(user) {
                list.retain(|conn| conn.id != id);
                if list.is_empty() {
                    connections.by_user.remove(user);
                }
            }
            connections.room_fanouts.clear();
        }
        self.presence.disconnected(user, id);
    }

    /// Make connection `id` of `user` watch `users`' presence (visibility already checked).
    pub fn watch_presence(&self, user: &str, id: u64, users: Vec<String>) {
        let queue = {
            let connections = self.connections.lock();
            connections
                .by_user
                .get(user)
                .into_iter()
                .flatten()
                .find(|conn| conn.id == id)
                .map(|conn| conn.queue.clone())
        };
        if let Some(queue) = queue {
            self.presence.watch(id, queue, users);
        }
    }

    /// Hand an ephemeral frame (typing, receipt) to every connection of `users`, on every node
    /// where the presence table says they are connected. Best effort: never stored, and a full
    /// queue drops it.
    pub fn push(&self, users: &[String], frame: ServerFrame) {
        if users.is_empty() {
            return;
        }
        self.push_local(users, &frame);
        let Some(peers) = self.peers.get() else { return };
        let nodes = self.presence.remote_nodes_with(users);
        if !nodes.is_empty() {
            Metrics::add(&self.metrics.ephemeral_pushes_sent_total, peers.push(&nodes, users, &frame));
        }
    }

    /// [`Hub::push`] to this node's connections only.
    pub fn push_local(&self, users: &[String], frame: &ServerFrame) {
        let connections = self.connections.lock();
        for user in users {
            for conn in connections.by_user.get(user).into_iter().flatten() {
                let _ = conn.queue.try_send(Outbound::Frame(Box::new(frame.clone())));
            }
        }
    }

    /// Tell the user's other connections that a read position moved. Best effort: a full
    /// queue drops the notice (the position itself is stored).
    pub fn broadcast_read(&self, user: &str, room: &str, seq: u64, except: u64) {
        let connections = self.connections.lock();
        for conn in connections.by_user.get(user).into_iter().flatten().filter(|conn| conn.id != except) {
            let _ = conn.queue.try_send(Outbound::Frame(Box::new(ServerFrame::Read { room: room.to_string(), seq })));
        }
    }

    /// Close every connection of `user` (log out everywhere).
    pub fn revoke_user(&self, user: &str) {
        let connections = self.connections.lock();
        for conn in connections.by_user.get(user).into_iter().flatten() {
            conn.signals.revoked.store(true, Ordering::Release);
            conn.signals.notify.notify_one();
        }
    }

    /// (users, connections) currently registered.
    pub fn connection_counts(&self) -> (usize, usize) {
        let connections = self.connections.lock();
        (connections.by_user.len(), connections.by_user.values().map(Vec::len).sum())
    }

    /// Ask every connection to send `reconnect` and close (SIGTERM).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Stop the room actors (their thread) and wait until they have let go of the store; a
    /// command for a room after this is refused as unavailable. The node's last step before it
    /// stops the store's backends.
    pub async fn stop_rooms(&self) {
        self.rooms_runtime.stop(Duration::from_secs(5)).await;
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// What a room actor needs of its node: the hub's own fields and calls (`room.rs` says why
/// it goes through a trait).
impl RoomHost for Hub {
    fn node(&self) -> &str {
        &self.node
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn deliver(&self, deliveries: &[&Delivery]) {
        Hub::deliver(self, deliveries);
    }

    fn push(&self, users: &[String], frame: ServerFrame) {
        Hub::push(self, users, frame);
    }

    fn forget_room(&self, room: &str, actor: ractor::ActorId) {
        Hub::forget_room(self, room, actor);
    }
}

/// What presence needs of its node: the hub's own fields and calls (`presence/mod.rs` says
/// why it goes through a trait).
impl PresenceHost for Hub {
    fn presence(&self) -> &Presence {
        &self.presence
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn peers(&self) -> Option<&dyn PresencePeers> {
        let peers: &dyn PresencePeers = &**self.peers.get()?;
        Some(peers)
    }

    fn push(&self, users: &[String], frame: ServerFrame) {
        Hub::push(self, users, frame);
    }

    fn announced(&self, seq: u64) {
        Hub::announced(self, seq);
    }
}

/// `deliveries` (in order) as runs: consecutive entries of one large room under one member
/// list (the same `Arc`: no membership change between them) form one run; any other delivery
/// is a run of its own. Never yields an empty run.
pub fn delivery_runs<'a, 'b>(deliveries: &'b [&'a Delivery]) -> impl Iterator<Item = &'b [&'a Delivery]> {
    let mut rest = deliveries;
    std::iter::from_fn(move || {
        let first = rest.first()?;
        let len = match &first.recipients {
            Recipients::Members(members) => rest
                .iter()
                .take_while(|delivery| {
                    delivery.entry.room == first.entry.room
                        && matches!(&delivery.recipients, Recipients::Members(list) if Arc::ptr_eq(list, members))
                })
                .count(),
            Recipients::Logs(_) | Recipients::Unnamed => 1,
        };
        let (run, later) = rest.split_at(len);
        rest = later;
        Some(run)
    })
}

#[cfg(test)]
mod tests;

/// The outcome of an append [`Hub::append`] queued, waited for up to `timeout`. A room that
/// does not answer in time, or whose actor went away without answering, is `Unavailable`: the
/// client retries with the same id.
pub async fn append_outcome(
    room: &str,
    outcome: oneshot::Receiver<Result<Appended, StoreError>>,
    timeout: Duration,
) -> Result<Appended, StoreError> {
    match tokio::time::timeout(timeout, outcome).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) | Err(_) => Err(StoreError::Unavailable(format!("room `{room}` did not answer; retry"))),
    }
}
