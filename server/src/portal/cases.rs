//! The admin side of anti-cheat review: listing cases with their evidence, and deciding each
//! once, by a slash (a ledger debit carrying the case's id, which the wallet sees with its
//! reason) or a dismissal.

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::admin::{slash_amount, suspend};
use super::{Amount, page_limit, wallet_param};
use crate::AppState;
use crate::db::now_ms;
use crate::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use crate::ledger::Scope;
use crate::points::SeasonWindow;
use crate::review::cases::{self, CaseFilter, CaseRow, Check, DecideError, SlashDecision, Status};
use crate::wallet::AdminSession;

/// An anti-cheat case.
#[derive(Debug, Serialize, ToSchema)]
pub struct Case {
    pub id: Uuid,
    /// The job checked, when the check was about one.
    pub job_id: Option<Uuid>,
    pub wallet: String,
    /// The GPU the work ran on.
    pub miner_id: Option<String>,
    /// `waifu` or `llama`: the points a slash takes.
    pub kind: String,
    /// The check that failed, e.g. `image_similarity`.
    #[schema(value_type = Check)]
    pub check: String,
    /// Scores, thresholds, timings and object keys.
    #[schema(value_type = Object)]
    pub evidence: serde_json::Value,
    #[schema(value_type = Status)]
    pub status: String,
    pub created_ms: i64,
    pub decided_ms: Option<i64>,
    /// The admin who decided.
    pub decided_by: Option<String>,
    pub note: Option<String>,
    /// Present once slashed.
    pub slash: Option<CaseSlash>,
}

/// What a slash of a case asked for and took.
#[derive(Debug, Serialize, ToSchema)]
pub struct CaseSlash {
    /// Points asked for, when given as points.
    pub requested_points: Option<f64>,
    /// Share of the balance asked for, when given as a fraction.
    pub requested_fraction: Option<f64>,
    /// `wallet` or `miner`: whose season points it was measured against.
    #[schema(value_type = Option<Scope>)]
    pub scope: Option<String>,
    /// The season it was measured in.
    pub season: Option<String>,
    /// Points taken.
    pub amount: Option<Amount>,
    /// The ledger debit (`GET /api/v1/slashes` lists it with the case's id).
    pub ledger_entry_id: Option<i64>,
}

impl From<CaseRow> for Case {
    fn from(row: CaseRow) -> Self {
        let slash = (row.status == Status::Slashed.as_str()).then(|| CaseSlash {
            requested_points: row.slash_points.map(crate::ledger::points),
            requested_fraction: row.slash_fraction,
            scope: row.slash_scope,
            season: row.slash_season,
            amount: row.slashed_micro.map(Amount::from),
            ledger_entry_id: row.ledger_entry_id,
        });
        Self {
            id: row.id,
            job_id: row.job_id,
            wallet: row.wallet,
            miner_id: row.miner_id,
            kind: row.kind,
            check: row.check,
            evidence: serde_json::from_str(&row.evidence).unwrap_or(serde_json::Value::Null),
            status: row.status,
            created_ms: row.created_ms,
            decided_ms: row.decided_ms,
            decided_by: row.decided_by,
            note: row.note,
            slash,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CasesQuery {
    /// Only cases in this state (`open` for the review queue).
    pub status: Option<Status>,
    /// Only this wallet's cases.
    pub address: Option<String>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
    /// Cases per page, 1–200 (default 50).
    pub limit: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CasePage {
    pub cases: Vec<Case>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn case_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("no anti-cheat case `{id}`")))
}

impl From<DecideError> for ApiError {
    fn from(err: DecideError) -> Self {
        match err {
            DecideError::NotFound(_) => Self::NotFound(err.to_string()),
            DecideError::AlreadyDecided { .. } => Self::Conflict(err.to_string()),
            DecideError::NoMiner(_) => Self::InvalidRequest(err.to_string()),
            DecideError::Db(db) => db.into(),
        }
    }
}

/// Anti-cheat cases, newest first (admin).
#[utoipa::path(get, path = "/api/v1/admin/cases", tag = "admin", params(CasesQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "one page of cases", body = CasePage),
        (status = 400, description = "bad status, address, cursor or limit", body = ErrorBody),
        (status = 401, description = "no valid admin token", body = ErrorBody),
        (status = 403, description = "a wallet session token, not an admin's", body = ErrorBody)))]
pub async fn list_cases(
    State(state): State<AppState>,
    _admin: AdminSession,
    ApiQuery(query): ApiQuery<CasesQuery>,
) -> Result<Json<CasePage>, ApiError> {
    let before = match &query.cursor {
        None => None,
        Some(cursor) => Some(cursor.parse::<Uuid>().map_err(|_| {
            ApiError::InvalidRequest(
                "cursor is not one this API gave out; pass `next_cursor` from the previous page"
                    .to_owned(),
            )
        })?),
    };
    let filter = CaseFilter {
        status: query.status,
        wallet: query.address.as_deref().map(wallet_param).transpose()?,
        before,
        limit: page_limit(query.limit)?,
    };
    let rows = cases::list(&state.db, &filter).await?;
    let next_cursor = (rows.len() as u64 == filter.limit)
        .then(|| rows.last().map(|c| c.id.to_string()))
        .flatten();
    Ok(Json(CasePage {
        cases: rows.into_iter().map(Case::from).collect(),
        next_cursor,
    }))
}

/// One case with its evidence (admin).
#[utoipa::path(get, path = "/api/v1/admin/cases/{id}", tag = "admin",
    params(("id" = Uuid, Path, description = "the case's id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "the case", body = Case),
        (status = 401, description = "no valid admin token", body = ErrorBody),
        (status = 403, description = "a wallet session token, not an admin's", body = ErrorBody),
        (status = 404, description = "no such case", body = ErrorBody)))]
