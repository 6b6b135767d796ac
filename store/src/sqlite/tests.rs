//! The conformance suite against SQLite, and what only SQLite has: a file that outlives the
//! process, several processes on one file, group commit, schema versions, query plans.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{EntryKind, RoomKind};
use rusqlite::Connection;
use tempfile::TempDir;

use super::{amend, media, moderate, ops, schema, SqliteOptions, SqliteStore};
use crate::conformance::{conformance_tests, Fixture};
use crate::{AppendRequest, Epoch, HistoryPage, MembershipLimits, NewRoom, Recipients, Store, StoreError};

async fn fresh_store() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("palaver.db"))).expect("open");
    Fixture::with_guard(Arc::new(store), dir)
}

conformance_tests!(fresh_store);

const LIMITS: MembershipLimits =
    MembershipLimits { max_room_members: 1_000, max_rooms_per_user: 1_000, fanout_max_members: 100_000 };

fn options(dir: &TempDir) -> SqliteOptions {
    SqliteOptions::new(dir.path().join("palaver.db"))
}

fn text(room: &str, epoch: Epoch, from: &str, id: &str) -> AppendRequest {
    AppendRequest {
        room: room.into(),
        epoch,
        kind: EntryKind::Text,
        from: from.into(),
        id: id.into(),
        user: None,
        body: format!("body of {id}"),
        ts: 1,
        limits: LIMITS,
        details: crate::EntryDetails::default(),
        rules: crate::conformance::RULES,
    }
}

/// Users `names` and a room of them, claimed; returns the epoch.
async fn setup(store: &dyn Store, room: &str, names: &[&str]) -> Epoch {
    for name in names {
        store.create_user(name, "hash", 1).await.expect("create user");
    }
    let new_room = NewRoom {
        id: room.into(),
        name: room.into(),
        kind: RoomKind::Group,
        private: false,
        creator: names[0].into(),
        members: names.iter().map(|n| (*n).to_owned()).collect(),
        ts: 1,
    };
    store.create_room(new_room, LIMITS).await.expect("create room");
    store.claim_room(room, "node-1").await.expect("claim")
}

/// Wait for a condition that another thread will make true. Not a timing assertion: the bound
/// only turns a hang into a failure.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !condition() {
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// An acknowledged write is in the file: a new store on the same file (a restarted node) reads
/// it, and continues the room's seq and the user's cursor from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (seq, head) = {
        let store = SqliteStore::open(options(&dir)).expect("open");
        let epoch = setup(&store, "r", &["a", "b"]).await;
        let appended = store.append(text("r", epoch, "a", "m1")).await.expect("append");
        store.mark_read("b", "r", 3).await.expect("mark read");
        (appended.delivery.entry.seq, store.user_log_bounds("b").await.expect("bounds").head)
    };
    let store = SqliteStore::open(options(&dir)).expect("reopen");
    let (entries, _) = store.history("r", HistoryPage::After(0), 10).await.expect("history");
    assert_eq!(entries.last().map(|e| (e.seq, e.id.as_str())), Some((seq, "m1")));
    assert_eq!(store.user_log_bounds("b").await.expect("bounds").head, head);
    assert_eq!(store.rooms_of("b").await.expect("rooms")[0].read_seq, 3);
    let (_, epoch) = store.room_owner("r").await.expect("owner").expect("claimed");
    let epoch = {
        let next = store.claim_room("r", "node-2").await.expect("claim");
        assert!(next > epoch);
        next
    };
    let again = store.append(text("r", epoch, "a", "m1")).await.expect("retry");
    assert!(again.duplicate, "the dedup key survives a restart");
    let next = store.append(text("r", epoch, "b", "m2")).await.expect("append");
    assert_eq!(next.delivery.entry.seq, seq + 1);
    let Recipients::Logs(logs) = &next.delivery.recipients else { panic!("a small room fans out") };
    assert!(logs.contains(&("b".to_owned(), head + 1)), "{logs:?}");
}

