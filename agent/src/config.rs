//! The agent's configuration: command line, environment, TOML file and defaults, merged in
//! that order of precedence into one validated [`AgentConfig`].
//!
//! Clap reads the command line and the `INFERMINE_AGENT_*` variables (so `--help` names both);
//! figment lays what they set over the file and the defaults. Everything is checked here, at
//! start-up: a bad value stops the agent with the field's name and the fix, never mid-session.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::engine::{self, Precision};

/// Path the coordinator serves agent sessions on; appended to a base URL without a path.
const AGENT_WS_PATH: &str = "/v1/agent/ws";

/// The command line of `infermine-agent`.
#[derive(Debug, Parser)]
#[command(name = "infermine-agent", version, about = "The infermine miner agent")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect this machine's GPUs to a coordinator and run the jobs it sends, until stopped
    /// (SIGTERM or ctrl-c finish the running jobs first).
    Run(RunArgs),
    /// Manage model folders.
    #[command(subcommand)]
    Models(ModelsCommand),
}

/// `infermine-agent models …`
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Write a demo model (tiny, random weights: it produces gibberish) into OUT/ID/, as a
    /// Hugging Face folder the agent serves like a downloaded model. Deterministic: the
    /// coordinator's registry pins the SHA-256 of its files.
    Synth {
        /// Demo model id (tiny-llama, tiny-mistral, tiny-mixtral, tiny-mixtral-gptq), or
        /// `all`; repeat for several.
        #[arg(long = "model", value_name = "ID", required = true)]
        models: Vec<String>,
        /// Models folder to write into (the agent's --models-dir).
        #[arg(long, value_name = "DIR", default_value = "models")]
        out: PathBuf,
    },
    /// Download models into OUT/ID/ from the URLs in the coordinator's manifest: resumable
    /// (run it again after an interruption), checked against the registry's SHA-256, with
    /// the free disk space checked first. HF_TOKEN is sent to huggingface.co.
    Pull {
        /// Model id, as the coordinator lists it (GET /v1/models); repeat for several.
        #[arg(long = "model", value_name = "ID", required = true)]
        models: Vec<String>,
        /// The coordinator whose registry names the files (ws://, wss://, http:// or https://).
        #[arg(long, env = "INFERMINE_AGENT_COORDINATOR", value_name = "URL")]
        coordinator: String,
        /// Models folder to write into (the agent's --models-dir).
        #[arg(long, value_name = "DIR", default_value = "models")]
        out: PathBuf,
    },
}

/// Options of `infermine-agent run`. Each may also come from its environment variable or, by
/// the same name in snake_case, from the `--config` file; the command line wins, then the
/// environment, then the file.
#[derive(Debug, Default, Args, Serialize)]
pub struct RunArgs {
    /// TOML file with any of the keys below (e.g. `coordinator = "wss://…"`, `models = [..]`).
    #[arg(long, env = "INFERMINE_AGENT_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Coordinator URL: `wss://host`, `ws://host:port`, or `https://`/`http://` (mapped to
    /// wss/ws). A URL without a path gets `/v1/agent/ws`.
    #[arg(long, env = "INFERMINE_AGENT_COORDINATOR", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,

    /// Miner token minted for your wallet on the portal (or with `infermine-server
    /// miner-token`). Prefer --token-file: command lines are visible to other users.
    #[arg(
        long,
        env = "INFERMINE_AGENT_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,

    /// File holding the miner token (surrounding whitespace is ignored). Use instead of
    /// --token.
    #[arg(long, env = "INFERMINE_AGENT_TOKEN_FILE", value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,

    /// Model to serve; repeat for several (the variable takes a comma-separated list).
    /// Default: synthetic-echo.
    #[arg(
        long = "model",
        env = "INFERMINE_AGENT_MODELS",
        value_name = "ID",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,

    /// Folder of model folders: model ID is read from DIR/ID/ (its Hugging Face files, checked
    /// against the coordinator's SHA-256 manifest at start). Default: ./models.
    #[arg(long, env = "INFERMINE_AGENT_MODELS_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models_dir: Option<PathBuf>,

    /// Longest wait between reconnection attempts, in seconds. Default: 60.
    #[arg(long, env = "INFERMINE_AGENT_MAX_BACKOFF_S", value_name = "SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_backoff_s: Option<u64>,

    /// How many CPU slots to register when the machine has no usable NVIDIA GPU. Default: 1.
    #[arg(long, env = "INFERMINE_AGENT_CPU_SLOTS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_slots: Option<u32>,

