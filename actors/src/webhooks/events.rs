//! The JSON of webhook events (docs/WEBHOOKS.md), made from outbox rows and the room entries
//! they point to. Entries are read when they are sent, not when they were queued: a message
//! deleted in between goes out as a tombstone (`deleted: true`, no body), never its old text.

use protocol::{Entry, EntryKind};
use serde_json::{json, Map, Value};

use crate::store::{EventType, OutboxEvent, RoomRecord};

/// The id of an event: unique and stable across resends, so a receiver drops repeats by it.
pub fn event_id(row: &OutboxEvent) -> String {
    format!("{}/{}", row.stream, row.seq)
}

/// The event for `row` of a room stream, from its entry (and, for a creation, the room as it
/// is now).
pub fn room_event(row: &OutboxEvent, entry: &Entry, room: Option<&RoomRecord>) -> Value {
    let mut event = header(row, entry.ts);
    event.insert("room".into(), json!(entry.room));
    event.insert("seq".into(), json!(entry.seq));
    let mut put = |key: &str, value: Value| {
        event.insert(key.into(), value);
    };
    match row.event {
        EventType::MessagePosted => {
            put("message_id", json!(entry.id));
            put("from", json!(entry.from));
            if entry.deleted {
                put("deleted", json!(true));
            } else {
                put("body", json!(entry.body));
                if entry.edited_at.is_some() {
                    put("edited_at", json!(entry.edited_at));
                }
            }
            if let Some(reply_to) = entry.reply_to {
                put("reply_to", json!(reply_to));
            }
            if !entry.mentions.is_empty() {
                put("mentions", json!(entry.mentions));
            }
        }
        EventType::MessageEdited => {
            put("from", json!(entry.from));
            put("target", json!(entry.target));
            // An edit of a message deleted since has lost its body with it.
            put("body", json!(entry.body));
        }
        EventType::MessageDeleted => {
            put("by", json!(entry.from));
            put("target", json!(entry.target));
        }
        EventType::RoomCreated => {
            put("created_by", json!(entry.from));
            if let Some(room) = room {
                put("kind", json!(room.kind));
                put("name", json!(room.name));
                put("private", json!(room.private));
            }
        }
        EventType::MemberJoined => {
            put("user", json!(entry.user));
            put("by", json!(entry.from));
        }
        EventType::MemberLeft => {
            put("user", json!(entry.user));
            put("by", json!(entry.from));
            put("reason", json!(if entry.kind == EntryKind::Kick { "kicked" } else { "left" }));
            if entry.kind == EntryKind::Kick && !entry.body.is_empty() {
                put("note", json!(entry.body));
            }
        }
        EventType::MemberBanned => {
            put("user", json!(entry.user));
            put("by", json!(entry.from));
            if let Some(until) = entry.until {
                put("until", json!(until));
            }
            if !entry.body.is_empty() {
                put("note", json!(entry.body));
            }
        }
        EventType::UserDeleted => {}
    }
    Value::Object(event)
}

/// The event for an account's deletion (`row.seq` is when it happened).
pub fn user_deleted(row: &OutboxEvent, user: &str) -> Value {
    let mut event = header(row, row.seq);
    event.insert("user".into(), json!(user));
    Value::Object(event)
}

fn header(row: &OutboxEvent, ts: u64) -> Map<String, Value> {
    let mut event = Map::new();
    event.insert("id".into(), json!(event_id(row)));
    event.insert("type".into(), json!(row.event.name()));
    event.insert("ts".into(), json!(ts));
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(event: EventType) -> OutboxEvent {
        OutboxEvent { stream: "r_1".into(), seq: 4, event }
    }

    #[test]
    fn a_posted_message_carries_its_text_until_deleted() {
        let mut entry = Entry {
            room: "r_1".into(),
            seq: 4,
            id: "m-1".into(),
            from: "ann".into(),
            body: "hi".into(),
            ts: 9,
            mentions: vec!["bob".into()],
            ..Entry::default()
        };
        let event = room_event(&row(EventType::MessagePosted), &entry, None);
        assert_eq!(
            event,
            json!({"id": "r_1/4", "type": "message.posted", "ts": 9, "room": "r_1", "seq": 4,
                   "message_id": "m-1", "from": "ann", "body": "hi", "mentions": ["bob"]})
        );
        entry.deleted = true;
        entry.body.clear();
        let event = room_event(&row(EventType::MessagePosted), &entry, None);
        assert_eq!(event["deleted"], json!(true));
        assert!(event.get("body").is_none());
    }

    #[test]
    fn a_kick_is_a_member_leaving_with_the_reason() {
        let entry = Entry {
            room: "r_1".into(),
            seq: 4,
            kind: EntryKind::Kick,
            from: "mod".into(),
            user: Some("bob".into()),
            body: "spam".into(),
            ..Entry::default()
        };
        let event = room_event(&row(EventType::MemberLeft), &entry, None);
        assert_eq!(event["reason"], json!("kicked"));
        assert_eq!(event["note"], json!("spam"));
        assert_eq!(event["user"], json!("bob"));
        let deleted =
            user_deleted(&OutboxEvent { stream: "user:bob".into(), seq: 77, event: EventType::UserDeleted }, "bob");
        assert_eq!(deleted, json!({"id": "user:bob/77", "type": "user.deleted", "ts": 77, "user": "bob"}));
    }
}
