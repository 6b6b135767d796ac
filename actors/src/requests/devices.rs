//! Devices for push notifications: `register_device`, `list_devices`, `remove_device`.
//!
//! Each platform's token is checked for the shape its push service gives (so a client bug is
//! told at once rather than found when a push fails), and a device's id is derived from its
//! platform and token: a client registering the same token again (every app start, say) updates
//! its device instead of adding one. Devices live in the store, so every node sees them and
//! they outlive restarts; deleting the account erases them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use protocol::{DeviceInfo, ErrorCode, NewDevice, Platform, ReqId, ServerFrame};
use sha2::{Digest, Sha256};

use super::{error_frame, store_error_frame, Ctx};
use crate::names::now_ms;
use crate::store::DeviceRecord;

/// Longest token, endpoint or URL accepted.
const TOKEN_MAX_BYTES: usize = 4096;

/// `register_device`.
pub async fn register(ctx: &Ctx, req: ReqId, device: NewDevice) -> ServerFrame {
    let record = match checked(device) {
        Ok(record) => record,
        Err(message) => return error_frame(Some(req), ErrorCode::InvalidField, message),
    };
    match ctx.hub.store().put_device(&ctx.user, record, ctx.hub.limits().max_devices_per_user).await {
        Ok(stored) => ServerFrame::Device { req, device: info(&stored) },
        Err(err) => store_error_frame(&ctx.hub, Some(req), err),
    }
}

/// `list_devices`.
pub async fn list(ctx: &Ctx, req: ReqId) -> ServerFrame {
    match ctx.hub.store().devices(&ctx.user).await {
        Ok(devices) => ServerFrame::Devices { req, devices: devices.iter().map(info).collect() },
        Err(err) => store_error_frame(&ctx.hub, Some(req), err),
    }
}

/// `remove_device`.
pub async fn remove(ctx: &Ctx, req: ReqId, id: String) -> ServerFrame {
    match ctx.hub.store().remove_device(&ctx.user, &id).await {
        Ok(true) => ServerFrame::Ok { req },
        Ok(false) => error_frame(
            Some(req),
            ErrorCode::NoSuchDevice,
            format!("you have no device `{}`", super::bounded_message(&id)),
        ),
        Err(err) => store_error_frame(&ctx.hub, Some(req), err),
    }
}

fn info(record: &DeviceRecord) -> DeviceInfo {
    let start = record.token.char_indices().rev().nth(5).map_or(0, |(at, _)| at);
    let hint = record.token[start..].to_owned();
    DeviceInfo {
        id: record.id.clone(),
        platform: record.platform,
        app: record.app.clone(),
        locale: record.locale.clone(),
        hint,
        preview: record.preview,
        created_at: record.created_ms,
    }
}

/// The device to store, or what is wrong with it (naming the field).
pub fn checked(device: NewDevice) -> Result<DeviceRecord, String> {
    let NewDevice { platform, token, subscription, app, locale, preview } = device;
    if locale.len() > 35 || !locale.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err("`locale` is a language tag like `en` or `pt-BR` (at most 35 of A-Z a-z 0-9 - _)".into());
    }
    let (token, p256dh, auth) = match platform {
        Platform::Webpush => {
            if token.is_some() {
                return Err("a `webpush` device has a `subscription`, not a `token`".into());
            }
            let Some(subscription) = subscription else {
                return Err("a `webpush` device needs its `subscription` (endpoint and keys)".into());
            };
            check_url(&subscription.endpoint, "`subscription.endpoint`", true)?;
            let key = decode_b64url(&subscription.keys.p256dh, "`subscription.keys.p256dh`")?;
            if key.len() != 65 || key[0] != 4 {
                return Err("`subscription.keys.p256dh` must be an uncompressed P-256 public key (65 bytes)".into());
            }
            if decode_b64url(&subscription.keys.auth, "`subscription.keys.auth`")?.len() != 16 {
                return Err("`subscription.keys.auth` must be 16 bytes".into());
            }
            (subscription.endpoint, subscription.keys.p256dh, subscription.keys.auth)
        }
        _ => {
            if subscription.is_some() {
                return Err(format!(
                    "only a `webpush` device has a `subscription`; `{}` has a `token`",
                    platform.name()
                ));
            }
            let Some(token) = token else { return Err(format!("a `{}` device needs its `token`", platform.name())) };
            check_token(platform, &token, &app)?;
            (token, String::new(), String::new())
        }
    };
    if app.len() > 255 || app.chars().any(char::is_control) {
        return Err("`app` is at most 255 bytes without control characters".into());
    }
    let digest = Sha256::digest(format!("{}\n{token}", platform.name()).as_bytes());
    let id: String = digest[..8].iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(DeviceRecord { id, platform, app, locale, token, p256dh, auth, created_ms: now_ms(), preview })
}

