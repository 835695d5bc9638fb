//! Model-file challenges: the coordinator asks an agent for the SHA-256 of a byte range of
//! one of its model files, and a wrong (or missing) answer opens a `challenge` case.
//!
//! A GPU is challenged when it connects, after a failed check, and now and then while it
//! works (`review.challenge_rate` per reviewed job). The file is drawn with probability
//! proportional to its size (weights, not configs, are what a cheat swaps) and the range at
//! random within it. A file small enough is hashed whole and judged against the registry's
//! pin; a larger one is hashed over a random range that a validator serving the same model
//! hashes too, and the two answers must agree. Without such a validator online the large
//! file is not challenged.
//!
//! Open challenges live in memory: a coordinator restart forgets them, and the next
//! connection brings a new one.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use infermine_protocol::CoordinatorMessage;
use rand::Rng;
use serde_json::json;
use tokio::sync::mpsc;

use super::cases::Check;
use super::policy::{self, Failure, Subject, evidence};
use super::probation;
use super::store::{self, TrustEvent};
use crate::AppState;
use crate::db::{DbError, now_ms};
use crate::dispatch::{Outbound, SessionId};
use crate::miners;

/// Files up to this size are hashed whole and judged against the registry's pin.
pub const WHOLE_FILE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Bytes hashed from a larger file (judged against a validator's answer).
pub const RANGE_BYTES: u64 = 4 * 1024 * 1024;

/// An agent that has not answered within this long fails its challenge (if still online).
const ANSWER_WITHIN_MS: i64 = 120_000;

/// What a challenge asks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ask {
    pub model: String,
    pub file: String,
    pub offset: u64,
    pub len: u64,
}

/// An agent's answer: the hash, or why it could not give one.
type Answer = Result<String, String>;

/// What the miner's answer is judged against.
#[derive(Debug, Clone)]
enum Expected {
    /// The registry's SHA-256 of the whole file.
    Pinned(String),
    /// The answer of a validator to the same range (challenge `id` on its session).
    Validator {
        id: u64,
        miner_id: String,
        answer: Option<Answer>,
    },
}

#[derive(Debug, Clone)]
struct Open {
    session: SessionId,
    miner_id: String,
    wallet: String,
    ask: Ask,
    sent_ms: i64,
    expected: Expected,
    answer: Option<Answer>,
}

/// The challenges waiting for answers.
#[derive(Debug, Default)]
pub struct Challenges {
    inner: Mutex<Inner>,
}

/// Challenges by outcome, since the coordinator started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ChallengeCounts {
    /// Sent, answers not judged yet.
    pub open: u64,
    pub passed: u64,
    pub failed: u64,
    /// The validator could not answer, so there was nothing to judge against.
    pub unjudged: u64,
}

#[derive(Debug, Default)]
struct Inner {
    counts: ChallengeCounts,
    next_id: u64,
    /// Miners' challenges by id.
    open: HashMap<u64, Open>,
    /// Validators' challenges by id: the validator's session and the miner's challenge id.
    validators: HashMap<u64, (SessionId, u64)>,
}

/// How a challenge ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed(String),
    /// The validator could not answer: nothing to judge against.
    Unverifiable(String),
}

impl Challenges {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Challenges by outcome (and those still open).
    pub fn counts(&self) -> ChallengeCounts {
        let inner = self.lock();
        ChallengeCounts {
            open: inner.open.len() as u64,
            ..inner.counts
        }
    }

    fn count(&self, outcome: &Outcome) {
        let counts = &mut self.lock().counts;
        match outcome {
            Outcome::Passed => counts.passed += 1,
            Outcome::Failed(_) => counts.failed += 1,
            Outcome::Unverifiable(_) => counts.unjudged += 1,
        }
    }

    fn register(&self, open: Open, validator_session: Option<SessionId>) -> (u64, Option<u64>) {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        let mut open = open;
        let validator_id = validator_session.map(|session| {
            inner.next_id += 1;
            let vid = inner.next_id;
            inner.validators.insert(vid, (session, id));
            if let Expected::Validator { id, .. } = &mut open.expected {
                *id = vid;
            }
            vid
        });
        inner.open.insert(id, open);
        (id, validator_id)
    }

    fn forget(&self, id: u64, validator_id: Option<u64>) {
        let mut inner = self.lock();
        inner.open.remove(&id);
        if let Some(vid) = validator_id {
            inner.validators.remove(&vid);
        }
    }

    /// Records an answer from `session`; returns the miner's challenge, removed, once it
    /// can be judged.
    fn answer(&self, session: SessionId, id: u64, answer: Answer) -> Option<(Open, Outcome)> {
        let mut inner = self.lock();
        let miner_challenge = if let Some(open) = inner.open.get_mut(&id) {
            if open.session != session || open.answer.is_some() {
                return None;
            }
            open.answer = Some(answer);
            id
        } else {
            let &(validator_session, miner_challenge) = inner.validators.get(&id)?;
            if validator_session != session {
                return None;
            }
            inner.validators.remove(&id);
            let open = inner.open.get_mut(&miner_challenge)?;
            if let Expected::Validator { answer: slot, .. } = &mut open.expected {
                *slot = Some(answer);
            }
            miner_challenge
        };
        let outcome = inner.open.get(&miner_challenge).and_then(judge)?;
        let open = inner.open.remove(&miner_challenge)?;
        Some((open, outcome))
    }

