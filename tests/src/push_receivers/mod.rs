//! Push receivers: the receiving side of each push provider, written from the provider's public
//! documentation, for testing palaver's push providers (`actors::push::providers`) against
//! real HTTP servers on 127.0.0.1 rather than mocks.
//!
//! - [`fcm`]: Google's OAuth 2.0 token endpoint and FCM's `messages:send` (HTTP/1.1).
//! - [`apns`]: APNs' `/3/device/<token>` over HTTP/2 (h2c, prior knowledge).
//! - [`webpush`]: a Web Push service and the browser behind it: it hands out subscriptions,
//!   checks VAPID and decrypts what arrives (HTTP/1.1).
//! - [`webhook`]: a push gateway checking `Palaver-Signature` (HTTP/1.1).
//!
//! Each verifies what arrives the way the real service does (signatures, tokens, the message's
//! shape), keeps what it accepted, decoded, and refuses anything else with the provider's own
//! error answer, counting it as a rejection with its reason, so a test can assert that nothing
//! was refused. Tests steer each one alike: fail the next pushes with a status (and a
//! `Retry-After`), hold the next ones unanswered, answer "unregistered" for a token, or go down
//! (the port refuses connections) and come back on the same port.

pub mod apns;
pub mod fcm;
pub mod webhook;
pub mod webpush;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// One request as a receiver sees it, whatever the HTTP version.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path and query.
    pub path: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn empty(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: Vec::new() }
    }

    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), "application/json; charset=UTF-8".into())],
            body: body.to_string().into_bytes(),
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// What a service does with a request.
pub enum Reply {
    Respond(Response),
    /// Never answer (until the client gives up or the receiver goes down).
    Hang,
}

/// What the test planned for the next push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// Look at it and answer as the real service would.
    Serve,
    /// Answer `status` (with this `Retry-After` value if any), whatever the push.
    Fail { status: u16, retry_after: Option<String> },
    /// Do not answer.
    Hang,
}

#[derive(Debug, Default)]
struct Plan {
    fail_next: usize,
    fail_status: u16,
    retry_after: Option<String>,
    hang_next: usize,
}

/// A receiver's steering and counters, shared by its connections.
#[derive(Debug, Default)]
pub struct Steering {
    plan: Mutex<Plan>,
    unregistered: Mutex<HashSet<String>>,
    rejections: Mutex<Vec<String>>,
    requests: AtomicU64,
}

impl Steering {
    /// What to do with the next push (services ask once they know a request is a push).
    pub fn next(&self) -> Planned {
        let mut plan = lock(&self.plan);
        if plan.hang_next > 0 {
            plan.hang_next -= 1;
            return Planned::Hang;
        }
        if plan.fail_next > 0 {
            plan.fail_next -= 1;
            return Planned::Fail { status: plan.fail_status, retry_after: plan.retry_after.clone() };
        }
        Planned::Serve
    }

    /// Count a refused request, and why.
    pub fn reject(&self, why: impl Into<String>) {
        lock(&self.rejections).push(why.into());
    }

    pub fn is_unregistered(&self, token: &str) -> bool {
        lock(&self.unregistered).contains(token)
    }
}

/// `mutex`'s guard, even if a panicking test thread poisoned it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The receiving side of one provider.
pub trait Service: Send + Sync + 'static {
    fn steering(&self) -> &Steering;
    /// Answer one request (the steering already counted it).
    fn handle(&self, request: Request) -> Reply;
}

/// The HTTP version a receiver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive and `Content-Length` bodies.
    Http1,
    /// HTTP/2 over cleartext TCP, prior knowledge (no upgrade): what APNs speaks, minus TLS.
    H2c,
}

/// A receiver: a server on a port of 127.0.0.1 and the service behind it (its methods are the
/// receiver's, through `Deref`).
pub struct Receiver<S: Service> {
    pub addr: SocketAddr,
    service: Arc<S>,
    protocol: Protocol,
    server: Option<JoinHandle<()>>,
}

impl<S: Service> Deref for Receiver<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.service
    }
}

impl<S: Service> Receiver<S> {
    /// Listen on a free port of 127.0.0.1 and serve `make(address)`.
    pub async fn bind(protocol: Protocol, make: impl FnOnce(SocketAddr) -> S) -> anyhow::Result<Receiver<S>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut receiver = Receiver { addr, service: Arc::new(make(addr)), protocol, server: None };
        receiver.serve(listener);
        Ok(receiver)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer the next `n` pushes `status`, with `Retry-After: <retry_after>` if given.
    pub fn fail_next(&self, n: usize, status: u16, retry_after: Option<u64>) {
        self.plan_failures(n, status, retry_after.map(|secs| secs.to_string()));
    }

    /// Answer the next `n` pushes `status` with `Retry-After: <http_date>`.
    pub fn fail_next_until(&self, n: usize, status: u16, http_date: &str) {
        self.plan_failures(n, status, Some(http_date.to_string()));
    }

    fn plan_failures(&self, n: usize, status: u16, retry_after: Option<String>) {
        let mut plan = lock(&self.service.steering().plan);
        plan.fail_next = n;
        plan.fail_status = status;
        plan.retry_after = retry_after;
    }

    /// Hold the next `n` pushes unanswered.
    pub fn hang_next(&self, n: usize) {
        lock(&self.service.steering().plan).hang_next = n;
    }

    /// Answer pushes to `token` (a registration token, a device token, an endpoint, a gateway
    /// URL) with the provider's "unregistered".
    pub fn unregister(&self, token: &str) {
        lock(&self.service.steering().unregistered).insert(token.to_string());
    }

