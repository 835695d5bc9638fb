//! Points end to end: jobs of each of the seed's seven models run through the real gateway,
//! and the ledger credits each by the seed's formulas (hand-computed here), applies the NFT
//! boost to at most 3 GPUs per NFT, never credits a job twice, and the portal API reads back
//! exactly what was credited.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use infermine_protocol::{
    AgentMessage, CoordinatorMessage, DeviceKind, GpuInfo, Hello, JobOutput, JobParams, JobResult,
    LlmUsage, Metrics, ModelInfo, PROTOCOL_VERSION,
};
use infermine_server::ledger::holdings::Token;
use infermine_tests::raw::{Frame, RawAgent};
use infermine_tests::{Backend, TestServer, WALLET};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::on_both_databases;

const MODELS: [&str; 7] = [
    "stable-diffusion-1.5",
    "sdxl-base-1.0",
    "sdxl-base-1.0-offset-lora",
    "flux.1-dev-nf4",
    "dolphin-2.9-llama3-8b",
    "openhermes-2-pro-mistral-7b",
    "openhermes-mixtral-8x7b-gptq",
];

/// A rig of four H100s serving every model (the test peer claims what it likes: the point is
/// the coordinator's arithmetic, not the hardware).
fn h100_hello(token: &str) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: "raw-test-agent".to_owned(),
        token: token.to_owned(),
        gpus: (0..4)
            .map(|index| GpuInfo {
                index,
                kind: DeviceKind::Cuda,
                uuid: format!("GPU-h100-{index}"),
                name: "NVIDIA H100 80GB HBM3".to_owned(),
                vram_mb: 81_559,
            })
            .collect(),
        models: MODELS
            .iter()
            .map(|id| ModelInfo {
                id: (*id).to_owned(),
                sha256: String::new(),
            })
            .collect(),
    }
}

/// A prompt long enough for the 1200 prompt tokens the chat results claim (the coordinator
/// refuses more prompt tokens than a prompt's bytes can make).
const LONG_PROMPT: &str = concat!(
    "Tell me, in as many words as it takes and then some more, everything you know about the ",
    "lighthouses of the northern coast: who built them, when and why, how their lamps and ",
    "lenses worked before electricity, how the keepers lived through the long winters, which ",
    "storms and shipwrecks made them famous, how the lights were automated, and which of them ",
    "still stand today and can be visited. Then do the same for the lighthouses of the ",
    "southern coast, and compare the two, region by region, century by century, keeper by ",
    "keeper, lamp by lamp, lens by lens, storm by storm, shipwreck by shipwreck. After that, ",
    "describe the fog signals, the horns, the bells and the guns that went with the lights, ",
    "the signal codes ships used to talk to the keepers, the supply boats that brought oil ",
    "and food, and the families who grew up on the rocks. Finish with the stories the keepers ",
    "told each other on the long nights, the ghosts they swore they saw, the animals they ",
    "kept, the gardens they planted in the salt wind, the logbooks they wrote, the letters ",
    "they sent home, and what became of them when the lights no longer needed anyone at all. ",
    "Take your time, leave nothing out, and write it all down in full sentences, please."
);

/// The request for each model and the micro-points it earns before any boost, worked out by
/// hand from the seed: Waifu = w·h·steps ÷ (512·512·20) × multiplier; Llama = (prompt +
/// completion tokens) ÷ 1000 × multiplier.
fn cases() -> Vec<(&'static str, Value, i64)> {
    let image = |w: u32, h: u32, steps: u32| json!({ "prompt": "a lighthouse at dusk", "width": w, "height": h, "steps": steps });
    let chat =
        json!({ "messages": [{ "role": "user", "content": LONG_PROMPT }], "max_tokens": 600 });
    vec![
        // 512·512·25 = 6,553,600 ÷ 5,242,880 = 1.25 × 0.3 = 0.375
        ("stable-diffusion-1.5", image(512, 512, 25), 375_000),
        // 1024·1024·30 ÷ 5,242,880 = 6 × 1
        ("sdxl-base-1.0", image(1024, 1024, 30), 6_000_000),
        // 1024·768·20 = 15,728,640 ÷ 5,242,880 = 3 × 1.2 = 3.6
        ("sdxl-base-1.0-offset-lora", image(1024, 768, 20), 3_600_000),
        // 1024·1024·20 ÷ 5,242,880 = 4 × 10
        ("flux.1-dev-nf4", image(1024, 1024, 20), 40_000_000),
        // (1200 + 300) ÷ 1000 = 1.5 × 0.24 = 0.36
        ("dolphin-2.9-llama3-8b", chat.clone(), 360_000),
        // 1500 ÷ 1000 × 0.2 = 0.3
        ("openhermes-2-pro-mistral-7b", chat.clone(), 300_000),
        // 1500 ÷ 1000 × 1 = 1.5
        ("openhermes-mixtral-8x7b-gptq", chat, 1_500_000),
    ]
}

