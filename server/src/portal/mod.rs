//! The portal's REST API: balances, ledger, charts, miners, leaderboard and slashes for
//! anyone who knows an address; slashing and suspension for admins.
//!
//! Amounts are given twice: `*_micro` as exact integers (1 point = 1,000,000) and as decimal
//! points for display. Lists are newest first and paginated by an opaque `cursor` (the
//! `next_cursor` of the previous page). The admin routes are in [`admin`].

mod admin;
mod cases;
mod review;
pub mod site;

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::auth::normalize_wallet;
use crate::db::now_ms;
use crate::error::{ApiError, ApiQuery, ErrorBody};
use crate::ledger::{self, EntryFilter, EntryKind, EntryRow, holdings, points};
use crate::miners::{self, MinerRow};
use crate::points::{GPUS_PER_NFT, MicroPoints, PointsKind, SeasonWindow, boosted_miners};

const DAY_MS: i64 = 86_400_000;
const MAX_PAGE: u64 = 200;
const DEFAULT_PAGE: u64 = 50;

/// A page size from the query: 1–200, 50 when absent.
fn page_limit(limit: Option<u64>) -> Result<u64, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::InvalidRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    Ok(limit)
}

pub(crate) fn wallet_param(address: &str) -> Result<String, ApiError> {
    normalize_wallet(address).map_err(|e| ApiError::InvalidRequest(e.to_string()))
}

/// A points amount, exact and for display.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Amount {
    /// Micro-points (1 point = 1,000,000): exact.
    pub micro: i64,
    /// Points, for display.
    pub points: f64,
}

