//! Recovery and the other replicas: what a start, a shutdown, a gone replica or a lost
//! notice left in the queue goes back to the dispatcher, and what the other replicas say
//! about jobs (see [`crate::cluster`]) reaches this one's dispatcher and consumers.

use std::sync::Arc;

use super::{Jobs, store};
use crate::cluster::{Event, Peer};
use crate::db::{DbError, now_ms};
use crate::dispatch::LostReason;
use infermine_protocol::JobId;
use store::QueueRow;

impl Jobs {
    /// Re-queues what a previous run left behind: the leases of replicas that are gone (on
    /// SQLite, every lease but this run's: none yet) and queued jobs. Returns how many jobs
    /// were queued.
    pub async fn recover(&self) -> Result<usize, DbError> {
        let released = self.release_gone_replicas().await?.len();
        let queued = store::queued(&self.db).await?;
        let count = queued.len();
        for row in queued {
            self.live.add(row.id, row.api_key_id);
            self.enqueue_row(row);
        }
        if count > 0 {
            tracing::info!(
                queued = count,
                released_leases = released,
                "recovered jobs from the database"
            );
        }
        Ok(count)
    }

    /// Shutdown, once the drain deadline has passed: every job still leased to this
    /// coordinator's agents goes back to the queue, for the next start or another replica
    /// (told at once). Returns how many.
    pub async fn release_inflight(&self) -> Result<usize, DbError> {
        let leased: Vec<JobId> = self.inflight().keys().copied().collect();
        let released = store::release_leases(&self.db, &leased).await?;
        if !released.is_empty() {
            tracing::info!(
                released = released.len(),
                "requeued jobs that did not finish before the drain deadline"
            );
            let events = released.iter().map(|row| Event::Queued { job: row.id });
            self.cluster.publish_now(&self.db, events.collect()).await;
        }
        Ok(released.len())
    }

    /// Puts the leases of replicas that stopped beating back in the queue, offers them to this
    /// replica's slots and tells the others. Returns them.
    pub async fn release_gone_replicas(&self) -> Result<Vec<QueueRow>, DbError> {
        let released = store::release_gone_replicas(
            &self.db,
            self.cluster.id(),
            self.cluster.alive_since_ms(),
        )
        .await?;
        if !released.is_empty() {
            tracing::warn!(
                released = released.len(),
                "requeued the leases of a coordinator replica that is gone"
            );
        }
        for row in &released {
            self.queued_here(row.clone());
        }
        Ok(released)
    }

    /// A job went (back) to the queue on this replica: offer it to local slots, tell the
    /// others.
    pub(super) fn queued_here(&self, row: QueueRow) {
        let job = row.id;
        self.enqueue_row(row);
        self.cluster.publish(Event::Queued { job });
    }

    /// Safety net behind the in-memory queue: offers the dispatcher every job the database
    /// holds as queued for a while (the dispatcher ignores those it already has). Covers a
    /// write whose outcome was lost, or another replica's notice, so no queued job can be
    /// forgotten.
    pub async fn reoffer_queued(&self) -> Result<usize, DbError> {
        self.reoffer_queued_since(now_ms() - 30_000).await
    }

    async fn reoffer_queued_since(&self, cutoff_ms: i64) -> Result<usize, DbError> {
        let rows = store::stale_queued(&self.db, cutoff_ms, 10_000).await?;
        let count = rows.len();
        for row in rows {
            self.live.add(row.id, row.api_key_id);
            self.enqueue_row(row);
        }
        Ok(count)
    }

    /// Safety net behind the dispatcher's timers: requeues leases long past their deadline.
    pub async fn sweep_overdue(&self) -> Result<(), DbError> {
        let cutoff = now_ms() - i64::try_from(self.limits.lease_grace.as_millis()).unwrap_or(0) * 2;
        for job in store::overdue_leases(&self.db, cutoff).await? {
            tracing::warn!(%job, "lease overdue without a dispatcher timer; requeueing");
            let model = self.inflight().remove(&job).map(|f| f.model);
            let end = store::end_attempt(
                &self.db,
                job,
                None,
                LostReason::LeaseExpired.as_str(),
                Some(self.limits.max_attempts),
            )
            .await?;
            self.settle(job, end, model.as_deref());
        }
        Ok(())
    }
}

/// What the other replicas say (see [`crate::cluster`]).
impl Peer for Jobs {
    fn event(self: &Arc<Self>, event: Event) {
        match event {
            Event::Queued { job } => {
                let jobs = Arc::clone(self);
                tokio::spawn(async move {
                    match store::queued_one(&jobs.db, job).await {
                        Ok(Some(row)) => jobs.enqueue_row(row),
                        // Taken already, or final: nothing to offer.
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(%job, error = %e, "cannot read a job another replica queued; the queue re-read will offer it")
                        }
                    }
                });
            }
            Event::Taken { job } => self.dispatcher.forget(job),
            Event::Final { job } => {
                self.dispatcher.forget(job);
                self.live.finish(job, None);
            }
            Event::Cancelled { job } => self.cancelled(job),
            Event::Token {
                job,
                attempt,
                index,
                text,
            } => {
                self.live.token(job, attempt, index, text);
            }
        }
    }

    fn resync(self: &Arc<Self>) {
        let jobs = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = jobs.reoffer_queued_since(now_ms()).await {
                tracing::warn!(error = %e, "cannot re-read the queue; the periodic re-read will");
            }
        });
    }
}
