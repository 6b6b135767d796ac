//! Groups of connections that receive (and, in `many-rooms`, publish), here or in a child
//! process.
//!
//! One process may hold at most 20,000 open files on this machine, so a scenario splits its
//! connections into groups: with `--procs 1` one [`LocalGroup`] in this process, otherwise one
//! child process per group (`loadgen worker`, driven over its stdin and stdout by a
//! [`RemoteGroup`]). Both answer the same calls:
//!
//! 1. `prepare`: accounts (palaver: register and log in, keeping the tokens), so that what is
//!    measured next is only the connections themselves;
//! 2. `connect`: open, authenticate, join; from then on each connection has a task that reads
//!    and answers keep-alives;
//! 3. `start(window)`: count deliveries of messages sent inside the window; publish if the plan
//!    says so; `collect` returns the window's histogram and counters and starts afresh;
//! 4. `close`.
//!
//! A receiver does as little per delivery as it can, so that the load generator is not what
//! limits a server: it finds the marker in the payload (a substring search, no decoding of the
//! frame) and counts it. Only the receivers [`Receive`] samples also read the clock and record
//! latency; with one publisher, every receiver checks that send times strictly increase (a
//! message out of order or doubled breaks that).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::peers::{self, keepalive, Kind, Opened, Target, Ws};
use super::{new_histogram, now_ns, HistPairs, Marker};

/// Which rooms each connection is in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RoomPlan {
    /// No room (idle connections; NATS connections subscribe to a subject of their own).
    None,
    /// Every connection joins all of these.
    All(Vec<String>),
    /// Connection `i` joins `rooms[i / size]`, and with `direct` also the direct room with
    /// connection `i ^ 1`.
    Groups { rooms: Vec<String>, size: usize, direct: bool, total: usize },
}

/// Everything a group needs; sent as JSON to a worker process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupSpec {
    pub target: Target,
    pub run: String,
    /// Connection indexes `first .. first + count` (they name the users).
    pub first: usize,
    pub count: usize,
    /// URLs this group connects to, round-robin by index.
    pub urls: Vec<String>,
    /// Source addresses 127.0.k.1 for k < sources (1: let the kernel choose).
    pub sources: usize,
    pub rooms: RoomPlan,
    /// Messages per second each connection publishes into its rooms while publishing is on.
    pub publish_rate: f64,
    pub body_bytes: usize,
    /// Connections set up at once.
    pub concurrency: usize,
    /// palaver: tokens made beforehand by `loadgen accounts` (line `i` is user `i`'s), so the
    /// node under test never hashed a password.
    #[serde(default)]
    pub tokens_file: Option<String>,
    #[serde(default)]
    pub receive: Receive,
}

/// What each receiving connection records beyond counting deliveries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receive {
    /// Connection `i` records latency when `i % latency_every == latency_phase`.
    pub latency_every: usize,
    pub latency_phase: usize,
    /// All marked messages come from one publisher: their send times must strictly increase.
    pub check_order: bool,
}

impl Default for Receive {
    fn default() -> Self {
        Receive { latency_every: 1, latency_phase: 0, check_order: false }
    }
}

impl Receive {
    /// Latency on one receiver in `every` of receivers `1..=n`, spread over them (the first
    /// sampled is in the middle of the first `every`, so a small room still has one).
    pub fn sampled(every: usize, n: usize, check_order: bool) -> Receive {
        let every = every.max(1);
        let first = 1 + (every / 2).min(n.saturating_sub(1));
        Receive { latency_every: every, latency_phase: first % every, check_order }
    }

    pub fn samples(&self, index: usize) -> bool {
        index % self.latency_every.max(1) == self.latency_phase
    }
}

impl GroupSpec {
    fn rooms_of(&self, index: usize) -> (Vec<String>, Option<usize>) {
        match &self.rooms {
            RoomPlan::None if self.target.kind == Kind::Nats => (vec![format!("idle.{}.{index}", self.run)], None),
            RoomPlan::None => (Vec::new(), None),
            RoomPlan::All(rooms) => (rooms.clone(), None),
            RoomPlan::Groups { rooms, size, direct, total } => {
                let room = rooms[(index / size.max(&1)).min(rooms.len() - 1)].clone();
                let partner = index ^ 1;
                (vec![room], (*direct && partner < *total).then_some(partner))
            }
        }
    }
}

