//! The black-box test harness: start real `palaver` processes and talk to them over real
//! WebSocket connections, in either encoding.
//!
//! - [`Node`] starts the built binary on port 0 with its own data directory (or a shared one),
//!   learns its client and admin addresses from the lines it prints, and can stop it with
//!   SIGTERM or kill -9.
//! - [`Client`] is a protocol client: it greets, correlates replies by `req`, and keeps every
//!   `message` it receives in a ledger (cursor → entry; entries of large rooms, which have no
//!   cursor, in a second ledger by room seq) so tests can check "nothing lost, nothing doubled,
//!   order kept".
//!
//! Nothing here is a mock: the node is the same binary users run.

pub mod api;

pub mod cluster;

pub mod docker;

pub mod media;

pub mod otlp;

pub mod presence;

pub mod push_receivers;

pub mod webhooks;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
pub use protocol::{
    Audience, ClientFrame, Encoding, Entry, EntryKind, ErrorCode, Role, RoomSettings, RoomSettingsChange, ServerFrame,
};

/// Milliseconds since the Unix epoch (the unit of `until` and `ts` in frames).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long any single wait in a test may take. Generous: tests run on a noisy 2-core machine
/// and assert outcomes, never speed.
pub const WAIT: Duration = Duration::from_secs(30);

/// Path of the `palaver` binary: `PALAVER_BIN`, else next to the test executable's directory
/// (`target/<profile>/palaver`; build it first with `cargo build -p node`).
pub fn palaver_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PALAVER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/palaver
    let profile_dir = exe.parent().and_then(Path::parent).expect("target profile directory");
    let binary = profile_dir.join("palaver");
    // `cargo test` builds the test crates, not another package's binary: say how to get it.
    assert!(
        binary.exists(),
        "the palaver binary is not built at {}: run `cargo build -p node --bin palaver` (with the same \
         profile and CARGO_TARGET_DIR) before the black-box tests, or set PALAVER_BIN",
        binary.display()
    );
    binary
}

/// Which store backend the black-box tests run on: `PALAVER_TEST_STORE=fdb` (with
/// `FDB_CLUSTER_FILE` naming a running FoundationDB and the binary built with `--features fdb`)
/// runs every suite on FoundationDB; anything else, the default, on SQLite. One switch, so the
/// same scenarios prove both backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestStore {
    Sqlite,
    Fdb { cluster_file: PathBuf },
}

impl TestStore {
    pub fn from_env() -> TestStore {
        match std::env::var("PALAVER_TEST_STORE").as_deref() {
            Ok("fdb") => {
                let cluster_file = std::env::var_os("FDB_CLUSTER_FILE")
                    .filter(|file| !file.is_empty())
                    .expect("PALAVER_TEST_STORE=fdb needs FDB_CLUSTER_FILE naming a running FoundationDB");
                TestStore::Fdb { cluster_file: PathBuf::from(cluster_file) }
            }
            _ => TestStore::Sqlite,
        }
    }

    /// The node settings that put its state in the store identified by `shared_dir`: nodes
    /// given the same directory share one store (the SQLite file in it, or one FoundationDB
    /// subspace named after it), whatever their own data directories.
    pub fn env_for(&self, shared_dir: &Path) -> Vec<(String, String)> {
        match self {
            TestStore::Sqlite => {
                vec![("STORE__SQLITE_PATH".into(), shared_dir.join("palaver.db").display().to_string())]
            }
            TestStore::Fdb { cluster_file } => {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                shared_dir.hash(&mut hasher);
                vec![
                    ("STORE__BACKEND".into(), "fdb".into()),
                    ("STORE__FDB_CLUSTER_FILE".into(), cluster_file.display().to_string()),
                    ("STORE__FDB_SUBSPACE_PREFIX".into(), format!("palaver-test-{:016x}", hasher.finish())),
                ]
            }
        }
    }
}

/// Say on stdout, past the test harness's capture, that `test` is skipped and why.
pub fn say_skipped(test: &str, reason: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(format!("SKIPPED {test}: {reason}\n").as_bytes());
}

