//! The points ledger: append-only rows of micro-points per wallet and kind.
//!
//! - **Accruals** are written in the same transaction that completes their job, with the job's
//!   id under a UNIQUE constraint: retries, duplicate results and racing completions can never
//!   credit a job twice, and a crash can never complete a job without its credit.
//! - **Slashes** are negative rows with a reason and, when they come from an anti-cheat case,
//!   its id (UNIQUE per case, wallet and kind, so repeating a slash changes nothing).
//! - **Balances** are sums over the rows; there is no balance column to drift from them.
//!
//! Every row carries `detail`, the JSON explanation of its amount (work, multiplier, latency
//! factor, boost; or the slash's basis), which the portal shows as is.

pub mod holdings;
#[cfg(test)]
mod tests;

use sea_query::{Alias, Expr, ExprTrait, Func, Iden, OnConflict, Order, Query, SelectStatement};
use serde::Serialize;
use uuid::Uuid;

use crate::db::{Db, DbError, Tx, now_ms};
use crate::points::{Accrual, MicroPoints, POINT, PointsKind, Work};

#[derive(Iden)]
pub(crate) enum Ledger {
    Table,
    Id,
    Wallet,
    Kind,
    Entry,
    Amount,
    JobId,
    MinerId,
    Model,
    Detail,
    Reason,
    CaseId,
    CreatedMs,
}

/// What a row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Accrual,
    Slash,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accrual => "accrual",
            Self::Slash => "slash",
        }
    }
}

/// The boost that applied to (or was considered for) an accrual.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BoostDetail {
    /// NFTs the wallet held, per the last snapshot.
    pub nft_held: u32,
    /// stHEU the wallet held (the boost is off while its table is empty).
    pub stheu_held: u32,
    /// Whether this GPU is among the 3·n the holding boosts.
    pub applies: bool,
    /// The product of the boosts in force for this GPU, in millionths (1,000,000 = none).
    pub multiplier_millionths: u64,
}

/// A credit for one completed job, written with its completion.
#[derive(Debug, Clone)]
pub struct Credit {
    pub job_id: Uuid,
    pub wallet: String,
    pub miner_id: String,
    pub model: String,
    pub work: Work,
    pub accrual: Accrual,
    pub boost: BoostDetail,
}

impl Credit {
    /// The explanation stored with the row.
    fn detail(&self) -> serde_json::Value {
        let work = match self.work {
            Work::Image {
                width,
                height,
                steps,
            } => serde_json::json!({ "width": width, "height": height, "steps": steps }),
            Work::Llm {
                prompt_tokens,
                completion_tokens,
            } => serde_json::json!({
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
            }),
        };
        let a = &self.accrual;
        serde_json::json!({
            "work": work,
            "base": a.base,
            "multiplier": millionths(a.multiplier_millionths),
            "latency_ms": a.latency_ms,
            "latency_factor": millionths(a.latency_factor_millionths),
            "boost": {
                "nft_held": self.boost.nft_held,
                "stheu_held": self.boost.stheu_held,
                "applies": self.boost.applies,
                "multiplier": millionths(self.boost.multiplier_millionths),
            },
        })
    }
}

fn millionths(value: u64) -> f64 {
    value as f64 / 1e6
}

/// Points as a decimal number for people (amounts themselves stay integers).
pub fn points(micro: MicroPoints) -> f64 {
    micro as f64 / POINT as f64
}

/// Writes the credits of jobs that just completed, inside the completing transaction. A job
/// already credited is skipped (`ON CONFLICT DO NOTHING` on its id). Returns rows written.
pub async fn insert_credits(tx: &mut Tx, credits: &[&Credit]) -> Result<u64, DbError> {
    if credits.is_empty() {
        return Ok(0);
    }
    let now = now_ms();
    let mut insert = Query::insert();
    insert.into_table(Ledger::Table).columns([
        Ledger::Wallet,
        Ledger::Kind,
        Ledger::Entry,
        Ledger::Amount,
        Ledger::JobId,
        Ledger::MinerId,
        Ledger::Model,
        Ledger::Detail,
        Ledger::CreatedMs,
    ]);
    for credit in credits {
        insert.values_panic([
            credit.wallet.as_str().into(),
            credit.accrual.kind.as_str().into(),
            EntryKind::Accrual.as_str().into(),
            credit.accrual.amount.into(),
            credit.job_id.into(),
            credit.miner_id.as_str().into(),
            credit.model.as_str().into(),
            credit.detail().to_string().into(),
            now.into(),
        ]);
    }
    insert.on_conflict(OnConflict::column(Ledger::JobId).do_nothing().to_owned());
    tx.execute(&insert).await
}

/// How much a slash takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SlashAmount {
    /// Exactly this many micro-points (at most the balance).
    Micro(MicroPoints),
    /// This share (0 < f ≤ 1) of the balance at the time of the slash.
    Fraction(f64),
}

