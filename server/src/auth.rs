//! Who may talk to the coordinator: miner tokens (JWTs signed by the coordinator, presented by
//! agents in their hello), consumer API keys (random, stored only as SHA-256), and the signing
//! and checking of the portal's session and admin JWTs (see `wallet`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use sea_query::{Expr, ExprTrait, Iden, Query};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::Config;
use crate::db::{Db, DbError, now_ms};

/// Why a credential was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("wallet address `{0}` is not a 0x-prefixed 40-digit hex address")]
    BadWallet(String),
    #[error("rig name `{0}` must be 1-32 characters of letters, digits, `-` or `_`")]
    BadName(String),
    #[error("API key name {0:?} may not contain a NUL character")]
    BadKeyName(String),
    #[error("miner token is malformed or not signed by this coordinator ({0})")]
    BadToken(String),
    #[error("miner token was revoked or never issued by this coordinator")]
    RevokedToken,
    #[error(
        "token is malformed, expired, meant for another use or not signed by this coordinator ({0})"
    )]
    BadSession(String),
    #[error("signing secret: {0}")]
    Secret(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The wallet and rig a verified miner token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinerIdentity {
    pub wallet: String,
    pub name: String,
    pub token_id: Uuid,
}

impl MinerIdentity {
    /// The miner id of one GPU of this rig: points and slashes attach to it.
    pub fn miner_id(&self, gpu_index: u32) -> String {
        format!("{}-{}-gpu{gpu_index}", self.wallet, self.name)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct MinerClaims {
    sub: String,
    name: String,
    jti: Uuid,
    iat: i64,
}

#[derive(Iden)]
enum MinerTokens {
    Table,
    Id,
    Wallet,
    Name,
    CreatedMs,
    RevokedMs,
}

#[derive(Iden)]
enum ApiKeys {
    Table,
    Id,
    Name,
    KeySha256,
    CreatedMs,
    RevokedMs,
}

/// Verified API keys are remembered this long so the hot path skips the database.
const API_KEY_CACHE_TTL: Duration = Duration::from_secs(30);

/// Issues and checks credentials.
pub struct Auth {
    db: Db,
    encoding: EncodingKey,
    decoding: DecodingKey,
    api_key_cache: Mutex<HashMap<String, (Uuid, Instant)>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    /// Loads (or on first use generates) the signing secret named by the config.
    pub fn new(config: &Config, db: Db) -> Result<Self, AuthError> {
        let secret = load_secret(config)?;
        Ok(Self {
            db,
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
            api_key_cache: Mutex::new(HashMap::new()),
        })
    }

    /// Mints a miner token for `wallet`'s rig `name` and records it so it can be revoked.
    pub async fn mint_miner_token(&self, wallet: &str, name: &str) -> Result<String, AuthError> {
        let wallet = normalize_wallet(wallet)?;
        if name.is_empty()
            || name.len() > 32
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(AuthError::BadName(name.to_owned()));
        }
        let claims = MinerClaims {
            sub: wallet.clone(),
            name: name.to_owned(),
            jti: Uuid::now_v7(),
            iat: now_ms() / 1000,
        };
        let token = self.sign_claims(&claims)?;
        let insert = Query::insert()
            .into_table(MinerTokens::Table)
            .columns([
                MinerTokens::Id,
                MinerTokens::Wallet,
                MinerTokens::Name,
                MinerTokens::CreatedMs,
            ])
            .values_panic([
                claims.jti.into(),
                wallet.into(),
                name.into(),
                now_ms().into(),
            ])
            .to_owned();
        self.db.execute(&insert).await?;
        Ok(token)
    }

    /// Checks a miner token's signature and that it is still on record and not revoked.
    /// Every check reads the database, so a revoked token is refused at once.
    pub async fn verify_miner_token(&self, token: &str) -> Result<MinerIdentity, AuthError> {
        // No audience is expected, so tokens that name one (session and admin tokens) fail.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.required_spec_claims = ["sub".to_owned()].into_iter().collect();
        let claims = jsonwebtoken::decode::<MinerClaims>(token, &self.decoding, &validation)
            .map_err(|e| AuthError::BadToken(e.to_string()))?
            .claims;
        let select = Query::select()
            .column(MinerTokens::Id)
            .from(MinerTokens::Table)
            .and_where(Expr::col(MinerTokens::Id).eq(claims.jti))
            .and_where(Expr::col(MinerTokens::Wallet).eq(claims.sub.as_str()))
            .and_where(Expr::col(MinerTokens::RevokedMs).is_null())
            .to_owned();
        let found: Option<(Uuid,)> = self.db.fetch_optional(&select).await?;
        if found.is_none() {
            return Err(AuthError::RevokedToken);
        }
        Ok(MinerIdentity {
            wallet: claims.sub,
            name: claims.name,
            token_id: claims.jti,
        })
    }

    /// Signs `claims` with the coordinator's secret (HS256).
    pub fn sign_claims(&self, claims: &impl Serialize) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| AuthError::Secret(e.to_string()))
    }

    /// Reads the claims of a token this coordinator signed for `audience`, which must carry
    /// `sub`, `aud` and an `exp` still in the future. Only HS256 is accepted.
    pub fn verify_claims<T: DeserializeOwned>(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<T, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["sub", "aud", "exp"]);
        validation.leeway = 5;
        jsonwebtoken::decode::<T>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| AuthError::BadSession(e.to_string()))
    }

    /// Creates a consumer API key. The key is returned once; only its hash is kept.
    pub async fn create_api_key(&self, name: &str) -> Result<String, AuthError> {
        // Stored as text, where PostgreSQL cannot take a NUL character.
        if name.contains('\0') {
            return Err(AuthError::BadKeyName(name.to_owned()));
        }
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let key = format!(
            "imk_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        let insert = Query::insert()
            .into_table(ApiKeys::Table)
            .columns([
                ApiKeys::Id,
                ApiKeys::Name,
                ApiKeys::KeySha256,
                ApiKeys::CreatedMs,
            ])
            .values_panic([
                Uuid::now_v7().into(),
                name.into(),
                sha256_hex(&key).into(),
                now_ms().into(),
            ])
            .to_owned();
        self.db.execute(&insert).await?;
        Ok(key)
    }

    /// The id of a live API key, or `None` for an unknown or revoked one.
    pub async fn verify_api_key(&self, key: &str) -> Result<Option<Uuid>, DbError> {
        let hash = sha256_hex(key);
        if let Some((id, at)) = self.cache().get(&hash)
            && at.elapsed() < API_KEY_CACHE_TTL
        {
            return Ok(Some(*id));
        }
        let select = Query::select()
            .column(ApiKeys::Id)
            .from(ApiKeys::Table)
            .and_where(Expr::col(ApiKeys::KeySha256).eq(hash.as_str()))
            .and_where(Expr::col(ApiKeys::RevokedMs).is_null())
            .to_owned();
        let found: Option<(Uuid,)> = self.db.fetch_optional(&select).await?;
        if let Some((id,)) = found {
            self.cache().insert(hash, (id, Instant::now()));
        }
        Ok(found.map(|(id,)| id))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Uuid, Instant)>> {
        self.api_key_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Lowercases a wallet address after checking its shape.
pub fn normalize_wallet(wallet: &str) -> Result<String, AuthError> {
    let hex = wallet
        .strip_prefix("0x")
        .or_else(|| wallet.strip_prefix("0X"));
    match hex {
        Some(hex) if hex.len() == 40 && hex.chars().all(|c| c.is_ascii_hexdigit()) => {
            Ok(format!("0x{}", hex.to_ascii_lowercase()))
        }
        _ => Err(AuthError::BadWallet(wallet.to_owned())),
    }
}

pub(crate) fn sha256_hex(data: impl AsRef<[u8]>) -> String {
    hex::encode(Sha256::digest(data.as_ref()))
}

fn load_secret(config: &Config) -> Result<Vec<u8>, AuthError> {
    let secret = match (&config.jwt_secret, &config.jwt_secret_file) {
        (Some(value), _) => value.trim().as_bytes().to_vec(),
        (None, Some(path)) => read_secret(path)?,
        (None, None) => {
            let path = config.data_dir.join("jwt.secret");
            if path.exists() {
                read_secret(&path)?
            } else {
                generate_secret(&path)?
            }
        }
    };
    if secret.len() < 32 {
        return Err(AuthError::Secret(
            "the signing secret must be at least 32 bytes; generate one with `openssl rand -hex 32`"
                .to_owned(),
        ));
    }
    Ok(secret)
}

fn read_secret(path: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().as_bytes().to_vec())
        .map_err(|e| AuthError::Secret(format!("cannot read {}: {e}", path.display())))
}

fn generate_secret(path: &Path) -> Result<Vec<u8>, AuthError> {
    let fail =
        |e: std::io::Error| AuthError::Secret(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let secret = hex::encode(raw);
    // Written under a temporary name and renamed, so a crash never leaves half a secret.
    let tmp = path.with_extension("secret.tmp");
    write_private(&tmp, secret.as_bytes()).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    Ok(secret.into_bytes())
}

/// Writes a file only its owner can read (secrets), and syncs it.
#[cfg(unix)]
pub(crate) fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

#[cfg(not(unix))]
pub(crate) fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn auth() -> (tempfile::TempDir, Auth) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::with_data_dir(dir.path());
        let db = Db::connect(&config.database_url()).await.expect("db");
        db.migrate().await.expect("migrate");
        let auth = Auth::new(&config, db).expect("auth");
        (dir, auth)
    }

    #[tokio::test]
    async fn miner_token_round_trip_and_forgeries() {
        let (dir, auth) = auth().await;
        let wallet = "0x5AEDA56215b167893e80B4fE645BA6d5Bab767DE";
        let token = auth.mint_miner_token(wallet, "rig1").await.expect("mint");
        let who = auth.verify_miner_token(&token).await.expect("valid");
        assert_eq!(who.wallet, wallet.to_ascii_lowercase());
        assert_eq!(
            who.miner_id(1),
            format!("{}-rig1-gpu1", wallet.to_ascii_lowercase())
        );

        let mut tampered = token.clone();
        tampered.pop();
        assert!(matches!(
            auth.verify_miner_token(&tampered).await,
            Err(AuthError::BadToken(_))
        ));

        // A token signed with another secret is refused even though it is well formed.
        let other = tempfile::tempdir().expect("tempdir");
        let other_config = Config::with_data_dir(other.path());
        let other_db = Db::connect(&other_config.database_url()).await.expect("db");
        other_db.migrate().await.expect("migrate");
        let foreign = Auth::new(&other_config, other_db).expect("auth");
        let forged = foreign
            .mint_miner_token(wallet, "rig1")
            .await
            .expect("mint");
        assert!(matches!(
            auth.verify_miner_token(&forged).await,
            Err(AuthError::BadToken(_))
        ));

        // The secret persists: a second Auth over the same data dir accepts the token.
        let again = Auth::new(&Config::with_data_dir(dir.path()), auth.db.clone()).expect("auth");
        assert!(again.verify_miner_token(&token).await.is_ok());
    }

    /// Regression: a session or admin JWT (same secret, with an audience) must never pass as
    /// a miner token, nor a miner token as one of them.
    #[tokio::test]
    async fn miner_and_audience_tokens_do_not_stand_in_for_each_other() {
        let (_dir, auth) = auth().await;
        let wallet = "0x5aeda56215b167893e80b4fe645ba6d5bab767de";
        let session = auth
            .sign_claims(&serde_json::json!({
                "sub": wallet,
                "name": "rig1",
                "jti": Uuid::now_v7(),
                "iat": now_ms() / 1000,
                "aud": "portal",
                "exp": now_ms() / 1000 + 3600,
            }))
            .expect("sign");
        assert!(matches!(
            auth.verify_miner_token(&session).await,
            Err(AuthError::BadToken(m)) if m.contains("Audience")
        ));
        let claims: serde_json::Value = auth.verify_claims(&session, "portal").expect("valid");
        assert_eq!(claims["sub"], wallet);
        assert!(matches!(
            auth.verify_claims::<serde_json::Value>(&session, "elsewhere"),
            Err(AuthError::BadSession(_))
        ));

        let miner = auth.mint_miner_token(wallet, "rig1").await.expect("mint");
        assert!(matches!(
            auth.verify_claims::<serde_json::Value>(&miner, "portal"),
            Err(AuthError::BadSession(_))
        ));
    }

    #[tokio::test]
    async fn bad_wallets_and_names_are_refused() {
        let (_dir, auth) = auth().await;
        for wallet in [
            "",
            "0x123",
            "5aeda56215b167893e80b4fe645ba6d5bab767de",
            "0xzzeda56215b167893e80b4fe645ba6d5bab767de",
        ] {
            assert!(matches!(
                auth.mint_miner_token(wallet, "rig").await,
                Err(AuthError::BadWallet(_))
            ));
        }
        let wallet = "0x5aeda56215b167893e80b4fe645ba6d5bab767de";
        for name in ["", "has space", "a/b", &"x".repeat(33)] {
            assert!(matches!(
                auth.mint_miner_token(wallet, name).await,
                Err(AuthError::BadName(_))
            ));
        }
    }

    #[tokio::test]
    async fn api_keys_verify_only_when_issued() {
        let (_dir, auth) = auth().await;
        let key = auth.create_api_key("test").await.expect("create");
        assert!(key.starts_with("imk_"));
        let id = auth
            .verify_api_key(&key)
            .await
            .expect("db")
            .expect("known key");
        assert_eq!(
            auth.verify_api_key(&key).await.expect("db"),
            Some(id),
            "cached path agrees"
        );
        assert_eq!(auth.verify_api_key("imk_nope").await.expect("db"), None);
    }

    #[test]
    fn short_configured_secrets_are_refused() {
        let config = Config {
            jwt_secret: Some("short".into()),
            ..Config::default()
        };
        assert!(
            matches!(load_secret(&config), Err(AuthError::Secret(m)) if m.contains("32 bytes"))
        );
    }
}
