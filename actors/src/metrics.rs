//! Process-wide counters, gauges and latency histograms, rendered in the Prometheus text
//! format on `/metrics`.
//!
//! Plain atomics: a counter bump on the delivery path costs one relaxed add, a histogram
//! observation two, and no metrics library is needed for a few dozen numbers.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

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
                    self.$name.render_value(concat!("palaver_", stringify!($name)), &mut out);
                )*
                out
            }
        }
    };
    (@type counter) => { AtomicU64 };
    (@type gauge) => { AtomicI64 };
    (@type histogram) => { Histogram };
    (@prom counter) => { "counter" };
    (@prom gauge) => { "gauge" };
    (@prom histogram) => { "histogram" };
}

metrics! {
    /// WebSocket connections currently open.
    gauge connections_open,
    /// WebSocket connections accepted since start.
    counter connections_total,
    /// Connections refused at accept: `limits.max_connections` or
    /// `limits.max_connections_per_address` reached.
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
    /// Cluster: deliveries not sent to a live node because no recipient has a connection
    /// there (one per node per entry; targeted delivery).
    counter cluster_deliveries_spared_total,
    /// Cluster: deliveries received from other nodes.
    counter cluster_deliveries_received_total,
    /// Cluster: runs of a large room's entries received as one message (their entries count
    /// in `cluster_deliveries_received_total` too).
    counter cluster_delivery_runs_received_total,
    /// Cluster: deliveries from other nodes not queued because the local fan-out was behind
    /// (`cluster.delivery_queue_len`); their recipients read them from the store instead.
    counter cluster_deliveries_shed_total,
    /// Cluster: inter-node messages that did not decode, or were refused (dropped and logged),
    /// replies that answer another request among them.
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
    /// Seconds an append waited in its room (owner node), from being handed to the room actor
    /// (its mailbox included) until the room handed it to the store: the commit before it was
    /// still running. Grows when one room is busy.
    histogram append_wait_seconds,
    /// Seconds a room's batch of appends took in the store, from handed over to committed
    /// (group commit and sync to disk included). Grows with a slow disk or a busy store.
    histogram commit_seconds,
    /// Seconds delivered frames waited in a connection's queue until its session took them
    /// (one observation per take, timed from the first frame waiting). Grows when the node is
    /// short of CPU for its connections.
    histogram delivery_wait_seconds,
    /// Webhook events a receiver acknowledged (2xx) from this node.
    counter webhook_events_delivered_total,
    /// Webhook requests sent from this node, answered or not.
    counter webhook_requests_total,
    /// Of those, the ones that failed: no 2xx answer within `webhooks.timeout_ms`.
    counter webhook_requests_failed_total,
    /// Webhook endpoints declared dead after `webhooks.max_attempts` failures in a row (their
    /// events wait in the store until an operator enables them again).
    gauge webhook_endpoints_dead,
    /// 1 while this node holds the webhook delivery lease (one node of a cluster does).
    gauge webhook_delivering,
    /// Push requests sent from this node to providers, answered or not.
    counter push_requests_total,
    /// Of those, the ones the provider accepted.
    counter push_delivered_total,
    /// Devices removed because their provider said the token is no longer valid.
    counter push_devices_removed_total,
    /// Pushes that failed for good (a request the provider refuses, a provider not configured).
    counter push_failed_total,
    /// Pushes to try again (provider down, throttled, timed out).
    counter push_retries_total,
    /// Silent clears sent after a read (one per user and room, to all their devices).
    counter push_clears_sent_total,
    /// 1 while this node holds the push lease (one node of a cluster sends).
    gauge push_sending,
    /// Seconds from a message coming due for push (its commit plus `push.delay_ms`) to a
    /// provider accepting a notification of it: the worker's lag plus the provider's answer.
    histogram push_latency_seconds,
    /// Uploads stored and checked (docs/MEDIA.md).
    counter media_uploads_total,
    /// Their bytes.
    counter media_upload_bytes_total,
    /// Uploads refused or failed once their request was read (any 4xx or 5xx answer).
    counter media_uploads_failed_total,
    /// Downloads answered with bytes (200 and 206).
    counter media_downloads_total,
    /// Uploads the collector deleted (records and objects).
    counter media_collected_total,
}

/// Upper bounds of every histogram's buckets, in seconds: 100 µs to 10 s in steps of 1-2-5 (and
/// `+Inf`), fine enough around a millisecond, where a healthy node's commits and deliveries are.
const BUCKETS: [f64; 16] =
    [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];

/// A latency histogram with fixed buckets ([`BUCKETS`]).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative; the last is beyond every bound).
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// How many observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|count| count.load(Ordering::Relaxed)).sum()
    }
}

/// How one metric writes its sample lines.
trait RenderValue {
    fn render_value(&self, name: &str, out: &mut String);
}

impl RenderValue for AtomicU64 {
    fn render_value(&self, name: &str, out: &mut String) {
        let _ = writeln!(out, "{name} {}", self.load(Ordering::Relaxed));
    }
}

impl RenderValue for AtomicI64 {
    fn render_value(&self, name: &str, out: &mut String) {
        let _ = writeln!(out, "{name} {}", self.load(Ordering::Relaxed));
    }
}

impl RenderValue for Histogram {
    fn render_value(&self, name: &str, out: &mut String) {
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
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

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let metrics = Metrics::default();
        metrics.commit_seconds.observe(Duration::from_micros(300));
        metrics.commit_seconds.observe(Duration::from_micros(700));
        metrics.commit_seconds.observe(Duration::from_secs(19));
        let text = metrics.render();
        assert!(text.contains("# TYPE palaver_commit_seconds histogram\n"), "{text}");
        assert!(text.contains("palaver_commit_seconds_bucket{le=\"0.0002\"} 0\n"), "{text}");
        assert!(text.contains("palaver_commit_seconds_bucket{le=\"0.0005\"} 1\n"), "{text}");
        assert!(text.contains("palaver_commit_seconds_bucket{le=\"0.001\"} 2\n"), "{text}");
        assert!(text.contains("palaver_commit_seconds_bucket{le=\"5\"} 2\n"), "{text}");
        assert!(text.contains("palaver_commit_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("palaver_commit_seconds_sum 19.001\n"), "{text}");
        assert!(text.contains("palaver_commit_seconds_count 3\n"), "{text}");
        assert_eq!(metrics.commit_seconds.count(), 3);
    }
}
