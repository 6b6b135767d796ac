//! The node's configuration: defaults, then a TOML file, then `PALAVER_` environment variables
//! (`__` separates nesting: `PALAVER_LIMITS__MAX_FRAME_BYTES=131072`), loaded with figment and
//! checked once by [`Config::validate`], whose errors name the key.
//!
//! Secrets (the token signing key, the cluster cookie, the admin token) come from the
//! environment or a file named in the configuration, never from the configuration file itself,
//! which is meant to be committed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use actors::limits::Limits;
use actors::presence::PresenceSettings;
use actors::push::PushSettings;
use actors::webhooks::WebhookSettings;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The whole configuration. Every section has defaults, so an empty file is a valid one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeSection,
    pub client: ClientSection,
    /// The operator endpoints' own port; see `crate::admin`.
    pub admin: crate::admin::AdminSection,
    pub store: StoreSection,
    pub auth: AuthSection,
    pub limits: Limits,
    /// Presence, typing and receipts.
    pub presence: PresenceSettings,
    /// Delivering webhook events (endpoints are created through the server API).
    pub webhooks: WebhookSettings,
    /// Push notifications to users' devices (docs/PUSH.md).
    pub push: PushSettings,
    /// Uploads, downloads and the collector of unused files (docs/MEDIA.md); see `crate::media`.
    pub media: crate::media::MediaSettings,
    pub log: LogSection,
    /// Spans exported over OTLP (off unless an endpoint is set); see `crate::telemetry`.
    pub tracing: TracingSection,
    /// Joining a cluster (off by default); see `crate::cluster`.
    pub cluster: crate::cluster::ClusterSection,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Unique within a cluster; shown to clients in `welcome` and used as the room owner's name.
    pub name: String,
    /// Where the embedded store and other node files live.
    pub data_dir: PathBuf,
    /// On SIGTERM, how long to wait for connections to take their `reconnect` frame and close.
    pub drain_timeout_ms: u64,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection { name: "palaver-1".into(), data_dir: PathBuf::from("data"), drain_timeout_ms: 5_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSection {
    /// HTTP and WebSocket for clients: `/ws`, `/healthz`, `/readyz`, the web client at `/` and
    /// media under `/media` (the operator endpoints are on `admin.listen`). Port 0 picks a free port; the node logs
    /// and prints the one it got.
    pub listen: SocketAddr,
    /// Other nodes the bundled web client may connect to, and so send its token and password
    /// to: `host:port` (the page's scheme) or `ws://host:port/path`, `wss://…`. The page's own
    /// node is always allowed; nothing else is, whatever the page's URL or storage says, so a
    /// link cannot send a user's credentials elsewhere. Empty by default: the page's own node.
    /// Each node listed must allow this node's pages in its own `client.allowed_origins`.
    pub web_nodes: Vec<String>,
    /// Web pages that may open a WebSocket here besides the node's own (`Origin` equal to the
    /// request's `Host`), as `https://host[:port]`; `*` allows any page. A page of another site
    /// is refused with 403 by default, so it cannot use a signed-in visitor's browser against
    /// the node. Programs, which send no `Origin`, are always allowed.
    pub allowed_origins: Vec<String>,
    /// TLS on this port: the certificate chain (PEM). With `tls_key_file` it turns TLS on, and
    /// the port then serves HTTPS and WSS only. Off by default: TLS is often ended by a proxy
    /// in front (docker/README.md).
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of `tls_cert_file` (PEM).
    pub tls_key_file: Option<PathBuf>,
}

impl Default for ClientSection {
    fn default() -> Self {
        ClientSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 7600)),
            web_nodes: Vec::new(),
            allowed_origins: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl ClientSection {
    /// The TLS acceptor when TLS is configured; the error is (key, message). Both files or none.
    pub fn tls(&self) -> Result<Option<tokio_rustls::TlsAcceptor>, (&'static str, String)> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => crate::tls::load(cert, key).map(Some),
            (None, None) => Ok(None),
            (Some(_), None) => {
                Err(("client.tls_key_file", "TLS needs client.tls_key_file with client.tls_cert_file".into()))
            }
            (None, Some(_)) => {
                Err(("client.tls_cert_file", "TLS needs client.tls_cert_file with client.tls_key_file".into()))
            }
        }
    }
}

