//! Model-file challenges end to end: a real agent process answers the challenges the
//! coordinator sends when it connects and with its first job; once its model's files change
//! under it (a miner swapping weights on a running rig), the next challenge fails and opens
//! a `challenge` case whose evidence names the file, the expected hash and the agent's.

use std::path::Path;
use std::time::{Duration, Instant};

use infermine_agent::engine::demo::synth;
use infermine_tests::{AgentProcess, Backend, TestServer};
use serde_json::{Value, json};

use crate::on_both_databases;

const MODEL: &str = "tiny-llama";

/// Flips the last byte of every file under `dir`.
fn tamper_all(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("read the model dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            tamper_all(&path);
        } else {
            let mut bytes = std::fs::read(&path).expect("read");
            if let Some(last) = bytes.last_mut() {
                *last ^= 0x01;
            }
            std::fs::write(&path, bytes).expect("write");
        }
    }
}

async fn admin_get(server: &TestServer, admin: &str, path: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", server.http()))
        .bearer_auth(admin)
        .send()
        .await
        .expect("send");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.expect("json")
}

/// Polls `path` until `ready` holds.
async fn wait_for(
    server: &TestServer,
    admin: &str,
    path: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = admin_get(server, admin, path).await;
        if ready(&body) {
            return body;
        }
        if Instant::now() > deadline {
            let stats = admin_get(server, admin, "/api/v1/admin/review/stats").await;
            panic!("{path} never got there: {body}; review stats: {stats}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_file_changed_under_a_running_agent_fails_its_challenge(backend: Backend) {
    // Every reviewed job brings a challenge too, so one job is enough for the second.
    let server = TestServer::start_with(&backend, |config| {
        config.review.challenge_rate = 1.0;
        config.review.interval_ms = 100;
    })
    .await;
    let admin = infermine_server::mint_admin_token(&server.config, "e2e", Duration::from_secs(600))
        .await
        .expect("admin token");
    let models = tempfile::tempdir().expect("models dir");
    synth(MODEL, models.path()).expect("synth demo model");
    let token = server.miner_token("rig").await;
    let models_dir = models.path().to_string_lossy().into_owned();
    let _agent = AgentProcess::spawn(
        &server,
        &token,
        &["--models-dir", &models_dir, "--model", MODEL],
    )
    .await;
    server.wait_slots(1).await;

    let stats = "/api/v1/admin/review/stats";
    // Every case, whatever its status: two failed challenges judged at once may both reach
    // the policy after the second is recorded, and then both are slashed.
    let cases = "/api/v1/admin/cases";
    let answered = wait_for(&server, &admin, stats, |s| {
        s["challenges"]["passed"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(answered["challenges"]["failed"], 0, "{answered}");
    let page = admin_get(&server, &admin, cases).await;
    assert_eq!(page["cases"], json!([]), "an honest agent gets no case");

    // A first job loads the model (agents verify the files as they load them); then the
    // files change, and the next job's challenge reads them.
    let client = server.client();
    let chat = |seed: u64| {
        json!({
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 4,
            "seed": seed,
        })
    };
    let id = client.submit_ok(MODEL, chat(1)).await;
    let job = client.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "completed", "{job}");
    tamper_all(&models.path().join(MODEL));
    let id = client.submit_ok(MODEL, chat(2)).await;
    let job = client.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "completed", "{job}");

    let page = wait_for(&server, &admin, cases, |page| {
        page["cases"]
            .as_array()
            .is_some_and(|cases| cases.iter().any(|c| c["check"] == "challenge"))
    })
    .await;
    let case = page["cases"]
        .as_array()
        .and_then(|cases| cases.iter().find(|c| c["check"] == "challenge"))
        .expect("a challenge case");
    let evidence = &case["evidence"];
    assert_eq!(evidence["model"], MODEL, "{evidence}");
    assert_eq!(evidence["judged_against"], "registry", "{evidence}");
    assert_eq!(evidence["offset"], 0, "small files are hashed whole");
    let expected = evidence["expected_sha256"].as_str().expect("expected hash");
    let answer = evidence["agent_answer"]["sha256"]
        .as_str()
        .expect("the agent's hash");
    assert_eq!(expected.len(), 64);
    assert_ne!(expected, answer);
    assert!(
        evidence["problem"]
            .as_str()
            .is_some_and(|p| p.contains("differs")),
        "{evidence}"
    );
    let stats = admin_get(&server, &admin, stats).await;
    assert!(stats["challenges"]["failed"].as_u64() >= Some(1), "{stats}");
}

on_both_databases!(a_file_changed_under_a_running_agent_fails_its_challenge);
