//! The webhook platform: a self-hosted push gateway (an operator's own bridge to a push service
//! palaver does not speak, or to SMS, e-mail, a pager). The device's token is the gateway's URL.
//!
//! Spec: palaver's own (docs/WEBHOOKS.md for the signature). A push is `POST <token>` with
//! `Content-Type: application/json` and the body
//! `{"device": {"id", "app", "locale"}, "notification": {…}}`, the notification being the
//! [`Notification`] as JSON (kind, room, room_name, sender, preview, count, seq, badge) plus the
//! `title`, `body` and `collapse_id` the other providers show. It is signed like palaver's
//! webhooks: `Palaver-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">` under
//! `[push.webhook] secret` ([`crate::webhooks::signature`]), so a gateway checks it the same way.
//!
//! Answers: 2xx delivered; 410 → the device is gone; 429 and 5xx (and no answer in time) →
//! retry, after `Retry-After` if given; any other status failed. Redirects are not followed.

use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::debug;

use super::{by_status, excerpt, hint, send, title_and_body, unix_secs, Refused};
use super::{Notification, Outcome};
use crate::limits::InvalidSetting;
use crate::store::DeviceRecord;
use crate::webhooks::signature;

/// The `[push.webhook]` section of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookPushSettings {
    /// The key of every push's `Palaver-Signature`, shared with the gateways; empty: the webhook
    /// platform is not configured on this node.
    pub secret: String,
    /// The gateways: a device's URL must start with one of these (e.g.
    /// `https://push-gateway.internal/`). A client chooses its device's URL, so without this
    /// list any user could make the node post to any address it can reach.
    pub url_prefixes: Vec<String>,
}

impl WebhookPushSettings {
    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !self.secret.is_empty() && self.url_prefixes.is_empty() {
            return Err(InvalidSetting::new(
                "push.webhook.url_prefixes",
                "name the gateway URLs devices may use (the webhook platform is on: push.webhook.secret is set)",
            ));
        }
        for prefix in &self.url_prefixes {
            // A prefix ends its host part, so `https://gw.internal` cannot admit
            // `https://gw.internal.attacker.example/`.
            let host_ended = prefix
                .strip_prefix("https://")
                .or_else(|| prefix.strip_prefix("http://"))
                .is_some_and(|rest| rest.contains('/'));
            if !host_ended {
                return Err(InvalidSetting::new(
                    "push.webhook.url_prefixes",
                    "each is an http:// or https:// URL whose host part ends with `/`",
                ));
            }
        }
        Ok(())
    }

    /// Whether a device's gateway URL is one of the configured gateways'.
    pub fn allows(&self, url: &str) -> bool {
        self.url_prefixes.iter().any(|prefix| url.starts_with(prefix.as_str()))
    }
}

/// The webhook provider.
pub(super) struct Webhook {
    http: reqwest::Client,
    secret: String,
    settings: WebhookPushSettings,
}

impl Webhook {
    pub(super) fn new(settings: &WebhookPushSettings, http: reqwest::Client) -> Webhook {
        Webhook { http, secret: settings.secret.clone(), settings: settings.clone() }
    }

    pub(super) async fn send(&self, device: &DeviceRecord, note: &Notification) -> Outcome {
        if !self.settings.allows(&device.token) {
            return Outcome::Failed(format!(
                "webhook: the device's URL (…{}) is not under push.webhook.url_prefixes",
                hint(&device.token)
            ));
        }
        let body = match serde_json::to_vec(&body(device, note)) {
            Ok(body) => body,
            Err(err) => return Outcome::Failed(format!("webhook: cannot encode the push: {err}")),
        };
        let signed = signature::sign(&self.secret, unix_secs(), &body);
        let request = self
            .http
            .post(&device.token)
            .header(signature::HEADER, signed)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        let Refused { status, after, body: answer } = match send("webhook", request).await {
            Ok(refused) => refused,
            Err(outcome) => return outcome,
        };
        let detail = excerpt(&String::from_utf8_lossy(&answer));
        if status == StatusCode::GONE {
            debug!(token = hint(&device.token), "push: the webhook gateway says the device is gone");
            return Outcome::Unregistered(format!("webhook: {status}"));
        }
        by_status("webhook", status, after, &detail)
    }
}

/// The request's JSON.
fn body(device: &DeviceRecord, note: &Notification) -> Value {
    let mut notification = serde_json::to_value(note).unwrap_or_else(|_| json!({}));
    let (title, body) = title_and_body(note);
    if let Value::Object(fields) = &mut notification {
        fields.insert("title".into(), title.into());
        fields.insert("body".into(), body.into());
        fields.insert("collapse_id".into(), note.collapse_id().into());
    }
    json!({
        "device": { "id": device.id, "app": device.app, "locale": device.locale },
        "notification": notification,
    })
}

#[cfg(test)]
mod tests {
    use protocol::Platform;

    use super::*;
    use crate::push::notification::NotificationKind;

    #[test]
    fn gateways_are_named_by_prefixes_that_end_their_host() {
        let on = |prefixes: &[&str]| WebhookPushSettings {
            secret: "s".into(),
            url_prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        };
        assert_eq!(WebhookPushSettings::default().validate(), Ok(()), "off: nothing to name");
        assert_eq!(on(&[]).validate().unwrap_err().key, "push.webhook.url_prefixes");
        assert_eq!(on(&["https://gw.internal"]).validate().unwrap_err().key, "push.webhook.url_prefixes");
        assert_eq!(on(&["ftp://gw.internal/"]).validate().unwrap_err().key, "push.webhook.url_prefixes");
        let settings = on(&["https://gw.internal/push/", "http://10.0.0.7:8080/"]);
        assert_eq!(settings.validate(), Ok(()));
        assert!(settings.allows("https://gw.internal/push/devices/1"));
        assert!(settings.allows("http://10.0.0.7:8080/x"));
        assert!(!settings.allows("https://gw.internal.attacker.example/push/"));
        assert!(!settings.allows("http://169.254.169.254/latest/meta-data/"));
    }

    #[test]
    fn the_body_carries_the_device_and_the_notification() {
        let device = DeviceRecord {
            id: "d1".into(),
            platform: Platform::Webhook,
            app: "chat".into(),
            locale: "de".into(),
            token: "https://gateway.example.com/push".into(),
            p256dh: String::new(),
            auth: String::new(),
            created_ms: 0,
            preview: true,
        };
        let note = Notification {
            kind: NotificationKind::Alert,
            room: "r1".into(),
            room_name: "Room".into(),
            sender: Some("ada".into()),
            preview: None,
            count: 1,
            seq: 7,
            badge: 2,
        };
        assert_eq!(
            body(&device, &note),
            json!({
                "device": { "id": "d1", "app": "chat", "locale": "de" },
                "notification": {
                    "kind": "alert", "room": "r1", "room_name": "Room", "sender": "ada", "preview": null,
                    "count": 1, "seq": 7, "badge": 2,
                    "title": "Room", "body": "New message from ada", "collapse_id": "r1",
                },
            })
        );
    }
}
