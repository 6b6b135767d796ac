//! The newest entries of each large room this node has seen, for connections that fell behind.
//!
//! A connection that misses live deliveries of a large room (its queue was full, or the node
//! shed a run from another node because its fan-out was behind) catches up by reading the room
//! log. Read from the store, that is one query and one encoding of every entry per connection:
//! when a thousand members fall behind together, which is what an overloaded node does, the
//! node spent its time in SQLite and in JSON encoding and delivered a tenth of what it delivers
//! when it keeps up (bench/findings.md, "Cross-node at full speed"). The tail keeps the entries
//! the node has just seen, as the shared, encoded-once entries live delivery uses, so the same
//! catch-up is a copy of reference-counted buffers.
//!
//! What keeps it correct: a room's tail holds consecutive seqs only (an entry after a gap
//! starts the tail afresh), and every entry in it is committed, so a run read from the tail is
//! exactly what the store would return for the same seqs. Whether the tail is *complete* (has
//! every entry up to the newest) is not its business: the reader asks for entries up to the
//! room's last seq as the store reported it when the catch-up began, and reads the store for
//! whatever the tail does not hold (session.rs).
//!
//! Memory is bounded by `limits.large_room_tail_bytes` over all rooms: the entries that arrived
//! first are dropped first, whichever room they belong to.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::encoded::SharedEntry;

/// The tails of the large rooms, oldest entries evicted first.
#[derive(Debug, Default)]
pub struct RoomTails {
    rooms: HashMap<Arc<str>, VecDeque<Arc<SharedEntry>>>,
    /// Every entry kept, in arrival order (room, seq, its size), for eviction across rooms. An
    /// entry that a gap already dropped from its room is skipped when it comes up.
    arrivals: VecDeque<(Arc<str>, u64, usize)>,
    /// Entries held, and their size as counted for the budget.
    held: usize,
    bytes: usize,
    budget: usize,
}

impl RoomTails {
    /// Tails holding at most about `budget` bytes in all; 0 keeps none.
    pub fn new(budget: usize) -> Self {
        RoomTails { budget, ..RoomTails::default() }
    }

    /// Keep `entries`, newly committed entries of `room` in seq order.
    pub fn append<'a>(&mut self, room: &str, entries: impl IntoIterator<Item = &'a Arc<SharedEntry>>) {
        if self.budget == 0 {
            return;
        }
        let key: Arc<str> = match self.rooms.get_key_value(room) {
            Some((key, _)) => key.clone(),
            None => Arc::from(room),
        };
        for entry in entries {
            let seq = entry.entry().seq;
            let tail = self.rooms.entry(key.clone()).or_default();
            match tail.back().map(|last| last.entry().seq) {
                // Already here (a delivery seen twice): the same committed entry.
                Some(last) if seq <= last => continue,
                Some(last) if seq != last + 1 => {
                    // A gap: what came before it cannot serve a read that crosses it.
                    for dropped in tail.drain(..) {
                        self.bytes -= size_of_entry(&dropped);
                        self.held -= 1;
                    }
                }
                _ => {}
            }
            let size = size_of_entry(entry);
            tail.push_back(entry.clone());
            self.held += 1;
            self.bytes += size;
            self.arrivals.push_back((key.clone(), seq, size));
        }
        self.evict();
    }

    /// Up to `limit` entries of `room` after seq `after`, if the tail holds the one right after
    /// it (`None` otherwise: read the store).
    pub fn after(&self, room: &str, after: u64, limit: usize) -> Option<Vec<Arc<SharedEntry>>> {
        let tail = self.rooms.get(room)?;
        let first = tail.front()?.entry().seq;
        let last = tail.back()?.entry().seq;
        if after + 1 < first || after > last {
            return None;
        }
        let skip = (after + 1 - first) as usize;
        Some(tail.iter().skip(skip).take(limit).cloned().collect())
    }

    /// Bytes held, as counted for the budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn evict(&mut self) {
        while self.bytes > self.budget {
            let Some((room, seq, size)) = self.arrivals.pop_front() else { break };
            let Some(tail) = self.rooms.get_mut(&room) else { continue };
            if tail.front().is_some_and(|oldest| oldest.entry().seq == seq) {
                tail.pop_front();
                self.held -= 1;
                self.bytes -= size;
                if tail.is_empty() {
                    self.rooms.remove(&room);
                }
            }
        }
        // Arrivals of entries a gap dropped are only skipped when they come up; keep their
        // number bounded by what is held.
        if self.arrivals.len() > 2 * self.held + 64 {
            let rooms = &self.rooms;
            self.arrivals.retain(|(room, seq, _)| {
                rooms.get(room).and_then(|tail| tail.front()).is_some_and(|oldest| oldest.entry().seq <= *seq)
            });
        }
    }
}

