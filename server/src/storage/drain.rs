//! The drainer: one background task that uploads spooled objects, oldest first and
//! [`BATCH`] at a time (one per key, so a key's newest body lands last), deleting each only
//! once S3 accepted it. After a failure it waits (doubling from 250 ms up to `retry_max_ms`)
//! and tries the same objects again. The first upload S3 accepts closes the breaker, so new
//! objects go to S3 directly while the backlog drains behind them (a spool that had to take
//! every new object until it was empty would never empty under a load above the drain rate);
//! once the spool is empty it sleeps until something is spooled.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::watch;

use super::Core;
use super::spool::Entry;

const FIRST_RETRY: Duration = Duration::from_millis(250);
/// Uploads in flight at once.
const BATCH: usize = 16;

/// What one step of the drainer did.
enum Step {
    /// The spool is empty and the bucket exists.
    Idle,
    /// This many objects left the spool.
    Drained(u64),
    /// S3 or the spool directory failed; try again later.
    Failed(String),
}

/// Drains until `shutdown` turns true or its sender is dropped.
pub(super) async fn run(core: Arc<Core>, mut shutdown: watch::Receiver<bool>) {
    let left = core.spool.stats();
    if left.objects > 0 {
        tracing::info!(
            objects = left.objects,
            bytes = left.bytes,
            "uploading objects spooled by a previous run"
        );
    }
    let mut retry = FIRST_RETRY;
    let mut drained = 0u64;
    while !*shutdown.borrow() {
        match step(&core).await {
            Step::Idle => {
                core.close_breaker();
                if drained > 0 {
                    tracing::info!(
                        endpoint = %core.remote.endpoint(),
                        uploaded = drained,
                        "S3 is working; spool drained"
                    );
                }
                drained = 0;
                retry = FIRST_RETRY;
                tokio::select! {
                    () = core.wake.notified() => {}
                    _ = shutdown.changed() => break,
                }
            }
            Step::Drained(n) => {
                drained += n;
                retry = FIRST_RETRY;
            }
            Step::Failed(error) => {
                tracing::debug!(
                    error = %error,
                    retry_in_ms = retry.as_millis() as u64,
                    "spool upload failed; will retry"
                );
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    _ = shutdown.changed() => break,
                }
                retry = (retry * 2).min(core.retry_max);
            }
        }
    }
}

async fn step(core: &Core) -> Step {
    if !core.bucket_ready.load(Ordering::Acquire) {
        if let Err(e) = core.remote.ensure_bucket().await {
            core.trip(&e);
            return Step::Failed(e.to_string());
        }
        core.bucket_ready.store(true, Ordering::Release);
    }
    let batch = core.spool.oldest_distinct(BATCH);
    if batch.is_empty() {
        return Step::Idle;
    }
    let outcomes = join_all(batch.iter().map(|entry| upload(core, entry))).await;
    let mut drained = 0;
    let mut failure = None;
    for outcome in outcomes {
        match outcome {
            Ok(()) => drained += 1,
            Err(e) => failure = Some(e),
        }
    }
    if drained > 0 {
        core.close_breaker();
    }
    match failure {
        Some(error) if drained == 0 => Step::Failed(error),
        _ => Step::Drained(drained),
    }
}

/// Uploads one spooled object and deletes its file; `Ok` also when the object is gone
/// (moved aside as damaged, or already deleted).
async fn upload(core: &Core, entry: &Entry) -> Result<(), String> {
    let body = match core.spool.read(entry).await {
        Ok(Some(body)) => body,
        Ok(None) => return Ok(()),
        Err(super::StorageError::Damaged { path, reason }) => {
            let to = core
                .spool
                .quarantine(entry)
                .await
                .map_err(|e| e.to_string())?;
            tracing::error!(key = %entry.key, path = %path.display(), moved_to = %to.display(), reason = %reason, "damaged spool file moved aside; its object is lost");
            return Ok(());
        }
        Err(e) => return Err(e.to_string()),
    };
    if let Err(e) = core
        .remote
        .put(&entry.key, &body, &entry.content_type)
        .await
    {
        core.trip(&e);
        return Err(format!("{}: {e}", entry.key));
    }
    if let Err(e) = core.spool.remove(entry).await {
        // Uploaded; the worst outcome is the same bytes uploaded once more.
        tracing::warn!(error = %e, key = %entry.key, "cannot delete an uploaded spool file");
    }
    Ok(())
}
