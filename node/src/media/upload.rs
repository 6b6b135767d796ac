//! `POST /media?name=<file name>`: an upload, the file as the request body.
//!
//! Before a byte of the body is read: the body must have a `Content-Length` (411
//! `length_required` without one, chunked bodies included) of 1 to `media.max_bytes` bytes
//! (400 for an empty one, 413 `too_large` above), the request an `Authorization: Bearer` token
//! (401), the user must be within `media.uploads_per_minute` and
//! `media.concurrent_uploads_per_user` on this node (429 `rate_limited`, with `Retry-After`),
//! and the store reserves the declared size against the user's `media.quota_bytes` (413
//! `quota_exceeded`). A client that sent `Expect: 100-continue` is told to go on only then, so
//! a refused upload costs it nothing; otherwise the refusal is answered while the body is
//! still arriving, and what follows is read and dropped for a moment so the answer is not lost.
//!
//! Then the body is streamed to the object store, never held whole: its first
//! [`sniff::SNIFF_BYTES`] name its type ([`sniff::media_type`]: 415 `type_mismatch` when the
//! declared `Content-Type` disagrees and an image is involved), then everything goes through
//! object_store's multipart upload in parts of [`PART_BYTES`] (S3's smallest part), at most
//! [`PARTS_IN_FLIGHT`] of them at once, while the SHA-256 of the bytes is computed. A client
//! silent for `media.upload_idle_timeout_ms` gets 408 `upload_timeout`; one that closes before
//! `Content-Length` bytes gets nothing. Either way the multipart upload is aborted.
//!
//! An image of the four types served inline is then read back and checked on the blocking pool
//! (`thumbnail.rs`: 422 `image_too_large` or `invalid_image`), and its thumbnail stored. Last,
//! the record is finished (`Store::complete_media`) with the sniffed type, the size, the hash,
//! the image's size and its thumbnail's, and the answer is 201 with the attachment as JSON:
//! `{"media": "md_…", "name", "type", "size", "width"?, "height"?, "thumbnail"?: {"width",
//! "height"}}`.
//!
//! Any failure after the reservation deletes what was written and the record, so nothing is
//! left behind; if a delete fails (or the node dies mid-upload), the record stays `Uploading`
//! and the collector takes it and its objects after `media.orphan_ttl_s`. With S3, parts of an
//! upload cut off by a crash are the bucket's to expire (a lifecycle rule aborting incomplete
//! multipart uploads after a day).

use std::io;
use std::time::{Duration, Instant};

