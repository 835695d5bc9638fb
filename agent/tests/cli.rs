//! The agent binary as an operator meets it: help, and bad configuration refused at start with
//! a message naming the problem and the fix. (Being an integration test of this package also
//! makes `cargo test` rebuild the binary the end-to-end suite spawns.)

use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infermine-agent"))
        .args(args)
        .env_remove("INFERMINE_AGENT_TOKEN")
        .env_remove("INFERMINE_AGENT_COORDINATOR")
        .env_remove("INFERMINE_AGENT_MODELS")
        .output()
        .expect("run infermine-agent")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_documents_the_run_options() {
    let output = agent(&["run", "--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--coordinator",
        "--token",
        "--token-file",
        "--model",
        "--config",
        "--max-backoff-s",
    ] {
        assert!(
            help.contains(option),
            "`run --help` should document {option}:\n{help}"
        );
    }
}

#[test]
fn bad_configuration_is_refused_at_start_with_the_fix() {
    let unknown_model = agent(&[
        "run",
        "--coordinator",
        "ws://127.0.0.1:9",
        "--token",
        "t",
        "--model",
        "gpt-5",
    ]);
    assert_eq!(
        unknown_model.status.code(),
        Some(1),
        "{}",
        stderr(&unknown_model)
    );
    assert!(
        stderr(&unknown_model).contains("models/gpt-5"),
        "names the folder it looked in: {}",
        stderr(&unknown_model)
    );

    let bad_scheme = agent(&["run", "--coordinator", "ftp://127.0.0.1:9", "--token", "t"]);
    assert_eq!(bad_scheme.status.code(), Some(1), "{}", stderr(&bad_scheme));
    assert!(
        stderr(&bad_scheme).contains("ws://"),
        "{}",
        stderr(&bad_scheme)
    );

    let no_token = agent(&["run", "--coordinator", "ws://127.0.0.1:9"]);
    assert_eq!(no_token.status.code(), Some(1), "{}", stderr(&no_token));
    assert!(stderr(&no_token).contains("token"), "{}", stderr(&no_token));
}
