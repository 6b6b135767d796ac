//! The inter-node message: what one node's router says to another's, and its encoding.
//!
//! ractor_cluster moves opaque bytes between nodes; this module decides what they mean. The
//! encoding is ours (docs/DESIGN.md §3): ractor drops undecodable messages silently and its
//! `blanket_serde` feature panics on bad bytes. So decoding never fails here: bytes that do not
//! decode, nest too deeply, or arrive as anything but a cast become [`RouterMessage::Invalid`],
//! which the router counts (`palaver_cluster_invalid_messages_total`) and logs.
//!
//! Layout: one version byte ([`WIRE_VERSION`]), then a MessagePack map (`rmp_serde` with field
//! names) of [`Envelope`]. Changes are additive only: a new field gets `#[serde(default)]` so
//! old senders still decode, unknown fields are ignored so old receivers still decode, and a
//! new variant is unknown to old receivers, which count it as invalid rather than
//! misunderstanding it. A higher version byte is refused the same way.

use std::sync::Arc;

use bytes::Bytes;
use protocol::{Attachment, Entry, EntryKind, RoomSettingsChange, ServerFrame};
use serde::{Deserialize, Serialize};

use actors::presence::PresenceBatch;
use actors::room::AppendCommand;
use actors::store::{Appended, Delivery, EntryDetails, Recipients, StoreError};

/// The version byte in front of every inter-node message.
pub const WIRE_VERSION: u8 = 1;

/// A message to a router, as the router handles it.
#[derive(Debug, Clone, PartialEq)]
pub enum RouterMessage {
    /// Liveness, membership gossip and the sender's advertised address.
    Heartbeat(Heartbeat),
    /// Run an append on this node (its owner) and reply to `from`.
    Append(ForwardedAppend),
    /// The outcome of an [`RouterMessage::Append`] this node forwarded.
    Reply(AppendReply),
    /// A committed entry for this node's live connections, encoded once by the room's node
    /// ([`encode_delivery`]) and shared between all the nodes it goes to.
    Deliver(Bytes),
    /// A run of a large room's committed entries under one member list, the list sent once
    /// ([`encode_run`]); only to nodes whose heartbeat says they read it
    /// ([`Heartbeat::delivers_runs`]), the others get one [`RouterMessage::Deliver`] per entry.
    DeliverRun(Bytes),
    /// Presence records that changed on the sender, or all of them (a snapshot).
    Presence(PresenceBatch),
    /// The named node asks for a presence snapshot (it is out of step with this one).
    PresenceWant(String),
    /// An ephemeral frame (typing, receipt) for the named users' connections on this node,
    /// encoded once by [`encode_push`].
    Push(Bytes),
    /// Bytes that did not decode; `reason` says why.
    Invalid(String),
}

/// Every sender says who it is, which incarnation (a random number per process start, so a
/// restart is told from a hiccup), where to reach it, and whom it sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub from: String,
    pub incarnation: u64,
    /// `host:port` other nodes use to connect to the sender (`cluster.advertise`).
    pub addr: String,
    /// The sender's live set (itself included), sorted.
    pub live: Vec<String>,
    /// Every node the sender knows of with its address, for the mesh and the quorum size.
    #[serde(default)]
    pub known: Vec<(String, String)>,
    /// The sender is draining (SIGTERM) and leaving the cluster for good.
    #[serde(default)]
    pub leaving: bool,
    /// Sequence number of the last presence batch the sender sent (a receiver behind it
    /// missed one and asks for a snapshot).
    #[serde(default)]
    pub presence_seq: u64,
    /// Nodes the sender saw leave or was told to forget, with their incarnation.
    #[serde(default)]
    pub forgotten: Vec<(String, u64)>,
    /// The sender reads [`RouterMessage::DeliverRun`] (false from nodes older than it).
    #[serde(default)]
    pub delivers_runs: bool,
    /// How far the sender has applied each node's presence batches: (node, incarnation, seq).
    /// A node learns from it when every peer knows of a connection it opened (see
    /// `Presence::acked_through`).
    #[serde(default)]
    pub presence_applied: Vec<(String, u64, u64)>,
    /// The sender catches a new connection up from the store once every peer has applied the
    /// presence batch that announced it, so owners may send it only the deliveries of rooms
    /// with a member connected there (false from nodes older than that: they get every one).
    #[serde(default)]
    pub targeted: bool,
}

