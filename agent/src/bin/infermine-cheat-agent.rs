//! `infermine-cheat-agent`: the cheater lab's agent, built only with `--features cheat-lab`.
//! It runs exactly what `infermine-agent` runs, cheating the way `INFERMINE_CHEAT` says (see
//! [`infermine_agent::cheat`]), so the coordinator's anti-cheat review can be tested against
//! agents that really cheat. Never give it to miners.

use std::process::ExitCode;

fn main() -> ExitCode {
    infermine_agent::cli::main(infermine_agent::cheat::init)
}
