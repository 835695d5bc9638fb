//! Consumers long-polling for a job (`GET /v1/jobs/{id}?wait=`) park here until the job
//! reaches a final state. A completion hands its view to the waiters directly, so answering
//! them costs no database read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use infermine_protocol::JobId;
use tokio::sync::watch;

use super::api::JobView;

/// What a parked consumer learns: the final view when the lifecycle has it at hand, or just
/// that the job changed (then the waiter reads it).
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Pending,
    Final(Option<Arc<JobView>>),
}

#[derive(Debug, Default)]
pub(crate) struct Waiters {
    parked: Mutex<HashMap<JobId, watch::Sender<Outcome>>>,
}

impl Waiters {
    fn parked(&self) -> MutexGuard<'_, HashMap<JobId, watch::Sender<Outcome>>> {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers interest in `job`. Register before reading the job's state, so a change
    /// between the read and the wait is not missed.
    pub(crate) fn watch(&self, job: JobId) -> watch::Receiver<Outcome> {
        self.parked()
            .entry(job)
            .or_insert_with(|| watch::channel(Outcome::Pending).0)
            .subscribe()
    }

    /// Drops the registration when its last waiter gave up.
    pub(crate) fn forget(&self, job: JobId, receiver: watch::Receiver<Outcome>) {
        drop(receiver);
        let mut parked = self.parked();
        if parked.get(&job).is_some_and(|tx| tx.receiver_count() == 0) {
            parked.remove(&job);
        }
    }

    /// Tells everyone waiting for `job` that it is final, with its view when known.
    pub(crate) fn finish(&self, job: JobId, view: Option<JobView>) {
        if let Some(tx) = self.parked().remove(&job) {
            let _ = tx.send(Outcome::Final(view.map(Arc::new)));
        }
    }
}
