//! `presence`: what presence costs a cluster, in inter-node messages and in memory.
//!
//! 1. A cluster of two (or more) nodes, given (`--palaver URL_A,URL_B --palaver-pid PID_A,PID_B
//!    --palaver-admin ADMIN_A,ADMIN_B`)
//!    or started here through the test harness (`--start-cluster`).
//! 2. N users connect, authenticated, all to node A. Node B holds none of their connections,
//!    only their replicated presence records: once B's `palaver_presence_users` gauge counts
//!    them, B's resident memory growth divided by N is what presence costs per online user on
//!    a node that does not hold the user. A's growth per connection (the connection itself and
//!    its presence) is reported beside it.
//! 3. For `--duration` seconds every user changes state `--per-minute` times a minute
//!    (`set_presence`, online ↔ away, with a status text), the changes spread evenly over the
//!    users, so the cluster sees N × per-minute / 60 changes per second. The nodes'
//!    `palaver_presence_batches_sent_total` and `…_records_sent_total` before and after give
//!    the inter-node presence messages per second, beside the naive count (one message per
//!    change per other node).
//! 4. With `--watchers K`, K users on node B watch `--watch M` of the users on A (all share a
//!    room, which makes them visible): the `presence` pushes they receive per second and the
//!    change → push latency (the status text carries the send time).
//!
//! Everything runs in this process (N + K connections must stay under its open-file limit).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use protocol::{ClientFrame, Encoding, PresenceState, ServerFrame};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::args::Args;
use super::group::{read_tokens, GroupSpec, LocalGroup, Receive, RoomPlan};
use super::peers::{self, Kind, Target, Ws};
use super::report::{latency, latency_text, write_json, Progress};
use super::{human, new_histogram, now_ns, rss_kib, run_id, secs, Marker};

const BATCHES: &str = "palaver_presence_batches_sent_total";
const RECORDS: &str = "palaver_presence_records_sent_total";
const SNAPSHOTS: &str = "palaver_presence_snapshots_sent_total";
const USERS: &str = "palaver_presence_users";
const ONLINE: &str = "palaver_presence_online_users";

/// Counters every connection task shares.
#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    failed: AtomicU64,
    closed: AtomicU64,
    /// `set_presence` sent, answered `ok`, answered with an error.
    sent: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    /// `set_presence` sent by the watched users (pushes expected per watcher).
    sent_watched: AtomicU64,
    /// `presence` frames the watchers received, and those carrying this run's marker.
    pushes: AtomicU64,
    marked_pushes: AtomicU64,
    /// Inter-node presence batches sent by all nodes since the measured period began (for the
    /// progress line).
    batches: AtomicU64,
    hist: Mutex<Option<Histogram<u64>>>,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn error(&self, err: impl std::fmt::Display) {
        let mut first = self.first_error.lock().expect("error lock");
        if first.is_none() {
            *first = Some(err.to_string());
        }
    }

    fn open(&self) -> u64 {
        let connected = self.connected.load(Ordering::Relaxed);
        connected - self.closed.load(Ordering::Relaxed).min(connected)
    }
}

/// When the measured period runs: changes are sent in [start, end).
type Schedule = Option<(tokio::time::Instant, tokio::time::Instant)>;

/// What one connection does after set-up.
#[derive(Clone)]
struct Role {
    enc: Encoding,
    /// Watchers only read; users change their presence on schedule.
    watcher: bool,
    /// The user's place in the schedule: it changes at start + period × slot / users.
    slot: usize,
    users: usize,
    watched: bool,
    period: Duration,
    status_bytes: usize,
}

/// The nodes of the cluster under test (and the harness's cluster, if started here).
struct Nodes {
    target: Target,
    _cluster: Option<::tests::cluster::Cluster>,
}