/// A slash to record.
#[derive(Debug, Clone)]
pub struct Slash {
    pub wallet: String,
    pub kind: PointsKind,
    pub amount: SlashAmount,
    pub reason: String,
    pub case_id: Option<Uuid>,
    pub miner_id: Option<String>,
    /// Who decided it (an admin's name, or `policy`).
    pub by: String,
}

/// The outcome of [`slash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Slashed {
    /// Micro-points taken (0 when the balance was already empty).
    pub amount: MicroPoints,
    /// False when the same case had already slashed this wallet and kind.
    pub recorded: bool,
    pub balance_after: MicroPoints,
}

/// Records a slash as a debit: never more than the balance, so balances stay ≥ 0.
pub async fn slash(db: &Db, slash: &Slash) -> Result<Slashed, DbError> {
    let mut tx = db.begin().await?;
    let slashed = slash_in(&mut tx, slash).await?;
    tx.commit().await?;
    Ok(slashed)
}

/// [`slash`] inside a transaction that writes more with it (an anti-cheat case's decision).
pub async fn slash_in(tx: &mut Tx, slash: &Slash) -> Result<Slashed, DbError> {
    let balance = balance_in(tx, &slash.wallet, slash.kind).await?;
    let wanted = match slash.amount {
        SlashAmount::Micro(micro) => micro,
        SlashAmount::Fraction(f) => (balance as f64 * f).round() as MicroPoints,
    };
    let amount = wanted.clamp(0, Ord::max(balance, 0));
    let detail = serde_json::json!({
        "requested": match slash.amount {
            SlashAmount::Micro(micro) => serde_json::json!({ "points": points(micro) }),
            SlashAmount::Fraction(f) => serde_json::json!({ "fraction": f }),
        },
        "balance_before": points(balance),
        "by": slash.by,
    });
    let mut insert = Query::insert();
    insert
        .into_table(Ledger::Table)
        .columns([
            Ledger::Wallet,
            Ledger::Kind,
            Ledger::Entry,
            Ledger::Amount,
            Ledger::MinerId,
            Ledger::Detail,
            Ledger::Reason,
            Ledger::CaseId,
            Ledger::CreatedMs,
        ])
        .values_panic([
            slash.wallet.as_str().into(),
            slash.kind.as_str().into(),
            EntryKind::Slash.as_str().into(),
            (-amount).into(),
            slash.miner_id.clone().into(),
            detail.to_string().into(),
            slash.reason.as_str().into(),
            slash.case_id.into(),
            now_ms().into(),
        ])
        .on_conflict(
            OnConflict::columns([Ledger::CaseId, Ledger::Wallet, Ledger::Kind])
                .do_nothing()
                .to_owned(),
        );
    let recorded = tx.execute(&insert).await? == 1;
    let balance_after = balance_in(tx, &slash.wallet, slash.kind).await?;
    Ok(Slashed {
        amount: if recorded { amount } else { 0 },
        recorded,
        balance_after,
    })
}

/// `SUM(amount)` as a 64-bit integer on both databases (PostgreSQL sums BIGINTs as NUMERIC).
fn sum_amount() -> Expr {
    Func::cast_as(Func::sum(Expr::col(Ledger::Amount)), "BIGINT").into()
}

fn balance_query(wallet: &str, kind: Option<PointsKind>) -> SelectStatement {
    let mut select = Query::select();
    select
        .column(Ledger::Kind)
        .expr(sum_amount())
        .from(Ledger::Table)
        .and_where(Expr::col(Ledger::Wallet).eq(wallet))
        .group_by_col(Ledger::Kind);
    if let Some(kind) = kind {
        select.and_where(Expr::col(Ledger::Kind).eq(kind.as_str()));
    }
    select
}

async fn balance_in(tx: &mut Tx, wallet: &str, kind: PointsKind) -> Result<MicroPoints, DbError> {
    let rows: Vec<(String, i64)> = tx.fetch_all(&balance_query(wallet, Some(kind))).await?;
    Ok(rows.first().map_or(0, |(_, sum)| *sum))
}

/// A wallet's balances in micro-points: (waifu, llama).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Balances {
    pub waifu: MicroPoints,
    pub llama: MicroPoints,
}

pub async fn balances(db: &Db, wallet: &str) -> Result<Balances, DbError> {
    let rows: Vec<(String, i64)> = db.fetch_all(&balance_query(wallet, None)).await?;
    let mut balances = Balances::default();
    for (kind, sum) in rows {
        match kind.as_str() {
            "waifu" => balances.waifu = sum,
            "llama" => balances.llama = sum,
            _ => {}
        }
    }
    Ok(balances)
}