/// An ephemeral frame and whom it is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WirePush {
    pub users: Vec<String>,
    pub frame: ServerFrame,
}

/// An append forwarded to the room's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedAppend {
    /// Unique per origin node; the reply carries it back.
    pub id: u64,
    /// The origin node's name, where the reply goes.
    pub from: String,
    pub room: String,
    pub kind: EntryKind,
    pub sender: String,
    pub message_id: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub body: String,
    /// Carried into the owner's logs so one request can be followed across nodes.
    #[serde(default)]
    pub trace: u64,
    /// [`EntryDetails`] of the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<RoomSettingsChange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// The W3C `traceparent` of the request's span on the origin node, when spans are exported
    /// (`trace_context`): the owner's spans join the same trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl ForwardedAppend {
    pub fn command(&self) -> AppendCommand {
        AppendCommand {
            kind: self.kind,
            from: self.sender.clone(),
            id: self.message_id.clone(),
            user: self.user.clone(),
            body: self.body.clone(),
            details: EntryDetails {
                target: self.target,
                reply_to: self.reply_to,
                mentions: self.mentions.clone(),
                until: self.until,
                settings: self.settings.clone(),
                attachments: self.attachments.clone(),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendReply {
    pub id: u64,
    /// The replying (owner) node.
    pub from: String,
    pub outcome: WireOutcome,
}

/// [`Appended`] or [`StoreError`] on the wire. The reply needs only the entry: the owner
/// already delivered it to every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireOutcome {
    Appended { entry: Box<Entry>, duplicate: bool },
    Error(WireError),
}

/// [`StoreError`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireError {
    UserExists(String),
    NoSuchUser(String),
    NoSuchRoom(String),
    NotMember { room: String, user: String },
    AlreadyMember { room: String, user: String },
    Forbidden(String),
    RoomFull { room: String, limit: u32 },
    TooManyRooms { user: String, limit: u32 },
    Fenced { room: String, epoch: u64, current: u64 },
    Unavailable(String),
    Backend(String),
    NoSuchMessage { room: String, seq: u64 },
    MessageDeleted { room: String, seq: u64 },
    NotAllowed(String),
    InvalidReference(String),
    Unchanged(String),
    Banned { room: String, user: String, until: Option<u64> },
    NoSuchMedia(String),
    MediaInUse(String),
    QuotaExceeded { user: String, quota: u64 },
}

impl From<Result<Appended, StoreError>> for WireOutcome {
    fn from(result: Result<Appended, StoreError>) -> Self {
        match result {
            Ok(appended) => {
                WireOutcome::Appended { entry: Box::new(appended.delivery.entry), duplicate: appended.duplicate }
            }
            Err(err) => WireOutcome::Error(match err {
                StoreError::UserExists(a) => WireError::UserExists(a),
                StoreError::NoSuchUser(a) => WireError::NoSuchUser(a),
                StoreError::NoSuchRoom(a) => WireError::NoSuchRoom(a),
                StoreError::NotMember { room, user } => WireError::NotMember { room, user },
                StoreError::AlreadyMember { room, user } => WireError::AlreadyMember { room, user },
                StoreError::Forbidden(a) => WireError::Forbidden(a),
                StoreError::RoomFull { room, limit } => WireError::RoomFull { room, limit },
                StoreError::TooManyRooms { user, limit } => WireError::TooManyRooms { user, limit },
                StoreError::Fenced { room, epoch, current } => WireError::Fenced { room, epoch, current },
                StoreError::Unavailable(a) => WireError::Unavailable(a),
                StoreError::Backend(a) => WireError::Backend(a),
                StoreError::NoSuchMessage { room, seq } => WireError::NoSuchMessage { room, seq },
                StoreError::MessageDeleted { room, seq } => WireError::MessageDeleted { room, seq },
                StoreError::NotAllowed(a) => WireError::NotAllowed(a),
                StoreError::InvalidReference(a) => WireError::InvalidReference(a),
                StoreError::Unchanged(a) => WireError::Unchanged(a),
                StoreError::Banned { room, user, until } => WireError::Banned { room, user, until },
                StoreError::NoSuchMedia(a) => WireError::NoSuchMedia(a),
                StoreError::MediaInUse(a) => WireError::MediaInUse(a),
                StoreError::QuotaExceeded { user, quota } => WireError::QuotaExceeded { user, quota },
            }),
        }
    }
}

impl From<WireOutcome> for Result<Appended, StoreError> {
    fn from(outcome: WireOutcome) -> Self {
        match outcome {
            WireOutcome::Appended { entry, duplicate } => {
                Ok(Appended { delivery: Delivery { entry: *entry, recipients: Recipients::none() }, duplicate })
            }
            WireOutcome::Error(err) => Err(match err {
                WireError::UserExists(a) => StoreError::UserExists(a),
                WireError::NoSuchUser(a) => StoreError::NoSuchUser(a),
                WireError::NoSuchRoom(a) => StoreError::NoSuchRoom(a),
                WireError::NotMember { room, user } => StoreError::NotMember { room, user },
                WireError::AlreadyMember { room, user } => StoreError::AlreadyMember { room, user },
                WireError::Forbidden(a) => StoreError::Forbidden(a),
                WireError::RoomFull { room, limit } => StoreError::RoomFull { room, limit },
                WireError::TooManyRooms { user, limit } => StoreError::TooManyRooms { user, limit },
                WireError::Fenced { room, epoch, current } => StoreError::Fenced { room, epoch, current },
                WireError::Unavailable(a) => StoreError::Unavailable(a),
                WireError::Backend(a) => StoreError::Backend(a),
                WireError::NoSuchMessage { room, seq } => StoreError::NoSuchMessage { room, seq },
                WireError::MessageDeleted { room, seq } => StoreError::MessageDeleted { room, seq },
                WireError::NotAllowed(a) => StoreError::NotAllowed(a),
                WireError::InvalidReference(a) => StoreError::InvalidReference(a),
                WireError::Unchanged(a) => StoreError::Unchanged(a),
                WireError::Banned { room, user, until } => StoreError::Banned { room, user, until },
                WireError::NoSuchMedia(a) => StoreError::NoSuchMedia(a),
                WireError::MediaInUse(a) => StoreError::MediaInUse(a),
                WireError::QuotaExceeded { user, quota } => StoreError::QuotaExceeded { user, quota },
            }),
        }
    }
}

/// [`Delivery`] on the wire. A recipient's cursor is 0 when the entry is not in their user log
/// (an entry of a large room): user log cursors start at 1, and a plain number keeps the
/// encoding what it was before large rooms existed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WireDelivery {
    entry: Entry,
    recipients: Vec<(String, u64)>,
}

