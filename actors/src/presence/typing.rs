//! Typing indicators started on this node: when a start, a repeat or a stop must be told to the
//! room's members, and which indicators lapsed.
//!
//! An indicator lives `ttl` from its last repeat. A repeat within half the lifetime is not told
//! again, it only extends the indicator; a later one is told again, so the members' countdown
//! (`expires_in_ms`) restarts before it runs out. A stop, or the lapse, is told to exactly the
//! members the start was told to. Every call takes the time from its caller, so the rules are
//! tested with an injected clock rather than by sleeping (see the tests below).
//!
//! A start is told only after the room's members are read, and a connection's requests run
//! concurrently: its `send` or `typing: false` can be handled while its `typing: true` still
//! waits for the store. So a start is recorded at once, as pending, under a number of its own;
//! a stop that comes meanwhile removes it, and the start, when its members arrive, finds its
//! number gone and tells no one. Without that, the late start was told after the stop (the
//! members saw someone typing who had sent already) and swallowed the user's next start as a
//! repeat.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a `typing` frame from a user needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TypingUpdate {
    /// A repeat within half the lifetime: extended, nobody told.
    Nothing,
    /// A start, or a repeat after half the lifetime: tell the members, then record whom with
    /// [`TypingTable::started`] and this number (or give it up with [`TypingTable::abandon`]).
    Start(u64),
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
    /// The other members, told again when it ends; empty while the start is pending.
    recipients: Vec<String>,
    /// The start's number while it is pending (its members not read yet); `None` once told.
    pending: Option<u64>,
}

/// The active indicators of this node's users, by (room, user).
pub(crate) struct TypingTable {
    ttl: Duration,
    active: HashMap<(String, String), Typing>,
    /// The number of the last start.
    starts: u64,
}

impl TypingTable {
    pub(crate) fn new(ttl: Duration) -> Self {
        TypingTable { ttl, active: HashMap::new(), starts: 0 }
    }

    /// `user` started (`active`) or stopped typing in `room` at `now`: what to tell.
    pub(crate) fn update(&mut self, room: &str, user: &str, active: bool, now: Instant) -> TypingUpdate {
        let key = (room.to_string(), user.to_string());
        match (active, self.active.get_mut(&key)) {
            (true, Some(entry)) if now.saturating_duration_since(entry.forwarded) < self.ttl / 2 => {
                entry.expires = now + self.ttl;
                TypingUpdate::Nothing
            }
            (true, _) => {
                self.starts += 1;
                let pending = Typing {
                    expires: now + self.ttl,
                    forwarded: now,
                    recipients: Vec::new(),
                    pending: Some(self.starts),
                };
                self.active.insert(key, pending);
                TypingUpdate::Start(self.starts)
            }
            (false, Some(_)) => {
                TypingUpdate::Stop(self.active.remove(&key).map(|entry| entry.recipients).unwrap_or_default())
            }
            (false, None) => TypingUpdate::StopUnknown,
        }
    }

    /// The members of start `start` of `user` typing in `room` are `recipients`, read by `now`:
    /// true if they are to be told, false if a stop (or the lapse) ended the start meanwhile.
    pub(crate) fn started(
        &mut self,
        room: &str,
        user: &str,
        start: u64,
        recipients: Vec<String>,
        now: Instant,
    ) -> bool {
        match self.active.get_mut(&(room.to_string(), user.to_string())) {
            Some(entry) if entry.pending == Some(start) => {
                *entry = Typing { expires: now + self.ttl, forwarded: now, recipients, pending: None };
                true
            }
            _ => false,
        }
    }

    /// Start `start` will not be told (the room refused it): forget it if it is still pending.
    pub(crate) fn abandon(&mut self, room: &str, user: &str, start: u64) {
        let key = (room.to_string(), user.to_string());
        if self.active.get(&key).is_some_and(|entry| entry.pending == Some(start)) {
            self.active.remove(&key);
        }
    }

    /// Take the indicators that lapsed by `now`: ((room, user), whom to tell). A start still
    /// pending by then was told to no one, so it lapses without a word.
    pub(crate) fn take_expired(&mut self, now: Instant) -> Vec<((String, String), Vec<String>)> {
        let keys: Vec<_> =
            self.active.iter().filter(|(_, entry)| entry.expires <= now).map(|(key, _)| key.clone()).collect();
        let lapsed = keys.into_iter().filter_map(|key| self.active.remove(&key).map(|entry| (key, entry)));
        lapsed.filter(|(_, entry)| entry.pending.is_none()).map(|(key, entry)| (key, entry.recipients)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(6);

    fn members() -> Vec<String> {
        vec!["bob".to_string(), "carol".to_string()]
    }

    /// Alice starts typing in `r` at `now`, told to bob and carol.
    fn start(table: &mut TypingTable, now: Instant) {
        let TypingUpdate::Start(start) = table.update("r", "alice", true, now) else { panic!("a start") };
        assert!(table.started("r", "alice", start, members(), now));
    }

    /// A table where alice started typing in `r` at `t0`, told to bob and carol.
    fn typing_since(t0: Instant) -> TypingTable {
        let mut table = TypingTable::new(TTL);
        start(&mut table, t0);
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
        // Told again: the new start counts from then.
        start(&mut table, t0 + TTL / 2);
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
        assert!(matches!(table.update("r", "alice", true, t0 + Duration::from_secs(2)), TypingUpdate::Start(_)));
    }

    #[test]
    fn a_stop_while_the_start_waits_for_its_members_ends_it_and_the_start_is_told_to_no_one() {
        let t0 = Instant::now();
        let mut table = TypingTable::new(TTL);
        let TypingUpdate::Start(first) = table.update("r", "alice", true, t0) else { panic!("a start") };
        // Her message (or her stop) is handled before the start's members are read.
        assert_eq!(table.update("r", "alice", false, t0), TypingUpdate::Stop(Vec::new()));
        assert!(!table.started("r", "alice", first, members(), t0), "a start told after its stop");
        // Nothing is left behind: her next start is told, not taken for a repeat.
        let TypingUpdate::Start(second) = table.update("r", "alice", true, t0 + Duration::from_secs(1)) else {
            panic!("her next start must be told")
        };
        assert!(table.started("r", "alice", second, members(), t0 + Duration::from_secs(1)));
        // A start that lapses while pending was told to no one, so its lapse is not told either.
        let TypingUpdate::Start(late) = table.update("r", "bob", true, t0) else { panic!("a start") };
        assert_eq!(table.take_expired(t0 + TTL), Vec::new());
        assert!(!table.started("r", "bob", late, members(), t0 + TTL));
    }

    #[test]
    fn an_abandoned_start_leaves_nothing_behind() {
        let t0 = Instant::now();
        let mut table = TypingTable::new(TTL);
        let TypingUpdate::Start(first) = table.update("r", "alice", true, t0) else { panic!("a start") };
        table.abandon("r", "alice", first);
        assert!(matches!(table.update("r", "alice", true, t0), TypingUpdate::Start(_)));
    }

    #[test]
    fn indicators_are_per_room_and_user() {
        let t0 = Instant::now();
        let mut table = typing_since(t0);
        assert!(matches!(table.update("other", "alice", true, t0), TypingUpdate::Start(_)));
        assert_eq!(table.update("r", "bob", false, t0), TypingUpdate::StopUnknown);
    }
}
