//! The FoundationDB backend's logic over the in-memory map: the conformance suite, the suite
//! again with every write's commit reporting `commit_unknown_result`, and what only this
//! backend has (limits, retention by range clear, subspaces).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use protocol::{EntryKind, RoomKind};

use super::kv::KvDb;
use super::kv::KvTxn;
use super::limits::VALUE_BYTES_MAX;
use super::mem::MemKv;
use super::{Keyspace, KvStore};
use crate::conformance::media::upload;
use crate::conformance::Fixture;
use crate::{AppendRequest, Epoch, LogBounds, MembershipLimits, NewRoom, Recipients, Store, StoreError};

/// Every operation that writes, by the name `ops` gives its transaction.
const WRITES: &[&str] = &[
    "create user",
    "revoke tokens",
    "create room",
    "append",
    "trim user log",
    "mark read",
    "claim room",
    "reserve media",
    "complete media",
    "media garbage",
    "drop media",
];

/// Writes that answer exactly as if the commit had been known: all but `revoke tokens` (which
/// bumps once more, revoking more) and `trim user log` (whose count may read 0 on the retry).
const EXACT_UNDER_UNKNOWN_RESULT: &[&str] = &[
    "create user",
    "create room",
    "append",
    "append batch",
    "mark read",
    "claim room",
    "reserve media",
    "complete media",
    "media garbage",
    "drop media",
];

fn mem_store(max_entries: u64) -> (Arc<MemKv>, KvStore<Arc<MemKv>>) {
    let kv = Arc::new(MemKv::default());
    (Arc::clone(&kv), KvStore::new(kv, Keyspace::new("palaver-test"), max_entries))
}

async fn fresh_store() -> Fixture {
    Fixture::new(Arc::new(mem_store(0).1))
}

async fn store_with_unknown_results() -> Fixture {
    let (kv, store) = mem_store(0);
    kv.report_unknown_results(EXACT_UNDER_UNKNOWN_RESULT);
    Fixture::new(Arc::new(store))
}

mod conformance {
    crate::conformance::conformance_tests!(super::fresh_store);
}

/// The whole suite again, with every commit of every write reporting an unknown result after
/// it applied: each write must recognise its own earlier attempt and answer as the first time.
mod conformance_under_commit_unknown_result {
    crate::conformance::conformance_tests!(super::store_with_unknown_results);
}

const LIMITS: MembershipLimits =
    MembershipLimits { max_room_members: 100_000, max_rooms_per_user: 1_000, fanout_max_members: 100_000 };

async fn setup(store: &dyn Store, room: &str, names: &[String]) -> Epoch {
    for name in names {
        store.create_user(name, &format!("hash-{name}"), 1).await.expect("create user");
    }
    let new_room = NewRoom {
        id: room.into(),
        name: room.into(),
        kind: RoomKind::Group,
        private: false,
        creator: names[0].clone(),
        members: names.to_vec(),
        ts: 1,
    };
    store.create_room(new_room, LIMITS).await.expect("create room");
    store.claim_room(room, "node-1").await.expect("claim")
}

fn named(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_string()).collect()
}

fn text(room: &str, epoch: Epoch, from: &str, id: &str, body: &str) -> AppendRequest {
    AppendRequest {
        room: room.into(),
        epoch,
        kind: EntryKind::Text,
        from: from.into(),
        id: id.into(),
        user: None,
        body: body.into(),
        ts: 2,
        limits: LIMITS,
        details: crate::EntryDetails::default(),
        rules: crate::conformance::RULES,
    }
}

/// `user`'s own join or leave (`kind`) of `room`, under `limits`.
fn membership(
    room: &str,
    epoch: Epoch,
    kind: EntryKind,
    user: &str,
    id: &str,
    limits: MembershipLimits,
) -> AppendRequest {
    AppendRequest { kind, user: Some(user.into()), limits, ..text(room, epoch, user, id, "") }
}

