//! The cheater lab: honest agents and cheating agents mine the tiny demo models against one
//! coordinator whose reviewer audits them, re-executing on a trusted validator.
//!
//! Honest agents differ the way honest machines do: libtorch thread counts, f32 against bf16
//! weights, and a CPU of an older generation (libtorch's and MKL's vector kernels held to
//! what an older instruction set has, so every matmul and activation rounds differently). Each cheating agent is `infermine-cheat-agent` (the agent built with the
//! test-only `cheat-lab` feature, which the release agent never has) in one mode:
//! fewer steps, a half-size render scaled up, another model, canned text, tampered weights,
//! inflated timings, a claimed H100. The lab asserts every cheat is slashed by policy within
//! [`MAX_JOBS_UNTIL_CAUGHT`] of its jobs, and that at least [`honest_jobs`] honest jobs bring
//! no case at all against an honest GPU; it prints detection, false slashes and the
//! re-execution overhead once every GPU is past its warm-up:
//!
//! `cheater-lab: detection=<percent> false_slashes=<n> honest_jobs=<n> overhead=<percent>`
//!
//! Run alone with `cargo test --release -p infermine-tests --test cheater_lab -- --nocapture`
//! (it builds `infermine-cheat-agent` itself); `INFERMINE_CHEATER_LAB_HONEST_JOBS` changes
//! the honest job count (default 1000).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use infermine_tests::{AgentProcess, Backend, TestServer, agent_binary, synth_models};

#[path = "cheater_lab/figures.rs"]
mod figures;
use figures::{
    cases_by_miner, completed_by_miner, jobs_before, ledger_balance, seeded_shares, steady_state,
    suspended,
};
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// Prints a lab line to stderr past the test harness's capture, so `cargo test` shows the
/// figures without `--nocapture`.
macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// A cheat must be slashed within this many of its completed jobs.
const MAX_JOBS_UNTIL_CAUGHT: i64 = 50;

/// Jobs a GPU runs before its audits thin out: the review's warm-up, plus slack.
const WARM_UP_JOBS: i64 = 20;

const LLM: &str = "tiny-llama";
const OTHER_LLM: &str = "tiny-mistral";
const IMAGE: &str = "tiny-sd15";

