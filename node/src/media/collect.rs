//! The collector: deletes the objects of uploads nothing uses, then their records. One node of
//! the cluster collects at a time, whichever holds the store's `media` lease
//! (`actors::lease`); every node runs the task and takes over when the holder dies.
//!
//! Each pass asks the store for garbage (`Store::media_garbage`), which first dooms the records
//! still `Uploading` or `Ready` (unattached) `media.orphan_ttl_s` after they were created, and
//! returns up to [`PAGE`] doomed ones (those include what deleting a message or an account
//! doomed). Their objects, `media/{id}` and `thumb/{id}`, are deleted (one already gone is
//! fine), then the records whose objects are gone are dropped (`Store::drop_media`); a record
//! whose delete failed stays doomed and comes back in the next pass. A full page makes the
//! collector go again at once, anything else waits `media.collect_poll_ms`.
//!
//! On the `fs` backend, an upload cut off by a crash leaves its staging file (`media/{id}#n`,
//! the object store's name for a multipart upload not yet complete) that no record names. Every
//! [`SWEEP_EVERY`] quiet passes the collector deletes staging files older than
//! `media.orphan_ttl_s`: no upload lasts that long, so none of them is being written (by this
//! node or another that shares the directory).

use std::sync::Arc;
use std::time::Duration;

use actors::hub::Hub;
use actors::lease::{run_passes, Lease};
use actors::metrics::Metrics;
use actors::names::now_ms;
use actors::supervise::spawn_restarting;
use futures_util::{stream, StreamExt};
use store::StoreResult;
use tracing::{info, warn};

use super::{objects, MediaService};

/// The lease that decides which node collects.
const LEASE: &str = "media";

/// Records handled per pass.
pub const PAGE: u32 = 100;

/// Quiet passes between two sweeps of the `fs` backend's staging files.
const SWEEP_EVERY: u32 = 10;

/// Objects deleted at once.
const DELETES_IN_FLIGHT: usize = 8;

/// Start this node's collector; it ends when the hub shuts down (and is restarted if it panics).
pub fn start(hub: &Arc<Hub>, media: Arc<MediaService>) {
    let collector = Arc::new(Collector {
        hub: hub.clone(),
        lease: Lease::new(LEASE, media.settings.lease_ms),
        media,
        quiet_passes: Default::default(),
    });
    spawn_restarting("media: collector", move || {
        let collector = collector.clone();
        async move { collector.run().await }
    });
}

struct Collector {
    hub: Arc<Hub>,
    media: Arc<MediaService>,
    lease: Lease,
    /// Quiet passes since the last sweep of staging files.
    quiet_passes: std::sync::atomic::AtomicU32,
}

impl Collector {
    async fn run(self: Arc<Self>) {
        let poll = Duration::from_millis(self.media.settings.collect_poll_ms);
        run_passes(&self.hub, poll, "media: collector", || self.pass()).await;
    }

    /// One pass; whether it made progress on a full page (then there may be more at once).
    async fn pass(&self) -> StoreResult<bool> {
        if !self.lease.hold(self.hub.store().as_ref(), self.hub.node()).await? {
            return Ok(false);
        }
        let stale_before_ms = now_ms().saturating_sub(self.media.settings.orphan_ttl_s.saturating_mul(1000));
        let garbage = self.hub.store().media_garbage(stale_before_ms, PAGE).await?;
        let busy = collect(&self.hub, &self.media, garbage.into_iter().map(|record| record.id).collect(), PAGE).await?;
        let quiet = self.quiet_passes.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if let (false, Some(dir)) = (busy, &self.media.fs_dir) {
            if quiet >= SWEEP_EVERY {
                self.quiet_passes.store(0, std::sync::atomic::Ordering::Relaxed);
                let (dir, age) = (dir.clone(), Duration::from_secs(self.media.settings.orphan_ttl_s));
                match tokio::task::spawn_blocking(move || sweep_staging(&dir, age)).await {
                    Ok(0) | Err(_) => {}
                    Ok(swept) => info!(swept, "media: deleted the staging files of uploads a crash cut off"),
                }
            }
        }
        Ok(busy)
    }
}

/// Delete the objects of doomed records `ids` (a page of at most `page`), then the records
/// whose objects are gone. Whether the page was full and something was collected.
pub async fn collect(hub: &Hub, media: &MediaService, ids: Vec<String>, page: u32) -> StoreResult<bool> {
    if ids.is_empty() {
        return Ok(false);
    }
    let full = ids.len() >= page as usize;
    let deleted: Vec<String> = stream::iter(ids)
        .map(|id| async move {
            match objects::delete_both(media.objects.as_ref(), &id).await {
                Ok(()) => Some(id),
                Err(err) => {
                    warn!(media = id, error = %err, "media: collector could not delete the objects; trying again later");
                    None
                }
            }
        })
        .buffer_unordered(DELETES_IN_FLIGHT)
        .filter_map(|deleted| async move { deleted })
        .collect()
        .await;
    if deleted.is_empty() {
        return Ok(false);
    }
    hub.store().drop_media(&deleted).await?;
    Metrics::add(&hub.metrics().media_collected_total, deleted.len() as u64);
    info!(collected = deleted.len(), "media: collected unused uploads");
    Ok(full)
}

/// Delete the staging files (names with `#`) under `dir` last written more than `age` ago; how
/// many. Errors (a file gone meanwhile, a directory not there yet) only skip that file.
pub fn sweep_staging(dir: &std::path::Path, age: Duration) -> usize {
    let mut swept = 0;
    for sub in ["media", "thumb"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else { continue };
        for entry in entries.flatten() {
            let staging = entry.file_name().to_string_lossy().contains('#');
            let old = entry
                .metadata()
                .and_then(|meta| meta.modified())
                .is_ok_and(|written| written.elapsed().is_ok_and(|elapsed| elapsed > age));
            if staging && old && std::fs::remove_file(entry.path()).is_ok() {
                swept += 1;
            }
        }
    }
    swept
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    #[test]
    fn only_old_staging_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("media")).unwrap();
        let write = |name: &str, age_s: u64| {
            let path = dir.path().join("media").join(name);
            let file = std::fs::File::create(&path).unwrap();
            file.set_modified(SystemTime::now() - Duration::from_secs(age_s)).unwrap();
        };
        write("md_done", 3_600);
        write("md_dead#1", 3_600);
        write("md_writing#2", 0);
        assert_eq!(sweep_staging(dir.path(), Duration::from_secs(60)), 1);
        let mut left: Vec<_> = std::fs::read_dir(dir.path().join("media"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["md_done", "md_writing#2"]);
        assert_eq!(sweep_staging(&dir.path().join("absent"), Duration::ZERO), 0);
    }
}
