//! The threads that own the SQLite connections: one writer doing group commit, a few readers.
//!
//! SQLite calls block (on disk, on fsync, on another process's lock for up to the busy
//! timeout), so none of them runs on the node's async runtime (the rooms' thread, which exists to
//! commit, is the one exception: `inline`). The async side sends a job over a
//! bounded tokio channel (waiting when it is full: back-pressure) and awaits a oneshot reply.
//!
//! Writer: one thread, one connection. It takes the first queued job, then drains up to
//! `max_batch_requests` jobs or `max_batch_bytes` of payload without waiting, and runs them in
//! one `BEGIN IMMEDIATE` transaction with one `SAVEPOINT` per job, so one job's refusal
//! (not a member, fenced, …) rolls back only that job. Replies go out after `COMMIT` returns,
//! so nothing is acknowledged before it is durable. Under load the batch grows by itself: while
//! a commit syncs, new requests queue up and go into the next one.
//!
//! The writer's connection is shared with `inline`, which commits the rooms' appends on the
//! rooms' own thread whenever neither this thread nor another process holds the write lock;
//! what it cannot commit at once it queues here.
//!
//! Checkpointer: one thread that copies the WAL back into the database file (a `PASSIVE`
//! checkpoint, which never waits for readers or blocks the writer) a few times a second after
//! commits. The writer's own automatic checkpoint is off: it ran inside a commit whenever the
//! WAL passed 1,000 pages, which a message to a large room does quickly, and took 14% of the
//! writer's time in the fan-out profile (docs/BENCHMARKS.md). Here it runs on another core.
//!
//! Readers: a fixed set of threads, each owning a connection, all taking jobs from one shared
//! queue (so a slow read never holds up a fast one queued behind it on the same thread). WAL
//! lets them read a consistent snapshot while the writer commits. Dedicated threads rather
//! than `spawn_blocking` plus a connection pool: each connection keeps its statement cache warm
//! on one thread, the thread count is a fixed, configured limit instead of tokio's blocking
//! pool (shared with everything else in the process, up to 512 threads), and the store works
//! under any executor because the only runtime-facing parts are tokio's channels.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, ErrorCode};
use tokio::sync::{mpsc, oneshot};

use crate::{StoreError, StoreResult};

/// Attach what the store was doing to a SQLite error and sort it: a lock still held by another
/// connection after the busy timeout is [`StoreError::Unavailable`] (retryable); anything else
/// is [`StoreError::Backend`].
pub(super) trait Context<T> {
    fn ctx(self, doing: &str) -> StoreResult<T>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn ctx(self, doing: &str) -> StoreResult<T> {
        self.map_err(|e| sqlite_error(e, doing))
    }
}

pub(super) fn sqlite_error(e: rusqlite::Error, doing: &str) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(format!("sqlite: database still locked after the busy timeout ({doing}): {e}"))
        }
        _ => StoreError::Backend(format!("sqlite: {doing}: {e}")),
    }
}

/// Counters of the writer, for metrics and for the test that checks group commit batches.
#[derive(Debug, Default)]
pub(super) struct WriterCounters {
    pub transactions: AtomicU64,
    /// Of `transactions`, those committed on the rooms' thread (see `inline`).
    pub inline_transactions: AtomicU64,
    pub requests: AtomicU64,
    pub failed_transactions: AtomicU64,
    /// Committed deletes of messages and accounts: each asks the checkpointer to truncate the WAL.
    pub erasures: AtomicU64,
}

/// A write the writer thread runs inside a batch transaction.
pub(super) trait WriteJob: Send {
    /// Payload size, counted against `max_batch_bytes`.
    fn cost_bytes(&self) -> usize;
    /// Run the operation; `true` if it succeeded and its writes are to be kept.
    fn apply(&mut self, conn: &Connection) -> bool;
    /// Reply: the operation's own result if the batch committed, else the commit's error.
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
}

/// The one implementation of [`WriteJob`]: a closure, its result and where to send it.
pub(super) struct Job<T, F> {
    op: Option<F>,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
    cost_bytes: usize,
}

