//! A connection's place in each large room it follows.
//!
//! Entries of a large room are not in the user's log (store module documentation), so the
//! user-log cursor says nothing about them. The session keeps, per large room, the highest seq
//! it has sent on this connection, and applies to them the same seam rules as to cursors: a seq
//! at or below the position is a duplicate and is skipped, the next one is sent, one beyond the
//! next means something is missing and the room log is read again. The store stays the truth.
//!
//! Where a replay of a large room starts (the session has no position in it yet):
//! - on a resume, from the position the client presented in `authenticate.rooms`; for a room it
//!   did not present, from the user's read position, at most `limits.large_room_replay_max`
//!   entries back (an old client that knows nothing of large rooms still gets its unread
//!   messages, and a user who never reads a busy room does not get its whole history);
//! - later (the room became large, or the user joined it, while connected), from the user's
//!   join or the room's switch to large, whichever is later: nothing in between was sent;
//! - never before the room's `large_since`: earlier entries are in the user log, whose replay
//!   covers them, so the two replays never send one entry twice.
//!
//! Entries between the user's own leave and their next join are not theirs to see; a replay
//! that reads across them skips them.

use std::collections::BTreeMap;

use std::sync::Arc;

use protocol::{Entry, EntryKind};
use rustc_hash::FxHashMap;

use crate::encoded::{SharedEntry, SharedRun};
use crate::store::MyRoom;

/// What to do with a live entry of a large room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Live {
    /// The next one: send it (the position has moved).
    Send,
    /// Already sent (by a replay): drop it.
    Skip,
    /// Something before it is missing, or the room is not followed yet: read the store.
    CatchUp,
}

/// One room to replay from the room log, after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RoomRead {
    pub room: String,
    pub after: u64,
}

/// The positions of one connection, by room id.
///
/// Hashed with Fx rather than SipHash: `live` looks a room up for every delivery to every
/// connection (SipHash was 4 % of the node's time fanning out to a thousand members), and the
/// keys cannot be chosen to collide at scale: they are the user's own rooms, at most
/// `limits.max_rooms_per_user` of them. The hasher also takes no per-map seed (16 bytes less
/// per connection).
#[derive(Debug, Default, Clone)]
pub(super) struct LargeRooms {
    positions: FxHashMap<String, u64>,
}

impl LargeRooms {
    /// Follow every large room of `rooms` from its newest entry (a connection that does not
    /// resume starts live).
    pub fn start_live(&mut self, rooms: &[MyRoom]) {
        for mine in rooms {
            if mine.room.large_since.is_some() {
                self.positions.insert(mine.room.id.clone(), mine.room.last_seq);
            }
        }
    }

