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

fn settings() -> LimiterSettings {
    LimiterSettings {
        address_max_attempts: 3,
        window: Duration::from_secs(60),
        user_max_failures: 5,
        backoff_max: Duration::from_secs(3600),
        register_max_per_address: 2,
        register_window: Duration::from_secs(60),
        max_keys: 1000,
        max_entries: 10_000,
    }
}

fn ip(text: &str) -> std::net::IpAddr {
    text.parse().unwrap()
}

#[test]
fn attempts_count_when_they_start_not_when_they_fail() {
    let limiter = Limiter::new(settings());
    // Three attempts in flight at once (pipelined): the fourth is refused before any hash.
    let held: Vec<_> = (0..3).map(|_| limiter.start_login("alice", ip("10.0.0.1")).unwrap()).collect();
    let refused = limiter.start_login("alice", ip("10.0.0.1")).unwrap_err();
    assert!(refused.retry_after <= Duration::from_secs(1), "in-flight attempts settle soon: {refused:?}");
    // Other user names from the same address are in the same per-address budget.
    assert!(limiter.start_login("bob", ip("10.0.0.1")).is_err());
    drop(held);
    let refused = limiter.start_login("alice", ip("10.0.0.1")).unwrap_err();
    assert!(refused.retry_after > Duration::from_secs(50) && refused.retry_after <= Duration::from_secs(60));
}

#[test]
fn a_success_gives_its_place_back() {
    let limiter = Limiter::new(settings());
    for _ in 0..10 {
        limiter.start_login("alice", ip("10.0.0.1")).unwrap().succeeded();
    }
    drop(limiter.start_login("alice", ip("10.0.0.1")).unwrap());
    drop(limiter.start_login("alice", ip("10.0.0.1")).unwrap());
    // Two failures, then a success resets the delays and gives back only its own place.
    limiter.start_login("alice", ip("10.0.0.1")).unwrap().succeeded();
    drop(limiter.start_login("alice", ip("10.0.0.1")).unwrap());
    assert!(limiter.start_login("alice", ip("10.0.0.1")).is_err(), "three failures in the window");
}

#[test]
fn a_cancelled_attempt_counts_nothing() {
    let limiter = Limiter::new(settings());
    for _ in 0..10 {
        limiter.start_login("alice", ip("10.0.0.1")).unwrap().cancel();
    }
    assert_eq!(limiter.tracked_keys(), 1, "only the (zero) per-user-and-address record is left");
    assert!(limiter.start_login("alice", ip("10.0.0.1")).is_ok());
}

#[test]
fn the_owner_is_not_locked_out_by_a_guesser_elsewhere() {
    let limiter = Limiter::new(settings());
    for _ in 0..3 {
        drop(limiter.start_login("alice", ip("10.0.0.66")).unwrap());
    }
    assert!(limiter.start_login("alice", ip("10.0.0.66")).is_err());
    // Another address, same user name: unaffected, and a success there works.
    limiter.start_login("alice", ip("192.168.1.5")).unwrap().succeeded();
}

#[test]
fn the_per_user_ceiling_stops_a_guesser_with_many_addresses() {
    let limiter = Limiter::new(settings());
    for i in 0..5 {
        drop(limiter.start_login("alice", ip(&format!("10.0.1.{i}"))).unwrap());
    }
    let refused = limiter.start_login("alice", ip("10.0.2.1")).unwrap_err();
    assert!(refused.retry_after > Duration::from_secs(50));
    assert!(limiter.start_login("bob", ip("10.0.2.1")).is_ok(), "other users are not affected");
}

#[test]
fn delays_grow_per_user_and_address() {
    let window = Duration::from_millis(100);
    let limiter = Limiter::new(LimiterSettings {
        address_max_attempts: 2,
        window,
        backoff_max: Duration::from_millis(350),
        ..settings()
    });
    let from = ip("10.0.0.1");
    drop(limiter.start_login("alice", from).unwrap());
    drop(limiter.start_login("alice", from).unwrap());
    let first = limiter.start_login("alice", from).unwrap_err().retry_after;
    assert!(first <= window, "{first:?}");
    std::thread::sleep(window + Duration::from_millis(10));
    drop(limiter.start_login("alice", from).expect("the first delay has passed"));
    // The address budget has room again (one failure in the window), but the user's delay doubled.
    let second = limiter.start_login("alice", from).unwrap_err().retry_after;
    assert!(second > window && second <= 2 * window, "{second:?}");
    assert!(limiter.start_login("bob", from).is_ok(), "the address may still try another name");
    std::thread::sleep(2 * window + Duration::from_millis(10));
    drop(limiter.start_login("alice", from).unwrap());
    let third = limiter.start_login("alice", from).unwrap_err().retry_after;
    assert!(third > 2 * window && third <= Duration::from_millis(350), "capped at backoff_max: {third:?}");
}

