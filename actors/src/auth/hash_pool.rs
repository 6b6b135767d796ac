//! The pool of threads that run password hashes, the one place argon2 memory is allocated.
//!
//! A password hash is deliberately expensive in memory (argon2id's `m_cost`, 19 MiB by
//! default), so how many run at once decides how much memory logins and registrations can take.
//! A fixed number of dedicated threads each own one block buffer and take jobs from a bounded
//! queue; a job that finds the queue full is refused at once (the caller answers
//! `rate_limited`), so memory for hashing never exceeds `threads × m_cost` however many requests
//! arrive. A thread keeps its buffer while jobs keep coming and frees it (returning the pages to
//! the operating system) when the queue runs dry, so an idle node does not hold hash memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use argon2::Block;
use tokio::sync::oneshot;

/// A thread's argon2 working memory, allocated on first use and sized for the largest job.
#[derive(Default)]
pub struct HashMemory {
    blocks: Vec<Block>,
}

impl HashMemory {
    /// At least `count` blocks.
    pub fn blocks(&mut self, count: usize) -> &mut [Block] {
        if self.blocks.len() < count {
            // Replace rather than grow: a grown Vec would copy the old blocks for nothing.
            self.blocks = Vec::new();
            self.blocks = vec![Block::default(); count];
        }
        &mut self.blocks
    }

    /// Free the buffer and hand the freed memory back to the operating system.
    fn release(&mut self) {
        if self.blocks.is_empty() {
            return;
        }
        self.blocks = Vec::new();
        return_freed_memory();
    }
}

/// glibc keeps a freed buffer of this size in the thread's malloc arena instead of unmapping it
/// (its mmap threshold rises after the first such free), so the memory would stay resident
/// after a burst of logins; `malloc_trim` releases the free pages of every arena.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_freed_memory() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own allocator state under
    // its locks; it is safe to call from any thread at any time.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_freed_memory() {}

type Job = Box<dyn FnOnce(&mut HashMemory) + Send>;

/// The queue was full: try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many password hashes queued; retry in {} ms", retry_after.as_millis())]
pub struct Busy {
    pub retry_after: Duration,
}

/// Threads running hash jobs from a bounded queue. Dropping the pool lets the threads finish
/// the queued jobs and exit.
pub struct HashPool {
    jobs: SyncSender<Job>,
    threads: usize,
    queue_len: usize,
    /// Moving average of a job's duration, in microseconds, for `Busy::retry_after`.
    average_us: Arc<AtomicU64>,
}

impl HashPool {
    /// `threads` hashes at once (at least 1), `queue_len` more waiting.
    pub fn new(threads: usize, queue_len: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let (jobs, queue) = mpsc::sync_channel::<Job>(queue_len);
        let queue = Arc::new(Mutex::new(queue));
        let average_us = Arc::new(AtomicU64::new(50_000));
        for index in 0..threads {
            let queue = queue.clone();
            let average_us = average_us.clone();
            std::thread::Builder::new()
                .name(format!("password-hash-{index}"))
                .spawn(move || run_jobs(&queue, &average_us))?;
        }
        Ok(HashPool { jobs, threads, queue_len, average_us })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Queue `job` and get its result later, or `Busy` at once when the queue is full.
    pub fn try_run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut HashMemory) -> T + Send + 'static,
    ) -> Result<oneshot::Receiver<T>, Busy> {
        let (reply, result) = oneshot::channel();
        let job: Job = Box::new(move |memory| {
            // The requester may have gone; the work is done either way.
            let _ = reply.send(job(memory));
        });
        match self.jobs.try_send(job) {
            Ok(()) => Ok(result),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy { retry_after: self.retry_after() }),
        }
    }

    /// About how long the queue takes to drain by one thread's worth.
    fn retry_after(&self) -> Duration {
        let job = Duration::from_micros(self.average_us.load(Ordering::Relaxed));
        let rounds = (self.queue_len / self.threads + 1) as u32;
        (job * rounds).clamp(Duration::from_millis(50), Duration::from_secs(10))
    }
}

fn run_jobs(queue: &Mutex<Receiver<Job>>, average_us: &AtomicU64) {
    let mut memory = HashMemory::default();
    loop {
        let job = match next_job(queue) {
            Next::Job(job) => job,
            Next::Gone => return,
            Next::Wait => {
                // Nothing waiting (or another thread is already waiting for the next job):
                // give the memory back before sleeping.
                memory.release();
                match queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            }
        };
        let started = Instant::now();
        // A panicking job drops its reply (the requester sees an internal error) and must not
        // take the thread, and with it a hashing slot, down.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut memory))).is_err() {
            memory = HashMemory::default();
        }
        let took = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u64;
        let old = average_us.load(Ordering::Relaxed);
        average_us.store((old * 7 + took) / 8, Ordering::Relaxed);
    }
}

enum Next {
    Job(Job),
    Wait,
    Gone,
}

/// A queued job if there is one now. A thread blocked in `recv` holds the lock, which means the
/// queue is empty: do not queue up behind it holding memory.
fn next_job(queue: &Mutex<Receiver<Job>>) -> Next {
    let queue = match queue.try_lock() {
        Ok(queue) => queue,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return Next::Wait,
    };
    match queue.try_recv() {
        Ok(job) => Next::Job(job),
        Err(TryRecvError::Empty) => Next::Wait,
        Err(TryRecvError::Disconnected) => Next::Gone,
    }
}
