//! The FoundationDB backend (cargo feature `fdb`): the store for multi-host deployments.
//!
//! This file is only the adapter between the store logic and the `foundationdb` crate: the key
//! layout, the value codec, the limits and every operation live in `store::fdb_keys`, which
//! compiles and is tested in every build. Here:
//!
//! - [`boot_network`] starts FoundationDB's client network thread, once per process; the
//!   returned [`NetworkGuard`] must live until the process exits and be dropped on the way out
//!   (the node keeps it in `main`).
//! - [`FdbStore::open`] opens the cluster named by [`FdbOptions`] and gives every transaction
//!   the configured timeout and retry limit (FoundationDB's defaults are "forever").
//! - [`FdbKv`] runs each operation in `Database::run`, FoundationDB's retry loop: retryable
//!   errors (conflicts, recoveries, `commit_unknown_result`) run the attempt again, with
//!   `maybe_committed` passed on so writes recognise their own earlier commit; an answer such as
//!   `NotMember` ends the loop without committing.
//! - FoundationDB errors become [`StoreError::Unavailable`] (retryable, timeouts, an unreachable
//!   cluster) or [`StoreError::Backend`], with FoundationDB's code and text. Nothing here panics
//!   on bad input or a failing cluster.
//!
//! Architecture Invariant: this is the only file of palaver that names the `foundationdb`
//! crate.
//!
//! Nothing in this file has run against a FoundationDB server on the machines palaver is built
//! on (no server or client library can be installed there): it is type-checked and linted, and
//! its tests run wherever `FDB_CLUSTER_FILE` names a cluster. docs/STORAGE.md §Verification.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use async_trait::async_trait;
use foundationdb::api::{FdbApiBuilder, NetworkAutoStop};
use foundationdb::options::{DatabaseOption, StreamingMode, TransactionOption};
use foundationdb::{Database, FdbBindingError, FdbError, RangeOption, RetryableTransaction};

use super::fdb_keys::kv::{Attempt, KvDb, KvTxn, TxnError, TxnResult};
use super::fdb_keys::limits::fdb_error_message;
pub use super::fdb_keys::FdbOptions;
use super::fdb_keys::{KeyRange, Keyspace, KvStore};
use super::{StoreError, StoreResult};

/// The FoundationDB store: the shared store logic over a FoundationDB database.
pub type FdbStore = KvStore<FdbKv>;

/// Proof that FoundationDB's client network runs in this process, and the means to stop it.
///
/// Keep it until the process exits, then drop it: dropping stops the network thread and waits
/// for it, which libfdb_c requires before exit (a process that exits with the thread still
/// running may crash in libfdb_c's own teardown). Every [`FdbStore`] must be dropped first.
/// A process can start the network only once, so there is at most one guard.
pub struct NetworkGuard {
    _stop: NetworkAutoStop,
}

impl std::fmt::Debug for NetworkGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetworkGuard")
    }
}

/// Whether this process has tried to start the network. FoundationDB allows selecting the API
/// version and setting up the network once per process, even after a failure, so a second
/// call is an error rather than a second try.
static NETWORK_STARTED: OnceLock<()> = OnceLock::new();

/// Start FoundationDB's client network, once per process.
///
/// Returns the [`NetworkGuard`] that must be kept alive until exit and dropped on exit. Fails
/// with [`StoreError::Backend`] when called a second time, or when libfdb_c does not support
/// the client API version palaver was built for (7.3: libfdb_c must be 7.3 or newer, and match
/// the cluster's minor version).
pub fn boot_network() -> StoreResult<NetworkGuard> {
    let mut first = false;
    NETWORK_STARTED.get_or_init(|| first = true);
    if !first {
        return Err(StoreError::Backend(
            "fdb: the client network was already started in this process; share the first NetworkGuard".into(),
        ));
    }
    let builder = FdbApiBuilder::default().build().map_err(|e| fdb_error(e, "selecting the client API version"))?;
    // SAFETY: `boot` requires that the returned `NetworkAutoStop` is dropped before the process
    // exits (or that the process aborts). It is owned by the `NetworkGuard`, whose contract
    // (above) passes that duty on to the caller; the node drops it at the end of `main`.
    let stop = unsafe { builder.boot() }.map_err(|e| fdb_error(e, "starting the client network"))?;
    tracing::info!("fdb client network started");
    Ok(NetworkGuard { _stop: stop })
}

