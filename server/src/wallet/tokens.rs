//! A signed-in wallet's miner tokens: list, mint (with a ready-to-paste agent config) and
//! revoke. The token secret is shown once, at minting; lists show only its metadata.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use sea_query::{Expr, ExprTrait, Func, Iden, Order, Query};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Origin, WalletError, WalletSession};
use crate::AppState;
use crate::db::now_ms;
use crate::error::{ApiError, ApiJson, ErrorBody};

/// Live tokens one wallet may hold: far more than rigs anyone runs, few enough that a signed-in
/// wallet cannot fill the table.
const MAX_LIVE_TOKENS: i64 = 100;

#[derive(Iden)]
enum MinerTokens {
    Table,
    Id,
    Wallet,
    Name,
    CreatedMs,
    RevokedMs,
}

/// A miner token as its wallet sees it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow, ToSchema)]
#[schema(as = MinerToken)]
pub struct TokenView {
    pub id: Uuid,
    pub name: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// `POST /api/v1/miner-tokens` body.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = MinerTokenRequest)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateRequest {
    /// The rig's name: 1-32 letters, digits, `-` or `_`.
    pub name: String,
}

/// A freshly minted token: the only time its secret is shown.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = MinerTokenCreated)]
pub(crate) struct Created {
    pub id: Uuid,
    pub name: String,
    /// The miner token: what the agent sends in its hello.
    pub token: String,
    /// A TOML file for `infermine-agent run --config`.
    pub agent_config: String,
}

/// `GET /api/v1/miner-tokens`: the wallet's tokens, newest first.
#[utoipa::path(get, path = "/api/v1/miner-tokens", tag = "wallet", operation_id = "list_miner_tokens", security(("bearer" = [])),
    responses(
        (status = 200, description = "the wallet's tokens, revoked ones included",
            body = Vec<TokenView>),
        (status = 401, description = "no valid wallet session", body = ErrorBody),
        (status = 403, description = "an admin token, which speaks for no wallet",
            body = ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    session: WalletSession,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let select = Query::select()
        .columns(view_columns())
        .from(MinerTokens::Table)
        .and_where(Expr::col(MinerTokens::Wallet).eq(session.wallet.as_str()))
        .order_by(MinerTokens::CreatedMs, Order::Desc)
        .order_by(MinerTokens::Id, Order::Desc)
        .to_owned();
    Ok(Json(state.db.fetch_all(&select).await?))
}

/// `POST /api/v1/miner-tokens`: mints a token for one of the wallet's rigs.
#[utoipa::path(post, path = "/api/v1/miner-tokens", tag = "wallet", operation_id = "create_miner_token", request_body = CreateRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "minted; the secret is shown this once", body = Created),
        (status = 400, description = "the body is not a valid request", body = ErrorBody),
        (status = 401, description = "no valid wallet session", body = ErrorBody),
        (status = 403, description = "an admin token, which speaks for no wallet",
            body = ErrorBody),
        (status = 409, description = "the wallet already holds 100 live tokens", body = ErrorBody),
        (status = 422, description = "`invalid_name`: not a usable rig name", body = ErrorBody)))]
pub(crate) async fn create(
    State(state): State<AppState>,
    session: WalletSession,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateRequest>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let count = Query::select()
        .expr(Func::count(Expr::col(MinerTokens::Id)))
        .from(MinerTokens::Table)
        .and_where(Expr::col(MinerTokens::Wallet).eq(session.wallet.as_str()))
        .and_where(Expr::col(MinerTokens::RevokedMs).is_null())
        .to_owned();
    let live: Option<(i64,)> = state.db.fetch_optional(&count).await?;
    if live.is_some_and(|(n,)| n >= MAX_LIVE_TOKENS) {
        return Err(ApiError::Conflict(format!(
            "this wallet already holds {MAX_LIVE_TOKENS} live miner tokens; revoke unused ones with DELETE /api/v1/miner-tokens/{{id}}"
        )));
    }
    let token = state
        .auth
        .mint_miner_token(&session.wallet, &request.name)
        .await
        .map_err(WalletError::from)?;
    let id = state
        .auth
        .verify_miner_token(&token)
        .await
        .map_err(WalletError::from)?
        .token_id;
    let origin = Origin::from_headers(&headers, state.config.listen);
    let agent_config = agent_config(&origin, &session.wallet, &request.name, &token);
    tracing::info!(wallet = %session.wallet, name = %request.name, %id, "miner token minted");
    Ok((
        StatusCode::CREATED,
        Json(Created {
            id,
            name: request.name,
            token,
            agent_config,
        }),
    ))
}

/// `DELETE /api/v1/miner-tokens/{id}`: revokes one of the wallet's tokens (again is fine).
#[utoipa::path(delete, path = "/api/v1/miner-tokens/{id}", tag = "wallet", operation_id = "revoke_miner_token",
    params(("id" = Uuid, Path, description = "the token's id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "revoked (now or before)", body = TokenView),
        (status = 401, description = "no valid wallet session", body = ErrorBody),
        (status = 403, description = "an admin token, which speaks for no wallet",
            body = ErrorBody),
        (status = 404, description = "the wallet has no such token", body = ErrorBody)))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    session: WalletSession,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    let not_found = || {
        ApiError::NotFound(format!(
            "this wallet has no miner token `{id}`; GET /api/v1/miner-tokens lists its tokens"
        ))
    };
    let token_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let ours = || {
        Expr::col(MinerTokens::Id)
            .eq(token_id)
            .and(Expr::col(MinerTokens::Wallet).eq(session.wallet.as_str()))
    };
    let update = Query::update()
        .table(MinerTokens::Table)
        .value(MinerTokens::RevokedMs, now_ms())
        .and_where(ours())
        .and_where(Expr::col(MinerTokens::RevokedMs).is_null())
        .to_owned();
    if state.db.execute(&update).await? == 1 {
        tracing::info!(wallet = %session.wallet, id = %token_id, "miner token revoked");
    }
    let select = Query::select()
        .columns(view_columns())
        .from(MinerTokens::Table)
        .and_where(ours())
        .to_owned();
    let view: Option<TokenView> = state.db.fetch_optional(&select).await?;
    view.map(Json).ok_or_else(not_found)
}

fn view_columns() -> [MinerTokens; 4] {
    [
        MinerTokens::Id,
        MinerTokens::Name,
        MinerTokens::CreatedMs,
        MinerTokens::RevokedMs,
    ]
}

/// The agent's config file for a new token: coordinator URL and token, keys as in the agent's
/// `--config` file.
pub(crate) fn agent_config(origin: &Origin, wallet: &str, name: &str, token: &str) -> String {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    format!(
        "# infermine-agent settings for rig `{name}` of {wallet}.\n\
         # Save as agent.toml and run: infermine-agent run --config agent.toml\n\
         # Keep it private: this token lets anyone mine for your wallet.\n\
         coordinator = {coordinator}\n\
         token = {token}\n\
         # models = [\"synthetic-echo\"]  # GET /v1/models lists the models you can serve\n",
        coordinator = quote(&origin.websocket()),
        token = quote(token),
    )
}
