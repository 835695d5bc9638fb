//! `POST /v1/chat/completions`: an OpenAI chat completion, run as an LLM job.
//!
//! The request becomes a job through the same path as `POST /v1/jobs` (validated against the
//! model's limits, persisted, dispatched, checked, stored, credited), so a chat completion is
//! a job like any other: its id is the job's (`chatcmpl-<job id>`), and `GET /v1/jobs/{job id}`
//! reads it. The handler then follows the job to its end:
//!
//! - non-streaming, it waits for the final state and answers `chat.completion` JSON;
//! - streaming (`stream: true`), it answers server-sent events as the agent streams tokens
//!   (see [`super::stream`]).
//!
//! The wait is bounded by the model's deadline plus the lease grace. A job still unfinished
//! then is cancelled (nobody is left to read it) and the consumer gets 503 when no agent ever
//! took it (`no_agent_available`, saying whether none serves the model or all were busy), or
//! 504 when agents took it and none finished (`job_timeout`). A job that failed on the agents
//! (after its retries) answers 502 `job_failed` with the reason.
//!
//! When the coordinator shuts down, waiting consumers get 503 `shutting_down` at once (the
//! job is kept and runs after the restart), so open requests do not hold the shutdown up.
//!
//! A consumer that goes away (closes the connection, mid-stream or not) does not cancel the
//! job: like OpenAI, which bills a request whose client left, the job runs to its end, is
//! stored and credits its miner; `GET /v1/jobs/{id}` still reads it. `DELETE /v1/jobs/{id}`
//! cancels it explicitly.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use infermine_protocol::{JobOutput, JobParams, LlmUsage, ModelKind};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use utoipa::ToSchema;
use uuid::Uuid;

use super::request::ChatCompletionRequest;
use super::stream::{self, ChatCompletionChunk};
use super::unavailable;
use crate::AppState;
use crate::dispatch::Dispatcher;
use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::jobs::api::{ConsumerKey, JobView};
use crate::jobs::{Jobs, Outcome};

/// What `system_fingerprint` says: the coordinator build that answered.
pub(crate) const SYSTEM_FINGERPRINT: &str = concat!("infermine-", env!("CARGO_PKG_VERSION"));

/// A non-streamed answer, OpenAI's `chat.completion`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-` and the job id (`GET /v1/jobs/{job id}` reads the job).
    #[schema(example = "chatcmpl-0193a6f0-7c1e-7cc0-9d2a-5f1c3b2a1e00")]
    pub id: String,
    /// Always `chat.completion`.
    #[schema(example = "chat.completion")]
    pub object: &'static str,
    /// Unix seconds when the request was accepted.
    pub created: i64,
    pub model: String,
    /// Exactly one.
    pub choices: Vec<Choice>,
    pub usage: Usage,
    pub system_fingerprint: &'static str,
}

/// The one choice of a completion.
#[derive(Debug, Serialize, ToSchema)]
pub struct Choice {
    /// Always 0.
    pub index: u32,
    pub message: AssistantMessage,
    /// Always null: the agents do not report token probabilities.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
    /// `stop` (a stop string or the end of the text) or `length` (max_tokens reached).
    #[schema(example = "stop")]
    pub finish_reason: String,
}

/// The model's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantMessage {
    /// Always `assistant`.
    #[schema(example = "assistant")]
    pub role: &'static str,
    pub content: String,
}

/// Token counts, as the agent's tokenizer counted them; they decide the Llama points.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl From<LlmUsage> for Usage {
    fn from(usage: LlmUsage) -> Self {
        Self {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens.saturating_add(usage.completion_tokens),
        }
    }
}