    /// Challenges past their deadline, removed: the miner's that went unanswered by a
    /// session still online fail; the rest are dropped.
    fn expire(
        &self,
        now_ms: i64,
        online: impl Fn(&str, SessionId) -> bool,
    ) -> Vec<(Open, Outcome)> {
        let mut inner = self.lock();
        let late: Vec<u64> = inner
            .open
            .iter()
            .filter(|(_, open)| now_ms - open.sent_ms > ANSWER_WITHIN_MS)
            .map(|(id, _)| *id)
            .collect();
        let mut ended = Vec::new();
        for id in late {
            let Some(open) = inner.open.remove(&id) else {
                continue;
            };
            if let Expected::Validator { id: vid, .. } = &open.expected {
                inner.validators.remove(vid);
            }
            if open.answer.is_none() && online(&open.miner_id, open.session) {
                let why = format!(
                    "no answer within {} s while connected",
                    ANSWER_WITHIN_MS / 1000
                );
                ended.push((open, Outcome::Failed(why)));
            }
        }
        ended
    }
}

/// The outcome of a challenge, once both sides have answered.
fn judge(open: &Open) -> Option<Outcome> {
    let mine = open.answer.as_ref()?;
    let expected = match &open.expected {
        Expected::Pinned(sha256) => sha256.clone(),
        Expected::Validator { answer, .. } => match answer.as_ref()? {
            Ok(sha256) => sha256.clone(),
            Err(why) => return Some(Outcome::Unverifiable(format!("the validator: {why}"))),
        },
    };
    Some(match mine {
        Ok(sha256) if sha256.eq_ignore_ascii_case(&expected) => Outcome::Passed,
        Ok(sha256) => Outcome::Failed(format!(
            "the agent's SHA-256 {sha256} differs from the expected {expected}"
        )),
        Err(why) => Outcome::Failed(format!("the agent could not hash the range: {why}")),
    })
}

/// What to ask a GPU serving `models`, and against what: a file drawn by size, the whole of
/// it when small, otherwise a random range for a validator to hash too. `None` when no
/// model has pinned files, or a large file finds no validator.
fn choose(
    state: &AppState,
    models: &[String],
    rng: &mut impl Rng,
) -> Option<(Ask, Option<String>)> {
    let registry = state.jobs.registry();
    let files: Vec<(&str, &crate::registry::ModelFile, u64)> = models
        .iter()
        .filter_map(|model| registry.get(model))
        .flat_map(|spec| {
            spec.files.iter().filter_map(move |file| {
                let size = file
                    .size_bytes
                    .filter(|&s| s > 0 && file.sha256.is_some())?;
                Some((spec.id.as_str(), file, size))
            })
        })
        .collect();
    let total: u64 = files.iter().map(|(_, _, size)| size).sum();
    if total == 0 {
        return None;
    }
    let mut pick = rng.random_range(0..total);
    let &(model, file, size) = files.iter().find(|(_, _, size)| {
        if pick < *size {
            true
        } else {
            pick -= size;
            false
        }
    })?;
    if size <= WHOLE_FILE_MAX_BYTES {
        let ask = Ask {
            model: model.to_owned(),
            file: file.name.clone(),
            offset: 0,
            len: size,
        };
        return Some((ask, file.sha256.clone()));
    }
    let len = RANGE_BYTES.min(size);
    let ask = Ask {
        model: model.to_owned(),
        file: file.name.clone(),
        offset: rng.random_range(0..=size - len),
        len,
    };
    Some((ask, None))
}

/// An online validator other than `miner_id` serving `model`: its id and session.
async fn validator_for(
    state: &AppState,
    model: &str,
    miner_id: &str,
) -> Result<Option<(String, SessionId, mpsc::Sender<Outbound>)>, DbError> {
    for (id, ..) in miners::validators(&state.db).await? {
        if id == miner_id {
            continue;
        }
        let Some((session, sender)) = state.online.session_of(&id) else {
            continue;
        };
        let serves = miners::get(&state.db, &id)
            .await?
            .and_then(|row| row.models)
            .and_then(|json| serde_json::from_str::<Vec<String>>(&json).ok())
            .is_some_and(|models| models.iter().any(|m| m == model));
        if serves {
            return Ok(Some((id, session, sender)));
        }
    }
    Ok(None)
}