/// What an honest engine would return (token counts fixed at 1200 + 300).
fn output_for(params: &JobParams) -> JobOutput {
    match params {
        JobParams::Image(p) => {
            let png = infermine_tests::raw::png_header(p.width, p.height, b"");
            JobOutput::Image {
                width: p.width,
                height: p.height,
                size_bytes: png.len() as u64,
                sha256: hex::encode(Sha256::digest(&png)),
                png_b64: Some(base64::engine::general_purpose::STANDARD.encode(&png)),
            }
        }
        JobParams::Llm(_) => JobOutput::Text {
            text: "Hello! How can I help?".to_owned(),
            usage: LlmUsage {
                prompt_tokens: 1200,
                completion_tokens: 300,
            },
            finish_reason: "stop".to_owned(),
            token_ids: Vec::new(),
        },
        JobParams::Synthetic(_) => infermine_tests::raw::synthetic_output(params),
        JobParams::LlmScore(_) => unreachable!("consumers never submit scoring jobs"),
    }
}

async fn import_nfts(server: &TestServer, count: u32) {
    let path = server.data_dir().join("holdings.csv");
    std::fs::write(&path, format!("address,count\n{WALLET},{count}\n")).expect("write csv");
    // What `infermine-server nft import holdings.csv` runs.
    let holders = infermine_server::import_holdings(&server.config, Token::Nft, &path)
        .await
        .expect("import");
    assert_eq!(holders, 1);
}