/// Whether the `openssl` command (which makes the TLS tests' certificates) runs; if not, says on
/// stdout that `test` is skipped and why.
pub fn openssl_available(test: &str) -> bool {
    use std::io::Write;
    match std::process::Command::new("openssl").arg("version").output() {
        Ok(_) => true,
        Err(err) => {
            // Straight to stdout: the test harness captures print!, and this must be seen.
            let note = format!(
                "SKIPPED {test}: the `openssl` command, which makes this test's certificates, cannot be run ({err}); \
                 install openssl to run it\n"
            );
            let _ = std::io::stdout().write_all(note.as_bytes());
            false
        }
    }
}

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub name: String,
    /// The data directory; `None` makes a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// Extra `PALAVER_…` environment variables (e.g. `("LIMITS__MAX_BODY_BYTES", "100")`).
    pub env: Vec<(String, String)>,
    /// Port to listen on (0 = any free one).
    pub port: u16,
    /// Environment variables set as they are, not under `PALAVER_` (an S3 server's
    /// `AWS_ACCESS_KEY_ID`, say).
    pub process_env: Vec<(String, String)>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions { name: "palaver-1".into(), data_dir: None, env: Vec::new(), port: 0, process_env: Vec::new() }
    }
}

impl NodeOptions {
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
}

/// A running `palaver` process.
pub struct Node {
    child: Child,
    /// The client port.
    pub addr: SocketAddr,
    /// The admin port (`/status`, `/cluster`, `/metrics`, `/cluster/forget`).
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
    pub options: NodeOptions,
    _temp: Option<tempfile::TempDir>,
    log_path: PathBuf,
}

/// The token key every test node shares, so tokens work across restarts and nodes.
pub const TEST_TOKEN_KEY: &str = "palaver-test-token-key-0123456789abcdef";

impl Node {
    pub async fn start(options: NodeOptions) -> anyhow::Result<Node> {
        let (data_dir, temp) = match &options.data_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let temp = tempfile::tempdir()?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        std::fs::create_dir_all(&data_dir)?;
        let log_path = data_dir.join(format!("{}.log", options.name));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut command = Command::new(palaver_binary());
        command
            .current_dir(&data_dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PALAVER_NODE__NAME", &options.name)
            .env("PALAVER_NODE__DATA_DIR", &data_dir)
            .env("PALAVER_CLIENT__LISTEN", format!("127.0.0.1:{}", options.port))
            .env("PALAVER_ADMIN__LISTEN", "127.0.0.1:0")
            // Every test client connects from 127.0.0.1; tests of the cap set their own.
            .env("PALAVER_LIMITS__MAX_CONNECTIONS_PER_ADDRESS", "100000")
            .env("PALAVER_AUTH__TOKEN_KEY", TEST_TOKEN_KEY)
            // Cheap hashing keeps tests fast; production defaults are exercised by unit tests.
            .env("PALAVER_AUTH__ARGON2_MEMORY_KIB", "1024")
            .env("PALAVER_AUTH__ARGON2_ITERATIONS", "1")
            // Scenarios register many accounts from one address; tests/tests/auth_abuse.rs
            // sets the limit where it is the thing tested.
            .env("PALAVER_AUTH__REGISTER_MAX_PER_ADDRESS", "0")
            .env("PALAVER_LOG__FILTER", "info,actors=debug,cluster=debug")
            .envs(
                TestStore::from_env()
                    .env_for(&data_dir)
                    .into_iter()
                    .map(|(key, value)| (format!("PALAVER_{key}"), value)),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (key, value) in &options.env {
            command.env(format!("PALAVER_{key}"), value);
        }
        command.envs(options.process_env.iter().cloned());
        let mut child = command.spawn().with_context(|| format!("starting {}", palaver_binary().display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        // The admin port's line comes first, then the client port's.
        let (addr, admin) = tokio::time::timeout(WAIT, async {
            let mut admin = None;
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.split(" admin on ").nth(1) {
                    admin = Some(addr.trim().parse::<SocketAddr>()?);
                }
                if let Some(addr) = line.split(" listening on ").nth(1) {
                    let admin = admin.context("the node printed no admin port before its client port")?;
                    return Ok::<_, anyhow::Error>((addr.trim().parse::<SocketAddr>()?, admin));
                }
            }
            bail!("node exited before listening; log: {}", std::fs::read_to_string(&log_path).unwrap_or_default())
        })
        .await
        .map_err(|_| anyhow!("node did not start within {WAIT:?}"))??;
        // Keep draining stdout so the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Node { child, addr, admin, data_dir, options, _temp: temp, log_path })
    }

    /// Start again with the same options and data directory (after a kill or stop).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let mut options = self.options.clone();
        options.data_dir = Some(self.data_dir.clone());
        let temp = self._temp.take();
        let mut fresh = Node::start(options).await?;
        fresh._temp = temp;
        *self = fresh;
        Ok(())
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// kill -9: no shutdown code runs.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM, then wait for the exit status.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().ok_or_else(|| anyhow!("node already exited"))?;
        let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        Ok(tokio::time::timeout(WAIT, self.child.wait()).await??)
    }

    /// Whether the process is still running.
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The SQLite store files in the node's data directory (database, WAL, shared memory)
    /// whose bytes contain `text`: how a test checks that erased text is gone from the disk.
    pub fn store_files_holding(&self, text: &str) -> anyhow::Result<Vec<String>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.data_dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            if name.starts_with("palaver.db") {
                let bytes = std::fs::read(&path)?;
                if bytes.windows(text.len()).any(|w| w == text.as_bytes()) {
                    found.push(name);
                }
            }
        }
        Ok(found)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Send `request` (a raw HTTP/1.1 request head and body) to the client port; returns
    /// (status, body). For requests [`Node::http_get`] cannot make.
    pub async fn http_raw(&self, request: &str) -> anyhow::Result<(u16, String)> {
        http_request(self.addr, request).await
    }

    /// GET a path on the client port; returns (status, body).
    pub async fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_request(self.addr, &format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")).await
    }

    /// The admin token the node was started with (`ADMIN__TOKEN` in its options), if any.
    pub fn admin_token(&self) -> Option<&str> {
        self.options.env.iter().rev().find(|(key, _)| key == "ADMIN__TOKEN").map(|(_, value)| value.as_str())
    }

    /// GET a path on the admin port, with the node's admin token if it has one; returns
    /// (status, body).
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let authorization =
            self.admin_token().map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
        http_request(self.admin, &format!("GET {path} HTTP/1.1\r\nHost: test\r\n{authorization}\r\n")).await
    }

