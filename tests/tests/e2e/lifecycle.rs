//! Jobs travel consumer → coordinator → agent process → result, and survive agents dying and
//! the coordinator restarting.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use infermine_tests::{AgentProcess, Backend, TestServer};
use serde_json::json;

use crate::on_both_databases;

async fn two_hundred_jobs_across_three_agents(backend: Backend) {
    let server = TestServer::start(&backend).await;
    let mut agents = Vec::new();
    for i in 0..3 {
        let token = server.miner_token(&format!("rig{i}")).await;
        agents.push(AgentProcess::spawn(&server, &token, &[]).await);
    }
    server.wait_slots(3).await;

    let client = server.client();
    let ids = join_all((0..200).map(|i| {
        let client = client.clone();
        async move {
            client
                .submit_ok(
                    "synthetic-echo",
                    json!({ "output_bytes": 64 + i, "delay_ms": 5, "seed": i }),
                )
                .await
        }
    }))
    .await;
    let views = join_all(
        ids.iter()
            .map(|id| client.wait_final(id, Duration::from_secs(60))),
    )
    .await;

    let mut miners = HashSet::new();
    for (i, view) in views.iter().enumerate() {
        assert_eq!(view["status"], "completed", "job {i}: {view}");
        assert_eq!(view["attempts"], 1, "job {i} ran once: {view}");
        let data = view["output"]["data_b64"].as_str().expect("output bytes");
        assert_eq!(
            base64_len(data),
            64 + i,
            "job {i} returned the size it asked for"
        );
        miners.insert(view["miner_id"].as_str().expect("miner id").to_owned());
    }
    assert_eq!(miners.len(), 3, "every agent got work: {miners:?}");
    let status = server
        .wait_status("idle", |s| s["leased"] == 0 && s["queued"] == 0)
        .await;
    assert_eq!(status["agents"], 3);
}
on_both_databases!(two_hundred_jobs_across_three_agents);

fn base64_len(data: &str) -> usize {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .expect("base64")
        .len()
}

async fn killed_agent_jobs_are_requeued_and_completed(backend: Backend) {
    let server = TestServer::start(&backend).await;
    let doomed_token = server.miner_token("doomed").await;
    let mut doomed = AgentProcess::spawn(&server, &doomed_token, &[]).await;
    server.wait_slots(1).await;

    // Slow jobs, so the only agent is mid-job when it dies.
    let client = server.client();
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            client
                .submit_ok("synthetic-echo", json!({ "delay_ms": 1500, "seed": i }))
                .await,
        );
    }
    server
        .wait_status("a running job", |s| s["leased"] == 1)
        .await;
    doomed.kill().await;

    let survivor_token = server.miner_token("survivor").await;
    let _survivor = AgentProcess::spawn(&server, &survivor_token, &[]).await;
    for id in &ids {
        let view = client.wait_final(id, Duration::from_secs(60)).await;
        assert_eq!(view["status"], "completed", "{view}");
        assert!(
            view["miner_id"]
                .as_str()
                .is_some_and(|m| m.ends_with("-survivor-gpu0")),
            "{view}"
        );
    }
    let retried = join_all(ids.iter().map(|id| client.get(id, 0.0))).await;
    assert!(
        retried.iter().any(|(_, view)| view["attempts"] == 2),
        "the job running on the killed agent took a second attempt: {retried:?}"
    );
}
on_both_databases!(killed_agent_jobs_are_requeued_and_completed);

async fn queued_jobs_survive_a_coordinator_restart(backend: Backend) {
    let mut server = TestServer::start(&backend).await;
    let client = server.client();
    // No agent yet: the jobs can only wait in the queue.
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            client
                .submit_ok("synthetic-echo", json!({ "seed": i }))
                .await,
        );
    }
    server.restart().await;
    let token = server.miner_token("late").await;
    let _agent = AgentProcess::spawn(&server, &token, &[]).await;
    for id in &ids {
        let view = client.wait_final(id, Duration::from_secs(60)).await;
        assert_eq!(view["status"], "completed", "{view}");
    }
}
on_both_databases!(queued_jobs_survive_a_coordinator_restart);

async fn an_agent_reconnects_after_a_coordinator_restart(backend: Backend) {
    let mut server = TestServer::start(&backend).await;
    let token = server.miner_token("steady").await;
    let agent = AgentProcess::spawn(&server, &token, &["--max-backoff-s", "1"]).await;
    server.wait_slots(1).await;
    server.restart().await;
    server.wait_slots(1).await;
    let client = server.client();
    let id = client.submit_ok("synthetic-echo", json!({})).await;
    let view = client.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(
        view["status"],
        "completed",
        "{view}\nagent log:\n{}",
        agent.log()
    );
}
on_both_databases!(an_agent_reconnects_after_a_coordinator_restart);

