//! Summaries: a line per measured server, a ratio line per peer, and the JSON that
//! `bench/report.py` turns into docs/BENCHMARKS.md.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use super::human;

/// Percentiles in milliseconds.
pub fn latency(hist: &Histogram<u64>) -> Value {
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1_000.0;
    json!({
        "count": hist.len(),
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": hist.max() as f64 / 1_000.0,
    })
}

pub fn latency_text(value: &Value) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.1} ms",
        value["p50_ms"].as_f64().unwrap_or(0.0),
        value["p99_ms"].as_f64().unwrap_or(0.0),
        value["p999_ms"].as_f64().unwrap_or(0.0),
        value["max_ms"].as_f64().unwrap_or(0.0)
    )
}

/// A palaver node's mean latencies of one phase (`node_ms`), for a summary line: empty for
/// other servers.
pub fn node_latency_text(value: &Value) -> String {
    let mean = |name: &str| value[name].as_f64().map_or("-".to_string(), |ms| format!("{ms:.2}"));
    if value.is_null() {
        return String::new();
    }
    let at_most = |name: &str| value[name].as_f64().map_or("-".to_string(), |ms| format!("≤ {ms}"));
    format!(
        "; node means: append wait {} ms, commit {} ms (p50 {} ms, p99 {} ms), delivery wait {} ms",
        mean("append_wait_ms"),
        mean("commit_ms"),
        at_most("commit_p50_le_ms"),
        at_most("commit_p99_le_ms"),
        mean("delivery_wait_ms")
    )
}

/// The machine, for the report.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    // The machine's CPUs, not the ones this process may use (it may be pinned to one).
    let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    json!({ "cpu": model, "cores": cores, "loadgen_cpus": super::cpu::allowed_cpus(std::process::id()), "memory_gib": (mem_kib as f64 / 1048576.0).round(), "kernel": kernel, "loadavg_at_start": load })
}

/// Write the scenario's JSON if `--json PATH` was given.
pub fn write_json(
    path: Option<&str>,
    scenario: &str,
    command: &str,
    rows: &[Value],
    extra: Value,
) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    let mut doc = Map::new();
    doc.insert("scenario".into(), json!(scenario));
    doc.insert("command".into(), json!(command));
    doc.insert(
        "finished_unix".into(),
        json!(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs()),
    );
    doc.insert("machine".into(), machine());
    doc.insert("rows".into(), json!(rows));
    if let Value::Object(extra) = extra {
        doc.extend(extra);
    }
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(path, serde_json::to_string_pretty(&Value::Object(doc))?)?;
    eprintln!("wrote {path}");
    Ok(())
}

/// A progress line every second while a phase runs: `label`, the phase, and what `line` says.
pub struct Progress {
    done: Arc<AtomicBool>,
    phase: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(label: String, line: impl Fn(Duration) -> String + Send + 'static) -> Progress {
        let done = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(Mutex::new(String::from("setting up")));
        let (done2, phase2) = (done.clone(), phase.clone());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut phase_started = Instant::now();
            let mut last_phase = String::new();
            while !done2.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let phase = phase2.lock().expect("phase lock").clone();
                if phase != last_phase {
                    last_phase = phase.clone();
                    phase_started = Instant::now();
                }
                eprintln!(
                    "[{label} {:>4.0}s] {phase}: {}",
                    started.elapsed().as_secs_f64(),
                    line(phase_started.elapsed())
                );
            }
        });
        Progress { done, phase, task }
    }

    pub fn phase(&self, phase: &str) {
        *self.phase.lock().expect("phase lock") = phase.to_string();
    }

    pub fn stop(self) {
        self.done.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

/// "palaver 1.23M/s vs nats (ws) 2.00M/s: 0.62×".
pub fn ratio_line(what: &str, palaver: f64, peer_label: &str, peer: f64, higher_is_better: bool) -> String {
    let ratio = if peer > 0.0 { palaver / peer } else { f64::NAN };
    let verdict = match (higher_is_better, ratio >= 1.0) {
        (true, true) | (false, false) => "palaver ahead",
        _ => "peer ahead",
    };
    format!(
        "{what}: palaver {} vs {peer_label} {} → ratio palaver/peer {ratio:.2} ({verdict})",
        human(palaver),
        human(peer)
    )
}
