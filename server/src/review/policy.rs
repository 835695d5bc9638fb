//! What a failed check leads to: a case with its evidence, and, once a GPU has failed often
//! enough (`[review.policy]`), a slash and a suspension without waiting for an admin.

use serde_json::Value;
use uuid::Uuid;

use super::cases::{self, Check, NewCase, SlashDecision};
use crate::AppState;
use crate::db::{DbError, now_ms};
use crate::ledger::SlashAmount;
use crate::miners;
use crate::points::PointsKind;

/// A failed check: what it was and the evidence for its case.
#[derive(Debug)]
pub struct Failure {
    pub check: Check,
    pub evidence: serde_json::Map<String, Value>,
}

/// What a failed check was about.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The job checked, when the check was about one.
    pub job: Option<Uuid>,
    pub miner_id: &'a str,
    pub wallet: &'a str,
    /// The model whose kind of points a slash takes.
    pub model: &'a str,
}

/// Opens a case for a failed check and lets the policy act on it.
pub async fn open_case(
    state: &AppState,
    subject: &Subject<'_>,
    failure: Failure,
) -> Result<(), DbError> {
    let Subject {
        job,
        miner_id,
        wallet,
        model,
    } = *subject;
    state
        .jobs
        .metrics()
        .review_outcome(failure.check.as_str(), "failed");
    let kind = state
        .jobs
        .registry()
        .get(model)
        .and_then(|spec| PointsKind::of(spec.kind));
    let Some(kind) = kind else {
        // Synthetic jobs earn nothing; there is nothing to slash.
        tracing::warn!(?job, %miner_id, check = failure.check.as_str(), "check failed on a model that earns no points");
        return Ok(());
    };
    let check = failure.check;
    let case = cases::open_case(
        &state.db,
        &NewCase {
            job_id: job,
            wallet: wallet.to_owned(),
            miner_id: Some(miner_id.to_owned()),
            kind,
            check,
            evidence: failure.evidence,
        },
    )
    .await?;
    tracing::warn!(%case, ?job, %miner_id, check = check.as_str(), "anti-cheat case opened");
    apply_policy(state, case, miner_id, check).await
}

/// Slashes and suspends without an admin once a GPU has failed often enough.
async fn apply_policy(
    state: &AppState,
    case: Uuid,
    miner_id: &str,
    check: Check,
) -> Result<(), DbError> {
    let policy = &state.config.review.policy;
    if policy.auto_slash_failures == 0 {
        return Ok(());
    }
    let since = now_ms() - (policy.window_s as i64).saturating_mul(1000);
    let failures = cases::recent_count(&state.db, miner_id, since).await?;
    if failures < i64::from(policy.auto_slash_failures) {
        return Ok(());
    }
    let note = format!(
        "{failures} failed anti-cheat checks within {} h (the last: {})",
        policy.window_s / 3600,
        check.as_str()
    );
    match cases::slash(
        &state.db,
        case,
        &SlashDecision {
            amount: SlashAmount::Fraction(policy.slash_fraction),
            scope: policy.slash_scope,
            season: state.config.points.season_at(now_ms()),
            note: note.clone(),
            by: "policy".to_owned(),
        },
    )
    .await
    {
        Ok(slashed) => {
            tracing::warn!(%case, %miner_id, slashed = slashed.slashed.amount, "slashed by policy")
        }
        Err(cases::DecideError::Db(e)) => return Err(e),
        Err(e) => tracing::warn!(%case, error = %e, "policy could not slash"),
    }
    if policy.suspend {
        let reason = format!("anti-cheat: {note}");
        miners::suspend(&state.db, &state.online, miner_id, &reason).await?;
        tracing::warn!(%miner_id, %reason, "suspended by policy");
    }
    Ok(())
}

/// `value` as an evidence object (anything else is wrapped as `detail`).
pub fn evidence(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => {
            let mut map = serde_json::Map::new();
            map.insert("detail".to_owned(), other);
            map
        }
    }
}
