//! A push gateway for the webhook platform, written from palaver's description of it
//! (`actors::push::providers::webhook`): `POST` of JSON `{"device": {...}, "notification":
//! {...}}` signed in `Palaver-Signature` with the shared secret, checked with
//! `actors::webhooks::signature::verify` and five minutes of tolerance (else 401). Any path of
//! the receiver is a device's URL ([`Webhook::device_url`]); one unregistered gets 410.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use actors::webhooks::signature;
use serde_json::Value;

use super::{lock, now_secs, Planned, Protocol, Receiver, Reply, Request, Response, Service, Steering};

/// One push the gateway accepted.
#[derive(Debug, Clone)]
pub struct WebhookPush {
    /// The device URL it was posted to.
    pub url: String,
    pub body: Value,
    /// When it arrived, ms since the Unix epoch.
    pub arrived_ms: u64,
}

/// The gateway side.
pub struct Webhook {
    steering: Steering,
    origin: String,
    secret: String,
    pushes: Mutex<Vec<WebhookPush>>,
    /// Pushes accepted (all of them, kept or not).
    accepted: AtomicUsize,
    /// Keep only each push's (room, seq, arrival), not its body: the benchmark's gateway.
    count_only: AtomicBool,
    arrivals: Mutex<Vec<(String, u64, u64)>>,
}

impl Receiver<Webhook> {
    /// A gateway sharing `secret` with palaver.
    pub async fn start(secret: &str) -> anyhow::Result<Receiver<Webhook>> {
        Receiver::bind(Protocol::Http1, |addr: SocketAddr| Webhook {
            steering: Steering::default(),
            origin: format!("http://{addr}"),
            secret: secret.to_string(),
            pushes: Mutex::default(),
            accepted: AtomicUsize::new(0),
            count_only: AtomicBool::new(false),
            arrivals: Mutex::default(),
        })
        .await
    }
}

impl Webhook {
    /// The URL a device named `name` registers as its token.
    pub fn device_url(&self, name: &str) -> String {
        format!("{}/devices/{name}", self.origin)
    }

    /// Pushes accepted, in arrival order (none kept after [`Self::count_only`]).
    pub fn received(&self) -> Vec<WebhookPush> {
        lock(&self.pushes).clone()
    }

    /// From now on keep only what [`Self::arrivals`] gives, not whole pushes.
    pub fn count_only(&self) {
        self.count_only.store(true, Ordering::Relaxed);
    }

    /// How many pushes were accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// (room, seq, arrival ms) of every push accepted in count-only mode, in arrival order.
    pub fn arrivals(&self) -> Vec<(String, u64, u64)> {
        lock(&self.arrivals).clone()
    }

    fn refuse(&self, status: u16, why: &str) -> Reply {
        self.steering.reject(format!("{status} {why}"));
        Reply::Respond(Response::json(status, &serde_json::json!({ "error": why })))
    }
}

impl Service for Webhook {
    fn steering(&self) -> &Steering {
        &self.steering
    }

    fn handle(&self, request: Request) -> Reply {
        if request.method != "POST" {
            return Reply::Respond(Response::empty(405));
        }
        let header = request.header(signature::HEADER).unwrap_or_default();
        if !signature::verify(&self.secret, header, &request.body, now_secs(), 300) {
            return self.refuse(401, "the signature does not verify");
        }
        let url = format!("{}{}", self.origin, request.path);
        if self.steering.is_unregistered(&url) {
            return Reply::Respond(Response::empty(410));
        }
        match self.steering.next() {
            Planned::Hang => return Reply::Hang,
            Planned::Fail { status, retry_after } => {
                let mut response = Response::empty(status);
                if let Some(after) = retry_after {
                    response = response.with_header("retry-after", after);
                }
                return Reply::Respond(response);
            }
            Planned::Serve => {}
        }
        if !request.header("content-type").unwrap_or_default().starts_with("application/json") {
            return self.refuse(415, "not application/json");
        }
        let Ok(body) = serde_json::from_slice::<Value>(&request.body) else { return self.refuse(400, "not JSON") };
        let device_ok = ["id", "app", "locale"].iter().all(|key| body["device"][key].is_string());
        let note = &body["notification"];
        let note_ok = ["kind", "room", "title", "body", "collapse_id"].iter().all(|key| note[key].is_string())
            && ["count", "seq", "badge"].iter().all(|key| note[key].is_u64());
        if !device_ok || !note_ok {
            return self.refuse(400, "the body lacks device or notification fields");
        }
        let arrived_ms = crate::now_ms();
        self.accepted.fetch_add(1, Ordering::Relaxed);
        if self.count_only.load(Ordering::Relaxed) {
            let room = note["room"].as_str().unwrap_or_default().to_string();
            lock(&self.arrivals).push((room, note["seq"].as_u64().unwrap_or_default(), arrived_ms));
        } else {
            lock(&self.pushes).push(WebhookPush { url, body, arrived_ms });
        }
        Reply::Respond(Response::empty(204))
    }
}
