//! The scenarios. Each takes the servers to measure ([`Target`]s, palaver first) and runs the
//! same procedure against each, one after another, then prints a summary and the ratios.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::args::Args;
use super::cpu::{phase_usage, usage_text, Reading};
use super::group::{split, Group, GroupResult, GroupSpec, Receive, RoomPlan};
use super::pacing::Pacer;
use super::peers::{self, keepalive, Kind, Target, Ws};
use super::report::{latency, latency_text, node_latency_text, ratio_line, write_json, Progress};
use super::{cpu_ticks, human, now_ns, rss_kib, run_id, secs, Marker};

/// Options every scenario shares.
struct Common {
    procs: usize,
    sources: usize,
    concurrency: usize,
    body: usize,
    json: Option<String>,
    /// Fan-out: one receiver in this many records latency (the others only count).
    latency_every: usize,
}

impl Common {
    fn from(args: &Args) -> anyhow::Result<Common> {
        Ok(Common {
            procs: args.get("procs", 1usize)?,
            sources: args.get("sources", 1usize)?,
            concurrency: args.get("concurrency", 64usize)?,
            body: args.get("body", 100usize)?,
            json: args.str("json").map(str::to_string),
            latency_every: args.get("latency-every", 50usize)?,
        })
    }
}

/// Groups for connections `first .. first + total`, split over `procs` processes.
async fn make_groups(common: &Common, template: &GroupSpec, total: usize, first: usize) -> anyhow::Result<Vec<Group>> {
    let remote = common.procs > 1;
    let mut groups = Vec::new();
    for (start, count) in split(total, common.procs, first) {
        let mut spec = template.clone();
        spec.first = start;
        spec.count = count;
        groups.push(Group::new(spec, remote).await?);
    }
    Ok(groups)
}

