//! The rooms' own thread: where every room actor and its committer run (see `room.rs`).
//!
//! A committer is one task per room, woken by the store each time a batch commits. On the
//! node's main runtime that wake-up came from a foreign thread (the store's writer), so it
//! went to the runtime's shared queue, behind the sessions that the previous commit had just
//! woken: fanning out to a thousand members overflows a worker's local queue into that same
//! shared queue, and the committer waited for most of a thousand socket writes before it could
//! deliver, reply and start the next commit. The room actor's wake-up, for every command a
//! session hands it, waited in the same queue. Measured with the node's own histograms
//! (`loadgen fanout --n 1000 --rate 200`): a commit took 7.1 ms from the room's side, though
//! the store's thread was busy for a fraction of that, and a send waited 4 ms more for the
//! commit before it. On a thread of their own the rooms are woken by the operating system as
//! soon as a command arrives or a commit ends (a thread that mostly sleeps is scheduled
//! promptly), and the fan-out they start runs on the main runtime as before: there the commit
//! as the room sees it went from 7.1 to 1.3 ms and the p50 publish→deliver from 23–25 to
//! 14–15 ms; at full speed 2.6 M deliveries a second against 1.9–2.1 M (bench/findings.md).
//!
//! The rooms' appends also commit here, with SQLite (`store::sqlite::inline`): every room's
//! batch ready at the same moment in one transaction on this thread, which saves the two
//! hand-overs to the store's writer thread and back (0.1–0.35 ms off the median
//! publish→deliver at 2,250 msgs/s into 100 receivers, bench/findings.md). While a commit
//! syncs the other rooms here wait too; what they have to do next is mostly a commit of their
//! own, which the next transaction takes. A write lock held elsewhere sends the batch to the
//! writer thread instead of blocking this one.
//!
//! One worker: a room's own work is small beside its sessions' (it hands each delivery to a
//! queue, tens of nanoseconds; the sessions do the writing, on the main runtime), so one thread
//! keeps up with whatever fan-out the node's cores can write. A node with many busy rooms on
//! many cores may want more; that would be a worker count taken from configuration.

use parking_lot::Mutex;
use std::future::Future;
use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinHandle;

/// A tokio runtime with one worker, its own OS thread (`palaver-rooms`), stopped by
/// [`stop`](Self::stop) or when dropped.
pub struct RoomsRuntime {
    handle: Handle,
    runtime: Mutex<Option<Runtime>>,
}

impl RoomsRuntime {
    /// Start the thread. Panics if the operating system refuses a thread (the node cannot run
    /// without it, and this happens once, at start-up).
    pub fn start() -> RoomsRuntime {
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("palaver-rooms")
            .enable_all()
            .build()
            .expect("starting the rooms' thread");
        RoomsRuntime { handle: runtime.handle().clone(), runtime: Mutex::new(Some(runtime)) }
    }

    /// Run `future` on the rooms' thread. Once stopped, the task is cancelled at once (its
    /// handle answers with a cancelled `JoinError`).
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }

    /// Stop the thread and wait (up to `within`) until its tasks are gone, and with them what
    /// they held: the node does this before it stops the store's backends, which must outlive
    /// every handle to the store.
    pub async fn stop(&self, within: Duration) {
        let runtime = self.runtime.lock().take();
        if let Some(runtime) = runtime {
            // Blocking until the thread ends is not allowed on a runtime's own thread.
            let _ = tokio::task::spawn_blocking(move || runtime.shutdown_timeout(within)).await;
        }
    }
}

impl Drop for RoomsRuntime {
    fn drop(&mut self) {
        // Without waiting: the hub (and so this) may be dropped inside another runtime, where
        // blocking on the thread's end is not allowed; the committers hold nothing that needs
        // a clean end (what they had not committed, the store never acknowledged).
        if let Some(runtime) = self.runtime.get_mut().take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_futures_on_its_own_thread_and_can_be_dropped_inside_another_runtime() {
        let rooms = RoomsRuntime::start();
        let here = std::thread::current().id();
        let (thread, name) = rooms
            .spawn(async { (std::thread::current().id(), std::thread::current().name().map(str::to_string)) })
            .await
            .unwrap();
        assert_ne!(thread, here);
        assert_eq!(name.as_deref(), Some("palaver-rooms"));
        // A task spawned from there stays there (room actors spawn their committers).
        let inner = rooms.spawn(async { tokio::spawn(async { std::thread::current().id() }).await.unwrap() });
        assert_eq!(inner.await.unwrap(), thread);
        // Dropped in an async context (as a hub may be): no panic, the thread's tasks end.
        let pending = rooms.spawn(std::future::pending::<()>());
        drop(rooms);
        assert!(pending.await.unwrap_err().is_cancelled());
    }

    #[tokio::test]
    async fn a_stop_waits_until_the_tasks_have_dropped_what_they_held() {
        let rooms = RoomsRuntime::start();
        let store = std::sync::Arc::new("a store handle");
        let held = store.clone();
        let (started, running) = tokio::sync::oneshot::channel();
        let _task = rooms.spawn(async move {
            let _held = held;
            let _ = started.send(());
            std::future::pending::<()>().await
        });
        running.await.unwrap();
        assert_eq!(std::sync::Arc::strong_count(&store), 2);
        rooms.stop(Duration::from_secs(5)).await;
        assert_eq!(std::sync::Arc::strong_count(&store), 1, "the task's handle is gone");
        // Anything spawned after the stop is cancelled, not run.
        let late = rooms.spawn(async { "ran" });
        assert!(late.await.unwrap_err().is_cancelled());
    }
}
