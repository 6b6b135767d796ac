//! The `[cluster]` configuration section and the node's cluster start-up.
//!
//! Off by default: a node without `cluster.enabled` is a single node and opens no cluster port.
//! With it, the node listens for other nodes on `cluster.listen`, joins through
//! `cluster.seeds`, and proves membership with the cluster cookie, a secret that comes from
//! `PALAVER_CLUSTER__COOKIE` or `cluster.cookie_file`, never from the configuration file.
//! Optionally the links are mutual TLS (`cluster.tls_*`, cluster/src/tls.rs): all three
//! files set turn it on, none leaves it off, and anything in between is a configuration error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ::cluster::tls::{LinkTls, TlsFiles};
use ::cluster::{Cluster, ClusterSettings};
use actors::hub::Hub;
use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Join a cluster. Off: a single node, no cluster port.
    pub enabled: bool,
    /// Where other nodes connect to this one.
    pub listen: SocketAddr,
    /// `host:port` other nodes should use to reach this one, if not `listen` (NAT, containers,
    /// proxies). Nodes tell each other these addresses, which is how the mesh fills in.
    pub advertise: Option<String>,
    /// `host:port` of nodes to join through; leave empty on the first node. Any one live seed
    /// is enough: the others are learnt from it.
    pub seeds: Vec<String>,
    /// The cluster's shared secret. Set it with `PALAVER_CLUSTER__COOKIE`; a configuration file
    /// that holds it is refused.
    pub cookie: Option<String>,
    /// A file holding the cookie (e.g. a mounted secret).
    pub cookie_file: Option<PathBuf>,
    /// TLS on node links: this node's certificate chain (PEM). TLS is on when this, `tls_key_file`
    /// and `tls_ca_file` are all set, and must then be on for every node.
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of `tls_cert_file` (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// The CA that signs every node's certificate (PEM). A node accepts links only from nodes
    /// with a certificate it signed (mutual TLS).
    pub tls_ca_file: Option<PathBuf>,
    /// The DNS name every node certificate carries (subjectAltName), checked on every link:
    /// nodes dial addresses, which differ behind NAT and proxies, so one shared name stands in.
    pub tls_server_name: String,
    /// How often routers tell each other they are alive.
    pub heartbeat_interval_ms: u64,
    /// A node not heard from for this long is dead: its rooms move. Several intervals, so one
    /// late heartbeat on a loaded machine does not move rooms.
    pub heartbeat_timeout_ms: u64,
    /// An accepted node link must finish its handshake (TLS and the cookie check) within this,
    /// or it is closed: until then a connection to the cluster port is nobody's, and may hold
    /// only a small, bounded amount of the node (cluster/src/gate.rs). A handshake takes
    /// milliseconds, so the default leaves room for a loaded machine.
    pub handshake_timeout_ms: u64,
    /// Appends forwarded to other nodes and not yet answered, at most (flow control above
    /// ractor_cluster's unbounded send queue); beyond it sends get `unavailable`.
    pub max_pending_requests: usize,
    /// Deliveries from other nodes waiting for this node's fan-out, at most. Beyond it a
    /// delivery is not queued: its local recipients are marked lagged and read it from the store
    /// (bounded memory, and the router stays free for heartbeats when fan-out falls behind).
    pub delivery_queue_len: usize,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            advertise: None,
            seeds: Vec::new(),
            cookie: None,
            cookie_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            tls_server_name: ::cluster::tls::DEFAULT_SERVER_NAME.into(),
            heartbeat_interval_ms: 500,
            heartbeat_timeout_ms: 3_000,
            handshake_timeout_ms: 5_000,
            max_pending_requests: 10_000,
            delivery_queue_len: 256,
        }
    }
}