    /// Name of this rig, for logs (the coordinator names miners after the token).
    #[arg(long, env = "INFERMINE_AGENT_NAME", value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// On SIGTERM or ctrl-c, how long to wait for running jobs before exiting anyway, in
    /// seconds. Default: 60.
    #[arg(long, env = "INFERMINE_AGENT_DRAIN_TIMEOUT_S", value_name = "SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout_s: Option<u64>,

    /// Threads libtorch uses within one operation (intra-op), shared by all slots. Default:
    /// libtorch's own choice (the number of physical cores).
    #[arg(long, env = "INFERMINE_AGENT_THREADS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,

    /// Number format models run in: `auto` (LLMs in bf16 on CUDA and f32 on the CPU; image
    /// models in f16 for SD or bf16 for Flux on CUDA, f32 on the CPU), `f32` or `bf16`.
    /// Default: auto.
    #[arg(long, env = "INFERMINE_AGENT_PRECISION", value_name = "auto|f32|bf16")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
}

/// The merged layers before validation; also the schema of the config file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    coordinator: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    models: Vec<String>,
    models_dir: PathBuf,
    max_backoff_s: u64,
    cpu_slots: u32,
    name: Option<String>,
    drain_timeout_s: u64,
    threads: Option<u32>,
    precision: String,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            coordinator: None,
            token: None,
            token_file: None,
            models: vec![engine::SYNTHETIC_ECHO.to_owned()],
            models_dir: PathBuf::from("models"),
            max_backoff_s: 60,
            cpu_slots: 1,
            name: None,
            drain_timeout_s: 60,
            threads: None,
            precision: Precision::Auto.as_str().to_owned(),
        }
    }
}

/// A bad configuration, named by field, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file: {0}")]
    File(Box<figment::Error>),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// Everything the agent needs to run, validated.
#[derive(Clone)]
pub struct AgentConfig {
    /// `ws://` or `wss://` URL of the coordinator's agent endpoint.
    pub coordinator: String,
    /// The miner token sent in the hello.
    pub token: String,
    /// Models to announce and serve: built-ins, or folders in `models_dir`.
    pub models: Vec<String>,
    /// Where model folders live (`<models_dir>/<id>/`).
    pub models_dir: PathBuf,
    pub max_backoff: Duration,
    /// CPU slots to register when no NVIDIA GPU is usable.
    pub cpu_slots: u32,
    /// Rig name, for logs only.
    pub name: Option<String>,
    /// How long a graceful shutdown waits for running jobs.
    pub drain_timeout: Duration,
    /// libtorch's intra-op threads; `None` leaves libtorch's default.
    pub threads: Option<u32>,
    /// The number format engines load models in.
    pub precision: Precision,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("coordinator", &self.coordinator)
            .field("token", &"<redacted>")
            .field("models", &self.models)
            .field("models_dir", &self.models_dir)
            .field("max_backoff", &self.max_backoff)
            .field("cpu_slots", &self.cpu_slots)
            .field("name", &self.name)
            .field("drain_timeout", &self.drain_timeout)
            .field("threads", &self.threads)
            .field("precision", &self.precision)
            .finish()
    }
}

impl AgentConfig {
    /// A config with the defaults for everything but the coordinator and token, for embedding
    /// the agent in tests and benchmarks. The URL is normalized like `--coordinator`.
    pub fn new(coordinator: &str, token: impl Into<String>) -> Result<Self, ConfigError> {
        let raw = RawConfig {
            coordinator: Some(coordinator.to_owned()),
            token: Some(token.into()),
            ..RawConfig::default()
        };
        Self::validate(raw)
    }