/// Two stores on one file stand for two node processes on one host: their concurrent appends
/// to one room still get a dense seq, and every member's cursor stays dense.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_keep_seq_dense() {
    const TASKS_PER_STORE: usize = 4;
    const EACH: usize = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    let first: Arc<dyn Store> = Arc::new(SqliteStore::open(options(&dir)).expect("open"));
    let second: Arc<dyn Store> = Arc::new(SqliteStore::open(options(&dir)).expect("open again"));
    let epoch = setup(first.as_ref(), "r", &["a", "b"]).await;
    let start = second.room("r").await.expect("room").expect("visible to the other store").last_seq;

    let mut tasks = Vec::new();
    for (which, store) in [&first, &second].into_iter().enumerate() {
        for task in 0..TASKS_PER_STORE {
            let store = Arc::clone(store);
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for n in 0..EACH {
                    let from = if n % 2 == 0 { "a" } else { "b" };
                    let appended = store.append(text("r", epoch, from, &format!("s{which}-t{task}-{n}"))).await;
                    seqs.push(appended.expect("append").delivery.entry.seq);
                }
                seqs
            }));
        }
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    all.sort_unstable();
    let total = (2 * TASKS_PER_STORE * EACH) as u64;
    assert_eq!(all, (start + 1..=start + total).collect::<Vec<_>>());
    for store in [&first, &second] {
        assert_eq!(store.room("r").await.expect("room").expect("exists").last_seq, start + total);
        for user in ["a", "b"] {
            let log = store.user_log(user, 0, u32::MAX).await.expect("log");
            assert!(super::is_dense(log.iter().map(|e| e.cursor)), "{user}'s cursors");
            assert_eq!(log.len() as u64, start + total, "{user}'s log");
        }
    }
}

/// Requests queued while a commit is under way go into the next transaction together.
/// Deterministic: another connection holds the write lock, so the writer is parked in
/// `BEGIN IMMEDIATE` with the first request while the rest queue up behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_batches_queued_requests() {
    const QUEUED: u64 = 99;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(SqliteOptions { busy_timeout_ms: 120_000, ..options(&dir) }).expect("open"));
    let epoch = setup(store.as_ref(), "r", &["a"]).await;
    let before = store.stats();

    let blocker = Connection::open(dir.path().join("palaver.db")).expect("open blocker");
    blocker.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    let spawn_append = |id: String| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.append(text("r", epoch, "a", &id)).await })
    };
    let mut tasks = vec![spawn_append("first".into())];
    wait_until("the writer holds the first request", || store.stats().write_requests == before.write_requests + 1)
        .await;
    // The writer took the request off the queue; it cannot commit while the blocker holds the
    // lock, so everything sent now waits in the queue.
    tasks.extend((0..QUEUED).map(|n| spawn_append(format!("queued-{n}"))));
    wait_until("every request is queued", || store.stats().queued_writes as u64 == QUEUED).await;
    blocker.execute_batch("COMMIT").expect("release the write lock");

    for task in tasks {
        task.await.expect("task").expect("append");
    }
    let after = store.stats();
    assert_eq!(after.write_requests - before.write_requests, QUEUED + 1);
    // Two: one for the first request, one for the 99 queued behind it. A third is tolerated:
    // a tokio sender counts against the queue's capacity a moment before its value becomes
    // receivable, so a preempted sender can miss the drain and commit on its own.
    let transactions = after.write_transactions - before.write_transactions;
    assert!((2..=3).contains(&transactions), "{} requests took {transactions} transactions", QUEUED + 1);
    assert_eq!(store.room("r").await.expect("room").expect("exists").last_seq, 1 + QUEUED + 1);
}

/// Run `body` on a thread of its own inside a single-threaded runtime, as the rooms' appends
/// run (the appends say so by calling `append_batch_on_committing_thread`).
fn on_a_rooms_thread<T: Send + 'static>(body: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(body)
    })
    .join()
    .expect("the rooms' thread")
}

