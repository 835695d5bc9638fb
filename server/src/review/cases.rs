//! Anti-cheat cases: a failed check opens one with its evidence; it stays `open` until it is
//! slashed or dismissed, once. Decisions are `UPDATE … WHERE status = 'open'`, so of two
//! racing decisions one wins and the other sees the case already decided.
//!
//! A slash is the ledger's slash with the case's id, written in the same transaction that
//! marks the case: the case and its debit land together, and the ledger's unique (case,
//! wallet, kind) index keeps a case from ever debiting twice.

#[cfg(test)]
mod tests;

use sea_query::{Expr, ExprTrait, Iden, Order, Query, SelectStatement, UpdateStatement};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::{Db, DbError, Tx, now_ms};
use crate::ledger::{self, Ledger, Scope, Slash, SlashAmount, SlashScope, Slashed};
use crate::points::{MicroPoints, PointsKind, SeasonWindow};

/// A case's id: a UUIDv7, so ids sort by creation time.
pub type CaseId = Uuid;

#[derive(Iden)]
enum ReviewCases {
    Table,
    Id,
    JobId,
    Wallet,
    MinerId,
    Kind,
    CheckName,
    Evidence,
    Status,
    CreatedMs,
    DecidedMs,
    DecidedBy,
    Note,
    SlashPoints,
    SlashFraction,
    SlashedMicro,
    LedgerEntryId,
    SlashScope,
    SlashSeason,
}

/// The check that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// An image too far from a re-run of the same job.
    ImageSimilarity,
    /// LLM output the reference model finds unlikely, token by token.
    LlmTeacherForcing,
    /// Token counts that the text does not bear out.
    UsageMismatch,
    /// Reported timings that cannot be true.
    Latency,
    /// More work per second than the GPU can do.
    Throughput,
    /// A wrong answer to a model-file challenge.
    Challenge,
    /// A wrong answer to a probe job with a known output.
    Probe,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ImageSimilarity => "image_similarity",
            Self::LlmTeacherForcing => "llm_teacher_forcing",
            Self::UsageMismatch => "usage_mismatch",
            Self::Latency => "latency",
            Self::Throughput => "throughput",
            Self::Challenge => "challenge",
            Self::Probe => "probe",
        }
    }
}

/// Where a case stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Open,
    Slashed,
    Dismissed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Slashed => "slashed",
            Self::Dismissed => "dismissed",
        }
    }
}

/// A case to open.
#[derive(Debug, Clone)]
pub struct NewCase {
    pub job_id: Option<Uuid>,
    pub wallet: String,
    /// The GPU the checked work ran on (`<wallet>-<rig>-gpu<N>`), when known.
    pub miner_id: Option<String>,
    /// The points a slash of this case takes.
    pub kind: PointsKind,
    pub check: Check,
    /// Scores, thresholds, timings, object keys: what an admin needs to decide.
    pub evidence: serde_json::Map<String, serde_json::Value>,
}

/// A case as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CaseRow {
    pub id: Uuid,
    pub job_id: Option<Uuid>,
    pub wallet: String,
    pub miner_id: Option<String>,
    pub kind: String,
    #[sqlx(rename = "check_name")]
    pub check: String,
    /// JSON object.
    pub evidence: String,
    pub status: String,
    pub created_ms: i64,
    pub decided_ms: Option<i64>,
    pub decided_by: Option<String>,
    pub note: Option<String>,
    pub slash_points: Option<i64>,
    pub slash_fraction: Option<f64>,
    pub slashed_micro: Option<i64>,
    pub ledger_entry_id: Option<i64>,
    /// `wallet` or `miner`: whose season points the slash was a share of.
    pub slash_scope: Option<String>,
    /// The season it was measured in.
    pub slash_season: Option<String>,
}

