//! Two coordinator replicas — real `infermine-server` processes — on one PostgreSQL database
//! and one object store, with real agents connected to each. Jobs submitted to one replica run
//! on the other's agents, consumers wait (and stream) on either, every job completes once, and
//! when a replica is killed mid-job its leases go back to the queue and the survivor finishes.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use infermine_tests::process::ServerProcess;
use infermine_tests::sse::SseReader;
use infermine_tests::{AgentProcess, Backend, Client, ObjectStore, WALLET, synth_models};
use serde_json::{Value, json};

const LLM: &str = "tiny-llama";
/// Shared by both replicas: tokens minted for one are good on the other.
const SECRET: &str = "2f9c4e1b7a3d5f608e1c2b4a6d8f0e13579bdf02468ace13579bdf02468ace1";

/// A coordinator process.
struct Replica {
    server: ServerProcess,
    base: String,
}

impl Replica {
    async fn start(name: &str, dir: &Path, database_url: &str, store: &ObjectStore) -> Self {
        let storage = match store {
            ObjectStore::External {
                endpoint,
                access_key,
                secret_key,
            } => format!(
                "endpoint = \"{endpoint}\"\naccess_key = \"{access_key}\"\n\
                 secret_key = \"{secret_key}\"\nbucket = \"im-replicas\"\n"
            ),
            // Each replica keeps its own objects; fine for jobs whose output is text.
            ObjectStore::Embedded => String::new(),
        };
        let settings = format!(
            "database_url = \"{database_url}\"\n\
             jwt_secret = \"{SECRET}\"\n\
             heartbeat_interval_s = 1\n\
             agent_timeout_s = 5\n\
             [rate_limits]\nenabled = false\n\
             [review]\nenabled = false\n\
             [cluster]\nheartbeat_ms = 200\ndead_after_ms = 1500\n\
             [storage]\n{storage}",
        );
        let server = ServerProcess::start(name, dir, &settings).await;
        server.wait_for("/readyz").await;
        let base = server.base.clone();
        Self { server, base }
    }

    fn ws(&self) -> String {
        self.server.ws()
    }

    fn log(&self) -> String {
        self.server.log()
    }

    /// `POST /v1/chat/completions`, expecting 200.
    async fn chat(&self, key: &str, body: &Value) -> reqwest::Response {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("chat");
        assert_eq!(response.status(), 200);
        response
    }

    /// The wallet's GPUs as this replica's portal API shows them: rig name → online.
    async fn online(&self) -> HashMap<String, bool> {
        let wallet: Value = reqwest::get(format!("{}/api/v1/wallets/{WALLET}", self.base))
            .await
            .expect("wallet")
            .json()
            .await
            .expect("wallet json");
        wallet["miners"]
            .as_array()
            .expect("miners")
            .iter()
            .map(|m| {
                (
                    m["rig"].as_str().unwrap_or_default().to_owned(),
                    m["online"].as_bool().unwrap_or_default(),
                )
            })
            .collect()
    }

    async fn status(&self) -> Value {
        reqwest::get(format!("{}/v1/status", self.base))
            .await
            .expect("status")
            .json()
            .await
            .expect("status json")
    }