/// On the rooms' thread appends commit on that thread, without the writer thread, and the
/// appends of every task ready at the same time (each room's committer) share one transaction.
#[test]
fn appends_on_the_rooms_thread_commit_there_and_together() {
    const ROOMS: usize = 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(options(&dir)).expect("open"));
    let setup_store = Arc::clone(&store);
    let epoch = on_a_rooms_thread(async move { setup(setup_store.as_ref(), "r", &["a"]).await });
    let before = store.stats();

    let appending = Arc::clone(&store);
    let outcomes = on_a_rooms_thread(async move {
        let tasks: Vec<_> = (0..ROOMS)
            .map(|n| {
                let store = Arc::clone(&appending);
                tokio::spawn(async move {
                    store.append_batch_on_committing_thread(vec![text("r", epoch, "a", &format!("m{n}"))]).await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.extend(task.await.expect("task"));
        }
        outcomes
    });
    let seqs: Vec<u64> = outcomes.into_iter().map(|o| o.expect("append").delivery.entry.seq).collect();
    assert_eq!(seqs, (2..=ROOMS as u64 + 1).collect::<Vec<_>>(), "committed in the order submitted");
    let after = store.stats();
    assert_eq!(after.write_requests - before.write_requests, ROOMS as u64);
    assert_eq!(after.write_transactions - before.write_transactions, 1, "one transaction for every ready append");
    assert_eq!(after.inline_write_transactions - before.inline_write_transactions, 1, "committed on the rooms' thread");
}

/// SQLite's write lock held by another process (a second node on the same file) must not hold
/// up the rooms' thread: the batch goes to the writer thread, which waits for the lock, while
/// the rooms' thread goes on; the append commits once the lock is released.
#[test]
fn a_write_lock_held_elsewhere_sends_the_batch_to_the_writer_and_leaves_the_rooms_thread_free() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(SqliteOptions { busy_timeout_ms: 120_000, ..options(&dir) }).expect("open"));
    let setup_store = Arc::clone(&store);
    let epoch = on_a_rooms_thread(async move { setup(setup_store.as_ref(), "r", &["a"]).await });
    let before = store.stats();

    let blocker = Connection::open(dir.path().join("palaver.db")).expect("open blocker");
    blocker.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    let (free, thread_was_free) = std::sync::mpsc::channel();
    let (released, lock_released) = tokio::sync::oneshot::channel::<()>();
    let appending = Arc::clone(&store);
    let rooms_thread = std::thread::spawn(move || {
        on_a_rooms_thread(async move {
            let append = tokio::spawn(async move {
                appending.append_batch_on_committing_thread(vec![text("r", epoch, "a", "m1")]).await
            });
            // Blocked in `BEGIN` for the busy timeout, this thread would not get here.
            tokio::time::sleep(Duration::from_millis(100)).await;
            free.send(append.is_finished()).expect("report");
            lock_released.await.expect("release");
            append.await.expect("task")
        })
    });
    let finished_early = thread_was_free
        .recv_timeout(Duration::from_secs(60))
        .expect("the rooms' thread was blocked by another connection's write lock");
    assert!(!finished_early, "an append cannot commit while another connection holds the lock");
    blocker.execute_batch("COMMIT").expect("release the write lock");
    released.send(()).expect("signal");
    let outcomes = rooms_thread.join().expect("rooms' thread");
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes.into_iter().next().expect("one").expect("append").delivery.entry.seq, 2);
    let after = store.stats();
    assert_eq!(after.write_transactions - before.write_transactions, 1);
    assert_eq!(after.inline_write_transactions, before.inline_write_transactions, "committed by the writer thread");
}