/// Opens a case; returns its id.
pub async fn open_case(db: &Db, case: &NewCase) -> Result<CaseId, DbError> {
    let id = Uuid::now_v7();
    let insert = Query::insert()
        .into_table(ReviewCases::Table)
        .columns([
            ReviewCases::Id,
            ReviewCases::JobId,
            ReviewCases::Wallet,
            ReviewCases::MinerId,
            ReviewCases::Kind,
            ReviewCases::CheckName,
            ReviewCases::Evidence,
            ReviewCases::Status,
            ReviewCases::CreatedMs,
        ])
        .values_panic([
            id.into(),
            case.job_id.into(),
            case.wallet.as_str().into(),
            case.miner_id.clone().into(),
            case.kind.as_str().into(),
            case.check.as_str().into(),
            serde_json::Value::Object(case.evidence.clone())
                .to_string()
                .into(),
            Status::Open.as_str().into(),
            now_ms().into(),
        ])
        .to_owned();
    db.execute(&insert).await?;
    Ok(id)
}

fn select_case(id: CaseId) -> SelectStatement {
    Query::select()
        .column(sea_query::Asterisk)
        .from(ReviewCases::Table)
        .and_where(Expr::col(ReviewCases::Id).eq(id))
        .to_owned()
}

pub async fn get(db: &Db, id: CaseId) -> Result<Option<CaseRow>, DbError> {
    db.fetch_optional(&select_case(id)).await
}