use actors::hub::Hub;
use actors::metrics::Metrics;
use actors::names::now_ms;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use protocol::{ErrorCode, ServerFrame};
use sha2::{Digest, Sha256};
use store::{MediaRecord, MediaState, StoreError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::reply::{refuse, Refusal};
use super::throttle::Throttled;
use super::{objects, sniff, thumbnail, MediaService};
use crate::request::{self, Request};

/// Bytes per part of a multipart upload: S3's smallest part (all but the last).
pub const PART_BYTES: usize = 5 * 1024 * 1024;

/// Parts of one upload being written at once. One: the next part is filled only once the
/// last one is written, so an upload holds one part (5 MiB) at a time, whatever its size; the
/// socket's buffers keep the client sending meanwhile.
pub const PARTS_IN_FLIGHT: usize = 1;

/// Bytes read off the socket at a time.
const READ_BYTES: usize = 64 * 1024;

/// How long the body of a refused upload is read and dropped so that the client sees the
/// answer (`request::linger`).
const LINGER: Duration = Duration::from_secs(2);

/// Longest file name kept, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// The name of an upload that gave none.
const DEFAULT_NAME: &str = "file";

/// Answer an upload request.
pub async fn handle<S>(stream: &mut S, request: Request, hub: &Hub, media: &MediaService) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let expects_continue = request.header("expect").is_some_and(|value| value.eq_ignore_ascii_case("100-continue"));
    let admitted = match admit(&request, hub, media).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            Metrics::add(&hub.metrics().media_uploads_failed_total, 1);
            refuse(stream, &refusal, false).await?;
            // A client waiting for `100 Continue` sends no body; any other may be sending it.
            if !expects_continue {
                request::linger(stream, LINGER).await;
            }
            return Ok(());
        }
    };
    let Admitted { user, length, name, _slot } = admitted;
    let id = actors::names::new_media_id();
    let reserved = MediaRecord {
        id: id.clone(),
        owner: user.clone(),
        name,
        content_type: String::new(),
        size: length,
        sha256: String::new(),
        width: None,
        height: None,
        thumbnail: None,
        created_ms: now_ms(),
        state: MediaState::Uploading,
    };
    if let Err(err) = hub.store().reserve_media(reserved.clone(), media.settings.quota_bytes).await {
        Metrics::add(&hub.metrics().media_uploads_failed_total, 1);
        refuse(stream, &Refusal::store(err), false).await?;
        if !expects_continue {
            request::linger(stream, LINGER).await;
        }
        return Ok(());
    }
    let declared = request.header("content-type").map(str::to_owned);
    let outcome = async {
        if expects_continue && request.rest.is_empty() {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.map_err(|_| Failure::Gone)?;
        }
        let body =
            Body::new(&mut *stream, request.rest, length, Duration::from_millis(media.settings.upload_idle_timeout_ms));
        store_upload(body, declared.as_deref(), reserved, hub, media).await
    }
    .await;
    let refusal = match outcome {
        Ok(record) => {
            Metrics::add(&hub.metrics().media_uploads_total, 1);
            Metrics::add(&hub.metrics().media_upload_bytes_total, record.size);
            info!(media = record.id, user, size = record.size, content_type = record.content_type, "media uploaded");
            let body = serde_json::to_vec(&record.attachment()).expect("an attachment serialises");
            return request::respond(stream, 201, "application/json", &body).await;
        }
        Err(failure) => {
            Metrics::add(&hub.metrics().media_uploads_failed_total, 1);
            discard(hub, media, &id).await;
            match failure {
                Failure::Refused(refusal) => refusal,
                Failure::Gone => {
                    debug!(media = id, user, "upload abandoned by the client");
                    return Ok(());
                }
            }
        }
    };
    debug!(media = id, user, code = refusal.code, "upload refused");
    refuse(stream, &refusal, false).await?;
    // Refused part way: the rest of the body may still be on its way.
    request::linger(stream, LINGER).await;
    Ok(())
}

/// An upload allowed to start.
struct Admitted<'m> {
    user: String,
    /// The declared `Content-Length`.
    length: u64,
    name: String,
    /// This upload's place among the user's uploads in progress.
    _slot: super::throttle::Slot<'m>,
}

/// Everything checked before the store is written to: the length, the node's state, the
/// token, the user's rate.
async fn admit<'m>(request: &Request, hub: &Hub, media: &'m MediaService) -> Result<Admitted<'m>, Refusal> {
    let length = declared_length(request, media.settings.max_bytes)?;
    if hub.is_shutting_down() {
        return Err(Refusal::new(503, "unavailable", "this node is shutting down; upload to another"));
    }
    let user = authenticate(request, hub).await?;
    let slot = media.throttle.admit(&user, Instant::now()).map_err(|throttled| match throttled {
        Throttled::Rate { retry_after } => Refusal::new(
            429,
            "rate_limited",
            format!("at most {} uploads a minute; try again later", media.settings.uploads_per_minute),
        )
        .header("Retry-After", retry_after.as_secs_f64().ceil().max(1.0) as u64),
        Throttled::Concurrency => Refusal::new(
            429,
            "rate_limited",
            format!("at most {} uploads at once; wait for one to finish", media.settings.concurrent_uploads_per_user),
        )
        .header("Retry-After", 1),
    })?;
    let name = file_name(request.query_param("name"));
    Ok(Admitted { user, length, name, _slot: slot })
}

/// The body's declared length, within `max`.
fn declared_length(request: &Request, max: u64) -> Result<u64, Refusal> {
    let length_required =
        || Refusal::new(411, "length_required", "send the file with a Content-Length (chunked bodies are not taken)");
    if request.header("transfer-encoding").is_some() {
        return Err(length_required());
    }
    let Some(value) = request.header("content-length") else {
        return Err(length_required());
    };
    let Ok(length) = value.trim().parse::<u64>() else {
        return Err(Refusal::new(400, "bad_request", "Content-Length is not a number"));
    };
    if length == 0 {
        return Err(Refusal::new(400, "bad_request", "the file is empty"));
    }
    if length > max {
        return Err(Refusal::new(413, "too_large", format!("files may have at most {max} bytes")));
    }
    if request.rest.len() as u64 > length {
        return Err(Refusal::new(400, "bad_request", "more bytes than Content-Length says"));
    }
    Ok(length)
}

