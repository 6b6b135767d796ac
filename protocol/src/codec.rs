//! Encoding and decoding frames: JSON in WebSocket text frames, MessagePack in binary frames.
//!
//! Decoding never panics and classifies what went wrong, so the node can answer with a precise
//! error code: bytes that are not a document ([`ErrorCode::MalformedFrame`]), a `type` that names
//! no frame ([`ErrorCode::UnknownType`]), or a known frame with a missing or mistyped field
//! ([`ErrorCode::InvalidField`]). The request number is recovered from a bad frame where it can
//! be, so the error reply still correlates with the request.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::frames::{ClientFrame, Cursor, Entry, ErrorCode, ReqId, ServerFrame};

/// The two encodings of the protocol; the same serde types sit behind both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// UTF-8 JSON in text frames: readable, typeable by hand.
    Json,
    /// MessagePack maps (field names kept) in binary frames: smaller and faster.
    MessagePack,
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// One of `MalformedFrame`, `UnknownType`, `InvalidField`.
    pub code: ErrorCode,
    pub message: String,
    /// The frame's `req`, when the frame got far enough to have one.
    pub req: Option<ReqId>,
}

impl DecodeError {
    fn new(code: ErrorCode, message: impl Into<String>, req: Option<ReqId>) -> Self {
        DecodeError { code, message: message.into(), req }
    }
}

/// Decode a client frame. Two stages: bytes → generic document (malformed if that fails), then
/// document → frame, with the `type` checked first so an unknown type is reported as such.
pub fn decode_client(encoding: Encoding, bytes: &[u8]) -> Result<ClientFrame, DecodeError> {
    let doc = parse_document(encoding, bytes)?;
    let obj = doc.as_object().ok_or_else(|| {
        DecodeError::new(ErrorCode::MalformedFrame, "a frame must be an object (map) with a `type` field", None)
    })?;
    let req = obj.get("req").and_then(Value::as_u64);
    let ty = match obj.get("type") {
        Some(Value::String(ty)) => ty.clone(),
        Some(_) => return Err(DecodeError::new(ErrorCode::InvalidField, "`type` must be a string", req)),
        None => return Err(DecodeError::new(ErrorCode::MalformedFrame, "missing field `type`", req)),
    };
    if !ClientFrame::TYPE_NAMES.contains(&ty.as_str()) {
        return Err(DecodeError::new(
            ErrorCode::UnknownType,
            format!("unknown frame type `{ty}`; expected one of: {}", ClientFrame::TYPE_NAMES.join(", ")),
            req,
        ));
    }
    serde_json::from_value(doc)
        .map_err(|err| DecodeError::new(ErrorCode::InvalidField, format!("invalid `{ty}` frame: {err}"), req))
}

/// Decode a server frame (used by clients, tests and the load generator).
pub fn decode_server(encoding: Encoding, bytes: &[u8]) -> Result<ServerFrame, DecodeError> {
    decode_typed(encoding, bytes)
}

/// Decode every frame of one WebSocket message from a node that batches (`welcome.batch`):
/// JSON objects separated by newlines, or MessagePack maps back to back. A message holding one
/// frame decodes too, so a batching client reads every message with this.
pub fn decode_server_batch(encoding: Encoding, bytes: &[u8]) -> Result<Vec<ServerFrame>, DecodeError> {
    let malformed = |message: String| DecodeError::new(ErrorCode::MalformedFrame, message, None);
    match encoding {
        Encoding::Json => serde_json::Deserializer::from_slice(bytes)
            .into_iter::<ServerFrame>()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| malformed(err.to_string())),
        Encoding::MessagePack => {
            let mut frames = Vec::new();
            let mut deserializer = rmp_serde::Deserializer::new(bytes);
            while !deserializer.get_ref().is_empty() {
                let frame =
                    serde::Deserialize::deserialize(&mut deserializer).map_err(|err| malformed(err.to_string()))?;
                frames.push(frame);
            }
            Ok(frames)
        }
    }
}

/// What separates two frames batched in one message: a newline between JSON objects (JSON
/// encodes a newline inside a string as `\n`, so it never occurs within a frame); nothing
/// between MessagePack maps, which delimit themselves.
pub fn batch_separator(encoding: Encoding) -> &'static [u8] {
    match encoding {
        Encoding::Json => b"\n",
        Encoding::MessagePack => b"",
    }
}

/// Encode a server frame.
pub fn encode_server(encoding: Encoding, frame: &ServerFrame) -> Vec<u8> {
    encode(encoding, frame)
}

/// Encode a `message` frame for a borrowed entry: the same bytes as [`encode_server`] of
/// [`ServerFrame::Message`], without cloning the entry first (a node encodes each entry once per
/// recipient connection, and the clone was a handful of allocations each time).
pub fn encode_message(encoding: Encoding, cursor: Option<Cursor>, entry: &Entry) -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(tag = "type", rename = "message")]
    struct MessageRef<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<Cursor>,
        #[serde(flatten)]
        entry: &'a Entry,
    }
    encode(encoding, &MessageRef { cursor, entry })
}

/// Encode a client frame (used by clients, tests and the load generator).
pub fn encode_client(encoding: Encoding, frame: &ClientFrame) -> Vec<u8> {
    encode(encoding, frame)
}

fn encode<T: Serialize>(encoding: Encoding, value: &T) -> Vec<u8> {
    match encoding {
        // Serialising our own frame types to JSON cannot fail: every map key is a string.
        Encoding::Json => serde_json::to_vec(value).expect("frames serialise to JSON"),
        // `to_vec_named` keeps field names, so MessagePack maps mirror the JSON objects and the
        // internally tagged enums decode back.
        Encoding::MessagePack => rmp_serde::to_vec_named(value).expect("frames serialise to MessagePack"),
    }
}

fn decode_typed<T: DeserializeOwned>(encoding: Encoding, bytes: &[u8]) -> Result<T, DecodeError> {
    let result = match encoding {
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Encoding::MessagePack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
    };
    result.map_err(|message| DecodeError::new(ErrorCode::MalformedFrame, message, None))
}

fn parse_document(encoding: Encoding, bytes: &[u8]) -> Result<Value, DecodeError> {
    match encoding {
        Encoding::Json => serde_json::from_slice(bytes)
            .map_err(|err| DecodeError::new(ErrorCode::MalformedFrame, format!("malformed JSON: {err}"), None)),
        Encoding::MessagePack => {
            let mut deserializer = rmp_serde::Deserializer::new(bytes);
            deserializer.set_max_depth(MAX_MESSAGEPACK_DEPTH);
            serde::Deserialize::deserialize(&mut deserializer).map_err(|err| {
                DecodeError::new(ErrorCode::MalformedFrame, format!("malformed MessagePack: {err}"), None)
            })
        }
    }
}

/// How deeply a MessagePack client frame may nest (frames use three levels). With rmp-serde's
/// default of 1,024, a frame of a few hundred nested arrays (600 bytes) overflowed a worker
/// thread's stack while it was parsed into a document, which aborts the whole node (seen in a
/// debug build; tests/tests/bad_input.rs sends such frames). serde_json stops at 128 itself.
const MAX_MESSAGEPACK_DEPTH: usize = 32;

#[cfg(test)]
mod tests;