/// Which store backend, and its settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `sqlite` (embedded, the default) or `fdb` (FoundationDB; needs the `fdb` build feature).
    pub backend: String,
    /// SQLite database file; default `<node.data_dir>/palaver.db`. Nodes on one host may share it.
    pub sqlite_path: Option<PathBuf>,
    /// How long a SQLite writer waits for another process's transaction before giving up.
    pub sqlite_busy_timeout_ms: u64,
    /// Entries kept per user log; older ones are trimmed and resuming from before them answers
    /// `resync`. 0 keeps everything. 100,000 covers weeks of a busy user while bounding storage.
    pub user_log_max_entries: u64,
    /// FoundationDB cluster file; default: the client library's own default lookup.
    pub fdb_cluster_file: Option<PathBuf>,
    /// Every FoundationDB key lives under the tuple `(prefix,)`, so deployments can share a cluster.
    pub fdb_subspace_prefix: String,
    /// How long a FoundationDB transaction may take, retries included (without it, it would
    /// retry forever against an unreachable cluster).
    pub fdb_transaction_timeout_ms: u64,
    /// Most retries of a FoundationDB transaction; 0: no count, retried until it commits or
    /// times out, so contention (busy rooms sharing members) never turns into failure.
    pub fdb_transaction_retry_limit: u32,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            backend: "sqlite".into(),
            sqlite_path: None,
            sqlite_busy_timeout_ms: 5_000,
            user_log_max_entries: 100_000,
            fdb_cluster_file: None,
            fdb_subspace_prefix: "palaver".into(),
            fdb_transaction_timeout_ms: 5_000,
            fdb_transaction_retry_limit: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Token signing key (at least 32 bytes). Set it through `PALAVER_AUTH__TOKEN_KEY` or
    /// `token_key_file`; all nodes of a cluster need the same key. Without one the node makes a
    /// random key, and tokens die with the process.
    pub token_key: Option<String>,
    pub token_key_file: Option<PathBuf>,
    pub token_ttl_secs: u64,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub password_min_chars: usize,
    /// Login attempts one client address (IPv6: its /64) may have in flight or failed within
    /// `login_window_secs`, across all user names; also the failures in a row allowed per user
    /// name and address before delays start. An attempt counts from when it starts, so
    /// pipelining gains nothing; a success gives its place back. 5 a minute is plenty for a
    /// person who mistypes and a crawl for a guesser.
    pub login_max_failures: u32,
    pub login_window_secs: u64,
    /// Failed logins for one user name from all addresses within the window. Far above one
    /// address's share, so a guesser slowed down at its own address does not lock the owner
    /// out of theirs; it takes guessers at ten addresses to reach it.
    pub login_user_max_failures: u32,
    /// Per user name and address, after `login_max_failures` failures in a row the next attempt
    /// waits `login_window_secs`, each further failure doubles the wait, up to this (an hour);
    /// a success, or quiet for this long, resets it.
    pub login_backoff_max_secs: u64,
    /// Registrations per client address within `register_window_secs`, successful or not (each
    /// costs a password hash); 0: no limit (benchmarks). Ten in ten minutes lets a family or
    /// an office create its accounts and stops a script from creating thousands.
    pub register_max_per_address: u32,
    pub register_window_secs: u64,
    /// Password hashes computed at once, node-wide; 0: one per CPU core. Each holds
    /// `argon2_memory_kib` of memory while it runs, so this bounds the memory logins take.
    pub max_concurrent_hashes: usize,
    /// Logins and registrations waiting for a hash; beyond them the node answers
    /// `rate_limited` at once. 64 is about a second of waiting on a small machine.
    pub hash_queue_len: usize,
    /// JWTs of the product's own identity provider, accepted in `authenticate` beside
    /// palaver's tokens (off while `issuer` is empty).
    pub jwt: JwtSection,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtSection {
    /// `iss` a token must carry; empty turns external tokens off.
    pub issuer: String,
    /// `aud` a token must carry.
    pub audience: String,
    /// The provider's JWKS (RS256 and ES256 keys), downloaded on first use and again when a
    /// token names a key id not held (key rotation).
    pub jwks_url: Option<String>,
    /// Shared secret for HS256 tokens (at least 32 bytes). Set it through
    /// `PALAVER_AUTH__JWT__HS256_SECRET` or `hs256_secret_file`, never in a file.
    pub hs256_secret: Option<String>,
    pub hs256_secret_file: Option<PathBuf>,
    /// The claim naming the palaver user (a valid user name).
    pub user_claim: String,
    /// Create the account the first time a valid token names it.
    pub create_users: bool,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// The shortest time between two JWKS downloads: tokens with made-up key ids cannot make
    /// the node hammer the provider.
    pub jwks_min_refresh_secs: u64,
}

