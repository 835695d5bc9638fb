//! The coordinator's settings: one typed struct, filled from defaults, then an optional TOML
//! file (`--config`), then `INFERMINE_*` environment variables and command-line flags.
//! Everything is checked at start-up so nothing fails mid-request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Args;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::cluster::ClusterConfig;
use crate::limits::RateLimitConfig;
use crate::points::PointsConfig;
use crate::review::config::ReviewConfig;
use crate::storage::StorageConfig;

/// Every setting of the coordinator. Field docs are the reference for the TOML file, whose keys
/// are these field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API and the agent gateway listen on.
    pub listen: SocketAddr,
    /// Base URL consumers reach this API at, such as `https://api.example.org` (a path prefix
    /// behind a proxy is kept), used in the links the coordinator hands out: image URLs from
    /// `POST /v1/images/generations`. Unset: `http://` and the listen address, with loopback
    /// for an unspecified one (0.0.0.0, ::), which suits only consumers on this machine.
    pub public_url: Option<String>,
    /// How long the image links of `POST /v1/images/generations` (`response_format: url`)
    /// work, in seconds; OpenAI's last 60 minutes.
    pub image_url_ttl_s: u64,
    /// Directory for the SQLite database, the generated signing secret and other local state.
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://USER:PASS@HOST/DB`; defaults to `DATA_DIR/infermine.db`.
    pub database_url: Option<String>,
    /// A model registry file replacing the built-in one.
    pub models_file: Option<PathBuf>,
    /// Secret that signs miner tokens (HS256). Prefer `jwt_secret_file`; when neither is set a
    /// random secret is generated once into `DATA_DIR/jwt.secret`.
    pub jwt_secret: Option<String>,
    /// File holding the signing secret.
    pub jwt_secret_file: Option<PathBuf>,
    /// How often the coordinator and agents exchange heartbeats, in seconds.
    pub heartbeat_interval_s: u64,
    /// An agent silent for this many seconds is disconnected and its jobs requeued.
    pub agent_timeout_s: u64,
    /// Attempts a job gets (first run plus retries) before it is marked failed.
    pub max_attempts: u32,
    /// Extra time on top of a model's deadline before a lease expires, in milliseconds.
    pub lease_grace_ms: u64,
    /// Largest request body the consumer API accepts, in bytes.
    pub max_body_bytes: usize,
    /// How long a client has to send a request's headers, in seconds, from the moment the
    /// connection opens (or the previous response went out): connections that send nothing or
    /// dribble their headers (slow-loris) are closed, as are keep-alive connections idle as
    /// long.
    pub header_timeout_s: u64,
    /// Longest `?wait=` a consumer may ask for on `GET /v1/jobs/{id}`, in seconds.
    pub max_wait_s: u64,
    /// On shutdown, how long running jobs may take to finish before they are requeued.
    pub drain_timeout_s: u64,
    /// Frames per second an agent may send before its session is closed.
    pub agent_max_frames_per_s: u32,
    /// `text` for people, `json` for log collectors.
    pub log_format: LogFormat,
    /// Boost tables (`[points]` in the file; tables have no flag or variable).
    pub points: PointsConfig,
    /// Object storage (`[storage]` in the file; endpoint, region, bucket and keys also from
    /// `INFERMINE_STORAGE_*` variables, see [`StorageConfig`]).
    pub storage: StorageConfig,
    /// Rate limits on the public routes (`[rate_limits]`; `INFERMINE_RATE_LIMITS_ENABLED`
    /// turns them off, for load tests on loopback).
    pub rate_limits: RateLimitConfig,
    /// Anti-cheat review (`[review]`: sampling, thresholds, the slashing policy).
    pub review: ReviewConfig,
    /// Replicas on one PostgreSQL database (`[cluster]`: heartbeat and failure detection).
    pub cluster: ClusterConfig,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            image_url_ttl_s: 3_600,
            data_dir: PathBuf::from("./data"),
            database_url: None,
            models_file: None,
            jwt_secret: None,
            jwt_secret_file: None,
            heartbeat_interval_s: 10,
            agent_timeout_s: 30,
            max_attempts: 3,
            lease_grace_ms: 5_000,
            max_body_bytes: 1024 * 1024,
            header_timeout_s: 30,
            max_wait_s: 60,
            drain_timeout_s: 20,
            agent_max_frames_per_s: 2_000,
            log_format: LogFormat::Text,
            points: PointsConfig::default(),
            storage: StorageConfig::default(),
            rate_limits: RateLimitConfig::default(),
            review: ReviewConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: Box<figment::Error>,
    },
    #[error("config file {0} does not exist; pass an existing file to --config")]
    Missing(PathBuf),
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Config {
    /// Builds the configuration: defaults, then the TOML file, then the overrides (flags and
    /// environment variables, already merged by clap).
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Missing(path.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Config = figment
            .merge(Serialized::defaults(overrides))
            .merge(storage_env())
            .merge(
                Env::prefixed("INFERMINE_RATE_LIMITS_")
                    .only(&["enabled"])
                    .map(|key| format!("rate_limits.{key}").into()),
            )
            .extract()
            .map_err(|e| ConfigError::File {
                path: file.map(Path::to_owned).unwrap_or_default(),
                source: Box::new(e),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// A default configuration rooted at `data_dir` (what tests and tools start from).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }

    /// The database URL in force: the configured one, or the SQLite file in the data dir.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("infermine.db").display()),
        }
    }

    /// The base URL of links handed to consumers, without a trailing `/` (see `public_url`).
    pub fn public_url(&self) -> String {
        if let Some(url) = &self.public_url {
            return url.trim_end_matches('/').to_owned();
        }
        let mut addr = self.listen;
        if addr.ip().is_unspecified() {
            let loopback = match addr {
                SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            addr.set_ip(loopback);
        }
        format!("http://{addr}")
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: &str| Err(ConfigError::Invalid(msg.to_owned()));
        if let Some(url) = &self.public_url {
            let host = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"))
                .unwrap_or_default();
            if host.is_empty()
                || host.starts_with('/')
                || url.contains(['?', '#'])
                || url.contains(char::is_whitespace)
            {
                return Err(ConfigError::Invalid(format!(
                    "public_url `{url}` must be an http:// or https:// URL with a host and no \
                     query or fragment, such as https://api.example.org"
                )));
            }
        }
        if self.heartbeat_interval_s == 0 {
            return invalid("heartbeat_interval_s must be at least 1");
        }
        if self.agent_timeout_s <= self.heartbeat_interval_s {
            return invalid("agent_timeout_s must be longer than heartbeat_interval_s");
        }
        if !(1..=7 * 24 * 3600).contains(&self.image_url_ttl_s) {
            return invalid("image_url_ttl_s must be between 1 and 604800 (7 days)");
        }
        if self.max_attempts == 0 {
            return invalid("max_attempts must be at least 1");
        }
        if self.max_body_bytes < 1024 {
            return invalid("max_body_bytes must be at least 1024");
        }
        if !(1..=3600).contains(&self.header_timeout_s) {
            return invalid("header_timeout_s must be between 1 and 3600");
        }
        if self.agent_max_frames_per_s == 0 {
            return invalid("agent_max_frames_per_s must be at least 1");
        }
        if self.jwt_secret.is_some() && self.jwt_secret_file.is_some() {
            return invalid("set jwt_secret or jwt_secret_file, not both");
        }
        self.points.validate().map_err(ConfigError::Invalid)?;
        self.storage.validate().map_err(ConfigError::Invalid)?;
        self.rate_limits.validate().map_err(ConfigError::Invalid)?;
        self.review.validate().map_err(ConfigError::Invalid)?;
        self.cluster.validate().map_err(ConfigError::Invalid)?;
        if let Some(url) = &self.database_url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            return invalid("database_url must start with sqlite:, postgres:// or postgresql://");
        }
        Ok(())
    }
}

/// `INFERMINE_STORAGE_ENDPOINT`, `…_REGION`, `…_BUCKET`, `…_ACCESS_KEY`, `…_SECRET_KEY` and
/// `…_SECRET_KEY_FILE` as `storage.*` (a table, so no flags), overriding the file.
fn storage_env() -> Env {
    Env::prefixed("INFERMINE_STORAGE_")
        .only(&[
            "endpoint",
            "region",
            "bucket",
            "access_key",
            "secret_key",
            "secret_key_file",
        ])
        .map(|key| format!("storage.{key}").into())
}

/// Settings given on the command line or in `INFERMINE_*` variables; each overrides the file.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct Overrides {
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "INFERMINE_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Base URL consumers reach the API at, for the links it hands out [default:
    /// http://LISTEN]
    #[arg(long, env = "INFERMINE_PUBLIC_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Seconds image links from POST /v1/images/generations work [default: 3600]
    #[arg(long, env = "INFERMINE_IMAGE_URL_TTL_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_url_ttl_s: Option<u64>,
    /// Directory for the SQLite database and local state [default: ./data]
    #[arg(long, env = "INFERMINE_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// sqlite://PATH or postgres://USER:PASS@HOST/DB [default: sqlite in the data dir]
    #[arg(long, env = "INFERMINE_DATABASE_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Model registry file replacing the built-in one
    #[arg(long, env = "INFERMINE_MODELS_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models_file: Option<PathBuf>,
    /// Secret that signs miner tokens (prefer --jwt-secret-file)
    #[arg(long, env = "INFERMINE_JWT_SECRET", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,
    /// File holding the signing secret [default: generated into DATA_DIR/jwt.secret]
    #[arg(long, env = "INFERMINE_JWT_SECRET_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Heartbeat interval with agents, seconds [default: 10]
    #[arg(long, env = "INFERMINE_HEARTBEAT_INTERVAL_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_s: Option<u64>,
    /// Seconds of silence after which an agent is dropped [default: 30]
    #[arg(long, env = "INFERMINE_AGENT_TIMEOUT_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_timeout_s: Option<u64>,
    /// Attempts per job before it fails [default: 3]
    #[arg(long, env = "INFERMINE_MAX_ATTEMPTS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Milliseconds added to a model's deadline before a lease expires [default: 5000]
    #[arg(long, env = "INFERMINE_LEASE_GRACE_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_grace_ms: Option<u64>,
    /// Largest accepted request body in bytes [default: 1048576]
    #[arg(long, env = "INFERMINE_MAX_BODY_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    /// Seconds a client has to send a request's headers [default: 30]
    #[arg(long, env = "INFERMINE_HEADER_TIMEOUT_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_timeout_s: Option<u64>,
    /// Longest long-poll on GET /v1/jobs/{id}?wait=, seconds [default: 60]
    #[arg(long, env = "INFERMINE_MAX_WAIT_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_wait_s: Option<u64>,
    /// Seconds running jobs get to finish on shutdown [default: 20]
    #[arg(long, env = "INFERMINE_DRAIN_TIMEOUT_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout_s: Option<u64>,
    /// Frames per second an agent may send [default: 2000]
    #[arg(long, env = "INFERMINE_AGENT_MAX_FRAMES_PER_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_max_frames_per_s: Option<u32>,
    /// Log format [default: text]
    #[arg(long, env = "INFERMINE_LOG_FORMAT", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_configuration() {
        let config = Config::load(None, &Overrides::default()).expect("defaults are valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database_url(), "sqlite://./data/infermine.db");
    }

    #[test]
    fn file_then_overrides_take_precedence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("infermine.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\nmax_attempts = 7\n[points]\nnft_boost = [{ min_held = 1, multiplier = 1.25 }]\n",
        )
        .expect("write");
        let overrides = Overrides {
            max_attempts: Some(2),
            ..Overrides::default()
        };
        let config = Config::load(Some(&path), &overrides).expect("valid");
        assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(config.max_attempts, 2);
        assert_eq!(config.points.nft_multiplier(3), 1_250_000);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "listn = \"0.0.0.0:9000\"\n").expect("write");
        let err = Config::load(Some(&path), &Overrides::default()).expect_err("unknown key");
        assert!(err.to_string().contains("listn"), "{err}");

        std::fs::write(&path, "agent_timeout_s = 5\nheartbeat_interval_s = 10\n").expect("write");
        let err = Config::load(Some(&path), &Overrides::default()).expect_err("bad timeout");
        assert!(err.to_string().contains("agent_timeout_s"), "{err}");

        std::fs::write(
            &path,
            "[points]\nnft_boost = [{ min_held = 1, multiplier = 0.5 }]\n",
        )
        .expect("write");
        let err = Config::load(Some(&path), &Overrides::default()).expect_err("bad boost");
        assert!(err.to_string().contains("points.nft_boost"), "{err}");

        let seasons = "[[points.seasons]]\nname = \"S1\"\nstarts = \"2026-01-01\"\n\
                       [[points.seasons]]\nname = \"S2\"\nstarts = \"2026-07-01\"\n";
        std::fs::write(&path, seasons).expect("write");
        let config = Config::load(Some(&path), &Overrides::default()).expect("seasons");
        assert_eq!(config.points.seasons.len(), 2);
        assert_eq!(config.points.season_at(1_800_000_000_000).name, "S2");
        std::fs::write(&path, seasons.replace("2026-07-01", "2025-07-01")).expect("write");
        let err = Config::load(Some(&path), &Overrides::default()).expect_err("out of order");
        assert!(err.to_string().contains("list seasons in order"), "{err}");
        std::fs::write(&path, seasons.replace("2026-07-01", "July 2026")).expect("write");
        let err = Config::load(Some(&path), &Overrides::default()).expect_err("not a date");
        assert!(err.to_string().contains("starts"), "{err}");

        let err = Config::load(Some(&dir.path().join("nope.toml")), &Overrides::default())
            .expect_err("missing file");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn public_url_defaults_to_the_listen_address_and_must_be_http() {
        let mut config = Config::default();
        assert_eq!(config.public_url(), "http://127.0.0.1:8080");
        config.listen = "0.0.0.0:9000".parse().expect("address");
        assert_eq!(config.public_url(), "http://127.0.0.1:9000");
        config.listen = "[::]:9000".parse().expect("address");
        assert_eq!(config.public_url(), "http://[::1]:9000");
        let overrides = Overrides {
            public_url: Some("https://api.example.org/infermine/".to_owned()),
            ..Overrides::default()
        };
        let config = Config::load(None, &overrides).expect("valid");
        assert_eq!(config.public_url(), "https://api.example.org/infermine");
        for bad in [
            "api.example.org",
            "https://",
            "ftp://x",
            "https://x/?a=1",
            "http:///x",
        ] {
            let overrides = Overrides {
                public_url: Some(bad.to_owned()),
                ..Overrides::default()
            };
            let err = Config::load(None, &overrides).expect_err(bad);
            assert!(err.to_string().contains("public_url"), "{bad}: {err}");
        }
    }
}
