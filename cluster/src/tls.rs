//! TLS on node links (optional): mutual TLS 1.3 under one cluster CA, with rustls.
//!
//! With `cluster.tls_cert_file`, `cluster.tls_key_file` and `cluster.tls_ca_file` set, every node
//! link is encrypted and both ends prove themselves: the accepting node requires a client
//! certificate signed by the cluster CA, and the dialing node checks the accepting node's
//! certificate against the same CA and `cluster.tls_server_name`. Nodes dial addresses, which
//! differ behind NAT, containers and proxies, so every node certificate carries one shared DNS
//! name instead (default `palaver-cluster`). ractor_cluster's cookie check still runs inside the
//! TLS session: the certificate says "a node of this CA", the cookie "a node of this cluster".
//!
//! Accepting is done by the cluster port's accept loop ([`super::gate`]), not by
//! ractor_cluster: its listener runs each TLS handshake inline in its accept loop, with no deadline
//! and a log line naming neither the peer nor the reason, so one silent connection would hold up
//! every new link. There each handshake runs in its own task, bounded in time and in number, and
//! a refusal is one log line naming the peer and what to fix.
//!
//! The crypto provider (aws-lc-rs, which ractor_cluster's tokio-rustls builds anyway) is handed to
//! every builder explicitly, so nothing depends on a process-wide default provider.
//!
//! Loading checks this node's own certificate the way peers will (signed by the CA, valid for
//! the server name, usable as client and server), so a wrong file is a start-up error naming the
//! key, not a cluster that silently refuses the node.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ractor_cluster::NetworkStream;
use tokio::net::TcpStream;
use tokio_rustls::rustls::client::danger::ServerCertVerifier;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, AlertDescription, CertificateError, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{server, TlsAcceptor, TlsConnector};
use tracing::{error, warn};

/// The default of `cluster.tls_server_name`.
pub const DEFAULT_SERVER_NAME: &str = "palaver-cluster";

const CERT_KEY: &str = "cluster.tls_cert_file";
const KEY_KEY: &str = "cluster.tls_key_file";
const CA_KEY: &str = "cluster.tls_ca_file";
const NAME_KEY: &str = "cluster.tls_server_name";

/// How long a TLS handshake this node dials may take. Generous: on a loaded machine a handshake
/// takes milliseconds, so only a peer that sends nothing (or not TLS, slowly) gets here.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the TLS material of a node comes from (the `cluster.tls_*` keys).
#[derive(Debug, Clone, Copy)]
pub struct TlsFiles<'a> {
    /// PEM certificate chain of this node, its own certificate first.
    pub cert_file: &'a Path,
    /// PEM private key of that certificate.
    pub key_file: &'a Path,
    /// PEM certificate(s) of the CA that signs every node's certificate.
    pub ca_file: &'a Path,
    /// The DNS name every node certificate carries.
    pub server_name: &'a str,
}

/// A TLS configuration problem, naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfigError {
    pub key: &'static str,
    pub message: String,
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for TlsConfigError {}

fn invalid(key: &'static str, message: String) -> TlsConfigError {
    TlsConfigError { key, message }
}

/// A node's TLS for its links: what it accepts with and what it dials with.
#[derive(Clone)]
pub struct LinkTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

/// Check `cluster.tls_server_name`: a DNS name (or an IP address) a certificate can carry.
pub fn check_server_name(name: &str) -> Result<ServerName<'static>, TlsConfigError> {
    ServerName::try_from(name.to_string())
        .map_err(|_| invalid(NAME_KEY, format!("`{name}` is not a DNS name (e.g. {DEFAULT_SERVER_NAME})")))
}

