//! `GET` and `HEAD` `/media/{id}?e=<expires_s>&s=<signature>` (the file) and
//! `/media/{id}/thumb?e=…&s=…` (its thumbnail): downloads through links signed by
//! `actors::media::MediaLinks`, which any node of the cluster checks without asking who may
//! see the file (a `media_url` request asked that before signing). A link expired or not
//! signed with the cluster's key is refused with 403 (`link_expired`, `link_invalid`); media
//! that is not `Ready` or `Attached` (unfinished, doomed, collected), or a thumbnail that does
//! not exist, is 404.
//!
//! The answer carries the record's type (thumbnails: `image/jpeg` or `image/png`),
//! `ETag: "<sha256>"` (thumbnails `"<sha256>-thumb"`; `If-None-Match` answers 304),
//! `Cache-Control: public, max-age=<seconds left on the link>, immutable`, and what keeps a
//! browser from running anything it downloads: `X-Content-Type-Options: nosniff`, a
//! `Content-Security-Policy` that allows nothing and sandboxes the document, and
//! `Content-Disposition: inline` only for the four image types and thumbnails, `attachment`
//! for everything else (the file name as RFC 8187 `filename*`). One byte range
//! (`Range: bytes=a-b`, `a-`, `-n`) answers 206 with `Content-Range`, a range past the end
//! 416 with `Content-Range: bytes */<length>`; several ranges, or a malformed one, are ignored
//! (200, the whole file), as is a `Range` whose `If-Range` is not the current ETag.
//!
//! The file's bytes are streamed from the object store (asked for the range only), never held
//! whole; a client that takes nothing for `limits.slow_client_timeout_ms` is cut off.

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use actors::hub::Hub;
use actors::media::{LinkRefused, Variant};
use actors::metrics::Metrics;
use actors::names::now_ms;
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::{GetOptions, GetRange, GetResult, GetResultPayload, ObjectStore};
use store::{MediaRecord, MediaState};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

use super::reply::{refuse, Refusal};
use super::{objects, sniff, MediaService};
use crate::request::{self, Request};

/// How much of a file is read at a time when the `fs` backend serves it.
const FILE_READ_BYTES: usize = 256 * 1024;

/// What a download's headers forbid the browser: running anything, loading anything; inline
/// styles only, so an SVG or HTML file opened by hand still shows as text-like content.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; sandbox";

/// What a `Range` header asks of a file of some length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAsked {
    /// No range, or one to ignore (malformed, several): the whole file, 200.
    Whole,
    /// Bytes `start..=end`, both within the file: 206.
    Part { start: u64, end: u64 },
    /// A range that starts past the end, or an empty suffix: 416.
    Unsatisfiable,
}

