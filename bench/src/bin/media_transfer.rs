//! `media_transfer`: how fast one node takes uploads and serves downloads, beside Debian's nginx
//! doing the same with files on the same disk in the same run, the node's memory while it takes
//! 20 uploads of 25 MiB at once, and what a thumbnail costs.
//!
//! - **upload**: `--uploads` files of `--mib` MiB each, all at once, one user per file (so the
//!   per-user limits do not pace the run): palaver's `POST /media` (streamed to files under its
//!   data directory, hashed, recorded) against nginx's WebDAV `PUT` to its root. The node's peak
//!   resident memory is sampled every 20 ms: it must stay bounded, not grow with the files.
//! - **download**: every file fetched `--rounds` times by as many concurrent clients through a
//!   signed link, against nginx serving the same bytes from disk (`sendfile on`).
//! - **thumbnail**: `--images` uploads of a `--pixels`-pixel JPEG against uploads of as many
//!   random bytes of the same size: the difference is the node's work on an image (header
//!   check, decode, scale, encode, store).
//!
//! Server CPU time per MiB comes from `/proc/PID/stat` around each phase. palaver and nginx are
//! pinned to CPU 0 (`taskset`, where there are two CPUs or more); run this program on another:
//!
//! `PALAVER_BIN=target/release/palaver taskset -c 1 target/release/media_transfer [--uploads 20]`
//! `[--mib 25] [--rounds 2] [--images 10] [--pixels 6000000]`
//!
//! A program rather than a test, so `cargo test` never spends its time measuring.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bench::{cpu_ticks, rss_kib};
use tests::{Client, ClientFrame, Encoding, Node, NodeOptions, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Options {
    uploads: usize,
    mib: usize,
    rounds: usize,
    images: usize,
    pixels: u64,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options { uploads: 20, mib: 25, rounds: 2, images: 10, pixels: 6_000_000 };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [key, value] = pair else { bail!("`{}` needs a value", pair[0]) };
        match key.as_str() {
            "--uploads" => options.uploads = value.parse()?,
            "--mib" => options.mib = value.parse()?,
            "--rounds" => options.rounds = value.parse()?,
            "--images" => options.images = value.parse()?,
            "--pixels" => options.pixels = value.parse()?,
            other => bail!("unknown option `{other}`: --uploads N --mib N --rounds N --images N --pixels N"),
        }
    }
    ensure!(options.uploads > 0 && options.mib > 0 && options.rounds > 0, "nothing to measure");
    Ok(options)
}

/// Pin a process and its threads to CPU 0; whether it worked.
fn pin(pid: u32) -> bool {
    std::process::Command::new("taskset")
        .args(["-a", "-cp", "0", &pid.to_string()])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Send a request head and `body`, read the status line, then count the rest of the response.
async fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    for chunk in body.chunks(256 * 1024) {
        stream.write_all(chunk).await?;
    }
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let end = response.windows(4).position(|w| w == b"\r\n\r\n").context("no response head")? + 4;
    let status = std::str::from_utf8(&response[..end])?
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((status, response.split_off(end)))
}

/// A GET whose body is counted, not kept: (status, body bytes).
async fn fetch(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, u64)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut buffer = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let mut body = 0u64;
    loop {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        if head.len() < 4 || !head.ends_with(b"\r\n\r\n") {
            // Still in the head: take bytes until its end.
            let mut taken = 0;
            while taken < n && !head.ends_with(b"\r\n\r\n") {
                head.push(buffer[taken]);
                taken += 1;
            }
            body += (n - taken) as u64;
        } else {
            body += n as u64;
        }
    }
    let status = String::from_utf8_lossy(&head).split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body))
}

/// Bytes that no sniffer takes for anything (a fixed pseudo-random stream).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A JPEG of about `pixels` pixels, 3:2 (a photo's shape and kind of content: gradients).
fn photo(pixels: u64) -> Vec<u8> {
    let width = ((pixels as f64 * 1.5).sqrt()) as u32;
    let height = (pixels / u64::from(width)) as u32;
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, ((x + y) % 256) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Jpeg).expect("a JPEG encodes");
    out.into_inner()
}