impl<T, F> Job<T, F> {
    pub(super) fn new(op: F, reply: oneshot::Sender<StoreResult<T>>, cost_bytes: usize) -> Self {
        Job { op: Some(op), result: None, reply, cost_bytes }
    }
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> StoreResult<T> + Send,
{
    fn cost_bytes(&self) -> usize {
        self.cost_bytes
    }

    fn apply(&mut self, conn: &Connection) -> bool {
        let result = match self.op.take() {
            Some(op) => op(conn),
            None => Err(StoreError::Backend("sqlite: write job applied twice".into())),
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), StoreError>) {
        let outcome = match committed {
            Ok(()) => self.result.unwrap_or_else(|| Err(StoreError::Backend("sqlite: write job never ran".into()))),
            Err(e) => Err(e),
        };
        // The caller may have given up waiting (its future was dropped); the write stands.
        let _ = self.reply.send(outcome);
    }
}

/// A read: runs on a reader thread with that thread's connection.
pub(super) type ReadJob = Box<dyn FnOnce(&mut Connection) + Send>;

/// Batch bounds for the writer.
#[derive(Debug, Clone, Copy)]
pub(super) struct BatchLimits {
    pub max_requests: usize,
    pub max_bytes: usize,
}

impl BatchLimits {
    /// Whether a batch of `requests` jobs and `bytes` of payload may take one more job.
    pub fn room_for(&self, requests: usize, bytes: usize) -> bool {
        requests < self.max_requests && bytes < self.max_bytes
    }
}

/// The writer thread's loop: until every sender is gone, take a batch and commit it.
///
/// The connection is shared with [`InlineWriter`](super::inline::InlineWriter), which commits
/// the rooms' appends on the rooms' thread while the lock is free; this thread holds it from
/// `BEGIN` to `COMMIT`.
pub(super) fn writer_loop(
    conn: Arc<Mutex<Connection>>,
    mut queue: mpsc::Receiver<Box<dyn WriteJob>>,
    limits: BatchLimits,
    counters: Arc<WriterCounters>,
) {
    let mut batch: Vec<Box<dyn WriteJob>> = Vec::with_capacity(limits.max_requests);
    while let Some(first) = queue.blocking_recv() {
        let mut bytes = first.cost_bytes();
        batch.push(first);
        // Take what is already queued, without waiting: waiting for more would add latency
        // when idle, and under load the queue refills while the previous commit syncs.
        while limits.room_for(batch.len(), bytes) {
            match queue.try_recv() {
                Ok(job) => {
                    bytes += job.cost_bytes();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let jobs = std::mem::take(&mut batch);
        counters.requests.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        let conn = lock_writer(&conn);
        match begin(&conn) {
            Ok(()) => commit_begun(conn, jobs, &counters, Committer::WriterThread),
            Err(e) => {
                drop(conn);
                fail_to_begin(jobs, e, &counters);
            }
        }
    }
    tracing::debug!("sqlite writer stopped: every sender is gone");
}

/// The shared writer connection. A panic while it was held left no transaction open
/// ([`commit_begun`] rolls back), so a poisoned lock is taken as it is.
pub(super) fn lock_writer(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `BEGIN IMMEDIATE`: takes the write lock now, waiting up to the connection's busy timeout for
/// another process's writer. A DEFERRED transaction would take it at its first write, and if
/// another process wrote in between, SQLite would have to fail it (SQLITE_BUSY_SNAPSHOT)
/// without waiting.
pub(super) fn begin(conn: &Connection) -> StoreResult<()> {
    conn.execute_batch("BEGIN IMMEDIATE").ctx("begin write transaction")
}

/// A batch whose `BEGIN` failed: every job gets `e` as its reply, and the failure is counted.
pub(super) fn fail_to_begin(jobs: Vec<Box<dyn WriteJob>>, e: StoreError, counters: &WriterCounters) {
    tracing::warn!(error = %e, requests = jobs.len(), "sqlite write batch could not start");
    counters.failed_transactions.fetch_add(1, Ordering::Relaxed);
    finish_all(jobs, Err(e));
}

/// Which thread runs a batch's transaction: it is counted as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Committer {
    WriterThread,
    /// The rooms' thread, through `inline`.
    RoomsThread,
}

/// Run a batch in the transaction just begun on the held connection and commit it (or roll it
/// back), then let the connection go and send every job its reply: a caller that hears back
/// finds the connection free. A panic (a failed debug assertion, a bug) drops the batch's
/// reply senders, so every caller in it gets an error instead of an ack, and the transaction
/// is rolled back. The counters are updated before anything replies, so a caller that got its
/// reply sees them counted.
pub(super) fn commit_begun(
    conn: MutexGuard<'_, Connection>,
    jobs: Vec<Box<dyn WriteJob>>,
    counters: &WriterCounters,
    committer: Committer,
) {
    let requests = jobs.len();
    let replies = match catch_unwind(AssertUnwindSafe(|| run_and_commit(&conn, jobs, counters, committer))) {
        Ok(replies) => Some(replies),
        Err(_) => {
            counters.failed_transactions.fetch_add(1, Ordering::Relaxed);
            tracing::error!(requests, "sqlite writer panicked inside a batch; its requests failed");
            rollback(&conn);
            None
        }
    };
    drop(conn);
    if let Some((jobs, outcome)) = replies {
        finish_all(jobs, outcome);
    }
}

/// The batch's jobs and the outcome they all reply with.
type Replies = (Vec<Box<dyn WriteJob>>, Result<(), StoreError>);

fn run_and_commit(
    conn: &Connection,
    mut jobs: Vec<Box<dyn WriteJob>>,
    counters: &WriterCounters,
    committer: Committer,
) -> Replies {
    for index in 0..jobs.len() {
        if let Err(e) = run_in_savepoint(conn, jobs[index].as_mut()) {
            // SQLite rolled the whole transaction back (it does so after I/O errors, a full
            // disk, or running out of memory), or the savepoint itself failed: none of the
            // batch's writes can be trusted to commit, so none is acknowledged.
            tracing::error!(error = %e, requests = jobs.len(), "sqlite write batch aborted");
            rollback(conn);
            counters.failed_transactions.fetch_add(1, Ordering::Relaxed);
            return (jobs, Err(e));
        }
    }
    match conn.execute_batch("COMMIT").ctx("commit write transaction") {
        Ok(()) => {
            counters.transactions.fetch_add(1, Ordering::Relaxed);
            if committer == Committer::RoomsThread {
                counters.inline_transactions.fetch_add(1, Ordering::Relaxed);
            }
            (jobs, Ok(()))
        }
        Err(e) => {
            tracing::error!(error = %e, requests = jobs.len(), "sqlite write batch failed to commit");
            rollback(conn);
            counters.failed_transactions.fetch_add(1, Ordering::Relaxed);
            (jobs, Err(e))
        }
    }
}

/// Apply one job between `SAVEPOINT` and `RELEASE`, rolling back to the savepoint if the job
/// refused. `Err` means the batch transaction is no longer usable.
fn run_in_savepoint(conn: &Connection, job: &mut dyn WriteJob) -> StoreResult<()> {
    conn.prepare_cached("SAVEPOINT request").and_then(|mut s| s.execute([])).ctx("open savepoint")?;
    let ok = job.apply(conn);
    if conn.is_autocommit() {
        return Err(StoreError::Backend(
            "sqlite: the write transaction was rolled back by SQLite after an error; retry".into(),
        ));
    }
    if !ok {
        conn.prepare_cached("ROLLBACK TO request").and_then(|mut s| s.execute([])).ctx("roll back savepoint")?;
    }
    conn.prepare_cached("RELEASE request").and_then(|mut s| s.execute([])).ctx("release savepoint")?;
    Ok(())
}

fn finish_all(jobs: Vec<Box<dyn WriteJob>>, committed: Result<(), StoreError>) {
    for job in jobs {
        job.finish(committed.clone());
    }
}

fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "sqlite rollback failed");
        }
    }
}

