//! Conformance cases for devices registered for push notifications.

use std::sync::Arc;

use protocol::Platform;

use super::{users, TS};
use crate::{DeviceRecord, Store, StoreError};

fn device(id: &str, token: &str, created_ms: u64) -> DeviceRecord {
    DeviceRecord {
        id: id.into(),
        platform: Platform::Fcm,
        app: "project-1".into(),
        locale: "en".into(),
        token: token.into(),
        p256dh: String::new(),
        auth: String::new(),
        created_ms,
        // Kept as given: the cases compare whole records.
        preview: created_ms.is_multiple_of(20),
    }
}

/// Devices are kept per user, updated in place by id (keeping when they were first registered),
/// bounded per user, removed, and erased with the account.
pub async fn devices_are_kept_per_user_bounded_and_erased_with_the_account(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["alice", "bob"]).await;
    assert_eq!(store.devices("alice").await, Ok(vec![]));
    let phone = device("d1", "token-1", TS);
    assert_eq!(store.put_device("alice", phone.clone(), 2).await, Ok(phone.clone()));
    // Registered again (a refreshed token, another locale): the same device, first time kept.
    let again = DeviceRecord { token: "token-1b".into(), locale: "pt-BR".into(), created_ms: TS + 50, ..phone.clone() };
    let stored = DeviceRecord { created_ms: TS, ..again.clone() };
    assert_eq!(store.put_device("alice", again, 2).await, Ok(stored.clone()));
    let tablet = DeviceRecord {
        platform: Platform::Webpush,
        p256dh: "key".into(),
        auth: "secret".into(),
        ..device("d2", "https://push.example/x", TS + 10)
    };
    store.put_device("alice", tablet.clone(), 2).await.expect("second device");
    assert_eq!(store.devices("alice").await, Ok(vec![stored.clone(), tablet.clone()]));
    let third = store.put_device("alice", device("d3", "token-3", TS + 20), 2).await;
    assert!(matches!(third, Err(StoreError::NotAllowed(_))), "{third:?}");
    assert_eq!(store.devices("bob").await, Ok(vec![]), "alice's devices are not bob's");
    assert_eq!(store.remove_device("bob", "d1").await, Ok(false));
    assert_eq!(store.remove_device("alice", "d1").await, Ok(true));
    assert_eq!(store.remove_device("alice", "d1").await, Ok(false));
    assert_eq!(store.devices("alice").await, Ok(vec![tablet]));
    let ghost = StoreError::NoSuchUser("ghost".into());
    assert_eq!(store.devices("ghost").await, Err(ghost.clone()));
    assert_eq!(store.put_device("ghost", device("d1", "t", TS), 2).await, Err(ghost));

    store.delete_account("alice", TS + 100).await.expect("delete");
    assert_eq!(store.devices("alice").await, Err(StoreError::NoSuchUser("alice".into())));
}
