//! Supervision of the node's long-lived tasks: none of them may end silently.
//!
//! A panic inside a `tokio::spawn`ed task ends that task and nothing else: the runtime, the
//! node and its health checks carry on, while whatever the task did (heartbeats, presence
//! flushes, deliveries from other nodes, accepting node links) has stopped. So every task the
//! node runs for its whole life is started through this module, in one of two ways:
//!
//! - [`spawn_restarting`] for a task that can simply be started again (a ticker whose state
//!   lives elsewhere): a panic is logged and the task is started anew after a short pause.
//! - [`spawn_essential`] for a task that owns something it cannot get back (a channel's
//!   receiving end, a listening socket): a panic is logged and the node stops with exit code
//!   70, so that its supervisor (systemd, docker, an orchestrator) restarts it and clients
//!   resume elsewhere. Nothing acknowledged is lost: acknowledged means committed.
//!
//! Tasks that end on their own (the node is stopping, what they serve went away) end quietly.
//! ARCHITECTURE.md ("Supervision") lists which task is which.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{error, info};

/// The exit code of a node stopped because an essential task failed (`EX_SOFTWARE`).
pub const EXIT_TASK_FAILED: i32 = 70;

/// How long a restarting task waits before it starts again: a task that panics at once must
/// not spin.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Run `task`; if it panics, log it and stop the node (see the module documentation).
pub fn spawn_essential<F>(name: &'static str, task: F) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    spawn_essential_with(name, task, stop_node)
}

/// [`spawn_essential`] with the action taken on a panic given (tests observe it instead of
/// exiting).
fn spawn_essential_with<F>(name: &'static str, task: F, on_panic: fn(&'static str)) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let handle = tokio::spawn(task);
    tokio::spawn(async move {
        match handle.await {
            Err(err) if err.is_panic() => {
                error!(task = name, "an essential task panicked; the node stops so it can be restarted");
                on_panic(name);
            }
            // Ended on its own, or cancelled because the runtime is shutting down.
            _ => {}
        }
    })
}

fn stop_node(name: &'static str) {
    eprintln!("palaver: essential task `{name}` failed; exiting with code {EXIT_TASK_FAILED}");
    std::process::exit(EXIT_TASK_FAILED);
}

/// Run the task `start` makes; whenever it panics, log it and start a new one after
/// `RESTART_PAUSE`. Ends when a run ends without panicking.
pub fn spawn_restarting<S, F>(name: &'static str, start: S) -> JoinHandle<()>
where
    S: Fn() -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    spawn_restarting_after(name, RESTART_PAUSE, start)
}

/// [`spawn_restarting`] with the pause given (tests use none).
fn spawn_restarting_after<S, F>(name: &'static str, pause: Duration, start: S) -> JoinHandle<()>
where
    S: Fn() -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::spawn(start()).await {
                Err(err) if err.is_panic() => {
                    error!(task = name, "a task panicked; starting it again");
                    tokio::time::sleep(pause).await;
                    info!(task = name, "task restarted");
                }
                _ => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_restarting_task_is_started_again_after_a_panic() {
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let supervisor = spawn_restarting_after("test ticker", Duration::ZERO, move || {
            let runs = counted.clone();
            async move {
                // Panics on its first two runs, then ends normally.
                if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("a bug in the ticker");
                }
            }
        });
        supervisor.await.expect("the supervisor itself never panics");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    static STOPPED: AtomicU32 = AtomicU32::new(0);

    fn count_stop(_: &'static str) {
        STOPPED.fetch_add(1, Ordering::SeqCst);
    }

    #[tokio::test]
    async fn an_essential_task_that_panics_stops_the_node_and_one_that_ends_does_not() {
        spawn_essential_with("ends", async {}, count_stop).await.unwrap();
        assert_eq!(STOPPED.load(Ordering::SeqCst), 0);
        spawn_essential_with("panics", async { panic!("a bug in the delivery task") }, count_stop).await.unwrap();
        assert_eq!(STOPPED.load(Ordering::SeqCst), 1);
    }
}
