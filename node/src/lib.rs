//! The palaver node: configuration, the client port (HTTP and WebSocket), the admin port,
//! start-up and graceful shutdown. The binary in `main.rs` is a thin wrapper around [`run`].

pub mod admin;
pub mod admission;
pub mod api;
pub mod cluster;
pub mod config;
pub mod http;
pub mod http_head;
pub mod media;
pub mod operator;
pub mod origin;
pub mod request;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod web;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actors::auth::{AuthConfig, Authenticator, ExternalConfig};
use actors::hub::Hub;
use actors::media::MediaLinks;
use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;

/// The token key from the environment/configuration, from `auth.token_key_file`, or random.
fn token_key(config: &Config) -> anyhow::Result<Vec<u8>> {
    if let Some(key) = &config.auth.token_key {
        return Ok(key.as_bytes().to_vec());
    }
    if let Some(file) = &config.auth.token_key_file {
        let key = std::fs::read(file).with_context(|| format!("reading auth.token_key_file {}", file.display()))?;
        let key = key.trim_ascii().to_vec();
        anyhow::ensure!(key.len() >= 32, "auth.token_key_file {}: the key must be at least 32 bytes", file.display());
        return Ok(key);
    }
    warn!("no auth.token_key configured: using a random key; tokens will not survive a restart or work on other nodes");
    Ok(rand::random::<[u8; 32]>().to_vec())
}

/// Build the hub from the configuration.
pub async fn build_hub(config: &Config) -> anyhow::Result<Arc<Hub>> {
    let store = store::open_store(config).await?;
    let auth = Authenticator::new(AuthConfig {
        token_key: token_key(config)?,
        token_ttl_secs: config.auth.token_ttl_secs,
        argon2_memory_kib: config.auth.argon2_memory_kib,
        argon2_iterations: config.auth.argon2_iterations,
        password_min_chars: config.auth.password_min_chars,
        password_max_chars: 256,
        login_max_failures: config.auth.login_max_failures,
        login_window_secs: config.auth.login_window_secs,
        login_user_max_failures: config.auth.login_user_max_failures,
        login_backoff_max_secs: config.auth.login_backoff_max_secs,
        register_max_per_address: config.auth.register_max_per_address,
        register_window_secs: config.auth.register_window_secs,
        max_concurrent_hashes: config.auth.hash_threads(),
        hash_queue_len: config.auth.hash_queue_len,
    })?;
    let auth = match external_tokens(config)? {
        Some(external) => auth.with_external(external),
        None => auth,
    };
    let hub = Hub::new(config.node.name.clone(), config.limits.clone(), config.presence.clone(), store, auth);
    // Media links are signed with a key derived from the token key, which every node of a
    // cluster shares, so any node serves a link any node made.
    hub.set_media_links(MediaLinks::new(&hub.auth().config().token_key, config.media.url_ttl_s));
    Ok(hub)
}

/// What `[auth.jwt]` accepts, when its issuer is set.
fn external_tokens(config: &Config) -> anyhow::Result<Option<ExternalConfig>> {
    let jwt = &config.auth.jwt;
    if jwt.issuer.is_empty() {
        return Ok(None);
    }
    let hs256_secret = match (&jwt.hs256_secret, &jwt.hs256_secret_file) {
        (Some(secret), _) => Some(secret.as_bytes().to_vec()),
        (None, Some(file)) => {
            let secret = std::fs::read(file)
                .with_context(|| format!("reading auth.jwt.hs256_secret_file {}", file.display()))?;
            let secret = secret.trim_ascii().to_vec();
            anyhow::ensure!(secret.len() >= 32, "auth.jwt.hs256_secret_file {}: at least 32 bytes", file.display());
            Some(secret)
        }
        (None, None) => None,
    };
    Ok(Some(ExternalConfig {
        issuer: jwt.issuer.clone(),
        audience: jwt.audience.clone(),
        jwks_url: jwt.jwks_url.clone(),
        hs256_secret,
        user_claim: jwt.user_claim.clone(),
        create_users: jwt.create_users,
        leeway_secs: jwt.leeway_secs,
        jwks_min_refresh_ms: jwt.jwks_min_refresh_secs.saturating_mul(1000),
    }))
}