/// The user the request's bearer token names.
async fn authenticate(request: &Request, hub: &Hub) -> Result<String, Refusal> {
    let token = request.header("authorization").and_then(|value| {
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|token| !token.is_empty())
    });
    let Some(token) = token else {
        return Err(Refusal::new(401, "token_invalid", "send your token as Authorization: Bearer <token>")
            .header("WWW-Authenticate", "Bearer"));
    };
    match actors::requests::verify_token(hub, 0, token).await {
        Ok((user, _expires_ms)) => Ok(user),
        Err(frame) => Err(token_refusal(*frame)),
    }
}

/// The error frame of a refused token as an answer.
fn token_refusal(frame: ServerFrame) -> Refusal {
    let ServerFrame::Error { code, message, retry_after_ms, .. } = frame else {
        return Refusal::new(401, "token_invalid", "token refused");
    };
    let (status, code) = match code {
        ErrorCode::TokenExpired => (401, "token_expired"),
        ErrorCode::TokenRevoked => (401, "token_revoked"),
        ErrorCode::Unavailable => (503, "unavailable"),
        ErrorCode::Internal => (500, "internal"),
        ErrorCode::RateLimited | ErrorCode::SlowDown => (429, "rate_limited"),
        _ => (401, "token_invalid"),
    };
    let refusal = Refusal::new(status, code, message);
    match (status, retry_after_ms) {
        (401, _) => refusal.header("WWW-Authenticate", "Bearer"),
        (_, Some(ms)) => refusal.header("Retry-After", ms.div_ceil(1000).max(1)),
        _ => refusal,
    }
}

/// The file name given in the query, percent-decoded, without control characters, invisible
/// or text-direction characters (which make `gnp.exe` look like `exe.png`), `/` or `\`, and
/// at most [`MAX_NAME_BYTES`] bytes; `file` when nothing is left.
pub fn file_name(query_value: Option<&str>) -> String {
    let decoded = query_value.map(request::percent_decode).unwrap_or_default();
    let decoded = String::from_utf8_lossy(&decoded);
    let cleaned: String = decoded
        .chars()
        .filter(|&c| !c.is_control() && c != '/' && c != '\\')
        .filter(|&c| actors::names::hidden_char(c.encode_utf8(&mut [0; 4])).is_none())
        .collect();
    let mut name = cleaned.trim();
    if name.len() > MAX_NAME_BYTES {
        let mut end = MAX_NAME_BYTES;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name = name[..end].trim_end();
    }
    match name {
        "" | "." | ".." => DEFAULT_NAME.to_string(),
        name => name.to_string(),
    }
}

/// Why an upload did not finish.
enum Failure {
    /// Answer with this.
    Refused(Refusal),
    /// The client went away: nobody to answer.
    Gone,
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        Failure::Refused(refusal)
    }
}

/// Why the body could not be read.
enum BodyFault {
    /// Nothing arrived for the idle timeout.
    Idle,
    /// The client closed before the whole body (or the socket failed).
    Closed,
}

impl From<BodyFault> for Failure {
    fn from(fault: BodyFault) -> Self {
        match fault {
            BodyFault::Idle => Failure::Refused(Refusal::new(
                408,
                "upload_timeout",
                "nothing arrived for too long (media.upload_idle_timeout_ms); upload again",
            )),
            BodyFault::Closed => Failure::Gone,
        }
    }
}

/// The request body: the bytes read past the head, then the socket; exactly the declared
/// length, each read within the idle timeout.
struct Body<'s, S> {
    stream: &'s mut S,
    read_ahead: Vec<u8>,
    offset: usize,
    left: u64,
    idle: Duration,
}

impl<'s, S: AsyncRead + Unpin> Body<'s, S> {
    fn new(stream: &'s mut S, read_ahead: Vec<u8>, length: u64, idle: Duration) -> Self {
        Body { stream, read_ahead, offset: 0, left: length, idle }
    }

    /// Read into `buf`; 0 at the end of the body.
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, BodyFault> {
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = if self.offset < self.read_ahead.len() {
            let n = want.min(self.read_ahead.len() - self.offset);
            buf[..n].copy_from_slice(&self.read_ahead[self.offset..self.offset + n]);
            self.offset += n;
            n
        } else {
            match tokio::time::timeout(self.idle, self.stream.read(&mut buf[..want])).await {
                Err(_) => return Err(BodyFault::Idle),
                Ok(Ok(0) | Err(_)) => return Err(BodyFault::Closed),
                Ok(Ok(n)) => n,
            }
        };
        self.left -= n as u64;
        Ok(n)
    }

