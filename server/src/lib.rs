//! The infermine coordinator.
//!
//! Consumers submit inference jobs over HTTP; miners' agents hold WebSocket sessions and run
//! them. The life of a job through the modules:
//!
//! 1. [`jobs::api`] authenticates the consumer ([`auth`]), validates the request against the
//!    model [`registry`], writes the job row ([`jobs::store`], on [`db`]) and only then wakes
//!    the [`dispatch`]er. Persist first, then wake.
//! 2. The dispatcher, sole owner of agent slots, queues and leases, pairs the job with an idle
//!    slot that may run the model (fastest recent latency first) and hands the pair back to the
//!    lifecycle ([`jobs`]), which records the lease and pushes the job frame to the agent.
//! 3. The agent's [`gateway`] session turns its frames into lifecycle calls: streamed tokens
//!    go to the consumers streaming the job; a result is checked, stored and completes the job
//!    (waking long-polling and streaming consumers); a failure, a disconnect or an expired
//!    lease sends the job back to the queue, up to `max_attempts`.
//! 4. At start-up, leases left by a previous run are void and every queued job is queued
//!    again, so no job is lost to a restart.
//!
//! The HTTP routes, registered by [`routes`] with their `#[utoipa::path]` descriptions, so the
//! [`openapi`] document (served at `/openapi.json`, browsable at `/docs`, committed as
//! `openapi/openapi.json`) lists exactly what is served:
//!
//! - consumers ([`jobs::api`]): `POST /v1/jobs`, `GET`/`DELETE /v1/jobs/{id}`;
//! - OpenAI-compatible ([`openai`]): `POST /v1/chat/completions` (JSON or server-sent events),
//!   `POST /v1/images/generations` (and the signed `GET /v1/images/{id}.png` links it hands
//!   out), `GET /v1/models`, `GET /v1/models/{id}`; and for agents `GET /v1/models/{id}/files`;
//! - agents ([`gateway`]): `GET /v1/agent/ws`, a WebSocket speaking `infermine-protocol`;
//! - wallets ([`wallet`]): `POST /api/v1/auth/nonce` and `/verify`, `GET`/`POST
//!   /api/v1/miner-tokens`, `DELETE /api/v1/miner-tokens/{id}`;
//! - the portal ([`portal`], [`points::rules`]): `/api/v1/wallets/{address}` (and `/ledger`,
//!   `/points-history`), `/api/v1/miners/{miner_id}`, `/api/v1/leaderboard`,
//!   `/api/v1/slashes`, `/api/v1/rules`;
//! - operators ([`portal`], [`evidence`], [`wallet`]): `/api/v1/admin/…`;
//! - operations ([`ops`], [`metrics`]): `GET /healthz`, `GET /readyz`, `GET /v1/status`,
//!   `GET /metrics`.
//!
//! [`run`] serves all of it on a listener until a shutdown future resolves; [`app`] builds the
//! router for tests that want it without a socket.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod db;
pub mod dispatch;
pub mod error;
pub mod evidence;
pub mod gateway;
pub mod jobs;
pub mod ledger;
pub mod limits;
mod listen;
pub mod metrics;
pub mod miners;
pub mod openai;
pub mod openapi;
pub mod ops;
pub mod points;
pub mod portal;
pub mod registry;
pub mod review;
pub mod storage;
pub mod wallet;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Auth;
use crate::config::Config;
use crate::db::Db;
use crate::dispatch::Dispatcher;
use crate::jobs::Jobs;
use crate::registry::Registry;

/// What every handler can reach. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    pub auth: Arc<Auth>,
    pub jobs: Arc<Jobs>,
    pub dispatcher: Dispatcher,
    /// Where job inputs and outputs are kept.
    pub storage: storage::Storage,
    /// Miners connected right now.
    pub online: Arc<miners::Online>,
    /// Model-file challenges waiting for answers.
    pub challenges: Arc<review::challenge::Challenges>,
    /// Rate limit buckets of the public routes.
    pub limiters: Arc<limits::Limiters>,
    /// Flips to true when the coordinator starts shutting down; agent sessions then close.
    pub closing: tokio::sync::watch::Receiver<bool>,
}

/// The HTTP routes, plus their OpenAPI document at `/openapi.json` and its UI at `/docs`, and
/// the portal's pages for every other path.
pub fn app(state: AppState) -> Router {
    openapi::serve(routes())
        .fallback(portal::site::fallback)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.config.max_body_bytes,
            listen::refuse_declared_oversize,
        ))
        .layer(axum::middleware::from_fn(listen::refuse_nul_in_uri))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state.limiters),
            limits::limit,
        ))
        .with_state(state)
}

