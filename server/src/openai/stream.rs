//! The streamed answer of `POST /v1/chat/completions` (`stream: true`): server-sent events,
//! each `data: <chat.completion.chunk JSON>`, ending with `data: [DONE]`.
//!
//! The first chunk carries the role (`delta: {role: "assistant", content: ""}`); then one chunk
//! per piece of text the agent streams (token frames, in order, forwarded by the gateway); then
//! a chunk with an empty delta and the `finish_reason`; with `stream_options.include_usage`, a
//! chunk with no choices and the `usage`; then `[DONE]`. Comments keep idle connections open.
//!
//! The result is authoritative, the tokens a preview. When the result arrives, the text
//! already sent must be a prefix of the result's text, and the rest follows in one chunk;
//! that also covers tokens a slow consumer missed (the token channel never waits for it: a
//! consumer that lags stops receiving tokens and gets the rest from the result). A job retried
//! on another agent after some text was sent streams again from its start: its tokens are
//! passed on only past what was already sent, and only while they agree with it. If the
//! final text does not begin with what was sent (the retry wrote something else), the stream
//! ends with an error event, `data: {"error": {…, "code": "stream_diverged"}}`, and no
//! `[DONE]`: the consumer has been shown text that is not the answer and must discard it
//! (`GET /v1/jobs/{id}` has the whole text). Any other failure after the stream began is sent
//! the same way, with the code a non-streamed request would get (`job_failed`,
//! `no_agent_available`, `job_timeout`, `shutting_down`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use utoipa::ToSchema;

use super::chat::{ChatJob, Ending, SYSTEM_FINGERPRINT, Usage, final_view, shutting_down};
use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::jobs::api::JobView;
use crate::jobs::{Follow, Outcome, Token};

/// One streamed event, OpenAI's `chat.completion.chunk`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    /// The same for every chunk of a completion: `chatcmpl-` and the job id.
    pub id: String,
    /// Always `chat.completion.chunk`.
    #[schema(example = "chat.completion.chunk")]
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub system_fingerprint: &'static str,
    /// One choice; none in the usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Only with `stream_options.include_usage`: null in every chunk but the last, which has
    /// the counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Usage>)]
    pub usage: Option<Option<Usage>>,
}

/// The choice a chunk adds to.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChunkChoice {
    /// Always 0.
    pub index: u32,
    pub delta: Delta,
    /// Always null.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
    /// Null until the chunk that ends the choice.
    pub finish_reason: Option<String>,
}

/// What a chunk adds to the message.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Delta {
    /// `assistant`, in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// The SSE response following `job`.
