//! Links to generated images that work without credentials for a while (`image_url_ttl_s`,
//! 60 minutes by default, like OpenAI's image URLs):
//! `GET /v1/images/{job id}.png?expires=UNIX_SECONDS&sig=…`.
//!
//! `sig` is an HMAC-SHA256 of the job id and the expiry, under a key derived from the
//! coordinator's signing secret (`jwt_secret`), so links outlive restarts and any replica
//! sharing the secret serves them. Whoever holds a link may fetch that one PNG until it
//! expires; a link naming another job, another expiry or another signature is refused with
//! 403, as is an expired one.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use utoipa::IntoParams;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Auth;
use crate::error::{ApiError, ErrorBody};
use crate::jobs::store;

/// What the signing key is derived from: claims signed once with the coordinator's secret and
/// never handed out.
#[derive(Debug, Serialize)]
struct KeyDerivation {
    aud: &'static str,
    sub: &'static str,
}

/// Signs and checks image links.
#[derive(Debug)]
pub(crate) struct UrlSigner {
    key: [u8; 32],
}

impl UrlSigner {
    /// The signer of this coordinator's links. HS256 signing is deterministic, so the key is a
    /// function of the secret alone: an HMAC of a fixed message, apart from every token the
    /// coordinator hands out by its audience.
    pub(crate) fn new(auth: &Auth) -> Result<Self, ApiError> {
        let claims = KeyDerivation {
            aud: "infermine-image-url-key",
            sub: "image-url-signing",
        };
        let token = auth
            .sign_claims(&claims)
            .map_err(|e| ApiError::Internal(format!("cannot derive the image URL key: {e}")))?;
        Ok(Self {
            key: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// The MAC of one link, ready for its message.
    fn mac(&self, job: Uuid, expires: i64) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(format!("infermine image {job} until {expires}").as_bytes());
        mac
    }

    fn signature(&self, job: Uuid, expires: i64) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(job, expires).finalize().into_bytes())
    }

    /// The link to a job's PNG under `base` (the coordinator's public URL), good until
    /// `expires` (unix seconds).
    pub(crate) fn url(&self, base: &str, job: Uuid, expires: i64) -> String {
        let sig = self.signature(job, expires);
        format!("{base}/v1/images/{job}.png?expires={expires}&sig={sig}")
    }

    /// Whether a link is genuine and still good at `now` (unix seconds).
    pub(crate) fn check(
        &self,
        job: Uuid,
        expires: i64,
        sig: &str,
        now: i64,
    ) -> Result<(), ApiError> {
        // verify_slice compares in constant time, so timing says nothing about a forgery.
        let genuine = URL_SAFE_NO_PAD
            .decode(sig)
            .is_ok_and(|sig| self.mac(job, expires).verify_slice(&sig).is_ok());
        if !genuine {
            return Err(ApiError::Forbidden(
                "this image link's signature does not match: the link was altered, or signed \
                 by another coordinator; ask for the image again, or read the job with GET \
                 /v1/jobs/{id} and your API key"
                    .to_owned(),
            ));
        }
        if expires <= now {
            return Err(ApiError::Forbidden(format!(
                "this image link expired {} s ago; read the job with GET /v1/jobs/{job} and \
                 your API key, or ask for the image again",
                now - expires
            )));
        }
        Ok(())
    }
}

/// Now, in unix seconds.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The query of an image link.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImageLinkQuery {
    /// When the link stops working, in unix seconds.
    pub expires: Option<i64>,
    /// The link's signature.
    pub sig: Option<String>,
}

/// Serves a generated image to whoever holds its link, without credentials, until the link
/// expires: what `POST /v1/images/generations` answers with `response_format: url`.
#[utoipa::path(get, path = "/v1/images/{name}", tag = "openai", operation_id = "get_image",
    params(("name" = String, Path, description = "`<job id>.png`, as the link gives it"),
        ImageLinkQuery),
    responses(
        (status = 200, description = "the PNG", content_type = "image/png"),
        (status = 403, description = "`forbidden`: the link is unsigned, altered or expired",
            body = ErrorBody),
        (status = 404, description = "`not_found`: no image by that name", body = ErrorBody)))]
pub async fn image(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<ImageLinkQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let job = name
        .strip_suffix(".png")
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no image `{name}`: image links end in /v1/images/<job id>.png"
            ))
        })?;
    let (Some(expires), Some(sig)) = query.map(|Query(q)| (q.expires, q.sig)).unwrap_or_default()
    else {
        return Err(ApiError::Forbidden(
            "this image link lacks its `expires` and `sig`: use the whole link that POST \
             /v1/images/generations gave (response_format url)"
                .to_owned(),
        ));
    };
    let now = unix_now();
    UrlSigner::new(&state.auth)?.check(job, expires, &sig, now)?;
    let objects = store::objects_of(&state.db, job).await?;
    let Some((_, key, _, _)) = objects.into_iter().find(|(n, ..)| n == "output.png") else {
        return Err(ApiError::NotFound(format!(
            "job {job} has no stored image; GET /v1/jobs/{job} says how it ended"
        )));
    };
    let png = state
        .storage
        .get(&key)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| ApiError::Internal(format!("object {key} is recorded but missing")))?;
    let cache = format!("private, max-age={}", expires - now);
    Ok((
        [
            (header::CONTENT_TYPE, "image/png".to_owned()),
            (header::CACHE_CONTROL, cache),
        ],
        png,
    )
        .into_response())
}

#[cfg(test)]
mod tests;