/// The serde shape behind [`RouterMessage`].
#[derive(Debug, Serialize, Deserialize)]
enum Envelope {
    Heartbeat(Heartbeat),
    Append(ForwardedAppend),
    Reply(AppendReply),
    Deliver(#[serde(with = "serde_bytes_compat")] Vec<u8>),
    Presence(PresenceBatch),
    PresenceWant(String),
    Push(#[serde(with = "serde_bytes_compat")] Vec<u8>),
    /// Added after the others (whatever the variant encoding, older variants keep theirs).
    DeliverRun(#[serde(with = "serde_bytes_compat")] Vec<u8>),
}

/// [`WireDelivery`] borrowed from a [`Delivery`], to encode without copying it.
#[derive(Serialize)]
struct WireDeliveryRef<'a> {
    entry: &'a Entry,
    recipients: Vec<(&'a str, u64)>,
}

/// Encode a delivery once; the bytes go into a [`RouterMessage::Deliver`] for every node.
/// `Recipients::Unnamed` never gets here (the hub refuses it first); it would encode as nobody.
pub fn encode_delivery(delivery: &Delivery) -> Bytes {
    let recipients = match &delivery.recipients {
        Recipients::Logs(logs) => logs.iter().map(|(user, cursor)| (user.as_str(), *cursor)).collect(),
        Recipients::Members(members) => members.iter().map(|user| (user.as_str(), 0)).collect(),
        Recipients::Unnamed => Vec::new(),
    };
    let wire = WireDeliveryRef { entry: &delivery.entry, recipients };
    Bytes::from(rmp_serde::to_vec_named(&wire).expect("a delivery always encodes"))
}

/// Decode the payload of a [`RouterMessage::Deliver`].
pub fn decode_delivery(bytes: &[u8]) -> Result<Delivery, String> {
    let wire: WireDelivery = from_msgpack(bytes).map_err(|err| format!("delivery: {err}"))?;
    let in_room_log = wire.recipients.iter().filter(|(_, cursor)| *cursor == 0).count();
    let recipients = if in_room_log == 0 {
        Recipients::Logs(wire.recipients)
    } else if in_room_log == wire.recipients.len() {
        Recipients::Members(Arc::new(wire.recipients.into_iter().map(|(user, _)| user).collect()))
    } else {
        return Err("delivery: recipients mix user-log cursors and room-log entries".into());
    };
    Ok(Delivery { entry: wire.entry, recipients })
}

/// A run of one large room's entries on the wire: the member list once, for all of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct WireRun {
    entries: Vec<Entry>,
    members: Vec<String>,
}

/// [`WireRun`] borrowed from the run's deliveries.
#[derive(Serialize)]
struct WireRunRef<'a> {
    entries: Vec<&'a Entry>,
    members: &'a [String],
}

/// Encode a run once (consecutive deliveries of one large room under one member list, as
/// `hub::delivery_runs` makes them); the bytes go into a [`RouterMessage::DeliverRun`] for
/// every node that reads it. The first delivery's list is the run's.
pub fn encode_run(run: &[&Delivery]) -> Bytes {
    let members = match run.first().map(|delivery| &delivery.recipients) {
        Some(Recipients::Members(members)) => members.as_slice(),
        _ => &[],
    };
    let wire = WireRunRef { entries: run.iter().map(|delivery| &delivery.entry).collect(), members };
    Bytes::from(rmp_serde::to_vec_named(&wire).expect("a run always encodes"))
}

/// Decode the payload of a [`RouterMessage::DeliverRun`]: its deliveries, in order, sharing one
/// member list. A run is one room's entries, at least one.
pub fn decode_run(bytes: &[u8]) -> Result<Vec<Delivery>, String> {
    let wire: WireRun = from_msgpack(bytes).map_err(|err| format!("delivery run: {err}"))?;
    let Some(room) = wire.entries.first().map(|entry| entry.room.clone()) else {
        return Err("delivery run: no entries".into());
    };
    if wire.entries.iter().any(|entry| entry.room != room) {
        return Err("delivery run: entries of more than one room".into());
    }
    let members = Arc::new(wire.members);
    let deliveries = wire
        .entries
        .into_iter()
        .map(|entry| Delivery { entry, recipients: Recipients::Members(members.clone()) })
        .collect();
    Ok(deliveries)
}

/// The messages that carry one run (see `hub::delivery_runs`) to other nodes, each encoded
/// once however many nodes get it.
pub struct RunMessages<'a, 'b> {
    run: &'b [&'a Delivery],
    whole: Option<Bytes>,
    each: Vec<Option<Bytes>>,
}