/// Run a node until `stop` turns true: serve, then drain.
pub async fn run(config: Config, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let hub = build_hub(&config).await?;
    let media = Arc::new(media::MediaService::open(&config.media, &config.node.data_dir).map_err(anyhow::Error::msg)?);
    let client_tls = config.client.tls().map_err(|(key, message)| anyhow::anyhow!("{key}: {message}"))?;
    let admin_token = config.admin.token()?;
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("binding admin.listen {}", config.admin.listen))?;
    let admin_addr = admin_listener.local_addr()?;
    let listener = TcpListener::bind(config.client.listen)
        .await
        .with_context(|| format!("binding client.listen {}", config.client.listen))?;
    let addr = listener.local_addr()?;
    info!(node = config.node.name, %addr, tls = client_tls.is_some(), store = hub.store().backend(), "listening");
    info!(node = config.node.name, addr = %admin_addr, token = admin_token.is_some(), "admin port listening");
    // Machine-readable lines for scripts and tests that start the node on port 0; the client
    // port's comes last, so whoever waits for it has seen the admin port's.
    println!("palaver node {} admin on {admin_addr}", config.node.name);
    println!("palaver node {} listening on {addr}", config.node.name);
    // Cluster (off unless configured): join before serving clients or operators (until then
    // both ports only queue connections, so nobody sees a node without its cluster).
    let cluster = cluster::start(&config.cluster, &config.node.name, &hub, config.limits.request_timeout_ms).await?;
    actors::webhooks::start(&hub, config.webhooks.clone());
    actors::push::start(&hub, config.push.clone()).map_err(|err| anyhow::anyhow!("push: {err}"))?;
    media::collect::start(&hub, media.clone());
    // The key browsers subscribe with: every node's page offers it, sending or not.
    let vapid_public_key = actors::push::providers::webpush::public_key_of(&config.push.webpush)
        .map_err(|err| anyhow::anyhow!("push: {err}"))?;
    let admin = tokio::spawn(admin::serve(admin_listener, hub.clone(), cluster.clone(), admin_token, stop.clone()));
    let mut hub_stop = stop.clone();
    let shutdown_hub = hub.clone();
    let shutdown = tokio::spawn(async move {
        if hub_stop.wait_for(|stop| *stop).await.is_ok() {
            // Leave first: peers take this node's rooms over while its clients move.
            if let Some(cluster) = &cluster {
                cluster.leave().await;
            }
            info!("shutting down: telling clients to reconnect");
            shutdown_hub.begin_shutdown();
        }
    });
    let rooms_hub = hub.clone();
    let port = http::ClientPort {
        tls: client_tls,
        origins: origin::AllowedOrigins::new(&config.client.allowed_origins),
        web: web::WebClient::new(&config.client.web_nodes, vapid_public_key.as_deref()),
        media,
    };
    http::serve(listener, hub, port, stop, Duration::from_millis(config.node.drain_timeout_ms)).await;
    let _ = admin.await;
    // With no connections to drain, serving ends at once: let the cluster goodbye finish.
    let _ = tokio::time::timeout(Duration::from_secs(2), shutdown).await;
    // The room actors run on their own thread, which the runtime's end would not stop: stop it
    // here, so no task holds the store when `main` stops its backends.
    rooms_hub.stop_rooms().await;
    info!("stopped");
    Ok(())
}

/// Where the configuration file comes from: `--config PATH`, else `PALAVER_CONFIG`, else
/// `cluster.toml` in the working directory if present, else defaults only.
pub fn config_path(arg: Option<PathBuf>) -> Option<PathBuf> {
    arg.or_else(|| std::env::var_os("PALAVER_CONFIG").map(PathBuf::from))
        .or_else(|| Some(PathBuf::from("cluster.toml")).filter(|path| path.exists()))
}
