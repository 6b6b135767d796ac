//! Webhook endpoints and their outboxes: what the store keeps so that events reach the
//! product's backend at least once, in order per room, whichever node delivers them.
//!
//! The room log already holds every event in order, so an outbox row is only a pointer:
//! (endpoint, stream, seq, event type), where the stream is a room id (the seq is the entry's)
//! or `user:<name>` for an account's deletion. Rows are written in the transaction that
//! commits the entry, one per endpoint subscribed to its event type, so an event is queued
//! exactly when it happens and an endpoint created later never sees what came before it.
//! The delivering node reads an endpoint's oldest rows, the entries they point to, sends them,
//! and deletes the rows it got a 2xx for ([`crate::Store::ack_webhook_events`]). Which node
//! delivers is decided by a lease in the store ([`crate::Store::take_lease`]): when it dies,
//! another takes the lease over and resends what was not acknowledged.

use protocol::{Entry, EntryKind};

/// The kinds of event an endpoint can subscribe to. The discriminant is stored (SQLite's
/// `webhook_outbox.event`, FoundationDB's outbox value) and is each type's bit in an
/// endpoint's subscription mask: never reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum EventType {
    MessagePosted = 0,
    MessageEdited = 1,
    MessageDeleted = 2,
    MemberJoined = 3,
    MemberLeft = 4,
    MemberBanned = 5,
    RoomCreated = 6,
    UserDeleted = 7,
}

impl EventType {
    pub const ALL: [EventType; 8] = [
        EventType::MessagePosted,
        EventType::MessageEdited,
        EventType::MessageDeleted,
        EventType::MemberJoined,
        EventType::MemberLeft,
        EventType::MemberBanned,
        EventType::RoomCreated,
        EventType::UserDeleted,
    ];

    /// The name on the wire and in the API (`message.posted`, …).
    pub fn name(self) -> &'static str {
        match self {
            EventType::MessagePosted => "message.posted",
            EventType::MessageEdited => "message.edited",
            EventType::MessageDeleted => "message.deleted",
            EventType::MemberJoined => "member.joined",
            EventType::MemberLeft => "member.left",
            EventType::MemberBanned => "member.banned",
            EventType::RoomCreated => "room.created",
            EventType::UserDeleted => "user.deleted",
        }
    }

    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<EventType> {
        EventType::ALL.get(usize::from(code)).copied()
    }

    /// The event a committed room entry is, if any. A room's first entry (its creator's join)
    /// is its creation; the members it was created with join after it.
    pub fn of_entry(entry: &Entry) -> Option<EventType> {
        match entry.kind {
            EntryKind::Text => Some(EventType::MessagePosted),
            EntryKind::Edit => Some(EventType::MessageEdited),
            EntryKind::Delete => Some(EventType::MessageDeleted),
            EntryKind::Join if entry.seq == 1 => Some(EventType::RoomCreated),
            EntryKind::Join => Some(EventType::MemberJoined),
            EntryKind::Leave | EntryKind::Kick => Some(EventType::MemberLeft),
            EntryKind::Ban => Some(EventType::MemberBanned),
            EntryKind::React
            | EntryKind::Unreact
            | EntryKind::Role
            | EntryKind::Unban
            | EntryKind::Mute
            | EntryKind::Settings => None,
        }
    }
}

/// A set of event types, as a bit per [`EventType`] code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventMask(pub u32);

impl EventMask {
    pub fn of(types: &[EventType]) -> EventMask {
        EventMask(types.iter().fold(0, |mask, t| mask | (1 << t.code())))
    }

    pub fn contains(self, event: EventType) -> bool {
        self.0 & (1 << event.code()) != 0
    }

    /// The types in the set, in code order.
    pub fn types(self) -> Vec<EventType> {
        EventType::ALL.into_iter().filter(|t| self.contains(*t)).collect()
    }
}

/// A webhook endpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    /// Random, public: names the endpoint in the API and in every request's headers.
    pub id: String,
    pub url: String,
    pub events: EventMask,
    /// The HMAC-SHA256 key requests are signed with. Kept as is: signing needs it.
    pub secret: String,
    pub created_ms: u64,
    pub health: WebhookHealth,
}

/// How deliveries to an endpoint are going: written by the delivering node after each
/// failure and after the first success that follows one, so every node's API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookHealth {
    /// Failed attempts in a row; 0 after a success.
    pub failures: u32,
    /// Why the last attempt failed ("" when none has).
    pub last_error: String,
    /// When the endpoint was declared dead (failures reached the limit): nothing is sent to
    /// it until it is enabled again, while its outbox keeps every event that happens.
    pub dead_since: Option<u64>,
}

/// The stream an account's deletion is queued under: it belongs to no room.
pub fn user_stream(user: &str) -> String {
    format!("user:{user}")
}

/// One row of an endpoint's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// A room id, or [`user_stream`] of a deleted account.
    pub stream: String,
    /// The entry's seq in the room; for a deletion, when it happened (ms since the Unix epoch).
    pub seq: u64,
    pub event: EventType,
}

/// The subscribers of a transaction: every endpoint's id and mask, read once per transaction
/// that commits entries.
pub type Subscribers = Vec<(String, EventMask)>;

/// The outbox rows `entry` makes: one per subscribed endpoint, as (endpoint, event).
pub fn rows_for<'a>(subscribers: &'a Subscribers, entry: &Entry) -> impl Iterator<Item = (&'a str, EventType)> + 'a {
    let event = EventType::of_entry(entry);
    subscribers.iter().filter_map(move |(id, mask)| event.filter(|e| mask.contains(*e)).map(|e| (id.as_str(), e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_names_and_masks_round_trip() {
        for (i, t) in EventType::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(t.code()), i);
            assert_eq!(EventType::from_code(t.code()), Some(t));
            assert_eq!(EventType::from_name(t.name()), Some(t));
        }
        assert_eq!(EventType::from_code(8), None);
        assert_eq!(EventType::from_name("message.sent"), None);
        let mask = EventMask::of(&[EventType::UserDeleted, EventType::MessagePosted]);
        assert_eq!(mask.types(), vec![EventType::MessagePosted, EventType::UserDeleted]);
        assert!(!mask.contains(EventType::MemberLeft));
    }

    #[test]
    fn entries_map_to_events() {
        let entry = |kind, seq| Entry { kind, seq, ..Entry::default() };
        assert_eq!(EventType::of_entry(&entry(EntryKind::Join, 1)), Some(EventType::RoomCreated));
        assert_eq!(EventType::of_entry(&entry(EntryKind::Join, 2)), Some(EventType::MemberJoined));
        assert_eq!(EventType::of_entry(&entry(EntryKind::Kick, 5)), Some(EventType::MemberLeft));
        assert_eq!(EventType::of_entry(&entry(EntryKind::React, 5)), None);
        let subscribers = vec![
            ("a".to_string(), EventMask::of(&[EventType::MessagePosted])),
            ("b".to_string(), EventMask::of(&[EventType::MemberJoined])),
        ];
        let rows: Vec<_> = rows_for(&subscribers, &entry(EntryKind::Text, 3)).collect();
        assert_eq!(rows, vec![("a", EventType::MessagePosted)]);
    }
}
