//! TLS on the client port (`client.tls_cert_file`, `client.tls_key_file`): a real TLS client
//! that trusts the test CA gets `/healthz` over HTTPS and chats over `wss://`; plain HTTP to the
//! TLS port gets a plain 400 saying to use TLS, and a plain WebSocket fails; a client that does
//! not trust the certificate cannot connect; the admin port stays plain on loopback.
//!
//! The certificates are made here with the `openssl` command (a CA and a server certificate for
//! `localhost` and 127.0.0.1); without `openssl` the tests say they were skipped and pass.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use anyhow::{ensure, Context};
use tests::{Client, Encoding, Node, NodeOptions, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A CA and a certificate for `localhost` it signed, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// `None` (and a note on stdout) when the `openssl` command is missing.
    fn make(test: &str) -> anyhow::Result<Option<Pki>> {
        if !tests::openssl_available(test) {
            return Ok(None);
        }
        let pki = Pki { dir: tempfile::tempdir()? };
        std::fs::write(
            pki.path("server.ext"),
            "subjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth\n\
             basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n",
        )?;
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        for (ca, _) in [("ca", ()), ("other-ca", ())] {
            let (key, pem, subject) = (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN=palaver test {ca}"));
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend(["-days", "2", "-subj", &subject, "-keyout", &key, "-out", &pem]);
            args.extend([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            pki.openssl(&args)?;
        }
        let mut args = vec!["req", "-new"];
        args.extend(ec);
        args.extend(["-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"]);
        pki.openssl(&args)?;
        pki.openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "7",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ])?;
        Ok(Some(pki))
    }

    fn openssl(&self, args: &[&str]) -> anyhow::Result<()> {
        let output = Command::new("openssl").args(args).current_dir(self.dir.path()).output()?;
        ensure!(output.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
        Ok(())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A TLS client that trusts the CA in `ca_file`.
    fn connector(&self, ca_file: &str) -> anyhow::Result<TlsConnector> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.path(ca_file))? {
            roots.add(cert?)?;
        }
        let config = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConnector::from(Arc::new(config)))
    }

    async fn start_node(&self) -> anyhow::Result<Node> {
        let options = NodeOptions::default()
            .env("CLIENT__TLS_CERT_FILE", self.path("server.pem").display())
            .env("CLIENT__TLS_KEY_FILE", self.path("server.key").display());
        Node::start(options).await
    }
}

/// A TLS connection to the node's client port, checked against `localhost`.
async fn tls(connector: &TlsConnector, node: &Node) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(node.addr).await?;
    connector.connect(ServerName::try_from("localhost").expect("a DNS name"), tcp).await
}

#[tokio::test]
async fn https_and_wss_on_the_client_port() -> anyhow::Result<()> {
    let Some(pki) = Pki::make("https_and_wss_on_the_client_port")? else { return Ok(()) };
    let node = pki.start_node().await?;
    let connector = pki.connector("ca.pem")?;

    // /healthz over HTTPS.
    let mut stream = tls(&connector, &node).await.context("TLS handshake with the client port")?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await?;
    let mut response = Vec::new();
    // The node closes without a TLS close_notify after `Connection: close` only if it is broken:
    // read_to_end fails on an unclean end, so this also checks the shutdown.
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await??;
    let response = String::from_utf8(response)?;
    ensure!(response.starts_with("HTTP/1.1 200") && response.ends_with("ok\n"), "/healthz over TLS: {response}");

    // Two users chat over wss://.
    let url = format!("wss://localhost:{}/ws", node.addr.port());
    let mut users = Vec::new();
    for name in ["tls-alice", "tls-bob"] {
        let stream = Box::new(tls(&connector, &node).await?);
        let mut client = Client::connect_over(url.as_str(), stream, Encoding::Json).await?;
        client.greet().await.context("hello over wss")?;
        let token = client.register_and_login(name, "a long enough password").await?;
        client.authenticate(&token, None).await?;
        users.push(client);
    }
    let room = users[0].create_room("over tls").await?;
    users[1].join(&room).await?;
    users[0].say(&room, "m-1", "hello over TLS").await?;
    let entry = users[1].wait_for_message(&room, "m-1").await?;
    ensure!(format!("{entry:?}").contains("hello over TLS"), "{entry:?}");

    // The admin port stays plain HTTP on loopback.
    let (status, body) = node.admin_get("/status").await?;
    ensure!(status == 200 && body.contains(&room), "admin /status: {status} {body}");
    Ok(())
}