fn fdb_error(e: FdbError, doing: &str) -> StoreError {
    fdb_error_message(e.code(), e.is_retryable(), e.message(), doing)
}

/// Undo the wrapping `Database::run` needs: a [`StoreError`] the logic returned comes back as
/// it was; a FoundationDB error is sorted by [`fdb_error_message`].
fn binding_error(e: FdbBindingError, doing: &str) -> StoreError {
    if let FdbBindingError::CustomError(inner) = &e {
        if let Some(store_error) = inner.downcast_ref::<StoreError>() {
            return store_error.clone();
        }
    }
    match e.get_fdb_error() {
        Some(fdb) => fdb_error(fdb, doing),
        None => StoreError::Backend(format!("fdb: {doing}: {e}")),
    }
}

/// One attempt of a FoundationDB transaction, as the store logic sees it.
#[derive(Clone)]
pub struct FdbTxn(RetryableTransaction);

#[async_trait]
impl KvTxn for FdbTxn {
    type Error = FdbError;

    async fn get(&self, key: &[u8]) -> TxnResult<Option<Vec<u8>>, FdbError> {
        let value = self.0.get(key, false).await.map_err(TxnError::Kv)?;
        Ok(value.map(|v| v.to_vec()))
    }

    async fn get_many(&self, keys: &[Vec<u8>]) -> TxnResult<Vec<Option<Vec<u8>>>, FdbError> {
        // Each `get` sends its request when called, so issuing them all before awaiting any
        // costs one round trip for the lot.
        let pending: Vec<_> = keys.iter().map(|key| self.0.get(key, false)).collect();
        let mut values = Vec::with_capacity(pending.len());
        for read in pending {
            values.push(read.await.map_err(TxnError::Kv)?.map(|v| v.to_vec()));
        }
        Ok(values)
    }

    async fn get_range(
        &self,
        range: &KeyRange,
        limit: Option<usize>,
        reverse: bool,
    ) -> TxnResult<Vec<(Vec<u8>, Vec<u8>)>, FdbError> {
        // FoundationDB reads "limit 0" as "no limit".
        if limit == Some(0) || range.is_empty() {
            return Ok(Vec::new());
        }
        let mut option = RangeOption {
            limit,
            reverse,
            mode: StreamingMode::WantAll,
            ..RangeOption::from((range.begin.clone(), range.end.clone()))
        };
        let mut rows = Vec::new();
        let mut iteration = 1;
        loop {
            let batch = self.0.get_range(&option, iteration, false).await.map_err(TxnError::Kv)?;
            rows.extend(batch.iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec())));
            // Continues after the last key of this batch (paging by key, never by offset) and
            // counts the batch against the limit.
            match option.next_range(&batch) {
                Some(next) => option = next,
                None => break,
            }
            iteration += 1;
        }
        Ok(rows)
    }

    fn set(&self, key: &[u8], value: &[u8]) {
        self.0.set(key, value);
    }

    fn clear(&self, key: &[u8]) {
        self.0.clear(key);
    }

    fn clear_range(&self, range: &KeyRange) {
        self.0.clear_range(&range.begin, &range.end);
    }
}

/// A FoundationDB database with palaver's transaction bounds.
pub struct FdbKv {
    db: Database,
    timeout_ms: i32,
    retry_limit: i32,
    /// Transactions run and attempts made: the difference is the retries (conflicts, mostly).
    transactions: AtomicU64,
    attempts: AtomicU64,
    /// Budgets given after the first (see `CONTENTION_BUDGETS`).
    extra_budgets: AtomicU64,
}

