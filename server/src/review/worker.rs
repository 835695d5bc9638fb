//! The reviewer: a background task that looks at every completed consumer and probe job.
//!
//! Each tick it
//! 1. claims the jobs completed since the last tick: runs the cheap checks on every one
//!    (reported timings against the coordinator's own clock), then decides whether to audit
//!    it: every job of a GPU still in its warm-up, afterwards about 1 in (valid results in a
//!    row) with a floor, and every probe. An audited job is re-executed on a validator (same
//!    model, params and seed; for an LLM, the validator scores the miner's tokens instead of
//!    sampling its own); now and then it also queues a probe, a copy of a consumer job with
//!    a fresh seed;
//! 2. settles the audits whose re-execution finished: images by perceptual similarity, LLM
//!    completions by teacher forcing, synthetic bytes by equality. A failed check opens a case
//!    with its evidence, resets the GPU's trust, and the [`Policy`] may slash and suspend.
//!
//! Every decision is a conditional write (see [`store`]), so a crash or a second coordinator
//! never reviews a job twice, and a restart picks up where the tables say.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use infermine_protocol::{JobOutput, JobParams, LlmScoreParams, Metrics};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use uuid::Uuid;

use super::cases::Check;
use super::challenge;
use super::config::ReviewConfig;
use super::policy::{self, Failure, Subject, evidence};
use super::probation;
use super::similarity::{self, Verdict};
use super::store::{self, NewReview, PendingReview, ReviewStatus, TrustEvent, Unreviewed};
use super::teacher;

mod throughput;
use crate::AppState;
use crate::db::{DbError, now_ms};
use crate::jobs::Purpose;
use crate::jobs::store::{self as job_store, Status};
use crate::miners;

/// Jobs claimed per tick, and pending reviews looked at per tick.
const BATCH: u64 = 200;

/// A review whose re-execution was never queued (the coordinator stopped in between) is
/// given one after this long.
const REQUEUE_AFTER_MS: i64 = 10_000;

/// CPU validator timings kept per model for the throughput check, and how many it needs.
const BASELINE_SAMPLES: usize = 64;
const BASELINE_MIN_SAMPLES: usize = 3;

/// Starts the reviewer on the coordinator's state; it runs until the task is aborted.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    let config = state.config.review.clone();
    tokio::spawn(async move {
        let mut reviewer = Reviewer {
            // Jobs finished before this start are not reviewed twice, and not at all when
            // older than a day: a reviewer switched on later does not audit history.
            since_ms: now_ms() - 24 * 3600 * 1000,
            rng: StdRng::from_os_rng(),
            state,
            config,
            cpu_baselines: HashMap::new(),
        };
        let mut ticker = tokio::time::interval(Duration::from_millis(reviewer.config.interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(e) = reviewer.tick().await {
                tracing::warn!(error = %e, "review tick failed; will retry");
            }
        }
    })
}

struct Reviewer {
    state: AppState,
    config: ReviewConfig,
    rng: StdRng,
    since_ms: i64,
    /// Per model, recent milliseconds per unit of work (see [`work_units`]) of CPU
    /// validators' re-executions, as the coordinator timed them.
    cpu_baselines: HashMap<String, VecDeque<f64>>,
}

impl Reviewer {
    async fn tick(&mut self) -> Result<(), DbError> {
        let validators: HashSet<String> = miners::validators(&self.state.db)
            .await?
            .into_iter()
            .map(|(id, ..)| id)
            .collect();
        let batch = store::unreviewed(&self.state.db, self.since_ms, BATCH).await?;
        for job in batch {
            self.review_new(job, &validators).await?;
        }
        for pending in store::pending(&self.state.db, BATCH).await? {
            self.settle(pending).await?;
        }
        challenge::expire(&self.state).await
    }

