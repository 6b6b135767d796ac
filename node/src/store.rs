//! Opening the configured store backend, and the FoundationDB client network's lifetime.
//!
//! FoundationDB's client network runs once per process and must be stopped before the process
//! exits, after every handle to the database is gone. The node starts it on first use and
//! [`shutdown_backends`] stops it; `main` calls that after the rooms' thread has been stopped
//! (`Hub::stop_rooms`, at the end of `run`) and the runtime dropped: with them every task
//! holding the store.

use std::sync::Arc;

use anyhow::Context;
use store::sqlite::{SqliteOptions, SqliteStore};
use store::Store;

use crate::config::Config;

/// Open the backend `store.backend` names.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match config.store.backend.as_str() {
        "sqlite" => {
            let path = config.sqlite_path();
            if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("creating node.data_dir {}", dir.display()))?;
            }
            let options = SqliteOptions {
                busy_timeout_ms: config.store.sqlite_busy_timeout_ms,
                user_log_max_entries: config.store.user_log_max_entries,
                ..SqliteOptions::new(path.clone())
            };
            let store = SqliteStore::open(options)
                .with_context(|| format!("opening the SQLite store at {}", path.display()))?;
            Ok(Arc::new(store))
        }
        #[cfg(feature = "fdb")]
        "fdb" => fdb::open(config).await,
        other => {
            anyhow::bail!("store.backend `{other}` is not available in this build (built without `--features fdb`?)")
        }
    }
}

/// Stop backend machinery that must outlive every store handle (FoundationDB's network).
pub fn shutdown_backends() {
    #[cfg(feature = "fdb")]
    fdb::shutdown();
}

#[cfg(feature = "fdb")]
mod fdb {
    use std::sync::{Arc, Mutex};

    use anyhow::Context;
    use store::fdb::{boot_network, FdbStore, NetworkGuard};
    use store::fdb_keys::options::FdbOptions;
    use store::Store;

    use crate::config::Config;

    static NETWORK: Mutex<Option<NetworkGuard>> = Mutex::new(None);

    pub async fn open(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
        let options = FdbOptions {
            cluster_file: config.store.fdb_cluster_file.clone(),
            subspace_prefix: config.store.fdb_subspace_prefix.clone(),
            transaction_timeout_ms: config.store.fdb_transaction_timeout_ms,
            transaction_retry_limit: config.store.fdb_transaction_retry_limit,
            user_log_max_entries: config.store.user_log_max_entries,
        };
        options.validate().map_err(|err| anyhow::anyhow!("store.fdb_{err}"))?;
        let store = {
            let mut network = NETWORK.lock().expect("fdb network lock");
            if network.is_none() {
                *network = Some(boot_network().context("starting the FoundationDB client network")?);
            }
            FdbStore::open(&options, network.as_ref().expect("booted above")).context("opening FoundationDB")?
        };
        store.ping().await.with_context(|| {
            let file =
                options.cluster_file.as_ref().map_or("the default cluster file".into(), |f| f.display().to_string());
            format!("FoundationDB cluster unreachable (cluster file: {file})")
        })?;
        Ok(Arc::new(store))
    }

    pub fn shutdown() {
        if let Ok(mut network) = NETWORK.lock() {
            network.take();
        }
    }
}
