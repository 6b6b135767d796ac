//! Devices for push notifications over the key-value transaction: one `dev` key per (user,
//! device id), cleared with the account (`erase`), as in the SQLite backend.

use super::kv::{corrupt, KvTxn};
use super::layout::Keyspace;
use super::ops::R;
use super::values::{decode_device, encode_device};
use crate::{DeviceRecord, StoreError};

async fn require_account<X: KvTxn>(t: &X, ks: &Keyspace, user: &str) -> R<(), X> {
    match t.get(&ks.account(user)).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::NoSuchUser(user.to_string()).into()),
    }
}

pub(super) async fn put<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    user: &str,
    device: &DeviceRecord,
    max: u32,
) -> R<DeviceRecord, X> {
    require_account(t, ks, user).await?;
    let key = ks.device(user, &device.id);
    let created_ms = match t.get(&key).await? {
        Some(bytes) => decode_device(device.id.clone(), &bytes).map_err(|e| corrupt(&key, e))?.created_ms,
        None => {
            let held = t.get_range(&ks.devices_range(user), Some(max as usize + 1), false).await?.len();
            if held >= max as usize {
                return Err(
                    StoreError::NotAllowed(format!("a user has at most {max} devices; remove one first")).into()
                );
            }
            device.created_ms
        }
    };
    let stored = DeviceRecord { created_ms, ..device.clone() };
    t.set(&key, &encode_device(&stored));
    Ok(stored)
}

pub(super) async fn of_user<X: KvTxn>(t: &X, ks: &Keyspace, user: &str) -> R<Vec<DeviceRecord>, X> {
    require_account(t, ks, user).await?;
    let prefix = ks.devices_range(user);
    let mut devices = Vec::new();
    for (key, bytes) in t.get_range(&prefix, None, false).await? {
        let id = ks.device_id(user, &key).map_err(|e| corrupt(&key, e))?;
        devices.push(decode_device(id, &bytes).map_err(|e| corrupt(&key, e))?);
    }
    devices.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    Ok(devices)
}

pub(super) async fn remove<X: KvTxn>(t: &X, ks: &Keyspace, user: &str, id: &str) -> R<bool, X> {
    require_account(t, ks, user).await?;
    let key = ks.device(user, id);
    if t.get(&key).await?.is_none() {
        return Ok(false);
    }
    t.clear(&key);
    Ok(true)
}
