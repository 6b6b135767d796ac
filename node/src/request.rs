//! The minimal HTTP/1.1 both listeners speak (the client port in `http`, the admin port in
//! `admin` and the server API in `api`): one request per connection, a request head of bounded
//! size read before a deadline, a body of bounded `Content-Length` where one is expected (the
//! media service streams its own, `crate::media::upload`), and a response that closes the
//! connection. Nothing here knows a route.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

pub use crate::http_head::MAX_HEAD_BYTES;
use crate::http_head::{self, MAX_HEADERS};

/// A parsed request head.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub query: Option<String>,
    /// Headers with UTF-8 values, names in lower case.
    headers: Vec<(String, String)>,
    /// Bytes read past the head: the start of a WebSocket stream.
    pub rest: Vec<u8>,
}

impl Request {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// The value of `key` in the query string (`?key=value&…`), not percent-decoded.
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed before a whole head arrived.
    Closed,
    /// No whole head before the deadline.
    TimedOut,
    /// The head is longer than [`MAX_HEAD_BYTES`] (answer 431).
    TooLarge,
    /// Not an HTTP/1.x request (answer 400).
    Malformed,
    Io(io::Error),
}

/// Read and parse one request head before `deadline`.
pub async fn read_request<S: AsyncRead + Unpin>(stream: &mut S, deadline: Instant) -> Result<Request, ReadError> {
    let (head, rest) = match tokio::time::timeout_at(deadline, http_head::read_head(stream)).await {
        Ok(Ok(Some(read))) => read,
        Ok(Ok(None)) => return Err(ReadError::Closed),
        Ok(Err(err)) if err.kind() == io::ErrorKind::InvalidData => return Err(ReadError::TooLarge),
        Ok(Err(err)) => return Err(ReadError::Io(err)),
        Err(_) => return Err(ReadError::TimedOut),
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Some(parsed) = http_head::parse(&head, &mut headers) else {
        return Err(ReadError::Malformed);
    };
    let target = parsed.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_string())),
        None => (target, None),
    };
    let headers = parsed
        .headers
        .iter()
        .filter_map(|h| Some((h.name.to_ascii_lowercase(), std::str::from_utf8(h.value).ok()?.to_string())))
        .collect();
    Ok(Request { method: parsed.method.unwrap_or("").to_string(), path: path.to_string(), query, headers, rest })
}

/// Why no request body could be read.
#[derive(Debug)]
pub enum BodyError {
    /// No `Content-Length` (a chunked body included): answer 411.
    LengthRequired,
    /// Longer than the caller's bound: answer 413 with the bound.
    TooLarge(usize),
    /// The peer closed, or the body did not arrive before the deadline.
    Incomplete,
    Io(io::Error),
}

/// Read the request's body of `Content-Length` bytes, at most `max`, before `deadline`.
/// The bytes read past the head are its start.
pub async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    request: &mut Request,
    max: usize,
    deadline: Instant,
) -> Result<Vec<u8>, BodyError> {
    let Some(length) = request.header("content-length").and_then(|value| value.trim().parse::<usize>().ok()) else {
        return Err(BodyError::LengthRequired);
    };
    if length > max || request.rest.len() > length {
        return Err(BodyError::TooLarge(max));
    }
    let mut body = std::mem::take(&mut request.rest);
    let start = body.len();
    body.resize(length, 0);
    match tokio::time::timeout_at(deadline, stream.read_exact(&mut body[start..])).await {
        Ok(Ok(_)) => Ok(body),
        Ok(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => Err(BodyError::Incomplete),
        Ok(Err(err)) => Err(BodyError::Io(err)),
        Err(_) => Err(BodyError::Incomplete),
    }
}

/// Answer a read error the peer can still take (too large, malformed); the others end silently.
pub async fn answer_read_error<S: AsyncWrite + Unpin>(stream: &mut S, err: ReadError) -> io::Result<()> {
    match err {
        ReadError::TooLarge => respond(stream, 431, "text/plain", b"request head too large\n").await,
        ReadError::Malformed => respond(stream, 400, "text/plain", b"malformed HTTP request\n").await,
        ReadError::Io(err) => Err(err),
        ReadError::Closed | ReadError::TimedOut => Ok(()),
    }
}

/// Write a whole response and close the connection.
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    respond_with(stream, status, content_type, "", body).await
}

/// [`respond`] with extra header lines (each ending in `\r\n`).
pub async fn respond_with<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
) -> io::Result<()> {
    stream.write_all(head(status, content_type, extra_headers, body.len()).as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

/// The response head, `Connection: close` included.
pub fn head(status: u16, content_type: &str, extra_headers: &str, body_len: usize) -> String {
    let reason = reason(status);
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {body_len}\r\n{extra_headers}Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
    )
}

/// A response head with exactly the header lines given (each ending in `\r\n`) and
/// `Connection: close`: for responses whose caching and type headers are the caller's
/// (media downloads).
pub fn bare_head(status: u16, headers: &str) -> String {
    format!("HTTP/1.1 {status} {}\r\n{headers}Connection: close\r\n\r\n", reason(status))
}

/// The reason phrase of the statuses these listeners answer with.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    }
}

/// After answering a request whose body was not read (refused before it), keep reading and
/// dropping what the peer still sends, until it closes or `within` has passed. Closing with
/// unread bytes would reset the connection, and the peer might lose the answer before it reads
/// it. The answer must have been written, and the write side shut, first.
pub async fn linger<S: AsyncRead + Unpin>(stream: &mut S, within: std::time::Duration) {
    let mut sink = [0u8; 8 * 1024];
    let _ = tokio::time::timeout(within, async { while matches!(stream.read(&mut sink).await, Ok(1..)) {} }).await;
}

/// Percent-decode a query value (`%XX`; anything else, `+` included, stays as it is).
pub fn percent_decode(value: &str) -> Vec<u8> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Request, ReadError> {
        let mut input = bytes;
        read_request(&mut input, Instant::now() + Duration::from_secs(5)).await
    }

    #[tokio::test]
    async fn a_head_is_parsed_with_its_query_and_what_follows() {
        let request = parse(b"GET /cluster?room=r-1&x=2 HTTP/1.1\r\nHost: a:1\r\nAUTHORIZATION: Bearer t\r\n\r\nrest")
            .await
            .unwrap();
        assert_eq!((request.method.as_str(), request.path.as_str()), ("GET", "/cluster"));
        assert_eq!(request.query_param("room"), Some("r-1"));
        assert_eq!(request.query_param("x"), Some("2"));
        assert_eq!(request.query_param("ro"), None);
        assert_eq!(request.header("authorization"), Some("Bearer t"));
        assert_eq!(request.rest, b"rest");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2Fc%e2%82%AC+%zz%4"), "a b/c€+%zz%4".as_bytes());
    }

    #[tokio::test]
    async fn bad_heads_are_told_apart() {
        assert!(matches!(parse(b"not http\r\n\r\n").await, Err(ReadError::Malformed)));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n").await, Err(ReadError::Closed)));
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2 * MAX_HEAD_BYTES));
        assert!(matches!(parse(long.as_bytes()).await, Err(ReadError::TooLarge)));
    }
}
