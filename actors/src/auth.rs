//! Authentication: argon2id password hashes (run in a bounded pool, [`hash_pool`]), signed
//! expiring tokens, and the limits that slow down password guessing and account creation
//! ([`limiter`]).
//!
//! A token is `base64url(claims JSON) "." base64url(HMAC-SHA256(key, claims))`. The claims hold
//! the user, the expiry and the user's token epoch at issue time; "log out everywhere" bumps the
//! epoch in the store, which revokes every older token without a token list. Every node of a
//! cluster must share the signing key (configuration `auth.token_key`, from the environment or a
//! file, never the repository). JWTs of the product's own identity provider are accepted too
//! when configured ([`external`]).

use std::time::Duration;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Settings of the authentication layer.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// HMAC key for tokens; at least 32 bytes.
    pub token_key: Vec<u8>,
    /// Token lifetime. A day: long enough that a phone does not log in all the time, short
    /// enough that a leaked token dies by itself.
    pub token_ttl_secs: u64,
    /// argon2id memory cost. 19 MiB and 2 passes are OWASP's minimum recommendation.
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub password_min_chars: usize,
    pub password_max_chars: usize,
    /// Login attempts one client address may have in flight or failed within the window, and
    /// failures in a row per user name and address before the growing delays start.
    pub login_max_failures: u32,
    pub login_window_secs: u64,
    /// Failed logins per user name from all addresses within the window.
    pub login_user_max_failures: u32,
    /// The longest delay between attempts for one user name from one address.
    pub login_backoff_max_secs: u64,
    /// Registrations per client address within `register_window_secs`; 0: no limit.
    pub register_max_per_address: u32,
    pub register_window_secs: u64,
    /// Password hashes run at once (threads of the hash pool), at least 1.
    pub max_concurrent_hashes: usize,
    /// Hashes waiting for a thread; beyond them requests are refused with `rate_limited`.
    pub hash_queue_len: usize,
}

impl AuthConfig {
    /// Settings for tests: a fixed key and cheap hashing.
    pub fn for_tests() -> Self {
        AuthConfig {
            token_key: vec![7; 32],
            token_ttl_secs: 3600,
            argon2_memory_kib: 1024,
            argon2_iterations: 1,
            password_min_chars: 8,
            password_max_chars: 256,
            login_max_failures: 5,
            login_window_secs: 60,
            login_user_max_failures: 50,
            login_backoff_max_secs: 3600,
            register_max_per_address: 0,
            register_window_secs: 600,
            max_concurrent_hashes: 2,
            hash_queue_len: 16,
        }
    }
}

/// Limiter table bounds: user names and addresses are short, so this is a few tens of MiB at
/// most, and takes tens of thousands of addresses to fill.
const LIMITER_MAX_KEYS: usize = 100_000;
const LIMITER_MAX_ENTRIES: usize = 1_000_000;

/// A stored hash may ask for more memory than the configured cost (hashes made before the cost
/// was lowered) up to this factor; beyond it the hash is refused, not run, so a corrupt record
/// cannot make the node allocate without bound.
const STORED_COST_FACTOR: usize = 4;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User name.
    pub sub: String,
    /// Expiry, milliseconds since the Unix epoch.
    pub exp: u64,
    /// The user's token epoch when the token was issued.
    pub epo: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed or its signature does not match")]
    Invalid,
    #[error("token has expired; log in again")]
    Expired,
}

/// What can go wrong setting the authenticator up or hashing a password.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth.token_key must be at least 32 bytes")]
    TokenKeyTooShort,
    #[error("invalid argon2 parameters: {0}")]
    Parameters(String),
    #[error("starting password hash threads: {0}")]
    HashThreads(#[from] std::io::Error),
    #[error("hashing a password: {0}")]
    Hashing(String),
}

/// Passwords and tokens. Cheap to clone behind an `Arc`.
pub struct Authenticator {
    config: AuthConfig,
    params: Params,
    limiter: Limiter,
    pool: HashPool,
    /// JWTs of the product's identity provider, when configured.
    external: Option<ExternalTokens>,
}

