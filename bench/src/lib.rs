//! The load generator behind `bench/src/bin/loadgen.rs`: scenarios that drive palaver and its
//! peers (NATS over WebSocket, Socket.IO, ejabberd multi-user chat over XMPP WebSocket) through
//! the same code, so every figure of docs/BENCHMARKS.md is palaver beside a peer from one run.
//!
//! - [`peers`]: one thin adapter per server: connect, authenticate, join a room, publish, answer
//!   keep-alives. Each speaks the server's own protocol over a WebSocket.
//! - [`group`]: a set of connections that receive (and optionally publish), in this process or
//!   in a child process (`loadgen worker`) so one run can pass the per-process open-file limit.
//! - [`scenarios`]: `idle`, `fanout`, `saturation`, `many-rooms`, `reconnect-storm`,
//!   `cross-node`.
//! - [`presence`]: `presence`, what presence costs a cluster (inter-node messages per second,
//!   memory per online user).
//! - [`report`]: the summary lines and the JSON the report is made from.
//! - [`cpu`]: CPU time of the servers and of the load generator itself around a phase.
//!
//! Latency is publish→deliver: every message body starts with a marker holding the send time
//! (nanoseconds since the Unix epoch, one clock for every process on the machine), and each
//! sampled receiver records `now − sent` in an HDR histogram (the others only count). The
//! marker carries a per-run id, so nothing from an earlier run (room history, replays) is ever
//! counted.
//!
//! Everything targets 127.0.0.0/8 only, every loop is bounded in count and time, and each
//! scenario stops by itself.

pub mod args;
pub mod cpu;
pub mod group;
pub mod pacing;
pub mod peers;
pub mod presence;
pub mod report;
pub mod scenarios;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Nanoseconds since the Unix epoch: the clock every process of a run shares.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A latency histogram in microseconds, 1 µs to 10 minutes, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// A histogram as (value, count) pairs: how groups in other processes send theirs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistPairs(pub Vec<(u64, u64)>);

impl HistPairs {
    pub fn from_histogram(hist: &Histogram<u64>) -> Self {
        HistPairs(hist.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect())
    }

    pub fn add_to(&self, hist: &mut Histogram<u64>) {
        for &(value, count) in &self.0 {
            let _ = hist.record_n(value.max(1), count);
        }
    }
}

/// The marker every measured message body starts with: `~<run>:<sent_ns>~`, then padding.
#[derive(Clone)]
pub struct Marker {
    prefix: Vec<u8>,
    finder: memchr::memmem::Finder<'static>,
}

impl Marker {
    pub fn new(run: &str) -> Self {
        let prefix = format!("~{run}:").into_bytes();
        let finder = memchr::memmem::Finder::new(&prefix).into_owned();
        Marker { prefix, finder }
    }

    /// A body of `size` bytes (at least the marker) sent at `sent_ns`. Only characters that
    /// need no escaping in JSON, XML or the NATS protocol.
    pub fn body(&self, sent_ns: u64, size: usize) -> String {
        let mut body = String::with_capacity(size.max(40));
        body.push_str(std::str::from_utf8(&self.prefix).expect("ASCII prefix"));
        body.push_str(&sent_ns.to_string());
        body.push('~');
        while body.len() < size {
            body.push('x');
        }
        body
    }

    /// Call `found` with the send time of every marker in `payload`.
    pub fn scan(&self, payload: &[u8], mut found: impl FnMut(u64)) {
        for start in self.finder.find_iter(payload) {
            let digits = &payload[start + self.prefix.len()..];
            let mut value: u64 = 0;
            let mut any = false;
            for &b in digits.iter().take(20) {
                if b.is_ascii_digit() {
                    value = value * 10 + u64::from(b - b'0');
                    any = true;
                } else {
                    break;
                }
            }
            if any {
                found(value);
            }
        }
    }
}

/// Resident memory of processes, in KiB (sum of `VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .sum()
}

/// CPU time (user + system, in clock ticks) of `pids` so far; processes that are gone count 0.
pub fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // The fields after the command name (which may hold spaces) are space-separated;
            // utime and stime are the 14th and 15th fields of the line.
            let after_name = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// A short random id for a run: user names, room names and markers carry it.
pub fn run_id() -> String {
    let nanos = now_ns();
    let mixed = nanos ^ (u64::from(std::process::id()) << 32) ^ (nanos >> 17);
    format!("{:06x}", mixed & 0xff_ffff)
}

/// `secs` as a duration, refusing negative or absurd values.
pub fn secs(value: f64) -> Duration {
    Duration::from_secs_f64(value.clamp(0.0, 3_600.0))
}

/// Human-readable rate: 1234567 → "1.23M".
pub fn human(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

/// A process's CPU time (`ticks` of 10 ms, see [`cpu_ticks`]) over `elapsed`, in percent of one
/// core: near 100 for the benchmark's own process means it may be what limits the figure.
pub fn busy_percent(ticks: u64, elapsed: std::time::Duration) -> f64 {
    ticks as f64 / elapsed.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trip() {
        let marker = Marker::new("abc123");
        let body = marker.body(1_700_000_000_123_456_789, 100);
        assert_eq!(body.len(), 100);
        let payload = format!("{{\"type\":\"message\",\"body\":\"{body}\"}}PUB x 3\r\n{body}");
        let mut seen = Vec::new();
        marker.scan(payload.as_bytes(), |ts| seen.push(ts));
        assert_eq!(seen, vec![1_700_000_000_123_456_789; 2]);
        let other = Marker::new("zzz999");
        let mut none = 0;
        other.scan(payload.as_bytes(), |_| none += 1);
        assert_eq!(none, 0);
    }

    #[test]
    fn histogram_pairs_merge() {
        let mut a = new_histogram();
        for v in [5, 50, 500, 5000, 50000] {
            a.record(v).unwrap();
        }
        let pairs = HistPairs::from_histogram(&a);
        let mut b = new_histogram();
        pairs.add_to(&mut b);
        assert_eq!(a.len(), b.len());
        assert_eq!(a.value_at_quantile(0.5), b.value_at_quantile(0.5));
    }
}
