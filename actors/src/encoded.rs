//! What goes out on a client's socket: a WebSocket message as the session sees it ([`Wire`]),
//! and an entry of a large room on its way to many connections, encoded at most once per
//! encoding, with a run of such entries (one commit's), queued and batched as one.
//!
//! A large room's `message` frame carries no cursor, so it is the same bytes for every
//! recipient. The first connection that sends the entry encodes it; every other connection
//! sends those bytes again (a reference-counted buffer, no copy). For a 1,000-member room that is
//! one encoding per encoding in use instead of 1,000 (per-recipient JSON encoding was the largest
//! item of the fan-out profile once large rooms stopped writing a log row per member). A run's
//! frames are likewise joined once into the body of a batched message.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use protocol::{Encoding, Entry};

/// A WebSocket message as the session sees it, independent of the WebSocket library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    Text(String),
    /// Text encoded once and sent to many connections (below); server to client only.
    SharedText(SharedText),
    Binary(Bytes),
    Close {
        code: u16,
        reason: String,
    },
}

/// Why reading from the socket failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The message exceeded `limits.max_frame_bytes`.
    TooLarge(String),
    /// A text message that is not UTF-8; the connection is closed with 1007.
    InvalidText(String),
    /// Anything else: the connection is unusable.
    Broken(String),
}

/// A committed entry shared by every connection it is delivered to.
///
/// Aligned to a cache line so that, inside its `Arc`, the fields sit on a line of their own,
/// apart from the reference counts: every recipient's queue takes a reference and every
/// session drops one, on both cores, while every session reads the room and seq of each entry
/// it sends. Sharing a line, those reads missed the cache each time the other core had just
/// counted (the load of the room id was 38 % of `LargeRooms::live`, itself 7 % of a fan-out).
#[derive(Debug)]
#[repr(align(64))]
pub struct SharedEntry {
    entry: Entry,
    encoded: Encodings,
}

impl SharedEntry {
    pub fn new(entry: Entry) -> Self {
        SharedEntry { entry, encoded: Encodings::default() }
    }

    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// The entry's `message` frame (without cursor) in `encoding`, borrowed: for copying into a
    /// batch of frames without touching the shared buffer's reference count.
    pub fn bytes(&self, encoding: Encoding) -> &[u8] {
        self.encoded.bytes(encoding, |encoding| self.encode(encoding))
    }

    /// The entry's `message` frame (without cursor) in `encoding`, encoded on first use.
    pub fn wire(&self, encoding: Encoding) -> Wire {
        self.encoded.wire(encoding, |encoding| self.encode(encoding))
    }

    fn encode(&self, encoding: Encoding) -> Vec<u8> {
        protocol::encode_message(encoding, None, &self.entry)
    }
}

/// Consecutive committed entries of one large room (one commit's, under one member list), on
/// their way to many connections together.
///
/// A run is what the hub queues for each member's connection: one queue item, one reference
/// count and one position check per connection for the whole run instead of one per entry
/// (with about twenty entries per commit at full speed, the per-entry work of a thousand
/// sessions — taking each item, checking each entry's room and seq, dropping each reference —
/// was a tenth of the node's time fanning out). For a client that takes batches, the run's
/// frames are also joined once, for every connection, into the body of one WebSocket message.
#[derive(Debug)]
pub struct SharedRun {
    entries: Vec<Arc<SharedEntry>>,
    /// Seqs without a gap: a session may move its position over the whole run at once.
    contiguous: bool,
    /// Some entry is a leave: whoever leaves stops following the room there, so each entry is
    /// looked at.
    has_leave: bool,
    encoded: Encodings,
}

impl SharedRun {
    /// `entries`: one room's, in seq order, at least one.
    pub fn new(entries: Vec<Arc<SharedEntry>>) -> Self {
        assert!(!entries.is_empty(), "a run holds at least one entry");
        let contiguous = entries.windows(2).all(|pair| pair[1].entry.seq == pair[0].entry.seq + 1);
        let has_leave = entries.iter().any(|shared| shared.entry.kind.ends_membership());
        SharedRun { entries, contiguous, has_leave, encoded: Encodings::default() }
    }

    pub fn entries(&self) -> &[Arc<SharedEntry>] {
        &self.entries
    }

