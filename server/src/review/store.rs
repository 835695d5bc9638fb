//! The reviewer's tables: one `reviews` row per completed consumer or probe job it looked at,
//! and `miner_trust`, each GPU's run of valid results.
//!
//! A review row is claimed with `INSERT … ON CONFLICT DO NOTHING`, so a job is decided once
//! however many reviewers run; a pending review is settled with `UPDATE … WHERE status =
//! 'pending'` for the same reason.

use sea_query::{Expr, ExprTrait, Iden, OnConflict, Order, Query};
use serde::Serialize;
use uuid::Uuid;

use crate::db::{Db, DbError, now_ms};
use crate::jobs::store::Jobs;

#[derive(Iden)]
enum Reviews {
    Table,
    JobId,
    MinerId,
    Wallet,
    Model,
    Status,
    Reason,
    ValidationJob,
    Verdict,
    CreatedMs,
    DecidedMs,
}

#[derive(Iden)]
enum MinerTrust {
    Table,
    MinerId,
    ConsecutiveValid,
    JobsSeen,
    Audits,
    Failures,
    UpdatedMs,
}

/// Where a review stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewStatus {
    /// Not audited (sampling passed it by); cheap checks passed.
    Skipped,
    /// Re-executing on a validator.
    Pending,
    Passed,
    Failed,
    /// Could not be verified (no validator online, the re-execution failed or timed out).
    Unverified,
}

impl ReviewStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skipped => "skipped",
            Self::Pending => "pending",
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Unverified => "unverified",
        }
    }
}

/// A completed consumer or probe job no review has claimed yet.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Unreviewed {
    pub id: Uuid,
    pub model: String,
    pub params: String,
    pub output: Option<String>,
    pub metrics: Option<String>,
    pub miner_id: Option<String>,
    pub wallet: Option<String>,
    pub created_ms: i64,
    pub assigned_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub purpose: String,
}

const JOB_COLUMNS: [Jobs; 11] = [
    Jobs::Id,
    Jobs::Model,
    Jobs::Params,
    Jobs::Output,
    Jobs::Metrics,
    Jobs::MinerId,
    Jobs::Wallet,
    Jobs::CreatedMs,
    Jobs::AssignedMs,
    Jobs::FinishedMs,
    Jobs::Purpose,
];

/// One job with what a review reads of it.
pub async fn job(db: &Db, id: Uuid) -> Result<Option<Unreviewed>, DbError> {
    let select = Query::select()
        .columns(JOB_COLUMNS)
        .from(Jobs::Table)
        .and_where(Expr::col(Jobs::Id).eq(id))
        .to_owned();
    db.fetch_optional(&select).await
}

/// Completed consumer and probe jobs finished since `since_ms` without a review, oldest
/// first.
pub async fn unreviewed(db: &Db, since_ms: i64, limit: u64) -> Result<Vec<Unreviewed>, DbError> {
    let select = Query::select()
        .columns(JOB_COLUMNS.map(|c| (Jobs::Table, c)))
        .from(Jobs::Table)
        .left_join(
            Reviews::Table,
            Expr::col((Reviews::Table, Reviews::JobId)).equals((Jobs::Table, Jobs::Id)),
        )
        .and_where(Expr::col((Jobs::Table, Jobs::Status)).eq("completed"))
        .and_where(Expr::col((Jobs::Table, Jobs::Purpose)).ne("validation"))
        .and_where(Expr::col((Jobs::Table, Jobs::FinishedMs)).gte(since_ms))
        .and_where(Expr::col((Reviews::Table, Reviews::JobId)).is_null())
        .order_by((Jobs::Table, Jobs::FinishedMs), Order::Asc)
        .limit(limit)
        .to_owned();
    db.fetch_all(&select).await
}

