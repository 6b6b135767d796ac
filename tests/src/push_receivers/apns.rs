//! An APNs receiver, written from Apple's documentation ("Sending notification requests to
//! APNs", "Establishing a token-based connection to APNs", "Handling notification responses
//! from APNs"): HTTP/2 only (here h2c with prior knowledge; APNs itself is TLS with ALPN `h2`).
//!
//! `POST /3/device/<device token>` must carry `authorization: bearer <JWT>` signed ES256 by the
//! team's key (`kid` its key id, `iss` the team id, `iat` within the last hour; else 403
//! `InvalidProviderToken` / `ExpiredProviderToken`), `apns-topic` the app's bundle id
//! (`DeviceTokenNotForTopic`), `apns-push-type` matching the payload (an alert has
//! `aps.alert`; a background push has `content-available: 1`, no alert, and priority 5), a
//! device token of 64+ hex digits (`BadDeviceToken`), an `apns-collapse-id` of at most 64 bytes
//! and a payload of at most 4 KB. An unregistered token gets 410 `Unregistered`. Answers carry
//! an `apns-id`; errors a JSON `reason`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use super::{
    lock, now_secs, random_b64, KeyPair, Planned, Protocol, Receiver, Reply, Request, Response, Service, Steering,
};

/// One push APNs accepted.
#[derive(Debug, Clone)]
pub struct ApnsPush {
    pub device_token: String,
    pub topic: String,
    pub push_type: String,
    pub priority: String,
    pub collapse_id: Option<String>,
    /// Unix seconds.
    pub expiration: Option<u64>,
    pub payload: Value,
    /// The provider token it came with.
    pub jwt: String,
}

/// The APNs side.
pub struct Apns {
    steering: Steering,
    team_id: String,
    key_id: String,
    topic: String,
    trusted: DecodingKey,
    pushes: Mutex<Vec<ApnsPush>>,
    /// Distinct provider tokens accepted, in order of first use.
    tokens: Mutex<Vec<String>>,
    /// Provider tokens to answer `ExpiredProviderToken` from now on.
    expired: Mutex<HashSet<String>>,
    /// Device tokens to answer 400 `BadDeviceToken`.
    bad_tokens: Mutex<HashSet<String>>,
}

impl Receiver<Apns> {
    /// APNs for team `team_id`'s key `key_id` (`trusted`), pushing to app `topic`.
    pub async fn start(team_id: &str, key_id: &str, trusted: &KeyPair, topic: &str) -> anyhow::Result<Receiver<Apns>> {
        let trusted = DecodingKey::from_ec_der(&trusted.public_der);
        Receiver::bind(Protocol::H2c, |_: SocketAddr| Apns {
            steering: Steering::default(),
            team_id: team_id.to_string(),
            key_id: key_id.to_string(),
            topic: topic.to_string(),
            trusted,
            pushes: Mutex::default(),
            tokens: Mutex::default(),
            expired: Mutex::default(),
            bad_tokens: Mutex::default(),
        })
        .await
    }
}

impl Apns {
    /// Pushes accepted, in arrival order.
    pub fn received(&self) -> Vec<ApnsPush> {
        lock(&self.pushes).clone()
    }

    /// The distinct provider tokens accepted so far.
    pub fn provider_tokens(&self) -> Vec<String> {
        lock(&self.tokens).clone()
    }

    /// Answer every provider token seen so far `403 ExpiredProviderToken` from now on.
    pub fn expire_provider_tokens(&self) {
        let seen = lock(&self.tokens).clone();
        lock(&self.expired).extend(seen);
    }

    /// Answer pushes to `device_token` `400 BadDeviceToken` (a token of another environment).
    pub fn bad_device_token(&self, device_token: &str) {
        lock(&self.bad_tokens).insert(device_token.to_string());
    }

    fn refuse(&self, status: u16, reason: &str) -> Reply {
        self.steering.reject(format!("{status} {reason}"));
        Reply::Respond(answer(status, reason))
    }

