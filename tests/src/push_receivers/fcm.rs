//! An FCM receiver, written from Google's documentation: the OAuth 2.0 token endpoint of a
//! service account ("Using OAuth 2.0 for Server to Server Applications", the JWT bearer grant)
//! and the FCM HTTP v1 `projects.messages.send` method with its error codes.
//!
//! `POST /token` takes `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`
//! and checks the assertion as Google does: RS256 under the service account's public key, `iss`
//! its client email, `aud` this token URI, `scope` naming firebase.messaging, `exp` in the
//! future and at most an hour after `iat`. A good one gets a random access token
//! (`expires_in` 3599); a bad one 400 `invalid_grant`.
//!
//! `POST /v1/projects/<project>/messages:send` takes a bearer access token this receiver issued
//! (else 401 `UNAUTHENTICATED`) for its own project (else 403 `PERMISSION_DENIED`) and a
//! `message` of the documented shape: a `token`, `data` whose values are all strings, a
//! `notification` of strings if any, Android's collapse key and APNs' collapse id (else 400
//! `INVALID_ARGUMENT`). An unregistered token gets 404 with the `UNREGISTERED` error code.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use super::{
    lock, now_secs, random_b64, KeyPair, Planned, Protocol, Receiver, Reply, Request, Response, Service, Steering,
};

/// The scope the assertion must ask for.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// One message FCM accepted.
#[derive(Debug, Clone)]
pub struct FcmMessage {
    /// The project of the URL.
    pub project: String,
    /// The request's `message`.
    pub message: Value,
}

/// The FCM side.
pub struct Fcm {
    steering: Steering,
    project_id: String,
    client_email: String,
    token_uri: String,
    trusted: DecodingKey,
    /// Access tokens issued and not revoked.
    issued: Mutex<HashSet<String>>,
    exchanges: AtomicU64,
    messages: Mutex<Vec<FcmMessage>>,
}

impl Receiver<Fcm> {
    /// FCM for `project_id`, whose service account `client_email` signs with `trusted`'s key.
    pub async fn start(project_id: &str, client_email: &str, trusted: &KeyPair) -> anyhow::Result<Receiver<Fcm>> {
        let trusted = DecodingKey::from_rsa_der(&trusted.public_der);
        Receiver::bind(Protocol::Http1, |addr: SocketAddr| Fcm {
            steering: Steering::default(),
            project_id: project_id.to_string(),
            client_email: client_email.to_string(),
            token_uri: format!("http://{addr}/token"),
            trusted,
            issued: Mutex::default(),
            exchanges: AtomicU64::new(0),
            messages: Mutex::default(),
        })
        .await
    }
}

impl Fcm {
    /// The service-account JSON key file of `client_email` with `key` (the one trusted, or
    /// another to be refused), its `token_uri` this receiver.
    pub fn service_account_json(&self, key: &KeyPair) -> String {
        json!({
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": "0123456789abcdef0123456789abcdef01234567",
            "private_key": key.private_pem,
            "client_email": self.client_email,
            "client_id": "100000000000000000000",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
        })
        .to_string()
    }

    /// Messages accepted, in arrival order.
    pub fn received(&self) -> Vec<FcmMessage> {
        lock(&self.messages).clone()
    }

