//! Presence, typing indicators and receipts: what is live about users (only a user's status
//! text is also stored).
//!
//! - **Presence** lives in [`table::Table`], one per node, holding every node's records. A
//!   ticker (every `presence.flush_ms`) publishes this node's changes: to the local connections
//!   watching those users and, as one batch, to every other live node. So the traffic between
//!   nodes is at most one message per node pair per flush interval however many users change,
//!   and a flapping connection costs nothing (the grace period absorbs it). Batches carry
//!   sequence numbers; a node that missed one asks for a snapshot (see the table's docs), and a
//!   heartbeat's `presence_seq` reveals a missed last batch.
//! - **The state a user sets** (away, status) follows them to any node (see the table's docs).
//!   The status text is also written to the store as the user's presence note, and read back
//!   when the user comes back after being offline everywhere, so it survives every node
//!   restarting; whether they were away does not (coming back starts `online`).
//! - **Watching** is explicit: a connection names the users it wants (`watch_presence`), limited
//!   to users it shares a room with, and at most `presence.max_watched`. Nothing is pushed to
//!   anyone who did not ask, which is what keeps presence affordable in large deployments
//!   (peers that push every member's changes to every member switch presence off there). Each
//!   watching connection is pushed a user's presence only when it differs from what that
//!   connection was last told (its `presence_list` or an earlier push).
//! - **Where a room's entries go** between nodes is read from the table too: an owner sends a
//!   committed entry only to the nodes where a recipient is connected, or whose batches it has
//!   not applied as far as they announced ([`Presence::peers_for`]). Heartbeats say how far each
//!   node applied the others' batches, so a node knows when every peer has heard of a new
//!   connection ([`Presence::acked_through`]); until then the connection may miss entries, which
//!   it then reads from the store once (ARCHITECTURE.md, "Two-tier fan-out, targeted").
//! - **Typing** and **receipts** are pushed to the room's members on whatever node they are:
//!   to the nodes where the presence table says they have connections. Only in rooms of at most
//!   `presence.room_max_members` members: each such event costs one push per member, and every
//!   member can cause them, so the cost grows with the square of the room's size. Larger rooms
//!   get counts (`online` in `members`) and stored read positions (`receipts`) on request.
//!
//! The hub owns one [`Presence`]; sessions and request handlers call it through the hub, the
//! cluster's router hands it batches, wants and pushes from other nodes. Presence sees its node
//! through [`PresenceHost`] (the store, the metrics, ephemeral pushes to users, the other
//! nodes), which the hub implements, and the other nodes through [`PresencePeers`]: presence's
//! part of `Peers` (`peers.rs`), declared here beside the batch it carries and implemented by
//! the cluster. So presence imports neither the hub nor `peers`, which both import it; it
//! pushes presence frames into the watching connections' queues (`outbound`) itself.

mod table;
#[cfg(test)]
mod tests;
mod typing;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use protocol::{ReceiptKind, ServerFrame, UserPresence};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::names::now_ms;
use crate::outbound::{Outbound, OutboundQueue};
use crate::store::{PresenceNote, Recipients, Store};
use crate::supervise::spawn_restarting;
use table::{Applied, Table};
pub use table::{Change, Record};
use typing::TypingTable;
pub(crate) use typing::TypingUpdate;

/// A node's presence changes since its previous batch (`base` → `seq`), or with `snapshot`
/// all of its records at `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceBatch {
    pub from: String,
    pub incarnation: u64,
    pub base: u64,
    pub seq: u64,
    #[serde(default)]
    pub snapshot: bool,
    pub changes: Vec<Change>,
}

