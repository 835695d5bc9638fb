//! `infermine-agent`: the miner agent's binary; [`infermine_agent::cli`] does the work.

use std::process::ExitCode;

fn main() -> ExitCode {
    infermine_agent::cli::main(|_| Ok(()))
}
