//! The multi-process cluster harness: N real `palaver` processes on loopback sharing one SQLite
//! file, plus the faults the cluster must survive.
//!
//! - [`Cluster::start`] starts nodes `n1`, `n2`, … each with its own cluster port; later nodes
//!   seed from the running ones. [`Cluster::add_node`] scales up; [`Cluster::kill`] (kill -9),
//!   [`Cluster::terminate`] (SIGTERM), [`Cluster::pause`]/[`Cluster::resume`]
//!   (SIGSTOP/SIGCONT) and [`Cluster::partition`]/[`Cluster::heal`] inject faults.
//! - Partitions go through a fault-injecting TCP proxy run by the harness: node `nK` listens for
//!   peers on `127.0.0.(10+K)`, binds its outgoing links to that address, and advertises the
//!   proxy in front of it. The proxy tells links apart by source address, so it can cut any
//!   pair of nodes: a cut link stops carrying bytes but stays open (what a real partition
//!   looks like: only the heartbeat timeout notices).
//! - [`Chatter`] is a client that keeps going through all of that: it retries `unavailable`
//!   with the same message id, and when its node goes away it reconnects to another and
//!   resumes from its cursor and its positions in large rooms, keeping one ledger (and one
//!   ledger of large-room entries) across connections.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::{
    check_ledger, Client, ClientFrame, Encoding, Entry, EntryKind, ErrorCode, Node, NodeOptions, ServerFrame, TestStore,
};

/// The cookie of test clusters.
pub const TEST_COOKIE: &str = "palaver-test-cluster-cookie-0123456789";

/// How a test cluster is set up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    /// Put the fault-injecting proxy between nodes (needed for [`Cluster::partition`]).
    pub proxied: bool,
    /// Extra `PALAVER_…` variables for every node.
    pub env: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        // Short enough for quick failover in tests, long enough (6 intervals) that a loaded
        // 2-core machine does not see false deaths.
        ClusterOptions { heartbeat_interval_ms: 250, heartbeat_timeout_ms: 2_000, proxied: true, env: Vec::new() }
    }
}

impl ClusterOptions {
    /// Every room of three or more members is a large room (`limits.fanout_max_members = 2`).
    pub fn large_rooms() -> Self {
        ClusterOptions { env: vec![("LIMITS__FANOUT_MAX_MEMBERS".into(), "2".into())], ..ClusterOptions::default() }
    }
}

/// One node of a test cluster.
pub struct Member {
    pub name: String,
    pub node: Node,
    /// What peers dial (the proxy's address when proxied).
    pub advertise: String,
    pub paused: bool,
}

impl Member {
    pub fn pid(&self) -> Option<u32> {
        self.node.child.id()
    }
}

pub struct Cluster {
    pub options: ClusterOptions,
    /// Index k holds node `n{k+1}`; `None` once it was killed or terminated.
    pub members: Vec<Option<Member>>,
    shared: tempfile::TempDir,
    proxy: Proxy,
}

impl Cluster {
    /// Start `n` nodes and wait until every one sees all of them live.
    pub async fn start(n: usize) -> anyhow::Result<Cluster> {
        Cluster::start_with(n, ClusterOptions::default()).await
    }

    pub async fn start_with(n: usize, options: ClusterOptions) -> anyhow::Result<Cluster> {
        let mut cluster =
            Cluster { options, members: Vec::new(), shared: tempfile::tempdir()?, proxy: Proxy::default() };
        for _ in 0..n {
            cluster.spawn_node(Vec::new()).await?;
        }
        cluster.wait_converged().await?;
        Ok(cluster)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.shared.path().to_path_buf()
    }

    /// Start one more node (scale up) and wait until the cluster converges on it.
    pub async fn add_node(&mut self) -> anyhow::Result<usize> {
        let index = self.spawn_node(Vec::new()).await?;
        self.wait_converged().await?;
        Ok(index)
    }

