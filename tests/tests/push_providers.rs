//! The push providers (`actors::push::providers`) against receivers written from each
//! provider's documentation (`tests::push_receivers`): real servers on 127.0.0.1 that verify
//! credentials (the FCM assertion and access token, the APNs provider token, VAPID, the webhook
//! signature), check the message's documented shape and, for Web Push, decrypt it as a browser
//! would. Each provider's pushes arrive decoded as sent, alert and clear alike; each failure a
//! provider can answer comes back as the right `Outcome` (unregistered, retry after
//! `Retry-After`, retry after a timeout or with the receiver down, failed with credentials the
//! receiver does not trust); FCM's access token and APNs' provider token are reused.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use actors::push::notification::{Notification, NotificationKind};
use actors::push::providers::{
    ApnsSettings, FcmSettings, Outcome, ProviderSettings, Providers, WebPushSettings, WebhookPushSettings,
};
use actors::store::DeviceRecord;
use anyhow::ensure;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use protocol::Platform;
use serde_json::{json, Value};
use tempfile::TempDir;
use tests::push_receivers::apns::Apns;
use tests::push_receivers::fcm::Fcm;
use tests::push_receivers::webhook::Webhook;
use tests::push_receivers::webpush::{self, WebPush};
use tests::push_receivers::{now_secs, KeyPair, Receiver, Service};

/// Each request's deadline: what a hung receiver costs a test.
const TIMEOUT: Duration = Duration::from_secs(3);

const PROJECT: &str = "palaver-test";
const CLIENT_EMAIL: &str = "push@palaver-test.iam.gserviceaccount.com";
const TEAM_ID: &str = "TEAM123456";
const KEY_ID: &str = "KEY1234567";
const BUNDLE_ID: &str = "com.example.chat";
const WEBHOOK_SECRET: &str = "whsec_push_gateway_secret";

fn note(kind: NotificationKind) -> Notification {
    match kind {
        NotificationKind::Alert => Notification {
            kind,
            room: "r_general".into(),
            room_name: "General".into(),
            sender: Some("ada".into()),
            preview: Some("tea at five?".into()),
            count: 2,
            seq: 41,
            badge: 5,
        },
        NotificationKind::Clear => Notification {
            kind,
            room: "r_general".into(),
            room_name: "General".into(),
            sender: None,
            preview: None,
            count: 0,
            seq: 41,
            badge: 3,
        },
    }
}

fn device(platform: Platform, app: &str, token: &str) -> DeviceRecord {
    DeviceRecord {
        id: format!("dev-{}", platform.name()),
        platform,
        app: app.into(),
        locale: "en".into(),
        token: token.into(),
        p256dh: String::new(),
        auth: String::new(),
        created_ms: 0,
        preview: true,
    }
}

fn providers(settings: ProviderSettings) -> anyhow::Result<Providers> {
    Providers::new(&settings, TIMEOUT).map_err(anyhow::Error::msg)
}

fn write(dir: &Path, name: &str, contents: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, contents)?;
    Ok(path.to_string_lossy().into_owned())
}