/// What an entry costs to keep, roughly: its strings, once as fields and once encoded (the
/// first reader encodes it), and a fixed overhead for the rest.
fn size_of_entry(entry: &SharedEntry) -> usize {
    let e = entry.entry();
    let strings = e.room.len() + e.id.len() + e.from.len() + e.body.len() + e.user.as_ref().map_or(0, String::len);
    2 * strings + 192
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Entry, EntryKind};

    fn entry(room: &str, seq: u64) -> Arc<SharedEntry> {
        Arc::new(SharedEntry::new(Entry {
            room: room.into(),
            seq,
            id: format!("m{seq:03}"), // one size for every entry of these tests
            from: "ann".into(),
            kind: EntryKind::Text,
            user: None,
            body: "x".repeat(40),
            ts: seq,
            ..Default::default()
        }))
    }

    fn seqs(entries: Option<Vec<Arc<SharedEntry>>>) -> Option<Vec<u64>> {
        entries.map(|entries| entries.iter().map(|entry| entry.entry().seq).collect())
    }

    #[test]
    fn reads_after_a_seq_the_tail_holds_and_only_those() {
        let mut tails = RoomTails::new(1 << 20);
        let run: Vec<_> = (5..=9).map(|seq| entry("r", seq)).collect();
        tails.append("r", &run);
        assert_eq!(seqs(tails.after("r", 4, 10)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(seqs(tails.after("r", 6, 2)), Some(vec![7, 8]));
        assert_eq!(seqs(tails.after("r", 9, 10)), Some(vec![]), "nothing newer, but the position is held");
        assert_eq!(seqs(tails.after("r", 3, 10)), None, "seq 4 is not in the tail: the store has it");
        assert_eq!(seqs(tails.after("r", 10, 10)), None, "beyond the tail");
        assert_eq!(seqs(tails.after("other", 0, 10)), None);
        // The reader gets the very entries live delivery shares (no copy, no second encoding).
        assert!(Arc::ptr_eq(&tails.after("r", 4, 1).unwrap()[0], &run[0]));
    }

    #[test]
    fn a_gap_starts_the_tail_afresh_and_a_repeat_is_ignored() {
        let mut tails = RoomTails::new(1 << 20);
        tails.append("r", &[entry("r", 1), entry("r", 2)]);
        tails.append("r", &[entry("r", 2)]);
        assert_eq!(seqs(tails.after("r", 0, 10)), Some(vec![1, 2]));
        // Seq 3 never arrived (shed, or no one here followed the room then).
        tails.append("r", &[entry("r", 4), entry("r", 5)]);
        assert_eq!(seqs(tails.after("r", 0, 10)), None, "a read from 1 would skip 3");
        assert_eq!(seqs(tails.after("r", 2, 10)), None);
        assert_eq!(seqs(tails.after("r", 3, 10)), Some(vec![4, 5]));
        assert_eq!(tails.bytes(), 2 * size_of_entry(&entry("r", 4)), "the dropped entries no longer count");
    }

    #[test]
    fn the_budget_drops_the_oldest_arrivals_of_any_room() {
        let one = size_of_entry(&entry("a", 1));
        let mut tails = RoomTails::new(4 * one);
        tails.append("a", &[entry("a", 1), entry("a", 2), entry("a", 3)]);
        tails.append("b", &[entry("b", 1), entry("b", 2)]);
        assert!(tails.bytes() <= 4 * one);
        assert_eq!(seqs(tails.after("a", 1, 10)), Some(vec![2, 3]), "a's oldest went first");
        assert_eq!(seqs(tails.after("a", 0, 10)), None);
        assert_eq!(seqs(tails.after("b", 0, 10)), Some(vec![1, 2]));
        tails.append("b", &[entry("b", 3), entry("b", 4)]);
        assert_eq!(seqs(tails.after("a", 2, 10)), None, "a is gone");
        assert_eq!(seqs(tails.after("b", 0, 10)), Some(vec![1, 2, 3, 4]));
        // Entries a gap dropped are skipped when their turn comes, and do not count twice.
        tails.append("b", &[entry("b", 9)]);
        assert_eq!(tails.bytes(), one);
        tails.append("b", &(10..=13).map(|seq| entry("b", seq)).collect::<Vec<_>>());
        assert_eq!(seqs(tails.after("b", 9, 10)), Some(vec![10, 11, 12, 13]));
        assert_eq!(tails.bytes(), 4 * one);
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let mut tails = RoomTails::new(0);
        tails.append("r", &[entry("r", 1)]);
        assert_eq!(seqs(tails.after("r", 0, 10)), None);
        assert_eq!(tails.bytes(), 0);
    }
}