#[tokio::test]
async fn an_unknown_result_still_delivers_the_original_once() {
    let (kv, store) = mem_store(0);
    let epoch = setup(&store, "r", &named(&["a", "b", "c"])).await;
    kv.report_unknown_results(WRITES);

    let sent = store.append(text("r", epoch, "a", "m1", "hello")).await.expect("append");
    assert!(!sent.duplicate, "the caller never saw the first commit: not a duplicate for it");
    assert_eq!(sent.delivery.entry.seq, 4);
    let Recipients::Logs(mut recipients) = sent.delivery.recipients.clone() else { panic!("in user logs") };
    recipients.sort();
    assert_eq!(recipients, vec![("a".into(), 4), ("b".into(), 4), ("c".into(), 4)]);
    assert_eq!(kv.unknown_results_reported(), 1);
    for user in ["a", "b", "c"] {
        assert_eq!(store.user_log_bounds(user).await.unwrap(), LogBounds { floor: 0, head: 4 }, "written once");
    }

    // A client retry of the same message afterwards is a plain duplicate.
    let again = store.append(text("r", epoch, "a", "m1", "hello")).await.expect("append");
    assert!(again.duplicate && again.delivery.recipients == Recipients::none());
    assert_eq!(again.delivery.entry, sent.delivery.entry);

    // Joins and leaves recognise their own entry instead of failing as already done.
    store.create_user("d", "h", 1).await.expect("create user");
    let mut join = text("r", epoch, "d", "j1", "");
    (join.kind, join.user) = (EntryKind::Join, Some("d".into()));
    let joined = store.append(join).await.expect("join after an unknown result");
    assert_eq!(
        (joined.delivery.entry.kind, joined.duplicate, joined.delivery.recipients.users().count()),
        (EntryKind::Join, false, 4)
    );
    let mut leave = text("r", epoch, "b", "l1", "");
    (leave.kind, leave.user) = (EntryKind::Leave, Some("b".into()));
    let left = store.append(leave).await.expect("leave after an unknown result");
    assert_eq!(left.delivery.recipients.users().count(), 4, "the leaver gets the leave too");
    assert_eq!(store.members("r").await.unwrap(), named(&["a", "c", "d"]));

    // Claims keep the epoch they got; account creation is not refused as existing.
    assert_eq!(store.claim_room("r", "node-2").await, Ok(epoch + 1));
    assert_eq!(store.room_owner("r").await.unwrap(), Some(("node-2".into(), epoch + 1)));
    assert_eq!(store.create_user("e", "salted-hash", 9).await, Ok(()));
    assert_eq!(store.create_user("e", "other-hash", 9).await, Err(StoreError::UserExists("e".into())));
}

/// Make `count` users with names of `name_bytes` bytes members of `room` directly in the map
/// (the fast way to a big room): what fan-out sees, without `count` joins.
async fn seed_members(kv: &MemKv, ks: &Keyspace, room: &str, count: usize, name_bytes: usize) {
    let ks = ks.clone();
    kv.transact("seed", |t, _| {
        let ks = ks.clone();
        async move {
            for i in 0..count {
                let name = format!("{i:0>name_bytes$}");
                let member = super::values::MemberValue::joined(1_000 + i as u64, protocol::Role::Member);
                t.set(&ks.member(room, &name), &member.encode());
                t.set(&ks.user_head(&name), &super::values::UserHead::default().encode());
            }
            Ok(())
        }
    })
    .await
    .expect("seed");
}

#[tokio::test]
async fn oversize_entries_are_refused_before_writing() {
    let (kv, store) = mem_store(0);
    let epoch = setup(&store, "r", &named(&["a", "b"])).await;
    let before = kv.snapshot().await;
    let body = "x".repeat(VALUE_BYTES_MAX);
    let err = store.append(text("r", epoch, "a", "big", &body)).await.unwrap_err();
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("100000")), "{err}");
    assert_eq!(kv.snapshot().await, before, "a refused append wrote something");
    let long_id = "i".repeat(10_000);
    let err = store.append(text("r", epoch, "a", &long_id, "hi")).await.unwrap_err();
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("key of")), "{err}");
    assert_eq!(kv.snapshot().await, before, "a refused append wrote something");
}