    /// Start a node with extra environment, without waiting for convergence (bad-input tests).
    pub async fn spawn_node(&mut self, extra_env: Vec<(String, String)>) -> anyhow::Result<usize> {
        let index = self.members.len();
        let name = format!("n{}", index + 1);
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + index as u8));
        let listen = free_port(ip)?;
        let advertise =
            if self.options.proxied { self.proxy.front(index, listen).await?.to_string() } else { listen.to_string() };
        let seeds: Vec<String> = self.members.iter().flatten().map(|member| member.advertise.clone()).collect();
        // On SQLite the nodes share the data directory (and the database file in it); on
        // FoundationDB each has its own, as on separate hosts, and they share the subspace.
        let store = TestStore::from_env();
        let data_dir = match store {
            TestStore::Sqlite => self.data_dir(),
            TestStore::Fdb { .. } => self.data_dir().join(&name),
        };
        let mut node_options = NodeOptions { name: name.clone(), data_dir: Some(data_dir), ..NodeOptions::default() };
        for (key, value) in store.env_for(&self.data_dir()) {
            node_options = node_options.env(&key, value);
        }
        let mut node_options = node_options
            .env("CLUSTER__ENABLED", "true")
            .env("CLUSTER__LISTEN", listen)
            .env("CLUSTER__ADVERTISE", &advertise)
            .env("CLUSTER__COOKIE", TEST_COOKIE)
            .env("CLUSTER__HEARTBEAT_INTERVAL_MS", self.options.heartbeat_interval_ms)
            .env("CLUSTER__HEARTBEAT_TIMEOUT_MS", self.options.heartbeat_timeout_ms)
            .env("LIMITS__REQUEST_TIMEOUT_MS", 5_000)
            // Media on a filesystem every node sees, as a shared volume would be.
            .env("MEDIA__DIR", self.data_dir().join("media").display());
        if !seeds.is_empty() {
            node_options = node_options.env(
                "CLUSTER__SEEDS",
                format!("[{}]", seeds.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(",")),
            );
        }
        for (key, value) in self.options.env.iter().chain(&extra_env) {
            node_options = node_options.env(key, value);
        }
        let node = Node::start(node_options).await?;
        self.members.push(Some(Member { name, node, advertise, paused: false }));
        Ok(index)
    }

    pub fn member(&self, index: usize) -> &Member {
        self.members[index].as_ref().expect("node is running")
    }

    pub fn node(&self, index: usize) -> &Node {
        &self.member(index).node
    }

    /// Indexes of running, unpaused nodes.
    pub fn running(&self) -> Vec<usize> {
        self.members.iter().enumerate().filter(|(_, m)| m.as_ref().is_some_and(|m| !m.paused)).map(|(i, _)| i).collect()
    }

    /// WebSocket URLs of running, unpaused nodes.
    pub fn urls(&self) -> Vec<String> {
        self.running().into_iter().map(|i| self.node(i).ws_url()).collect()
    }

    /// kill -9.
    pub async fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        let mut member = self.members[index].take().context("node not running")?;
        member.node.kill9().await
    }

    /// SIGTERM, and wait for a clean exit.
    pub async fn terminate(&mut self, index: usize) -> anyhow::Result<()> {
        let mut member = self.members[index].take().context("node not running")?;
        let status = member.node.terminate().await?;
        anyhow::ensure!(status.success(), "{} exited with {status}; log:\n{}", member.name, member.node.log());
        Ok(())
    }

    /// SIGSTOP: the process hangs with its sockets open, stopped between two writes to the
    /// shared SQLite file. A process stopped inside a write transaction would keep the file's
    /// write lock and block every other node's writes until it continues: a limit of the
    /// harness's store (one SQLite file shared by processes on one host), not of the cluster
    /// (FoundationDB aborts a stalled client's transaction after 5 s). The tests that hang a
    /// node are about the others noticing, so the pause is retried until it lands outside a
    /// transaction.
    pub fn pause(&mut self, index: usize) -> anyhow::Result<()> {
        if TestStore::from_env() != TestStore::Sqlite {
            self.signal(index, "-STOP")?;
            self.members[index].as_mut().expect("running").paused = true;
            return Ok(());
        }
        let db = self.data_dir().join("palaver.db");
        for attempt in 0..200u64 {
            self.signal(index, "-STOP")?;
            if !sqlite_write_locked(&db)? {
                if attempt > 0 {
                    eprintln!("node {index} paused outside a store write at try {}", attempt + 1);
                }
                self.members[index].as_mut().expect("running").paused = true;
                return Ok(());
            }
            self.signal(index, "-CONT")?;
            std::thread::sleep(Duration::from_millis(1 + attempt % 7));
        }
        anyhow::bail!("node {index} held the store's write lock at every one of 200 pauses")
    }

    /// SIGCONT.
    pub fn resume(&mut self, index: usize) -> anyhow::Result<()> {
        self.signal(index, "-CONT")?;
        self.members[index].as_mut().expect("running").paused = false;
        Ok(())
    }

    fn signal(&self, index: usize, signal: &str) -> anyhow::Result<()> {
        let pid = self.member(index).pid().context("no pid")?;
        let status = std::process::Command::new("kill").args([signal, &pid.to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
        Ok(())
    }

    /// Cut every link between `side` and the other nodes (both directions); links stay open
    /// but carry nothing, and new ones are refused, until [`Cluster::heal`].
    pub fn partition(&self, side: &[usize]) {
        assert!(self.options.proxied, "partition needs ClusterOptions::proxied");
        self.proxy.cut(side.iter().copied().collect());
    }

    pub fn heal(&self) {
        self.proxy.cut(HashSet::new());
    }

    /// GET `/cluster` of a node (on its admin port), parsed.
    pub async fn status(&self, index: usize, query: &str) -> anyhow::Result<serde_json::Value> {
        let (code, body) = self.node(index).admin_get(&format!("/cluster{query}")).await?;
        anyhow::ensure!(code == 200, "/cluster answered {code}: {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// The live set and serving flag a node reports.
    pub async fn view(&self, index: usize) -> anyhow::Result<(Vec<String>, bool)> {
        let status = self.status(index, "").await?;
        let live = status["cluster"]["live"]
            .as_array()
            .context("no live set")?
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        Ok((live, status["cluster"]["serving"].as_bool().unwrap_or(false)))
    }

    /// Wait until every running node reports the same live set: exactly the running nodes,
    /// all serving.
    pub async fn wait_converged(&self) -> anyhow::Result<()> {
        let expected: Vec<String> = {
            let mut names: Vec<String> = self.running().into_iter().map(|i| self.member(i).name.clone()).collect();
            names.sort();
            names
        };
        self.wait_for_views(&self.running(), &expected, true).await
    }

    /// Wait until each of `nodes` reports `live` and `serving`.
    pub async fn wait_for_views(&self, nodes: &[usize], live: &[String], serving: bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + crate::WAIT;
        loop {
            let mut last = Vec::new();
            let mut all = true;
            for &i in nodes {
                let view = self.view(i).await?;
                if view.0 != live || view.1 != serving {
                    all = false;
                }
                last.push((self.member(i).name.clone(), view));
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("cluster did not converge on {live:?} (serving {serving}) within {:?}: {last:?}", crate::WAIT);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The node a room belongs to, as `index` sees it.
    pub async fn owner(&self, index: usize, room: &str) -> anyhow::Result<String> {
        let status = self.status(index, &format!("?room={room}")).await?;
        status["room"]["owner"].as_str().map(String::from).context("no owner")
    }

    /// A room `creator` creates (named `room 0`, `room 1`, …) that node `index` owns: rooms are
    /// placed by hashing their random ids, so a few tries find one. Up to 64: with three nodes,
    /// 16 tries all missing one node failed a CI run.
    pub async fn room_owned_by(&self, creator: &mut crate::Client, index: usize) -> anyhow::Result<String> {
        let owner = self.member(index).name.clone();
        for i in 0..64 {
            let room = creator.create_room(&format!("room {i}")).await?;
            if self.owner(index, &room).await? == owner {
                return Ok(room);
            }
        }
        anyhow::bail!("no room landed on {owner} in 64 tries")
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.as_ref().is_some_and(|m| m.name == name))
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.members.iter().flatten().map(|m| format!("===== {} =====\n{}", m.name, tail(&m.node.log(), 80))).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Paused processes must be woken to die.
        for member in self.members.iter().flatten().filter(|m| m.paused) {
            if let Some(pid) = member.pid() {
                let _ = std::process::Command::new("kill").args(["-CONT", &pid.to_string()]).status();
            }
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A free TCP port on `ip` (bound and released; the node binds it right after).
fn free_port(ip: IpAddr) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).with_context(|| format!("binding {ip}:0"))?;
    Ok(listener.local_addr()?)
}

/// The fault-injecting proxy: one listener in front of each node's cluster port.
#[derive(Default)]
struct Proxy {
    /// Nodes on the cut side (by index); links crossing the cut carry nothing.
    cut: Arc<Mutex<watch::Sender<HashSet<usize>>>>,
}

impl Proxy {
    /// Start the listener in front of node `index` (which listens on `target`).
    async fn front(&self, index: usize, target: SocketAddr) -> anyhow::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = self.cut.lock().expect("proxy lock").subscribe();
        tokio::spawn(async move {
            while let Ok((inbound, peer)) = listener.accept().await {
                let from = match peer.ip() {
                    IpAddr::V4(ip) if ip.octets()[3] >= 10 => ip.octets()[3] as usize - 10,
                    _ => usize::MAX,
                };
                let cut = cut.clone();
                tokio::spawn(async move {
                    let _ = relay(inbound, target, from, index, cut).await;
                });
            }
        });
        Ok(addr)
    }

    fn cut(&self, side: HashSet<usize>) {
        self.cut.lock().expect("proxy lock").send_replace(side);
    }
}

fn crosses(cut: &HashSet<usize>, a: usize, b: usize) -> bool {
    cut.contains(&a) != cut.contains(&b)
}

/// Carry bytes between `inbound` and the node until the link is cut; then hold both sockets
/// open, silent, until the cut heals, and close them.
async fn relay(
    inbound: TcpStream,
    target: SocketAddr,
    from: usize,
    to: usize,
    mut cut: watch::Receiver<HashSet<usize>>,
) -> anyhow::Result<()> {
    let refused = crosses(&cut.borrow(), from, to);
    if refused {
        return Ok(());
    }
    let outbound = TcpStream::connect(target).await?;
    let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let forward = async {
        tokio::select! {
            _ = tokio::io::copy(&mut in_read, &mut out_write) => {},
            _ = tokio::io::copy(&mut out_read, &mut in_write) => {},
        }
    };
    tokio::select! {
        _ = forward => {
            let _ = in_write.shutdown().await;
            let _ = out_write.shutdown().await;
            return Ok(());
        }
        _ = until_cut(&mut cut, from, to, true) => {}
    }
    // Cut: nothing flows; keep the sockets until healed, then drop them.
    until_cut(&mut cut, from, to, false).await;
    Ok(())
}

async fn until_cut(cut: &mut watch::Receiver<HashSet<usize>>, from: usize, to: usize, cut_now: bool) {
    let _ = cut.wait_for(|cut| crosses(cut, from, to) == cut_now).await.map(|_| ());
}

/// One resume of a [`Chatter`] after its connection was lost: what it presented, where its
/// ledgers stood, and what the node's `live` said.
#[derive(Debug, Clone)]
pub struct Resume {
    pub url: String,
    /// The user-log cursor presented.
    pub cursor: u64,
    /// The large-room positions presented (`authenticate.rooms`).
    pub rooms: BTreeMap<String, u64>,
    /// Lengths of [`Chatter::ledger`] and [`Chatter::room_ledger`] before the resume.
    pub ledger_len: usize,
    pub room_ledger_len: usize,
    /// The positions the node's `live` reported at the end of the replay.
    pub live_rooms: BTreeMap<String, u64>,
}

/// A client that survives node failures: retries, reconnects, resumes; one ledger throughout.
pub struct Chatter {
    pub user: String,
    token: String,
    client: Option<Client>,
    /// Where to connect; replaced by the test as nodes come and go.
    urls: Arc<Mutex<Vec<String>>>,
    next_url: usize,
    /// Messages received over all connections, in order.
    pub ledger: Vec<(u64, Entry)>,
    /// The cursor the first connection started from.
    pub start_cursor: u64,
    pub cursor: u64,
    /// Entries of large rooms (no cursor) received over all connections, in order.
    pub room_ledger: Vec<Entry>,
    /// Highest seq received per large room: presented with the cursor on every resume.
    pub rooms: BTreeMap<String, u64>,
    /// (room, message id, seq, duplicate) of every acked send.
    pub acked: Vec<(String, String, u64, bool)>,
    pub reconnects: usize,
    /// Every successful resume, in order.
    pub resumes: Vec<Resume>,
    /// Disagreements seen at a resume seam (the node's `live` positions against what was
    /// received); [`Chatter::check`] fails on any.
    pub seam_errors: Vec<String>,
    pub unavailable: usize,
}

/// How long one request may take before the chatter gives up on its node.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);

impl Chatter {
    /// Register and log in on the first URL, authenticate.
    pub async fn new(urls: Arc<Mutex<Vec<String>>>, user: &str, start: usize) -> anyhow::Result<Chatter> {
        let url = {
            let list = urls.lock().expect("urls");
            list.get(start % list.len().max(1)).cloned().context("no url")?
        };
        let mut client = Client::connect_url(&url, Encoding::MessagePack).await?;
        let token = client.register_and_login(user, &format!("password-of-{user}")).await?;
        client.authenticate(&token, None).await?;
        let cursor = client.cursor;
        Ok(Chatter {
            user: user.to_string(),
            token,
            client: Some(client),
            urls,
            next_url: start + 1,
            ledger: Vec::new(),
            start_cursor: cursor,
            cursor,
            room_ledger: Vec::new(),
            rooms: BTreeMap::new(),
            acked: Vec::new(),
            reconnects: 0,
            resumes: Vec::new(),
            seam_errors: Vec::new(),
            unavailable: 0,
        })
    }

    /// Keep what the current connection received, and drop it.
    fn retire(&mut self) {
        if let Some(client) = self.client.take() {
            self.absorb(client);
        }
    }

    fn absorb(&mut self, mut client: Client) {
        self.take_from(&mut client);
        // Dropped without a close frame: the server sees the socket end.
        drop(client);
    }

    /// Drop the connection abruptly (no close frame), as a client losing its network would;
    /// the next request reconnects to the next URL and resumes.
    pub fn disconnect(&mut self) {
        self.retire();
    }

    fn take_received(&mut self) {
        if let Some(mut client) = self.client.take() {
            self.take_from(&mut client);
            self.client = Some(client);
        }
    }

    fn take_from(&mut self, client: &mut Client) {
        for (cursor, entry) in client.ledger.drain(..) {
            self.cursor = self.cursor.max(cursor);
            self.ledger.push((cursor, entry));
        }
        for entry in client.room_ledger.drain(..) {
            let seq = self.rooms.entry(entry.room.clone()).or_default();
            *seq = (*seq).max(entry.seq);
            self.room_ledger.push(entry);
        }
    }

    /// Connect to the next URL that answers and resume from the cursor.
    async fn reconnect(&mut self, deadline: Instant) -> anyhow::Result<()> {
        self.retire();
        loop {
            if Instant::now() > deadline {
                bail!("{}: no node to reconnect to before the deadline", self.user);
            }
            let urls = self.urls.lock().expect("urls").clone();
            if urls.is_empty() {
                bail!("no urls");
            }
            let url = urls[self.next_url % urls.len()].clone();
            self.next_url += 1;
            let (cursor, rooms) = (self.cursor, self.rooms.clone());
            let attempt = async {
                let mut client = Client::connect_url(&url, Encoding::MessagePack).await?;
                // Resume from the cursor and from each large room's position.
                client.rooms = rooms.clone();
                client.authenticate(&self.token, Some(cursor)).await?;
                client.cursor = cursor;
                let live = client.until_live().await?;
                Ok::<_, anyhow::Error>((client, live))
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
                Ok(Ok((client, live))) => {
                    let (ledger_len, room_ledger_len) = (self.ledger.len(), self.room_ledger.len());
                    self.reconnects += 1;
                    self.client = Some(client);
                    self.take_received();
                    let live_rooms = match live {
                        ServerFrame::Live { rooms, .. } => rooms,
                        _ => BTreeMap::new(),
                    };
                    // The replay ends where `live` says: in every large room the node names, the
                    // position is the highest seq received (none skipped, none beyond).
                    for (room, seq) in &live_rooms {
                        if let Some(have) = self.rooms.get(room).filter(|have| *have != seq) {
                            self.seam_errors.push(format!(
                                "resume #{} on {url}: live puts {room} at seq {seq}, received through {have}",
                                self.reconnects
                            ));
                        }
                    }
                    self.resumes.push(Resume { url, cursor, rooms, ledger_len, room_ledger_len, live_rooms });
                    return Ok(());
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Send `body` as message `id` to `room` until it is acked (retrying with the same id, on
    /// this node or another). Returns the seq.
    pub async fn say(&mut self, room: &str, id: &str, body: &str) -> anyhow::Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if Instant::now() > deadline {
                bail!("{}: message {id} not acked within 90 s", self.user);
            }
            if self.client.is_none() {
                self.reconnect(deadline).await?;
            }
            let client = self.client.as_mut().expect("connected");
            let req = client.next_req();
            let frame = ClientFrame::send(req, room, id, body);
            let reply = tokio::time::timeout(REQUEST_TIMEOUT, client.request(frame)).await;
            self.take_received();
            match reply {
                Ok(Ok(ServerFrame::Ack { seq, duplicate, room: acked_room, id: acked_id, .. })) => {
                    // An ack names the message it is for: one naming another is a reply
                    // delivered to the wrong request, which would corrupt every check below.
                    anyhow::ensure!(
                        acked_room == room && acked_id == id,
                        "{}: send of {room}/{id} acked as {acked_room}/{acked_id} seq {seq}",
                        self.user
                    );
                    self.acked.push((room.to_string(), id.to_string(), seq, duplicate));
                    return Ok(seq);
                }
                Ok(Ok(ServerFrame::Error {
                    code: ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::SlowDown,
                    ..
                })) => {
                    self.unavailable += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Ok(other)) => bail!("{}: send {id}: {other:?}", self.user),
                // The connection broke or the node hangs: go elsewhere and retry the same id.
                Ok(Err(_)) | Err(_) => self.retire(),
            }
        }
    }

    /// Join a room (retrying like `say`).
    pub async fn join(&mut self, room: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if Instant::now() > deadline {
                bail!("{}: join {room} timed out", self.user);
            }
            if self.client.is_none() {
                self.reconnect(deadline).await?;
            }
            let client = self.client.as_mut().expect("connected");
            let req = client.next_req();
            let reply =
                tokio::time::timeout(REQUEST_TIMEOUT, client.request(ClientFrame::Join { req, room: room.into() }))
                    .await;
            self.take_received();
            match reply {
                Ok(Ok(ServerFrame::Room { .. })) => return Ok(()),
                Ok(Ok(ServerFrame::Error { code: ErrorCode::Unavailable | ErrorCode::Internal, .. })) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Ok(other)) => bail!("{}: join {room}: {other:?}", self.user),
                Ok(Err(_)) | Err(_) => self.retire(),
            }
        }
    }

    /// Create a room (on whichever node this chatter is on).
    pub async fn create_room(&mut self, name: &str) -> anyhow::Result<String> {
        let client = self.client.as_mut().context("not connected")?;
        let room = client.create_room(name).await?;
        self.take_received();
        Ok(room)
    }

    /// Receive until the ledger holds every (room, id) in `expected`, reconnecting as needed.
    pub async fn receive_all(&mut self, expected: &HashSet<(String, String)>) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.take_received();
            let have: HashSet<(String, String)> = self.entries().map(|e| (e.room.clone(), e.id.clone())).collect();
            let missing: Vec<_> = expected.difference(&have).collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: {} acked messages never arrived, e.g. {:?}",
                    self.user,
                    missing.len(),
                    missing.iter().take(5).collect::<Vec<_>>()
                );
            }
            if self.client.is_none() {
                self.reconnect(deadline).await?;
                continue;
            }
            let client = self.client.as_mut().expect("connected");
            match tokio::time::timeout(Duration::from_millis(500), client.recv()).await {
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(_)) => self.retire(),
            }
        }
    }

    /// Every entry received: the user-log ledger, then the large-room ledger.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.ledger.iter().map(|(_, e)| e).chain(&self.room_ledger)
    }

    /// Check the ledgers: dense cursors from the start, room order kept, and each (room, id)
    /// exactly once. In each large room (one with entries in [`Chatter::room_ledger`]) the
    /// seqs received, user-log part first, are dense from the chatter's own join: nothing
    /// missing or doubled at the room's switch to large or at any resume.
    pub fn check(&self) -> anyhow::Result<()> {
        check_ledger(&self.ledger, self.start_cursor).map_err(|err| anyhow!("{}: {err}", self.user))?;
        let mut seen = HashSet::new();
        for entry in self.entries() {
            anyhow::ensure!(
                seen.insert((entry.room.clone(), entry.id.clone())),
                "{}: {}/{} received twice",
                self.user,
                entry.room,
                entry.id
            );
        }
        anyhow::ensure!(self.seam_errors.is_empty(), "{}: {}", self.user, self.seam_errors.join("; "));
        let large: HashSet<&str> = self.room_ledger.iter().map(|e| e.room.as_str()).collect();
        for room in large {
            let entries: Vec<&Entry> = self.entries().filter(|e| e.room == room).collect();
            let join = entries
                .iter()
                .find(|e| e.kind == EntryKind::Join && e.user.as_deref() == Some(self.user.as_str()))
                .map(|e| e.seq);
            let first = entries[0].seq;
            anyhow::ensure!(
                join == Some(first),
                "{}: room {room} starts at seq {first}, not at the user's own join ({join:?})",
                self.user
            );
            for pair in entries.windows(2) {
                anyhow::ensure!(
                    pair[1].seq == pair[0].seq + 1,
                    "{}: room {room} seq {} ({}) after {} ({}): gap, duplicate or reordering",
                    self.user,
                    pair[1].seq,
                    pair[1].id,
                    pair[0].seq,
                    pair[0].id
                );
            }
            anyhow::ensure!(
                self.rooms.get(room) == entries.last().map(|e| &e.seq),
                "{}: position {:?} in {room} is not its last entry",
                self.user,
                self.rooms.get(room)
            );
        }
        Ok(())
    }

    /// Resumes that presented a position in at least one large room and received large-room
    /// entries both before and after (the resume was a seam inside a large room's stream).
    pub fn large_room_resumes(&self) -> Vec<&Resume> {
        self.resumes
            .iter()
            .filter(|r| {
                !r.rooms.is_empty()
                    && self.room_ledger[r.room_ledger_len..].iter().any(|e| r.rooms.contains_key(&e.room))
            })
            .collect()
    }

    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

/// Check a set of chatters that all joined the rooms of their sends: every acked message
/// arrived at every chatter exactly once, acks agree on seqs, and ledgers are sound.
pub async fn check_everyone(chatters: &mut [Chatter]) -> anyhow::Result<usize> {
    let mut acked: HashMap<(String, String), u64> = HashMap::new();
    let mut seqs: HashMap<(String, u64), String> = HashMap::new();
    for chatter in chatters.iter() {
        for (room, id, seq, _) in &chatter.acked {
            if let Some(previous) = acked.insert((room.clone(), id.clone()), *seq) {
                anyhow::ensure!(previous == *seq, "{room}/{id} acked with seq {previous} and {seq}");
            }
            if let Some(other) = seqs.insert((room.clone(), *seq), id.clone()) {
                anyhow::ensure!(other == *id, "{room} seq {seq} acked for both {other} and {id}");
            }
        }
    }
    let expected: HashSet<(String, String)> = acked.keys().cloned().collect();
    for chatter in chatters.iter_mut() {
        chatter.receive_all(&expected).await?;
        chatter.check()?;
        for entry in chatter.entries() {
            if let Some(seq) = acked.get(&(entry.room.clone(), entry.id.clone())) {
                anyhow::ensure!(
                    *seq == entry.seq,
                    "{}: {}/{} delivered with seq {} but acked with {seq}",
                    chatter.user,
                    entry.room,
                    entry.id,
                    entry.seq
                );
            }
        }
    }
    Ok(expected.len())
}

impl Client {
    /// Connect to a URL and greet.
    pub async fn connect_url(url: &str, encoding: Encoding) -> anyhow::Result<Client> {
        let mut client = tokio::time::timeout(Duration::from_secs(5), Client::connect_raw(url, encoding))
            .await
            .map_err(|_| anyhow!("connect to {url} timed out"))??;
        match tokio::time::timeout(
            Duration::from_secs(5),
            client.request_raw(ClientFrame::Hello { versions: vec![1], client: Some("tests".into()), batch: false }),
        )
        .await
        {
            Ok(Ok(ServerFrame::Welcome { .. })) => Ok(client),
            other => bail!("expected welcome from {url}, got {other:?}"),
        }
    }
}

/// Chatters sending in the background: each sends `per_chatter` messages round-robin over
/// `rooms` (ids `<user>-<k>`), one at a time, `gap` apart.
pub struct Traffic {
    handles: Vec<tokio::task::JoinHandle<anyhow::Result<Chatter>>>,
    /// Acked sends so far, over all chatters.
    pub acked: Arc<std::sync::atomic::AtomicUsize>,
}

impl Traffic {
    pub fn start(chatters: Vec<Chatter>, rooms: &[String], per_chatter: usize, gap: Duration) -> Traffic {
        let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handles = chatters
            .into_iter()
            .map(|mut chatter| {
                let rooms = rooms.to_vec();
                let acked = acked.clone();
                tokio::spawn(async move {
                    for k in 0..per_chatter {
                        let room = &rooms[k % rooms.len()];
                        let id = format!("{}-{k}", chatter.user);
                        chatter.say(room, &id, &format!("message {k} of {}", chatter.user)).await?;
                        acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(gap).await;
                    }
                    Ok(chatter)
                })
            })
            .collect();
        Traffic { handles, acked }
    }

    /// Wait until at least `n` sends were acked.
    pub async fn wait_acked(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + crate::WAIT;
        while self.acked.load(std::sync::atomic::Ordering::Relaxed) < n {
            anyhow::ensure!(Instant::now() < deadline, "fewer than {n} acks within {:?}", crate::WAIT);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Wait for every chatter to finish sending.
    pub async fn finish(self) -> anyhow::Result<Vec<Chatter>> {
        let mut chatters = Vec::new();
        for handle in self.handles {
            chatters.push(handle.await??);
        }
        Ok(chatters)
    }
}

/// The owner of `room` among `nodes`, by the node's own rendezvous hashing, so tests can pick
/// rooms that will move. Tests also compare it with what nodes answer on `/cluster?room=`.
pub fn placement_owner<'a>(room: &str, nodes: &[&'a str]) -> &'a str {
    ::cluster::placement::owner(room, nodes.iter().copied()).expect("at least one node")
}

