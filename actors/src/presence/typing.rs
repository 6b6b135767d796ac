//! Typing indicators started on this node: when a start, a repeat or a stop must be told to the
//! room's members, and which indicators lapsed.
//!
//! An indicator lives `ttl` from its last repeat. A repeat within half the lifetime is not told
//! again, it only extends the indicator; a later one is told again, so the members' countdown
//! (`expires_in_ms`) restarts before it runs out. A stop, or the lapse, is told to exactly the
//! members the start was told to. Every call takes the time from its caller, so the rules are
//! tested with an injected clock rather than by sleeping (see the tests below).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a `typing` frame from a user needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TypingUpdate {
    /// A repeat within half the lifetime: extended, nobody told.
    Nothing,
    /// A start, or a repeat after half the lifetime: tell the members (and then record whom,
    /// with [`TypingTable::started`]).
    Start,
    /// A stop: tell the members the start was told to (carried here).
    Stop(Vec<String>),
    /// A stop for an indicator this node does not know (expired, or started elsewhere): tell
    /// the members (after checking the room).
    StopUnknown,
}

/// An active typing indicator started on this node.
struct Typing {
    expires: Instant,
    forwarded: Instant,
    /// The other members, told again when it ends.
    recipients: Vec<String>,
}

/// The active indicators of this node's users, by (room, user).
pub(crate) struct TypingTable {
    ttl: Duration,
    active: HashMap<(String, String), Typing>,
}

impl TypingTable {
    pub(crate) fn new(ttl: Duration) -> Self {
        TypingTable { ttl, active: HashMap::new() }
    }

    /// `user` started (`active`) or stopped typing in `room` at `now`: what to tell.
    pub(crate) fn update(&mut self, room: &str, user: &str, active: bool, now: Instant) -> TypingUpdate {
        let key = (room.to_string(), user.to_string());
        match (active, self.active.get_mut(&key)) {
            (true, Some(entry)) if now.saturating_duration_since(entry.forwarded) < self.ttl / 2 => {
                entry.expires = now + self.ttl;
                TypingUpdate::Nothing
            }
            (true, _) => TypingUpdate::Start,
            (false, Some(_)) => {
                TypingUpdate::Stop(self.active.remove(&key).map(|entry| entry.recipients).unwrap_or_default())
            }
            (false, None) => TypingUpdate::StopUnknown,
        }
    }

    /// The start of `user` typing in `room` was told to `recipients` at `now`.
    pub(crate) fn started(&mut self, room: &str, user: &str, recipients: Vec<String>, now: Instant) {
        let entry = Typing { expires: now + self.ttl, forwarded: now, recipients };
        self.active.insert((room.to_string(), user.to_string()), entry);
    }

    /// Take the indicators that lapsed by `now`: ((room, user), whom to tell).
    pub(crate) fn take_expired(&mut self, now: Instant) -> Vec<((String, String), Vec<String>)> {
        let keys: Vec<_> =
            self.active.iter().filter(|(_, entry)| entry.expires <= now).map(|(key, _)| key.clone()).collect();
        keys.into_iter().filter_map(|key| self.active.remove(&key).map(|entry| (key, entry.recipients))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(6);

    fn members() -> Vec<String> {
        vec!["bob".to_string(), "carol".to_string()]
    }

    /// A table where alice started typing in `r` at `t0`, told to bob and carol.
    fn typing_since(t0: Instant) -> TypingTable {
        let mut table = TypingTable::new(TTL);
        assert_eq!(table.update("r", "alice", true, t0), TypingUpdate::Start);
        table.started("r", "alice", members(), t0);
        table
    }

    #[test]
    fn a_repeat_within_half_the_lifetime_is_not_told_but_extends_the_indicator() {
        let t0 = Instant::now();
        let mut table = typing_since(t0);
        let repeat = t0 + TTL / 2 - Duration::from_millis(1);
        assert_eq!(table.update("r", "alice", true, repeat), TypingUpdate::Nothing);
        // It lapses a lifetime after the repeat, not after the start.
        assert!(table.take_expired(t0 + TTL).is_empty());
        assert_eq!(table.take_expired(repeat + TTL), vec![(("r".to_string(), "alice".to_string()), members())]);
    }

    #[test]
    fn a_repeat_after_half_the_lifetime_is_told_again() {
        let t0 = Instant::now();
        let mut table = typing_since(t0);
        assert_eq!(table.update("r", "alice", true, t0 + TTL / 2), TypingUpdate::Start);
        // Told again: the new start counts from then.
        table.started("r", "alice", members(), t0 + TTL / 2);
        assert_eq!(table.update("r", "alice", true, t0 + TTL / 2 + TTL / 4), TypingUpdate::Nothing);
    }

    #[test]
    fn an_indicator_not_repeated_lapses_after_its_lifetime_and_once() {
        let t0 = Instant::now();
        let mut table = typing_since(t0);
        assert!(table.take_expired(t0 + TTL - Duration::from_millis(1)).is_empty());
        assert_eq!(table.take_expired(t0 + TTL), vec![(("r".to_string(), "alice".to_string()), members())]);
        assert!(table.take_expired(t0 + TTL * 2).is_empty());
        // Gone: a stop now is one the node does not know.
        assert_eq!(table.update("r", "alice", false, t0 + TTL * 2), TypingUpdate::StopUnknown);
    }

    #[test]
    fn a_stop_is_told_to_whom_the_start_was_and_ends_the_indicator() {
        let t0 = Instant::now();
        let mut table = typing_since(t0);
        assert_eq!(table.update("r", "alice", false, t0 + Duration::from_secs(1)), TypingUpdate::Stop(members()));
        assert!(table.take_expired(t0 + TTL).is_empty());
        assert_eq!(table.update("r", "alice", true, t0 + Duration::from_secs(2)), TypingUpdate::Start);
    }

    #[test]
    fn indicators_are_per_room_and_user() {
        let t0 = Instant::now();
        let mut table = typing_since(t0);
        assert_eq!(table.update("other", "alice", true, t0), TypingUpdate::Start);
        assert_eq!(table.update("r", "bob", true, t0), TypingUpdate::Start);
        assert_eq!(table.update("r", "bob", false, t0), TypingUpdate::StopUnknown);
    }
}