async fn failing_jobs_stop_after_max_attempts(backend: Backend) {
    let server = TestServer::start_with(&backend, |c| c.max_attempts = 3).await;
    let token = server.miner_token("flaky").await;
    let _agent = AgentProcess::spawn(&server, &token, &[]).await;
    let client = server.client();
    let id = client
        .submit_ok("synthetic-echo", json!({ "fail": true }))
        .await;
    let view = client.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["attempts"], 3, "{view}");
    assert!(
        view["error"]
            .as_str()
            .is_some_and(|e| e.contains("synthetic failure")),
        "{view}"
    );
}
on_both_databases!(failing_jobs_stop_after_max_attempts);

async fn cancelling_queued_and_running_jobs(backend: Backend) {
    let server = TestServer::start(&backend).await;
    let client = server.client();
    let queued = client.submit_ok("synthetic-echo", json!({})).await;
    let (status, view) = client.cancel(&queued).await;
    assert_eq!(
        (status, view["status"].as_str()),
        (200, Some("cancelled")),
        "{view}"
    );
    let (status, body) = client.cancel(&queued).await;
    assert_eq!(
        status, 409,
        "a cancelled job cannot be cancelled again: {body}"
    );
    assert_eq!(body["error"]["code"], "conflict");

    let token = server.miner_token("rig").await;
    let _agent = AgentProcess::spawn(&server, &token, &[]).await;
    let running = client
        .submit_ok("synthetic-echo", json!({ "delay_ms": 3000 }))
        .await;
    server
        .wait_status("a running job", |s| s["leased"] == 1)
        .await;
    let (status, view) = client.cancel(&running).await;
    assert_eq!(
        (status, view["status"].as_str()),
        (200, Some("cancelled")),
        "{view}"
    );
    server
        .wait_status("the slot freed", |s| s["leased"] == 0)
        .await;

    // The cancelled job never comes back; the freed slot takes new work at once.
    let next = client.submit_ok("synthetic-echo", json!({})).await;
    let view = client.wait_final(&next, Duration::from_secs(10)).await;
    assert_eq!(view["status"], "completed", "{view}");
    let (_, view) = client.get(&running, 0.0).await;
    assert_eq!(view["status"], "cancelled", "{view}");
}
on_both_databases!(cancelling_queued_and_running_jobs);

async fn sigterm_lets_running_jobs_finish(backend: Backend) {
    let server = TestServer::start(&backend).await;
    let token = server.miner_token("leaving").await;
    let mut agent = AgentProcess::spawn(&server, &token, &[]).await;
    server.wait_slots(1).await;
    let client = server.client();
    let id = client
        .submit_ok("synthetic-echo", json!({ "delay_ms": 1500 }))
        .await;
    // The lease alone is not enough: the job frame may still be on its way, and an agent
    // already shutting down declines it (the job is requeued, not lost).
    agent
        .wait_log(&format!("job accepted job={id}"), Duration::from_secs(10))
        .await;
    agent.terminate();
    let status = agent
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("agent exits after its job");
    assert!(status.success(), "clean exit; log:\n{}", agent.log());
    let (_, view) = client.get(&id, 0.0).await;
    assert_eq!(
        (view["status"].as_str(), view["attempts"].as_i64()),
        (Some("completed"), Some(1)),
        "{view}"
    );
}
on_both_databases!(sigterm_lets_running_jobs_finish);

async fn a_shutdown_requeues_jobs_that_outlast_the_drain(backend: Backend) {
    let mut server = TestServer::start_with(&backend, |c| c.drain_timeout_s = 1).await;
    let token = server.miner_token("slow").await;
    let agent = AgentProcess::spawn(&server, &token, &[]).await;
    server.wait_slots(1).await;
    let client = server.client();
    let id = client
        .submit_ok("synthetic-echo", json!({ "delay_ms": 60_000 }))
        .await;
    agent
        .wait_log(&format!("job accepted job={id}"), Duration::from_secs(10))
        .await;
    server.stop().await;

    // Before anything starts again: the job is queued, its cut-short attempt not counted.
    let db = infermine_server::open_db(&server.config)
        .await
        .expect("open db");
    let job = infermine_server::jobs::store::get(&db, id.parse().expect("uuid"))
        .await
        .expect("read")
        .expect("the job");
    db.close().await;
    assert_eq!(
        (job.status.as_str(), job.attempts),
        ("queued", 0),
        "{job:?}"
    );
}
on_both_databases!(a_shutdown_requeues_jobs_that_outlast_the_drain);
