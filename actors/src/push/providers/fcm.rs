//! Firebase Cloud Messaging, HTTP v1 API.
//!
//! Spec: the send request <https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send>
//! and its `Message` (<https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages>),
//! the errors (<https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode>), and Google's
//! OAuth 2.0 for server-to-server applications
//! (<https://developers.google.com/identity/protocols/oauth2/service-account#httprest>, the JWT
//! bearer grant of RFC 7523): a JWT signed RS256 with the service account's private key (`iss`
//! its `client_email`, `scope` firebase.messaging, `aud` its `token_uri`, `iat`, `exp` at most an
//! hour later) is posted to `token_uri` as `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`
//! and `assertion`, and the answer's `access_token` is the bearer token of the sends until
//! shortly before its `expires_in`.
//!
//! A push is `POST {base_url}/v1/projects/{project}/messages:send` with `{"message": …}`: the
//! device's registration token, `notification` (title, body) for an alert only, `data` (every
//! value a string: room, seq, count, badge, kind), and the collapse id as Android's collapse key
//! and notification tag and as `apns-collapse-id` for the app on iOS. A clear is a data-only
//! message (kind `clear`; on iOS a background push).
//!
//! Answers: 2xx delivered; 404 or the error code `UNREGISTERED` → the token is gone; 401 → the
//! access token was refused (expired early, revoked): it is dropped and the push retried with a
//! new one, but for `THIRD_PARTY_AUTH_ERROR` (the project's APNs or Web Push credentials, which
//! only the operator can fix); 429 and 5xx → retry, after `Retry-After` if given; other 4xx →
//! failed.

use std::time::{Duration, Instant};

use reqwest::header::CONTENT_TYPE;
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use super::keys::{read_file, SigningKey};
use super::{
    by_status, check_base_url, excerpt, hint, join_path, retry_after, send, title_and_body, unanswered, unix_secs,
    Refused,
};
use super::{Notification, Outcome};
use crate::limits::InvalidSetting;
use crate::push::notification::NotificationKind;
use crate::store::DeviceRecord;

/// The OAuth 2.0 scope of sending with FCM.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// RFC 7523's grant type: a JWT as the authorization grant.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// How long the assertion is valid: Google takes at most an hour.
const ASSERTION_LIFETIME_SECS: u64 = 3_600;

/// How long before an access token expires a new one is fetched, so no send carries one that
/// expires on the way.
const RENEW_BEFORE: Duration = Duration::from_secs(120);

/// The `[push.fcm]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FcmSettings {
    /// The service account's JSON key (Firebase console, Project settings, Service accounts);
    /// empty: FCM is not configured on this node.
    pub service_account_file: String,
    /// Where the FCM API is; only tests change it.
    pub base_url: String,
}

impl Default for FcmSettings {
    fn default() -> Self {
        FcmSettings { service_account_file: String::new(), base_url: "https://fcm.googleapis.com".into() }
    }
}

impl FcmSettings {
    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check_base_url("push.fcm.base_url", &self.base_url)
    }
}

/// What palaver uses of a service-account key file (it holds more).
#[derive(Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: String,
    /// The key's id, sent as the assertion's `kid` (Google's own libraries do).
    #[serde(default)]
    private_key_id: String,
    #[serde(default = "default_token_uri")]
    token_uri: String,
    project_id: String,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".into()
}

/// The token endpoint's answer.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    /// Seconds; Google gives 3599.
    expires_in: u64,
}

/// An access token and when to fetch the next.
struct AccessToken {
    value: String,
    renew_at: Instant,
}

/// The FCM provider.
pub(super) struct Fcm {
    http: reqwest::Client,
    base_url: Url,
    token_uri: Url,
    client_email: String,
    key_id: String,
    project_id: String,
    key: SigningKey,
    /// The access token in use. An async lock: sends that find none wait for the one exchange
    /// in flight rather than each making its own.
    token: tokio::sync::Mutex<Option<AccessToken>>,
}