/// Cases of a GPU opened since `since_ms` and not dismissed: what the policy counts.
pub async fn recent_count(db: &Db, miner_id: &str, since_ms: i64) -> Result<i64, DbError> {
    let select = Query::select()
        .expr(Expr::col(ReviewCases::Id).count())
        .from(ReviewCases::Table)
        .and_where(Expr::col(ReviewCases::MinerId).eq(miner_id))
        .and_where(Expr::col(ReviewCases::CreatedMs).gte(since_ms))
        .and_where(Expr::col(ReviewCases::Status).ne(Status::Dismissed.as_str()))
        .to_owned();
    let row: Option<(i64,)> = db.fetch_optional(&select).await?;
    Ok(row.map_or(0, |(n,)| n))
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct CaseFilter {
    pub status: Option<Status>,
    pub wallet: Option<String>,
    /// Only cases older than this one (the previous page's cursor).
    pub before: Option<CaseId>,
    pub limit: u64,
}

/// Cases newest first, one page.
pub async fn list(db: &Db, filter: &CaseFilter) -> Result<Vec<CaseRow>, DbError> {
    let mut select = Query::select();
    select
        .column(sea_query::Asterisk)
        .from(ReviewCases::Table)
        .order_by(ReviewCases::Id, Order::Desc)
        .limit(filter.limit);
    if let Some(status) = filter.status {
        select.and_where(Expr::col(ReviewCases::Status).eq(status.as_str()));
    }
    if let Some(wallet) = &filter.wallet {
        select.and_where(Expr::col(ReviewCases::Wallet).eq(wallet.as_str()));
    }
    if let Some(before) = filter.before {
        select.and_where(Expr::col(ReviewCases::Id).lt(before));
    }
    db.fetch_all(&select).await
}

/// Why a decision was not taken.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("no anti-cheat case {0}")]
    NotFound(CaseId),
    #[error("case {id} is already {status}; a case is decided once")]
    AlreadyDecided { id: CaseId, status: String },
    #[error("case {0} names no GPU, so there are no miner points to slash; use scope `wallet`")]
    NoMiner(CaseId),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A slash of a case.
#[derive(Debug, Clone)]
pub struct SlashDecision {
    /// A share of, or points from, what `scope` earned in `season`.
    pub amount: SlashAmount,
    pub scope: Scope,
    /// Usually the current one.
    pub season: SeasonWindow,
    /// Shown to the miner with the slash.
    pub note: String,
    /// The admin's name, or `policy`.
    pub by: String,
}

/// The outcome of [`slash`].
#[derive(Debug, Clone)]
pub struct CaseSlashed {
    pub case: CaseRow,
    pub slashed: Slashed,
}

/// The reason a slash of `case` carries in the ledger, which the wallet sees.
pub fn slash_reason(case: &CaseRow, note: &str) -> String {
    format!("anti-cheat case {} ({}): {note}", case.id, case.check)
}

/// Slashes an open case: marks it, debits the wallet (or the case's GPU's season points)
/// with the case's id and records the debit on the case, all in one transaction.
pub async fn slash(
    db: &Db,
    id: CaseId,
    decision: &SlashDecision,
) -> Result<CaseSlashed, DecideError> {
    let (points, fraction) = match decision.amount {
        SlashAmount::Micro(micro) => (Some(micro), None),
        SlashAmount::Fraction(f) => (None, Some(f)),
    };
    let mut tx = db.begin().await?;
    let mut update = decision_update(Status::Slashed, Some(&decision.note), &decision.by);
    update.values([
        (ReviewCases::SlashPoints, points.into()),
        (ReviewCases::SlashFraction, fraction.into()),
        (ReviewCases::SlashScope, decision.scope.as_str().into()),
        (
            ReviewCases::SlashSeason,
            decision.season.name.as_str().into(),
        ),
    ]);
    let case = claim(&mut tx, id, update).await?;
    let scope = match (decision.scope, &case.miner_id) {
        (Scope::Wallet, _) => SlashScope::Wallet,
        (Scope::Miner, Some(miner)) => SlashScope::Miner(miner.clone()),
        // The transaction rolls back as it drops: the case stays open.
        (Scope::Miner, None) => return Err(DecideError::NoMiner(id)),
    };
    let kind = match case.kind.as_str() {
        "llama" => PointsKind::Llama,
        _ => PointsKind::Waifu,
    };
    let slashed = ledger::slash_in(
        &mut tx,
        &Slash {
            wallet: case.wallet.clone(),
            kind,
            amount: decision.amount,
            reason: slash_reason(&case, &decision.note),
            case_id: Some(id),
            scope,
            season: decision.season.clone(),
            by: decision.by.clone(),
        },
    )
    .await?;
    let entry = Query::select()
        .columns([Ledger::Id, Ledger::Amount])
        .from(Ledger::Table)
        .and_where(Expr::col(Ledger::CaseId).eq(id))
        .and_where(Expr::col(Ledger::Wallet).eq(case.wallet.as_str()))
        .and_where(Expr::col(Ledger::Kind).eq(kind.as_str()))
        .to_owned();
    let entries: Vec<(i64, MicroPoints)> = tx.fetch_all(&entry).await?;
    let (entry_id, amount) = entries.first().copied().unzip();
    let record = Query::update()
        .table(ReviewCases::Table)
        .values([
            (ReviewCases::SlashedMicro, amount.map(|a| -a).into()),
            (ReviewCases::LedgerEntryId, entry_id.into()),
        ])
        .and_where(Expr::col(ReviewCases::Id).eq(id))
        .returning_all()
        .to_owned();
    let case = tx.write_returning(&record).await?.pop().unwrap_or(case);
    tx.commit().await?;
    Ok(CaseSlashed { case, slashed })
}

/// Dismisses an open case: no one is punished.
pub async fn dismiss(
    db: &Db,
    id: CaseId,
    note: Option<&str>,
    by: &str,
) -> Result<CaseRow, DecideError> {
    let mut tx = db.begin().await?;
    let case = claim(&mut tx, id, decision_update(Status::Dismissed, note, by)).await?;
    tx.commit().await?;
    Ok(case)
}

fn decision_update(status: Status, note: Option<&str>, by: &str) -> UpdateStatement {
    Query::update()
        .table(ReviewCases::Table)
        .values([
            (ReviewCases::Status, status.as_str().into()),
            (ReviewCases::DecidedMs, now_ms().into()),
            (ReviewCases::DecidedBy, by.into()),
            (ReviewCases::Note, note.map(str::to_owned).into()),
        ])
        .to_owned()
}

/// Applies `update` to the case if it is still open; otherwise says why not.
async fn claim(
    tx: &mut Tx,
    id: CaseId,
    mut update: UpdateStatement,
) -> Result<CaseRow, DecideError> {
    update
        .and_where(Expr::col(ReviewCases::Id).eq(id))
        .and_where(Expr::col(ReviewCases::Status).eq(Status::Open.as_str()))
        .returning_all();
    if let Some(case) = tx.write_returning::<CaseRow>(&update).await?.pop() {
        return Ok(case);
    }
    let current: Vec<CaseRow> = tx.fetch_all(&select_case(id)).await?;
    Err(match current.into_iter().next() {
        Some(case) => DecideError::AlreadyDecided {
            id,
            status: case.status,
        },
        None => DecideError::NotFound(id),
    })
}
