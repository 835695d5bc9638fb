//! Admin routes of the reviewer: which GPUs are trusted validators, and how review is going.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::miners;
use crate::review::challenge::ChallengeCounts;
use crate::review::store::{self, Trust};
use crate::wallet::AdminSession;

/// A trusted validator.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidatorView {
    pub miner_id: String,
    /// The GPU it reported at its last connection.
    pub gpu_name: String,
    pub since_ms: i64,
    /// Whether it is connected now.
    pub online: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ValidatorList {
    pub validators: Vec<ValidatorView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ValidatorChange {
    pub miner_id: String,
    pub validator: bool,
    /// Connected GPUs take the change when they next connect.
    pub takes_effect: &'static str,
}

/// The trusted validators (admin).
#[utoipa::path(get, path = "/api/v1/admin/validators", tag = "admin",
    operation_id = "list_validators", security(("bearer" = [])),
    responses(
        (status = 200, description = "validators, oldest first", body = ValidatorList),
        (status = 401, description = "no valid admin token", body = ErrorBody),
        (status = 403, description = "a wallet session token, not an admin's", body = ErrorBody)))]
pub async fn list_validators(
    State(state): State<AppState>,
    _admin: AdminSession,
) -> Result<Json<ValidatorList>, ApiError> {
    let validators = miners::validators(&state.db)
        .await?
        .into_iter()
        .map(|(miner_id, gpu_name, since_ms)| ValidatorView {
            online: state.online.is_online(&miner_id),
            miner_id,
            gpu_name,
            since_ms,
        })
        .collect();
    Ok(Json(ValidatorList { validators }))
}

async fn set_validator(
    state: &AppState,
    admin: &AdminSession,
    miner_id: String,
    validator: bool,
) -> Result<Json<ValidatorChange>, ApiError> {
    if !miners::set_validator(&state.db, &miner_id, validator).await? {
        return Err(ApiError::NotFound(format!(
            "no miner `{miner_id}` has connected to this coordinator"
        )));
    }
    tracing::warn!(%miner_id, validator, admin = %admin.name, "validator status changed");
    Ok(Json(ValidatorChange {
        miner_id,
        validator,
        takes_effect: "at the GPU's next connection",
    }))
}

/// Makes a GPU a trusted validator: it re-executes other miners' jobs for review, and its
/// own jobs are not audited (admin).
#[utoipa::path(put, path = "/api/v1/admin/validators/{miner_id}", tag = "admin",
    operation_id = "add_validator",
    params(("miner_id" = String, Path, description = "`<wallet>-<rig>-gpu<N>`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "now a validator", body = ValidatorChange),
        (status = 401, description = "no valid admin token", body = ErrorBody),
        (status = 403, description = "a wallet session token, not an admin's", body = ErrorBody),
        (status = 404, description = "no such miner", body = ErrorBody)))]
pub async fn add_validator(
    State(state): State<AppState>,
    admin: AdminSession,
    Path(miner_id): Path<String>,
) -> Result<Json<ValidatorChange>, ApiError> {
    set_validator(&state, &admin, miner_id, true).await
}

/// Makes a validator an ordinary miner again (admin).
#[utoipa::path(delete, path = "/api/v1/admin/validators/{miner_id}", tag = "admin",
    operation_id = "remove_validator",
    params(("miner_id" = String, Path, description = "`<wallet>-<rig>-gpu<N>`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "no longer a validator", body = ValidatorChange),
        (status = 401, description = "no valid admin token", body = ErrorBody),
        (status = 403, description = "a wallet session token, not an admin's", body = ErrorBody),
        (status = 404, description = "no such miner", body = ErrorBody)))]
pub async fn remove_validator(
    State(state): State<AppState>,
    admin: AdminSession,
    Path(miner_id): Path<String>,
) -> Result<Json<ValidatorChange>, ApiError> {
    set_validator(&state, &admin, miner_id, false).await
}

/// Review counts by status.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ReviewStats {
    /// Jobs not audited (cheap checks passed).
    pub skipped: i64,
    /// Audits waiting for their re-execution.
    pub pending: i64,
    pub passed: i64,
    pub failed: i64,
    /// Audits that could not be done (no validator online, re-execution failed).
    pub unverified: i64,
    /// Model-file challenges since this coordinator started.
    pub challenges: ChallengeCounts,
}

/// How review is going: reviews by status (admin).
#[utoipa::path(get, path = "/api/v1/admin/review/stats", tag = "admin",
    operation_id = "review_stats", security(("bearer" = [])),
    responses(
        (status = 200, description = "reviews by status", body = ReviewStats),
        (status = 401, description = "no valid admin token", body = ErrorBody),
        (status = 403, description = "a wallet session token, not an admin's", body = ErrorBody)))]
pub async fn review_stats(
    State(state): State<AppState>,
    _admin: AdminSession,
) -> Result<Json<ReviewStats>, ApiError> {
    let mut stats = ReviewStats::default();
    for (status, count) in store::counts(&state.db).await? {
        match status.as_str() {
            "skipped" => stats.skipped = count,
            "pending" => stats.pending = count,
            "passed" => stats.passed = count,
            "failed" => stats.failed = count,
            "unverified" => stats.unverified = count,
            _ => {}
        }
    }
    stats.challenges = state.challenges.counts();
    Ok(Json(stats))
}

/// A GPU's standing with the reviewer.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrustView {
    pub miner_id: String,
    /// Valid results in a row: audits become rarer as it grows.
    pub consecutive_valid: i64,
    pub jobs_seen: i64,
    pub audits: i64,
    pub failures: i64,
}

/// A GPU's review standing (admin).
#[utoipa::path(get, path = "/api/v1/admin/miners/{miner_id}/trust", tag = "admin",
    operation_id = "miner_trust",
    params(("miner_id" = String, Path, description = "`<wallet>-<rig>-gpu<N>`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the GPU's trust (zeros before its first job)", body = TrustView),
        (status = 401, description = "no valid admin token", body = ErrorBody),
        (status = 403, description = "a wallet session token, not an admin's", body = ErrorBody)))]
pub async fn miner_trust(
    State(state): State<AppState>,
    _admin: AdminSession,
    Path(miner_id): Path<String>,
) -> Result<Json<TrustView>, ApiError> {
    let Trust {
        consecutive_valid,
        jobs_seen,
        audits,
        failures,
    } = store::trust(&state.db, &miner_id).await?;
    Ok(Json(TrustView {
        miner_id,
        consecutive_valid,
        jobs_seen,
        audits,
        failures,
    }))
}

/// The reviewer's admin routes.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_validators))
        .routes(routes!(add_validator, remove_validator))
        .routes(routes!(review_stats))
        .routes(routes!(miner_trust))
}
