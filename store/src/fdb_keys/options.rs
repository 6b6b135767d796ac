//! Configuration of the FoundationDB backend.
//!
//! It lives outside the `fdb` feature so the node's configuration can parse and validate a
//! `[store.fdb]` section in every build, and say clearly "this binary was built without the
//! `fdb` feature" instead of failing to parse.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::layout::DEFAULT_SUBSPACE_PREFIX;

/// How palaver reaches its FoundationDB cluster and bounds each transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FdbOptions {
    /// The cluster file. `None` lets libfdb_c choose: the `FDB_CLUSTER_FILE` environment
    /// variable, else `/etc/foundationdb/fdb.cluster`.
    pub cluster_file: Option<PathBuf>,
    /// Every key lives under the tuple `(subspace_prefix,)`, so several deployments (or test
    /// runs) can share a cluster without seeing each other. Default `palaver`.
    pub subspace_prefix: String,
    /// Longest a transaction may take, retries included, before it fails with
    /// `StoreError::Unavailable`. Without it FoundationDB retries forever, and a request
    /// against an unreachable cluster would never be answered. Default 5,000 ms: FoundationDB
    /// ends any single attempt at 5 s anyway, and a client waits no longer than that for an ack.
    pub transaction_timeout_ms: u64,
    /// Most retries of one transaction (conflicts, recoveries) before it fails with
    /// `StoreError::Unavailable`; 0 (the default) sets no count, so a transaction retries,
    /// with FoundationDB's backoff, until it commits, is refused (an append by a stale owner is
    /// fenced) or reaches `transaction_timeout_ms`. A count turned contention into failure:
    /// appends of busy rooms that share a member conflict on that member's log head, and with
    /// 10 retries eight appenders to one room failed every run on the `ssd` engine, while the
    /// timeout alone already bounds how long a client waits.
    pub transaction_retry_limit: u32,
    /// Automatic retention: a user log keeps about this many newest entries (older ones are
    /// range-cleared every 64 appends; a client with an older cursor gets a resync). 0 keeps
    /// everything. Default 100,000, a few weeks of a busy user's traffic in about 8 MB of keys.
    pub user_log_max_entries: u64,
}

impl Default for FdbOptions {
    fn default() -> Self {
        FdbOptions {
            cluster_file: None,
            subspace_prefix: DEFAULT_SUBSPACE_PREFIX.to_string(),
            transaction_timeout_ms: 5_000,
            transaction_retry_limit: 0,
            user_log_max_entries: 100_000,
        }
    }
}

impl FdbOptions {
    /// Check the values; each error names its key (relative to the section holding them).
    pub fn validate(&self) -> Result<(), String> {
        if self.subspace_prefix.is_empty() {
            return Err("subspace_prefix: must not be empty (it keeps palaver's keys apart from others')".into());
        }
        if self.subspace_prefix.len() > 256 {
            return Err("subspace_prefix: at most 256 bytes (it starts every key)".into());
        }
        // FoundationDB takes both as C ints.
        if self.transaction_timeout_ms == 0 || self.transaction_timeout_ms > i32::MAX as u64 {
            return Err(format!("transaction_timeout_ms: must be between 1 and {}", i32::MAX));
        }
        if self.transaction_retry_limit > i32::MAX as u32 {
            return Err(format!("transaction_retry_limit: must be at most {}", i32::MAX));
        }
        if let Some(path) = &self.cluster_file {
            if path.as_os_str().is_empty() {
                return Err("cluster_file: must not be empty (leave it out to use the default)".into());
            }
            // libfdb_c takes the path as a C string.
            if path.to_str().is_none_or(|p| p.contains('\0')) {
                return Err(format!("cluster_file: `{}` must be UTF-8 without NUL bytes", path.display()));
            }
        }
        Ok(())
    }

    /// The cluster file as libfdb_c takes it (validated to be UTF-8 without NUL bytes).
    pub fn cluster_file_str(&self) -> Option<&str> {
        self.cluster_file.as_deref().and_then(|p| p.to_str())
    }

    /// The timeout as FoundationDB's option takes it (validated to fit).
    pub fn timeout_option(&self) -> i32 {
        i32::try_from(self.transaction_timeout_ms).unwrap_or(i32::MAX)
    }

    /// The retry limit as FoundationDB's option takes it (validated to fit; -1: no count).
    pub fn retry_limit_option(&self) -> i32 {
        match self.transaction_retry_limit {
            0 => -1,
            limit => i32::try_from(limit).unwrap_or(i32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let o = FdbOptions::default();
        o.validate().unwrap();
        assert_eq!(o.subspace_prefix, "palaver");
        assert_eq!((o.transaction_timeout_ms, o.transaction_retry_limit), (5_000, 0));
        assert_eq!((o.timeout_option(), o.retry_limit_option()), (5_000, -1));
    }

    #[test]
    fn errors_name_the_key() {
        let bad = |f: fn(&mut FdbOptions)| {
            let mut o = FdbOptions::default();
            f(&mut o);
            o.validate().unwrap_err()
        };
        assert!(bad(|o| o.subspace_prefix.clear()).starts_with("subspace_prefix"));
        assert!(bad(|o| o.transaction_timeout_ms = 0).starts_with("transaction_timeout_ms"));
        assert!(bad(|o| o.transaction_timeout_ms = u64::MAX).starts_with("transaction_timeout_ms"));
        assert!(bad(|o| o.transaction_retry_limit = u32::MAX).starts_with("transaction_retry_limit"));
        assert!(bad(|o| o.cluster_file = Some(PathBuf::new())).starts_with("cluster_file"));
        assert!(bad(|o| o.cluster_file = Some(PathBuf::from("a\0b"))).starts_with("cluster_file"));
    }

    #[test]
    fn parses_from_configuration_with_defaults() {
        let o: FdbOptions =
            serde_json::from_str(r#"{"cluster_file":"/etc/fdb.cluster","transaction_retry_limit":3}"#).unwrap();
        assert_eq!(o.cluster_file.as_deref(), Some(std::path::Path::new("/etc/fdb.cluster")));
        assert_eq!(o.transaction_retry_limit, 3);
        assert_eq!(o.subspace_prefix, "palaver");
        assert!(serde_json::from_str::<FdbOptions>(r#"{"typo":1}"#).is_err());
    }
}
