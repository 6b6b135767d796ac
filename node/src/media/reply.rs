//! The media service's error answers: a status and a JSON body `{"error": "<code>",
//! "message": "…"}`, the code for programs and the message for people.
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | `bad_request` | an empty body, a body longer than its `Content-Length`, a malformed length |
//! | 401 | `token_invalid`, `token_expired`, `token_revoked` | no valid `Authorization: Bearer` token |
//! | 403 | `link_expired`, `link_invalid` | a download link past its expiry, or not signed by the cluster |
//! | 404 | `not_found` | no such media (or not finished, or collected), or no thumbnail of it |
//! | 405 | `method_not_allowed` | another method than `POST /media`, `GET`/`HEAD /media/…` |
//! | 408 | `upload_timeout` | the client sent nothing for `media.upload_idle_timeout_ms` |
//! | 409 | `upload_expired` | the upload outlived `media.orphan_ttl_s` and was collected |
//! | 411 | `length_required` | no `Content-Length` (a chunked body included) |
//! | 413 | `too_large`, `quota_exceeded` | over `media.max_bytes`; over the user's `media.quota_bytes` |
//! | 415 | `type_mismatch` | the bytes are not of the declared type and an image is involved |
//! | 416 | (none: `Content-Range: bytes */len`) | a range past the end |
//! | 422 | `image_too_large`, `invalid_image` | over `media.max_image_pixels`; an image that does not decode |
//! | 429 | `rate_limited` | over `media.uploads_per_minute` or `media.concurrent_uploads_per_user` (with `Retry-After`) |
//! | 500 | `internal` | a store failure |
//! | 503 | `unavailable` | the store or the object store does not answer, or the node is stopping |

use std::io;

use store::StoreError;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::error;

use super::download::CONTENT_SECURITY_POLICY;
use crate::request;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Extra header lines, each ending in `\r\n`.
    pub headers: String,
}

impl Refusal {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal { status, code, message: message.into(), headers: String::new() }
    }

    /// Add a header line.
    pub fn header(mut self, name: &str, value: impl std::fmt::Display) -> Refusal {
        self.headers.push_str(&format!("{name}: {value}\r\n"));
        self
    }

    /// The store's error as an answer.
    pub fn store(err: StoreError) -> Refusal {
        match err {
            StoreError::Unavailable(_) | StoreError::Fenced { .. } => {
                Refusal::new(503, "unavailable", "the store is unavailable; try again")
            }
            StoreError::QuotaExceeded { quota, .. } => Refusal::new(
                413,
                "quota_exceeded",
                format!("this upload would take your media past its quota of {quota} bytes; delete some first"),
            ),
            StoreError::NoSuchMedia(_) => Refusal::new(404, "not_found", "no such media"),
            err => {
                error!(error = %err, "media: store failure");
                Refusal::new(500, "internal", "internal error; try again")
            }
        }
    }

    /// The object store's error as an answer (its details go to the log, not to the client).
    pub fn objects(err: &object_store::Error) -> Refusal {
        error!(error = %err, "media: object store failure");
        Refusal::new(503, "unavailable", "media storage is unavailable; try again")
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "error": self.code, "message": self.message }))
            .expect("a map of strings serialises")
    }
}

/// Answer with `refusal` and close; `head_only` for a `HEAD` request (the head says the
/// body's length, the body is not sent).
pub async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, refusal: &Refusal, head_only: bool) -> io::Result<()> {
    let body = refusal.body();
    // Like every media response, whatever the body (docs/MEDIA.md, "Serving").
    let headers = format!("{}Content-Security-Policy: {CONTENT_SECURITY_POLICY}\r\n", refusal.headers);
    let head = request::head(refusal.status, "application/json", &headers, body.len());
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(&body).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refusal_is_json_with_its_headers() {
        let refusal = Refusal::new(429, "rate_limited", "slow \"down\"").header("Retry-After", 3);
        let mut out = Vec::new();
        refuse(&mut out, &refusal, false).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{text}");
        assert!(text.contains("\r\nRetry-After: 3\r\n") && text.contains("Content-Type: application/json"), "{text}");
        assert!(text.contains("\r\nContent-Security-Policy: default-src 'none';"), "{text}");
        let body: serde_json::Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body, serde_json::json!({"error": "rate_limited", "message": "slow \"down\""}));
        let mut head_only = Vec::new();
        refuse(&mut head_only, &refusal, true).await.unwrap();
        assert!(String::from_utf8(head_only).unwrap().ends_with("\r\n\r\n"));
    }
}