/// What presence needs of the node it runs on; the hub implements it.
pub trait PresenceHost: Send + Sync {
    /// The node's presence: the one this host owns.
    fn presence(&self) -> &Presence;
    /// Where the users' presence notes are kept.
    fn store(&self) -> &Arc<dyn Store>;
    fn metrics(&self) -> &Metrics;
    /// The other nodes, when the node runs in a cluster.
    fn peers(&self) -> Option<&dyn PresencePeers>;
    /// Hand an ephemeral frame (typing, receipt) to every connection of `users`, on every
    /// node (`Hub::push`).
    fn push(&self, users: &[String], frame: ServerFrame);
    /// Every live peer has applied this node's presence batches through `seq`: connections
    /// announced up to it can be caught up from the store (`Hub::announced`).
    fn announced(&self, seq: u64);
}

/// What presence asks of the other nodes: its part of `Peers` (`peers.rs`), which extends it;
/// the cluster implements both.
pub trait PresencePeers: Send + Sync {
    /// Whether `node` is in this node's live set.
    fn is_live(&self, node: &str) -> bool;

    /// This process's incarnation: random per start, so that peers tell a restarted node from
    /// one that missed a beat.
    fn incarnation(&self) -> u64;

    /// Send a presence batch to `node`, or to every other live node if `None`; how many nodes
    /// took it.
    fn send_presence(&self, to: Option<&str>, batch: PresenceBatch) -> u64;

    /// Ask `node` for a snapshot of its presence records.
    fn want_presence(&self, node: &str);

    /// The other live nodes.
    fn live_peers(&self) -> Vec<String>;
}

/// The `[presence]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceSettings {
    /// After a user's last connection on a node closes, how long before they are shown
    /// offline: a reconnect within it is seen by no one.
    pub grace_ms: u64,
    /// Changes are coalesced and published (locally and to other nodes) this often.
    pub flush_ms: u64,
    /// An active typing indicator lapses after this unless repeated.
    pub typing_ttl_ms: u64,
    /// Users one connection may watch.
    pub max_watched: usize,
    /// Rooms with more members get no typing and no receipt pushes.
    pub room_max_members: u32,
    pub status_max_bytes: usize,
    /// Offline users are forgotten after this (their last-seen time is then unknown).
    pub last_seen_retention_ms: u64,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        PresenceSettings {
            // Long enough to cover a network switch or a page reload, short enough that
            // "offline" is still news.
            grace_ms: 5_000,
            // Five publications a second: invisible to people, and at most five messages per
            // node pair per second however many users change.
            flush_ms: 200,
            typing_ttl_ms: 6_000,
            max_watched: 500,
            room_max_members: 100,
            status_max_bytes: 140,
            last_seen_retention_ms: 24 * 3_600_000,
        }
    }
}

impl PresenceSettings {
    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), crate::limits::InvalidSetting> {
        let positive: [(&'static str, u64); 6] = [
            ("presence.flush_ms", self.flush_ms),
            ("presence.typing_ttl_ms", self.typing_ttl_ms),
            ("presence.max_watched", self.max_watched as u64),
            ("presence.room_max_members", self.room_max_members.into()),
            ("presence.status_max_bytes", self.status_max_bytes as u64),
            ("presence.last_seen_retention_ms", self.last_seen_retention_ms),
        ];
        crate::limits::InvalidSetting::first_zero(&positive)
    }
}

/// A connection watching a user.
struct Watcher {
    conn: u64,
    queue: OutboundQueue,
    /// What this connection was last told of the user (nothing yet: `None`).
    told: Option<UserPresence>,
}

/// Connections watching users: where their presence frames go.
#[derive(Default)]
struct Watchers {
    by_user: HashMap<String, Vec<Watcher>>,
    by_conn: HashMap<u64, Vec<String>>,
}

/// The table and the sequence number of this node's batches, under one lock so that batches
/// and snapshots leave in sequence order.
struct Inner {
    table: Table,
    seq: u64,
    /// What the peers' heartbeats say about presence replication (targeted delivery).
    peers: PeerSync,
}