/// One chatter per running node (chatter i starts on node i), all members of `rooms` rooms
/// created by the first.
pub async fn setup_chatters(
    cluster: &Cluster,
    urls: &Arc<Mutex<Vec<String>>>,
    rooms: usize,
) -> anyhow::Result<(Vec<Chatter>, Vec<String>)> {
    let mut chatters = Vec::new();
    for i in 0..cluster.running().len() {
        chatters.push(Chatter::new(urls.clone(), &format!("u{i}"), i).await?);
    }
    let mut ids = Vec::new();
    for r in 0..rooms {
        let room = chatters[0].create_room(&format!("room {r}")).await?;
        for chatter in chatters.iter_mut().skip(1) {
            chatter.join(&room).await?;
        }
        ids.push(room);
    }
    Ok((chatters, ids))
}

/// Whether some process holds the write lock of the SQLite file at `path` (a write transaction
/// is open): taking it without waiting fails with `SQLITE_BUSY`.
fn sqlite_write_locked(path: &std::path::Path) -> anyhow::Result<bool> {
    let conn = rusqlite::Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(Duration::ZERO)?;
    match conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;") {
        Ok(()) => Ok(false),
        Err(rusqlite::Error::SqliteFailure(err, _)) if err.code == rusqlite::ErrorCode::DatabaseBusy => Ok(true),
        Err(err) => Err(err).context("probing the store's write lock"),
    }
}
