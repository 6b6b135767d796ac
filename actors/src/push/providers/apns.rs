//! Apple Push Notification service, HTTP/2 provider API with token-based authentication.
//!
//! Spec: "Sending notification requests to APNs"
//! (<https://developer.apple.com/documentation/usernotifications/sending-notification-requests-to-apns>),
//! "Establishing a token-based connection to APNs"
//! (<https://developer.apple.com/documentation/usernotifications/establishing-a-token-based-connection-to-apns>),
//! "Generating a remote notification" (the `aps` dictionary) and "Handling notification responses
//! from APNs" (status codes and reasons).
//!
//! The provider token is a JWT signed ES256 with the `.p8` key from the developer account:
//! header `alg` ES256 and `kid` the key's id, claims `iss` the team id and `iat`. APNs refuses a
//! token older than an hour (403 `ExpiredProviderToken`) and one refreshed more often than every
//! 20 minutes (429 `TooManyProviderTokenUpdates`), so one is kept for 50 minutes, and renewed
//! early only when APNs says it expired.
//!
//! A push is `POST {base_url}/3/device/{token}` over HTTP/2 (APNs speaks nothing else: ALPN `h2`
//! over TLS; a test's `http://` receiver gets HTTP/2 with prior knowledge), with
//! `authorization: bearer <jwt>`, `apns-topic` the app's bundle id (the device's `app`),
//! `apns-push-type` and `apns-priority` (`alert`/10 for an alert, `background`/5 for a clear,
//! as APNs requires of background pushes), `apns-collapse-id` and `apns-expiration`. An alert's
//! body is `{"aps":{"alert":{"title","body"},"badge","sound":"default","thread-id":room},…}`, a
//! clear's `{"aps":{"content-available":1,"badge"},…,"kind":"clear"}`.
//!
//! Answers: 200 delivered; 410 (`Unregistered`) and 400 `BadDeviceToken` → the token is gone;
//! 403 `ExpiredProviderToken` → a new JWT and retry; 429 and 5xx → retry; anything else (a bad
//! key, `DeviceTokenNotForTopic`, `PayloadTooLarge`) failed.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reqwest::header::CONTENT_TYPE;
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use super::keys::{read_file, SigningKey};
use super::{by_status, check_base_url, excerpt, hint, join_path, send, title_and_body, unix_secs, Refused};
use super::{Notification, Outcome, USER_AGENT};
use crate::limits::InvalidSetting;
use crate::push::notification::NotificationKind;
use crate::store::DeviceRecord;

/// How long one provider token is used: under APNs' hour, well over its 20 minutes.
const TOKEN_REUSE: Duration = Duration::from_secs(50 * 60);

/// How long APNs keeps trying to deliver a push the device is not reachable for.
const EXPIRATION_SECS: u64 = 24 * 3_600;

/// The `[push.apns]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApnsSettings {
    /// The APNs authentication key (`AuthKey_<key id>.p8`, PKCS#8 PEM, P-256); empty: APNs is
    /// not configured on this node.
    pub key_file: String,
    /// The key's id (10 characters, shown with the key in the developer account).
    pub key_id: String,
    /// The developer account's team id.
    pub team_id: String,
    /// Where APNs is: `https://api.sandbox.push.apple.com` for development builds of the app.
    pub base_url: String,
}

impl Default for ApnsSettings {
    fn default() -> Self {
        ApnsSettings {
            key_file: String::new(),
            key_id: String::new(),
            team_id: String::new(),
            base_url: "https://api.push.apple.com".into(),
        }
    }
}

impl ApnsSettings {
    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check_base_url("push.apns.base_url", &self.base_url)?;
        if !self.key_file.is_empty() {
            if self.key_id.is_empty() {
                return Err(InvalidSetting::new("push.apns.key_id", "is needed with push.apns.key_file"));
            }
            if self.team_id.is_empty() {
                return Err(InvalidSetting::new("push.apns.team_id", "is needed with push.apns.key_file"));
            }
        }
        Ok(())
    }
}

/// A provider token and when it was made.
struct ProviderToken {
    jwt: String,
    made: Instant,
}

/// The APNs provider.
pub(super) struct Apns {
    /// HTTP/2 only.
    http: reqwest::Client,
    base_url: Url,
    key: SigningKey,
    key_id: String,
    team_id: String,
    token: Mutex<Option<ProviderToken>>,
}

impl Apns {
    pub(super) fn new(settings: &ApnsSettings, timeout: Duration) -> Result<Apns, String> {
        const KEY: &str = "push.apns.key_file";
        let pem = read_file(KEY, &settings.key_file)?;
        let key = SigningKey::p256_from_pem(&pem).map_err(|err| format!("{KEY}: {}: {err}", settings.key_file))?;
        let base_url = Url::parse(&settings.base_url).map_err(|err| format!("push.apns.base_url: {err}"))?;
        // `http2_prior_knowledge` is HTTP/2 and nothing else: over TLS it offers only ALPN `h2`,
        // over plain TCP it starts HTTP/2 at once (h2c). All pushes share the one connection
        // APNs wants kept open.
        let http = reqwest::Client::builder()
            .http2_prior_knowledge()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .build()
            .map_err(|err| format!("push: cannot build the HTTP/2 client for APNs: {err}"))?;
        Ok(Apns {
            http,
            base_url,
            key,
            key_id: settings.key_id.clone(),
            team_id: settings.team_id.clone(),
            token: Mutex::new(None),
        })
    }