    /// How many entries (never zero).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn room(&self) -> &str {
        &self.entries[0].entry.room
    }

    pub fn first_seq(&self) -> u64 {
        self.entries[0].entry.seq
    }

    pub fn last_seq(&self) -> u64 {
        self.entries[self.entries.len() - 1].entry.seq
    }

    /// Consecutive seqs and no leave among them: a connection at the seq before the run can
    /// take all of it with one check.
    pub fn is_plain(&self) -> bool {
        self.contiguous && !self.has_leave
    }

    pub fn has_leave(&self) -> bool {
        self.has_leave
    }

    /// The run's `message` frames (without cursor) joined by the batch separator of
    /// `encoding`: the body of one batched WebSocket message, built on first use.
    pub fn bytes(&self, encoding: Encoding) -> &[u8] {
        self.encoded.bytes(encoding, |encoding| self.joined(encoding))
    }

    /// [`bytes`](Self::bytes) as a WebSocket message, sharing the buffer.
    pub fn wire(&self, encoding: Encoding) -> Wire {
        self.encoded.wire(encoding, |encoding| self.joined(encoding))
    }

    /// Each entry encoded straight into the joined buffer (an entry's own cached encoding is
    /// not filled: the run's is what its recipients send).
    fn joined(&self, encoding: Encoding) -> Vec<u8> {
        let separator = protocol::batch_separator(encoding);
        let mut joined = Vec::with_capacity(self.entries.len() * 256);
        for (i, shared) in self.entries.iter().enumerate() {
            if i > 0 {
                joined.extend_from_slice(separator);
            }
            joined.extend_from_slice(&protocol::encode_message(encoding, None, &shared.entry));
        }
        joined
    }
}

/// One frame's bytes (or a batch's) in each encoding, each made on first use and then shared.
#[derive(Debug, Default)]
struct Encodings {
    json: OnceLock<SharedText>,
    msgpack: OnceLock<Bytes>,
}

impl Encodings {
    fn bytes(&self, encoding: Encoding, encode: impl FnOnce(Encoding) -> Vec<u8>) -> &[u8] {
        match encoding {
            Encoding::Json => self.json(encode).as_bytes(),
            Encoding::MessagePack => self.msgpack(encode),
        }
    }

    fn wire(&self, encoding: Encoding, encode: impl FnOnce(Encoding) -> Vec<u8>) -> Wire {
        match encoding {
            Encoding::Json => Wire::SharedText(self.json(encode).clone()),
            Encoding::MessagePack => Wire::Binary(self.msgpack(encode).clone()),
        }
    }

    fn json(&self, encode: impl FnOnce(Encoding) -> Vec<u8>) -> &SharedText {
        self.json.get_or_init(|| {
            SharedText::from(String::from_utf8(encode(Encoding::Json)).expect("JSON frames and newlines are UTF-8"))
        })
    }

    fn msgpack(&self, encode: impl FnOnce(Encoding) -> Vec<u8>) -> &Bytes {
        self.msgpack.get_or_init(|| Bytes::from(encode(Encoding::MessagePack)))
    }
}

/// Text for a WebSocket text message, shared between connections. It is valid UTF-8 by
/// construction: the only way to make one is from a `String` (or `&str`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedText(Bytes);

impl SharedText {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The UTF-8 bytes, for a WebSocket library's text type.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl From<String> for SharedText {
    fn from(text: String) -> Self {
        SharedText(Bytes::from(text))
    }
}

impl From<&str> for SharedText {
    fn from(text: &str) -> Self {
        SharedText(Bytes::copy_from_slice(text.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{encode_server, EntryKind, ServerFrame};

    #[test]
    fn shared_bytes_are_the_message_frame_without_cursor() {
        let entry = Entry {
            room: "r".into(),
            seq: 7,
            id: "m".into(),
            from: "ann".into(),
            kind: EntryKind::Text,
            user: None,
            body: "héllo".into(),
            ts: 1,
            ..Default::default()
        };
        let shared = SharedEntry::new(entry.clone());
        let frame = ServerFrame::Message { cursor: None, entry };
        let Wire::SharedText(text) = shared.wire(Encoding::Json) else { panic!("JSON is text") };
        assert_eq!(text.as_bytes(), encode_server(Encoding::Json, &frame).as_slice());
        let Wire::Binary(bytes) = shared.wire(Encoding::MessagePack) else { panic!("MessagePack is binary") };
        assert_eq!(&bytes[..], encode_server(Encoding::MessagePack, &frame).as_slice());
        // Encoded once: a second connection gets the same buffer.
        let Wire::SharedText(again) = shared.wire(Encoding::Json) else { panic!("JSON is text") };
        assert_eq!(again.as_bytes().as_ptr(), text.as_bytes().as_ptr());
    }
}