/// Answer a download request.
pub async fn handle<S>(stream: &mut S, request: &Request, hub: &Hub, media: &MediaService) -> io::Result<()>
where
    S: AsyncWrite + Unpin + Send,
{
    let head_only = request.method == "HEAD";
    let (record, variant, expires_s) = match authorise(request, hub).await {
        Ok(found) => found,
        Err(refusal) => return refuse(stream, &refusal, head_only).await,
    };
    let id = record.id.as_str();
    let etag = match variant {
        Variant::File => format!("\"{}\"", record.sha256),
        Variant::Thumbnail => format!("\"{}-thumb\"", record.sha256),
    };
    let max_age = expires_s.saturating_sub(now_ms() / 1000);
    let mut headers = format!(
        "ETag: {etag}\r\nCache-Control: public, max-age={max_age}, immutable\r\nX-Content-Type-Options: nosniff\r\nContent-Security-Policy: {CONTENT_SECURITY_POLICY}\r\n"
    );
    if request.header("if-none-match").is_some_and(|tags| etag_matches(tags, &etag)) {
        stream.write_all(request::bare_head(304, &headers).as_bytes()).await?;
        return stream.shutdown().await;
    }
    let (content_type, inline, thumbnail) = match variant {
        Variant::File => (record.content_type.clone(), sniff::is_image(&record.content_type), None),
        Variant::Thumbnail => {
            // Small, and its type is in its first bytes: read it whole, HEAD included.
            let bytes = match fetch(media.objects.as_ref(), &objects::thumb_key(id), None).await {
                Ok(result) => result.bytes().await,
                Err(err) => Err(err),
            };
            let bytes = match bytes {
                Ok(bytes) => bytes,
                Err(err) => return refuse(stream, &missing(id, &err), head_only).await,
            };
            let content_type = if bytes.starts_with(b"\x89PNG") { "image/png" } else { "image/jpeg" };
            (content_type.to_string(), true, Some(bytes))
        }
    };
    let length = thumbnail.as_ref().map_or(record.size, |bytes| bytes.len() as u64);
    let range_header = match request.header("if-range") {
        Some(if_range) if if_range.trim() != etag => None,
        _ => request.header("range"),
    };
    // `start..end`, end exclusive.
    let (status, start, end) = match parse_range(range_header, length) {
        RangeAsked::Whole => (200, 0, length),
        RangeAsked::Part { start, end } => (206, start, end + 1),
        RangeAsked::Unsatisfiable => {
            let refusal = Refusal::new(416, "range_not_satisfiable", format!("the file has {length} bytes"))
                .header("Content-Range", format!("bytes */{length}"));
            return refuse(stream, &refusal, head_only).await;
        }
    };
    let _ = write!(
        headers,
        "Content-Type: {content_type}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nContent-Disposition: {}\r\n",
        end - start,
        content_disposition(inline, &record.name),
    );
    if status == 206 {
        let _ = write!(headers, "Content-Range: bytes {start}-{}/{length}\r\n", end - 1);
    }
    let head = request::bare_head(status, &headers);
    let slow = Duration::from_millis(hub.limits().slow_client_timeout_ms);
    if head_only {
        stream.write_all(head.as_bytes()).await?;
        return stream.shutdown().await;
    }
    let body = match thumbnail {
        Some(bytes) => Body::Bytes(bytes.slice(start as usize..end as usize)),
        None => match fetch(media.objects.as_ref(), &objects::file_key(id), Some(start..end)).await {
            Ok(result) => Body::Object(result),
            Err(err) => return refuse(stream, &missing(id, &err), false).await,
        },
    };
    Metrics::add(&hub.metrics().media_downloads_total, 1);
    within(slow, stream.write_all(head.as_bytes())).await?;
    match body {
        Body::Bytes(bytes) => within(slow, stream.write_all(&bytes)).await?,
        Body::Object(GetResult { payload: GetResultPayload::File(file, _), range, .. }) => {
            // A file of the `fs` backend: read in large pieces here, not in the object store's
            // 8 KiB ones, each a trip to the blocking pool (a quarter of the throughput).
            let mut file = tokio::fs::File::from_std(file);
            file.seek(std::io::SeekFrom::Start(range.start)).await?;
            let mut left = range.end - range.start;
            let mut buffer = vec![0; FILE_READ_BYTES];
            while left > 0 {
                let want = buffer.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let read = file.read(&mut buffer[..want]).await?;
                if read == 0 {
                    warn!(media = id, "media: file shorter than its record mid-download");
                    return Ok(());
                }
                within(slow, stream.write_all(&buffer[..read])).await?;
                left -= read as u64;
            }
        }
        Body::Object(result) => {
            let mut chunks = result.into_stream();
            while let Some(chunk) = chunks.next().await {
                match chunk {
                    Ok(chunk) => within(slow, stream.write_all(&chunk)).await?,
                    Err(err) => {
                        // The head is out: all that can be done is to cut the body short.
                        warn!(media = id, error = %err, "media: object store failed mid-download");
                        return Ok(());
                    }
                }
            }
        }
    }
    stream.shutdown().await
}

/// What is sent after the head.
enum Body {
    Bytes(Bytes),
    Object(GetResult),
}