/// Answers a chat completion, OpenAI-compatible: JSON, or server-sent events with `stream`.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    operation_id = "create_chat_completion", request_body = ChatCompletionRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the completion: `chat.completion` JSON, or with \
            `stream: true` server-sent events, each `data: <chat.completion.chunk>` (the first \
            with the role, then one per streamed piece of text, then one with `finish_reason`, \
            then with `stream_options.include_usage` one with empty `choices` and `usage`), \
            then `data: [DONE]`. A failure after the stream began is sent as \
            `data: {\"error\": {…}}` (the `ErrorBody` shape) and ends the stream without \
            `[DONE]`; `stream_diverged` says the job was retried after part of its text was \
            sent and the retry's text differs (`GET /v1/jobs/{id}` has the whole text).",
            content((ChatCompletion = "application/json"),
                (ChatCompletionChunk = "text/event-stream"))),
        (status = 400, description = "the request is malformed or asks for what is not \
            supported; `param` names the field: `invalid_request`, `invalid_type`, \
            `missing_parameter`, `unsupported_parameter`, `unsupported_value`, \
            `unsupported_content`, `model_not_chat`, `param_out_of_range`, `param_empty`, \
            `param_too_long`, `param_not_supported`", body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "`model_not_found`: no such model", body = ErrorBody),
        (status = 502, description = "`job_failed`: the agents failed the job (after retries)",
            body = ErrorBody),
        (status = 503, description = "`no_agent_available`: no agent took the job within the \
            model's deadline (none serves the model, or all were busy); try again later. \
            `shutting_down`: the coordinator is shutting down (the job is kept)",
            body = ErrorBody),
        (status = 504, description = "`job_timeout`: an agent took the job but no result came \
            within the model's deadline", body = ErrorBody)))]
pub async fn completions(
    State(state): State<AppState>,
    ConsumerKey(key): ConsumerKey,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request = ChatCompletionRequest::parse(body)?;
    let model = request.model.clone();
    let spec = state
        .jobs
        .registry()
        .get(&model)
        .ok_or_else(|| ApiError::ModelNotFound(model.clone()))?;
    if spec.kind != ModelKind::Llm {
        return Err(ApiError::BadParam {
            code: "model_not_chat",
            message: format!(
                "model `{model}` is an {} model, not a chat model: /v1/chat/completions serves \
                 `llm` models (GET /v1/models gives each model's kind); run it with POST /v1/jobs",
                spec.kind.as_str()
            ),
            param: Some("model".to_owned()),
        });
    }
    let params = JobParams::Llm(request.params()?);
    spec.validate_params(&params)
        .map_err(|e| ApiError::BadParam {
            code: e.code(),
            message: e.to_string(),
            param: e.field().map(|field| match field {
                "max_tokens" => request.max_tokens_param().to_owned(),
                other => other.to_owned(),
            }),
        })?;
    let wait = state.jobs.answer_within(&model);
    let (view, follow) = state
        .jobs
        .accept(key, &model, params, request.stream)
        .await?;
    let job = ChatJob {
        jobs: Arc::clone(&state.jobs),
        dispatcher: state.dispatcher.clone(),
        key,
        id: view.id,
        model,
        created: view.created_ms / 1000,
        deadline: Instant::now() + wait,
        closing: state.closing.clone(),
    };
    if request.stream {
        return Ok(stream::respond(job, follow, request.include_usage()).into_response());
    }
    let mut outcome = follow.outcome;
    let mut closing = job.closing.clone();
    let ending = tokio::select! {
        view = final_view(&mut outcome) => job.ending(view).await,
        () = tokio::time::sleep_until(job.deadline) => job.give_up().await,
        () = shutting_down(&mut closing) => job.shutting_down(),
    };
    match ending {
        Ending::Completed {
            text,
            usage,
            finish_reason,
        } => Ok(axum::Json(ChatCompletion {
            id: job.completion_id(),
            object: "chat.completion",
            created: job.created,
            model: job.model,
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content: text,
                },
                logprobs: None,
                finish_reason,
            }],
            usage: usage.into(),
            system_fingerprint: SYSTEM_FINGERPRINT,
        })
        .into_response()),
        Ending::Error(error) => Err(error),
    }
}

/// Waits for the job to be final; the view when the lifecycle handed one over.
pub(crate) async fn final_view(outcome: &mut watch::Receiver<Outcome>) -> Option<Arc<JobView>> {
    match outcome.wait_for(|o| matches!(o, Outcome::Final(_))).await {
        Ok(outcome) => match &*outcome {
            Outcome::Final(view) => view.clone(),
            Outcome::Pending => None,
        },
        // The lifecycle dropped the job without a word (shutdown); the database says more.
        Err(_) => None,
    }
}