#[test]
fn ipv6_addresses_count_by_their_64_prefix() {
    assert_eq!(limiter::address_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
    assert_eq!(limiter::address_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
    let limiter = Limiter::new(settings());
    for i in 0..3 {
        drop(limiter.start_login(&format!("user{i}"), ip(&format!("2001:db8::{i}"))).unwrap());
    }
    assert!(limiter.start_login("user9", ip("2001:db8::ffff")).is_err());
    assert!(limiter.start_login("user9", ip("2001:db8:0:1::1")).is_ok());
}

#[test]
fn the_table_is_bounded_and_refuses_new_keys_when_full() {
    let limiter = Limiter::new(LimiterSettings { max_keys: 9, ..settings() });
    // Each first attempt from a new address for a new name adds three keys.
    for i in 0..3 {
        drop(limiter.start_login(&format!("user{i}"), ip(&format!("10.0.0.{i}"))).unwrap());
    }
    assert_eq!(limiter.tracked_keys(), 9);
    assert!(limiter.start_login("user9", ip("10.0.0.9")).is_err(), "full: refused, not untracked");
    assert_eq!(limiter.tracked_keys(), 9);
    // Known keys still work.
    assert!(limiter.start_login("user0", ip("10.0.0.0")).is_ok());
}

#[test]
fn a_full_table_is_swept_of_expired_records() {
    let window = Duration::from_millis(50);
    let limiter =
        Limiter::new(LimiterSettings { max_keys: 6, window, backoff_max: Duration::from_millis(50), ..settings() });
    for i in 0..2 {
        drop(limiter.start_login(&format!("user{i}"), ip(&format!("10.0.0.{i}"))).unwrap());
    }
    std::thread::sleep(window + Duration::from_millis(10));
    assert!(limiter.start_login("user9", ip("10.0.0.9")).is_ok());
}

#[test]
fn registrations_are_limited_per_address_and_refunded_when_not_run() {
    let limiter = Limiter::new(settings());
    limiter.start_register(ip("10.0.0.1")).unwrap().refund();
    let _kept = limiter.start_register(ip("10.0.0.1")).unwrap();
    let _kept2 = limiter.start_register(ip("10.0.0.1")).unwrap();
    let refused = limiter.start_register(ip("10.0.0.1")).unwrap_err();
    assert!(refused.retry_after > Duration::from_secs(50));
    assert!(limiter.start_register(ip("10.0.0.2")).is_ok());
    let unlimited = Limiter::new(LimiterSettings { register_max_per_address: 0, ..settings() });
    for _ in 0..100 {
        let _ = unlimited.start_register(ip("10.0.0.1")).unwrap();
    }
    assert_eq!(unlimited.tracked_keys(), 0);
}

#[tokio::test]
async fn pooled_hashes_verify_and_a_full_queue_refuses_at_once() {
    let auth = auth();
    let hash = auth.hash_in_pool("correct horse".into()).await.unwrap().unwrap();
    assert!(auth.verify_in_pool(Some(hash.clone()), "correct horse".into()).await.unwrap());
    assert!(!auth.verify_in_pool(Some(hash.clone()), "wrong horse".into()).await.unwrap());
    assert!(!auth.verify_in_pool(None, "correct horse".into()).await.unwrap());
    assert!(auth.verify_password(&hash, "correct horse"), "pool and direct hashing agree");

    // One thread, one queued: a third job is refused while the first is held.
    let pool = HashPool::new(1, 1).unwrap();
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let first = pool.try_run(move |_| wait.recv().is_ok()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let second = pool.try_run(|_| true).unwrap();
    let busy = pool.try_run(|_| true).unwrap_err();
    assert!(busy.retry_after >= Duration::from_millis(50));
    release.send(()).unwrap();
    assert!(first.await.unwrap() && second.await.unwrap());
    assert!(pool.try_run(|_| true).unwrap().await.unwrap());
}

#[test]
fn stored_hashes_asking_for_too_much_memory_are_refused() {
    let auth = auth();
    let hash = auth.hash_password("correct horse").unwrap();
    // for_tests uses m=1024; ask for 64 times that.
    let greedy = hash.replace("m=1024", "m=65536");
    assert_ne!(greedy, hash);
    assert!(!auth.verify_password(&greedy, "correct horse"));
}

#[test]
fn password_rules() {
    let auth = auth();
    assert!(auth.validate_password("short").is_err());
    assert!(auth.validate_password("long enough").is_ok());
    assert!(auth.validate_password(&"x".repeat(257)).is_err());
}