/// Check the link and find the record it names: the record, which of its bytes, and when the
/// link expires (seconds since the Unix epoch).
async fn authorise(request: &Request, hub: &Hub) -> Result<(MediaRecord, Variant, u64), Refusal> {
    let not_found = || Refusal::new(404, "not_found", "no such media");
    let (id, variant) = parse_path(&request.path).ok_or_else(not_found)?;
    let invalid = || Refusal::new(403, "link_invalid", "this media link is not valid");
    let expires_s = request.query_param("e").and_then(|e| e.parse::<u64>().ok()).ok_or_else(invalid)?;
    let signature = request.query_param("s").ok_or_else(invalid)?;
    let Some(links) = hub.media_links() else {
        return Err(Refusal::new(503, "unavailable", "this node does not serve media yet"));
    };
    links.verify(id, variant, expires_s, signature, now_ms()).map_err(|refused| match refused {
        LinkRefused::Expired => Refusal::new(403, "link_expired", refused.to_string()),
        LinkRefused::BadSignature => Refusal::new(403, "link_invalid", refused.to_string()),
    })?;
    let record = hub.store().media(id).await.map_err(Refusal::store)?.ok_or_else(not_found)?;
    if !matches!(record.state, MediaState::Ready | MediaState::Attached { .. }) {
        return Err(not_found());
    }
    if variant == Variant::Thumbnail && record.thumbnail.is_none() {
        return Err(Refusal::new(404, "not_found", "this media has no thumbnail"));
    }
    Ok((record, variant, expires_s))
}

/// The media id and variant of a download path: `/media/{id}` or `/media/{id}/thumb`.
pub fn parse_path(path: &str) -> Option<(&str, Variant)> {
    let rest = path.strip_prefix("/media/")?;
    let (id, variant) = match rest.split_once('/') {
        None => (rest, Variant::File),
        Some((id, "thumb")) => (id, Variant::Thumbnail),
        Some(_) => return None,
    };
    actors::names::validate_media_id(id).is_ok().then_some((id, variant))
}

/// Get an object, or the `range` of it.
async fn fetch(
    objects: &dyn ObjectStore,
    key: &object_store::path::Path,
    range: Option<std::ops::Range<u64>>,
) -> Result<GetResult, object_store::Error> {
    let options = GetOptions { range: range.map(GetRange::Bounded), ..GetOptions::default() };
    objects.get_opts(key, options).await
}

/// The answer when a served record's object cannot be read.
fn missing(id: &str, err: &object_store::Error) -> Refusal {
    match err {
        object_store::Error::NotFound { .. } => {
            warn!(media = id, "media: the record is served but its object is missing");
            Refusal::new(404, "not_found", "no such media")
        }
        err => Refusal::objects(err),
    }
}

/// Write within the slow-client timeout.
async fn within(slow: Duration, write: impl std::future::Future<Output = io::Result<()>>) -> io::Result<()> {
    match tokio::time::timeout(slow, write).await {
        Ok(result) => result,
        Err(_) => {
            debug!("media: a download's client took nothing for too long");
            Err(io::Error::new(io::ErrorKind::TimedOut, "client too slow"))
        }
    }
}

/// What the `Range` header (if any) asks of a file of `length` bytes (at least 1). Only one
/// range of bytes is served; anything else is ignored, as RFC 9110 allows.
pub fn parse_range(header: Option<&str>, length: u64) -> RangeAsked {
    let Some(header) = header else { return RangeAsked::Whole };
    let Some((unit, spec)) = header.trim().split_once('=') else { return RangeAsked::Whole };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeAsked::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeAsked::Whole };
    let number = |text: &str| match text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty() {
        true => text.parse::<u64>().ok(),
        false => None,
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            None => RangeAsked::Whole,
            Some(0) => RangeAsked::Unsatisfiable,
            Some(_) if length == 0 => RangeAsked::Unsatisfiable,
            Some(n) => RangeAsked::Part { start: length - n.min(length), end: length - 1 },
        },
        (first, "") => match number(first) {
            None => RangeAsked::Whole,
            Some(start) if start >= length => RangeAsked::Unsatisfiable,
            Some(start) => RangeAsked::Part { start, end: length - 1 },
        },
        (first, last) => match (number(first), number(last)) {
            (Some(start), Some(end)) if start <= end => match start >= length {
                true => RangeAsked::Unsatisfiable,
                false => RangeAsked::Part { start, end: end.min(length - 1) },
            },
            _ => RangeAsked::Whole,
        },
    }
}

