//! palaver's wire protocol: the frames clients and nodes exchange over WebSocket, and their two
//! encodings (JSON in text frames, MessagePack in binary frames).
//!
//! This crate is the contract with independent clients, so it depends on no other palaver crate,
//! on no actor runtime and on no store. docs/PROTOCOL.md is its human-readable reference.

mod codec;
mod frames;

pub use codec::{
    batch_separator, decode_client, decode_server, decode_server_batch, encode_client, encode_message, encode_server,
    DecodeError, Encoding,
};
pub use frames::{
    Attachment, Audience, ClientFrame, Cursor, DeviceInfo, Entry, EntryKind, ErrorCode, MessageReactions, NewDevice,
    NotifyLevel, Platform, PresenceState, ReactionCount, ReactionTotal, ReadPosition, ReceiptKind, ReqId, Role,
    RoomInfo, RoomKind, RoomSettings, RoomSettingsChange, ServerFrame, Thumbnail, UserPresence, WebPushKeys,
    WebPushSubscription, SUPPORTED_VERSIONS,
};

/// Pick the newest version both sides speak, if any.
pub fn negotiate_version(offered: &[u32]) -> Option<u32> {
    SUPPORTED_VERSIONS.iter().rev().find(|v| offered.contains(v)).copied()
}
