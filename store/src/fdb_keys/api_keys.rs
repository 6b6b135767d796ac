//! Server API keys over the key-value transaction: one `apikey` key per key, by its public id,
//! never cleared (a revoked key stays, with when it was revoked), as in the SQLite backend.

use super::kv::{corrupt, KvTxn};
use super::layout::Keyspace;
use super::ops::{read, R};
use super::values::ApiKeyValue;
use crate::{ApiKeyRecord, StoreError};

pub(super) async fn create<X: KvTxn>(t: &X, ks: &Keyspace, key: &ApiKeyRecord) -> R<(), X> {
    let at = ks.api_key(&key.id);
    if t.get(&at).await?.is_some() {
        return Err(StoreError::Backend(format!("api key id `{}` is taken", key.id)).into());
    }
    let value = ApiKeyValue {
        name: key.name.clone(),
        scopes: key.scopes.clone(),
        secret_sha256: key.secret_sha256,
        created_ms: key.created_ms,
        revoked_ms: None,
    };
    t.set(&at, &value.encode());
    Ok(())
}

pub(super) async fn by_id<X: KvTxn>(t: &X, ks: &Keyspace, id: &str) -> R<Option<ApiKeyRecord>, X> {
    Ok(read(t, &ks.api_key(id), ApiKeyValue::decode).await?.map(|value| record(id.to_owned(), value)))
}

pub(super) async fn all<X: KvTxn>(t: &X, ks: &Keyspace) -> R<Vec<ApiKeyRecord>, X> {
    let mut keys = Vec::new();
    for (key, bytes) in t.get_range(&ks.api_keys_range(), None, false).await? {
        let id = ks.api_key_id(&key).map_err(|e| corrupt(&key, e))?;
        let value = ApiKeyValue::decode(&bytes).map_err(|e| corrupt(&key, e))?;
        keys.push(record(id, value));
    }
    Ok(keys)
}

pub(super) async fn revoke<X: KvTxn>(t: &X, ks: &Keyspace, id: &str, ts: u64) -> R<bool, X> {
    let at = ks.api_key(id);
    let Some(mut value) = read(t, &at, ApiKeyValue::decode).await? else { return Ok(false) };
    if value.revoked_ms.is_none() {
        value.revoked_ms = Some(ts);
        t.set(&at, &value.encode());
    }
    Ok(true)
}

fn record(id: String, value: ApiKeyValue) -> ApiKeyRecord {
    ApiKeyRecord {
        id,
        name: value.name,
        scopes: value.scopes,
        secret_sha256: value.secret_sha256,
        created_ms: value.created_ms,
        revoked_ms: value.revoked_ms,
    }
}