/// The failures every provider shares, injected one after another, then a push that goes
/// through: each failure is a retry (after what `Retry-After` says, capped at an hour), and
/// `delivered` counts one push at the end.
async fn failures_are_retried<S: Service>(
    receiver: &mut Receiver<S>,
    providers: &Providers,
    device: &DeviceRecord,
    delivered: impl Fn(&Receiver<S>) -> usize,
) -> anyhow::Result<()> {
    let alert = note(NotificationKind::Alert);
    let send = || providers.send(device, &alert);

    receiver.fail_next(1, 429, Some(7));
    let outcome = send().await;
    ensure!(
        matches!(&outcome, Outcome::Retry { after: Some(after), .. } if *after == Duration::from_secs(7)),
        "429 with Retry-After: 7: {outcome:?}"
    );

    let at = SystemTime::now() + Duration::from_secs(120);
    receiver.fail_next_until(1, 503, &httpdate::fmt_http_date(at));
    let outcome = send().await;
    ensure!(
        matches!(&outcome, Outcome::Retry { after: Some(after), .. }
            if (Duration::from_secs(100)..=Duration::from_secs(120)).contains(after)),
        "503 with Retry-After as a date two minutes ahead: {outcome:?}"
    );

    receiver.fail_next(1, 503, Some(86_400));
    let outcome = send().await;
    ensure!(
        matches!(&outcome, Outcome::Retry { after: Some(after), .. } if *after == Duration::from_secs(3_600)),
        "Retry-After: 86400 is capped at an hour: {outcome:?}"
    );

    receiver.fail_next(1, 500, None);
    let outcome = send().await;
    ensure!(matches!(&outcome, Outcome::Retry { after: None, .. }), "500: {outcome:?}");

    receiver.hang_next(1);
    let started = Instant::now();
    let outcome = send().await;
    ensure!(
        matches!(&outcome, Outcome::Retry { reason, .. } if reason.contains("timed out")),
        "a receiver that never answers: {outcome:?}"
    );
    ensure!(started.elapsed() >= TIMEOUT, "the timeout fired early: {:?}", started.elapsed());

    let hung = format!("{outcome:?}");
    ensure!(!hung.contains(&device.token), "a reason shows the device's token: {hung}");

    receiver.go_down();
    let outcome = send().await;
    ensure!(matches!(&outcome, Outcome::Retry { .. }), "the receiver down: {outcome:?}");
    let down = format!("{outcome:?}");
    ensure!(!down.contains(&device.token), "a reason shows the device's token: {down}");
    receiver.come_back().await?;
    let outcome = send().await;
    ensure!(outcome == Outcome::Delivered, "the receiver back: {outcome:?}");

    ensure!(delivered(receiver) == 1, "only the last push went through: {}", delivered(receiver));
    ensure!(receiver.rejections().is_empty(), "rejected: {:?}", receiver.rejections());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// FCM

struct FcmSetup {
    receiver: Receiver<Fcm>,
    providers: Providers,
    device: DeviceRecord,
    _dir: TempDir,
}

/// FCM trusting one key, and providers whose service account signs with `signing` (that key
/// when `None`).
async fn fcm(signing: Option<&KeyPair>) -> anyhow::Result<FcmSetup> {
    let trusted = KeyPair::rsa()?;
    let receiver = Receiver::<Fcm>::start(PROJECT, CLIENT_EMAIL, &trusted).await?;
    let dir = tempfile::tempdir()?;
    let account = receiver.service_account_json(signing.unwrap_or(&trusted));
    let file = write(dir.path(), "service-account.json", &account)?;
    let settings = ProviderSettings {
        fcm: FcmSettings { service_account_file: file, base_url: receiver.base_url() },
        ..ProviderSettings::default()
    };
    let device = device(Platform::Fcm, PROJECT, "fGx1a2b3c4d5e6f7:APA91bHkz0123456789");
    Ok(FcmSetup { receiver, providers: providers(settings)?, device, _dir: dir })
}

#[tokio::test]
async fn fcm_alert_and_clear_arrive_as_documented() -> anyhow::Result<()> {
    let FcmSetup { receiver, providers, device, .. } = fcm(None).await?;
    let (alert, clear) = (note(NotificationKind::Alert), note(NotificationKind::Clear));
    assert_eq!(providers.send(&device, &alert).await, Outcome::Delivered);
    assert_eq!(providers.send(&device, &clear).await, Outcome::Delivered);
    assert_eq!(receiver.rejections(), Vec::<String>::new());
    let received = receiver.received();
    assert_eq!(received.len(), 2);
    assert!(received.iter().all(|m| m.project == PROJECT));

    let m = &received[0].message;
    assert_eq!(m["token"], device.token);
    assert_eq!(m["notification"], json!({ "title": "General", "body": "ada: tea at five? (+1 more)" }));
    assert_eq!(m["data"], json!({ "room": "r_general", "seq": "41", "count": "2", "badge": "5", "kind": "alert" }));
    assert_eq!(m["android"]["collapse_key"], alert.collapse_id());
    assert_eq!(m["android"]["notification"]["tag"], alert.collapse_id());
    assert_eq!(m["apns"]["headers"]["apns-collapse-id"], alert.collapse_id());
    assert_eq!(m["apns"]["payload"]["aps"]["badge"], 5);

    let m = &received[1].message;
    assert!(m.get("notification").is_none(), "a clear is data-only: {m}");
    assert!(m["android"].get("notification").is_none(), "{m}");
    assert_eq!(m["data"]["kind"], "clear");
    assert_eq!(m["data"]["badge"], "3");
    assert_eq!(m["android"]["collapse_key"], clear.collapse_id());
    assert_eq!(m["apns"]["headers"]["apns-push-type"], "background");
    assert_eq!(m["apns"]["payload"]["aps"], json!({ "badge": 3, "content-available": 1 }));

    assert_eq!(receiver.token_exchanges(), 1, "two sends, one access token");
    Ok(())
}

#[tokio::test]
async fn fcm_access_token_is_cached_and_renewed_when_refused() -> anyhow::Result<()> {
    let FcmSetup { receiver, providers, device, .. } = fcm(None).await?;
    let alert = note(NotificationKind::Alert);
    for _ in 0..3 {
        assert_eq!(providers.send(&device, &alert).await, Outcome::Delivered);
    }
    assert_eq!(receiver.token_exchanges(), 1);

    receiver.revoke_access_tokens();
    let outcome = providers.send(&device, &alert).await;
    assert!(
        matches!(&outcome, Outcome::Retry { reason, after: None } if reason.contains("401")),
        "a refused access token: {outcome:?}"
    );
    assert_eq!(providers.send(&device, &alert).await, Outcome::Delivered);
    assert_eq!(receiver.token_exchanges(), 2, "a new access token after the 401");
    assert_eq!(receiver.rejections(), vec!["send: no valid access token".to_string()]);
    assert_eq!(receiver.received().len(), 4);
    Ok(())
}

#[tokio::test]
async fn fcm_unregistered_token_is_reported() -> anyhow::Result<()> {
    let FcmSetup { receiver, providers, device, .. } = fcm(None).await?;
    receiver.unregister(&device.token);
    let outcome = providers.send(&device, &note(NotificationKind::Alert)).await;
    assert!(matches!(&outcome, Outcome::Unregistered(reason) if reason.contains("UNREGISTERED")), "{outcome:?}");
    let other = DeviceRecord { token: "another-registration-token-0123".into(), ..device };
    assert_eq!(providers.send(&other, &note(NotificationKind::Alert)).await, Outcome::Delivered);
    assert_eq!(receiver.received().len(), 1);
    Ok(())
}

#[tokio::test]
async fn fcm_failures_are_retried() -> anyhow::Result<()> {
    let FcmSetup { mut receiver, providers, device, .. } = fcm(None).await?;
    failures_are_retried(&mut receiver, &providers, &device, |r| r.received().len()).await
}

#[tokio::test]
async fn fcm_with_a_key_google_does_not_trust_fails() -> anyhow::Result<()> {
    let other = KeyPair::rsa()?;
    let FcmSetup { receiver, providers, device, .. } = fcm(Some(&other)).await?;
    let outcome = providers.send(&device, &note(NotificationKind::Alert)).await;
    assert!(matches!(&outcome, Outcome::Failed(reason) if reason.contains("invalid_grant")), "{outcome:?}");
    let rejections = receiver.rejections();
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert!(rejections[0].contains("InvalidSignature"), "{rejections:?}");
    assert!(receiver.received().is_empty());
    assert_eq!(receiver.token_exchanges(), 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// APNs

struct ApnsSetup {
    receiver: Receiver<Apns>,
    providers: Providers,
    device: DeviceRecord,
    _dir: TempDir,
}

/// APNs trusting one key, and providers signing with `signing` (that key when `None`).
async fn apns(signing: Option<&KeyPair>) -> anyhow::Result<ApnsSetup> {
    let trusted = KeyPair::p256()?;
    let receiver = Receiver::<Apns>::start(TEAM_ID, KEY_ID, &trusted, BUNDLE_ID).await?;
    let dir = tempfile::tempdir()?;
    let key_file = write(dir.path(), "AuthKey_KEY1234567.p8", &signing.unwrap_or(&trusted).private_pem)?;
    let settings = ProviderSettings {
        apns: ApnsSettings { key_file, key_id: KEY_ID.into(), team_id: TEAM_ID.into(), base_url: receiver.base_url() },
        ..ProviderSettings::default()
    };
    let device = device(Platform::Apns, BUNDLE_ID, &"5a1fd3c2".repeat(8));
    Ok(ApnsSetup { receiver, providers: providers(settings)?, device, _dir: dir })
}

#[tokio::test]
async fn apns_alert_and_clear_arrive_as_documented() -> anyhow::Result<()> {
    let ApnsSetup { receiver, providers, device, .. } = apns(None).await?;
    let (alert, clear) = (note(NotificationKind::Alert), note(NotificationKind::Clear));
    assert_eq!(providers.send(&device, &alert).await, Outcome::Delivered);
    assert_eq!(providers.send(&device, &clear).await, Outcome::Delivered);
    assert_eq!(receiver.rejections(), Vec::<String>::new());
    let received = receiver.received();
    assert_eq!(received.len(), 2);

    let push = &received[0];
    assert_eq!(push.device_token, device.token);
    assert_eq!((push.topic.as_str(), push.push_type.as_str(), push.priority.as_str()), (BUNDLE_ID, "alert", "10"));
    assert_eq!(push.collapse_id.as_deref(), Some(alert.collapse_id().as_str()));
    let expiration = push.expiration.unwrap_or(0);
    assert!(expiration > now_secs() + 3_600, "apns-expiration {expiration}");
    assert_eq!(
        push.payload,
        json!({
            "aps": {
                "alert": { "title": "General", "body": "ada: tea at five? (+1 more)" },
                "badge": 5, "sound": "default", "thread-id": "r_general",
            },
            "room": "r_general", "seq": 41, "kind": "alert",
        })
    );

    let push = &received[1];
    assert_eq!((push.push_type.as_str(), push.priority.as_str()), ("background", "5"));
    assert_eq!(push.collapse_id.as_deref(), Some(clear.collapse_id().as_str()));
    assert_eq!(
        push.payload,
        json!({ "aps": { "content-available": 1, "badge": 3 }, "room": "r_general", "seq": 41, "kind": "clear" })
    );
    Ok(())
}

#[tokio::test]
async fn apns_provider_token_is_reused_and_renewed_when_expired() -> anyhow::Result<()> {
    let ApnsSetup { receiver, providers, device, .. } = apns(None).await?;
    let alert = note(NotificationKind::Alert);
    for _ in 0..3 {
        assert_eq!(providers.send(&device, &alert).await, Outcome::Delivered);
    }
    assert_eq!(receiver.provider_tokens().len(), 1, "one provider token for three pushes");

    receiver.expire_provider_tokens();
    let outcome = providers.send(&device, &alert).await;
    assert!(
        matches!(&outcome, Outcome::Retry { reason, .. } if reason.contains("ExpiredProviderToken")),
        "{outcome:?}"
    );
    assert_eq!(providers.send(&device, &alert).await, Outcome::Delivered);
    assert_eq!(providers.send(&device, &alert).await, Outcome::Delivered);
    assert_eq!(receiver.provider_tokens().len(), 2, "a new provider token after it expired, then reused");
    assert_eq!(receiver.rejections(), vec!["403 ExpiredProviderToken".to_string()]);
    assert_eq!(receiver.received().len(), 5);
    Ok(())
}

#[tokio::test]
async fn apns_unregistered_and_bad_device_tokens_are_reported() -> anyhow::Result<()> {
    let ApnsSetup { receiver, providers, device, .. } = apns(None).await?;
    let alert = note(NotificationKind::Alert);
    receiver.unregister(&device.token);
    let outcome = providers.send(&device, &alert).await;
    assert!(matches!(&outcome, Outcome::Unregistered(reason) if reason.contains("410")), "{outcome:?}");

    let other = DeviceRecord { token: "0f".repeat(32), ..device.clone() };
    receiver.bad_device_token(&other.token);
    let outcome = providers.send(&other, &alert).await;
    assert!(matches!(&outcome, Outcome::Unregistered(reason) if reason.contains("BadDeviceToken")), "{outcome:?}");

    let wrong_app = DeviceRecord { token: "ab".repeat(32), app: "com.example.other".into(), ..device };
    let outcome = providers.send(&wrong_app, &alert).await;
    assert!(matches!(&outcome, Outcome::Failed(reason) if reason.contains("DeviceTokenNotForTopic")), "{outcome:?}");
    assert!(receiver.received().is_empty());
    Ok(())
}

#[tokio::test]
async fn apns_failures_are_retried() -> anyhow::Result<()> {
    let ApnsSetup { mut receiver, providers, device, .. } = apns(None).await?;
    failures_are_retried(&mut receiver, &providers, &device, |r| r.received().len()).await
}

#[tokio::test]
async fn apns_with_a_key_apple_does_not_trust_fails() -> anyhow::Result<()> {
    let other = KeyPair::p256()?;
    let ApnsSetup { receiver, providers, device, .. } = apns(Some(&other)).await?;
    let outcome = providers.send(&device, &note(NotificationKind::Alert)).await;
    assert!(matches!(&outcome, Outcome::Failed(reason) if reason.contains("InvalidProviderToken")), "{outcome:?}");
    assert_eq!(receiver.rejections(), vec!["403 InvalidProviderToken".to_string()]);
    assert!(receiver.received().is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Web Push

struct WebPushSetup {
    receiver: Receiver<WebPush>,
    providers: Providers,
    device: DeviceRecord,
    settings: WebPushSettings,
    _dir: TempDir,
}

/// A push service, providers with a VAPID key, and a device subscribed with that key (or with
/// `subscribed_with`'s, to be refused).
async fn webpush(subscribed_with: Option<&KeyPair>) -> anyhow::Result<WebPushSetup> {
    let receiver = Receiver::<WebPush>::start().await?;
    let dir = tempfile::tempdir()?;
    let vapid = KeyPair::p256()?;
    let settings = WebPushSettings {
        vapid_key_file: write(dir.path(), "vapid.pem", &vapid.private_pem)?,
        subject: "mailto:ops@chat.example.com".into(),
        ttl_secs: 3_600,
    };
    let providers = providers(ProviderSettings { webpush: settings.clone(), ..ProviderSettings::default() })?;
    // What the web client does: subscribe with the server's VAPID public key.
    let server_key = match subscribed_with {
        None => providers.vapid_public_key().unwrap_or_default(),
        Some(key) => URL_SAFE_NO_PAD.encode(key.public_point()),
    };
    let subscription = receiver.subscribe(Some(&server_key))?;
    let device = DeviceRecord {
        p256dh: subscription.p256dh,
        auth: subscription.auth,
        ..device(Platform::Webpush, "web", &subscription.endpoint)
    };
    Ok(WebPushSetup { receiver, providers, device, settings, _dir: dir })
}

#[tokio::test]
async fn webpush_payload_decrypts_to_what_was_sent() -> anyhow::Result<()> {
    let WebPushSetup { receiver, providers, device, settings, .. } = webpush(None).await?;
    let (alert, clear) = (note(NotificationKind::Alert), note(NotificationKind::Clear));
    assert_eq!(providers.send(&device, &alert).await, Outcome::Delivered);
    assert_eq!(providers.send(&device, &clear).await, Outcome::Delivered);
    assert_eq!(receiver.rejections(), Vec::<String>::new());
    let received = receiver.received();
    assert_eq!(received.len(), 2);

    let vapid_key = providers.vapid_public_key().unwrap_or_default();
    let point = URL_SAFE_NO_PAD.decode(&vapid_key)?;
    assert!(point.len() == 65 && point[0] == 4, "the VAPID key is an uncompressed P-256 point");

    for (push, note) in received.iter().zip([&alert, &clear]) {
        let plaintext: Value = serde_json::from_slice(&push.plaintext)?;
        assert_eq!(
            plaintext,
            json!({
                "kind": note.kind, "room": note.room, "room_name": note.room_name,
                "title": note.title(), "body": note.body(),
                "count": note.count, "seq": note.seq, "badge": note.badge, "collapse_id": note.collapse_id(),
            })
        );
        assert_eq!(push.endpoint, device.token);
        assert_eq!(push.ttl, settings.ttl_secs);
        assert_eq!(push.topic.as_deref(), Some(note.collapse_id().as_str()));
        assert_eq!(push.vapid_key, vapid_key);
        assert_eq!(push.vapid_claims["aud"], receiver.base_url());
        assert_eq!(push.vapid_claims["sub"], settings.subject);
        let exp = push.vapid_claims["exp"].as_u64().unwrap_or(0);
        assert!((now_secs() + 11 * 3_600..=now_secs() + 13 * 3_600).contains(&exp), "exp {exp}");
    }
    assert_eq!(received[0].urgency.as_deref(), Some("high"));
    assert_eq!(received[1].urgency.as_deref(), Some("normal"));
    Ok(())
}

#[tokio::test]
async fn webpush_gone_subscriptions_are_reported() -> anyhow::Result<()> {
    let WebPushSetup { receiver, providers, device, .. } = webpush(None).await?;
    let alert = note(NotificationKind::Alert);
    receiver.unregister(&device.token);
    let outcome = providers.send(&device, &alert).await;
    assert!(matches!(&outcome, Outcome::Unregistered(reason) if reason.contains("410")), "{outcome:?}");
    let unknown = DeviceRecord { token: format!("{}/push/never-subscribed", receiver.base_url()), ..device };
    let outcome = providers.send(&unknown, &alert).await;
    assert!(matches!(&outcome, Outcome::Unregistered(reason) if reason.contains("404")), "{outcome:?}");
    assert!(receiver.received().is_empty());
    Ok(())
}

#[tokio::test]
async fn webpush_failures_are_retried() -> anyhow::Result<()> {
    let WebPushSetup { mut receiver, providers, device, .. } = webpush(None).await?;
    failures_are_retried(&mut receiver, &providers, &device, |r| r.received().len()).await
}

#[tokio::test]
async fn webpush_with_a_vapid_key_the_subscription_was_not_made_with_fails() -> anyhow::Result<()> {
    let other = KeyPair::p256()?;
    let WebPushSetup { receiver, providers, device, .. } = webpush(Some(&other)).await?;
    let outcome = providers.send(&device, &note(NotificationKind::Alert)).await;
    assert!(matches!(&outcome, Outcome::Failed(reason) if reason.contains("403")), "{outcome:?}");
    let rejections = receiver.rejections();
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert!(rejections[0].starts_with("403 the VAPID key"), "{rejections:?}");
    assert!(receiver.received().is_empty());
    Ok(())
}

/// The receiver's decryption holds to RFC 8291's own example (Appendix A), so what it accepts
/// from the provider is what a browser would.
#[test]
fn webpush_receiver_decrypts_the_rfc_8291_example() -> anyhow::Result<()> {
    use aws_lc_rs::agreement::{PrivateKey, ECDH_P256};
    let b64 = |text: &str| URL_SAFE_NO_PAD.decode(text);
    let ua_private = PrivateKey::from_private_key(&ECDH_P256, &b64("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94")?)
        .map_err(|err| anyhow::anyhow!("{err:?}"))?;
    let body = b64(
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3\
         jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN",
    )?;
    let auth = b64("BTBZMqHH6r4Tts7J_aSIgg")?;
    let plaintext = webpush::decrypt(&body, &ua_private, &auth).map_err(anyhow::Error::msg)?;
    assert_eq!(plaintext, b"When I grow up, I want to be a watermelon");
    let mut tampered = body.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(webpush::decrypt(&tampered, &ua_private, &auth).is_err());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Webhook

async fn webhook(secret: &str) -> anyhow::Result<(Receiver<Webhook>, Providers, DeviceRecord)> {
    let receiver = Receiver::<Webhook>::start(WEBHOOK_SECRET).await?;
    let webhook =
        WebhookPushSettings { secret: secret.into(), url_prefixes: vec![format!("{}/", receiver.base_url())] };
    let settings = ProviderSettings { webhook, ..ProviderSettings::default() };
    let device = device(Platform::Webhook, "chat", &receiver.device_url("phone-1"));
    Ok((receiver, providers(settings)?, device))
}

#[tokio::test]
async fn webhook_push_is_signed_and_carries_the_notification() -> anyhow::Result<()> {
    let (receiver, providers, device) = webhook(WEBHOOK_SECRET).await?;
    let alert = note(NotificationKind::Alert);
    assert_eq!(providers.send(&device, &alert).await, Outcome::Delivered);
    assert_eq!(providers.send(&device, &note(NotificationKind::Clear)).await, Outcome::Delivered);
    assert_eq!(receiver.rejections(), Vec::<String>::new());
    let received = receiver.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].url, device.token);
    assert_eq!(
        received[0].body,
        json!({
            "device": { "id": device.id, "app": "chat", "locale": "en" },
            "notification": {
                "kind": "alert", "room": "r_general", "room_name": "General", "sender": "ada",
                "preview": "tea at five?", "count": 2, "seq": 41, "badge": 5,
                "title": "General", "body": "ada: tea at five? (+1 more)", "collapse_id": alert.collapse_id(),
            },
        })
    );
    assert_eq!(received[1].body["notification"]["kind"], "clear");
    assert_eq!(received[1].body["notification"]["badge"], 3);
    Ok(())
}

#[tokio::test]
async fn webhook_gone_device_is_reported() -> anyhow::Result<()> {
    let (receiver, providers, device) = webhook(WEBHOOK_SECRET).await?;
    receiver.unregister(&device.token);
    let outcome = providers.send(&device, &note(NotificationKind::Alert)).await;
    assert!(matches!(&outcome, Outcome::Unregistered(reason) if reason.contains("410")), "{outcome:?}");
    let other = DeviceRecord { token: receiver.device_url("phone-2"), ..device };
    assert_eq!(providers.send(&other, &note(NotificationKind::Alert)).await, Outcome::Delivered);
    Ok(())
}

#[tokio::test]
async fn webhook_failures_are_retried() -> anyhow::Result<()> {
    let (mut receiver, providers, device) = webhook(WEBHOOK_SECRET).await?;
    failures_are_retried(&mut receiver, &providers, &device, |r| r.received().len()).await
}

#[tokio::test]
async fn webhook_with_another_secret_fails() -> anyhow::Result<()> {
    let (receiver, providers, device) = webhook("whsec_not_the_gateways").await?;
    let outcome = providers.send(&device, &note(NotificationKind::Alert)).await;
    assert!(matches!(&outcome, Outcome::Failed(reason) if reason.contains("401")), "{outcome:?}");
    assert_eq!(receiver.rejections(), vec!["401 the signature does not verify".to_string()]);
    assert!(receiver.received().is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[tokio::test]
async fn platforms_not_configured_fail_without_a_request() -> anyhow::Result<()> {
    let providers = providers(ProviderSettings::default())?;
    for (platform, name) in [
        (Platform::Fcm, "FCM"),
        (Platform::Apns, "APNs"),
        (Platform::Webpush, "Web Push"),
        (Platform::Webhook, "webhook"),
    ] {
        let outcome =
            providers.send(&device(platform, "app", "http://127.0.0.1:9/x"), &note(NotificationKind::Alert)).await;
        assert!(
            matches!(&outcome, Outcome::Failed(reason) if reason.contains(name) && reason.contains("not configured")),
            "{outcome:?}"
        );
    }
    Ok(())
}

#[test]
fn bad_key_files_name_their_setting() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p256 = KeyPair::p256()?;
    let p256_file = write(dir.path(), "p256.pem", &p256.private_pem)?;
    let garbage = write(dir.path(), "garbage.pem", "not a key")?;
    let missing = dir.path().join("missing.json").to_string_lossy().into_owned();
    let error = |settings: ProviderSettings| Providers::new(&settings, TIMEOUT).err().unwrap_or_default();

    let fcm = |file: &str| ProviderSettings {
        fcm: FcmSettings { service_account_file: file.into(), ..FcmSettings::default() },
        ..ProviderSettings::default()
    };
    assert!(error(fcm(&missing)).starts_with("push.fcm.service_account_file: cannot read"));
    assert!(error(fcm(&garbage)).contains("is not a service-account JSON key"));
    let account = json!({ "client_email": CLIENT_EMAIL, "private_key": p256.private_pem, "project_id": PROJECT });
    let p256_account = write(dir.path(), "p256-account.json", &account.to_string())?;
    assert!(error(fcm(&p256_account)).contains("not a usable RSA private key"), "{}", error(fcm(&p256_account)));

    let apns = |file: &str| ProviderSettings {
        apns: ApnsSettings {
            key_file: file.into(),
            key_id: KEY_ID.into(),
            team_id: TEAM_ID.into(),
            ..ApnsSettings::default()
        },
        ..ProviderSettings::default()
    };
    assert!(error(apns(&garbage)).starts_with("push.apns.key_file"));
    assert!(Providers::new(&apns(&p256_file), TIMEOUT).is_ok());
    let no_team = ProviderSettings {
        apns: ApnsSettings { team_id: String::new(), ..apns(&p256_file).apns },
        ..ProviderSettings::default()
    };
    assert!(error(no_team).starts_with("push.apns.team_id"));

    let webpush = |file: &str| ProviderSettings {
        webpush: WebPushSettings { vapid_key_file: file.into(), ..WebPushSettings::default() },
        ..ProviderSettings::default()
    };
    assert!(error(webpush(&missing)).starts_with("push.webpush.vapid_key_file"));
    let rsa = KeyPair::rsa()?;
    let rsa_file = write(dir.path(), "rsa.pem", &rsa.private_pem)?;
    assert!(error(webpush(&rsa_file)).starts_with("push.webpush.vapid_key_file"));
    let providers = Providers::new(&webpush(&p256_file), TIMEOUT).map_err(anyhow::Error::msg)?;
    assert_eq!(providers.vapid_public_key(), Some(URL_SAFE_NO_PAD.encode(p256.public_point())));
    Ok(())
}