pub async fn get_case(
    State(state): State<AppState>,
    _admin: AdminSession,
    Path(id): Path<String>,
) -> Result<Json<Case>, ApiError> {
    let row = cases::get(&state.db, case_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no anti-cheat case `{id}`")))?;
    Ok(Json(row.into()))
}

/// `POST /api/v1/admin/cases/{id}/slash` body. Give exactly one of `points` and `fraction`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseSlashRequest {
    /// Points of the case's kind to take (at most what the scope earned this season).
    pub points: Option<f64>,
    /// Share to take of the points of the case's kind the scope earned this season, in (0, 1].
    pub fraction: Option<f64>,
    /// `wallet` (default: all the wallet's GPUs) or `miner` (only the case's GPU).
    #[serde(default)]
    pub scope: Scope,
    /// Also suspend the case's GPU.
    #[serde(default)]
    pub suspend: bool,
    /// Shown to the miner with the slash.
    pub note: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CaseSlashResponse {
    pub case: Case,
    /// Points taken (0 when the balance was empty or the case had already debited).
    pub amount: Amount,
    /// False when the ledger already held this case's debit.
    pub recorded: bool,
    /// The season whose points were slashed.
    pub season: SeasonWindow,
    /// What the scope had earned in the season: what a fraction was taken of.
    pub season_earned: Amount,
    pub balance_after: Amount,
    /// Whether the GPU was suspended (false when not asked, or when it never connected).
    pub suspended: bool,
    /// Whether its connected session was closed.
    pub disconnected: bool,
}

/// Slashes an open case: a ledger debit with the case's id, once (admin).
#[utoipa::path(post, path = "/api/v1/admin/cases/{id}/slash", tag = "admin",
    params(("id" = Uuid, Path, description = "the case's id")),
    request_body = CaseSlashRequest, security(("bearer" = [])),
    responses(
        (status = 200, description = "slashed", body = CaseSlashResponse),
        (status = 400, description = "bad amount or note", body = ErrorBody),
        (status = 401, description = "no valid admin token", body = ErrorBody),
        (status = 403, description = "a wallet session token, not an admin's", body = ErrorBody),
        (status = 404, description = "no such case", body = ErrorBody),
        (status = 409, description = "the case is already decided", body = ErrorBody)))]
pub async fn slash_case(
    State(state): State<AppState>,
    admin: AdminSession,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<CaseSlashRequest>,
) -> Result<Json<CaseSlashResponse>, ApiError> {
    let id = case_id(&id)?;
    let amount = slash_amount(request.points, request.fraction)?;
    let note = request.note.trim();
    if note.is_empty() || note.len() > 500 {
        return Err(ApiError::InvalidRequest(
            "note must be 1-500 characters: the miner sees it".to_owned(),
        ));
    }
    let season = state.config.points.season_at(now_ms());
    let decision = SlashDecision {
        amount,
        scope: request.scope,
        season: season.clone(),
        note: note.to_owned(),
        by: admin.name.clone(),
    };
    let outcome = cases::slash(&state.db, id, &decision).await?;
    let case = outcome.case;
    tracing::warn!(case = %id, wallet = %case.wallet, amount = outcome.slashed.amount, admin = %admin.name, "case slashed");
    let (suspended, disconnected) = match (&case.miner_id, request.suspend) {
        (Some(miner_id), true) => {
            let reason = cases::slash_reason(&case, note);
            match suspend(&state, miner_id, &reason, &admin.name).await {
                Ok(disconnected) => (true, disconnected),
                // The slash stands; a GPU that never connected has nothing to suspend.
                Err(ApiError::NotFound(_)) => (false, false),
                Err(e) => return Err(e),
            }
        }
        _ => (false, false),
    };
    Ok(Json(CaseSlashResponse {
        case: case.into(),
        amount: outcome.slashed.amount.into(),
        recorded: outcome.slashed.recorded,
        season,
        season_earned: outcome.slashed.basis.into(),
        balance_after: outcome.slashed.balance_after.into(),
        suspended,
        disconnected,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseDismissRequest {
    /// Why the case was dismissed.
    pub note: Option<String>,
}

/// Dismisses an open case: no one is punished (admin).
#[utoipa::path(post, path = "/api/v1/admin/cases/{id}/dismiss", tag = "admin",
    params(("id" = Uuid, Path, description = "the case's id")),
    request_body = CaseDismissRequest, security(("bearer" = [])),
    responses(
        (status = 200, description = "dismissed", body = Case),
        (status = 400, description = "bad note", body = ErrorBody),
        (status = 401, description = "no valid admin token", body = ErrorBody),
        (status = 403, description = "a wallet session token, not an admin's", body = ErrorBody),
        (status = 404, description = "no such case", body = ErrorBody),
        (status = 409, description = "the case is already decided", body = ErrorBody)))]
pub async fn dismiss_case(
    State(state): State<AppState>,
    admin: AdminSession,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<CaseDismissRequest>,
) -> Result<Json<Case>, ApiError> {
    let id = case_id(&id)?;
    let note = request.note.as_deref().map(str::trim);
    if note.is_some_and(|n| n.len() > 500) {
        return Err(ApiError::InvalidRequest(
            "note must be at most 500 characters".to_owned(),
        ));
    }
    let case = cases::dismiss(&state.db, id, note, &admin.name).await?;
    tracing::info!(case = %id, admin = %admin.name, "case dismissed");
    Ok(Json(case.into()))
}

/// The case routes.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_cases))
        .routes(routes!(get_case))
        .routes(routes!(slash_case))
        .routes(routes!(dismiss_case))
}
