//! The bounds an operator can set, in one place (docs/DESIGN.md §1.6: bounded resources).
//!
//! The node's configuration section `[limits]` maps onto [`Limits`] field by field; each default
//! is explained where it is set, in `node`'s configuration module. Other sections carry the
//! bounds of their own subsystem (`[auth]`, `[presence]`, `[cluster]`). A few bounds are fixed
//! in the code beside what they protect, because no deployment has a reason to change them:
//! name and id lengths (`names`), the HTTP request head (`node`'s `http`), the inter-node
//! decoder's nesting depth and pending TLS handshakes (`cluster`), a batched message's size and
//! a session's take from its queue (`session`), and FoundationDB's own transaction limits
//! (`store::fdb_keys::limits`); ARCHITECTURE.md lists them.

use serde::{Deserialize, Serialize};

use crate::store::{MembershipLimits, MessageRules};

/// A setting out of range, by its key in the configuration (`limits.replay_page_len`) and what
/// is wrong with it: what every section's `validate` returns, so the node reports the key
/// without parsing it back out of a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct InvalidSetting {
    pub key: &'static str,
    pub message: String,
}

impl InvalidSetting {
    pub fn new(key: &'static str, message: impl Into<String>) -> InvalidSetting {
        InvalidSetting { key, message: message.into() }
    }

