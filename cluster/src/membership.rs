//! Membership: who is alive, who is known, and whether this node may serve rooms. A pure state
//! machine (time is passed in), driven by the router's heartbeats and tested here.
//!
//! - A peer is **live** while its last heartbeat is younger than `heartbeat_timeout`. This is
//!   what catches a hung (SIGSTOP) or cut-off peer whose TCP link stays open, which
//!   ractor_cluster alone does not notice (docs/DESIGN.md §3). When its last link *closes*
//!   (a crashed process: the kernel resets the socket), it is dead sooner: if no heartbeat
//!   follows within the link grace (a few heartbeat intervals, enough to redial), which makes a
//!   kill -9 cost well under the timeout.
//! - A peer is **known** once heard of (directly, or in another node's heartbeat) until it
//!   leaves gracefully (a heartbeat with `leaving`). Known peers that stop answering stay known:
//!   they count towards the quorum size.
//! - This node **serves** rooms only with a quorum: more than half of the known nodes live.
//!   The store's fencing already stops two owners from interleaving writes; the quorum is what
//!   keeps the minority side of a partition (which may still reach a shared store) from
//!   writing at all.
//! - A node started with seeds serves only once it has heard from a peer, so a node that has
//!   not joined yet does not claim the whole cluster's rooms for itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::wire::Heartbeat;

#[derive(Debug, Clone)]
struct Peer {
    incarnation: u64,
    last_seen: Instant,
    /// Whether the peer's last heartbeat listed this node as live.
    sees_me: bool,
    /// Whether the peer's last heartbeat said it reads runs of deliveries.
    delivers_runs: bool,
    /// Whether the peer's last heartbeat said it may be sent only its members' deliveries.
    targeted: bool,
}

/// The part of membership the rest of the node reads: cheap to clone and compare.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct View {
    /// Live nodes, this one included, sorted.
    pub live: Vec<String>,
    /// Known nodes (the quorum's denominator), this one included.
    pub known: usize,
    /// Whether this node may own rooms: joined, quorum, not leaving.
    pub serving: bool,
    /// Live peers whose latest heartbeat lists this node (they send it deliveries).
    pub seen_by: Vec<String>,
    /// Live peers whose latest heartbeat says they read a run of deliveries as one message
    /// (`Heartbeat::delivers_runs`); the others get one delivery per entry.
    pub reads_runs: Vec<String>,
    /// Live peers whose latest heartbeat says they catch up connections the others did not
    /// know of yet (`Heartbeat::targeted`): they get only the deliveries of rooms with a member
    /// connected there. The others get every delivery.
    pub targeted: Vec<String>,
    /// Why not serving, for errors and the operator view.
    pub reason: Option<String>,
}

#[derive(Debug)]
pub struct Membership {
    me: String,
    timeout: Duration,
    /// False until a peer is heard from, if `cluster.seeds` is non-empty.
    joined: bool,
    leaving: bool,
    peers: HashMap<String, Peer>,
    /// Known nodes and their advertised addresses (this one included).
    known: BTreeMap<String, String>,
    /// Nodes that left gracefully, with the incarnation that left: gossip from peers that
    /// have not heard of the leave yet must not bring them back.
    left: HashMap<String, u64>,
    /// When each peer's last link closed, until a heartbeat comes after it.
    link_down: HashMap<String, Instant>,
    /// How long a peer whose links all closed stays live without a heartbeat.
    link_grace: Duration,
}

impl Membership {
    pub fn new(me: &str, addr: &str, timeout: Duration, needs_join: bool) -> Self {
        let mut known = BTreeMap::new();
        known.insert(me.to_string(), addr.to_string());
        Membership {
            me: me.to_string(),
            timeout,
            joined: !needs_join,
            leaving: false,
            peers: HashMap::new(),
            known,
            left: HashMap::new(),
            link_down: HashMap::new(),
            link_grace: timeout,
        }
    }

    /// Set how long a peer whose links all closed stays live without a heartbeat (default: the
    /// heartbeat timeout, i.e. a closed link changes nothing).
    pub fn with_link_grace(mut self, grace: Duration) -> Self {
        self.link_grace = grace.min(self.timeout);
        self
    }

