//! Forged, expired and misused JWTs: on the admin routes, on the wallet routes and in an
//! agent's hello. Each is refused (401, or close code 4001 for a hello) and nothing changes.

use infermine_protocol::CloseCode;
use infermine_tests::raw::{RawAgent, hello};
use infermine_tests::{Backend, TestServer, WALLET};
use serde_json::{Value, json};

use super::{
    Tables, admin_token, b64, call, hello_closes, hs256, jwt, portal_claims, secret, seed_case,
    server, still_connected, waifu_balance, wallet_session,
};
use crate::on_both_databases;

/// Tries every kind of admin write with `token`: a slash, a case's slash and dismissal, a
/// suspension and a validator. Each must be refused with 401 naming `mentions`; the balance,
/// the case, the connected GPU and every table stay as they were.
async fn admin_writes_refused(server: &TestServer, token: &str, mentions: &str) {
    let case = seed_case(server).await;
    let (mut agent, _) = RawAgent::join(&server.ws(), &server.miner_token("rig").await, 1)
        .await
        .expect("join");
    let tables = Tables::open(server).await;
    let before = tables.snapshot().await;
    let base = server.http();
    let gpu = format!("{WALLET}-rig-gpu0");
    let writes = [
        (
            "POST",
            format!("{base}/api/v1/admin/slashes"),
            json!({ "address": WALLET, "fraction": 1.0, "reason": "forged" }),
        ),
        (
            "POST",
            format!("{base}/api/v1/admin/cases/{case}/slash"),
            json!({ "fraction": 1.0, "note": "forged", "suspend": true }),
        ),
        (
            "POST",
            format!("{base}/api/v1/admin/cases/{case}/dismiss"),
            json!({ "note": "forged" }),
        ),
        (
            "POST",
            format!("{base}/api/v1/admin/miners/{gpu}/suspend"),
            json!({ "reason": "forged" }),
        ),
        (
            "PUT",
            format!("{base}/api/v1/admin/validators/{gpu}"),
            json!({}),
        ),
    ];
    for (method, url, body) in writes {
        let reply = call(method, &url, Some(token), Some(&body)).await;
        reply.refused(401, mentions);
        assert_eq!(reply.code(), "unauthorized", "{method} {url}");
    }

    assert_eq!(tables.snapshot().await, before, "nothing stored");
    assert_eq!(waifu_balance(server).await, 10_000_000, "nothing slashed");
    let admin = admin_token(server).await;
    let view = call(
        "GET",
        &format!("{base}/api/v1/admin/cases/{case}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(view.body["status"], "open", "{}", view.text);
    let miner = server.get_json(&format!("/api/v1/miners/{gpu}")).await;
    assert_eq!(miner["suspension"], Value::Null, "{miner}");
    still_connected(&mut agent).await;
    let validators = call(
        "GET",
        &format!("{base}/api/v1/admin/validators"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(validators.status, 200, "{}", validators.text);
    assert!(!validators.text.contains(&gpu), "{}", validators.text);
}

fn admin_claims(expires_in_s: i64) -> Value {
    portal_claims("ops", "admin", expires_in_s)
}

async fn admin_token_signed_by_another_coordinator(backend: Backend) {
    let server = server(&backend).await;
    let other = TestServer::start(&Backend::Sqlite).await;
    let forged = admin_token(&other).await;
    admin_writes_refused(&server, &forged, "InvalidSignature").await;
}
on_both_databases!(admin_token_signed_by_another_coordinator);

async fn expired_admin_token(backend: Backend) {
    let server = server(&backend).await;
    let expired = jwt(&hs256(), &admin_claims(-3600), &secret(&server));
    admin_writes_refused(&server, &expired, "ExpiredSignature").await;
}
on_both_databases!(expired_admin_token);

async fn admin_token_with_alg_none(backend: Backend) {
    let server = server(&backend).await;
    let unsigned = jwt(
        &json!({ "alg": "none", "typ": "JWT" }),
        &admin_claims(3600),
        &[],
    );
    admin_writes_refused(&server, &unsigned, "token is malformed").await;
}
on_both_databases!(admin_token_with_alg_none);

async fn admin_token_with_another_algorithm(backend: Backend) {
    let server = server(&backend).await;
    // The right secret, but HS512: only HS256 is accepted (no algorithm confusion).
    let header = json!({ "alg": "HS512", "typ": "JWT" });
    let token = jwt(&header, &admin_claims(3600), &secret(&server));
    admin_writes_refused(&server, &token, "InvalidAlgorithm").await;
}
on_both_databases!(admin_token_with_another_algorithm);

async fn admin_token_for_another_audience(backend: Backend) {
    let server = server(&backend).await;
    let mut claims = admin_claims(3600);
    claims["aud"] = json!("infermine-miners");
    let token = jwt(&hs256(), &claims, &secret(&server));
    admin_writes_refused(&server, &token, "InvalidAudience").await;
}
on_both_databases!(admin_token_for_another_audience);

async fn admin_token_without_expiry(backend: Backend) {
    let server = server(&backend).await;
    let mut claims = admin_claims(3600);
    claims.as_object_mut().expect("object").remove("exp");
    let token = jwt(&hs256(), &claims, &secret(&server));
    admin_writes_refused(&server, &token, "missing field `exp`").await;
}
on_both_databases!(admin_token_without_expiry);

/// A genuine wallet session whose payload is edited to say `role: admin`, signature kept.
async fn wallet_session_promoted_to_admin(backend: Backend) {
    let server = server(&backend).await;
    let session = wallet_session(&server, WALLET);
    let parts: Vec<&str> = session.split('.').collect();
    let mut claims = portal_claims(WALLET, "wallet", 3600);
    claims["role"] = json!("admin");
    let promoted = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    );
    admin_writes_refused(&server, &promoted, "InvalidSignature").await;
}
on_both_databases!(wallet_session_promoted_to_admin);

/// `POST /api/v1/miner-tokens` with `session`: refused with 401 naming `mentions`, no token.
async fn mint_refused(server: &TestServer, session: &str, mentions: &str) {
    let tables = Tables::open(server).await;
    let before = tables.snapshot().await;
    let reply = call(
        "POST",
        &format!("{}/api/v1/miner-tokens", server.http()),
        Some(session),
        Some(&json!({ "name": "stolen-rig" })),
    )
    .await;
    reply.refused(401, mentions);
    assert_eq!(reply.code(), "unauthorized");
    assert_eq!(tables.snapshot().await, before, "no token minted");
    assert_eq!(tables.count("miner_tokens").await, 0);
}

async fn expired_wallet_session(backend: Backend) {
    let server = server(&backend).await;
    let expired = jwt(
        &hs256(),
        &portal_claims(WALLET, "wallet", -3600),
        &secret(&server),
    );
    mint_refused(&server, &expired, "ExpiredSignature").await;
}
on_both_databases!(expired_wallet_session);

async fn wallet_session_signed_by_another_coordinator(backend: Backend) {
    let server = server(&backend).await;
    let other = TestServer::start(&Backend::Sqlite).await;
    mint_refused(&server, &wallet_session(&other, WALLET), "InvalidSignature").await;
}
on_both_databases!(wallet_session_signed_by_another_coordinator);

/// A hello bearing `token`: closed with 4001 naming the miner token; no miner recorded.
async fn hello_refused(server: &TestServer, token: &str) {
    let tables = Tables::open(server).await;
    let before = tables.snapshot().await;
    let (code, reason) = hello_closes(server, hello(token, 1)).await;
    assert_eq!(code, CloseCode::Unauthorized.code(), "{reason}");
    assert!(reason.contains("miner token"), "{reason}");
    assert_eq!(tables.snapshot().await, before, "nothing stored");
    assert_eq!(tables.count("miners").await, 0);
    let status = server.wait_status("status", |_| true).await;
    assert_eq!(
        (&status["agents"], &status["slots"]),
        (&json!(0), &json!(0))
    );
}

async fn admin_token_in_a_hello(backend: Backend) {
    let server = server(&backend).await;
    hello_refused(&server, &admin_token(&server).await).await;
}
on_both_databases!(admin_token_in_a_hello);

async fn wallet_session_in_a_hello(backend: Backend) {
    let server = server(&backend).await;
    hello_refused(&server, &wallet_session(&server, WALLET)).await;
}
on_both_databases!(wallet_session_in_a_hello);

/// A genuine miner token's claims, re-sent unsigned with `alg: none`.
async fn miner_token_with_alg_none(backend: Backend) {
    let server = server(&backend).await;
    let genuine = server.miner_token("rig").await;
    let payload = genuine.split('.').nth(1).expect("payload");
    let header = b64(json!({ "alg": "none", "typ": "JWT" })
        .to_string()
        .as_bytes());
    hello_refused(&server, &format!("{header}.{payload}.")).await;
}
on_both_databases!(miner_token_with_alg_none);
