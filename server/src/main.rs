//! `infermine-server`: the coordinator binary. See `infermine_server` for how it works.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use infermine_server::config::{Config, LogFormat, Overrides};
use infermine_server::ledger::holdings::Token;

/// The infermine coordinator: consumer API, agent gateway, dispatcher and ledger.
///
/// Every setting can come from a TOML file (--config), from an INFERMINE_* environment
/// variable, or from a flag; flags win over variables, which win over the file.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML file with settings (keys as the long flags, with underscores)
    #[arg(long, env = "INFERMINE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the coordinator
    Serve(#[command(flatten)] Overrides),
    /// Apply database migrations and exit
    Migrate(#[command(flatten)] Overrides),
    /// Mint a miner token for a wallet's rig and print it (alone) on stdout
    MinerToken {
        /// The wallet that earns the points (0x-prefixed, 40 hex digits)
        #[arg(long)]
        wallet: String,
        /// A name for the rig (letters, digits, - and _)
        #[arg(long)]
        name: String,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Mint an admin token for the operator routes and print it (alone) on stdout
    AdminToken {
        /// Who the token is for, as admin routes will see it
        #[arg(long, default_value = "admin")]
        name: String,
        /// How many hours the token stays valid (at most 8784, a year)
        #[arg(long, default_value_t = 24)]
        ttl_hours: u64,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Manage consumer API keys
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// Manage the token holdings that boost points
    Nft {
        #[command(subcommand)]
        command: NftCommand,
    },
    /// Print the HTTP API's OpenAPI document (what `openapi/openapi.json` holds)
    Openapi {
        /// Write it to this file instead of stdout
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum NftCommand {
    /// Replace a token's holdings snapshot with a CSV file of `address,count` lines (an
    /// optional `address,count` header and `#` comments allowed). A file with any bad line
    /// changes nothing; holders missing from the file hold nothing afterwards.
    Import {
        /// The snapshot file
        file: PathBuf,
        /// Which token the file lists
        #[arg(long, value_enum, default_value = "nft")]
        token: Token,
        #[command(flatten)]
        overrides: Overrides,
    },
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Create an API key and print it (alone) on stdout; it is shown only once
    Create {
        /// A label to recognise the key by
        #[arg(long, default_value = "default")]
        name: String,
        #[command(flatten)]
        overrides: Overrides,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = match &cli.command {
        // The document is the code's: no settings needed.
        Command::Openapi { out } => return openapi(out.as_deref()),
        Command::Serve(o) | Command::Migrate(o) => o,
        Command::MinerToken { overrides, .. }
        | Command::AdminToken { overrides, .. }
        | Command::Nft {
            command: NftCommand::Import { overrides, .. },
        }
        | Command::ApiKey {
            command: ApiKeyCommand::Create { overrides, .. },
        } => overrides,
    };
    let config = match Config::load(cli.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("infermine-server: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("infermine-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("infermine-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) => {
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot listen on {}: {e} (choose another with --listen)",
                        config.listen
                    )
                })?;
            infermine_server::run(config, listener, shutdown_signal()).await
        }
        Command::Migrate(_) => {
            let db = infermine_server::open_db(&config).await?;
            db.close().await;
            eprintln!("migrations applied to {}", db.dialect());
            Ok(())
        }
        Command::MinerToken { wallet, name, .. } => {
            let token = infermine_server::mint_miner_token(&config, &wallet, &name).await?;
            print_secret(&token);
            Ok(())
        }
        Command::AdminToken {
            name, ttl_hours, ..
        } => {
            let ttl = std::time::Duration::from_secs(ttl_hours.saturating_mul(3600));
            let token = infermine_server::mint_admin_token(&config, &name, ttl).await?;
            print_secret(&token);
            Ok(())
        }
        Command::ApiKey {
            command: ApiKeyCommand::Create { name, .. },
        } => {
            let key = infermine_server::create_api_key(&config, &name).await?;
            print_secret(&key);
            Ok(())
        }
        Command::Nft {
            command: NftCommand::Import { file, token, .. },
        } => {
            let holders = infermine_server::import_holdings(&config, token, &file).await?;
            eprintln!(
                "imported {holders} {} holders from {}",
                token.as_str(),
                file.display()
            );
            Ok(())
        }
        Command::Openapi { .. } => unreachable!("`openapi` runs before the settings load"),
    }
}

/// Prints the OpenAPI document, or writes it to `out`.
fn openapi(out: Option<&std::path::Path>) -> ExitCode {
    let json = infermine_server::openapi::to_json(&infermine_server::openapi::spec());
    let Some(out) = out else {
        print_document(&json);
        return ExitCode::SUCCESS;
    };
    match std::fs::write(out, json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("infermine-server: cannot write {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

#[expect(clippy::print_stdout, reason = "the document is the command's output")]
fn print_document(json: &str) {
    print!("{json}");
}

#[expect(clippy::print_stdout, reason = "the token is the command's output")]
fn print_secret(secret: &str) {
    println!("{secret}");
}

/// Resolves on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            // The embedded S3 server logs every 404 it answers as an error; the client side
            // reports what matters.
            "info,s3s::ops=off",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