impl FdbKv {
    /// (transactions, attempts) since the store was opened: how often contention made a
    /// transaction run again.
    pub fn retry_counts(&self) -> (u64, u64) {
        (self.transactions.load(Ordering::Relaxed), self.attempts.load(Ordering::Relaxed))
    }

    /// How many times a transaction got a fresh budget because contention spent one.
    pub fn extra_budgets(&self) -> u64 {
        self.extra_budgets.load(Ordering::Relaxed)
    }
}

impl KvDb for FdbKv {
    type Txn = FdbTxn;
    const NAME: &'static str = "fdb";

    fn transact<'a, T, F, Fut>(
        &'a self,
        doing: &'static str,
        attempt: F,
    ) -> impl Future<Output = StoreResult<T>> + Send + 'a
    where
        T: Send + 'a,
        F: Fn(Self::Txn, Attempt) -> Fut + Send + Sync + 'a,
        Fut: Future<Output = TxnResult<T, FdbError>> + Send + 'a,
    {
        let (timeout_ms, retry_limit) = (self.timeout_ms, self.retry_limit);
        self.transactions.fetch_add(1, Ordering::Relaxed);
        let (attempts, extra_budgets) = (&self.attempts, &self.extra_budgets);
        async move {
            let attempt = &attempt;
            let mut budgets = 0;
            loop {
                budgets += 1;
                let attempts_in_budget = &AtomicU32::new(0);
                // A budget after the first follows one that ran out mid-attempt, possibly while
                // committing: the store logic looks for its own commit first.
                let after_a_budget = budgets > 1;
                let outcome = self
                    .db
                    .run(|trx, maybe_committed| async move {
                        attempts.fetch_add(1, Ordering::Relaxed);
                        // Since API 610 a retry keeps both options (and the timeout's clock), so
                        // setting them on the first attempt bounds the whole budget, retries
                        // included.
                        let first = attempts_in_budget.fetch_add(1, Ordering::Relaxed) == 0;
                        if first {
                            trx.set_option(TransactionOption::Timeout(timeout_ms))?;
                            trx.set_option(TransactionOption::RetryLimit(retry_limit))?;
                        }
                        let maybe_committed = bool::from(maybe_committed) || (first && after_a_budget);
                        match attempt(FdbTxn(trx), Attempt { maybe_committed }).await {
                            Ok(value) => Ok(value),
                            // Retried by `run` when FoundationDB says so.
                            Err(TxnError::Kv(e)) => Err(FdbBindingError::from(e)),
                            // An answer: `run` returns it without committing.
                            Err(TxnError::Store(e)) => Err(FdbBindingError::new_custom_error(Box::new(e))),
                        }
                    })
                    .await;
                let retried = attempts_in_budget.load(Ordering::Relaxed) > 1;
                match outcome {
                    // The budget ran out after attempts the database answered (with conflicts,
                    // mostly): it is alive and busy, not gone, so contention gets a fresh budget
                    // (see `CONTENTION_BUDGETS`). A database that answers nothing times out on
                    // the first attempt and is reported at once.
                    Err(e) if retried && budgets < CONTENTION_BUDGETS && is_timeout(&e) => {
                        extra_budgets.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Ok(value) => return Ok(value),
                    Err(e) => {
                        let error = binding_error(e, doing);
                        if matches!(error, StoreError::Unavailable(_)) {
                            tracing::warn!(doing, %error, budgets, "fdb transaction gave up");
                        }
                        return Err(error);
                    }
                }
            }
        }
    }
}

/// How many times `transaction_timeout_ms` a transaction may spend when every budget ran out
/// on retries the database asked for. Appends to one room, or to rooms sharing a member,
/// conflict on the room's head or the member's log head and are retried with FoundationDB's
/// growing back-off; on a busy or slow cluster one of several contenders can lose often enough
/// to spend a whole budget (bench/findings.md). Contention is not unavailability: the client
/// should get its ack, late, rather than an error.
const CONTENTION_BUDGETS: u32 = 6;

