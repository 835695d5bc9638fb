//! Consumers long-polling for a job (`GET /v1/jobs/{id}?wait=`) park here until the job
//! reaches a final state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use infermine_protocol::JobId;
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct Waiters {
    parked: Mutex<HashMap<JobId, Arc<Notify>>>,
}

impl Waiters {
    fn parked(&self) -> MutexGuard<'_, HashMap<JobId, Arc<Notify>>> {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers interest in `job`. Register before reading the job's state, so a change
    /// between the read and the wait is not missed.
    pub(crate) fn watch(&self, job: JobId) -> Arc<Notify> {
        Arc::clone(self.parked().entry(job).or_default())
    }

    /// Drops the registration when the last waiter gave up.
    pub(crate) fn forget(&self, job: JobId, notify: Arc<Notify>) {
        let mut parked = self.parked();
        // One reference in the map, one here: nobody else waits.
        if Arc::strong_count(&notify) <= 2 {
            parked.remove(&job);
        }
    }

    /// Wakes everyone waiting for `job`.
    pub(crate) fn wake(&self, job: JobId) {
        if let Some(notify) = self.parked().remove(&job) {
            notify.notify_waiters();
        }
    }
}