/// What a group measured in one window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupResult {
    pub connected: u64,
    pub failed: u64,
    /// Connections that ended (closed by the server or broken) since `connect`.
    pub closed: u64,
    /// Messages this group published with a send time inside the window.
    pub published: u64,
    /// Deliveries of messages sent inside the window, on every receiver.
    #[serde(default)]
    pub delivered: u64,
    /// Latencies of those deliveries on the sampled receivers.
    pub hist: HistPairs,
    /// Receivers that sample latency.
    #[serde(default)]
    pub sampled: u64,
    /// Marked messages whose send time did not increase (with `check_order`), this window.
    #[serde(default)]
    pub out_of_order: u64,
    /// Every marked message received since `connect`, in or out of a window.
    #[serde(default)]
    pub deliveries_total: u64,
    pub first_error: Option<String>,
}

impl GroupResult {
    pub fn merge(&mut self, other: &GroupResult) {
        self.connected += other.connected;
        self.failed += other.failed;
        self.closed += other.closed;
        self.published += other.published;
        self.delivered += other.delivered;
        self.hist.0.extend_from_slice(&other.hist.0);
        self.sampled += other.sampled;
        self.out_of_order += other.out_of_order;
        self.deliveries_total += other.deliveries_total;
        if self.first_error.is_none() {
            self.first_error = other.first_error.clone();
        }
    }

    pub fn histogram(&self) -> Histogram<u64> {
        let mut hist = new_histogram();
        self.hist.add_to(&mut hist);
        hist
    }
}

/// Counters the connection tasks of a group share.
struct Shared {
    connected: AtomicU64,
    failed: AtomicU64,
    closed: AtomicU64,
    deliveries: AtomicU64,
    delivered: AtomicU64,
    sampled: AtomicU64,
    out_of_order: AtomicU64,
    win_start: AtomicU64,
    win_end: AtomicU64,
    pub_until: AtomicU64,
    published: AtomicU64,
    flushed: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn new() -> Self {
        Shared {
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            sampled: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            win_start: AtomicU64::new(u64::MAX),
            win_end: AtomicU64::new(0),
            pub_until: AtomicU64::new(0),
            published: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            hist: Mutex::new(new_histogram()),
            first_error: Mutex::new(None),
        }
    }

    fn error(&self, err: impl std::fmt::Display) {
        let mut first = self.first_error.lock().expect("error lock");
        if first.is_none() {
            *first = Some(err.to_string());
        }
    }
}

/// Connections in this process.
pub struct LocalGroup {
    spec: GroupSpec,
    shared: Arc<Shared>,
    tokens: Vec<Option<String>>,
    stop: watch::Sender<bool>,
    flush: watch::Sender<u64>,
    tasks: Vec<JoinHandle<()>>,
}

impl LocalGroup {
    pub fn new(spec: GroupSpec) -> Self {
        let count = spec.count;
        LocalGroup {
            spec,
            shared: Arc::new(Shared::new()),
            tokens: vec![None; count],
            stop: watch::channel(false).0,
            flush: watch::channel(0).0,
            tasks: Vec::new(),
        }
    }

    /// (connections open, deliveries counted so far).
    pub fn counters(&self) -> (u64, u64) {
        let open = self.shared.connected.load(Ordering::Relaxed)
            - self.shared.closed.load(Ordering::Relaxed).min(self.shared.connected.load(Ordering::Relaxed));
        (open, self.shared.deliveries.load(Ordering::Relaxed))
    }