/// FoundationDB's `transaction_timed_out` (1031).
fn is_timeout(e: &FdbBindingError) -> bool {
    e.get_fdb_error().is_some_and(|fdb| fdb.code() == 1031)
}

impl KvStore<FdbKv> {
    /// Open the cluster named by `options` (validated first). Takes the [`NetworkGuard`] as
    /// proof that the network runs. Does not contact the cluster: call [`Self::ping`] for a
    /// start-up check that fails fast when it is unreachable.
    pub fn open(options: &FdbOptions, _network: &NetworkGuard) -> StoreResult<FdbStore> {
        options.validate().map_err(|e| StoreError::Backend(format!("fdb options: {e}")))?;
        let db = Database::new(options.cluster_file_str()).map_err(|e| fdb_error(e, "opening the cluster file"))?;
        // Defaults for every transaction of this handle too, so nothing can run unbounded.
        db.set_option(DatabaseOption::TransactionTimeout(options.timeout_option()))
            .map_err(|e| fdb_error(e, "setting the transaction timeout"))?;
        db.set_option(DatabaseOption::TransactionRetryLimit(options.retry_limit_option()))
            .map_err(|e| fdb_error(e, "setting the transaction retry limit"))?;
        let kv = FdbKv {
            db,
            timeout_ms: options.timeout_option(),
            retry_limit: options.retry_limit_option(),
            transactions: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            extra_budgets: AtomicU64::new(0),
        };
        Ok(KvStore::new(kv, Keyspace::new(&options.subspace_prefix), options.user_log_max_entries))
    }

    /// One read under the configured timeout: `Ok` when the cluster answers, else
    /// [`StoreError::Unavailable`] naming the FoundationDB error (`transaction_timed_out`, 1031,
    /// when no coordinator can be reached).
    pub async fn ping(&self) -> StoreResult<()> {
        let root = self.keyspace().root().to_vec();
        let root = &root;
        self.db()
            .transact("reaching the cluster", |t, _| async move {
                t.get(root).await?;
                Ok(())
            })
            .await
    }

    /// Remove every key of this store's subspace. For tests, which each use a subspace of their
    /// own; never called by the node.
    #[cfg(test)]
    async fn clear_subspace(&self) -> StoreResult<()> {
        let everything = self.keyspace().everything();
        let everything = &everything;
        self.db()
            .transact("clearing the subspace", |t, _| async move {
                t.clear_range(everything);
                Ok(())
            })
            .await
    }
}

#[cfg(all(test, feature = "fdb"))]
mod tests {
    //! The conformance suite against a real FoundationDB cluster, when `FDB_CLUSTER_FILE` names
    //! one; each case runs in a random subspace of its own, cleared afterwards. Without a
    //! cluster each case prints why it skipped and passes. These tests link libfdb_c, so they
    //! build only where it is installed.

