//! Group commit for the hot path. Every job is written three times (submitted, assigned,
//! completed); one statement per write would make the database's round trip, not the work,
//! the limit (with SQLite each statement is a hop to its worker thread and back). Instead one
//! task collects the writes that are waiting and applies each kind as a single multi-row
//! statement, then answers every caller. Under light load a batch is one write, so nothing
//! waits for company; under heavy load hundreds share a round trip.

use super::store::{self, Completion, NewJob, NewLease};
use crate::db::{Db, DbError};
use tokio::sync::{mpsc, oneshot};

/// Most writes of one kind applied by one statement (well under both databases' limits on
/// bound parameters).
const MAX_BATCH: usize = 256;

/// Where a write's outcome goes.
type Reply<T> = oneshot::Sender<Result<T, DbError>>;

enum Op {
    Insert(NewJob, Reply<()>),
    Assign(NewLease, Reply<Option<u32>>),
    Complete(Completion, Reply<bool>),
}

/// Handle to the writer task.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<Op>,
}

impl Writer {
    /// Starts the writer task on `db`; it ends when the last handle is dropped.
    pub(crate) fn spawn(db: Db) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(db, rx));
        Self { tx }
    }

    async fn call<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, DbError>>) -> Op,
    ) -> Result<T, DbError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(op(reply)).map_err(|_| DbError::Closed)?;
        answer.await.map_err(|_| DbError::Closed)?
    }

    /// Writes a new queued job.
    pub(crate) async fn insert(&self, job: NewJob) -> Result<(), DbError> {
        self.call(|reply| Op::Insert(job, reply)).await
    }

    /// queued → assigned; the attempt number, or `None` if the job left the queue.
    pub(crate) async fn assign(&self, lease: NewLease) -> Result<Option<u32>, DbError> {
        self.call(|reply| Op::Assign(lease, reply)).await
    }

    /// assigned (to the session) → completed; false if the lease was lost.
    pub(crate) async fn complete(&self, completion: Completion) -> Result<bool, DbError> {
        self.call(|reply| Op::Complete(completion, reply)).await
    }
}

async fn run(db: Db, mut rx: mpsc::UnboundedReceiver<Op>) {
    while let Some(first) = rx.recv().await {
        let mut inserts = Vec::new();
        let mut assigns = Vec::new();
        let mut completes = Vec::new();
        let mut next = Some(first);
        while let Some(op) = next {
            match op {
                Op::Insert(job, reply) => inserts.push((job, reply)),
                Op::Assign(lease, reply) => assigns.push((lease, reply)),
                Op::Complete(completion, reply) => completes.push((completion, reply)),
            }
            let full = inserts.len().max(assigns.len()).max(completes.len()) >= MAX_BATCH;
            next = if full { None } else { rx.try_recv().ok() };
        }
        // In this order, so a job's insert always lands before its assignment and its
        // assignment before its completion (callers wait for each before the next exists).
        write_inserts(&db, inserts).await;
        write_assigns(&db, assigns).await;
        write_completes(&db, completes).await;
    }
}

async fn write_inserts(db: &Db, batch: Vec<(NewJob, Reply<()>)>) {
    if batch.is_empty() {
        return;
    }
    let (jobs, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    let outcome = store::insert_many(db, &jobs).await;
    answer(&jobs, replies, outcome, |_, ()| ());
}

async fn write_assigns(db: &Db, batch: Vec<(NewLease, Reply<Option<u32>>)>) {
    if batch.is_empty() {
        return;
    }
    let (leases, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    let outcome = store::assign_many(db, &leases).await;
    answer(&leases, replies, outcome, |lease, assigned| {
        assigned
            .iter()
            .find(|(id, _)| *id == lease.id)
            .map(|(_, attempt)| *attempt)
    });
}

async fn write_completes(db: &Db, batch: Vec<(Completion, Reply<bool>)>) {
    if batch.is_empty() {
        return;
    }
    let (completions, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    let outcome = store::complete_many(db, &completions).await;
    answer(&completions, replies, outcome, |completion, completed| {
        completed.contains(&completion.id)
    });
}

/// Tells each caller of a batch its part of the statement's outcome (or its failure).
fn answer<I, R, T>(
    items: &[I],
    replies: Vec<Reply<T>>,
    outcome: Result<R, DbError>,
    part: impl Fn(&I, &R) -> T,
) {
    for (item, reply) in items.iter().zip(replies) {
        let _ = reply.send(match &outcome {
            Ok(result) => Ok(part(item, result)),
            Err(e) => Err(e.shared()),
        });
    }
}
