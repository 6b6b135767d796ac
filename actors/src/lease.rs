//! A store lease held by this node for work one node of the cluster does at a time (webhook
//! delivery, pushes): taken when free or expired, renewed while the work goes on, so when the
//! holder dies another node takes over after the lease runs out. The work it guards may be
//! done twice around a takeover (the store's clocks are the nodes'), so it is only used for
//! work that is at least once anyway.

use std::future::Future;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::{debug, info};

use crate::hub::Hub;
use crate::names::now_ms;
use crate::store::{Store, StoreResult};

pub struct Lease {
    /// The lease's name in the store, also what the log lines say.
    name: &'static str,
    ttl_ms: u64,
    /// Until when this node may work under its lease (half the lease, so a slow clock or a
    /// slow renewal cannot overlap another node's).
    valid_until: Mutex<Option<Instant>>,
    /// When to ask again after finding the lease held by another node.
    retry_at: Mutex<Option<Instant>>,
}

impl Lease {
    pub fn new(name: &'static str, ttl_ms: u64) -> Lease {
        Lease { name, ttl_ms, valid_until: Mutex::new(None), retry_at: Mutex::new(None) }
    }

    /// Take or renew the lease when less than half of it is left; whether `node` holds it.
    pub async fn hold(&self, store: &dyn Store, node: &str) -> StoreResult<bool> {
        if self.valid_until.lock().is_some_and(|until| Instant::now() < until) {
            return Ok(true);
        }
        // Another node holds it: ask again a quarter of a lease later, not at every poll (a
        // write transaction each time, on every node).
        if self.retry_at.lock().is_some_and(|at| Instant::now() < at) {
            return Ok(false);
        }
        let taken_at = Instant::now();
        let held = store.take_lease(self.name, node, now_ms(), self.ttl_ms).await?;
        let was = self.valid_until.lock().is_some();
        *self.valid_until.lock() = held.then(|| taken_at + Duration::from_millis(self.ttl_ms / 2));
        *self.retry_at.lock() = (!held).then(|| taken_at + Duration::from_millis(self.ttl_ms / 4));
        if held != was {
            info!(node, lease = self.name, held, "{} lease {}", self.name, if held { "taken" } else { "lost" });
        }
        Ok(held)
    }
}

/// Run `pass` until the hub shuts down: again at once after a pass that did something (it
/// returned `true`: there may be more), after `poll` otherwise. A failed pass (the store) is
/// logged and tried again at the next poll.
pub async fn run_passes<F, Fut>(hub: &Hub, poll: Duration, what: &'static str, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = StoreResult<bool>>,
{
    let mut shutdown = hub.shutdown_signal();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let busy = match pass().await {
            Ok(busy) => busy,
            Err(err) => {
                debug!(%err, "{what}: pass failed; trying again");
                false
            }
        };
        if !busy {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}