    /// Fill `buf` whole (the caller asks for no more than is left).
    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), BodyFault> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read(&mut buf[filled..]).await? {
                0 => return Err(BodyFault::Closed),
                n => filled += n,
            }
        }
        Ok(())
    }
}

/// Stream the body into the object store, check it, make the thumbnail and finish the record;
/// the finished record, or why not (the caller then discards the upload).
async fn store_upload<S: AsyncRead + Unpin>(
    mut body: Body<'_, S>,
    declared: Option<&str>,
    mut record: MediaRecord,
    hub: &Hub,
    media: &MediaService,
) -> Result<MediaRecord, Failure> {
    let length = record.size;
    let mut first = vec![0u8; usize::try_from(length).unwrap_or(usize::MAX).min(sniff::SNIFF_BYTES)];
    body.read_exact(&mut first).await?;
    let content_type = sniff::media_type(&first, first.len() as u64 == length, declared)
        .map_err(|refused| Refusal::new(415, "type_mismatch", refused.to_string()))?;
    let key = objects::file_key(&record.id);
    let upload = media.objects.put_multipart(&key).await.map_err(|err| Refusal::objects(&err))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut hasher = Sha256::new();
    hasher.update(&first);
    writer.write(&first);
    drop(first);
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        let n = match body.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(fault) => {
                let _ = writer.abort().await;
                return Err(fault.into());
            }
        };
        hasher.update(&buf[..n]);
        if let Err(err) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
            let _ = writer.abort().await;
            return Err(Refusal::objects(&err).into());
        }
        writer.write(&buf[..n]);
    }
    drop(buf);
    writer.finish().await.map_err(|err| Refusal::objects(&err))?;
    record.content_type = content_type;
    record.sha256 = hex(&hasher.finalize());
    if sniff::is_image(&record.content_type) {
        let thumb = examine_image(&record, media).await?;
        record.width = Some(thumb.width);
        record.height = Some(thumb.height);
        record.thumbnail = Some((thumb.thumbnail.width, thumb.thumbnail.height));
        let payload = PutPayload::from(thumb.thumbnail.bytes);
        media.objects.put(&objects::thumb_key(&record.id), payload).await.map_err(|err| Refusal::objects(&err))?;
    }
    record.state = MediaState::Ready;
    match hub.store().complete_media(record.clone()).await {
        Ok(()) => Ok(record),
        Err(StoreError::NoSuchMedia(_)) => Err(Refusal::new(
            409,
            "upload_expired",
            "the upload took longer than media.orphan_ttl_s and was collected; upload again",
        )
        .into()),
        Err(err) => Err(Refusal::store(err).into()),
    }
}

/// Read the stored image back and check it on the blocking pool, at most
/// `media.thumbnail_concurrency` at once.
async fn examine_image(record: &MediaRecord, media: &MediaService) -> Result<thumbnail::ImageFacts, Failure> {
    let _permit = media.thumbnails.acquire().await.expect("the thumbnail semaphore is never closed");
    let key = objects::file_key(&record.id);
    let bytes = async { media.objects.get(&key).await?.bytes().await }.await.map_err(|err| Refusal::objects(&err))?;
    let content_type = record.content_type.clone();
    let (max_pixels, max_px) = (media.settings.max_image_pixels, media.settings.thumbnail_max_px);
    let examined = tokio::task::spawn_blocking(move || thumbnail::examine(&bytes, &content_type, max_pixels, max_px))
        .await
        .unwrap_or_else(|panicked| Err(thumbnail::ImageRefused::Invalid(format!("the decoder failed: {panicked}"))));
    examined.map_err(|refused| {
        let code = match refused {
            thumbnail::ImageRefused::TooLarge { .. } => "image_too_large",
            thumbnail::ImageRefused::Invalid(_) => "invalid_image",
        };
        Failure::Refused(Refusal::new(422, code, refused.to_string()))
    })
}