/// Resolves when the coordinator begins to shut down (never if it never does).
pub(crate) async fn shutting_down(closing: &mut watch::Receiver<bool>) {
    if closing.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// How a chat job ended, for either kind of answer.
#[derive(Debug)]
pub(crate) enum Ending {
    Completed {
        text: String,
        usage: LlmUsage,
        finish_reason: String,
    },
    Error(ApiError),
}

/// A chat completion's job, as its handler follows it.
#[derive(Debug)]
pub(crate) struct ChatJob {
    pub(crate) jobs: Arc<Jobs>,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) key: Uuid,
    pub(crate) id: Uuid,
    pub(crate) model: String,
    /// Unix seconds.
    pub(crate) created: i64,
    /// When the handler stops waiting.
    pub(crate) deadline: Instant,
    /// Flips when the coordinator shuts down: the handler stops waiting, so the shutdown
    /// does not wait for the job's deadline.
    pub(crate) closing: watch::Receiver<bool>,
}

impl ChatJob {
    pub(crate) fn completion_id(&self) -> String {
        format!("chatcmpl-{}", self.id)
    }

    /// How the job ended: from the view the lifecycle handed over, or else the database's.
    pub(crate) async fn ending(&self, handed: Option<Arc<JobView>>) -> Ending {
        let view = match handed {
            Some(view) => view,
            None => match self.jobs.view(self.key, self.id, Duration::ZERO).await {
                Ok(view) => Arc::new(view),
                Err(error) => return Ending::Error(error),
            },
        };
        self.ending_of(&view)
    }

    fn ending_of(&self, view: &JobView) -> Ending {
        let id = self.id;
        let error = match (view.status.as_str(), &view.output) {
            (
                "completed",
                Some(JobOutput::Text {
                    text,
                    usage,
                    finish_reason,
                    ..
                }),
            ) => {
                return Ending::Completed {
                    text: text.clone(),
                    usage: *usage,
                    finish_reason: finish_reason.clone(),
                };
            }
            ("completed", _) => {
                ApiError::Internal(format!("chat job {id} completed without a text output"))
            }
            ("failed", _) => ApiError::JobFailed(format!(
                "the job failed on the agents after {} attempt(s): {}; try again",
                view.attempts,
                view.error.as_deref().unwrap_or("no reason given")
            )),
            ("cancelled", _) => ApiError::Conflict(format!(
                "job {id} was cancelled (DELETE /v1/jobs/{id}) before it finished"
            )),
            (status, _) => ApiError::Unavailable(format!(
                "job {id} is still {status}: the coordinator is restarting; GET /v1/jobs/{id} \
                 follows it"
            )),
        };
        Ending::Error(error)
    }

    /// The coordinator is going away: the job stays (queued again for the next start, or
    /// finishing elsewhere); the consumer is told where to follow it.
    pub(crate) fn shutting_down(&self) -> Ending {
        let id = self.id;
        Ending::Error(ApiError::ShuttingDown(format!(
            "the coordinator is shutting down; job {id} is kept and runs after it restarts: GET \
             /v1/jobs/{id} follows it, or send the request again"
        )))
    }

    /// The wait is over: cancels the job, which nobody will read, and says why it did not
    /// finish. A job that finished meanwhile is answered as it ended.
    pub(crate) async fn give_up(&self) -> Ending {
        let view = match self.jobs.cancel(self.key, self.id).await {
            Ok(view) => view,
            Err(ApiError::Conflict(_)) => return self.ending(None).await,
            Err(error) => return Ending::Error(error),
        };
        let waited = self.jobs.answer_within(&self.model).as_secs();
        let model = &self.model;
        if view.attempts > 0 {
            return Ending::Error(ApiError::Timeout(format!(
                "no agent finished the job within {waited} s ({} attempt(s){}); it was \
                 cancelled; try again",
                view.attempts,
                view.error
                    .as_deref()
                    .map(|e| format!(", last: {e}"))
                    .unwrap_or_default()
            )));
        }
        Ending::Error(unavailable(&self.dispatcher, model, waited).await)
    }
}
