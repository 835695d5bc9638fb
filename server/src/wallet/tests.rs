use std::time::Duration;

use alloy_primitives::{Address, keccak256};
use axum::http::Request;
use k256::ecdsa::SigningKey;

use super::session::{self, Role};
use super::signin::{check_sign_in, issue_nonce, parse_signature};
use super::tokens::agent_config;
use super::{NONCE_TTL, Origin, WalletError};
use crate::auth::Auth;
use crate::config::Config;
use crate::db::{Db, now_ms};
use crate::error::ApiError;

async fn setup() -> (tempfile::TempDir, Db, Auth) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::with_data_dir(dir.path());
    let db = Db::connect(&config.database_url()).await.expect("db");
    db.migrate().await.expect("migrate");
    let auth = Auth::new(&config, db.clone()).expect("auth");
    (dir, db, auth)
}

fn origin() -> Origin {
    Origin {
        host: "portal.example:8443".to_owned(),
        tls: true,
    }
}

/// The key whose secret scalar is `n`.
fn key(n: u8) -> SigningKey {
    let mut secret = [0u8; 32];
    secret[31] = n;
    SigningKey::from_slice(&secret).expect("valid scalar")
}

fn address(key: &SigningKey) -> String {
    format!("{:#x}", Address::from_private_key(key))
}

/// What a wallet's `personal_sign` does: EIP-191 prefix, keccak256, recoverable ECDSA, with
/// `v` as `v_base` + the recovery id (27 in most wallets, 0 in some).
fn personal_sign(key: &SigningKey, message: &str, v_base: u8) -> String {
    let mut prefixed = format!("\x19Ethereum Signed Message:\n{}", message.len()).into_bytes();
    prefixed.extend_from_slice(message.as_bytes());
    let hash = keccak256(&prefixed);
    assert_eq!(hash, alloy_primitives::eip191_hash_message(message));
    let (signature, recovery) = key.sign_prehash_recoverable(hash.as_slice()).expect("sign");
    let mut bytes = signature.to_bytes().to_vec();
    bytes.push(v_base + recovery.to_byte());
    format!("0x{}", hex::encode(bytes))
}

#[test]
fn addresses_derive_from_keys_as_ethereum_does() {
    let derived = Address::from_private_key(&key(1));
    assert_eq!(
        derived.to_checksum(None),
        "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"
    );
    assert_eq!(
        address(&key(1)),
        "0x7e5f4552091a69125d5dfcb7b8c2659029395bdf"
    );
}

#[tokio::test]
async fn a_signed_nonce_signs_in_once() {
    let (_dir, db, _auth) = setup().await;
    let wallet = address(&key(7));
    let now = now_ms();
    let issued = issue_nonce(
        &db,
        &wallet.to_ascii_uppercase().replacen("0X", "0x", 1),
        &origin(),
        now,
    )
    .await
    .expect("nonce");
    assert_eq!(issued.expires_ms, now + 5 * 60 * 1000);
    let checksummed = Address::from_private_key(&key(7)).to_checksum(None);
    for line in [
        "portal.example:8443 wants you to sign in with your Ethereum account:",
        &checksummed,
        "URI: https://portal.example:8443",
        &format!("Nonce: {}", issued.nonce),
        "Issued At: 20",
        "Expiration Time: 20",
    ] {
        assert!(
            issued.message.contains(line),
            "{line} in:\n{}",
            issued.message
        );
    }

    let signature = personal_sign(&key(7), &issued.message, 27);
    let signed_in = check_sign_in(&db, &checksummed, &signature, None, now + 1000)
        .await
        .expect("valid signature");
    assert_eq!(signed_in, wallet);

    let replay = check_sign_in(&db, &wallet, &signature, None, now + 2000).await;
    assert!(
        matches!(replay, Err(WalletError::NoLiveNonce(_))),
        "{replay:?}"
    );
}

