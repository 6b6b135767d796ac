//! The `[media]` section of the configuration: where uploads are kept, how large they may be,
//! how fast one user may send them, how long links and unattached uploads live, and how images
//! are checked and thumbnailed. Checked once by [`MediaSettings::validate`], whose errors name
//! the key. S3 credentials are never part of it: they come from the environment.

use std::path::{Path, PathBuf};

use actors::limits::InvalidSetting;
use serde::{Deserialize, Serialize};

/// The largest upload S3's multipart API can take in parts of [`super::upload::PART_BYTES`]
/// (10,000 parts of 5 MiB).
const MAX_UPLOAD_BYTES: u64 = 10_000 * 5 * 1024 * 1024;

/// `[media]`: uploads on the client port (docs/MEDIA.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaSettings {
    /// Where the bytes go: `fs` (a directory of this host, the default) or `s3` (a bucket of
    /// S3 or an S3-compatible service; what every node of a cluster must use unless they share
    /// `dir` on a network file system).
    pub backend: String,
    /// The directory of the `fs` backend; empty: `<node.data_dir>/media`.
    pub dir: PathBuf,
    /// Largest upload, in bytes; a larger `Content-Length` is refused (413 `too_large`) before
    /// a byte of the body is read.
    pub max_bytes: u64,
    /// Bytes one user's uploads may hold at once (not yet collected), on all nodes together;
    /// an upload that would pass it is refused (413 `quota_exceeded`) before its body is read.
    pub quota_bytes: u64,
    /// Uploads one user may start per minute on one node (a token bucket: bursts of this many,
    /// then one every `60 / uploads_per_minute` seconds); beyond it 429 `rate_limited`.
    pub uploads_per_minute: u32,
    /// Uploads one user may have in progress at once on one node; beyond it 429 `rate_limited`.
    pub concurrent_uploads_per_user: u32,
    /// How long a signed download link lives: from `url_ttl_s` to twice that (expiries are
    /// rounded up to whole windows so a cache in front sees one URL per window).
    pub url_ttl_s: u64,
    /// An upload neither attached to a message nor finished this long after it started is
    /// collected. Longer than any upload takes: a record still uploading when it passes is
    /// collected under the upload.
    pub orphan_ttl_s: u64,
    /// An upload whose client sends nothing for this long is aborted.
    pub upload_idle_timeout_ms: u64,
    /// Largest image, in pixels (width × height read from its header), that is decoded for a
    /// thumbnail; a larger one is refused (422 `image_too_large`) without being decoded.
    /// Decoding holds up to 8 bytes per pixel (16-bit images with alpha), 4 for most images.
    pub max_image_pixels: u64,
    /// Thumbnails fit in a square of this many pixels (smaller images keep their size).
    pub thumbnail_max_px: u32,
    /// Images decoded at once on this node (on the blocking pool), each holding its file and
    /// its pixels in memory.
    pub thumbnail_concurrency: usize,
    /// How often the collector looks for uploads to delete when it found none (a full page of
    /// them makes it look again at once).
    pub collect_poll_ms: u64,
    /// One node at a time collects, whichever holds the store's `media` lease; how long the
    /// lease lasts without renewal.
    pub lease_ms: u64,
    /// `[media.s3]`: the bucket of the `s3` backend.
    pub s3: S3Settings,
}

impl Default for MediaSettings {
    fn default() -> Self {
        MediaSettings {
            backend: "fs".into(),
            dir: PathBuf::new(),
            max_bytes: 25 * 1024 * 1024,
            quota_bytes: 1024 * 1024 * 1024,
            uploads_per_minute: 30,
            concurrent_uploads_per_user: 4,
            url_ttl_s: 600,
            orphan_ttl_s: 86_400,
            upload_idle_timeout_ms: 30_000,
            max_image_pixels: 50_000_000,
            thumbnail_max_px: 320,
            thumbnail_concurrency: 2,
            collect_poll_ms: 60_000,
            lease_ms: 30_000,
            s3: S3Settings::default(),
        }
    }
}

/// `[media.s3]`. The credentials come from the environment only (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, or the instance's role), as object_store's
/// `AmazonS3Builder::from_env` reads them; the values here override the environment's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Settings {
    /// The bucket; required with `backend = "s3"`.
    pub bucket: String,
    /// The service's URL for an S3-compatible service (MinIO, R2, …), e.g.
    /// `https://minio.internal:9000`; empty: AWS.
    pub endpoint: String,
    pub region: String,
    /// Whether `endpoint` may be plain `http://` (a service on a private network).
    pub allow_http: bool,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings { bucket: String::new(), endpoint: String::new(), region: "us-east-1".into(), allow_http: false }
    }
}

