//! Session and admin JWTs: minting them, and the extractors that let a handler ask for one.

use std::time::Duration;

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::WalletError;
use crate::AppState;
use crate::auth::{Auth, normalize_wallet};
use crate::db::now_ms;
use crate::error::{ApiError, ErrorBody};

/// The audience of session and admin tokens; miner tokens have none, so neither kind of token
/// validates as the other.
const AUDIENCE: &str = "infermine-portal";

/// Longest lifetime an admin token may be minted with.
const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);

const SIGN_IN: &str = "sign in first: POST /api/v1/auth/nonce with your address, sign the message with your wallet, POST /api/v1/auth/verify, then send `Authorization: Bearer <token>`";
pub(super) const ADMIN: &str =
    "send `Authorization: Bearer <admin token>`; mint one with `infermine-server admin-token`";

/// Who a session token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    Wallet,
    Admin,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SessionClaims {
    /// The lowercase wallet address, or the admin's name.
    pub sub: String,
    pub role: Role,
    aud: String,
    iat: i64,
    exp: i64,
}

/// A signed-in wallet: a handler taking this answers only requests bearing a valid wallet
/// session token (401 without one, 403 for an admin token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletSession {
    /// Lowercase 0x address.
    pub wallet: String,
}

/// An operator: a handler taking this answers only requests bearing a valid admin token (401
/// without one, 403 for a wallet session token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSession {
    /// The name the token was minted for.
    pub name: String,
}

/// Mints a session token for `subject` in `role`, good for `ttl` from `now_ms`; returns it
/// with its expiry in milliseconds.
pub(crate) fn mint(
    auth: &Auth,
    role: Role,
    subject: &str,
    ttl: Duration,
    now_ms: i64,
) -> Result<(String, i64), WalletError> {
    let exp = (now_ms / 1000).saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
    let claims = SessionClaims {
        sub: subject.to_owned(),
        role,
        aud: AUDIENCE.to_owned(),
        iat: now_ms / 1000,
        exp,
    };
    Ok((auth.sign_claims(&claims)?, exp.saturating_mul(1000)))
}

/// Mints an admin token named `name`, good for `ttl` (at most a year).
pub fn mint_admin_token(auth: &Auth, name: &str, ttl: Duration) -> Result<String, WalletError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".@-_".contains(c))
    {
        return Err(WalletError::BadAdminName(name.to_owned()));
    }
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(WalletError::BadTtl);
    }
    Ok(mint(auth, Role::Admin, name, ttl, now_ms())?.0)
}

/// The verified claims of the request's bearer token; `hint` says how to get a good one.
pub(super) fn claims(parts: &Parts, auth: &Auth, hint: &str) -> Result<SessionClaims, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized(format!("missing token: {hint}")))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthorized(format!(
                "the Authorization header must be `Bearer <token>`: {hint}"
            ))
        })?;
    auth.verify_claims(token, AUDIENCE)
        .map_err(|e| ApiError::Unauthorized(format!("{e}: {hint}")))
}

impl FromRequestParts<AppState> for WalletSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let claims = claims(parts, &state.auth, SIGN_IN)?;
        match claims.role {
            Role::Wallet => {
                let wallet = normalize_wallet(&claims.sub)
                    .map_err(|e| ApiError::Unauthorized(format!("{e}: {SIGN_IN}")))?;
                Ok(Self { wallet })
            }
            Role::Admin => Err(ApiError::Forbidden(
                "an admin token speaks for no wallet; sign in with the wallet to use this route"
                    .to_owned(),
            )),
        }
    }
}

impl FromRequestParts<AppState> for AdminSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let claims = claims(parts, &state.auth, ADMIN)?;
        match claims.role {
            Role::Admin => Ok(Self { name: claims.sub }),
            Role::Wallet => Err(ApiError::Forbidden(
                "this route is for operators; a wallet session cannot use it".to_owned(),
            )),
        }
    }
}

/// Who an admin token speaks for.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Whoami {
    /// The name the token was minted with (`infermine-server admin-token --name`).
    pub name: String,
}

/// `GET /api/v1/admin/whoami`: the name an admin token was minted for.
#[utoipa::path(get, path = "/api/v1/admin/whoami", tag = "admin", operation_id = "admin_whoami", security(("bearer" = [])),
    responses(
        (status = 200, description = "the token is a valid admin token", body = Whoami),
        (status = 401, description = "no valid admin token", body = ErrorBody),
        (status = 403, description = "a wallet session token, not an admin's", body = ErrorBody)))]
pub(crate) async fn whoami(admin: AdminSession) -> Json<Whoami> {
    Json(Whoami { name: admin.name })
}