fn check_token(platform: Platform, token: &str, app: &str) -> Result<(), String> {
    match platform {
        Platform::Fcm => {
            let ok = (16..=TOKEN_MAX_BYTES).contains(&token.len())
                && token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.'));
            if !ok {
                return Err("an `fcm` token is the app's registration token (16 to 4096 of A-Z a-z 0-9 _ - : .)".into());
            }
            if app.is_empty() || !app.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
                return Err("an `fcm` device's `app` is its Firebase project id (a-z 0-9 -)".into());
            }
        }
        Platform::Apns => {
            let ok = (64..=200).contains(&token.len())
                && token.len().is_multiple_of(2)
                && token.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err("an `apns` token is the device token in hex (64 to 200 hex digits)".into());
            }
            if app.is_empty() || !app.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) {
                return Err(
                    "an `apns` device's `app` is its topic, the app's bundle id (e.g. `com.example.chat`)".into()
                );
            }
        }
        Platform::Webhook => check_url(token, "a `webhook` device's `token`", false)?,
        Platform::Webpush => {}
    }
    Ok(())
}

fn check_url(url: &str, what: &str, https_only: bool) -> Result<(), String> {
    let scheme_ok = url.starts_with("https://") || (!https_only && url.starts_with("http://"));
    let host = url.split_once("://").map_or("", |(_, rest)| rest);
    if !scheme_ok || host.is_empty() || url.len() > TOKEN_MAX_BYTES || url.chars().any(|c| c.is_control() || c == ' ') {
        let schemes = if https_only { "an https:// URL" } else { "an http:// or https:// URL" };
        return Err(format!("{what} must be {schemes} of at most {TOKEN_MAX_BYTES} bytes"));
    }
    Ok(())
}

fn decode_b64url(text: &str, what: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).map_err(|_| format!("{what} is not base64url"))
}

#[cfg(test)]
mod tests {
    use protocol::{WebPushKeys, WebPushSubscription};

    use super::*;

    fn fcm(token: &str) -> NewDevice {
        NewDevice {
            platform: Platform::Fcm,
            token: Some(token.into()),
            subscription: None,
            app: "my-chat".into(),
            locale: "en".into(),
            preview: false,
        }
    }

    #[test]
    fn the_same_token_is_the_same_device_and_bad_shapes_are_named() {
        let first = checked(fcm("fGx1a2b3c4d5e6f7:APA91bH")).unwrap();
        let again = checked(NewDevice { locale: "de".into(), ..fcm("fGx1a2b3c4d5e6f7:APA91bH") }).unwrap();
        assert_eq!(first.id, again.id);
        assert_ne!(first.id, checked(fcm("another-token-0123456789")).unwrap().id);
        assert!(checked(fcm("short")).unwrap_err().contains("`fcm` token"));
        let apns = NewDevice {
            platform: Platform::Apns,
            token: Some("zz".repeat(32)),
            app: "com.example.chat".into(),
            ..fcm("")
        };
        assert!(checked(apns).unwrap_err().contains("hex"));
        let hook = NewDevice { platform: Platform::Webhook, token: Some("ftp://gateway".into()), ..fcm("") };
        assert!(checked(hook).unwrap_err().contains("http"));
        let mut key = vec![4u8];
        key.extend([7u8; 64]);
        let subscription = WebPushSubscription {
            endpoint: "https://push.example.net/send/abc".into(),
            keys: WebPushKeys { p256dh: URL_SAFE_NO_PAD.encode(&key), auth: URL_SAFE_NO_PAD.encode([1u8; 16]) },
        };
        let web =
            NewDevice { platform: Platform::Webpush, token: None, subscription: Some(subscription.clone()), ..fcm("") };
        assert_eq!(checked(web.clone()).unwrap().token, "https://push.example.net/send/abc");
        let short_key = WebPushSubscription {
            keys: WebPushKeys { p256dh: URL_SAFE_NO_PAD.encode([4u8; 33]), ..subscription.keys.clone() },
            ..subscription
        };
        assert!(checked(NewDevice { subscription: Some(short_key), ..web }).unwrap_err().contains("p256dh"));
        assert!(checked(NewDevice { locale: "en US".into(), ..fcm("fGx1a2b3c4d5e6f7:APA91bH") })
            .unwrap_err()
            .contains("locale"));
    }
}
