//! Web Push: the browser's push service, reached at the subscription's endpoint.
//!
//! Spec: RFC 8030 (the protocol: `POST` to the endpoint, the `TTL`, `Urgency` and `Topic`
//! headers, 201 Created), RFC 8291 (message encryption: the `aes128gcm` content coding of
//! RFC 8188, keyed by ECDH between a fresh P-256 key and the subscription's `p256dh`, mixed with
//! its `auth` secret), RFC 8292 (VAPID: `Authorization: vapid t=<JWT>, k=<public key>`, the JWT
//! signed ES256 with `aud` the endpoint's origin, `exp` at most 24 hours ahead and `sub` a
//! contact URI).
//!
//! The body is the notification as JSON (kind, room, room_name, title, body, count, seq, badge)
//! for the service worker to show or clear, encrypted in one record as RFC 8291 §4 requires, so
//! at most 3993 bytes of it: a preview too long for that is shortened. A push is `Urgency: high`
//! for an alert, `normal` for a clear (a `low` one may wait for the device to be on power and
//! Wi-Fi, leaving a read conversation's notification up meanwhile), with `Topic` the collapse id so a newer push of a room
//! replaces one still queued at the push service.
//!
//! The crypto is aws-lc-rs's (ECDH P-256, HKDF-SHA-256, AES-128-GCM, ECDSA P-256), the library
//! the TLS stack already builds, rather than the `ece` crate (OpenSSL underneath: a second
//! crypto library to build and keep patched) or RustCrypto's (a third): RFC 8291 is a few
//! derivations over those primitives, and a unit test holds it to the RFC's own example
//! (Appendix A) byte for byte.
//!
//! Answers: 2xx delivered (201 normally); 404 and 410 → the subscription is gone; 429 and 5xx →
//! retry; anything else (400, 401/403 for a VAPID key the subscription was not made with, 413)
//! failed.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, ECDH_P256};
use aws_lc_rs::hkdf::{self, HKDF_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::debug;

use super::keys::{read_file, SigningKey};
use super::{by_status, excerpt, hint, send, shortened, title_and_body, unix_secs, Refused};
use super::{Notification, Outcome, TITLE_MAX_BYTES};
use crate::limits::InvalidSetting;
use crate::push::notification::NotificationKind;
use crate::store::DeviceRecord;

/// The most plaintext one record may carry (RFC 8291 §4): a push service need take no more
/// than 4096 bytes of body, less the 86 bytes of header, the padding delimiter and the 16 of
/// the tag.
pub const MAX_PLAINTEXT: usize = 3_993;

/// The record size written in the header: more than the largest record (plaintext, delimiter,
/// tag), as RFC 8291 §4 asks.
const RECORD_SIZE: u32 = 4_096;

/// How long a VAPID token is valid: RFC 8292 allows up to 24 hours; half leaves room for a
/// clock that is off.
const VAPID_LIFETIME_SECS: u64 = 12 * 3_600;

/// The longest `ttl_secs` (28 days, the most push services keep a message).
const TTL_MAX_SECS: u64 = 28 * 24 * 3_600;

/// The `[push.webpush]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebPushSettings {
    /// The VAPID key pair's private key (PKCS#8 PEM, P-256: `openssl genpkey -algorithm EC
    /// -pkeyopt ec_paramgen_curve:P-256`); empty: Web Push is not configured on this node.
    /// Changing it orphans every subscription made with the old one's public key.
    pub vapid_key_file: String,
    /// How push services can reach the operator (RFC 8292 §2.1): a `mailto:` or `https:` URI.
    /// Some push services refuse a `localhost` one: set a real contact.
    pub subject: String,
    /// How long a push service keeps a push for a browser that is offline (the `TTL` header).
    pub ttl_secs: u64,
}

impl Default for WebPushSettings {
    fn default() -> Self {
        WebPushSettings { vapid_key_file: String::new(), subject: "mailto:admin@localhost".into(), ttl_secs: 86_400 }
    }
}

