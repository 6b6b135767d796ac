//! What the store keeps for push notifications: the push queue, who was told, and the clears
//! a read owes.
//!
//! - **The queue.** Every entry that may notify someone (a text message; in a large room, only
//!   one that mentions someone) gets a row in the transaction that commits it, so a node dying
//!   right after the commit cannot lose the push. The rows live in the webhook outbox under
//!   the reserved endpoint id [`QUEUE`] (stream = room, seq = the entry's): the same keys,
//!   table and range reads, never listed as an endpoint. One row per entry, not per member:
//!   who gets told is decided by the push worker when the row is due, from the members'
//!   settings, read positions and presence at that moment.
//! - **Who was told.** After a push about a room, the worker records, per user, the seq of the
//!   latest entry it covered ([`crate::Store::push_done`]).
//! - **Clears.** A read that reaches that seq replaces the record with a clear in the same
//!   transaction, and the worker sends the user's devices a silent update that removes the
//!   notification and sets the badge ([`crate::Store::push_clears`]).

use protocol::{Entry, EntryKind, NotifyLevel};

/// The reserved outbox id of the push queue. Webhook endpoints are named `wh_…`, so no
/// endpoint can share it.
pub const QUEUE: &str = "push";

/// Whether committing `entry` queues a push: text messages, and in a large room (where
/// telling every member of every message would be a flood) only those that mention someone.
pub fn queues(entry: &Entry, large: bool) -> bool {
    entry.kind == EntryKind::Text && (!large || !entry.mentions.is_empty())
}

/// A member as the push worker sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMember {
    pub user: String,
    /// The seq of their join: entries before it are not theirs to be told about.
    pub joined_seq: u64,
    pub read_seq: u64,
    pub notify: NotifyLevel,
    /// Nothing notifies them until then (ms since the Unix epoch).
    pub muted_until: Option<u64>,
}

/// A clear owed to `user`'s devices: they read `room` through `read_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushClear {
    pub user: String,
    pub room: String,
    pub read_seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_queues_and_in_large_rooms_only_with_mentions() {
        let text = Entry { kind: EntryKind::Text, ..Entry::default() };
        assert!(queues(&text, false));
        assert!(!queues(&text, true));
        let mention = Entry { mentions: vec!["bob".into()], ..text.clone() };
        assert!(queues(&mention, true));
        assert!(!queues(&Entry { kind: EntryKind::Join, ..Entry::default() }, false));
        assert!(!queues(&Entry { kind: EntryKind::Edit, ..Entry::default() }, false));
    }
}
