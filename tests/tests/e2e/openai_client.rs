//! The official `openai` Python client, unchanged, against a coordinator and a real agent
//! process serving a demo model (random weights, real architecture) on the CPU: completions,
//! streamed and not, errors, and the Llama points the two completions earn.
//!
//! The client runs from the Python that `INFERMINE_TEST_PYTHON` names, with
//! `INFERMINE_TEST_PYTHONPATH` (scripts/test.sh installs `openai` into .dev/pyclient). Without it the test says so and passes only outside
//! CI; in CI (`CI` set) a missing client fails it.

use std::path::PathBuf;
use std::time::Duration;

use infermine_agent::engine::demo::synth;
use infermine_tests::{AgentProcess, Backend, TestServer, WALLET};
use serde_json::Value;

use crate::on_both_databases;

const MODEL: &str = "tiny-llama";

fn python() -> Option<PathBuf> {
    let python = std::env::var_os("INFERMINE_TEST_PYTHON").map(PathBuf::from);
    if python.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "INFERMINE_TEST_PYTHON is not set: run the suite with scripts/test.sh, which installs \
             the openai client"
        );
        eprintln!(
            "skipping the openai client test: INFERMINE_TEST_PYTHON is not set (scripts/test.sh \
             sets it)"
        );
    }
    python
}

async fn openai_python_client(backend: Backend) {
    let Some(python) = python() else { return };
    let server = TestServer::start(&backend).await;
    let models = tempfile::tempdir().expect("models dir");
    synth(MODEL, models.path()).expect("synth demo model");
    let token = server.miner_token("rig-llm").await;
    let models_dir = models.path().to_string_lossy().into_owned();
    let agent = AgentProcess::spawn(
        &server,
        &token,
        &["--models-dir", &models_dir, "--model", MODEL],
    )
    .await;
    server.wait_slots(1).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/openai_chat.py");
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(&python)
            .args([script, &server.http(), &server.api_key, MODEL])
            .envs(std::env::var_os("INFERMINE_TEST_PYTHONPATH").map(|p| ("PYTHONPATH", p)))
            .output(),
    )
    .await
    .expect("the client finishes within 180 s")
    .expect("run the python client");
    assert!(
        output.status.success(),
        "client failed:\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        agent.log()
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("client prints JSON");

    let listed: Vec<&str> = report["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(listed.contains(&MODEL), "{listed:?}");

    let completion = &report["completion"];
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], MODEL);
    assert_eq!(completion["role"], "assistant");
    let usage = &completion["usage"];
    let prompt_tokens = usage["prompt_tokens"].as_u64().expect("prompt tokens");
    let completion_tokens = usage["completion_tokens"]
        .as_u64()
        .expect("completion tokens");
    assert!(prompt_tokens > 10, "{usage}");
    assert!((1..=24).contains(&completion_tokens), "{usage}");
    assert_eq!(usage["total_tokens"], prompt_tokens + completion_tokens);
    let finish = completion["finish_reason"].as_str().expect("finish reason");
    assert!(finish == "stop" || finish == "length", "{finish}");
    if completion_tokens == 24 {
        assert_eq!(finish, "length");
    }

    // The same seed on the same agent gives the same text, streamed or not.
    let stream = &report["stream"];
    let streamed: String = stream["pieces"]
        .as_array()
        .expect("pieces")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        Some(streamed.as_str()),
        completion["content"].as_str(),
        "{report}"
    );
    assert_eq!(stream["roles"], serde_json::json!(["assistant"]));
    assert_eq!(stream["finish_reason"], completion["finish_reason"]);
    assert_eq!(stream["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(stream["usage"]["completion_tokens"], completion_tokens);
    assert_eq!(
        stream["chunk_ids"], 1,
        "every chunk carries the completion's id"
    );

    assert_eq!(
        report["errors"]["unknown_model"],
        serde_json::json!(["NotFoundError", 404])
    );
    assert_eq!(
        report["errors"]["wrong_key"],
        serde_json::json!(["AuthenticationError", 401])
    );

    // Both completions earned Llama points from their real token counts: (in + out) / 1000
    // × 0.01 (the demo multiplier) = 10 micro-points per token.
    let wallet = server.get_json(&format!("/api/v1/wallets/{WALLET}")).await;
    assert_eq!(
        wallet["balances"]["llama"]["micro"],
        2 * 10 * (prompt_tokens + completion_tokens),
        "{wallet}"
    );
}

on_both_databases!(openai_python_client);
