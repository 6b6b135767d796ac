//! The private keys providers sign with, and the JSON Web Tokens they sign: RS256 for Google's
//! OAuth 2.0 assertion (FCM), ES256 for APNs provider tokens and VAPID.
//!
//! A JWT is the compact serialization of a JWS (RFC 7515 §7.1): base64url of the header JSON,
//! a dot, base64url of the claims JSON, a dot, base64url of the signature over the first two
//! parts. RS256 is RSASSA-PKCS1-v1_5 with SHA-256 and ES256 ECDSA P-256 with SHA-256, its
//! signature the 64 bytes `r || s` (RFC 7518 §3.3, §3.4): exactly what aws-lc-rs's
//! `RSA_PKCS1_SHA256` and `ECDSA_P256_SHA256_FIXED_SIGNING` produce. The signing is aws-lc-rs's
//! rather than jsonwebtoken's because jsonwebtoken (built here without its PEM feature) takes
//! RSA keys only as PKCS#1, and Google's service-account keys are PKCS#8; the tests' receivers
//! check these tokens with jsonwebtoken, an implementation other than this one.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::PrivateKeyDer;

/// A private key that signs JWTs.
pub(super) enum SigningKey {
    Rs256(RsaKeyPair),
    Es256(EcdsaKeyPair),
}

impl std::fmt::Debug for SigningKey {
    /// The algorithm only: the key stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.alg())
    }
}

impl SigningKey {
    /// An RSA key from PEM (PKCS#8 `PRIVATE KEY`, as in a Google service-account file, or
    /// PKCS#1 `RSA PRIVATE KEY`).
    pub(super) fn rsa_from_pem(pem: &[u8]) -> Result<SigningKey, String> {
        let pair = match read_pem(pem)? {
            PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
            _ => return Err("the key is not an RSA private key".into()),
        };
        pair.map(SigningKey::Rs256).map_err(|err| format!("not a usable RSA private key: {err}"))
    }

    /// A P-256 key from PEM (PKCS#8 `PRIVATE KEY`, as in an APNs `.p8` file or from `openssl
    /// genpkey`, or SEC1 `EC PRIVATE KEY`).
    pub(super) fn p256_from_pem(pem: &[u8]) -> Result<SigningKey, String> {
        let pair = match read_pem(pem)? {
            PrivateKeyDer::Pkcs8(der) => {
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_pkcs8_der())
            }
            PrivateKeyDer::Sec1(der) => {
                EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_sec1_der())
            }
            _ => return Err("the key is not an EC private key".into()),
        };
        pair.map(SigningKey::Es256).map_err(|err| format!("not a usable P-256 (prime256v1) private key: {err}"))
    }

    /// The public key of an EC key as an uncompressed point (`04 || x || y`, 65 bytes).
    pub(super) fn public_point(&self) -> Option<&[u8]> {
        match self {
            SigningKey::Es256(pair) => Some(pair.public_key().as_ref()),
            SigningKey::Rs256(_) => None,
        }
    }

    /// A JWT of `claims`, its header `alg`, `typ` and the `kid` given.
    pub(super) fn jwt(&self, kid: Option<&str>, claims: &Value) -> Result<String, String> {
        let mut header = Map::new();
        header.insert("alg".into(), Value::from(self.alg()));
        header.insert("typ".into(), Value::from("JWT"));
        if let Some(kid) = kid {
            header.insert("kid".into(), Value::from(kid));
        }
        let part = |value: &Value| serde_json::to_vec(value).map(|json| URL_SAFE_NO_PAD.encode(json));
        let header = part(&Value::Object(header)).map_err(|err| err.to_string())?;
        let claims = part(claims).map_err(|err| err.to_string())?;
        let signing_input = format!("{header}.{claims}");
        let signature = self.sign(signing_input.as_bytes())?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    fn alg(&self) -> &'static str {
        match self {
            SigningKey::Rs256(_) => "RS256",
            SigningKey::Es256(_) => "ES256",
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let rng = SystemRandom::new();
        match self {
            SigningKey::Rs256(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .map_err(|_| "RSA signing failed".to_string())?;
                Ok(signature)
            }
            SigningKey::Es256(pair) => {
                pair.sign(&rng, message).map(|sig| sig.as_ref().to_vec()).map_err(|_| "ECDSA signing failed".into())
            }
        }
    }
}

/// The private key in a PEM file.
fn read_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|err| match err {
        tokio_rustls::rustls::pki_types::pem::Error::NoItemsFound => {
            "holds no private key (PEM `BEGIN PRIVATE KEY`)".to_string()
        }
        err => format!("is not valid PEM: {err}"),
    })
}

/// Read a key file named by setting `key`, the error naming both.
pub(super) fn read_file(key: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|err| format!("{key}: cannot read {path}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`.
    const P256_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgS4gb9lvuWdRME05Q
WDN1I7f8oCSCWC7qwZabT4XJ+nShRANCAATaaaXVfvjs2rUpZKuVJExqDLL1AnJ5
U0bXlTc00VCxli3oxIr9yiVX6Gwc6/Zk4pTTiCzaKwZumtxBq5mAj/z3
-----END PRIVATE KEY-----
";

    #[test]
    fn an_es256_jwt_has_the_header_claims_and_a_64_byte_signature() {
        let key = SigningKey::p256_from_pem(P256_PEM.as_bytes()).unwrap();
        assert_eq!(key.public_point().map(<[u8]>::len), Some(65));
        let jwt = key.jwt(Some("KEY123"), &serde_json::json!({ "iss": "TEAM" })).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, serde_json::json!({ "alg": "ES256", "typ": "JWT", "kid": "KEY123" }));
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "TEAM");
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(signature.len(), 64);
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            key.public_point().unwrap(),
        );
        public.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature).unwrap();
    }

    #[test]
    fn keys_of_the_wrong_kind_are_refused() {
        assert!(SigningKey::rsa_from_pem(P256_PEM.as_bytes()).is_err());
        assert!(SigningKey::p256_from_pem(b"not a key").unwrap_err().contains("no private key"));
    }
}
