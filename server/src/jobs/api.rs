//! The native jobs API for consumers: submit, read (with long-poll), cancel; and the model
//! list. Every route but `/v1/models` needs an API key (`Authorization: Bearer imk_…`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use infermine_protocol::{JobOutput, JobParams, Metrics, ModelKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Jobs;
use super::live::Outcome;
use super::store::{self, JobRow, NewJob, Status};
use crate::AppState;
use crate::db::now_ms;
use crate::dispatch::QueuedJob;
use crate::error::{ApiError, ApiJson};

/// The caller's verified API key id.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerKey(pub Uuid);

impl FromRequestParts<AppState> for ConsumerKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).ok_or_else(|| {
            ApiError::Unauthorized(
                "missing API key: send `Authorization: Bearer <key>` (create one with `infermine-server api-key create`)".to_owned(),
            )
        })?;
        let key = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("the Authorization header must be `Bearer <key>`".to_owned())
            })?;
        match state.auth.verify_api_key(key).await? {
            Some(id) => Ok(Self(id)),
            None => Err(ApiError::Unauthorized(
                "invalid or revoked API key".to_owned(),
            )),
        }
    }
}

/// `POST /v1/jobs` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub model: String,
    /// The model kind's params (see the protocol's `LlmParams`, `ImageParams`,
    /// `SyntheticParams`), without the `kind` tag.
    #[serde(default = "empty_object")]
    pub params: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// A job as its owner sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    pub id: Uuid,
    pub model: String,
    pub status: String,
    pub attempts: i32,
    pub created_ms: i64,
    pub assigned_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// Milliseconds from submission to the final state, as the coordinator measured it.
    pub total_ms: Option<i64>,
    pub miner_id: Option<String>,
    pub output: Option<JobOutput>,
    /// Timings the agent reported (unverified).
    pub metrics: Option<Metrics>,
    /// Why the job failed, or why its last attempt did.
    pub error: Option<String>,
}

impl JobView {
    fn from_row(row: JobRow) -> Self {
        // Stored JSON was written by this server from these types; a parse failure would mean
        // a hand-edited row, shown as absent rather than failing the whole read.
        let output = row
            .output
            .as_deref()
            .and_then(|o| serde_json::from_str(o).ok());
        let metrics = row
            .metrics
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok());
        Self {
            id: row.id,
            model: row.model,
            status: row.status,
            attempts: row.attempts,
            created_ms: row.created_ms,
            assigned_ms: row.assigned_ms,
            finished_ms: row.finished_ms,
            total_ms: row.finished_ms.map(|f| f - row.created_ms),
            miner_id: row.miner_id,
            output,
            metrics,
            error: row.error,
        }
    }
}

pub async fn submit(
    State(state): State<AppState>,
    ConsumerKey(key): ConsumerKey,
    ApiJson(request): ApiJson<SubmitRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let view = state
        .jobs
        .submit(key, &request.model, request.params)
        .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(view)))
}

#[derive(Debug, Deserialize)]
pub struct WaitQuery {
    /// Seconds to wait for the job to reach a final state before answering.
    pub wait: Option<f64>,
}

pub async fn get(
    State(state): State<AppState>,
    ConsumerKey(key): ConsumerKey,
    Path(id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Result<axum::Json<JobView>, ApiError> {
    let id = parse_id(&id)?;
    let wait = match query.wait {
        Some(w) if w.is_finite() && w >= 0.0 => {
            Duration::from_secs_f64(w).min(state.jobs.limits.max_wait)
        }
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "wait must be a number of seconds ≥ 0".to_owned(),
            ));
        }
        None => Duration::ZERO,
    };
    Ok(axum::Json(state.jobs.view(key, id, wait).await?))
}

pub async fn cancel(
    State(state): State<AppState>,
    ConsumerKey(key): ConsumerKey,
    Path(id): Path<String>,
) -> Result<axum::Json<JobView>, ApiError> {
    let id = parse_id(&id)?;
    Ok(axum::Json(state.jobs.cancel(key, id).await?))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound(format!("no job `{id}`")))
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelView {
    pub id: String,
    pub kind: ModelKind,
    pub display_name: String,
    pub points_multiplier: f64,
    pub discontinued: bool,
    pub min_vram_mb: u64,
    pub min_gpu: Vec<String>,
    pub target_latency_ms: u64,
    pub deadline_ms: u64,
}

