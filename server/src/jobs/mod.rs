//! The job lifecycle: validate → persist → hand to the dispatcher → (agent runs it) → check
//! the result → persist → answer the consumer. It owns every state change of a job; the
//! dispatcher only pairs jobs with slots, and the gateway only turns frames into calls here.
//!
//! Persist first, then wake: a job exists in the database before the dispatcher hears of it,
//! so a crash at any point leaves it queued (and `recover` queues it again at start-up).

pub mod api;
mod check;
mod live;
pub mod objects;
mod recovery;
pub mod store;
mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::cluster::{Cluster, Event};
use crate::db::{Db, DbError, now_ms};
use crate::dispatch::{
    AssignSink, Assignment, Dispatcher, LostReason, Outbound, QueuedJob, SessionId,
};
use crate::ledger::{Credit, holdings};
use crate::metrics::{JobEnd, Metrics};
use crate::points::{self, PointsConfig, PointsKind, Work};
use crate::registry::Registry;
use crate::storage::{Storage, StorageError};
use api::JobView;
use infermine_protocol::{
    CoordinatorMessage, JobAssignment, JobId, JobOutput, JobParams, JobResult,
};
use live::Live;
pub(crate) use live::{Follow, Outcome, Token};
use objects::{JobRecord, ObjectError};
pub use store::Purpose;
use store::{AttemptEnd, Completion, NewJob, NewLease, QueueRow, Status};
use tokio::time::Instant;
use writer::Writer;

/// Why a result or failure report from an agent was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("job {0} is not leased to this agent")]
    NotLeased(JobId),
    #[error("cannot store the job's objects: {0}")]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A job currently leased, as the lifecycle remembers it for checking its result and
/// answering its waiters.
#[derive(Debug)]
struct Inflight {
    session: SessionId,
    params: Arc<JobParams>,
    model: String,
    miner_id: String,
    wallet: String,
    attempt: u32,
    created_ms: i64,
    assigned_ms: i64,
    assigned_at: Instant,
    /// Review work on a validator: it earns no points.
    review_work: bool,
    /// Its consumer streams its tokens, perhaps from another replica.
    streamed: bool,
    /// A result is being recorded: later reports for the job (duplicates sent while the
    /// first is stored) are refused rather than raced.
    completing: bool,
}

/// Settings of the lifecycle, from the coordinator's config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_attempts: u32,
    pub lease_grace: Duration,
    pub max_wait: Duration,
}

/// The job lifecycle. Shared as `Arc<Jobs>`; it is also the dispatcher's [`AssignSink`].
#[derive(Debug)]
pub struct Jobs {
    db: Db,
    registry: Arc<Registry>,
    dispatcher: Dispatcher,
    limits: Limits,
    points: Arc<PointsConfig>,
    inflight: Mutex<HashMap<JobId, Inflight>>,
    live: Live,
    writer: Writer,
    storage: Storage,
    metrics: Arc<Metrics>,
    /// This replica, and its line to the others sharing the database.
    cluster: Cluster,
}