impl LinkTls {
    /// Read and check the files, and build both sides' configurations. Every error names the
    /// key and the path.
    pub fn load(files: TlsFiles<'_>) -> Result<LinkTls, TlsConfigError> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let server_name = check_server_name(files.server_name)?;
        let chain = read_certs(CERT_KEY, files.cert_file)?;
        let key = read_key(files.key_file)?;
        let roots = Arc::new(read_roots(files.ca_file)?);
        let ca = files.ca_file.display();
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|err| invalid(CA_KEY, format!("{ca}: {err}")))?;
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|err| invalid(CA_KEY, format!("{ca}: {err}")))?;
        check_own_certificate(&files, &chain, &server_name, &*server_verifier, &*client_verifier)?;
        let mismatch = |err: rustls::Error| {
            invalid(
                KEY_KEY,
                format!("{} does not go with the certificate in {CERT_KEY}: {err}", files.key_file.display()),
            )
        };
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|err| invalid(CERT_KEY, format!("TLS 1.3 with aws-lc-rs: {err}")))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(mismatch)?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|err| invalid(CERT_KEY, format!("TLS 1.3 with aws-lc-rs: {err}")))?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(chain, key)
            .map_err(mismatch)?;
        Ok(LinkTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            server_name,
        })
    }

    /// Server side of the handshake on an accepted connection, within `timeout`.
    pub(super) async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<server::TlsStream<TcpStream>, HandshakeError> {
        let fail = |failure| HandshakeError { accepting: true, server_name: self.server_name.to_str().into(), failure };
        match tokio::time::timeout(timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(err)) => Err(fail(Failure::Io(err))),
            Err(_) => Err(fail(Failure::TimedOut(timeout))),
        }
    }

    /// Client side of the handshake on a connection this node opened.
    pub(super) async fn connect(
        &self,
        stream: TcpStream,
        peer_addr: SocketAddr,
    ) -> Result<NetworkStream, HandshakeError> {
        let fail =
            |failure| HandshakeError { accepting: false, server_name: self.server_name.to_str().into(), failure };
        let local_addr = stream.local_addr().map_err(|err| fail(Failure::Io(err)))?;
        let handshake = self.connector.connect(self.server_name.clone(), stream);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => Ok(NetworkStream::TlsClient { peer_addr, local_addr, stream }),
            Ok(Err(err)) => Err(fail(Failure::Io(err))),
            Err(_) => Err(fail(Failure::TimedOut(HANDSHAKE_TIMEOUT))),
        }
    }
}

/// An acceptor that refuses every handshake (it has no certificate to offer), for the node
/// server's own listener, which ractor_cluster always starts: nothing may reach the node server
/// around the cluster port's gate ([`super::gate`]).
pub(super) fn sealed_acceptor() -> TlsAcceptor {
    #[derive(Debug)]
    struct NoCertificate;
    impl ResolvesServerCert for NoCertificate {
        fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            None
        }
    }
    let config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("aws-lc-rs supports TLS 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCertificate));
    TlsAcceptor::from(Arc::new(config))
}

/// A failed TLS handshake on a node link; its `Display` says what is wrong and what to check.
#[derive(Debug)]
pub struct HandshakeError {
    /// This node accepted the connection (else it dialed).
    accepting: bool,
    server_name: String,
    failure: Failure,
}

#[derive(Debug)]
enum Failure {
    TimedOut(Duration),
    Io(io::Error),
}

