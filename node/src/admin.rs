//! The admin port (`[admin]`): the operator endpoints, on their own listener and away from
//! clients, since they name active rooms (who talks to whom, in direct conversations' ids), say
//! whether a room id exists, and change the cluster.
//!
//! Routes: `GET /status` (this node: rooms, connections, store), `GET /cluster` (the cluster as
//! this node sees it; `?room=ID` names the room's owner), `GET /metrics` (Prometheus text) and
//! `POST /cluster/forget?node=NAME` (node/src/operator.rs), and the server API under `/api/v1/`
//! (node/src/api), which authorises its requests with API keys of its own.
//!
//! It listens on loopback by default. With `admin.token` set (from `PALAVER_ADMIN__TOKEN` or
//! `admin.token_file`, never the configuration file) every request, `/metrics` included, must
//! carry `Authorization: Bearer <token>`: Prometheus sends one from a credentials file, and one
//! rule for the whole port is one thing to get right. Without a token the port answers reads to
//! whoever can reach loopback, and a non-loopback `admin.listen` is refused by the
//! configuration check; `POST /cluster/forget` then still needs the cluster cookie.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ::cluster::Cluster;
use actors::hub::Hub;
use actors::store::WriteStats;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::operator::constant_time_eq;
use crate::request::{self, Request};

/// Admin connections open at once, at most; more are closed at accept. Operators and scrapers
/// make a handful.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// How long an admin request head may take to arrive.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Shortest admin token accepted.
const MIN_TOKEN_BYTES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// The admin port: `/status`, `/cluster`, `/cluster/forget`, `/metrics`. Loopback by default;
    /// any other address needs `admin.token`. Port 0 picks a free port (printed on start).
    pub listen: SocketAddr,
    /// Bearer token every admin request must carry (at least 16 bytes). Set it with
    /// `PALAVER_ADMIN__TOKEN` or `token_file`; a configuration file that holds it is refused.
    pub token: Option<String>,
    /// A file holding the token (e.g. a mounted secret).
    pub token_file: Option<PathBuf>,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection { listen: SocketAddr::from(([127, 0, 0, 1], 7601)), token: None, token_file: None }
    }
}

impl AdminSection {
    /// Check values; the error is (key, message).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(token) = &self.token {
            if token.len() < MIN_TOKEN_BYTES {
                return Err(("admin.token", format!("must be at least {MIN_TOKEN_BYTES} bytes")));
            }
        }
        if !self.listen.ip().is_loopback() && self.token.is_none() && self.token_file.is_none() {
            return Err((
                "admin.token",
                format!(
                    "admin.listen {} is not a loopback address, so the admin port needs a token: set \
                     PALAVER_ADMIN__TOKEN or admin.token_file",
                    self.listen
                ),
            ));
        }
        Ok(())
    }

    /// The token, from the environment/configuration or `token_file`; `None` when unset.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = &self.token {
            return Ok(Some(token.clone()));
        }
        let Some(file) = &self.token_file else { return Ok(None) };
        let token =
            std::fs::read_to_string(file).with_context(|| format!("reading admin.token_file {}", file.display()))?;
        let token = token.trim().to_string();
        anyhow::ensure!(
            token.len() >= MIN_TOKEN_BYTES,
            "admin.token_file {}: the token must be at least {MIN_TOKEN_BYTES} bytes",
            file.display()
        );
        Ok(Some(token))
    }
}