/// Fan-out on write puts one pointer per member in the append's transaction, so the 1 MB
/// budget bounds a room: about 1,850 members with the longest names (32 bytes) in a room with
/// the longest id (80 bytes), as docs/STORAGE.md computes. Past it the append is refused,
/// writing nothing, instead of failing at the cluster.
#[tokio::test]
async fn the_transaction_budget_bounds_fan_out() {
    let room = "r".repeat(80);
    for (members, fits) in [(1_800, true), (1_900, false)] {
        let (kv, store) = mem_store(0);
        let epoch = setup(&store, &room, &named(&["a"])).await;
        seed_members(&kv, store.keyspace(), &room, members - 1, 32).await;
        let before = kv.snapshot().await;
        match store.append(text(&room, epoch, "a", "m", "hello")).await {
            Ok(sent) => {
                assert!(fits, "{members} members fit one transaction");
                assert_eq!(sent.delivery.recipients.users().count(), members);
            }
            Err(e) => {
                assert!(!fits, "{members} members refused: {e}");
                assert!(matches!(&e, StoreError::Backend(m) if m.contains("budget")), "{e}");
                assert_eq!(kv.snapshot().await, before, "a refused append wrote something");
            }
        }
    }
}

/// The largest batch a room hands its store with the default limits: `limits.room_batch_max`
/// (64) appends of `limits.max_body_bytes` (16 KiB) in a room of `limits.fanout_max_members`
/// (100) members with the longest names, the last room size that fans out on write. Its
/// writes are over one transaction's budget, so it commits in several transactions, each
/// within twice the budget (the last append taken may pass it by its own size) and so far
/// under FoundationDB's 10 MB; every append in it succeeds, in order.
#[tokio::test]
async fn the_largest_batch_commits_in_transactions_within_the_budget() {
    use super::limits::TRANSACTION_BYTES_BUDGET;
    let room = "r".repeat(80);
    let (kv, store) = mem_store(0);
    let epoch = setup(&store, &room, &named(&["a"])).await;
    seed_members(&kv, store.keyspace(), &room, 99, 32).await;
    let head = store.room(&room).await.unwrap().unwrap().last_seq;
    let body = "x".repeat(16 * 1024);
    let batch = (0..64).map(|n| text(&room, epoch, "a", &format!("m{n}"), &body)).collect();
    let outcomes = store.append_batch(batch).await;
    let seqs: Vec<u64> =
        outcomes.into_iter().map(|outcome| outcome.expect("append in the batch").delivery.entry.seq).collect();
    assert_eq!(seqs, (head + 1..=head + 64).collect::<Vec<_>>());
    let commits = kv.commits_of("append batch");
    assert!(commits.len() >= 2, "one transaction took {} bytes", commits.iter().sum::<usize>());
    for bytes in &commits {
        assert!(*bytes <= 2 * TRANSACTION_BYTES_BUDGET, "a transaction of {bytes} bytes; all: {commits:?}");
    }
}

#[tokio::test]
async fn automatic_retention_range_clears_every_period() {
    let (kv, store) = mem_store(10);
    let epoch = setup(&store, "r", &named(&["a"])).await;
    for n in 2..=63 {
        store.append(text("r", epoch, "a", &format!("m{n}"), "x")).await.unwrap();
    }
    assert_eq!(store.user_log_bounds("a").await.unwrap(), LogBounds { floor: 0, head: 63 });
    store.append(text("r", epoch, "a", "m64", "x")).await.unwrap();
    assert_eq!(store.user_log_bounds("a").await.unwrap(), LogBounds { floor: 54, head: 64 });
    let log = store.user_log("a", 0, 100).await.unwrap();
    assert_eq!(log.iter().map(|e| e.cursor).collect::<Vec<_>>(), (55..=64).collect::<Vec<_>>());
    // The trimmed pointers are gone from the map, not just hidden.
    let ks = store.keyspace();
    let snapshot = kv.snapshot().await;
    let range = ks.user_log_after("a", 0);
    assert_eq!(snapshot.keys().filter(|k| range.contains(k)).count(), 10);
    // The room log keeps everything.
    assert_eq!(store.room("r").await.unwrap().unwrap().last_seq, 64);
}