/// What each peer's latest heartbeat said about presence: how far it applied this node's
/// batches, and how far its own go. Targeted delivery rests on both (see [`Presence::peers_for`]
/// and [`Presence::acked_through`]).
#[derive(Default)]
struct PeerSync {
    /// The highest of this node's batches (this incarnation) the peer has applied.
    acked: HashMap<String, u64>,
    /// The peer's incarnation and the last batch it sent.
    announced: HashMap<String, (u64, u64)>,
}

/// The nodes a large room's deliveries go to, for one member list and one table version.
struct Targets {
    /// The member list (by address: the owner shares one list until membership changes).
    members: usize,
    version: u64,
    nodes: Vec<String>,
}

/// Rooms whose targets are remembered, at most: beyond it the memory is cleared (it is only a
/// cache of what the table answers).
const TARGETS_KEPT: usize = 4_096;

pub struct Presence {
    pub settings: PresenceSettings,
    me: String,
    inner: Mutex<Inner>,
    /// The last sequence number sent, for heartbeats (updated after the batch is sent).
    sent_seq: AtomicU64,
    watchers: Mutex<Watchers>,
    typing: Mutex<TypingTable>,
    /// Room member counts, briefly cached: delivered receipts ask for every write batch.
    room_sizes: Mutex<HashMap<String, (u32, Instant)>>,
    /// When this node last asked each node for a snapshot (at most one a second each).
    wants: Mutex<HashMap<String, Instant>>,
    /// Per large room, the nodes its members are connected on (see [`Presence::peers_for`]).
    targets: Mutex<HashMap<String, Targets>>,
    /// The node, for the store (presence notes); set by [`Presence::start`].
    host: OnceLock<Weak<dyn PresenceHost>>,
}

impl Presence {
    pub fn new(me: &str, settings: PresenceSettings) -> Presence {
        let table = Table::new(
            me,
            Duration::from_millis(settings.grace_ms),
            Duration::from_millis(settings.last_seen_retention_ms),
        );
        let typing = TypingTable::new(Duration::from_millis(settings.typing_ttl_ms));
        Presence {
            settings,
            me: me.to_string(),
            inner: Mutex::new(Inner { table, seq: 0, peers: PeerSync::default() }),
            sent_seq: AtomicU64::new(0),
            watchers: Mutex::new(Watchers::default()),
            typing: Mutex::new(typing),
            room_sizes: Mutex::new(HashMap::new()),
            wants: Mutex::new(HashMap::new()),
            targets: Mutex::new(HashMap::new()),
            host: OnceLock::new(),
        }
    }

    /// Run the flush ticker while `host`, the node that owns this presence, lives.
    pub(crate) fn start(&self, host: Weak<dyn PresenceHost>) {
        let _ = self.host.set(host.clone());
        spawn_restarting("presence: flush ticker", move || Self::tick(host.clone()));
    }

