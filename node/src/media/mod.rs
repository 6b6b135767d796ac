//! The media service: files that users upload to the client port, kept in an object store
//! (a directory of the host by default, S3 or an S3-compatible service for clusters),
//! attached to messages by id, downloaded through short-lived signed links, and collected
//! when nothing uses them (docs/MEDIA.md).
//!
//! Routes, on the client port (`crate::http` hands them here):
//!
//! - `POST /media?name=<file name>` with `Authorization: Bearer <token>` and the file as the
//!   body: `upload.rs`. Answers 201 with the attachment (`protocol::Attachment` as JSON).
//! - `GET`/`HEAD` `/media/{id}?e=…&s=…` and `/media/{id}/thumb?e=…&s=…`, links signed by
//!   `actors::media::MediaLinks` (a `media_url` request makes them): `download.rs`.
//!
//! Errors are JSON, `{"error": "<code>", "message": "…"}`, with the status saying the class
//! (`reply.rs` lists them). The store's media record is the truth about an upload: it is
//! reserved before a byte is written (so the quota holds across parallel uploads and nodes)
//! and finished only when the bytes are stored and checked; any failure in between deletes what
//! was written and the record, and what a crash leaves behind the collector (`collect.rs`)
//! deletes after `media.orphan_ttl_s`.
//!
//! The other modules: `settings.rs` (`[media]`), `objects.rs` (the object store and its keys),
//! `sniff.rs` (the type from the bytes), `thumbnail.rs` (checking images, making thumbnails),
//! `throttle.rs` (uploads per user: rate and concurrency).

pub mod collect;
pub mod download;
pub mod objects;
pub mod reply;
pub mod settings;
pub mod sniff;
pub mod throttle;
pub mod thumbnail;
pub mod upload;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actors::hub::Hub;
use object_store::ObjectStore;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

pub use self::settings::{MediaSettings, S3Settings};
use crate::request::Request;

/// One node's media service: the object store, the settings, and what bounds the uploads
/// this node takes.
pub struct MediaService {
    pub settings: MediaSettings,
    pub objects: Arc<dyn ObjectStore>,
    /// Uploads per user: rate and concurrency.
    pub(crate) throttle: throttle::Throttle,
    /// Images being decoded at once (`media.thumbnail_concurrency`).
    pub(crate) thumbnails: Semaphore,
    /// The `fs` backend's directory, where the collector also sweeps the staging files of
    /// uploads a crash cut off (`collect::sweep_staging`).
    pub fs_dir: Option<PathBuf>,
}

impl MediaService {
    /// Open the configured object store (creating the `fs` backend's directory under
    /// `data_dir` if needed). The error names the setting that is wrong.
    pub fn open(settings: &MediaSettings, data_dir: &Path) -> Result<MediaService, String> {
        let objects = objects::open(settings, data_dir)?;
        let mut service = MediaService::with_objects(settings.clone(), objects);
        service.fs_dir = (settings.backend == "fs").then(|| settings.fs_dir(data_dir));
        Ok(service)
    }

    /// The service over an object store opened elsewhere (tests: an in-memory one).
    pub fn with_objects(settings: MediaSettings, objects: Arc<dyn ObjectStore>) -> MediaService {
        MediaService {
            throttle: throttle::Throttle::new(settings.uploads_per_minute, settings.concurrent_uploads_per_user),
            thumbnails: Semaphore::new(settings.thumbnail_concurrency.max(1)),
            settings,
            objects,
            fs_dir: None,
        }
    }
}

/// Whether the client port's request for `path` is the media service's.
pub fn is_media_path(path: &str) -> bool {
    path == "/media" || path.starts_with("/media/")
}

/// Answer a request for a media path ([`is_media_path`]) on the client port.
pub async fn serve<S>(stream: &mut S, request: Request, hub: &Hub, media: &MediaService) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let head_only = request.method == "HEAD";
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/media") => upload::handle(stream, request, hub, media).await,
        ("GET" | "HEAD", path) if path != "/media" => download::handle(stream, &request, hub, media).await,
        (_, "/media") => {
            let refusal =
                reply::Refusal::new(405, "method_not_allowed", "upload with POST /media").header("Allow", "POST");
            reply::refuse(stream, &refusal, head_only).await
        }
        _ => {
            let refusal = reply::Refusal::new(405, "method_not_allowed", "download with GET or HEAD")
                .header("Allow", "GET, HEAD");
            reply::refuse(stream, &refusal, false).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_paths() {
        assert!(is_media_path("/media") && is_media_path("/media/md_x/thumb"));
        assert!(!is_media_path("/mediax") && !is_media_path("/app/media"));
    }
}