pub(crate) fn respond(
    job: ChatJob,
    follow: Follow,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut stream = ChatStream {
        closing: job.closing.clone(),
        job,
        outcome: follow.outcome,
        tokens: follow.tokens,
        include_usage,
        sent: String::new(),
        attempt: 0,
        attempt_text: String::new(),
        pending: VecDeque::new(),
        done: false,
    };
    let role = Delta {
        role: Some("assistant"),
        content: Some(String::new()),
    };
    let first = stream.chunk(role, None);
    stream.pending.push_back(first);
    let events = futures_util::stream::unfold(stream, |mut stream| async move {
        stream.next().await.map(|event| (Ok(event), stream))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// The state of one streamed answer. Dropped when the consumer leaves, which leaves the job
/// running.
struct ChatStream {
    job: ChatJob,
    closing: watch::Receiver<bool>,
    outcome: watch::Receiver<Outcome>,
    /// `None` once the channel closed or this consumer lagged: the result brings the rest.
    tokens: Option<broadcast::Receiver<Token>>,
    include_usage: bool,
    /// The text the consumer has been sent.
    sent: String,
    /// The attempt whose tokens are arriving, and its text so far.
    attempt: u32,
    attempt_text: String,
    pending: VecDeque<Event>,
    done: bool,
}

/// What woke the stream up.
enum Step {
    Token(Result<Token, RecvError>),
    Final(Option<Arc<JobView>>),
    TimedOut,
    ShuttingDown,
}

impl ChatStream {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            self.step().await;
        }
    }

    async fn step(&mut self) {
        let step = tokio::select! {
            // Tokens first: those sent before the result are passed on before it.
            biased;
            token = next_token(&mut self.tokens) => Step::Token(token),
            view = final_view(&mut self.outcome) => Step::Final(view),
            () = tokio::time::sleep_until(self.job.deadline) => Step::TimedOut,
            () = shutting_down(&mut self.closing) => Step::ShuttingDown,
        };
        match step {
            Step::Token(Ok(token)) => self.on_token(&token),
            Step::Token(Err(RecvError::Lagged(missed))) => {
                tracing::debug!(job = %self.job.id, missed, "stream consumer lagged; the result brings the rest");
                self.tokens = None;
            }
            Step::Token(Err(RecvError::Closed)) => self.tokens = None,
            Step::Final(view) => {
                self.drain_tokens();
                let ending = self.job.ending(view).await;
                self.end(ending);
            }
            Step::TimedOut => {
                let ending = self.job.give_up().await;
                self.end(ending);
            }
            Step::ShuttingDown => {
                let ending = self.job.shutting_down();
                self.end(ending);
            }
        }
    }

    /// Passes on what a token adds to the text already sent, if it agrees with it.
    fn on_token(&mut self, token: &Token) {
        if token.attempt != self.attempt {
            self.attempt = token.attempt;
            self.attempt_text.clear();
        }
        self.attempt_text.push_str(&token.text);
        if self.attempt_text.len() > self.sent.len() && self.attempt_text.starts_with(&self.sent) {
            let delta = self.attempt_text[self.sent.len()..].to_owned();
            self.sent.push_str(&delta);
            self.push_text(delta);
        }
    }

    /// Tokens already buffered when the result came.
    fn drain_tokens(&mut self) {
        while let Some(rx) = &mut self.tokens {
            match rx.try_recv() {
                Ok(token) => self.on_token(&token),
                Err(_) => self.tokens = None,
            }
        }
    }

    fn end(&mut self, ending: Ending) {
        self.done = true;
        let (text, usage, finish_reason) = match ending {
            Ending::Completed {
                text,
                usage,
                finish_reason,
            } => (text, usage, finish_reason),
            Ending::Error(error) => {
                if let ApiError::Internal(detail) = &error {
                    tracing::error!(job = %self.job.id, %detail, "streamed chat failed");
                }
                self.pending.push_back(data(&error.body()));
                return;
            }
        };
        let Some(rest) = text.strip_prefix(self.sent.as_str()) else {
            tracing::info!(job = %self.job.id, "streamed text diverged from the result after a retry");
            let id = self.job.id;
            let body = ErrorBody {
                error: ErrorDetail {
                    message: format!(
                        "the job was retried on another agent after part of its text had been \
                         streamed, and the retry wrote different text: discard what was \
                         streamed; GET /v1/jobs/{id} has the complete answer"
                    ),
                    kind: "server_error",
                    param: None,
                    code: "stream_diverged",
                },
            };
            self.pending.push_back(data(&body));
            return;
        };
        if !rest.is_empty() {
            self.push_text(rest.to_owned());
        }
        let last = self.chunk(Delta::default(), Some(finish_reason));
        self.pending.push_back(last);
        if self.include_usage {
            let mut chunk = self.chunk_of(Vec::new());
            chunk.usage = Some(Some(usage.into()));
            self.pending.push_back(data(&chunk));
        }
        self.pending.push_back(Event::default().data("[DONE]"));
    }

    fn push_text(&mut self, text: String) {
        let delta = Delta {
            role: None,
            content: Some(text),
        };
        let event = self.chunk(delta, None);
        self.pending.push_back(event);
    }

    fn chunk(&self, delta: Delta, finish_reason: Option<String>) -> Event {
        data(&self.chunk_of(vec![ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
        }]))
    }

    fn chunk_of(&self, choices: Vec<ChunkChoice>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.job.completion_id(),
            object: "chat.completion.chunk",
            created: self.job.created,
            model: self.job.model.clone(),
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage: self.include_usage.then_some(None),
        }
    }
}

async fn next_token(tokens: &mut Option<broadcast::Receiver<Token>>) -> Result<Token, RecvError> {
    match tokens {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// An event whose data is `value` as JSON (one line: JSON escapes its newlines).
fn data<T: Serialize>(value: &T) -> Event {
    match serde_json::to_string(value) {
        Ok(json) => Event::default().data(json),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a stream event");
            Event::default().data(
                r#"{"error":{"message":"internal error","type":"server_error","param":null,"code":"internal"}}"#,
            )
        }
    }
}