async fn seven_models_earn_by_the_seed(backend: Backend) {
    let server = TestServer::start(&backend).await;
    // One NFT boosts 3 GPUs by ×1.1 (the default table); the rig has 4.
    import_nfts(&server, 1).await;
    let token = server.miner_token("h100rig").await;
    let (mut agent, _) = RawAgent::join_with(&server.ws(), h100_hello(&token))
        .await
        .expect("join");

    let client = server.client();
    let mut expected_base: HashMap<String, (&str, i64)> = HashMap::new();
    for (model, params, base) in cases() {
        let id = client.submit_ok(model, params).await;
        expected_base.insert(id, (model, base));
    }

    // Serve every job; answer one job twice in a row (a duplicate must not credit twice).
    let mut slot_of: HashMap<String, u32> = HashMap::new();
    let mut duplicated = None;
    while slot_of.len() < expected_base.len() {
        let job = match agent.next(Duration::from_secs(10)).await {
            Frame::Message(CoordinatorMessage::Job(job)) => job,
            Frame::Message(_) => continue,
            other => panic!("expected jobs, got {other:?}"),
        };
        slot_of.insert(job.id.to_string(), job.slot);
        let result = AgentMessage::Result(JobResult {
            job: job.id,
            output: output_for(&job.params),
            metrics: Metrics::default(),
        });
        agent.send(&result).await.expect("result");
        if duplicated.is_none() {
            agent.send(&result).await.expect("duplicate result");
            duplicated = Some(job.id.to_string());
        }
    }

    let mut total: HashMap<&str, i64> = HashMap::new();
    for (id, (model, base)) in &expected_base {
        let job = client.wait_final(id, Duration::from_secs(10)).await;
        assert_eq!(job["status"], "completed", "{model}: {job}");
        // GPUs 0-2 are the three the NFT covers (same first-seen time; ties by miner id).
        let boosted = slot_of[id] < 3;
        let expected = if boosted { base * 11 / 10 } else { *base };
        let kind = if model.starts_with("dolphin") || model.starts_with("openhermes") {
            "llama"
        } else {
            "waifu"
        };
        *total.entry(kind).or_default() += expected;
    }

    // The ledger, as the portal reads it.
    let ledger = server
        .get_json(&format!("/api/v1/wallets/{WALLET}/ledger?limit=50"))
        .await;
    let entries = ledger["entries"].as_array().expect("entries");
    assert_eq!(
        entries.len(),
        MODELS.len(),
        "one credit per job, none for the duplicate: {ledger}"
    );
    for entry in entries {
        let id = entry["job_id"].as_str().expect("job id");
        let (model, base) = expected_base[id];
        let boosted = slot_of[id] < 3;
        assert_eq!(entry["model"], model);
        assert_eq!(entry["entry"], "accrual");
        assert_eq!(entry["detail"]["base"], base, "{model}: {entry}");
        assert_eq!(entry["detail"]["latency_factor"], 1.0, "{model}: {entry}");
        assert_eq!(entry["detail"]["boost"]["applies"], boosted, "{model}");
        let expected = if boosted { base * 11 / 10 } else { base };
        assert_eq!(entry["amount"]["micro"], expected, "{model}: {entry}");
    }

    let wallet = server.get_json(&format!("/api/v1/wallets/{WALLET}")).await;
    assert_eq!(wallet["balances"]["waifu"]["micro"], total["waifu"]);
    assert_eq!(wallet["balances"]["llama"]["micro"], total["llama"]);
    assert_eq!(wallet["boost"]["nft_held"], 1);
    assert_eq!(wallet["boost"]["gpus_covered"], 3);
    let boosted: Vec<&str> = wallet["boost"]["boosted_miners"]
        .as_array()
        .expect("boosted")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        boosted,
        (0..3)
            .map(|i| format!("{WALLET}-h100rig-gpu{i}"))
            .collect::<Vec<_>>(),
        "at most 3·n GPUs, oldest first"
    );
    let miners = wallet["miners"].as_array().expect("miners");
    assert_eq!(miners.len(), 4);
    assert!(miners.iter().all(|m| m["online"] == true));
    let jobs_24h: i64 = miners.iter().filter_map(|m| m["jobs_24h"].as_i64()).sum();
    assert_eq!(
        jobs_24h,
        expected_base.len() as i64,
        "each job once, on its GPU"
    );
    assert!(
        miners
            .iter()
            .filter(|m| m["jobs_24h"].as_i64() > Some(0))
            .all(|m| m["mean_latency_ms_24h"].as_f64().is_some())
    );

    let history = server
        .get_json(&format!(
            "/api/v1/wallets/{WALLET}/points-history?bucket=day&days=7"
        ))
        .await;
    let series = history["series"].as_array().expect("series");
    assert_eq!(series.len(), 7);
    let today = series.last().expect("today");
    assert_eq!(today["waifu"]["micro"], total["waifu"]);
    assert_eq!(today["llama"]["micro"], total["llama"]);

    let board = server
        .get_json("/api/v1/leaderboard?kind=waifu&period=24h")
        .await;
    assert_eq!(board["rows"][0]["address"], WALLET);
    assert_eq!(board["rows"][0]["points"]["micro"], total["waifu"]);

    let busiest = slot_of
        .values()
        .fold(HashMap::<u32, i64>::new(), |mut counts, slot| {
            *counts.entry(*slot).or_default() += 1;
            counts
        });
    let (slot, jobs) = busiest.iter().max_by_key(|(_, n)| **n).expect("a slot");
    let miner = server
        .get_json(&format!("/api/v1/miners/{WALLET}-h100rig-gpu{slot}"))
        .await;
    assert_eq!(miner["jobs_24h"], *jobs);
    assert_eq!(miner["online"], true);
    assert_eq!(miner["gpu"], "NVIDIA H100 80GB HBM3");
    assert!(miner["mean_latency_ms_24h"].as_f64().is_some());
    assert!(
        miner["models"]
            .as_array()
            .expect("models")
            .iter()
            .any(|m| m == "flux.1-dev-nf4")
    );
    assert!(duplicated.is_some());
}

