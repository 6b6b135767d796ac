//! TLS on the client port (optional): `client.tls_cert_file` and `client.tls_key_file` set turn
//! it on, and the port then serves HTTPS and WSS only (the web client, `/healthz`, `/readyz`,
//! `/ws`). Browsers speak TLS 1.2 and 1.3, so both are offered; there is no client certificate.
//! The crypto provider is aws-lc-rs, which the cluster's TLS (cluster/src/tls.rs) already
//! builds, handed to the builder explicitly as there.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

const CERT_KEY: &str = "client.tls_cert_file";
const KEY_KEY: &str = "client.tls_key_file";

/// The first byte of every TLS connection (a handshake record); anything else on a TLS port is
/// someone speaking plain HTTP to it.
pub const HANDSHAKE_RECORD: u8 = 0x16;

/// Read the certificate chain and key and build the acceptor; the error is (key, message) and
/// names the file.
pub fn load(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, (&'static str, String)> {
    let chain = read_certs(cert_file)?;
    let key = read_key(key_file)?;
    let config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|err| (CERT_KEY, format!("TLS with aws-lc-rs: {err}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|err| {
            (KEY_KEY, format!("{} does not go with the certificate in {CERT_KEY}: {err}", key_file.display()))
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, (&'static str, String)> {
    let pem = std::fs::read(path).map_err(|err| (CERT_KEY, format!("cannot read {}: {err}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| (CERT_KEY, format!("{} is not valid PEM: {err}", path.display())))?;
    if certs.is_empty() {
        return Err((CERT_KEY, format!("{} holds no certificate (PEM `BEGIN CERTIFICATE`)", path.display())));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, (&'static str, String)> {
    let pem = std::fs::read(path).map_err(|err| (KEY_KEY, format!("cannot read {}: {err}", path.display())))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| match err {
        rustls::pki_types::pem::Error::NoItemsFound => {
            (KEY_KEY, format!("{} holds no private key (PEM `BEGIN PRIVATE KEY`)", path.display()))
        }
        err => (KEY_KEY, format!("{} is not valid PEM: {err}", path.display())),
    })
}