impl WebPushSettings {
    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let rest = self.subject.strip_prefix("mailto:").or_else(|| self.subject.strip_prefix("https://"));
        if rest.is_none_or(str::is_empty) || self.subject.chars().any(char::is_control) {
            return Err(InvalidSetting::new("push.webpush.subject", "must be a mailto: or https: URI"));
        }
        if self.ttl_secs > TTL_MAX_SECS {
            return Err(InvalidSetting::new(
                "push.webpush.ttl_secs",
                format!("must be at most {TTL_MAX_SECS} (28 days)"),
            ));
        }
        Ok(())
    }
}

/// The Web Push provider.
pub(super) struct WebPush {
    http: reqwest::Client,
    key: SigningKey,
    /// The VAPID public key, base64url: `k=` of every request.
    public_key: String,
    subject: String,
    ttl_secs: u64,
}

/// The VAPID key pair from `vapid_key_file`, with its public key in base64url (an uncompressed
/// point): the `k=` of every request, and what browsers subscribe with.
fn load_key(settings: &WebPushSettings) -> Result<(SigningKey, String), String> {
    const KEY: &str = "push.webpush.vapid_key_file";
    let pem = read_file(KEY, &settings.vapid_key_file)?;
    let key = SigningKey::p256_from_pem(&pem).map_err(|err| format!("{KEY}: {}: {err}", settings.vapid_key_file))?;
    let public_key = URL_SAFE_NO_PAD.encode(key.public_point().unwrap_or_default());
    Ok((key, public_key))
}

/// The VAPID public key the web client subscribes with, if Web Push is configured (every node
/// serves it, whether or not it is the one sending).
pub fn public_key_of(settings: &WebPushSettings) -> Result<Option<String>, String> {
    if settings.vapid_key_file.is_empty() {
        return Ok(None);
    }
    Ok(Some(load_key(settings)?.1))
}

impl WebPush {
    pub(super) fn new(settings: &WebPushSettings, http: reqwest::Client) -> Result<WebPush, String> {
        let (key, public_key) = load_key(settings)?;
        Ok(WebPush { http, key, public_key, subject: settings.subject.clone(), ttl_secs: settings.ttl_secs })
    }

    pub(super) fn public_key(&self) -> &str {
        &self.public_key
    }

    pub(super) async fn send(&self, device: &DeviceRecord, note: &Notification) -> Outcome {
        // Nothing of the endpoint goes into a reason: it is the subscription's secret.
        let Some(endpoint) = Url::parse(&device.token).ok().filter(|url| matches!(url.scheme(), "http" | "https"))
        else {
            return Outcome::Failed("Web Push: the endpoint is not an http(s) URL".into());
        };
        let (Ok(ua_public), Ok(auth)) = (decode(&device.p256dh), decode(&device.auth)) else {
            return Outcome::Failed("Web Push: the subscription's keys are not base64url".into());
        };
        let body = match payload(note).and_then(|plaintext| encrypt(&plaintext, &ua_public, &auth)) {
            Ok(body) => body,
            Err(err) => return Outcome::Failed(format!("Web Push: {err}")),
        };
        let claims = json!({
            "aud": endpoint.origin().ascii_serialization(),
            "exp": unix_secs() + VAPID_LIFETIME_SECS,
            "sub": self.subject,
        });
        let jwt = match self.key.jwt(None, &claims) {
            Ok(jwt) => jwt,
            Err(err) => return Outcome::Failed(format!("Web Push: cannot sign the VAPID token: {err}")),
        };
        let alert = note.kind == NotificationKind::Alert;
        let request = self
            .http
            .post(endpoint)
            .header(AUTHORIZATION, format!("vapid t={jwt}, k={}", self.public_key))
            .header("ttl", self.ttl_secs.to_string())
            .header(CONTENT_ENCODING, "aes128gcm")
            .header(CONTENT_TYPE, "application/octet-stream")
            .header("urgency", if alert { "high" } else { "normal" })
            .header("topic", note.collapse_id())
            .body(body);
        let Refused { status, after, body: answer } = match send("Web Push", request).await {
            Ok(refused) => refused,
            Err(outcome) => return outcome,
        };
        let detail = excerpt(&String::from_utf8_lossy(&answer));
        if matches!(status, StatusCode::NOT_FOUND | StatusCode::GONE) {
            debug!(token = hint(&device.token), %status, "push: the Web Push subscription is gone");
            return Outcome::Unregistered(format!("Web Push: {status}"));
        }
        by_status("Web Push", status, after, &detail)
    }
}