impl<'a, 'b> RunMessages<'a, 'b> {
    pub fn new(run: &'b [&'a Delivery]) -> Self {
        RunMessages { run, whole: None, each: vec![None; run.len()] }
    }

    /// What one node gets: a run of several entries as one [`RouterMessage::DeliverRun`] if the
    /// node reads it, otherwise one [`RouterMessage::Deliver`] per entry, in order.
    pub fn for_node(&mut self, reads_runs: bool) -> Vec<RouterMessage> {
        if reads_runs && self.run.len() > 1 {
            let run = self.run;
            return vec![RouterMessage::DeliverRun(self.whole.get_or_insert_with(|| encode_run(run)).clone())];
        }
        self.run
            .iter()
            .zip(self.each.iter_mut())
            .map(|(delivery, bytes)| {
                RouterMessage::Deliver(bytes.get_or_insert_with(|| encode_delivery(delivery)).clone())
            })
            .collect()
    }
}

/// Encode an ephemeral push once; the bytes go into a [`RouterMessage::Push`] for every node.
pub fn encode_push(users: &[String], frame: &ServerFrame) -> Bytes {
    let wire = WirePush { users: users.to_vec(), frame: frame.clone() };
    Bytes::from(rmp_serde::to_vec_named(&wire).expect("a push always encodes"))
}

