//! Devices for push notifications over the key-value transaction: one `dev` key per (user,
//! device id), cleared with the account (`erase`), as in the SQLite backend.

use super::kv::{corrupt, KvTxn};
use super::layout::Keyspace;
use super::ops::{read, R};
use super::values::DeviceValue;
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
    let created_ms = match read(t, &key, DeviceValue::decode).await? {
        Some(stored) => stored.created_ms,
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
    let value = DeviceValue {
        platform: device.platform,
        app: device.app.clone(),
        locale: device.locale.clone(),
        token: device.token.clone(),
        p256dh: device.p256dh.clone(),
        auth: device.auth.clone(),
        created_ms,
    };
    t.set(&key, &value.encode());
    Ok(DeviceRecord { created_ms, ..device.clone() })
}

pub(super) async fn of_user<X: KvTxn>(t: &X, ks: &Keyspace, user: &str) -> R<Vec<DeviceRecord>, X> {
    require_account(t, ks, user).await?;
    let prefix = ks.devices_range(user);
    let mut devices = Vec::new();
    for (key, bytes) in t.get_range(&prefix, None, false).await? {
        let id = ks.device_id(user, &key).map_err(|e| corrupt(&key, e))?;
        let value = DeviceValue::decode(&bytes).map_err(|e| corrupt(&key, e))?;
        devices.push(DeviceRecord {
            id,
            platform: value.platform,
            app: value.app,
            locale: value.locale,
            token: value.token,
            p256dh: value.p256dh,
            auth: value.auth,
            created_ms: value.created_ms,
        });
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
