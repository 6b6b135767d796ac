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
    table.connected("alice");
    table.connected("alice");
    let (changes, changed) = table.flush(t0, 1_000);
    assert_eq!(changes.len(), 1);
    assert_eq!(users(&changed), [("alice", PresenceState::Online)]);
    // One of two connections closes: nothing to publish.
    table.disconnected("alice", t0, 2_000);
    table.connected("alice");
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
    table.connected("alice");
    table.flush(t0, 1_000);
    for i in 0..10 {
        // Flapping: close and reopen ten times within the grace.
        table.disconnected("alice", t0 + GRACE / 20 * i, 1_000 + i as u64);
        table.connected("alice");
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
    a.connected("alice");
    b.connected("alice");
    a.flush(t0, 1_000);
    b.flush(t0, 1_000);
    a.replace("b", 7, 1, b.snapshot());
    b.replace("a", 9, 1, a.snapshot());
    // Away on b: b's record is newer, so both see away.
    assert!(b.set_state("alice", true, Some("lunch".into()), 2_000).is_some());
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
    assert!(b.set_state("alice", false, None, 4_000).is_none());
}

#[test]
fn a_gap_or_a_new_incarnation_needs_a_snapshot() {
    let t0 = Instant::now();
    let mut a = Table::new("a", GRACE, DAY);
    let mut b = Table::new("b", GRACE, DAY);
    b.connected("bob");
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
    a.connected("both");
    c.connected("both");
    c.connected("only_c");
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
    table.connected("alice");
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

/// Two nodes in step with each other, as after a snapshot each way.
fn pair(t0: Instant) -> (Table, Table) {
    let mut a = Table::new("a", GRACE, DAY);
    let mut b = Table::new("b", GRACE, DAY);
    a.flush(t0, 1_000);
    b.flush(t0, 1_000);
    a.replace("b", 2, 0, b.snapshot());
    b.replace("a", 1, 0, a.snapshot());
    (a, b)
}

/// Run one flush on `from` and apply its batch on `to`; returns what `from` reported and what
/// `to` reported (users whose presence changed).
fn flush_to(from: &mut Table, to: &mut Table, seq: &mut u64, now: Instant, now_ms: u64) -> (Changed, Changed) {
    let (changes, reported) = from.flush(now, now_ms);
    if changes.is_empty() {
        return (reported, Vec::new());
    }
    let incarnation = if from.me == "a" { 1 } else { 2 };
    *seq += 1;
    match to.apply(&from.me.clone(), incarnation, *seq - 1, *seq, changes) {
        Applied::Changed(changed) => (reported, changed),
        Applied::NeedSnapshot => panic!("{} not in step with {}", to.me, from.me),
    }
}

fn shown(table: &Table, user: &str) -> (PresenceState, Option<String>) {
    let presence = table.presence(user);
    (presence.state, presence.status)
}

#[test]
fn the_state_a_user_set_follows_them_to_a_second_node() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    let (mut seq_a, mut seq_b) = (0, 0);
    a.connected("dave");
    assert!(a.set_state("dave", true, Some("on a train".into()), 2_000).is_some());
    let (_, changed) = flush_to(&mut a, &mut b, &mut seq_a, t0, 2_000);
    assert_eq!(users(&changed), [("dave", PresenceState::Away)]);
    // A second connection, on b: nothing changes for anyone, on either node.
    assert!(!b.connected("dave"), "dave is online on a: not back from offline");
    assert_eq!(shown(&b, "dave"), (PresenceState::Away, Some("on a train".into())));
    let (reported, changed) = flush_to(&mut b, &mut a, &mut seq_b, t0, 2_100);
    assert_eq!((reported, changed), (vec![], vec![]));
    assert_eq!(shown(&a, "dave"), (PresenceState::Away, Some("on a train".into())));
    // The first connection goes: b's copy keeps him away with his status.
    a.disconnected("dave", t0, 3_000);
    let (reported, changed) = flush_to(&mut a, &mut b, &mut seq_a, t0 + GRACE, 3_600);
    assert_eq!((reported, changed), (vec![], vec![]));
    assert_eq!(shown(&b, "dave"), (PresenceState::Away, Some("on a train".into())));
}

#[test]
fn back_after_the_grace_on_another_node_online_with_the_status_kept() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    let (mut seq_a, mut seq_b) = (0, 0);
    a.connected("dave");
    a.set_state("dave", true, Some("on a bus".into()), 2_000);
    flush_to(&mut a, &mut b, &mut seq_a, t0, 2_000);
    a.disconnected("dave", t0, 3_000);
    let (_, changed) = flush_to(&mut a, &mut b, &mut seq_a, t0 + GRACE, 3_600);
    assert_eq!(users(&changed), [("dave", PresenceState::Offline)]);
    assert_eq!(shown(&b, "dave"), (PresenceState::Offline, Some("on a bus".into())));
    // Back, on b only: online (not away: a fresh start), the status kept, on both nodes.
    assert!(b.connected("dave"), "offline everywhere: back, so the caller reads the stored note");
    let (reported, changed) = flush_to(&mut b, &mut a, &mut seq_b, t0 + GRACE, 4_000);
    let online = UserPresence {
        user: "dave".into(),
        state: PresenceState::Online,
        status: Some("on a bus".into()),
        last_seen: None,
    };
    assert_eq!((reported, changed), (vec![online.clone()], vec![online]));
}