/// A lock held beyond the busy timeout is `Unavailable` (retryable), not a fault, and the store
/// works again once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_beyond_the_timeout_is_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(SqliteOptions { busy_timeout_ms: 50, ..options(&dir) }).expect("open");
    let epoch = setup(&store, "r", &["a"]).await;
    let blocker = Connection::open(dir.path().join("palaver.db")).expect("open blocker");
    blocker.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    let err = store.append(text("r", epoch, "a", "m1")).await.expect_err("locked out");
    assert!(matches!(err, StoreError::Unavailable(_)), "got {err:?}");
    blocker.execute_batch("COMMIT").expect("release");
    let appended = store.append(text("r", epoch, "a", "m1")).await.expect("append after the lock is gone");
    assert!(!appended.duplicate, "the refused attempt wrote nothing");
    assert_eq!(store.stats().failed_transactions, 1);
}

/// A file of schema version 1 (before large rooms) opens, migrates in place, keeps its data, and
/// its rooms fan out on write until a join makes them large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_1_files_migrate_and_keep_their_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(options(&dir)).expect("open");
    let epoch = setup(&store, "r", &["a", "b"]).await;
    store.append(text("r", epoch, "a", "m1")).await.expect("append");
    drop(store);
    // Turn the file back into what version 1 wrote.
    let conn = Connection::open(dir.path().join("palaver.db")).expect("open raw");
    conn.execute_batch(
        "DROP TABLE media; DROP TABLE push_told; DROP TABLE push_clears; DROP TABLE webhooks; DROP TABLE webhook_outbox; DROP TABLE leases; DROP TABLE api_keys; DROP TABLE devices; DROP TABLE presence_notes; DROP TABLE reactions; DROP TABLE mentions; DROP TABLE bans; DROP TABLE blocks; \
         ALTER TABLE members DROP COLUMN notify; ALTER TABLE members DROP COLUMN notify_muted_until; ALTER TABLE members DROP COLUMN role; ALTER TABLE members DROP COLUMN muted_until; \
         ALTER TABLE rooms DROP COLUMN large_since; ALTER TABLE rooms DROP COLUMN topic; \
         ALTER TABLE rooms DROP COLUMN who_may_post; ALTER TABLE rooms DROP COLUMN who_may_invite; ALTER TABLE users DROP COLUMN deleted_ms; \
         PRAGMA user_version = 1;",
    )
    .expect("downgrade");
    drop(conn);

    let store = SqliteStore::open(options(&dir)).expect("open a version 1 file");
    let room = store.room("r").await.expect("room").expect("kept");
    assert_eq!((room.last_seq, room.large_since), (3, None));
    let (history, _) = store.history("r", HistoryPage::After(0), 10).await.expect("history");
    assert_eq!(history.len(), 3, "entries kept");
    let next = store.append(text("r", epoch, "b", "m2")).await.expect("append after the migration");
    assert!(matches!(next.delivery.recipients, Recipients::Logs(_)), "still fans out");
    store.create_user("c", "hash", 1).await.expect("user");
    let limits = MembershipLimits { fanout_max_members: 2, ..LIMITS };
    let join = AppendRequest {
        kind: EntryKind::Join,
        user: Some("c".into()),
        from: "c".into(),
        limits,
        ..text("r", epoch, "c", "j")
    };
    store.append(join).await.expect("join");
    assert_eq!(store.room("r").await.expect("room").expect("kept").large_since, Some(5));
    let version: i64 = Connection::open(dir.path().join("palaver.db"))
        .and_then(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))
        .expect("version");
    assert_eq!(version, schema::SCHEMA_VERSION);
}

