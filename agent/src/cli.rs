//! The agent's command line: what `infermine-agent` (and the cheater lab's
//! `infermine-cheat-agent`) run from `main`. Parses the configuration, sets up logging, and
//! runs the agent until SIGTERM or ctrl-c. Exit status: 0 after a clean stop, 1 for a bad
//! configuration, 2 when the coordinator refuses the miner token, 3 for a protocol mismatch,
//! 4 when suspended.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::config::ModelsCommand;
use crate::engine::demo::{demo_models, synth as synth_model};
use crate::{AgentConfig, Cli, Command, run_agent, shutdown_signal};

/// Runs the command line. `before_run` sees the loaded configuration of `run` once logging
/// is up and before the agent starts; its error ends the process with status 1.
pub fn main(before_run: impl FnOnce(&AgentConfig) -> Result<(), String>) -> ExitCode {
    // Fails only when a provider is already installed, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = match cli.command {
        Command::Run(args) => args,
        Command::Models(ModelsCommand::Synth { models, out }) => return synth(&models, &out),
        Command::Models(ModelsCommand::Pull {
            models,
            coordinator,
            out,
        }) => return pull(&models, &coordinator, &out),
    };
    let config = match AgentConfig::load(&args) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("invalid configuration: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = before_run(&config) {
        tracing::error!("{e}");
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run_agent(config, shutdown_signal())) {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `models pull`: downloads each model's missing files and says what it did.
fn pull(models: &[String], coordinator: &str, out: &Path) -> ExitCode {
    for model in models {
        let outcome = crate::models::fetch_manifest(coordinator, model)
            .map_err(|e| e.to_string())
            .and_then(|manifest| {
                crate::download::pull(&out.join(model), &manifest).map_err(|e| e.to_string())
            });
        match outcome {
            Ok(files) => {
                let fetched = files
                    .iter()
                    .filter(|(_, f)| *f != crate::download::Fetched::Present)
                    .count();
                tracing::info!(
                    "model {model}: {} files in {}, {fetched} downloaded now",
                    files.len(),
                    out.join(model).display()
                );
            }
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

/// `models synth`: writes each requested demo model and says where.
fn synth(models: &[String], out: &Path) -> ExitCode {
    let ids: Vec<&str> = if models.iter().any(|m| m == "all") {
        demo_models().collect()
    } else {
        models.iter().map(String::as_str).collect()
    };
    for id in ids {
        match synth_model(id, out) {
            Ok(dir) => tracing::info!(
                "wrote demo model {id} (random weights) to {}",
                dir.display()
            ),
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}