impl Fcm {
    pub(super) fn new(settings: &FcmSettings, http: reqwest::Client) -> Result<Fcm, String> {
        const KEY: &str = "push.fcm.service_account_file";
        let path = &settings.service_account_file;
        let json = read_file(KEY, path)?;
        let account: ServiceAccount = serde_json::from_slice(&json)
            .map_err(|err| format!("{KEY}: {path} is not a service-account JSON key: {err}"))?;
        let key = SigningKey::rsa_from_pem(account.private_key.as_bytes())
            .map_err(|err| format!("{KEY}: the private_key of {path}: {err}"))?;
        let token_uri = Url::parse(&account.token_uri)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| format!("{KEY}: the token_uri of {path} is not an http(s) URL"))?;
        if account.client_email.is_empty() || account.project_id.is_empty() {
            return Err(format!("{KEY}: {path} has no client_email or no project_id"));
        }
        let base_url = Url::parse(&settings.base_url).map_err(|err| format!("push.fcm.base_url: {err}"))?;
        Ok(Fcm {
            http,
            base_url,
            token_uri,
            client_email: account.client_email,
            key_id: account.private_key_id,
            project_id: account.project_id,
            key,
            token: tokio::sync::Mutex::new(None),
        })
    }

    pub(super) async fn send(&self, device: &DeviceRecord, note: &Notification) -> Outcome {
        // The device's `app` is its Firebase project; devices registered without one go to the
        // service account's.
        let project = if device.app.is_empty() { &self.project_id } else { &device.app };
        let url = match join_path(&self.base_url, &["v1", "projects", project, "messages:send"]) {
            Ok(url) => url,
            Err(err) => return Outcome::Failed(format!("FCM: {err}")),
        };
        let body = match serde_json::to_vec(&message(device, note)) {
            Ok(body) => body,
            Err(err) => return Outcome::Failed(format!("FCM: cannot encode the message: {err}")),
        };
        let token = match self.access_token().await {
            Ok(token) => token,
            Err(outcome) => return outcome,
        };
        let request =
            self.http.post(url).bearer_auth(&token).header(CONTENT_TYPE, "application/json; charset=UTF-8").body(body);
        let Refused { status, after, body: answer } = match send("FCM", request).await {
            Ok(refused) => refused,
            Err(outcome) => return outcome,
        };
        let code = error_code(&answer);
        let detail = code.clone().unwrap_or_else(|| excerpt(&String::from_utf8_lossy(&answer)));
        if status == StatusCode::NOT_FOUND || code.as_deref() == Some("UNREGISTERED") {
            debug!(token = hint(&device.token), %status, "push: FCM says the token is unregistered");
            return Outcome::Unregistered(format!("FCM: {status} {detail}"));
        }
        if status == StatusCode::UNAUTHORIZED && code.as_deref() != Some("THIRD_PARTY_AUTH_ERROR") {
            warn!(%status, detail, "push: FCM refused the access token; fetching a new one");
            self.forget(&token).await;
            return Outcome::Retry { reason: format!("FCM: {status} {detail} (access token refused)"), after: None };
        }
        by_status("FCM", status, after, &detail)
    }

    /// The access token to send with: the one held, or a new one.
    async fn access_token(&self) -> Result<String, Outcome> {
        let mut held = self.token.lock().await;
        if let Some(token) = held.as_ref().filter(|token| Instant::now() < token.renew_at) {
            return Ok(token.value.clone());
        }
        let token = self.exchange().await?;
        let value = token.value.clone();
        *held = Some(token);
        Ok(value)
    }

    /// Forget `token` (unless another has replaced it meanwhile).
    async fn forget(&self, token: &str) {
        let mut held = self.token.lock().await;
        if held.as_ref().is_some_and(|held| held.value == token) {
            *held = None;
        }
    }

    /// A new access token from the token endpoint.
    async fn exchange(&self) -> Result<AccessToken, Outcome> {
        let iat = unix_secs();
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri.as_str(),
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME_SECS,
        });
        let kid = Some(self.key_id.as_str()).filter(|kid| !kid.is_empty());
        let assertion = self
            .key
            .jwt(kid, &claims)
            .map_err(|err| Outcome::Failed(format!("FCM: cannot sign the assertion: {err}")))?;
        let form = form_urlencoded(&[("grant_type", GRANT_TYPE), ("assertion", &assertion)]);
        let started = Instant::now();
        let response = self
            .http
            .post(self.token_uri.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|err| unanswered("FCM token exchange", err))?;
        let status = response.status();
        let after = retry_after(response.headers());
        let answer = response.bytes().await.unwrap_or_default();
        if !status.is_success() {
            let detail = excerpt(&String::from_utf8_lossy(&answer));
            warn!(%status, detail, "push: the FCM token exchange failed");
            // Refused (a revoked or wrong key, a clock far off): only the operator can fix it.
            if matches!(status, StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                return Err(Outcome::Failed(format!("FCM token exchange refused: {status} {detail}")));
            }
            return Err(by_status("FCM token exchange", status, after, &detail));
        }
        let answer: TokenAnswer = serde_json::from_slice(&answer).map_err(|err| Outcome::Retry {
            reason: format!("FCM token exchange: an answer without an access token ({err})"),
            after: None,
        })?;
        let lifetime = Duration::from_secs(answer.expires_in);
        // Renew two minutes early, or halfway through a lifetime shorter than four.
        let renew_in = if lifetime > 2 * RENEW_BEFORE { lifetime - RENEW_BEFORE } else { lifetime / 2 };
        info!(expires_in = answer.expires_in, "push: FCM access token obtained");
        Ok(AccessToken { value: answer.access_token, renew_at: started + renew_in })
    }
}