    /// The last link to `name` closed (a heartbeat after `now` undoes it).
    pub fn link_closed(&mut self, name: &str, now: Instant) {
        if self.peers.contains_key(name) {
            self.link_down.insert(name.to_string(), now);
        }
    }

    /// A heartbeat arrived. Returns an error message if it claims this node's name (two nodes
    /// with one name), in which case it is ignored.
    pub fn on_heartbeat(&mut self, hb: &Heartbeat, my_incarnation: u64, now: Instant) -> Result<(), String> {
        if hb.from == self.me {
            if hb.incarnation != my_incarnation {
                return Err(format!(
                    "another node also calls itself `{}` (at {}); node names must be unique in a cluster",
                    hb.from, hb.addr
                ));
            }
            return Ok(());
        }
        if hb.leaving {
            self.peers.remove(&hb.from);
            self.known.remove(&hb.from);
            self.left.insert(hb.from.clone(), hb.incarnation);
            return Ok(());
        }
        if self.left.get(&hb.from).is_some_and(|&incarnation| incarnation == hb.incarnation) {
            // A late heartbeat from before its leave.
            return Ok(());
        }
        self.left.remove(&hb.from);
        self.joined = true;
        // Nodes the sender forgot (an operator said they are gone for good) or saw leave.
        for (name, incarnation) in &hb.forgotten {
            self.apply_tombstone(name, *incarnation, now);
        }
        self.link_down.remove(&hb.from);
        let sees_me = hb.live.contains(&self.me);
        let peer = Peer {
            incarnation: hb.incarnation,
            last_seen: now,
            sees_me,
            delivers_runs: hb.delivers_runs,
            targeted: hb.targeted,
        };
        self.peers.insert(hb.from.clone(), peer);
        self.known.insert(hb.from.clone(), hb.addr.clone());
        for (name, addr) in &hb.known {
            if *name != self.me && !self.left.contains_key(name) {
                self.known.entry(name.clone()).or_insert_with(|| addr.clone());
            }
        }
        Ok(())
    }