    /// Send `request` (a raw HTTP/1.1 request head and body) to the admin port as it is (no
    /// token added); returns (status, body).
    pub async fn admin_raw(&self, request: &str) -> anyhow::Result<(u16, String)> {
        http_request(self.admin, request).await
    }
}

/// Send a raw HTTP/1.1 request to `addr` and read the whole response: (status, body).
pub async fn http_request(addr: SocketAddr, request: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response)).await??;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Any byte stream a WebSocket can run over: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Node {}

/// How a connection ended, as seen by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: Option<u16>,
    pub reason: String,
}

/// A protocol client over a real WebSocket.
pub struct Client {
    ws: WebSocketStream<Box<dyn Io>>,
    pub encoding: Encoding,
    next_req: u64,
    /// Frames received but not yet taken by `recv`/`request`.
    backlog: VecDeque<ServerFrame>,
    /// Every `message` frame received, in arrival order.
    pub ledger: Vec<(u64, Entry)>,
    /// Highest cursor received (what a real client would persist and resume from).
    pub cursor: u64,
    /// Every `message` frame of a large room (no cursor), in arrival order.
    pub room_ledger: Vec<Entry>,
    /// Highest seq received per large room (presented with the cursor on a resume).
    pub rooms: std::collections::BTreeMap<String, u64>,
    pub user: Option<String>,
    /// Greeted with `hello.batch`: a WebSocket message may hold several frames.
    batch: bool,
    /// WebSocket messages that held more than one frame (only a batching client gets any).
    pub batched_messages: u64,
    /// The largest of those, in bytes.
    pub largest_batch_bytes: usize,
    /// Frames of the last batched message not yet taken off the wire (they come before the
    /// next message and after the backlog).
    unread: VecDeque<ServerFrame>,
}

impl Client {
    /// Connect and greet with `hello`.
    pub async fn connect(node: &Node, encoding: Encoding) -> anyhow::Result<Client> {
        let mut client = Client::connect_raw(&node.ws_url(), encoding).await?;
        client.greet().await?;
        Ok(client)
    }

    /// Greet with `hello` (after [`Client::connect_raw`] or [`Client::connect_over`]).
    pub async fn greet(&mut self) -> anyhow::Result<()> {
        match self
            .request_raw(ClientFrame::Hello { versions: vec![1], client: Some("tests".into()), batch: false })
            .await?
        {
            ServerFrame::Welcome { version: 1, .. } => Ok(()),
            other => bail!("expected welcome, got {other:?}"),
        }
    }