/// The send request's body.
fn message(device: &DeviceRecord, note: &Notification) -> Value {
    let collapse_id = note.collapse_id();
    let alert = note.kind == NotificationKind::Alert;
    let mut message = json!({
        "token": device.token,
        // FCM takes only strings as data values.
        "data": {
            "room": note.room,
            "seq": note.seq.to_string(),
            "count": note.count.to_string(),
            "badge": note.badge.to_string(),
            "kind": if alert { "alert" } else { "clear" },
        },
        "android": {
            "collapse_key": collapse_id,
            // A clear needs not wake the device at once.
            "priority": if alert { "high" } else { "normal" },
        },
        "apns": {
            "headers": {
                "apns-collapse-id": collapse_id,
                // A clear is a background push on iOS: APNs takes those only at priority 5.
                "apns-push-type": if alert { "alert" } else { "background" },
                "apns-priority": if alert { "10" } else { "5" },
            },
            "payload": {
                "aps": if alert {
                    json!({ "badge": note.badge })
                } else {
                    json!({ "badge": note.badge, "content-available": 1 })
                },
            },
        },
    });
    if alert {
        let (title, body) = title_and_body(note);
        message["notification"] = json!({ "title": title, "body": body });
        // The tag makes a later notification of the room replace the one shown.
        message["android"]["notification"] = json!({ "tag": collapse_id });
    }
    json!({ "message": message })
}

/// The `errorCode` of an FCM error answer's `FcmError` detail, or else its `status`.
fn error_code(answer: &[u8]) -> Option<String> {
    let answer: Value = serde_json::from_slice(answer).ok()?;
    let error = &answer["error"];
    let details = error["details"].as_array().into_iter().flatten();
    details.filter_map(|detail| detail["errorCode"].as_str()).chain(error["status"].as_str()).next().map(str::to_owned)
}

/// `application/x-www-form-urlencoded` (every byte but the unreserved ones percent-encoded).
fn form_urlencoded(pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => char::from(b).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    pairs.iter().map(|(name, value)| format!("{}={}", encode(name), encode(value))).collect::<Vec<_>>().join("&")
}

#[cfg(test)]
mod tests {
    use protocol::Platform;

    use super::*;

    fn device() -> DeviceRecord {
        DeviceRecord {
            id: "d1".into(),
            platform: Platform::Fcm,
            app: "my-chat".into(),
            locale: "en".into(),
            token: "fGx1a2b3c4d5e6f7:APA91bH".into(),
            p256dh: String::new(),
            auth: String::new(),
            created_ms: 0,
            preview: true,
        }
    }

    fn note(kind: NotificationKind) -> Notification {
        Notification {
            kind,
            room: "r_general".into(),
            room_name: "General".into(),
            sender: Some("ada".into()),
            preview: Some("hello".into()),
            count: 2,
            seq: 41,
            badge: 5,
        }
    }

    #[test]
    fn an_alert_has_a_notification_and_a_clear_is_data_only() {
        let alert = message(&device(), &note(NotificationKind::Alert));
        let m = &alert["message"];
        assert_eq!(m["token"], "fGx1a2b3c4d5e6f7:APA91bH");
        assert_eq!(m["notification"], json!({ "title": "General", "body": "ada: hello (+1 more)" }));
        assert_eq!(m["data"], json!({ "room": "r_general", "seq": "41", "count": "2", "badge": "5", "kind": "alert" }));
        assert_eq!(m["android"]["collapse_key"], "r_general");
        assert_eq!(m["android"]["notification"]["tag"], "r_general");
        assert_eq!(m["apns"]["headers"]["apns-collapse-id"], "r_general");
        assert_eq!(m["apns"]["payload"]["aps"]["badge"], 5);

        let clear = message(
            &device(),
            &Notification { sender: None, preview: None, count: 0, ..note(NotificationKind::Clear) },
        );
        let m = &clear["message"];
        assert!(m.get("notification").is_none());
        assert!(m["android"].get("notification").is_none());
        assert_eq!(m["data"]["kind"], "clear");
        assert_eq!(m["apns"]["payload"]["aps"]["content-available"], 1);
    }

    #[test]
    fn error_codes_come_from_the_details_or_the_status() {
        let unregistered = br#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        assert_eq!(error_code(unregistered).as_deref(), Some("UNREGISTERED"));
        assert_eq!(
            error_code(br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}"#).as_deref(),
            Some("RESOURCE_EXHAUSTED")
        );
        assert_eq!(error_code(b"<html>"), None);
    }

    #[test]
    fn the_form_is_percent_encoded() {
        assert_eq!(
            form_urlencoded(&[("grant_type", GRANT_TYPE), ("assertion", "a.b-c_d")]),
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b-c_d"
        );
    }
}