/// nginx on loopback serving `root` (GET from disk with sendfile, PUT through WebDAV), one
/// worker, pinned like the node.
struct Nginx {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Nginx {
    fn start(dir: &Path) -> anyhow::Result<Nginx> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let root = dir.join("root");
        std::fs::create_dir_all(&root)?;
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off; master_process off; worker_processes 1; pid {dir}/nginx.pid; error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off; sendfile on; tcp_nopush on; client_max_body_size 0;
  client_body_temp_path {dir}/body;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location / {{ dav_methods PUT; create_full_put_path on; }}
  }}
}}
",
                dir = dir.display(),
                root = root.display()
            ),
        )?;
        let child = std::process::Command::new("nginx")
            .args(["-c", &conf.display().to_string(), "-p", &dir.display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (apt-get install nginx)")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(Nginx { child, addr });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nginx did not listen; see {}", dir.join("error.log").display())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A phase's figures: MiB moved, wall time, server CPU ticks.
struct Phase {
    mib: f64,
    elapsed: Duration,
    ticks: u64,
}

impl Phase {
    fn row(&self, server: &str, what: &str) -> String {
        format!(
            "| {what} | {server} | {:.0} MiB | {:.0} MiB/s | {:.2} ms |",
            self.mib,
            self.mib / self.elapsed.as_secs_f64(),
            self.ticks as f64 * 10.0 / self.mib
        )
    }
}

async fn timed<F, Fut>(pid: u32, mib: f64, run: F) -> anyhow::Result<Phase>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let (ticks, started) = (cpu_ticks(&[pid]), Instant::now());
    run().await?;
    Ok(Phase { mib, elapsed: started.elapsed(), ticks: cpu_ticks(&[pid]) - ticks })
}