    /// Cheap checks and the audit decision for a job just completed.
    async fn review_new(
        &mut self,
        job: Unreviewed,
        validators: &HashSet<String>,
    ) -> Result<(), DbError> {
        let db = self.state.db.clone();
        let (Some(miner_id), Some(wallet)) = (job.miner_id.clone(), job.wallet.clone()) else {
            return Ok(());
        };
        let mut review = NewReview {
            job_id: job.id,
            miner_id: &miner_id,
            wallet: &wallet,
            model: &job.model,
            status: ReviewStatus::Skipped,
            reason: "validator",
            verdict: None,
        };
        if validators.contains(&miner_id) {
            store::claim(&db, &review).await?;
            return Ok(());
        }
        let (Ok(params), Some(Ok(output))) = (
            serde_json::from_str::<JobParams>(&job.params),
            job.output.as_deref().map(serde_json::from_str::<JobOutput>),
        ) else {
            tracing::error!(job = %job.id, "a completed job's params or output do not parse; not reviewed");
            review.reason = "unreadable";
            review.status = ReviewStatus::Unverified;
            if store::claim(&db, &review).await? {
                self.settled(&miner_id, &wallet, &job.model, None).await?;
            }
            return Ok(());
        };
        // The cheap checks every result gets.
        let failure = match self.latency_check(&job) {
            Some(failure) => Some(failure),
            None => {
                self.throughput_check(&job, &params, &output, &miner_id)
                    .await?
            }
        };
        if let Some(failure) = failure {
            review.status = ReviewStatus::Failed;
            review.reason = failure.check.as_str();
            review.verdict = Some(Value::Object(failure.evidence.clone()));
            if store::claim(&db, &review).await? {
                self.settled(&miner_id, &wallet, &job.model, Some(TrustEvent::Failed))
                    .await?;
                let subject = Subject {
                    job: Some(job.id),
                    miner_id: &miner_id,
                    wallet: &wallet,
                    model: &job.model,
                };
                policy::open_case(&self.state, &subject, failure).await?;
            }
            return Ok(());
        }
        let probe = job.purpose == Purpose::Probe.as_str();
        let reason = if probe {
            Some("probe")
        } else {
            let trust = store::trust(&db, &miner_id).await?;
            if trust.consecutive_valid < i64::from(self.config.warm_up) {
                Some("warm_up")
            } else {
                let p = (1.0 / trust.consecutive_valid as f64).max(self.config.audit_floor);
                self.rng.random_bool(p.clamp(0.0, 1.0)).then_some("sampled")
            }
        };
        match reason {
            None => {
                review.reason = "not_sampled";
                if store::claim(&db, &review).await? {
                    let seen = TrustEvent::Seen { audited: false };
                    self.settled(&miner_id, &wallet, &job.model, Some(seen))
                        .await?;
                }
            }
            Some(reason) => {
                review.reason = reason;
                if self.state.dispatcher.validators_serving(&job.model).await == 0 {
                    review.status = ReviewStatus::Unverified;
                    review.verdict =
                        Some(json!({"problem": "no validator serving the model was online"}));
                    if store::claim(&db, &review).await? {
                        self.settled(&miner_id, &wallet, &job.model, None).await?;
                    }
                } else {
                    review.status = ReviewStatus::Pending;
                    if store::claim(&db, &review).await? {
                        store::update_trust(&db, &miner_id, TrustEvent::Seen { audited: true })
                            .await?;
                        self.queue_validation(job.id, &job.model, &params, &output)
                            .await?;
                    }
                }
            }
        }
        if !probe && self.rng.random_bool(self.config.probe_rate) {
            self.queue_probe(&job.model, &params).await?;
        }
        if self.rng.random_bool(self.config.challenge_rate) {
            challenge::issue_to_online(&self.state, &miner_id, &wallet, &job.model).await?;
        }
        Ok(())
    }