pub async fn presence(args: &Args, command: &str) -> anyhow::Result<()> {
    let n: usize = args.get("n", 10_000)?;
    let duration = secs(args.get("duration", 60.0)?);
    let per_minute: f64 = args.get("per-minute", 1.0)?;
    let settle = secs(args.get("settle", 3.0)?);
    let watchers: usize = args.get("watchers", 0)?;
    let watch_n: usize = args.get::<usize>("watch", 100)?.min(n);
    let status_bytes: usize = args.get("status-bytes", 40)?;
    let sources: usize = args.get("sources", 4)?;
    let concurrency: usize = args.get::<usize>("concurrency", 64)?.max(1);
    let json_path = args.str("json").map(str::to_string);
    if n == 0 || per_minute <= 0.0 {
        bail!("--n and --per-minute must be positive");
    }
    if n + watchers > 18_000 {
        bail!("{} connections in one process would pass its open-file limit (at most 18,000 here)", n + watchers);
    }
    let nodes = cluster(args).await?;
    let target = nodes.target.clone();
    let enc = target.palaver_encoding();
    if target.urls.len() < 2 {
        bail!("presence needs two nodes: --palaver URL_A,URL_B (or --start-cluster)");
    }
    let (url_a, url_b) = (target.urls[0].clone(), target.urls[1].clone());
    let admin_b = target.admin_of(&url_b).context("presence reads node B's /metrics on its admin port")?.to_string();
    anyhow::ensure!(target.admin.len() == target.urls.len(), "--palaver-admin: one admin port per --palaver URL");
    let pid_a: Vec<u32> = target.pids.first().copied().into_iter().collect();
    let pid_b: Vec<u32> = target.pids.get(1).copied().into_iter().collect();
    if pid_b.is_empty() {
        eprintln!("warning: no --palaver-pid PID_A,PID_B given: resident memory cannot be measured");
    }
    let label = format!("presence {}", target.label());
    let counters = Arc::new(Counters::default());
    let progress = {
        let c = counters.clone();
        Progress::start(label.clone(), move |_| {
            format!(
                "open {}, changes {} ({} ok, {} errors), inter-node batches {}, pushes {}",
                c.open(),
                c.sent.load(Ordering::Relaxed),
                c.ok.load(Ordering::Relaxed),
                c.errors.load(Ordering::Relaxed),
                c.batches.load(Ordering::Relaxed),
                c.pushes.load(Ordering::Relaxed)
            )
        })
    };

    // 1. Accounts: from `loadgen accounts` (the nodes never ran argon2) or made here, on A.
    progress.phase("accounts");
    let started = Instant::now();
    let prepared = args.str("tokens").map(str::to_string);
    let (run, tokens) = match &prepared {
        Some(path) => {
            let (run, tokens) = read_tokens(path)?;
            if tokens.len() < n {
                bail!("{path} holds {} tokens; --n {n} needs as many", tokens.len());
            }
            (run, tokens)
        }
        None => {
            let run = run_id();
            let spec = GroupSpec {
                target: target.clone(),
                run: run.clone(),
                first: 1,
                count: n + watchers,
                urls: vec![url_a.clone()],
                sources,
                rooms: RoomPlan::None,
                publish_rate: 0.0,
                body_bytes: 0,
                concurrency,
                tokens_file: None,
                receive: Receive::default(),
            };
            let tokens = LocalGroup::new(spec).accounts().await.context("setting up accounts")?;
            (run, tokens)
        }
    };
    let accounts_s = started.elapsed().as_secs_f64();
    let marker = Marker::new(&run);
    // The room that makes the watched users visible to the watchers. The first watcher creates
    // it on B, so none of the N users is in a presence table before the measurement, and stays
    // connected (its going offline would be a presence change in the measured periods).
    let (room, mut creator) = if watchers > 0 {
        let token = tokens.get(n).map(String::as_str);
        let opened = peers::open(&target, &url_b, None, &run, n + 1, token, &[], None)
            .await
            .context("the first watcher, to create the watchers' room")?;
        let mut ws = opened.ws;
        let room = peers::palaver_create_room(&mut ws, enc, "presence-watch").await?;
        (Some(room), Some(ws))
    } else {
        (None, None)
    };

    progress.phase("settling before");
    tokio::time::sleep(settle.min(Duration::from_secs(3))).await;
    let before_b = scrape(&admin_b).await.context("scraping node B's /metrics")?;
    let users_b_before = metric(&before_b, USERS);
    let online_b_before = metric(&before_b, ONLINE).unwrap_or(0.0);
    if users_b_before.is_none() {
        eprintln!("warning: node B's /metrics has no {USERS}: does this build implement presence?");
    }
    let rss_a_before = rss_kib(&pid_a);
    let rss_b_before = rss_kib(&pid_b);

    // 2. N users, all on node A.
    progress.phase("connecting users to node A");
    let (stop_tx, _) = watch::channel(false);
    let (schedule_tx, _) = watch::channel::<Schedule>(None);
    let period = Duration::from_secs_f64(60.0 / per_minute);
    let connect_started = Instant::now();
    let mut tasks: Vec<JoinHandle<()>> = Vec::with_capacity(n + watchers + 1);
    if let Some(mut ws) = creator.take() {
        // Read (and so answer pings) until the end.
        let mut stop = stop_tx.subscribe();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    message = ws.next() => if !matches!(message, Some(Ok(_))) { return },
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        }));
    }
    // Every connection's task, users' and watchers' alike.
    let spawn_conn = |ws: Ws, role: Role| {
        tokio::spawn(conn_task(
            ws,
            role,
            marker.clone(),
            counters.clone(),
            schedule_tx.subscribe(),
            stop_tx.subscribe(),
        ))
    };
    {
        let mut opening = futures_util::stream::iter((1..=n).map(|i| {
            let (target, run, url, token) = (target.clone(), run.clone(), url_a.clone(), tokens[i - 1].clone());
            let rooms: Vec<String> = room.iter().filter(|_| i <= watch_n).cloned().collect();
            async move {
                let src = peers::source_addr(i, sources);
                let opened = peers::open_retrying(&target, &url, src, &run, i, Some(&token), &rooms, None).await?;
                Ok::<_, anyhow::Error>((i, opened.ws))
            }
        }))
        .buffer_unordered(concurrency);
        while let Some(result) = opening.next().await {
            match result {
                Ok((i, ws)) => {
                    counters.connected.fetch_add(1, Ordering::Relaxed);
                    let role = Role {
                        enc,
                        watcher: false,
                        slot: i - 1,
                        users: n,
                        watched: watchers > 0 && i <= watch_n,
                        period,
                        status_bytes,
                    };
                    tasks.push(spawn_conn(ws, role));
                }
                Err(err) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    counters.error(format!("{err:#}"));
                }
            }
        }
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    let connected = counters.connected.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed);

    // 3. Until node B's table holds them all.
    progress.phase("waiting for node B's presence table");
    let mut replicated_s = None;
    if let Some(before) = users_b_before {
        // Every user is new to B's table, or (users of an earlier run with the same tokens,
        // remembered offline) online again.
        let want = before + connected as f64;
        let want_online = online_b_before + connected as f64;
        let waited = Instant::now();
        let deadline = waited + Duration::from_secs(120);
        loop {
            let m = scrape(&admin_b).await.unwrap_or_default();
            let users_b = metric(&m, USERS);
            if users_b.is_some_and(|u| u >= want) || metric(&m, ONLINE).is_some_and(|o| o >= want_online) {
                replicated_s = Some(waited.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "warning: node B's {USERS} is {users_b:?} after 120 s, not {want} ({ONLINE} {:?}, not {want_online})",
                    metric(&m, ONLINE)
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    progress.phase("settling after (idle: no changes)");
    let idle_start = (scrape_all(&target.admin).await, Instant::now());
    tokio::time::sleep(settle).await;
    let idle_end = (scrape_all(&target.admin).await, Instant::now());
    let rss_a_after = rss_kib(&pid_a);
    let rss_b_after = rss_kib(&pid_b);
    let online_b = idle_end.0.get(1).and_then(|m| metric(m, ONLINE));
    let users_b_after = idle_end.0.get(1).and_then(|m| metric(m, USERS));
    let idle_s = idle_end.1.duration_since(idle_start.1).as_secs_f64();
    let idle_batches = sum_delta(&idle_start.0, &idle_end.0, BATCHES);

    // 4. Watchers on node B (after B's memory was read).
    let mut watched_visible = 0u64;
    let mut watched_hidden = 0u64;
    let mut watchers_open = 0u64;
    if let Some(room) = &room {
        progress.phase("connecting watchers to node B");
        let names: Vec<String> = (1..=watch_n).map(|i| peers::user_name(&run, i)).collect();
        let mut opening = futures_util::stream::iter((n + 1..=n + watchers).map(|i| {
            let (target, run, url, room, names) =
                (target.clone(), run.clone(), url_b.clone(), room.clone(), names.clone());
            let token = tokens.get(i - 1).cloned();
            async move {
                let src = peers::source_addr(i, sources);
                let opened = peers::open(&target, &url, src, &run, i, token.as_deref(), &[room], None).await?;
                let mut ws = opened.ws;
                match peers::palaver_request(&mut ws, enc, ClientFrame::WatchPresence { req: 8, users: names }).await? {
                    ServerFrame::PresenceList { users, hidden, .. } => {
                        Ok((ws, users.len() as u64, hidden.len() as u64))
                    }
                    other => bail!("watch_presence: {other:?}"),
                }
            }
        }))
        .buffer_unordered(concurrency.min(16));
        while let Some(result) = opening.next().await {
            match result {
                Ok((ws, visible, hidden)) => {
                    watchers_open += 1;
                    watched_visible += visible;
                    watched_hidden += hidden;
                    counters.connected.fetch_add(1, Ordering::Relaxed);
                    let role = Role { enc, watcher: true, slot: 0, users: n, watched: false, period, status_bytes };
                    tasks.push(spawn_conn(ws, role));
                }
                Err(err) => {
                    counters.error(format!("watcher: {err:#}"));
                }
            }
        }
        if watched_hidden > 0 {
            eprintln!("warning: {watched_hidden} watched users were hidden from the watchers");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // 5. The measured period: every user changes `per_minute` times a minute.
    progress.phase("changing presence");
    let start_metrics = scrape_all(&target.admin).await;
    let t0 = tokio::time::Instant::now() + Duration::from_millis(100);
    let t_end = t0 + duration;
    schedule_tx.send_replace(Some((t0, t_end)));
    let baseline_batches = total(&start_metrics, BATCHES);
    while tokio::time::Instant::now() < t_end {
        tokio::time::sleep(Duration::from_secs(1).min(t_end.saturating_duration_since(tokio::time::Instant::now())))
            .await;
        if let Some(now) = total(&scrape_all(&target.admin).await, BATCHES) {
            counters.batches.store((now - baseline_batches.unwrap_or(0.0)).max(0.0) as u64, Ordering::Relaxed);
        }
    }
    // The last changes: one flush interval and the link, then the replies and pushes.
    progress.phase("draining");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let end_metrics = scrape_all(&target.admin).await;
    let rss_a_end = rss_kib(&pid_a);
    let rss_b_end = rss_kib(&pid_b);
    stop_tx.send_replace(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    progress.stop();

    // 6. Figures.
    let seconds = duration.as_secs_f64();
    let sent = counters.sent.load(Ordering::Relaxed);
    let ok = counters.ok.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    let node_count = target.urls.len();
    let changes_per_s = sent as f64 / seconds;
    let naive_per_s = changes_per_s * (node_count - 1) as f64;
    let per_node: Vec<Value> = target
        .urls
        .iter()
        .enumerate()
        .map(|(k, url)| {
            let d = |name| delta(start_metrics.get(k), end_metrics.get(k), name);
            json!({
                "node": url, "batches": d(BATCHES), "records": d(RECORDS), "snapshots": d(SNAPSHOTS),
                "batches_per_s": d(BATCHES).map(|v| v / seconds), "records_per_s": d(RECORDS).map(|v| v / seconds),
            })
        })
        .collect();
    let batches = sum_delta(&start_metrics, &end_metrics, BATCHES);
    let records = sum_delta(&start_metrics, &end_metrics, RECORDS);
    let snapshots = sum_delta(&start_metrics, &end_metrics, SNAPSHOTS);
    let batches_per_s = batches.map(|b| b / seconds);
    let records_per_s = records.map(|r| r / seconds);
    let per_user = |after: u64, before: u64| {
        if connected > 0 && after > 0 && before > 0 {
            Some((after as f64 - before as f64) * 1024.0 / connected as f64)
        } else {
            None
        }
    };
    let b_bytes_per_user = per_user(rss_b_after, rss_b_before);
    let b_bytes_per_user_end = per_user(rss_b_end, rss_b_before);
    let a_bytes_per_conn = per_user(rss_a_after, rss_a_before);
    let hist = counters.hist.lock().expect("hist lock").take().unwrap_or_else(new_histogram);
    let pushes = counters.pushes.load(Ordering::Relaxed);
    let marked = counters.marked_pushes.load(Ordering::Relaxed);
    let expected_pushes = counters.sent_watched.load(Ordering::Relaxed) * watchers_open;
    let first_error = counters.first_error.lock().expect("error lock").clone();

    let mib = |kib: u64| kib as f64 / 1024.0;
    let opt = |v: Option<f64>, digits: usize| v.map_or("n/a".to_string(), |v| format!("{v:.digits$}"));
    println!(
        "{label}: {node_count} nodes, {connected} users online on node A ({failed} failed), accounts {accounts_s:.1} s, connect {connect_s:.1} s, node B's table complete {} s later",
        opt(replicated_s, 2)
    );
    println!(
        "  memory, node B (none of their connections): {:.1} → {:.1} MiB for {} replicated users: {} bytes per online user ({} after every change carried a {status_bytes}-byte status: {:.1} MiB)",
        mib(rss_b_before),
        mib(rss_b_after),
        opt(users_b_after.zip(users_b_before).map(|(a, b)| a - b), 0),
        opt(b_bytes_per_user, 0),
        opt(b_bytes_per_user_end, 0),
        mib(rss_b_end)
    );
    println!(
        "  memory, node A (holds the connections): {:.1} → {:.1} MiB: {} KiB per connection, connection included{}",
        mib(rss_a_before),
        mib(rss_a_after),
        opt(a_bytes_per_conn.map(|b| b / 1024.0), 2),
        if prepared.is_none() { " (accounts made on A in this run: argon2's freed buffers may hide some)" } else { "" }
    );
    println!(
        "  changes: {sent} set_presence in {seconds:.0} s = {}/s ({n} users × {per_minute}/min; {ok} ok, {errors} errors)",
        human(changes_per_s)
    );
    println!(
        "  inter-node presence messages: {}/s (batches, all nodes), carrying {} records/s, {} snapshots; naive (one message per change per other node): {}/s → {} fewer messages",
        opt(batches_per_s, 2),
        opt(records_per_s, 1),
        opt(snapshots, 0),
        human(naive_per_s),
        batches_per_s.filter(|b| *b > 0.0).map_or("n/a".into(), |b| format!("{:.1}×", naive_per_s / b))
    );
    println!("  idle (no changes, {idle_s:.1} s): {} messages/s", opt(idle_batches.map(|b| b / idle_s), 2));
    if watchers_open > 0 {
        println!(
            "  watchers: {watchers_open} on node B watching {watch_n} users each ({watched_hidden} hidden): {} pushes/s received ({pushes} pushes, {marked} of this period's changes, {expected_pushes} expected), change → push {}",
            human(marked as f64 / seconds),
            latency_text(&latency(&hist))
        );
    }
    if let Some(err) = &first_error {
        println!("  first error: {err}");
    }
    // In parts: one json! of every field passes the macro recursion limit.
    let mut row = json!({
        "target": target.label(), "kind": "palaver", "nodes": node_count,
        "users": connected, "failed": failed, "accounts_s": accounts_s, "connect_s": connect_s,
        "prepared_tokens": prepared.is_some(), "replicated_s": replicated_s,
        "presence_users_b_before": users_b_before, "presence_users_b": users_b_after, "presence_online_b": online_b,
    });
    let parts = [
        json!({
            "rss_a_before_kib": rss_a_before, "rss_a_after_kib": rss_a_after, "rss_a_end_kib": rss_a_end,
            "rss_b_before_kib": rss_b_before, "rss_b_after_kib": rss_b_after, "rss_b_end_kib": rss_b_end,
            "b_bytes_per_user": b_bytes_per_user, "b_bytes_per_user_with_status": b_bytes_per_user_end,
            "a_kib_per_connection": a_bytes_per_conn.map(|b| b / 1024.0),
        }),
        json!({
            "per_minute": per_minute, "duration_s": seconds, "status_bytes": status_bytes,
            "changes": sent, "changes_ok": ok, "changes_failed": errors, "changes_per_s": changes_per_s,
            "batches": batches, "records": records, "snapshots": snapshots,
        }),
        json!({
            "batches_per_s": batches_per_s, "records_per_s": records_per_s, "naive_messages_per_s": naive_per_s,
            "naive_over_batches": batches_per_s.filter(|b| *b > 0.0).map(|b| naive_per_s / b),
            "idle_s": idle_s, "idle_batches_per_s": idle_batches.map(|b| b / idle_s),
            "per_node": per_node,
        }),
        json!({
            "watchers": watchers_open, "watch_each": if watchers_open > 0 { watch_n } else { 0 },
            "watched_visible": watched_visible, "watched_hidden": watched_hidden,
            "pushes": pushes, "marked_pushes": marked, "expected_pushes": expected_pushes,
            "pushes_per_s": marked as f64 / seconds, "push_latency": latency(&hist),
            "closed": counters.closed.load(Ordering::Relaxed), "first_error": first_error,
        }),
    ];
    for part in parts {
        if let (Some(row), Value::Object(part)) = (row.as_object_mut(), part) {
            row.extend(part);
        }
    }
    drop(nodes);
    write_json(
        json_path.as_deref(),
        "presence",
        command,
        &[row],
        json!({ "n": n, "duration_s": seconds, "per_minute": per_minute, "watchers": watchers }),
    )
}

/// The cluster: given by `--palaver URL_A,URL_B --palaver-pid PID_A,PID_B`, or started here
/// with the test harness (`--start-cluster [--nodes 2] [--node-env KEY=VALUE]…`; the binary is
/// `$NODE_BIN`, else `palaver` beside this one).
async fn cluster(args: &Args) -> anyhow::Result<Nodes> {
    if !args.flag("start-cluster") {
        let target = args
            .targets()?
            .into_iter()
            .find(|t| t.kind == Kind::Palaver)
            .ok_or_else(|| anyhow!("presence measures palaver only: --palaver URL_A,URL_B"))?;
        return Ok(Nodes { target, _cluster: None });
    }
    let count: usize = args.get("nodes", 2)?;
    if std::env::var_os("PALAVER_BIN").is_none() {
        let bin = match std::env::var_os("NODE_BIN") {
            Some(bin) => std::path::PathBuf::from(bin),
            None => std::env::current_exe()?.parent().ok_or_else(|| anyhow!("no directory"))?.join("palaver"),
        };
        if !bin.exists() {
            bail!("{} not found: build it (cargo build --release -p node) or set NODE_BIN", bin.display());
        }
        // Read by the harness; the nodes themselves start with a cleared environment.
        std::env::set_var("PALAVER_BIN", bin);
    }
    let mut env: Vec<(String, String)> = [
        ("LIMITS__MAX_ROOM_MEMBERS", "20000"),
        ("LIMITS__FRAMES_PER_SECOND", "1000000"),
        ("LIMITS__MAX_CONNECTIONS", "19500"),
        ("LOG__FILTER", "warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for pair in args.all("node-env") {
        let (key, value) = pair.split_once('=').ok_or_else(|| anyhow!("--node-env {pair}: KEY=VALUE"))?;
        env.push((key.trim_start_matches("PALAVER_").to_string(), value.to_string()));
    }
    let options = ::tests::cluster::ClusterOptions {
        heartbeat_interval_ms: 500,
        heartbeat_timeout_ms: 3_000,
        proxied: false,
        env,
    };
    eprintln!("starting a {count}-node cluster");
    let cluster = ::tests::cluster::Cluster::start_with(count, options).await.context("starting the cluster")?;
    let pids = (0..count).filter_map(|i| cluster.member(i).pid()).collect();
    let target = Target {
        kind: Kind::Palaver,
        admin: (0..count).map(|i| cluster.node(i).admin.to_string()).collect(),
        urls: cluster.urls(),
        pids,
        encoding: args.str("encoding").unwrap_or("json").to_string(),
        xmpp_domain: String::new(),
        batch: !args.flag("no-batch"),
        store: None,
    };
    eprintln!("cluster: {} (pids {:?})", target.urls.join(", "), target.pids);
    Ok(Nodes { target, _cluster: Some(cluster) })
}

/// One connection after set-up: a user changes its presence on schedule; a watcher counts the
/// `presence` pushes it gets and how long each took.
async fn conn_task(
    mut ws: Ws,
    role: Role,
    marker: Marker,
    c: Arc<Counters>,
    mut schedule: watch::Receiver<Schedule>,
    mut stop: watch::Receiver<bool>,
) {
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let mut next: Option<tokio::time::Instant> = None;
    let mut end = far;
    let mut changes = 0u64;
    let mut hist = new_histogram();
    let ended = loop {
        if next.is_none() && !role.watcher {
            if let Some((t0, t1)) = *schedule.borrow_and_update() {
                next = Some(t0 + role.period.mul_f64(role.slot as f64 / role.users.max(1) as f64));
                end = t1;
            }
        }
        let due = next.filter(|t| *t < end);
        tokio::select! {
            biased;
            _ = stop.changed() => break false,
            changed = schedule.changed(), if next.is_none() && !role.watcher => {
                if changed.is_err() {
                    break false;
                }
            }
            _ = tokio::time::sleep_until(due.unwrap_or(far)), if due.is_some() => {
                changes += 1;
                let state = if changes % 2 == 1 { PresenceState::Away } else { PresenceState::Online };
                let status = marker.body(now_ns(), role.status_bytes);
                let frame = ClientFrame::SetPresence { req: 100 + changes, state, status: Some(status) };
                if let Err(err) = ws.send(peers::palaver_message(role.enc, &frame)).await {
                    c.error(format!("set_presence: {err}"));
                    break true;
                }
                c.sent.fetch_add(1, Ordering::Relaxed);
                if role.watched {
                    c.sent_watched.fetch_add(1, Ordering::Relaxed);
                }
                next = due.map(|t| t + role.period);
            }
            message = ws.next() => {
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(err)) => {
                        c.error(format!("connection: {err}"));
                        break true;
                    }
                    None => {
                        c.error("connection closed by the node");
                        break true;
                    }
                };
                let (payload, enc): (&[u8], Encoding) = match &message {
                    Message::Text(text) => (text.as_bytes(), Encoding::Json),
                    Message::Binary(bytes) => (bytes, Encoding::MessagePack),
                    Message::Close(frame) => {
                        c.error(format!("closed by the node: {frame:?}"));
                        break true;
                    }
                    _ => continue,
                };
                let frames = match protocol::decode_server_batch(enc, payload) {
                    Ok(frames) => frames,
                    Err(err) => {
                        c.error(format!("undecodable frame: {err}"));
                        continue;
                    }
                };
                for frame in frames {
                match frame {
                    ServerFrame::Ok { req } if req > 100 => {
                        c.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    ServerFrame::Error { req: Some(req), code, message, .. } if req > 100 => {
                        c.errors.fetch_add(1, Ordering::Relaxed);
                        c.error(format!("set_presence: {code:?}: {message}"));
                    }
                    ServerFrame::Presence { presence } if role.watcher => {
                        c.pushes.fetch_add(1, Ordering::Relaxed);
                        if let Some(status) = &presence.status {
                            let now = now_ns();
                            let mut found = false;
                            marker.scan(status.as_bytes(), |sent| {
                                found = true;
                                let _ = hist.record((now.saturating_sub(sent) / 1_000).max(1));
                            });
                            if found {
                                c.marked_pushes.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    _ => {}
                }
                }
            }
        }
    };
    if !hist.is_empty() {
        let mut shared = c.hist.lock().expect("hist lock");
        match shared.as_mut() {
            Some(shared) => {
                let _ = shared.add(&hist);
            }
            None => *shared = Some(hist),
        }
    }
    if ended {
        c.closed.fetch_add(1, Ordering::Relaxed);
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
}

// ---- /metrics --------------------------------------------------------------------------------

type Metrics = HashMap<String, f64>;

/// GET /metrics on a node's admin port (`host:port`): every sample, summed over its label sets.
async fn scrape(host_port: &str) -> anyhow::Result<Metrics> {
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(host_port).await?;
        stream
            .write_all(format!("GET /metrics HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok::<_, anyhow::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| anyhow!("{host_port}/metrics: no answer within 10 s"))??;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| anyhow!("{host_port}/metrics: no body"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("{host_port}/metrics: {}", head.lines().next().unwrap_or(""));
    }
    Ok(parse_metrics(body))
}

fn parse_metrics(body: &str) -> Metrics {
    let mut metrics = Metrics::new();
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find('{') {
            Some(brace) => (&line[..brace], line[brace..].rsplit_once('}').map_or("", |(_, rest)| rest)),
            None => line.split_once(char::is_whitespace).unwrap_or((line, "")),
        };
        if let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            *metrics.entry(name.to_string()).or_default() += value;
        }
    }
    metrics
}

/// Every node's metrics, from their admin ports in URL order (an empty map for a node that did
/// not answer).
async fn scrape_all(admins: &[String]) -> Vec<Metrics> {
    let mut all = Vec::new();
    for admin in admins {
        all.push(scrape(admin).await.unwrap_or_default());
    }
    all
}

fn metric(metrics: &Metrics, name: &str) -> Option<f64> {
    metrics.get(name).copied()
}

fn total(all: &[Metrics], name: &str) -> Option<f64> {
    let values: Vec<f64> = all.iter().filter_map(|m| metric(m, name)).collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

fn delta(before: Option<&Metrics>, after: Option<&Metrics>, name: &str) -> Option<f64> {
    Some(metric(after?, name)? - metric(before?, name)?)
}

fn sum_delta(before: &[Metrics], after: &[Metrics], name: &str) -> Option<f64> {
    let deltas: Vec<f64> = before.iter().zip(after).filter_map(|(b, a)| delta(Some(b), Some(a), name)).collect();
    (!deltas.is_empty()).then(|| deltas.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_labels() {
        let body = "# HELP x\n# TYPE palaver_presence_batches_sent_total counter\n\
                    palaver_presence_batches_sent_total{peer=\"n2\"} 12\n\
                    palaver_presence_batches_sent_total{peer=\"n3\"} 3\n\
                    palaver_presence_users 10000\n";
        let m = parse_metrics(body);
        assert_eq!(metric(&m, BATCHES), Some(15.0));
        assert_eq!(metric(&m, USERS), Some(10_000.0));
        assert_eq!(metric(&m, RECORDS), None);
    }
}
