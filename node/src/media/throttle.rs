//! How many uploads one user may start, and have in progress, on this node: a token bucket of
//! `media.uploads_per_minute` (a burst of that many, then one every `60 / uploads_per_minute`
//! seconds) and at most `media.concurrent_uploads_per_user` at once. Both are per node; the
//! quota (`media.quota_bytes`) is what holds across the cluster.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Users tracked before the idle ones (bucket full, nothing in progress) are forgotten.
const PRUNE_ABOVE: usize = 4_096;

/// Why an upload may not start now (429 `rate_limited`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// Too many uploads started lately; one may start after `retry_after`.
    Rate { retry_after: Duration },
    /// Too many in progress; one may start when one of them ends.
    Concurrency,
}

pub struct Throttle {
    per_minute: u32,
    concurrent: u32,
    users: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    in_progress: u32,
}

impl Bucket {
    fn refill(&mut self, per_minute: u32, now: Instant) {
        let earned = now.saturating_duration_since(self.refilled).as_secs_f64() * f64::from(per_minute) / 60.0;
        self.tokens = (self.tokens + earned).min(f64::from(per_minute));
        self.refilled = now;
    }
}

/// An upload in progress; dropping it ends it.
pub struct Slot<'t> {
    throttle: &'t Throttle,
    user: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(bucket) = self.throttle.users.lock().get_mut(&self.user) {
            bucket.in_progress = bucket.in_progress.saturating_sub(1);
        }
    }
}

impl Throttle {
    pub fn new(per_minute: u32, concurrent: u32) -> Throttle {
        Throttle { per_minute: per_minute.max(1), concurrent: concurrent.max(1), users: Mutex::new(HashMap::new()) }
    }

    /// Start an upload of `user` at `now`, or say why not (a refused upload costs nothing).
    pub fn admit(&self, user: &str, now: Instant) -> Result<Slot<'_>, Throttled> {
        let mut users = self.users.lock();
        if users.len() > PRUNE_ABOVE {
            let per_minute = self.per_minute;
            users.retain(|_, bucket| {
                bucket.refill(per_minute, now);
                bucket.in_progress > 0 || bucket.tokens < f64::from(per_minute)
            });
        }
        let bucket = users.entry(user.to_string()).or_insert_with(|| Bucket {
            tokens: f64::from(self.per_minute),
            refilled: now,
            in_progress: 0,
        });
        bucket.refill(self.per_minute, now);
        if bucket.in_progress >= self.concurrent {
            return Err(Throttled::Concurrency);
        }
        if bucket.tokens < 1.0 {
            let wait = (1.0 - bucket.tokens) * 60.0 / f64::from(self.per_minute);
            return Err(Throttled::Rate { retry_after: Duration::from_secs_f64(wait) });
        }
        bucket.tokens -= 1.0;
        bucket.in_progress += 1;
        Ok(Slot { throttle: self, user: user.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let throttle = Throttle::new(2, 10);
        let start = Instant::now();
        drop(throttle.admit("ann", start).unwrap());
        drop(throttle.admit("ann", start).unwrap());
        let Err(Throttled::Rate { retry_after }) = throttle.admit("ann", start) else { panic!("not throttled") };
        assert_eq!(retry_after.as_secs(), 30);
        // Others have their own bucket.
        drop(throttle.admit("bob", start).unwrap());
        assert!(throttle.admit("ann", start + Duration::from_secs(29)).is_err());
        drop(throttle.admit("ann", start + Duration::from_secs(31)).unwrap());
    }

    #[test]
    fn concurrency_is_given_back_when_an_upload_ends() {
        let throttle = Throttle::new(100, 2);
        let now = Instant::now();
        let first = throttle.admit("ann", now).unwrap();
        let _second = throttle.admit("ann", now).unwrap();
        assert_eq!(throttle.admit("ann", now).err(), Some(Throttled::Concurrency));
        drop(first);
        assert!(throttle.admit("ann", now).is_ok());
    }

    #[test]
    fn idle_users_are_forgotten() {
        let throttle = Throttle::new(10, 1);
        let now = Instant::now();
        for user in 0..=PRUNE_ABOVE {
            drop(throttle.admit(&format!("u{user}"), now).unwrap());
        }
        let _busy = throttle.admit("busy", now).unwrap();
        assert!(throttle.admit("late", now + Duration::from_secs(60)).is_ok());
        let users = throttle.users.lock();
        assert!(users.len() <= 3 && users.contains_key("busy"), "{}", users.len());
    }
}