fn probe_line(groups: &[Group]) -> (u64, u64) {
    groups.iter().map(Group::counters).fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

/// Run `f` on every group at once.
async fn on_all<T>(
    groups: &mut [Group],
    f: impl Fn(&mut Group) -> futures_util::future::BoxFuture<'_, anyhow::Result<T>>,
) -> anyhow::Result<Vec<T>> {
    join_all(groups.iter_mut().map(f)).await.into_iter().collect()
}

async fn collect_all(groups: &mut [Group]) -> anyhow::Result<GroupResult> {
    let results = on_all(groups, |g| Box::pin(g.collect())).await?;
    let mut merged = GroupResult::default();
    for result in &results {
        merged.merge(result);
    }
    Ok(merged)
}

async fn close_all(groups: Vec<Group>) {
    join_all(groups.into_iter().map(Group::close)).await;
}

/// A progress line over groups, refreshed by the [`Progress`] task.
fn group_progress(label: String, probes: Vec<ProbeHandle>, extra: Option<Arc<AtomicU64>>) -> Progress {
    let last = Arc::new(AtomicU64::new(0));
    Progress::start(label, move |_| {
        let (open, deliveries) = probes.iter().map(|p| p.get()).fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
        let before = last.swap(deliveries, Ordering::Relaxed);
        let mut line =
            format!("open {open}, deliveries {deliveries} (+{}/s)", human(deliveries.saturating_sub(before) as f64));
        if let Some(extra) = &extra {
            line.push_str(&format!(", published {}", extra.load(Ordering::Relaxed)));
        }
        line
    })
}

/// Read-only access to a group's counters for the progress task (groups are busy meanwhile).
#[derive(Clone)]
struct ProbeHandle(Arc<dyn Fn() -> (u64, u64) + Send + Sync>);

impl ProbeHandle {
    fn get(&self) -> (u64, u64) {
        (self.0)()
    }
}

fn probes(groups: &[Group]) -> Vec<ProbeHandle> {
    groups.iter().map(|g| ProbeHandle(g.probe())).collect()
}

// ---- idle -----------------------------------------------------------------------------------

/// N authenticated idle connections: the server's resident memory before and after, per
/// connection. Connections open in two rounds (a tenth, then the rest) so the marginal cost per
/// connection is reported beside the average one. With `--tokens FILE` (from
/// `loadgen accounts`, against a node since restarted) palaver's accounts exist already and
/// the node never ran argon2, whose freed buffers would otherwise both inflate the "before"
/// reading and hide connection memory in the allocator's free lists.
pub async fn idle(args: &Args, command: &str) -> anyhow::Result<()> {
    let common = Common::from(args)?;
    let n: usize = args.get("n", 1_000)?;
    let settle = secs(args.get("settle", 5.0)?);
    let tokens = args.str("tokens").map(str::to_string);
    let mut rows = Vec::new();
    for target in args.targets()? {
        let label = target.label();
        if target.pids.is_empty() {
            eprintln!("warning: no --{}-pid given; resident memory of {label} cannot be measured", target.kind.name());
        }
        let (run, tokens_file) = match (&tokens, target.kind) {
            (Some(path), Kind::Palaver) => (super::group::read_tokens(path)?.0, Some(path.clone())),
            _ => (run_id(), None),
        };
        let template = GroupSpec {
            target: target.clone(),
            run: run.clone(),
            first: 0,
            count: 0,
            urls: target.urls.clone(),
            sources: common.sources,
            rooms: RoomPlan::None,
            publish_rate: 0.0,
            body_bytes: common.body,
            concurrency: common.concurrency,
            tokens_file,
            receive: Receive::default(),
        };
        let warm_n = (n / 10).max(1).min(n);
        let mut warm = make_groups(&common, &template, warm_n, 1).await?;
        let mut main = make_groups(&common, &template, n - warm_n, 1 + warm_n).await?;
        let mut all_probes = probes(&warm);
        all_probes.extend(probes(&main));
        let progress = group_progress(format!("idle {label}"), all_probes, None);
        progress.phase("accounts");
        let started = Instant::now();
        on_all(&mut warm, |g| Box::pin(g.prepare())).await.context("setting up accounts")?;
        on_all(&mut main, |g| Box::pin(g.prepare())).await.context("setting up accounts")?;
        let accounts_s = started.elapsed().as_secs_f64();
        progress.phase("settling before");
        tokio::time::sleep(settle.min(Duration::from_secs(3))).await;
        let before = rss_kib(&target.pids);
        progress.phase("connecting (first tenth)");
        let started = Instant::now();
        let opened_warm = on_all(&mut warm, |g| Box::pin(g.connect())).await?;
        tokio::time::sleep(settle.min(Duration::from_secs(3))).await;
        let middle = rss_kib(&target.pids);
        progress.phase("connecting (the rest)");
        let opened_main = on_all(&mut main, |g| Box::pin(g.connect())).await?;
        let connect_s = started.elapsed().as_secs_f64();
        let (ok_warm, failed_warm) = opened_warm.iter().fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
        let (ok_main, failed_main) = opened_main.iter().fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
        progress.phase("settling after");
        tokio::time::sleep(settle).await;
        let after = rss_kib(&target.pids);
        let result_warm = collect_all(&mut warm).await?;
        let result_main = collect_all(&mut main).await?;
        progress.stop();
        let open_warm = ok_warm.saturating_sub(result_warm.closed);
        let open_main = ok_main.saturating_sub(result_main.closed);
        let open_now = open_warm + open_main;
        let failed = failed_warm + failed_main;
        let per_conn_kib = if open_now > 0 { after.saturating_sub(before) as f64 / open_now as f64 } else { f64::NAN };
        let marginal_kib =
            if open_main > 0 { after.saturating_sub(middle) as f64 / open_main as f64 } else { f64::NAN };
        println!(
            "idle {label}: {open_now} connections open ({failed} failed), RSS {:.1} → {:.1} → {:.1} MiB: {:.2} KiB per connection (marginal {:.2} KiB over the last {open_main}); accounts {accounts_s:.1} s, connect {connect_s:.1} s",
            before as f64 / 1024.0,
            middle as f64 / 1024.0,
            after as f64 / 1024.0,
            per_conn_kib,
            marginal_kib
        );
        let first_error = result_warm.first_error.or(result_main.first_error);
        if let Some(err) = &first_error {
            println!("  first error: {err}");
        }
        rows.push(json!({
            "target": label, "kind": target.kind.name(), "connections": open_now, "failed": failed,
            "rss_before_kib": before, "rss_tenth_kib": middle, "rss_after_kib": after,
            "kib_per_connection": per_conn_kib, "marginal_kib_per_connection": marginal_kib,
            "accounts_s": accounts_s, "connect_s": connect_s, "first_error": first_error,
            "prepared_tokens": tokens.is_some() && target.kind == Kind::Palaver,
        }));
        close_all(warm).await;
        close_all(main).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    print_ratios(&rows, "memory per idle connection (KiB)", "kib_per_connection", false);
    write_json(common.json.as_deref(), "idle", command, &rows, json!({ "n": n }))
}

/// `loadgen accounts --palaver URL --n N --tokens FILE`: register and log in users 1..=N and
/// write their tokens, for an `idle` run against a freshly restarted node.
pub async fn accounts(args: &Args) -> anyhow::Result<()> {
    let common = Common::from(args)?;
    let n: usize = args.get("n", 1_000)?;
    let path = args.str("tokens").ok_or_else(|| anyhow!("--tokens FILE is required"))?.to_string();
    let target = args
        .targets()?
        .into_iter()
        .find(|t| t.kind == Kind::Palaver)
        .ok_or_else(|| anyhow!("--palaver URL is required"))?;
    let run = run_id();
    let spec = GroupSpec {
        target: target.clone(),
        run: run.clone(),
        first: 1,
        count: n,
        urls: target.urls.clone(),
        sources: common.sources,
        rooms: RoomPlan::None,
        publish_rate: 0.0,
        body_bytes: common.body,
        concurrency: common.concurrency,
        tokens_file: None,
        receive: Receive::default(),
    };
    let started = Instant::now();
    let tokens = super::group::LocalGroup::new(spec).accounts().await?;
    let mut text = format!("run {run}\n");
    for token in tokens {
        text.push_str(&token);
        text.push('\n');
    }
    std::fs::write(&path, text)?;
    println!("accounts: {n} users of run {run} in {:.1} s; tokens in {path}", started.elapsed().as_secs_f64());
    Ok(())
}

fn print_ratios(rows: &[Value], what: &str, key: &str, higher_is_better: bool) {
    let Some(palaver) = rows.iter().find(|r| r["kind"] == "palaver") else { return };
    let ours = palaver[key].as_f64().unwrap_or(f64::NAN);
    for peer in rows.iter().filter(|r| r["kind"] != "palaver") {
        let theirs = peer[key].as_f64().unwrap_or(f64::NAN);
        println!("{}", ratio_line(what, ours, peer["target"].as_str().unwrap_or("?"), theirs, higher_is_better));
    }
}

// ---- fan-out, saturation, cross-node -------------------------------------------------------

/// One room (or subject) of N receivers and one publisher, set up once for several phases.
struct Fanout {
    target: Target,
    run: String,
    marker: Marker,
    room: String,
    groups: Vec<Group>,
    publisher: Ws,
    subscribers: u64,
    body: usize,
    seq: u64,
    label: String,
    /// Publications of earlier phases not yet acknowledged (palaver) or echoed (peers).
    backlog: u64,
    /// Marked messages the receivers had counted when the last phase ended.
    deliveries_total: u64,
    /// This process and the worker processes: the load generator's CPU time.
    loadgen_pids: Vec<u32>,
}

/// What the publisher did in one phase.
#[derive(Debug, Clone)]
struct Published {
    in_window: u64,
    total: u64,
    /// Acks (palaver) or own copies (peers) received back.
    echoes: u64,
    errors: u64,
    /// Sends skipped because the publisher was held back more than a second (open loop).
    skipped: u64,
    /// How late each paced send left after its scheduled time (µs; 0 if it left ahead),
    /// inside the window: counted in the server's latency, it is the load generator's own
    /// share (it shares the cores with the server) unless the window of unanswered sends was
    /// full, when it is the server holding the publisher back.
    late: Histogram<u64>,
}

impl Default for Published {
    fn default() -> Self {
        Published {
            in_window: 0,
            total: 0,
            echoes: 0,
            errors: 0,
            skipped: 0,
            late: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        }
    }
}

/// The publisher's lateness for a summary line: empty at full speed (nothing is scheduled).
fn publish_late_text(late: &Value) -> String {
    if late.is_null() {
        return String::new();
    }
    format!(
        "; publisher late p50 {:.2} ms, p99 {:.2} ms",
        late["p50_ms"].as_f64().unwrap_or(0.0),
        late["p99_ms"].as_f64().unwrap_or(0.0)
    )
}

/// Cross-node: which node owns the room (commits its entries). The two are different paths, so
/// a run that left it to chance measured one or the other (the room id decides its owner):
/// with the room on the publisher's node every entry crosses the link to the receivers' node
/// as a delivery, and the publisher's window paces only that node; with the room on the
/// receivers' node every send crosses the other way and the fan-out is local.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Publisher,
    Receivers,
}

impl Placement {
    fn parse(list: &str) -> anyhow::Result<Vec<Placement>> {
        list.split(',')
            .map(|side| match side.trim() {
                "publisher" => Ok(Placement::Publisher),
                "receivers" => Ok(Placement::Receivers),
                other => bail!("--owner {other}: expected publisher or receivers"),
            })
            .collect()
    }

    fn label(self) -> &'static str {
        match self {
            Placement::Publisher => "room on the publisher's node",
            Placement::Receivers => "room on the receivers' node",
        }
    }
}

