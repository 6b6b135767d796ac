//! The hub's delivery of committed entries to registered connections, on the real SQLite store
//! (the store is not touched here; the hub needs one).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use protocol::{Entry, EntryKind};

use super::{Hub, Registration};
use crate::auth::{AuthConfig, Authenticator};
use crate::limits::Limits;
use crate::outbound::Outbound;
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::{Delivery, Recipients, Store};

fn hub(limits: Limits) -> (Arc<Hub>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path().join("test.db"))).unwrap());
    let auth = Authenticator::new(AuthConfig::for_tests()).unwrap();
    (Hub::new("test-node".into(), limits, Default::default(), store, auth), dir)
}

fn delivery(room: &str, seq: u64, members: &Arc<Vec<String>>) -> Delivery {
    let entry = Entry {
        room: room.into(),
        seq,
        id: format!("m{seq}"),
        from: "a".into(),
        kind: EntryKind::Text,
        user: None,
        body: format!("text {seq}"),
        ts: 0,
        ..Default::default()
    };
    Delivery { entry, recipients: Recipients::Members(members.clone()) }
}

fn list(users: &[&str]) -> Arc<Vec<String>> {
    Arc::new(users.iter().map(|user| user.to_string()).collect())
}

/// The room entries queued for `registration`, in queue order, one `Vec` per queued run.
fn queued_runs(registration: &mut Registration) -> Vec<Vec<Arc<crate::encoded::SharedEntry>>> {
    std::iter::from_fn(|| registration.inbox.try_recv())
        .map(|outbound| match outbound {
            Outbound::RoomRun(run) => run.entries().to_vec(),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

/// (room, seq) of every room entry queued for `registration`, in queue order.
fn queued(registration: &mut Registration) -> Vec<(String, u64)> {
    queued_runs(registration)
        .into_iter()
        .flatten()
        .map(|shared| (shared.entry().room.clone(), shared.entry().seq))
        .collect()
}

#[tokio::test]
async fn runs_of_a_large_rooms_entries_reach_the_members_of_each_entrys_list_in_order() {
    let (hub, _dir) = hub(Limits::default());
    let mut a = hub.register("a");
    let mut b = hub.register("b");
    // r1's list changes after seq 2 (b left), and r2's entry comes between r1's 3 and 4.
    let (both, only_a, r2) = (list(&["a", "b"]), list(&["a"]), list(&["b"]));
    let deliveries = [
        delivery("r1", 1, &both),
        delivery("r1", 2, &both),
        delivery("r1", 3, &only_a),
        delivery("r2", 1, &r2),
        delivery("r1", 4, &only_a),
    ];
    hub.deliver_local(&deliveries.iter().collect::<Vec<_>>());

    let seqs = |runs: Vec<Vec<Arc<crate::encoded::SharedEntry>>>| -> Vec<Vec<u64>> {
        runs.iter().map(|run| run.iter().map(|shared| shared.entry().seq).collect()).collect()
    };
    // Each run is one queue item: r1's 1–2 under one list, 3 under the next, 4 after r2's.
    assert_eq!(seqs(queued_runs(&mut a)), [vec![1, 2], vec![3], vec![4]]);
    let r1 = |seq| ("r1".to_string(), seq);
    assert_eq!(queued(&mut b), [r1(1), r1(2), ("r2".to_string(), 1)]);
    assert_eq!(hub.metrics().deliveries_total.load(Ordering::Relaxed), 7);
    assert!(!a.signals.lagged.load(Ordering::Acquire) && !b.signals.lagged.load(Ordering::Acquire));
}

#[tokio::test]
async fn a_run_that_does_not_fit_a_queue_marks_that_connection_lagged() {
    let (hub, _dir) = hub(Limits { outbound_queue_len: 3, ..Limits::default() });
    let mut a = hub.register("a");
    let mut b = hub.register("b");
    let members = list(&["a", "b"]);
    // b already holds one entry: the run of three does not fit beside it.
    hub.deliver_local(&[&delivery("r1", 1, &list(&["b"]))]);
    let run: Vec<Delivery> = (2..=4).map(|seq| delivery("r1", seq, &members)).collect();
    hub.deliver_local(&run.iter().collect::<Vec<_>>());

    let r1 = |seq| ("r1".to_string(), seq);
    assert_eq!(queued(&mut a), [r1(2), r1(3), r1(4)]);
    assert!(!a.signals.lagged.load(Ordering::Acquire), "a's three fit");
    // b has what was queued before, and reads the whole run from the store.
    assert_eq!(queued(&mut b), [r1(1)]);
    assert!(b.signals.lagged.load(Ordering::Acquire), "b missed seqs 2 to 4");
    assert_eq!(hub.metrics().deliveries_lagged_total.load(Ordering::Relaxed), 1);
}

/// Entries from another node are kept as they arrive (`keep_recent`); their fan-out shares
/// those very entries, and makes its own only for a run the recent entries do not all hold.
#[tokio::test]
async fn a_run_already_kept_is_fanned_out_from_the_kept_entries() {
    let (hub, _dir) = hub(Limits::default());
    let mut a = hub.register("a");
    let members = list(&["a"]);
    let run: Vec<Delivery> = (1..=3).map(|seq| delivery("r1", seq, &members)).collect();
    let kept: Vec<_> = run.iter().map(|d| Arc::new(crate::encoded::SharedEntry::new(d.entry.clone()))).collect();
    hub.keep_recent("r1", &kept);
    hub.deliver_local(&run.iter().collect::<Vec<_>>());
    // Seq 5 was never kept (4 is missing): a run of its own entries.
    hub.deliver_local(&[&delivery("r1", 5, &members)]);

    let received: Vec<_> = queued_runs(&mut a).into_iter().flatten().collect();
    assert_eq!(received.iter().map(|shared| shared.entry().seq).collect::<Vec<_>>(), [1, 2, 3, 5]);
    assert!(received.iter().zip(&kept).all(|(got, kept)| Arc::ptr_eq(got, kept)), "the kept entries are shared");
}
