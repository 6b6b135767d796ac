use super::*;

const GRACE: Duration = Duration::from_millis(500);
const DAY: Duration = Duration::from_secs(86_400);

fn state(table: &Table, user: &str) -> PresenceState {
    table.presence(user).state
}

fn users(changed: &Changed) -> Vec<(&str, PresenceState)> {
    changed.iter().map(|p| (p.user.as_str(), p.state)).collect()
}

#[test]
fn online_until_the_grace_ends_after_the_last_connection() {
    let t0 = Instant::now();
    let mut table = Table::new("a", GRACE, DAY);
    assert_eq!(state(&table, "alice"), PresenceState::Offline);
    table.connected("alice", 1_000);
    table.connected("alice", 1_001);
    let (changes, changed) = table.flush(t0, 1_000);
    assert_eq!(changes.len(), 1);
    assert_eq!(users(&changed), [("alice", PresenceState::Online)]);
    // One of two connections closes: nothing to publish.
    table.disconnected("alice", t0, 2_000);
    table.connected("alice", 2_000);
    table.disconnected("alice", t0, 2_000);
    assert_eq!(table.flush(t0 + GRACE * 2, 2_000).0, []);
    // The last one closes: still online during the grace, offline after, with its last-seen.
    table.disconnected("alice", t0 + GRACE * 2, 3_000);
    assert_eq!(table.flush(t0 + GRACE * 2 + GRACE / 2, 3_100).0, []);
    let (changes, changed) = table.flush(t0 + GRACE * 3, 3_600);
    assert_eq!(changes.len(), 1);
    assert_eq!(changed[0].state, PresenceState::Offline);
    assert_eq!(changed[0].last_seen, Some(3_000));
}

#[test]
fn a_reconnect_within_the_grace_is_invisible() {
    let t0 = Instant::now();
    let mut table = Table::new("a", GRACE, DAY);
    table.connected("alice", 1_000);
    table.flush(t0, 1_000);
    for i in 0..10 {
        // Flapping: close and reopen ten times within the grace.
        table.disconnected("alice", t0 + GRACE / 20 * i, 1_000 + i as u64);
        table.connected("alice", 1_000 + i as u64);
    }
    let (changes, changed) = table.flush(t0 + GRACE * 3, 9_000);
    assert_eq!((changes.len(), changed.len()), (0, 0));
    assert_eq!(state(&table, "alice"), PresenceState::Online);
}

#[test]
fn away_and_status_are_merged_newest_first_across_nodes() {
    let t0 = Instant::now();
    let mut a = Table::new("a", GRACE, DAY);
    let mut b = Table::new("b", GRACE, DAY);
    // alice is connected to both nodes; each learns the other's records by snapshot.
    a.connected("alice", 1_000);
    b.connected("alice", 1_000);
    a.flush(t0, 1_000);
    b.flush(t0, 1_000);
    a.replace("b", 7, 1, b.snapshot());
    b.replace("a", 9, 1, a.snapshot());
    // Away on b: b's record is newer, so both see away.
    assert!(b.set_state("alice", true, Some("lunch".into()), 2_000));
    let (changes, changed) = b.flush(t0, 2_000);
    assert_eq!(changed[0].state, PresenceState::Away);
    assert_eq!(a.apply("b", 7, 1, 2, changes), Applied::Changed(vec![changed[0].clone()]));
    assert_eq!(a.presence("alice").status.as_deref(), Some("lunch"));
    // Her connection on b closes: she is still online through a, and still away (newest setting).
    b.disconnected("alice", t0, 3_000);
    let (changes, _) = b.flush(t0 + GRACE, 3_600);
    assert_eq!(a.apply("b", 7, 2, 3, changes), Applied::Changed(vec![]));
    assert_eq!(a.presence("alice").state, PresenceState::Away);
    // A state cannot be set without a connection on the node.
    assert!(!b.set_state("alice", false, None, 4_000));
}

#[test]
fn a_gap_or_a_new_incarnation_needs_a_snapshot() {
    let t0 = Instant::now();
    let mut a = Table::new("a", GRACE, DAY);
    let mut b = Table::new("b", GRACE, DAY);
    b.connected("bob", 1_000);
    let (changes, _) = b.flush(t0, 1_000);
    // Never in step with b: the first batch asks for a snapshot.
    assert_eq!(a.apply("b", 5, 0, 1, changes.clone()), Applied::NeedSnapshot);
    a.replace("b", 5, 1, b.snapshot());
    assert!(a.is_online("bob"));
    assert!(a.in_step("b", 5, 1));
    // A batch that skips one (2 → 3 while a is at 1) is refused.
    assert_eq!(a.apply("b", 5, 2, 3, changes.clone()), Applied::NeedSnapshot);
    assert!(!a.in_step("b", 5, 3));
    // b restarted: same sequence numbers, new incarnation.
    assert_eq!(a.apply("b", 6, 1, 2, changes), Applied::NeedSnapshot);
    // The restarted b has nobody: its snapshot clears what a held from it.
    let changed = a.replace("b", 6, 0, Vec::new());
    assert_eq!(users(&changed), [("bob", PresenceState::Offline)]);
}

#[test]
fn a_dead_node_takes_its_users_offline_but_not_users_online_elsewhere() {
    let t0 = Instant::now();
    let mut a = Table::new("a", GRACE, DAY);
    let mut c = Table::new("c", GRACE, DAY);
    a.connected("both", 1_000);
    c.connected("both", 1_000);
    c.connected("only_c", 1_000);
    a.flush(t0, 1_000);
    c.flush(t0, 1_000);
    a.replace("c", 1, 1, c.snapshot());
    let changed = a.node_down("c", 5_000);
    assert_eq!(users(&changed), [("only_c", PresenceState::Offline)]);
    assert_eq!(a.presence("only_c").last_seen, Some(5_000));
    assert_eq!(state(&a, "both"), PresenceState::Online);
    assert!(!a.in_step("c", 1, 1), "a snapshot is needed when c is back");
    assert_eq!(a.nodes_with([&"both".to_string(), &"only_c".to_string()]), BTreeSet::from(["a".to_string()]));
}

#[test]
fn old_offline_records_are_forgotten() {
    let t0 = Instant::now();
    let retention = Duration::from_secs(100);
    let mut table = Table::new("a", GRACE, retention);
    table.connected("alice", 1_000);
    table.flush(t0, 1_000);
    table.disconnected("alice", t0, 1_000);
    table.flush(t0 + GRACE, 1_500);
    assert_eq!(table.counts(), (1, 0));
    // The sweep runs once a minute; after the retention the record goes, as a removal.
    let (changes, _) = table.flush(t0 + Duration::from_secs(200), 1_000 + 200_000);
    assert_eq!(changes, [("alice".to_string(), None)]);
    assert_eq!(table.counts(), (0, 0));
    assert_eq!(table.presence("alice").last_seen, None);
}