/// A file of schema version 8 (before media) opens and migrates in place: its entries read back
/// without attachments, and uploads can be reserved, completed and attached to new messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_8_files_migrate_to_media() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(options(&dir)).expect("open");
    let epoch = setup(&store, "r", &["a", "b"]).await;
    store.append(text("r", epoch, "a", "m1")).await.expect("append");
    drop(store);
    // Turn the file back into what version 8 wrote.
    let conn = Connection::open(dir.path().join("palaver.db")).expect("open raw");
    conn.execute_batch("DROP TABLE media; ALTER TABLE entries DROP COLUMN attachments; PRAGMA user_version = 8;")
        .expect("downgrade");
    drop(conn);

    let store = SqliteStore::open(options(&dir)).expect("open a version 8 file");
    let (history, _) = store.history("r", HistoryPage::After(0), 10).await.expect("history");
    assert_eq!(history.len(), 3, "entries kept");
    assert!(history.iter().all(|e| e.attachments.is_empty()), "old entries carry no attachments");
    let upload = crate::MediaRecord {
        id: "m-1".into(),
        owner: "a".into(),
        name: "cat.png".into(),
        content_type: String::new(),
        size: 10,
        sha256: String::new(),
        width: None,
        height: None,
        thumbnail: None,
        created_ms: 5,
        state: crate::MediaState::Uploading,
    };
    store.reserve_media(upload.clone(), 100).await.expect("reserve");
    let ready = crate::MediaRecord { content_type: "image/png".into(), width: Some(4), height: Some(3), ..upload };
    store.complete_media(ready.clone()).await.expect("complete");
    let mut request = text("r", epoch, "a", "m2");
    request.details.attachments = vec![ready.attachment()];
    let sent = store.append(request).await.expect("append with an attachment");
    assert_eq!(sent.delivery.entry.attachments, vec![ready.attachment()]);
    let (history, _) = store.history("r", HistoryPage::After(3), 10).await.expect("history");
    assert_eq!(history[0].attachments, vec![ready.attachment()]);
    let stored = store.media("m-1").await.expect("media").expect("kept");
    assert_eq!(stored.state, crate::MediaState::Attached { room: "r".into(), seq: 4 });
    let version: i64 = Connection::open(dir.path().join("palaver.db"))
        .and_then(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))
        .expect("version");
    assert_eq!(version, schema::SCHEMA_VERSION);
}

/// A file written by a newer palaver is refused with an error that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(SqliteStore::open(options(&dir)).expect("open"));
    let conn = Connection::open(dir.path().join("palaver.db")).expect("open raw");
    conn.pragma_update(None, "user_version", schema::SCHEMA_VERSION + 1).expect("bump version");
    drop(conn);
    let err = SqliteStore::open(options(&dir)).expect_err("newer schema");
    let StoreError::Backend(message) = &err else { panic!("expected a backend error, got {err:?}") };
    let expected = format!("schema version {} is newer than this build", schema::SCHEMA_VERSION + 1);
    assert!(message.contains(&expected), "unclear error: {message}");
}

/// A SQLite file that palaver did not create is refused rather than written into.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_database_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("palaver.db");
    let conn = Connection::open(&path).expect("open raw");
    conn.execute_batch("CREATE TABLE notes (body TEXT)").expect("foreign table");
    drop(conn);
    let err = SqliteStore::open(SqliteOptions::new(&path)).expect_err("foreign file");
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("palaver did not create")), "got {err:?}");

    let conn = Connection::open(&path).expect("open raw");
    conn.pragma_update(None, "application_id", 42).expect("foreign id");
    drop(conn);
    let err = SqliteStore::open(SqliteOptions::new(&path)).expect_err("foreign application id");
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("another application")), "got {err:?}");
}

#[test]
fn invalid_options_name_the_key() {
    let err = SqliteStore::open(SqliteOptions { read_connections: 0, ..SqliteOptions::new("/tmp/x.db") })
        .expect_err("no readers");
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("`read_connections`")), "got {err:?}");
    let err = SqliteStore::open(SqliteOptions::new(":memory:")).expect_err("in memory");
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("`path`")), "got {err:?}");
}