    /// The flush ticker: publish this node's changes, expire typing, refresh the gauges.
    async fn tick(host: Weak<dyn PresenceHost>) {
        let period = host.upgrade().map_or(200, |host| host.presence().settings.flush_ms);
        let mut ticker = tokio::time::interval(Duration::from_millis(period));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            ticker.tick().await;
            let Some(host) = Weak::upgrade(&host) else { return };
            let presence = host.presence();
            presence.flush(host.as_ref());
            if let Some(peers) = host.peers() {
                host.announced(presence.acked_through(&peers.live_peers()));
            }
            presence.expire_typing(host.as_ref());
            ticks += 1;
            if ticks.is_multiple_of((1_000 / period).max(1)) {
                let (users, online) = presence.inner.lock().table.counts();
                Metrics::set(&host.metrics().presence_users, users as i64);
                Metrics::set(&host.metrics().presence_online_users, online as i64);
            }
        }
    }

    /// A connection of `user` opened here. `Some(seq)` if the user had no live record on this
    /// node before: the other nodes learn of the connection from this node's batch `seq` (the
    /// next one), and until one has applied it, it may leave this node out of the user's
    /// deliveries (see [`Presence::acked_through`]).
    pub(crate) fn connected(&self, user: &str) -> Option<u64> {
        let (back, announced_in) = {
            let mut inner = self.inner.lock();
            let new_here = !inner.table.online_here(user);
            let back = inner.table.connected(user);
            (back, new_here.then_some(inner.seq + 1))
        };
        if back {
            self.load_note(user);
        }
        announced_in
    }

    /// The user came back after being offline everywhere this node knows of: read their stored
    /// note, in case it is newer than what the cluster remembers (every node restarted, or the
    /// records were dropped after `presence.last_seen_retention_ms`).
    fn load_note(&self, user: &str) {
        let Some(host) = self.host.get().cloned() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let user = user.to_string();
        runtime.spawn(async move {
            let Some(store) = host.upgrade().map(|host| host.store().clone()) else { return };
            match store.presence_note(&user).await {
                Ok(Some(note)) => {
                    if let Some(host) = host.upgrade() {
                        let mut inner = host.presence().inner.lock();
                        inner.table.noted(&user, note.status, note.set_ms);
                    }
                }
                Ok(None) => {}
                Err(err) => warn!(user, %err, "could not read the presence note"),
            }
        });
    }

    pub(crate) fn disconnected(&self, user: &str, conn: u64) {
        self.inner.lock().table.disconnected(user, Instant::now(), now_ms());
        self.unwatch(conn);
    }

    /// `set_presence`; false if the user has no connection here (cannot happen for a session).
    /// The status is stored as the user's note in the background: `ok` does not wait for it,
    /// and the cluster's memory holds it meanwhile.
    pub fn set_state(&self, user: &str, away: bool, status: Option<String>) -> bool {
        let set_ms = self.inner.lock().table.set_state(user, away, status.clone(), now_ms());
        let Some(set_ms) = set_ms else { return false };
        if let (Some(host), Ok(runtime)) = (self.host.get().cloned(), tokio::runtime::Handle::try_current()) {
            let user = user.to_string();
            runtime.spawn(async move {
                let Some(store) = host.upgrade().map(|host| host.store().clone()) else { return };
                match store.set_presence_note(&user, PresenceNote { status, set_ms }).await {
                    Ok(()) => debug!(user, "presence note stored"),
                    Err(err) => warn!(user, %err, "could not store the presence note"),
                }
            });
        }
        true
    }

    /// What others see of `user` now.
    pub fn get(&self, user: &str) -> UserPresence {
        self.inner.lock().table.presence(user)
    }

    /// How many of `users` are online or away.
    pub fn count_online<'a>(&self, users: impl IntoIterator<Item = &'a String>) -> usize {
        let inner = self.inner.lock();
        users.into_iter().filter(|user| inner.table.is_online(user)).count()
    }

    /// Make connection `conn` watch exactly `users` (already checked for visibility).
    pub(crate) fn watch(&self, conn: u64, queue: OutboundQueue, users: Vec<String>) {
        self.unwatch(conn);
        let mut watchers = self.watchers.lock();
        for user in &users {
            let watcher = Watcher { conn, queue: queue.clone(), told: None };
            watchers.by_user.entry(user.clone()).or_default().push(watcher);
        }
        watchers.by_conn.insert(conn, users);
    }

    /// What connection `conn` is told of `users` in its `presence_list`, remembered so that it
    /// is not pushed the same again.
    pub(crate) fn watch_list(&self, conn: u64, users: &[String]) -> Vec<UserPresence> {
        // Watchers before the table: `notify` takes the watchers' lock alone, so no push can
        // fall between reading a presence and remembering it as told.
        let mut watchers = self.watchers.lock();
        let inner = self.inner.lock();
        users
            .iter()
            .map(|user| {
                let presence = inner.table.presence(user);
                let mine = watchers.by_user.get_mut(user).into_iter().flatten().filter(|w| w.conn == conn);
                for watcher in mine {
                    watcher.told = Some(presence.clone());
                }
                presence
            })
            .collect()
    }

    pub(crate) fn unwatch(&self, conn: u64) {
        let mut watchers = self.watchers.lock();
        for user in watchers.by_conn.remove(&conn).unwrap_or_default() {
            if let Some(list) = watchers.by_user.get_mut(&user) {
                list.retain(|watcher| watcher.conn != conn);
                if list.is_empty() {
                    watchers.by_user.remove(&user);
                }
            }
        }
    }

    /// The users connection `conn` watches.
    pub(crate) fn watched_by(&self, conn: u64) -> Vec<String> {
        self.watchers.lock().by_conn.get(&conn).cloned().unwrap_or_default()
    }

    /// Push changed presence to the connections watching those users, each only what differs
    /// from what it was last told. Best effort: a full queue misses the change (watching again
    /// reads the current state).
    fn notify(&self, changed: Vec<UserPresence>) {
        if changed.is_empty() {
            return;
        }
        let mut watchers = self.watchers.lock();
        for presence in changed {
            for watcher in watchers.by_user.get_mut(&presence.user).into_iter().flatten() {
                if watcher.told.as_ref() == Some(&presence) {
                    continue;
                }
                let frame = ServerFrame::Presence { presence: presence.clone() };
                if watcher.queue.try_send(Outbound::Frame(Box::new(frame))).is_ok() {
                    watcher.told = Some(presence.clone());
                }
            }
        }
    }

    /// Publish this node's changes: to local watchers, and as one batch to every other node.
    fn flush(&self, host: &dyn PresenceHost) {
        let changed = {
            let mut inner = self.inner.lock();
            let (changes, changed) = inner.table.flush(Instant::now(), now_ms());
            if !changes.is_empty() {
                if let Some(peers) = host.peers() {
                    let base = inner.seq;
                    inner.seq += 1;
                    let batch = PresenceBatch {
                        from: self.me.clone(),
                        incarnation: peers.incarnation(),
                        base,
                        seq: inner.seq,
                        snapshot: false,
                        changes,
                    };
                    let records = batch.changes.len() as u64;
                    let sent = peers.send_presence(None, batch);
                    Metrics::add(&host.metrics().presence_batches_sent_total, sent);
                    Metrics::add(&host.metrics().presence_records_sent_total, sent * records);
                    self.sent_seq.store(inner.seq, Ordering::Release);
                }
            }
            changed
        };
        self.notify(changed);
    }

    /// The sequence number this node's heartbeats announce.
    pub fn sent_seq(&self) -> u64 {
        self.sent_seq.load(Ordering::Acquire)
    }

    /// A batch or snapshot from another node.
    pub fn on_batch(&self, host: &dyn PresenceHost, batch: PresenceBatch) {
        let Some(peers) = host.peers() else { return };
        // Records of a node this one counts as dead would bring back its users; it sends a
        // snapshot once it is live again.
        if !peers.is_live(&batch.from) {
            return;
        }
        let from = batch.from.clone();
        let applied = {
            let mut inner = self.inner.lock();
            if batch.snapshot {
                let records = batch.changes.into_iter().filter_map(|(user, record)| Some((user, record?))).collect();
                Applied::Changed(inner.table.replace(&from, batch.incarnation, batch.seq, records))
            } else {
                inner.table.apply(&from, batch.incarnation, batch.base, batch.seq, batch.changes)
            }
        };
        match applied {
            Applied::Changed(changed) => self.notify(changed),
            Applied::NeedSnapshot => self.want(peers, &from),
        }
    }

    /// A heartbeat from `from` says it has sent batches up to `seq`, and applied this node's
    /// up to `acked` (0: none of this incarnation's): ask for a snapshot if this node is not
    /// where `from` is (it never was, missed the last batch, or `from` restarted).
    pub fn on_heartbeat(&self, peers: &dyn PresencePeers, from: &str, incarnation: u64, seq: u64, acked: u64) {
        let in_step = {
            let mut inner = self.inner.lock();
            inner.peers.acked.insert(from.to_string(), acked);
            inner.peers.announced.insert(from.to_string(), (incarnation, seq));
            inner.table.in_step(from, incarnation, seq)
        };
        if !in_step {
            self.want(peers, from);
        }
    }

    /// How far this node has applied each other node's batches, for its heartbeats.
    pub fn applied(&self) -> Vec<(String, u64, u64)> {
        self.inner.lock().table.applied()
    }

    /// The last of this node's batches that every one of `peers` has applied (`u64::MAX` with no
    /// peers). A connection announced in a batch up to it is known to all of them: from here
    /// on they send this node its user's deliveries, and what they committed before is in the
    /// store, so one read of the store completes what the connection has.
    pub fn acked_through(&self, peers: &[String]) -> u64 {
        let inner = self.inner.lock();
        peers.iter().map(|peer| inner.peers.acked.get(peer).copied().unwrap_or(0)).min().unwrap_or(u64::MAX)
    }

    /// Which of `peers` a delivery to `recipients` of `room` must go to: those where a recipient
    /// has a connection by this node's table, and those whose batches this node has not applied
    /// as far as their last heartbeat announced (a connection there may be one it has not heard
    /// of yet). Their connections announced since are caught up by their node from the store
    /// once this node has applied the batch (see [`Presence::acked_through`]).
    pub fn peers_for<'a>(&self, room: &str, recipients: &Recipients, peers: &'a [String]) -> Vec<&'a String> {
        let inner = self.inner.lock();
        let behind = |peer: &String| {
            inner
                .peers
                .announced
                .get(peer)
                .is_none_or(|(incarnation, seq)| !inner.table.in_step(peer, *incarnation, *seq))
        };
        let members = match recipients {
            Recipients::Members(members) => members,
            // A small room: few users, looked up each time.
            _ => {
                return peers
                    .iter()
                    .filter(|peer| behind(peer) || inner.table.any_on(peer, recipients.users()))
                    .collect()
            }
        };
        let version = inner.table.version();
        let mut targets = self.targets.lock();
        let key = Arc::as_ptr(members) as usize;
        if !targets.get(room).is_some_and(|t| t.members == key && t.version == version) {
            if targets.len() >= TARGETS_KEPT {
                targets.clear();
            }
            // Every node of the table, not only today's peers: the answer is kept for as long
            // as the table does not change, and the live set may change meanwhile.
            let nodes = inner
                .table
                .node_names()
                .filter(|node| inner.table.any_on(node, members.iter().map(String::as_str)))
                .cloned()
                .collect();
            targets.insert(room.to_string(), Targets { members: key, version, nodes });
        }
        let nodes = &targets[room].nodes;
        peers.iter().filter(|peer| nodes.contains(peer) || behind(peer)).collect()
    }

    fn want(&self, peers: &dyn PresencePeers, node: &str) {
        {
            let mut wants = self.wants.lock();
            let now = Instant::now();
            if wants.get(node).is_some_and(|at| now.duration_since(*at) < Duration::from_secs(1)) {
                return;
            }
            wants.insert(node.to_string(), now);
        }
        debug!(node, "asking for a presence snapshot");
        peers.want_presence(node);
    }

    /// `node` asked for this node's snapshot.
    pub fn on_want(&self, host: &dyn PresenceHost, node: &str) {
        let Some(peers) = host.peers() else { return };
        let inner = self.inner.lock();
        let changes: Vec<Change> =
            inner.table.snapshot().into_iter().map(|(user, record)| (user, Some(record))).collect();
        let batch = PresenceBatch {
            from: self.me.clone(),
            incarnation: peers.incarnation(),
            base: 0,
            seq: inner.seq,
            snapshot: true,
            changes,
        };
        // Sent under the lock, so no batch with a higher sequence number overtakes it.
        if peers.send_presence(Some(node), batch) > 0 {
            Metrics::inc(&host.metrics().presence_snapshots_sent_total);
        }
    }

    /// The live set changed: nodes that left take their users' connections with them.
    pub fn on_view(&self, gone: &[String]) {
        let now = now_ms();
        let changed: Vec<UserPresence> = {
            let mut inner = self.inner.lock();
            for node in gone {
                inner.peers.acked.remove(node);
                inner.peers.announced.remove(node);
            }
            gone.iter().flat_map(|node| inner.table.node_down(node, now)).collect()
        };
        self.notify(changed);
    }

    /// Nodes other than this one where any of `users` is connected.
    pub(crate) fn remote_nodes_with(&self, users: &[String]) -> Vec<String> {
        let inner = self.inner.lock();
        inner.table.nodes_with(users).into_iter().filter(|node| *node != self.me).collect()
    }

    /// Whether `user` started (`active`) or stopped typing in `room` needs telling the members
    /// now: a repeat within half the lifetime only extends it. `None` means tell no one;
    /// `Some(recipients)` for a stop carries whom the start was told.
    pub(crate) fn typing_update(&self, room: &str, user: &str, active: bool) -> TypingUpdate {
        self.typing.lock().update(room, user, active, Instant::now())
    }

    /// The members of start `start` of `user` typing in `room` are `recipients`: whether to
    /// tell them (false if the user stopped meanwhile).
    pub(crate) fn typing_started(&self, room: &str, user: &str, start: u64, recipients: Vec<String>) -> bool {
        self.typing.lock().started(room, user, start, recipients, Instant::now())
    }

    /// Start `start` of `user` typing in `room` was refused: forget it.
    pub(crate) fn typing_abandoned(&self, room: &str, user: &str, start: u64) {
        self.typing.lock().abandon(room, user, start);
    }

    /// Indicators that were not repeated in time: tell their recipients they stopped.
    fn expire_typing(&self, host: &dyn PresenceHost) {
        let expired = self.typing.lock().take_expired(Instant::now());
        for ((room, user), recipients) in expired {
            let frame = ServerFrame::Typing { room, user, active: false, expires_in_ms: 0 };
            host.push(&recipients, frame);
        }
    }

    /// Members of `room` if cached recently.
    pub(crate) fn cached_room_size(&self, room: &str) -> Option<u32> {
        let sizes = self.room_sizes.lock();
        sizes.get(room).filter(|(_, at)| at.elapsed() < Duration::from_secs(5)).map(|(size, _)| *size)
    }

    pub(crate) fn cache_room_size(&self, room: &str, size: u32) {
        let mut sizes = self.room_sizes.lock();
        if sizes.len() >= 10_000 {
            sizes.clear();
        }
        sizes.insert(room.to_string(), (size, Instant::now()));
    }

    /// A connection of `user` was sent text entries from others: tell each sender how far its
    /// room got delivered to `user`. `batch` is (room, highest seq, senders).
    pub(crate) fn delivered(host: Arc<dyn PresenceHost>, user: &str, batch: Vec<(String, u64, Vec<String>)>) {
        let user = user.to_string();
        tokio::spawn(async move {
            let presence = host.presence();
            for (room, seq, senders) in batch {
                let size = match presence.cached_room_size(&room) {
                    Some(size) => size,
                    None => match host.store().room(&room).await {
                        Ok(Some(record)) => {
                            presence.cache_room_size(&room, record.members);
                            record.members
                        }
                        _ => continue,
                    },
                };
                if size > presence.settings.room_max_members {
                    continue;
                }
                let frame = ServerFrame::Receipt { room, user: user.clone(), kind: ReceiptKind::Delivered, seq };
                host.push(&senders, frame);
            }
        });
    }
}
