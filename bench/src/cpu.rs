//! CPU time around a measured phase: the server's, per delivery and per published message, and
//! the load generator's own, to show whether it (rather than the server) set the pace.
//!
//! Both come from `/proc/<pid>/stat` (utime + stime, in clock ticks): the server's processes
//! as given by `--<kind>-pid`, the load generator's as this process and its worker processes.
//! A phase is read three times: when publishing starts, when it stops (the busy period, for
//! the share of a core each side used) and when the last delivery has arrived (the whole cost
//! of the phase's messages, for the cost per delivery). Set-up (accounts, joins) lies outside.
//! How busy the server's and the load generator's CPUs were in all (`/proc/stat`) is read too:
//! well above what the two used themselves, other work on the machine took those CPUs.

use std::time::Instant;

use serde_json::{json, Value};

use super::cpu_ticks;

/// Clock ticks per second of `/proc/<pid>/stat`'s times (`USER_HZ`, 100 on Linux).
pub const CLOCK_TICKS_PER_S: f64 = 100.0;

/// A load generator above this share of the cores it may use is taken to be saturated: its
/// figures may be its own limit rather than the server's.
pub const SATURATED_PCT: f64 = 90.0;

/// CPU ticks of both sides at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    at: Instant,
    server: u64,
    loadgen: u64,
    /// Per CPU of the machine (index = CPU number, up to 64): (busy, all) ticks since boot.
    cpus: [(u64, u64); 64],
}

impl Reading {
    pub fn take(server_pids: &[u32], loadgen_pids: &[u32]) -> Reading {
        Reading {
            at: Instant::now(),
            server: cpu_ticks(server_pids),
            loadgen: cpu_ticks(loadgen_pids),
            cpus: cpu_times(),
        }
    }
}

/// Busy and total ticks of each CPU from `/proc/stat` (`cpuN user nice system idle iowait …`).
fn cpu_times() -> [(u64, u64); 64] {
    let mut times = [(0, 0); 64];
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    for line in stat.lines() {
        let Some(rest) = line.strip_prefix("cpu") else { continue };
        let mut fields = rest.split_whitespace();
        let Some(Ok(cpu)) = fields.next().map(str::parse::<usize>) else { continue };
        let values: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
        if cpu < times.len() && values.len() >= 5 {
            let all: u64 = values.iter().take(8).sum();
            let idle = values[3] + values[4];
            times[cpu] = (all - idle, all);
        }
    }
    times
}

/// How busy `cpus` were between two readings, in % of one CPU (all processes).
fn cpus_busy_pct(start: &Reading, stop: &Reading, cpus: &[u32]) -> Option<f64> {
    let (mut busy, mut all) = (0u64, 0u64);
    for &cpu in cpus.iter().filter(|&&cpu| (cpu as usize) < start.cpus.len()) {
        let (b0, a0) = start.cpus[cpu as usize];
        let (b1, a1) = stop.cpus[cpu as usize];
        busy += b1.saturating_sub(b0);
        all += a1.saturating_sub(a0);
    }
    (all > 0).then(|| 100.0 * busy as f64 / all as f64 * cpus.len() as f64)
}

/// The CPUs `pid` may run on, as `/proc/<pid>/status` lists them (`0`, `1`, `0-1`, `0,2-3`).
pub fn allowed_cpus(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    Some(list.trim().to_string())
}

/// The CPUs of a list in `Cpus_allowed_list` form.
pub fn cpu_set(list: &str) -> Vec<u32> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (from, to) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(from), Ok(to)) = (from.parse::<u32>(), to.parse::<u32>()) {
            // Bounded: a machine has at most a few thousand CPUs.
            cpus.extend(from..=to.min(from.saturating_add(4096)));
        }
    }
    cpus
}