impl ClusterSection {
    /// Check values; the error is (key, message). With TLS on, the TLS files are read and checked
    /// here too, so `palaver check-config` finds a missing or wrong file without starting.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.heartbeat_interval_ms == 0 {
            return Err(("cluster.heartbeat_interval_ms", "must be greater than 0".into()));
        }
        if self.heartbeat_timeout_ms < 2 * self.heartbeat_interval_ms {
            return Err((
                "cluster.heartbeat_timeout_ms",
                format!("must be at least twice cluster.heartbeat_interval_ms ({})", self.heartbeat_interval_ms),
            ));
        }
        if self.handshake_timeout_ms == 0 {
            return Err(("cluster.handshake_timeout_ms", "must be greater than 0".into()));
        }
        if self.max_pending_requests == 0 {
            return Err(("cluster.max_pending_requests", "must be greater than 0".into()));
        }
        if self.delivery_queue_len == 0 {
            return Err(("cluster.delivery_queue_len", "must be greater than 0".into()));
        }
        for seed in &self.seeds {
            if !is_host_port(seed) {
                return Err(("cluster.seeds", format!("`{seed}` is not host:port")));
            }
        }
        if let Some(advertise) = &self.advertise {
            if !is_host_port(advertise) {
                return Err(("cluster.advertise", format!("`{advertise}` is not host:port")));
            }
        }
        if let Some(cookie) = &self.cookie {
            if cookie.len() < 16 {
                return Err(("cluster.cookie", "must be at least 16 bytes".into()));
            }
        }
        if self.enabled && self.cookie.is_none() && self.cookie_file.is_none() {
            return Err((
                "cluster.cookie",
                "a cluster needs a cookie: set PALAVER_CLUSTER__COOKIE or cluster.cookie_file".into(),
            ));
        }
        ::cluster::tls::check_server_name(&self.tls_server_name).map_err(|err| (err.key, err.message))?;
        if self.enabled {
            self.tls().map_err(|err| (err.key, err.message))?;
        } else {
            self.tls_files()?;
        }
        Ok(())
    }

    /// The TLS files: all three or none.
    fn tls_files(&self) -> Result<Option<TlsFiles<'_>>, (&'static str, String)> {
        let files = [
            ("cluster.tls_cert_file", &self.tls_cert_file),
            ("cluster.tls_key_file", &self.tls_key_file),
            ("cluster.tls_ca_file", &self.tls_ca_file),
        ];
        let set: Vec<&str> = files.iter().filter(|(_, file)| file.is_some()).map(|(key, _)| *key).collect();
        match (&self.tls_cert_file, &self.tls_key_file, &self.tls_ca_file) {
            (Some(cert_file), Some(key_file), Some(ca_file)) => {
                Ok(Some(TlsFiles { cert_file, key_file, ca_file, server_name: &self.tls_server_name }))
            }
            (None, None, None) => Ok(None),
            _ => {
                let missing = files.iter().find(|(_, file)| file.is_none()).map(|(key, _)| *key).expect("one is unset");
                Err((
                    missing,
                    format!(
                        "TLS on node links needs cluster.tls_cert_file, cluster.tls_key_file and cluster.tls_ca_file \
                         together, but only {} {} set",
                        set.join(" and "),
                        if set.len() == 1 { "is" } else { "are" }
                    ),
                ))
            }
        }
    }

    /// Load TLS for node links, if configured.
    fn tls(&self) -> Result<Option<LinkTls>, ::cluster::tls::TlsConfigError> {
        let files = self.tls_files().map_err(|(key, message)| ::cluster::tls::TlsConfigError { key, message })?;
        files.map(LinkTls::load).transpose()
    }

    fn cookie(&self) -> anyhow::Result<String> {
        if let Some(cookie) = &self.cookie {
            return Ok(cookie.clone());
        }
        let file = self.cookie_file.as_ref().context("no cluster cookie")?;
        let cookie =
            std::fs::read_to_string(file).with_context(|| format!("reading cluster.cookie_file {}", file.display()))?;
        let cookie = cookie.trim().to_string();
        anyhow::ensure!(
            cookie.len() >= 16,
            "cluster.cookie_file {}: the cookie must be at least 16 bytes",
            file.display()
        );
        Ok(cookie)
    }
}