/// Whether an `If-None-Match` value names `etag` (weak comparison; `*` names any).
pub fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// `inline` or `attachment`, with the file name as RFC 8187's `filename*=UTF-8''…` (every byte
/// outside its `attr-char` percent-encoded, so no quote, semicolon or line break gets through).
pub fn content_disposition(inline: bool, name: &str) -> String {
    let mut value = String::from(if inline { "inline" } else { "attachment" });
    value.push_str("; filename*=UTF-8''");
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            value.push(byte as char);
        } else {
            let _ = write!(value, "%{byte:02X}");
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAsked::*;
        let range = |header: &str| parse_range(Some(header), 100);
        assert_eq!(parse_range(None, 100), Whole);
        assert_eq!(range("bytes=0-9"), Part { start: 0, end: 9 });
        assert_eq!(range("bytes=90-200"), Part { start: 90, end: 99 });
        assert_eq!(range("bytes=50-"), Part { start: 50, end: 99 });
        assert_eq!(range("bytes=-10"), Part { start: 90, end: 99 });
        assert_eq!(range("bytes=-1000"), Part { start: 0, end: 99 });
        assert_eq!(range("Bytes = 5-5"), Part { start: 5, end: 5 });
        assert_eq!(range("bytes=100-"), Unsatisfiable);
        assert_eq!(range("bytes=100-150"), Unsatisfiable);
        assert_eq!(range("bytes=-0"), Unsatisfiable);
        // Ignored: several ranges, other units, nonsense, backwards.
        assert_eq!(range("bytes=0-1,5-6"), Whole);
        assert_eq!(range("items=0-1"), Whole);
        assert_eq!(range("bytes=a-b"), Whole);
        assert_eq!(range("bytes=9-1"), Whole);
        assert_eq!(range("bytes=+1-2"), Whole);
        assert_eq!(range("bytes=-"), Whole);
        assert_eq!(range("bytes=1"), Whole);
        assert_eq!(range("bytes=99999999999999999999999-"), Whole);
    }

    #[test]
    fn content_dispositions_encode_every_unsafe_byte() {
        assert_eq!(content_disposition(true, "cat.png"), "inline; filename*=UTF-8''cat.png");
        assert_eq!(
            content_disposition(false, "rapport d'été \"final\";\r\n.pdf"),
            "attachment; filename*=UTF-8''rapport%20d%27%C3%A9t%C3%A9%20%22final%22%3B%0D%0A.pdf"
        );
    }

    #[test]
    fn etags() {
        assert!(etag_matches("\"abc\"", "\"abc\""));
        assert!(etag_matches("\"x\", W/\"abc\"", "\"abc\""));
        assert!(etag_matches("*", "\"abc\""));
        assert!(!etag_matches("\"abc-thumb\"", "\"abc\""));
    }

    #[test]
    fn paths() {
        let id = "md_abcdefghijklmnopqrstuv";
        assert_eq!(parse_path(&format!("/media/{id}")), Some((id, Variant::File)));
        assert_eq!(parse_path(&format!("/media/{id}/thumb")), Some((id, Variant::Thumbnail)));
        assert_eq!(parse_path(&format!("/media/{id}/other")), None);
        assert_eq!(parse_path("/media/md_..%2F..%2Fsecret"), None);
        assert_eq!(parse_path("/media/"), None);
    }
}