/// A GPU's completed consumer and probe jobs since `since_ms` whose review is not settled
/// (not yet claimed, or waiting for a re-execution).
pub async fn unsettled(db: &Db, miner_id: &str, since_ms: i64) -> Result<i64, DbError> {
    let select =
        Query::select()
            .expr(Expr::col((Jobs::Table, Jobs::Id)).count())
            .from(Jobs::Table)
            .left_join(
                Reviews::Table,
                Expr::col((Reviews::Table, Reviews::JobId)).equals((Jobs::Table, Jobs::Id)),
            )
            .and_where(Expr::col((Jobs::Table, Jobs::MinerId)).eq(miner_id))
            .and_where(Expr::col((Jobs::Table, Jobs::Status)).eq("completed"))
            .and_where(Expr::col((Jobs::Table, Jobs::Purpose)).ne("validation"))
            .and_where(Expr::col((Jobs::Table, Jobs::FinishedMs)).gte(since_ms))
            .and_where(Expr::col((Reviews::Table, Reviews::JobId)).is_null().or(
                Expr::col((Reviews::Table, Reviews::Status)).eq(ReviewStatus::Pending.as_str()),
            ))
            .to_owned();
    let count: Option<(i64,)> = db.fetch_optional(&select).await?;
    Ok(count.map_or(0, |(n,)| n))
}

/// A review to record.
#[derive(Debug, Clone)]
pub struct NewReview<'a> {
    pub job_id: Uuid,
    pub miner_id: &'a str,
    pub wallet: &'a str,
    pub model: &'a str,
    pub status: ReviewStatus,
    pub reason: &'a str,
    pub verdict: Option<serde_json::Value>,
}

/// Claims a job's review; false when another reviewer already did.
pub async fn claim(db: &Db, review: &NewReview<'_>) -> Result<bool, DbError> {
    let now = now_ms();
    let decided = (review.status != ReviewStatus::Pending).then_some(now);
    let insert = Query::insert()
        .into_table(Reviews::Table)
        .columns([
            Reviews::JobId,
            Reviews::MinerId,
            Reviews::Wallet,
            Reviews::Model,
            Reviews::Status,
            Reviews::Reason,
            Reviews::Verdict,
            Reviews::CreatedMs,
            Reviews::DecidedMs,
        ])
        .values_panic([
            review.job_id.into(),
            review.miner_id.into(),
            review.wallet.into(),
            review.model.into(),
            review.status.as_str().into(),
            review.reason.into(),
            review.verdict.as_ref().map(ToString::to_string).into(),
            now.into(),
            decided.into(),
        ])
        .on_conflict(OnConflict::column(Reviews::JobId).do_nothing().to_owned())
        .to_owned();
    Ok(db.execute(&insert).await? == 1)
}

/// Records the re-execution a pending review waits for.
pub async fn set_validation_job(db: &Db, job_id: Uuid, validation: Uuid) -> Result<(), DbError> {
    let update = Query::update()
        .table(Reviews::Table)
        .value(Reviews::ValidationJob, validation)
        .and_where(Expr::col(Reviews::JobId).eq(job_id))
        .to_owned();
    db.execute(&update).await?;
    Ok(())
}

/// A review waiting for its re-execution.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingReview {
    pub job_id: Uuid,
    pub miner_id: String,
    pub wallet: String,
    pub model: String,
    pub reason: String,
    pub validation_job: Option<Uuid>,
    pub created_ms: i64,
}

/// Pending reviews, oldest first.
pub async fn pending(db: &Db, limit: u64) -> Result<Vec<PendingReview>, DbError> {
    let select = Query::select()
        .columns([
            Reviews::JobId,
            Reviews::MinerId,
            Reviews::Wallet,
            Reviews::Model,
            Reviews::Reason,
            Reviews::ValidationJob,
            Reviews::CreatedMs,
        ])
        .from(Reviews::Table)
        .and_where(Expr::col(Reviews::Status).eq(ReviewStatus::Pending.as_str()))
        .order_by(Reviews::CreatedMs, Order::Asc)
        .limit(limit)
        .to_owned();
    db.fetch_all(&select).await
}

