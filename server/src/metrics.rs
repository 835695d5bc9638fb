//! Prometheus metrics at `GET /metrics`, in the OpenMetrics text format Prometheus scrapes.
//!
//! Counters and the dispatch-latency histogram are updated where things happen (job
//! submission and completion, dispatch, the ledger's credits, the reviewer's verdicts); the
//! gauges (agents, GPUs, queue depth per model, leases, the S3 spool) are read from the
//! dispatcher and storage when scraped. Each coordinator keeps its own registry: with several
//! replicas, a scraper sums them.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::points::PointsKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    model: String,
    /// `completed` or `failed`.
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewLabels {
    /// The check, e.g. `image_similarity`, or `re_execution` for a passed audit.
    check: String,
    /// `passed`, `failed` or `unjudged`.
    outcome: String,
}

/// How a job ended, for `infermine_jobs_finished_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnd {
    Completed,
    Failed,
}

/// The coordinator's metrics.
pub struct Metrics {
    registry: Registry,
    jobs_submitted: Family<ModelLabels, Counter>,
    jobs_finished: Family<FinishedLabels, Counter>,
    dispatch_latency: Histogram,
    points_issued: Family<KindLabels, Counter>,
    review_outcomes: Family<ReviewLabels, Counter>,
    agents: Gauge,
    gpus: Gauge,
    queued: Family<ModelLabels, Gauge>,
    leased: Gauge,
    draining: Gauge,
    spool_objects: Gauge,
    spool_bytes: Gauge,
    /// Models whose queue gauge was set, so an emptied queue reads 0 rather than vanishing.
    queued_models: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("infermine");
        let jobs_submitted = Family::<ModelLabels, Counter>::default();
        registry.register(
            "jobs_submitted",
            "Jobs accepted, by model",
            jobs_submitted.clone(),
        );
        let jobs_finished = Family::<FinishedLabels, Counter>::default();
        registry.register(
            "jobs_finished",
            "Jobs that reached a final state, by model and state (completed, failed)",
            jobs_finished.clone(),
        );
        // 1 ms to about 65 s.
        let dispatch_latency = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "dispatch_latency_seconds",
            "Time from a job's submission to its lease on a GPU",
            dispatch_latency.clone(),
        );
        let points_issued = Family::<KindLabels, Counter>::default();
        registry.register(
            "points_issued_micro",
            "Micro-points credited for completed jobs, by kind (waifu, llama)",
            points_issued.clone(),
        );
        let review_outcomes = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "review_outcomes",
            "Anti-cheat review verdicts, by check and outcome",
            review_outcomes.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let agents = gauge(&mut registry, "agents_connected", "Agents connected");
        let gpus = gauge(
            &mut registry,
            "gpus_connected",
            "GPU slots of the connected agents",
        );
        let queued = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "jobs_queued",
            "Jobs waiting for a GPU, by model (the queue depth)",
            queued.clone(),
        );
        let leased = gauge(&mut registry, "jobs_leased", "Jobs running on GPUs now");
        let draining = gauge(
            &mut registry,
            "draining",
            "1 once shutdown began (no new assignments)",
        );
        let spool_objects = gauge(
            &mut registry,
            "storage_spool_objects",
            "Objects waiting in the local spool for S3",
        );
        let spool_bytes = gauge(
            &mut registry,
            "storage_spool_bytes",
            "Bytes waiting in the local spool for S3",
        );
        Self {
            registry,
            jobs_submitted,
            jobs_finished,
            dispatch_latency,
            points_issued,
            review_outcomes,
            agents,
            gpus,
            queued,
            leased,
            draining,
            spool_objects,
            spool_bytes,
            queued_models: Mutex::new(Vec::new()),
        }
    }

    pub fn job_submitted(&self, model: &str) {
        self.jobs_submitted
            .get_or_create(&ModelLabels {
                model: model.to_owned(),
            })
            .inc();
    }

    pub fn job_finished(&self, model: &str, end: JobEnd) {
        let state = match end {
            JobEnd::Completed => "completed",
            JobEnd::Failed => "failed",
        };
        self.jobs_finished
            .get_or_create(&FinishedLabels {
                model: model.to_owned(),
                state: state.to_owned(),
            })
            .inc();
    }

    /// A job was leased `waited` after it was submitted.
    pub fn dispatched(&self, waited: Duration) {
        self.dispatch_latency.observe(waited.as_secs_f64());
    }

    pub fn points_issued(&self, kind: PointsKind, micro: i64) {
        let micro = u64::try_from(micro).unwrap_or(0);
        self.points_issued
            .get_or_create(&KindLabels {
                kind: kind.as_str().to_owned(),
            })
            .inc_by(micro);
    }

    pub fn review_outcome(&self, check: &str, outcome: &str) {
        self.review_outcomes
            .get_or_create(&ReviewLabels {
                check: check.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The text exposition of every metric, with the gauges read from `state` now.
    async fn render(&self, state: &AppState) -> String {
        let snapshot = state.dispatcher.snapshot().await;
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.agents.set(gauge(snapshot.agents));
        self.gpus.set(gauge(snapshot.slots));
        self.leased.set(gauge(snapshot.leased));
        self.draining.set(i64::from(*state.closing.borrow()));
        {
            let mut known = self
                .queued_models
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for model in snapshot.queued_by_model.keys() {
                if !known.contains(model) {
                    known.push(model.clone());
                }
            }
            for model in known.iter() {
                let depth = snapshot.queued_by_model.get(model).copied().unwrap_or(0);
                self.queued
                    .get_or_create(&ModelLabels {
                        model: model.clone(),
                    })
                    .set(gauge(depth));
            }
        }
        let spool = state.storage.spool();
        self.spool_objects
            .set(i64::try_from(spool.objects).unwrap_or(i64::MAX));
        self.spool_bytes
            .set(i64::try_from(spool.bytes).unwrap_or(i64::MAX));
        let mut text = String::new();
        if let Err(e) = encode(&mut text, &self.registry) {
            // Encoding into a String fails only on a formatter error; say so in the body.
            let _ = writeln!(text, "# metrics could not be encoded: {e}");
        }
        text
    }
}

/// Prometheus metrics of this coordinator: jobs by model and state, queue depth, dispatch
/// latency, connected agents and GPUs, points issued, review outcomes, the S3 spool.
#[utoipa::path(get, path = "/metrics", tag = "meta", operation_id = "metrics",
    responses((status = 200, description = "OpenMetrics text (Prometheus scrapes it)",
        body = String, content_type = "application/openmetrics-text")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = state.jobs.metrics().render(&state).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_their_labels() {
        let metrics = Metrics::new();
        metrics.points_issued(PointsKind::Waifu, 1_500);
        metrics.points_issued(PointsKind::Waifu, 500);
        metrics.points_issued(PointsKind::Llama, -3);
        metrics.review_outcome("challenge", "passed");
        metrics.job_finished("tiny-llama", JobEnd::Failed);
        metrics.dispatched(Duration::from_millis(3));
        let mut text = String::new();
        encode(&mut text, &metrics.registry).expect("encode");
        for line in [
            "infermine_points_issued_micro_total{kind=\"waifu\"} 2000",
            "infermine_points_issued_micro_total{kind=\"llama\"} 0",
            "infermine_review_outcomes_total{check=\"challenge\",outcome=\"passed\"} 1",
            "infermine_jobs_finished_total{model=\"tiny-llama\",state=\"failed\"} 1",
            "infermine_dispatch_latency_seconds_bucket{le=\"0.004\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }
}
