//! What the store keeps of uploaded media: one record per upload, whose state says whether its
//! bytes may be attached, downloaded or collected. The bytes themselves live in an object store
//! (`node/src/media`); the record is the truth about them.
//!
//! A record's life: [`MediaState::Uploading`] from before the first byte is written (so the
//! owner's quota counts it at once and two parallel uploads cannot both squeeze under it), then
//! [`MediaState::Ready`] when the bytes are stored and checked, then
//! [`MediaState::Attached`] by the append that posts it (in that append's transaction, so a
//! message never names media that is not its own), and [`MediaState::Doomed`] when its message
//! is deleted or its owner's account is, or when it stayed unfinished or unattached too long.
//! The collector deletes a doomed record's objects and then the record
//! ([`crate::Store::media_garbage`], [`crate::Store::drop_media`]).

/// Where an upload is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaState {
    /// Reserved; the bytes are being written. Nothing may attach or download it.
    Uploading,
    /// Stored and checked; its owner may attach it to one message.
    Ready,
    /// Posted in message `seq` of `room`: members of that room may download it.
    Attached { room: String, seq: u64 },
    /// To be deleted from the object store, then forgotten.
    Doomed,
}

/// One upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRecord {
    /// Random, never reused: the object's key derives from it.
    pub id: String,
    /// The user who uploaded it.
    pub owner: String,
    /// The file name given at upload.
    pub name: String,
    /// Sniffed from the bytes; empty while uploading.
    pub content_type: String,
    /// Bytes (the declared length while uploading; counted against the owner's quota).
    pub size: u64,
    /// Hex SHA-256 of the bytes (the HTTP `ETag`); empty while uploading.
    pub sha256: String,
    /// For an image: its size in pixels.
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// For an image the node made a thumbnail of: the thumbnail's size in pixels.
    pub thumbnail: Option<(u32, u32)>,
    /// When the upload started (ms since the Unix epoch).
    pub created_ms: u64,
    pub state: MediaState,
}

impl MediaRecord {
    /// The attachment a message carries for this media.
    pub fn attachment(&self) -> protocol::Attachment {
        protocol::Attachment {
            media: self.id.clone(),
            name: self.name.clone(),
            content_type: self.content_type.clone(),
            size: self.size,
            width: self.width,
            height: self.height,
            thumbnail: self.thumbnail.map(|(width, height)| protocol::Thumbnail { width, height }),
        }
    }
}

/// The record `found` under `id` (if any), if `from` may attach it now: their own upload, ready.
/// The rule both backends apply inside the append's transaction.
pub(crate) fn attachable(found: Option<MediaRecord>, id: &str, from: &str) -> Result<MediaRecord, crate::StoreError> {
    match found {
        // Another user's upload is "none of yours", attached or not: nothing is learnt of it.
        Some(record) if record.owner == from => match record.state {
            MediaState::Ready => Ok(record),
            MediaState::Attached { .. } => Err(crate::StoreError::MediaInUse(id.to_owned())),
            MediaState::Uploading | MediaState::Doomed => Err(crate::StoreError::NoSuchMedia(id.to_owned())),
        },
        _ => Err(crate::StoreError::NoSuchMedia(id.to_owned())),
    }
}