/// Settles a pending review; false when it was no longer pending.
pub async fn decide(
    db: &Db,
    job_id: Uuid,
    status: ReviewStatus,
    verdict: &serde_json::Value,
) -> Result<bool, DbError> {
    let update = Query::update()
        .table(Reviews::Table)
        .value(Reviews::Status, status.as_str())
        .value(Reviews::Verdict, verdict.to_string())
        .value(Reviews::DecidedMs, now_ms())
        .and_where(Expr::col(Reviews::JobId).eq(job_id))
        .and_where(Expr::col(Reviews::Status).eq(ReviewStatus::Pending.as_str()))
        .to_owned();
    Ok(db.execute(&update).await? == 1)
}

/// Counts of reviews by status, for the lab and for metrics.
pub async fn counts(db: &Db) -> Result<Vec<(String, i64)>, DbError> {
    let select = Query::select()
        .column(Reviews::Status)
        .expr(Expr::col(Reviews::JobId).count())
        .from(Reviews::Table)
        .group_by_col(Reviews::Status)
        .to_owned();
    db.fetch_all(&select).await
}

/// A GPU's standing with the reviewer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct Trust {
    /// Valid results in a row (audited and passed, or not audited with cheap checks passed).
    pub consecutive_valid: i64,
    pub jobs_seen: i64,
    pub audits: i64,
    pub failures: i64,
}

pub async fn trust(db: &Db, miner_id: &str) -> Result<Trust, DbError> {
    let select = Query::select()
        .columns([
            MinerTrust::ConsecutiveValid,
            MinerTrust::JobsSeen,
            MinerTrust::Audits,
            MinerTrust::Failures,
        ])
        .from(MinerTrust::Table)
        .and_where(Expr::col(MinerTrust::MinerId).eq(miner_id))
        .to_owned();
    Ok(db.fetch_optional(&select).await?.unwrap_or_default())
}

/// What happened to one of a GPU's results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustEvent {
    /// A job was seen: not audited (its cheap checks passed, so it counts as valid), or
    /// sent for audit (it counts once the audit passes).
    Seen { audited: bool },
    /// An audit passed.
    Passed,
    /// A check failed: trust starts over.
    Failed,
}

/// Applies `event` to a GPU's trust row (created on first use).
pub async fn update_trust(db: &Db, miner_id: &str, event: TrustEvent) -> Result<(), DbError> {
    let (valid, seen, audits, failures) = match event {
        TrustEvent::Seen { audited: false } => (1, 1, 0, 0),
        TrustEvent::Seen { audited: true } => (0, 1, 1, 0),
        TrustEvent::Passed => (1, 0, 0, 0),
        TrustEvent::Failed => (0, 0, 0, 1),
    };
    let add = |column: MinerTrust, by: i64| Expr::col((MinerTrust::Table, column)).add(by);
    let consecutive = if event == TrustEvent::Failed {
        Expr::val(0i64)
    } else {
        add(MinerTrust::ConsecutiveValid, valid)
    };
    let now = now_ms();
    let insert = Query::insert()
        .into_table(MinerTrust::Table)
        .columns([
            MinerTrust::MinerId,
            MinerTrust::ConsecutiveValid,
            MinerTrust::JobsSeen,
            MinerTrust::Audits,
            MinerTrust::Failures,
            MinerTrust::UpdatedMs,
        ])
        .values_panic([
            miner_id.into(),
            valid.into(),
            seen.into(),
            audits.into(),
            failures.into(),
            now.into(),
        ])
        .on_conflict(
            OnConflict::column(MinerTrust::MinerId)
                .value(MinerTrust::ConsecutiveValid, consecutive)
                .value(MinerTrust::JobsSeen, add(MinerTrust::JobsSeen, seen))
                .value(MinerTrust::Audits, add(MinerTrust::Audits, audits))
                .value(MinerTrust::Failures, add(MinerTrust::Failures, failures))
                .value(MinerTrust::UpdatedMs, now)
                .to_owned(),
        )
        .to_owned();
    db.execute(&insert).await?;
    Ok(())
}
