//! Push providers: each turns a [`Notification`] into its push service's request, and the
//! service's answer into an [`Outcome`] the push worker acts on (done, drop the device, try
//! again later, give up).
//!
//! - [`fcm`]: Firebase Cloud Messaging, HTTP v1 API, with OAuth 2.0 service-account tokens.
//! - [`apns`]: Apple Push Notification service over HTTP/2 with token (JWT) authentication.
//! - [`webpush`]: Web Push (RFC 8030), encrypted with aes128gcm (RFC 8291), identified by VAPID
//!   (RFC 8292).
//! - [`webhook`]: a self-hosted gateway: JSON signed the way palaver's webhooks are.
//!
//! Each provider is configured on its own (`[push.fcm]`, `[push.apns]`, `[push.webpush]`,
//! `[push.webhook]`); a device whose platform is not configured on this node fails without a
//! request. Keys are read and checked when the providers are built, so a wrong file is a
//! start-up error naming its setting, not a failure at the first push.
//!
//! Device tokens are credentials (whoever holds one can push to the device), so nothing here
//! logs or returns more than their last 6 characters; reqwest's errors name the URL, which for
//! Web Push and webhooks is the token, so they are stripped of it before they go anywhere.

pub mod apns;
pub mod fcm;
mod keys;
pub mod webhook;
pub mod webpush;

use std::error::Error as _;
use std::time::{Duration, SystemTime};

use protocol::Platform;
use serde::{Deserialize, Serialize};

pub use apns::ApnsSettings;
pub use fcm::FcmSettings;
pub use webhook::WebhookPushSettings;
pub use webpush::WebPushSettings;

use super::notification::Notification;
use crate::limits::InvalidSetting;
use crate::store::DeviceRecord;

/// The longest pause a `Retry-After` may ask for: a provider asking for more is still retried
/// within the hour rather than holding a device's pushes back for a day.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);

/// The `User-Agent` of every push request.
const USER_AGENT: &str = concat!("palaver-push/", env!("CARGO_PKG_VERSION"));

/// Longest excerpt of a provider's error body kept in an outcome's reason.
const EXCERPT_CHARS: usize = 200;

/// What became of one push to one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted it.
    Delivered,
    /// The provider says the token is no longer valid (FCM UNREGISTERED / 404, APNs 410
    /// Unregistered or 400 BadDeviceToken, Web Push 404/410, webhook 410): the caller removes
    /// the device.
    Unregistered(String),
    /// Try again later (429, 5xx, timeouts, connection refused); `after` from Retry-After if
    /// given (seconds or HTTP-date), capped at 1 hour.
    Retry { reason: String, after: Option<Duration> },
    /// Will never succeed (other 4xx, provider not configured on this node, bad key): counted
    /// and logged, not retried.
    Failed(String),
}

/// The `[push]` providers' sections of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSettings {
    pub fcm: FcmSettings,
    pub apns: ApnsSettings,
    pub webpush: WebPushSettings,
    pub webhook: WebhookPushSettings,
}

impl ProviderSettings {
    /// Check the values (not the files they name: [`Providers::new`] reads those); the error
    /// names the key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.fcm.validate()?;
        self.apns.validate()?;
        self.webpush.validate()?;
        self.webhook.validate()
    }
}

/// The providers configured on this node, ready to send.
pub struct Providers {
    fcm: Option<fcm::Fcm>,
    apns: Option<apns::Apns>,
    webpush: Option<webpush::WebPush>,
    webhook: Option<webhook::Webhook>,
}

impl Providers {
    /// Build from settings; an Err names the setting that is wrong (e.g. an unreadable key file).
    /// `timeout` bounds each request (connecting included), the FCM token exchange too.
    pub fn new(settings: &ProviderSettings, timeout: Duration) -> Result<Providers, String> {
        settings.validate().map_err(|err| err.to_string())?;
        // One client (and its connection pool) for FCM, Web Push and webhooks; APNs has its own,
        // which speaks nothing but HTTP/2. Built only when one of them is configured: a node
        // without push needs no TLS roots (a bare container may have none).
        let wanted = !settings.fcm.service_account_file.is_empty()
            || !settings.webpush.vapid_key_file.is_empty()
            || !settings.webhook.secret.is_empty();
        let http = if wanted {
            let client = reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(USER_AGENT)
                .build()
                .map_err(|err| format!("cannot build the HTTP client: {err}"))?;
            Some(client)
        } else {
            None
        };
        let fcm = match &http {
            Some(http) if !settings.fcm.service_account_file.is_empty() => {
                Some(fcm::Fcm::new(&settings.fcm, http.clone())?)
            }
            _ => None,
        };
        let apns =
            if settings.apns.key_file.is_empty() { None } else { Some(apns::Apns::new(&settings.apns, timeout)?) };
        let webpush = match &http {
            Some(http) if !settings.webpush.vapid_key_file.is_empty() => {
                Some(webpush::WebPush::new(&settings.webpush, http.clone())?)
            }
            _ => None,
        };
        let webhook = match http {
            Some(http) if !settings.webhook.secret.is_empty() => Some(webhook::Webhook::new(&settings.webhook, http)),
            _ => None,
        };
        Ok(Providers { fcm, apns, webpush, webhook })
    }