    /// Merges the command line and environment (already in `args`) over the `--config` file
    /// and the defaults, then validates the result.
    pub fn load(args: &RunArgs) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
        if let Some(path) = &args.config {
            if !path.is_file() {
                return Err(invalid(
                    "config",
                    format!("`{}` is not a readable file", path.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let mut raw: RawConfig = figment
            .merge(Serialized::defaults(args))
            .extract()
            .map_err(|e| ConfigError::File(Box::new(e)))?;
        // The two token keys are one setting: a token given on the command line or in the
        // environment replaces the file's, whichever form each takes.
        if args.token.is_some() || args.token_file.is_some() {
            raw.token.clone_from(&args.token);
            raw.token_file.clone_from(&args.token_file);
        }
        Self::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Self, ConfigError> {
        let coordinator = raw.coordinator.ok_or_else(|| {
            invalid(
                "coordinator",
                "missing: pass --coordinator wss://HOST, set INFERMINE_AGENT_COORDINATOR, or \
                 set `coordinator` in the config file",
            )
        })?;
        let coordinator = normalize_coordinator_url(&coordinator)
            .map_err(|why| invalid("coordinator", format!("`{coordinator}`: {why}")))?;
        let token = resolve_token(raw.token, raw.token_file.as_deref())?;
        let models = validate_models(raw.models, &raw.models_dir)?;
        if raw.max_backoff_s == 0 {
            return Err(invalid("max_backoff_s", "must be at least 1 second"));
        }
        if !(1..=1024).contains(&raw.cpu_slots) {
            return Err(invalid("cpu_slots", "must be between 1 and 1024"));
        }
        if raw.threads.is_some_and(|n| !(1..=1024).contains(&n)) {
            return Err(invalid(
                "threads",
                "must be between 1 and 1024; leave it unset for libtorch's default",
            ));
        }
        let precision = raw
            .precision
            .parse::<Precision>()
            .map_err(|why| invalid("precision", why))?;
        Ok(Self {
            coordinator,
            token,
            models,
            models_dir: raw.models_dir,
            max_backoff: Duration::from_secs(raw.max_backoff_s),
            cpu_slots: raw.cpu_slots,
            name: raw.name.filter(|n| !n.trim().is_empty()),
            drain_timeout: Duration::from_secs(raw.drain_timeout_s),
            threads: raw.threads,
            precision,
        })
    }
}

fn resolve_token(token: Option<String>, token_file: Option<&Path>) -> Result<String, ConfigError> {
    let token = match (token, token_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "token",
                "both `token` and `token_file` are set: keep only one",
            ));
        }
        (Some(token), None) => token,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| invalid("token_file", format!("`{}`: {e}", path.display())))?,
        (None, None) => String::new(),
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(invalid(
            "token",
            "missing: pass --token-file PATH or --token TOKEN (or INFERMINE_AGENT_TOKEN); mint \
             a miner token on the portal or with `infermine-server miner-token --wallet \
             ADDRESS --name RIG`",
        ));
    }
    Ok(token)
}

fn validate_models(models: Vec<String>, models_dir: &Path) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::with_capacity(models.len());
    for model in models {
        let model = model.trim().to_owned();
        if model.is_empty() || out.contains(&model) {
            continue;
        }
        engine::check_available(&model, models_dir).map_err(|why| invalid("models", why))?;
        out.push(model);
    }
    if out.is_empty() {
        return Err(invalid(
            "models",
            format!(
                "no model to serve: pass --model ID (a folder in --models-dir, or built-in: {})",
                engine::BUILTIN_MODELS.join(", ")
            ),
        ));
    }
    Ok(out)
}

