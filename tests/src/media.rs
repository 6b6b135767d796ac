//! What the media tests need besides a node: raw HTTP with binary bodies and headers (uploads,
//! ranged downloads, an upload cut off half way), images made on the spot (a real PNG, a corrupt
//! one, one whose header claims a decompression bomb), and a real S3-compatible server: moto's
//! standalone server from PyPI, which implements the S3 REST API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// An HTTP response, read whole.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// The body as JSON (error answers and upload results).
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("status {} body {:?}", self.status, String::from_utf8_lossy(&self.body)))
    }

    /// The `error` code of a JSON error answer.
    pub fn error_code(&self) -> String {
        self.json().ok().and_then(|v| v["error"].as_str().map(str::to_owned)).unwrap_or_default()
    }
}

/// Send `head` (request line and headers, without the blank line) and `body`, read the whole
/// response (the node closes after answering).
pub async fn http(addr: SocketAddr, head: &str, body: &[u8]) -> anyhow::Result<Response> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    // The node may answer (413, 401 …) and close before reading a body it refuses.
    let _ = stream.write_all(body).await;
    read_response(&mut stream).await
}

async fn read_response(stream: &mut TcpStream) -> anyhow::Result<Response> {
    let mut raw = Vec::new();
    // A refused upload may be reset after the answer was sent: keep what arrived.
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw)).await;
    if read.is_err() {
        bail!("no complete response within 30 s");
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> anyhow::Result<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no response head")?;
    let head = std::str::from_utf8(&raw[..end])?;
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|line| line.split_whitespace().nth(1)).and_then(|s| s.parse().ok());
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok(Response { status: status.context("no status")?, headers, body: raw[end + 4..].to_vec() })
}

/// `POST /media?name=…` with the client's token; `content_type` is what the client claims.
pub async fn upload(
    addr: SocketAddr,
    token: &str,
    name: &str,
    content_type: Option<&str>,
    bytes: &[u8],
) -> anyhow::Result<Response> {
    let claimed = content_type.map(|t| format!("\r\nContent-Type: {t}")).unwrap_or_default();
    let head = format!(
        "POST /media?name={} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nContent-Length: {}{claimed}",
        percent_encode(name),
        bytes.len()
    );
    http(addr, &head, bytes).await
}

/// Start an upload that declares `declared` bytes, send `sent` of them and leave the
/// connection open (the caller kills the node meanwhile).
pub async fn start_upload(addr: SocketAddr, token: &str, declared: usize, sent: usize) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "POST /media?name=big.bin HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nContent-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&vec![0x5a; sent]).await?;
    stream.flush().await?;
    Ok(stream)
}

/// `GET` (or another method) of a path on the client port with extra header lines.
pub async fn get(addr: SocketAddr, method: &str, path: &str, headers: &[&str]) -> anyhow::Result<Response> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test");
    for header in headers {
        head.push_str("\r\n");
        head.push_str(header);
    }
    http(addr, &head, &[]).await
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real PNG of `width` × `height` pixels (a gradient, so it does not compress to nothing).
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).expect("a PNG encodes");
    out.into_inner()
}

/// A PNG signature and header followed by garbage where the image data should be.
pub fn corrupt_png() -> Vec<u8> {
    let mut bytes = png(64, 64);
    let keep = 33; // the signature (8) and the IHDR chunk (25)
    for (i, byte) in bytes.iter_mut().enumerate().skip(keep) {
        *byte = (i * 7 % 251) as u8;
    }
    bytes
}

/// A small, valid-looking PNG whose header claims `width` × `height` pixels: decoding it would
/// allocate gigabytes.
pub fn bomb_png(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = png(8, 8);
    // IHDR data starts after the signature (8), the chunk length (4) and its type (4).
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// CRC-32 as PNG chunks use it (so the bomb's header is a valid one).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// The files under `dir` (recursively), as paths relative to it.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if let Ok(relative) = path.strip_prefix(root) {
                out.push(relative.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A moto S3 server on loopback with one bucket, for as long as this lives.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub bucket: String,
}

impl S3Server {
    /// Start `moto_server`, or `None` (after saying SKIPPED for `test`) where it is not
    /// installed (`pip install 'moto[server]'`; `.ci/run` installs it).
    pub async fn start(test: &str) -> anyhow::Result<Option<S3Server>> {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?.port()
        };
        let spawned = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(err) => {
                crate::say_skipped(test, &format!("moto_server (pip install 'moto[server]') cannot be run: {err}"));
                return Ok(None);
            }
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let server = S3Server { child, endpoint: format!("http://{addr}"), bucket: "palaver-media".into() };
        // Up when it answers; then the bucket (moto checks no signature).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) =
                http(addr, "PUT /palaver-media HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0", &[]).await
            {
                if response.status == 200 {
                    return Ok(Some(server));
                }
                bail!("moto answered {} to creating the bucket", response.status);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("moto_server did not answer within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A node that keeps its media here: the `PALAVER_` settings, and credentials in the
    /// environment variables S3 clients read (moto accepts any).
    pub fn node_options(&self) -> crate::NodeOptions {
        let env = vec![
            ("MEDIA__BACKEND".into(), "s3".into()),
            ("MEDIA__S3__BUCKET".into(), self.bucket.clone()),
            ("MEDIA__S3__ENDPOINT".into(), self.endpoint.clone()),
            ("MEDIA__S3__ALLOW_HTTP".into(), "true".into()),
        ];
        let process_env = vec![
            ("AWS_ACCESS_KEY_ID".into(), "palaver-test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "palaver-test-secret".into()),
        ];
        crate::NodeOptions { env, process_env, ..crate::NodeOptions::default() }
    }

    /// The keys in the bucket (moto's ListObjectsV2), to check what was left behind.
    pub async fn keys(&self) -> anyhow::Result<Vec<String>> {
        let addr: SocketAddr = self.endpoint.trim_start_matches("http://").parse()?;
        let response = get(addr, "GET", &format!("/{}?list-type=2", self.bucket), &[]).await?;
        let listing = String::from_utf8_lossy(&response.body).into_owned();
        Ok(listing.split("<Key>").skip(1).filter_map(|rest| rest.split("</Key>").next()).map(str::to_owned).collect())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Where a node keeps media on the filesystem by default.
pub fn media_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("media")
}