#[test]
fn a_reconnect_on_another_node_within_the_grace_is_seen_by_no_one() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    let (mut seq_a, mut seq_b) = (0, 0);
    a.connected("alice");
    a.set_state("alice", false, Some("back soon".into()), 2_000);
    flush_to(&mut a, &mut b, &mut seq_a, t0, 2_000);
    a.disconnected("alice", t0, 3_000);
    assert!(!b.connected("alice"), "still online through a's grace");
    let (reported, changed) = flush_to(&mut b, &mut a, &mut seq_b, t0 + GRACE / 2, 3_100);
    assert_eq!((reported, changed), (vec![], vec![]));
    // a's grace ends: its record goes offline, she stays online through b.
    let (reported, changed) = flush_to(&mut a, &mut b, &mut seq_a, t0 + GRACE, 3_600);
    assert_eq!((reported, changed), (vec![], vec![]));
    for table in [&a, &b] {
        assert_eq!(shown(table, "alice"), (PresenceState::Online, Some("back soon".into())));
    }
}

#[test]
fn a_stored_note_newer_than_what_the_cluster_remembers_is_taken_in_one_change() {
    let t0 = Instant::now();
    let mut b = Table::new("b", GRACE, DAY);
    // Every node restarted: b remembers nothing of dave.
    assert!(b.connected("dave"));
    assert_eq!(shown(&b, "dave"), (PresenceState::Online, None));
    b.noted("dave", Some("on a train".into()), 1_500);
    // The connection and the note are reported as one change.
    let (changes, reported) = b.flush(t0, 2_000);
    assert_eq!(changes.len(), 1);
    assert_eq!(reported.len(), 1);
    assert_eq!((reported[0].state, reported[0].status.as_deref()), (PresenceState::Online, Some("on a train")));
    // A note older than what b holds changes nothing (dave set another status since).
    b.set_state("dave", false, Some("home".into()), 3_000);
    b.flush(t0, 3_000);
    b.noted("dave", Some("on a train".into()), 1_500);
    assert_eq!(b.flush(t0, 3_100), (vec![], vec![]));
    assert_eq!(shown(&b, "dave"), (PresenceState::Online, Some("home".into())));
    // Nor does a note for a user with no connection here.
    b.noted("carol", Some("x".into()), 9_000);
    assert_eq!(b.flush(t0, 9_100), (vec![], vec![]));
}

#[test]
fn the_newest_state_outlives_the_node_it_was_set_on() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    let (mut seq_a, mut seq_b) = (0, 0);
    a.connected("dave");
    b.connected("dave");
    flush_to(&mut a, &mut b, &mut seq_a, t0, 1_000);
    flush_to(&mut b, &mut a, &mut seq_b, t0, 1_000);
    a.set_state("dave", true, Some("on a train".into()), 2_000);
    flush_to(&mut a, &mut b, &mut seq_a, t0, 2_000);
    // b's live record took the newer state: publishing it changes nothing anyone sees.
    let (reported, changed) = flush_to(&mut b, &mut a, &mut seq_b, t0, 2_100);
    assert_eq!((reported, changed), (vec![], vec![]));
    // a dies and comes back empty: b still shows what dave set on a.
    b.node_down("a", 3_000);
    let changed = b.replace("a", 3, 0, Vec::new());
    assert_eq!(changed, vec![]);
    assert_eq!(shown(&b, "dave"), (PresenceState::Away, Some("on a train".into())));
}

#[test]
fn a_change_undone_before_the_flush_is_not_reported() {
    let t0 = Instant::now();
    let mut a = Table::new("a", GRACE, DAY);
    a.connected("alice");
    a.set_state("alice", true, Some("lunch".into()), 1_000);
    a.flush(t0, 1_000);
    // Away → online → away again within one interval: published, but nothing to report.
    a.set_state("alice", false, Some("lunch".into()), 1_100);
    a.set_state("alice", true, Some("lunch".into()), 1_200);
    let (changes, reported) = a.flush(t0, 1_300);
    assert_eq!((changes.len(), reported), (1, vec![]));
}

#[test]
fn a_reconnect_elsewhere_before_a_node_is_counted_dead_is_seen_by_no_one() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    let mut seq_b = 0;
    // alice on b, with a status; b's process dies (nothing more comes from it).
    b.connected("alice");
    b.set_state("alice", false, Some("on the move".into()), 2_000);
    flush_to(&mut b, &mut a, &mut seq_b, t0, 2_000);
    // Her client reconnects to a before a counts b dead.
    assert!(!a.connected("alice"));
    let (changes, reported) = a.flush(t0, 2_100);
    assert_eq!((changes.len(), reported), (1, vec![]));
    assert_eq!(a.node_down("b", 3_000), vec![]);
    assert_eq!(shown(&a, "alice"), (PresenceState::Online, Some("on the move".into())));
}
