//! A client of the server API (`/api/v1/` on a node's admin port) for the black-box tests: raw
//! HTTP/1.1 over TCP, one request per connection as the node serves them, so a test sees the
//! exact status line, headers and JSON body.

use std::net::SocketAddr;

use anyhow::Context;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer of the API.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Header lines, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Value::Null` when it is not JSON).
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// The `error` code of an error body.
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

/// Send `method path` to the admin port at `addr` with `bearer` as the token (if any) and
/// `body` as JSON (if any).
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<Answer> {
    let body = body.map(|value| value.to_string());
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    if let Some(bearer) = bearer {
        head.push_str(&format!("Authorization: Bearer {bearer}\r\n"));
    }
    if let Some(body) = &body {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    raw(addr, format!("{head}{}", body.unwrap_or_default()).as_bytes()).await
}

/// Send raw bytes as a request and read the whole answer.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> anyhow::Result<Answer> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut response = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .context("the API did not answer within 30 s")??;
    let text = String::from_utf8(response).context("the answer is not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").context("no end of head")?;
    let mut lines = head.lines();
    let status = lines.next().and_then(|line| line.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Ok(Answer { status, headers, body: serde_json::from_str(body).unwrap_or(Value::Null) })
}

/// [`call`] that must answer `status`; the answer's body.
pub async fn expect(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<Value>,
    status: u16,
) -> anyhow::Result<Value> {
    let answer = call(addr, method, path, Some(bearer), body.as_ref()).await?;
    anyhow::ensure!(answer.status == status, "{method} {path}: {answer:?}");
    Ok(answer.body)
}