impl Authenticator {
    pub fn new(config: AuthConfig) -> Result<Self, AuthError> {
        if config.token_key.len() < 32 {
            return Err(AuthError::TokenKeyTooShort);
        }
        let params = Params::new(config.argon2_memory_kib, config.argon2_iterations, 1, None)
            .map_err(|err| AuthError::Parameters(err.to_string()))?;
        let limiter = Limiter::new(LimiterSettings {
            address_max_attempts: config.login_max_failures,
            window: Duration::from_secs(config.login_window_secs),
            user_max_failures: config.login_user_max_failures,
            backoff_max: Duration::from_secs(config.login_backoff_max_secs),
            register_max_per_address: config.register_max_per_address,
            register_window: Duration::from_secs(config.register_window_secs),
            max_keys: LIMITER_MAX_KEYS,
            max_entries: LIMITER_MAX_ENTRIES,
        });
        let pool = HashPool::new(config.max_concurrent_hashes, config.hash_queue_len)?;
        Ok(Authenticator { params, config, limiter, pool, external: None })
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Also accept JWTs of the identity provider `config` describes (see [`external`]).
    pub fn with_external(mut self, config: ExternalConfig) -> Self {
        self.external = Some(ExternalTokens::new(config));
        self
    }

    /// The verifier of external tokens, when configured.
    pub fn external(&self) -> Option<&ExternalTokens> {
        self.external.as_ref()
    }

    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// Check a new password against the length rules.
    pub fn validate_password(&self, password: &str) -> Result<(), String> {
        let chars = password.chars().count();
        if chars < self.config.password_min_chars || chars > self.config.password_max_chars {
            return Err(format!(
                "password must have {} to {} characters",
                self.config.password_min_chars, self.config.password_max_chars
            ));
        }
        Ok(())
    }

    /// Hash a password on the calling thread (CPU- and memory-heavy; requests use
    /// [`Authenticator::hash_in_pool`]).
    pub fn hash_password(&self, password: &str) -> Result<String, AuthError> {
        hash_with(&self.params, password.as_bytes(), &mut HashMemory::default())
    }

    /// Verify a password against a stored hash on the calling thread. The parameters come from
    /// the stored hash, so raising the cost later keeps old hashes valid.
    pub fn verify_password(&self, hash: &str, password: &str) -> bool {
        verify_with(hash, password.as_bytes(), &mut HashMemory::default(), self.max_stored_blocks())
    }

    /// Hash a password in the pool, or `Busy` at once when its queue is full.
    pub async fn hash_in_pool(&self, password: String) -> Result<Result<String, AuthError>, Busy> {
        let params = self.params.clone();
        let result = self.pool.try_run(move |memory| hash_with(&params, password.as_bytes(), memory))?;
        Ok(result.await.unwrap_or_else(|_| Err(AuthError::Hashing("the hash thread failed".into()))))
    }

    /// Verify a password in the pool, or `Busy` at once when its queue is full. Without a
    /// stored hash (an unknown user) a hash is still computed and `false` returned, so the time
    /// taken does not tell which user names exist.
    pub async fn verify_in_pool(&self, stored: Option<String>, password: String) -> Result<bool, Busy> {
        let params = self.params.clone();
        let max_blocks = self.max_stored_blocks();
        let result = self.pool.try_run(move |memory| match stored {
            Some(hash) => verify_with(&hash, password.as_bytes(), memory, max_blocks),
            None => {
                let _ = hash_with(&params, password.as_bytes(), memory);
                false
            }
        })?;
        Ok(result.await.unwrap_or(false))
    }

    fn max_stored_blocks(&self) -> usize {
        self.params.block_count() * STORED_COST_FACTOR
    }

    /// Issue a token for `user` under its current token epoch. Returns the token and its expiry.
    pub fn issue_token(&self, user: &str, token_epoch: u64, now_ms: u64) -> (String, u64) {
        let exp = now_ms + self.config.token_ttl_secs * 1000;
        let claims = Claims { sub: user.to_string(), exp, epo: token_epoch };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialise"));
        let signature = URL_SAFE_NO_PAD.encode(self.sign(payload.as_bytes()));
        (format!("{payload}.{signature}"), exp)
    }

    /// Check a token's signature and expiry. The epoch is checked by the caller against the
    /// store, since it can change after issue.
    pub fn verify_token(&self, token: &str, now_ms: u64) -> Result<Claims, TokenError> {
        let (payload, signature) = token.split_once('.').ok_or(TokenError::Invalid)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Invalid)?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        // verify_slice compares in constant time.
        mac.verify_slice(&signature).map_err(|_| TokenError::Invalid)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(TokenError::Invalid)?;
        if claims.exp <= now_ms {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.config.token_key).expect("HMAC takes keys of any length")
    }

    fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(payload);
        mac.finalize().into_bytes().to_vec()
    }
}

/// Hash `password` with `params` and a fresh salt into a PHC string, using `memory`.
fn hash_with(params: &Params, password: &[u8], memory: &mut HashMemory) -> Result<String, AuthError> {
    let hashing = |err: &dyn std::fmt::Display| AuthError::Hashing(err.to_string());
    // 16 random bytes, the salt length the PHC string format recommends, from the OS-seeded
    // thread generator (a CSPRNG).
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|err| hashing(&err))?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(output_len, |out| {
        argon2.hash_password_into_with_memory(password, &salt_bytes, out, memory.blocks(params.block_count()))?;
        Ok(())
    })
    .map_err(|err| hashing(&err))?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|err| AuthError::Parameters(err.to_string()))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `stored`, computed in `memory`; a stored hash
/// asking for more than `max_blocks` KiB is refused.
fn verify_with(stored: &str, password: &[u8], memory: &mut HashMemory, max_blocks: usize) -> bool {
    let Ok(hash) = PasswordHash::new(stored) else { return false };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm) else { return false };
    let Ok(version) = hash.version.map_or(Ok(Version::default()), Version::try_from) else { return false };
    let Ok(params) = Params::try_from(&hash) else { return false };
    if params.block_count() > max_blocks {
        tracing::error!(m_cost = params.m_cost(), "stored password hash asks for more memory than allowed");
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_buf) else { return false };
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let computed = Output::init_with(expected.len(), |out| {
        argon2.hash_password_into_with_memory(password, salt_bytes, out, memory.blocks(params.block_count()))?;
        Ok(())
    });
    // `Output`'s equality compares in constant time.
    computed.is_ok_and(|computed| computed == expected)
}

pub mod external;
pub mod hash_pool;
pub mod limiter;

pub use external::{ExternalClaims, ExternalConfig, ExternalTokens};
pub use hash_pool::{Busy, HashMemory, HashPool};
pub use limiter::{Limiter, LimiterSettings, LoginAttempt, Refused, RegisterAttempt};

#[cfg(test)]
mod tests;