#[tokio::test]
async fn v_may_be_0_or_1_and_the_named_nonce_is_used() {
    let (_dir, db, _auth) = setup().await;
    let wallet = address(&key(8));
    let now = now_ms();
    let older = issue_nonce(&db, &wallet, &origin(), now)
        .await
        .expect("nonce");
    let _newer = issue_nonce(&db, &wallet, &origin(), now + 10)
        .await
        .expect("nonce");
    let signature = personal_sign(&key(8), &older.message, 0);
    let wrong_nonce = check_sign_in(&db, &wallet, &signature, Some("feed"), now + 20).await;
    assert!(matches!(wrong_nonce, Err(WalletError::NoLiveNonce(_))));
    let signed_in = check_sign_in(&db, &wallet, &signature, Some(&older.nonce), now + 20)
        .await
        .expect("older nonce, named");
    assert_eq!(signed_in, wallet);
}

#[tokio::test]
async fn wrong_messages_and_other_signers_are_refused_without_burning_the_nonce() {
    let (_dir, db, _auth) = setup().await;
    let wallet = address(&key(9));
    let now = now_ms();
    let issued = issue_nonce(&db, &wallet, &origin(), now)
        .await
        .expect("nonce");

    let other_message = personal_sign(&key(9), &issued.message.replace("Nonce", "nonce"), 27);
    let by_other_key = personal_sign(&key(10), &issued.message, 27);
    for signature in [other_message, by_other_key] {
        let refused = check_sign_in(&db, &wallet, &signature, None, now + 1).await;
        assert!(
            matches!(&refused, Err(WalletError::WrongSigner { wallet: w, .. }) if *w == wallet),
            "{refused:?}"
        );
        let api: ApiError = refused.expect_err("refused").into();
        assert_eq!(api.status(), 401);
    }

    let good = personal_sign(&key(9), &issued.message, 27);
    check_sign_in(&db, &wallet, &good, None, now + 2)
        .await
        .expect("the nonce survived the bad attempts");
}

#[tokio::test]
async fn expired_nonces_are_refused() {
    let (_dir, db, _auth) = setup().await;
    let wallet = address(&key(11));
    let now = now_ms();
    let issued = issue_nonce(&db, &wallet, &origin(), now)
        .await
        .expect("nonce");
    let signature = personal_sign(&key(11), &issued.message, 27);
    let late = now + i64::try_from(NONCE_TTL.as_millis()).expect("ms");
    let refused = check_sign_in(&db, &wallet, &signature, None, late).await;
    assert!(
        matches!(refused, Err(WalletError::NoLiveNonce(_))),
        "{refused:?}"
    );
}

