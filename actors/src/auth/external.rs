//! Tokens from the product's own identity provider: JWTs a client presents in `authenticate`
//! instead of a palaver token, verified here and mapped to a palaver user.
//!
//! - **RS256 and ES256** against the provider's JWKS (`auth.jwt.jwks_url`), fetched once and
//!   cached; a token naming a key id the cache lacks makes one fresh fetch (at most one per
//!   `jwks_min_refresh_ms`, so a stream of made-up key ids cannot make the node hammer the
//!   provider), which is how a key rotation reaches the node with no restart.
//! - **HS256** with a shared secret (`auth.jwt.hs256_secret`), for providers that sign that way.
//! - The issuer and audience must be the configured ones, `exp` must lie ahead (with
//!   `leeway_secs`), `nbf` (if present) behind. Only the algorithms above are accepted, and
//!   each only with its kind of key: a token cannot pick `none`, or HS256 with the public key.
//! - The user is the claim `user_claim` (`sub` by default), which must be a valid palaver user
//!   name; the caller creates the account on first sight when `create_users` is on.
//!
//! palaver's own accounts and tokens stay the default; this only adds a second kind of token.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::TokenError;

/// How a JWKS download may take at most.
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest JWKS document accepted (a provider publishes a handful of keys).
const JWKS_MAX_BYTES: usize = 256 * 1024;

/// What the node accepts from an identity provider.
#[derive(Debug, Clone, Default)]
pub struct ExternalConfig {
    /// `iss` every token must carry.
    pub issuer: String,
    /// `aud` every token must carry (one of, when a token has several).
    pub audience: String,
    /// Where the provider publishes its public keys (RS256, ES256).
    pub jwks_url: Option<String>,
    /// The shared secret for HS256 tokens.
    pub hs256_secret: Option<Vec<u8>>,
    /// The claim holding the palaver user name.
    pub user_claim: String,
    /// Create the account the first time a valid token names it.
    pub create_users: bool,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// The shortest time between two JWKS downloads.
    pub jwks_min_refresh_ms: u64,
}

/// A verified external token: the user it names and when it expires (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalClaims {
    pub user: String,
    pub exp_ms: u64,
    pub create_users: bool,
}

/// The provider's keys as last downloaded.
#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    fetched: Option<Instant>,
}

/// Verifies external tokens. One per node.
pub struct ExternalTokens {
    config: ExternalConfig,
    http: reqwest::Client,
    cache: Mutex<KeyCache>,
}

impl ExternalTokens {
    pub fn new(config: ExternalConfig) -> Self {
        let http = reqwest::Client::builder().timeout(JWKS_TIMEOUT).build().unwrap_or_default();
        ExternalTokens { config, http, cache: Mutex::new(KeyCache::default()) }
    }

    /// Whether `token` is shaped like a JWT (three parts), rather than a palaver token (two).
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3
    }

    /// Verify `token` and name its user.
    pub async fn verify(&self, token: &str) -> Result<ExternalClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let key = match header.alg {
            Algorithm::HS256 => {
                let secret = self.config.hs256_secret.as_deref().ok_or(TokenError::Invalid)?;
                DecodingKey::from_secret(secret)
            }
            Algorithm::RS256 | Algorithm::ES256 => {
                let kid = header.kid.as_deref().ok_or(TokenError::Invalid)?;
                let (alg, key) = self.key(kid).await.ok_or(TokenError::Invalid)?;
                if alg != header.alg {
                    return Err(TokenError::Invalid);
                }
                key
            }
            _ => return Err(TokenError::Invalid),
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.config.leeway_secs;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|err| match err.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid,
        })?;
        let user = data.claims.get(&self.config.user_claim).and_then(Value::as_str).ok_or(TokenError::Invalid)?;
        crate::names::validate_user_name(user).map_err(|_| TokenError::Invalid)?;
        let exp = data.claims.get("exp").and_then(Value::as_u64).ok_or(TokenError::Invalid)?;
        Ok(ExternalClaims {
            user: user.to_owned(),
            exp_ms: exp.saturating_mul(1000),
            create_users: self.config.create_users,
        })
    }

    /// The key `kid`, from the cache or, when it is not there, from a fresh download (if the
    /// last one is old enough).
    async fn key(&self, kid: &str) -> Option<(Algorithm, DecodingKey)> {
        let mut cache = self.cache.lock().await;
        if let Some(found) = cache.keys.get(kid) {
            return Some(found.clone());
        }
        let min_gap = Duration::from_millis(self.config.jwks_min_refresh_ms);
        if cache.fetched.is_some_and(|at| at.elapsed() < min_gap) {
            return None;
        }
        cache.fetched = Some(Instant::now());
        match self.download().await {
            Ok(keys) => {
                info!(keys = keys.len(), "identity provider keys downloaded");
                cache.keys = keys;
            }
            Err(err) => warn!(error = %err, "downloading the identity provider's keys failed; keeping the ones held"),
        }
        cache.keys.get(kid).cloned()
    }

    async fn download(&self) -> Result<HashMap<String, (Algorithm, DecodingKey)>, String> {
        let url = self.config.jwks_url.as_deref().ok_or("no auth.jwt.jwks_url")?;
        let response = self.http.get(url).send().await.map_err(|err| format!("GET {url}: {err}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: {}", response.status()));
        }
        let body = response.bytes().await.map_err(|err| format!("GET {url}: {err}"))?;
        if body.len() > JWKS_MAX_BYTES {
            return Err(format!("GET {url}: {} bytes, more than {JWKS_MAX_BYTES}", body.len()));
        }
        let set: JwkSet = serde_json::from_slice(&body).map_err(|err| format!("{url} is no JWKS: {err}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            let alg = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(params)
                    if params.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, (alg, key));
            }
        }
        Ok(keys)
    }
}
