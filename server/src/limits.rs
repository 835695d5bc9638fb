//! Rate limits on the public HTTP routes (governor's GCRA buckets), answered with
//! `429 Too Many Requests`, a `Retry-After` header and the API's error body.
//!
//! Every request is counted against its client IP; requests carrying a consumer API key are
//! also counted against the key, and requests about a wallet (its portal pages, sign-in)
//! against the wallet. A request passes only if every bucket it touches has room, so one
//! noisy key, wallet or address slows only itself. The agent WebSocket and `/healthz` are
//! exempt: agents are limited per frame inside their session, and health checks must answer.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::error::{ErrorBody, ErrorDetail};

/// One limit: a sustained rate and the burst allowed on top of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub per_second: u32,
    pub burst: u32,
}

/// `[rate_limits]` in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Off switch (for benchmarks on loopback, never in production).
    pub enabled: bool,
    /// Per client IP, over every public route.
    pub per_ip: Limit,
    /// Per consumer API key (`Authorization: Bearer imk_…`).
    pub per_api_key: Limit,
    /// Per wallet: its portal pages and sign-in.
    pub per_wallet: Limit,
    /// Take the client IP from the first `X-Forwarded-For` address (or `Fly-Client-IP`);
    /// only behind a proxy that sets it, or clients could pick their own bucket.
    pub trust_forwarded_for: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            per_ip: Limit {
                per_second: 100,
                burst: 200,
            },
            per_api_key: Limit {
                per_second: 500,
                burst: 1_000,
            },
            per_wallet: Limit {
                per_second: 10,
                burst: 30,
            },
            trust_forwarded_for: false,
        }
    }
}

impl RateLimitConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, limit) in [
            ("per_ip", self.per_ip),
            ("per_api_key", self.per_api_key),
            ("per_wallet", self.per_wallet),
        ] {
            if limit.per_second == 0 || limit.burst == 0 {
                return Err(format!(
                    "rate_limits.{name}: per_second and burst must be at least 1 (set rate_limits.enabled = false to turn limits off)"
                ));
            }
        }
        Ok(())
    }
}

type Keyed = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

/// The buckets, shared by every request.
#[derive(Debug)]
pub struct Limiters {
    config: RateLimitConfig,
    per_ip: Keyed,
    per_api_key: Keyed,
    per_wallet: Keyed,
}

fn keyed(limit: Limit) -> Keyed {
    let per_second = NonZeroU32::new(limit.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
}

impl Limiters {
    pub fn new(config: &RateLimitConfig) -> Arc<Self> {
        Arc::new(Self {
            config: config.clone(),
            per_ip: keyed(config.per_ip),
            per_api_key: keyed(config.per_api_key),
            per_wallet: keyed(config.per_wallet),
        })
    }

    /// Forgets buckets that are full again (called now and then, so memory stays bounded).
    pub fn sweep(&self) {
        for limiter in [&self.per_ip, &self.per_api_key, &self.per_wallet] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Takes one request from each bucket `request` touches; on refusal, how long to wait.
    fn check(&self, ip: IpAddr, request: &Request) -> Result<(), Duration> {
        let mut checks: Vec<(&Keyed, String)> = vec![(&self.per_ip, ip.to_string())];
        if let Some(key) = api_key(request) {
            checks.push((&self.per_api_key, key));
        }
        if let Some(wallet) = wallet_of(request) {
            checks.push((&self.per_wallet, wallet));
        }
        let now = DefaultClock::default().now();
        let mut wait = Duration::ZERO;
        for (limiter, key) in checks {
            if let Err(not_until) = limiter.check_key(&key) {
                wait = wait.max(not_until.wait_time_from(now));
            }
        }
        if wait.is_zero() { Ok(()) } else { Err(wait) }
    }

    fn client_ip(&self, request: &Request) -> Option<IpAddr> {
        if self.config.trust_forwarded_for {
            let headers = request.headers();
            let forwarded = headers
                .get("fly-client-ip")
                .or_else(|| headers.get("x-forwarded-for"))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse().ok());
            if forwarded.is_some() {
                return forwarded;
            }
        }
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
    }
}

/// A consumer API key's bucket name: a short digest, so keys never sit in memory in clear
/// longer than the request.
fn api_key(request: &Request) -> Option<String> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let key = value.strip_prefix("Bearer ")?.trim();
    key.starts_with("imk_")
        .then(|| crate::auth::sha256_hex(key)[..16].to_owned())
}