    /// palaver: register and log in every user of the group, keeping the tokens.
    pub async fn prepare(&mut self) -> anyhow::Result<()> {
        if self.spec.target.kind != Kind::Palaver {
            return Ok(());
        }
        if let Some(path) = &self.spec.tokens_file {
            let (_, tokens) = read_tokens(path)?;
            for offset in 0..self.spec.count {
                let index = self.spec.first + offset;
                let token =
                    tokens.get(index.wrapping_sub(1)).ok_or_else(|| anyhow!("{path} has no token for user {index}"))?;
                self.tokens[offset] = Some(token.clone());
            }
            return Ok(());
        }
        let lanes = self.spec.concurrency.clamp(1, 64);
        let spec = Arc::new(self.spec.clone());
        let mut handles = Vec::new();
        for lane in 0..lanes {
            let spec = spec.clone();
            handles.push(tokio::spawn(async move {
                let enc = spec.target.palaver_encoding();
                let mut tokens = Vec::new();
                let mut ws: Option<Ws> = None;
                for offset in (lane..spec.count).step_by(lanes) {
                    let index = spec.first + offset;
                    let url = &spec.urls[index % spec.urls.len()];
                    let mut result = Err(anyhow!("not tried"));
                    for _ in 0..3 {
                        if ws.is_none() {
                            match peers::ws_connect(url, peers::source_addr(index, spec.sources), None).await {
                                Ok(mut fresh) => match peers::palaver_hello(&mut fresh, enc, spec.target.batch).await {
                                    Ok(()) => ws = Some(fresh),
                                    Err(err) => {
                                        result = Err(err);
                                        continue;
                                    }
                                },
                                Err(err) => {
                                    result = Err(err);
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                    continue;
                                }
                            }
                        }
                        let conn = ws.as_mut().expect("connected");
                        result = peers::palaver_account(conn, enc, &peers::user_name(&spec.run, index)).await;
                        if result.is_ok() {
                            break;
                        }
                        ws = None;
                    }
                    tokens.push((offset, result.map_err(|err| err.to_string())));
                }
                if let Some(mut ws) = ws {
                    let _ = ws.close(None).await;
                }
                tokens
            }));
        }
        let mut failures = 0;
        let mut first_error = None;
        for handle in handles {
            for (offset, token) in handle.await? {
                match token {
                    Ok(token) => self.tokens[offset] = Some(token),
                    Err(err) => {
                        failures += 1;
                        first_error.get_or_insert(err);
                    }
                }
            }
        }
        if failures > 0 {
            bail!(
                "{failures} of {} accounts could not be set up; first error: {}",
                self.spec.count,
                first_error.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Set up the accounts and return the tokens, in index order.
    pub async fn accounts(mut self) -> anyhow::Result<Vec<String>> {
        self.prepare().await?;
        Ok(self.tokens.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Open every connection (authenticated, in its rooms) and start its task.
    pub async fn connect(&mut self) -> anyhow::Result<(u64, u64)> {
        let spec = Arc::new(self.spec.clone());
        let marker = Marker::new(&spec.run);
        let concurrency = spec.concurrency.max(1);
        let tokens = std::mem::take(&mut self.tokens);
        let mut opening = futures_util::stream::iter(tokens.into_iter().enumerate().map(|(offset, token)| {
            let spec = spec.clone();
            async move {
                let index = spec.first + offset;
                let url = spec.urls[index % spec.urls.len()].clone();
                let (rooms, direct) = spec.rooms_of(index);
                let src = peers::source_addr(index, spec.sources);
                let opened =
                    peers::open_retrying(&spec.target, &url, src, &spec.run, index, token.as_deref(), &rooms, direct)
                        .await?;
                Ok::<_, anyhow::Error>((index, opened))
            }
        }))
        .buffer_unordered(concurrency);
        while let Some(result) = opening.next().await {
            match result {
                Ok((index, opened)) => {
                    self.shared.connected.fetch_add(1, Ordering::Relaxed);
                    if spec.receive.samples(index) {
                        self.shared.sampled.fetch_add(1, Ordering::Relaxed);
                    }
                    let task = conn_task(
                        spec.target.clone(),
                        spec.run.clone(),
                        index,
                        opened,
                        self.shared.clone(),
                        marker.clone(),
                        spec.receive.clone(),
                        spec.publish_rate,
                        spec.body_bytes,
                        self.stop.subscribe(),
                        self.flush.subscribe(),
                    );
                    self.tasks.push(tokio::spawn(task));
                }
                Err(err) => {
                    self.shared.failed.fetch_add(1, Ordering::Relaxed);
                    self.shared.error(format!("{err:#}"));
                }
            }
        }
        Ok((self.shared.connected.load(Ordering::Relaxed), self.shared.failed.load(Ordering::Relaxed)))
    }

    /// Count deliveries of messages sent in [`win_start`, `win_end`); publish until `pub_until`.
    pub fn start(&self, win_start: u64, win_end: u64, pub_until: u64) {
        self.shared.win_start.store(win_start, Ordering::Relaxed);
        self.shared.win_end.store(win_end, Ordering::Relaxed);
        self.shared.pub_until.store(pub_until, Ordering::Relaxed);
        // A task that flushed the previous window too late must not count in this one.
        self.shared.hist.lock().expect("hist lock").reset();
        self.shared.published.store(0, Ordering::Relaxed);
        self.shared.delivered.store(0, Ordering::Relaxed);
        self.shared.out_of_order.store(0, Ordering::Relaxed);
    }

    /// Gather the window's histogram from every connection task and start a new window.
    pub async fn collect(&self) -> GroupResult {
        let before = self.shared.flushed.load(Ordering::Acquire);
        let alive = self.tasks.iter().filter(|task| !task.is_finished()).count() as u64;
        self.flush.send_modify(|epoch| *epoch += 1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while self.shared.flushed.load(Ordering::Acquire) - before < alive && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let hist = {
            let mut hist = self.shared.hist.lock().expect("hist lock");
            let taken = hist.clone();
            hist.reset();
            taken
        };
        GroupResult {
            connected: self.shared.connected.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            closed: self.shared.closed.load(Ordering::Relaxed),
            published: self.shared.published.swap(0, Ordering::Relaxed),
            delivered: self.shared.delivered.swap(0, Ordering::Relaxed),
            hist: HistPairs::from_histogram(&hist),
            sampled: self.shared.sampled.load(Ordering::Relaxed),
            out_of_order: self.shared.out_of_order.swap(0, Ordering::Relaxed),
            deliveries_total: self.shared.deliveries.load(Ordering::Relaxed),
            first_error: self.shared.first_error.lock().expect("error lock").clone(),
        }
    }

    pub async fn close(self) {
        self.stop.send_replace(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// One connection: read (counting marked messages, recording their latencies if sampled),
/// answer keep-alives, publish when the plan says so, flush its counts when asked.
#[allow(clippy::too_many_arguments)]
async fn conn_task(
    target: Target,
    run: String,
    index: usize,
    opened: Opened,
    shared: Arc<Shared>,
    marker: Marker,
    receive: Receive,
    publish_rate: f64,
    body_bytes: usize,
    mut stop: watch::Receiver<bool>,
    mut flush: watch::Receiver<u64>,
) {
    let Opened { mut ws, rooms, .. } = opened;
    let mut counts = Counts { hist: new_histogram(), delivered: 0 };
    let sampled = receive.samples(index);
    let mut order = OrderCheck::default();
    // The window the local counts were taken for: a flush for another window is stale.
    let mut hist_window = 0u64;
    let mut published = 0u64;
    let mut seq = 0u64;
    let publishing = publish_rate > 0.0 && !rooms.is_empty();
    let period = Duration::from_secs_f64(if publishing { 1.0 / publish_rate } else { 3600.0 });
    // Spread connections' publications over the period.
    let offset = period.mul_f64((index as f64 * 0.618_033_988_75).fract());
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let kind = target.kind;
    let ended = loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break false,
            _ = flush.changed() => {
                flush_into(&shared, &mut counts, hist_window, &mut published);
                shared.flushed.fetch_add(1, Ordering::Release);
            }
            _ = ticker.tick(), if publishing => {
                let now = now_ns();
                if now < shared.pub_until.load(Ordering::Relaxed) {
                    let room = &rooms[(seq as usize) % rooms.len()];
                    let message = peers::publish(&target, room, &run, seq, &marker.body(now, body_bytes));
                    seq += 1;
                    if now >= shared.win_start.load(Ordering::Relaxed) && now < shared.win_end.load(Ordering::Relaxed) {
                        published += 1;
                    }
                    if let Err(err) = ws.send(message).await {
                        shared.error(format!("publish: {err}"));
                        break true;
                    }
                }
            }
            message = ws.next() => {
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(err)) => {
                        shared.error(format!("connection {index}: {err}"));
                        break true;
                    }
                    None => {
                        shared.error(format!("connection {index}: closed by the server"));
                        break true;
                    }
                };
                let payload: &[u8] = match &message {
                    Message::Text(text) => text.as_bytes(),
                    Message::Binary(bytes) => bytes,
                    Message::Close(frame) => {
                        shared.error(format!("connection {index}: closed by the server: {frame:?}"));
                        break true;
                    }
                    _ => continue,
                };
                let now = if sampled { now_ns() } else { 0 };
                let (start, end) = (shared.win_start.load(Ordering::Relaxed), shared.win_end.load(Ordering::Relaxed));
                let mut found = 0;
                marker.scan(payload, |sent| {
                    found += 1;
                    if receive.check_order && !order.in_order(sent) {
                        shared.out_of_order.fetch_add(1, Ordering::Relaxed);
                    }
                    if sent >= start && sent < end {
                        if hist_window != start {
                            // A new window: what is left of the old one was not collected in
                            // time and must not count here.
                            counts.hist.reset();
                            counts.delivered = 0;
                            hist_window = start;
                        }
                        counts.delivered += 1;
                        if sampled {
                            let _ = counts.hist.record((now.saturating_sub(sent) / 1_000).max(1));
                        }
                    }
                });
                if found > 0 {
                    shared.deliveries.fetch_add(found, Ordering::Relaxed);
                }
                if let Some(reply) = keepalive(kind, payload) {
                    if ws.send(reply).await.is_err() {
                        break true;
                    }
                }
            }
        }
    };
    flush_into(&shared, &mut counts, hist_window, &mut published);
    if ended {
        shared.closed.fetch_add(1, Ordering::Relaxed);
        // Still answer a pending flush so `collect` does not wait for this task.
        shared.flushed.fetch_add(1, Ordering::Release);
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
}

/// One publisher stamps strictly increasing send times, so a receiver that sees a time that
/// does not increase got a message out of order or twice.
#[derive(Debug, Default)]
struct OrderCheck {
    last: u64,
}

impl OrderCheck {
    fn in_order(&mut self, sent: u64) -> bool {
        let ok = sent > self.last;
        self.last = self.last.max(sent);
        ok
    }
}

/// A connection's deliveries in the current window, not yet flushed into [`Shared`].
struct Counts {
    hist: Histogram<u64>,
    delivered: u64,
}

fn flush_into(shared: &Shared, counts: &mut Counts, window: u64, published: &mut u64) {
    if counts.delivered > 0 {
        if window == shared.win_start.load(Ordering::Relaxed) {
            shared.delivered.fetch_add(counts.delivered, Ordering::Relaxed);
            if !counts.hist.is_empty() {
                let _ = shared.hist.lock().expect("hist lock").add(&counts.hist);
            }
        }
        counts.delivered = 0;
        counts.hist.reset();
    }
    if *published > 0 {
        shared.published.fetch_add(*published, Ordering::Relaxed);
        *published = 0;
    }
}

// ---- groups in child processes --------------------------------------------------------------

/// A group run by a child process (`loadgen worker`), driven line by line.
pub struct RemoteGroup {
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::Receiver<String>,
    open: Arc<AtomicU64>,
    deliveries: Arc<AtomicU64>,
}

impl RemoteGroup {
    pub async fn spawn(spec: &GroupSpec) -> anyhow::Result<RemoteGroup> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("worker")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker process")?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, replies) = mpsc::channel(16);
        let open = Arc::new(AtomicU64::new(0));
        let deliveries = Arc::new(AtomicU64::new(0));
        let (open2, deliveries2) = (open.clone(), deliveries.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("p ") {
                    let mut parts = rest.split_whitespace().map(|p| p.parse::<u64>().unwrap_or(0));
                    open2.store(parts.next().unwrap_or(0), Ordering::Relaxed);
                    deliveries2.store(parts.next().unwrap_or(0), Ordering::Relaxed);
                } else if tx.send(line).await.is_err() {
                    break;
                }
            }
        });
        stdin.write_all(format!("{}\n", serde_json::to_string(spec)?).as_bytes()).await?;
        Ok(RemoteGroup { child, stdin, replies, open, deliveries })
    }

    async fn command(&mut self, command: &str, timeout: Duration) -> anyhow::Result<String> {
        self.stdin.write_all(format!("{command}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let reply = tokio::time::timeout(timeout, self.replies.recv())
            .await
            .map_err(|_| anyhow!("worker did not answer `{command}` within {timeout:?}"))?
            .ok_or_else(|| anyhow!("worker exited during `{command}`"))?;
        match reply.strip_prefix("err ") {
            Some(err) => bail!("worker: {err}"),
            None => Ok(reply),
        }
    }
}

/// A group here or in a child process.
pub enum Group {
    Local(LocalGroup),
    Remote(RemoteGroup),
}

/// Long set-up steps (10,000 accounts on a busy machine) get this long.
const SETUP_TIMEOUT: Duration = Duration::from_secs(1_800);

impl Group {
    pub async fn new(spec: GroupSpec, remote: bool) -> anyhow::Result<Group> {
        if remote {
            Ok(Group::Remote(RemoteGroup::spawn(&spec).await?))
        } else {
            Ok(Group::Local(LocalGroup::new(spec)))
        }
    }

    pub fn counters(&self) -> (u64, u64) {
        match self {
            Group::Local(group) => group.counters(),
            Group::Remote(group) => (group.open.load(Ordering::Relaxed), group.deliveries.load(Ordering::Relaxed)),
        }
    }

    /// A handle the progress task can read while the group is busy: (open, deliveries).
    pub fn probe(&self) -> Arc<dyn Fn() -> (u64, u64) + Send + Sync> {
        match self {
            Group::Local(group) => {
                let shared = group.shared.clone();
                Arc::new(move || {
                    let connected = shared.connected.load(Ordering::Relaxed);
                    (
                        connected - shared.closed.load(Ordering::Relaxed).min(connected),
                        shared.deliveries.load(Ordering::Relaxed),
                    )
                })
            }
            Group::Remote(group) => {
                let (open, deliveries) = (group.open.clone(), group.deliveries.clone());
                Arc::new(move || (open.load(Ordering::Relaxed), deliveries.load(Ordering::Relaxed)))
            }
        }
    }

    pub async fn prepare(&mut self) -> anyhow::Result<()> {
        match self {
            Group::Local(group) => group.prepare().await,
            Group::Remote(group) => group.command("prepare", SETUP_TIMEOUT).await.map(drop),
        }
    }

    pub async fn connect(&mut self) -> anyhow::Result<(u64, u64)> {
        match self {
            Group::Local(group) => group.connect().await,
            Group::Remote(group) => {
                let reply = group.command("connect", SETUP_TIMEOUT).await?;
                let mut parts = reply.split_whitespace().skip(1).map(|p| p.parse::<u64>().unwrap_or(0));
                Ok((parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
            }
        }
    }

    pub async fn start(&mut self, win_start: u64, win_end: u64, pub_until: u64) -> anyhow::Result<()> {
        match self {
            Group::Local(group) => {
                group.start(win_start, win_end, pub_until);
                Ok(())
            }
            Group::Remote(group) => group
                .command(&format!("start {win_start} {win_end} {pub_until}"), Duration::from_secs(30))
                .await
                .map(drop),
        }
    }

    pub async fn collect(&mut self) -> anyhow::Result<GroupResult> {
        match self {
            Group::Local(group) => Ok(group.collect().await),
            Group::Remote(group) => {
                let reply = group.command("collect", Duration::from_secs(60)).await?;
                let json = reply.strip_prefix("result ").ok_or_else(|| anyhow!("worker: unexpected `{reply}`"))?;
                Ok(serde_json::from_str(json)?)
            }
        }
    }

    /// The worker process of a remote group (its CPU time is the load generator's too).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Group::Local(_) => None,
            Group::Remote(group) => group.child.id(),
        }
    }

    pub async fn close(self) {
        match self {
            Group::Local(group) => group.close().await,
            Group::Remote(mut group) => {
                let _ = group.command("close", Duration::from_secs(30)).await;
                let _ = tokio::time::timeout(Duration::from_secs(10), group.child.wait()).await;
                let _ = group.child.start_kill();
            }
        }
    }
}

/// `loadgen worker`: run one group for a parent process over stdin/stdout.
pub async fn worker_main() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let spec: GroupSpec = serde_json::from_str(&lines.next_line().await?.ok_or_else(|| anyhow!("no spec on stdin"))?)?;
    let mut group = LocalGroup::new(spec);
    let shared = group.shared.clone();
    let progress = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let connected = shared.connected.load(Ordering::Relaxed);
            let open = connected - shared.closed.load(Ordering::Relaxed).min(connected);
            say(&format!("p {open} {}", shared.deliveries.load(Ordering::Relaxed)));
        }
    });
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("prepare") => match group.prepare().await {
                Ok(()) => say("ok"),
                Err(err) => say(&format!("err {err:#}")),
            },
            Some("connect") => match group.connect().await {
                Ok((ok, failed)) => say(&format!("ready {ok} {failed}")),
                Err(err) => say(&format!("err {err:#}")),
            },
            Some("start") => {
                let values: Vec<u64> = words.map(|w| w.parse().unwrap_or(0)).collect();
                if values.len() == 3 {
                    group.start(values[0], values[1], values[2]);
                    say("ok");
                } else {
                    say("err start needs three numbers");
                }
            }
            Some("collect") => {
                let result = group.collect().await;
                say(&format!("result {}", serde_json::to_string(&result)?));
            }
            Some("close") | None => break,
            Some(other) => say(&format!("err unknown command {other}")),
        }
    }
    progress.abort();
    group.close().await;
    say("ok");
    Ok(())
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Split `total` connections (indexes `first..first+total`) into `procs` groups.
pub fn split(total: usize, procs: usize, first: usize) -> Vec<(usize, usize)> {
    let procs = procs.max(1).min(total.max(1));
    let base = total / procs;
    let extra = total % procs;
    let mut start = first;
    (0..procs)
        .map(|k| {
            let count = base + usize::from(k < extra);
            let range = (start, count);
            start += count;
            range
        })
        .collect()
}