#[tokio::test]
async fn plain_http_and_untrusting_clients_fail_cleanly_on_a_tls_port() -> anyhow::Result<()> {
    let Some(pki) = Pki::make("plain_http_and_untrusting_clients_fail_cleanly_on_a_tls_port")? else {
        return Ok(());
    };
    let node = pki.start_node().await?;

    // Plain HTTP is told, in plain HTTP, to use TLS.
    let (status, body) = node.http_get("/healthz").await?;
    ensure!(status == 400 && body.contains("use https:// or wss://"), "plain HTTP to the TLS port: {status} {body}");
    // A plain WebSocket does not open.
    let plain = Client::connect_raw(&node.ws_url(), Encoding::Json).await;
    ensure!(plain.is_err(), "a plain ws:// connection to the TLS port opened");
    // A client that trusts another CA refuses the node's certificate.
    let err =
        tls(&pki.connector("other-ca.pem")?, &node).await.err().context("an untrusted certificate was accepted")?;
    ensure!(err.to_string().contains("certificate"), "{err}");
    // Garbage that is not a TLS handshake is closed, and the node goes on serving.
    let mut garbage = TcpStream::connect(node.addr).await?;
    garbage.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]).await?;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(WAIT, garbage.read_to_end(&mut sink)).await?;
    let mut stream = tls(&pki.connector("ca.pem")?, &node).await?;
    stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n").await?;
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response)).await??;
    ensure!(response.starts_with("HTTP/1.1 200"), "/readyz over TLS after the bad ones: {response}");
    Ok(())
}

#[test]
fn half_configured_or_wrong_tls_files_stop_the_node() -> anyhow::Result<()> {
    let check = |env: &[(&str, String)]| -> anyhow::Result<(Option<i32>, String)> {
        let dir = tempfile::tempdir()?;
        let mut command = Command::new(tests::palaver_binary());
        command.arg("check-config").current_dir(dir.path()).env_clear();
        for (key, value) in env {
            command.env(format!("PALAVER_{key}"), value);
        }
        let output = command.output()?;
        Ok((output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned()))
    };
    let (code, stderr) = check(&[("CLIENT__TLS_CERT_FILE", "/nonexistent/server.pem".into())])?;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("client.tls_key_file"), "{stderr}");
    let Some(pki) = Pki::make("half_configured_or_wrong_tls_files_stop_the_node (the cases with certificates)")? else {
        return Ok(());
    };
    let file = |name: &str| pki.path(name).display().to_string();
    // A key that does not go with the certificate, and a key where the certificate should be.
    let (code, stderr) =
        check(&[("CLIENT__TLS_CERT_FILE", file("server.pem")), ("CLIENT__TLS_KEY_FILE", file("ca.key"))])?;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("client.tls_key_file") && stderr.contains("does not go with"), "{stderr}");
    let (code, stderr) =
        check(&[("CLIENT__TLS_CERT_FILE", file("server.key")), ("CLIENT__TLS_KEY_FILE", file("server.key"))])?;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("client.tls_cert_file") && stderr.contains("no certificate"), "{stderr}");
    let (code, stderr) =
        check(&[("CLIENT__TLS_CERT_FILE", file("server.pem")), ("CLIENT__TLS_KEY_FILE", file("server.key"))])?;
    assert_eq!(code, Some(0), "{stderr}");
    Ok(())
}
