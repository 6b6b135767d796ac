//! Process-wide counters and gauges, rendered in the Prometheus text format on `/metrics`.
//!
//! Plain atomics: a counter bump on the delivery path costs one relaxed add, and no metrics
//! library is needed for a dozen numbers.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

macro_rules! metrics {
    ($( $(#[doc = $doc:literal])* $kind:ident $name:ident ),* $(,)?) => {
        /// Counters (monotonic) and gauges (up and down) of one node.
        #[derive(Default, Debug)]
        pub struct Metrics {
            $( $(#[doc = $doc])* pub $name: metrics!(@type $kind), )*
        }

        impl Metrics {
            /// The Prometheus text exposition of every metric, prefixed `palaver_`.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(
                    let help = concat!($($doc),*).trim();
                    let _ = writeln!(out, "# HELP palaver_{} {}", stringify!($name), help);
                    let _ = writeln!(out, "# TYPE palaver_{} {}", stringify!($name), metrics!(@prom $kind));
                    let _ = writeln!(out, "palaver_{} {}", stringify!($name), self.$name.load(Ordering::Relaxed));
                )*
                out
            }
        }
    };
    (@type counter) => { AtomicU64 };
    (@type gauge) => { AtomicI64 };
    (@prom counter) => { "counter" };
    (@prom gauge) => { "gauge" };
}

metrics! {
    /// WebSocket connections currently open.
    gauge connections_open,
    /// WebSocket connections accepted since start.
    counter connections_total,
    /// Connections refused because `limits.max_connections` were open.
    counter connections_refused_total,
    /// Client frames received.
    counter frames_in_total,
    /// Client frames that failed to decode (malformed, unknown type, invalid field).
    counter frames_invalid_total,
    /// Error frames sent to clients.
    counter errors_sent_total,
    /// Entries committed to room logs (messages and membership changes).
    counter entries_appended_total,
    /// Sends answered from the idempotence index without writing.
    counter duplicate_sends_total,
    /// Entries handed to live connections.
    counter deliveries_total,
    /// Deliveries dropped because a connection's queue was full (the connection then catches
    /// up from the store, so nothing is lost).
    counter deliveries_lagged_total,
    /// Entries sent from the store while resuming or catching up.
    counter replayed_total,
    /// Of those, entries of large rooms sent from the node's recent entries (memory) instead of
    /// the store.
    counter replayed_from_memory_total,
    /// Memory held by the node's recent entries of large rooms (`limits.large_room_tail_bytes`
    /// bounds it), as the node counts it.
    gauge recent_entries_bytes,
    /// Room actors currently running.
    gauge rooms_active,
    /// Appends refused because the room's owner epoch moved on (fencing).
    counter fenced_appends_total,
    /// Store operations that failed.
    counter store_errors_total,
    /// Failed logins.
    counter login_failures_total,
    /// Connections closed because the client did not read fast enough.
    counter slow_clients_closed_total,
    /// Cluster: nodes in this node's live set (itself included; 0 without a cluster).
    gauge cluster_nodes_live,
    /// Cluster: appends sent to the room's owner on another node.
    counter cluster_forwarded_total,
    /// Cluster: deliveries sent to other nodes (one per node per entry).
    counter cluster_deliveries_sent_total,
    /// Cluster: deliveries received from other nodes.
    counter cluster_deliveries_received_total,
    /// Cluster: runs of a large room's entries received as one message (their entries count
    /// in `cluster_deliveries_received_total` too).
    counter cluster_delivery_runs_received_total,
    /// Cluster: deliveries from other nodes not queued because the local fan-out was behind
    /// (`cluster.delivery_queue_len`); their recipients read them from the store instead.
    counter cluster_deliveries_shed_total,
    /// Cluster: inter-node messages that did not decode, or were refused (dropped and logged).
    counter cluster_invalid_messages_total,
    /// Presence: batches of changed presence records sent to other nodes.
    counter presence_batches_sent_total,
    /// Presence: user records inside those batches.
    counter presence_records_sent_total,
    /// Presence: full snapshots sent to nodes that were out of step.
    counter presence_snapshots_sent_total,
    /// Presence: users in this node's presence table (all nodes' records merged).
    gauge presence_users,
    /// Presence: of them, online or away.
    gauge presence_online_users,
    /// Typing and receipt frames sent to other nodes (one per node per event).
    counter ephemeral_pushes_sent_total,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn gauge(gauge: &AtomicI64, delta: i64) {
        gauge.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn set(gauge: &AtomicI64, value: i64) {
        gauge.store(value, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        Metrics::inc(&metrics.frames_in_total);
        Metrics::gauge(&metrics.connections_open, 2);
        let text = metrics.render();
        assert!(text.contains("# TYPE palaver_frames_in_total counter\npalaver_frames_in_total 1\n"), "{text}");
        assert!(text.contains("palaver_connections_open 2\n"), "{text}");
        assert!(text.contains("# HELP palaver_connections_open WebSocket connections currently open."), "{text}");
    }
}
