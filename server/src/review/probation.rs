//! Which GPUs are on probation, and how much of it they have used.
//!
//! A GPU still in its warm-up (fewer valid results in a row than `review.warm_up`) may have
//! at most `review.probation_jobs` jobs running or awaiting review at once, so its audits keep
//! pace with its work. The dispatcher enforces the cap (see [`crate::dispatch::Probation`]);
//! this module decides who gets it: at hello, and again after a failed check.

use crate::AppState;
use crate::db::{DbError, now_ms};
use crate::dispatch::Probation;

use super::store;

/// Results older than this are never reviewed (see the reviewer's start), so they do not
/// count against a GPU on probation either.
const REVIEW_HORIZON_MS: i64 = 24 * 3600 * 1000;

/// The probation a GPU serving `models` starts under, if any: none when the reviewer or the
/// cap is off, when the GPU is past its warm-up, or when no validator serving one of its
/// models is online (nothing could review its work, so a cap would only stall it).
pub async fn probation_for(
    state: &AppState,
    miner_id: &str,
    models: &[String],
) -> Result<Option<Probation>, DbError> {
    let config = &state.config.review;
    if !config.enabled || config.probation_jobs == 0 {
        return Ok(None);
    }
    let trust = store::trust(&state.db, miner_id).await?;
    if trust.consecutive_valid >= i64::from(config.warm_up) {
        return Ok(None);
    }
    let mut reviewable = false;
    for model in models {
        if state.dispatcher.validators_serving(model).await > 0 {
            reviewable = true;
            break;
        }
    }
    if !reviewable {
        return Ok(None);
    }
    let unsettled = store::unsettled(&state.db, miner_id, now_ms() - REVIEW_HORIZON_MS).await?;
    Ok(Some(Probation {
        limit: config.probation_jobs,
        unsettled: u32::try_from(unsettled).unwrap_or(u32::MAX),
    }))
}

/// Puts a connected GPU (back) on probation after a failed check on a job of `model`, when
/// that applies.
pub async fn restrict(state: &AppState, miner_id: &str, model: &str) -> Result<(), DbError> {
    if !state.online.is_online(miner_id) {
        return Ok(());
    }
    if let Some(probation) = probation_for(state, miner_id, &[model.to_owned()]).await? {
        state.dispatcher.restrict(miner_id, probation);
    }
    Ok(())
}