    /// Whether `platform`'s provider is configured on this node.
    pub fn is_configured(&self, platform: Platform) -> bool {
        match platform {
            Platform::Fcm => self.fcm.is_some(),
            Platform::Apns => self.apns.is_some(),
            Platform::Webpush => self.webpush.is_some(),
            Platform::Webhook => self.webhook.is_some(),
        }
    }

    /// The VAPID public key (the uncompressed P-256 point, base64url without padding): the
    /// `applicationServerKey` a web client subscribes with. `None` without Web Push.
    pub fn vapid_public_key(&self) -> Option<String> {
        self.webpush.as_ref().map(|webpush| webpush.public_key().to_owned())
    }

    /// Send `note` to `device` through its platform's provider.
    pub async fn send(&self, device: &DeviceRecord, note: &Notification) -> Outcome {
        let not_configured = |name: &str| Outcome::Failed(format!("{name} is not configured"));
        match device.platform {
            Platform::Fcm => match &self.fcm {
                Some(fcm) => fcm.send(device, note).await,
                None => not_configured("FCM"),
            },
            Platform::Apns => match &self.apns {
                Some(apns) => apns.send(device, note).await,
                None => not_configured("APNs"),
            },
            Platform::Webpush => match &self.webpush {
                Some(webpush) => webpush.send(device, note).await,
                None => not_configured("Web Push"),
            },
            Platform::Webhook => match &self.webhook {
                Some(webhook) => webhook.send(device, note).await,
                None => not_configured("the webhook platform"),
            },
        }
    }
}

/// The last 6 characters of a token: all that logs and reasons may show of it.
pub(crate) fn hint(token: &str) -> &str {
    let start = token.char_indices().rev().nth(5).map_or(0, |(at, _)| at);
    &token[start..]
}

/// Seconds since the Unix epoch.
fn unix_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A provider's answer other than a success: what each provider reads its meaning from.
struct Refused {
    status: reqwest::StatusCode,
    /// The pause its `Retry-After` asks for.
    after: Option<Duration>,
    body: bytes::Bytes,
}

/// Send a provider's request: `Ok` with the answer when the provider refused it, for the
/// provider to read; `Err` with the outcome when nothing is left to read: accepted
/// ([`Outcome::Delivered`]), or not answered ([`unanswered`]).
async fn send(provider: &str, request: reqwest::RequestBuilder) -> Result<Refused, Outcome> {
    let response = request.send().await.map_err(|err| unanswered(provider, err))?;
    let status = response.status();
    if status.is_success() {
        return Err(Outcome::Delivered);
    }
    let after = retry_after(response.headers());
    Ok(Refused { status, after, body: response.bytes().await.unwrap_or_default() })
}

/// The pause a `Retry-After` header asks for, if any (capped at [`MAX_RETRY_AFTER`]).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, SystemTime::now())
}

/// RFC 9110 §10.2.3: `Retry-After` is either a number of seconds or an HTTP-date (a date in the
/// past means "now").
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let after = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(after.min(MAX_RETRY_AFTER))
}

/// The outcome of a request that got no answer: whatever went wrong on the way (refused,
/// reset, timed out) may go right later, except a request that could not even be built (a
/// URL reqwest does not take), which never will.
fn unanswered(provider: &str, err: reqwest::Error) -> Outcome {
    let builder = err.is_builder();
    let timeout = err.is_timeout();
    // The chain of causes says what happened ("connection refused"); the URL is dropped, as it
    // may be the device's token.
    let err = err.without_url();
    let mut reason = format!("{provider}: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        reason.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    if builder {
        return Outcome::Failed(reason);
    }
    if timeout && !reason.contains("timed out") {
        reason.push_str(" (timed out)");
    }
    Outcome::Retry { reason, after: None }
}

/// The outcome of an answer no provider gives a special meaning to: 429 and 5xx may pass,
/// anything else will not.
fn by_status(provider: &str, status: reqwest::StatusCode, after: Option<Duration>, detail: &str) -> Outcome {
    let reason =
        if detail.is_empty() { format!("{provider}: {status}") } else { format!("{provider}: {status} {detail}") };
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Outcome::Retry { reason, after }
    } else {
        Outcome::Failed(reason)
    }
}