    /// Why each refused request was refused, in order.
    pub fn rejections(&self) -> Vec<String> {
        lock(&self.service.steering().rejections).clone()
    }

    /// Requests received, answered or not.
    pub fn requests(&self) -> u64 {
        self.service.steering().requests.load(Ordering::Relaxed)
    }

    /// Stop listening and drop every open connection: the port refuses connections.
    pub fn go_down(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// Listen again on the same port.
    pub async fn come_back(&mut self) -> anyhow::Result<()> {
        let listener = TcpListener::bind(self.addr).await.context("binding the receiver's port again")?;
        self.serve(listener);
        Ok(())
    }

    fn serve(&mut self, listener: TcpListener) {
        let (service, protocol) = (self.service.clone(), self.protocol);
        self.server = Some(tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let service = service.clone();
                        connections.spawn(async move {
                            let _ = match protocol {
                                Protocol::Http1 => serve_http1(stream, service).await,
                                Protocol::H2c => serve_h2c(stream, service).await,
                            };
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
            // Aborting this task drops the JoinSet, which aborts every connection with it.
        }));
    }
}

impl<S: Service> Drop for Receiver<S> {
    fn drop(&mut self) {
        self.go_down();
    }
}

/// How long a hung request is held: longer than any test.
const HANG: Duration = Duration::from_secs(3_600);

async fn serve_http1<S: Service>(mut stream: TcpStream, service: Arc<S>) -> anyhow::Result<()> {
    let mut buffer = Vec::new();
    loop {
        let Some((head, body)) = crate::webhooks::read_request(&mut stream, &mut buffer).await? else { return Ok(()) };
        let mut lines = head.lines();
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
            .collect();
        let request = Request { method: method.to_string(), path: path.to_string(), headers, body };
        service.steering().requests.fetch_add(1, Ordering::Relaxed);
        match service.handle(request) {
            Reply::Hang => {
                tokio::time::sleep(HANG).await;
                return Ok(());
            }
            Reply::Respond(response) => {
                let reason = http::StatusCode::from_u16(response.status)
                    .ok()
                    .and_then(|status| status.canonical_reason())
                    .unwrap_or("Unknown");
                let mut head =
                    format!("HTTP/1.1 {} {reason}\r\ncontent-length: {}\r\n", response.status, response.body.len());
                for (name, value) in &response.headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str("\r\n");
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(&response.body).await?;
            }
        }
    }
}

async fn serve_h2c<S: Service>(stream: TcpStream, service: Arc<S>) -> anyhow::Result<()> {
    let mut connection = h2::server::handshake(stream).await?;
    // Each stream in a task of its own, so a hung one holds up no other; they end with the
    // connection.
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            next = connection.accept() => {
                let Some(next) = next else { return Ok(()) };
                let (request, respond) = next?;
                let service = service.clone();
                streams.spawn(async move {
                    let _ = serve_h2_stream(request, respond, service).await;
                });
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
}

async fn serve_h2_stream<S: Service>(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    service: Arc<S>,
) -> anyhow::Result<()> {
    let (parts, mut body) = request.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let path = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_string(), |pq| pq.as_str().to_string());
    let request = Request { method: parts.method.to_string(), path, headers, body: data };
    service.steering().requests.fetch_add(1, Ordering::Relaxed);
    match service.handle(request) {
        Reply::Hang => tokio::time::sleep(HANG).await,
        Reply::Respond(response) => {
            let mut answer = http::Response::builder().status(response.status);
            for (name, value) in &response.headers {
                answer = answer.header(name, value);
            }
            let end = response.body.is_empty();
            let mut send = respond.send_response(answer.body(())?, end)?;
            if !end {
                send.send_data(Bytes::from(response.body), true)?;
            }
        }
    }
    Ok(())
}

/// A key pair made by the `openssl` command, as an operator would: the private key as PKCS#8
/// PEM (what a service-account file, an APNs `.p8` and a VAPID key file hold) and the public
/// key as DER (SubjectPublicKeyInfo).
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub private_pem: String,
    pub public_der: Vec<u8>,
}

impl KeyPair {
    /// RSA, 2048 bits (a Google service account's).
    pub fn rsa() -> anyhow::Result<KeyPair> {
        KeyPair::generate(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
    }

    /// ECDSA P-256 (APNs' and VAPID's).
    pub fn p256() -> anyhow::Result<KeyPair> {
        KeyPair::generate(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
    }

    fn generate(args: &[&str]) -> anyhow::Result<KeyPair> {
        let private_pem = String::from_utf8(openssl(args, None)?)?;
        let public_der = openssl(&["pkey", "-pubout", "-outform", "DER"], Some(private_pem.as_bytes()))?;
        Ok(KeyPair { private_pem, public_der })
    }

    /// Write the private key to `dir/name`.
    pub fn write_private(&self, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, &self.private_pem)?;
        Ok(path)
    }

    /// An EC public key as the uncompressed point (`04 || x || y`): the last 65 bytes of a
    /// P-256 SubjectPublicKeyInfo.
    pub fn public_point(&self) -> Vec<u8> {
        self.public_der[self.public_der.len().saturating_sub(65)..].to_vec()
    }
}

fn openssl(args: &[&str], input: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running openssl")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("openssl's stdin")?;
        if let Some(input) = input {
            stdin.write_all(input)?;
        }
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    Ok(output.stdout)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    crate::now_ms() / 1_000
}

/// Random bytes, base64url.
pub fn random_b64(len: usize) -> String {
    use base64::Engine;
    let mut bytes = vec![0u8; len];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
