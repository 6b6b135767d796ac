//! The object store that holds the bytes of uploads: a directory of this host (`fs`, the
//! default) or a bucket of S3 or an S3-compatible service (`s3`), both behind object_store's
//! `ObjectStore`, so the rest of the media service does not know which. Each upload is one
//! object at `media/{id}` and, for an image, its thumbnail at `thumb/{id}`; the store's media
//! record is the truth about them (an object without a record is never served, and the
//! collector deletes both objects before it forgets the record).

use std::path::Path as FsPath;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::settings::MediaSettings;

/// Open the configured backend; `data_dir` is where the `fs` backend's default directory is.
/// The error says what is wrong, naming the key.
pub fn open(settings: &MediaSettings, data_dir: &FsPath) -> Result<Arc<dyn ObjectStore>, String> {
    match settings.backend.as_str() {
        "s3" => {
            let s3 = &settings.s3;
            // Credentials (and anything not set here) from the environment only.
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(&s3.bucket)
                .with_region(&s3.region)
                .with_allow_http(s3.allow_http);
            if !s3.endpoint.is_empty() {
                builder = builder.with_endpoint(&s3.endpoint);
            }
            let store = builder.build().map_err(|err| format!("media.s3: {err}"))?;
            Ok(Arc::new(store))
        }
        _ => {
            let dir = settings.fs_dir(data_dir);
            std::fs::create_dir_all(&dir).map_err(|err| format!("media.dir {}: {err}", dir.display()))?;
            let store = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|err| format!("media.dir {}: {err}", dir.display()))?
                // Written means on disk, as with S3: a record is `Ready` only once its file is.
                .with_fsync(true);
            Ok(Arc::new(store))
        }
    }
}

/// Where the uploaded bytes of media `id` are.
pub fn file_key(id: &str) -> Path {
    Path::from(format!("media/{id}"))
}

/// Where the thumbnail of media `id` is, if it has one.
pub fn thumb_key(id: &str) -> Path {
    Path::from(format!("thumb/{id}"))
}

/// Delete both objects of media `id`; one that is not there counts as deleted. `Err` when
/// either could not be deleted (then the record must stay, so that the collector tries again).
pub async fn delete_both(objects: &dyn ObjectStore, id: &str) -> Result<(), object_store::Error> {
    for key in [file_key(id), thumb_key(id)] {
        match objects.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use object_store::{PutPayload, WriteMultipart};

    use super::*;

    #[tokio::test]
    async fn the_fs_backend_writes_in_parts_reads_ranges_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let settings = MediaSettings { dir: dir.path().join("m"), ..Default::default() };
        let objects = open(&settings, dir.path()).unwrap();
        let key = file_key("md_abc");
        let mut writer = WriteMultipart::new_with_chunk_size(objects.put_multipart(&key).await.unwrap(), 4);
        for chunk in [&b"hello "[..], b"wor", b"ld"] {
            writer.wait_for_capacity(2).await.unwrap();
            writer.write(chunk);
        }
        writer.finish().await.unwrap();
        assert_eq!(&objects.get(&key).await.unwrap().bytes().await.unwrap()[..], b"hello world");
        assert_eq!(&objects.get_range(&key, 6..9).await.unwrap()[..], b"wor");
        assert!(dir.path().join("m/media/md_abc").exists());
        objects.put(&thumb_key("md_abc"), PutPayload::from_static(b"t")).await.unwrap();
        delete_both(objects.as_ref(), "md_abc").await.unwrap();
        assert!(matches!(objects.get(&key).await, Err(object_store::Error::NotFound { .. })));
        // Gone already: still fine.
        delete_both(objects.as_ref(), "md_abc").await.unwrap();
    }

    #[tokio::test]
    async fn an_aborted_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let objects = open(&MediaSettings::default(), dir.path()).unwrap();
        let key = file_key("md_gone");
        let mut writer = WriteMultipart::new_with_chunk_size(objects.put_multipart(&key).await.unwrap(), 4);
        writer.write(b"partial body");
        writer.abort().await.unwrap();
        assert!(matches!(objects.get(&key).await, Err(object_store::Error::NotFound { .. })));
        let left: Vec<_> = walk(&dir.path().join("media"));
        assert!(left.is_empty(), "{left:?}");
    }

    fn walk(dir: &FsPath) -> Vec<std::path::PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        entries
            .flatten()
            .flat_map(|entry| match entry.path().is_dir() {
                true => walk(&entry.path()),
                false => vec![entry.path()],
            })
            .collect()
    }
}
