//! `POST /v1/images/generations`: OpenAI's image generation, each image run as an image job.
//!
//! The request is read ([`request`]) and resolved against its model ([`plan`]): the family's
//! defaults for what it leaves out, then the registry's checks, so a refusal comes before any
//! job exists. Each of the `n` images is then one ordinary image job (seed `seed + i`), through
//! the same path as `POST /v1/jobs`: persisted, dispatched, checked, stored and credited its
//! Waifu points once. The handler submits them all, then waits for all of them and answers
//! OpenAI's `ImagesResponse`, the images in order, as base64 PNGs or as links
//! ([`url`]), plus an `infermine` object (job ids, seed and settings) that OpenAI clients
//! ignore.
//!
//! Image `i` (from 0) is waited for up to `i + 1` times the model's deadline plus the lease
//! grace: enough for the images to run one after another on a single slot, while a request no
//! agent takes still ends after one deadline. When any image fails, the request answers as a
//! chat completion would (502 `job_failed`, 503 `no_agent_available`, 504 `job_timeout`) and
//! its unfinished jobs are cancelled, since nobody will read them. At shutdown the waiting
//! consumer gets 503 `shutting_down` at once, and the jobs are kept. A consumer that hangs up
//! does not cancel the jobs: as on the chat route, they run to their end and are credited.

pub mod plan;
pub mod request;
#[cfg(test)]
mod tests;
pub mod url;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use futures_util::future::try_join_all;
use infermine_protocol::{JobOutput, JobParams};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use utoipa::ToSchema;
use uuid::Uuid;

use self::plan::Plan;
use self::request::{ImageGenerationRequest, ResponseFormat};
use self::url::{UrlSigner, unix_now};
use super::chat::{final_view, shutting_down};
use super::unavailable;
use crate::AppState;
use crate::dispatch::Dispatcher;
use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::jobs::api::{ConsumerKey, JobView};
use crate::jobs::{Follow, Jobs, Outcome, objects};
use crate::storage::Storage;

/// OpenAI's `ImagesResponse`, plus what infermine ran.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImagesResponse {
    /// Unix seconds when the request was accepted.
    pub created: i64,
    /// One per image, in order.
    pub data: Vec<ImageData>,
    pub infermine: ImagesDetail,
}

/// One image: `b64_json` or `url`, as `response_format` asked.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageData {
    /// The PNG, base64-encoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64_json: Option<String>,
    /// A link to the PNG that works without credentials until `infermine.urls_expire` (60
    /// minutes by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// infermine's account of the request: OpenAI clients ignore it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImagesDetail {
    pub model: String,
    /// Each image's job, in order; `GET /v1/jobs/{id}` reads it.
    pub job_ids: Vec<Uuid>,
    /// The first image's seed; image `i` used `seed + i`.
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub guidance_scale: f32,
    /// The sampler asked for; null: the model's default.
    pub scheduler: Option<String>,
    /// The LoRA strength asked for; null: the model's default, or the model has no LoRA.
    pub lora_scale: Option<f32>,
    /// When the `url`s stop working, in unix seconds; null with `b64_json`.
    pub urls_expire: Option<i64>,
}

/// Generates images, OpenAI-compatible: one image job per image.
#[utoipa::path(post, path = "/v1/images/generations", tag = "openai",
    operation_id = "create_image", request_body = ImageGenerationRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the images, in order", body = ImagesResponse),
        (status = 400, description = "the request is malformed or asks for what the model \
            does not take; `param` names the field: `invalid_request`, `invalid_type`, \
            `invalid_value`, `missing_parameter`, `unknown_parameter`, \
            `unsupported_parameter`, `unsupported_value`, `model_not_image`, \
            `param_out_of_range`, `param_empty`, `param_too_long`, `param_not_supported`",
            body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "`model_not_found`: no such model", body = ErrorBody),
        (status = 502, description = "`job_failed`: the agents failed an image's job (after \
            retries); the request's other jobs are cancelled", body = ErrorBody),
        (status = 503, description = "`no_agent_available`: no agent took an image's job \
            within the model's deadline; try again later. `shutting_down`: the coordinator is \
            shutting down (the jobs are kept)", body = ErrorBody),
        (status = 504, description = "`job_timeout`: an agent took an image's job but no \
            result came in time", body = ErrorBody)))]