    /// The provider token, verified; the refusal otherwise.
    fn authenticate(&self, request: &Request) -> Result<String, Reply> {
        let Some(jwt) = request.header("authorization").and_then(|value| value.strip_prefix("bearer ")) else {
            return Err(self.refuse(403, "MissingProviderToken"));
        };
        let header = jsonwebtoken::decode_header(jwt).map_err(|_| self.refuse(403, "InvalidProviderToken"))?;
        if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(&self.key_id) {
            return Err(self.refuse(403, "InvalidProviderToken"));
        }
        // Provider tokens have no `exp`: APNs judges their age by `iat`.
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_required_spec_claims(&["iss"]);
        validation.set_issuer(&[&self.team_id]);
        validation.validate_exp = false;
        let claims = match jsonwebtoken::decode::<Value>(jwt, &self.trusted, &validation) {
            Ok(data) => data.claims,
            Err(_) => return Err(self.refuse(403, "InvalidProviderToken")),
        };
        let Some(iat) = claims["iat"].as_u64() else { return Err(self.refuse(403, "InvalidProviderToken")) };
        if iat > now_secs() + 60 {
            return Err(self.refuse(403, "InvalidProviderToken"));
        }
        if now_secs().saturating_sub(iat) > 3_600 || lock(&self.expired).contains(jwt) {
            return Err(self.refuse(403, "ExpiredProviderToken"));
        }
        let mut tokens = lock(&self.tokens);
        if !tokens.iter().any(|seen| seen == jwt) {
            tokens.push(jwt.to_string());
        }
        Ok(jwt.to_string())
    }
}

impl Service for Apns {
    fn steering(&self) -> &Steering {
        &self.steering
    }

    fn handle(&self, request: Request) -> Reply {
        let Some(device_token) = request.path.strip_prefix("/3/device/") else {
            return self.refuse(404, "BadPath");
        };
        if request.method != "POST" {
            return self.refuse(405, "MethodNotAllowed");
        }
        let jwt = match self.authenticate(&request) {
            Ok(jwt) => jwt,
            Err(reply) => return reply,
        };
        match self.steering.next() {
            Planned::Hang => return Reply::Hang,
            Planned::Fail { status, retry_after } => {
                let reason = match status {
                    429 => "TooManyRequests",
                    503 => "ServiceUnavailable",
                    _ => "InternalServerError",
                };
                let mut response = answer(status, reason);
                if let Some(after) = retry_after {
                    response = response.with_header("retry-after", after);
                }
                return Reply::Respond(response);
            }
            Planned::Serve => {}
        }
        let hex = (64..=200).contains(&device_token.len())
            && device_token.len() % 2 == 0
            && device_token.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex || lock(&self.bad_tokens).contains(device_token) {
            return self.refuse(400, "BadDeviceToken");
        }
        if self.steering.is_unregistered(device_token) {
            let mut body = answer(410, "Unregistered");
            body.body = json!({ "reason": "Unregistered", "timestamp": crate::now_ms() }).to_string().into_bytes();
            return Reply::Respond(body);
        }
        let topic = request.header("apns-topic").unwrap_or_default();
        if topic.is_empty() {
            return self.refuse(400, "MissingTopic");
        }
        if topic != self.topic {
            return self.refuse(400, "DeviceTokenNotForTopic");
        }
        if request.body.len() > 4_096 {
            return self.refuse(413, "PayloadTooLarge");
        }
        let Ok(payload) = serde_json::from_slice::<Value>(&request.body) else {
            return self.refuse(400, "PayloadEmpty");
        };
        let aps = &payload["aps"];
        if !aps.is_object() {
            return self.refuse(400, "PayloadEmpty");
        }
        let push_type = request.header("apns-push-type").unwrap_or_default();
        let priority = request.header("apns-priority").unwrap_or("10");
        if !matches!(priority, "5" | "10" | "1") {
            return self.refuse(400, "BadPriority");
        }
        match push_type {
            "alert" if aps["alert"].is_object() || aps["alert"].is_string() => {}
            // Apple: a background notification has content-available and no alert, badge or
            // sound change is still allowed; it must go at priority 5.
            "background" if aps["content-available"] == 1 && aps.get("alert").is_none() && priority == "5" => {}
            _ => return self.refuse(400, "InvalidPushType"),
        }
        let collapse_id = request.header("apns-collapse-id").map(str::to_string);
        if collapse_id.as_ref().is_some_and(|id| id.len() > 64) {
            return self.refuse(400, "BadCollapseId");
        }
        let expiration = match request.header("apns-expiration") {
            None => None,
            Some(value) => match value.parse::<u64>() {
                Ok(at) => Some(at),
                Err(_) => return self.refuse(400, "BadExpirationDate"),
            },
        };
        lock(&self.pushes).push(ApnsPush {
            device_token: device_token.to_string(),
            topic: topic.to_string(),
            push_type: push_type.to_string(),
            priority: priority.to_string(),
            collapse_id,
            expiration,
            payload,
            jwt,
        });
        Reply::Respond(Response::empty(200).with_header("apns-id", random_b64(16)))
    }
}

/// An APNs answer: a JSON `reason` for an error, and an `apns-id` always.
fn answer(status: u16, reason: &str) -> Response {
    Response::json(status, &json!({ "reason": reason })).with_header("apns-id", random_b64(16))
}