/// What a phase cost, as fields of its result row. `start`, `stop`: around publishing;
/// `end`: after the last delivery. `deliveries`, `published`: everything the phase sent and
/// the receivers counted, warm-up included (as the CPU time is).
pub fn phase_usage(
    start: Reading,
    stop: Reading,
    end: Reading,
    deliveries: u64,
    published: u64,
    server_pids: &[u32],
) -> Value {
    let busy_s = stop.at.duration_since(start.at).as_secs_f64().max(1e-3);
    let share = |ticks: u64| 100.0 * ticks as f64 / CLOCK_TICKS_PER_S / busy_s;
    let loadgen_list = allowed_cpus(std::process::id()).unwrap_or_default();
    let loadgen_cpus = cpu_set(&loadgen_list);
    let loadgen_pct = share(stop.loadgen - start.loadgen);
    let loadgen_saturated = loadgen_pct > SATURATED_PCT * loadgen_cpus.len().max(1) as f64;
    let server_list = server_pids.first().and_then(|&pid| allowed_cpus(pid));
    let server_cpus = server_list.as_deref().map(cpu_set).unwrap_or_default();
    let shared_cores = server_list.as_deref().map(|list| cpu_set(list).iter().any(|cpu| loadgen_cpus.contains(cpu)));
    let server_us = (end.server - start.server) as f64 * 1e6 / CLOCK_TICKS_PER_S;
    let measured = !server_pids.is_empty();
    let per = |count: u64| (measured && count > 0).then(|| server_us / count as f64);
    json!({
        "server_cpu_us_per_delivery": per(deliveries),
        "server_cpu_us_per_message": per(published),
        "server_cpu_pct": measured.then(|| share(stop.server - start.server)),
        "server_cpus": server_list,
        "loadgen_cpu_pct": loadgen_pct,
        "loadgen_cpus": loadgen_list,
        "loadgen_saturated": loadgen_saturated,
        "server_cpus_busy_pct": cpus_busy_pct(&start, &stop, &server_cpus),
        "loadgen_cpus_busy_pct": cpus_busy_pct(&start, &stop, &loadgen_cpus),
        "shared_cores": shared_cores,
        "cpu_deliveries": deliveries,
        "cpu_published": published,
    })
}

/// The CPU part of a summary line.
pub fn usage_text(row: &Value) -> String {
    let mut text = String::new();
    if let Some(us) = row["server_cpu_us_per_delivery"].as_f64() {
        text.push_str(&format!(
            "; server CPU {us:.3} µs/delivery, {:.1} µs/message, {:.0}% of a core",
            row["server_cpu_us_per_message"].as_f64().unwrap_or(0.0),
            row["server_cpu_pct"].as_f64().unwrap_or(0.0)
        ));
    }
    text.push_str(&format!(
        "; loadgen {:.0}% (CPUs {})",
        row["loadgen_cpu_pct"].as_f64().unwrap_or(0.0),
        row["loadgen_cpus"].as_str().unwrap_or("?")
    ));
    if row["loadgen_saturated"].as_bool() == Some(true) {
        text.push_str(" SATURATED: the load generator may be the limit");
    }
    if let (Some(server), Some(loadgen)) = (row["server_cpus_busy_pct"].as_f64(), row["loadgen_cpus_busy_pct"].as_f64())
    {
        text.push_str(&format!("; CPUs busy in all: server's {server:.0}%, loadgen's {loadgen:.0}%"));
    }
    if row["shared_cores"].as_bool() == Some(true) {
        text.push_str("; server and load generator share CPUs");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_set("0"), vec![0]);
        assert_eq!(cpu_set("0-1"), vec![0, 1]);
        assert_eq!(cpu_set("0,2-3,7"), vec![0, 2, 3, 7]);
        assert!(cpu_set("").is_empty());
        let mine = allowed_cpus(std::process::id()).expect("own status");
        assert!(!cpu_set(&mine).is_empty());
    }

    /// A busy loop of this process is seen as the load generator's CPU time, and the share of
    /// its CPUs it used decides the saturated mark.
    #[test]
    fn own_cpu_is_measured() {
        let me = [std::process::id()];
        let start = Reading::take(&[], &me);
        // Spin for 20 ticks of CPU time (the bound only turns a hang into a failure).
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let mut x = 0u64;
        while cpu_ticks(&me) < start.loadgen + 20 && Instant::now() < deadline {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let stop = Reading::take(&[], &me);
        assert!(stop.loadgen >= start.loadgen + 20, "CPU time of a spinning thread not seen");
        let usage = phase_usage(start, stop, stop, 10, 1, &[]);
        let pct = usage["loadgen_cpu_pct"].as_f64().expect("pct");
        assert!(pct > 0.0);
        assert!(usage["server_cpu_us_per_delivery"].is_null(), "no server pid: no server figure");
        let busy = usage["loadgen_cpus_busy_pct"].as_f64().expect("the machine's CPU times");
        assert!(busy > 0.0, "our own CPUs were busy spinning: {busy}%");
        let cpus = cpu_set(usage["loadgen_cpus"].as_str().expect("cpus")).len();
        assert_eq!(usage["loadgen_saturated"].as_bool(), Some(pct > SATURATED_PCT * cpus as f64));
    }
}