/// Every route of the API, each registered with its `#[utoipa::path]` description, so the
/// router [`app`] serves and the document [`openapi::spec`] gives are one list.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(ops::routes())
        .merge(metrics::routes())
        .routes(routes!(points::rules::rules))
        .routes(routes!(jobs::api::submit))
        .routes(routes!(jobs::api::get, jobs::api::cancel))
        .routes(routes!(gateway::upgrade))
        .merge(openai::routes())
        .merge(portal::routes())
        .merge(wallet::routes())
        .merge(evidence::routes())
}

/// Opens the database named by `config` and applies the migrations.
pub async fn open_db(config: &Config) -> anyhow::Result<Db> {
    let url = config.database_url();
    let db = Db::connect(&url)
        .await
        .with_context(|| format!("cannot open the database at {}", redact(&url)))?;
    db.migrate()
        .await
        .context("cannot apply database migrations")?;
    Ok(db)
}

/// Loads the model registry named by `config` (the built-in one by default).
pub fn load_registry(config: &Config) -> anyhow::Result<Registry> {
    Ok(match &config.models_file {
        Some(path) => Registry::load(path)?,
        None => Registry::builtin(),
    })
}

/// Mints a miner token (what `infermine-server miner-token` prints).
pub async fn mint_miner_token(config: &Config, wallet: &str, name: &str) -> anyhow::Result<String> {
    let db = open_db(config).await?;
    let token = Auth::new(config, db.clone())?
        .mint_miner_token(wallet, name)
        .await?;
    db.close().await;
    Ok(token)
}

/// Mints an admin token good for `ttl` (what `infermine-server admin-token` prints).
pub async fn mint_admin_token(
    config: &Config,
    name: &str,
    ttl: Duration,
) -> anyhow::Result<String> {
    let db = open_db(config).await?;
    let auth = Auth::new(config, db.clone());
    db.close().await;
    Ok(wallet::mint_admin_token(&auth?, name, ttl)?)
}

/// Creates a consumer API key (what `infermine-server api-key create` prints).
pub async fn create_api_key(config: &Config, name: &str) -> anyhow::Result<String> {
    let db = open_db(config).await?;
    let key = Auth::new(config, db.clone())?.create_api_key(name).await?;
    db.close().await;
    Ok(key)
}

/// Replaces a token's holdings snapshot with the CSV file at `path` (what
/// `infermine-server nft import` does). Returns how many holders it lists.
pub async fn import_holdings(
    config: &Config,
    token: ledger::holdings::Token,
    path: &std::path::Path,
) -> anyhow::Result<usize> {
    let db = open_db(config).await?;
    let source = ledger::holdings::CsvSnapshot {
        path: path.to_owned(),
    };
    let imported = ledger::holdings::import(&db, token, &source).await;
    db.close().await;
    Ok(imported?)
}

