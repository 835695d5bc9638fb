//! Sign-in with an Ethereum wallet: nonces, the message a wallet signs, and the EIP-191
//! signature check that turns a signed nonce into a session.

use alloy_primitives::{Address, Signature};
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use rand::RngCore;
use sea_query::{Expr, ExprTrait, Iden, Order, Query};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::session::{self, Role};
use super::{NONCE_TTL, Origin, SESSION_TTL, WalletError};
use crate::AppState;
use crate::auth::{AuthError, normalize_wallet};
use crate::db::{Db, now_ms};
use crate::error::{ApiError, ApiJson, ErrorBody};

/// Live nonces of one address tried against a signature that names none: enough for a few
/// open tabs, few enough that a flood of nonces costs little to try.
const CANDIDATES: u64 = 8;

#[derive(Iden)]
enum WalletNonces {
    Table,
    Nonce,
    Wallet,
    Message,
    ExpiresMs,
    UsedMs,
}

/// `POST /api/v1/auth/nonce` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NonceRequest {
    /// The wallet signing in: 0x-prefixed, 40 hex digits, any case.
    #[schema(example = "0x5aeda56215b167893e80b4fe645ba6d5bab767de")]
    pub address: String,
}

/// A sign-in nonce and the message to sign with it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct IssuedNonce {
    pub nonce: String,
    /// The exact text to sign with `personal_sign` (EIP-191), in the EIP-4361 layout.
    pub message: String,
    /// When the nonce stops being accepted, ms since the epoch.
    pub expires_ms: i64,
}

/// `POST /api/v1/auth/verify` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyRequest {
    pub address: String,
    /// The `personal_sign` signature of the message, as 0x-prefixed hex.
    pub signature: String,
    /// Which nonce was signed; without it, the address's newest live nonces are tried.
    #[serde(default)]
    pub nonce: Option<String>,
}

/// A session for the wallet that signed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct VerifyResponse {
    /// The session JWT, for `Authorization: Bearer` on the wallet's routes.
    pub token: String,
    /// The lowercase address.
    pub address: String,
    /// When the session ends, ms since the epoch.
    pub expires_ms: i64,
}

/// `POST /api/v1/auth/nonce`: a nonce for `address` and the message to sign.
#[utoipa::path(post, path = "/api/v1/auth/nonce", tag = "wallet", operation_id = "sign_in_nonce", request_body = NonceRequest,
    responses(
        (status = 200, description = "a nonce, good once for five minutes", body = IssuedNonce),
        (status = 400, description = "the body is not a valid request", body = ErrorBody),
        (status = 422, description = "`invalid_address`: not an address", body = ErrorBody)))]
pub(crate) async fn nonce(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<NonceRequest>,
) -> Result<Json<IssuedNonce>, ApiError> {
    let origin = Origin::from_headers(&headers, state.config.listen);
    let issued = issue_nonce(&state.db, &request.address, &origin, now_ms()).await?;
    Ok(Json(issued))
}

/// `POST /api/v1/auth/verify`: a session token for a correctly signed, live nonce.
#[utoipa::path(post, path = "/api/v1/auth/verify", tag = "wallet", operation_id = "sign_in_verify", request_body = VerifyRequest,
    responses(
        (status = 200, description = "signed in: a 24-hour session token", body = VerifyResponse),
        (status = 400, description = "the body or the signature is malformed", body = ErrorBody),
        (status = 401, description = "no live nonce, or the signature is not the address's",
            body = ErrorBody),
        (status = 422, description = "`invalid_address`: not an address", body = ErrorBody)))]
pub(crate) async fn verify(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<VerifyRequest>,
) -> Result<Json<VerifyResponse>, ApiError> {
    let now = now_ms();
    let wallet = check_sign_in(
        &state.db,
        &request.address,
        &request.signature,
        request.nonce.as_deref(),
        now,
    )
    .await?;
    let (token, expires_ms) = session::mint(&state.auth, Role::Wallet, &wallet, SESSION_TTL, now)?;
    tracing::info!(%wallet, "wallet signed in");
    Ok(Json(VerifyResponse {
        token,
        address: wallet,
        expires_ms,
    }))
}

/// Stores a new nonce for `address` and returns it with its message. Expired nonces are
/// swept on the way.
pub(crate) async fn issue_nonce(
    db: &Db,
    address: &str,
    origin: &Origin,
    now: i64,
) -> Result<IssuedNonce, WalletError> {
    let (wallet, checksummed) = parse_address(address)?;
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    let nonce = hex::encode(raw);
    let expires_ms = now + ttl_ms(NONCE_TTL);
    let message = sign_in_message(origin, &checksummed, &nonce, now, expires_ms);

    let sweep = Query::delete()
        .from_table(WalletNonces::Table)
        .and_where(Expr::col(WalletNonces::ExpiresMs).lte(now))
        .to_owned();
    db.execute(&sweep).await?;
    let insert = Query::insert()
        .into_table(WalletNonces::Table)
        .columns([
            WalletNonces::Nonce,
            WalletNonces::Wallet,
            WalletNonces::Message,
            WalletNonces::ExpiresMs,
        ])
        .values_panic([
            nonce.as_str().into(),
            wallet.into(),
            message.as_str().into(),
            expires_ms.into(),
        ])
        .to_owned();
    db.execute(&insert).await?;
    Ok(IssuedNonce {
        nonce,
        message,
        expires_ms,
    })
}

