//! Node links: ractor_cluster's `NodeServer`, the reconnect loop and the heartbeat ticker.
//!
//! ractor_cluster authenticates links with the cookie and mirrors process groups over them, but
//! it neither reconnects nor notices a peer that hangs with its socket open (docs/DESIGN.md
//! §3). So a ticker, every `cluster.heartbeat_interval_ms`:
//! 1. sends this node's heartbeat to every router it can reach;
//! 2. re-evaluates membership (a peer silent for `heartbeat_timeout_ms` is dead);
//! 3. fails forwarded requests past their deadline;
//! 4. connects to every seed and known peer it has no link to (at most once per
//!    `heartbeat_timeout_ms` each), so links come back by themselves and the mesh is full:
//!    heartbeats carry every known node's address.
//!
//! Outgoing links are bound to `cluster.listen`'s address when it is a specific one, so a
//! node's links all come from one address (what firewalls and the test harness's
//! fault-injecting proxy see).
//!
//! Links come in through palaver's own accept loop on `cluster.listen` ([`super::gate`]), which
//! bounds what a peer may send and how long it may take before it authenticates, and runs the
//! TLS handshake if configured (`cluster.tls_*`, see [`super::tls`]); outgoing links are wrapped
//! in TLS before the node server gets them. The cookie handshake then runs inside TLS as before.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{IncomingEncryptionMode, NodeEventSubscription, NodeServer, NodeServerMessage};
use tokio::net::{TcpListener, TcpSocket};
use tracing::{debug, error, info};

use super::router::{RouterActor, RouterState};
use super::tls::{HandshakeError, LinkTls};
use super::wire::RouterMessage;
use super::{router_group, Cluster, ClusterStartError, ROUTERS_GROUP};
use actors::hub::Hub;
use actors::supervise::{spawn_essential, spawn_restarting};

/// Start the node server, the router and the ticker.
pub(super) async fn start(cluster: &Arc<Cluster>, hub: Arc<Hub>) -> Result<(), ClusterStartError> {
    let settings = &cluster.settings;
    let host = settings.advertise.rsplit_once(':').map_or(settings.advertise.as_str(), |(host, _)| host).to_string();
    // cluster.listen is ours (gate::serve); ractor_cluster's listener, which it always starts,
    // goes on loopback at a random port and refuses every connection (see the gate module).
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ClusterStartError::Bind { listen: settings.listen, source })?;
    let loopback = if settings.listen.is_ipv4() {
        std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST)
    } else {
        std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
    };
    let server = NodeServer::new(
        0,
        settings.cookie.clone(),
        settings.node.clone(),
        host,
        Some(IncomingEncryptionMode::Tls(super::tls::sealed_acceptor())),
        // Isolated: our own loop keeps the mesh full (ractor's transitive mode would dial the
        // addresses peers see, which are not the advertised ones behind NAT or a proxy).
        Some(ractor_cluster::node::NodeConnectionMode::Isolated),
    )
    .with_listen_addr(loopback);
    let (server, _) = Actor::spawn(None, server, ())
        .await
        .map_err(|err| ClusterStartError::Actor { what: "the node server", reason: err.to_string() })?;
    // The name this node gives peers carries the port it was built with: make it the real one.
    let _ = server.cast(NodeServerMessage::PortChanged { port: settings.listen.port() });
    spawn_essential(
        "cluster: accepting node links",
        super::gate::serve(
            listener,
            settings.tls.clone(),
            server.clone(),
            settings.node.clone(),
            settings.handshake_timeout,
        ),
    );
    server
        .cast(NodeServerMessage::SubscribeToEvents {
            id: "palaver.links".into(),
            subscription: Box::new(LinkEvents {
                node: settings.node.clone(),
                cluster: Arc::downgrade(cluster),
                tls: settings.tls.is_some(),
                state: Default::default(),
            }),
        })
        .map_err(|err| ClusterStartError::Actor { what: "the link events", reason: err.to_string() })?;
    let _ = cluster.node_server.set(server);

    let (router, _) = Actor::spawn(None, RouterActor, RouterState { cluster: cluster.clone(), hub })
        .await
        .map_err(|err| ClusterStartError::Actor { what: "the router", reason: err.to_string() })?;
    ractor::pg::join(ROUTERS_GROUP.to_string(), vec![router.get_cell()]);
    ractor::pg::join(router_group(&settings.node), vec![router.get_cell()]);

    let ticking = cluster.clone();
    spawn_restarting("cluster: heartbeat ticker", move || tick(ticking.clone()));
    info!(node = %settings.node, listen = %settings.listen, advertise = %settings.advertise, seeds = ?settings.seeds, tls = settings.tls.is_some(), "cluster started");
    // A machine-readable line for scripts and tests (like the client port's).
    println!("palaver node {} cluster on {}", settings.node, settings.listen);
    Ok(())
}

