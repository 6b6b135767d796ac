//! Limits on password guessing and account creation, checked before a password hash is queued.
//!
//! A login attempt counts from the moment it starts, not when its hash says it failed, so
//! pipelining many attempts gains nothing: each one takes a place in every limit it falls under,
//! a success gives the places back, a failure (or an attempt abandoned half-way) keeps them. The
//! limits, per client address (IPv6 by its /64, which one subscriber usually holds whole):
//!
//! - per address, across all user names: at most `address_max_attempts` attempts in flight or
//!   failed within the sliding `window`;
//! - per user name and address: after `address_max_attempts` failures in a row the next attempt
//!   waits `window`, and every further failure doubles the wait up to `backoff_max`; a success
//!   resets it, and so does quiet for `backoff_max`;
//! - per user name, across all addresses: at most `user_max_failures` in the window, a ceiling
//!   far above what one address may do, so that a guesser slowed down at its own address does
//!   not lock the owner out of theirs;
//! - `register`, per address: at most `register_max_per_address` within `register_window`,
//!   successful or not (each costs a hash).
//!
//! Memory is bounded: user names are validated before they become keys, and the table holds at
//! most `max_keys` keys and `max_entries` timestamps; when full and a sweep of expired records
//! frees nothing, new keys are refused (`rate_limited`) rather than left untracked.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The limits; see the module documentation.
#[derive(Debug, Clone)]
pub struct LimiterSettings {
    pub address_max_attempts: u32,
    pub window: Duration,
    pub user_max_failures: u32,
    pub backoff_max: Duration,
    /// 0: registrations are not limited per address (the hash pool still bounds them).
    pub register_max_per_address: u32,
    pub register_window: Duration,
    pub max_keys: usize,
    pub max_entries: usize,
}

/// Why an attempt was refused before it started, and when it may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after: Duration,
}

/// How long a client waits when only attempts still in flight hold the limit: they settle
/// within a hash or two.
const IN_FLIGHT_RETRY: Duration = Duration::from_millis(250);

/// Minimum time between full sweeps of a full table, so an attacker cannot make every attempt
/// pay for one.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Address(IpAddr),
    User(Box<str>),
    UserAddress(Box<str>, IpAddr),
    Register(IpAddr),
}

#[derive(Debug)]
struct Stamp {
    id: u64,
    at: Instant,
    pending: bool,
}

#[derive(Debug)]
enum Record {
    /// Attempts in flight, and settled ones within the window.
    Log(VecDeque<Stamp>),
    /// Failures in a row (in-flight attempts included, `pending` of them) and when the next
    /// attempt may start.
    Backoff { failures: u32, pending: u32, next: Instant, last: Instant },
}