/// A new room created through `url` whose owner is (publisher) or is not (receivers) the node
/// behind `url`, asked of that node's `/cluster?room=` on its admin port (a room's owner follows
/// from its id, so another id is tried until one lands where asked).
async fn room_placed(target: &Target, url: &str, run: &str, placement: Placement) -> anyhow::Result<String> {
    let admin = target.admin_of(url)?;
    for attempt in 0..64 {
        let room = peers::palaver_new_room(target, url, run, 0, &format!("fanout-{attempt}")).await?;
        let status = peers::http_get_json(admin, &format!("/cluster?room={room}")).await?;
        let node = status["node"].as_str().context("/cluster names no node")?;
        let owner = status["room"]["owner"].as_str().context("/cluster names no owner")?;
        if (owner == node) == (placement == Placement::Publisher) {
            return Ok(room);
        }
    }
    bail!("no room landed on the {placement:?} side in 64 tries")
}

impl Fanout {
    async fn setup(
        common: &Common,
        target: &Target,
        n: usize,
        cross: bool,
        placement: Option<Placement>,
    ) -> anyhow::Result<Fanout> {
        let run = run_id();
        let label = match placement {
            Some(placement) => format!("{}, {}", target.label(), placement.label()),
            None => target.label(),
        };
        let publisher_url = target.urls[0].clone();
        let sub_urls = if cross && target.urls.len() > 1 { target.urls[1..].to_vec() } else { target.urls.clone() };
        let room = match (target.kind, placement) {
            (Kind::Palaver, Some(placement)) => {
                room_placed(target, &publisher_url, &run, placement).await.context("creating the room")?
            }
            (Kind::Palaver, None) => {
                peers::palaver_new_room(target, &publisher_url, &run, 0, "fanout").await.context("creating the room")?
            }
            _ => target.room_name(&format!("fanout-{run}")),
        };
        let template = GroupSpec {
            target: target.clone(),
            run: run.clone(),
            first: 0,
            count: 0,
            urls: sub_urls,
            sources: common.sources,
            rooms: RoomPlan::All(vec![room.clone()]),
            publish_rate: 0.0,
            body_bytes: common.body,
            concurrency: common.concurrency,
            tokens_file: None,
            receive: Receive::sampled(common.latency_every, n, true),
        };
        let mut groups = make_groups(common, &template, n, 1).await?;
        let progress = group_progress(format!("fanout {label}"), probes(&groups), None);
        progress.phase("accounts");
        let result = async {
            on_all(&mut groups, |g| Box::pin(g.prepare())).await.context("setting up accounts")?;
            progress.phase("joining");
            on_all(&mut groups, |g| Box::pin(g.connect())).await
        }
        .await;
        progress.stop();
        let opened = result?;
        let (ok, failed) = opened.iter().fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
        if failed > 0 {
            let result = collect_all(&mut groups).await?;
            eprintln!("warning: {failed} of {n} receivers failed to join: {}", result.first_error.unwrap_or_default());
        }
        if ok == 0 {
            bail!("no receiver could join");
        }
        let publisher_rooms = if target.kind == Kind::Palaver { Vec::new() } else { vec![room.clone()] };
        let opened = peers::open(target, &publisher_url, None, &run, 0, None, &publisher_rooms, None)
            .await
            .context("publisher")?;
        let mut loadgen_pids = vec![std::process::id()];
        loadgen_pids.extend(groups.iter().filter_map(Group::pid));
        Ok(Fanout {
            target: target.clone(),
            marker: Marker::new(&run),
            run,
            room,
            groups,
            publisher: opened.ws,
            subscribers: ok,
            body: common.body,
            seq: 0,
            label,
            backlog: 0,
            deliveries_total: 0,
            loadgen_pids,
        })
    }

    /// One phase: publish at `rate` (0: as fast as `window` allows) for warm-up + duration,
    /// wait for the deliveries to drain, collect.
    async fn phase(&mut self, rate: f64, window: u64, warmup: Duration, duration: Duration) -> anyhow::Result<Value> {
        self.catch_up(Duration::from_secs(120)).await?;
        let pub_start = now_ns() + 200_000_000;
        let win_start = pub_start + warmup.as_nanos() as u64;
        let win_end = win_start + duration.as_nanos() as u64;
        on_all(&mut self.groups, |g| Box::pin(g.start(win_start, win_end, 0))).await?;
        let (_, deliveries_before) = probe_line(&self.groups);
        let sent = Arc::new(AtomicU64::new(0));
        let progress = group_progress(
            format!("fanout {} @{}", self.label, if rate > 0.0 { human(rate) } else { "max".into() }),
            probes(&self.groups),
            Some(sent.clone()),
        );
        // palaver's own account of where the time went (its latency histograms), read around
        // the phase; on a cluster, the publisher's node (the one the first URL names). Without
        // its admin port (--palaver-admin) there is no such account.
        let node_url = (self.target.kind == Kind::Palaver)
            .then(|| self.target.admin_of(&self.target.urls[0]).ok().map(str::to_string))
            .flatten();
        let node_before = match &node_url {
            Some(url) => peers::node_latency_totals(url).await.ok(),
            None => None,
        };
        progress.phase("publishing");
        tokio::time::sleep(Duration::from_nanos(pub_start.saturating_sub(now_ns()))).await;
        let cpu_start = Reading::take(&self.target.pids, &self.loadgen_pids);
        let published = self.publish(rate, window, pub_start, win_start, win_end, &sent).await;
        let cpu_stop = Reading::take(&self.target.pids, &self.loadgen_pids);
        progress.phase("draining");
        // Wait until every copy arrived or nothing arrived for a second (10 s at most).
        let expected = published.as_ref().map(|p| p.total).unwrap_or(0) * self.subscribers;
        let drain_deadline = Instant::now() + Duration::from_secs(10);
        let mut last = (probe_line(&self.groups).1, Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = probe_line(&self.groups).1;
            if now - deliveries_before >= expected || Instant::now() > drain_deadline {
                break;
            }
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(1) {
                break;
            }
        }
        let cpu_end = Reading::take(&self.target.pids, &self.loadgen_pids);
        progress.stop();
        let published = published?;
        self.backlog = published.total.saturating_sub(published.echoes);
        let result = collect_all(&mut self.groups).await?;
        let deliveries = result.deliveries_total.saturating_sub(self.deliveries_total);
        self.deliveries_total = result.deliveries_total;
        let usage = phase_usage(cpu_start, cpu_stop, cpu_end, deliveries, published.total, &self.target.pids);
        let node_ms = match (&node_url, &node_before) {
            (Some(url), Some(before)) => match peers::node_latency_totals(url).await {
                Ok(after) => peers::node_latency_means(before, &after),
                Err(_) => Value::Null,
            },
            _ => Value::Null,
        };
        let hist = result.histogram();
        let seconds = duration.as_secs_f64();
        let expected_window = published.in_window * self.subscribers;
        let delivered = result.delivered;
        let mut row = json!({
            "target": self.label, "kind": self.target.kind.name(), "receivers": self.subscribers,
            "offered_rate": rate, "window": window, "body_bytes": self.body,
            "published_per_s": published.in_window as f64 / seconds,
            "deliveries_per_s": delivered as f64 / seconds,
            "delivered": delivered, "expected": expected_window,
            "delivered_pct": if expected_window > 0 { 100.0 * delivered as f64 / expected_window as f64 } else { 0.0 },
            "latency": latency(&hist),
            "receivers_closed": result.closed, "publish_errors": published.errors, "publish_skipped": published.skipped,
            "publish_late": if published.late.is_empty() { Value::Null } else { latency(&published.late) },
            "duration_s": seconds, "node_ms": node_ms,
            "latency_receivers": result.sampled, "out_of_order": result.out_of_order,
        });
        if let (Value::Object(row), Value::Object(usage)) = (&mut row, usage) {
            row.extend(usage);
        }
        println!(
            "fanout {} x{} @{}: published {}/s, delivered {}/s ({:.1}% of {}), {} (on {} receivers){}{}{}{}{}",
            self.label,
            self.subscribers,
            if rate > 0.0 { format!("{}/s", human(rate)) } else { "max".into() },
            human(row["published_per_s"].as_f64().unwrap_or(0.0)),
            human(row["deliveries_per_s"].as_f64().unwrap_or(0.0)),
            row["delivered_pct"].as_f64().unwrap_or(0.0),
            expected_window,
            latency_text(&row["latency"]),
            result.sampled,
            if result.closed > 0 { format!(", {} receivers closed", result.closed) } else { String::new() },
            if result.out_of_order > 0 { format!(", {} OUT OF ORDER", result.out_of_order) } else { String::new() },
            usage_text(&row),
            node_latency_text(&row["node_ms"]),
            publish_late_text(&row["publish_late"]),
        );
        if published.skipped > 0 {
            println!(
                "  the publisher could not keep {rate}/s: {} sends skipped after falling a second behind",
                published.skipped
            );
        }
        Ok(row)
    }