/// One ledger row as read back.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EntryRow {
    pub id: i64,
    pub wallet: String,
    pub kind: String,
    pub entry: String,
    pub amount: i64,
    pub job_id: Option<Uuid>,
    pub miner_id: Option<String>,
    pub model: Option<String>,
    pub detail: String,
    pub reason: Option<String>,
    pub case_id: Option<Uuid>,
    pub created_ms: i64,
}

const ENTRY_COLUMNS: [Ledger; 12] = [
    Ledger::Id,
    Ledger::Wallet,
    Ledger::Kind,
    Ledger::Entry,
    Ledger::Amount,
    Ledger::JobId,
    Ledger::MinerId,
    Ledger::Model,
    Ledger::Detail,
    Ledger::Reason,
    Ledger::CaseId,
    Ledger::CreatedMs,
];

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct EntryFilter {
    pub wallet: Option<String>,
    pub kind: Option<PointsKind>,
    pub entry: Option<EntryKind>,
    /// Only rows older than this id (the previous page's cursor).
    pub before_id: Option<i64>,
    pub limit: u64,
}

/// Rows newest first, one page.
pub async fn entries(db: &Db, filter: &EntryFilter) -> Result<Vec<EntryRow>, DbError> {
    let mut select = Query::select();
    select
        .columns(ENTRY_COLUMNS)
        .from(Ledger::Table)
        .order_by(Ledger::Id, Order::Desc)
        .limit(filter.limit);
    if let Some(wallet) = &filter.wallet {
        select.and_where(Expr::col(Ledger::Wallet).eq(wallet.as_str()));
    }
    if let Some(kind) = filter.kind {
        select.and_where(Expr::col(Ledger::Kind).eq(kind.as_str()));
    }
    if let Some(entry) = filter.entry {
        select.and_where(Expr::col(Ledger::Entry).eq(entry.as_str()));
    }
    if let Some(before) = filter.before_id {
        select.and_where(Expr::col(Ledger::Id).lt(before));
    }
    db.fetch_all(&select).await
}

/// The accrual of one job, if it earned one.
pub async fn for_job(db: &Db, job: Uuid) -> Result<Option<EntryRow>, DbError> {
    let select = Query::select()
        .columns(ENTRY_COLUMNS)
        .from(Ledger::Table)
        .and_where(Expr::col(Ledger::JobId).eq(job))
        .to_owned();
    db.fetch_optional(&select).await
}

const DAY_MS: i64 = 86_400_000;

/// Net points per UTC day and kind since `since_ms`: `(day start ms, kind, micro-points)`,
/// oldest first.
pub async fn daily(
    db: &Db,
    wallet: &str,
    kind: Option<PointsKind>,
    since_ms: i64,
) -> Result<Vec<(i64, String, i64)>, DbError> {
    // Integer division on both databases (the column is an integer). Grouped by the alias:
    // PostgreSQL would not see two copies of the expression (with their own bound divisor) as
    // the same.
    let day = Alias::new("day");
    let mut select = Query::select();
    select
        .expr_as(Expr::col(Ledger::CreatedMs).div(DAY_MS), day.clone())
        .column(Ledger::Kind)
        .expr(sum_amount())
        .from(Ledger::Table)
        .and_where(Expr::col(Ledger::Wallet).eq(wallet))
        .and_where(Expr::col(Ledger::CreatedMs).gte(since_ms))
        .group_by_col(Ledger::Kind)
        .add_group_by([Expr::col(day.clone())])
        .order_by(day, Order::Asc)
        .order_by(Ledger::Kind, Order::Asc);
    if let Some(kind) = kind {
        select.and_where(Expr::col(Ledger::Kind).eq(kind.as_str()));
    }
    let rows: Vec<(i64, String, i64)> = db.fetch_all(&select).await?;
    Ok(rows
        .into_iter()
        .map(|(day, kind, sum)| (day * DAY_MS, kind, sum))
        .collect())
}

/// Wallets by net points of `kind` since `since_ms`, highest first: `(wallet, micro-points)`.
pub async fn leaderboard(
    db: &Db,
    kind: PointsKind,
    since_ms: Option<i64>,
    limit: u64,
) -> Result<Vec<(String, i64)>, DbError> {
    let total = sum_amount();
    let mut select = Query::select();
    select
        .column(Ledger::Wallet)
        .expr(total.clone())
        .from(Ledger::Table)
        .and_where(Expr::col(Ledger::Kind).eq(kind.as_str()))
        .group_by_col(Ledger::Wallet)
        .order_by_expr(total, Order::Desc)
        .order_by(Ledger::Wallet, Order::Asc)
        .limit(limit);
    if let Some(since) = since_ms {
        select.and_where(Expr::col(Ledger::CreatedMs).gte(since));
    }
    db.fetch_all(&select).await
}