pub async fn generations(
    State(state): State<AppState>,
    ConsumerKey(key): ConsumerKey,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<ImagesResponse>, ApiError> {
    let request = ImageGenerationRequest::parse(body)?;
    let plan = request.plan(state.jobs.registry())?;
    let signer = match plan.response_format {
        ResponseFormat::Url => Some(UrlSigner::new(&state.auth)?),
        ResponseFormat::B64Json => None,
    };
    let (batch, follows) = Batch::submit(&state, key, &plan).await?;
    let finished = batch.finish(follows).await?;
    let urls_expire = signer
        .is_some()
        .then(|| unix_now().saturating_add(state.config.image_url_ttl_s as i64));
    let base = state.config.public_url();
    let mut data = Vec::with_capacity(finished.len());
    for (&(job, created_ms), png_b64) in batch.accepted.iter().zip(finished) {
        data.push(match (&signer, urls_expire) {
            (Some(signer), Some(expires)) => ImageData {
                b64_json: None,
                url: Some(signer.url(&base, job, expires)),
            },
            _ => ImageData {
                b64_json: Some(batch.base64(job, created_ms, png_b64).await?),
                url: None,
            },
        });
    }
    let first = plan.first;
    Ok(Json(ImagesResponse {
        created: batch.accepted.first().map_or(0, |&(_, ms)| ms / 1000),
        data,
        infermine: ImagesDetail {
            model: plan.model,
            job_ids: batch.accepted.iter().map(|&(id, _)| id).collect(),
            seed: first.seed,
            width: first.width,
            height: first.height,
            steps: first.steps,
            guidance_scale: first.guidance_scale,
            scheduler: first.scheduler,
            lora_scale: first.lora_scale,
            urls_expire,
        },
    }))
}

/// The jobs of one request, as its handler follows them.
#[derive(Debug)]
struct Batch {
    jobs: Arc<Jobs>,
    dispatcher: Dispatcher,
    storage: Storage,
    key: Uuid,
    model: String,
    /// Each image's job id and creation time (ms), in order.
    accepted: Vec<(Uuid, i64)>,
    /// Flips when the coordinator shuts down.
    closing: watch::Receiver<bool>,
}

impl Batch {
    /// Persists and queues one job per image. If one cannot be, those already queued are
    /// cancelled: the consumer gets an error and would never read them.
    async fn submit(
        state: &AppState,
        key: Uuid,
        plan: &Plan,
    ) -> Result<(Self, Vec<Follow>), ApiError> {
        let mut batch = Self {
            jobs: Arc::clone(&state.jobs),
            dispatcher: state.dispatcher.clone(),
            storage: state.storage.clone(),
            key,
            model: plan.model.clone(),
            accepted: Vec::with_capacity(plan.n as usize),
            closing: state.closing.clone(),
        };
        let mut follows = Vec::with_capacity(plan.n as usize);
        for params in plan.images() {
            let params = JobParams::Image(params);
            match batch.jobs.accept(key, &plan.model, params, false).await {
                Ok((view, follow)) => {
                    batch.accepted.push((view.id, view.created_ms));
                    follows.push(follow);
                }
                Err(error) => {
                    batch.cancel_all().await;
                    return Err(error);
                }
            }
        }
        Ok((batch, follows))
    }

    /// Waits for every image; each one's inline PNG (base64) when its agent sent it inline.
    async fn finish(&self, follows: Vec<Follow>) -> Result<Vec<Option<String>>, ApiError> {
        let window = self.jobs.answer_within(&self.model);
        let start = Instant::now();
        let waits = follows.into_iter().enumerate().map(|(index, follow)| {
            let deadline = start + window * (index as u32 + 1);
            self.wait(index, follow.outcome, deadline)
        });
        let finished = try_join_all(waits).await;
        if let Err(error) = &finished
            && !matches!(error, ApiError::ShuttingDown(_))
        {
            self.cancel_all().await;
        }
        finished
    }

    async fn wait(
        &self,
        index: usize,
        mut outcome: watch::Receiver<Outcome>,
        deadline: Instant,
    ) -> Result<Option<String>, ApiError> {
        let mut closing = self.closing.clone();
        tokio::select! {
            view = final_view(&mut outcome) => self.ended(index, view).await,
            () = tokio::time::sleep_until(deadline) => self.give_up(index).await,
            () = shutting_down(&mut closing) => Err(self.shutting_down()),
        }
    }

    /// How image `index` ended: its inline PNG, if any, or why it has none.
    async fn ended(
        &self,
        index: usize,
        handed: Option<Arc<JobView>>,
    ) -> Result<Option<String>, ApiError> {
        let (id, _) = self.accepted[index];
        let view = match handed {
            Some(view) => view,
            None => Arc::new(self.jobs.view(self.key, id, Duration::ZERO).await?),
        };
        let image = format!("image {} of {} (job {id})", index + 1, self.accepted.len());
        match (view.status.as_str(), &view.output) {
            ("completed", Some(JobOutput::Image { png_b64, .. })) => Ok(png_b64.clone()),
            ("completed", _) => Err(ApiError::Internal(format!(
                "{image} completed without an image output"
            ))),
            ("failed", _) => Err(ApiError::JobFailed(format!(
                "{image} failed on the agents after {} attempt(s): {}; the request's other jobs \
                 were cancelled; try again",
                view.attempts,
                view.error.as_deref().unwrap_or("no reason given")
            ))),
            ("cancelled", _) => Err(ApiError::Conflict(format!(
                "{image} was cancelled (DELETE /v1/jobs/{id}) before it finished"
            ))),
            (status, _) => Err(ApiError::Unavailable(format!(
                "{image} is still {status}: the coordinator is restarting; GET /v1/jobs/{id} \
                 follows it"
            ))),
        }
    }

    /// Image `index` is out of time: cancels its job and says why it did not finish. A job
    /// that finished meanwhile is answered as it ended.
    async fn give_up(&self, index: usize) -> Result<Option<String>, ApiError> {
        let (id, _) = self.accepted[index];
        let view = match self.jobs.cancel(self.key, id).await {
            Ok(view) => view,
            Err(ApiError::Conflict(_)) => return self.ended(index, None).await,
            Err(error) => return Err(error),
        };
        let waited = self
            .jobs
            .answer_within(&self.model)
            .saturating_mul(index as u32 + 1)
            .as_secs();
        let model = &self.model;
        if view.attempts > 0 {
            return Err(ApiError::Timeout(format!(
                "no agent finished image {} (job {id}) within {waited} s ({} attempt(s){}); the \
                 request's jobs were cancelled; try again",
                index + 1,
                view.attempts,
                view.error
                    .as_deref()
                    .map(|e| format!(", last: {e}"))
                    .unwrap_or_default()
            )));
        }
        Err(unavailable(&self.dispatcher, model, waited).await)
    }

    fn shutting_down(&self) -> ApiError {
        let ids: Vec<String> = self.accepted.iter().map(|(id, _)| id.to_string()).collect();
        ApiError::ShuttingDown(format!(
            "the coordinator is shutting down; the jobs {} are kept and run after it restarts: \
             GET /v1/jobs/{{id}} follows each, or send the request again",
            ids.join(", ")
        ))
    }

    /// Cancels the request's jobs that are not final yet (the others refuse, which is fine).
    async fn cancel_all(&self) {
        for &(id, _) in &self.accepted {
            match self.jobs.cancel(self.key, id).await {
                Ok(_) | Err(ApiError::Conflict(_)) => {}
                Err(error) => tracing::warn!(job = %id, %error, "cannot cancel an image job"),
            }
        }
    }

    /// An image as base64: the agent's inline copy, or the PNG it uploaded, read back.
    async fn base64(
        &self,
        job: Uuid,
        created_ms: i64,
        inline: Option<String>,
    ) -> Result<String, ApiError> {
        if let Some(b64) = inline {
            return Ok(b64);
        }
        let key = objects::png_key(created_ms, job);
        let png = self
            .storage
            .get(&key)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .ok_or_else(|| ApiError::Internal(format!("the PNG of job {job} is not at {key}")))?;
        tokio::task::spawn_blocking(move || base64::engine::general_purpose::STANDARD.encode(png))
            .await
            .map_err(|e| ApiError::Internal(format!("cannot encode the PNG: {e}")))
    }
}