/// The wallet a request is about: `/api/v1/wallets/{address}…`.
fn wallet_of(request: &Request) -> Option<String> {
    let rest = request.uri().path().strip_prefix("/api/v1/wallets/")?;
    let address = rest.split('/').next()?;
    (address.len() == 42).then(|| address.to_ascii_lowercase())
}

/// Routes no limit applies to (the OpenAPI document leaves 429 out of theirs).
pub(crate) const EXEMPT: [&str; 2] = ["/healthz", "/v1/agent/ws"];

fn exempt(path: &str) -> bool {
    EXEMPT.contains(&path)
}

/// The middleware: passes the request on, or answers 429.
pub async fn limit(
    State(limiters): State<Arc<Limiters>>,
    request: Request,
    next: Next,
) -> Response {
    if !limiters.config.enabled || exempt(request.uri().path()) {
        return next.run(request).await;
    }
    let Some(ip) = limiters.client_ip(&request) else {
        // Without a peer address (in-process routers in tests) only the key buckets apply.
        return next.run(request).await;
    };
    match limiters.check(ip, &request) {
        Ok(()) => next.run(request).await,
        Err(wait) => too_many(wait),
    }
}

fn too_many(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let body = ErrorBody {
        error: ErrorDetail {
            message: format!("too many requests; retry after {seconds} s"),
            kind: "rate_limit_error",
            param: None,
            code: "rate_limited",
        },
    };
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, auth: Option<&str>) -> Request {
        let mut builder = Request::builder().uri(path);
        if let Some(auth) = auth {
            builder = builder.header(header::AUTHORIZATION, auth);
        }
        builder.body(axum::body::Body::empty()).expect("request")
    }

    fn limiters(per_second: u32, burst: u32) -> Arc<Limiters> {
        let limit = Limit { per_second, burst };
        Limiters::new(&RateLimitConfig {
            per_ip: limit,
            per_api_key: limit,
            per_wallet: limit,
            ..RateLimitConfig::default()
        })
    }

    #[test]
    fn each_bucket_refuses_only_its_own_client() {
        let limiters = limiters(1, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let plain = request("/v1/models", None);
        assert!(limiters.check(a, &plain).is_ok());
        assert!(limiters.check(a, &plain).is_ok());
        let wait = limiters.check(a, &plain).expect_err("burst of 2 spent");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(
            limiters.check(b, &plain).is_ok(),
            "another IP is unaffected"
        );

        // A key's bucket follows the key across addresses.
        let keyed = request("/v1/jobs", Some("Bearer imk_abc"));
        assert!(limiters.check([10, 0, 1, 1].into(), &keyed).is_ok());
        assert!(limiters.check([10, 0, 1, 2].into(), &keyed).is_ok());
        assert!(limiters.check([10, 0, 1, 3].into(), &keyed).is_err());
        let other_key = request("/v1/jobs", Some("Bearer imk_xyz"));
        assert!(limiters.check([10, 0, 1, 4].into(), &other_key).is_ok());
    }

    #[test]
    fn wallets_are_limited_whatever_the_case_of_their_address() {
        let limiters = limiters(1, 1);
        let lower = request(
            "/api/v1/wallets/0x5aeda56215b167893e80b4fe645ba6d5bab767de/ledger",
            None,
        );
        let upper = request(
            "/api/v1/wallets/0x5AEDA56215B167893E80B4FE645BA6D5BAB767DE",
            None,
        );
        assert!(limiters.check([10, 0, 2, 1].into(), &lower).is_ok());
        assert!(limiters.check([10, 0, 2, 2].into(), &upper).is_err());
    }

    #[test]
    fn zero_limits_are_refused_with_the_way_out() {
        let config = RateLimitConfig {
            per_wallet: Limit {
                per_second: 0,
                burst: 1,
            },
            ..RateLimitConfig::default()
        };
        let err = config.validate().expect_err("zero rate");
        assert!(err.contains("rate_limits.enabled = false"), "{err}");
    }

    #[test]
    fn refusals_say_when_to_retry() {
        let response = too_many(Duration::from_millis(1_200));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }

    #[tokio::test]
    async fn refusals_are_shaped_like_openai_errors() {
        let response = too_many(Duration::from_secs(1));
        let bytes = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(body["error"]["code"], "rate_limited");
        assert!(body["error"]["param"].is_null());
    }
}