impl From<MicroPoints> for Amount {
    fn from(micro: MicroPoints) -> Self {
        Self {
            micro,
            points: points(micro),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Balances {
    pub waifu: Amount,
    pub llama: Amount,
}

impl From<ledger::Balances> for Balances {
    fn from(b: ledger::Balances) -> Self {
        Self {
            waifu: b.waifu.into(),
            llama: b.llama.into(),
        }
    }
}

/// Balances within one season.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeasonBalances {
    #[serde(flatten)]
    pub season: SeasonWindow,
    pub waifu: Amount,
    pub llama: Amount,
}

/// One GPU of a wallet.
#[derive(Debug, Serialize, ToSchema)]
pub struct Miner {
    pub miner_id: String,
    pub wallet: String,
    /// The rig name from the miner token.
    pub rig: String,
    pub gpu_index: i32,
    pub gpu: String,
    pub vram_mb: i64,
    /// Models the GPU served when it last connected.
    pub models: Vec<String>,
    pub online: bool,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Whether the wallet's NFT boost covers this GPU.
    pub boosted: bool,
    pub suspension: Option<Suspension>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Suspension {
    pub since_ms: i64,
    pub reason: String,
}

/// The boost a wallet's holdings give.
#[derive(Debug, Serialize, ToSchema)]
pub struct Boost {
    pub nft_held: u32,
    /// The NFT multiplier for that holding (1 when none).
    pub nft_multiplier: f64,
    /// How many GPUs the holding may boost (3 per NFT).
    pub gpus_covered: u64,
    pub stheu_held: u32,
    pub stheu_multiplier: f64,
    /// The GPUs boosted now, by seniority.
    pub boosted_miners: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WalletView {
    pub address: String,
    /// All time: accruals less slashes.
    pub balances: Balances,
    /// What the wallet earned (less slashes) in the current season.
    pub season: SeasonBalances,
    /// Its GPUs, each with its last 24 h of work.
    pub miners: Vec<MinerView>,
    pub boost: Boost,
}

/// The replicas alive: a miner whose agent is connected to one of them is online.
async fn alive_replicas(state: &AppState) -> Result<Vec<Uuid>, ApiError> {
    Ok(state.jobs.cluster().alive(&state.db).await?)
}

fn miner_view(state: &AppState, row: MinerRow, boosted: bool, alive: &[Uuid]) -> Miner {
    Miner {
        online: state.online.is_online(&row.miner_id)
            || row.replica.is_some_and(|r| alive.contains(&r)),
        models: row
            .models
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default(),
        suspension: row.suspended_ms.map(|since_ms| Suspension {
            since_ms,
            reason: row.suspended_reason.clone().unwrap_or_default(),
        }),
        miner_id: row.miner_id,
        wallet: row.wallet,
        rig: row.name,
        gpu_index: row.gpu_index,
        gpu: row.gpu_name,
        vram_mb: row.vram_mb,
        first_seen_ms: row.first_seen_ms,
        last_seen_ms: row.last_seen_ms,
        boosted,
    }
}

/// A wallet's balances, miners and boost. Unknown addresses answer with zeros (nothing
/// mined yet), not 404, so the portal can show an empty wallet.
#[utoipa::path(get, path = "/api/v1/wallets/{address}", tag = "portal",
    params(("address" = String, Path, description = "0x-prefixed 40-hex-digit address, any case")),
    responses(
        (status = 200, description = "balances, miners and boost (zeros for an unknown address)",
            body = WalletView),
        (status = 400, description = "not an address", body = ErrorBody)))]
pub async fn wallet(
    State(state): State<AppState>,
    Path(address): Path<String>,
) -> Result<Json<WalletView>, ApiError> {
    let wallet = wallet_param(&address)?;
    let balances = ledger::balances(&state.db, &wallet).await?;
    let season = state.config.points.season_at(now_ms());
    let in_season = ledger::season_balances(&state.db, &wallet, &season).await?;
    let (nft_held, stheu_held) = holdings::held(&state.db, &wallet).await?;
    let rows = miners::of_wallet(&state.db, &wallet).await?;
    let seniority: Vec<(String, i64)> = rows
        .iter()
        .map(|m| (m.miner_id.clone(), m.first_seen_ms))
        .collect();
    let points_config = &state.config.points;
    let nft_multiplier = points_config.nft_multiplier(nft_held);
    let boosted: Vec<String> = if nft_multiplier > 1_000_000 {
        let set = boosted_miners(&seniority, nft_held);
        rows.iter()
            .filter(|m| set.contains(m.miner_id.as_str()))
            .map(|m| m.miner_id.clone())
            .collect()
    } else {
        Vec::new()
    };
    let alive = alive_replicas(&state).await?;
    let mut miners = Vec::with_capacity(rows.len());
    for row in rows {
        let is_boosted = boosted.contains(&row.miner_id);
        let (jobs_24h, mean_latency_ms_24h) = last_day(&state, &row.miner_id).await?;
        miners.push(MinerView {
            miner: miner_view(&state, row, is_boosted, &alive),
            jobs_24h,
            mean_latency_ms_24h,
        });
    }
    Ok(Json(WalletView {
        address: wallet,
        balances: balances.into(),
        season: SeasonBalances {
            season,
            waifu: in_season.waifu.into(),
            llama: in_season.llama.into(),
        },
        miners,
        boost: Boost {
            nft_held,
            nft_multiplier: nft_multiplier as f64 / 1e6,
            gpus_covered: u64::from(nft_held) * GPUS_PER_NFT,
            stheu_held,
            stheu_multiplier: points_config.stheu_multiplier(stheu_held) as f64 / 1e6,
            boosted_miners: boosted,
        },
    }))
}

/// One ledger row.
#[derive(Debug, Serialize, ToSchema)]
pub struct Entry {
    pub id: i64,
    pub wallet: String,
    /// `waifu` or `llama`.
    pub kind: String,
    /// `accrual` or `slash`.
    pub entry: String,
    /// Negative for slashes.
    pub amount: Amount,
    pub job_id: Option<Uuid>,
    pub miner_id: Option<String>,
    pub model: Option<String>,
    /// How the amount was reached: for accruals `work` (width, height, steps or prompt and
    /// completion tokens), `multiplier`, `latency_ms`, `latency_factor` and `boost`; for
    /// slashes what was requested and the balance before.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    pub reason: Option<String>,
    pub case_id: Option<Uuid>,
    pub created_ms: i64,
}

impl From<EntryRow> for Entry {
    fn from(row: EntryRow) -> Self {
        Self {
            id: row.id,
            wallet: row.wallet,
            kind: row.kind,
            entry: row.entry,
            amount: row.amount.into(),
            job_id: row.job_id,
            miner_id: row.miner_id,
            model: row.model,
            detail: serde_json::from_str(&row.detail).unwrap_or(serde_json::Value::Null),
            reason: row.reason,
            case_id: row.case_id,
            created_ms: row.created_ms,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EntryPage {
    pub entries: Vec<Entry>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
    /// Rows per page, 1–200 (default 50).
    pub limit: Option<u64>,
    /// Only `waifu` or `llama` rows.
    pub kind: Option<PointsKind>,
}

fn page_filter(
    wallet: Option<String>,
    query: &PageQuery,
    entry: Option<EntryKind>,
) -> Result<EntryFilter, ApiError> {
    let limit = page_limit(query.limit)?;
    let before_id = match &query.cursor {
        None => None,
        Some(cursor) => Some(cursor.parse::<i64>().map_err(|_| {
            ApiError::InvalidRequest(
                "cursor is not one this API gave out; pass `next_cursor` from the previous page"
                    .to_owned(),
            )
        })?),
    };
    Ok(EntryFilter {
        wallet,
        kind: query.kind,
        entry,
        before_id,
        limit,
    })
}

fn page(rows: Vec<EntryRow>, limit: u64) -> EntryPage {
    let next_cursor = (rows.len() as u64 == limit)
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    EntryPage {
        entries: rows.into_iter().map(Entry::from).collect(),
        next_cursor,
    }
}

/// A wallet's ledger, newest first, each row with its explanation.
#[utoipa::path(get, path = "/api/v1/wallets/{address}/ledger", tag = "portal",
    params(("address" = String, Path, description = "wallet address"), PageQuery),
    responses(
        (status = 200, description = "one page of the wallet's ledger", body = EntryPage),
        (status = 400, description = "bad address, cursor or limit", body = ErrorBody)))]
pub async fn wallet_ledger(
    State(state): State<AppState>,
    Path(address): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<EntryPage>, ApiError> {
    let filter = page_filter(Some(wallet_param(&address)?), &query, None)?;
    let rows = ledger::entries(&state.db, &filter).await?;
    Ok(Json(page(rows, filter.limit)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// `waifu` or `llama`; both when absent.
    pub kind: Option<PointsKind>,
    /// Only `day` for now.
    pub bucket: Option<String>,
    /// How many days back, 1–366 (default 30).
    pub days: Option<u32>,
}

/// Net points of one day.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPoint {
    /// Start of the UTC day, ms since the epoch.
    pub start_ms: i64,
    pub waifu: Amount,
    pub llama: Amount,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct History {
    pub address: String,
    pub bucket: String,
    /// One point per day from the first day of the period to today, zeros included.
    pub series: Vec<HistoryPoint>,
}

/// Points per day, per kind: the series behind the portal's chart.
#[utoipa::path(get, path = "/api/v1/wallets/{address}/points-history", tag = "portal",
    params(("address" = String, Path, description = "wallet address"), HistoryQuery),
    responses(
        (status = 200, description = "one point per day", body = History),
        (status = 400, description = "bad address or query", body = ErrorBody)))]
pub async fn points_history(
    State(state): State<AppState>,
    Path(address): Path<String>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<History>, ApiError> {
    let wallet = wallet_param(&address)?;
    if query.bucket.as_deref().is_some_and(|b| b != "day") {
        return Err(ApiError::InvalidRequest(
            "bucket must be `day` (the only bucket so far)".to_owned(),
        ));
    }
    let days = i64::from(query.days.unwrap_or(30));
    if !(1..=366).contains(&days) {
        return Err(ApiError::InvalidRequest(
            "days must be between 1 and 366".to_owned(),
        ));
    }
    let today = now_ms() / DAY_MS * DAY_MS;
    let first = today - (days - 1) * DAY_MS;
    let rows = ledger::daily(&state.db, &wallet, query.kind, first).await?;
    let series = (0..days)
        .map(|i| {
            let start_ms = first + i * DAY_MS;
            let sum = |kind: PointsKind| {
                rows.iter()
                    .filter(|(day, k, _)| *day == start_ms && k == kind.as_str())
                    .map(|(_, _, micro)| *micro)
                    .sum::<i64>()
                    .into()
            };
            HistoryPoint {
                start_ms,
                waifu: sum(PointsKind::Waifu),
                llama: sum(PointsKind::Llama),
            }
        })
        .collect();
    Ok(Json(History {
        address: wallet,
        bucket: "day".to_owned(),
        series,
    }))
}

/// A miner with its last day of work.
#[derive(Debug, Serialize, ToSchema)]
pub struct MinerView {
    #[serde(flatten)]
    pub miner: Miner,
    /// Jobs completed in the last 24 h.
    pub jobs_24h: i64,
    /// Mean latency (lease to result, as the coordinator measured it) of those jobs.
    pub mean_latency_ms_24h: Option<f64>,
}

/// One GPU: online state, hardware, models, its last 24 h, suspension.
#[utoipa::path(get, path = "/api/v1/miners/{miner_id}", tag = "portal",
    params(("miner_id" = String, Path, description = "`<wallet>-<rig>-gpu<N>`")),
    responses(
        (status = 200, description = "the GPU", body = MinerView),
        (status = 404, description = "no such miner", body = ErrorBody)))]
pub async fn miner(
    State(state): State<AppState>,
    Path(miner_id): Path<String>,
) -> Result<Json<MinerView>, ApiError> {
    let Some(row) = miners::get(&state.db, &miner_id).await? else {
        return Err(ApiError::NotFound(format!(
            "no miner `{miner_id}` has connected to this coordinator; miner ids look like `<wallet>-<rig>-gpu0` (see GET /api/v1/wallets/{{address}})"
        )));
    };
    let (jobs_24h, mean_latency_ms_24h) = last_day(&state, &miner_id).await?;
    let (nft_held, _) = holdings::held(&state.db, &row.wallet).await?;
    let boosted = state.config.points.nft_multiplier(nft_held) > 1_000_000 && {
        let seniority = miners::seniority(&state.db, &row.wallet).await?;
        boosted_miners(&seniority, nft_held).contains(miner_id.as_str())
    };
    Ok(Json(MinerView {
        miner: miner_view(&state, row, boosted, &alive_replicas(&state).await?),
        jobs_24h,
        mean_latency_ms_24h,
    }))
}

/// A GPU's jobs completed in the last 24 h and their mean latency.
async fn last_day(state: &AppState, miner_id: &str) -> Result<(i64, Option<f64>), ApiError> {
    let (jobs, latency_sum) =
        crate::jobs::store::miner_stats(&state.db, miner_id, now_ms() - DAY_MS).await?;
    Ok((jobs, (jobs > 0).then(|| latency_sum as f64 / jobs as f64)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LeaderboardQuery {
    /// Which points to rank by.
    pub kind: PointsKind,
    /// `24h`, `7d`, `season` (the current one) or `all` (default `7d`).
    pub period: Option<String>,
    /// Rows, 1–200 (default 50).
    pub limit: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LeaderboardRow {
    pub rank: u64,
    pub address: String,
    /// Net points in the period (accruals less slashes).
    pub points: Amount,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Leaderboard {
    pub kind: PointsKind,
    pub period: String,
    pub rows: Vec<LeaderboardRow>,
}

/// Wallets by points earned in a period.
#[utoipa::path(get, path = "/api/v1/leaderboard", tag = "portal", params(LeaderboardQuery),
    responses(
        (status = 200, description = "wallets by net points, highest first", body = Leaderboard),
        (status = 400, description = "bad kind, period or limit", body = ErrorBody)))]
pub async fn leaderboard(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<LeaderboardQuery>,
) -> Result<Json<Leaderboard>, ApiError> {
    let period = query.period.unwrap_or_else(|| "7d".to_owned());
    let since = match period.as_str() {
        "24h" => Some(now_ms() - DAY_MS),
        "7d" => Some(now_ms() - 7 * DAY_MS),
        // The current season has begun and runs on: its start is all that bounds it.
        "season" => Some(state.config.points.season_at(now_ms()).starts_ms),
        "all" => None,
        other => {
            return Err(ApiError::InvalidRequest(format!(
                "period `{other}` is not one of 24h, 7d, season, all"
            )));
        }
    };
    let limit = page_limit(query.limit)?;
    let rows = ledger::leaderboard(&state.db, query.kind, since, limit).await?;
    Ok(Json(Leaderboard {
        kind: query.kind,
        period,
        rows: rows
            .into_iter()
            .zip(1..)
            .map(|((address, micro), rank)| LeaderboardRow {
                rank,
                address,
                points: micro.into(),
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SlashesQuery {
    /// Only this wallet's slashes.
    pub address: Option<String>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
    /// Rows per page, 1–200 (default 50).
    pub limit: Option<u64>,
}

/// Slashes, newest first, with their reasons: public, so every miner sees what gets punished.
#[utoipa::path(get, path = "/api/v1/slashes", tag = "portal", params(SlashesQuery),
    responses(
        (status = 200, description = "one page of slashes", body = EntryPage),
        (status = 400, description = "bad address, cursor or limit", body = ErrorBody)))]
pub async fn slashes(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<SlashesQuery>,
) -> Result<Json<EntryPage>, ApiError> {
    let wallet = query.address.as_deref().map(wallet_param).transpose()?;
    let page_query = PageQuery {
        cursor: query.cursor,
        limit: query.limit,
        kind: None,
    };
    let filter = page_filter(wallet, &page_query, Some(EntryKind::Slash))?;
    let rows = ledger::entries(&state.db, &filter).await?;
    Ok(Json(page(rows, filter.limit)))
}

/// The portal's routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(wallet))
        .routes(routes!(wallet_ledger))
        .routes(routes!(points_history))
        .routes(routes!(miner))
        .routes(routes!(leaderboard))
        .routes(routes!(slashes))
        .merge(admin::routes())
}