impl Default for JwtSection {
    fn default() -> Self {
        JwtSection {
            issuer: String::new(),
            audience: String::new(),
            jwks_url: None,
            hs256_secret: None,
            hs256_secret_file: None,
            user_claim: "sub".into(),
            create_users: false,
            leeway_secs: 30,
            jwks_min_refresh_secs: 30,
        }
    }
}

impl AuthSection {
    /// `max_concurrent_hashes` with 0 resolved to the number of cores.
    pub fn hash_threads(&self) -> usize {
        match self.max_concurrent_hashes {
            0 => std::thread::available_parallelism().map_or(1, |cores| cores.get()),
            threads => threads,
        }
    }
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            token_key: None,
            token_key_file: None,
            token_ttl_secs: 86_400,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            password_min_chars: 8,
            login_max_failures: 5,
            login_window_secs: 60,
            login_user_max_failures: 50,
            login_backoff_max_secs: 3_600,
            register_max_per_address: 10,
            register_window_secs: 600,
            max_concurrent_hashes: 0,
            hash_queue_len: 64,
            jwt: JwtSection::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// A tracing filter, e.g. `info` or `info,actors::session=debug`; `RUST_LOG` overrides it.
    pub filter: String,
    /// `text` for people, `json` for log collectors.
    pub format: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection { filter: "info".into(), format: "text".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSection {
    /// Where spans go: an OTLP/HTTP traces URL (JSON), e.g.
    /// `http://collector:4318/v1/traces`. Empty: no export (the default).
    pub otlp_endpoint: String,
    /// Traces kept, in percent of the requests that start one (a trace started on another
    /// node is kept or dropped as that node decided).
    pub sample_percent: u8,
    /// Spans are sent in batches at least this often.
    pub export_interval_ms: u64,
    /// `service.name` of the exported spans (`service.instance.id` is the node's name).
    pub service_name: String,
}

impl Default for TracingSection {
    fn default() -> Self {
        TracingSection {
            otlp_endpoint: String::new(),
            sample_percent: 100,
            export_interval_ms: 5_000,
            service_name: "palaver".into(),
        }
    }
}

impl TracingSection {
    /// Check the values; the error names the key.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let endpoint = &self.otlp_endpoint;
        if !(endpoint.is_empty() || endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(("tracing.otlp_endpoint", "expected an http:// or https:// URL, or nothing".into()));
        }
        if self.sample_percent > 100 {
            return Err(("tracing.sample_percent", "expected 0 to 100".into()));
        }
        if self.export_interval_ms == 0 {
            return Err(("tracing.export_interval_ms", "must be at least 1".into()));
        }
        if self.service_name.is_empty() {
            return Err(("tracing.service_name", "must not be empty".into()));
        }
        Ok(())
    }
}

impl From<actors::limits::InvalidSetting> for ConfigError {
    fn from(invalid: actors::limits::InvalidSetting) -> Self {
        ConfigError::Invalid { key: invalid.key.to_string(), message: invalid.message }
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(String),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: &str, message: &str) -> Self {
        ConfigError::Invalid { key: key.to_string(), message: message.to_string() }
    }
}

impl Config {
    /// Defaults, then `file` (if any), then the `PALAVER_` environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(file) = file {
            check_no_secrets_in_file(file)?;
        }
        Self::from_figment(Self::figment(file).merge(Env::prefixed("PALAVER_").split("__")))
    }

    /// Defaults and `file`, without the environment (tests layer explicit values on this).
    pub fn figment(file: Option<&Path>) -> Figment {
        let figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(file) => figment.merge(Toml::file_exact(file)),
            None => figment,
        }
    }

    pub fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(|err| ConfigError::Load(flatten_figment_error(err)))?;
        config.validate()?;
        Ok(config)
    }

    /// Check values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| Err(ConfigError::invalid(key, message));
        if actors::names::validate_user_name(&self.node.name).is_err() {
            return invalid("node.name", "use 2 to 32 characters of a-z, 0-9, `_`, `.`, `-`");
        }
        match self.store.backend.as_str() {
            "sqlite" => {}
            "fdb" if cfg!(feature = "fdb") => {
                // An entry's body is one FoundationDB value (at most 100,000 bytes), beside its
                // other fields.
                if self.limits.max_body_bytes as usize > store::fdb_keys::limits::VALUE_BYTES_MAX - 10_000 {
                    return invalid(
                        "limits.max_body_bytes",
                        "at most 90000 with store.backend = \"fdb\" (a message is one FoundationDB value)",
                    );
                }
            }
            "fdb" => return invalid("store.backend", "`fdb` needs a binary built with `--features fdb`"),
            other => {
                return invalid("store.backend", &format!("unknown backend `{other}`; expected `sqlite` or `fdb`"));
            }
        }
        for node in &self.client.web_nodes {
            if let Err(why) = crate::web::check_node(node) {
                return invalid("client.web_nodes", &format!("`{node}`: {why}"));
            }
        }
        if self.store.sqlite_busy_timeout_ms == 0 {
            return invalid("store.sqlite_busy_timeout_ms", "must be greater than 0");
        }
        if let Some(key) = &self.auth.token_key {
            if key.len() < 32 {
                return invalid("auth.token_key", "must be at least 32 bytes");
            }
        }
        let jwt = &self.auth.jwt;
        if !jwt.issuer.is_empty() {
            if jwt.audience.is_empty() {
                return invalid("auth.jwt.audience", "is needed with auth.jwt.issuer");
            }
            if jwt.jwks_url.is_none() && jwt.hs256_secret.is_none() && jwt.hs256_secret_file.is_none() {
                return invalid("auth.jwt.jwks_url", "auth.jwt needs a jwks_url, an hs256 secret, or both");
            }
            if let Some(url) = &jwt.jwks_url {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return invalid("auth.jwt.jwks_url", "must be an http:// or https:// URL");
                }
            }
        }
        if jwt.hs256_secret.as_ref().is_some_and(|secret| secret.len() < 32) {
            return invalid("auth.jwt.hs256_secret", "must be at least 32 bytes");
        }
        if self.auth.token_ttl_secs == 0 {
            return invalid("auth.token_ttl_secs", "must be greater than 0");
        }
        if self.auth.argon2_memory_kib < 8 || self.auth.argon2_iterations == 0 {
            return invalid("auth.argon2_memory_kib", "argon2 needs at least 8 KiB and 1 iteration");
        }
        // Upper bounds keep the limiter's per-key timestamps small.
        for (key, value) in [
            ("auth.login_max_failures", self.auth.login_max_failures),
            ("auth.login_user_max_failures", self.auth.login_user_max_failures),
        ] {
            if !(1..=10_000).contains(&value) {
                return invalid(key, "must be 1 to 10000");
            }
        }
        if self.auth.register_max_per_address > 10_000 {
            return invalid("auth.register_max_per_address", "must be at most 10000 (0: no limit)");
        }
        for (key, value) in [
            ("auth.login_window_secs", self.auth.login_window_secs),
            ("auth.login_backoff_max_secs", self.auth.login_backoff_max_secs),
            ("auth.register_window_secs", self.auth.register_window_secs),
        ] {
            if !(1..=86_400).contains(&value) {
                return invalid(key, "must be 1 to 86400 seconds");
            }
        }
        if self.auth.hash_queue_len > 100_000 {
            return invalid("auth.hash_queue_len", "must be at most 100000");
        }
        for origin in &self.client.allowed_origins {
            if let Err(message) = crate::origin::check(origin) {
                return invalid("client.allowed_origins", &message);
            }
        }
        // The files are read here, so `palaver check-config` finds a wrong one without starting.
        if let Err((key, message)) = self.client.tls() {
            return invalid(key, &message);
        }
        if let Err((key, message)) = self.admin.validate() {
            return invalid(key, &message);
        }
        if let Err((key, message)) = self.cluster.validate() {
            return invalid(key, &message);
        }
        self.presence.validate()?;
        self.webhooks.validate()?;
        self.push.validate()?;
        self.media.validate()?;
        if let Err((key, message)) = self.tracing.validate() {
            return invalid(key, &message);
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return invalid("log.format", "expected `text` or `json`");
        }
        Ok(self.limits.validate()?)
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.store.sqlite_path.clone().unwrap_or_else(|| self.node.data_dir.join("palaver.db"))
    }
}

