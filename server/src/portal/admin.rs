//! The admin side of the portal API: slashing wallets and suspending GPUs (admin JWT).

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{Amount, wallet_param};
use crate::AppState;
use crate::db::now_ms;
use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::ledger::{self, Scope, Slash, SlashAmount, SlashScope};
use crate::miners;
use crate::points::{MicroPoints, PointsKind, SeasonWindow};
use crate::wallet::AdminSession;

/// `POST /api/v1/admin/slashes` body. Give exactly one of `points` and `fraction`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlashRequest {
    pub address: String,
    /// Which points; both kinds when absent.
    pub kind: Option<PointsKind>,
    /// Points to take (at most what the scope earned in the current season).
    pub points: Option<f64>,
    /// Share to take of what the scope earned in the current season, in (0, 1].
    pub fraction: Option<f64>,
    /// Shown to the miner in the portal.
    pub reason: String,
    /// The anti-cheat case this punishes; the same case slashes a wallet's kind only once.
    pub case_id: Option<Uuid>,
    /// Whose season points: `wallet` (default) or `miner` (then `miner_id` is required).
    pub scope: Option<Scope>,
    /// With scope `miner`: the GPU (one of this wallet's) whose points are taken.
    pub miner_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SlashOutcome {
    pub kind: PointsKind,
    /// Points taken (0 when the balance was empty or the case had already slashed).
    pub amount: Amount,
    /// False when the same case had already slashed this wallet and kind.
    pub recorded: bool,
    /// What the scope had earned in the season: what a fraction was taken of.
    pub season_earned: Amount,
    pub balance_after: Amount,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SlashResponse {
    pub address: String,
    pub scope: Scope,
    /// The GPU, for scope `miner`.
    pub miner_id: Option<String>,
    /// The season whose points were slashed.
    pub season: SeasonWindow,
    pub slashes: Vec<SlashOutcome>,
}

/// The slash scope a request names, checked against its wallet.
fn slash_scope(
    wallet: &str,
    scope: Option<Scope>,
    miner_id: Option<&str>,
) -> Result<SlashScope, ApiError> {
    match (scope.unwrap_or_default(), miner_id) {
        (Scope::Wallet, None) => Ok(SlashScope::Wallet),
        (Scope::Wallet, Some(_)) => Err(ApiError::InvalidRequest(
            "`miner_id` narrows a slash to one GPU: give `scope: \"miner\"` with it, or leave it out to slash the wallet".to_owned(),
        )),
        (Scope::Miner, None) => Err(ApiError::InvalidRequest(
            "`scope: \"miner\"` needs `miner_id`, the GPU whose points to take".to_owned(),
        )),
        (Scope::Miner, Some(miner)) => {
            if miner.strip_prefix(wallet).is_some_and(|rest| rest.starts_with('-')) {
                Ok(SlashScope::Miner(miner.to_owned()))
            } else {
                Err(ApiError::InvalidRequest(format!(
                    "miner `{miner}` is not one of {wallet}'s GPUs (miner ids start with the wallet)"
                )))
            }
        }
    }
}

/// How much to slash, from a request's `points` or `fraction` (exactly one).
pub(super) fn slash_amount(
    points: Option<f64>,
    fraction: Option<f64>,
) -> Result<SlashAmount, ApiError> {
    match (points, fraction) {
        (Some(p), None) if p.is_finite() && p > 0.0 => {
            Ok(SlashAmount::Micro((p * 1e6).round() as MicroPoints))
        }
        (None, Some(f)) if f.is_finite() && f > 0.0 && f <= 1.0 => Ok(SlashAmount::Fraction(f)),
        _ => Err(ApiError::InvalidRequest(
            "give exactly one of `points` (> 0) and `fraction` (in (0, 1])".to_owned(),
        )),
    }
}

/// Takes points from a wallet as a ledger debit with a reason (admin).
#[utoipa::path(post, path = "/api/v1/admin/slashes", tag = "admin", request_body = SlashRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "slashed, or already slashed for this case", body = SlashResponse),
        (status = 400, description = "bad address, amount or reason", body = ErrorBody),
        (status = 401, description = "no valid admin token", body = ErrorBody),
        (status = 403, description = "a wallet session token, not an admin's", body = ErrorBody)))]
