//! Targeted delivery's side of presence: which peers a delivery goes to, and when a new
//! connection is known to every peer.

use super::*;

/// The other nodes as presence sees them: two peers, both live. Presence only reads their
/// names and incarnation here; nothing is sent.
struct TwoPeers;

impl PresencePeers for TwoPeers {
    fn is_live(&self, node: &str) -> bool {
        node == "n2" || node == "n3"
    }
    fn incarnation(&self) -> u64 {
        1
    }
    fn send_presence(&self, _to: Option<&str>, _batch: PresenceBatch) -> u64 {
        0
    }
    fn want_presence(&self, _node: &str) {}
    fn live_peers(&self) -> Vec<String> {
        vec!["n2".into(), "n3".into()]
    }
}

fn record(online: bool) -> Record {
    Record { online, away: false, status: None, state_at: 1, last_seen: 0 }
}

fn peers() -> Vec<String> {
    vec!["n2".into(), "n3".into()]
}

#[test]
fn a_delivery_goes_to_peers_with_a_recipient_and_to_peers_this_node_is_behind() {
    let presence = Presence::new("n1", PresenceSettings::default());
    {
        let mut inner = presence.inner.lock();
        inner.table.replace("n2", 7, 3, vec![("bob".into(), record(true))]);
        inner.table.replace("n3", 8, 2, vec![("carol".into(), record(true))]);
    }
    presence.on_heartbeat(&TwoPeers, "n2", 7, 3, 0);
    presence.on_heartbeat(&TwoPeers, "n3", 8, 2, 0);
    let peers = peers();
    let members = Recipients::Members(Arc::new(vec!["alice".into(), "bob".into()]));
    assert_eq!(presence.peers_for("r", &members, &peers), ["n2"], "bob is on n2, no member on n3");
    let logs = Recipients::Logs(vec![("carol".into(), 4)]);
    assert_eq!(presence.peers_for("s", &logs, &peers), ["n3"], "a small room's recipients, looked up");

    // n3 announces a batch this node has not applied: a member may have connected there.
    presence.on_heartbeat(&TwoPeers, "n3", 8, 3, 0);
    assert_eq!(presence.peers_for("r", &members, &peers), ["n2", "n3"]);
    presence.inner.lock().table.apply("n3", 8, 2, 3, vec![]);
    assert_eq!(presence.peers_for("r", &members, &peers), ["n2"], "in step again");

    // Bob leaves n2: the remembered answer for the room's list is not used again.
    presence.inner.lock().table.apply("n2", 7, 3, 4, vec![("bob".into(), Some(record(false)))]);
    presence.on_heartbeat(&TwoPeers, "n2", 7, 4, 0);
    assert!(presence.peers_for("r", &members, &peers).is_empty(), "no member connected anywhere else");
    // A new member list (someone joined) is looked up afresh too.
    let joined = Recipients::Members(Arc::new(vec!["alice".into(), "bob".into(), "carol".into()]));
    assert_eq!(presence.peers_for("r", &joined, &peers), ["n3"]);
}

#[test]
fn a_new_connection_is_known_everywhere_once_every_peer_applied_its_batch() {
    let presence = Presence::new("n1", PresenceSettings::default());
    assert_eq!(presence.connected("alice"), Some(1), "announced in the next batch");
    assert_eq!(presence.connected("alice"), None, "already announced: peers send her deliveries here");
    let peers = peers();
    assert_eq!(presence.acked_through(&peers), 0);
    presence.on_heartbeat(&TwoPeers, "n2", 7, 0, 1);
    assert_eq!(presence.acked_through(&peers), 0, "n3 has not applied it");
    presence.on_heartbeat(&TwoPeers, "n3", 8, 0, 1);
    assert_eq!(presence.acked_through(&peers), 1);
    // n3 restarts: its new incarnation has applied nothing of this node's yet.
    presence.on_heartbeat(&TwoPeers, "n3", 9, 0, 0);
    assert_eq!(presence.acked_through(&peers), 0);
    assert_eq!(presence.acked_through(&[]), u64::MAX, "no peers: nothing to wait for");
}