/// Decode the payload of a [`RouterMessage::Push`]. Only typing, receipt and reaction-count
/// frames are accepted: other nodes may not make this node send clients anything else.
pub fn decode_push(bytes: &[u8]) -> Result<WirePush, String> {
    let wire: WirePush = from_msgpack(bytes).map_err(|err| format!("push: {err}"))?;
    match wire.frame {
        ServerFrame::Typing { .. } | ServerFrame::Receipt { .. } | ServerFrame::Reactions { .. } => Ok(wire),
        _ => Err("push of a frame kind other than typing, receipt or reactions".into()),
    }
}

/// How deeply an inter-node message may nest (real ones use a handful of levels). rmp-serde's
/// default of 1,024 let a peer's message of a few hundred nested arrays (under a kilobyte, in an
/// unknown field that serde skips recursively) overflow a worker thread's stack and abort the
/// node in a debug build (tests/tests/cluster_wire.rs sends one over a real link).
const MAX_DEPTH: usize = 32;

/// Decode MessagePack with the nesting bound.
fn from_msgpack<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut deserializer = rmp_serde::Deserializer::new(bytes);
    deserializer.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut deserializer)
}

/// Encode a message: the version byte, then the envelope.
pub fn encode(message: &RouterMessage) -> Vec<u8> {
    let envelope = match message {
        RouterMessage::Heartbeat(hb) => Envelope::Heartbeat(hb.clone()),
        RouterMessage::Append(append) => Envelope::Append(append.clone()),
        RouterMessage::Reply(reply) => Envelope::Reply(reply.clone()),
        RouterMessage::Deliver(bytes) => Envelope::Deliver(bytes.to_vec()),
        RouterMessage::DeliverRun(bytes) => Envelope::DeliverRun(bytes.to_vec()),
        RouterMessage::Presence(batch) => Envelope::Presence(batch.clone()),
        RouterMessage::PresenceWant(from) => Envelope::PresenceWant(from.clone()),
        RouterMessage::Push(bytes) => Envelope::Push(bytes.to_vec()),
        // Never sent on purpose; if it is, the receiver counts it as invalid too.
        RouterMessage::Invalid(_) => return vec![0],
    };
    let mut out = vec![WIRE_VERSION];
    rmp_serde::encode::write_named(&mut out, &envelope).expect("an envelope always encodes");
    out
}

/// Decode a message; never fails: what does not decode is [`RouterMessage::Invalid`].
pub fn decode(bytes: &[u8]) -> RouterMessage {
    let Some((&version, body)) = bytes.split_first() else {
        return RouterMessage::Invalid("empty message".into());
    };
    if version != WIRE_VERSION {
        return RouterMessage::Invalid(format!("unsupported wire version {version} (this node speaks {WIRE_VERSION})"));
    }
    match from_msgpack::<Envelope>(body) {
        Ok(Envelope::Heartbeat(hb)) => RouterMessage::Heartbeat(hb),
        Ok(Envelope::Append(append)) => RouterMessage::Append(append),
        Ok(Envelope::Reply(reply)) => RouterMessage::Reply(reply),
        Ok(Envelope::Deliver(bytes)) => RouterMessage::Deliver(Bytes::from(bytes)),
        Ok(Envelope::DeliverRun(bytes)) => RouterMessage::DeliverRun(Bytes::from(bytes)),
        Ok(Envelope::Presence(batch)) => RouterMessage::Presence(batch),
        Ok(Envelope::PresenceWant(from)) => RouterMessage::PresenceWant(from),
        Ok(Envelope::Push(bytes)) => RouterMessage::Push(Bytes::from(bytes)),
        Err(err) => RouterMessage::Invalid(format!("undecodable message of {} bytes: {err}", bytes.len())),
    }
}