#[test]
fn malformed_signatures_are_named() {
    let good = format!("0x{}1b", "11".repeat(64));
    assert!(parse_signature(&good).is_ok());
    for (bad, why) in [
        (good.trim_start_matches("0x").to_owned(), "0x"),
        (format!("0x{}1b", "zz".repeat(64)), "Invalid character"),
        (format!("0x{}", "11".repeat(64)), "64 bytes"),
        (format!("0x{}1", "11".repeat(64)), "Odd number"),
        (format!("0x{}05", "11".repeat(64)), "v is 5"),
        (format!("0x{}25", "11".repeat(64)), "v is 37"),
    ] {
        match parse_signature(&bad) {
            Err(WalletError::BadSignature(m)) => assert!(m.contains(why), "{why}: {m}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn bad_addresses_are_refused_before_anything_is_stored() {
    let (_dir, db, _auth) = setup().await;
    for address in ["", "0x1234", "7e5f4552091a69125d5dfcb7b8c2659029395bdf"] {
        let refused = issue_nonce(&db, address, &origin(), now_ms()).await;
        let api: ApiError = refused.expect_err("refused").into();
        assert_eq!(api.code(), "invalid_address");
    }
}

/// The role a request's bearer token grants, through the same checks the extractors run.
fn role_of(auth: &Auth, token: &str) -> Result<(Role, String), ApiError> {
    let (parts, ()) = Request::builder()
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .expect("request")
        .into_parts();
    session::claims(&parts, auth, session::ADMIN).map(|c| (c.role, c.sub))
}

#[tokio::test]
async fn only_live_session_tokens_of_this_coordinator_pass() {
    let (_dir, _db, auth) = setup().await;
    let wallet = address(&key(12));
    let now = now_ms();
    let (token, expires_ms) =
        session::mint(&auth, Role::Wallet, &wallet, super::SESSION_TTL, now).expect("mint");
    assert!((expires_ms - now - 24 * 3600 * 1000).abs() < 1000);
    assert_eq!(
        role_of(&auth, &token).expect("valid"),
        (Role::Wallet, wallet.clone())
    );

    let admin = super::mint_admin_token(&auth, "ops", Duration::from_secs(3600)).expect("admin");
    assert_eq!(
        role_of(&auth, &admin).expect("valid"),
        (Role::Admin, "ops".to_owned())
    );

    let (expired, _) = session::mint(
        &auth,
        Role::Wallet,
        &wallet,
        Duration::from_secs(60),
        now - 3600 * 1000,
    )
    .expect("mint");
    let (_other_dir, _other_db, other_auth) = setup().await;
    let (foreign, _) = session::mint(
        &other_auth,
        Role::Admin,
        "ops",
        Duration::from_secs(60),
        now,
    )
    .expect("mint");
    let miner = auth
        .mint_miner_token(&wallet, "rig")
        .await
        .expect("miner token");
    let api_key = auth.create_api_key("consumer").await.expect("api key");
    let unsigned = {
        use base64::Engine as _;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.",
            b64(serde_json::json!({ "alg": "none", "typ": "JWT" })),
            b64(serde_json::json!({
                "sub": "ops", "role": "admin", "aud": "infermine-portal",
                "iat": now / 1000, "exp": now / 1000 + 3600,
            })),
        )
    };
    for (what, token) in [
        ("expired", expired),
        ("another secret", foreign),
        ("a miner token", miner),
        ("an API key", api_key),
        ("alg none", unsigned),
    ] {
        let refused = role_of(&auth, &token).expect_err(what);
        assert_eq!(refused.status(), 401, "{what}: {refused}");
        assert!(
            refused.to_string().contains("infermine-server admin-token"),
            "{what}: {refused}"
        );
    }
}

#[tokio::test]
async fn admin_tokens_need_a_sane_name_and_lifetime() {
    let (_dir, _db, auth) = setup().await;
    for name in ["", "has space", "a/b", &"x".repeat(65)] {
        assert!(matches!(
            super::mint_admin_token(&auth, name, Duration::from_secs(3600)),
            Err(WalletError::BadAdminName(_))
        ));
    }
    for ttl in [Duration::ZERO, Duration::from_secs(367 * 24 * 3600)] {
        assert!(matches!(
            super::mint_admin_token(&auth, "ops", ttl),
            Err(WalletError::BadTtl)
        ));
    }
}

#[test]
fn the_agent_config_is_toml_the_agent_reads() {
    let text = agent_config(&origin(), "0xabc", "rig-1", "a.b.c");
    let parsed: toml::Table = text.parse().expect("valid TOML");
    assert_eq!(
        parsed["coordinator"].as_str(),
        Some("wss://portal.example:8443")
    );
    assert_eq!(parsed["token"].as_str(), Some("a.b.c"));
    assert_eq!(parsed.len(), 2, "only keys the agent knows: {text}");
}

#[test]
fn hosts_come_from_the_request_unless_they_look_wrong() {
    let listen = "127.0.0.1:8080".parse().expect("addr");
    let headers = |pairs: &[(&'static str, &str)]| {
        let mut map = axum::http::HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().expect("header"));
        }
        map
    };
    let from = |pairs| Origin::from_headers(&headers(pairs), listen);
    assert_eq!(from(&[]).uri(), "http://127.0.0.1:8080");
    assert_eq!(
        from(&[("host", "infermine.io")]).uri(),
        "http://infermine.io"
    );
    let proxied = from(&[("host", "infermine.io"), ("x-forwarded-proto", "https")]);
    assert_eq!(proxied.uri(), "https://infermine.io");
    assert_eq!(proxied.websocket(), "wss://infermine.io");
    assert_eq!(from(&[("host", "evil.io/phish x")]).host, "127.0.0.1:8080");
}