impl Jobs {
    pub fn new(
        db: Db,
        registry: Arc<Registry>,
        dispatcher: Dispatcher,
        limits: Limits,
        points: Arc<PointsConfig>,
        storage: Storage,
        cluster: Cluster,
    ) -> Arc<Self> {
        Arc::new(Self {
            cluster,
            registry,
            dispatcher,
            limits,
            points,
            inflight: Mutex::new(HashMap::new()),
            live: Live::default(),
            writer: Writer::spawn(db.clone()),
            storage,
            db,
            metrics: Arc::default(),
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// This replica.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The coordinator's metrics (`GET /metrics`).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn inflight(&self) -> MutexGuard<'_, HashMap<JobId, Inflight>> {
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long an agent may hold a job of `model` before it moves elsewhere.
    fn lease_for(&self, model: &str, params: &JobParams) -> Duration {
        let deadline = self
            .registry
            .get(model)
            .map_or(Duration::from_secs(60), |spec| {
                Duration::from_millis(spec.deadline_ms)
            });
        let requested_delay = match params {
            JobParams::Synthetic(p) => Duration::from_millis(u64::from(p.delay_ms)),
            _ => Duration::ZERO,
        };
        deadline.max(requested_delay * 2) + self.limits.lease_grace
    }

    /// How long a consumer waiting on a new job of `model` waits for its end before giving
    /// up: the model's deadline (a lease's length) plus the lease grace.
    pub(crate) fn answer_within(&self, model: &str) -> Duration {
        let deadline = self
            .registry
            .get(model)
            .map_or(Duration::from_secs(60), |spec| {
                Duration::from_millis(spec.deadline_ms)
            });
        deadline + self.limits.lease_grace
    }

    fn enqueue_row(&self, row: QueueRow) {
        match serde_json::from_str::<JobParams>(&row.params) {
            Ok(params) => {
                let lease = self.lease_for(&row.model, &params);
                self.dispatcher.enqueue(QueuedJob {
                    id: row.id,
                    validators_only: row.validators_only(),
                    streamed: row.streamed,
                    model: row.model,
                    params: Arc::new(params),
                    lease,
                    created_ms: row.created_ms,
                });
            }
            // Only a hand-edited row can get here: the API stores what it parsed.
            Err(e) => {
                tracing::error!(job = %row.id, error = %e, "stored params do not parse; job left queued")
            }
        }
    }

    /// Persists and queues a job of the reviewer's: a probe (any agent runs it, like a
    /// consumer's) or a validation re-execution of `review_of` (only validators run it). The
    /// params must already be valid for the model. Nobody waits on it: the reviewer reads
    /// its outcome from the database.
    pub async fn submit_review_job(
        &self,
        model: &str,
        params: JobParams,
        purpose: Purpose,
        review_of: Option<JobId>,
    ) -> Result<JobId, DbError> {
        let kind = params.kind();
        let id = JobId::now_v7();
        let created_ms = now_ms();
        let stored = serde_json::to_string(&params)
            .map_err(|e| DbError::Shared(format!("cannot encode the params: {e}")))?;
        self.writer
            .insert(NewJob {
                id,
                model: model.to_owned(),
                kind: kind.as_str(),
                params: stored,
                api_key_id: None,
                created_ms,
                purpose,
                review_of,
                streamed: false,
            })
            .await?;
        self.live.add(id, None);
        self.metrics.job_submitted(model);
        let lease = self.lease_for(model, &params);
        self.dispatcher.enqueue(QueuedJob {
            id,
            model: model.to_owned(),
            params: Arc::new(params),
            lease,
            created_ms,
            validators_only: purpose == Purpose::Validation,
            streamed: false,
        });
        self.cluster.publish(Event::Queued { job: id });
        Ok(id)
    }

    /// An agent returned a result. Checks it, stores it, completes the job, frees the slot.
    pub async fn complete(&self, session: SessionId, result: JobResult) -> Result<(), Refusal> {
        let job = result.job;
        let outcome = self.record_result(session, result).await;
        if matches!(outcome, Err(Refusal::Db(_) | Refusal::Storage(_)))
            && let Some(f) = self.inflight().get_mut(&job)
            && f.session == session
        {
            // Nothing was recorded; the agent (or the lease timer) may try again.
            f.completing = false;
        }
        outcome
    }

    async fn record_result(&self, session: SessionId, result: JobResult) -> Result<(), Refusal> {
        let job = result.job;
        let (
            params,
            model,
            miner_id,
            wallet,
            latency,
            attempt,
            created_ms,
            assigned_ms,
            review_work,
        ) = match self.inflight().get_mut(&job) {
            Some(f) if f.session == session && !f.completing => {
                f.completing = true;
                (
                    Arc::clone(&f.params),
                    f.model.clone(),
                    f.miner_id.clone(),
                    f.wallet.clone(),
                    f.assigned_at.elapsed(),
                    f.attempt,
                    f.created_ms,
                    f.assigned_ms,
                    f.review_work,
                )
            }
            _ => return Err(Refusal::NotLeased(job)),
        };
        if let Err(problem) = check::output(self.registry.get(&model), &params, &result.output) {
            tracing::warn!(%job, %session, %problem, "agent returned an invalid output");
            return self
                .end_attempt(session, job, &format!("invalid output: {problem}"), true)
                .await;
        }
        let encode =
            |e: serde_json::Error| DbError::Shared(format!("cannot encode the result: {e}"));
        let finished_ms = now_ms();
        let record = JobRecord {
            id: job,
            model: &model,
            params: &params,
            output: &result.output,
            metrics: &result.metrics,
            miner_id: &miner_id,
            wallet: &wallet,
            session,
            attempt,
            created_ms,
            assigned_ms,
            finished_ms,
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
        };
        let record_latency_ms = record.latency_ms;
        let objects = match objects::store(&self.storage, &record).await {
            Ok(objects) => objects,
            Err(ObjectError::Invalid(problem)) => {
                tracing::warn!(%job, %session, %problem, "agent returned an invalid output");
                return self
                    .end_attempt(session, job, &format!("invalid output: {problem}"), true)
                    .await;
            }
            Err(ObjectError::Storage(e)) => return Err(Refusal::Storage(e)),
        };
        let credit = if review_work {
            None
        } else {
            self.credit_for(
                job,
                &model,
                &miner_id,
                &wallet,
                &params,
                &result.output,
                latency,
            )
            .await?
        };
        let earned = credit.as_ref().map(|c| (c.accrual.kind, c.accrual.amount));
        let completion = Completion {
            id: job,
            session,
            output: serde_json::to_string(&result.output).map_err(encode)?,
            metrics: serde_json::to_string(&result.metrics).map_err(encode)?,
            finished_ms,
            credit,
            objects,
        };
        let stored = self.writer.complete(completion).await?;
        let Some(inflight) = self.inflight().remove(&job) else {
            return Err(Refusal::NotLeased(job));
        };
        if !stored {
            return Err(Refusal::NotLeased(job));
        }
        self.metrics
            .job_finished(&inflight.model, JobEnd::Completed);
        tracing::debug!(%job, %session, miner_id = %inflight.miner_id, model = %inflight.model, latency_ms = record_latency_ms, "job completed");
        if let Some((kind, micro)) = earned {
            self.metrics.points_issued(kind, micro);
        }
        self.dispatcher
            .finished(job, session, Some(inflight.assigned_at.elapsed()));
        let view = JobView {
            id: job,
            model: inflight.model,
            status: Status::Completed.as_str().to_owned(),
            attempts: i32::try_from(inflight.attempt).unwrap_or(i32::MAX),
            created_ms: inflight.created_ms,
            assigned_ms: Some(inflight.assigned_ms),
            finished_ms: Some(finished_ms),
            total_ms: Some(finished_ms - inflight.created_ms),
            miner_id: Some(inflight.miner_id),
            output: Some(result.output),
            metrics: Some(result.metrics),
            error: None,
        };
        self.live.finish(job, Some(view));
        self.cluster.publish(Event::Final { job });
        Ok(())
    }

    /// The points a result earns, by the rules in force: the work it did (the image's size and
    /// steps as requested; the LLM's token counts), the model's multiplier, the latency the
    /// coordinator measured from lease to result, and the wallet's boost for this GPU.
    #[allow(clippy::too_many_arguments)]
    async fn credit_for(
        &self,
        job: JobId,
        model: &str,
        miner_id: &str,
        wallet: &str,
        params: &JobParams,
        output: &JobOutput,
        latency: Duration,
    ) -> Result<Option<Credit>, DbError> {
        let work = match (params, output) {
            (JobParams::Image(p), _) => Work::Image {
                width: p.width,
                height: p.height,
                steps: p.steps,
            },
            (JobParams::Llm(_), JobOutput::Text { usage, .. }) => Work::Llm {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
            },
            _ => return Ok(None),
        };
        let Some(spec) = self.registry.get(model) else {
            return Ok(None);
        };
        if PointsKind::of(spec.kind).is_none() {
            return Ok(None);
        }
        let boost = holdings::boost_for(&self.db, &self.points, wallet, miner_id).await?;
        let latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        Ok(
            points::accrue(spec, work, latency_ms, boost.multiplier_millionths).map(|accrual| {
                Credit {
                    job_id: job,
                    wallet: wallet.to_owned(),
                    miner_id: miner_id.to_owned(),
                    model: model.to_owned(),
                    work,
                    accrual,
                    boost,
                }
            }),
        )
    }

    /// An agent streamed a piece of a job's text. It reaches the job's streaming consumers
    /// only if the job is leased to `session` and the piece is the next in order; false when
    /// it was dropped. Never waits: the agent's session calls it inline. The tokens of a job
    /// streamed by a consumer of another replica go to that replica, which checks the order.
    pub fn token(&self, session: SessionId, job: JobId, index: u32, text: String) -> bool {
        let (attempt, streamed) = match self.inflight().get(&job) {
            Some(f) if f.session == session && !f.completing => (f.attempt, f.streamed),
            _ => return false,
        };
        if streamed && self.cluster.shared() && !self.live.streams_here(job) {
            self.cluster.publish(Event::Token {
                job,
                attempt,
                index,
                text,
            });
            return true;
        }
        self.live.token(job, attempt, index, text)
    }

    /// An agent reported that it could not run a job.
    pub async fn attempt_failed(
        &self,
        session: SessionId,
        job: JobId,
        reason: &str,
        retryable: bool,
    ) -> Result<(), Refusal> {
        if !matches!(self.inflight().get(&job), Some(f) if f.session == session && !f.completing) {
            return Err(Refusal::NotLeased(job));
        }
        self.end_attempt(session, job, reason, retryable).await
    }

    /// Ends the session's attempt at `job` without a result (the caller checked the lease).
    async fn end_attempt(
        &self,
        session: SessionId,
        job: JobId,
        reason: &str,
        retryable: bool,
    ) -> Result<(), Refusal> {
        let retry_within = retryable.then_some(self.limits.max_attempts);
        let end = store::end_attempt(&self.db, job, Some(session), reason, retry_within).await?;
        let model = self.inflight().remove(&job).map(|f| f.model);
        self.dispatcher.finished(job, session, None);
        self.settle(job, end, model.as_deref());
        Ok(())
    }

    /// Acts on how an attempt ended; `model` is the job's, when known, for the metrics.
    fn settle(&self, job: JobId, end: AttemptEnd, model: Option<&str>) {
        match end {
            AttemptEnd::Requeued(row) => self.queued_here(row),
            AttemptEnd::Failed => {
                self.metrics
                    .job_finished(model.unwrap_or("unknown"), JobEnd::Failed);
                self.live.finish(job, None);
                self.cluster.publish(Event::Final { job });
            }
            AttemptEnd::NotLeased => {}
        }
    }

    /// The job was cancelled (here, or on another replica): stop it if a local agent runs
    /// it, drop it from the local queue, and release its local waiters.
    fn cancelled(&self, job: JobId) {
        self.inflight().remove(&job);
        self.dispatcher.cancel(job);
        self.live.finish(job, None);
    }

    async fn persist_assignment(&self, assignment: Assignment) -> Result<(), DbError> {
        let Assignment {
            job,
            session,
            gpu_index,
            miner_id,
            agent,
        } = assignment;
        let lease_ms = u64::try_from(job.lease.as_millis()).unwrap_or(u64::MAX);
        let assigned_ms = now_ms();
        let wallet = miner_id.split('-').next().unwrap_or_default().to_owned();
        let lease = NewLease {
            id: job.id,
            session,
            replica: self.cluster.id(),
            wallet: wallet.clone(),
            miner_id: miner_id.clone(),
            lease_expires_ms: assigned_ms
                .saturating_add(i64::try_from(lease_ms).unwrap_or(i64::MAX)),
            assigned_ms,
        };
        let Some(attempt) = self.writer.assign(lease).await? else {
            // Cancelled, or claimed by another replica.
            self.dispatcher.release(job.id, session);
            return Ok(());
        };
        self.cluster.publish(Event::Taken { job: job.id });
        let waited = u64::try_from(assigned_ms - job.created_ms).unwrap_or(0);
        self.metrics.dispatched(Duration::from_millis(waited));
        tracing::debug!(job = %job.id, %session, %miner_id, model = %job.model, attempt, waited_ms = waited, "job assigned");
        self.inflight().insert(
            job.id,
            Inflight {
                session,
                params: Arc::clone(&job.params),
                model: job.model.clone(),
                miner_id,
                wallet,
                attempt,
                created_ms: job.created_ms,
                assigned_ms,
                assigned_at: Instant::now(),
                review_work: job.validators_only,
                streamed: job.streamed,
                completing: false,
            },
        );
        let upload_url = match &*job.params {
            JobParams::Image(_) => {
                let key = objects::png_key(job.created_ms, job.id);
                match self.storage.presign_put(&key, job.lease) {
                    Ok(url) => Some(url),
                    Err(e) => {
                        // The agent can still send the PNG inline.
                        tracing::warn!(job = %job.id, error = %e, "cannot presign the image upload");
                        None
                    }
                }
            }
            _ => None,
        };
        let frame = CoordinatorMessage::Job(JobAssignment {
            id: job.id,
            model: job.model,
            slot: gpu_index,
            params: (*job.params).clone(),
            lease_ms,
            attempt,
            upload_url,
        });
        if agent.send(Outbound::Frame(frame)).await.is_err() {
            // The session ended between pairing and sending; its departure notice requeues
            // leases it knew of, and this one it may not have seen yet.
            self.lose_lease(job.id, session, LostReason::AgentDisconnected)
                .await;
        }
        Ok(())
    }

    async fn lose_lease(&self, job: JobId, session: SessionId, reason: LostReason) {
        let model = self.inflight().remove(&job).map(|f| f.model);
        match store::end_attempt(
            &self.db,
            job,
            Some(session),
            reason.as_str(),
            Some(self.limits.max_attempts),
        )
        .await
        {
            Ok(end) => {
                if !matches!(end, AttemptEnd::NotLeased) {
                    tracing::info!(%job, %session, reason = reason.as_str(), requeued = matches!(end, AttemptEnd::Requeued(_)), "lease lost");
                }
                self.settle(job, end, model.as_deref());
            }
            Err(e) => {
                tracing::error!(%job, error = %e, "could not requeue a lost lease; the sweeper will retry")
            }
        }
    }
}

impl AssignSink for Arc<Jobs> {
    fn assign(&self, assignment: Assignment) {
        let jobs = Arc::clone(self);
        tokio::spawn(async move {
            let (job, session) = (assignment.job.id, assignment.session);
            if let Err(e) = jobs.persist_assignment(assignment).await {
                tracing::error!(%job, error = %e, "could not persist an assignment; job stays queued");
                jobs.dispatcher.release(job, session);
                // Still queued in the database; try again shortly rather than strand it.
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Ok(Some(row)) = store::queued_one(&jobs.db, job).await {
                    jobs.enqueue_row(row);
                }
            }
        });
    }

    fn lost(&self, job: JobId, session: SessionId, reason: LostReason) {
        let jobs = Arc::clone(self);
        tokio::spawn(async move { jobs.lose_lease(job, session, reason).await });
    }
}

#[cfg(test)]
mod tests;