/// How often the checkpointer looks for new commits.
pub(super) const CHECKPOINT_PERIOD: std::time::Duration = std::time::Duration::from_millis(200);

/// The checkpointer's loop: after commits, a `PASSIVE` checkpoint; after a message was deleted,
/// a `TRUNCATE` one. Ends when the store is gone (the writer's counters are dropped with it).
///
/// A deleted message's text is zeroed in the page the delete wrote (`secure_delete`), but
/// earlier versions of that page stay in the WAL until it is truncated, and SQLite writes the
/// WAL from its start again only after a checkpoint it could finish. `TRUNCATE` waits for the
/// writer and for readers of older snapshots (it holds the write lock while it copies), so it
/// runs only when there was an erasure, at most once per round; one held back by a reader is
/// tried again next round.
pub(super) fn checkpointer_loop(conn: Connection, counters: std::sync::Weak<WriterCounters>) {
    let mut checkpointed = 0;
    let mut erased = 0;
    loop {
        std::thread::sleep(CHECKPOINT_PERIOD);
        let Some(counters) = counters.upgrade() else { break };
        let committed = counters.transactions.load(Ordering::Relaxed);
        let erasures = counters.erasures.load(Ordering::Relaxed);
        drop(counters);
        if erasures != erased {
            match truncate_wal(&conn) {
                Ok(()) => erased = erasures,
                Err(e) => tracing::warn!(error = %e, "sqlite: truncating the WAL after a delete failed; retrying"),
            }
            checkpointed = committed;
            continue;
        }
        if committed == checkpointed {
            continue;
        }
        checkpointed = committed;
        // (busy, frames in the WAL, frames checkpointed); busy only means a reader or another
        // process held part of it back, which the next round picks up.
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "sqlite checkpoint failed; retrying later");
        }
    }
    tracing::debug!("sqlite checkpointer stopped: the store is gone");
}

/// Copy the whole WAL into the database and truncate it to nothing. `Unavailable` if a reader
/// or another process held part of it back (busy).
pub(super) fn truncate_wal(conn: &Connection) -> StoreResult<()> {
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0)).ctx("truncate the WAL")?;
    if busy != 0 {
        return Err(StoreError::Unavailable("sqlite: the WAL is still in use; not truncated".into()));
    }
    Ok(())
}

/// A reader thread's loop: take the next job from the shared queue and run it.
pub(super) fn reader_loop(mut conn: Connection, queue: Arc<Mutex<mpsc::Receiver<ReadJob>>>) {
    loop {
        // Hold the lock only while waiting for a job: the thread holding it waits on the
        // channel, the others wait on the lock, and each job goes to exactly one thread.
        let job = {
            let mut receiver = match queue.lock() {
                Ok(guard) => guard,
                // Jobs run outside the lock, so a poisoned lock only means another reader
                // panicked while waiting, which leaves the receiver intact.
                Err(poisoned) => poisoned.into_inner(),
            };
            receiver.blocking_recv()
        };
        let Some(job) = job else { break };
        if catch_unwind(AssertUnwindSafe(|| job(&mut conn))).is_err() {
            tracing::error!("sqlite reader panicked; its request failed");
            rollback(&conn);
        }
    }
    tracing::debug!("sqlite reader stopped: every sender is gone");
}