    /// Reported timings longer than the coordinator saw between handing out the job and
    /// getting its result cannot be true.
    fn latency_check(&self, job: &Unreviewed) -> Option<Failure> {
        let (Some(assigned), Some(finished)) = (job.assigned_ms, job.finished_ms) else {
            return None;
        };
        let metrics: Metrics = job
            .metrics
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default();
        let server_ms = (finished - assigned).max(0) as u64;
        let reported_ms = metrics
            .queue_ms
            .saturating_add(metrics.load_ms)
            .saturating_add(metrics.infer_ms)
            .saturating_add(metrics.upload_ms);
        let allowed_ms = server_ms
            + self.config.latency_slack_ms
            + (server_ms as f64 * self.config.latency_slack_share) as u64;
        (reported_ms > allowed_ms).then(|| Failure {
            check: Check::Latency,
            evidence: evidence(json!({
                "problem": format!(
                    "the agent reported {reported_ms} ms of work, but the coordinator saw the \
                     result {server_ms} ms after handing out the job"
                ),
                "reported_ms": reported_ms,
                "server_ms": server_ms,
                "allowed_ms": allowed_ms,
                "metrics": metrics,
            })),
        })
    }

    /// Queues the re-execution of `job` on a validator.
    async fn queue_validation(
        &self,
        job: Uuid,
        model: &str,
        params: &JobParams,
        output: &JobOutput,
    ) -> Result<(), DbError> {
        let validation = match (params, output) {
            (
                JobParams::Llm(request),
                JobOutput::Text {
                    text, token_ids, ..
                },
            ) => JobParams::LlmScore(LlmScoreParams {
                request: request.clone(),
                token_ids: token_ids.clone(),
                text: text.clone(),
            }),
            _ => params.clone(),
        };
        let id = self
            .state
            .jobs
            .submit_review_job(model, validation, Purpose::Validation, Some(job))
            .await?;
        store::set_validation_job(&self.state.db, job, id).await
    }

    /// Queues a probe: `params` with a fresh seed, run by whoever takes it.
    async fn queue_probe(&mut self, model: &str, params: &JobParams) -> Result<(), DbError> {
        let seed = self.rng.random::<u32>().into();
        let mut probe = params.clone();
        match &mut probe {
            JobParams::Llm(p) => p.seed = seed,
            JobParams::Image(p) => p.seed = seed,
            JobParams::Synthetic(p) => p.seed = seed,
            JobParams::LlmScore(_) => return Ok(()),
        }
        self.state
            .jobs
            .submit_review_job(model, probe, Purpose::Probe, None)
            .await?;
        Ok(())
    }