/// Upload `body` as `token`'s file; the media id.
async fn upload(addr: SocketAddr, token: &str, name: &str, body: &[u8]) -> anyhow::Result<String> {
    let head = format!(
        "POST /media?name={name} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\nContent-Length: {}",
        body.len()
    );
    let (status, answer) = exchange(addr, &head, body).await?;
    ensure!(status == 201, "upload {name}: {status} {}", String::from_utf8_lossy(&answer));
    let value: serde_json::Value = serde_json::from_slice(&answer)?;
    Ok(value["media"].as_str().context("a media id")?.to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let bytes = options.mib * 1024 * 1024;
    let total_mib = (options.uploads * options.mib) as f64;
    let work = tempfile::tempdir()?;
    let node = Node::start(
        NodeOptions::default()
            .env("MEDIA__MAX_BYTES", bytes)
            .env("MEDIA__QUOTA_BYTES", u64::MAX / 4)
            .env("MEDIA__UPLOADS_PER_MINUTE", 10_000)
            .env("MEDIA__MAX_IMAGE_PIXELS", options.pixels * 2)
            .env("LOG__FILTER", "warn"),
    )
    .await?;
    let pid = node.pid().context("the node is not running")?;
    let nginx = Nginx::start(work.path())?;
    let nginx_pid = nginx.child.id();
    let pinned = pin(pid) && pin(nginx_pid);

    // One user per upload.
    let mut users = Vec::new();
    for i in 0..options.uploads.max(options.images) {
        let (client, token) = Client::user(&node, Encoding::Json, &format!("media{i}")).await?;
        users.push((client, token));
    }
    let files: Arc<Vec<Vec<u8>>> = Arc::new((0..options.uploads).map(|i| noise(bytes, i as u64 + 1)).collect());

    // Uploads, with the node's memory sampled throughout.
    let rss_idle = rss_kib(&[pid]);
    let peak = Arc::new(AtomicU64::new(rss_idle));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(&[pid]), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let tokens: Vec<String> = users.iter().map(|(_, token)| token.clone()).collect();
    let mut ids = Vec::new();
    let palaver_up = timed(pid, total_mib, || async {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, token) in tokens.iter().take(options.uploads).enumerate() {
            let (files, token, addr) = (files.clone(), token.clone(), node.addr);
            tasks.spawn(async move {
                Ok::<_, anyhow::Error>((i, upload(addr, &token, &format!("file{i}.bin"), &files[i]).await?))
            });
        }
        while let Some(done) = tasks.join_next().await {
            ids.push(done??);
        }
        // In upload order: each link is asked for by the file's own uploader.
        ids.sort();
        Ok(())
    })
    .await?;
    sampling.store(false, Ordering::Relaxed);
    sampler.await?;
    let nginx_up = timed(nginx_pid, total_mib, || async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..options.uploads {
            let (files, addr) = (files.clone(), nginx.addr);
            tasks.spawn(async move {
                let head = format!("PUT /file{i}.bin HTTP/1.1\r\nHost: bench\r\nContent-Length: {}", files[i].len());
                let (status, _) = exchange(addr, &head, &files[i]).await?;
                ensure!(status == 201 || status == 204, "nginx PUT: {status}");
                Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok(())
    })
    .await?;

    // Downloads through signed links, every file `rounds` times, all at once. The files are not
    // posted, so each link is asked for by the file's uploader.
    let mut links = Vec::new();
    for (i, id) in &ids {
        let (client, _) = &mut users[*i];
        let req = client.next_req();
        match client.request(ClientFrame::MediaUrl { req, media: id.clone() }).await? {
            ServerFrame::MediaUrl { url, .. } => links.push(url),
            other => bail!("media_url: {other:?}"),
        }
    }
    let download_mib = total_mib * options.rounds as f64;
    let fetch_all = |addr: SocketAddr, paths: Vec<String>| async move {
        let mut tasks = tokio::task::JoinSet::new();
        for path in paths {
            tasks.spawn(async move { fetch(addr, &path).await });
        }
        let mut moved = 0;
        while let Some(done) = tasks.join_next().await {
            let (status, body) = done??;
            ensure!(status == 200, "download: {status}");
            moved += body;
        }
        Ok::<u64, anyhow::Error>(moved)
    };
    let palaver_paths: Vec<String> = (0..options.rounds).flat_map(|_| links.clone()).collect();
    let nginx_paths: Vec<String> =
        (0..options.rounds).flat_map(|_| (0..options.uploads).map(|i| format!("/file{i}.bin"))).collect();
    let palaver_down = timed(pid, download_mib, || async {
        let moved = fetch_all(node.addr, palaver_paths).await?;
        ensure!(moved == (bytes * options.uploads * options.rounds) as u64, "moved {moved}");
        Ok(())
    })
    .await?;
    let nginx_down = timed(nginx_pid, download_mib, || async {
        let moved = fetch_all(nginx.addr, nginx_paths).await?;
        ensure!(moved == (bytes * options.uploads * options.rounds) as u64, "moved {moved}");
        Ok(())
    })
    .await?;

    // Thumbnails: an image upload against an upload of as many bytes that are not an image.
    let image = photo(options.pixels);
    let plain = noise(image.len(), 99);
    let mut image_ms = Vec::new();
    let mut plain_ms = Vec::new();
    for (i, (_, token)) in users.iter().take(options.images).enumerate() {
        let started = Instant::now();
        upload(node.addr, token, &format!("photo{i}.jpg"), &image).await?;
        image_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        upload(node.addr, token, &format!("plain{i}.bin"), &plain).await?;
        plain_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };

    println!(
        "media_transfer: {} files of {} MiB; palaver and nginx {} CPU 0; this program on the others",
        options.uploads,
        options.mib,
        if pinned { "pinned to" } else { "NOT pinned to" }
    );
    println!("| phase | server | moved | MiB/s | server CPU per MiB |");
    println!("|---|---|---|---|---|");
    println!("{}", palaver_up.row("palaver", &format!("{} uploads at once", options.uploads)));
    println!("{}", nginx_up.row("nginx (WebDAV PUT)", &format!("{} uploads at once", options.uploads)));
    println!("{}", palaver_down.row("palaver", &format!("{} downloads at once", links.len() * options.rounds)));
    println!("{}", nginx_down.row("nginx (sendfile)", &format!("{} downloads at once", links.len() * options.rounds)));
    println!(
        "palaver resident memory: {} MiB idle, {} MiB peak during the uploads ({} MiB uploaded at once)",
        rss_idle / 1024,
        peak.load(Ordering::Relaxed) / 1024,
        total_mib
    );
    let (image_median, plain_median) = (median(&mut image_ms), median(&mut plain_ms));
    println!(
        "thumbnail: a {:.1} MP JPEG ({} KiB) uploads in {:.0} ms (median of {}), as many plain bytes in {:.0} ms: {:.0} ms per image",
        options.pixels as f64 / 1e6,
        image.len() / 1024,
        image_median,
        options.images,
        plain_median,
        image_median - plain_median
    );
    Ok(())
}