fn is_host_port(value: &str) -> bool {
    value.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// Join the cluster if configured; `None` on a single node.
pub async fn start(
    section: &ClusterSection,
    node: &str,
    hub: &Arc<Hub>,
    request_timeout_ms: u64,
) -> anyhow::Result<Option<Arc<Cluster>>> {
    if !section.enabled {
        return Ok(None);
    }
    let cookie = section.cookie()?;
    let tls = section.tls()?.map(Arc::new);
    // Port 0 picks a free port (tests); the probe also gives an unusable address a precise error.
    let probe = std::net::TcpListener::bind(section.listen)
        .with_context(|| format!("binding cluster.listen {}", section.listen))?;
    let listen = probe.local_addr()?;
    drop(probe);
    let settings = ClusterSettings {
        node: node.to_string(),
        listen,
        advertise: section.advertise.clone().unwrap_or_else(|| listen.to_string()),
        seeds: section.seeds.clone(),
        cookie,
        tls,
        heartbeat_interval: Duration::from_millis(section.heartbeat_interval_ms),
        heartbeat_timeout: Duration::from_millis(section.heartbeat_timeout_ms),
        handshake_timeout: Duration::from_millis(section.handshake_timeout_ms),
        request_timeout: Duration::from_millis(request_timeout_ms),
        max_pending_requests: section.max_pending_requests,
        delivery_queue_len: section.delivery_queue_len,
    };
    let cluster = ::cluster::start(hub, settings).await?;
    Ok(Some(cluster))
}

/// The operator view at `GET /cluster` on the admin port: the live and known nodes, this node's
/// rooms and connections, and with `?room=ID` the node that owns that room now (by this node's
/// view) and the owner recorded in the store (the last node to claim it, and its epoch).
pub async fn status(hub: &Hub, cluster: Option<&Cluster>, room: Option<&str>) -> serde_json::Value {
    let (users, connections) = hub.connection_counts();
    let mut body = serde_json::json!({
        "node": hub.node(),
        "draining": hub.is_shutting_down(),
        "rooms": hub.active_rooms(),
        "users_online": users,
        "connections": connections,
    });
    match cluster {
        Some(cluster) => {
            let view = cluster.view();
            body["cluster"] = serde_json::json!({
                "live": view.live,
                "known": cluster.known().into_iter().map(|(name, addr)| serde_json::json!({"node": name, "addr": addr})).collect::<Vec<_>>(),
                "serving": view.serving,
                "reason": view.reason,
                "seen_by": view.seen_by,
            });
        }
        None => body["cluster"] = serde_json::Value::Null,
    }
    if let Some(room) = room {
        let owner = match cluster {
            Some(cluster) => cluster.owner(room),
            None => Some(hub.node().to_string()),
        };
        let claimed = match hub.store().room_owner(room).await {
            Ok(Some((node, epoch))) => serde_json::json!({"node": node, "epoch": epoch}),
            Ok(None) => serde_json::Value::Null,
            Err(err) => serde_json::json!({"error": err.to_string()}),
        };
        body["room"] = serde_json::json!({"id": room, "owner": owner, "claimed": claimed});
    }
    body
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use figment::providers::{Format, Toml};

    use crate::config::{Config, ConfigError};

    fn load(toml: &str) -> Result<Config, ConfigError> {
        Config::from_figment(Config::figment(None).merge(Toml::string(toml)))
    }

    #[test]
    fn off_by_default() {
        assert!(!Config::default().cluster.enabled);
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("[cluster]\nenabled = true\n", "cluster.cookie"),
            ("[cluster]\nheartbeat_interval_ms = 1000\nheartbeat_timeout_ms = 1500\n", "cluster.heartbeat_timeout_ms"),
            ("[cluster]\nheartbeat_interval_ms = 0\n", "cluster.heartbeat_interval_ms"),
            ("[cluster]\nseeds = [\"no-port\"]\n", "cluster.seeds"),
            ("[cluster]\nadvertise = \"host:99999\"\n", "cluster.advertise"),
            ("[cluster]\nmax_pending_requests = 0\n", "cluster.max_pending_requests"),
            ("[cluster]\nhandshake_timeout_ms = 0\n", "cluster.handshake_timeout_ms"),
        ];
        for (toml, key) in cases {
            match load(toml).unwrap_err() {
                ConfigError::Invalid { key: named, .. } => assert_eq!(named, key, "{toml}"),
                other => panic!("{toml}: {other}"),
            }
        }
        let err = load("[cluster]\nheartbeat_intervall_ms = 5\n").unwrap_err().to_string();
        assert!(err.contains("heartbeat_intervall_ms"), "{err}");
    }

    #[test]
    fn a_cookie_in_the_file_is_refused() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "[cluster]\ncookie = \"0123456789abcdef0123\"").unwrap();
        let err = Config::load(Some(file.path())).unwrap_err();
        match err {
            ConfigError::Invalid { key, message } => {
                assert_eq!(key, "cluster.cookie");
                assert!(message.contains("PALAVER_CLUSTER__COOKIE"), "{message}");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn tls_needs_all_three_files_and_names_the_missing_key() {
        let cases = [
            ("tls_cert_file = \"n1.pem\"", "cluster.tls_key_file"),
            ("tls_cert_file = \"n1.pem\"\ntls_key_file = \"n1.key\"", "cluster.tls_ca_file"),
            ("tls_key_file = \"n1.key\"\ntls_ca_file = \"ca.pem\"", "cluster.tls_cert_file"),
            ("tls_ca_file = \"ca.pem\"", "cluster.tls_cert_file"),
            ("tls_server_name = \"not a name!\"", "cluster.tls_server_name"),
        ];
        // Whether or not the cluster is on: a half-configured TLS is a mistake either way.
        for enabled in ["false", "true"] {
            for (keys, key) in cases {
                let toml = format!("[cluster]\nenabled = {enabled}\ncookie_file = \"cookie\"\n{keys}\n");
                match load(&toml).unwrap_err() {
                    ConfigError::Invalid { key: named, message } => {
                        assert_eq!(named, key, "{toml}");
                        assert!(message.contains("set") || key == "cluster.tls_server_name", "{message}");
                    }
                    other => panic!("{toml}: {other}"),
                }
            }
        }
        assert_eq!(Config::default().cluster.tls_server_name, "palaver-cluster");
    }

    #[test]
    fn unreadable_or_invalid_tls_files_name_the_key_and_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not PEM at all\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let section = |cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path| super::ClusterSection {
            enabled: true,
            cookie_file: Some("cookie".into()),
            tls_cert_file: Some(cert.into()),
            tls_key_file: Some(key.into()),
            tls_ca_file: Some(ca.into()),
            ..Default::default()
        };
        let cases = [
            (section(&missing, &garbage, &garbage), "cluster.tls_cert_file", &missing),
            (section(&garbage, &garbage, &garbage), "cluster.tls_cert_file", &garbage),
        ];
        for (section, key, path) in cases {
            let (named, message) = section.validate().unwrap_err();
            assert_eq!(named, key, "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        // Off: the files are not read (a single node does not need them), but all three are set.
        let off = super::ClusterSection { enabled: false, ..section(&missing, &missing, &missing) };
        off.validate().unwrap();
    }

    #[test]
    fn a_cookie_file_is_read() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "  0123456789abcdef0123  ").unwrap();
        let section =
            super::ClusterSection { enabled: true, cookie_file: Some(file.path().into()), ..Default::default() };
        section.validate().unwrap();
        assert_eq!(section.cookie().unwrap(), "0123456789abcdef0123");
        let mut short = tempfile::NamedTempFile::new().unwrap();
        writeln!(short, "short").unwrap();
        let section =
            super::ClusterSection { enabled: true, cookie_file: Some(short.path().into()), ..Default::default() };
        assert!(section.cookie().unwrap_err().to_string().contains("at least 16 bytes"));
    }
}