impl Record {
    fn entries(&self) -> usize {
        match self {
            Record::Log(log) => log.len(),
            Record::Backoff { .. } => 1,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    records: HashMap<Key, Record>,
    /// Sum of `Record::entries` over `records`.
    entries: usize,
    next_id: u64,
    last_sweep: Option<Instant>,
}

/// The limits of one node. Clones share their state.
#[derive(Debug, Clone)]
pub struct Limiter {
    settings: Arc<LimiterSettings>,
    state: Arc<Mutex<State>>,
}

/// The key under which an address is limited: IPv4 (also when mapped into IPv6) as is, IPv6 by
/// its /64 prefix, since one subscriber commonly gets a whole /64 and could otherwise rotate
/// through addresses without end.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

impl Limiter {
    pub fn new(settings: LimiterSettings) -> Self {
        Limiter { settings: Arc::new(settings), state: Arc::default() }
    }

    pub fn settings(&self) -> &LimiterSettings {
        &self.settings
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements, so a panic elsewhere does not spoil it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Start a login attempt for `user` (already validated) from `ip`, taking its place in every
    /// limit, or refuse it without touching any.
    pub fn start_login(&self, user: &str, ip: IpAddr) -> Result<LoginAttempt, Refused> {
        let ip = address_key(ip);
        let now = Instant::now();
        let s = &self.settings;
        let keys = [Key::Address(ip), Key::User(user.into()), Key::UserAddress(user.into(), ip)];
        let mut state = self.lock();
        let mut retry_after = Duration::ZERO;
        retry_after = retry_after.max(state.log_refusal(&keys[0], s.address_max_attempts, s.window, now));
        retry_after = retry_after.max(state.log_refusal(&keys[1], s.user_max_failures, s.window, now));
        retry_after = retry_after.max(state.backoff_refusal(&keys[2], s, now));
        if !retry_after.is_zero() {
            return Err(Refused { retry_after });
        }
        state.make_room(&keys, s, now)?;
        let id = state.push_stamp(keys[0].clone(), now);
        state.push_stamp_with(keys[1].clone(), id, now);
        state.bump_backoff(keys[2].clone(), s, now);
        drop(state);
        Ok(LoginAttempt { limiter: self.clone(), user: user.into(), ip, id, settled: false })
    }

    /// Start a registration from `ip`, or refuse it. Registrations are not given back: each
    /// costs a hash whether or not the name was free.
    pub fn start_register(&self, ip: IpAddr) -> Result<RegisterAttempt, Refused> {
        let s = &self.settings;
        if s.register_max_per_address == 0 {
            return Ok(RegisterAttempt { limiter: self.clone(), key: None });
        }
        let key = Key::Register(address_key(ip));
        let now = Instant::now();
        let mut state = self.lock();
        let retry_after = state.log_refusal(&key, s.register_max_per_address, s.register_window, now);
        if !retry_after.is_zero() {
            return Err(Refused { retry_after });
        }
        state.make_room(std::slice::from_ref(&key), s, now)?;
        let id = state.push_stamp(key.clone(), now);
        // Counted as done at once: only a refund (the hash was never run) takes it back.
        if let Some(Record::Log(log)) = state.records.get_mut(&key) {
            if let Some(stamp) = log.iter_mut().find(|stamp| stamp.id == id) {
                stamp.pending = false;
            }
        }
        Ok(RegisterAttempt { limiter: self.clone(), key: Some((key, id)) })
    }

    /// Keys currently tracked (for tests and metrics).
    pub fn tracked_keys(&self) -> usize {
        self.lock().records.len()
    }

    fn settle_login(&self, user: &str, ip: IpAddr, id: u64, outcome: Outcome) {
        let now = Instant::now();
        let mut state = self.lock();
        for key in [Key::Address(ip), Key::User(user.into())] {
            match outcome {
                Outcome::Failed => state.settle_stamp(&key, id, now),
                Outcome::Succeeded | Outcome::Cancelled => state.remove_stamp(&key, id),
            }
        }
        let key = Key::UserAddress(user.into(), ip);
        match outcome {
            Outcome::Failed => {
                if let Some(Record::Backoff { pending, .. }) = state.records.get_mut(&key) {
                    *pending = pending.saturating_sub(1);
                }
            }
            Outcome::Succeeded => state.remove(&key),
            Outcome::Cancelled => {
                if let Some(Record::Backoff { failures, pending, next, .. }) = state.records.get_mut(&key) {
                    *pending = pending.saturating_sub(1);
                    *failures = failures.saturating_sub(1);
                    if backoff_delay(*failures, &self.settings).is_zero() {
                        *next = now;
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
}

impl State {
    /// Drop settled stamps that left the window; `None` when the log is gone.
    fn prune_log(&mut self, key: &Key, window: Duration, now: Instant) {
        let Some(Record::Log(log)) = self.records.get_mut(key) else { return };
        let before = log.len();
        log.retain(|stamp| stamp.pending || now.duration_since(stamp.at) < window);
        let after = log.len();
        self.entries -= before - after;
        if after == 0 {
            self.records.remove(key);
        }
    }

    /// How long until `key` has room for one more attempt (zero: it has room now).
    fn log_refusal(&mut self, key: &Key, max: u32, window: Duration, now: Instant) -> Duration {
        self.prune_log(key, window, now);
        let Some(Record::Log(log)) = self.records.get(key) else { return Duration::ZERO };
        if log.len() < max as usize {
            return Duration::ZERO;
        }
        if log.iter().any(|stamp| stamp.pending) {
            return IN_FLIGHT_RETRY;
        }
        // The oldest settled stamp is the first to leave the window.
        let oldest = log.iter().map(|stamp| stamp.at).min().unwrap_or(now);
        (oldest + window).saturating_duration_since(now).max(Duration::from_millis(1))
    }

    fn backoff_refusal(&mut self, key: &Key, s: &LimiterSettings, now: Instant) -> Duration {
        match self.records.get(key) {
            Some(Record::Backoff { next, last, pending, .. }) => {
                if now >= *next && now.duration_since(*last) >= s.backoff_max {
                    self.remove(key);
                    Duration::ZERO
                } else if *pending > 0 {
                    // The wait assumes the attempts in flight fail; they may not.
                    next.saturating_duration_since(now).min(IN_FLIGHT_RETRY)
                } else {
                    next.saturating_duration_since(now)
                }
            }
            _ => Duration::ZERO,
        }
    }

    fn bump_backoff(&mut self, key: Key, s: &LimiterSettings, now: Instant) {
        let entry = self.records.entry(key).or_insert_with(|| {
            self.entries += 1;
            Record::Backoff { failures: 0, pending: 0, next: now, last: now }
        });
        if let Record::Backoff { failures, pending, next, last } = entry {
            *failures += 1;
            *pending += 1;
            *last = now;
            *next = now + backoff_delay(*failures, s);
        }
    }

    fn push_stamp(&mut self, key: Key, now: Instant) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.push_stamp_with(key, id, now);
        id
    }

    fn push_stamp_with(&mut self, key: Key, id: u64, now: Instant) {
        let record = self.records.entry(key).or_insert_with(|| Record::Log(VecDeque::new()));
        if let Record::Log(log) = record {
            log.push_back(Stamp { id, at: now, pending: true });
            self.entries += 1;
        }
    }

    fn settle_stamp(&mut self, key: &Key, id: u64, now: Instant) {
        if let Some(Record::Log(log)) = self.records.get_mut(key) {
            if let Some(stamp) = log.iter_mut().find(|stamp| stamp.id == id) {
                stamp.pending = false;
                stamp.at = now;
            }
        }
    }

    fn remove_stamp(&mut self, key: &Key, id: u64) {
        let Some(Record::Log(log)) = self.records.get_mut(key) else { return };
        if let Some(index) = log.iter().position(|stamp| stamp.id == id) {
            log.remove(index);
            self.entries -= 1;
        }
        if log.is_empty() {
            self.records.remove(key);
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(record) = self.records.remove(key) {
            self.entries -= record.entries();
        }
    }

    /// Make sure `keys` (and a stamp each) fit; sweep expired records if the table is full.
    fn make_room(&mut self, keys: &[Key], s: &LimiterSettings, now: Instant) -> Result<(), Refused> {
        let fits = |state: &State| {
            let new_keys = keys.iter().filter(|key| !state.records.contains_key(key)).count();
            state.records.len() + new_keys <= s.max_keys && state.entries + keys.len() <= s.max_entries
        };
        if fits(self) {
            return Ok(());
        }
        if self.last_sweep.is_none_or(|last| now.duration_since(last) >= SWEEP_INTERVAL) {
            self.last_sweep = Some(now);
            self.sweep(s, now);
            if fits(self) {
                return Ok(());
            }
        }
        Err(Refused { retry_after: s.window })
    }

    fn sweep(&mut self, s: &LimiterSettings, now: Instant) {
        let mut entries = 0;
        self.records.retain(|key, record| {
            match record {
                Record::Log(log) => {
                    let window = if matches!(key, Key::Register(_)) { s.register_window } else { s.window };
                    log.retain(|stamp| stamp.pending || now.duration_since(stamp.at) < window);
                }
                Record::Backoff { next, last, .. } => {
                    if now >= *next && now.duration_since(*last) >= s.backoff_max {
                        return false;
                    }
                }
            }
            entries += record.entries();
            record.entries() > 0
        });
        self.entries = entries;
    }
}

/// The wait imposed after `failures` failures in a row for one user name from one address.
fn backoff_delay(failures: u32, s: &LimiterSettings) -> Duration {
    if failures < s.address_max_attempts {
        return Duration::ZERO;
    }
    let doublings = (failures - s.address_max_attempts).min(30);
    s.window.saturating_mul(1 << doublings).min(s.backoff_max)
}

/// A login attempt holding its places in the limits. [`LoginAttempt::succeeded`] gives them
/// back; dropping it any other way (a wrong password, a closed connection) counts a failure.
#[derive(Debug)]
pub struct LoginAttempt {
    limiter: Limiter,
    user: Box<str>,
    ip: IpAddr,
    id: u64,
    settled: bool,
}

impl LoginAttempt {
    /// The password was right: give back every place and reset the delays.
    pub fn succeeded(mut self) {
        self.settled = true;
        self.limiter.settle_login(&self.user, self.ip, self.id, Outcome::Succeeded);
    }

    /// The attempt never reached a password check (the node failed or was too busy): give back
    /// its places, as if it had not been made.
    pub fn cancel(mut self) {
        self.settled = true;
        self.limiter.settle_login(&self.user, self.ip, self.id, Outcome::Cancelled);
    }
}

impl Drop for LoginAttempt {
    fn drop(&mut self) {
        if !self.settled {
            self.limiter.settle_login(&self.user, self.ip, self.id, Outcome::Failed);
        }
    }
}

/// A registration counted against its address. [`RegisterAttempt::refund`] takes it back when
/// no hash was run (the node was too busy to queue one).
#[derive(Debug)]
pub struct RegisterAttempt {
    limiter: Limiter,
    key: Option<(Key, u64)>,
}

impl RegisterAttempt {
    pub fn refund(self) {
        if let Some((key, id)) = &self.key {
            self.limiter.lock().remove_stamp(key, *id);
        }
    }
}
