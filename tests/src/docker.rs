//! Docker scenarios: the image and compose files of `docker/` run as a cluster behind HAProxy,
//! and the faults operators inject with docker (kill, pause, network disconnect, scale up and
//! down) while clients with a ledger talk through the load balancer.
//!
//! - [`Stack`] brings up `docker/compose.yaml` + `docker/compose.sqlite.yaml` (or, on
//!   FoundationDB, `docker/compose.yaml` alone) under a project name of its own, finds containers by compose's labels, injects faults, reads HAProxy's view
//!   (its stats CSV) and each node's own view (`/cluster` on the admin port, `/readyz`, read from
//!   inside the container), and removes containers, networks, volumes and its image when dropped, whether
//!   the test passed or not. A run killed before that is cleaned up by the next one.
//! - [`Load`] keeps [`Chatter`]s sending through the load balancer and records when each send
//!   started and was acked, which is what "recovery time" is measured from.
//!
//! This machine kind has a Docker engine but no registry, so [`base_image`] makes a Debian root
//! with debootstrap (tests/docker/base-image.sh, cached by a hash of the script) and it replaces
//! every public image through the variables the compose file already has (`RUNTIME_IMAGE`,
//! `RUST_IMAGE`, `HAPROXY_IMAGE`, `FDB_IMAGE`); on FoundationDB, [`fdb_image`] packs the
//! FoundationDB installed on this machine into an image that stands in for the official one
//! (tests/docker/fdb-image.sh). The node binary is the one cargo already built
//! for the other tests, handed to the Dockerfile as `PREBUILT_BINARY`, so Rust is not compiled
//! twice. Everything else is the files users run.
//!
//! Host-side traffic goes only to HAProxy's ports, published on 127.0.0.1. Every docker command
//! has a time limit, and every wait a deadline.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cluster::{Chatter, TEST_COOKIE};
use crate::{Client, ClientFrame, Encoding, ServerFrame, TEST_TOKEN_KEY};

/// Limit for one quick docker command (inspect, kill, pause, exec).
pub const DOCKER_CMD: Duration = Duration::from_secs(60);
/// Limit for a compose command that creates, starts or stops containers.
pub const COMPOSE_CMD: Duration = Duration::from_secs(180);
/// Limit for building the local base image (debootstrap downloads Debian packages).
pub const BASE_IMAGE_BUILD: Duration = Duration::from_secs(20 * 60);
/// How long a cluster may take to settle after a change (start, a node back, scaling).
pub const SETTLE: Duration = Duration::from_secs(90);

