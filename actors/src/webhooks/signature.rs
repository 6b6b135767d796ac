//! How a webhook request is signed: HMAC-SHA256 over `"{t}.{body}"` with the endpoint's
//! secret, sent as `Palaver-Signature: t={unix seconds},v1={hex}`. The timestamp is inside the
//! signed text so a receiver can refuse replays older than it tolerates.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header a request's signature travels in.
pub const HEADER: &str = "palaver-signature";

/// The `Palaver-Signature` value for `body` sent at `unix_secs`.
pub fn sign(secret: &str, unix_secs: u64, body: &[u8]) -> String {
    format!("t={unix_secs},v1={}", hex(&mac(secret, unix_secs, body)))
}

/// Whether `header` is a valid signature of `body` under `secret`, made at most `tolerance_secs`
/// from `now_secs`: what a receiver checks (the tests do, as the documentation says to).
pub fn verify(secret: &str, header: &str, body: &[u8], now_secs: u64, tolerance_secs: u64) -> bool {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1.push(value),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if t.abs_diff(now_secs) > tolerance_secs {
        return false;
    }
    let mut expected = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    expected.update(format!("{t}.").as_bytes());
    expected.update(body);
    v1.iter().filter_map(|sig| unhex(sig)).any(|sig| expected.clone().verify_slice(&sig).is_ok())
}

fn mac(secret: &str, unix_secs: u64, body: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("{unix_secs}.").as_bytes());
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let header = sign("whsec_k", 1_700_000_000, b"{\"events\":[]}");
        assert!(header.starts_with("t=1700000000,v1="));
        assert!(verify("whsec_k", &header, b"{\"events\":[]}", 1_700_000_100, 300));
        assert!(!verify("whsec_other", &header, b"{\"events\":[]}", 1_700_000_100, 300), "another secret");
        assert!(!verify("whsec_k", &header, b"{\"events\":[1]}", 1_700_000_100, 300), "another body");
        assert!(!verify("whsec_k", &header, b"{\"events\":[]}", 1_700_001_000, 300), "too old");
        let moved = header.replace("t=1700000000", "t=1700000001");
        assert!(!verify("whsec_k", &moved, b"{\"events\":[]}", 1_700_000_100, 300), "another time");
    }

    #[test]
    fn the_mac_is_hmac_sha256_of_time_dot_body() {
        // Computed independently: printf '1.x' | openssl dgst -sha256 -hmac key
        assert_eq!(sign("key", 1, b"x"), "t=1,v1=fc4913c41a7bf793267e2a384f3261c9436ec2cd097bd745e7b0d99113f510ec");
    }
}
