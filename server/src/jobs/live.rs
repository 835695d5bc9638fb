//! Jobs not yet final, with their owner, a channel to the consumers long-polling them
//! (`GET /v1/jobs/{id}?wait=`) and, for jobs a consumer streams, a channel of the tokens their
//! agent streams. A completion hands its view straight to those consumers, so the hot path
//! answers them without reading the database.
//!
//! Tokens go through a bounded `broadcast` channel: sending never waits, so a slow consumer
//! cannot hold up the agent's session; a consumer that falls behind by more than the buffer
//! learns it lagged and takes the rest of the text from the final result instead. Only tokens
//! in order are passed on: per attempt, index 0, 1, 2…; a duplicate, or a token past a gap, is
//! dropped (frames arrive in order, so after a gap the attempt's stream stays silent and the
//! result brings the rest).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use infermine_protocol::JobId;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use super::api::JobView;

/// Tokens buffered per streamed job before its slowest consumer counts as lagging.
const TOKEN_BUFFER: usize = 512;
/// Text one attempt may stream; beyond it tokens are dropped and the result fills in. Keeps a
/// misbehaving agent from growing a consumer's buffers without bound.
const MAX_STREAMED_BYTES: usize = 1 << 20;

/// What a parked consumer learns: the final view when the lifecycle has it at hand, or just
/// that the job is final (then the consumer reads it).
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Pending,
    Final(Option<Arc<JobView>>),
}

/// One piece of streamed text.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    /// The attempt (1 for the first) whose agent produced it: a retried job streams again from
    /// index 0 under the next attempt.
    pub(crate) attempt: u32,
    pub(crate) text: Arc<str>,
}

/// The token channel of a streamed job and the order it enforces.
#[derive(Debug)]
struct TokenFeed {
    sender: broadcast::Sender<Token>,
    attempt: u32,
    next_index: u32,
    bytes: usize,
}

impl TokenFeed {
    /// Passes a token on if it is the next of the newest attempt.
    fn push(&mut self, attempt: u32, index: u32, text: String) -> bool {
        if attempt > self.attempt {
            self.attempt = attempt;
            self.next_index = 0;
            self.bytes = 0;
        }
        if attempt < self.attempt
            || index != self.next_index
            || self.bytes + text.len() > MAX_STREAMED_BYTES
        {
            return false;
        }
        self.next_index += 1;
        self.bytes += text.len();
        // No receiver left (the consumer went away) is not an error: the job runs on.
        let _ = self.sender.send(Token {
            attempt,
            text: text.into(),
        });
        true
    }
}

#[derive(Debug)]
struct LiveJob {
    owner: Option<Uuid>,
    outcome: watch::Sender<Outcome>,
    tokens: Option<TokenFeed>,
}

/// What a consumer that submitted a job holds to follow it: its outcome, and its tokens when
/// it asked to stream.
#[derive(Debug)]
pub(crate) struct Follow {
    pub(crate) outcome: watch::Receiver<Outcome>,
    pub(crate) tokens: Option<broadcast::Receiver<Token>>,
}

#[derive(Debug, Default)]
pub(crate) struct Live {
    jobs: Mutex<HashMap<JobId, LiveJob>>,
}

impl Live {
    fn jobs(&self) -> MutexGuard<'_, HashMap<JobId, LiveJob>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A job entered the queue (submitted, or recovered at start-up).
    pub(crate) fn add(&self, job: JobId, owner: Option<Uuid>) {
        self.jobs().entry(job).or_insert_with(|| LiveJob {
            owner,
            outcome: watch::channel(Outcome::Pending).0,
            tokens: None,
        });
    }

    /// A job was just submitted by `owner`: registers it and subscribes to its outcome and,
    /// with `stream`, to its tokens, before any agent can see it (so no token is missed).
    pub(crate) fn add_followed(&self, job: JobId, owner: Uuid, stream: bool) -> Follow {
        let mut jobs = self.jobs();
        let live = jobs.entry(job).or_insert_with(|| LiveJob {
            owner: Some(owner),
            outcome: watch::channel(Outcome::Pending).0,
            tokens: None,
        });
        let tokens = stream.then(|| {
            live.tokens
                .get_or_insert_with(|| TokenFeed {
                    sender: broadcast::channel(TOKEN_BUFFER).0,
                    attempt: 0,
                    next_index: 0,
                    bytes: 0,
                })
                .sender
                .subscribe()
        });
        Follow {
            outcome: live.outcome.subscribe(),
            tokens,
        }
    }

    /// Subscribes to a live job of `owner`; `None` when it is final already, or not theirs.
    pub(crate) fn watch(&self, job: JobId, owner: Uuid) -> Option<watch::Receiver<Outcome>> {
        self.jobs()
            .get(&job)
            .filter(|live| live.owner == Some(owner))
            .map(|live| live.outcome.subscribe())
    }

    /// Whether a consumer of this replica streams the job's tokens.
    pub(crate) fn streams_here(&self, job: JobId) -> bool {
        self.jobs()
            .get(&job)
            .is_some_and(|live| live.tokens.is_some())
    }

    /// A token of `attempt` streamed by the agent holding the job. False when it was not
    /// passed on: nobody streams the job, or it is out of order.
    pub(crate) fn token(&self, job: JobId, attempt: u32, index: u32, text: String) -> bool {
        self.jobs()
            .get_mut(&job)
            .and_then(|live| live.tokens.as_mut())
            .is_some_and(|feed| feed.push(attempt, index, text))
    }

    /// The job is final: tell its waiters, with its view when known, and forget it. Dropping
    /// the token sender ends its consumers' token streams once they have read what was sent.
    pub(crate) fn finish(&self, job: JobId, view: Option<JobView>) {
        if let Some(live) = self.jobs().remove(&job) {
            let _ = live.outcome.send(Outcome::Final(view.map(Arc::new)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(rx: &mut broadcast::Receiver<Token>) -> Vec<(u32, String)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|t| (t.attempt, t.text.to_string()))
            .collect()
    }

    /// Regression: duplicated, skipped or stale tokens never reach a stream; a retry starts
    /// its own sequence.
    #[test]
    fn tokens_pass_in_order_once_per_attempt() {
        let live = Live::default();
        let (job, owner) = (Uuid::now_v7(), Uuid::now_v7());
        let mut follow = live.add_followed(job, owner, true);
        let mut rx = follow.tokens.take().expect("tokens");
        assert!(live.token(job, 1, 0, "He".into()));
        assert!(!live.token(job, 1, 0, "He".into()), "duplicate");
        assert!(live.token(job, 1, 1, "llo".into()));
        assert!(!live.token(job, 1, 3, "!".into()), "gap");
        assert!(live.token(job, 1, 2, " w".into()), "still the next one");
        assert!(live.token(job, 2, 0, "Hi".into()), "a retry starts again");
        assert!(
            !live.token(job, 1, 3, "late".into()),
            "the old attempt is over"
        );
        assert_eq!(
            texts(&mut rx),
            [
                (1, "He".to_owned()),
                (1, "llo".to_owned()),
                (1, " w".to_owned()),
                (2, "Hi".to_owned())
            ]
        );
        live.finish(job, None);
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
    }

    #[test]
    fn jobs_nobody_streams_take_no_tokens() {
        let live = Live::default();
        let job = Uuid::now_v7();
        live.add(job, Some(Uuid::now_v7()));
        assert!(!live.token(job, 1, 0, "x".into()));
        assert!(!live.token(Uuid::now_v7(), 1, 0, "x".into()), "unknown job");
    }
}
