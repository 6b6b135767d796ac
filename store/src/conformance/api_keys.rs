//! Conformance cases for the server API's keys.

use std::sync::Arc;

use super::TS;
use crate::{ApiKeyRecord, Store, StoreError};

fn key(id: &str, scopes: &[&str], fill: u8) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.into(),
        name: format!("key {id}"),
        scopes: scopes.iter().map(|scope| scope.to_string()).collect(),
        secret_sha256: [fill; 32],
        created_ms: TS,
        revoked_ms: None,
    }
}

/// Keys are kept whole, listed in id order, revoked once (the first time stays), never
/// forgotten, and an id is never given twice.
pub async fn api_keys_are_kept_listed_and_revoked(store: Arc<dyn Store>) {
    let store = store.as_ref();
    assert_eq!(store.api_keys().await, Ok(vec![]));
    assert_eq!(store.api_key("k2").await, Ok(None));
    let (second, first) = (key("k2", &["messages", "users"], 7), key("k1", &[], 9));
    store.create_api_key(second.clone()).await.expect("create k2");
    store.create_api_key(first.clone()).await.expect("create k1");
    assert_eq!(store.api_key("k2").await, Ok(Some(second.clone())));
    assert_eq!(store.api_keys().await, Ok(vec![first.clone(), second.clone()]));
    let taken = store.create_api_key(key("k2", &["rooms"], 1)).await;
    assert!(matches!(taken, Err(StoreError::Backend(_))), "{taken:?}");
    assert_eq!(store.api_key("k2").await, Ok(Some(second.clone())), "a taken id changes nothing");

    assert_eq!(store.revoke_api_key("k2", TS + 5).await, Ok(true));
    assert_eq!(store.revoke_api_key("k2", TS + 9).await, Ok(true), "revoking again is no error");
    let revoked = ApiKeyRecord { revoked_ms: Some(TS + 5), ..second };
    assert_eq!(store.api_key("k2").await, Ok(Some(revoked.clone())));
    assert_eq!(store.api_keys().await, Ok(vec![first, revoked]));
    assert_eq!(store.revoke_api_key("nope", TS).await, Ok(false));
}