/// Turns what an operator typed into the agent endpoint's WebSocket URL, or says what is
/// wrong with it.
pub(crate) fn normalize_coordinator_url(input: &str) -> Result<String, String> {
    let input = input.trim();
    let (scheme, rest) = input.split_once("://").ok_or(
        "no scheme: write it as wss://HOST (or ws://, https://, http://), e.g. \
         wss://coordinator.example.com",
    )?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => {
            return Err(format!(
                "unsupported scheme `{other}`: use wss://, ws://, https:// or http://"
            ));
        }
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.starts_with(':') {
        return Err("no host after the scheme".to_owned());
    }
    let path = if path.is_empty() || path == "/" {
        AGENT_WS_PATH
    } else {
        path
    };
    let url = format!("{scheme}://{authority}{path}");
    tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url.as_str())
        .map_err(|e| format!("not a valid URL ({e})"))?;
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized_to_the_agent_endpoint() {
        let cases = [
            ("ws://127.0.0.1:9", "ws://127.0.0.1:9/v1/agent/ws"),
            ("http://localhost:8080/", "ws://localhost:8080/v1/agent/ws"),
            (
                "https://coord.example.com",
                "wss://coord.example.com/v1/agent/ws",
            ),
            (
                "WSS://coord.example.com/custom/ws",
                "wss://coord.example.com/custom/ws",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                normalize_coordinator_url(input).as_deref(),
                Ok(want),
                "{input}"
            );
        }
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for input in ["coord.example.com", "ftp://x", "ws://", "ws://:80/x"] {
            assert!(normalize_coordinator_url(input).is_err(), "{input}");
        }
    }

    fn args() -> RunArgs {
        RunArgs {
            coordinator: Some("ws://127.0.0.1:1".into()),
            token: Some("tok".into()),
            ..RunArgs::default()
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = AgentConfig::load(&args()).expect("valid");
        assert_eq!(config.models, vec![engine::SYNTHETIC_ECHO.to_owned()]);
        assert_eq!(config.max_backoff, Duration::from_secs(60));
        assert_eq!(config.cpu_slots, 1);
    }

    #[test]
    fn command_line_beats_file_and_file_beats_defaults() {
        let dir = std::env::temp_dir().join(format!("infermine-agent-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("agent.toml");
        let toml = "coordinator = \"ws://file:1\"\ncpu_slots = 3\ntoken_file = \"/nonexistent\"\n";
        std::fs::write(&file, toml).expect("write");
        let mut args = args();
        args.config = Some(file);
        let config = AgentConfig::load(&args).expect("valid");
        assert_eq!(config.coordinator, "ws://127.0.0.1:1/v1/agent/ws");
        assert_eq!(config.cpu_slots, 3);
        assert_eq!(
            config.token, "tok",
            "--token replaces the file's token_file"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn unknown_models_and_missing_tokens_name_the_field() {
        let mut bad_model = args();
        bad_model.models = vec!["gpt-5".into()];
        let err = AgentConfig::load(&bad_model).expect_err("unknown model");
        assert!(err.to_string().starts_with("models: "), "{err}");
        assert!(
            err.to_string().contains("models/gpt-5"),
            "names the folder: {err}"
        );
        assert!(err.to_string().contains("download"), "{err}");

        let mut demo = args();
        demo.models = vec!["tiny-llama".into()];
        demo.models_dir = Some(PathBuf::from("/nonexistent"));
        let err = AgentConfig::load(&demo).expect_err("demo model not written yet");
        assert!(
            err.to_string().contains("models synth --model tiny-llama"),
            "{err}"
        );

        let mut no_token = args();
        no_token.token = None;
        let err = AgentConfig::load(&no_token).expect_err("no token");
        assert!(err.to_string().starts_with("token: missing"), "{err}");
    }

    #[test]
    fn threads_and_precision_come_from_any_layer_and_are_checked() {
        let config = AgentConfig::load(&args()).expect("valid");
        assert_eq!((config.threads, config.precision), (None, Precision::Auto));

        let mut set = args();
        set.threads = Some(4);
        set.precision = Some("BF16".into());
        let config = AgentConfig::load(&set).expect("valid");
        assert_eq!(
            (config.threads, config.precision),
            (Some(4), Precision::Bf16)
        );

        let dir =
            std::env::temp_dir().join(format!("infermine-agent-knobs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("agent.toml");
        std::fs::write(&file, "threads = 2\nprecision = \"f32\"\n").expect("write");
        let mut from_file = args();
        from_file.config = Some(file.clone());
        let config = AgentConfig::load(&from_file).expect("valid");
        assert_eq!(
            (config.threads, config.precision),
            (Some(2), Precision::F32)
        );
        from_file.precision = Some("auto".into());
        let config = AgentConfig::load(&from_file).expect("valid");
        assert_eq!(config.precision, Precision::Auto, "the command line wins");

        std::fs::write(&file, "precision = \"fp16\"\n").expect("write");
        from_file.precision = None;
        let err = AgentConfig::load(&from_file).expect_err("fp16");
        assert_eq!(
            err.to_string(),
            "precision: `fp16` is not a precision: use auto, f32 or bf16"
        );
        std::fs::remove_dir_all(&dir).ok();

        let mut zero = args();
        zero.threads = Some(0);
        let err = AgentConfig::load(&zero).expect_err("0 threads");
        assert!(
            err.to_string().starts_with("threads: must be between 1"),
            "{err}"
        );
        let mut bad = args();
        bad.precision = Some("half".into());
        let err = AgentConfig::load(&bad).expect_err("half");
        assert!(err.to_string().contains("use auto, f32 or bf16"), "{err}");
    }

    #[test]
    fn token_file_is_read_and_trimmed() {
        let path = std::env::temp_dir().join(format!("infermine-token-{}", std::process::id()));
        std::fs::write(&path, "  secret-token\n").expect("write");
        let mut args = args();
        args.token = None;
        args.token_file = Some(path.clone());
        let config = AgentConfig::load(&args).expect("valid");
        assert_eq!(config.token, "secret-token");
        std::fs::remove_file(path).ok();
    }
}