    /// The first of `values` (key, value) that is 0, as "must be greater than 0".
    pub fn first_zero(values: &[(&'static str, u64)]) -> Result<(), InvalidSetting> {
        match values.iter().find(|(_, value)| *value == 0) {
            Some((key, _)) => Err(InvalidSetting::new(key, "must be greater than 0")),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest WebSocket message accepted; a larger one closes the connection with code 1009.
    pub max_frame_bytes: u32,
    /// Largest message body, in UTF-8 bytes.
    pub max_body_bytes: u32,
    /// Entries queued for one connection before it is marked lagged and catches up from the
    /// store instead (bounds memory per connection). A large room's commit is queued as one
    /// run, which goes into an empty queue even when it is longer than this.
    pub outbound_queue_len: usize,
    /// Entries read from the store per page when resuming or catching up.
    pub replay_page_len: u32,
    /// Largest history page a client may ask for.
    pub history_page_max: u32,
    /// Largest page of `list_members` (also its default).
    pub members_page_max: u32,
    pub max_room_members: u32,
    pub max_rooms_per_user: u32,
    /// Requests of one connection whose replies are still outstanding; beyond it the node stops
    /// reading that socket until replies go out (back-pressure through TCP).
    pub max_inflight_per_connection: usize,
    /// Sustained frames per second per connection; bursts of twice that are allowed.
    pub frames_per_second: u32,
    /// A connection whose socket does not accept a write within this time is closed.
    pub slow_client_timeout_ms: u64,
    /// A connection must send `hello` within this time.
    pub hello_timeout_ms: u64,
    /// A greeted connection must authenticate within this time of its `hello`, or it is closed
    /// (1008): an unauthenticated connection must not hold one of `max_connections` for good.
    /// Nothing before `authenticate` extends it, since a login, even a refused one, would then
    /// keep a slot open at no cost to its sender.
    pub auth_timeout_ms: u64,
    /// A room actor with no work for this long stops (its state is all in the store).
    pub room_idle_ms: u64,
    /// Open WebSocket connections per node. The default stays under this machine's
    /// 20,000 open files per process.
    pub max_connections: usize,
    /// Open connections (HTTP and WebSocket) from one IP address, counted at accept. Enough for
    /// a large office or a carrier-grade NAT behind one address, while one address can hold no
    /// more than a small share of `max_connections`. Behind a proxy that connects from one
    /// address (HAProxy in docker/), set it to `max_connections`.
    pub max_connections_per_address: usize,
    /// How long a request may wait for its room's actor before failing with `unavailable`.
    pub request_timeout_ms: u64,
    /// Appends of one room committed together at most (the room's waiting appends go to the
    /// store as one batch: one commit for many messages). 1 commits each on its own.
    pub room_batch_max: usize,
    /// A room with more members than this is a large room: its entries are no longer copied
    /// into every member's user log (one write per member per message) but read from the room
    /// log when a member resumes. See ARCHITECTURE.md, "Large rooms", for how the default was
    /// measured.
    pub fanout_max_members: u32,
    /// When a client resumes without presenting its position in a large room, the room is
    /// replayed from the client's read position, but at most this many of its newest entries
    /// (older ones are a `history` request away).
    pub large_room_replay_max: u32,
    /// Memory for the newest entries of the large rooms a node delivers, over all rooms (about
    /// 600 bytes per 100-byte message): a connection that fell behind catches up from them
    /// instead of reading the store and encoding each entry for itself. 0 keeps none.
    pub large_room_tail_bytes: usize,
    /// How long after sending a message its author may still edit it, in seconds. 0 turns
    /// editing off. Deleting has no window.
    pub edit_window_s: u64,
    /// Different reactions one message may carry (any number of members may give each).
    pub max_reactions_per_message: u32,
    /// Members one message may mention.
    pub max_mentions: u32,
    /// Devices one user may register for push notifications.
    pub max_devices_per_user: u32,
    /// Webhook endpoints that may exist at once (the server API creates them).
    pub max_webhook_endpoints: u32,
    /// In a large room, how often at most its owner tells the members the reaction counts
    /// that changed (reactions there are counted, not sent as entries).
    pub reaction_flush_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            max_body_bytes: 16 * 1024,
            outbound_queue_len: 256,
            replay_page_len: 256,
            history_page_max: 200,
            members_page_max: 200,
            max_room_members: 1_000,
            max_rooms_per_user: 500,
            max_inflight_per_connection: 64,
            frames_per_second: 100,
            slow_client_timeout_ms: 10_000,
            hello_timeout_ms: 10_000,
            auth_timeout_ms: 30_000,
            room_idle_ms: 300_000,
            max_connections: 19_000,
            max_connections_per_address: 256,
            request_timeout_ms: 10_000,
            room_batch_max: 64,
            fanout_max_members: 100,
            large_room_replay_max: 256,
            large_room_tail_bytes: 8 * 1024 * 1024,
            edit_window_s: 24 * 60 * 60,
            max_reactions_per_message: 20,
            max_mentions: 50,
            max_devices_per_user: 10,
            max_webhook_endpoints: 16,
            reaction_flush_ms: 500,
        }
    }
}

/// The encoded size a page of a paged reply (`history`, `members`) stays within: the page ends
/// before the item that would take it past this, says `more`, and the client asks for the
/// rest. A page always holds one item, so one entry larger than this goes alone.
pub const PAGE_MAX_BYTES: usize = 128 * 1024;

/// An entry's encoding beyond its body, mentions and reactions: field names, room and message
/// ids, user names, numbers.
const ENTRY_OVERHEAD_BYTES: usize = 512;
/// One mention in an entry: a user name of at most 32 bytes, quoted, with its separator.
pub const MENTION_MAX_BYTES: usize = 40;
/// The files one message may carry.
pub const MAX_ATTACHMENTS: usize = 10;
/// One attachment in an entry: a media id, a file name of at most 255 bytes without control
/// characters (so JSON escapes each byte to at most two), a media type, numbers, field names.
const ATTACHMENT_MAX_BYTES: usize = 1024;
/// One reaction count in a `history` entry: the reaction (at most
/// [`names::REACTION_MAX_BYTES`](crate::names::REACTION_MAX_BYTES), which JSON may escape to
/// six bytes each), its count and `me`, with field names.
const REACTION_COUNT_MAX_BYTES: usize = 6 * crate::names::REACTION_MAX_BYTES + 48;
/// A room in `rooms`: an id of at most 80 bytes, a name of 64 characters of at most 4 bytes
/// each (control characters, the only ones JSON escapes to more, are refused), the numbers.
const ROOM_INFO_MAX_BYTES: usize = 512;
/// A read position in `receipts`: a user name of at most 32 bytes and a number.
const READ_POSITION_MAX_BYTES: usize = 96;
/// A reply's own fields around its list: type, req, room id, counts, `more`.
const FRAME_OVERHEAD_BYTES: usize = 1024;

impl Limits {
    /// The most bytes one entry (its `message` frame, or its place in a `history` page) encodes
    /// to: a body of `max_body_bytes` control characters, each of which JSON escapes to six
    /// bytes (`\u0001`), the most mentions, reactions and attachments.
    pub fn max_entry_bytes(&self) -> usize {
        6 * self.max_body_bytes as usize
            + self.max_mentions as usize * MENTION_MAX_BYTES
            + self.max_reactions_per_message as usize * REACTION_COUNT_MAX_BYTES
            + MAX_ATTACHMENTS * ATTACHMENT_MAX_BYTES
            + ENTRY_OVERHEAD_BYTES
    }

    /// The largest WebSocket message the node writes, in either encoding: a page (history,
    /// members), a single entry however it escapes, the room list of a user in
    /// `max_rooms_per_user` rooms, the read positions of `max_room_members`. The WebSocket
    /// layer's write buffer is sized from this (a message it cannot buffer would end the
    /// connection), and a session refuses to write anything larger (docs/PROTOCOL.md, "Limits").
    pub fn max_message_bytes(&self) -> usize {
        let rooms = self.max_rooms_per_user as usize * ROOM_INFO_MAX_BYTES;
        let reads = self.max_room_members as usize * READ_POSITION_MAX_BYTES;
        PAGE_MAX_BYTES.max(self.max_entry_bytes()).max(rooms).max(reads) + FRAME_OVERHEAD_BYTES
    }

    pub fn membership(&self) -> MembershipLimits {
        MembershipLimits {
            max_room_members: self.max_room_members,
            max_rooms_per_user: self.max_rooms_per_user,
            fanout_max_members: self.fanout_max_members,
        }
    }

    pub fn message_rules(&self) -> MessageRules {
        MessageRules {
            edit_window_ms: self.edit_window_s.saturating_mul(1000),
            max_reactions_per_message: self.max_reactions_per_message,
        }
    }

    /// Check the values against each other; the error names the key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let positive: [(&'static str, u64); 20] = [
            ("limits.max_frame_bytes", self.max_frame_bytes.into()),
            ("limits.max_body_bytes", self.max_body_bytes.into()),
            ("limits.outbound_queue_len", self.outbound_queue_len as u64),
            ("limits.replay_page_len", self.replay_page_len.into()),
            ("limits.history_page_max", self.history_page_max.into()),
            ("limits.members_page_max", self.members_page_max.into()),
            ("limits.max_room_members", self.max_room_members.into()),
            ("limits.max_rooms_per_user", self.max_rooms_per_user.into()),
            ("limits.max_inflight_per_connection", self.max_inflight_per_connection as u64),
            ("limits.frames_per_second", self.frames_per_second.into()),
            ("limits.slow_client_timeout_ms", self.slow_client_timeout_ms),
            ("limits.auth_timeout_ms", self.auth_timeout_ms),
            ("limits.max_connections", self.max_connections as u64),
            ("limits.max_connections_per_address", self.max_connections_per_address as u64),
            ("limits.request_timeout_ms", self.request_timeout_ms),
            ("limits.room_batch_max", self.room_batch_max as u64),
            ("limits.large_room_replay_max", self.large_room_replay_max.into()),
            ("limits.max_devices_per_user", self.max_devices_per_user.into()),
            ("limits.max_webhook_endpoints", self.max_webhook_endpoints.into()),
            ("limits.reaction_flush_ms", self.reaction_flush_ms),
        ];
        InvalidSetting::first_zero(&positive)?;
        if self.max_room_members < 2 {
            return Err(InvalidSetting::new(
                "limits.max_room_members",
                "must be at least 2 (direct conversations have two)",
            ));
        }
        // A body must fit in a frame with room for the rest of the `send` frame, mentions included.
        let mentions = u64::from(self.max_mentions) * MENTION_MAX_BYTES as u64;
        if u64::from(self.max_body_bytes) + 512 + mentions > u64::from(self.max_frame_bytes) {
            return Err(InvalidSetting::new(
                "limits.max_body_bytes",
                format!(
                    "{} must be at least 512 bytes plus {MENTION_MAX_BYTES} per mention (limits.max_mentions {}) \
                     below limits.max_frame_bytes ({})",
                    self.max_body_bytes, self.max_mentions, self.max_frame_bytes
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Limits::default().validate().unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let err = Limits { replay_page_len: 0, ..Limits::default() }.validate().unwrap_err();
        assert_eq!(err, InvalidSetting::new("limits.replay_page_len", "must be greater than 0"));
        let err = Limits { max_body_bytes: 64 * 1024, ..Limits::default() }.validate().unwrap_err();
        assert_eq!(err.key, "limits.max_body_bytes", "{err}");
    }

    /// The worst single entry fits the largest message: 16 KiB of control characters is
    /// 96 KiB of JSON.
    #[test]
    fn the_largest_message_holds_the_worst_entry() {
        let limits = Limits::default();
        let body = "\u{1}".repeat(limits.max_body_bytes as usize);
        let entry = protocol::Entry {
            room: format!("dm:{}:{}", "a".repeat(32), "b".repeat(32)),
            seq: u64::MAX,
            id: "x".repeat(64),
            from: "a".repeat(32),
            kind: protocol::EntryKind::Text,
            user: None,
            body,
            ts: u64::MAX,
            ..Default::default()
        };
        let history = protocol::ServerFrame::History {
            req: u64::MAX,
            room: entry.room.clone(),
            entries: vec![entry.clone()],
            more: true,
        };
        let bytes = protocol::encode_server(protocol::Encoding::Json, &history).len();
        assert!(bytes <= limits.max_message_bytes(), "{bytes} > {}", limits.max_message_bytes());
        let message = protocol::encode_message(protocol::Encoding::Json, Some(u64::MAX), &entry).len();
        assert!(message <= limits.max_entry_bytes(), "{message} > {}", limits.max_entry_bytes());
    }
}
