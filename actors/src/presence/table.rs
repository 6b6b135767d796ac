//! The presence table: every node's published presence records, merged into what users see.
//! A pure state machine (time is passed in), so its rules are tested here without sockets.
//!
//! Each node publishes one record per user with a connection on it (or who recently had one):
//! online or not, away or not, status text, when that state was set and when the user was last
//! seen there. Every node holds every node's records, replicated by presence batches (see
//! [`super`]), so reading anyone's presence is a local lookup, and a node's death is handled by
//! each survivor on its own ([`Table::node_down`]).
//!
//! What users see ([`Table::presence`]) merges a user's records: online if any node says so,
//! away if the newest of the online records says so, with the status most recently set
//! anywhere; otherwise offline with the latest last-seen time.
//!
//! The state a user sets (away, status) is theirs, not a node's, so it follows them: a node
//! that opens a record for a user copies the state the cluster already shows (and the state
//! keeps the time it was set, so a copy never outranks the original), a live local record
//! adopts a newer state set on another node, and a user coming back after being offline
//! everywhere starts `online` with the status they had, which the node also asks the store for
//! ([`Table::noted`]) in case no node remembers it.
//!
//! This node's *published* record lags its connections on purpose: when the last connection
//! closes, the record stays online for the grace period, and only if no connection came back
//! does it turn offline. So a quick reconnect is never seen by anyone, and a flapping
//! connection produces no traffic at all.
//!
//! Replication is checked by sequence numbers: each batch from a node carries the sequence it
//! applies on top of (`base`) and the one it brings it to; a receiver that is not exactly at
//! `base` (it missed a batch, the node restarted, it just met the node) ignores the batch and
//! asks for a snapshot, which replaces everything it held from that node.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use protocol::{PresenceState, UserPresence};
use serde::{Deserialize, Serialize};

/// One node's published presence of one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The user has a live connection on that node (or had one less than the grace ago).
    pub online: bool,
    /// The user said they are away.
    #[serde(default)]
    pub away: bool,
    #[serde(default)]
    pub status: Option<String>,
    /// When `away`/`status` were set (ms since the Unix epoch): the newest setting wins.
    pub state_at: u64,
    /// When the user's last connection on that node ended (ms since the Unix epoch), 0 if never.
    #[serde(default)]
    pub last_seen: u64,
}

/// A published change: the user's new record, or `None` when the record was dropped.
pub type Change = (String, Option<Record>);

/// A user whose merged presence changed, with what it is now.
pub type Changed = Vec<UserPresence>;

/// This node's own view of a user: connections and the record it will publish.
#[derive(Debug)]
struct Local {
    conns: u32,
    /// When the last connection closed (the grace runs from here).
    closed_at: Option<(Instant, u64)>,
    record: Record,
}

/// How far this node has applied another node's batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sync {
    incarnation: u64,
    seq: u64,
}

/// What a batch from another node did.
#[derive(Debug, PartialEq)]
pub enum Applied {
    /// Applied; these users' merged presence changed.
    Changed(Changed),
    /// Not applied: this node is not in step with the sender and needs a snapshot.
    NeedSnapshot,
}

#[derive(Debug)]
pub struct Table {
    me: String,
    grace: Duration,
    retention_ms: u64,
    /// Published records by node (this one included), then by user.
    nodes: HashMap<String, HashMap<String, Record>>,
    local: HashMap<String, Local>,
    /// Users whose local record changed since the last flush.
    dirty: HashSet<String>,
    /// Users whose published record changed but was not sent to other nodes yet.
    unsent: HashSet<String>,
    /// Users whose merged presence may have changed since it was last reported (a connection
    /// opened, a note arrived), with what was reported: the next flush reports those that differ.
    pending: HashMap<String, UserPresence>,
    /// Users whose last connection closed, in closing order (the grace is the same for all).
    grace_queue: VecDeque<(Instant, String)>,
    sync: HashMap<String, Sync>,
    last_sweep: Option<Instant>,
    /// Bumped whenever a user comes online or goes offline on some node: what
    /// [`Table::nodes_with`] answers can only have changed if this did.
    version: u64,
}

impl Table {
    pub fn new(me: &str, grace: Duration, retention: Duration) -> Table {
        let mut nodes = HashMap::new();
        nodes.insert(me.to_string(), HashMap::new());
        Table {
            me: me.to_string(),
            grace,
            retention_ms: retention.as_millis() as u64,
            nodes,
            local: HashMap::new(),
            dirty: HashSet::new(),
            unsent: HashSet::new(),
            pending: HashMap::new(),
            grace_queue: VecDeque::new(),
            sync: HashMap::new(),
            last_sweep: None,
            version: 0,
        }
    }