/// At most [`EXCERPT_CHARS`] of a provider's answer, on one line.
fn excerpt(text: &str) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(EXCERPT_CHARS) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

/// A title or body cut to at most `max` bytes (on a character boundary), so that every
/// provider's payload limit (4 KB) holds whatever the room's name or the preview.
fn shortened(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The most a notification's title may take, in bytes.
const TITLE_MAX_BYTES: usize = 256;
/// The most a notification's body may take, in bytes.
const BODY_MAX_BYTES: usize = 1_024;

/// The notification's title and body, shortened to fit every provider.
fn title_and_body(note: &Notification) -> (String, String) {
    (shortened(note.title(), TITLE_MAX_BYTES), shortened(note.body(), BODY_MAX_BYTES))
}

/// A setting that must be an `http` or `https` URL with a host.
fn check_base_url(key: &'static str, value: &str) -> Result<(), InvalidSetting> {
    let url = reqwest::Url::parse(value).map_err(|err| InvalidSetting::new(key, format!("is not a URL: {err}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(InvalidSetting::new(key, "must be an http:// or https:// URL"));
    }
    Ok(())
}

/// `base` with `segments` appended to its path, each escaped as one segment.
fn join_path(base: &reqwest::Url, segments: &[&str]) -> Result<reqwest::Url, String> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| "the base URL cannot take a path".to_string())?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now), Some(Duration::from_secs(30)));
        // The obsolete forms RFC 9110 still asks recipients to accept.
        assert_eq!(parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("Wed Oct 21 07:28:10 2015", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO), "a date past");
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Thu, 22 Oct 2015 07:28:00 GMT", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn a_hint_is_the_last_six_characters() {
        assert_eq!(hint("abcdef0123456789"), "456789");
        assert_eq!(hint("abc"), "abc");
        assert_eq!(hint("ééééééééé"), "éééééé");
    }

    #[test]
    fn statuses_without_a_special_meaning() {
        let after = Some(Duration::from_secs(3));
        assert_eq!(
            by_status("X", reqwest::StatusCode::TOO_MANY_REQUESTS, after, ""),
            Outcome::Retry { reason: "X: 429 Too Many Requests".into(), after }
        );
        assert!(matches!(by_status("X", reqwest::StatusCode::BAD_GATEWAY, None, ""), Outcome::Retry { .. }));
        assert!(matches!(by_status("X", reqwest::StatusCode::PAYLOAD_TOO_LARGE, None, ""), Outcome::Failed(_)));
        assert!(matches!(by_status("X", reqwest::StatusCode::FOUND, None, ""), Outcome::Failed(_)));
    }

    #[test]
    fn long_texts_are_shortened_on_a_character_boundary() {
        assert_eq!(shortened("short".into(), 10), "short");
        let cut = shortened("é".repeat(100), 11);
        assert!(cut.len() <= 11 && cut.ends_with('…'), "{cut}");
        assert_eq!(excerpt("a\n  b"), "a b");
        assert_eq!(excerpt(&"x".repeat(500)).chars().count(), EXCERPT_CHARS + 1);
    }

    #[test]
    fn sections_take_their_keys_with_defaults_and_refuse_others() {
        let settings: ProviderSettings = serde_json::from_value(serde_json::json!({
            "fcm": { "service_account_file": "/etc/palaver/fcm.json" },
            "webpush": { "ttl_secs": 60 },
        }))
        .unwrap();
        assert_eq!(settings.fcm.service_account_file, "/etc/palaver/fcm.json");
        assert_eq!(settings.fcm.base_url, "https://fcm.googleapis.com");
        assert_eq!(settings.apns.base_url, "https://api.push.apple.com");
        assert_eq!(settings.webpush.subject, "mailto:admin@localhost");
        assert_eq!(settings.webpush.ttl_secs, 60);
        assert_eq!(settings.webhook.secret, "");
        let unknown = serde_json::from_value::<ProviderSettings>(serde_json::json!({ "apns": { "key": "x" } }));
        assert!(unknown.unwrap_err().to_string().contains("unknown field `key`"));
    }

    #[test]
    fn settings_default_to_nothing_configured() {
        let settings = ProviderSettings::default();
        settings.validate().unwrap();
        let providers = Providers::new(&settings, Duration::from_secs(1)).unwrap();
        assert!(Platform::ALL.iter().all(|p| !providers.is_configured(*p)));
        assert_eq!(providers.vapid_public_key(), None);
    }
}
