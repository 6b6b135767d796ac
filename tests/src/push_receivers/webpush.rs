//! A Web Push receiver, written from RFC 8030 (the push service), RFC 8291 (message encryption)
//! and RFC 8292 (VAPID): a push service and the browser behind it in one.
//!
//! [`WebPush::subscribe`] does what a browser's `pushManager.subscribe()` does: it makes a
//! P-256 key pair and a 16-byte auth secret and hands out the endpoint
//! (`http://127.0.0.1:<port>/push/<id>`) with the public key and the secret, optionally
//! restricted to an application server key (RFC 8292 §4.2, the `applicationServerKey`).
//!
//! A push, `POST /push/<id>`, must carry `Authorization: vapid t=<JWT>, k=<key>` whose JWT is
//! signed ES256 by `k`, with `aud` this origin, `exp` in the future and at most 24 hours ahead,
//! and a `sub` (`mailto:` or `https:`) (else 401), and for a restricted subscription `k` its
//! key (else 403); a `TTL` (else 400), `Content-Encoding: aes128gcm`, and `Urgency` and `Topic`
//! of the RFC's forms if present. Its body must be at most 4096 bytes and decrypt, as the
//! browser would, with the subscription's private key and auth secret (else 400): one record,
//! the key id being the sender's public key, ending in the last-record delimiter. What
//! decrypts is kept; the answer is 201 with a `Location`. An unknown endpoint gets 404, an
//! unregistered one 410.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, ECDH_P256};
use aws_lc_rs::hkdf::{self, HKDF_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::{lock, now_secs, Planned, Protocol, Receiver, Reply, Request, Response, Service, Steering};

/// A subscription as the browser gives it to the application (`PushSubscription.toJSON()`).
#[derive(Debug, Clone)]
pub struct Subscription {
    pub endpoint: String,
    /// The browser's public key, base64url.
    pub p256dh: String,
    /// The auth secret, base64url.
    pub auth: String,
}

/// One push that arrived, verified and decrypted.
#[derive(Debug, Clone)]
pub struct WebPushMessage {
    pub endpoint: String,
    pub ttl: u64,
    pub urgency: Option<String>,
    pub topic: Option<String>,
    /// What the browser's service worker would get.
    pub plaintext: Vec<u8>,
    /// The VAPID token's claims, and its `k`.
    pub vapid_claims: Value,
    pub vapid_key: String,
}

struct Subscriber {
    private: PrivateKey,
    auth: Vec<u8>,
    /// The application server key it is restricted to.
    server_key: Option<Vec<u8>>,
}

/// The push service (and browser) side.
pub struct WebPush {
    steering: Steering,
    origin: String,
    subscribers: Mutex<HashMap<String, Subscriber>>,
    messages: Mutex<Vec<WebPushMessage>>,
    next_id: AtomicU64,
}

impl Receiver<WebPush> {
    pub async fn start() -> anyhow::Result<Receiver<WebPush>> {
        Receiver::bind(Protocol::Http1, |addr: SocketAddr| WebPush {
            steering: Steering::default(),
            origin: format!("http://{addr}"),
            subscribers: Mutex::default(),
            messages: Mutex::default(),
            next_id: AtomicU64::new(1),
        })
        .await
    }
}

impl WebPush {
    /// A new subscription, restricted to `application_server_key` (base64url) if given.
    pub fn subscribe(&self, application_server_key: Option<&str>) -> anyhow::Result<Subscription> {
        let private = PrivateKey::generate(&ECDH_P256).map_err(|_| anyhow::anyhow!("no P-256 key"))?;
        let public = private.compute_public_key().map_err(|_| anyhow::anyhow!("no public key"))?.as_ref().to_vec();
        let mut auth = vec![0u8; 16];
        aws_lc_rs::rand::fill(&mut auth).map_err(|_| anyhow::anyhow!("no random auth secret"))?;
        let server_key = application_server_key.map(|key| URL_SAFE_NO_PAD.decode(key)).transpose()?;
        let id = format!("s{}-{}", self.next_id.fetch_add(1, Ordering::Relaxed), super::random_b64(12));
        let subscription = Subscription {
            endpoint: format!("{}/push/{id}", self.origin),
            p256dh: URL_SAFE_NO_PAD.encode(&public),
            auth: URL_SAFE_NO_PAD.encode(&auth),
        };
        lock(&self.subscribers).insert(id, Subscriber { private, auth, server_key });
        Ok(subscription)
    }

    /// Pushes accepted, in arrival order.
    pub fn received(&self) -> Vec<WebPushMessage> {
        lock(&self.messages).clone()
    }

    fn refuse(&self, status: u16, why: &str) -> Reply {
        self.steering.reject(format!("{status} {why}"));
        Reply::Respond(Response::json(status, &serde_json::json!({ "code": status, "message": why })))
    }

    /// The VAPID token's claims and key, verified (RFC 8292 §2, §3).
    fn vapid(&self, request: &Request) -> Result<(Value, String), String> {
        let header = request.header("authorization").ok_or("no Authorization")?;
        let (scheme, params) = header.split_once(' ').ok_or("no vapid credentials")?;
        if !scheme.eq_ignore_ascii_case("vapid") {
            return Err(format!("the scheme is {scheme}, not vapid"));
        }
        let param = |name: &str| {
            params
                .split(',')
                .filter_map(|part| part.trim().split_once('='))
                .find(|(key, _)| *key == name)
                .map(|(_, v)| v)
        };
        let (token, key) = (param("t").ok_or("no t=")?, param("k").ok_or("no k=")?);
        let point = URL_SAFE_NO_PAD.decode(key).map_err(|_| "k is not base64url")?;
        if point.len() != 65 || point[0] != 4 {
            return Err("k is not an uncompressed P-256 point".into());
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[&self.origin]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<Value>(token, &DecodingKey::from_ec_der(&point), &validation)
            .map_err(|err| format!("the VAPID token does not verify: {err}"))?
            .claims;
        if claims["exp"].as_u64().unwrap_or(0) > now_secs() + 24 * 3_600 {
            return Err("exp is more than 24 hours ahead".into());
        }
        let sub = claims["sub"].as_str().unwrap_or_default();
        if !(sub.starts_with("mailto:") || sub.starts_with("https:")) {
            return Err(format!("sub `{sub}` is no mailto: or https: URI"));
        }
        Ok((claims, key.to_string()))
    }
}

impl Service for WebPush {
    fn steering(&self) -> &Steering {
        &self.steering
    }

    fn handle(&self, request: Request) -> Reply {
        let Some(id) = request.path.strip_prefix("/push/").map(str::to_string) else {
            return Reply::Respond(Response::empty(404));
        };
        if request.method != "POST" {
            return Reply::Respond(Response::empty(405));
        }
        let (claims, key) = match self.vapid(&request) {
            Ok(vapid) => vapid,
            Err(why) => return self.refuse(401, &why),
        };
        let endpoint = format!("{}{}", self.origin, request.path);
        if self.steering.is_unregistered(&endpoint) {
            return Reply::Respond(Response::empty(410));
        }
        let subscribers = lock(&self.subscribers);
        let Some(subscriber) = subscribers.get(&id) else { return Reply::Respond(Response::empty(404)) };
        if subscriber.server_key.as_ref().is_some_and(|server_key| URL_SAFE_NO_PAD.encode(server_key) != key) {
            return self.refuse(403, "the VAPID key is not the one the subscription was made with");
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
        let Some(ttl) = request.header("ttl").and_then(|ttl| ttl.parse::<u64>().ok()) else {
            return self.refuse(400, "no TTL");
        };
        if request.header("content-encoding") != Some("aes128gcm") {
            return self.refuse(415, "the content coding is not aes128gcm");
        }
        let urgency = request.header("urgency").map(str::to_string);
        if urgency.as_deref().is_some_and(|u| !matches!(u, "very-low" | "low" | "normal" | "high")) {
            return self.refuse(400, "bad Urgency");
        }
        let topic = request.header("topic").map(str::to_string);
        let topic_ok =
            |t: &str| t.len() <= 32 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if topic.as_deref().is_some_and(|t| !topic_ok(t)) {
            return self.refuse(400, "bad Topic");
        }
        if request.body.len() > 4_096 {
            return self.refuse(413, "more than 4096 bytes");
        }
        let plaintext = match decrypt(&request.body, &subscriber.private, &subscriber.auth) {
            Ok(plaintext) => plaintext,
            Err(why) => return self.refuse(400, &format!("cannot decrypt: {why}")),
        };
        drop(subscribers);
        let mut messages = lock(&self.messages);
        messages.push(WebPushMessage {
            endpoint,
            ttl,
            urgency,
            topic,
            plaintext,
            vapid_claims: claims,
            vapid_key: key,
        });
        let location = format!("{}/message/{}", self.origin, messages.len());
        Reply::Respond(Response::empty(201).with_header("location", location).with_header("ttl", ttl.to_string()))
    }
}

/// Decrypt an `aes128gcm` push (RFC 8291 §3, §4 over RFC 8188) as the browser does, with its
/// private key and auth secret.
pub fn decrypt(body: &[u8], ua_private: &PrivateKey, auth_secret: &[u8]) -> Result<Vec<u8>, String> {
    // RFC 8188 §2.1: salt (16), rs (4), idlen (1), keyid (idlen): the sender's public key.
    if body.len() < 21 {
        return Err("shorter than the header".into());
    }
    let salt = &body[..16];
    let rs = u32::from_be_bytes([body[16], body[17], body[18], body[19]]) as usize;
    let id_len = body[20] as usize;
    if id_len != 65 || body.len() < 21 + id_len {
        return Err("the key id is not a 65-byte public key".into());
    }
    let as_public = &body[21..21 + id_len];
    let record = &body[21 + id_len..];
    if rs < 18 {
        return Err("rs below 18".into());
    }
    if record.len() > rs {
        return Err("more than one record (RFC 8291 allows one)".into());
    }
    if record.len() < 17 {
        return Err("a record shorter than its tag and delimiter".into());
    }
    let ua_public = ua_private.compute_public_key().map_err(|_| "no public key")?;
    let ecdh_secret = agreement::agree(
        ua_private,
        UnparsedPublicKey::new(&ECDH_P256, as_public),
        "the key id is not a P-256 point".to_string(),
        |secret| Ok(secret.to_vec()),
    )?;
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(ua_public.as_ref());
    key_info.extend_from_slice(as_public);
    let ikm = expand(auth_secret, &ecdh_secret, &key_info, 32)?;
    let cek = expand(salt, &ikm, b"Content-Encoding: aes128gcm\0", 16)?;
    let nonce = expand(salt, &ikm, b"Content-Encoding: nonce\0", 12)?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).map_err(|_| "bad key")?);
    let nonce = Nonce::try_assume_unique_for_key(&nonce).map_err(|_| "bad nonce")?;
    let mut sealed = record.to_vec();
    let opened = key.open_in_place(nonce, Aad::empty(), &mut sealed).map_err(|_| "the tag does not verify")?;
    // Padding is zeros after the delimiter; the last (here only) record's delimiter is 2.
    let end = opened.iter().rposition(|&b| b != 0).ok_or("no delimiter")?;
    if opened[end] != 2 {
        return Err(format!("the delimiter is {}, not the last record's 2", opened[end]));
    }
    Ok(opened[..end].to_vec())
}

/// HKDF-SHA-256: extract with `salt`, expand `info` to `len` bytes.
fn expand(salt: &[u8], ikm: &[u8], info: &[u8], len: usize) -> Result<Vec<u8>, String> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let mut out = vec![0u8; len];
    hkdf::Salt::new(HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&[info], Len(len))
        .and_then(|okm| okm.fill(&mut out))
        .map_err(|_| "HKDF failed".to_string())?;
    Ok(out)
}