    /// A connection of `user` opened on this node. True if the user was offline everywhere this
    /// node knows of: the caller then looks up their stored note and hands it to [`Table::noted`].
    pub fn connected(&mut self, user: &str) -> bool {
        let local = self.local.entry(user.to_string()).or_insert_with(|| Local {
            conns: 0,
            closed_at: None,
            record: Record { online: false, away: false, status: None, state_at: 0, last_seen: 0 },
        });
        local.conns += 1;
        local.closed_at = None;
        if local.record.online {
            return false;
        }
        // The state the cluster shows is copied with the time it was set, so this record adds
        // nothing to what others see. Back after being offline everywhere: "online", and the
        // status text stays.
        let shown = self.presence(user);
        let back = shown.state == PresenceState::Offline;
        let state_at = self.records(user).map(|record| record.state_at).max().unwrap_or(0);
        let local = self.local.get_mut(user).expect("inserted above");
        local.record.online = true;
        local.record.away = shown.state == PresenceState::Away;
        local.record.status = shown.status;
        local.record.state_at = state_at;
        // Published here at once, so that this node answers "online" for a user it holds a
        // connection of; watchers and other nodes hear of it at the next flush.
        let record = local.record.clone();
        self.publish_now(user, record);
        back
    }

    /// The stored note of `user`, looked up when they came back ([`Table::connected`]): taken
    /// if it was set after the state this node knows, while the user is still connected here.
    pub fn noted(&mut self, user: &str, status: Option<String>, set_ms: u64) {
        let Some(local) = self.local.get_mut(user).filter(|local| local.record.online) else { return };
        if set_ms <= local.record.state_at {
            return;
        }
        local.record.status = status;
        local.record.state_at = set_ms;
        let record = local.record.clone();
        self.publish_now(user, record);
    }

    /// Publish this node's `record` of `user` before the next flush (which sends it to the other
    /// nodes and reports the change to watchers).
    fn publish_now(&mut self, user: &str, record: Record) {
        let before = self.presence(user);
        self.pending.entry(user.to_string()).or_insert(before);
        let me = self.me.clone();
        self.put(&me, user, Some(record));
        self.unsent.insert(user.to_string());
    }

    /// A connection of `user` closed on this node.
    pub fn disconnected(&mut self, user: &str, now: Instant, now_ms: u64) {
        let Some(local) = self.local.get_mut(user) else { return };
        local.conns = local.conns.saturating_sub(1);
        if local.conns == 0 {
            local.closed_at = Some((now, now_ms));
            self.grace_queue.push_back((now, user.to_string()));
        }
    }

    /// The user set their state on a connection of this node: returns when it counts as set
    /// (the time to store the note under). Refused (`None`) without a connection here.
    pub fn set_state(&mut self, user: &str, away: bool, status: Option<String>, now_ms: u64) -> Option<u64> {
        // Strictly newer than any setting seen so far, even with clocks a little apart.
        let newest = self.records(user).map(|record| record.state_at).max().unwrap_or(0);
        let local = self.local.get_mut(user).filter(|local| local.conns > 0)?;
        local.record.away = away;
        local.record.status = status;
        local.record.state_at = now_ms.max(newest + 1);
        self.dirty.insert(user.to_string());
        Some(local.record.state_at)
    }