    /// Connect and greet with `hello` asking for batched frames (several per WebSocket
    /// message); the node must grant it in `welcome`.
    pub async fn connect_batched(node: &Node, encoding: Encoding) -> anyhow::Result<Client> {
        let mut client = Client::connect_raw(&node.ws_url(), encoding).await?;
        client.batch = true;
        let hello = ClientFrame::Hello { versions: vec![1], client: Some("tests".into()), batch: true };
        match client.request_raw(hello).await? {
            ServerFrame::Welcome { version: 1, batch: true, .. } => Ok(client),
            other => bail!("expected welcome granting batches, got {other:?}"),
        }
    }

    /// Connect without greeting.
    pub async fn connect_raw(url: &str, encoding: Encoding) -> anyhow::Result<Client> {
        let authority = url.split("://").nth(1).and_then(|rest| rest.split('/').next()).context("not a ws:// URL")?;
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(authority)).await??;
        let _ = stream.set_nodelay(true);
        Client::connect_over(url, Box::new(stream), encoding).await
    }

    /// Connect and greet from the client address `source` (any of 127.0.0.0/8 on loopback):
    /// per-address limits see another client.
    pub async fn connect_from(node: &Node, source: std::net::Ipv4Addr, encoding: Encoding) -> anyhow::Result<Client> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((source, 0)))?;
        let stream = tokio::time::timeout(WAIT, socket.connect(node.addr)).await??;
        let mut client = Client::connect_over(node.ws_url(), Box::new(stream), encoding).await?;
        client.greet().await?;
        Ok(client)
    }

    /// Connect without greeting over a stream already open to the node (e.g. TLS for `wss://`);
    /// `request` is the URL or a request with headers of its own. A refused upgrade is a
    /// `tungstenite::Error::Http` inside the error.
    pub async fn connect_over(
        request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
        stream: Box<dyn Io>,
        encoding: Encoding,
    ) -> anyhow::Result<Client> {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, stream)).await??;
        Ok(Client {
            ws,
            encoding,
            next_req: 1,
            backlog: VecDeque::new(),
            ledger: Vec::new(),
            cursor: 0,
            room_ledger: Vec::new(),
            rooms: Default::default(),
            user: None,
            batch: false,
            batched_messages: 0,
            largest_batch_bytes: 0,
            unread: VecDeque::new(),
        })
    }

    pub fn next_req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// Send a frame in this client's encoding.
    pub async fn send(&mut self, frame: &ClientFrame) -> anyhow::Result<()> {
        let bytes = protocol::encode_client(self.encoding, frame);
        let message = match self.encoding {
            Encoding::Json => Message::Text(String::from_utf8(bytes)?.into()),
            Encoding::MessagePack => Message::Binary(bytes.into()),
        };
        self.ws.send(message).await?;
        Ok(())
    }

    /// Send raw WebSocket data (for malformed-input tests).
    pub async fn send_raw(&mut self, message: Message) -> anyhow::Result<()> {
        self.ws.send(message).await?;
        Ok(())
    }

    /// The next frame from the server (backlog first). Records `message` frames in the ledger.
    pub async fn recv(&mut self) -> anyhow::Result<ServerFrame> {
        if let Some(frame) = self.backlog.pop_front() {
            return Ok(frame);
        }
        self.recv_wire().await
    }

    async fn recv_wire(&mut self) -> anyhow::Result<ServerFrame> {
        loop {
            if let Some(frame) = self.unread.pop_front() {
                return Ok(frame);
            }
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .map_err(|_| anyhow!("no frame within {WAIT:?}"))?
                .ok_or_else(|| anyhow!("connection ended"))??;
            let frames = match message {
                Message::Text(text) => self.decode(Encoding::Json, text.as_bytes())?,
                Message::Binary(bytes) => self.decode(Encoding::MessagePack, &bytes)?,
                Message::Close(frame) => {
                    let closed = Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    };
                    bail!("connection closed: {closed:?}")
                }
                _ => continue,
            };
            self.unread.extend(frames);
        }
    }

    /// The frames of one WebSocket message, recorded in the ledgers. A client that did not ask
    /// for batches decodes exactly one frame per message, so a batch sent to it fails the test.
    fn decode(&mut self, encoding: Encoding, bytes: &[u8]) -> anyhow::Result<Vec<ServerFrame>> {
        let frames = if self.batch {
            protocol::decode_server_batch(encoding, bytes)?
        } else {
            vec![protocol::decode_server(encoding, bytes)?]
        };
        anyhow::ensure!(!frames.is_empty(), "a WebSocket message without frames");
        if frames.len() > 1 {
            self.batched_messages += 1;
            self.largest_batch_bytes = self.largest_batch_bytes.max(bytes.len());
        }
        for frame in &frames {
            self.record(frame);
        }
        Ok(frames)
    }

    /// Keep a `message` frame in the ledger (every path that reads the wire calls this).
    fn record(&mut self, frame: &ServerFrame) {
        match frame {
            ServerFrame::Message { cursor: Some(cursor), entry } => {
                self.ledger.push((*cursor, entry.clone()));
                self.cursor = self.cursor.max(*cursor);
            }
            ServerFrame::Message { cursor: None, entry } => {
                self.room_ledger.push(entry.clone());
                let seq = self.rooms.entry(entry.room.clone()).or_default();
                *seq = (*seq).max(entry.seq);
            }
            _ => {}
        }
    }

    /// Wait for the connection to close; returns the close frame's code and reason. Frames
    /// before it go to the backlog.
    pub async fn closed(&mut self) -> anyhow::Result<Closed> {
        loop {
            let message =
                tokio::time::timeout(WAIT, self.ws.next()).await.map_err(|_| anyhow!("not closed within {WAIT:?}"))?;
            match message {
                None => return Ok(Closed { code: None, reason: String::new() }),
                Some(Err(err)) => return Ok(Closed { code: None, reason: err.to_string() }),
                Some(Ok(Message::Close(frame))) => {
                    return Ok(Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    })
                }
                Some(Ok(Message::Text(text))) => {
                    let frames = self.decode(Encoding::Json, text.as_bytes())?;
                    self.backlog.extend(self.unread.drain(..).chain(frames));
                }
                Some(Ok(Message::Binary(bytes))) => {
                    let frames = self.decode(Encoding::MessagePack, &bytes)?;
                    self.backlog.extend(self.unread.drain(..).chain(frames));
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Send a request and wait for the reply with the same `req`; other frames are kept.
    pub async fn request(&mut self, frame: ClientFrame) -> anyhow::Result<ServerFrame> {
        let req = frame.req();
        self.send(&frame).await?;
        self.reply_to(req).await
    }

    /// The reply to `req` (an error frame counts), keeping other frames in the backlog.
    pub async fn reply_to(&mut self, req: u64) -> anyhow::Result<ServerFrame> {
        if let Some(index) = self.backlog.iter().position(|frame| reply_req(frame) == Some(req)) {
            return Ok(self.backlog.remove(index).expect("index in range"));
        }
        loop {
            let frame = self.recv_wire().await?;
            if reply_req(&frame) == Some(req) {
                return Ok(frame);
            }
            self.backlog.push_back(frame);
        }
    }

    /// `hello` has no req; its reply is the first frame.
    async fn request_raw(&mut self, frame: ClientFrame) -> anyhow::Result<ServerFrame> {
        self.send(&frame).await?;
        self.recv().await
    }

    /// Register (ignoring "already exists") and log in; returns the token.
    pub async fn register_and_login(&mut self, user: &str, password: &str) -> anyhow::Result<String> {
        let req = self.next_req();
        match self.request(ClientFrame::Register { req, user: user.into(), password: password.into() }).await? {
            ServerFrame::Registered { .. } => {}
            ServerFrame::Error { code: ErrorCode::UserExists, .. } => {}
            other => bail!("register: {other:?}"),
        }
        self.login(user, password).await
    }

    pub async fn login(&mut self, user: &str, password: &str) -> anyhow::Result<String> {
        let req = self.next_req();
        match self.request(ClientFrame::Login { req, user: user.into(), password: password.into() }).await? {
            ServerFrame::LoggedIn { token, .. } => Ok(token),
            other => bail!("login: {other:?}"),
        }
    }

    /// Authenticate; with a cursor, resume (presenting [`Client::rooms`] too). Returns the
    /// `authenticated` reply.
    pub async fn authenticate(&mut self, token: &str, cursor: Option<u64>) -> anyhow::Result<ServerFrame> {
        let req = self.next_req();
        let rooms = if cursor.is_some() { self.rooms.clone() } else { Default::default() };
        let reply = self.request(ClientFrame::Authenticate { req, token: token.into(), cursor, rooms }).await?;
        let ServerFrame::Authenticated { user, cursor: head, .. } = &reply else { bail!("authenticate: {reply:?}") };
        self.user = Some(user.clone());
        if cursor.is_none() {
            self.cursor = *head;
        }
        Ok(reply)
    }

    /// Wait for the `live` (or `resync`) that ends a resume.
    pub async fn until_live(&mut self) -> anyhow::Result<ServerFrame> {
        loop {
            let frame = self.recv().await?;
            if matches!(frame, ServerFrame::Live { .. } | ServerFrame::Resync { .. }) {
                return Ok(frame);
            }
        }
    }

    /// Connect, register/log in and authenticate in one go.
    pub async fn user(node: &Node, encoding: Encoding, user: &str) -> anyhow::Result<(Client, String)> {
        let mut client = Client::connect(node, encoding).await?;
        let token = client.register_and_login(user, &format!("password-of-{user}")).await?;
        client.authenticate(&token, None).await?;
        Ok((client, token))
    }

    pub async fn create_room(&mut self, name: &str) -> anyhow::Result<String> {
        let req = self.next_req();
        match self.request(ClientFrame::CreateRoom { req, name: name.into(), private: false }).await? {
            ServerFrame::Room { room, .. } => Ok(room.id),
            other => bail!("create_room: {other:?}"),
        }
    }

    pub async fn join(&mut self, room: &str) -> anyhow::Result<()> {
        let req = self.next_req();
        match self.request(ClientFrame::Join { req, room: room.into() }).await? {
            ServerFrame::Room { .. } => Ok(()),
            other => bail!("join: {other:?}"),
        }
    }

    /// Send a text message and wait for its ack; returns (seq, duplicate).
    pub async fn say(&mut self, room: &str, id: &str, body: &str) -> anyhow::Result<(u64, bool)> {
        let req = self.next_req();
        match self.request(ClientFrame::send(req, room, id, body)).await? {
            ServerFrame::Ack { seq, duplicate, .. } => Ok((seq, duplicate)),
            other => bail!("send: {other:?}"),
        }
    }

    /// Receive until the ledger holds a text entry with client id `id` in `room`.
    pub async fn wait_for_message(&mut self, room: &str, id: &str) -> anyhow::Result<Entry> {
        loop {
            let mut received = self.ledger.iter().map(|(_, e)| e).chain(&self.room_ledger);
            if let Some(entry) = received.find(|e| e.room == room && e.id == id) {
                return Ok(entry.clone());
            }
            let frame = self.recv_wire().await?;
            if !matches!(frame, ServerFrame::Message { .. }) {
                self.backlog.push_back(frame);
            }
        }
    }

    /// Ping and expect the matching pong: the connection is still usable. Frames that arrive
    /// first (deliveries, notices) are kept.
    pub async fn ping(&mut self) -> anyhow::Result<()> {
        let req = self.next_req();
        match self.request(ClientFrame::Ping { req }).await? {
            ServerFrame::Pong { req: got } if got == req => Ok(()),
            other => bail!("ping {req}: expected pong, got {other:?}"),
        }
    }

    /// Send any document (a `serde_json::Value`) in this client's encoding: JSON text, or a
    /// MessagePack map with the same keys. For transcripts and for frames the typed
    /// [`ClientFrame`] cannot express (unknown types, missing or mistyped fields).
    pub async fn send_value(&mut self, value: &serde_json::Value) -> anyhow::Result<()> {
        let message = match self.encoding {
            Encoding::Json => Message::Text(serde_json::to_string(value)?.into()),
            Encoding::MessagePack => Message::Binary(rmp_serde::to_vec_named(value)?.into()),
        };
        self.ws.send(message).await?;
        Ok(())
    }

    /// The next frame exactly as the node encoded it, as a document. It must also decode as a
    /// [`ServerFrame`] (and a `message` is recorded in the ledger), so the generic and the typed
    /// views of the wire cannot drift apart. Refuses to run while typed frames wait in the
    /// backlog, whose wire form is gone.
    pub async fn recv_value(&mut self) -> anyhow::Result<serde_json::Value> {
        anyhow::ensure!(self.backlog.is_empty(), "recv_value with typed frames in the backlog: {:?}", self.backlog);
        anyhow::ensure!(!self.batch, "recv_value reads one frame per message: not for a batching client");
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .map_err(|_| anyhow!("no frame within {WAIT:?}"))?
                .ok_or_else(|| anyhow!("connection ended"))??;
            let (value, frame): (serde_json::Value, ServerFrame) = match message {
                Message::Text(text) => {
                    (serde_json::from_str(text.as_str())?, protocol::decode_server(Encoding::Json, text.as_bytes())?)
                }
                Message::Binary(bytes) => {
                    (rmp_serde::from_slice(&bytes)?, protocol::decode_server(Encoding::MessagePack, &bytes)?)
                }
                Message::Close(frame) => bail!("connection closed: {frame:?}"),
                _ => continue,
            };
            self.record(&frame);
            return Ok(value);
        }
    }

    /// The first frame (backlog first, then the wire) for which `wanted` holds; the others are
    /// kept in the backlog, in order.
    pub async fn recv_matching(&mut self, wanted: impl Fn(&ServerFrame) -> bool) -> anyhow::Result<ServerFrame> {
        if let Some(index) = self.backlog.iter().position(&wanted) {
            return Ok(self.backlog.remove(index).expect("index in range"));
        }
        loop {
            let frame = self.recv_wire().await?;
            if wanted(&frame) {
                return Ok(frame);
            }
            self.backlog.push_back(frame);
        }
    }

    /// Like [`Client::recv_matching`], but gives up after `within`: `None` when no such frame
    /// came (frames that did come are kept in the backlog).
    pub async fn recv_matching_within(
        &mut self,
        within: Duration,
        wanted: impl Fn(&ServerFrame) -> bool,
    ) -> anyhow::Result<Option<ServerFrame>> {
        match tokio::time::timeout(within, self.recv_matching(wanted)).await {
            Ok(frame) => frame.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Remove the frames of the backlog for which `unwanted` holds, and return them in order.
    pub fn discard(&mut self, unwanted: impl Fn(&ServerFrame) -> bool) -> Vec<ServerFrame> {
        let (gone, kept): (VecDeque<ServerFrame>, VecDeque<ServerFrame>) =
            std::mem::take(&mut self.backlog).into_iter().partition(|frame| unwanted(frame));
        self.backlog = kept;
        gone.into()
    }

    /// Send text messages `(room, id, body)` with up to `window` requests in flight (pipelined,
    /// as a real client would), and return each one's ack as `(seq, duplicate)`, in order.
    pub async fn say_many(
        &mut self,
        messages: &[(String, String, String)],
        window: usize,
    ) -> anyhow::Result<Vec<(u64, bool)>> {
        let mut acks = Vec::with_capacity(messages.len());
        for chunk in messages.chunks(window.max(1)) {
            let mut reqs = Vec::with_capacity(chunk.len());
            for (room, id, body) in chunk {
                let req = self.next_req();
                self.send(&ClientFrame::send(req, room.clone(), id.clone(), body.clone())).await?;
                reqs.push((req, id));
            }
            for (req, id) in reqs {
                match self.reply_to(req).await? {
                    ServerFrame::Ack { seq, duplicate, id: acked, .. } if acked == *id => acks.push((seq, duplicate)),
                    other => bail!("send {id}: {other:?}"),
                }
            }
        }
        Ok(acks)
    }

    /// Receive until the ledger holds at least `len` entries; other frames go to the backlog.
    pub async fn wait_ledger_len(&mut self, len: usize) -> anyhow::Result<()> {
        while self.ledger.len() < len {
            let frame = self.recv_wire().await?;
            if !matches!(frame, ServerFrame::Message { .. }) {
                self.backlog.push_back(frame);
            }
        }
        Ok(())
    }

    /// Frames received but not taken yet (deliveries are also in the ledger).
    pub fn backlog(&self) -> impl Iterator<Item = &ServerFrame> {
        self.backlog.iter()
    }

    /// Close politely.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
        Ok(())
    }
}

/// The `req` a server frame answers, if it is a reply.
pub fn reply_req(frame: &ServerFrame) -> Option<u64> {
    match frame {
        ServerFrame::Registered { req, .. }
        | ServerFrame::LoggedIn { req, .. }
        | ServerFrame::Authenticated { req, .. }
        | ServerFrame::Ok { req }
        | ServerFrame::Room { req, .. }
        | ServerFrame::Rooms { req, .. }
        | ServerFrame::Members { req, .. }
        | ServerFrame::Ack { req, .. }
        | ServerFrame::History { req, .. }
        | ServerFrame::Thread { req, .. }
        | ServerFrame::Blocked { req, .. }
        | ServerFrame::Device { req, .. }
        | ServerFrame::Devices { req, .. }
        | ServerFrame::MediaUrl { req, .. }
        | ServerFrame::PresenceList { req, .. }
        | ServerFrame::Receipts { req, .. }
        | ServerFrame::Pong { req } => Some(*req),
        ServerFrame::Error { req, .. } => *req,
        ServerFrame::Welcome { .. }
        | ServerFrame::Message { .. }
        | ServerFrame::Live { .. }
        | ServerFrame::Resync { .. }
        | ServerFrame::Read { .. }
        | ServerFrame::Reconnect { .. }
        | ServerFrame::Presence { .. }
        | ServerFrame::Typing { .. }
        | ServerFrame::Receipt { .. }
        | ServerFrame::Reactions { .. } => None,
    }
}

/// Acked messages by (room, client id): the seq each was acked with.
pub type Acked = std::collections::HashMap<(String, String), u64>;

/// Clients that keep sending until stopped, for traffic across a resume's seam: each sends
/// batches of four (all in flight at once) round-robin over its rooms, ids `live-{writer}-{n}`.
pub struct Writers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    started: std::sync::Arc<tokio::sync::Notify>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Acked>>>,
}

impl Writers {
    /// One writer per (client, rooms).
    pub fn spawn(writers: Vec<(Client, Vec<String>)>) -> Writers {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started = std::sync::Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for (index, (mut writer, rooms)) in writers.into_iter().enumerate() {
            let (stop, started) = (stop.clone(), started.clone());
            tasks.push(tokio::spawn(async move {
                let mut acked = Acked::new();
                let mut i = 0usize;
                let result = async {
                    while !stop.load(Ordering::Acquire) {
                        let batch: Vec<_> = (i..i + 4)
                            .map(|n| (rooms[n % rooms.len()].clone(), format!("live-{index}-{n}"), format!("live {n}")))
                            .collect();
                        for ((room, id, _), (seq, duplicate)) in batch.iter().zip(writer.say_many(&batch, 4).await?) {
                            anyhow::ensure!(!duplicate, "{id} is new");
                            acked.insert((room.clone(), id.clone()), seq);
                        }
                        i += batch.len();
                        if index == 0 && i == 20 {
                            started.notify_one();
                        }
                    }
                    anyhow::Ok(())
                }
                .await;
                // Whoever waits for the start must not wait for a writer that failed.
                started.notify_one();
                result.map(|()| acked)
            }));
        }
        Writers { stop, started, tasks }
    }

    /// Wait until the first writer has had 20 messages acked (or has failed).
    pub async fn started(&self) {
        self.started.notified().await;
    }

    /// Stop every writer; everything they had acked.
    pub async fn stop(self) -> anyhow::Result<Acked> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let mut acked = Acked::new();
        for task in self.tasks {
            acked.extend(task.await??);
        }
        Ok(acked)
    }
}

