//! What one push says, whatever the provider: the notification the push worker builds for a
//! (user, room) and hands to each of the user's devices. Providers turn it into their own
//! message shape (FCM's `message`, APNs' `aps`, a Web Push payload, a webhook body).

use serde::Serialize;

/// Whether a push shows something or takes something away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// New messages in a room: shown to the user.
    Alert,
    /// The user read the room on some device: remove what an earlier alert of this room shows
    /// and set the badge (a silent push: nothing is shown).
    Clear,
}

/// One notification for one user about one room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    pub kind: NotificationKind,
    /// The room id; also the collapse id, so a later notification of the room replaces an
    /// earlier one on the device (and a repeat of the same one shows once).
    pub room: String,
    /// The room's name (a direct conversation's is the other user's name); empty if none.
    pub room_name: String,
    /// Who wrote the latest message it covers (`None` for a clear).
    pub sender: Option<String>,
    /// The latest message's body, only where the server and the device allow previews.
    pub preview: Option<String>,
    /// Messages this notification covers (collapsed into one); 0 for a clear.
    pub count: u32,
    /// The seq of the latest message it covers (for a clear: the read position).
    pub seq: u64,
    /// The user's unread messages over all rooms: the app's badge.
    pub badge: u64,
}

/// What a preview shows of `entry`: its text, or for files sent without text, what they are.
pub fn preview_of(entry: &protocol::Entry) -> String {
    match (entry.body.trim().is_empty(), entry.attachments.as_slice()) {
        (true, [file]) => format!("sent {}", file.name),
        (true, [_, _, ..]) => format!("sent {} files", entry.attachments.len()),
        _ => entry.body.clone(),
    }
}

impl Notification {
    /// The collapse id providers use (`apns-collapse-id`, FCM `collapse_key` and Android tag,
    /// Web Push `Topic`): at most 32 characters of `A-Z a-z 0-9 - _`, so room ids are hashed
    /// down when longer.
    pub fn collapse_id(&self) -> String {
        let fits =
            self.room.len() <= 32 && self.room.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if fits {
            return self.room.clone();
        }
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.room.as_bytes());
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A short title: the room's name, or the sender's for an unnamed room.
    pub fn title(&self) -> String {
        if !self.room_name.is_empty() {
            self.room_name.clone()
        } else {
            self.sender.clone().unwrap_or_default()
        }
    }

    /// The text shown: the preview when allowed, otherwise who wrote and how many messages.
    pub fn body(&self) -> String {
        let sender = self.sender.as_deref().unwrap_or("someone");
        match (&self.preview, self.count) {
            (Some(text), 1) => format!("{sender}: {text}"),
            (Some(text), n) => format!("{sender}: {text} (+{} more)", n - 1),
            (None, 1) => format!("New message from {sender}"),
            (None, n) => format!("{n} new messages, the latest from {sender}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::{Attachment, Entry};

    use super::preview_of;

    fn file(name: &str) -> Attachment {
        Attachment { media: "md_x".into(), name: name.into(), ..Attachment::default() }
    }

    #[test]
    fn files_sent_without_text_are_named() {
        let text = Entry { body: "look".into(), attachments: vec![file("a.png")], ..Entry::default() };
        assert_eq!(preview_of(&text), "look");
        let one = Entry { attachments: vec![file("a.png")], ..Entry::default() };
        assert_eq!(preview_of(&one), "sent a.png");
        let two = Entry { attachments: vec![file("a.png"), file("b.pdf")], ..Entry::default() };
        assert_eq!(preview_of(&two), "sent 2 files");
    }
}