/// How many honest jobs the lab runs before it stops.
fn honest_jobs() -> i64 {
    std::env::var("INFERMINE_CHEATER_LAB_HONEST_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

/// A cheat mode, the model its agent serves, and what it does.
struct Cheat {
    mode: &'static str,
    models: &'static [&'static str],
    /// Serves from the tampered copy of the models.
    tampered: bool,
}

const CHEATS: &[Cheat] = &[
    Cheat {
        mode: "fewer-steps",
        models: &[IMAGE],
        tampered: false,
    },
    Cheat {
        mode: "upscale",
        models: &[IMAGE],
        tampered: false,
    },
    Cheat {
        mode: "other-model=tiny-mistral",
        models: &[LLM, OTHER_LLM],
        tampered: false,
    },
    Cheat {
        mode: "canned-text",
        models: &[LLM],
        tampered: false,
    },
    Cheat {
        mode: "tampered-weights",
        models: &[IMAGE],
        tampered: true,
    },
    Cheat {
        mode: "fake-latency",
        models: &[LLM, IMAGE],
        tampered: false,
    },
    Cheat {
        mode: "fake-gpu",
        models: &[LLM, IMAGE],
        tampered: false,
    },
];

/// An honest agent: its name, command-line knobs and environment.
type Honest = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

/// The honest agents: the knobs that make honest machines differ.
const HONEST: &[Honest] = &[
    ("honest-default", &[], &[]),
    ("honest-1-thread", &["--threads", "1"], &[]),
    ("honest-bf16", &["--precision", "bf16"], &[]),
    (
        "honest-2-threads",
        &["--threads", "2", "--precision", "f32"],
        &[],
    ),
    // Another device, as far as a CPU-only machine has one: ATen's portable kernels instead
    // of AVX2/AVX-512 ones, and MKL's SSE4.2 GEMM. Sums round in another order throughout.
    (
        "honest-older-cpu",
        &[],
        &[
            ("ATEN_CPU_CAPABILITY", "default"),
            ("MKL_ENABLE_INSTRUCTIONS", "SSE4_2"),
        ],
    ),
];

/// The lab's agent binary with the cheats compiled in, built next to `infermine-agent`.
fn cheat_agent_binary() -> PathBuf {
    let agent = agent_binary().expect("agent binary");
    let dir = agent.parent().expect("target dir");
    infermine_tests::cargo_build(&[
        "-p",
        "infermine-agent",
        "--features",
        "cheat-lab",
        "--bin",
        "infermine-cheat-agent",
    ]);
    let binary = dir.join("infermine-cheat-agent");
    assert!(binary.is_file(), "{} was not built", binary.display());
    binary
}

/// Copies `from` to `to`, negating every weight of the image model's UNet: finite, loadable,
/// and a different model.
fn tamper(from: &Path, to: &Path) {
    let copy = std::process::Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(copy.success());
    let path = to
        .join(IMAGE)
        .join("unet")
        .join("diffusion_pytorch_model.safetensors");
    let mut bytes = std::fs::read(&path).expect("read the UNet");
    let header = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let meta: Value = serde_json::from_slice(&bytes[8..8 + header]).expect("safetensors header");
    let data = 8 + header;
    for (name, tensor) in meta.as_object().expect("header object") {
        if name == "__metadata__" {
            continue;
        }
        let width = match tensor["dtype"].as_str() {
            Some("F32") => 4,
            Some("F16" | "BF16") => 2,
            _ => continue,
        };
        let offsets = &tensor["data_offsets"];
        let (start, end) = (
            data + offsets[0].as_u64().expect("start") as usize,
            data + offsets[1].as_u64().expect("end") as usize,
        );
        // The sign bit sits in the last byte of each little-endian value.
        for value in bytes[start..end].chunks_exact_mut(width) {
            value[width - 1] ^= 0x80;
        }
    }
    std::fs::write(&path, bytes).expect("write the tampered UNet");
}

struct Miner {
    name: String,
    wallet: String,
    miner_id: String,
    cheat: Option<&'static str>,
    _process: AgentProcess,
}

fn wallet(n: usize) -> String {
    format!("0x{:040x}", 0x00c0_ffee_0000_u64 + n as u64)
}

async fn admin_call(
    http: &reqwest::Client,
    server: &TestServer,
    admin: &str,
    method: reqwest::Method,
    path: &str,
) -> Value {
    let response = http
        .request(method, format!("{}{path}", server.http()))
        .bearer_auth(admin)
        .send()
        .await
        .expect("send");
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

/// One job of the lab's traffic: a short chat or a small image, with varied seeds.
fn job(n: u64) -> (&'static str, Value) {
    if n.is_multiple_of(2) {
        (
            LLM,
            json!({
                "messages": [{"role": "user", "content": format!("Tell me about job {n}.")}],
                "max_tokens": 12,
                "temperature": 0.9,
                "top_p": 0.95,
                "seed": n,
            }),
        )
    } else {
        (
            IMAGE,
            json!({
                "prompt": format!("a lighthouse, picture {n}"),
                "width": 64, "height": 64, "steps": 4, "seed": n,
            }),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cheater_lab() {
    let started = Instant::now();
    let cheat_binary = cheat_agent_binary();
    let server = TestServer::start_with(&Backend::Sqlite, |config| {
        config.review.interval_ms = 100;
        config.review.probe_rate = 0.01;
        config.review.validation_timeout_s = 300;
        config.agent_timeout_s = 30;
    })
    .await;
    let models = tempfile::tempdir().expect("models dir");
    let honest_models = models.path().join("honest");
    std::fs::create_dir_all(&honest_models).expect("mkdir");
    synth_models(&honest_models, &[LLM, OTHER_LLM, IMAGE]).await;
    let tampered_models = models.path().join("tampered");
    tamper(&honest_models, &tampered_models);
    let db = sqlx::SqlitePool::connect(&server.config.database_url())
        .await
        .expect("open the coordinator's database");
    let ledger_db = infermine_server::open_db(&server.config)
        .await
        .expect("open db");
    let admin =
        infermine_server::mint_admin_token(&server.config, "lab", Duration::from_secs(3600))
            .await
            .expect("admin token");
    let http = reqwest::Client::new();

    // The validator: connect once to be known, become a validator, reconnect as one.
    let validator_wallet = wallet(0);
    let validator_token =
        infermine_server::mint_miner_token(&server.config, &validator_wallet, "validator")
            .await
            .expect("token");
    let serve = |models: &[&str], dir: &Path| -> Vec<String> {
        let mut args = vec![
            "--models-dir".to_owned(),
            dir.to_string_lossy().into_owned(),
        ];
        for model in models {
            args.extend(["--model".to_owned(), (*model).to_owned()]);
        }
        args
    };
    let validator_args = serve(&[LLM, OTHER_LLM, IMAGE], &honest_models);
    let validator_args: Vec<&str> = validator_args.iter().map(String::as_str).collect();
    let mut validator = AgentProcess::spawn(&server, &validator_token, &validator_args).await;
    server.wait_slots(1).await;
    let validator_id = format!("{validator_wallet}-validator-gpu0");
    admin_call(
        &http,
        &server,
        &admin,
        reqwest::Method::PUT,
        &format!("/api/v1/admin/validators/{validator_id}"),
    )
    .await;
    validator.kill().await;
    server.wait_slots(0).await;
    let _validator = AgentProcess::spawn(&server, &validator_token, &validator_args).await;
    server.wait_slots(1).await;

    // Honest and cheating miners, each with a wallet of its own.
    let mut miners = Vec::new();
    for (n, (name, knobs, env)) in HONEST.iter().enumerate() {
        let wallet = wallet(1 + n);
        let token = infermine_server::mint_miner_token(&server.config, &wallet, name)
            .await
            .expect("token");
        let mut args = serve(&[LLM, IMAGE], &honest_models);
        args.extend(knobs.iter().map(|k| (*k).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let binary = agent_binary().expect("agent binary");
        let process = AgentProcess::spawn_binary(
            &binary,
            env,
            &server.ws(),
            server.data_dir(),
            &token,
            &args,
        )
        .await;
        miners.push(Miner {
            miner_id: format!("{wallet}-{name}-gpu0"),
            name: (*name).to_owned(),
            wallet,
            cheat: None,
            _process: process,
        });
    }
    for (n, cheat) in CHEATS.iter().enumerate() {
        let wallet = wallet(100 + n);
        let name = format!("cheat-{}", n + 1);
        let token = infermine_server::mint_miner_token(&server.config, &wallet, &name)
            .await
            .expect("token");
        let dir = if cheat.tampered {
            &tampered_models
        } else {
            &honest_models
        };
        let args = serve(cheat.models, dir);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = AgentProcess::spawn_binary(
            &cheat_binary,
            &[("INFERMINE_CHEAT", cheat.mode)],
            &server.ws(),
            server.data_dir(),
            &token,
            &args,
        )
        .await;
        miners.push(Miner {
            miner_id: format!("{wallet}-{name}-gpu0"),
            name,
            wallet,
            cheat: Some(cheat.mode),
            _process: process,
        });
    }
    server.wait_slots(1 + miners.len() as u64).await;
    report!(
        "cheater-lab: {} honest and {} cheating agents and a validator connected after {:.0?}",
        HONEST.len(),
        CHEATS.len(),
        started.elapsed()
    );

    // Traffic until enough honest jobs are done and every cheat is suspended (or got away).
    let target = honest_jobs();
    let stop = Arc::new(AtomicBool::new(false));
    let mut traffic = JoinSet::new();
    for worker in 0..8u64 {
        let client = server.client();
        let stop = Arc::clone(&stop);
        traffic.spawn(async move {
            let mut n = worker;
            while !stop.load(Ordering::Relaxed) {
                let (model, params) = job(n);
                n += 8;
                let (status, body) = client.submit(model, params).await;
                if status != 202 && status != 200 {
                    // Only while every GPU that serves the model is suspended or busy being
                    // slashed: try again shortly.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    eprintln!("submit: {status} {body}");
                    continue;
                }
                let id = body["id"].as_str().expect("job id").to_owned();
                client.wait_final(&id, Duration::from_secs(600)).await;
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(3000);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let counts = completed_by_miner(&db).await;
        let honest: i64 = miners
            .iter()
            .filter(|m| m.cheat.is_none())
            .map(|m| counts.get(&m.miner_id).copied().unwrap_or(0))
            .sum();
        let suspended = suspended(&db).await;
        let open_cheats: Vec<&Miner> = miners
            .iter()
            .filter(|m| m.cheat.is_some() && !suspended.contains(&m.miner_id))
            .collect();
        let runaway = open_cheats
            .iter()
            .find(|m| counts.get(&m.miner_id).copied().unwrap_or(0) > MAX_JOBS_UNTIL_CAUGHT);
        if let Some(m) = runaway {
            panic!(
                "cheat `{}` ({}) ran more than {MAX_JOBS_UNTIL_CAUGHT} jobs unslashed",
                m.cheat.unwrap_or_default(),
                m.name
            );
        }
        if honest >= target && open_cheats.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lab did not finish: {honest}/{target} honest jobs, cheats still free: {:?}",
            open_cheats.iter().map(|m| m.cheat).collect::<Vec<_>>()
        );
    }
    stop.store(true, Ordering::Relaxed);
    while traffic.join_next().await.is_some() {}
    // Let the reviewer settle what is still pending.
    let settle_deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let stats = admin_call(
            &http,
            &server,
            &admin,
            reqwest::Method::GET,
            "/api/v1/admin/review/stats",
        )
        .await;
        if stats["pending"].as_i64() == Some(0) {
            break;
        }
        assert!(
            Instant::now() < settle_deadline,
            "reviews still pending: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The figures.
    let counts = completed_by_miner(&db).await;
    let cases = cases_by_miner(&db).await;
    let mut caught = 0;
    for m in miners.iter().filter(|m| m.cheat.is_some()) {
        let slashed = cases.get(&m.miner_id).map(|c| c.slashed_at).unwrap_or(None);
        let jobs_until = match slashed {
            Some(at) => Some(jobs_before(&db, &m.miner_id, at).await),
            None => None,
        };
        let checks = cases
            .get(&m.miner_id)
            .map(|c| c.checks.join(","))
            .unwrap_or_default();
        report!(
            "cheater-lab: mode={} jobs={} jobs_until_caught={} checks={}",
            m.cheat.unwrap_or_default(),
            counts.get(&m.miner_id).copied().unwrap_or(0),
            jobs_until.map_or("never".to_owned(), |n| n.to_string()),
            checks
        );
        if let Some(n) = jobs_until {
            assert!(
                n <= MAX_JOBS_UNTIL_CAUGHT,
                "{} caught only after {n} jobs",
                m.name
            );
            caught += 1;
        }
        let slashed = ledger_balance(&ledger_db, &m.wallet).await;
        assert!(slashed > 0, "the policy's slash is in {}'s ledger", m.name);
    }
    let honest: Vec<&Miner> = miners.iter().filter(|m| m.cheat.is_none()).collect();
    let honest_jobs: i64 = honest
        .iter()
        .map(|m| counts.get(&m.miner_id).copied().unwrap_or(0))
        .sum();
    let false_slashes = honest
        .iter()
        .filter(|m| {
            cases
                .get(&m.miner_id)
                .is_some_and(|c| c.slashed_at.is_some())
        })
        .count();
    for m in &honest {
        if let Some(c) = cases.get(&m.miner_id) {
            report!("cheater-lab: honest {} has cases {:?}", m.name, c.checks);
            for figures in &c.figures {
                report!("cheater-lab:   evidence {figures}");
            }
        }
    }
    for m in &honest {
        let shares = seeded_shares(&db, &m.miner_id).await;
        if !shares.is_empty() {
            let mean = shares.iter().sum::<f64>() / shares.len() as f64;
            let min = shares.iter().copied().fold(f64::INFINITY, f64::min);
            report!(
                "cheater-lab: {} LLM audits of {}: seeded share mean {mean:.3}, min {min:.3}",
                shares.len(),
                m.name
            );
        }
    }
    let (steady_jobs, steady_audits) = steady_state(&db, &honest).await;
    let overhead = 100.0 * steady_audits as f64 / steady_jobs.max(1) as f64;
    let detection = 100.0 * caught as f64 / CHEATS.len() as f64;
    report!(
        "cheater-lab: detection={detection:.1}% false_slashes={false_slashes} \
         honest_jobs={honest_jobs} overhead={overhead:.1}%"
    );
    report!(
        "cheater-lab: steady state = honest jobs after each GPU's first {WARM_UP_JOBS}: {steady_jobs} jobs, \
         {steady_audits} re-executed; took {:.0?}",
        started.elapsed()
    );
    let honest_cases: usize = honest
        .iter()
        .filter(|m| cases.contains_key(&m.miner_id))
        .count();
    assert_eq!(honest_cases, 0, "no case against an honest GPU");
    assert_eq!(false_slashes, 0);
    assert!(honest_jobs >= target, "{honest_jobs} honest jobs");
    assert!(detection >= 99.0, "detection {detection}%");
    assert!(
        overhead <= 10.0,
        "re-execution overhead {overhead}% in the steady state"
    );
    db.close().await;
    ledger_db.close().await;
}