/// Check a client's ledger of large-room entries: in each room, seqs follow one another by
/// one from the position in `from` (0 for a room not listed): no gap, no duplicate, no
/// reordering. Returns the number of entries checked.
pub fn check_room_ledger(ledger: &[Entry], from: &std::collections::BTreeMap<String, u64>) -> anyhow::Result<usize> {
    let mut last: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for entry in ledger {
        let last = last.entry(entry.room.as_str()).or_insert_with(|| from.get(&entry.room).copied().unwrap_or(0));
        anyhow::ensure!(
            entry.seq == *last + 1,
            "room {} seq {} after {} (gap, duplicate or reordering)",
            entry.room,
            entry.seq,
            last
        );
        *last = entry.seq;
    }
    Ok(ledger.len())
}

/// Check a client's ledger: cursors strictly increasing by one from `from + 1`, and within each
/// room, sequence numbers strictly increasing. Returns the number of entries checked.
pub fn check_ledger(ledger: &[(u64, Entry)], from: u64) -> anyhow::Result<usize> {
    let mut last_seq: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for (expected, (cursor, entry)) in (from + 1..).zip(ledger) {
        anyhow::ensure!(*cursor == expected, "cursor {cursor} where {expected} was expected (gap or duplicate)");
        let last = last_seq.entry(entry.room.as_str()).or_insert(0);
        anyhow::ensure!(
            entry.seq > *last,
            "room {} seq {} after {} (reordered or doubled)",
            entry.room,
            entry.seq,
            last
        );
        *last = entry.seq;
    }
    Ok(ledger.len())
}