/// Runs the coordinator on `listener` until `shutdown` resolves, then drains: no new
/// assignments, running jobs get `drain_timeout_s` to finish, agents are told to go away, and
/// whatever is still leased is queued again at the next start.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let db = open_db(&config).await?;
    let registry = Arc::new(load_registry(&config)?);
    let mut unpinned: Vec<&str> = registry
        .unpinned_files()
        .map(|(model, _)| model.id.as_str())
        .collect();
    unpinned.dedup();
    if !unpinned.is_empty() {
        tracing::warn!(models = ?unpinned, "these models list files without a pinned SHA-256 and size; agents refuse such files until the registry pins them");
    }
    let auth = Arc::new(Auth::new(&config, db.clone())?);
    let (dispatcher, inbox) = Dispatcher::channel();
    let limits = jobs::Limits {
        max_attempts: config.max_attempts,
        lease_grace: Duration::from_millis(config.lease_grace_ms),
        max_wait: Duration::from_secs(config.max_wait_s),
    };
    let storage = storage::Storage::open(&config.storage, &config.data_dir)
        .await
        .context("cannot open object storage")?;
    let cluster = cluster::Cluster::join(&db, config.cluster.clone());
    let host = listener.local_addr()?.to_string();
    cluster
        .beat(&db, &host)
        .await
        .context("cannot register this coordinator replica")?;
    let jobs = Jobs::new(
        db.clone(),
        registry,
        dispatcher.clone(),
        limits,
        Arc::new(config.points.clone()),
        storage.clone(),
        cluster.clone(),
    );
    let dispatch_task = tokio::spawn(dispatch::run(inbox, Arc::clone(&jobs)));
    cluster.listen(&db, Arc::clone(&jobs));
    jobs.recover().await.context("cannot recover queued jobs")?;
    let upkeep = tokio::spawn(replica_upkeep(Arc::clone(&jobs), db.clone(), host));

    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let state = AppState {
        config: Arc::clone(&config),
        db: db.clone(),
        auth,
        jobs: Arc::clone(&jobs),
        dispatcher: dispatcher.clone(),
        storage: storage.clone(),
        online: Arc::default(),
        challenges: Arc::default(),
        limiters: limits::Limiters::new(&config.rate_limits),
        closing,
    };
    let sweeper = tokio::spawn(sweep(
        Arc::clone(&jobs),
        db.clone(),
        Arc::clone(&state.limiters),
    ));
    let reviewer = config
        .review
        .enabled
        .then(|| review::worker::spawn(state.clone()));
    tracing::info!(listen = %listener.local_addr()?, database = db.dialect(), replica = %cluster.id(), "coordinator ready");

    let drain_timeout = Duration::from_secs(config.drain_timeout_s);
    let drain_dispatcher = dispatcher.clone();
    let drain_jobs = Arc::clone(&jobs);
    let graceful = async move {
        shutdown.await;
        tracing::info!("shutting down: draining running jobs");
        drain_dispatcher.drain();
        let deadline = tokio::time::Instant::now() + drain_timeout;
        while drain_dispatcher.snapshot().await.leased > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // What did not finish goes back to the queue now, not at the next start.
        if let Err(e) = drain_jobs.release_inflight().await {
            tracing::error!(error = %e, "could not requeue unfinished jobs; the next start (or another replica) will");
        }
        let _ = closing_tx.send(true);
    };
    let header_timeout = Duration::from_secs(config.header_timeout_s);
    listen::serve(listener, app(state), header_timeout, graceful).await;
    sweeper.abort();
    upkeep.abort();
    // Leases are released (above): the others need not wait for this replica's heartbeat to
    // go stale.
    if let Err(e) = cluster.leave(&db).await {
        tracing::warn!(error = %e, "could not deregister this replica; the others will time it out");
    }
    if let Some(reviewer) = reviewer {
        reviewer.abort();
    }
    drop(dispatcher);
    drop(jobs);
    dispatch_task.abort();
    storage.shutdown().await;
    db.close().await;
    tracing::info!("coordinator stopped");
    Ok(())
}

/// Background upkeep: WAL checkpoints every second, the overdue-lease sweep every ten, and
/// every sixty the queue reconciliation and the forgetting of idle rate-limit buckets.
async fn sweep(jobs: Arc<Jobs>, db: Db, limiters: Arc<limits::Limiters>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    for tick in 0u64.. {
        ticker.tick().await;
        if let Err(e) = db.checkpoint().await {
            tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
        }
        if tick % 10 == 9
            && let Err(e) = jobs.sweep_overdue().await
        {
            tracing::warn!(error = %e, "lease sweep failed; will retry");
        }
        if tick % 60 == 30 {
            limiters.sweep();
        }
        if tick % 60 == 59
            && let Err(e) = jobs.reoffer_queued().await
        {
            tracing::warn!(error = %e, "queue reconciliation failed; will retry");
        }
    }
}

/// The replica's heartbeat, and the release of the leases of replicas that stopped beating
/// (see [`cluster`]). Alone on SQLite there is nobody else to watch.
async fn replica_upkeep(jobs: Arc<Jobs>, db: Db, host: String) {
    let cluster = jobs.cluster().clone();
    let mut ticker = tokio::time::interval(Duration::from_millis(cluster.config().heartbeat_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for tick in 0u64.. {
        ticker.tick().await;
        if let Err(e) = cluster.beat(&db, &host).await {
            tracing::warn!(error = %e, "replica heartbeat failed; will retry");
        }
        if !cluster.shared() {
            continue;
        }
        if let Err(e) = jobs.release_gone_replicas().await {
            tracing::warn!(error = %e, "cannot requeue the leases of gone replicas; will retry");
        }
        if tick % 60 == 59
            && let Err(e) = cluster.forget_gone(&db).await
        {
            tracing::warn!(error = %e, "cannot forget gone replicas; will retry");
        }
    }
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn database_passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/im"),
            "postgres://app:***@db:5432/im"
        );
        assert_eq!(redact("postgres://app@db/im"), "postgres://app@db/im");
        assert_eq!(
            redact("sqlite://./data/infermine.db"),
            "sqlite://./data/infermine.db"
        );
    }
}
