//! A miner token, a session or a rig of one wallet acting for another: refused, and the other
//! wallet's tokens and miners stay as they were.

use infermine_protocol::CloseCode;
use infermine_tests::raw::{RawAgent, hello};
use infermine_tests::{Backend, TestServer, WALLET};
use serde_json::{Value, json};

use super::{
    OTHER_WALLET, Tables, b64, call, hello_closes, hs256, jwt, secret, server, still_connected,
    wallet_session,
};
use crate::on_both_databases;

/// The claims of a miner token (its middle part, decoded).
fn claims_of(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("claims")
}

/// A hello with `token`: closed with 4001 and `mentions`; no miner recorded for either wallet.
async fn refused_for_another_wallet(server: &TestServer, token: &str, mentions: &str) {
    let tables = Tables::open(server).await;
    let before = tables.snapshot().await;
    let (code, reason) = hello_closes(server, hello(token, 1)).await;
    assert_eq!(code, CloseCode::Unauthorized.code(), "{reason}");
    assert!(reason.contains(mentions), "{reason}");
    assert_eq!(tables.snapshot().await, before, "nothing stored");
    assert_eq!(tables.count("miners").await, 0);
}

/// Wallet A's token re-signed (with the coordinator's own secret, as a leak would allow)
/// to name wallet B: the token's id is on record for A only.
async fn miner_token_naming_another_wallet(backend: Backend) {
    let server = server(&backend).await;
    let genuine = server.miner_token("rig").await;
    let mut claims = claims_of(&genuine);
    assert_eq!(claims["sub"], WALLET);
    claims["sub"] = json!(OTHER_WALLET);
    let forged = jwt(&hs256(), &claims, &secret(&server));
    refused_for_another_wallet(&server, &forged, "revoked or never issued").await;
}
on_both_databases!(miner_token_naming_another_wallet);

/// Wallet A's token with its payload swapped for one naming wallet B, signature kept.
async fn miner_token_with_a_swapped_wallet(backend: Backend) {
    let server = server(&backend).await;
    let genuine = server.miner_token("rig").await;
    let mut claims = claims_of(&genuine);
    claims["sub"] = json!(OTHER_WALLET);
    let parts: Vec<&str> = genuine.split('.').collect();
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    );
    refused_for_another_wallet(&server, &swapped, "InvalidSignature").await;
}
on_both_databases!(miner_token_with_a_swapped_wallet);

/// Mints a token named `name` for the session's wallet through the API; returns (id, token).
async fn mint(server: &TestServer, session: &str, name: &str) -> (String, String) {
    let reply = call(
        "POST",
        &format!("{}/api/v1/miner-tokens", server.http()),
        Some(session),
        Some(&json!({ "name": name })),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    (
        reply.body["id"].as_str().expect("id").to_owned(),
        reply.body["token"].as_str().expect("token").to_owned(),
    )
}

/// Wallet B's session tries to revoke wallet A's token: 404 (B cannot even learn it exists),
/// B's list does not show it, and A's token still works.
async fn another_wallet_revoking_a_miner_token(backend: Backend) {
    let server = server(&backend).await;
    let owner = wallet_session(&server, WALLET);
    let stranger = wallet_session(&server, OTHER_WALLET);
    let (id, token) = mint(&server, &owner, "rig-a").await;
    let tokens = format!("{}/api/v1/miner-tokens", server.http());

    let reply = call("DELETE", &format!("{tokens}/{id}"), Some(&stranger), None).await;
    reply.refused(404, &id);
    assert_eq!(reply.code(), "not_found");
    let listed = call("GET", &tokens, Some(&stranger), None).await;
    assert_eq!((listed.status, &listed.body), (200, &json!([])));

    let tables = Tables::open(&server).await;
    let revoked = tables
        .texts("SELECT CAST(revoked_ms AS TEXT) FROM miner_tokens")
        .await;
    assert_eq!(revoked, [None], "the token is still live");
    let listed = call("GET", &tokens, Some(&owner), None).await;
    assert_eq!(listed.body[0]["revoked_ms"], Value::Null, "{}", listed.text);
    let (mut agent, welcome) = RawAgent::join(&server.ws(), &token, 1)
        .await
        .expect("the owner's token still joins");
    assert!(welcome.slots[0].miner_id.starts_with(WALLET));
    still_connected(&mut agent).await;
}
on_both_databases!(another_wallet_revoking_a_miner_token);

/// Wallet B's session asks for a token and names wallet A in the body: refused (the body has
/// no such field), nothing minted for anyone.
async fn mint_request_naming_another_wallet(backend: Backend) {
    let server = server(&backend).await;
    let stranger = wallet_session(&server, OTHER_WALLET);
    let reply = call(
        "POST",
        &format!("{}/api/v1/miner-tokens", server.http()),
        Some(&stranger),
        Some(&json!({ "name": "rig", "wallet": WALLET })),
    )
    .await;
    reply.refused(400, "unknown field `wallet`");
    assert_eq!(reply.code(), "invalid_request");
    let tables = Tables::open(&server).await;
    assert_eq!(tables.count("miner_tokens").await, 0, "nothing minted");
}
on_both_databases!(mint_request_naming_another_wallet);

/// A token its wallet revoked: the next hello is refused, nothing recorded.
async fn revoked_miner_token(backend: Backend) {
    let server = server(&backend).await;
    let owner = wallet_session(&server, WALLET);
    let (id, token) = mint(&server, &owner, "rig-a").await;
    let reply = call(
        "DELETE",
        &format!("{}/api/v1/miner-tokens/{id}", server.http()),
        Some(&owner),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    refused_for_another_wallet(&server, &token, "revoked").await;
}
on_both_databases!(revoked_miner_token);

/// Wallet B's rig presents the very GPU (index and UUID) wallet A's rig registered: it gets
/// miner ids of its own wallet, and A's miner row keeps its wallet.
async fn rig_claiming_another_wallets_gpu(backend: Backend) {
    let server = server(&backend).await;
    let (_a, welcome_a) = RawAgent::join(&server.ws(), &server.miner_token("rig").await, 1)
        .await
        .expect("join");
    let token_b = infermine_server::mint_miner_token(&server.config, OTHER_WALLET, "rig")
        .await
        .expect("token");
    let (_b, welcome_b) = RawAgent::join(&server.ws(), &token_b, 1)
        .await
        .expect("join");
    assert_eq!(welcome_a.slots[0].miner_id, format!("{WALLET}-rig-gpu0"));
    assert_eq!(
        welcome_b.slots[0].miner_id,
        format!("{OTHER_WALLET}-rig-gpu0")
    );
    let tables = Tables::open(&server).await;
    let mut rows = tables
        .texts("SELECT miner_id || ' ' || wallet FROM miners")
        .await;
    rows.sort();
    assert_eq!(
        rows,
        [
            Some(format!("{OTHER_WALLET}-rig-gpu0 {OTHER_WALLET}")),
            Some(format!("{WALLET}-rig-gpu0 {WALLET}")),
        ]
    );
}
on_both_databases!(rig_claiming_another_wallets_gpu);