    /// Publish what changed locally: grace periods that ended, states set, connections opened,
    /// and (once a minute) records past retention. Returns the changes for other nodes and the
    /// users whose merged presence changed.
    pub fn flush(&mut self, now: Instant, now_ms: u64) -> (Vec<Change>, Changed) {
        while let Some((closed, _)) = self.grace_queue.front() {
            if now.duration_since(*closed) < self.grace {
                break;
            }
            let (closed, user) = self.grace_queue.pop_front().expect("front exists");
            if let Some(local) = self.local.get_mut(&user) {
                // Still closed since that moment (not reconnected, not closed again later)?
                if local.conns == 0 && local.closed_at.is_some_and(|(at, _)| at == closed) {
                    let (_, closed_ms) = local.closed_at.take().expect("checked");
                    local.record.online = false;
                    local.record.last_seen = closed_ms;
                    self.dirty.insert(user);
                }
            }
        }
        if self.last_sweep.is_none_or(|last| now.duration_since(last) >= Duration::from_secs(60)) {
            self.last_sweep = Some(now);
            self.sweep(now_ms);
        }
        for user in std::mem::take(&mut self.dirty) {
            let record = self.local.get(&user).map(|local| local.record.clone());
            if self.nodes[&self.me].get(&user) == record.as_ref() {
                continue;
            }
            let before = self.presence(&user);
            self.pending.entry(user.clone()).or_insert(before);
            let me = self.me.clone();
            self.put(&me, &user, record);
            self.unsent.insert(user);
        }
        // Each user once, as they are now: a change undone within the interval is no change.
        let changed = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(user, before)| (self.presence(&user), before))
            .filter(|(now, before)| now != before)
            .map(|(now, _)| now)
            .collect();
        let mine = &self.nodes[&self.me];
        let changes = std::mem::take(&mut self.unsent)
            .into_iter()
            .map(|user| {
                let record = mine.get(&user).cloned();
                (user, record)
            })
            .collect();
        (changes, changed)
    }

    /// Drop offline records older than the retention: locally (published as a removal) and
    /// other nodes' (each node sweeps its own copy; the owner's removal may never come if it died).
    fn sweep(&mut self, now_ms: u64) {
        let expired = |record: &Record| !record.online && record.last_seen + self.retention_ms < now_ms;
        let gone: Vec<String> = self
            .local
            .iter()
            .filter(|(_, local)| local.conns == 0 && local.closed_at.is_none() && expired(&local.record))
            .map(|(user, _)| user.clone())
            .collect();
        for user in gone {
            self.local.remove(&user);
            self.dirty.insert(user);
        }
        let me = self.me.clone();
        for (_, records) in self.nodes.iter_mut().filter(|(node, _)| **node != me) {
            records.retain(|_, record| !expired(record));
        }
    }

    /// This node's published records, for a snapshot.
    pub fn snapshot(&self) -> Vec<(String, Record)> {
        self.nodes[&self.me].iter().map(|(user, record)| (user.clone(), record.clone())).collect()
    }

    /// A batch of changes from `node` (`incarnation`), bringing it from `base` to `seq`.
    pub fn apply(&mut self, node: &str, incarnation: u64, base: u64, seq: u64, changes: Vec<Change>) -> Applied {
        if node == self.me {
            return Applied::Changed(Vec::new());
        }
        match self.sync.get(node) {
            Some(sync) if sync.incarnation == incarnation && sync.seq == base => {}
            _ => return Applied::NeedSnapshot,
        }
        self.sync.insert(node.to_string(), Sync { incarnation, seq });
        let mut changed = Vec::new();
        for (user, record) in changes {
            changed.extend(self.put(node, &user, record));
        }
        Applied::Changed(changed)
    }

    /// A full snapshot from `node` at `seq`: replaces everything held from it.
    pub fn replace(&mut self, node: &str, incarnation: u64, seq: u64, records: Vec<(String, Record)>) -> Changed {
        if node == self.me {
            return Vec::new();
        }
        self.sync.insert(node.to_string(), Sync { incarnation, seq });
        let old: Vec<String> = self.nodes.get(node).map(|held| held.keys().cloned().collect()).unwrap_or_default();
        let new: HashSet<String> = records.iter().map(|(user, _)| user.clone()).collect();
        let mut changed = Vec::new();
        for user in old.into_iter().filter(|user| !new.contains(user)) {
            changed.extend(self.put(node, &user, None));
        }
        for (user, record) in records {
            changed.extend(self.put(node, &user, Some(record)));
        }
        changed
    }

    /// Whether batches from `node` (`incarnation`) up to `seq` have all been applied.
    pub fn in_step(&self, node: &str, incarnation: u64, seq: u64) -> bool {
        self.sync.get(node).is_some_and(|sync| sync.incarnation == incarnation && sync.seq >= seq)
    }

    /// `node` is no longer live: its users' connections there are gone as of `now_ms` (kept as
    /// offline records for their last-seen time), and it must send a snapshot when it is back.
    pub fn node_down(&mut self, node: &str, now_ms: u64) -> Changed {
        self.sync.remove(node);
        let online: Vec<String> = self
            .nodes
            .get(node)
            .map(|held| held.iter().filter(|(_, record)| record.online).map(|(user, _)| user.clone()).collect())
            .unwrap_or_default();
        let mut changed = Vec::new();
        for user in online {
            let mut record = self.nodes[node][&user].clone();
            record.online = false;
            record.last_seen = now_ms;
            changed.extend(self.put(node, &user, Some(record)));
        }
        changed
    }

    /// Set `node`'s record of `user`; returns the user's merged presence if it changed.
    fn put(&mut self, node: &str, user: &str, record: Option<Record>) -> Option<UserPresence> {
        let before = self.presence(user);
        if node != self.me {
            if let Some(record) = &record {
                self.adopt(user, record);
            }
        }
        let held = self.nodes.entry(node.to_string()).or_default();
        let online = record.as_ref().is_some_and(|record| record.online);
        let was_online = match record {
            Some(record) => held.insert(user.to_string(), record),
            None => held.remove(user),
        }
        .is_some_and(|record| record.online);
        if online != was_online {
            self.version += 1;
        }
        let after = self.presence(user);
        (after != before).then_some(after)
    }

    /// Another node's record of `user` carries a state set after the one this node's live record
    /// holds: take it, so the newest state stays in every record of a connected user, whichever
    /// node restarts. Published here at once (sent at the next flush): it is the newest state,
    /// so what users see is what the caller's change makes it.
    fn adopt(&mut self, user: &str, record: &Record) {
        let Some(local) = self.local.get_mut(user).filter(|local| local.record.online) else { return };
        if record.state_at <= local.record.state_at {
            return;
        }
        local.record.away = record.away;
        local.record.status = record.status.clone();
        local.record.state_at = record.state_at;
        let adopted = local.record.clone();
        if let Some(published) = self.nodes.get_mut(&self.me).and_then(|held| held.get_mut(user)) {
            *published = adopted;
            self.unsent.insert(user.to_string());
        }
    }

    fn records<'a>(&'a self, user: &'a str) -> impl Iterator<Item = &'a Record> + 'a {
        self.nodes.values().filter_map(move |held| held.get(user))
    }

    /// What others see of `user`.
    pub fn presence(&self, user: &str) -> UserPresence {
        let mut last_seen = 0;
        // Newest by when the state was set; equal times (a copy and its original) are broken
        // by node name so every node picks the same record.
        let mut newest: Option<(u64, &str, &Record)> = None;
        let mut newest_online: Option<(u64, &str, &Record)> = None;
        for (node, held) in &self.nodes {
            let Some(record) = held.get(user) else { continue };
            last_seen = last_seen.max(record.last_seen);
            let key = (record.state_at, node.as_str(), record);
            if newest.is_none_or(|(at, name, _)| (key.0, key.1) > (at, name)) {
                newest = Some(key);
            }
            if record.online && newest_online.is_none_or(|(at, name, _)| (key.0, key.1) > (at, name)) {
                newest_online = Some(key);
            }
        }
        let status = newest.and_then(|(_, _, record)| record.status.clone());
        let (state, last_seen) = match newest_online {
            // Only an online record says whether the user is away now: an offline one says
            // what they were when they left.
            Some((_, _, record)) if record.away => (PresenceState::Away, None),
            Some(_) => (PresenceState::Online, None),
            None => (PresenceState::Offline, (last_seen > 0).then_some(last_seen)),
        };
        UserPresence { user: user.to_string(), state, status, last_seen }
    }

    /// Whether `user` is online or away.
    pub fn is_online(&self, user: &str) -> bool {
        self.records(user).any(|record| record.online)
    }

    /// How far this node has applied each other node's batches: (node, incarnation, seq).
    pub fn applied(&self) -> Vec<(String, u64, u64)> {
        self.sync.iter().map(|(node, sync)| (node.clone(), sync.incarnation, sync.seq)).collect()
    }

    /// Changes whenever a user's connection appears on or leaves some node (see `version`).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every node this table holds records of (this one included).
    pub fn node_names(&self) -> impl Iterator<Item = &String> {
        self.nodes.keys()
    }

    /// Whether any of `users` has a connection on `node` (by its published records).
    pub fn any_on<'a>(&self, node: &str, mut users: impl Iterator<Item = &'a str>) -> bool {
        let Some(held) = self.nodes.get(node) else { return false };
        users.any(|user| held.get(user).is_some_and(|record| record.online))
    }

    /// Whether this node holds a live record of `user` (a connection here, or one closed less
    /// than the grace ago): other nodes count the user as connected here.
    pub fn online_here(&self, user: &str) -> bool {
        self.local.get(user).is_some_and(|local| local.record.online)
    }

    /// Nodes where any of `users` has a connection (by their published records).
    pub fn nodes_with<'a>(&self, users: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
        let mut nodes = BTreeSet::new();
        for user in users {
            for (node, held) in &self.nodes {
                if held.get(user).is_some_and(|record| record.online) {
                    nodes.insert(node.clone());
                }
            }
        }
        nodes
    }

    /// (users with any record, users online) — for metrics.
    pub fn counts(&self) -> (usize, usize) {
        let mut users: HashSet<&String> = HashSet::new();
        let mut online: HashSet<&String> = HashSet::new();
        for held in self.nodes.values() {
            for (user, record) in held {
                users.insert(user);
                if record.online {
                    online.insert(user);
                }
            }
        }
        (users.len(), online.len())
    }
}

#[cfg(test)]
mod tests;