/// The text a wallet signs, in the layout of EIP-4361 (Sign-In with Ethereum) so wallets that
/// know it can show where the request comes from.
pub(crate) fn sign_in_message(
    origin: &Origin,
    address: &Address,
    nonce: &str,
    issued_ms: i64,
    expires_ms: i64,
) -> String {
    format!(
        "{host} wants you to sign in with your Ethereum account:\n\
         {address}\n\
         \n\
         Sign in to infermine to manage your miner tokens and see your points. This request \
         costs nothing and sends no transaction.\n\
         \n\
         URI: {uri}\n\
         Version: 1\n\
         Chain ID: 1\n\
         Nonce: {nonce}\n\
         Issued At: {issued}\n\
         Expiration Time: {expires}",
        host = origin.host,
        address = address.to_checksum(None),
        uri = origin.uri(),
        issued = rfc3339(issued_ms),
        expires = rfc3339(expires_ms),
    )
}

/// Checks that `signature` is `address`'s signature of one of its live nonces' message and
/// consumes that nonce; returns the lowercase address.
pub(crate) async fn check_sign_in(
    db: &Db,
    address: &str,
    signature: &str,
    nonce: Option<&str>,
    now: i64,
) -> Result<String, WalletError> {
    let (wallet, claimed) = parse_address(address)?;
    let signature = parse_signature(signature)?;
    let live = || {
        Expr::col(WalletNonces::Wallet)
            .eq(wallet.as_str())
            .and(Expr::col(WalletNonces::UsedMs).is_null())
            .and(Expr::col(WalletNonces::ExpiresMs).gt(now))
    };
    let mut select = Query::select();
    select
        .columns([WalletNonces::Nonce, WalletNonces::Message])
        .from(WalletNonces::Table)
        .and_where(live())
        .order_by(WalletNonces::ExpiresMs, Order::Desc)
        .limit(CANDIDATES);
    if let Some(nonce) = nonce {
        select.and_where(Expr::col(WalletNonces::Nonce).eq(nonce));
    }
    let candidates: Vec<(String, String)> = db.fetch_all(&select).await?;
    let mut signer = None;
    for (nonce, message) in &candidates {
        let recovered = signature.recover_address_from_msg(message.as_bytes()).ok();
        if recovered == Some(claimed) {
            let consume = Query::update()
                .table(WalletNonces::Table)
                .value(WalletNonces::UsedMs, now)
                .and_where(Expr::col(WalletNonces::Nonce).eq(nonce.as_str()))
                .and_where(live())
                .to_owned();
            return match db.execute(&consume).await? {
                1 => Ok(wallet),
                _ => Err(WalletError::NoLiveNonce(wallet)),
            };
        }
        signer = signer.or(recovered);
    }
    match (candidates.is_empty(), signer) {
        (true, _) => Err(WalletError::NoLiveNonce(wallet)),
        (false, signer) => Err(WalletError::WrongSigner {
            wallet,
            signer: signer.map_or_else(|| "no valid key".to_owned(), |a| a.to_checksum(None)),
        }),
    }
}

/// The lowercase form of an address (as stored) and the address itself.
fn parse_address(address: &str) -> Result<(String, Address), WalletError> {
    let wallet = normalize_wallet(address)?;
    let parsed = wallet
        .parse()
        .map_err(|_| AuthError::BadWallet(address.to_owned()))?;
    Ok((wallet, parsed))
}

/// Parses a 65-byte `r ‖ s ‖ v` signature, with `v` as 27/28 (what wallets send) or 0/1.
pub(crate) fn parse_signature(text: &str) -> Result<Signature, WalletError> {
    let hex = text
        .strip_prefix("0x")
        .ok_or_else(|| WalletError::BadSignature("it does not start with 0x".to_owned()))?;
    let bytes = hex::decode(hex).map_err(|e| WalletError::BadSignature(e.to_string()))?;
    let Ok(bytes) = <[u8; 65]>::try_from(bytes.as_slice()) else {
        return Err(WalletError::BadSignature(format!(
            "it is {} bytes long",
            bytes.len()
        )));
    };
    if !matches!(bytes[64], 0 | 1 | 27 | 28) {
        return Err(WalletError::BadSignature(format!("v is {}", bytes[64])));
    }
    Signature::from_raw_array(&bytes).map_err(|e| WalletError::BadSignature(e.to_string()))
}

fn ttl_ms(ttl: std::time::Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// Milliseconds since the epoch as an RFC 3339 UTC timestamp.
fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
