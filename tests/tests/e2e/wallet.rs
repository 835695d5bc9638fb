//! Wallet sign-in over HTTP with a real secp256k1 key, miner tokens minted and revoked through
//! the API and used by a real agent process, and the session/admin token boundaries.

use std::time::Duration;

use alloy_primitives::{Address, eip191_hash_message};
use infermine_tests::{AgentProcess, Backend, TestServer};
use k256::ecdsa::SigningKey;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::on_both_databases;

/// A fresh random wallet.
fn wallet() -> SigningKey {
    let seed = Sha256::digest(uuid::Uuid::now_v7().as_bytes());
    SigningKey::from_slice(&seed).expect("a valid secret scalar")
}

fn address(key: &SigningKey) -> String {
    Address::from_private_key(key).to_checksum(None)
}

/// `personal_sign`: EIP-191 hash, recoverable signature, `v` = 27 + recovery id.
fn personal_sign(key: &SigningKey, message: &str) -> String {
    let hash = eip191_hash_message(message);
    let (signature, recovery) = key.sign_prehash_recoverable(hash.as_slice()).expect("sign");
    let mut bytes = signature.to_bytes().to_vec();
    bytes.push(27 + recovery.to_byte());
    format!("0x{}", hex::encode(bytes))
}

/// Sends a request with an optional bearer token and JSON body; returns status and JSON.
async fn call(
    method: reqwest::Method,
    url: String,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

async fn nonce(server: &TestServer, key: &SigningKey) -> Value {
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{}/api/v1/auth/nonce", server.http()),
        None,
        Some(json!({ "address": address(key) })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn verify(server: &TestServer, key: &SigningKey, signature: &str) -> (u16, Value) {
    call(
        reqwest::Method::POST,
        format!("{}/api/v1/auth/verify", server.http()),
        None,
        Some(json!({ "address": address(key), "signature": signature })),
    )
    .await
}

/// Signs in with `key` and returns the session token.
async fn sign_in(server: &TestServer, key: &SigningKey) -> String {
    let issued = nonce(server, key).await;
    let signature = personal_sign(key, issued["message"].as_str().expect("message"));
    let (status, body) = verify(server, key, &signature).await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

async fn sign_in_then_mine_with_a_portal_token(backend: Backend) {
    let server = TestServer::start(&backend).await;
    let key = wallet();
    let issued = nonce(&server, &key).await;
    let message = issued["message"].as_str().expect("message");
    assert!(message.contains(&address(&key)), "{message}");
    assert!(message.contains(&format!(
        "Nonce: {}",
        issued["nonce"].as_str().expect("nonce")
    )));

    let (status, body) = verify(&server, &key, &personal_sign(&wallet(), message)).await;
    assert_eq!(status, 401, "another wallet's signature: {body}");
    assert_eq!(body["error"]["code"], "unauthorized");

    let signature = personal_sign(&key, message);
    let (status, session) = verify(&server, &key, &signature).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["address"], address(&key).to_ascii_lowercase());
    let token = session["token"].as_str().expect("token").to_owned();
    let (status, body) = verify(&server, &key, &signature).await;
    assert_eq!(status, 401, "a replayed nonce: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nonce")
    );

    let tokens = format!("{}/api/v1/miner-tokens", server.http());
    let (status, listed) = call(reqwest::Method::GET, tokens.clone(), Some(&token), None).await;
    assert_eq!((status, listed), (200, json!([])));
    let (status, minted) = call(
        reqwest::Method::POST,
        tokens.clone(),
        Some(&token),
        Some(json!({ "name": "rig-a" })),
    )
    .await;
    assert_eq!(status, 201, "{minted}");
    let id = minted["id"].as_str().expect("id").to_owned();
    let miner_token = minted["token"].as_str().expect("miner token").to_owned();
    let agent_config = minted["agent_config"].as_str().expect("agent config");
    assert!(
        agent_config.contains(&format!("coordinator = \"{}\"", server.ws())),
        "{agent_config}"
    );
    assert!(
        agent_config.contains(&format!("token = \"{miner_token}\"")),
        "{agent_config}"
    );

    // The agent reads the snippet as its config file; the token on its command line is the same.
    let config_file = server.data_dir().join("agent.toml");
    std::fs::write(&config_file, agent_config).expect("write agent config");
    let config_arg = config_file.to_str().expect("utf-8 path");
    let mut agent = AgentProcess::spawn(&server, &miner_token, &["--config", config_arg]).await;
    server.wait_slots(1).await;
    let status = server.wait_status("1 agent", |s| s["agents"] == 1).await;
    assert_eq!(status["slots"], 1);

    // Another wallet cannot see or revoke this wallet's token.
    let stranger = sign_in(&server, &wallet()).await;
    let (status, _) = call(reqwest::Method::GET, tokens.clone(), Some(&stranger), None).await;
    assert_eq!(status, 200);
    let one = format!("{tokens}/{id}");
    let (status, body) = call(reqwest::Method::DELETE, one.clone(), Some(&stranger), None).await;
    assert_eq!(status, 404, "{body}");

    let (status, revoked) = call(reqwest::Method::DELETE, one.clone(), Some(&token), None).await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_ms"].is_i64(), "{revoked}");
    let (status, again) = call(reqwest::Method::DELETE, one, Some(&token), None).await;
    assert_eq!(
        (status, &again["revoked_ms"]),
        (200, &revoked["revoked_ms"])
    );
    let (status, listed) = call(reqwest::Method::GET, tokens, Some(&token), None).await;
    assert_eq!(status, 200);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["revoked_ms"], revoked["revoked_ms"]);
    assert!(
        listed[0].get("token").is_none(),
        "lists never show the secret: {listed}"
    );

    agent.kill().await;
    server.wait_status("no agents", |s| s["agents"] == 0).await;
    let mut refused = AgentProcess::spawn(&server, &miner_token, &[]).await;
    let exit = refused.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(
        exit.and_then(|e| e.code()),
        Some(2),
        "a revoked token ends the agent; log:\n{}",
        refused.log()
    );
    assert!(refused.log().contains("revoked"), "{}", refused.log());
}
on_both_databases!(sign_in_then_mine_with_a_portal_token);

async fn sessions_and_admin_tokens_stay_in_their_lanes(backend: Backend) {
    let server = TestServer::start(&backend).await;
    let key = wallet();
    let session = sign_in(&server, &key).await;
    let admin =
        infermine_server::mint_admin_token(&server.config, "ops", Duration::from_secs(3600))
            .await
            .expect("admin token");
    let miner_token = server.miner_token("rig").await;
    let whoami = format!("{}/api/v1/admin/whoami", server.http());
    let tokens = format!("{}/api/v1/miner-tokens", server.http());
    let get = |url: &str, bearer: Option<&str>| {
        let (url, bearer) = (url.to_owned(), bearer.map(str::to_owned));
        async move { call(reqwest::Method::GET, url, bearer.as_deref(), None).await }
    };

    assert_eq!(
        get(&whoami, Some(&admin)).await,
        (200, json!({ "name": "ops" }))
    );
    let (status, body) = get(&whoami, Some(&session)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("forbidden")),
        "{body}"
    );
    let (status, body) = get(&tokens, Some(&admin)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("forbidden")),
        "{body}"
    );
    for (what, bearer) in [
        ("no token", None),
        ("a miner token", Some(miner_token.as_str())),
        ("an API key", Some(server.api_key.as_str())),
    ] {
        let (status, body) = get(&whoami, bearer).await;
        assert_eq!(status, 401, "{what} on an admin route: {body}");
        let (status, body) = get(&tokens, bearer).await;
        assert_eq!(status, 401, "{what} on a wallet route: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("/api/v1/auth/nonce"),
            "{what}: the message says how to sign in: {body}"
        );
    }

    // A session token is no miner token: an agent presenting one is refused.
    let mut agent = AgentProcess::spawn(&server, &session, &[]).await;
    let exit = agent.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(exit.and_then(|e| e.code()), Some(2), "{}", agent.log());

    // Malformed bodies get the API's standard error.
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{}/api/v1/auth/verify", server.http()),
        None,
        Some(json!({ "address": address(&key) })),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_request")),
        "{body}"
    );
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{}/api/v1/auth/nonce", server.http()),
        None,
        Some(json!({ "address": "0x1234" })),
    )
    .await;
    assert_eq!(status, 422, "{body}");
}
on_both_databases!(sessions_and_admin_tokens_stay_in_their_lanes);
