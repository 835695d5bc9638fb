//! The native jobs API for consumers: submit, read (with long-poll), cancel. Every route needs
//! an API key (`Authorization: Bearer imk_…`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use infermine_protocol::{JobOutput, JobParams, Metrics};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Ref, Schema, Type};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::Jobs;
use super::live::{Follow, Outcome};
use super::store::{self, JobRow, NewJob, Purpose, Status};
use crate::AppState;
use crate::cluster::Event;
use crate::db::now_ms;
use crate::dispatch::QueuedJob;
use crate::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use crate::registry::Limits;

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
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// A model id from `GET /v1/models`.
    #[schema(example = "synthetic-echo")]
    pub model: String,
    /// The model kind's params (see the protocol's `LlmParams`, `ImageParams`,
    /// `SyntheticParams`), without the `kind` tag.
    #[serde(default = "empty_object")]
    #[schema(schema_with = params_schema)]
    pub params: serde_json::Value,
}

/// The params of the model's kind: the model, not the body, says which.
fn params_schema() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(Ref::from_schema_name("LlmParams"))
        .item(Ref::from_schema_name("ImageParams"))
        .item(Ref::from_schema_name("SyntheticParams"))
        .description(Some(
            "The params of the model's kind (`kind` in `GET /v1/models`): `LlmParams` for `llm`, \
             `ImageParams` for `image`, `SyntheticParams` for `synthetic`; no `kind` tag. \
             Defaults to `{}`.",
        ))
        .into()
}

/// A job's state, as the closed set of strings it is.
fn status_schema() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(
            [
                Status::Queued,
                Status::Assigned,
                Status::Completed,
                Status::Failed,
                Status::Cancelled,
            ]
            .map(Status::as_str),
        ))
        .description(Some(
            "`queued` and `assigned` are on the way; `completed`, `failed` and `cancelled` are \
             final.",
        ))
        .into()
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// A job as its owner sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: Uuid,
    pub model: String,
    #[schema(schema_with = status_schema)]
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

/// Submits a job: it is stored, then queued for an agent that serves the model.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", operation_id = "submit_job", request_body = SubmitRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "stored and queued", body = JobView),
        (status = 400, description = "the body is not a valid request", body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "`model_not_found`: no such model", body = ErrorBody),
        (status = 422, description = "the params do not fit the model: `invalid_params`, \
            `wrong_param_kind`, `param_out_of_range`, `param_empty`, `param_too_long` or \
            `param_not_supported`", body = ErrorBody)))]
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

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Seconds to wait for the job to reach a final state before answering (a long poll), at
    /// most the server's `max_wait_s`; 0 or absent answers at once.
    pub wait: Option<f64>,
}