/// What makes the router remotable: casts to a router on another node travel as our encoding.
/// Written out rather than through ractor's blanket impl for `BytesConvertable`, which refuses
/// anything but a cast with an error ractor only logs at debug level: here an RPC call (or any
/// other kind) from a peer becomes [`RouterMessage::Invalid`] too, counted and logged like bad
/// bytes. (Its reply port is dropped: routers answer nothing by call.)
impl ractor::Message for RouterMessage {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<ractor::message::SerializedMessage, ractor::message::BoxedDowncastErr> {
        Ok(ractor::message::SerializedMessage::Cast { variant: String::new(), args: encode(&self), metadata: None })
    }

    fn deserialize(message: ractor::message::SerializedMessage) -> Result<Self, ractor::message::BoxedDowncastErr> {
        use ractor::message::SerializedMessage;
        Ok(match message {
            SerializedMessage::Cast { args, .. } => decode(&args),
            SerializedMessage::Call { args, .. } => {
                RouterMessage::Invalid(format!("an RPC call of {} bytes; routers take casts only", args.len()))
            }
            SerializedMessage::CallReply(..) => RouterMessage::Invalid("a call reply addressed to a router".into()),
        })
    }
}

/// `Vec<u8>` as a MessagePack bin (not an array of integers) without the serde_bytes crate.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(byte) = seq.next_element::<u8>()? {
                    out.push(byte);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            room: "r1".into(),
            seq: 7,
            id: "m1".into(),
            from: "alice".into(),
            kind: EntryKind::Text,
            user: None,
            body: "hi".into(),
            ts: 1,
            ..Default::default()
        }
    }

    #[test]
    fn every_variant_round_trips() {
        let delivery =
            Delivery { entry: entry(), recipients: Recipients::Logs(vec![("alice".into(), 3), ("bob".into(), 4)]) };
        let messages = vec![
            RouterMessage::Heartbeat(Heartbeat {
                from: "a".into(),
                incarnation: 42,
                addr: "127.0.0.1:1".into(),
                live: vec!["a".into(), "b".into()],
                known: vec![("b".into(), "127.0.0.1:2".into())],
                leaving: true,
                presence_seq: 4,
                forgotten: vec![("c".into(), 7)],
                delivers_runs: true,
                presence_applied: vec![("b".into(), 9, 3)],
                targeted: true,
            }),
            RouterMessage::Append(ForwardedAppend {
                id: 5,
                from: "a".into(),
                room: "r1".into(),
                kind: EntryKind::Text,
                sender: "alice".into(),
                message_id: "m1".into(),
                user: None,
                body: "hi".into(),
                trace: 9,
                target: None,
                reply_to: None,
                mentions: Vec::new(),
                until: None,
                settings: None,
                attachments: vec![Attachment {
                    media: "md_x".into(),
                    name: "cat.png".into(),
                    content_type: "image/png".into(),
                    size: 10,
                    width: Some(2),
                    height: Some(1),
                    thumbnail: Some(protocol::Thumbnail { width: 2, height: 1 }),
                }],
                traceparent: None,
            }),
            RouterMessage::Append(ForwardedAppend {
                id: 6,
                from: "a".into(),
                room: "r1".into(),
                kind: EntryKind::Settings,
                sender: "alice".into(),
                message_id: "settings.1".into(),
                user: None,
                body: String::new(),
                trace: 10,
                target: None,
                reply_to: None,
                mentions: Vec::new(),
                until: None,
                attachments: Vec::new(),
                settings: Some(RoomSettingsChange {
                    topic: Some("news".into()),
                    who_may_post: Some(protocol::Audience::Moderators),
                    ..RoomSettingsChange::default()
                }),
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            }),
            RouterMessage::Reply(AppendReply {
                id: 5,
                from: "b".into(),
                outcome: Ok(Appended { delivery: delivery.clone(), duplicate: false }).into(),
            }),
            RouterMessage::Reply(AppendReply {
                id: 6,
                from: "b".into(),
                outcome: Err(StoreError::Fenced { room: "r1".into(), epoch: 1, current: 2 }).into(),
            }),
            RouterMessage::Deliver(encode_delivery(&delivery)),
            RouterMessage::Presence(PresenceBatch {
                from: "a".into(),
                incarnation: 3,
                base: 1,
                seq: 2,
                snapshot: false,
                changes: vec![
                    (
                        "alice".into(),
                        Some(actors::presence::Record {
                            online: true,
                            away: true,
                            status: Some("lunch".into()),
                            state_at: 5,
                            last_seen: 0,
                        }),
                    ),
                    ("bob".into(), None),
                ],
            }),
            RouterMessage::PresenceWant("b".into()),
            RouterMessage::Push(encode_push(
                &["bob".to_string()],
                &ServerFrame::Typing { room: "r1".into(), user: "alice".into(), active: true, expires_in_ms: 10 },
            )),
        ];
        for message in messages {
            assert_eq!(decode(&encode(&message)), message);
        }
        let RouterMessage::Deliver(bytes) = decode(&encode(&RouterMessage::Deliver(encode_delivery(&delivery)))) else {
            panic!("not a delivery");
        };
        assert_eq!(decode_delivery(&bytes).unwrap(), delivery);
    }

    #[test]
    fn a_large_rooms_delivery_round_trips_as_members_and_a_mixed_one_is_refused() {
        let members = Arc::new(vec!["alice".to_string(), "bob".to_string()]);
        let delivery = Delivery { entry: entry(), recipients: Recipients::Members(members) };
        assert_eq!(decode_delivery(&encode_delivery(&delivery)).unwrap(), delivery);
        let mixed = WireDelivery { entry: entry(), recipients: vec![("alice".into(), 3), ("bob".into(), 0)] };
        let bytes = rmp_serde::to_vec_named(&mixed).unwrap();
        let err = decode_delivery(&bytes).unwrap_err();
        assert!(err.contains("mix"), "{err}");
    }

    /// Seqs 7–9 of one room, under one list.
    fn run_of_three() -> Vec<Delivery> {
        let members = Arc::new(vec!["alice".to_string(), "bob".to_string()]);
        (7..10)
            .map(|seq| Delivery { entry: Entry { seq, ..entry() }, recipients: Recipients::Members(members.clone()) })
            .collect()
    }

    #[test]
    fn a_run_round_trips_with_one_shared_list_and_a_bad_one_is_refused() {
        let run = run_of_three();
        let RouterMessage::DeliverRun(bytes) =
            decode(&encode(&RouterMessage::DeliverRun(encode_run(&run.iter().collect::<Vec<_>>()))))
        else {
            panic!("not a run");
        };
        let decoded = decode_run(&bytes).unwrap();
        assert_eq!(decoded, run);
        // One list for the whole run, as the fan-out cache wants it.
        let lists: Vec<&Arc<Vec<String>>> = decoded
            .iter()
            .map(|delivery| match &delivery.recipients {
                Recipients::Members(list) => list,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(lists.iter().all(|list| Arc::ptr_eq(list, lists[0])));

        let wire = |entries: Vec<Entry>| {
            #[derive(Serialize)]
            struct Run {
                entries: Vec<Entry>,
                members: Vec<String>,
            }
            rmp_serde::to_vec_named(&Run { entries, members: vec!["alice".into()] }).unwrap()
        };
        let two_rooms = wire(vec![entry(), Entry { room: "r2".into(), ..entry() }]);
        assert!(decode_run(&two_rooms).unwrap_err().contains("more than one room"));
        assert!(decode_run(&wire(vec![])).unwrap_err().contains("no entries"));
        assert!(decode_run(&[1, 2, 3]).is_err());
    }

    #[test]
    fn a_node_that_reads_runs_gets_one_message_and_an_older_one_each_entry() {
        let run = run_of_three();
        let run: Vec<&Delivery> = run.iter().collect();
        let mut messages = RunMessages::new(&run);
        let older = messages.for_node(false);
        let decoded: Vec<Delivery> = older
            .iter()
            .map(|message| match message {
                RouterMessage::Deliver(bytes) => decode_delivery(bytes).unwrap(),
                other => panic!("an older node got {other:?}"),
            })
            .collect();
        assert_eq!(decoded.iter().collect::<Vec<_>>(), run, "each entry, in order");
        let newer = messages.for_node(true);
        let [RouterMessage::DeliverRun(bytes)] = newer.as_slice() else { panic!("{newer:?}") };
        assert_eq!(decode_run(bytes).unwrap().iter().collect::<Vec<_>>(), run);
        // Encoded once, whichever nodes get it.
        let again = messages.for_node(true);
        let [RouterMessage::DeliverRun(again)] = again.as_slice() else { panic!("{again:?}") };
        assert_eq!(again.as_ptr(), bytes.as_ptr());
        // A single entry is a plain delivery for everyone.
        let mut single = RunMessages::new(&run[..1]);
        assert!(matches!(single.for_node(true).as_slice(), [RouterMessage::Deliver(_)]));
    }

    #[test]
    fn bad_bytes_are_invalid_never_a_panic() {
        for bytes in
            [vec![], vec![WIRE_VERSION], vec![WIRE_VERSION, 0xc1], vec![9, 1, 2], vec![WIRE_VERSION, 0x92, 1, 2]]
        {
            assert!(matches!(decode(&bytes), RouterMessage::Invalid(_)), "{bytes:?}");
        }
        let mut truncated = encode(&RouterMessage::Heartbeat(Heartbeat {
            from: "a".into(),
            incarnation: 1,
            addr: "x".into(),
            live: vec![],
            known: vec![],
            leaving: false,
            presence_seq: 0,
            forgotten: vec![],
            delivers_runs: false,
            presence_applied: vec![],
            targeted: false,
        }));
        truncated.truncate(truncated.len() / 2);
        assert!(matches!(decode(&truncated), RouterMessage::Invalid(_)));
        assert!(decode_delivery(&[1, 2, 3]).is_err());
        // Deep nesting in an unknown field is refused by the depth bound, not by the stack.
        let mut nested = vec![WIRE_VERSION, 0x81, 0xa9];
        nested.extend_from_slice(b"Heartbeat");
        nested.extend_from_slice(&[0x81, 0xa4]);
        nested.extend_from_slice(b"junk");
        nested.extend(std::iter::repeat_n(0x91, 5_000));
        nested.push(0xc0);
        assert!(matches!(decode(&nested), RouterMessage::Invalid(_)));
        assert!(decode_push(&[1, 2, 3]).is_err());
        // A well-formed push of a frame kind nodes may not push is refused too.
        let sneaky = encode_push(&["bob".to_string()], &ServerFrame::Pong { req: 1 });
        assert!(decode_push(&sneaky).unwrap_err().contains("other than typing, receipt or reactions"));
    }

    #[test]
    fn unknown_fields_are_ignored_and_new_fields_default() {
        // A heartbeat from a "newer" node with an extra field, and from an "older" one without
        // the optional fields: both decode.
        #[derive(Serialize)]
        struct NewerHeartbeat {
            from: String,
            incarnation: u64,
            addr: String,
            live: Vec<String>,
            zone: String,
        }
        #[derive(Serialize)]
        enum NewerEnvelope {
            Heartbeat(NewerHeartbeat),
        }
        let newer = NewerEnvelope::Heartbeat(NewerHeartbeat {
            from: "n".into(),
            incarnation: 3,
            addr: "h:1".into(),
            live: vec!["n".into()],
            zone: "eu".into(),
        });
        let mut bytes = vec![WIRE_VERSION];
        rmp_serde::encode::write_named(&mut bytes, &newer).unwrap();
        let RouterMessage::Heartbeat(hb) = decode(&bytes) else { panic!("not decoded") };
        assert_eq!((hb.from.as_str(), hb.known.len(), hb.leaving), ("n", 0, false));
        assert!(!hb.delivers_runs, "a node that does not say it reads runs gets one delivery per entry");
    }
}
