//! Jobs not yet final, with their owner and a channel to the consumers long-polling them
//! (`GET /v1/jobs/{id}?wait=`). A completion hands its view straight to those consumers, so
//! the hot path answers them without reading the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use infermine_protocol::JobId;
use tokio::sync::watch;
use uuid::Uuid;

use super::api::JobView;

/// What a parked consumer learns: the final view when the lifecycle has it at hand, or just
/// that the job is final (then the consumer reads it).
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Pending,
    Final(Option<Arc<JobView>>),
}

#[derive(Debug)]
struct LiveJob {
    owner: Option<Uuid>,
    outcome: watch::Sender<Outcome>,
}

#[derive(Debug, Default)]
pub(crate) struct Live {
    jobs: Mutex<HashMap<JobId, LiveJob>>,
}

impl Live {
    fn jobs(&self) -> MutexGuard<'_, HashMap<JobId, LiveJob>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A job entered the queue (submitted, or recovered at start-up).
    pub(crate) fn add(&self, job: JobId, owner: Option<Uuid>) {
        self.jobs().entry(job).or_insert_with(|| LiveJob {
            owner,
            outcome: watch::channel(Outcome::Pending).0,
        });
    }

    /// Subscribes to a live job of `owner`; `None` when it is final already, or not theirs.
    pub(crate) fn watch(&self, job: JobId, owner: Uuid) -> Option<watch::Receiver<Outcome>> {
        self.jobs()
            .get(&job)
            .filter(|live| live.owner == Some(owner))
            .map(|live| live.outcome.subscribe())
    }

    /// The job is final: tell its waiters, with its view when known, and forget it.
    pub(crate) fn finish(&self, job: JobId, view: Option<JobView>) {
        if let Some(live) = self.jobs().remove(&job) {
            let _ = live.outcome.send(Outcome::Final(view.map(Arc::new)));
        }
    }
}