/// Sends one challenge to the GPU `miner_id` (of `wallet`, on `session`) about one of
/// `models`, when the review is on and there is something to judge the answer against.
pub async fn issue(
    state: &AppState,
    session: SessionId,
    sender: &mpsc::Sender<Outbound>,
    miner_id: &str,
    wallet: &str,
    models: &[String],
) -> Result<(), DbError> {
    if !state.config.review.enabled {
        return Ok(());
    }
    let Some((ask, pinned)) = choose(state, models, &mut rand::rng()) else {
        return Ok(());
    };
    let (expected, validator) = match pinned {
        Some(sha256) => (Expected::Pinned(sha256), None),
        None => match validator_for(state, &ask.model, miner_id).await? {
            Some((validator_id, vsession, vsender)) => (
                Expected::Validator {
                    id: 0,
                    miner_id: validator_id,
                    answer: None,
                },
                Some((vsession, vsender)),
            ),
            None => {
                tracing::debug!(%miner_id, model = %ask.model, "no validator online to challenge a large file against");
                return Ok(());
            }
        },
    };
    let open = Open {
        session,
        miner_id: miner_id.to_owned(),
        wallet: wallet.to_owned(),
        ask: ask.clone(),
        sent_ms: now_ms(),
        expected,
        answer: None,
    };
    let challenges = &state.challenges;
    let (id, validator_id) = challenges.register(open, validator.as_ref().map(|(s, _)| *s));
    let frame = |id: u64| {
        Outbound::Frame(CoordinatorMessage::Challenge {
            id,
            model: ask.model.clone(),
            file: ask.file.clone(),
            offset: ask.offset,
            len: ask.len,
        })
    };
    let mut sent = sender.try_send(frame(id)).is_ok();
    if let (Some((_, vsender)), Some(vid)) = (&validator, validator_id) {
        sent &= vsender.try_send(frame(vid)).is_ok();
    }
    if sent {
        tracing::debug!(%miner_id, challenge = id, ?ask, "model-file challenge sent");
    } else {
        // A full outbound queue: try another time rather than fail an agent that is busy.
        challenges.forget(id, validator_id);
    }
    Ok(())
}

/// Challenges a connected GPU, if it is online (after a failed check, or at random).
pub async fn issue_to_online(
    state: &AppState,
    miner_id: &str,
    wallet: &str,
    model: &str,
) -> Result<(), DbError> {
    let Some((session, sender)) = state.online.session_of(miner_id) else {
        return Ok(());
    };
    issue(
        state,
        session,
        &sender,
        miner_id,
        wallet,
        &[model.to_owned()],
    )
    .await
}

/// An agent's `proof` frame: records it, and judges the challenge once it can.
pub async fn answered(
    state: &AppState,
    session: SessionId,
    id: u64,
    sha256: String,
    error: Option<String>,
) -> Result<(), DbError> {
    let answer = match error {
        Some(why) => Err(why),
        None => Ok(sha256),
    };
    let Some((open, outcome)) = state.challenges.answer(session, id, answer) else {
        return Ok(());
    };
    settle(state, open, outcome).await
}

/// Fails the challenges left unanswered too long (called by the reviewer each tick).
pub async fn expire(state: &AppState) -> Result<(), DbError> {
    let online = |miner_id: &str, session: SessionId| {
        state
            .online
            .session_of(miner_id)
            .is_some_and(|(s, _)| s == session)
    };
    for (open, outcome) in state.challenges.expire(now_ms(), online) {
        settle(state, open, outcome).await?;
    }
    Ok(())
}

async fn settle(state: &AppState, open: Open, outcome: Outcome) -> Result<(), DbError> {
    state.challenges.count(&outcome);
    let metrics = state.jobs.metrics();
    let problem = match outcome {
        Outcome::Passed => {
            metrics.review_outcome("challenge", "passed");
            tracing::debug!(miner_id = %open.miner_id, ask = ?open.ask, "challenge passed");
            return Ok(());
        }
        Outcome::Unverifiable(why) => {
            tracing::warn!(miner_id = %open.miner_id, ask = ?open.ask, %why, "challenge left unjudged");
            metrics.review_outcome("challenge", "unjudged");
            return Ok(());
        }
        Outcome::Failed(problem) => problem,
    };
    let (expected, against) = match &open.expected {
        Expected::Pinned(sha256) => (Some(sha256.clone()), json!("registry")),
        Expected::Validator {
            miner_id, answer, ..
        } => (
            answer.clone().and_then(Result::ok),
            json!({ "validator": miner_id }),
        ),
    };
    let failure = Failure {
        check: Check::Challenge,
        evidence: evidence(json!({
            "problem": problem,
            "model": open.ask.model,
            "file": open.ask.file,
            "offset": open.ask.offset,
            "len": open.ask.len,
            "agent_answer": match &open.answer {
                Some(Ok(sha256)) => json!({ "sha256": sha256 }),
                Some(Err(why)) => json!({ "error": why }),
                None => serde_json::Value::Null,
            },
            "expected_sha256": expected,
            "judged_against": against,
        })),
    };
    store::update_trust(&state.db, &open.miner_id, TrustEvent::Failed).await?;
    probation::restrict(state, &open.miner_id, &open.ask.model).await?;
    let subject = Subject {
        job: None,
        miner_id: &open.miner_id,
        wallet: &open.wallet,
        model: &open.ask.model,
    };
    policy::open_case(state, &subject, failure).await
}

#[cfg(test)]
mod tests;