/// Write a line to the test's real stdout. libtest captures `println!` of passing tests, but
/// the summary table and "skipped" lines must show in CI's log whatever the flags.
pub fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Run a program to completion within `limit`; its stdout, or an error with its stderr.
pub async fn run(program: &str, args: &[String], env: &[(String, String)], limit: Duration) -> anyhow::Result<String> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let shown = format!("{program} {}", args.join(" "));
    let child = command.spawn().with_context(|| format!("starting `{shown}`"))?;
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("`{shown}` did not finish within {limit:?}"))??;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("`{shown}` failed ({}): {}", output.status, tail(&stderr, 30));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `run` for docker.
pub async fn docker(args: &[&str]) -> anyhow::Result<String> {
    run("docker", &strings(args), &[], DOCKER_CMD).await
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The engine's version if a Docker engine answers, else why not.
pub async fn engine() -> Result<String, String> {
    match run("docker", &strings(&["version", "--format", "{{.Server.Version}}"]), &[], Duration::from_secs(20)).await {
        Ok(version) if !version.trim().is_empty() => Ok(version.trim().to_string()),
        Ok(_) => Err("`docker version` named no server".into()),
        Err(err) => Err(format!("{err:#}")),
    }
}

/// The compose command: `docker compose` (v2) if present, else `docker-compose` (v1).
pub async fn compose_command() -> anyhow::Result<Vec<String>> {
    if run("docker", &strings(&["compose", "version"]), &[], Duration::from_secs(20)).await.is_ok() {
        return Ok(strings(&["docker", "compose"]));
    }
    if run("docker-compose", &strings(&["version"]), &[], Duration::from_secs(20)).await.is_ok() {
        return Ok(strings(&["docker-compose"]));
    }
    bail!("neither `docker compose` nor `docker-compose` is installed")
}

/// Check that the FoundationDB variant (`docker/compose.yaml` alone) parses and interpolates:
/// it cannot run here (no FoundationDB image), but it is the file users start with.
pub async fn check_fdb_compose_parses() -> anyhow::Result<()> {
    let compose = compose_command().await?;
    let mut args: Vec<String> = compose[1..].to_vec();
    args.extend(["-f".to_string(), repo_root().join("docker/compose.yaml").display().to_string()]);
    args.extend(strings(&["config", "-q"]));
    let env = [
        ("PALAVER_AUTH__TOKEN_KEY".to_string(), TEST_TOKEN_KEY.to_string()),
        ("PALAVER_CLUSTER__COOKIE".to_string(), TEST_COOKIE.to_string()),
    ];
    run(&compose[0], &args, &env, Duration::from_secs(60)).await.map(|_| ())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The FoundationDB image made from the FoundationDB installed on this machine
/// (tests/docker/fdb-image.sh, on `base`): its tag, or `Ok(None)` if none is installed.
pub async fn fdb_image(base: &str) -> anyhow::Result<Option<String>> {
    let script = repo_root().join("tests/docker/fdb-image.sh");
    let installed = run(
        "bash",
        &[repo_root().join(".ci/fdb-server.sh").display().to_string(), "find".into()],
        &[],
        Duration::from_secs(20),
    )
    .await;
    if installed.is_err() {
        return Ok(None);
    }
    let out = run("bash", &[script.display().to_string(), base.to_string()], &[], BASE_IMAGE_BUILD).await?;
    let tag = out.lines().last().map(|line| line.trim().to_string()).filter(|tag| !tag.is_empty());
    tag.map(Some).context("fdb-image.sh printed no tag")
}

/// The local base image (made on first use, then reused): its tag.
pub async fn base_image() -> anyhow::Result<String> {
    let script = repo_root().join("tests/docker/base-image.sh");
    let out = run("bash", &[script.display().to_string()], &[], BASE_IMAGE_BUILD).await?;
    out.lines()
        .last()
        .map(|line| line.trim().to_string())
        .filter(|tag| !tag.is_empty())
        .context("base-image.sh printed no tag")
}

/// One server line of HAProxy's stats.
#[derive(Debug, Clone)]
pub struct LbServer {
    pub name: String,
    /// UP, DOWN, MAINT, "MAINT (resolution)", "no check", ...
    pub status: String,
    /// Current sessions (WebSocket connections) through this server.
    pub sessions: u64,
    pub addr: String,
}

/// How a stack is set up.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Three named nodes forming a cluster; off: `palaver-1` alone, cluster disabled.
    pub cluster: bool,
    /// The FoundationDB variant (`docker/compose.yaml` alone: the nodes on a FoundationDB
    /// container) with this FoundationDB image ([`fdb_image`]); `None`: the sqlite variant.
    pub fdb_image: Option<String>,
}

/// A compose project of the sqlite or the FoundationDB variant, with HAProxy in front.
pub struct Stack {
    pub project: String,
    compose: Vec<String>,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
    _context: tempfile::TempDir,
    pub image: String,
    pub base: String,
    pub lb_port: u16,
    pub stats_port: u16,
    pub options: StackOptions,
    /// Containers started with `docker run` (bad-input nodes), removed on drop.
    extras: Mutex<Vec<String>>,
    /// Untagged images before the build: the classic builder leaves each stage's result as an
    /// untagged image, and teardown removes the ones this run made.
    untagged_before: HashSet<String>,
}

/// The label that marks `docker run` containers of a stack.
const EXTRA_LABEL: &str = "palaver.test.project";
/// Project names are this prefix and the test process's pid (so a later run can tell whether
/// the run that made a project is still alive).
const PROJECT_PREFIX: &str = "pdt";

impl Stack {
    /// Build the image (from `binary`, on `base`) and start the nodes and HAProxy.
    pub async fn up(base: &str, binary: &Path, options: StackOptions) -> anyhow::Result<Stack> {
        let compose = compose_command().await?;
        reap_stale_projects(&compose).await;
        let project = format!("{PROJECT_PREFIX}{}", std::process::id());
        let root = repo_root();
        // The build context: the docker/ directory and the binary (stripped: 20 MB, not 140).
        let context = tempfile::Builder::new().prefix("palaver-docker-context").tempdir()?;
        std::fs::create_dir_all(context.path().join("docker"))?;
        for entry in std::fs::read_dir(root.join("docker"))? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), context.path().join("docker").join(entry.file_name()))?;
            }
        }
        let staged = context.path().join("palaver");
        let stripped = std::process::Command::new("strip")
            .arg("-o")
            .arg(&staged)
            .arg(binary)
            .status()
            .map(|status| status.success())
            .unwrap_or(false);
        if !stripped {
            std::fs::copy(binary, &staged).with_context(|| format!("copying {}", binary.display()))?;
        }
        let image = format!("palaver-test/node:{project}");
        let env: Vec<(String, String)> = [
            ("PALAVER_AUTH__TOKEN_KEY", TEST_TOKEN_KEY.to_string()),
            ("PALAVER_CLUSTER__COOKIE", TEST_COOKIE.to_string()),
            ("PALAVER_CLUSTER_ENABLED", options.cluster.to_string()),
            ("RUST_IMAGE", base.to_string()),
            ("RUNTIME_IMAGE", base.to_string()),
            ("FDB_IMAGE", options.fdb_image.clone().unwrap_or_else(|| base.to_string())),
            ("HAPROXY_IMAGE", base.to_string()),
            ("PALAVER_BUILD_CONTEXT", context.path().display().to_string()),
            ("PALAVER_PREBUILT_BINARY", "palaver".to_string()),
            ("PALAVER_IMAGE", image.clone()),
            ("PALAVER_WITH_FDB", if options.fdb_image.is_some() { "1" } else { "0" }.to_string()),
            // Docker picks free ports on 127.0.0.1.
            ("PALAVER_LB_BIND", "127.0.0.1".to_string()),
            ("PALAVER_LB_PORT", "0".to_string()),
            ("PALAVER_LB_STATS_PORT", "0".to_string()),
            // Cheap password hashing keeps sign-ups fast (as in every black-box test).
            ("PALAVER_ARGON2_MEMORY_KIB", "1024".to_string()),
            ("PALAVER_ARGON2_ITERATIONS", "1".to_string()),
            ("PALAVER_LOG_FILTER", "info".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let untagged_before = untagged_images().await?;
        let mut stack = Stack {
            project,
            compose,
            files: match options.fdb_image {
                Some(_) => vec![root.join("docker/compose.yaml")],
                None => vec![root.join("docker/compose.yaml"), root.join("docker/compose.sqlite.yaml")],
            },
            env,
            _context: context,
            image,
            base: base.to_string(),
            lb_port: 0,
            stats_port: 0,
            options,
            extras: Mutex::new(Vec::new()),
            untagged_before,
        };
        // All node services share one image: build it once.
        stack.compose(&["build", "palaver-1"], Duration::from_secs(15 * 60)).await?;
        let services: &[&str] = if stack.options.cluster {
            &["palaver-1", "palaver-2", "palaver-3", "haproxy"]
        } else {
            &["palaver-1", "haproxy"]
        };
        let mut args = vec!["up", "-d", "--no-build"];
        args.extend_from_slice(services);
        if stack.options.fdb_image.is_some() {
            // The nodes wait for the cluster file fdb-init writes once the database is up.
            args.extend(["fdb", "fdb-init"]);
        }
        stack.compose(&args, COMPOSE_CMD).await?;
        let haproxy = stack.container("haproxy").await?;
        stack.lb_port = published_port(&haproxy, "8080").await?;
        stack.stats_port = published_port(&haproxy, "8404").await?;
        Ok(stack)
    }

    /// Run compose with this stack's project, files and environment.
    pub async fn compose(&self, args: &[&str], limit: Duration) -> anyhow::Result<String> {
        let (program, args) = self.compose_args(args);
        run(&program, &args, &self.env, limit).await
    }

    fn compose_args(&self, args: &[&str]) -> (String, Vec<String>) {
        let mut all: Vec<String> = self.compose[1..].to_vec();
        all.extend(["-p".to_string(), self.project.clone()]);
        for file in &self.files {
            all.extend(["-f".to_string(), file.display().to_string()]);
        }
        all.extend(strings(args));
        (self.compose[0].clone(), all)
    }

    /// The WebSocket URL of the load balancer.
    pub fn lb_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.lb_port)
    }

    /// Container ids of a service (running or not).
    pub async fn containers(&self, service: &str) -> anyhow::Result<Vec<String>> {
        let out = docker(&[
            "ps",
            "-a",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ])
        .await?;
        Ok(out.split_whitespace().map(String::from).collect())
    }

    /// The one container of a service.
    pub async fn container(&self, service: &str) -> anyhow::Result<String> {
        let mut ids = self.containers(service).await?;
        anyhow::ensure!(ids.len() == 1, "service {service} has {} containers", ids.len());
        Ok(ids.remove(0))
    }

    /// The compose network the stack's containers are on.
    pub async fn network(&self) -> anyhow::Result<String> {
        let haproxy = self.container("haproxy").await?;
        let out =
            docker(&["inspect", "-f", "{{range $name, $net := .NetworkSettings.Networks}}{{$name}} {{end}}", &haproxy])
                .await?;
        out.split_whitespace().next().map(String::from).context("haproxy is on no network")
    }

    /// A container's node name (its hostname; see docker/entrypoint.sh).
    pub async fn node_name(&self, id: &str) -> anyhow::Result<String> {
        Ok(docker(&["inspect", "-f", "{{.Config.Hostname}}", id]).await?.trim().to_string())
    }

    /// Node containers that are running and not paused, with their names.
    pub async fn running_nodes(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut nodes = Vec::new();
        for service in ["palaver-1", "palaver-2", "palaver-3", "palaver-extra"] {
            for id in self.containers(service).await? {
                let state = docker(&["inspect", "-f", "{{.State.Status}}", &id]).await?;
                if state.trim() == "running" {
                    nodes.push((id.clone(), self.node_name(&id).await?));
                }
            }
        }
        Ok(nodes)
    }

    /// GET `path` on a node's client port, from inside its container: (status, body).
    pub async fn node_get(&self, id: &str, path: &str) -> anyhow::Result<(u16, String)> {
        self.node_get_on(id, 7600, path).await
    }

    /// GET `path` on a node's admin port (loopback inside its container, no token): (status, body).
    pub async fn node_admin_get(&self, id: &str, path: &str) -> anyhow::Result<(u16, String)> {
        self.node_get_on(id, 7601, path).await
    }

    async fn node_get_on(&self, id: &str, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET {path} HTTP/1.1\\r\\nHost: test\\r\\nConnection: close\\r\\n\\r\\n' >&3 && timeout 5 cat <&3"
        );
        let out = docker(&["exec", id, "bash", "-c", &script]).await?;
        let status = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
        Ok((status, body))
    }

    /// A node's cluster view: (live nodes, serving).
    pub async fn view(&self, id: &str) -> anyhow::Result<(Vec<String>, bool)> {
        let (status, body) = self.node_admin_get(id, "/cluster").await?;
        anyhow::ensure!(status == 200, "/cluster answered {status}: {body}");
        let value: serde_json::Value = serde_json::from_str(&body).with_context(|| format!("/cluster body {body}"))?;
        let live = value["cluster"]["live"]
            .as_array()
            .map(|live| live.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default();
        Ok((live, value["cluster"]["serving"].as_bool().unwrap_or(false)))
    }

    /// HAProxy's servers of the `palaver` backend.
    pub async fn lb_servers(&self) -> anyhow::Result<Vec<LbServer>> {
        let mut stream =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(("127.0.0.1", self.stats_port))).await??;
        stream.write_all(b"GET /stats;csv HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").await?;
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response)).await??;
        let (head, body) = response.split_once("\r\n\r\n").with_context(|| format!("stats answered {response:?}"))?;
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)?
        } else {
            body.to_string()
        };
        let mut lines = body.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().trim_start_matches("# ").split(',').collect();
        let column = |name: &str| header.iter().position(|h| *h == name).with_context(|| format!("no {name} in stats"));
        let (px, sv, status, scur, addr) =
            (column("pxname")?, column("svname")?, column("status")?, column("scur")?, column("addr")?);
        let mut servers = Vec::new();
        for line in lines {
            let fields: Vec<&str> = line.split(',').collect();
            if fields.get(px) != Some(&"palaver") || matches!(fields.get(sv), Some(&"BACKEND") | Some(&"FRONTEND")) {
                continue;
            }
            servers.push(LbServer {
                name: fields[sv].to_string(),
                status: fields.get(status).unwrap_or(&"").to_string(),
                sessions: fields.get(scur).and_then(|s| s.parse().ok()).unwrap_or(0),
                addr: fields.get(addr).unwrap_or(&"").to_string(),
            });
        }
        Ok(servers)
    }

    /// Wait until every running node is healthy for docker, UP in HAProxy (as many UP servers
    /// as running nodes) and, with the cluster, every node sees exactly the running ones live
    /// and serves. Returns how long it took.
    pub async fn wait_settled(&self, limit: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let deadline = started + limit;
        loop {
            let state = self.settled_state().await;
            match state {
                Ok(None) => return Ok(started.elapsed()),
                Ok(Some(why)) | Err(why) if Instant::now() > deadline => {
                    bail!("the stack did not settle within {limit:?}: {why}")
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// `None` when settled, else what is missing.
    async fn settled_state(&self) -> Result<Option<String>, String> {
        let nodes = self.running_nodes().await.map_err(|e| format!("{e:#}"))?;
        let mut names: Vec<String> = nodes.iter().map(|(_, name)| name.clone()).collect();
        names.sort();
        for (id, name) in &nodes {
            let health = docker(&["inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", id])
                .await
                .map_err(|e| format!("{e:#}"))?;
            if health.trim() != "healthy" {
                return Ok(Some(format!("{name} is {} for docker", health.trim())));
            }
            if self.options.cluster {
                let (live, serving) = self.view(id).await.map_err(|e| format!("{name}: {e:#}"))?;
                if live != names || !serving {
                    return Ok(Some(format!("{name} sees {live:?} (serving {serving}), expected {names:?}")));
                }
            }
        }
        let servers = self.lb_servers().await.map_err(|e| format!("{e:#}"))?;
        let up = servers.iter().filter(|s| s.status == "UP").count();
        if up != nodes.len() {
            let shown: Vec<String> = servers
                .iter()
                .filter(|s| !s.status.starts_with("MAINT"))
                .map(|s| format!("{} {}", s.name, s.status))
                .collect();
            return Ok(Some(format!("HAProxy has {up} servers UP for {} nodes: {shown:?}", nodes.len())));
        }
        Ok(None)
    }

    /// The running core node (palaver-1..3) with the most sessions through HAProxy.
    pub async fn busiest_core_node(&self) -> anyhow::Result<(String, String, u64)> {
        let servers = self.lb_servers().await?;
        let mut best: Option<(String, String, u64)> = None;
        let services: &[&str] =
            if self.options.cluster { &["palaver-1", "palaver-2", "palaver-3"] } else { &["palaver-1"] };
        for service in services {
            let sessions = servers.iter().find(|s| s.name == *service).map_or(0, |s| s.sessions);
            let better = match &best {
                None => true,
                Some((_, _, most)) => sessions > *most,
            };
            if better {
                best = Some((self.container(service).await?, service.to_string(), sessions));
            }
        }
        best.context("no core node")
    }

    /// Sessions HAProxy has open to servers at `addr`'s IP (for scaled or `docker run` nodes).
    pub async fn sessions_to(&self, id: &str) -> anyhow::Result<u64> {
        let ip = docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", id]).await?;
        let ips: HashSet<&str> = ip.split_whitespace().collect();
        let servers = self.lb_servers().await?;
        Ok(servers
            .iter()
            .filter(|s| s.addr.rsplit_once(':').is_some_and(|(ip, _)| ips.contains(ip)))
            .map(|s| s.sessions)
            .sum())
    }

    /// The HAProxy status of the server at a container's address, if any.
    pub async fn lb_status_of(&self, id: &str) -> anyhow::Result<Option<String>> {
        let ip = docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", id]).await?;
        let ips: HashSet<&str> = ip.split_whitespace().collect();
        let servers = self.lb_servers().await?;
        Ok(servers
            .iter()
            .find(|s| s.addr.rsplit_once(':').is_some_and(|(ip, _)| ips.contains(ip)))
            .map(|s| s.status.clone()))
    }

    /// Network aliases of a container on `network` (to reconnect it as it was).
    pub async fn aliases(&self, id: &str, network: &str) -> anyhow::Result<Vec<String>> {
        let out = docker(&[
            "inspect",
            "-f",
            &format!("{{{{json (index .NetworkSettings.Networks \"{network}\").Aliases}}}}"),
            id,
        ])
        .await?;
        Ok(serde_json::from_str::<Option<Vec<String>>>(out.trim())?.unwrap_or_default())
    }

    /// Open `count` connections through the load balancer, one after another: for each, the
    /// node that welcomed it, or why it failed.
    pub async fn probe_routing(&self, count: usize) -> Vec<Result<String, String>> {
        let mut outcomes = Vec::new();
        for _ in 0..count {
            let probe = async {
                let mut client = Client::connect_raw(&self.lb_url(), Encoding::Json).await?;
                client
                    .send(&ClientFrame::Hello { versions: vec![1], client: Some("docker-probe".into()), batch: false })
                    .await?;
                let node = match client.recv().await? {
                    ServerFrame::Welcome { node, .. } => node,
                    other => bail!("expected welcome, got {other:?}"),
                };
                client.close().await?;
                anyhow::Ok(node)
            };
            outcomes.push(match tokio::time::timeout(Duration::from_secs(10), probe).await {
                Ok(Ok(node)) => Ok(node),
                Ok(Err(err)) => Err(format!("{err:#}")),
                Err(_) => Err("no welcome within 10 s".into()),
            });
        }
        outcomes
    }

    /// Wait until HAProxy has exactly as many servers UP as nodes run (a node that went away
    /// is out of rotation), and still has `stable` later: HAProxy may learn a dead node's
    /// address from DNS late and, before version 3.1, count it up until a check fails. Returns
    /// how long until the stable stretch began.
    pub async fn wait_lb_matches_nodes(&self, stable: Duration, limit: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut since: Option<Instant> = None;
        loop {
            let nodes = self.running_nodes().await?.len();
            let servers = self.lb_servers().await?;
            let up = servers.iter().filter(|s| s.status == "UP").count();
            if up == nodes {
                let since = *since.get_or_insert_with(Instant::now);
                if since.elapsed() >= stable {
                    return Ok(since.duration_since(started));
                }
            } else {
                since = None;
            }
            if started.elapsed() > limit {
                bail!("HAProxy has {up} servers UP for {nodes} running nodes after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Start a node container with `docker run` on the stack's network, reachable as
    /// `palaver-extra` (so HAProxy's server template picks it up), with extra environment.
    pub async fn run_extra_node(&self, name: &str, env: &[(&str, &str)]) -> anyhow::Result<String> {
        let network = self.network().await?;
        let container = format!("{}-{name}", self.project);
        let mut args = strings(&[
            "run",
            "-d",
            "--name",
            &container,
            "--hostname",
            name,
            "--network",
            &network,
            "--network-alias",
            "palaver-extra",
            "--label",
            &format!("{EXTRA_LABEL}={}", self.project),
        ]);
        let defaults = [
            ("PALAVER_AUTH__TOKEN_KEY", TEST_TOKEN_KEY),
            ("PALAVER_AUTH__ARGON2_MEMORY_KIB", "1024"),
            ("PALAVER_AUTH__ARGON2_ITERATIONS", "1"),
            ("PALAVER_CLUSTER__COOKIE", TEST_COOKIE),
        ];
        for (key, value) in defaults.iter().chain(env) {
            args.extend(["-e".to_string(), format!("{key}={value}")]);
        }
        args.push(self.image.clone());
        let id = run("docker", &args, &[], DOCKER_CMD).await?.trim().to_string();
        self.extras.lock().expect("extras").push(id.clone());
        Ok(id)
    }

    pub async fn remove_extra_node(&self, id: &str) -> anyhow::Result<()> {
        docker(&["rm", "-f", "-v", id]).await?;
        self.extras.lock().expect("extras").retain(|x| x != id);
        Ok(())
    }

    /// The last lines of a container's log (stdout and stderr).
    pub async fn logs(&self, id: &str, lines: usize) -> String {
        self.log_of(id, &["--tail", &lines.to_string()]).await
    }

    /// A container's log (stdout and stderr), `docker logs` with `options`.
    async fn log_of(&self, id: &str, options: &[&str]) -> String {
        let mut args = strings(&["logs"]);
        args.extend(strings(options));
        args.push(id.to_string());
        let mut command = tokio::process::Command::new("docker");
        command.args(&args).stdin(Stdio::null()).kill_on_drop(true);
        match tokio::time::timeout(DOCKER_CMD, command.output()).await {
            Ok(Ok(out)) => format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
            Ok(Err(err)) => format!("(docker logs failed: {err})"),
            Err(_) => "(docker logs timed out)".into(),
        }
    }

    /// Whether a node logged, since `since_unix` (seconds), that SQLite's write lock stayed taken
    /// past its busy timeout: another process (a frozen node, in the sqlite variant) held it.
    pub async fn store_lock_waits_since(&self, since_unix: u64) -> bool {
        for service in ["palaver-1", "palaver-2", "palaver-3", "palaver-extra"] {
            for id in self.containers(service).await.unwrap_or_default() {
                if self.log_of(&id, &["--since", &since_unix.to_string()]).await.contains("database still locked") {
                    return true;
                }
            }
        }
        false
    }

    /// Every node's and HAProxy's recent log, for failure messages.
    pub async fn all_logs(&self, lines: usize) -> String {
        let mut text = String::new();
        for service in ["palaver-1", "palaver-2", "palaver-3", "palaver-extra", "haproxy"] {
            for id in self.containers(service).await.unwrap_or_default() {
                text.push_str(&format!(
                    "===== {service} {} =====\n{}\n",
                    &id[..12.min(id.len())],
                    self.logs(&id, lines).await
                ));
            }
        }
        text
    }

    /// Synchronous teardown (also what Drop runs): unpause, remove `docker run` nodes, compose
    /// down with volumes, remove the image.
    fn teardown(&self) {
        let label = format!("label=com.docker.compose.project={}", self.project);
        if let Ok(out) = blocking(&["docker", "ps", "-q", "--filter", &label, "--filter", "status=paused"]) {
            for id in out.split_whitespace() {
                let _ = blocking(&["docker", "unpause", id]);
            }
        }
        for id in self.extras.lock().map(|extras| extras.clone()).unwrap_or_default() {
            let _ = blocking(&["docker", "rm", "-f", "-v", &id]);
        }
        let (program, args) = self.compose_args(&["down", "-v", "--remove-orphans", "-t", "2"]);
        let mut command = vec!["timeout".to_string(), "180".to_string(), program];
        command.extend(args);
        let status = std::process::Command::new(&command[0])
            .args(&command[1..])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            say(&format!(
                "docker: `compose down` of project {} failed; remove it with `docker-compose -p {} down -v`",
                self.project, self.project
            ));
        }
        let _ = blocking(&["docker", "rmi", "-f", &self.image]);
        if let Ok(out) = blocking(&["docker", "images", "-q", "--no-trunc", "--filter", "dangling=true"]) {
            for id in out.split_whitespace().filter(|id| !self.untagged_before.contains(*id)) {
                let _ = blocking(&["docker", "rmi", id]);
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Run a command synchronously with a 120 s limit (coreutils `timeout`).
fn blocking(command: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("timeout").arg("120").args(command).stdin(Stdio::null()).output()?;
    anyhow::ensure!(out.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The body of a `Transfer-Encoding: chunked` response.
fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("chunk without a size line")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).context("chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        anyhow::ensure!(rest.len() >= size, "chunk of {size} bytes cut short");
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
}

async fn untagged_images() -> anyhow::Result<HashSet<String>> {
    Ok(docker(&["images", "-q", "--no-trunc", "--filter", "dangling=true"])
        .await?
        .split_whitespace()
        .map(String::from)
        .collect())
}

async fn published_port(container: &str, port: &str) -> anyhow::Result<u16> {
    let out = docker(&["port", container, port]).await?;
    out.lines()
        .find_map(|line| line.trim().rsplit_once(':').and_then(|(_, port)| port.parse().ok()))
        .with_context(|| format!("no published port for {port}: {out}"))
}

/// Remove projects (and `docker run` nodes) left by test runs whose process is gone.
async fn reap_stale_projects(compose: &[String]) {
    let Ok(out) = docker(&[
        "ps",
        "-a",
        "--format",
        "{{.Label \"com.docker.compose.project\"}} {{.Label \"palaver.test.project\"}}",
    ])
    .await
    else {
        return;
    };
    let stale: HashSet<String> = out
        .split_whitespace()
        .filter(|project| {
            project
                .strip_prefix(PROJECT_PREFIX)
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(String::from)
        .collect();
    for project in stale {
        say(&format!("docker: removing project {project} left by an earlier run"));
        if let Ok(ids) = docker(&["ps", "-a", "-q", "--filter", &format!("label={EXTRA_LABEL}={project}")]).await {
            for id in ids.split_whitespace() {
                let _ = docker(&["rm", "-f", "-v", id]).await;
            }
        }
        let root = repo_root();
        let mut args: Vec<String> = compose[1..].to_vec();
        args.extend(strings(&["-p", &project]));
        for file in ["docker/compose.yaml", "docker/compose.sqlite.yaml"] {
            args.extend(["-f".to_string(), root.join(file).display().to_string()]);
        }
        args.extend(strings(&["down", "-v", "--remove-orphans", "-t", "1"]));
        // The compose file insists on the secrets even to take a project down.
        let env = [
            ("PALAVER_AUTH__TOKEN_KEY".to_string(), TEST_TOKEN_KEY.to_string()),
            ("PALAVER_CLUSTER__COOKIE".to_string(), TEST_COOKIE.to_string()),
        ];
        let _ = run(&compose[0], &args, &env, COMPOSE_CMD).await;
    }
}

/// When each send of one chatter started and was acked.
type SendLog = Mutex<Vec<(Instant, Instant)>>;

/// Chatters sending through the load balancer until stopped.
pub struct Load {
    handles: Vec<tokio::task::JoinHandle<anyhow::Result<Chatter>>>,
    stop: Arc<AtomicBool>,
    logs: Vec<Arc<SendLog>>,
}

impl Load {
    /// Each chatter sends to `rooms` in turn, one message at a time (retried with the same id
    /// until acked), pausing `gap` between messages. Ids are `<user>-<tag>-<n>`.
    pub fn start(chatters: Vec<Chatter>, rooms: &[String], tag: &str, gap: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut logs = Vec::new();
        let mut handles = Vec::new();
        for mut chatter in chatters {
            let log = Arc::new(SendLog::default());
            logs.push(log.clone());
            let (stop, rooms, tag) = (stop.clone(), rooms.to_vec(), tag.to_string());
            handles.push(tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Acquire) {
                    let room = &rooms[n % rooms.len()];
                    let id = format!("{}-{tag}-{n}", chatter.user);
                    let started = Instant::now();
                    chatter.say(room, &id, &format!("{tag} message {n} of {}", chatter.user)).await?;
                    log.lock().expect("send log").push((started, Instant::now()));
                    n += 1;
                    tokio::time::sleep(gap).await;
                }
                Ok(chatter)
            }));
        }
        Load { handles, stop, logs }
    }

    /// Wait until every chatter has had a send that started after `since` acked; the time from
    /// `since` to the last of those acks (how long the slowest client took to work again).
    pub async fn recovered_after(&self, since: Instant, limit: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + limit;
        loop {
            let firsts: Vec<Option<Instant>> = self
                .logs
                .iter()
                .map(|log| {
                    log.lock().expect("send log").iter().find(|(started, _)| *started >= since).map(|(_, acked)| *acked)
                })
                .collect();
            if firsts.iter().all(Option::is_some) {
                return Ok(firsts
                    .into_iter()
                    .flatten()
                    .max()
                    .map_or(Duration::ZERO, |last| last.duration_since(since)));
            }
            if let Some(failed) = self.handles.iter().position(|h| h.is_finished()) {
                bail!("chatter {failed} stopped sending (its error comes with `stop`)");
            }
            if Instant::now() > deadline {
                let waiting = firsts.iter().filter(|f| f.is_none()).count();
                bail!("{waiting} of {} clients had no acked send within {limit:?}", firsts.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The longest time any client went without an ack after `since` (each client's first gap
    /// counts from `since`), and how many clients had a gap longer than `affected_over`. This
    /// is what a user saw: a send that hung on the faulty node until the client moved on. (A
    /// send that started just after `since` may still have been acked before the fault took
    /// effect, so "the first send started after the fault" would understate it.)
    pub fn longest_stall(&self, since: Instant, affected_over: Duration) -> (Duration, usize) {
        let mut longest = Duration::ZERO;
        let mut affected = 0;
        for log in &self.logs {
            let log = log.lock().expect("send log");
            let mut previous = since;
            let mut own = Duration::ZERO;
            for (_, acked) in log.iter().filter(|(_, acked)| *acked > since) {
                own = own.max(acked.duration_since(previous));
                previous = *acked;
            }
            longest = longest.max(own);
            if own > affected_over {
                affected += 1;
            }
        }
        (longest, affected)
    }

    /// Acked sends so far.
    pub fn acked(&self) -> usize {
        self.logs.iter().map(|log| log.lock().expect("send log").len()).sum()
    }

    /// Stop sending and hand the chatters back (each finishes the send it is in; a send gives
    /// up after 90 s, so this is bounded).
    pub async fn stop(self) -> anyhow::Result<Vec<Chatter>> {
        self.stop.store(true, Ordering::Release);
        let mut chatters = Vec::new();
        for handle in self.handles {
            let chatter = tokio::time::timeout(Duration::from_secs(120), handle)
                .await
                .map_err(|_| anyhow!("a chatter did not stop within 120 s"))???;
            chatters.push(chatter);
        }
        Ok(chatters)
    }
}

/// One row of the summary.
#[derive(Debug, Clone, Default)]
pub struct StepReport {
    pub step: String,
    /// "ran", "SKIPPED: why", "GAP: what is missing".
    pub result: String,
    /// The longest time a client went without an ack after the fault.
    pub recovery: Option<Duration>,
    /// Clients that went without an ack for over a second.
    pub affected: usize,
    /// A restarted, unpaused, reconnected or added node serving again (UP in HAProxy, in every
    /// node's view).
    pub node_back: Option<Duration>,
    pub reconnects: usize,
    /// Sends retried after a failure and answered `duplicate` (the retry found the first try).
    pub deduplicated: usize,
    /// Distinct messages acked in this step, each checked at every client.
    pub messages_checked: usize,
    pub note: String,
}

/// Print the summary table.
pub fn print_table(title: &str, rows: &[StepReport], clients: usize) {
    let secs = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
    let mut lines = vec![
        String::new(),
        title.to_string(),
        format!(
            "{:<22} {:<7} {:>8} {:>8} {:>9} {:>10} {:>5} {:>16}  {}",
            "step", "result", "recovery", "affected", "node back", "reconnects", "dedup", "messages checked", "note"
        ),
    ];
    for row in rows {
        let (result, note) = match row.result.split_once(": ") {
            Some((head, why)) => {
                (head.to_string(), if row.note.is_empty() { why.to_string() } else { format!("{why}; {}", row.note) })
            }
            None => (row.result.clone(), row.note.clone()),
        };
        let checked =
            if row.messages_checked == 0 { "-".to_string() } else { format!("{} x {clients}", row.messages_checked) };
        let affected = if row.recovery.is_some() { format!("{}/{clients}", row.affected) } else { "-".to_string() };
        lines.push(format!(
            "{:<22} {:<7} {:>8} {:>8} {:>9} {:>10} {:>5} {:>16}  {}",
            row.step,
            result,
            secs(row.recovery),
            affected,
            secs(row.node_back),
            row.reconnects,
            row.deduplicated,
            checked,
            note
        ));
    }
    let total: usize = rows.iter().map(|row| row.messages_checked).sum();
    let ran = rows.iter().filter(|row| row.result == "ran").count();
    let skipped = rows.iter().filter(|row| row.result.starts_with("SKIPPED")).count();
    let gaps = rows.iter().filter(|row| row.result.starts_with("GAP")).count();
    lines.push(format!(
        "steps: {ran} ran, {skipped} skipped, {gaps} with a known gap; {total} acked messages checked at each of {clients} clients \
         (nothing lost, nothing doubled, room order and dense cursors kept)"
    ));
    lines.push(
        "recovery: the longest a client went without an ack after the fault; affected: clients without an ack for over 1 s; \
         node back: from restoring the node to it being UP in HAProxy and in every node's view; \
         dedup: retried sends the node recognised as already stored"
            .to_string(),
    );
    say(&lines.join("\n"));
}