on_both_databases!(seven_models_earn_by_the_seed);

/// Credits, duplicate results and admin slashes all at once: every job is credited exactly
/// once, a case slashes once, and the balance is exactly the credits less the slashes.
async fn balances_stay_exact_under_concurrency(backend: Backend) {
    const JOBS: usize = 40;
    // (1200 + 300) ÷ 1000 × 0.24 (dolphin-2.9-llama3-8b), no boost.
    const PER_JOB: i64 = 360_000;
    let server = TestServer::start(&backend).await;
    let admin = infermine_server::mint_admin_token(&server.config, "e2e", Duration::from_secs(600))
        .await
        .expect("admin token");
    let token = server.miner_token("h100rig").await;
    let (mut agent, _) = RawAgent::join_with(&server.ws(), h100_hello(&token))
        .await
        .expect("join");
    let client = server.client();
    let chat = json!({ "messages": [{ "role": "user", "content": LONG_PROMPT }] });
    let ids: Vec<String> = futures_util::future::join_all(
        (0..JOBS).map(|_| client.submit_ok("dolphin-2.9-llama3-8b", chat.clone())),
    )
    .await;

    // Slashes race the credits (they start once a quarter of the results are in): five
    // cases, and one of them sent three times.
    let http = reqwest::Client::new();
    let slash_url = format!("{}/api/v1/admin/slashes", server.http());
    let cases: Vec<uuid::Uuid> = (0..5).map(|_| uuid::Uuid::now_v7()).collect();
    let slashes = {
        let (http, admin, cases) = (http.clone(), admin.clone(), cases.clone());
        async move {
            let sends = cases
                .iter()
                .chain(std::iter::repeat_n(&cases[0], 2))
                .map(|case| {
                    let body = json!({
                        "address": WALLET, "kind": "llama", "fraction": 0.1,
                        "reason": "concurrency test", "case_id": case,
                    });
                    http.post(&slash_url).bearer_auth(&admin).json(&body).send()
                });
            let mut taken = 0i64;
            let mut recorded = 0;
            for response in futures_util::future::join_all(sends).await {
                let response = response.expect("send");
                assert_eq!(response.status(), 200);
                let body: Value = response.json().await.expect("json");
                let outcome = &body["slashes"][0];
                taken += outcome["amount"]["micro"].as_i64().expect("amount");
                recorded += usize::from(outcome["recorded"] == true);
            }
            (taken, recorded)
        }
    };
    let mut slashes = Some(slashes);
    let mut slashing = None;

    let mut answered = std::collections::HashSet::new();
    while answered.len() < JOBS {
        let job = match agent.next(Duration::from_secs(10)).await {
            Frame::Message(CoordinatorMessage::Job(job)) => job,
            Frame::Message(_) => continue,
            other => panic!("expected jobs, got {other:?}"),
        };
        let result = AgentMessage::Result(JobResult {
            job: job.id,
            output: output_for(&job.params),
            metrics: Metrics::default(),
        });
        // The same result three times, back to back.
        for _ in 0..3 {
            agent.send(&result).await.expect("result");
        }
        answered.insert(job.id);
        if answered.len() == JOBS / 4 {
            slashing = slashes.take().map(tokio::spawn);
        }
    }
    for id in &ids {
        let job = client.wait_final(id, Duration::from_secs(10)).await;
        assert_eq!(job["status"], "completed", "{job}");
    }
    let (taken, recorded) = slashing.expect("started").await.expect("slashes");
    assert!(taken > 0, "the slashes found points to take");
    assert_eq!(recorded, 5, "one slash per case");

    // Read the whole ledger back, page by page.
    let mut entries = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/wallets/{WALLET}/ledger?limit=7");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = server.get_json(&path).await;
        entries.extend(page["entries"].as_array().expect("entries").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let accruals: Vec<&Value> = entries.iter().filter(|e| e["entry"] == "accrual").collect();
    let credited: std::collections::HashSet<&str> = accruals
        .iter()
        .map(|e| e["job_id"].as_str().expect("job id"))
        .collect();
    assert_eq!(accruals.len(), JOBS, "one credit per job");
    assert_eq!(credited.len(), JOBS, "no job credited twice");
    assert!(accruals.iter().all(|e| e["amount"]["micro"] == PER_JOB));
    let slashes: Vec<&Value> = entries.iter().filter(|e| e["entry"] == "slash").collect();
    assert_eq!(slashes.len(), 5);
    let sum: i64 = entries
        .iter()
        .map(|e| e["amount"]["micro"].as_i64().expect("amount"))
        .sum();
    assert_eq!(sum, JOBS as i64 * PER_JOB - taken);

    let wallet = server.get_json(&format!("/api/v1/wallets/{WALLET}")).await;
    assert_eq!(
        wallet["balances"]["llama"]["micro"], sum,
        "the balance is the ledger's sum"
    );
    let public = server
        .get_json(&format!("/api/v1/slashes?address={WALLET}"))
        .await;
    assert_eq!(public["entries"].as_array().expect("slashes").len(), 5);
    assert_eq!(public["entries"][0]["reason"], "concurrency test");
}

on_both_databases!(balances_stay_exact_under_concurrency);

/// Admin routes refuse wallets and strangers; suspension closes the miner's session and keeps
/// it out until lifted.
async fn admins_suspend_and_slash_and_no_one_else(backend: Backend) {
    let server = TestServer::start(&backend).await;
    let admin = infermine_server::mint_admin_token(&server.config, "e2e", Duration::from_secs(600))
        .await
        .expect("admin token");
    let token = server.miner_token("h100rig").await;
    let (mut agent, welcome) = RawAgent::join_with(&server.ws(), h100_hello(&token))
        .await
        .expect("join");
    assert_eq!(welcome.slots.len(), 4);
    let http = reqwest::Client::new();
    let post = |path: String, token: Option<String>, body: Value| {
        let request = http.post(format!("{}{path}", server.http())).json(&body);
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        async move {
            let response = request.send().await.expect("send");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let gpu0 = format!("{WALLET}-h100rig-gpu0");
    let suspend = format!("/api/v1/admin/miners/{gpu0}/suspend");
    let reason = json!({ "reason": "tampered model files" });
    let (status, body) = post(suspend.clone(), None, reason.clone()).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    let (status, _) = post(suspend.clone(), Some(token.clone()), reason.clone()).await;
    assert_eq!(status, 401, "a miner token is not an admin token");
    let (status, _) = post(
        "/api/v1/admin/slashes".to_owned(),
        None,
        json!({ "address": WALLET, "fraction": 1.0, "reason": "x" }),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = post(
        "/api/v1/admin/slashes".to_owned(),
        Some(admin.clone()),
        json!({ "address": WALLET, "fraction": 1.0, "points": 3.0, "reason": "x" }),
    )
    .await;
    assert_eq!(status, 400, "points and fraction together: {body}");
    let (status, _) = post(
        format!("/api/v1/admin/miners/{WALLET}-nosuchrig-gpu0/suspend"),
        Some(admin.clone()),
        reason.clone(),
    )
    .await;
    assert_eq!(status, 404);

    let (status, body) = post(suspend, Some(admin.clone()), reason).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["disconnected"], true);
    let (code, why) = agent.closed(Duration::from_secs(10)).await;
    assert_eq!(code, 4006);
    assert!(why.contains("tampered model files"), "{why}");

    // Back with the same token: the suspended GPU is left out, the others work.
    let (_agent, welcome) = RawAgent::join_with(&server.ws(), h100_hello(&token))
        .await
        .expect("join");
    let ids: Vec<&str> = welcome.slots.iter().map(|s| s.miner_id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    assert!(!ids.contains(&gpu0.as_str()));
    let miner = server.get_json(&format!("/api/v1/miners/{gpu0}")).await;
    assert_eq!(miner["suspension"]["reason"], "tampered model files");
    assert_eq!(miner["online"], false);

    let (status, _) = post(
        format!("/api/v1/admin/miners/{gpu0}/unsuspend"),
        Some(admin),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let miner = server.get_json(&format!("/api/v1/miners/{gpu0}")).await;
    assert_eq!(miner["suspension"], Value::Null);
}

on_both_databases!(admins_suspend_and_slash_and_no_one_else);