    /// Wait until the server has answered every earlier publication (an overloaded phase leaves
    /// a queue behind; the next phase must not measure it).
    async fn catch_up(&mut self, limit: Duration) -> anyhow::Result<()> {
        if self.backlog == 0 {
            return Ok(());
        }
        eprintln!("[fanout {}] waiting for {} earlier publications to be answered", self.label, self.backlog);
        let kind = self.target.kind;
        let deadline = tokio::time::Instant::now() + limit;
        while self.backlog > 0 {
            let message = match tokio::time::timeout_at(deadline, self.publisher.next()).await {
                Ok(message) => message.ok_or_else(|| anyhow!("publisher connection ended"))??,
                Err(_) => {
                    eprintln!("[fanout {}] {} publications still unanswered after {limit:?}", self.label, self.backlog);
                    break;
                }
            };
            let payload: &[u8] = match &message {
                Message::Text(text) => text.as_bytes(),
                Message::Binary(bytes) => bytes,
                _ => continue,
            };
            let answered = match kind {
                Kind::Palaver => {
                    let hit = |needle: &[u8]| memchr::memmem::find(payload, needle).is_some();
                    u64::from(
                        hit(b"\"type\":\"ack\"") || hit(b"\"type\":\"error\"") || hit(b"\xa3ack") || hit(b"\xa5error"),
                    )
                }
                _ => {
                    let mut found = 0;
                    self.marker.scan(payload, |_| found += 1);
                    if let Some(reply) = keepalive(kind, payload) {
                        self.publisher.send(reply).await?;
                    }
                    found
                }
            };
            self.backlog = self.backlog.saturating_sub(answered);
        }
        // Let the receivers drain what was delivered meanwhile.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(())
    }

    async fn publish(
        &mut self,
        rate: f64,
        window: u64,
        pub_start: u64,
        win_start: u64,
        win_end: u64,
        sent: &AtomicU64,
    ) -> anyhow::Result<Published> {
        let kind = self.target.kind;
        let json = self.target.palaver_encoding() == protocol::Encoding::Json;
        let ack_json = memchr::memmem::Finder::new(b"\"type\":\"ack\"");
        let err_json = memchr::memmem::Finder::new(b"\"type\":\"error\"");
        let ack_mp = memchr::memmem::Finder::new(b"\xa3ack");
        let err_mp = memchr::memmem::Finder::new(b"\xa5error");
        let mut done = Published::default();
        let window = window.max(1);
        let mut pacer = (rate > 0.0).then(|| Pacer::new((1e9 / rate) as u64, pub_start));
        tokio::time::sleep_until(
            tokio::time::Instant::now() + Duration::from_nanos(pub_start.saturating_sub(now_ns())),
        )
        .await;
        let ws = &mut self.publisher;
        let mut draining_until: Option<Instant> = None;
        loop {
            let now = now_ns();
            let sending = now < win_end;
            if !sending && draining_until.is_none() {
                draining_until = Some(Instant::now() + Duration::from_secs(5));
            }
            if let Some(until) = draining_until {
                if done.echoes >= done.total || Instant::now() > until {
                    break;
                }
            }
            // Send what is due (open loop at `rate`; `pacing` says how each is stamped), within
            // the window.
            let mut fed = 0;
            while sending && done.total - done.echoes.min(done.total) < window && fed < 256 {
                let stamp = match pacer.as_mut() {
                    Some(pacer) => match pacer.next_send(now_ns()) {
                        Some(stamp) => stamp,
                        None => break,
                    },
                    None => now_ns(),
                };
                if stamp >= win_end {
                    break;
                }
                let body = self.marker.body(stamp, self.body);
                let message = peers::publish(&self.target, &self.room, &self.run, self.seq, &body);
                self.seq += 1;
                ws.feed(message).await?;
                fed += 1;
                done.total += 1;
                if stamp >= win_start {
                    done.in_window += 1;
                    if pacer.is_some() {
                        done.late.saturating_record((now_ns() - stamp) / 1_000);
                    }
                }
            }
            if fed > 0 {
                ws.flush().await?;
                sent.store(done.total, Ordering::Relaxed);
            }
            // Wait for the next due time or for something from the server.
            let wait = if !sending || done.total - done.echoes.min(done.total) >= window {
                Duration::from_millis(50)
            } else if let Some(pacer) = &pacer {
                pacer.wait(now_ns())
            } else {
                Duration::ZERO
            };
            let message = if wait.is_zero() {
                match futures_util::FutureExt::now_or_never(ws.next()) {
                    Some(message) => message,
                    None => continue,
                }
            } else {
                match tokio::time::timeout(wait, ws.next()).await {
                    Ok(message) => message,
                    Err(_) => continue,
                }
            };
            let message = message.ok_or_else(|| anyhow!("publisher connection ended"))??;
            let payload: &[u8] = match &message {
                Message::Text(text) => text.as_bytes(),
                Message::Binary(bytes) => bytes,
                Message::Close(frame) => bail!("publisher closed by server: {frame:?}"),
                _ => continue,
            };
            match kind {
                Kind::Palaver => {
                    let (ack, err) = if json { (&ack_json, &err_json) } else { (&ack_mp, &err_mp) };
                    // A batched message may hold several replies.
                    let (acks, errors) = (ack.find_iter(payload).count() as u64, err.find_iter(payload).count() as u64);
                    done.echoes += acks + errors;
                    if errors > 0 {
                        done.errors += errors;
                        if done.errors <= 3 {
                            eprintln!("publisher error: {}", String::from_utf8_lossy(payload));
                        }
                    }
                }
                _ => {
                    self.marker.scan(payload, |_| done.echoes += 1);
                    if let Some(reply) = keepalive(kind, payload) {
                        ws.send(reply).await?;
                    }
                }
            }
        }
        done.skipped = pacer.map_or(0, |pacer| pacer.skipped);
        Ok(done)
    }

