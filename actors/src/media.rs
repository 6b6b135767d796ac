//! Signed media addresses: any node turns a media id into a short-lived URL that any node
//! serves without asking the store who may see it (docs/MEDIA.md).
//!
//! The signature is an HMAC-SHA256 over the media id, the variant (file or thumbnail) and the
//! expiry, keyed by a key derived from `auth.token_key`, which every node of a cluster already
//! shares. It names no user: the URL is a capability until it expires, as a CDN needs (it
//! forwards nothing else). Expiries are rounded up to the next whole `ttl` window, so every
//! member who asks for the same file within a window gets the same URL, and a cache in front
//! serves them all from one copy.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Which bytes of a media a link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The uploaded file.
    File,
    /// The thumbnail the node made of an image.
    Thumbnail,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::File => "file",
            Variant::Thumbnail => "thumb",
        }
    }
}

/// Why a link is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkRefused {
    #[error("this media link has expired; ask for a new one")]
    Expired,
    #[error("this media link is not valid")]
    BadSignature,
}

/// Signs and checks media links.
#[derive(Clone)]
pub struct MediaLinks {
    key: [u8; 32],
    /// The window expiries are rounded to (seconds); a link lives between one and two of them.
    ttl_s: u64,
}

impl MediaLinks {
    /// Links keyed from the cluster's token key, living `ttl_s` to `2 × ttl_s` seconds.
    pub fn new(token_key: &[u8], ttl_s: u64) -> MediaLinks {
        let mut mac = HmacSha256::new_from_slice(token_key).expect("HMAC takes keys of any length");
        // A key of its own: a media signature can never pass for anything the token key signs.
        mac.update(b"palaver media links v1");
        MediaLinks { key: mac.finalize().into_bytes().into(), ttl_s: ttl_s.max(1) }
    }

    /// The path and query of a link to `variant` of media `id`, and when it expires (ms since
    /// the Unix epoch).
    pub fn sign(&self, id: &str, variant: Variant, now_ms: u64) -> (String, u64) {
        let expires_s = (now_ms / 1000 / self.ttl_s + 2) * self.ttl_s;
        let signature = self.signature(id, variant, expires_s);
        let path = match variant {
            Variant::File => format!("/media/{id}?e={expires_s}&s={signature}"),
            Variant::Thumbnail => format!("/media/{id}/thumb?e={expires_s}&s={signature}"),
        };
        (path, expires_s * 1000)
    }

    /// Whether a link's expiry (seconds since the Unix epoch) and signature are this node's
    /// for `variant` of media `id`, and not expired at `now_ms`.
    pub fn verify(
        &self,
        id: &str,
        variant: Variant,
        expires_s: u64,
        signature: &str,
        now_ms: u64,
    ) -> Result<(), LinkRefused> {
        let Ok(given) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature) else {
            return Err(LinkRefused::BadSignature);
        };
        // Constant time: the comparison tells nothing about how much of a forgery was right.
        if self.mac(id, variant, expires_s).verify_slice(&given).is_err() {
            return Err(LinkRefused::BadSignature);
        }
        if now_ms / 1000 >= expires_s {
            return Err(LinkRefused::Expired);
        }
        Ok(())
    }

    fn mac(&self, id: &str, variant: Variant, expires_s: u64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(format!("{id}\n{}\n{expires_s}", variant.label()).as_bytes());
        mac
    }

    fn signature(&self, id: &str, variant: Variant, expires_s: u64) -> String {
        let tag = self.mac(id, variant, expires_s).finalize().into_bytes();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn links() -> MediaLinks {
        MediaLinks::new(&[7; 32], 600)
    }

    fn query(path: &str) -> (u64, String) {
        let query = path.split_once('?').unwrap().1;
        let (e, s) = query.split_once('&').unwrap();
        (e.strip_prefix("e=").unwrap().parse().unwrap(), s.strip_prefix("s=").unwrap().to_owned())
    }

    #[test]
    fn a_signed_link_verifies_until_it_expires() {
        let (path, expires_ms) = links().sign("md_a", Variant::File, NOW);
        assert!(path.starts_with("/media/md_a?"));
        let (e, s) = query(&path);
        assert_eq!(e * 1000, expires_ms);
        assert!((NOW + 600_000..=NOW + 1_200_000).contains(&expires_ms));
        assert_eq!(links().verify("md_a", Variant::File, e, &s, NOW), Ok(()));
        assert_eq!(links().verify("md_a", Variant::File, e, &s, expires_ms), Err(LinkRefused::Expired));
    }

    #[test]
    fn links_within_one_window_are_the_same() {
        let first = links().sign("md_a", Variant::File, NOW - NOW % 600_000);
        let later = links().sign("md_a", Variant::File, NOW - NOW % 600_000 + 599_999);
        assert_eq!(first, later);
    }

    #[test]
    fn altered_links_are_refused() {
        let (path, _) = links().sign("md_a", Variant::File, NOW);
        let (e, s) = query(&path);
        assert_eq!(links().verify("md_b", Variant::File, e, &s, NOW), Err(LinkRefused::BadSignature));
        assert_eq!(links().verify("md_a", Variant::Thumbnail, e, &s, NOW), Err(LinkRefused::BadSignature));
        assert_eq!(links().verify("md_a", Variant::File, e + 600, &s, NOW), Err(LinkRefused::BadSignature));
        assert_eq!(links().verify("md_a", Variant::File, e, "AAAA", NOW), Err(LinkRefused::BadSignature));
        assert_eq!(links().verify("md_a", Variant::File, e, "not base64!", NOW), Err(LinkRefused::BadSignature));
        let other = MediaLinks::new(&[8; 32], 600);
        assert_eq!(other.verify("md_a", Variant::File, e, &s, NOW), Err(LinkRefused::BadSignature));
    }
}
