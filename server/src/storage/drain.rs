//! The drainer: one background task that uploads spooled objects, oldest first, deleting each
//! only once S3 accepted it. After a failure it waits (doubling from 250 ms up to
//! `retry_max_ms`) and tries the same object again; once the spool is empty it closes the
//! breaker, so puts go to S3 directly again, and sleeps until something is spooled.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::Core;

const FIRST_RETRY: Duration = Duration::from_millis(250);

/// What one step of the drainer did.
enum Step {
    /// The spool is empty and the bucket exists.
    Idle,
    /// One object left the spool.
    Drained,
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
                if core.breaker_open.swap(false, Ordering::AcqRel) || drained > 0 {
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
            Step::Drained => {
                drained += 1;
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
    let Some(entry) = core.spool.oldest() else {
        return Step::Idle;
    };
    let body = match core.spool.read(&entry).await {
        Ok(Some(body)) => body,
        Ok(None) => return Step::Drained,
        Err(super::StorageError::Damaged { path, reason }) => {
            return match core.spool.quarantine(&entry).await {
                Ok(to) => {
                    tracing::error!(key = %entry.key, path = %path.display(), moved_to = %to.display(), reason = %reason, "damaged spool file moved aside; its object is lost");
                    Step::Drained
                }
                Err(e) => Step::Failed(e.to_string()),
            };
        }
        Err(e) => return Step::Failed(e.to_string()),
    };
    if let Err(e) = core
        .remote
        .put(&entry.key, &body, &entry.content_type)
        .await
    {
        core.trip(&e);
        return Step::Failed(format!("{}: {e}", entry.key));
    }
    match core.spool.remove(&entry).await {
        Ok(()) => Step::Drained,
        Err(e) => {
            // Uploaded; the worst outcome is the same bytes uploaded once more.
            tracing::warn!(error = %e, key = %entry.key, "cannot delete an uploaded spool file");
            Step::Drained
        }
    }
}
