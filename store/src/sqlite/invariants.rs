//! The store's invariants as small pure functions, checked with `debug_assert!` on the write
//! and read paths and reused by the tests (see docs/DESIGN.md §7).

/// A room's new entry takes the sequence number right after the previous newest one.
pub fn seq_follows(previous_last_seq: u64, new_seq: u64) -> bool {
    previous_last_seq.checked_add(1) == Some(new_seq)
}

/// Positions (room seqs or user-log cursors) that are consecutive and strictly increasing:
/// what every page of a room log or a user log must look like.
pub fn is_dense(positions: impl IntoIterator<Item = u64>) -> bool {
    let mut previous: Option<u64> = None;
    for position in positions {
        if let Some(p) = previous {
            if p.checked_add(1) != Some(position) {
                return false;
            }
        }
        previous = Some(position);
    }
    true
}

/// A user log's readable span is `floor < cursor <= head`.
pub fn bounds_ordered(floor: u64, head: u64) -> bool {
    floor <= head
}

/// A read position never passes the room's newest entry.
pub fn read_within_room(read_seq: u64, last_seq: u64) -> bool {
    read_seq <= last_seq
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_sequences() {
        assert!(is_dense([]));
        assert!(is_dense([7]));
        assert!(is_dense([1, 2, 3]));
        assert!(!is_dense([1, 3]));
        assert!(!is_dense([2, 2]));
        assert!(!is_dense([3, 2]));
        assert!(!is_dense([u64::MAX, 0]));
    }

    #[test]
    fn seq_follows_only_the_next() {
        assert!(seq_follows(0, 1));
        assert!(!seq_follows(1, 1));
        assert!(!seq_follows(1, 3));
        assert!(!seq_follows(u64::MAX, 0));
    }

    #[test]
    fn bounds_and_read_positions() {
        assert!(bounds_ordered(0, 0));
        assert!(!bounds_ordered(2, 1));
        assert!(read_within_room(3, 3));
        assert!(!read_within_room(4, 3));
    }
}
