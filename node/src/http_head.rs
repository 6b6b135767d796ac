//! The request head of the client port's HTTP/1.1 (`crate::http`): reading it off a stream,
//! bounded in size, and parsing it. Apart from the routing so that the part that takes a
//! stranger's bytes first can be fuzzed on its own (fuzz/fuzz_targets/http_head.rs).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest request head accepted.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Most header lines a request may have.
pub const MAX_HEADERS: usize = 32;

/// Read until the end of the request head. Returns the head and any bytes read past it;
/// `None` when the stream ends first, an `InvalidData` error when the head is too long.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf[searched_from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = searched_from + end + 4;
            let rest = buf.split_off(end);
            return Ok(Some((buf, rest)));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too large"));
        }
    }
}

/// Parse a complete request head; `None` when it is malformed, incomplete or has more than
/// [`MAX_HEADERS`] header lines.
pub fn parse<'h, 'b>(head: &'b [u8], headers: &'h mut [httparse::Header<'b>]) -> Option<httparse::Request<'h, 'b>> {
    let mut request = httparse::Request::new(headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => Some(request),
        _ => None,
    }
}