    use std::future::Future;
    use std::path::PathBuf;
    use std::pin::pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Wake, Waker};
    use std::thread::Thread;

    use super::*;
    use crate::conformance::Fixture;
    use crate::fdb_keys::tuple::TupleWriter;

    /// The process's network guard, dropped at exit by [`stop_network_at_exit`].
    static NETWORK: Mutex<Option<NetworkGuard>> = Mutex::new(None);

    extern "C" {
        /// The C library's `atexit`: a test binary has no `main` of ours to drop the guard in.
        fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
    }

    /// Stops the network on a thread of its own: `exit` has already destroyed the main thread's
    /// thread-locals when it runs `atexit` handlers, and libfdb_c's stop logs a trace event
    /// through one of its own (a SIGSEGV at every exit, when stopped on the main thread).
    extern "C" fn stop_network_at_exit() {
        let guard = NETWORK.lock().unwrap_or_else(|p| p.into_inner()).take();
        let stopped = std::thread::spawn(move || drop(guard)).join();
        if stopped.is_err() {
            eprintln!("stopping the fdb client network panicked");
        }
    }

    fn cluster_file() -> Option<PathBuf> {
        std::env::var_os("FDB_CLUSTER_FILE").filter(|v| !v.is_empty()).map(PathBuf::from)
    }

    fn print_skip(case: &str) {
        println!(
            "SKIPPED: fdb conformance ({case}) — FDB_CLUSTER_FILE is not set (no FoundationDB cluster on this machine)"
        );
    }

    /// A store in a fresh random subspace, on the process's one network.
    fn open_test_store(cluster_file: PathBuf) -> Arc<FdbStore> {
        open_test_store_with(cluster_file, FdbOptions::default().transaction_timeout_ms)
    }

    fn open_test_store_with(cluster_file: PathBuf, transaction_timeout_ms: u64) -> Arc<FdbStore> {
        let mut network = NETWORK.lock().unwrap_or_else(|p| p.into_inner());
        if network.is_none() {
            *network = Some(boot_network().expect("start the fdb client network"));
            // SAFETY: registers a plain `extern "C" fn` with no arguments, as atexit expects.
            let registered = unsafe { atexit(stop_network_at_exit) };
            assert_eq!(registered, 0, "atexit refused the network stop");
        }
        let options = FdbOptions {
            cluster_file: Some(cluster_file),
            subspace_prefix: format!("palaver-test-{:016x}", rand::random::<u64>()),
            transaction_timeout_ms,
            ..FdbOptions::default()
        };
        let guard = network.as_ref().expect("network started above");
        Arc::new(FdbStore::open(&options, guard).expect("open the fdb store"))
    }

    /// Drive a future on the current thread. FoundationDB's futures are completed by its own
    /// network thread, so they need no async runtime; this lets `Drop` clear a subspace.
    fn block_on<T>(future: impl Future<Output = T>) -> T {
        struct ThreadWaker(Thread);
        impl Wake for ThreadWaker {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        loop {
            if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
                return value;
            }
            std::thread::park();
        }
    }

    /// Clears the case's subspace when the case ends, passed or failed.
    struct ClearOnDrop(Arc<FdbStore>);

    impl Drop for ClearOnDrop {
        fn drop(&mut self) {
            let store = Arc::clone(&self.0);
            let cleared = std::thread::spawn(move || block_on(store.clear_subspace())).join();
            if !matches!(cleared, Ok(Ok(()))) {
                eprintln!("could not clear the test subspace of {:?}", self.0.keyspace());
            }
        }
    }

    async fn fresh_store() -> Fixture {
        let path = cluster_file().expect("checked by fdb_or_skip");
        let store = open_test_store(path);
        store.ping().await.expect("the cluster in FDB_CLUSTER_FILE answers");
        Fixture::with_guard(Arc::clone(&store) as Arc<dyn crate::Store>, ClearOnDrop(store))
    }

    /// Used as the conformance macro's constructor expression: it is evaluated at the start of
    /// each generated test, so without a cluster its `return` ends that test (after saying why)
    /// before any store is built.
    macro_rules! fdb_or_skip {
        () => {{
            if cluster_file().is_none() {
                print_skip(module_path!());
                return;
            }
            fresh_store
        }};
    }

    crate::conformance::conformance_tests!(fdb_or_skip!());

    /// The key encoding is FoundationDB's tuple encoding: tools and other bindings read palaver's
    /// keys. Needs no cluster (but, like every test here, libfdb_c to link).
    #[test]
    fn keys_match_the_tuple_layer_of_the_foundationdb_crate() {
        use foundationdb::tuple::pack;
        for n in [0u64, 1, 255, 256, 65_535, 65_536, 1 << 32, u64::MAX] {
            assert_eq!(TupleWriter::default().uint(n).into_bytes(), pack(&(n,)), "{n}");
        }
        for s in ["", "palaver", "a\0b", "zoë", "\0\0"] {
            assert_eq!(TupleWriter::default().str(s).into_bytes(), pack(&(s,)), "{s:?}");
        }
        let ks = Keyspace::new("palaver");
        assert_eq!(ks.user_log("bob", 42), pack(&("palaver", "ulog", "bob", 42u64)));
        assert_eq!(ks.dedup("r", "a", "m1"), pack(&("palaver", "dedup", "r", "a", "m1")));
    }

    /// Appends that contend (eight tasks on one room, as two owners during a placement change
    /// would, and rooms sharing a member) all commit, on the `ssd` engine too; prints how many
    /// attempts an append took, which is how the retry policy was chosen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn contended_appends_retry_until_they_commit() {
        let Some(path) = cluster_file() else {
            print_skip("contention");
            return;
        };
        const TASKS: usize = 8;
        const EACH: usize = 50;
        let store = open_test_store(path);
        let _clear = ClearOnDrop(Arc::clone(&store));
        let fixture: Arc<dyn crate::Store> = store.clone();
        let epoch = crate::conformance::contention_room(fixture.as_ref(), "r").await;
        let (transactions_before, attempts_before) = store.db().retry_counts();
        let started = std::time::Instant::now();
        contend(&fixture, epoch, TASKS, EACH).await;
        let (transactions, attempts) = store.db().retry_counts();
        let (transactions, attempts) = (transactions - transactions_before, attempts - attempts_before);
        println!(
            "fdb contention: {TASKS} tasks x {EACH} appends to one room: {transactions} transactions, {attempts} attempts \
             ({:.2} attempts per append), {:.1} ms per append on average",
            attempts as f64 / transactions as f64,
            started.elapsed().as_secs_f64() * 1000.0 / (TASKS * EACH) as f64,
        );
        assert_eq!(transactions, (TASKS * EACH) as u64);
    }

    /// `tasks` tasks each appending `each` texts to room `r` at once; every append must commit.
    async fn contend(store: &Arc<dyn crate::Store>, epoch: crate::Epoch, tasks: usize, each: usize) {
        let mut running = Vec::new();
        for task in 0..tasks {
            let store = Arc::clone(store);
            running.push(tokio::spawn(async move {
                for n in 0..each {
                    let request = crate::conformance::contention_text("r", epoch, &format!("t{task}-{n}"));
                    store.append(request).await.expect("a contended append commits");
                }
            }));
        }
        for task in running {
            task.await.expect("task");
        }
    }

    /// With a transaction timeout short enough that contention spends it (1 s, where eight
    /// contenders on one room take several attempts each), every append still commits: a
    /// budget spent on conflicts is followed by a fresh one. Prints how many were needed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn contention_that_outlasts_the_timeout_still_commits() {
        let Some(path) = cluster_file() else {
            print_skip("contention past the timeout");
            return;
        };
        const TASKS: usize = 8;
        const EACH: usize = 25;
        let store = open_test_store_with(path, 1_000);
        let _clear = ClearOnDrop(Arc::clone(&store));
        let fixture: Arc<dyn crate::Store> = store.clone();
        let epoch = crate::conformance::contention_room(fixture.as_ref(), "r").await;
        contend(&fixture, epoch, TASKS, EACH).await;
        let (history, _) = fixture.history("r", crate::HistoryPage::After(0), 1_000).await.expect("history");
        let texts = history.iter().filter(|e| e.kind == protocol::EntryKind::Text).count();
        assert_eq!(texts, TASKS * EACH, "each append once");
        println!(
            "fdb contention past a 1 s timeout: {TASKS} tasks x {EACH} appends, {} fresh budgets",
            store.db().extra_budgets()
        );
    }

    #[test]
    fn a_second_boot_is_an_error_not_a_panic() {
        let Some(path) = cluster_file() else {
            print_skip("boot");
            return;
        };
        drop(open_test_store(path));
        assert!(matches!(boot_network(), Err(StoreError::Backend(m)) if m.contains("already started")));
    }
}
