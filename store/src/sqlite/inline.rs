//! Commits on the rooms' thread: the rooms' appends skip the writer thread when they can.
//!
//! Through the writer thread (see `threads`) an append costs two hand-overs between threads:
//! the room's committer wakes the writer, the writer wakes the committer with the outcome. On
//! a busy two-core machine each wake-up of a sleeping thread waits for a core, 0.13–0.19 ms
//! on average and milliseconds at worst (`perf sched latency` at half the fan-out saturation
//! rate, bench/findings.md). The rooms' thread exists to commit and fan out, and nothing on it
//! waits for anything but commits, so it may as well run the commit itself: a thread that
//! marked itself with [`allow_inline_writes`] commits its appends on the spot.
//!
//! Group commit stays: an append does not commit at once but joins a pending batch, and the
//! first append into an empty batch spawns a flush task on the same thread, which lets every
//! other task that is ready run first (they are the other rooms' committers, adding their
//! appends) and then commits the whole batch in one transaction. A batch is a few appends of
//! one room at low load and every active room's at high load, as through the writer.
//!
//! Never waiting is what makes blocking the rooms' thread acceptable: the flush takes the
//! shared writer connection only if no one holds it (the writer thread may be committing a
//! user's write), and begins its transaction with a busy timeout of zero (another process on
//! the same file may hold SQLite's write lock). If either is taken, the batch goes to the
//! writer thread's queue as before and waits there, off the rooms' thread. So the rooms'
//! thread blocks at most for its own commit: the sync of the WAL, as the writer would.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::mpsc;

use super::threads::{begin, commit_begun, fail_to_begin, BatchLimits, Committer, WriteJob, WriterCounters};
use crate::StoreError;

thread_local! {
    static INLINE_WRITES: Cell<bool> = const { Cell::new(false) };
}

/// Mark the calling thread as one whose tasks may block for a commit (the rooms' thread; see
/// `room::runtime`). Its appends then commit on it, when the writer connection is free.
pub fn allow_inline_writes() {
    INLINE_WRITES.with(|allowed| allowed.set(true));
}

/// Whether the calling thread was marked by [`allow_inline_writes`] and runs a tokio runtime
/// to spawn the flush on.
pub(super) fn inline_writes_allowed() -> bool {
    INLINE_WRITES.with(Cell::get) && tokio::runtime::Handle::try_current().is_ok()
}

/// The pending batch and what committing it needs. One per store.
pub(super) struct InlineWriter {
    conn: Arc<Mutex<Connection>>,
    pending: Mutex<Pending>,
    /// The writer thread's queue, for a batch that cannot commit here.
    queue: mpsc::Sender<Box<dyn WriteJob>>,
    counters: Arc<WriterCounters>,
    limits: BatchLimits,
    /// The connection's busy timeout, put back after a `BEGIN` tried without one.
    busy_timeout: Duration,
}

#[derive(Default)]
struct Pending {
    jobs: Vec<Box<dyn WriteJob>>,
    flush_spawned: bool,
}

impl InlineWriter {
    pub(super) fn new(
        conn: Arc<Mutex<Connection>>,
        queue: mpsc::Sender<Box<dyn WriteJob>>,
        counters: Arc<WriterCounters>,
        limits: BatchLimits,
        busy_timeout: Duration,
    ) -> InlineWriter {
        InlineWriter { conn, pending: Mutex::new(Pending::default()), queue, counters, limits, busy_timeout }
    }

    /// Add `jobs` to the pending batch; each replies through its own channel once committed.
    /// Call only where [`inline_writes_allowed`] says so.
    pub(super) fn submit(self: &Arc<Self>, jobs: Vec<Box<dyn WriteJob>>) {
        let spawn = {
            let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            pending.jobs.extend(jobs);
            !std::mem::replace(&mut pending.flush_spawned, true)
        };
        if spawn {
            // A task of its own rather than the caller's future: a caller that stops waiting
            // does not strand the others' appends.
            tokio::spawn(Arc::clone(self).flush());
        }
    }

    async fn flush(self: Arc<Self>) {
        // Behind every task already woken on this thread: the other rooms' committers add
        // their appends to this batch first.
        tokio::task::yield_now().await;
        let mut jobs = {
            let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            pending.flush_spawned = false;
            std::mem::take(&mut pending.jobs)
        };
        while !jobs.is_empty() {
            let rest = self.split_batch(&mut jobs);
            let refused = self.try_commit(jobs);
            jobs = rest;
            if !refused.is_empty() {
                // Busy: this batch and the rest go through the writer's queue, in order.
                self.queue_all(refused.into_iter().chain(jobs.drain(..))).await;
            }
        }
    }

    /// Cut `jobs` to one batch within the writer's limits; returns the rest.
    fn split_batch(&self, jobs: &mut Vec<Box<dyn WriteJob>>) -> Vec<Box<dyn WriteJob>> {
        let mut bytes = 0;
        let mut take = 0;
        while take < jobs.len() && self.limits.room_for(take, bytes) {
            bytes += jobs[take].cost_bytes();
            take += 1;
        }
        jobs.split_off(take)
    }

    /// Commit `jobs` here if the writer connection and SQLite's write lock are both free at
    /// once; otherwise hand them back untouched.
    fn try_commit(&self, jobs: Vec<Box<dyn WriteJob>>) -> Vec<Box<dyn WriteJob>> {
        let conn = match self.conn.try_lock() {
            Ok(conn) => conn,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return jobs,
        };
        let begun = without_waiting(&conn, self.busy_timeout, begin);
        if let Err(StoreError::Unavailable(_)) = begun {
            return jobs;
        }
        // Counted here, not when handed back: the writer thread counts what it takes.
        self.counters.requests.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        match begun {
            Ok(()) => commit_begun(conn, jobs, &self.counters, Committer::RoomsThread),
            Err(e) => {
                drop(conn);
                fail_to_begin(jobs, e, &self.counters);
            }
        }
        Vec::new()
    }

    async fn queue_all(&self, jobs: impl Iterator<Item = Box<dyn WriteJob>>) {
        for job in jobs {
            // A closed queue means the store is shutting down: the job is dropped with its
            // reply sender, and its caller gets "the writer failed before committing".
            if self.queue.send(job).await.is_err() {
                return;
            }
        }
    }
}

/// Run `op` with the connection's busy timeout at zero, so a lock held by anyone else is
/// `Unavailable` at once instead of a wait on this thread.
fn without_waiting<T>(
    conn: &Connection,
    busy_timeout: Duration,
    op: impl FnOnce(&Connection) -> crate::StoreResult<T>,
) -> crate::StoreResult<T> {
    if let Err(e) = conn.busy_timeout(Duration::ZERO) {
        return Err(StoreError::Backend(format!("sqlite: set the busy timeout: {e}")));
    }
    let result = op(conn);
    if let Err(e) = conn.busy_timeout(busy_timeout) {
        tracing::error!(error = %e, "sqlite: could not restore the busy timeout");
    }
    result
}