    async fn wait_status(&self, what: &str, ready: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status().await;
            if ready(&status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status: {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn submit_many(client: &Client, count: usize, delay_ms: u32, seed: u64) -> Vec<String> {
    join_all((0..count).map(|i| {
        let client = client.clone();
        async move {
            client
                .submit_ok(
                    "synthetic-echo",
                    json!({ "delay_ms": delay_ms, "seed": seed + i as u64 }),
                )
                .await
        }
    }))
    .await
}

async fn wait_all(client: &Client, ids: &[String]) -> Vec<Value> {
    join_all(
        ids.iter()
            .map(|id| client.wait_final(id, Duration::from_secs(60))),
    )
    .await
}

fn miner_of(view: &Value) -> String {
    view["miner_id"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_queue_and_the_survivor_finishes_a_killed_ones_jobs() {
    let Some(Backend::Postgres(url)) = Backend::postgres().await else {
        return;
    };
    let store = ObjectStore::external().unwrap_or(ObjectStore::Embedded);
    let dir = tempfile::tempdir().expect("tempdir");
    // Keys and tokens through the library, on the same database and secret the replicas use.
    let mut config = infermine_server::config::Config::with_data_dir(dir.path());
    config.database_url = Some(url.clone());
    config.jwt_secret = Some(SECRET.to_owned());
    let key = infermine_server::create_api_key(&config, "replicas")
        .await
        .expect("api key");
    let token_a = infermine_server::mint_miner_token(&config, WALLET, "rig-a")
        .await
        .expect("token");
    let token_b = infermine_server::mint_miner_token(&config, WALLET, "rig-b")
        .await
        .expect("token");
    let models = dir.path().join("models");
    synth_models(&models, &[LLM]).await;
    let models = models.to_string_lossy().into_owned();

    let a = Replica::start("a", dir.path(), &url, &store).await;
    let mut b = Replica::start("b", dir.path(), &url, &store).await;
    a.wait_status("A to see B", |s| s["replicas"] == 2).await;
    let on_a = Client::new(&a.base, &key);
    let on_b = Client::new(&b.base, &key);

    // 1. The only agent is on B; consumers call A.
    let _agent_b = AgentProcess::spawn_url(
        &b.ws(),
        dir.path(),
        &token_b,
        &["--models-dir", &models, "--model", LLM],
    )
    .await;
    b.wait_status("B's agent", |s| s["slots"] == 1).await;
    assert_eq!(
        a.online().await.get("rig-b"),
        Some(&true),
        "A's portal shows B's agent online"
    );
    let ids = submit_many(&on_a, 10, 5, 0).await;
    for view in wait_all(&on_a, &ids).await {
        assert_eq!(view["status"], "completed", "{view}");
        assert!(miner_of(&view).ends_with("-rig-b-gpu0"), "{view}");
    }
    // A consumer parked on A is woken by B's notice: it does not sit out its whole wait.
    let id = submit_many(&on_b, 1, 300, 100).await.remove(0);
    let asked = Instant::now();
    let (status, view) = on_a.get(&id, 30.0).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "completed", "{view}");
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "the wait on A ended only at its timeout ({:?}): B's completion notice never arrived",
        asked.elapsed()
    );
    // A streamed chat on A: B's agent decodes it, and its tokens cross to A one by one.
    let chat = json!({
        "model": LLM,
        "messages": [{"role": "user", "content": "Tell me about lighthouses."}],
        "max_tokens": 12, "seed": 3, "stream": true,
    });
    let response = a.chat(&key, &chat).await;
    let mut events = SseReader::new(response);
    let mut pieces = Vec::new();
    for event in events.rest(Duration::from_secs(60)).await {
        if event == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&event).expect("chunk json");
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str()
            && !piece.is_empty()
        {
            pieces.push(piece.to_owned());
        }
    }
    assert!(
        pieces.len() >= 2,
        "B's tokens reached A's consumer as they came, not only in the final result: {pieces:?}"
    );
    // And a non-streamed chat on A, answered when B's notice of its end arrives.
    let mut plain = chat.clone();
    plain["stream"] = json!(false);
    let completion: Value = a.chat(&key, &plain).await.json().await.expect("completion");
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        pieces.concat()
    );

    // 2. Agents on both; each replica's consumers wait on the other replica.
    let _agent_a = AgentProcess::spawn_url(&a.ws(), dir.path(), &token_a, &[]).await;
    a.wait_status("A's agent", |s| s["slots"] == 1).await;
    let from_a = submit_many(&on_a, 40, 20, 1_000).await;
    let from_b = submit_many(&on_b, 40, 20, 2_000).await;
    let mut ran_on = HashMap::<String, usize>::new();
    for view in wait_all(&on_b, &from_a)
        .await
        .into_iter()
        .chain(wait_all(&on_a, &from_b).await)
    {
        assert_eq!(view["status"], "completed", "{view}");
        assert_eq!(view["attempts"], 1, "ran once: {view}");
        *ran_on.entry(miner_of(&view)).or_default() += 1;
    }
    assert_eq!(
        ran_on.len(),
        2,
        "both replicas' agents ran jobs: {ran_on:?}"
    );

    // 3. Kill B while its agent is mid-job: A requeues B's leases and its own agent finishes.
    let slow: Vec<String> = submit_many(&on_b, 4, 2_500, 3_000)
        .await
        .into_iter()
        .chain(submit_many(&on_a, 4, 2_500, 4_000).await)
        .collect();
    b.wait_status("a job leased on B", |s| s["leased"].as_u64() >= Some(1))
        .await;
    b.server.kill().await;
    a.wait_status("A to count B gone", |s| s["replicas"] == 1)
        .await;
    assert_eq!(
        a.online().await.get("rig-b"),
        Some(&false),
        "B's agent is offline once B is gone"
    );
    // B's agent lost its coordinator before finishing any of these: A's agent ran them all,
    // B's cut-short attempts included (which do not count against the jobs).
    for view in wait_all(&on_a, &slow).await {
        assert_eq!(view["status"], "completed", "{view}");
        assert!(miner_of(&view).ends_with("-rig-a-gpu0"), "{view}");
        assert_eq!(view["attempts"], 1, "{view}");
    }
    let requeued = "requeued the leases of a coordinator replica that is gone";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.log().contains(requeued) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        a.log().contains(requeued),
        "A never requeued B's leases; log:\n{}",
        a.log()
    );

    // Every job completed exactly once, and each LLM job was credited once.
    let pool = sqlx::PgPool::connect(&url).await.expect("database");
    let (jobs, completed): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE status = 'completed') FROM jobs")
            .fetch_one(&pool)
            .await
            .expect("count jobs");
    assert_eq!(jobs, completed, "every job completed");
    assert_eq!(jobs, 10 + 1 + 2 + 80 + 8, "no job was lost or duplicated");
    let (llm_jobs, credits): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs WHERE kind = 'llm'), \
                (SELECT count(*) FROM ledger WHERE entry = 'accrual')",
    )
    .fetch_one(&pool)
    .await
    .expect("count credits");
    assert_eq!((llm_jobs, credits), (2, 2), "one credit per LLM job");
    pool.close().await;
}