pub async fn admin_slash(
    State(state): State<AppState>,
    admin: AdminSession,
    ApiJson(request): ApiJson<SlashRequest>,
) -> Result<Json<SlashResponse>, ApiError> {
    let wallet = wallet_param(&request.address)?;
    let amount = slash_amount(request.points, request.fraction)?;
    let reason = request.reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return Err(ApiError::InvalidRequest(
            "reason must be 1-500 characters: the miner sees it".to_owned(),
        ));
    }
    let scope = slash_scope(&wallet, request.scope, request.miner_id.as_deref())?;
    let season = state.config.points.season_at(now_ms());
    let kinds = match request.kind {
        Some(kind) => vec![kind],
        None => vec![PointsKind::Waifu, PointsKind::Llama],
    };
    let mut slashes = Vec::with_capacity(kinds.len());
    for kind in kinds {
        let slashed = ledger::slash(
            &state.db,
            &Slash {
                wallet: wallet.clone(),
                kind,
                amount,
                reason: reason.to_owned(),
                case_id: request.case_id,
                scope: scope.clone(),
                season: season.clone(),
                by: admin.name.clone(),
            },
        )
        .await?;
        tracing::warn!(%wallet, kind = kind.as_str(), amount = slashed.amount, admin = %admin.name, reason, "slashed");
        slashes.push(SlashOutcome {
            kind,
            amount: slashed.amount.into(),
            recorded: slashed.recorded,
            season_earned: slashed.basis.into(),
            balance_after: slashed.balance_after.into(),
        });
    }
    Ok(Json(SlashResponse {
        address: wallet,
        scope: match scope {
            SlashScope::Wallet => Scope::Wallet,
            SlashScope::Miner(_) => Scope::Miner,
        },
        miner_id: request.miner_id,
        season,
        slashes,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuspendRequest {
    /// Shown to the miner.
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SuspendResponse {
    pub miner_id: String,
    pub suspended: bool,
    /// Whether a connected session was closed.
    pub disconnected: bool,
}

/// Stops a GPU from getting work: its session is closed (code 4006 with the reason) and it is
/// refused until unsuspended (admin).
#[utoipa::path(post, path = "/api/v1/admin/miners/{miner_id}/suspend", tag = "admin",
    params(("miner_id" = String, Path, description = "`<wallet>-<rig>-gpu<N>`")),
    request_body = SuspendRequest, security(("bearer" = [])),
    responses(
        (status = 200, description = "suspended", body = SuspendResponse),
        (status = 400, description = "bad reason", body = ErrorBody),
        (status = 401, description = "no valid admin token", body = ErrorBody),
        (status = 403, description = "a wallet session token, not an admin's", body = ErrorBody),
        (status = 404, description = "no such miner", body = ErrorBody)))]
pub async fn admin_suspend(
    State(state): State<AppState>,
    admin: AdminSession,
    Path(miner_id): Path<String>,
    ApiJson(request): ApiJson<SuspendRequest>,
) -> Result<Json<SuspendResponse>, ApiError> {
    let reason = request.reason.trim();
    if reason.is_empty() || reason.len() > 200 {
        return Err(ApiError::InvalidRequest(
            "reason must be 1-200 characters: the miner sees it".to_owned(),
        ));
    }
    let disconnected = suspend(&state, &miner_id, reason, &admin.name).await?;
    Ok(Json(SuspendResponse {
        miner_id,
        suspended: true,
        disconnected,
    }))
}

/// Suspends a GPU and closes its session; returns whether one was closed.
pub(super) async fn suspend(
    state: &AppState,
    miner_id: &str,
    reason: &str,
    admin: &str,
) -> Result<bool, ApiError> {
    let closed = miners::suspend(&state.db, &state.online, miner_id, reason)
        .await?
        .ok_or_else(|| no_miner(miner_id))?;
    tracing::warn!(%miner_id, %admin, reason, "miner suspended");
    Ok(closed)
}

/// Lets a suspended GPU connect and work again (admin).
#[utoipa::path(post, path = "/api/v1/admin/miners/{miner_id}/unsuspend", tag = "admin",
    params(("miner_id" = String, Path, description = "`<wallet>-<rig>-gpu<N>`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "no longer suspended", body = SuspendResponse),
        (status = 401, description = "no valid admin token", body = ErrorBody),
        (status = 403, description = "a wallet session token, not an admin's", body = ErrorBody),
        (status = 404, description = "no such miner", body = ErrorBody)))]
pub async fn admin_unsuspend(
    State(state): State<AppState>,
    admin: AdminSession,
    Path(miner_id): Path<String>,
) -> Result<Json<SuspendResponse>, ApiError> {
    if !miners::set_suspended(&state.db, &miner_id, None).await? {
        return Err(no_miner(&miner_id));
    }
    tracing::info!(%miner_id, admin = %admin.name, "miner unsuspended");
    Ok(Json(SuspendResponse {
        miner_id,
        suspended: false,
        disconnected: false,
    }))
}

fn no_miner(miner_id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no miner `{miner_id}` has connected to this coordinator"
    ))
}

/// The admin routes.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(admin_slash))
        .routes(routes!(admin_suspend))
        .routes(routes!(admin_unsuspend))
        .merge(super::cases::routes())
        .merge(super::review::routes())
}
