use super::*;

fn auth() -> Authenticator {
    Authenticator::new(AuthConfig::for_tests()).unwrap()
}

#[test]
fn password_hash_verifies_only_the_right_password() {
    let auth = auth();
    let hash = auth.hash_password("correct horse").unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(auth.verify_password(&hash, "correct horse"));
    assert!(!auth.verify_password(&hash, "correct horsE"));
    assert!(!auth.verify_password("not a hash", "correct horse"));
}

#[test]
fn token_round_trip_and_expiry() {
    let auth = auth();
    let (token, exp) = auth.issue_token("alice", 3, 1_000);
    assert_eq!(exp, 1_000 + 3_600_000);
    let claims = auth.verify_token(&token, 2_000).unwrap();
    assert_eq!(claims, Claims { sub: "alice".into(), exp, epo: 3 });
    assert_eq!(auth.verify_token(&token, exp), Err(TokenError::Expired));
}

#[test]
fn forged_tokens_are_refused() {
    let auth = auth();
    let (token, _) = auth.issue_token("alice", 0, 0);
    let (payload, signature) = token.split_once('.').unwrap();
    // Same signature, claims rewritten to another user.
    let forged_claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"mallory","exp":99999999999999,"epo":0}"#);
    assert_eq!(auth.verify_token(&format!("{forged_claims}.{signature}"), 0), Err(TokenError::Invalid));
    // Signed with another key.
    let other = Authenticator::new(AuthConfig { token_key: vec![8; 32], ..AuthConfig::for_tests() }).unwrap();
    let (foreign, _) = other.issue_token("alice", 0, 0);
    assert_eq!(auth.verify_token(&foreign, 0), Err(TokenError::Invalid));
    for junk in ["", ".", "abc", &format!("{payload}."), &format!("{payload}.!!!")] {
        assert_eq!(auth.verify_token(junk, 0), Err(TokenError::Invalid), "{junk}");
    }
}

#[test]
fn short_keys_are_refused() {
    assert!(Authenticator::new(AuthConfig { token_key: vec![1; 16], ..AuthConfig::for_tests() }).is_err());
}

#[test]
fn limiter_blocks_after_max_failures_and_resets_on_success() {
    let limiter = LoginLimiter::new(3, Duration::from_secs(60));
    for _ in 0..3 {
        assert!(limiter.check("alice").is_ok());
        limiter.record_failure("alice");
    }
    let retry = limiter.check("alice").unwrap_err();
    assert!(retry <= Duration::from_secs(60) && retry > Duration::from_secs(50));
    assert!(limiter.check("bob").is_ok(), "keys are independent");
    limiter.record_success("alice");
    assert!(limiter.check("alice").is_ok());
}

#[test]
fn limiter_window_expires() {
    let limiter = LoginLimiter::new(1, Duration::from_millis(0));
    limiter.record_failure("alice");
    assert!(limiter.check("alice").is_ok(), "a zero-length window never blocks");
}

#[test]
fn password_rules() {
    let auth = auth();
    assert!(auth.validate_password("short").is_err());
    assert!(auth.validate_password("long enough").is_ok());
    assert!(auth.validate_password(&"x".repeat(257)).is_err());
}