    /// The node is draining: it stops serving and tells peers it leaves.
    pub fn leave(&mut self) {
        self.leaving = true;
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// Forget a peer the operator says is gone for good: it no longer counts for the quorum,
    /// and the other nodes learn it from this node's heartbeats. Refused for this node itself,
    /// for a live peer (stop it first) and for an unknown name. A forgotten node that is
    /// started again (a new incarnation) rejoins as usual.
    pub fn forget(&mut self, name: &str, now: Instant) -> Result<(), String> {
        if name == self.me {
            return Err(format!("`{name}` is this node; ask another node to forget it"));
        }
        if !self.known.contains_key(name) {
            return Err(format!("no node `{name}` is known here"));
        }
        if self.is_live(name, now) {
            return Err(format!("`{name}` is live; stop it first (SIGTERM makes it leave by itself)"));
        }
        let incarnation = self.peers.remove(name).map_or(0, |peer| peer.incarnation);
        self.left.insert(name.to_string(), incarnation);
        self.known.remove(name);
        Ok(())
    }

    /// Another node says `name` (`incarnation`) left or was forgotten. Applied unless this node
    /// hears from it (then the gossip is older than what this node sees, or the cluster is
    /// split about it, and the heartbeat timeout will settle it) or knows a newer incarnation.
    fn apply_tombstone(&mut self, name: &str, incarnation: u64, now: Instant) {
        if name == self.me || self.left.contains_key(name) || self.is_live(name, now) {
            return;
        }
        if self.peers.get(name).is_some_and(|peer| peer.incarnation != incarnation) {
            return;
        }
        self.peers.remove(name);
        self.known.remove(name);
        self.left.insert(name.to_string(), incarnation);
    }

    /// Nodes that left or were forgotten, with their incarnation (gossiped in heartbeats).
    pub fn tombstones(&self) -> Vec<(String, u64)> {
        let mut tombstones: Vec<(String, u64)> = self.left.iter().map(|(name, inc)| (name.clone(), *inc)).collect();
        tombstones.sort();
        tombstones
    }

    pub fn is_live(&self, name: &str, now: Instant) -> bool {
        if name == self.me {
            return true;
        }
        let Some(peer) = self.peers.get(name) else { return false };
        let link_dead = self.link_down.get(name).is_some_and(|closed| now.duration_since(*closed) >= self.link_grace);
        now.duration_since(peer.last_seen) < self.timeout && !link_dead
    }

    /// Known nodes with their addresses (this one included).
    pub fn known(&self) -> Vec<(String, String)> {
        self.known.iter().map(|(name, addr)| (name.clone(), addr.clone())).collect()
    }

    pub fn view(&self, now: Instant) -> View {
        let live: BTreeSet<String> =
            self.known.keys().filter(|name| self.is_live(name, now)).cloned().chain([self.me.clone()]).collect();
        let known = self.known.len();
        let quorum = live.len() * 2 > known;
        let reason = if self.leaving {
            Some("node is leaving the cluster".to_string())
        } else if !self.joined {
            Some("node has not joined the cluster yet: no seed or peer has answered".to_string())
        } else if !quorum {
            Some(format!("no quorum: {} of {} known nodes live", live.len(), known))
        } else {
            None
        };
        let live_peers = |has: fn(&Peer) -> bool| {
            let names: BTreeSet<String> = self
                .peers
                .iter()
                .filter(|(name, peer)| has(peer) && live.contains(*name))
                .map(|(name, _)| name.clone())
                .collect();
            names.into_iter().collect()
        };
        let seen_by = live_peers(|peer| peer.sees_me);
        let reads_runs = live_peers(|peer| peer.delivers_runs);
        let targeted = live_peers(|peer| peer.targeted);
        View {
            live: live.into_iter().collect(),
            known,
            serving: reason.is_none(),
            seen_by,
            reads_runs,
            targeted,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(from: &str, incarnation: u64, live: &[&str]) -> Heartbeat {
        Heartbeat {
            from: from.into(),
            incarnation,
            addr: format!("{from}:1"),
            live: live.iter().map(|s| s.to_string()).collect(),
            known: vec![],
            leaving: false,
            presence_seq: 0,
            forgotten: vec![],
            delivers_runs: true,
            presence_applied: vec![],
            targeted: true,
        }
    }

    const T: Duration = Duration::from_millis(1000);

    #[test]
    fn heartbeats_make_peers_live_and_silence_makes_them_dead() {
        let t0 = Instant::now();
        let mut m = Membership::new("a", "a:1", T, true);
        assert!(!m.view(t0).serving, "waits to join");
        m.on_heartbeat(&hb("b", 1, &["a", "b"]), 9, t0).unwrap();
        m.on_heartbeat(&hb("c", 1, &["b", "c"]), 9, t0).unwrap();
        let view = m.view(t0);
        assert_eq!(view.live, ["a", "b", "c"]);
        assert!(view.serving);
        assert_eq!(view.seen_by, ["b"]);
        // c goes quiet (hung or cut off): dead after the timeout, still known; 2 of 3 is a quorum.
        m.on_heartbeat(&hb("b", 1, &["a", "b"]), 9, t0 + T).unwrap();
        let view = m.view(t0 + T + Duration::from_millis(1));
        assert_eq!((view.live.len(), view.known, view.serving), (2, 3, true));
        // b too: 1 of 3 is no quorum (the minority must not write).
        let view = m.view(t0 + 3 * T);
        assert!(!view.serving, "{view:?}");
        assert!(view.reason.unwrap().contains("no quorum"));
    }

    #[test]
    fn leaving_shrinks_the_cluster_and_late_gossip_does_not_undo_it() {
        let t0 = Instant::now();
        let mut m = Membership::new("a", "a:1", T, false);
        m.on_heartbeat(&hb("b", 1, &["a", "b"]), 9, t0).unwrap();
        let mut leave = hb("b", 1, &["a", "b"]);
        leave.leaving = true;
        m.on_heartbeat(&leave, 9, t0).unwrap();
        // A late heartbeat of the same incarnation and gossip from c are ignored.
        m.on_heartbeat(&hb("b", 1, &["a", "b"]), 9, t0).unwrap();
        let mut gossip = hb("c", 1, &["a", "c"]);
        gossip.known = vec![("b".into(), "b:1".into())];
        m.on_heartbeat(&gossip, 9, t0).unwrap();
        let view = m.view(t0);
        assert_eq!((view.live, view.known), (vec!["a".to_string(), "c".to_string()], 2));
        // b restarted (new incarnation): it is back.
        m.on_heartbeat(&hb("b", 2, &["a", "b"]), 9, t0).unwrap();
        assert_eq!(m.view(t0).live.len(), 3);
    }

    #[test]
    fn a_forgotten_node_stops_counting_and_the_others_learn_it() {
        let t0 = Instant::now();
        let mut a = Membership::new("a", "a:1", T, false);
        let mut b = Membership::new("b", "b:1", T, false);
        for m in [&mut a, &mut b] {
            m.on_heartbeat(&hb("c", 3, &["c"]), 9, t0).unwrap();
        }
        a.on_heartbeat(&hb("b", 2, &["a", "b"]), 9, t0).unwrap();
        b.on_heartbeat(&hb("a", 1, &["a", "b"]), 9, t0).unwrap();
        // c is still live: refused, as are this node itself and unknown names.
        assert!(a.forget("c", t0).unwrap_err().contains("live"));
        assert!(a.forget("a", t0).is_err());
        assert!(a.forget("zed", t0).is_err());
        // c died (kill -9): it still counts, until forgotten.
        let later = t0 + 2 * T;
        a.on_heartbeat(&hb("b", 2, &["a", "b"]), 9, later).unwrap();
        b.on_heartbeat(&hb("a", 1, &["a", "b"]), 9, later).unwrap();
        assert_eq!(a.view(later).known, 3);
        a.forget("c", later).unwrap();
        assert_eq!(a.view(later).known, 2);
        // b learns it from a's next heartbeat.
        let mut gossip = hb("a", 1, &["a", "b"]);
        gossip.forgotten = a.tombstones();
        b.on_heartbeat(&gossip, 9, later).unwrap();
        assert_eq!(b.view(later).known, 2);
        // Started again (a new incarnation), c rejoins.
        b.on_heartbeat(&hb("c", 4, &["c"]), 9, later).unwrap();
        assert_eq!(b.view(later).known, 3);
        // ...and a's old tombstone (incarnation 3) does not undo that.
        b.on_heartbeat(&gossip, 9, later).unwrap();
        assert_eq!(b.view(later).live.len(), 3);
    }

    #[test]
    fn a_closed_link_without_a_heartbeat_after_it_is_death_sooner_than_the_timeout() {
        let t0 = Instant::now();
        let grace = T / 4;
        let mut m = Membership::new("a", "a:1", T, false).with_link_grace(grace);
        m.on_heartbeat(&hb("b", 1, &["a", "b"]), 9, t0).unwrap();
        m.on_heartbeat(&hb("c", 1, &["a", "c"]), 9, t0).unwrap();
        // b's link closes and it is redialed: a heartbeat within the grace keeps it live.
        m.link_closed("b", t0);
        m.on_heartbeat(&hb("b", 1, &["a", "b"]), 9, t0 + grace / 2).unwrap();
        assert!(m.is_live("b", t0 + grace * 2));
        // c's link closes (its process died): dead after the grace, long before the timeout.
        m.link_closed("c", t0);
        assert!(m.is_live("c", t0 + grace / 2));
        assert!(!m.is_live("c", t0 + grace));
        assert_eq!(m.view(t0 + grace).live, ["a", "b"]);
        // Back (restarted, a new incarnation): live again with its first heartbeat.
        m.on_heartbeat(&hb("c", 2, &["a", "c"]), 9, t0 + grace * 2).unwrap();
        assert!(m.is_live("c", t0 + grace * 2));
        // Without a grace set, a closed link changes nothing before the timeout.
        let mut plain = Membership::new("a", "a:1", T, false);
        plain.on_heartbeat(&hb("b", 1, &["a", "b"]), 9, t0).unwrap();
        plain.link_closed("b", t0);
        assert!(plain.is_live("b", t0 + T / 2));
    }

    #[test]
    fn same_name_is_refused() {
        let mut m = Membership::new("a", "a:1", T, false);
        assert!(m.on_heartbeat(&hb("a", 9, &[]), 9, Instant::now()).is_ok());
        assert!(m.on_heartbeat(&hb("a", 10, &[]), 9, Instant::now()).unwrap_err().contains("unique"));
    }
}