    pub(super) async fn send(&self, device: &DeviceRecord, note: &Notification) -> Outcome {
        let url = match join_path(&self.base_url, &["3", "device", &device.token]) {
            Ok(url) => url,
            Err(err) => return Outcome::Failed(format!("APNs: {err}")),
        };
        let body = match serde_json::to_vec(&payload(note)) {
            Ok(body) => body,
            Err(err) => return Outcome::Failed(format!("APNs: cannot encode the payload: {err}")),
        };
        let jwt = match self.provider_token() {
            Ok(jwt) => jwt,
            Err(err) => return Outcome::Failed(format!("APNs: cannot sign the provider token: {err}")),
        };
        let alert = note.kind == NotificationKind::Alert;
        let request = self
            .http
            .post(url)
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", &device.app)
            .header("apns-push-type", if alert { "alert" } else { "background" })
            .header("apns-priority", if alert { "10" } else { "5" })
            .header("apns-collapse-id", note.collapse_id())
            .header("apns-expiration", (unix_secs() + EXPIRATION_SECS).to_string())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        let Refused { status, after, body: answer } = match send("APNs", request).await {
            Ok(refused) => refused,
            Err(outcome) => return outcome,
        };
        let reason = serde_json::from_slice::<Value>(&answer)
            .ok()
            .and_then(|answer| answer["reason"].as_str().map(str::to_owned))
            .unwrap_or_else(|| excerpt(&String::from_utf8_lossy(&answer)));
        match (status, reason.as_str()) {
            (StatusCode::GONE, _) | (StatusCode::BAD_REQUEST, "BadDeviceToken") => {
                debug!(token = hint(&device.token), %status, reason, "push: APNs says the token is unregistered");
                Outcome::Unregistered(format!("APNs: {status} {reason}"))
            }
            (StatusCode::FORBIDDEN, "ExpiredProviderToken") => {
                warn!("push: APNs says the provider token expired; making a new one");
                self.forget(&jwt);
                Outcome::Retry { reason: format!("APNs: {status} {reason}"), after: None }
            }
            _ => by_status("APNs", status, after, &reason),
        }
    }

    /// The provider token to send with: the one held while it is young enough, or a new one.
    fn provider_token(&self) -> Result<String, String> {
        let mut held = self.token.lock();
        if let Some(token) = held.as_ref().filter(|token| token.made.elapsed() < TOKEN_REUSE) {
            return Ok(token.jwt.clone());
        }
        let jwt = self.key.jwt(Some(&self.key_id), &json!({ "iss": self.team_id, "iat": unix_secs() }))?;
        info!("push: new APNs provider token");
        *held = Some(ProviderToken { jwt: jwt.clone(), made: Instant::now() });
        Ok(jwt)
    }

    /// Forget `jwt` (unless another has replaced it meanwhile).
    fn forget(&self, jwt: &str) {
        let mut held = self.token.lock();
        if held.as_ref().is_some_and(|held| held.jwt == jwt) {
            *held = None;
        }
    }
}

/// The push's JSON body.
fn payload(note: &Notification) -> Value {
    match note.kind {
        NotificationKind::Alert => {
            let (title, body) = title_and_body(note);
            json!({
                "aps": {
                    "alert": { "title": title, "body": body },
                    "badge": note.badge,
                    "sound": "default",
                    // Groups the room's notifications together in Notification Center.
                    "thread-id": note.room,
                },
                "room": note.room,
                "seq": note.seq,
                "kind": "alert",
            })
        }
        NotificationKind::Clear => json!({
            "aps": { "content-available": 1, "badge": note.badge },
            "room": note.room,
            "seq": note.seq,
            "kind": "clear",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_and_clear_payloads() {
        let mut note = Notification {
            kind: NotificationKind::Alert,
            room: "r1".into(),
            room_name: String::new(),
            sender: Some("ada".into()),
            preview: None,
            count: 1,
            seq: 9,
            badge: 3,
        };
        assert_eq!(
            payload(&note),
            json!({
                "aps": { "alert": { "title": "ada", "body": "New message from ada" }, "badge": 3, "sound": "default", "thread-id": "r1" },
                "room": "r1", "seq": 9, "kind": "alert",
            })
        );
        note.kind = NotificationKind::Clear;
        assert_eq!(
            payload(&note),
            json!({ "aps": { "content-available": 1, "badge": 3 }, "room": "r1", "seq": 9, "kind": "clear" })
        );
    }

    #[test]
    fn a_key_file_needs_its_key_id_and_team() {
        let mut settings = ApnsSettings { key_file: "AuthKey.p8".into(), ..ApnsSettings::default() };
        assert_eq!(settings.validate().unwrap_err().key, "push.apns.key_id");
        settings.key_id = "ABC123DEFG".into();
        assert_eq!(settings.validate().unwrap_err().key, "push.apns.team_id");
        settings.team_id = "DEF123GHIJ".into();
        settings.validate().unwrap();
        settings.base_url = "api.push.apple.com".into();
        assert_eq!(settings.validate().unwrap_err().key, "push.apns.base_url");
    }
}
