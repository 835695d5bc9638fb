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
use crate::points::{Accrual, MicroPoints, POINT, PointsKind, SeasonWindow, Work};

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
    /// Exactly this many micro-points (at most the points it may take, see [`Slash`]).
    Micro(MicroPoints),
    /// This share (0 < f ≤ 1) of the points it may take.
    Fraction(f64),
}

/// Whose points a slash takes, as an admin or the policy asks for it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Everything the wallet earned in the season, on all its GPUs.
    #[default]
    Wallet,
    /// Only what the GPU concerned earned in the season.
    Miner,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wallet => "wallet",
            Self::Miner => "miner",
        }
    }
}

/// Whose points a slash takes, resolved to a GPU where it names one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlashScope {
    /// What the whole wallet earned.
    Wallet,
    /// What one GPU (a miner id) of the wallet earned; the row carries its id.
    Miner(String),
}

impl SlashScope {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Wallet => Scope::Wallet.as_str(),
            Self::Miner(_) => Scope::Miner.as_str(),
        }
    }

    fn miner_id(&self) -> Option<&str> {
        match self {
            Self::Wallet => None,
            Self::Miner(id) => Some(id),
        }
    }
}

/// A slash to record. It takes from the points the scope earned (net of earlier slashes) in
/// `season`, and never more than the wallet's whole balance, so balances stay ≥ 0.
#[derive(Debug, Clone)]
pub struct Slash {
    pub wallet: String,
    pub kind: PointsKind,
    pub amount: SlashAmount,
    pub reason: String,
    pub case_id: Option<Uuid>,
    pub scope: SlashScope,
    /// Usually the current one ([`crate::points::PointsConfig::season_at`]).
    pub season: SeasonWindow,
    /// Who decided it (an admin's name, or `policy`).
    pub by: String,
}

/// The outcome of [`slash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Slashed {
    /// Micro-points taken (0 when there was nothing to take).
    pub amount: MicroPoints,
    /// False when the same case had already slashed this wallet and kind.
    pub recorded: bool,
    /// What the scope had earned in the season before the slash: what a fraction is of.
    pub basis: MicroPoints,
    pub balance_after: MicroPoints,
}

/// Records a slash as a debit.
pub async fn slash(db: &Db, slash: &Slash) -> Result<Slashed, DbError> {
    let mut tx = db.begin().await?;
    let slashed = slash_in(&mut tx, slash).await?;
    tx.commit().await?;
    Ok(slashed)
}

/// [`slash`] inside a transaction that writes more with it (an anti-cheat case's decision).
pub async fn slash_in(tx: &mut Tx, slash: &Slash) -> Result<Slashed, DbError> {
    let balance = balance_in(tx, &slash.wallet, slash.kind).await?;
    let earned = season_earned_in(tx, slash).await?;
    let basis = Ord::max(Ord::min(earned, balance), 0);
    let wanted = match slash.amount {
        SlashAmount::Micro(micro) => micro,
        SlashAmount::Fraction(f) => (basis as f64 * f).round() as MicroPoints,
    };
    let amount = wanted.clamp(0, basis);
    let detail = serde_json::json!({
        "requested": match slash.amount {
            SlashAmount::Micro(micro) => serde_json::json!({ "points": points(micro) }),
            SlashAmount::Fraction(f) => serde_json::json!({ "fraction": f }),
        },
        "scope": slash.scope.as_str(),
        "season": slash.season.name,
        "season_earned": points(basis),
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
            slash.scope.miner_id().map(str::to_owned).into(),
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
        basis,
        balance_after,
    })
}

/// Net points of the slash's kind its scope earned in its season.
async fn season_earned_in(tx: &mut Tx, slash: &Slash) -> Result<MicroPoints, DbError> {
    let mut select = Query::select();
    select
        .expr(sum_amount())
        .from(Ledger::Table)
        .and_where(Expr::col(Ledger::Wallet).eq(slash.wallet.as_str()))
        .and_where(Expr::col(Ledger::Kind).eq(slash.kind.as_str()));
    within(&mut select, &slash.season);
    if let Some(miner) = slash.scope.miner_id() {
        select.and_where(Expr::col(Ledger::MinerId).eq(miner));
    }
    let rows: Vec<(Option<i64>,)> = tx.fetch_all(&select).await?;
    Ok(rows.first().and_then(|(sum,)| *sum).unwrap_or(0))
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

fn within(select: &mut SelectStatement, season: &SeasonWindow) {
    select.and_where(Expr::col(Ledger::CreatedMs).gte(season.starts_ms));
    if let Some(ends) = season.ends_ms {
        select.and_where(Expr::col(Ledger::CreatedMs).lt(ends));
    }
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

/// A wallet's balances for all time.
pub async fn balances(db: &Db, wallet: &str) -> Result<Balances, DbError> {
    balances_of(db, &balance_query(wallet, None)).await
}

/// What a wallet earned (net of slashes) in one season.
pub async fn season_balances(
    db: &Db,
    wallet: &str,
    season: &SeasonWindow,
) -> Result<Balances, DbError> {
    let mut select = balance_query(wallet, None);
    within(&mut select, season);
    balances_of(db, &select).await
}

async fn balances_of(db: &Db, select: &SelectStatement) -> Result<Balances, DbError> {
    let rows: Vec<(String, i64)> = db.fetch_all(select).await?;
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
