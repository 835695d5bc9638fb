//! The portal in a real browser. A coordinator (SQLite, embedded S3) and a real agent serving
//! tiny demo models mine chat and image jobs for the demo wallet, which holds NFTs; an admin
//! slashes it once by hand and three anti-cheat cases are opened against it with evidence that
//! points at the stored images and text. Then the browser tests in `web-portal/tests/` drive
//! headless Chromium over every page (Playwright's `playwright-core`, Debian's `chromium`):
//! they read the API and assert the pages show the same numbers and rows, sign in with an
//! injected EIP-1193 wallet to mint and revoke a miner token, slash a case from the admin page
//! and see the balance fall, and save a screenshot of each page.
//!
//! Needs the built portal and its test tools (`scripts/setup.sh` installs and builds both)
//! and Chromium at `/usr/bin/chromium` (or `$CHROMIUM`). Screenshots land in
//! `target/tmp/portal-screenshots/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use infermine_server::ledger::holdings::{self, CsvSnapshot, Token};
use infermine_server::points::Season;
use infermine_server::review::cases::{self, Check, NewCase};
use infermine_tests::{AgentProcess, Backend, TestServer, WALLET, synth_models};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const LLM: &str = "tiny-llama";
const IMAGE: &str = "tiny-sd15";
/// A valid address that never mined: the portal's empty state.
const EMPTY_WALLET: &str = "0x00000000000000000000000000000000000e4417";

fn portal_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../web-portal")
}

/// What the browser tests need, or a panic that says how to get it.
fn preconditions() -> PathBuf {
    let portal = portal_dir();
    let setup = "run scripts/setup.sh: it installs the portal's packages and builds it";
    assert!(
        portal.join("dist/index.html").is_file(),
        "the portal is not built ({}/dist/index.html is missing): {setup}",
        portal.display()
    );
    assert!(
        portal.join("node_modules/playwright-core").is_dir(),
        "the portal's test packages are not installed: {setup}"
    );
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.is_file(),
        "no Chromium at {}: install Debian's `chromium` package (.ci/run does), or point \
         CHROMIUM at one",
        chromium.display()
    );
    chromium
}

/// Runs one job through the native API and returns its id once it completed.
async fn mine(server: &TestServer, model: &str, params: Value) -> String {
    let client = server.client();
    let id = client.submit_ok(model, params).await;
    let done = client.wait_final(&id, Duration::from_secs(300)).await;
    assert_eq!(done["status"], "completed", "{done}");
    id
}