impl MediaSettings {
    /// The directory of the `fs` backend: `dir`, or `<data_dir>/media` when it is empty.
    pub fn fs_dir(&self, data_dir: &Path) -> PathBuf {
        match self.dir.as_os_str().is_empty() {
            true => data_dir.join("media"),
            false => self.dir.clone(),
        }
    }

    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        match self.backend.as_str() {
            "fs" => {}
            "s3" => {
                if self.s3.bucket.is_empty() {
                    return Err(InvalidSetting::new("media.s3.bucket", "is needed with media.backend = \"s3\""));
                }
                let endpoint = &self.s3.endpoint;
                if endpoint.starts_with("http://") && !self.s3.allow_http {
                    return Err(InvalidSetting::new(
                        "media.s3.endpoint",
                        "is plain http://; use https:// or set media.s3.allow_http = true",
                    ));
                }
                if !(endpoint.is_empty() || endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    return Err(InvalidSetting::new(
                        "media.s3.endpoint",
                        "expected an https:// (or http://) URL, or nothing for AWS",
                    ));
                }
                if self.s3.region.is_empty() {
                    return Err(InvalidSetting::new("media.s3.region", "must not be empty"));
                }
            }
            other => {
                return Err(InvalidSetting::new(
                    "media.backend",
                    format!("unknown backend `{other}`; expected `fs` or `s3`"),
                ));
            }
        }
        InvalidSetting::first_zero(&[
            ("media.max_bytes", self.max_bytes),
            ("media.quota_bytes", self.quota_bytes),
            ("media.uploads_per_minute", self.uploads_per_minute.into()),
            ("media.concurrent_uploads_per_user", self.concurrent_uploads_per_user.into()),
            ("media.url_ttl_s", self.url_ttl_s),
            ("media.orphan_ttl_s", self.orphan_ttl_s),
            ("media.upload_idle_timeout_ms", self.upload_idle_timeout_ms),
            ("media.max_image_pixels", self.max_image_pixels),
            ("media.thumbnail_concurrency", self.thumbnail_concurrency as u64),
            ("media.collect_poll_ms", self.collect_poll_ms),
        ])?;
        if self.max_bytes > MAX_UPLOAD_BYTES {
            return Err(InvalidSetting::new(
                "media.max_bytes",
                format!("must be at most {MAX_UPLOAD_BYTES} (10,000 parts of 5 MiB)"),
            ));
        }
        if self.uploads_per_minute > 10_000 {
            return Err(InvalidSetting::new("media.uploads_per_minute", "must be at most 10000"));
        }
        if self.url_ttl_s > 7 * 86_400 {
            return Err(InvalidSetting::new("media.url_ttl_s", "must be at most 604800 (a week)"));
        }
        if !(16..=4096).contains(&self.thumbnail_max_px) {
            return Err(InvalidSetting::new("media.thumbnail_max_px", "must be 16 to 4096"));
        }
        if self.thumbnail_concurrency > 256 {
            return Err(InvalidSetting::new("media.thumbnail_concurrency", "must be at most 256"));
        }
        if self.lease_ms < 1_000 {
            return Err(InvalidSetting::new("media.lease_ms", "must be at least 1000"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(settings: MediaSettings) -> &'static str {
        settings.validate().unwrap_err().key
    }

    #[test]
    fn the_defaults_are_valid() {
        MediaSettings::default().validate().unwrap();
        assert_eq!(MediaSettings::default().fs_dir(Path::new("data")), PathBuf::from("data/media"));
    }

    #[test]
    fn invalid_values_name_their_key() {
        let mut s3 = MediaSettings { backend: "s3".into(), ..Default::default() };
        assert_eq!(refused(s3.clone()), "media.s3.bucket");
        s3.s3.bucket = "uploads".into();
        s3.validate().unwrap();
        s3.s3.endpoint = "http://minio:9000".into();
        assert_eq!(refused(s3.clone()), "media.s3.endpoint");
        s3.s3.allow_http = true;
        s3.validate().unwrap();
        assert_eq!(refused(MediaSettings { backend: "gcs".into(), ..Default::default() }), "media.backend");
        assert_eq!(refused(MediaSettings { max_bytes: 0, ..Default::default() }), "media.max_bytes");
        assert_eq!(refused(MediaSettings { orphan_ttl_s: 0, ..Default::default() }), "media.orphan_ttl_s");
        assert_eq!(refused(MediaSettings { thumbnail_max_px: 8, ..Default::default() }), "media.thumbnail_max_px");
        assert_eq!(refused(MediaSettings { lease_ms: 10, ..Default::default() }), "media.lease_ms");
    }
}