pub async fn models(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    let data: Vec<ModelView> = state
        .jobs
        .registry()
        .models()
        .map(|m| ModelView {
            id: m.id.clone(),
            kind: m.kind,
            display_name: m.display_name.clone(),
            points_multiplier: m.points_multiplier,
            discontinued: m.discontinued,
            min_vram_mb: m.min_vram_mb,
            min_gpu: m.min_gpu.clone(),
            target_latency_ms: m.target_latency_ms,
            deadline_ms: m.deadline_ms,
        })
        .collect();
    axum::Json(serde_json::json!({ "object": "list", "data": data }))
}

impl Jobs {
    /// Validates and persists a job, then hands it to the dispatcher.
    pub async fn submit(
        &self,
        api_key: Uuid,
        model: &str,
        params: serde_json::Value,
    ) -> Result<JobView, ApiError> {
        let spec = self
            .registry
            .get(model)
            .ok_or_else(|| ApiError::ModelNotFound(model.to_owned()))?;
        let params =
            JobParams::from_json(spec.kind, params).map_err(|e| ApiError::InvalidParams {
                code: "invalid_params",
                message: format!("params for `{model}` ({} model): {e}", spec.kind.as_str()),
            })?;
        spec.validate_params(&params)
            .map_err(|e| ApiError::InvalidParams {
                code: e.code(),
                message: e.to_string(),
            })?;
        let id = Uuid::now_v7();
        let stored =
            serde_json::to_string(&params).map_err(|e| ApiError::Internal(e.to_string()))?;
        let created_ms = now_ms();
        let new = NewJob {
            id,
            model: model.to_owned(),
            kind: spec.kind.as_str(),
            params: stored,
            api_key_id: api_key,
            created_ms,
        };
        self.writer.insert(new).await?;
        self.live.add(id, Some(api_key));
        let lease = self.lease_for(model, &params);
        self.dispatcher.enqueue(QueuedJob {
            id,
            model: model.to_owned(),
            params: Arc::new(params),
            lease,
            created_ms,
        });
        Ok(JobView {
            id,
            model: model.to_owned(),
            status: Status::Queued.as_str().to_owned(),
            attempts: 0,
            created_ms,
            assigned_ms: None,
            finished_ms: None,
            total_ms: None,
            miner_id: None,
            output: None,
            metrics: None,
            error: None,
        })
    }

    async fn owned(&self, api_key: Uuid, id: Uuid) -> Result<JobRow, ApiError> {
        match store::get(&self.db, id).await? {
            Some(row) if row.api_key_id == Some(api_key) => Ok(row),
            // Another key's job is reported as missing: ids are not secrets, jobs are.
            _ => Err(ApiError::NotFound(format!("no job `{id}`"))),
        }
    }

    /// Reads a job, waiting up to `wait` for it to reach a final state.
    pub async fn view(&self, api_key: Uuid, id: Uuid, wait: Duration) -> Result<JobView, ApiError> {
        if !wait.is_zero()
            && let Some(mut outcome) = self.live.watch(id, api_key)
        {
            // The borrow of the watched value must end before the next await.
            let known = match tokio::time::timeout(
                wait,
                outcome.wait_for(|o| matches!(o, Outcome::Final(_))),
            )
            .await
            {
                Ok(Ok(outcome)) => match &*outcome {
                    Outcome::Final(Some(view)) => Some(JobView::clone(view)),
                    _ => None,
                },
                _ => None,
            };
            if let Some(view) = known {
                return Ok(view);
            }
        }
        Ok(JobView::from_row(self.owned(api_key, id).await?))
    }

    /// Cancels a queued or running job.
    pub async fn cancel(&self, api_key: Uuid, id: Uuid) -> Result<JobView, ApiError> {
        let row = self.owned(api_key, id).await?;
        if !store::mark_cancelled(&self.db, id, api_key).await? {
            return Err(ApiError::Conflict(format!(
                "job `{id}` is already {} and cannot be cancelled",
                row.status
            )));
        }
        self.inflight().remove(&id);
        self.dispatcher.cancel(id);
        self.live.finish(id, None);
        Ok(JobView::from_row(self.owned(api_key, id).await?))
    }
}
