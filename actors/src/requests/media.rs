//! Media in messages: the attachments a `send` names, and `media_url`.
//!
//! A sender names uploads by id only. What a message says of each file (name, type, size,
//! image and thumbnail sizes) is filled in by the store from the upload's record, in the
//! append's transaction, where it also decides whether the upload may be attached (the
//! sender's, ready, not attached elsewhere): so a client cannot make a file look like something
//! else, and nothing is read twice. Only the shape of the list is checked here. Downloads go
//! through signed links (`crate::media`) that this module hands to the uploader or to a member
//! of the room where the file was posted.

use protocol::{Attachment, ErrorCode, ReqId, ServerFrame};

use super::{error_frame, store_error_frame, Ctx};
use crate::limits::MAX_ATTACHMENTS;
use crate::media::Variant;
use crate::names::{self, now_ms};
use crate::store::{MediaRecord, MediaState};

/// The attachments of a `send` naming `ids` (each a media id, at most [`MAX_ATTACHMENTS`], none
/// twice), for the store to fill in, or the error reply.
pub fn attachments(req: ReqId, ids: Vec<String>) -> Result<Vec<Attachment>, Box<ServerFrame>> {
    let refuse = |message: String| Box::new(error_frame(Some(req), ErrorCode::InvalidField, message));
    if ids.len() > MAX_ATTACHMENTS {
        return Err(refuse(format!("a message carries at most {MAX_ATTACHMENTS} attachments")));
    }
    for (i, id) in ids.iter().enumerate() {
        if let Err(message) = names::validate_media_id(id) {
            return Err(refuse(format!("`attachments`: {message}")));
        }
        if ids[..i].contains(id) {
            return Err(refuse(format!("`attachments` names `{id}` twice")));
        }
    }
    Ok(ids.into_iter().map(|media| Attachment { media, ..Attachment::default() }).collect())
}

/// `media_url`: signed links to a media file and its thumbnail, for its uploader or a member of
/// the room it was posted in. Everyone else is told it does not exist, so an id tells an
/// outsider nothing.
pub async fn media_url(ctx: &Ctx, req: ReqId, media: String) -> ServerFrame {
    let Some(links) = ctx.hub.media_links() else {
        return error_frame(Some(req), ErrorCode::Unavailable, "this node serves no media");
    };
    if let Err(message) = names::validate_media_id(&media) {
        return error_frame(Some(req), ErrorCode::InvalidField, message);
    }
    let record = match ctx.hub.store().media(&media).await {
        Ok(record) => record,
        Err(err) => return store_error_frame(&ctx.hub, Some(req), err),
    };
    let visible = match &record {
        Some(record) => match may_see(ctx, req, record).await {
            Ok(visible) => visible,
            Err(frame) => return frame,
        },
        None => false,
    };
    let Some(record) = record.filter(|_| visible) else {
        return error_frame(Some(req), ErrorCode::NoSuchMedia, format!("no media `{media}` you may see"));
    };
    let now = now_ms();
    let (url, expires_at) = links.sign(&record.id, Variant::File, now);
    let thumbnail_url = record.thumbnail.map(|_| links.sign(&record.id, Variant::Thumbnail, now).0);
    ServerFrame::MediaUrl { req, media, url, thumbnail_url, expires_at }
}

/// Whether the asking user may download `record`: their own upload, finished; or one posted
/// in a room they are a member of now.
async fn may_see(ctx: &Ctx, req: ReqId, record: &MediaRecord) -> Result<bool, ServerFrame> {
    match &record.state {
        MediaState::Ready => Ok(record.owner == ctx.user),
        MediaState::Attached { .. } if record.owner == ctx.user => Ok(true),
        MediaState::Attached { room, .. } => {
            ctx.hub.store().is_member(room, &ctx.user).await.map_err(|err| store_error_frame(&ctx.hub, Some(req), err))
        }
        MediaState::Uploading | MediaState::Doomed => Ok(false),
    }
}
