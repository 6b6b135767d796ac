//! Authentication: argon2id password hashes, signed expiring tokens, and the limiter that slows
//! down password guessing.
//!
//! A token is `base64url(claims JSON) "." base64url(HMAC-SHA256(key, claims))`. The claims hold
//! the user, the expiry and the user's token epoch at issue time; "log out everywhere" bumps the
//! epoch in the store, which revokes every older token without a token list. Every node of a
//! cluster must share the signing key (configuration `auth.token_key`, from the environment or a
//! file, never the repository).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
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
    /// Failed logins allowed per user name (and per client address) within the window.
    pub login_max_failures: u32,
    pub login_window_secs: u64,
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
        }
    }
}

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

/// Passwords and tokens. Cheap to clone behind an `Arc`.
pub struct Authenticator {
    config: AuthConfig,
    argon2: Argon2<'static>,
    limiter: LoginLimiter,
}

impl Authenticator {
    pub fn new(config: AuthConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(config.token_key.len() >= 32, "auth.token_key must be at least 32 bytes");
        let params = Params::new(config.argon2_memory_kib, config.argon2_iterations, 1, None)
            .map_err(|err| anyhow::anyhow!("invalid argon2 parameters: {err}"))?;
        let limiter = LoginLimiter::new(config.login_max_failures, Duration::from_secs(config.login_window_secs));
        Ok(Authenticator { argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params), config, limiter })
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    pub fn limiter(&self) -> &LoginLimiter {
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

    /// Hash a password (CPU-heavy: call from a blocking thread).
    pub fn hash_password(&self, password: &str) -> anyhow::Result<String> {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        self.argon2
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|err| anyhow::anyhow!("hashing password: {err}"))
    }

    /// Verify a password against a stored hash (CPU-heavy: call from a blocking thread). The
    /// parameters come from the stored hash, so raising the cost later keeps old hashes valid.
    pub fn verify_password(&self, hash: &str, password: &str) -> bool {
        PasswordHash::new(hash).is_ok_and(|parsed| self.argon2.verify_password(password.as_bytes(), &parsed).is_ok())
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

/// Counts failed logins per key (a user name, a client address) in a fixed window and refuses
/// further attempts once `max_failures` is reached, until the window ends.
///
/// Memory is bounded: at most `MAX_KEYS` keys are tracked; when full, expired windows are swept
/// and, if that frees nothing, the new key is not tracked (the per-address key still limits).
pub struct LoginLimiter {
    max_failures: u32,
    window: Duration,
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

impl LoginLimiter {
    const MAX_KEYS: usize = 100_000;

    pub fn new(max_failures: u32, window: Duration) -> Self {
        LoginLimiter { max_failures, window, windows: Mutex::new(HashMap::new()) }
    }

    /// `Err(retry_after)` when `key` has used up its failures in the current window.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let windows = self.windows.lock().expect("limiter lock");
        match windows.get(key) {
            Some((start, failures)) if *failures >= self.max_failures => {
                let elapsed = start.elapsed();
                if elapsed < self.window {
                    Err(self.window - elapsed)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Record a failed attempt for `key`.
    pub fn record_failure(&self, key: &str) {
        let mut windows = self.windows.lock().expect("limiter lock");
        let now = Instant::now();
        if windows.len() >= Self::MAX_KEYS && !windows.contains_key(key) {
            let window = self.window;
            windows.retain(|_, (start, _)| now.duration_since(*start) < window);
            if windows.len() >= Self::MAX_KEYS {
                return;
            }
        }
        let entry = windows.entry(key.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    /// Forget `key` after a successful login.
    pub fn record_success(&self, key: &str) {
        self.windows.lock().expect("limiter lock").remove(key);
    }
}

#[cfg(test)]
mod tests;