/// The storage key of one of a job's objects, once the job's objects are recorded (storage
/// may still be writing them when the job completes).
async fn object_key(server: &TestServer, admin: &str, job: &str, name: &str) -> String {
    let url = format!("{}/api/v1/admin/jobs/{job}/objects", server.http());
    for _ in 0..300 {
        let response = reqwest::Client::new()
            .get(&url)
            .bearer_auth(admin)
            .send()
            .await
            .expect("send");
        if response.status().is_success() {
            let listing: Value = response.json().await.expect("JSON");
            let key = listing["objects"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|o| o["name"] == name)
                .and_then(|o| o["key"].as_str());
            if let Some(key) = key {
                return key.to_owned();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {job} has no stored {name} after 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_in_a_real_browser() {
    let chromium = preconditions();
    let today = chrono::Utc::now().date_naive();
    let server = TestServer::start_with(&Backend::Sqlite, |config| {
        config.points.seasons = vec![
            Season {
                name: "Season 1".to_owned(),
                starts: today - chrono::Days::new(60),
            },
            Season {
                name: "Season 2".to_owned(),
                starts: today - chrono::Days::new(3),
            },
        ];
    })
    .await;

    // The demo wallet holds 2 NFTs, so its GPU is boosted.
    let db = infermine_server::open_db(&server.config)
        .await
        .expect("open db");
    let snapshot = server.data_dir().join("nft.csv");
    std::fs::write(&snapshot, format!("address,count\n{WALLET},2\n")).expect("write snapshot");
    holdings::import(&db, Token::Nft, &CsvSnapshot { path: snapshot })
        .await
        .expect("import holdings");

    // A real agent serving a tiny LLM and a tiny SD 1.5 mines for it.
    let models = tempfile::tempdir().expect("models dir");
    synth_models(models.path(), &[LLM, IMAGE]).await;
    let token = server.miner_token("portal-rig").await;
    let models_dir = models.path().to_string_lossy().into_owned();
    let _agent = AgentProcess::spawn(
        &server,
        &token,
        &[
            "--models-dir",
            &models_dir,
            "--model",
            LLM,
            "--model",
            IMAGE,
        ],
    )
    .await;
    server.wait_slots(1).await;
    let mut chats = Vec::new();
    let mut images = Vec::new();
    for n in 0..3 {
        let chat = json!({
            "messages": [{"role": "user", "content": format!("Tell me about lighthouses, part {n}.")}],
            "max_tokens": 16,
            "seed": n,
        });
        chats.push(mine(&server, LLM, chat).await);
        let image = json!({
            "prompt": format!("a lighthouse at dusk, take {n}"),
            "width": 64, "height": 64, "steps": 4, "seed": n,
        });
        images.push(mine(&server, IMAGE, image).await);
    }

    // An admin slashes a little by hand, so the ledger shows a slash with its reason.
    let admin =
        infermine_server::mint_admin_token(&server.config, "portal", Duration::from_secs(3600))
            .await
            .expect("admin token");
    let slash = reqwest::Client::new()
        .post(format!("{}/api/v1/admin/slashes", server.http()))
        .bearer_auth(&admin)
        .json(&json!({
            "address": WALLET,
            "kind": "llama",
            "fraction": 0.1,
            "reason": "late results reported as on time",
        }))
        .send()
        .await
        .expect("slash");
    assert!(slash.status().is_success(), "{}", slash.status());

    // Open cases: an image unlike its re-execution (the second image job stands in for
    // the validator's), and a completion with its per-token scores.
    let miner_id = format!("{WALLET}-portal-rig-gpu0");
    let image_evidence = json!({
        "job": images[0],
        "validation_job": images[1],
        "validator": miner_id,
        "model": IMAGE,
        "miner_image": object_key(&server, &admin, &images[0], "output.png").await,
        "validator_image": object_key(&server, &admin, &images[1], "output.png").await,
        "similarity": { "ssim": 0.41, "detail_ratio": 0.93, "phash_distance": 22 },
        "thresholds": { "min_ssim": 0.8, "min_detail_ratio": 0.6, "max_phash_distance": 12 },
        "problem": "SSIM 0.41 is below 0.8",
    });
    let token_scores: Vec<Value> = (0..8)
        .map(|i| {
            json!({
                "id": 100 + i, "logprob": -1.5 - f64::from(i) * 0.25, "rank": i % 3,
                "in_support": i != 5, "sample_logprob": -1.2, "expected_logprob": -1.1,
                "logprob_variance": 0.4, "seeded": if i % 2 == 0 { 100 + i } else { 7 },
            })
        })
        .collect();
    let llm_evidence = json!({
        "job": chats[0],
        "model": LLM,
        "score": { "tokens": 8, "in_support": 7, "seeded": 4 },
        "token_scores": token_scores,
        "problem": "1 of 8 tokens could not have been sampled",
    });
    // And one about timings, for the dismiss button.
    let latency_evidence = json!({
        "job": chats[1],
        "reported_ms": 900, "observed_ms": 410,
        "problem": "reported inference time exceeds what the coordinator saw",
    });
    let mut case_ids = Vec::new();
    for (job, kind, check, evidence) in [
        (
            &images[0],
            infermine_server::points::PointsKind::Waifu,
            Check::ImageSimilarity,
            image_evidence,
        ),
        (
            &chats[0],
            infermine_server::points::PointsKind::Llama,
            Check::LlmTeacherForcing,
            llm_evidence,
        ),
        (
            &chats[1],
            infermine_server::points::PointsKind::Llama,
            Check::Latency,
            latency_evidence,
        ),
    ] {
        let id = cases::open_case(
            &db,
            &NewCase {
                job_id: Some(Uuid::parse_str(job).expect("job id")),
                wallet: WALLET.to_owned(),
                miner_id: Some(miner_id.clone()),
                kind,
                check,
                evidence: evidence.as_object().expect("object").clone(),
            },
        )
        .await
        .expect("open case");
        case_ids.push(id);
    }
    db.close().await;

    // A wallet to sign in with (any key: sign-in needs no points).
    let signer = format!(
        "0x{}",
        hex::encode(Sha256::digest(Uuid::now_v7().as_bytes()))
    );
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("portal-screenshots");
    std::fs::create_dir_all(&screenshots).expect("screenshots dir");

    let status = tokio::process::Command::new("npm")
        .args(["run", "--silent", "test:browser"])
        .current_dir(portal_dir())
        .env("PORTAL_URL", server.http())
        .env("PORTAL_WALLET", WALLET)
        .env("PORTAL_EMPTY_WALLET", EMPTY_WALLET)
        .env("PORTAL_ADMIN_TOKEN", &admin)
        .env("PORTAL_CASE_ID", case_ids[0].to_string())
        .env("PORTAL_LLM_CASE_ID", case_ids[1].to_string())
        .env("PORTAL_DISMISS_CASE_ID", case_ids[2].to_string())
        .env("PORTAL_SIGNER_KEY", &signer)
        .env("PORTAL_SCREENSHOTS", &screenshots)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(600), status)
        .await
        .expect("the browser tests finish within 10 minutes")
        .expect("run npm");
    eprintln!("portal: screenshots in {}", screenshots.display());
    assert!(
        status.success(),
        "the browser tests failed (their output is above)"
    );
}