impl HandshakeError {
    fn tls_error(&self) -> Option<&rustls::Error> {
        match &self.failure {
            Failure::Io(err) => err.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()),
            Failure::TimedOut(_) => None,
        }
    }

    /// One line on this node's log: an error when the peer was refused for a reason someone must
    /// fix (not TLS, wrong CA, wrong name), a warning when the connection merely ended or stalled.
    pub fn log(&self, node: &str, peer: &str) {
        if self.tls_error().is_some() {
            error!(node = %node, peer = %peer, "cluster link refused: TLS handshake failed — {self}");
        } else {
            warn!(node = %node, peer = %peer, "cluster link closed: TLS handshake failed — {self}");
        }
    }

    fn explain(&self, err: &rustls::Error) -> String {
        let name = &self.server_name;
        match err {
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. } => format!(
                "the peer does not speak TLS ({err}): a node without {CERT_KEY}, {KEY_KEY} and {CA_KEY}? TLS on node \
                 links is on for every node of a cluster or for none"
            ),
            rustls::Error::NoCertificatesPresented => format!(
                "the peer presented no certificate ({err}): every node needs {CERT_KEY}, signed by the CA in {CA_KEY}"
            ),
            rustls::Error::InvalidCertificate(cert) => {
                let whose = if self.accepting { "the peer's certificate" } else { "the peer's server certificate" };
                match cert {
                    CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                        "{whose} is not signed by the CA in {CA_KEY} ({err}): a node of another cluster, or a \
                         certificate from another CA"
                    ),
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                        "{whose} is not valid for {NAME_KEY} `{name}` ({err}): every node certificate needs \
                         subjectAltName DNS:{name}"
                    ),
                    _ => format!("{whose} is not acceptable: {err}"),
                }
            }
            rustls::Error::AlertReceived(
                alert @ (AlertDescription::UnknownCA
                | AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateRequired
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateExpired
                | AlertDescription::AccessDenied),
            ) => format!(
                "the peer refused this node's certificate (alert {alert:?}): does it use another {CA_KEY} or \
                 {NAME_KEY}?"
            ),
            rustls::Error::AlertReceived(alert) => format!("the peer ended the handshake (alert {alert:?})"),
            rustls::Error::PeerIncompatible(_) => {
                format!("the peer's TLS is incompatible ({err}); node links speak TLS 1.3")
            }
            other => other.to_string(),
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(err) = self.tls_error() {
            return f.write_str(&self.explain(err));
        }
        match &self.failure {
            Failure::TimedOut(timeout) => write!(f, "no TLS handshake within {timeout:?}"),
            Failure::Io(err) if err.kind() == io::ErrorKind::UnexpectedEof && self.accepting => {
                write!(f, "the peer closed the connection before the handshake finished ({err})")
            }
            Failure::Io(err) if err.kind() == io::ErrorKind::UnexpectedEof => write!(
                f,
                "the peer closed the connection during the handshake ({err}): a node without TLS on its links?"
            ),
            Failure::Io(err) => write!(f, "{err}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|err| invalid(key, format!("cannot read {}: {err}", path.display())))
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem = read_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| invalid(key, format!("{} is not valid PEM: {err}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(key, format!("{} holds no certificate (PEM `BEGIN CERTIFICATE`)", path.display())));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let pem = read_file(KEY_KEY, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| match err {
        rustls::pki_types::pem::Error::NoItemsFound => invalid(
            KEY_KEY,
            format!(
                "{} holds no private key (PEM `BEGIN PRIVATE KEY`, `BEGIN EC PRIVATE KEY` or `BEGIN RSA PRIVATE KEY`)",
                path.display()
            ),
        ),
        err => invalid(KEY_KEY, format!("{} is not valid PEM: {err}", path.display())),
    })
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(CA_KEY, path)? {
        roots.add(cert).map_err(|err| {
            invalid(CA_KEY, format!("{} holds a certificate that is no usable CA: {err}", path.display()))
        })?;
    }
    Ok(roots)
}

/// Check this node's certificate as its peers will, both as a server and as a client.
fn check_own_certificate(
    files: &TlsFiles<'_>,
    chain: &[CertificateDer<'static>],
    server_name: &ServerName<'static>,
    as_server: &dyn ServerCertVerifier,
    as_client: &dyn ClientCertVerifier,
) -> Result<(), TlsConfigError> {
    let (cert, ca, name) = (files.cert_file.display(), files.ca_file.display(), files.server_name);
    let now = UnixTime::now();
    let (end_entity, intermediates) = chain.split_first().expect("read_certs returns at least one");
    let checked = as_server
        .verify_server_cert(end_entity, intermediates, server_name, &[], now)
        .map(|_| ())
        .and_then(|()| as_client.verify_client_cert(end_entity, intermediates, now).map(|_| ()));
    let Err(err) = checked else { return Ok(()) };
    Err(match &err {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => invalid(
            CERT_KEY,
            format!("{cert} is not signed by the CA in {CA_KEY} ({ca}): peers would refuse this node ({err})"),
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => invalid(
            NAME_KEY,
            format!("the certificate {cert} is not valid for `{name}`: every node certificate needs subjectAltName DNS:{name} ({err})"),
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        ) => invalid(
            CERT_KEY,
            format!("{cert} may not serve both ends of a link: a node certificate needs extendedKeyUsage serverAuth and clientAuth, or none ({err})"),
        ),
        _ => invalid(CERT_KEY, format!("{cert}: {err}")),
    })
}