    async fn close(mut self) {
        let _ = self.publisher.close(None).await;
        close_all(std::mem::take(&mut self.groups)).await;
    }
}

/// One room, N receivers, one publisher at M messages per second (0: as fast as the window
/// allows): deliveries per second and latency.
pub async fn fanout(args: &Args, command: &str, cross: bool) -> anyhow::Result<()> {
    let common = Common::from(args)?;
    let n: usize = args.get("n", 1_000)?;
    let rates: Vec<f64> =
        args.str("rate").unwrap_or("0").split(',').map(|r| r.trim().parse::<f64>()).collect::<Result<_, _>>()?;
    let window: u64 = args.get("window", 64)?;
    let warmup = secs(args.get("warmup", 2.0)?);
    let duration = secs(args.get("duration", 10.0)?);
    let scenario = if cross { "cross-node" } else { "fanout" };
    // Cross-node: each placement of the room in turn (`--owner`, both by default).
    let placements = Placement::parse(args.str("owner").unwrap_or("publisher,receivers"))?;
    let rounds: usize = args.get("repeat", 1)?;
    anyhow::ensure!(rounds >= 1, "--repeat must be at least 1");
    let mut rows = Vec::new();
    // Round after round, each server in turn is set up, runs every rate and is closed: runs of
    // different servers interleave, so a slow spell of this machine lands on all of them rather
    // than on whichever server ran during it, and each run has the machine to itself.
    let targets = args.targets()?;
    let all_pids: Vec<u32> = targets.iter().flat_map(|target| target.pids.clone()).collect();
    for round in 0..rounds {
        for target in &targets {
            let placed = cross && target.kind == Kind::Palaver && target.urls.len() > 1;
            if cross && target.kind == Kind::Palaver && !placed && round == 0 {
                eprintln!("note: cross-node with one palaver node: receivers and publisher share it");
            }
            let setups: Vec<Option<Placement>> =
                if placed { placements.iter().copied().map(Some).collect() } else { vec![None] };
            for placement in setups {
                // A slow server may still be working off its last backlog: start once every
                // server measured here is quiet, so that it does not take this run's cores.
                wait_quiet(&all_pids, Duration::from_secs(30)).await;
                let mut fanout = match Fanout::setup(&common, target, n, cross, placement).await {
                    Ok(fanout) => fanout,
                    Err(err) => {
                        println!("{scenario} {}: set-up failed: {err:#}", target.label());
                        rows.push(json!({ "target": target.label(), "kind": target.kind.name(), "error": format!("{err:#}") }));
                        continue;
                    }
                };
                for &rate in &rates {
                    match fanout.phase(rate, window, warmup, duration).await {
                        Ok(mut row) => {
                            row["round"] = json!(round);
                            rows.push(row);
                        }
                        Err(err) => {
                            println!("{scenario} {} @{rate}: failed: {err:#}", fanout.label);
                            rows.push(json!({ "target": fanout.label, "kind": target.kind.name(), "offered_rate": rate, "error": format!("{err:#}") }));
                            break;
                        }
                    }
                }
                fanout.close().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    if rounds > 1 {
        mark_medians(&mut rows);
    }
    let rows_for_ratios: Vec<Value> =
        rows.iter().filter(|row| rounds == 1 || row["median"].as_bool() == Some(true)).cloned().collect();
    for &rate in &rates {
        let same: Vec<Value> =
            rows_for_ratios.iter().filter(|r| r["offered_rate"].as_f64() == Some(rate)).cloned().collect();
        print_ratios(
            &same,
            &format!("deliveries/s @{}", if rate > 0.0 { human(rate) } else { "max".into() }),
            "deliveries_per_s",
            true,
        );
    }
    write_json(
        common.json.as_deref(),
        scenario,
        command,
        &rows,
        json!({ "n": n, "window": window, "duration_s": duration.as_secs_f64(), "rounds": rounds }),
    )
}

/// Wait until `pids` together use less than a tenth of a core over half a second, or `limit`.
async fn wait_quiet(pids: &[u32], limit: Duration) {
    let start = Instant::now();
    let half_second_ticks = 50; // USER_HZ is 100 on Linux: 50 ticks are half a second
    loop {
        let before = cpu_ticks(pids);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let quiet = (cpu_ticks(pids) - before) * 10 < half_second_ticks;
        if quiet || start.elapsed() > limit {
            if start.elapsed() > Duration::from_secs(2) {
                let how = if quiet { "until the servers were quiet" } else { "and the servers are still busy" };
                eprintln!("waited {:.1} s {how}", start.elapsed().as_secs_f64());
            }
            return;
        }
    }
}

/// With several rounds, mark each server's median round at each rate (`"median": true`, with
/// every round's deliveries/s and p99 beside it): by deliveries/s at `max`, where they are the
/// point, by p99 at a fixed rate, where latency is.
fn mark_medians(rows: &mut [Value]) {
    let mut groups: Vec<(String, f64)> = Vec::new();
    for row in rows.iter().filter(|row| row.get("round").is_some()) {
        let key = (row["target"].as_str().unwrap_or("").to_string(), row["offered_rate"].as_f64().unwrap_or(0.0));
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    for (target, rate) in groups {
        let metric = |row: &Value| {
            if rate > 0.0 {
                row["latency"]["p99_ms"].as_f64().unwrap_or(f64::MAX)
            } else {
                row["deliveries_per_s"].as_f64().unwrap_or(0.0)
            }
        };
        let mut same: Vec<usize> = (0..rows.len())
            .filter(|&i| {
                rows[i].get("round").is_some()
                    && rows[i]["target"].as_str() == Some(target.as_str())
                    && rows[i]["offered_rate"].as_f64() == Some(rate)
            })
            .collect();
        let all_deliveries: Vec<f64> =
            same.iter().map(|&i| rows[i]["deliveries_per_s"].as_f64().unwrap_or(0.0)).collect();
        let all_p99: Vec<f64> = same.iter().map(|&i| rows[i]["latency"]["p99_ms"].as_f64().unwrap_or(0.0)).collect();
        same.sort_by(|&a, &b| metric(&rows[a]).total_cmp(&metric(&rows[b])));
        let median = same[same.len() / 2];
        rows[median]["median"] = json!(true);
        rows[median]["rounds_deliveries_per_s"] = json!(all_deliveries);
        rows[median]["rounds_p99_ms"] = json!(all_p99);
    }
}

/// Raise the publish rate step by step until p99 passes `--p99-ms`; report the highest rate
/// that held, then p99 at half of it.
pub async fn saturation(args: &Args, command: &str) -> anyhow::Result<()> {
    let common = Common::from(args)?;
    let n: usize = args.get("n", 100)?;
    let from: f64 = args.get("from", 50.0)?;
    let factor: f64 = args.get("factor", 1.5)?;
    let steps: usize = args.get("steps", 14)?;
    let bound_ms: f64 = args.get("p99-ms", 20.0)?;
    // --full: run every step (the whole latency curve) instead of stopping at the bound.
    let full = args.flag("full");
    let warmup = secs(args.get("warmup", 1.0)?);
    let duration = secs(args.get("duration", 5.0)?);
    let mut rows = Vec::new();
    let mut summary = Vec::new();
    for target in args.targets()? {
        let mut fanout = match Fanout::setup(&common, &target, n, false, None).await {
            Ok(fanout) => fanout,
            Err(err) => {
                println!("saturation {}: set-up failed: {err:#}", target.label());
                continue;
            }
        };
        let mut best: Option<f64> = None;
        let mut rate = from;
        let mut retried = false;
        let mut failed_once = false;
        // Rates tried (a retry of the same rate does not count).
        let mut step = 0;
        while step < steps.min(40) {
            let row = match fanout.phase(rate, 100_000, warmup, duration).await {
                Ok(row) => row,
                Err(err) => {
                    println!("saturation {} @{rate}: failed: {err:#}", target.label());
                    break;
                }
            };
            let p99 = row["latency"]["p99_ms"].as_f64().unwrap_or(f64::INFINITY);
            let kept_up = row["published_per_s"].as_f64().unwrap_or(0.0) >= 0.9 * rate
                && row["delivered_pct"].as_f64().unwrap_or(0.0) >= 99.0;
            let holds = p99 <= bound_ms && kept_up;
            let mut row = row;
            row["holds"] = json!(holds);
            row["phase"] = json!(if retried { "sweep (retry)" } else { "sweep" });
            rows.push(row);
            if !holds {
                // A shared machine has hiccups (a single stall of 100 ms fails a step of a few
                // dozen messages): a step fails only if it fails twice in a row.
                if !retried {
                    retried = true;
                    continue;
                }
                if !full {
                    break;
                }
                // The whole curve: go on to the next rate; `best` stays the last that held
                // before the first failure.
                failed_once = true;
            } else if !failed_once {
                best = Some(rate);
            }
            retried = false;
            rate *= factor;
            step += 1;
        }
        let mut half_p99 = Value::Null;
        if let Some(best) = best {
            if let Ok(mut row) = fanout.phase(best / 2.0, 100_000, warmup, duration).await {
                half_p99 = row["latency"]["p99_ms"].clone();
                row["phase"] = json!("half");
                rows.push(row);
            }
        }
        let label = target.label();
        let line = match best {
            Some(best) => format!(
                "saturation {label} x{}: highest rate with p99 ≤ {bound_ms} ms: {}/s ({} deliveries/s); p99 at half of it: {} ms",
                fanout.subscribers,
                human(best),
                human(best * fanout.subscribers as f64),
                half_p99
            ),
            None => format!("saturation {label}: even {from}/s did not hold p99 ≤ {bound_ms} ms"),
        };
        println!("{line}");
        summary.push(json!({ "target": label, "kind": target.kind.name(), "receivers": fanout.subscribers, "saturation_rate": best,
            "saturation_deliveries_per_s": best.map(|b| b * fanout.subscribers as f64), "p99_at_half_ms": half_p99, "p99_bound_ms": bound_ms }));
        fanout.close().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    print_ratios(&summary, "saturation deliveries/s", "saturation_deliveries_per_s", true);
    write_json(common.json.as_deref(), "saturation", command, &rows, json!({ "n": n, "summary": summary }))
}

// ---- many rooms -----------------------------------------------------------------------------

/// Many small rooms and direct conversations at once: every connection posts at a low rate,
/// alternating between its room and its direct room.
pub async fn many_rooms(args: &Args, command: &str) -> anyhow::Result<()> {
    let common = Common::from(args)?;
    let rooms_n: usize = args.get("rooms", 100)?;
    let size: usize = args.get("size", 10)?;
    let rate: f64 = args.get("rate", 1.0)?;
    let direct = !args.flag("no-direct");
    let warmup = secs(args.get("warmup", 2.0)?);
    let duration = secs(args.get("duration", 10.0)?);
    let total = rooms_n * size;
    let mut rows = Vec::new();
    for target in args.targets()? {
        let label = target.label();
        let run = run_id();
        let rooms: Vec<String> = match target.kind {
            Kind::Palaver => {
                let made = futures_util::stream::iter((0..rooms_n).map(|r| {
                    let target = target.clone();
                    let run = run.clone();
                    async move {
                        let url = target.urls[(r * size) % target.urls.len()].clone();
                        peers::palaver_new_room(&target, &url, &run, r * size, &format!("room {r}")).await
                    }
                }))
                .buffered(common.concurrency.clamp(1, 32))
                .collect::<Vec<_>>()
                .await;
                match made.into_iter().collect::<anyhow::Result<Vec<_>>>() {
                    Ok(rooms) => rooms,
                    Err(err) => {
                        println!("many-rooms {label}: creating rooms failed: {err:#}");
                        continue;
                    }
                }
            }
            _ => (0..rooms_n).map(|r| target.room_name(&format!("room-{run}-{r}"))).collect(),
        };
        let template = GroupSpec {
            target: target.clone(),
            run: run.clone(),
            first: 0,
            count: 0,
            urls: target.urls.clone(),
            sources: common.sources,
            rooms: RoomPlan::Groups { rooms, size, direct, total },
            publish_rate: rate,
            body_bytes: common.body,
            concurrency: common.concurrency,
            tokens_file: None,
            receive: Receive::default(),
        };
        let mut groups = make_groups(&common, &template, total, 0).await?;
        let progress = group_progress(format!("many-rooms {label}"), probes(&groups), None);
        progress.phase("accounts");
        let setup = async {
            on_all(&mut groups, |g| Box::pin(g.prepare())).await?;
            progress.phase("joining");
            on_all(&mut groups, |g| Box::pin(g.connect())).await
        }
        .await;
        let opened = match setup {
            Ok(opened) => opened,
            Err(err) => {
                progress.stop();
                println!("many-rooms {label}: set-up failed: {err:#}");
                close_all(groups).await;
                continue;
            }
        };
        let (ok, failed) = opened.iter().fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
        progress.phase("publishing");
        let pub_start = now_ns() + 200_000_000;
        let win_start = pub_start + warmup.as_nanos() as u64;
        let win_end = win_start + duration.as_nanos() as u64;
        on_all(&mut groups, |g| Box::pin(g.start(win_start, win_end, win_end))).await?;
        tokio::time::sleep(Duration::from_nanos(win_end.saturating_sub(now_ns())) + Duration::from_secs(2)).await;
        progress.phase("draining");
        let result = collect_all(&mut groups).await?;
        progress.stop();
        let hist = result.histogram();
        let seconds = duration.as_secs_f64();
        // Alternating room and direct room: half the posts reach `size` members, half reach 2.
        let fan = if direct { (size as f64 + 2.0) / 2.0 } else { size as f64 };
        let expected = result.published as f64 * fan;
        let row = json!({
            "target": label, "kind": target.kind.name(), "connections": ok, "failed": failed,
            "rooms": rooms_n, "room_size": size, "direct": direct, "rate_per_connection": rate,
            "published_per_s": result.published as f64 / seconds,
            "deliveries_per_s": result.delivered as f64 / seconds,
            "delivered_pct": if expected > 0.0 { 100.0 * result.delivered as f64 / expected } else { 0.0 },
            "latency": latency(&hist), "closed": result.closed, "first_error": result.first_error,
        });
        let mut row = row;
        row["p99"] = row["latency"]["p99_ms"].clone();
        println!(
            "many-rooms {label}: {ok} connections in {rooms_n} rooms of {size}{}: published {}/s, delivered {}/s ({:.1}% of ≈{expected:.0}), {}",
            if direct { " + direct rooms" } else { "" },
            human(row["published_per_s"].as_f64().unwrap_or(0.0)),
            human(row["deliveries_per_s"].as_f64().unwrap_or(0.0)),
            row["delivered_pct"].as_f64().unwrap_or(0.0),
            latency_text(&row["latency"])
        );
        rows.push(row);
        close_all(groups).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    print_ratios(&rows, "many-rooms p99 latency (ms)", "p99", false);
    write_json(
        common.json.as_deref(),
        "many-rooms",
        command,
        &rows,
        json!({ "rooms": rooms_n, "size": size, "rate": rate }),
    )
}

// ---- reconnect storm ------------------------------------------------------------------------

/// K clients of one room go away, a backlog accumulates, and all of them resume at once with
/// their cursors: replayed messages per second and the time until every one is live. palaver
/// only: none of the peers replays a per-user log on reconnect.
pub async fn reconnect_storm(args: &Args, command: &str) -> anyhow::Result<()> {
    let common = Common::from(args)?;
    let k: usize = args.get("clients", 1_000)?;
    let backlog: u64 = args.get("backlog", 100)?;
    let mut rows = Vec::new();
    for target in args.targets()? {
        if target.kind != Kind::Palaver {
            println!("reconnect-storm {}: skipped (no resume from a per-user cursor in this peer)", target.label());
            continue;
        }
        let row = storm_one(&common, &target, k, backlog).await?;
        rows.push(row);
    }
    write_json(common.json.as_deref(), "reconnect-storm", command, &rows, json!({ "clients": k, "backlog": backlog }))
}

async fn storm_one(common: &Common, target: &Target, k: usize, backlog: u64) -> anyhow::Result<Value> {
    let run = run_id();
    let enc = target.palaver_encoding();
    let batch = target.batch;
    let urls = target.urls.clone();
    let room = peers::palaver_new_room(target, &urls[0], &run, 0, "storm").await?;
    let progress_count = Arc::new(AtomicU64::new(0));
    let progress = {
        let count = progress_count.clone();
        Progress::start(format!("reconnect-storm {}", target.label()), move |_| {
            format!("{} clients done", count.load(Ordering::Relaxed))
        })
    };
    // 1. Accounts, membership, and each client's cursor at the end of set-up.
    progress.phase("accounts and joins");
    let sources = common.sources;
    let clients: Vec<anyhow::Result<(usize, String)>> = futures_util::stream::iter((1..=k).map(|i| {
        let (target, run, room, url, count) =
            (target.clone(), run.clone(), room.clone(), urls[i % urls.len()].clone(), progress_count.clone());
        async move {
            let mut ws = peers::ws_connect(&url, peers::source_addr(i, sources), None).await?;
            peers::palaver_hello(&mut ws, enc, batch).await?;
            let token = peers::palaver_account(&mut ws, enc, &peers::user_name(&run, i)).await?;
            peers::palaver_authenticate(&mut ws, enc, &token, None).await?;
            peers::palaver_join(&mut ws, enc, &room).await?;
            let _ = ws.close(None).await;
            count.fetch_add(1, Ordering::Relaxed);
            let _ = &target;
            Ok((i, token))
        }
    }))
    .buffer_unordered(common.concurrency.max(1))
    .collect()
    .await;
    let clients: Vec<(usize, String)> = clients.into_iter().collect::<anyhow::Result<_>>()?;
    progress_count.store(0, Ordering::Relaxed);
    progress.phase("reading cursors");
    let cursors: Vec<anyhow::Result<(usize, String, u64)>> =
        futures_util::stream::iter(clients.into_iter().map(|(i, token)| {
            let (url, count) = (urls[i % urls.len()].clone(), progress_count.clone());
            async move {
                let mut ws = peers::ws_connect(&url, peers::source_addr(i, sources), None).await?;
                peers::palaver_hello(&mut ws, enc, batch).await?;
                let head = peers::palaver_authenticate(&mut ws, enc, &token, None).await?;
                let _ = ws.close(None).await;
                count.fetch_add(1, Ordering::Relaxed);
                Ok((i, token, head))
            }
        }))
        .buffer_unordered(common.concurrency.max(1))
        .collect()
        .await;
    let cursors: Vec<(usize, String, u64)> = cursors.into_iter().collect::<anyhow::Result<_>>()?;
    // 2. The backlog, while everyone is away.
    progress.phase("posting the backlog");
    let marker = Marker::new(&run);
    let opened = peers::open(target, &urls[0], None, &run, 0, None, &[], None).await?;
    let mut ws = opened.ws;
    let posted_at = Instant::now();
    let mut acked = 0u64;
    let mut sent = 0u64;
    // Where the backlog starts in the room: a client that was live until now has everything
    // before it, so it presents that position (the room is large: its entries are not in the
    // user logs).
    let mut first_seq: Option<u64> = None;
    while acked < backlog {
        while sent < backlog && sent - acked < 64 {
            ws.feed(peers::publish(target, &room, &run, sent, &marker.body(now_ns(), common.body))).await?;
            sent += 1;
        }
        ws.flush().await?;
        for frame in peers::palaver_recv(&mut ws).await? {
            match frame {
                protocol::ServerFrame::Ack { seq, .. } => {
                    acked += 1;
                    first_seq = Some(first_seq.map_or(seq, |first: u64| first.min(seq)));
                }
                protocol::ServerFrame::Error { message, .. } => bail!("posting the backlog: {message}"),
                _ => {}
            }
        }
    }
    let post_s = posted_at.elapsed().as_secs_f64();
    let _ = ws.close(None).await;
    // 3. The storm: everyone at once.
    progress_count.store(0, Ordering::Relaxed);
    progress.phase("storm");
    let positions: std::collections::BTreeMap<String, u64> =
        first_seq.map(|seq| (room.clone(), seq - 1)).into_iter().collect();
    let storm_start = Instant::now();
    let tasks: Vec<_> = cursors
        .into_iter()
        .map(|(i, token, head)| {
            let url = urls[i % urls.len()].clone();
            let (marker, positions, target) = (marker.clone(), positions.clone(), target.clone());
            let count = progress_count.clone();
            tokio::spawn(async move {
                let src = peers::source_addr(i, sources);
                let result = resume_one(&url, src, &target, &token, head, positions, &marker).await;
                count.fetch_add(1, Ordering::Relaxed);
                result.map(|(replayed, _)| (replayed, storm_start.elapsed()))
            })
        })
        .collect();
    let mut replayed_total = 0u64;
    let mut times = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
    let mut failures = 0;
    let mut first_error = None;
    for task in tasks {
        match task.await? {
            Ok((replayed, elapsed)) => {
                replayed_total += replayed;
                let _ = times.record((elapsed.as_millis() as u64).max(1));
            }
            Err(err) => {
                failures += 1;
                first_error.get_or_insert(format!("{err:#}"));
            }
        }
    }
    progress.stop();
    let all_live_s = times.max() as f64 / 1000.0;
    let nodes = urls.len() as f64;
    let rate = if all_live_s > 0.0 { replayed_total as f64 / all_live_s } else { 0.0 };
    println!(
        "reconnect-storm {}: {} clients × backlog {backlog} on {nodes} node(s): replayed {replayed_total} in {all_live_s:.2} s = {}/s ({}/s per node); time to live p50 {} ms, p99 {} ms, max {} ms; {failures} failed (backlog posted at {:.0} msg/s)",
        target.label(),
        k,
        human(rate),
        human(rate / nodes),
        times.value_at_quantile(0.5),
        times.value_at_quantile(0.99),
        times.max(),
        backlog as f64 / post_s
    );
    if let Some(err) = &first_error {
        println!("  first error: {err}");
    }
    Ok(json!({
        "target": target.label(), "kind": "palaver", "clients": k, "backlog": backlog, "nodes": urls.len(),
        "replayed": replayed_total, "expected": backlog * k as u64, "all_live_s": all_live_s,
        "replayed_per_s": rate, "replayed_per_s_per_node": rate / nodes,
        "live_p50_ms": times.value_at_quantile(0.5), "live_p99_ms": times.value_at_quantile(0.99), "live_max_ms": times.max(),
        "failed": failures, "first_error": first_error, "backlog_post_rate": backlog as f64 / post_s,
    }))
}

/// The `type` of the frames a resuming client must see even in a message that also holds
/// replayed entries, as JSON and as MessagePack (tag first, as serde writes it).
const STORM_SIGNALS: [&[u8]; 6] = [
    b"\"type\":\"live\"",
    b"\"type\":\"resync\"",
    b"\"type\":\"error\"",
    b"\xa4type\xa4live",
    b"\xa4type\xa6resync",
    b"\xa4type\xa5error",
];

/// Reconnect with `cursor` and read until `live`: returns (marked messages replayed, frames).
async fn resume_one(
    url: &str,
    src: Option<std::net::Ipv4Addr>,
    target: &Target,
    token: &str,
    cursor: u64,
    rooms: std::collections::BTreeMap<String, u64>,
    marker: &Marker,
) -> anyhow::Result<(u64, u64)> {
    let enc = target.palaver_encoding();
    let mut ws = peers::ws_connect(url, src, None).await?;
    peers::palaver_hello(&mut ws, enc, target.batch).await?;
    ws.send(peers::palaver_message(
        enc,
        &protocol::ClientFrame::Authenticate { req: 9, token: token.into(), cursor: Some(cursor), rooms },
    ))
    .await?;
    let (mut replayed, mut frames) = (0u64, 0u64);
    loop {
        let message = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .map_err(|_| anyhow!("no live within 120 s"))?
            .ok_or_else(|| anyhow!("connection ended"))??;
        let payload: &[u8] = match &message {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(bytes) => bytes,
            Message::Close(frame) => bail!("closed: {frame:?}"),
            _ => continue,
        };
        frames += 1;
        let mut found = 0;
        marker.scan(payload, |_| found += 1);
        replayed += found;
        // Decode only a message that may hold something other than replayed entries (with
        // batches, `live` can share a message with the last of them).
        if found > 0 && !STORM_SIGNALS.iter().any(|signal| memchr::memmem::find(payload, signal).is_some()) {
            continue;
        }
        let mut is_live = false;
        for frame in protocol::decode_server_batch(enc, payload)? {
            match frame {
                protocol::ServerFrame::Live { .. } => is_live = true,
                protocol::ServerFrame::Resync { .. } => bail!("resync: the backlog is beyond the log's retention"),
                protocol::ServerFrame::Error { code, message, .. } => bail!("{code:?}: {message}"),
                _ => {}
            }
        }
        if is_live {
            break;
        }
    }
    let _ = ws.close(None).await;
    Ok((replayed, frames))
}