/// A tokens file of `loadgen accounts`: `run <id>`, then one token per line for users 1, 2, ….
pub fn read_tokens(path: &str) -> anyhow::Result<(String, Vec<String>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut lines = text.lines();
    let run =
        lines.next().and_then(|l| l.strip_prefix("run ")).ok_or_else(|| anyhow!("{path}: no `run` line"))?.to_string();
    Ok((run, lines.map(str::to_string).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_sampled_on_one_receiver_in_every() {
        let count = |receive: &Receive, n: usize| (1..=n).filter(|&i| receive.samples(i)).count();
        let fanout = Receive::sampled(50, 1_000, true);
        assert_eq!(count(&fanout, 1_000), 20);
        // Spread over the room, not bunched at the first receivers to join.
        assert!(!fanout.samples(1) && fanout.samples(26) && fanout.samples(976));
        // A room smaller than the sampling interval still has one.
        assert_eq!(count(&Receive::sampled(50, 20, true), 20), 1);
        assert_eq!(count(&Receive::sampled(1, 30, false), 30), 30);
        assert_eq!(count(&Receive::default(), 30), 30);
    }

    #[test]
    fn a_send_time_that_does_not_increase_is_out_of_order() {
        let mut order = OrderCheck::default();
        let seen: Vec<bool> = [10, 20, 20, 15, 30, 25, 40].into_iter().map(|sent| order.in_order(sent)).collect();
        // 20 again: doubled; 15 after 20 and 25 after 30: reordered.
        assert_eq!(seen, [true, true, false, false, true, false, true]);
    }
}
