//! Harness for infermine's end-to-end tests and load benchmark: a real coordinator on a
//! loopback port (in-process, on SQLite or a fresh PostgreSQL database), real agent processes
//! (the `infermine-agent` binary), and a consumer client speaking the HTTP API.
//!
//! PostgreSQL tests run when `INFERMINE_TEST_POSTGRES_URL` points at a server where the user
//! may create databases; each test gets a database of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use infermine_server::config::Config;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod process;
pub mod raw;
pub mod sse;

/// The demo wallet tests mine for.
pub const WALLET: &str = "0x5aeda56215b167893e80b4fe645ba6d5bab767de";

/// Installs the TLS provider and a test-friendly log subscriber, once.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Where a test server keeps its jobs.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    /// A fresh PostgreSQL database, or `None` (with a note) when no server is configured.
    pub async fn postgres() -> Option<Self> {
        let Ok(base) = std::env::var("INFERMINE_TEST_POSTGRES_URL") else {
            eprintln!("INFERMINE_TEST_POSTGRES_URL is not set: skipping the PostgreSQL run");
            return None;
        };
        let name = format!("im_test_{}", uuid::Uuid::now_v7().simple());
        let pool = sqlx::PgPool::connect(&base)
            .await
            .expect("connect to INFERMINE_TEST_POSTGRES_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .expect("create a test database");
        pool.close().await;
        let (prefix, _) = base.rsplit_once('/').expect("database URL has a path");
        Some(Self::Postgres(format!("{prefix}/{name}")))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// Where a test server keeps job objects: the embedded S3 server (the default) or an external
/// one (`INFERMINE_TEST_S3_ENDPOINT`, `…_ACCESS_KEY`, `…_SECRET_KEY`; see scripts/s3-test.sh).
#[derive(Debug, Clone)]
pub enum ObjectStore {
    Embedded,
    External {
        endpoint: String,
        access_key: String,
        secret_key: String,
    },
}

impl ObjectStore {
    /// The external server from the environment, or `None` (with a note) when none is set.
    pub fn external() -> Option<Self> {
        let Ok(endpoint) = std::env::var("INFERMINE_TEST_S3_ENDPOINT") else {
            eprintln!("INFERMINE_TEST_S3_ENDPOINT is not set: skipping the external S3 run");
            return None;
        };
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set with the endpoint"))
        };
        Some(Self::External {
            endpoint,
            access_key: var("INFERMINE_TEST_S3_ACCESS_KEY"),
            secret_key: var("INFERMINE_TEST_S3_SECRET_KEY"),
        })
    }

    /// Points `config` at this store; an external one gets a bucket of its own.
    pub fn apply(&self, config: &mut Config) {
        match self {
            Self::Embedded => config.storage.endpoint = None,
            Self::External {
                endpoint,
                access_key,
                secret_key,
            } => {
                config.storage.endpoint = Some(endpoint.clone());
                config.storage.access_key = Some(access_key.clone());
                config.storage.secret_key = Some(secret_key.clone());
                config.storage.bucket = format!("im-e2e-{}", uuid::Uuid::now_v7().simple());
            }
        }
    }
}

/// A coordinator running in this process on a loopback port.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub config: Config,
    pub api_key: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    dir: Arc<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a coordinator with a new data directory and an API key.
    pub async fn start(backend: &Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// Like [`TestServer::start`], with settings adjusted by `tweak` first.
    pub async fn start_with(backend: &Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        init();
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let mut config = Config::with_data_dir(dir.path());
        if let Backend::Postgres(url) = backend {
            config.database_url = Some(url.clone());
        }
        config.heartbeat_interval_s = 1;
        config.agent_timeout_s = 5;
        // Tests drive hundreds of requests from one address; the limits have tests of their own.
        config.rate_limits.enabled = false;
        // Probes are extra jobs at random; tests that count jobs opt in to them.
        config.review.probe_rate = 0.0;
        tweak(&mut config);
        let api_key = infermine_server::create_api_key(&config, "tests")
            .await
            .expect("api key");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::serve(config, listener, api_key, dir)
    }

    fn serve(
        mut config: Config,
        listener: tokio::net::TcpListener,
        api_key: String,
        dir: Arc<tempfile::TempDir>,
    ) -> Self {
        let addr = listener.local_addr().expect("local addr");
        config.listen = addr;
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(infermine_server::run(config.clone(), listener, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            config,
            api_key,
            shutdown: Some(tx),
            task: Some(task),
            dir,
        }
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A consumer client holding this server's API key.
    pub fn client(&self) -> Client {
        Client::new(&self.http(), &self.api_key)
    }

    pub async fn miner_token(&self, name: &str) -> String {
        infermine_server::mint_miner_token(&self.config, WALLET, name)
            .await
            .expect("miner token")
    }

    /// Shuts the coordinator down gracefully and waits for it.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server stopped cleanly");
        }
    }

    /// Stops the coordinator and starts it again on the same address, data and database.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = bind_again(self.addr).await;
        let next = Self::serve(
            self.config.clone(),
            listener,
            self.api_key.clone(),
            Arc::clone(&self.dir),
        );
        *self = next;
    }

    /// Polls `GET /v1/status` until `ready` holds for it.
    pub async fn wait_status(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status: Value = reqwest::get(format!("{}/v1/status", self.http()))
                .await
                .expect("status")
                .json()
                .await
                .expect("status json");
            if ready(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status: {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `n` slots are registered.
    /// `GET path` on this server without credentials, expecting 200 and JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = reqwest::get(format!("{}{path}", self.http()))
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("json")
    }

    pub async fn wait_slots(&self, n: u64) {
        self.wait_status(&format!("{n} slots"), |s| s["slots"].as_u64() == Some(n))
            .await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn bind_again(addr: SocketAddr) -> tokio::net::TcpListener {
    // The old sockets may linger for a moment after shutdown.
    for _ in 0..100 {
        if let Ok(listener) = tokio::net::TcpListener::bind(addr).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot bind {addr} again");
}

/// The consumer side of the HTTP API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    pub fn new(base: &str, key: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.to_owned(),
            key: key.to_owned(),
        }
    }

    /// `POST /v1/jobs`; returns the status code and the JSON body.
    pub async fn submit(&self, model: &str, params: Value) -> (u16, Value) {
        self.post_json("/v1/jobs", &json!({ "model": model, "params": params }))
            .await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// Submits a job that must be accepted; returns its id.
    pub async fn submit_ok(&self, model: &str, params: Value) -> String {
        let (status, body) = self.submit(model, params).await;
        assert_eq!(status, 202, "submit refused: {body}");
        body["id"].as_str().expect("id").to_owned()
    }

    /// `GET /v1/jobs/{id}?wait=`.
    pub async fn get(&self, id: &str, wait_s: f64) -> (u16, Value) {
        self.send(
            self.http
                .get(format!("{}/v1/jobs/{id}?wait={wait_s}", self.base)),
        )
        .await
    }

    pub async fn cancel(&self, id: &str) -> (u16, Value) {
        self.send(self.http.delete(format!("{}/v1/jobs/{id}", self.base)))
            .await
    }

    /// Sends with this client's key; returns the status code and the JSON body.
    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.bearer_auth(&self.key).send().await.expect("send");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// Long-polls until the job is final or `within` passes; returns the last view.
    pub async fn wait_final(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
                .min(10.0);
            let (status, body) = self.get(id, left).await;
            assert_eq!(status, 200, "get {id}: {body}");
            let state = body["status"].as_str().unwrap_or_default();
            if matches!(state, "completed" | "failed" | "cancelled") || Instant::now() >= deadline {
                return body;
            }
        }
    }
}

/// Writes tiny random-weight demo models (`infermine-agent models synth`) into `dir`.
pub async fn synth_models(dir: &Path, models: &[&str]) {
    for model in models {
        let out = tokio::process::Command::new(agent_binary().expect("agent binary"))
            .args(["models", "synth", "--model", model, "--out"])
            .arg(dir)
            .output()
            .await
            .expect("run models synth");
        assert!(
            out.status.success(),
            "models synth {model}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A real `infermine-agent` process.
#[derive(Debug)]
pub struct AgentProcess {
    child: tokio::process::Child,
    log: PathBuf,
}

/// The agent binary built next to this test (`cargo build --workspace --bins` builds it).
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("INFERMINE_AGENT_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("infermine-agent");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "infermine-agent binary not found next to {}: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        exe.display()
    )
}

/// The coordinator binary of this test's profile (`cargo build --workspace --bins` builds it;
/// so does [`cargo_build`]).
pub fn server_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("INFERMINE_SERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let binary = profile_dir()?.join("infermine-server");
    if !binary.is_file() {
        bail!(
            "{} not found: run `cargo build --workspace --bins` first (scripts/test.sh does)",
            binary.display()
        );
    }
    Ok(binary)
}

/// The folder this test's profile builds binaries into (`target/debug`, `target/release`).
pub fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let parent = exe.parent().context("the test binary has no folder")?;
    let dir = if parent.file_name().is_some_and(|name| name == "deps") {
        parent.parent().context("deps has no parent")?
    } else {
        parent
    };
    Ok(dir.to_owned())
}

/// Runs `cargo build ARGS` in this test's profile with the cargo that runs the test, so a test
/// can build the binaries it starts (a no-op when they are up to date).
pub fn cargo_build(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = std::process::Command::new(cargo);
    // The variables cargo sets for this test would look like a changed environment to build
    // scripts that watch them (ring watches CARGO_MANIFEST_DIR) and rebuild half the tree.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let per_crate = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
        ];
        if per_crate.iter().any(|prefix| name.starts_with(prefix)) {
            build.env_remove(name.as_ref());
        }
    }
    build.arg("build").args(args);
    let release = profile_dir()
        .ok()
        .is_some_and(|dir| dir.file_name().is_some_and(|name| name == "release"));
    if release {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(
        status.success(),
        "`cargo build {}{}` failed (its output is above)",
        args.join(" "),
        if release { " --release" } else { "" }
    );
}

impl AgentProcess {
    /// Starts an agent for `server` with `token`, serving `synthetic-echo`, plus `extra` args.
    pub async fn spawn(server: &TestServer, token: &str, extra: &[&str]) -> Self {
        Self::spawn_url(&server.ws(), server.data_dir(), token, extra).await
    }

    pub async fn spawn_url(url: &str, log_dir: &Path, token: &str, extra: &[&str]) -> Self {
        let binary = agent_binary().expect("agent binary");
        Self::spawn_binary(&binary, &[], url, log_dir, token, extra).await
    }

    /// Starts `binary` (an agent build) with `env` set, serving `synthetic-echo` plus `extra`.
    pub async fn spawn_binary(
        binary: &Path,
        env: &[(&str, &str)],
        url: &str,
        log_dir: &Path,
        token: &str,
        extra: &[&str],
    ) -> Self {
        let log = log_dir.join(format!("agent-{}.log", uuid::Uuid::now_v7().simple()));
        let file = std::fs::File::create(&log).expect("agent log");
        let child = tokio::process::Command::new(binary)
            .args([
                "run",
                "--coordinator",
                url,
                "--token",
                token,
                "--model",
                "synthetic-echo",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .context("spawn infermine-agent")
            .expect("agent starts");
        Self { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    /// SIGKILL: the agent dies without a word, mid-job or not.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM: the agent finishes its running jobs and leaves.
    pub fn terminate(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    /// Waits for the process to exit; `None` if it outlives `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Waits until the agent's log contains `needle`.
    pub async fn wait_log(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "agent never logged `{needle}`; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