/// Reads one of the key's jobs, optionally waiting for it to finish.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "get_job",
    params(("id" = Uuid, Path, description = "the job id `POST /v1/jobs` answered"), WaitQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the job, final or as it stood when the wait ran out",
            body = JobView),
        (status = 400, description = "`wait` is not a number of seconds ≥ 0", body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "no such job for this key", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    ConsumerKey(key): ConsumerKey,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<axum::Json<JobView>, ApiError> {
    let id = parse_id(&id)?;
    let max_wait = state.jobs.limits.max_wait;
    let wait = match query.wait {
        // A wait beyond what a Duration holds (`from_secs_f64` would panic) is, like any wait
        // above the limit, cut to the limit.
        Some(w) if w.is_finite() && w >= 0.0 => {
            Duration::try_from_secs_f64(w).map_or(max_wait, |w| w.min(max_wait))
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

/// Cancels one of the key's jobs that is still queued or running.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "cancel_job",
    params(("id" = Uuid, Path, description = "the job id `POST /v1/jobs` answered")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "cancelled", body = JobView),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "no such job for this key", body = ErrorBody),
        (status = 409, description = "the job has already finished", body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    ConsumerKey(key): ConsumerKey,
    Path(id): Path<String>,
) -> Result<axum::Json<JobView>, ApiError> {
    let id = parse_id(&id)?;
    Ok(axum::Json(state.jobs.cancel(key, id).await?))
}

/// The field serde names in a params error (`missing field `width``, `unknown field
/// `colour``), so the error can point at it.
fn serde_field(error: &serde_json::Error) -> Option<String> {
    let message = error.to_string();
    let rest = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))?;
    rest.split_once('`').map(|(field, _)| field.to_owned())
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound(format!("no job `{id}`")))
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
                param: serde_field(&e).map(|field| format!("params.{field}")),
            })?;
        spec.validate_params(&params)
            .map_err(|e| ApiError::InvalidParams {
                code: e.code(),
                message: e.to_string(),
                param: e.field().map(|field| format!("params.{field}")),
            })?;
        Ok(self.accept(api_key, model, params, false).await?.0)
    }

    /// Persists a job whose params the caller validated against `model`, subscribes the
    /// caller to it (its outcome; its tokens too with `stream`), then hands it to the
    /// dispatcher. Persist first, then wake; subscribe before any agent can see it.
    ///
    /// An LLM job without `max_tokens` gets the model's limit: agents do not know the
    /// registry's limits, and the result's token count is checked against it.
    pub(crate) async fn accept(
        &self,
        api_key: Uuid,
        model: &str,
        mut params: JobParams,
        stream: bool,
    ) -> Result<(JobView, Follow), ApiError> {
        let spec = self
            .registry
            .get(model)
            .ok_or_else(|| ApiError::ModelNotFound(model.to_owned()))?;
        if let (JobParams::Llm(p), Limits::Llm(limits)) = (&mut params, &spec.limits) {
            p.max_tokens.get_or_insert(limits.max_tokens);
        }
        let id = Uuid::now_v7();
        let stored =
            serde_json::to_string(&params).map_err(|e| ApiError::Internal(e.to_string()))?;
        let created_ms = now_ms();
        let new = NewJob {
            id,
            model: model.to_owned(),
            kind: spec.kind.as_str(),
            params: stored,
            api_key_id: Some(api_key),
            created_ms,
            purpose: Purpose::Consumer,
            review_of: None,
            streamed: stream,
        };
        self.writer.insert(new).await?;
        self.metrics.job_submitted(model);
        let follow = self.live.add_followed(id, api_key, stream);
        let lease = self.lease_for(model, &params);
        self.dispatcher.enqueue(QueuedJob {
            id,
            model: model.to_owned(),
            params: Arc::new(params),
            lease,
            created_ms,
            validators_only: false,
            streamed: stream,
        });
        self.cluster.publish(Event::Queued { job: id });
        let view = JobView {
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
        };
        Ok((view, follow))
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
            && let Some(mut outcome) = self.watch(api_key, id).await?
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

    /// A watch on a job's outcome; `None` when it is final (or not the key's). A job this
    /// replica does not know of was submitted through another one: on a shared database it is
    /// registered now, and the replica that ends it says so.
    async fn watch(
        &self,
        api_key: Uuid,
        id: Uuid,
    ) -> Result<Option<watch::Receiver<Outcome>>, ApiError> {
        if let Some(outcome) = self.live.watch(id, api_key) {
            return Ok(Some(outcome));
        }
        let is_final = |row: &JobRow| Status::parse(&row.status).is_none_or(Status::is_final);
        if !self.cluster.shared() || is_final(&self.owned(api_key, id).await?) {
            return Ok(None);
        }
        self.live.add(id, Some(api_key));
        let outcome = self.live.watch(id, api_key);
        // It may have ended between the first read and the registration.
        if is_final(&self.owned(api_key, id).await?) {
            self.live.finish(id, None);
        }
        Ok(outcome)
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
        self.cancelled(id);
        self.cluster.publish(Event::Cancelled { job: id });
        Ok(JobView::from_row(self.owned(api_key, id).await?))
    }
}