/// The plaintext: the notification as JSON, its body shortened until it fits one record.
fn payload(note: &Notification) -> Result<Vec<u8>, String> {
    let (title, mut body) = title_and_body(note);
    let room_name = shortened(note.room_name.clone(), TITLE_MAX_BYTES);
    loop {
        let json = serde_json::to_vec(&json!({
            "kind": note.kind,
            "room": note.room,
            "room_name": room_name,
            "title": title,
            "body": body,
            "count": note.count,
            "seq": note.seq,
            "badge": note.badge,
            "collapse_id": note.collapse_id(),
        }))
        .map_err(|err| format!("cannot encode the payload: {err}"))?;
        if json.len() <= MAX_PLAINTEXT {
            return Ok(json);
        }
        if body.is_empty() {
            return Err(format!("the payload takes {} bytes, more than the {MAX_PLAINTEXT} of a push", json.len()));
        }
        let half = body.len() / 2;
        body = shortened(body, half);
    }
}

fn decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('='))
}

/// `plaintext` encrypted for the subscription whose public key is `ua_public` (an uncompressed
/// P-256 point) and auth secret `auth_secret` (RFC 8291): a fresh key pair and salt each time.
pub fn encrypt(plaintext: &[u8], ua_public: &[u8], auth_secret: &[u8]) -> Result<Vec<u8>, String> {
    let as_private = PrivateKey::generate(&ECDH_P256).map_err(|_| "cannot make a P-256 key".to_string())?;
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| "no random salt".to_string())?;
    encrypt_with(plaintext, ua_public, auth_secret, &as_private, salt)
}

/// [`encrypt`] with the application server's key pair and the salt given (the RFC's example
/// fixes them).
fn encrypt_with(
    plaintext: &[u8],
    ua_public: &[u8],
    auth_secret: &[u8],
    as_private: &PrivateKey,
    salt: [u8; 16],
) -> Result<Vec<u8>, String> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(format!("{} bytes of payload, more than the {MAX_PLAINTEXT} of one record", plaintext.len()));
    }
    if ua_public.len() != 65 || ua_public[0] != 4 {
        return Err("the subscription's p256dh is not an uncompressed P-256 point".into());
    }
    if auth_secret.len() != 16 {
        return Err("the subscription's auth secret is not 16 bytes".into());
    }
    let as_public = as_private.compute_public_key().map_err(|_| "no public key".to_string())?;
    let as_public = as_public.as_ref();
    // §3.1: the shared secret of the two key pairs.
    let ecdh_secret = agreement::agree(
        as_private,
        UnparsedPublicKey::new(&ECDH_P256, ua_public),
        "the subscription's p256dh is not a point of P-256".to_string(),
        |secret| Ok(secret.to_vec()),
    )?;
    // §3.3, §3.4: IKM = HKDF(salt = auth_secret, ikm = ecdh_secret,
    //                        info = "WebPush: info" 0x00 ua_public as_public, 32 bytes).
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(as_public);
    let ikm = hkdf(auth_secret, &ecdh_secret, &key_info, 32)?;
    // RFC 8188 §2.2, §2.3: the content-encryption key and the nonce, from the salt.
    let cek = hkdf(&salt, &ikm, b"Content-Encoding: aes128gcm\0", 16)?;
    let nonce = hkdf(&salt, &ikm, b"Content-Encoding: nonce\0", 12)?;
    // One record (sequence number 0, so the nonce as derived): the plaintext, then the
    // delimiter 0x02 of the last record, no padding.
    let mut record = Vec::with_capacity(plaintext.len() + 1 + AES_128_GCM.tag_len());
    record.extend_from_slice(plaintext);
    record.push(2);
    let key = UnboundKey::new(&AES_128_GCM, &cek).map(LessSafeKey::new).map_err(|_| "bad AES key".to_string())?;
    let nonce = Nonce::try_assume_unique_for_key(&nonce).map_err(|_| "bad nonce".to_string())?;
    key.seal_in_place_append_tag(nonce, Aad::empty(), &mut record).map_err(|_| "AES-GCM failed".to_string())?;
    // RFC 8188 §2.1: salt, record size, key id (here the application server's public key).
    let mut body = Vec::with_capacity(16 + 4 + 1 + as_public.len() + record.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(as_public.len() as u8);
    body.extend_from_slice(as_public);
    body.extend_from_slice(&record);
    Ok(body)
}