/// Automatic retention keeps at least the newest `user_log_max_entries` entries of each log,
/// trims in steps of `TRIM_PERIOD`, and leaves no row below the floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_user_logs_automatically() {
    const MAX: u64 = 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(SqliteOptions { user_log_max_entries: MAX, ..options(&dir) }).expect("open");
    let epoch = setup(&store, "r", &["a"]).await;
    for n in 0..200 {
        store.append(text("r", epoch, "a", &format!("m{n}"))).await.expect("append");
        let bounds = store.user_log_bounds("a").await.expect("bounds");
        assert!(bounds.head - bounds.floor >= MAX.min(bounds.head), "kept fewer than {MAX}: {bounds:?}");
        assert!(bounds.head - bounds.floor < MAX + ops::TRIM_PERIOD, "kept too many: {bounds:?}");
    }
    let bounds = store.user_log_bounds("a").await.expect("bounds");
    assert_eq!(bounds.head, 201);
    assert_eq!(bounds.floor, 192 - MAX, "trimmed when the head reached 192");
    let log = store.user_log("a", 0, 1_000).await.expect("log");
    assert_eq!(log.first().map(|e| e.cursor), Some(bounds.floor + 1));
    assert_eq!(log.len() as u64, bounds.head - bounds.floor);

    let conn = Connection::open(dir.path().join("palaver.db")).expect("open raw");
    let rows: u64 = conn.query_row("SELECT count(*) FROM user_log", [], |r| r.get(0)).expect("count");
    assert_eq!(rows, bounds.head - bounds.floor, "rows left below the floor");
    let (history, _) = store.history("r", HistoryPage::After(0), 1_000).await.expect("history");
    assert_eq!(history.len(), 201, "room logs are not trimmed by user-log retention");
}

/// Every statement on a hot path is an index lookup or range scan, never a table scan.
#[test]
fn hot_queries_use_indexes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conn = schema::open_connection(&dir.path().join("palaver.db"), Duration::from_secs(5), false).expect("open");
    schema::prepare_database(&conn, Duration::from_secs(5)).expect("schema");
    // A partial index holds only the rows its query wants (the doomed media, say): scanning it
    // reads those rows and no others.
    let partial: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND sql LIKE '% WHERE %'")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("partial indexes");
    let media = media::hot_queries();
    let hot = [ops::HOT_QUERIES, amend::HOT_QUERIES, moderate::HOT_QUERIES].concat();
    for sql in hot.into_iter().chain(media.iter().map(String::as_str)) {
        let plan = query_plan(&conn, sql);
        // A subquery's own rows may be scanned (they were found through an index), and so may a
        // partial index; a table not.
        let table_scan = |step: &String| {
            step.starts_with("SCAN")
                && !step.starts_with("SCAN (subquery")
                && !partial.iter().any(|index| step.ends_with(&format!("USING INDEX {index}")))
        };
        assert!(!plan.iter().any(table_scan), "table scan in `{sql}`: {plan:?}");
        // Members are listed in join order, and read positions by name, with a sort of at most
        // `max_room_members` rows; everything else comes out of an index already ordered.
        if !sql.contains("ORDER BY m.joined_seq") && !sql.contains("ORDER BY u.name") {
            assert!(!plan.iter().any(|step| step.contains("TEMP B-TREE")), "sort in `{sql}`: {plan:?}");
        }
    }
    let dedup = query_plan(&conn, ops::HOT_QUERIES.iter().find(|s| s.contains("AND kind IN ('text'")).expect("dedup"));
    assert!(dedup.iter().any(|s| s.contains("entries_by_client_id")), "dedup misses its index: {dedup:?}");
}

fn query_plan(conn: &Connection, sql: &str) -> Vec<String> {
    let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("explain");
    let parameters = statement.parameter_count();
    let nulls: Vec<rusqlite::types::Null> = vec![rusqlite::types::Null; parameters];
    let rows = statement.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3)).expect("query");
    rows.collect::<Result<_, _>>().expect("plan")
}