#[tokio::test]
async fn deployments_in_different_subspaces_never_meet() {
    let kv = Arc::new(MemKv::default());
    let one = KvStore::new(Arc::clone(&kv), Keyspace::new("palaver-one"), 0);
    let two = KvStore::new(Arc::clone(&kv), Keyspace::new("palaver"), 0);
    setup(&one, "r", &named(&["a", "ab"])).await;
    assert_eq!(two.user("a").await, Ok(None));
    assert_eq!(two.room("r").await, Ok(None));
    setup(&two, "r", &named(&["a"])).await;
    assert_eq!(one.members("r").await.unwrap(), named(&["a", "ab"]));
    assert_eq!(two.members("r").await.unwrap(), named(&["a"]));

    // Every key lies in its store's subspace; clearing one subspace leaves the other whole.
    let snapshot = kv.snapshot().await;
    let (r1, r2) = (one.keyspace().everything(), two.keyspace().everything());
    assert!(snapshot.keys().all(|k| r1.contains(k) != r2.contains(k)));
    kv.transact("clear", |t, _| {
        let r1 = r1.clone();
        async move {
            t.clear_range(&r1);
            Ok(())
        }
    })
    .await
    .unwrap();
    assert_eq!(one.user("a").await, Ok(None));
    assert_eq!(two.members("r").await.unwrap(), named(&["a"]));
}

#[tokio::test]
async fn corrupt_values_are_errors_that_name_the_key() {
    let (kv, store) = mem_store(0);
    setup(&store, "r", &named(&["a"])).await;
    let key = store.keyspace().room_head("r");
    kv.transact("corrupt", |t, _| {
        let key = key.clone();
        async move {
            t.set(&key, b"\x07garbage");
            Ok(())
        }
    })
    .await
    .unwrap();
    let err = store.room("r").await.unwrap_err();
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("\\x02head\\x00") && m.contains("format 7")), "{err}");
}

