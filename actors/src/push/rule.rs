//! When to push: which members an entry should reach through their devices. The rule, as
//! docs/PUSH.md states it to users, is applied when the entry is `push.delay_ms` old:
//!
//! - not the author, and a member who had joined by then;
//! - the member's setting for the room allows it: `all`, or `mentions` and the entry mentions
//!   them (in a direct conversation every message is for them), never `none`, and not while
//!   silenced (`muted_until` after now);
//! - they have not read it (their read position is before it) on any device;
//! - no connection of theirs got it: they are not online now, and were not online when it was
//!   written or at any time since (their last connection ended before it).

use protocol::{Entry, NotifyLevel, PresenceState, RoomKind, UserPresence};

use crate::store::PushMember;

/// Whether `member` is told of `entry` (of a room of `kind`), given their presence now and
/// the time now (ms since the Unix epoch).
pub fn tells(member: &PushMember, entry: &Entry, kind: RoomKind, presence: &UserPresence, now_ms: u64) -> bool {
    if entry.from == member.user || entry.deleted || entry.seq <= member.joined_seq || entry.seq <= member.read_seq {
        return false;
    }
    let wanted = match member.notify {
        NotifyLevel::All => true,
        NotifyLevel::Mentions => kind == RoomKind::Direct || entry.mentions.contains(&member.user),
        NotifyLevel::None => false,
    };
    if !wanted || member.muted_until.is_some_and(|until| until > now_ms) {
        return false;
    }
    presence.state == PresenceState::Offline && presence.last_seen.unwrap_or(0) < entry.ts
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::EntryKind;

    const TS: u64 = 1_700_000_000_000;

    fn member(notify: NotifyLevel) -> PushMember {
        PushMember { user: "bob".into(), joined_seq: 1, read_seq: 0, notify, muted_until: None }
    }

    fn entry(seq: u64) -> Entry {
        Entry { seq, from: "alice".into(), kind: EntryKind::Text, ts: TS, ..Entry::default() }
    }

    fn offline(last_seen: Option<u64>) -> UserPresence {
        UserPresence { user: "bob".into(), state: PresenceState::Offline, status: None, last_seen }
    }

    #[test]
    fn an_offline_member_who_has_not_read_is_told() {
        let bob = member(NotifyLevel::All);
        assert!(tells(&bob, &entry(5), RoomKind::Group, &offline(None), TS + 1));
        assert!(tells(&bob, &entry(5), RoomKind::Group, &offline(Some(TS - 1)), TS + 1));
    }

    #[test]
    fn online_then_or_since_means_a_connection_got_it() {
        let bob = member(NotifyLevel::All);
        assert!(!tells(&bob, &entry(5), RoomKind::Group, &offline(Some(TS)), TS + 1), "left after it was written");
        for state in [PresenceState::Online, PresenceState::Away] {
            let here = UserPresence { state, ..offline(None) };
            assert!(!tells(&bob, &entry(5), RoomKind::Group, &here, TS + 1), "{state:?}");
        }
    }

    #[test]
    fn reads_joins_and_own_messages_are_not_told() {
        let read = PushMember { read_seq: 5, ..member(NotifyLevel::All) };
        assert!(!tells(&read, &entry(5), RoomKind::Group, &offline(None), TS + 1));
        let late = PushMember { joined_seq: 6, ..member(NotifyLevel::All) };
        assert!(!tells(&late, &entry(5), RoomKind::Group, &offline(None), TS + 1));
        let own = Entry { from: "bob".into(), ..entry(5) };
        assert!(!tells(&member(NotifyLevel::All), &own, RoomKind::Group, &offline(None), TS + 1));
        let deleted = Entry { deleted: true, ..entry(5) };
        assert!(!tells(&member(NotifyLevel::All), &deleted, RoomKind::Group, &offline(None), TS + 1));
    }

    #[test]
    fn levels_and_silence_decide() {
        let away = offline(None);
        let mentions = member(NotifyLevel::Mentions);
        assert!(!tells(&mentions, &entry(5), RoomKind::Group, &away, TS + 1));
        let mentioning = Entry { mentions: vec!["bob".into()], ..entry(5) };
        assert!(tells(&mentions, &mentioning, RoomKind::Group, &away, TS + 1));
        assert!(tells(&mentions, &entry(5), RoomKind::Direct, &away, TS + 1), "a direct message is for them");
        assert!(!tells(&member(NotifyLevel::None), &mentioning, RoomKind::Direct, &away, TS + 1));
        let muted = PushMember { muted_until: Some(TS + 10), ..member(NotifyLevel::All) };
        assert!(!tells(&muted, &entry(5), RoomKind::Group, &away, TS + 1));
        assert!(tells(&muted, &entry(5), RoomKind::Group, &away, TS + 10), "silence over");
    }
}