/// HKDF-SHA-256 (RFC 5869): extract with `salt`, expand to `len` bytes.
fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8], len: usize) -> Result<Vec<u8>, String> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let prk = hkdf::Salt::new(HKDF_SHA256, salt).extract(ikm);
    let mut out = vec![0; len];
    prk.expand(&[info], Len(len)).and_then(|okm| okm.fill(&mut out)).map_err(|_| "HKDF failed".to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(text).unwrap()
    }

    /// RFC 8291 Appendix A, byte for byte: the same keys and salt give the same body.
    #[test]
    fn the_rfc_8291_example_encrypts_to_the_rfc_body() {
        let as_private =
            PrivateKey::from_private_key(&ECDH_P256, &b64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw")).unwrap();
        assert_eq!(
            as_private.compute_public_key().unwrap().as_ref(),
            b64("BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8")
        );
        let ua_public = b64("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4");
        let auth = b64("BTBZMqHH6r4Tts7J_aSIgg");
        let salt: [u8; 16] = b64("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap();
        let body =
            encrypt_with(b"When I grow up, I want to be a watermelon", &ua_public, &auth, &as_private, salt).unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PB\
             ru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }

    #[test]
    fn bad_subscriptions_and_oversized_payloads_are_refused() {
        let ua = PrivateKey::generate(&ECDH_P256).unwrap();
        let ua_public = ua.compute_public_key().unwrap().as_ref().to_vec();
        assert!(encrypt(b"x", &ua_public, &[0; 16]).is_ok());
        assert!(encrypt(b"x", &ua_public, &[0; 15]).is_err());
        assert!(encrypt(b"x", &ua_public[..33], &[0; 16]).is_err());
        let mut off_curve = ua_public.clone();
        off_curve[64] ^= 1;
        assert!(encrypt(b"x", &off_curve, &[0; 16]).is_err());
        assert!(encrypt(&[b'x'; MAX_PLAINTEXT + 1], &ua_public, &[0; 16]).is_err());
        let body = encrypt(&[b'x'; MAX_PLAINTEXT], &ua_public, &[0; 16]).unwrap();
        assert_eq!(body.len(), 4_096, "the largest push is RFC 8030's 4096 bytes");
    }

    #[test]
    fn a_long_preview_is_shortened_to_fit_one_record() {
        let note = Notification {
            kind: NotificationKind::Alert,
            room: "r".into(),
            room_name: "\u{1}".repeat(1_000),
            sender: Some("ada".into()),
            preview: Some("\"".repeat(5_000)),
            count: 1,
            seq: 1,
            badge: 1,
        };
        let json = payload(&note).unwrap();
        assert!(json.len() <= MAX_PLAINTEXT, "{}", json.len());
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["kind"], "alert");
        assert!(value["body"].as_str().unwrap().starts_with("ada: \"\"\""));
    }

    #[test]
    fn the_subject_is_a_mailto_or_https_uri() {
        let mut settings = WebPushSettings::default();
        settings.validate().unwrap();
        settings.subject = "https://chat.example.com/contact".into();
        settings.validate().unwrap();
        for bad in ["admin@example.com", "mailto:", "http://example.com"] {
            settings.subject = bad.into();
            assert_eq!(settings.validate().unwrap_err().key, "push.webpush.subject", "{bad}");
        }
        settings.subject = "mailto:ops@example.com".into();
        settings.ttl_secs = TTL_MAX_SECS + 1;
        assert_eq!(settings.validate().unwrap_err().key, "push.webpush.ttl_secs");
    }
}