/// Keys whose value differs between two snapshots (written, rewritten or cleared).
fn changed_keys(before: &BTreeMap<Vec<u8>, Vec<u8>>, after: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<Vec<u8>> {
    let keys: BTreeSet<&Vec<u8>> = before.keys().chain(after.keys()).collect();
    keys.into_iter().filter(|k| before.get(*k) != after.get(*k)).cloned().collect()
}

/// In a large room an append under `commit_unknown_result` recognises its own entry and answers
/// as a fresh append does there (no recipients named: the room's owner names them), searching
/// no user log; the entry, its dedup key and the room head are written once, and no user head
/// or pointer at all. A room created large names every initial member.
#[tokio::test]
async fn an_unknown_result_in_a_large_room_recovers_without_searching_logs() {
    let large_from_three = MembershipLimits { fanout_max_members: 2, ..LIMITS };
    let everyone = || Recipients::Members(Arc::new(named(&["a", "b", "c"])));
    let (kv, store) = mem_store(0);
    let epoch = setup(&store, "r", &named(&["a", "b"])).await;
    store.create_user("c", "hash-c", 1).await.expect("create user");
    kv.report_unknown_results(WRITES);

    // The join that takes the room past the limit, retried: the room is large from it on.
    let join = membership("r", epoch, EntryKind::Join, "c", "j-c", large_from_three);
    let joined = store.append(join).await.expect("join after an unknown result");
    assert_eq!((joined.delivery.entry.seq, joined.duplicate), (3, false));
    assert_eq!(joined.delivery.recipients, Recipients::Unnamed);
    assert_eq!(store.members("r").await.unwrap(), named(&["a", "b", "c"]));
    assert_eq!(store.room("r").await.unwrap().unwrap().large_since, Some(3));

    let before = kv.snapshot().await;
    let reported = kv.unknown_results_reported();
    let request = AppendRequest { limits: large_from_three, ..text("r", epoch, "a", "m1", "hello") };
    let sent = store.append(request.clone()).await.expect("append after an unknown result");
    assert_eq!(kv.unknown_results_reported(), reported + 1, "the commit reported an unknown result");
    assert!(!sent.duplicate, "the caller never saw the first commit: not a duplicate for it");
    assert_eq!(sent.delivery.entry.seq, 4);
    assert_eq!(sent.delivery.recipients, Recipients::Unnamed);
    let ks = store.keyspace();
    let mut expected = vec![ks.room_log("r", 4), ks.dedup("r", "a", "m1"), ks.room_head("r")];
    expected.sort();
    assert_eq!(changed_keys(&before, &kv.snapshot().await), expected, "written once, no user head or pointer");
    let heads = [store.user_log_bounds("a").await.unwrap(), store.user_log_bounds("c").await.unwrap()];
    assert_eq!(heads, [LogBounds { floor: 0, head: 2 }, LogBounds::default()]);
    let again = store.append(request).await.expect("client retry");
    assert!(again.duplicate && again.delivery.recipients == Recipients::none());
    assert_eq!(again.delivery.entry, sent.delivery.entry);

    // A leave, retried; the room stays large.
    let leave = membership("r", epoch, EntryKind::Leave, "c", "l-c", large_from_three);
    let left = store.append(leave).await.expect("leave after an unknown result");
    assert_eq!((left.delivery.entry.kind, left.duplicate), (EntryKind::Leave, false));
    assert_eq!(left.delivery.recipients, Recipients::Unnamed);
    assert_eq!(store.members("r").await.unwrap(), named(&["a", "b"]));
    assert_eq!(store.room("r").await.unwrap().unwrap().large_since, Some(3));

    // A room created large, retried: every join reaches every initial member, no cursor.
    let before = kv.snapshot().await;
    let new_room = NewRoom {
        id: "s".into(),
        name: "s".into(),
        kind: RoomKind::Group,
        private: false,
        creator: "a".into(),
        members: named(&["a", "b", "c"]),
        ts: 1,
    };
    let (record, deliveries) = store.create_room(new_room, large_from_three).await.expect("create room");
    assert_eq!(record.large_since, Some(1));
    let deliveries = deliveries.expect("recognised as its own creation");
    assert_eq!(deliveries.iter().map(|d| d.entry.seq).collect::<Vec<_>>(), [1, 2, 3]);
    for delivery in deliveries {
        assert_eq!(delivery.recipients, everyone());
    }
    let pointers = [ks.user_log_after("a", 0), ks.user_log_after("b", 0), ks.user_log_after("c", 0)];
    let after = kv.snapshot().await;
    assert!(changed_keys(&before, &after).iter().all(|k| !pointers.iter().any(|p| p.contains(k))), "no pointer");
    assert_eq!(store.user_log_bounds("c").await.unwrap(), LogBounds::default());
}

/// A change by `from` of message `target` in `room`.
fn change(room: &str, epoch: Epoch, kind: EntryKind, from: &str, id: &str, target: u64, body: &str) -> AppendRequest {
    let details = crate::EntryDetails { target: Some(target), ..crate::EntryDetails::default() };
    AppendRequest { kind, details, ..text(room, epoch, from, id, body) }
}

/// Whether `needle` occurs in any key or value of the map.
fn anywhere(snapshot: &BTreeMap<Vec<u8>, Vec<u8>>, needle: &[u8]) -> bool {
    snapshot
        .iter()
        .any(|(k, v)| k.windows(needle.len()).any(|w| w == needle) || v.windows(needle.len()).any(|w| w == needle))
}

/// A delete erases the bytes, not just what reads show: no key or value holds the message's
/// text or its edits' afterwards, and its reaction, reaction count and mention keys are gone.
#[tokio::test]
async fn a_delete_leaves_no_trace_of_the_text_in_the_map() {
    let (kv, store) = mem_store(0);
    let epoch = setup(&store, "r", &named(&["a", "b"])).await;
    let mut request = text("r", epoch, "a", "m1", "first secret");
    request.details.mentions = named(&["b"]);
    let seq = store.append(request).await.expect("send").delivery.entry.seq;
    store.append(change("r", epoch, EntryKind::Edit, "a", "e1", seq, "second secret")).await.expect("edit");
    store.append(change("r", epoch, EntryKind::React, "b", "x1", seq, "🤫")).await.expect("react");
    let ks = store.keyspace();
    let before = kv.snapshot().await;
    let (reactions, counts) = (ks.reactions_of("r", seq), ks.reaction_counts_of("r", seq));
    assert!(anywhere(&before, b"secret"));
    assert!(before.contains_key(&ks.mention("b", "r", seq)));
    assert_eq!(before.keys().filter(|k| reactions.contains(k) || counts.contains(k)).count(), 2);

    store.append(change("r", epoch, EntryKind::Delete, "a", "d1", seq, "")).await.expect("delete");
    let after = kv.snapshot().await;
    assert!(!anywhere(&after, b"secret"), "a body survived the delete");
    assert!(!after.contains_key(&ks.mention("b", "r", seq)));
    // The react entry stays in the log (what happened); the reaction on the message is gone.
    assert!(after.keys().all(|k| !reactions.contains(k) && !counts.contains(k)), "a reaction survived the delete");
}

/// The count of a reaction follows its givers, and the key goes when the last one takes it
/// back: a reaction nobody gives is not one of the message's distinct reactions any more.
#[tokio::test]
async fn reaction_counts_follow_their_givers() {
    let (kv, store) = mem_store(0);
    let epoch = setup(&store, "r", &named(&["a", "b"])).await;
    let seq = store.append(text("r", epoch, "a", "m1", "hi")).await.expect("send").delivery.entry.seq;
    let count_key = store.keyspace().reaction_count("r", seq, "👍");
    let count = || async { kv.snapshot().await.get(&count_key).map(|v| super::values::decode_u64(v).expect("count")) };
    for (n, (kind, user)) in
        [(EntryKind::React, "a"), (EntryKind::React, "b"), (EntryKind::Unreact, "a"), (EntryKind::Unreact, "b")]
            .into_iter()
            .enumerate()
    {
        store.append(change("r", epoch, kind, user, &format!("c{n}"), seq, "👍")).await.expect("change");
    }
    assert_eq!(count().await, None);
    store.append(change("r", epoch, EntryKind::React, "b", "c9", seq, "👍")).await.expect("react");
    assert_eq!(count().await, Some(1));
}

/// A batch of changes whose commit reports an unknown result applies each change once and
/// answers each with its own entry.
#[tokio::test]
async fn a_batch_of_changes_under_an_unknown_result_applies_each_once() {
    let (kv, store) = mem_store(0);
    let epoch = setup(&store, "r", &named(&["a", "b"])).await;
    let seq = store.append(text("r", epoch, "a", "m1", "one")).await.expect("send").delivery.entry.seq;
    kv.report_unknown_results(&["append batch"]);
    let batch = vec![
        change("r", epoch, EntryKind::React, "b", "x1", seq, "👍"),
        change("r", epoch, EntryKind::Edit, "a", "e1", seq, "two"),
        change("r", epoch, EntryKind::React, "a", "x2", seq, "👍"),
    ];
    let outcomes = store.append_batch(batch).await;
    assert_eq!(kv.unknown_results_reported(), 1);
    let entries: Vec<_> = outcomes.into_iter().map(|o| o.expect("applied").delivery.entry).collect();
    assert_eq!(
        entries.iter().map(|e| (e.kind, e.seq)).collect::<Vec<_>>(),
        [(EntryKind::React, seq + 1), (EntryKind::Edit, seq + 2), (EntryKind::React, seq + 3)]
    );
    let counts = store.reactions("r", &[seq], "a").await.expect("reactions");
    assert_eq!(counts, vec![vec![protocol::ReactionCount { reaction: "👍".into(), count: 2, me: true }]]);
    assert_eq!(store.room("r").await.unwrap().unwrap().last_seq, seq + 3, "written once");
}

/// A moderation entry by `from` on `user` (`body`: the reason, or the role given).
fn moderation(room: &str, epoch: Epoch, kind: EntryKind, from: &str, user: &str, body: &str) -> AppendRequest {
    AppendRequest { kind, user: Some(user.into()), ..text(room, epoch, from, &format!("{kind:?}-{user}"), body) }
}

/// In a large room a moderation entry writes the room log and what it changes, and moves no
/// log: only a member it removes has their head rewritten (their room count), as for a leave.
#[tokio::test]
async fn moderation_in_a_large_room_moves_only_a_removed_members_head() {
    let large = MembershipLimits { fanout_max_members: 2, ..LIMITS };
    let (kv, store) = mem_store(0);
    for name in ["a", "b", "c", "d"] {
        store.create_user(name, &format!("hash-{name}"), 1).await.expect("create user");
    }
    let new_room = NewRoom {
        id: "r".into(),
        name: "r".into(),
        kind: RoomKind::Group,
        private: false,
        creator: "a".into(),
        members: named(&["a", "b", "c"]),
        ts: 1,
    };
    let (record, _) = store.create_room(new_room, large).await.expect("create room");
    assert_eq!(record.large_since, Some(1));
    let epoch = store.claim_room("r", "node-1").await.expect("claim");
    let ks = store.keyspace().clone();
    let mut seq = 3;
    let cases = [
        (EntryKind::Role, "b", "admin", None, vec![ks.member("r", "b")]),
        (EntryKind::Mute, "c", "", Some(10), vec![ks.member("r", "c")]),
        (EntryKind::Kick, "c", "spam", None, vec![ks.member("r", "c"), ks.member_of("c", "r"), ks.user_head("c")]),
        (EntryKind::Ban, "d", "", None, vec![ks.ban("r", "d")]),
        (EntryKind::Unban, "d", "", None, vec![ks.ban("r", "d")]),
    ];
    for (kind, user, body, until, mut keys) in cases {
        let before = kv.snapshot().await;
        let mut request = AppendRequest { limits: large, ..moderation("r", epoch, kind, "a", user, body) };
        request.details.until = until;
        let done = store.append(request).await.expect("moderation");
        seq += 1;
        assert_eq!(done.delivery.recipients, Recipients::Unnamed, "{kind:?}");
        keys.extend([ks.room_log("r", seq), ks.room_head("r")]);
        keys.sort();
        assert_eq!(changed_keys(&before, &kv.snapshot().await), keys, "{kind:?}");
    }
    assert_eq!(store.members("r").await.unwrap(), named(&["a", "b"]));
    assert!(store.rooms_of("c").await.unwrap().is_empty());
}

/// `mem` values written before roles (the join seq alone) take their role from the room: its
/// creator owns a group room, as the SQLite migration decides, and moderates it.
#[tokio::test]
async fn memberships_from_before_roles_take_their_role_from_the_room() {
    let (kv, store) = mem_store(0);
    let epoch = setup(&store, "r", &named(&["a", "b", "c"])).await;
    let seq = store.append(text("r", epoch, "b", "m1", "hi")).await.expect("send").delivery.entry.seq;
    let ks = store.keyspace().clone();
    kv.transact("downgrade", |t, _| {
        let ks = ks.clone();
        async move {
            for (join_seq, user) in [(1, "a"), (2, "b"), (3, "c")] {
                t.set(&ks.member("r", user), &super::values::encode_u64(join_seq));
            }
            Ok(())
        }
    })
    .await
    .expect("downgrade");
    let role = |user: &'static str| {
        let store = &store;
        async move { store.rooms_of(user).await.expect("rooms of")[0].role }
    };
    assert_eq!((role("a").await, role("b").await), (protocol::Role::Owner, protocol::Role::Member));
    let err = store.append(moderation("r", epoch, EntryKind::Kick, "b", "a", "")).await.unwrap_err();
    assert!(matches!(err, StoreError::NotAllowed(_)), "{err:?}");
    store.append(change("r", epoch, EntryKind::Delete, "a", "d1", seq, "")).await.expect("the owner deletes");
    let mut mute = moderation("r", epoch, EntryKind::Mute, "a", "b", "");
    mute.details.until = Some(1_000);
    store.append(mute).await.expect("mute");
    assert_eq!(role("b").await, protocol::Role::Member, "a mute keeps the role");
    let err = store.append(text("r", epoch, "b", "m2", "let me talk")).await.unwrap_err();
    assert!(matches!(err, StoreError::NotAllowed(_)), "{err:?}");
    store.append(moderation("r", epoch, EntryKind::Kick, "a", "c", "")).await.expect("the owner kicks");
    assert_eq!(store.members("r").await.unwrap(), named(&["a", "b"]));
}