/// Delete what an unfinished upload wrote, then its record. When a delete fails the record
/// stays, and the collector deletes both after `media.orphan_ttl_s`.
async fn discard(hub: &Hub, media: &MediaService, id: &str) {
    if let Err(err) = objects::delete_both(media.objects.as_ref(), id).await {
        warn!(media = id, error = %err, "media: could not delete an unfinished upload; the collector will");
        return;
    }
    if let Err(err) = hub.store().drop_media(&[id.to_string()]).await {
        warn!(media = id, error = %err, "media: could not drop an unfinished upload's record; the collector will");
    }
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant as TokioInstant;

    use super::*;

    async fn request(head: &str) -> Request {
        let mut bytes = head.as_bytes();
        request::read_request(&mut bytes, TokioInstant::now() + Duration::from_secs(5)).await.unwrap()
    }

    #[test]
    fn file_names_are_cleaned() {
        assert_eq!(file_name(Some("holiday%20photo.jpg")), "holiday photo.jpg");
        assert_eq!(file_name(Some("..%2F..%2Fetc%2Fpasswd")), "....etcpasswd");
        assert_eq!(file_name(Some("a%5Cb%0D%0Ac%00")), "abc");
        assert_eq!(file_name(Some("gnp%E2%80%AE.exe")), "gnp.exe");
        assert_eq!(file_name(Some("%2E%2E")), "file");
        assert_eq!(file_name(Some("%FF.txt")), "\u{FFFD}.txt");
        assert_eq!(file_name(None), "file");
        assert_eq!(file_name(Some("   ")), "file");
        let long = "é".repeat(200);
        let name = file_name(Some(&long));
        assert!(name.len() <= MAX_NAME_BYTES && name.len() >= MAX_NAME_BYTES - 1, "{}", name.len());
        assert!(name.chars().all(|c| c == 'é'));
    }

    #[tokio::test]
    async fn the_length_is_checked_before_the_body() {
        let check =
            |head: &'static str| async move { declared_length(&request(head).await, 100).map_err(|r| r.status) };
        assert_eq!(check("POST /media HTTP/1.1\r\nContent-Length: 100\r\n\r\n").await, Ok(100));
        assert_eq!(check("POST /media HTTP/1.1\r\n\r\n").await, Err(411));
        assert_eq!(check("POST /media HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").await, Err(411));
        assert_eq!(
            check("POST /media HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n").await,
            Err(411)
        );
        assert_eq!(check("POST /media HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await, Err(400));
        assert_eq!(check("POST /media HTTP/1.1\r\nContent-Length: -1\r\n\r\n").await, Err(400));
        assert_eq!(check("POST /media HTTP/1.1\r\nContent-Length: 101\r\n\r\n").await, Err(413));
        assert_eq!(check("POST /media HTTP/1.1\r\nContent-Length: 2\r\n\r\nabc").await, Err(400));
    }

    #[tokio::test]
    async fn a_body_is_its_read_ahead_then_the_socket_and_no_more() {
        let mut socket: &[u8] = b"defghij-next-request";
        let mut body = Body::new(&mut socket, b"abc".to_vec(), 7, Duration::from_secs(1));
        let mut all = Vec::new();
        let mut buf = [0u8; 2];
        loop {
            match body.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(_) => panic!("body failed"),
            }
        }
        assert_eq!(all, b"abcdefg");
        let mut short: &[u8] = b"de";
        let mut body = Body::new(&mut short, b"abc".to_vec(), 7, Duration::from_secs(1));
        let mut buf = [0u8; 7];
        assert!(matches!(body.read_exact(&mut buf).await, Err(BodyFault::Closed)));
    }

    #[tokio::test]
    async fn a_silent_client_times_out() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"ab").await.unwrap();
        let mut body = Body::new(&mut server, Vec::new(), 10, Duration::from_millis(50));
        let mut buf = [0u8; 10];
        assert!(matches!(body.read_exact(&mut buf).await, Err(BodyFault::Idle)));
    }

    #[test]
    fn token_errors_keep_their_code() {
        let frame = |code| ServerFrame::Error { req: Some(0), code, message: "m".into(), retry_after_ms: None };
        assert_eq!(token_refusal(frame(ErrorCode::TokenExpired)).code, "token_expired");
        assert_eq!(token_refusal(frame(ErrorCode::TokenRevoked)).status, 401);
        assert_eq!(token_refusal(frame(ErrorCode::TokenInvalid)).code, "token_invalid");
        assert_eq!(token_refusal(frame(ErrorCode::Unavailable)).status, 503);
    }

    #[test]
    fn hashes_are_lower_hex() {
        assert_eq!(hex(&[0x00, 0xAB, 0x7F]), "00ab7f");
    }
}