/// Cast this node's heartbeat to every remote router.
pub(super) fn send_heartbeats(cluster: &Cluster) {
    let message = RouterMessage::Heartbeat(cluster.heartbeat());
    for cell in ractor::pg::get_members(&ROUTERS_GROUP.to_string()) {
        if !cell.get_id().is_local() {
            let _ = ActorRef::<RouterMessage>::from(cell).cast(message.clone());
        }
    }
}

async fn tick(cluster: Arc<Cluster>) {
    let interval = cluster.settings.heartbeat_interval;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dialed: HashMap<String, Instant> = HashMap::new();
    loop {
        ticker.tick().await;
        send_heartbeats(&cluster);
        cluster.refresh();
        cluster.expire_pending();
        if !cluster.membership.lock().is_leaving() {
            reconnect(&cluster, &mut dialed).await;
        }
    }
}

/// Dial every seed and known peer without a link.
async fn reconnect(cluster: &Arc<Cluster>, dialed: &mut HashMap<String, Instant>) {
    let Some(server) = cluster.node_server.get() else { return };
    let sessions = match server.call(NodeServerMessage::GetSessions, Some(Duration::from_secs(1))).await {
        Ok(ractor::rpc::CallResult::Success(sessions)) => sessions,
        _ => return,
    };
    let known = cluster.known();
    let linked_names: HashSet<String> =
        sessions.values().filter_map(|session| session.peer_name.as_ref().map(|name| node_name(&name.name))).collect();
    let mut linked_addrs: HashSet<String> = sessions.values().map(|session| session.peer_addr.clone()).collect();
    linked_addrs.extend(known.iter().filter(|(name, _)| linked_names.contains(name)).map(|(_, addr)| addr.clone()));
    let me = &cluster.settings;
    let targets: Vec<String> = me
        .seeds
        .iter()
        .cloned()
        .chain(known.into_iter().filter(|(name, _)| *name != me.node).map(|(_, addr)| addr))
        .filter(|addr| *addr != me.advertise)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let now = Instant::now();
    for addr in targets {
        if linked_addrs.contains(&addr) || resolves_to_linked(&addr, &linked_addrs) {
            continue;
        }
        if dialed.get(&addr).is_some_and(|at| now.duration_since(*at) < me.heartbeat_timeout) {
            continue;
        }
        dialed.insert(addr.clone(), now);
        let server = server.clone();
        let bind = me.listen.ip();
        let tls = me.tls.clone();
        let node = me.node.clone();
        tokio::spawn(async move {
            match dial(&server, &addr, bind, tls.as_deref()).await {
                Ok(()) => debug!(%addr, "dialed cluster peer"),
                // A refused handshake is a configuration problem: say so, like the acceptor does.
                Err(DialError::Handshake(handshake)) => handshake.log(&node, &addr),
                Err(DialError::Unreachable(err)) => {
                    debug!(%addr, error = %err, "cluster peer not reachable; will retry")
                }
            }
        });
    }
}

/// ractor_cluster names a peer `name@host`; palaver's node name is the part before the `@`.
fn node_name(peer_name: &str) -> String {
    peer_name.split('@').next().unwrap_or(peer_name).to_string()
}