/// A batch that ends with a kick, whose commit reports an unknown result: the kicked member's
/// message and the kick itself are each recovered with the kicked member among the recipients,
/// though they are no longer a member when the batch is retried.
#[tokio::test]
async fn a_batch_with_a_kick_under_an_unknown_result_recovers_the_kicked_members_cursors() {
    let (kv, store) = mem_store(0);
    let epoch = setup(&store, "r", &named(&["a", "b", "c"])).await;
    kv.report_unknown_results(&["append batch"]);
    let batch = vec![text("r", epoch, "c", "m1", "bye?"), moderation("r", epoch, EntryKind::Kick, "a", "c", "")];
    let outcomes = store.append_batch(batch).await;
    assert_eq!(kv.unknown_results_reported(), 1);
    for outcome in outcomes {
        let delivery = outcome.expect("applied").delivery;
        let mut users: Vec<&str> = delivery.recipients.users().collect();
        users.sort_unstable();
        assert_eq!(users, ["a", "b", "c"], "{:?}", delivery.entry.kind);
    }
    assert_eq!(store.members("r").await.unwrap(), named(&["a", "b"]));
    assert_eq!(store.room("r").await.unwrap().unwrap().last_seq, 5, "written once");
}

/// The keys of the media families in the map.
fn media_keys(ks: &Keyspace, snapshot: &BTreeMap<Vec<u8>, Vec<u8>>, owner: &str, id: &str) -> Vec<&'static str> {
    let mut found = Vec::new();
    let waiting = ks.media_waiting_before(u64::MAX);
    for key in snapshot.keys() {
        if *key == ks.media(id) {
            found.push("media");
        } else if *key == ks.media_of(owner, id) {
            found.push("mown");
        } else if *key == ks.media_usage(owner) {
            found.push("mused");
        } else if waiting.contains(key) && ks.media_waiting_entry(key).is_ok_and(|(_, found)| found == id) {
            found.push("mwait");
        } else if *key == ks.media_doomed(id) {
            found.push("mdoom");
        }
    }
    found.sort_unstable();
    found
}