    /// Settles a pending review whose re-execution ended (or never started, or takes too
    /// long).
    async fn settle(&mut self, review: PendingReview) -> Result<(), DbError> {
        let db = self.state.db.clone();
        let age_ms = now_ms() - review.created_ms;
        let Some(validation) = review.validation_job else {
            if age_ms > REQUEUE_AFTER_MS
                && let Some(job) = store::job(&db, review.job_id).await?
                && let (Ok(params), Some(Ok(output))) = (
                    serde_json::from_str::<JobParams>(&job.params),
                    job.output.as_deref().map(serde_json::from_str::<JobOutput>),
                )
            {
                self.queue_validation(job.id, &job.model, &params, &output)
                    .await?;
            }
            return Ok(());
        };
        let Some(row) = job_store::get(&db, validation).await? else {
            return Ok(());
        };
        let status = Status::parse(&row.status);
        let unverified =
            |problem: String| json!({ "problem": problem, "validation_job": validation });
        let outcome = match status {
            Some(Status::Completed) => self.compare(&review, validation).await?,
            Some(Status::Failed | Status::Cancelled) => Err(unverified(format!(
                "the re-execution failed: {}",
                row.error.unwrap_or_default()
            ))),
            _ if age_ms > self.config.validation_timeout_s as i64 * 1000 => {
                Err(unverified(format!(
                    "the re-execution did not finish within {} s",
                    self.config.validation_timeout_s
                )))
            }
            _ => return Ok(()),
        };
        match outcome {
            Ok(Ok(verdict)) => {
                self.state
                    .jobs
                    .metrics()
                    .review_outcome("re_execution", "passed");
                if store::decide(&db, review.job_id, ReviewStatus::Passed, &verdict).await? {
                    self.settled(
                        &review.miner_id,
                        &review.wallet,
                        &review.model,
                        Some(TrustEvent::Passed),
                    )
                    .await?;
                }
            }
            Ok(Err(failure)) => {
                let verdict = Value::Object(failure.evidence.clone());
                if store::decide(&db, review.job_id, ReviewStatus::Failed, &verdict).await? {
                    self.settled(
                        &review.miner_id,
                        &review.wallet,
                        &review.model,
                        Some(TrustEvent::Failed),
                    )
                    .await?;
                    let failure = if review.reason == "probe" {
                        Failure {
                            check: Check::Probe,
                            ..failure
                        }
                    } else {
                        failure
                    };
                    let subject = Subject {
                        job: Some(review.job_id),
                        miner_id: &review.miner_id,
                        wallet: &review.wallet,
                        model: &review.model,
                    };
                    policy::open_case(&self.state, &subject, failure).await?;
                }
            }
            Err(problem) => {
                tracing::warn!(job = %review.job_id, %problem, "review left unverified");
                if store::decide(&db, review.job_id, ReviewStatus::Unverified, &problem).await? {
                    self.settled(&review.miner_id, &review.wallet, &review.model, None)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// One of a GPU's results has its review settled (passed, failed, not audited, or left
    /// unverified): `event` goes into the GPU's trust, and a GPU on probation may start one
    /// more job; the warm-up's end lifts probation, and a failed check renews it and brings
    /// a model-file challenge.
    async fn settled(
        &self,
        miner_id: &str,
        wallet: &str,
        model: &str,
        event: Option<TrustEvent>,
    ) -> Result<(), DbError> {
        let db = &self.state.db;
        if let Some(event) = event {
            store::update_trust(db, miner_id, event).await?;
        }
        let dispatcher = &self.state.dispatcher;
        dispatcher.grant(miner_id);
        match event {
            Some(TrustEvent::Failed) => {
                probation::restrict(&self.state, miner_id, model).await?;
                challenge::issue_to_online(&self.state, miner_id, wallet, model).await?;
            }
            Some(TrustEvent::Passed)
                if store::trust(db, miner_id).await?.consecutive_valid
                    >= i64::from(self.config.warm_up) =>
            {
                dispatcher.lift(miner_id);
            }
            _ => {}
        }
        Ok(())
    }

    /// Compares a job's output with its re-execution's. `Ok(Ok(figures))` when they agree,
    /// `Ok(Err(failure))` when they do not, `Err(problem)` when they cannot be compared.
    async fn compare(
        &mut self,
        review: &PendingReview,
        validation: Uuid,
    ) -> Result<Result<Result<Value, Failure>, Value>, DbError> {
        let db = &self.state.db.clone();
        let (Some(original), Some(rerun)) = (
            store::job(db, review.job_id).await?,
            store::job(db, validation).await?,
        ) else {
            return Ok(Err(
                json!({"problem": "the job or its re-execution is gone"}),
            ));
        };
        self.learn_speed(&rerun).await?;
        let parse = |row: &Unreviewed| {
            row.output
                .as_deref()
                .and_then(|o| serde_json::from_str::<JobOutput>(o).ok())
        };
        let (Some(mine), Some(theirs)) = (parse(&original), parse(&rerun)) else {
            return Ok(Err(json!({"problem": "an output does not parse"})));
        };
        let base = json!({
            "job": review.job_id,
            "validation_job": validation,
            "validator": rerun.miner_id,
            "model": review.model,
        });
        let failed = |check: Check, detail: Value| {
            let mut evidence = evidence(base.clone());
            if let Value::Object(detail) = detail {
                evidence.extend(detail);
            }
            Failure { check, evidence }
        };
        let merged = |detail: Value| {
            let mut all = base.clone();
            if let (Value::Object(all), Value::Object(detail)) = (&mut all, detail) {
                all.extend(detail);
            }
            all
        };
        Ok(Ok(match (mine, theirs) {
            (JobOutput::Image { .. }, JobOutput::Image { .. }) => {
                let (Some(miner_key), Some(validator_key)) = (
                    png_key(db, review.job_id).await?,
                    png_key(db, validation).await?,
                ) else {
                    return Ok(Err(json!({"problem": "an image is not recorded"})));
                };
                let storage = &self.state.storage;
                let (Ok(Some(miner_png)), Ok(Some(validator_png))) = (
                    storage.get(&miner_key).await,
                    storage.get(&validator_key).await,
                ) else {
                    return Ok(Err(
                        json!({"problem": "an image cannot be read from storage yet"}),
                    ));
                };
                let thresholds = self.config.image;
                let compared = tokio::task::spawn_blocking(move || {
                    similarity::compare(&miner_png, &validator_png)
                })
                .await
                .map_err(|e| DbError::Shared(format!("image comparison panicked: {e}")))?;
                let detail = |figures: Value| {
                    json!({
                        "miner_image": miner_key,
                        "validator_image": validator_key,
                        "thresholds": {
                            "min_ssim": thresholds.min_ssim,
                            "min_detail_ratio": thresholds.min_detail_ratio,
                            "max_phash_distance": thresholds.max_phash_distance,
                        },
                        "similarity": figures,
                    })
                };
                match compared {
                    Ok(sim) => {
                        let figures = json!({
                            "ssim": sim.ssim,
                            "detail_ratio": sim.detail_ratio,
                            "phash_distance": sim.phash_distance,
                        });
                        match thresholds.verdict(&sim) {
                            Verdict::Match => Ok(merged(detail(figures))),
                            Verdict::Mismatch { reason } => {
                                let mut d = detail(figures);
                                d["problem"] = reason.to_string().into();
                                Err(failed(Check::ImageSimilarity, d))
                            }
                        }
                    }
                    Err(e) => {
                        let mut d = detail(Value::Null);
                        d["problem"] = e.to_string().into();
                        Err(failed(Check::ImageSimilarity, d))
                    }
                }
            }
            (
                JobOutput::Text { .. },
                JobOutput::TokenScores {
                    scores,
                    text_matches,
                    ..
                },
            ) => {
                let figures = teacher::score(&scores, text_matches);
                let detail = json!({
                    "score": figures,
                    "thresholds": self.config.llm,
                    "token_scores": scores,
                });
                match self.config.llm.judge(&figures) {
                    Ok(()) => {
                        let mut d = detail;
                        d.as_object_mut().map(|d| d.remove("token_scores"));
                        Ok(merged(d))
                    }
                    Err(problem) => {
                        let mut d = detail;
                        d["problem"] = problem.into();
                        Err(failed(Check::LlmTeacherForcing, d))
                    }
                }
            }
            (JobOutput::Bytes { sha256: a, .. }, JobOutput::Bytes { sha256: b, .. }) => {
                let detail = json!({"miner_sha256": a, "validator_sha256": b});
                if a == b {
                    Ok(merged(detail))
                } else {
                    let mut d = detail;
                    d["problem"] = "the bytes differ from the validator's".into();
                    Err(failed(Check::Probe, d))
                }
            }
            _ => {
                return Ok(Err(
                    json!({"problem": "the outputs are of different kinds"}),
                ));
            }
        }))
    }
}

/// The key of a job's stored PNG.
async fn png_key(db: &crate::db::Db, job: Uuid) -> Result<Option<String>, DbError> {
    Ok(job_store::objects_of(db, job)
        .await?
        .into_iter()
        .find(|(name, ..)| name == "output.png")
        .map(|(_, key, ..)| key))
}