fn resolves_to_linked(addr: &str, linked: &HashSet<String>) -> bool {
    addr.parse::<SocketAddr>().is_ok_and(|parsed| linked.contains(&parsed.to_string()))
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
enum DialError {
    /// The peer was not reached (its name, the connect, the local node server): retried.
    #[error("{0}")]
    Unreachable(String),
    /// The peer's TLS handshake failed: a configuration problem, logged as one.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

impl From<std::io::Error> for DialError {
    fn from(err: std::io::Error) -> Self {
        DialError::Unreachable(err.to_string())
    }
}

/// Open a TCP link to `addr` (in TLS if configured) and hand it to the node server (which
/// authenticates it).
async fn dial(
    server: &ActorRef<NodeServerMessage>,
    addr: &str,
    bind: std::net::IpAddr,
    tls: Option<&LinkTls>,
) -> Result<(), DialError> {
    let unreachable = DialError::Unreachable;
    let target = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| unreachable(format!("{addr} resolves to nothing")))?;
    let socket = if target.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if !bind.is_unspecified() && bind.is_ipv4() == target.is_ipv4() {
        socket.bind(SocketAddr::new(bind, 0))?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(target))
        .await
        .map_err(|_| unreachable("connect timed out".into()))??;
    stream.set_nodelay(true)?;
    let stream = match tls {
        Some(tls) => tls.connect(stream, target).await?,
        None => ractor_cluster::NetworkStream::Raw { peer_addr: target, local_addr: stream.local_addr()?, stream },
    };
    server
        .cast(NodeServerMessage::ConnectionOpened { stream: Box::new(stream), is_server: false })
        .map_err(|err| unreachable(format!("node server: {err}")))?;
    Ok(())
}

/// Logs link events, and says plainly when a link fails authentication.
struct LinkEvents {
    node: String,
    /// Told when a peer's last link closes (a crashed peer is then dead sooner).
    cluster: std::sync::Weak<Cluster>,
    /// Links are TLS: a refused certificate also ends a link before it authenticates.
    tls: bool,
    /// Session ids that authenticated, and names with an authenticated link.
    state: Mutex<(HashSet<u64>, HashMap<String, usize>)>,
}

impl NodeEventSubscription for LinkEvents {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        debug!(peer = %ses.peer_addr, "cluster link opened");
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        let name = ses.peer_name.as_ref().map(|name| node_name(&name.name)).unwrap_or_default();
        let mut state = self.state.lock();
        state.0.insert(ses.node_id);
        *state.1.entry(name.clone()).or_default() += 1;
        info!(peer = %ses.peer_addr, peer_node = name, "cluster link authenticated");
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let name = ses.peer_name.as_ref().map(|name| node_name(&name.name));
        let mut state = self.state.lock();
        if state.0.remove(&ses.node_id) {
            if let Some(name) = &name {
                if let Some(count) = state.1.get_mut(name) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        if let Some(cluster) = self.cluster.upgrade() {
                            cluster.link_closed(name);
                        }
                    }
                }
            }
            info!(peer = %ses.peer_addr, peer_node = name.as_deref().unwrap_or("-"), "cluster link closed");
            return;
        }
        // Closed before authenticating. Two nodes dialing each other at once also end one
        // link this way (harmless: the other survives); otherwise it is the cookie.
        let duplicate = name.as_ref().is_some_and(|name| state.1.get(name).copied().unwrap_or(0) > 0);
        if name.as_deref() == Some(self.node.as_str()) {
            // ractor_cluster refuses a peer with this node's own name ("self_connection").
            error!(
                node = %self.node,
                peer = %ses.peer_addr,
                "cluster link refused: the peer is also named `{}` — node names must be unique in a cluster \
                 (set a different [node] name / PALAVER_NODE__NAME), or a seed points at this node itself",
                self.node
            );
        } else if duplicate {
            debug!(peer = %ses.peer_addr, "duplicate cluster link closed");
        } else {
            // In TLS 1.3 a client learns that the server refused its certificate only after its
            // handshake finished, so from here that looks like any other early close; the
            // refusing side logs the precise reason. A TLS peer closes a plain link the same way.
            let or_tls = if self.tls {
                "or the peer refused this node's TLS certificate (see the peer's log; every node needs a certificate \
                 signed by the same cluster.tls_ca_file)"
            } else {
                "or the peer requires TLS on node links (cluster.tls_cert_file, cluster.tls_key_file and \
                 cluster.tls_ca_file: on every node or none)"
            };
            error!(
                node = %self.node,
                peer = %ses.peer_addr,
                peer_node = name.as_deref().unwrap_or("-"),
                "cluster link refused: authentication failed — the cluster cookie differs between this node and the peer \
                 (set the same PALAVER_CLUSTER__COOKIE or cluster.cookie_file on every node), {or_tls}"
            );
        }
    }
}