/// Refuse a configuration file that holds the signing key: such files get committed.
fn check_no_secrets_in_file(file: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(file)
        .map_err(|err| ConfigError::Load(format!("reading configuration file {}: {err}", file.display())))?;
    let value: toml::Value =
        text.parse().map_err(|err| ConfigError::Load(format!("configuration file {}: {err}", file.display())))?;
    let jwt = value.get("auth").and_then(|auth| auth.get("jwt"));
    if jwt.and_then(|jwt| jwt.get("hs256_secret")).is_some() {
        let message = format!(
            "is a secret and must not be in {}; set PALAVER_AUTH__JWT__HS256_SECRET or auth.jwt.hs256_secret_file",
            file.display()
        );
        return Err(ConfigError::invalid("auth.jwt.hs256_secret", &message));
    }
    if value.get("auth").and_then(|auth| auth.get("token_key")).is_some() {
        let message = format!(
            "is a secret and must not be in {}; set PALAVER_AUTH__TOKEN_KEY or auth.token_key_file",
            file.display()
        );
        return Err(ConfigError::invalid("auth.token_key", &message));
    }
    if value.get("push").and_then(|push| push.get("webhook")).and_then(|hook| hook.get("secret")).is_some() {
        let message = format!("is a secret and must not be in {}; set PALAVER_PUSH__WEBHOOK__SECRET", file.display());
        return Err(ConfigError::invalid("push.webhook.secret", &message));
    }
    let s3 = value.get("media").and_then(|media| media.get("s3"));
    for (key, env) in [("access_key_id", "AWS_ACCESS_KEY_ID"), ("secret_access_key", "AWS_SECRET_ACCESS_KEY")] {
        if s3.and_then(|s3| s3.get(key)).is_some() {
            let message = format!("is a secret and must not be in {}; set {env} in the environment", file.display());
            return Err(ConfigError::invalid(&format!("media.s3.{key}"), &message));
        }
    }
    // The cluster cookie and the admin token are secrets too.
    for (section, key, env) in
        [("cluster", "cookie", "PALAVER_CLUSTER__COOKIE"), ("admin", "token", "PALAVER_ADMIN__TOKEN")]
    {
        if value.get(section).and_then(|table| table.get(key)).is_some() {
            let message =
                format!("is a secret and must not be in {}; set {env} or {section}.{key}_file", file.display());
            return Err(ConfigError::invalid(&format!("{section}.{key}"), &message));
        }
    }
    Ok(())
}

/// figment's errors can chain; show them all on one line, each naming its key.
fn flatten_figment_error(err: figment::Error) -> String {
    err.into_iter().map(|err| err.to_string()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests;
