//! Server API keys: what a key looks like, how one is minted and checked, and what it may do.
//!
//! A key reads `pvk_<id>_<secret>`: the id (16 hex digits) names the stored record, the secret
//! (32 random bytes, base64url) proves the holder. The store keeps the secret's SHA-256 only
//! (`store::ApiKeyRecord`), so the key is shown once, when it is minted. Every request reads the
//! record again: a revocation holds on every node from the next request on, with no cache to
//! expire.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};

use actors::hub::Hub;
use actors::store::{ApiKeyRecord, StoreError};

use crate::operator::constant_time_eq;

/// What a key may do. A request needs the one scope of its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Provision and erase accounts, issue tokens.
    Users,
    /// Create rooms, add and remove members.
    Rooms,
    /// Post messages.
    Messages,
    /// Read room history.
    History,
    /// Create, list, delete and enable webhook endpoints.
    Webhooks,
}

impl Scope {
    pub const ALL: [Scope; 5] = [Scope::Users, Scope::Rooms, Scope::Messages, Scope::History, Scope::Webhooks];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Users => "users",
            Scope::Rooms => "rooms",
            Scope::Messages => "messages",
            Scope::History => "history",
            Scope::Webhooks => "webhooks",
        }
    }

    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.name() == name)
    }
}

const PREFIX: &str = "pvk_";

/// A key as the API lists it (never with its secret).
#[derive(Debug, Serialize)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: u64,
    pub revoked_at: Option<u64>,
}

impl From<ApiKeyRecord> for KeyView {
    fn from(record: ApiKeyRecord) -> Self {
        KeyView {
            id: record.id,
            name: record.name,
            scopes: record.scopes,
            created_at: record.created_ms,
            revoked_at: record.revoked_ms,
        }
    }
}

/// A new key's record and the key itself, which is shown once.
pub fn mint(name: String, mut scopes: Vec<Scope>, now_ms: u64) -> (ApiKeyRecord, String) {
    scopes.sort();
    scopes.dedup();
    let id = format!("{:016x}", rand::random::<u64>());
    let secret = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let record = ApiKeyRecord {
        id: id.clone(),
        name,
        scopes: scopes.iter().map(|scope| scope.name().to_owned()).collect(),
        secret_sha256: Sha256::digest(secret.as_bytes()).into(),
        created_ms: now_ms,
        revoked_ms: None,
    };
    (record, format!("{PREFIX}{id}_{secret}"))
}

/// Why a presented key opens nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Missing, malformed, unknown, wrong or revoked: one answer for all, so a caller learns
    /// nothing about which ids exist.
    Unauthorized,
    /// A good key without the route's scope.
    MissingScope(Scope),
    /// The store could not be read.
    Store(StoreError),
}

/// Check the key in `authorization` (the header's value) for `scope`.
pub async fn check(hub: &Hub, authorization: Option<&str>, scope: Scope) -> Result<ApiKeyRecord, Refusal> {
    let key = authorization.and_then(|value| value.strip_prefix("Bearer ")).map(str::trim).unwrap_or("");
    let (id, secret) = key.strip_prefix(PREFIX).and_then(|rest| rest.split_once('_')).ok_or(Refusal::Unauthorized)?;
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Refusal::Unauthorized);
    }
    let record = hub.store().api_key(id).await.map_err(Refusal::Store)?.ok_or(Refusal::Unauthorized)?;
    let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    if !constant_time_eq(&presented, &record.secret_sha256) || record.revoked_ms.is_some() {
        return Err(Refusal::Unauthorized);
    }
    if !record.scopes.iter().any(|name| name == scope.name()) {
        return Err(Refusal::MissingScope(scope));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_key_names_its_record_and_proves_its_secret() {
        let (record, key) = mint("backend".into(), vec![Scope::Messages, Scope::Users, Scope::Messages], 5);
        assert_eq!(record.scopes, ["users", "messages"]);
        let rest = key.strip_prefix(PREFIX).unwrap();
        let (id, secret) = rest.split_once('_').unwrap();
        assert_eq!(id, record.id);
        assert_eq!(<[u8; 32]>::from(Sha256::digest(secret.as_bytes())), record.secret_sha256);
        let (other, _) = mint("backend".into(), vec![Scope::Users], 5);
        assert_ne!(other.id, record.id);
    }

    #[test]
    fn scopes_have_one_name_each() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.name()), Some(scope));
        }
        assert_eq!(Scope::parse("admin"), None);
    }
}