    /// The positions, for `live` and `reconnect` frames.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.positions.iter().map(|(room, seq)| (room.clone(), *seq)).collect()
    }

    /// The rooms a catch-up reads, given the user's rooms now: each followed room from its
    /// position (also one the user has left since: the replay sends up to their leave), and each
    /// large room not followed yet from where the module documentation says. `presented` is
    /// `Some` only for the catch-up that answers a resume.
    pub fn plan(&self, rooms: &[MyRoom], presented: Option<&BTreeMap<String, u64>>, replay_max: u32) -> Vec<RoomRead> {
        let mut reads: Vec<RoomRead> =
            self.positions.iter().map(|(room, seq)| RoomRead { room: room.clone(), after: *seq }).collect();
        for mine in rooms {
            let Some(since) = mine.room.large_since else { continue };
            if self.positions.contains_key(&mine.room.id) {
                continue;
            }
            let last = mine.room.last_seq;
            let start = match presented {
                Some(presented) => match presented.get(&mine.room.id) {
                    Some(&seq) => seq.min(last),
                    None => mine.read_seq.max(last.saturating_sub(u64::from(replay_max))),
                },
                None => mine.joined_seq.max(since).saturating_sub(1),
            };
            // Never before the switch (the user log has those), nor before the user joined.
            let floor = mine.joined_seq.saturating_sub(1).max(since - 1);
            reads.push(RoomRead { room: mine.room.id.clone(), after: start.max(floor) });
        }
        reads.sort_by(|a, b| a.room.cmp(&b.room));
        reads
    }

    /// A page of `room`'s log read after `after` (the value in its [`RoomRead`]): returns the
    /// entries to send, in order, and moves the position. A room that was not followed is
    /// followed from `after`.
    pub fn replayed(
        &mut self,
        user: &str,
        room: &str,
        after: u64,
        entries: Vec<Arc<SharedEntry>>,
    ) -> Vec<Arc<SharedEntry>> {
        let mut following = Some(self.positions.get(room).copied().unwrap_or(after));
        let mut sent = Vec::with_capacity(entries.len());
        for shared in entries {
            let entry = shared.entry();
            let own = entry.user.as_deref() == Some(user);
            match following {
                Some(seq) if entry.seq <= seq => {}
                Some(_) => {
                    following = Some(entry.seq);
                    if own && entry.kind.ends_membership() {
                        following = None;
                    }
                    sent.push(shared);
                }
                // After the user's own leave: only their next join counts.
                None if own && entry.kind == EntryKind::Join => {
                    following = Some(entry.seq);
                    sent.push(shared);
                }
                None => {}
            }
        }
        match following {
            Some(seq) => self.positions.insert(room.to_string(), seq),
            None => self.positions.remove(room),
        };
        sent
    }

    /// A live run of a large room at once: `true` when the whole run is the next to send (the
    /// position moves to its end); `false` when each entry must go through
    /// [`live`](Self::live) (the run is not the next, or has a gap or a leave in it).
    pub fn live_run(&mut self, run: &SharedRun) -> bool {
        if !run.is_plain() {
            return false;
        }
        match self.positions.get_mut(run.room()) {
            Some(seq) if run.first_seq() == *seq + 1 => {
                *seq = run.last_seq();
                true
            }
            _ => false,
        }
    }

    /// A live entry of a large room.
    pub fn live(&mut self, user: &str, entry: &Entry) -> Live {
        let own = entry.user.as_deref() == Some(user);
        // `get_mut`, not `insert`: this runs for every delivery of a large room, and moving the
        // position in place neither hashes twice nor copies the room id.
        match self.positions.get_mut(&entry.room) {
            Some(seq) if entry.seq <= *seq => Live::Skip,
            Some(seq) if entry.seq == *seq + 1 => {
                if own && entry.kind.ends_membership() {
                    self.positions.remove(&entry.room);
                } else {
                    *seq = entry.seq;
                }
                Live::Send
            }
            Some(_) => Live::CatchUp,
            // Joining a large room: the user's own join is where following it starts.
            None if own && entry.kind == EntryKind::Join => {
                self.positions.insert(entry.room.clone(), entry.seq);
                Live::Send
            }
            None => Live::CatchUp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RoomRecord;
    use protocol::RoomKind;

    fn mine(id: &str, last_seq: u64, large_since: Option<u64>, read_seq: u64, joined_seq: u64) -> MyRoom {
        MyRoom {
            room: RoomRecord {
                id: id.into(),
                name: id.into(),
                kind: RoomKind::Group,
                private: false,
                created_by: "a".into(),
                last_seq,
                members: 200,
                large_since,
                topic: String::new(),
                who_may_post: Default::default(),
                who_may_invite: Default::default(),
            },
            read_seq,
            joined_seq,
            unread_mentions: 0,
            role: Default::default(),
            notify: Default::default(),
            notify_muted_until: None,
        }
    }

    fn entry(room: &str, seq: u64, kind: EntryKind, user: Option<&str>) -> Entry {
        Entry {
            room: room.into(),
            seq,
            id: format!("m{seq}"),
            from: user.unwrap_or("x").into(),
            kind,
            user: user.map(str::to_string),
            body: String::new(),
            ts: 1,
            ..Default::default()
        }
    }

    fn text(room: &str, seq: u64) -> Entry {
        entry(room, seq, EntryKind::Text, None)
    }

    fn seqs(entries: &[Arc<SharedEntry>]) -> Vec<u64> {
        entries.iter().map(|e| e.entry().seq).collect()
    }

    fn shared(entries: Vec<Entry>) -> Vec<Arc<SharedEntry>> {
        entries.into_iter().map(|entry| Arc::new(SharedEntry::new(entry))).collect()
    }

    fn reads(pairs: &[(&str, u64)]) -> Vec<RoomRead> {
        pairs.iter().map(|(room, after)| RoomRead { room: (*room).into(), after: *after }).collect()
    }

    #[test]
    fn a_resume_starts_where_the_client_was_or_at_its_read_position() {
        let rooms = [
            mine("big", 500, Some(10), 300, 1),
            mine("busy", 5_000, Some(1), 0, 1),
            mine("small", 50, None, 0, 1),
            mine("new", 40, Some(10), 0, 30),
        ];
        let presented: BTreeMap<String, u64> = [("big".to_string(), 420), ("new".to_string(), 5)].into();
        let plan = LargeRooms::default().plan(&rooms, Some(&presented), 256);
        // big: as presented; busy: not presented, never read: the newest 256 only; small: not a
        // large room; new: presented before the user's join, so from the join.
        assert_eq!(plan, reads(&[("big", 420), ("busy", 5_000 - 256), ("new", 29)]));

        let none = BTreeMap::new();
        let plan = LargeRooms::default().plan(&rooms, Some(&none), 256);
        assert_eq!(plan, reads(&[("big", 300), ("busy", 5_000 - 256), ("new", 29)]), "read positions");
    }

    #[test]
    fn a_replay_never_starts_before_the_switch_to_large() {
        // The client last saw seq 3 through its user log; entries 4..9 are in the user log too
        // and its replay sends them; the room log replay starts at the switch (10).
        let rooms = [mine("big", 20, Some(10), 0, 1)];
        let presented: BTreeMap<String, u64> = [("big".to_string(), 3)].into();
        assert_eq!(LargeRooms::default().plan(&rooms, Some(&presented), 256), reads(&[("big", 9)]));
        // A position beyond the room's end is clamped.
        let presented: BTreeMap<String, u64> = [("big".to_string(), 99)].into();
        assert_eq!(LargeRooms::default().plan(&rooms, Some(&presented), 256), reads(&[("big", 20)]));
    }

    #[test]
    fn rooms_found_while_connected_start_at_the_join_or_the_switch() {
        let mut large = LargeRooms::default();
        large.start_live(&[mine("old", 70, Some(1), 0, 1)]);
        let rooms =
            [mine("old", 75, Some(1), 0, 1), mine("switched", 90, Some(80), 0, 2), mine("joined", 60, Some(5), 0, 55)];
        assert_eq!(large.plan(&rooms, None, 256), reads(&[("joined", 54), ("old", 70), ("switched", 79)]));
    }

    #[test]
    fn live_entries_are_sent_once_in_order_and_gaps_read_the_store() {
        let mut large = LargeRooms::default();
        large.start_live(&[mine("r", 10, Some(1), 0, 1)]);
        assert_eq!(large.live("u", &text("r", 10)), Live::Skip, "already had it");
        assert_eq!(large.live("u", &text("r", 11)), Live::Send);
        assert_eq!(large.live("u", &text("r", 11)), Live::Skip, "a duplicate");
        assert_eq!(large.live("u", &text("r", 13)), Live::CatchUp, "12 is missing");
        assert_eq!(large.snapshot(), BTreeMap::from([("r".to_string(), 11)]));
        assert_eq!(large.live("u", &text("other", 1)), Live::CatchUp, "a room not followed yet");
    }

    #[test]
    fn a_run_is_taken_whole_only_when_it_is_the_next_without_gap_or_leave() {
        let run = |entries: Vec<Entry>| SharedRun::new(shared(entries));
        let mut large = LargeRooms::default();
        large.start_live(&[mine("r", 10, Some(1), 0, 1)]);
        assert!(large.live_run(&run(vec![text("r", 11), text("r", 12), text("r", 13)])));
        assert_eq!(large.snapshot(), BTreeMap::from([("r".to_string(), 13)]), "moved to the run's end");
        assert!(!large.live_run(&run(vec![text("r", 13), text("r", 14)])), "overlaps what was sent");
        assert!(!large.live_run(&run(vec![text("r", 15)])), "14 is missing");
        assert!(!large.live_run(&run(vec![text("r", 14), text("r", 16)])), "a gap inside");
        let leave = entry("r", 15, EntryKind::Leave, Some("v"));
        assert!(!large.live_run(&run(vec![text("r", 14), leave])), "a leave is looked at entry by entry");
        assert!(!large.live_run(&run(vec![text("other", 1)])), "a room not followed yet");
        assert_eq!(large.snapshot(), BTreeMap::from([("r".to_string(), 13)]), "none of those moved it");
    }

    #[test]
    fn the_users_own_join_and_leave_start_and_end_following() {
        let mut large = LargeRooms::default();
        assert_eq!(large.live("u", &entry("r", 40, EntryKind::Join, Some("u"))), Live::Send);
        assert_eq!(large.live("u", &text("r", 41)), Live::Send);
        assert_eq!(large.live("u", &entry("r", 42, EntryKind::Leave, Some("u"))), Live::Send);
        assert!(large.snapshot().is_empty(), "no longer followed");
        assert_eq!(large.live("u", &entry("r", 43, EntryKind::Leave, Some("v"))), Live::CatchUp);
    }

    #[test]
    fn a_replay_skips_what_was_sent_and_what_the_user_may_not_see() {
        let mut large = LargeRooms::default();
        large.start_live(&[mine("r", 3, Some(1), 0, 1)]);
        let page = vec![
            text("r", 2),
            text("r", 3),
            text("r", 4),
            entry("r", 5, EntryKind::Leave, Some("u")),
            text("r", 6),
            entry("r", 7, EntryKind::Join, Some("v")),
            entry("r", 8, EntryKind::Join, Some("u")),
            text("r", 9),
        ];
        let sent = large.replayed("u", "r", 3, shared(page));
        assert_eq!(seqs(&sent), vec![4, 5, 8, 9], "2 and 3 were sent; 6 and 7 happened while away");
        assert_eq!(large.snapshot(), BTreeMap::from([("r".to_string(), 9)]));

        // A room not followed yet is followed from where the read started.
        let sent =
            large.replayed("u", "n", 54, shared(vec![entry("n", 55, EntryKind::Join, Some("u")), text("n", 56)]));
        assert_eq!(seqs(&sent), vec![55, 56]);
        assert_eq!(large.live("u", &text("n", 57)), Live::Send);

        // A replay ending in the user's leave stops following the room.
        let sent =
            large.replayed("u", "r", 9, shared(vec![text("r", 10), entry("r", 11, EntryKind::Leave, Some("u"))]));
        assert_eq!(seqs(&sent), vec![10, 11]);
        assert!(!large.snapshot().contains_key("r"));
    }
}
