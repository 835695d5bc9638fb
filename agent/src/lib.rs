//! The infermine miner agent: drives the GPUs of one machine for a coordinator.
//!
//! # Map
//!
//! - [`config`]: command line, environment and TOML merged into one validated
//!   [`AgentConfig`].
//! - `gpu`: NVML discovery of the GPUs ([`Devices`]), or CPU slots when there is no driver,
//!   and the live figures heartbeats carry.
//! - [`cuda`]: opens libtorch's CUDA backend before any tensor work, so the same binary runs
//!   on GPU and CPU-only machines.
//! - [`engine`]: the [`engine::Engine`] trait a slot calls to run a job, the model id →
//!   engine factory, and the synthetic engine (`synthetic-echo`).
//! - `slots`: one worker thread per device, fed jobs through a channel, reporting tokens and
//!   outcomes back on another.
//! - `link`: dials the coordinator, runs sessions (hello → welcome → jobs, heartbeats), and
//!   redials with backoff.
//! - `challenge`: answers the coordinator's file challenges with the SHA-256 of a byte range
//!   of a served model's file, hashed off the runtime while the session goes on.
//! - [`models`]: model folders checked against the coordinator's manifest before the hello.
//! - [`cli`]: the command line both binaries run.
//! - `cheat` (feature `cheat-lab` only): the cheater lab's modes for `infermine-cheat-agent`,
//!   reached through one-line hooks in slots, models and link; absent from normal builds.
//!
//! # Life of a job
//!
//! The coordinator sends `job` on the session's socket. The link's reader decodes it; the
//! control loop answers `accepted` and queues it on the slot the frame names. That slot's
//! thread loads the model's engine on first use and runs the job, streaming tokens back
//! through the slot event channel; the control loop forwards them as `token` frames and, at
//! the end, sends `result` (with `queue_ms`/`load_ms`/`infer_ms`) or `failed`. A `cancel`
//! frame flips the job's cancel token, which the engine polls. If the socket drops, running
//! jobs finish but their outcomes are discarded: the coordinator has requeued them.
//!
//! # Embedding
//!
//! [`run_agent`] is the whole agent, returning on shutdown or refusal; tests and the load
//! benchmark run many in one process with [`run_agent_with_devices`] and fake devices.

mod challenge;
#[cfg(feature = "cheat-lab")]
pub mod cheat;
pub mod cli;
pub mod config;
pub mod cuda;
pub mod download;
pub mod engine;
mod error;
mod gpu;
mod link;
pub mod models;
mod slots;
pub mod upload;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

pub use config::{AgentConfig, Cli, Command, ConfigError, RunArgs};
pub use error::AgentError;
pub use gpu::Devices;

/// Room for slot events the link has not forwarded yet; a full channel makes slot threads
/// wait, which slows jobs instead of dropping tokens.
const SLOT_EVENTS_CAPACITY: usize = 1024;

/// Runs the agent on this machine's devices until `shutdown` resolves (then finishes running
/// jobs and returns `Ok`) or the coordinator refuses it for good.
pub async fn run_agent(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let cpu_slots = config.cpu_slots;
    let devices = tokio::task::spawn_blocking(move || {
        let devices = Devices::discover(cpu_slots);
        let has_gpu = devices
            .infos()
            .iter()
            .any(|d| d.kind == infermine_protocol::DeviceKind::Cuda);
        cuda::load_backend(has_gpu);
        devices
    })
    .await
    .map_err(|e| AgentError::Start(std::io::Error::other(e)))?;
    run_agent_with_devices(config, devices, shutdown).await
}

/// [`run_agent`] on the given devices, without probing the hardware.
pub async fn run_agent_with_devices(
    config: AgentConfig,
    devices: Devices,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    for model in &config.models {
        engine::check_available(model, &config.models_dir).map_err(|message| {
            AgentError::Config(ConfigError::Invalid {
                field: "models",
                message,
            })
        })?;
    }
    let digests = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || verify_models(&config))
            .await
            .map_err(|e| AgentError::Start(std::io::Error::other(e)))??
    };
    tracing::info!(
        coordinator = %config.coordinator,
        name = config.name.as_deref().unwrap_or("-"),
        models = ?config.models,
        "starting with {} slot(s)",
        devices.infos().len()
    );
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let watcher = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    if let Some(threads) = config.threads {
        // Process-wide: each slot thread takes it up when it first runs libtorch.
        tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
    }
    tracing::info!(
        threads = tch::get_num_threads(),
        precision = config.precision.as_str(),
        "libtorch settings"
    );
    let (events_tx, mut events_rx) = mpsc::channel(SLOT_EVENTS_CAPACITY);
    let slots = slots::Slots::start(
        devices.infos(),
        events_tx,
        &config.models_dir,
        config.precision,
    )
    .map_err(AgentError::Start)?;
    let link = link::Link {
        config: &config,
        digests: &digests,
        devices: Arc::new(devices),
        slots: &slots,
        events: &mut events_rx,
        shutdown: &mut stop_rx,
    };
    let result = link.run().await;
    watcher.abort();
    result
}

/// Checks the files of every model with files against the coordinator's manifest, before
/// the agent announces them. Returns each model's manifest digest for the hello.
fn verify_models(config: &AgentConfig) -> Result<HashMap<String, String>, AgentError> {
    let mut digests = HashMap::new();
    for model in &config.models {
        if engine::BUILTIN_MODELS.contains(&model.as_str()) {
            continue;
        }
        let dir = engine::model_dir(&config.models_dir, model);
        let manifest = models::fetch_manifest(&config.coordinator, model)?;
        tracing::info!(model, files = manifest.files.len(), "verifying model files");
        let digest = models::verify(&dir, &manifest)?;
        digests.insert(model.clone(), digest);
    }
    Ok(digests)
}

/// Resolves on SIGTERM or ctrl-c (SIGINT), whichever comes first.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for ctrl-c: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
