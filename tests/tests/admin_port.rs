//! The operator endpoints (`/status`, `/cluster`, `/cluster/forget`, `/metrics`) live on the
//! admin port only: the client port answers 404 for them, whatever the method. With an admin
//! token set, the admin port refuses requests without it or with a wrong one; without one it
//! listens on loopback, and a non-loopback `admin.listen` without a token does not start.

use std::process::{Command, Stdio};

use anyhow::ensure;
use tests::{Client, Encoding, Node, NodeOptions};

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

#[tokio::test]
async fn operator_endpoints_answer_on_the_admin_port_and_not_on_the_client_port() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    ensure!(node.admin.ip().is_loopback() && node.admin.port() != node.addr.port(), "admin port {}", node.admin);
    // An active room (a message started its actor), whose id the operator views name.
    let (mut alice, _) = Client::user(&node, Encoding::Json, "alice").await?;
    let room = alice.create_room("secret plans").await?;
    alice.say(&room, "m-1", "hello").await?;

    for path in ["/status", "/cluster", &format!("/cluster?room={room}"), "/metrics"] {
        let (status, body) = node.http_get(path).await?;
        ensure!(status == 404, "client port GET {path}: {status} {body}");
        ensure!(!body.contains(&room), "client port GET {path} names the room: {body}");
    }
    let forget = "POST /cluster/forget?node=n2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    let (status, body) = node.http_raw(forget).await?;
    ensure!(status == 404, "client port POST /cluster/forget: {status} {body}");

    let (status, body) = node.admin_get("/status").await?;
    ensure!(status == 200 && body.contains(&room), "admin /status: {status} {body}");
    let (status, body) = node.admin_get(&format!("/cluster?room={room}")).await?;
    ensure!(status == 200 && body.contains("\"owner\":\"palaver-1\""), "admin /cluster?room=: {status} {body}");
    let (status, body) = node.admin_get("/metrics").await?;
    ensure!(status == 200 && body.contains("palaver_connections_open 1"), "admin /metrics: {status} {body}");
    // Not in a cluster: forget says so (it is routed here, and only here).
    let (status, body) = node.admin_raw(forget).await?;
    ensure!(status == 404 && body.contains("not in a cluster"), "admin POST /cluster/forget: {status} {body}");
    // The admin port serves nothing of the client port's.
    let (status, _) = node.admin_get("/").await?;
    ensure!(status == 404, "admin GET /: {status}");
    // And the client port still serves what clients need.
    let (status, _) = node.http_get("/healthz").await?;
    ensure!(status == 200, "/healthz: {status}");
    alice.ping().await?;
    Ok(())
}

#[tokio::test]
async fn the_admin_token_guards_every_admin_endpoint() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default().env("ADMIN__TOKEN", ADMIN_TOKEN)).await?;
    let requests = [
        ("GET", "/status"),
        ("GET", "/cluster"),
        ("GET", "/cluster?room=r"),
        ("GET", "/metrics"),
        ("POST", "/cluster/forget?node=n2"),
    ];
    for (method, path) in requests {
        for authorization in
            ["", "Authorization: Bearer wrong-token-0123456789abcdef\r\n", "Authorization: Basic x\r\n"]
        {
            let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{authorization}Content-Length: 0\r\n\r\n");
            let (status, body) = node.admin_raw(&request).await?;
            ensure!(status == 401, "{method} {path} with `{}`: {status} {body}", authorization.trim());
            ensure!(!body.contains("palaver-1"), "a refusal tells nothing: {body}");
        }
        // The right token: answered (forget on a single node says there is no cluster).
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 0\r\n\r\n"
        );
        let (status, body) = node.admin_raw(&request).await?;
        let expected = if method == "POST" { 404 } else { 200 };
        ensure!(status == expected, "{method} {path} with the token: {status} {body}");
    }
    let (status, body) = node.admin_get("/metrics").await?;
    ensure!(status == 200 && body.contains("# TYPE palaver_connections_open gauge"), "{status} {body}");
    Ok(())
}

/// `check-config` with `env` (`PALAVER_` prefixed here): (exit code, stderr).
fn check_config(env: &[(&str, &str)]) -> anyhow::Result<(Option<i32>, String)> {
    let dir = tempfile::tempdir()?;
    let mut command = Command::new(tests::palaver_binary());
    command.arg("check-config").current_dir(dir.path()).env_clear().stdin(Stdio::null()).stderr(Stdio::piped());
    for (key, value) in env {
        command.env(format!("PALAVER_{key}"), value);
    }
    let output = command.output()?;
    Ok((output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned()))
}

#[test]
fn an_admin_port_off_loopback_needs_a_token() -> anyhow::Result<()> {
    let (code, stderr) = check_config(&[("ADMIN__LISTEN", "0.0.0.0:7601")])?;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("configuration error: admin.token: ") && stderr.contains("PALAVER_ADMIN__TOKEN"),
        "{stderr}"
    );
    let (code, stderr) = check_config(&[("ADMIN__LISTEN", "0.0.0.0:7601"), ("ADMIN__TOKEN", ADMIN_TOKEN)])?;
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = check_config(&[("ADMIN__TOKEN", "short")])?;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("admin.token: must be at least 16 bytes"), "{stderr}");
    Ok(())
}