    /// Access tokens issued so far.
    pub fn token_exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
    }

    /// Revoke every access token issued: the next send with one gets 401.
    pub fn revoke_access_tokens(&self) {
        lock(&self.issued).clear();
    }

    fn token(&self, request: &Request) -> Response {
        let form = parse_form(&String::from_utf8_lossy(&request.body));
        let field = |name: &str| form.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
        if !request.header("content-type").unwrap_or_default().starts_with("application/x-www-form-urlencoded") {
            return self.refuse_grant("invalid_request", "the body is not application/x-www-form-urlencoded");
        }
        if field("grant_type") != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
            return self.refuse_grant("unsupported_grant_type", "Invalid grant_type");
        }
        let Some(assertion) = field("assertion") else { return self.refuse_grant("invalid_request", "no assertion") };
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[&self.token_uri]);
        validation.set_issuer(&[&self.client_email]);
        validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
        validation.leeway = 0;
        let claims = match jsonwebtoken::decode::<Value>(assertion, &self.trusted, &validation) {
            Ok(data) => data.claims,
            Err(err) => return self.refuse_grant("invalid_grant", &format!("Invalid JWT: {err}")),
        };
        let scopes = claims["scope"].as_str().unwrap_or_default();
        if !scopes.split(' ').any(|scope| scope == SCOPE) {
            return self.refuse_grant("invalid_scope", "the assertion does not ask for firebase.messaging");
        }
        let (iat, exp) = (claims["iat"].as_u64().unwrap_or(0), claims["exp"].as_u64().unwrap_or(0));
        if exp <= iat || exp - iat > 3_600 || iat > now_secs() + 60 {
            return self.refuse_grant(
                "invalid_grant",
                "Invalid JWT: iat and exp must be at most an hour apart, iat not ahead",
            );
        }
        let access_token = format!("ya29.{}", random_b64(32));
        lock(&self.issued).insert(access_token.clone());
        self.exchanges.fetch_add(1, Ordering::Relaxed);
        Response::json(200, &json!({ "access_token": access_token, "expires_in": 3599, "token_type": "Bearer" }))
    }

    fn refuse_grant(&self, error: &str, description: &str) -> Response {
        self.steering.reject(format!("token: {error}: {description}"));
        Response::json(400, &json!({ "error": error, "error_description": description }))
    }

    fn send(&self, request: &Request, project: &str) -> Reply {
        let bearer = request.header("authorization").and_then(|value| value.strip_prefix("Bearer "));
        if !bearer.is_some_and(|token| lock(&self.issued).contains(token)) {
            self.steering.reject("send: no valid access token");
            return Reply::Respond(error(
                401,
                "UNAUTHENTICATED",
                None,
                "Request had invalid authentication credentials.",
            ));
        }
        if project != self.project_id {
            self.steering.reject(format!("send: project {project}"));
            return Reply::Respond(error(403, "PERMISSION_DENIED", None, "Permission denied on the project."));
        }
        match self.steering.next() {
            Planned::Hang => return Reply::Hang,
            Planned::Fail { status, retry_after } => {
                let (name, code) = match status {
                    429 => ("RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED")),
                    503 => ("UNAVAILABLE", Some("UNAVAILABLE")),
                    500 => ("INTERNAL", Some("INTERNAL")),
                    _ => ("UNKNOWN", None),
                };
                let mut response = error(status, name, code, "injected failure");
                if let Some(after) = retry_after {
                    response = response.with_header("retry-after", after);
                }
                return Reply::Respond(response);
            }
            Planned::Serve => {}
        }
        let body: Value = match serde_json::from_slice(&request.body) {
            Ok(body) => body,
            Err(err) => return Reply::Respond(self.invalid(&format!("the body is not JSON: {err}"))),
        };
        let message = &body["message"];
        if let Err(problem) = check_message(message) {
            return Reply::Respond(self.invalid(&problem));
        }
        let token = message["token"].as_str().unwrap_or_default();
        if self.steering.is_unregistered(token) {
            return Reply::Respond(error(404, "NOT_FOUND", Some("UNREGISTERED"), "Requested entity was not found."));
        }
        let mut messages = lock(&self.messages);
        messages.push(FcmMessage { project: project.to_string(), message: message.clone() });
        let name = format!("projects/{project}/messages/{}", messages.len());
        Reply::Respond(Response::json(200, &json!({ "name": name })))
    }

    fn invalid(&self, problem: &str) -> Response {
        self.steering.reject(format!("send: {problem}"));
        error(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"), problem)
    }
}

impl Service for Fcm {
    fn steering(&self) -> &Steering {
        &self.steering
    }

    fn handle(&self, request: Request) -> Reply {
        if request.method != "POST" {
            return Reply::Respond(Response::empty(405));
        }
        if request.path == "/token" {
            return Reply::Respond(self.token(&request));
        }
        let project = request.path.strip_prefix("/v1/projects/").and_then(|rest| rest.strip_suffix("/messages:send"));
        match project {
            Some(project) if !project.is_empty() && !project.contains('/') => self.send(&request, project),
            _ => Reply::Respond(error(404, "NOT_FOUND", None, "no such method")),
        }
    }
}

/// The documented shape of what palaver sends: one target (`token`), string data, and the
/// collapse settings for both platforms.
fn check_message(message: &Value) -> Result<(), String> {
    let fields = message.as_object().ok_or("no `message` object")?;
    if message["token"].as_str().is_none_or(str::is_empty) {
        return Err("`message.token` must be a non-empty string".into());
    }
    if fields.contains_key("topic") || fields.contains_key("condition") {
        return Err("a message has exactly one target".into());
    }
    let data = message["data"].as_object().ok_or("`message.data` must be a map")?;
    if let Some((key, _)) = data.iter().find(|(_, value)| !value.is_string()) {
        return Err(format!("`message.data.{key}` must be a string"));
    }
    if let Some(notification) = fields.get("notification") {
        let strings = ["title", "body"].iter().all(|key| notification.get(*key).is_none_or(Value::is_string));
        if !strings || !notification.is_object() {
            return Err("`message.notification` title and body must be strings".into());
        }
    }
    if !message["android"]["collapse_key"].is_string() {
        return Err("`message.android.collapse_key` is missing".into());
    }
    if message["apns"]["headers"]["apns-collapse-id"].as_str().is_none_or(|id| id.len() > 64) {
        return Err("`message.apns.headers.apns-collapse-id` is missing or too long".into());
    }
    if !message["apns"]["payload"]["aps"].is_object() {
        return Err("`message.apns.payload.aps` is missing".into());
    }
    Ok(())
}

/// An FCM error answer (google.rpc.Status, with an FcmError detail when `code` is given).
fn error(status: u16, name: &str, code: Option<&str>, message: &str) -> Response {
    let mut error = json!({ "code": status, "message": message, "status": name });
    if let Some(code) = code {
        error["details"] =
            json!([{ "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code }]);
    }
    Response::json(status, &json!({ "error": error }))
}

/// `application/x-www-form-urlencoded` pairs.
fn parse_form(body: &str) -> Vec<(String, String)> {
    let decode = |text: &str| -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                    match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                        Some(byte) => {
                            out.push(byte);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                byte => out.push(byte),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}