/// Each state of an upload has exactly its index keys: waiting while uploading or ready, none
/// while attached, doomed once doomed; the usage key goes with the last byte counted, and a
/// dropped record leaves no key behind.
#[tokio::test]
async fn media_index_keys_follow_the_records_state() {
    let (kv, store) = mem_store(0);
    let epoch = setup(&store, "r", &named(&["a"])).await;
    let ks = store.keyspace().clone();
    let keys = |id: &'static str| {
        let (kv, ks) = (&kv, &ks);
        async move { media_keys(ks, &kv.snapshot().await, "a", id) }
    };
    store.reserve_media(upload("m1", "a", 10, 5), 100).await.expect("reserve");
    assert_eq!(keys("m1").await, ["media", "mown", "mused", "mwait"]);
    let ready = crate::MediaRecord { state: crate::MediaState::Ready, ..upload("m1", "a", 8, 5) };
    store.complete_media(ready.clone()).await.expect("complete");
    assert_eq!(keys("m1").await, ["media", "mown", "mused", "mwait"]);
    assert_eq!(store.media_usage("a").await, Ok(8));

    let mut request = text("r", epoch, "a", "t1", "");
    request.details.attachments = vec![ready.attachment()];
    let seq = store.append(request).await.expect("append").delivery.entry.seq;
    assert_eq!(keys("m1").await, ["media", "mown", "mused"], "an attached upload is no candidate");
    let delete = change("r", epoch, EntryKind::Delete, "a", "d1", seq, "");
    store.append(delete).await.expect("delete");
    assert_eq!(keys("m1").await, ["mdoom", "media", "mown"], "doomed: nothing counted, the collector's");
    assert_eq!(store.media_usage("a").await, Ok(0));
    store.drop_media(&["m1".into()]).await.expect("drop");
    assert!(keys("m1").await.is_empty(), "a dropped record left keys behind");

    // Dropping an upload that never finished frees its bytes with its keys.
    store.reserve_media(upload("m2", "a", 10, 5), 100).await.expect("reserve");
    store.drop_media(&["m2".into()]).await.expect("drop");
    assert!(keys("m2").await.is_empty(), "a dropped upload left keys behind");
}

/// The collector dooms at most `DOOM_PER_PASS` stale uploads per call, oldest first, and the
/// next call the rest: one call's transaction stays small however many went stale.
#[tokio::test]
async fn the_collector_dooms_a_bounded_number_per_pass() {
    use super::media::DOOM_PER_PASS;
    let (_, store) = mem_store(0);
    setup(&store, "r", &named(&["a"])).await;
    let total = DOOM_PER_PASS + 5;
    for n in 0..total {
        store.reserve_media(upload(&format!("m{n:04}"), "a", 1, n as u64), u64::MAX).await.expect("reserve");
    }
    let first = store.media_garbage(u64::MAX, u32::MAX).await.expect("garbage");
    assert_eq!(first.len(), DOOM_PER_PASS);
    // The oldest went first (ids were given in creation order).
    assert_eq!(first.last().map(|m| m.id.clone()), Some(format!("m{:04}", DOOM_PER_PASS - 1)));
    assert_eq!(store.media_usage("a").await, Ok(5));
    let second = store.media_garbage(u64::MAX, u32::MAX).await.expect("garbage");
    assert_eq!(second.len(), total);
    assert_eq!(store.media_usage("a").await, Ok(0));
}