/// Answer admin requests until `stop` turns true. `cluster`: this node's membership, for the
/// operator's `/cluster` view and actions (`None` on a single node).
pub async fn serve(
    listener: TcpListener,
    hub: Arc<Hub>,
    cluster: Option<Arc<Cluster>>,
    token: Option<String>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let token: Arc<Option<String>> = Arc::new(token);
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            // Mapped to `()`: the watch's guard must not live across the awaits below.
            _ = async { stop.wait_for(|stop| *stop).await.map(|_| ()) } => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        debug!(%peer, "admin connection dropped: {MAX_ADMIN_CONNECTIONS} already open");
                        continue;
                    };
                    let (hub, cluster, token) = (hub.clone(), cluster.clone(), token.clone());
                    tasks.spawn(async move {
                        let _slot = slot;
                        if let Err(err) = handle(stream, &hub, cluster.as_deref(), token.as_deref()).await {
                            debug!(%peer, error = %err, "admin connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.abort_all();
}

async fn handle(
    mut stream: TcpStream,
    hub: &Arc<Hub>,
    cluster: Option<&Cluster>,
    token: Option<&str>,
) -> std::io::Result<()> {
    let request = match request::read_request(&mut stream, tokio::time::Instant::now() + REQUEST_TIMEOUT).await {
        Ok(request) => request,
        Err(err) => return request::answer_read_error(&mut stream, err).await,
    };
    // The server API authorises its own requests (API keys; the admin token for key management).
    if request.path.starts_with(crate::api::PREFIX) {
        return crate::api::handle(&mut stream, request, hub, token).await;
    }
    if let Some(token) = token {
        let presented = request.header("authorization").and_then(|value| value.strip_prefix("Bearer ")).unwrap_or("");
        if !constant_time_eq(presented.trim().as_bytes(), token.as_bytes()) {
            let body = br#"{"error":"send the admin token as `Authorization: Bearer <admin.token>`"}"#;
            return request::respond_with(
                &mut stream,
                401,
                "application/json",
                "WWW-Authenticate: Bearer realm=\"palaver admin\"\r\n",
                body,
            )
            .await;
        }
    }
    let (status, content_type, body) = route(&request, hub, cluster, token.is_some()).await;
    request::respond(&mut stream, status, content_type, body.as_bytes()).await
}

async fn route(
    request: &Request,
    hub: &Hub,
    cluster: Option<&Cluster>,
    token_checked: bool,
) -> (u16, &'static str, String) {
    const JSON: &str = "application/json";
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/cluster/forget") => {
            let (status, body) = crate::operator::forget(
                cluster,
                request.query_param("node"),
                token_checked,
                request.header("authorization"),
            );
            (status, JSON, body.to_string())
        }
        ("GET", "/status") => (200, JSON, status(hub).to_string()),
        ("GET", "/cluster") => {
            (200, JSON, crate::cluster::status(hub, cluster, request.query_param("room")).await.to_string())
        }
        ("GET", "/metrics") => (200, "text/plain; version=0.0.4", metrics(hub)),
        (_, "/status" | "/cluster" | "/metrics") => {
            (405, "text/plain", "only GET is served here (and POST /cluster/forget)\n".into())
        }
        _ => (
            404,
            "text/plain",
            "not found: the admin port serves /status, /cluster, /cluster/forget, /metrics and /api/v1/\n".into(),
        ),
    }
}

/// `GET /status`: this node, its rooms and connections.
fn status(hub: &Hub) -> serde_json::Value {
    let (users, connections) = hub.connection_counts();
    serde_json::json!({
        "node": hub.node(),
        "store": hub.store().backend(),
        "draining": hub.is_shutting_down(),
        "users_online": users,
        "connections": connections,
        "rooms": hub.active_rooms(),
    })
}

/// `GET /metrics`: the hub's metrics and the ones computed at request time.
fn metrics(hub: &Hub) -> String {
    let (users, connections) = hub.connection_counts();
    let mut body = hub.metrics().render();
    body.push_str(&gauge("users_online", "Users with at least one authenticated connection.", users as u64));
    body.push_str(&gauge("connections_authenticated", "Authenticated connections.", connections as u64));
    if let Some(stats) = hub.store().write_stats() {
        body.push_str(&store_metrics(&stats));
    }
    body
}

/// The store's write-path counters in the Prometheus text format.
fn store_metrics(stats: &WriteStats) -> String {
    [
        counter(
            "store_write_transactions_total",
            "Write transactions committed by the store (group commits).",
            stats.write_transactions,
        ),
        counter(
            "store_write_transactions_inline_total",
            "Of those, committed on the rooms' thread without a hand-over to the store's writer.",
            stats.inline_write_transactions,
        ),
        counter(
            "store_write_requests_total",
            "Writes taken into a transaction; divided by the transactions, the mean group-commit batch.",
            stats.write_requests,
        ),
        counter(
            "store_write_failed_transactions_total",
            "Write transactions that failed to begin or commit.",
            stats.failed_transactions,
        ),
        gauge("store_writes_queued", "Writes waiting for the store's writer.", stats.queued_writes as u64),
    ]
    .concat()
}

/// One metric computed at request time (the rest are `actors::metrics::Metrics`).
fn counter(name: &str, help: &str, value: u64) -> String {
    metric(name, "counter", help, value)
}

fn gauge(name: &str, help: &str, value: u64) -> String {
    metric(name, "gauge", help, value)
}

fn metric(name: &str, kind: &str, help: &str, value: u64) -> String {
    format!("# HELP palaver_{name} {help}\n# TYPE palaver_{name} {kind}\npalaver_{name} {value}\n")
}

#[cfg(test)]
mod tests {
    use super::AdminSection;

    #[test]
    fn a_non_loopback_admin_port_needs_a_token() {
        AdminSection::default().validate().unwrap();
        let open = AdminSection { listen: "0.0.0.0:7601".parse().unwrap(), ..Default::default() };
        assert_eq!(open.validate().unwrap_err().0, "admin.token");
        let with_token = AdminSection { token: Some("0123456789abcdef".into()), ..open.clone() };
        with_token.validate().unwrap();
        let with_file = AdminSection { token_file: Some("/run/secrets/admin".into()), ..open };
        with_file.validate().unwrap();
        let short = AdminSection { token: Some("short".into()), ..Default::default() };
        assert_eq!(short.validate().unwrap_err().0, "admin.token");
    }
}
