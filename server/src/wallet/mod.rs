//! Wallet sign-in for the portal, the session and admin tokens it hands out, and miner tokens
//! managed over the API.
//!
//! 1. `POST /api/v1/auth/nonce` stores a random nonce for the address (good once, for five
//!    minutes) and answers a sign-in message in the EIP-4361 layout that names it.
//! 2. The wallet signs that message with `personal_sign` (EIP-191); `POST /api/v1/auth/verify`
//!    recovers the signer, and only if it is the address does it consume the nonce (one
//!    conditional `UPDATE`, so a replay loses) and answer a 24-hour session JWT.
//! 3. [`WalletSession`] and [`AdminSession`] read those tokens from `Authorization: Bearer`.
//!    Admin tokens are never handed out over HTTP: `infermine-server admin-token` mints them.
//! 4. With a session, `/api/v1/miner-tokens` lists, mints and revokes the wallet's miner
//!    tokens; the gateway reads the token table at every hello, so a revoked token is refused
//!    from the next connection on.
//!
//! Session and admin tokens are HS256 JWTs signed with the coordinator's secret, like miner
//! tokens, but they carry an audience and an expiry that miner tokens lack, and each side's
//! validation refuses the other's tokens.

mod session;
mod signin;
mod tokens;

#[cfg(test)]
mod tests;

use std::time::Duration;

use axum::http::HeaderMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::AuthError;
use crate::db::DbError;
use crate::error::ApiError;

pub use session::{AdminSession, WalletSession, mint_admin_token};

/// How long a sign-in nonce may wait for its signature.
pub const NONCE_TTL: Duration = Duration::from_secs(5 * 60);

/// How long a wallet session lasts before the wallet signs in again.
pub const SESSION_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The portal's wallet and admin routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signin::nonce))
        .routes(routes!(signin::verify))
        .routes(routes!(session::whoami))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
}

/// Why a sign-in, a session or a token request was refused.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error("signature must be 65 bytes as 0x-prefixed hex (r, s, then v = 27/28 or 0/1): {0}")]
    BadSignature(String),
    #[error(
        "no live sign-in nonce for {0}: it expired, was already used or was never issued; request a new one with POST /api/v1/auth/nonce"
    )]
    NoLiveNonce(String),
    #[error(
        "the signature does not match the sign-in message for {wallet} (it was made by {signer}); sign the exact message from POST /api/v1/auth/nonce with that wallet"
    )]
    WrongSigner { wallet: String, signer: String },
    #[error("admin name `{0}` must be 1-64 characters of letters, digits, `.`, `@`, `-` or `_`")]
    BadAdminName(String),
    #[error(
        "an admin token's lifetime must be more than zero and at most 366 days (--ttl-hours 1 to 8784)"
    )]
    BadTtl,
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<WalletError> for ApiError {
    fn from(err: WalletError) -> Self {
        match err {
            WalletError::BadSignature(_) => Self::InvalidRequest(err.to_string()),
            WalletError::NoLiveNonce(_) | WalletError::WrongSigner { .. } => {
                Self::Unauthorized(err.to_string())
            }
            WalletError::BadAdminName(_) | WalletError::BadTtl => {
                Self::InvalidRequest(err.to_string())
            }
            WalletError::Auth(AuthError::BadWallet(_)) => Self::InvalidParams {
                code: "invalid_address",
                message: err.to_string(),
                param: Some("address".to_owned()),
            },
            WalletError::Auth(AuthError::BadName(_)) => Self::InvalidParams {
                code: "invalid_name",
                message: err.to_string(),
                param: Some("name".to_owned()),
            },
            WalletError::Auth(AuthError::Db(e)) | WalletError::Db(e) => e.into(),
            WalletError::Auth(other) => Self::Internal(other.to_string()),
        }
    }
}

/// The host the caller reached us at and whether it came over TLS, for the sign-in message's
/// domain and URI and for the agent's coordinator URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    pub host: String,
    pub tls: bool,
}

impl Origin {
    /// Reads `Host` (and `X-Forwarded-Proto` from a TLS-terminating proxy), falling back to
    /// the listen address when the header is missing or holds anything but a host and port.
    pub fn from_headers(headers: &HeaderMap, listen: std::net::SocketAddr) -> Self {
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.len() <= 255
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
            })
            .map_or_else(|| listen.to_string(), str::to_owned);
        let tls = headers
            .get("x-forwarded-proto")
            .and_then(|h| h.to_str().ok())
            .is_some_and(|p| p.eq_ignore_ascii_case("https"));
        Self { host, tls }
    }

    /// `https://host` or `http://host`.
    pub fn uri(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.host
        )
    }

    /// `wss://host` or `ws://host`: what an agent connects to.
    pub fn websocket(&self) -> String {
        format!("{}://{}", if self.tls { "wss" } else { "ws" }, self.host)
    }
}
