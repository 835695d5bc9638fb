//! `POST /v1/images/generations` with real parts: the official `openai` Python client (its
//! `images.generate`, with infermine's extensions in `extra_body`), and an agent process
//! rendering with its diffusion engine on the demo models, whose PNGs are checked to be whole
//! PNGs of the requested size, the same for the same seed.
//!
//! The client runs from the Python that `INFERMINE_TEST_PYTHON` names, with
//! `INFERMINE_TEST_PYTHONPATH` (scripts/test.sh installs `openai` into .dev/pyclient). Without
//! it the client's parts are skipped with a note outside CI; in CI (`CI` set) they fail.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use infermine_protocol::CoordinatorMessage;
use infermine_tests::raw::{Frame, RawAgent};
use infermine_tests::{AgentProcess, Backend, TestServer, WALLET, agent_binary};
use serde_json::{Value, json};

use super::{MODEL, POINTS_512_25, answer, draw, gpu_hello, post};

/// The Python that runs the `openai` client, or `None` (outside CI) when none is set up.
fn python() -> Option<PathBuf> {
    let python = std::env::var_os("INFERMINE_TEST_PYTHON").map(PathBuf::from);
    if python.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "INFERMINE_TEST_PYTHON is not set: run the suite with scripts/test.sh, which installs \
             the openai client"
        );
        eprintln!(
            "skipping the openai client: INFERMINE_TEST_PYTHON is not set (scripts/test.sh sets it)"
        );
    }
    python
}

fn python_client(
    python: &PathBuf,
    server: &TestServer,
    model: &str,
    size: &str,
    steps: u32,
) -> tokio::process::Command {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/openai_images.py");
    let mut command = tokio::process::Command::new(python);
    command
        .args([
            script,
            &server.http(),
            &server.api_key,
            model,
            size,
            &steps.to_string(),
        ])
        .envs(std::env::var_os("INFERMINE_TEST_PYTHONPATH").map(|p| ("PYTHONPATH", p)))
        .kill_on_drop(true);
    command
}

/// Checks what `openai_images.py` printed: four images of `size` (two with seeds 1234 and
/// 1235, the first again, one behind a link), and the client's exceptions.
fn check_python_report(report: &Value, size: (u32, u32)) {
    let images = report["b64"]["images"].as_array().expect("images");
    assert_eq!(images.len(), 2, "{report}");
    for png in images
        .iter()
        .chain([&report["again"]["images"][0], &report["url"]["fetched"]])
    {
        assert_eq!(
            (&png["width"], &png["height"]),
            (&json!(size.0), &json!(size.1)),
            "{png}"
        );
    }
    assert_ne!(
        images[0]["sha256"], images[1]["sha256"],
        "seeds 1234 and 1235 differ"
    );
    assert_eq!(
        report["again"]["images"][0]["sha256"], images[0]["sha256"],
        "same seed, same bytes"
    );
    assert_eq!(report["b64"]["infermine"]["seed"], 1234, "{report}");
    assert_eq!(report["b64"]["urls"], json!([null, null]));
    let fetched = &report["url"]["fetched"];
    assert_eq!(
        (&fetched["status"], &fetched["content_type"]),
        (&json!(200), &json!("image/png"))
    );
    assert!(report["url"]["b64_json"].is_null());
    let errors = &report["errors"];
    assert_eq!(
        errors["unknown_model"],
        json!(["NotFoundError", 404, "model_not_found", "model"])
    );
    assert_eq!(
        errors["too_many"],
        json!(["BadRequestError", 400, "param_out_of_range", "n"])
    );
    assert_eq!(
        errors["bad_size"],
        json!(["BadRequestError", 400, "invalid_value", "size"])
    );
    assert_eq!(
        errors["wrong_key"],
        json!(["AuthenticationError", 401, "unauthorized", null])
    );
}

/// The official client against the stand-in engine: it sends what OpenAI's API takes plus
/// `extra_body`, and reads the answer as OpenAI's `ImagesResponse`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_openai_python_client_generates_and_fetches() {
    let Some(python) = python() else { return };
    let server = TestServer::start(&Backend::Sqlite).await;
    let token = server.miner_token("h100rig").await;
    let (mut agent, _) = RawAgent::join_with(&server.ws(), gpu_hello(&token, MODEL, 1))
        .await
        .expect("join");
    // The client's start (Python importing its packages) may take longer than the
    // coordinator's patience with a silent agent on a busy machine.
    agent.answer_heartbeats();
    let mut command = python_client(&python, &server, MODEL, "512x512", 25);
    let run = command.output();
    tokio::pin!(run);
    let mut served = 0;
    let output = loop {
        tokio::select! {
            output = &mut run => break output.expect("run the python client"),
            frame = agent.next(Duration::from_secs(120)) => match frame {
                Frame::Message(CoordinatorMessage::Job(job)) => {
                    draw(&mut agent, &job, served % 2 == 1).await;
                    served += 1;
                }
                Frame::Message(_) => {}
                other => panic!("the agent lost the coordinator: {other:?}"),
            },
        }
    };
    assert!(
        output.status.success(),
        "client failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("client prints JSON");
    check_python_report(&report, (512, 512));
    assert_eq!(served, 4, "two images, one again, one behind a link");
    let wallet = server.get_json(&format!("/api/v1/wallets/{WALLET}")).await;
    assert_eq!(wallet["balances"]["waifu"]["micro"], 4 * POINTS_512_25);
}

/// PNG signature, IHDR of `size`, and the IEND chunk last: a whole PNG.
fn assert_png(png: &[u8], size: (u32, u32)) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "PNG signature");
    assert_eq!(&png[12..16], b"IHDR");
    let side = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!((side(16), side(20)), size);
    assert!(png.ends_with(b"IEND\xae\x42\x60\x82"), "ends with IEND");
}

/// A real agent's diffusion engine on a demo model (random weights), on the CPU: real PNGs of
/// the requested size, the same seed giving the same bytes, links, the Python client, and the
/// Waifu points of every job.
async fn render_for_real(demo: &'static str) {
    const SIZE: (u32, u32) = (64, 64);
    const STEPS: u32 = 4;
    let server = TestServer::start(&Backend::Sqlite).await;
    let models = tempfile::tempdir().expect("models dir");
    let models_dir = models.path().to_string_lossy().into_owned();
    let synth = tokio::process::Command::new(agent_binary().expect("agent binary"))
        .args(["models", "synth", "--model", demo, "--out", &models_dir])
        .output()
        .await
        .expect("run models synth");
    assert!(
        synth.status.success(),
        "{}",
        String::from_utf8_lossy(&synth.stderr)
    );
    let token = server.miner_token("rig-image").await;
    let agent = AgentProcess::spawn(
        &server,
        &token,
        &["--models-dir", &models_dir, "--model", demo],
    )
    .await;
    server.wait_slots(1).await;
    let key = server.api_key.clone();
    let generate = |extra: Value| {
        let mut body = json!({ "model": demo, "prompt": "a lighthouse at dusk", "size": "64x64", "steps": STEPS, "seed": 5 });
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
            body.extend(extra);
        }
        answer(post(&server, &key, &body).timeout(Duration::from_secs(300)))
    };
    let pngs = |answer: &Value| -> Vec<Vec<u8>> {
        answer["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|d| {
                base64::engine::general_purpose::STANDARD
                    .decode(d["b64_json"].as_str().expect("b64"))
                    .expect("base64")
            })
            .collect()
    };

    let (status, two) = generate(json!({ "n": 2 })).await;
    assert_eq!(status, 200, "{two}\nagent log:\n{}", agent.log());
    let two_pngs = pngs(&two);
    assert_eq!(two_pngs.len(), 2);
    two_pngs.iter().for_each(|png| assert_png(png, SIZE));
    assert_ne!(
        two_pngs[0], two_pngs[1],
        "seeds 5 and 6 draw different images"
    );
    let (_, again) = generate(json!({ "n": 2 })).await;
    assert_eq!(pngs(&again), two_pngs, "the same seeds draw the same bytes");
    let (_, linked) = generate(json!({ "response_format": "url" })).await;
    let url = linked["data"][0]["url"].as_str().expect("url");
    let fetched = reqwest::get(url).await.expect("fetch");
    assert_eq!(fetched.status(), 200);
    assert_eq!(
        fetched.bytes().await.expect("png").to_vec(),
        two_pngs[0],
        "seed 5 again"
    );

    let mut jobs = 5;
    if let Some(python) = python() {
        let mut command = python_client(&python, &server, demo, "64x64", STEPS);
        let output = command.output().await.expect("run the python client");
        assert!(
            output.status.success(),
            "client failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_slice(&output.stdout).expect("client prints JSON");
        check_python_report(&report, SIZE);
        jobs += 4;
    }

    // Every job earned w·h·steps ÷ (512·512·20) × the model's multiplier (in micro-points,
    // rounded down), once: the coordinator's latency window is generous for a 64×64 image.
    let model = server.get_json(&format!("/v1/models/{demo}")).await;
    let multiplier =
        (model["points_multiplier"].as_f64().expect("multiplier") * 1e6).round() as u128;
    let per_job = u128::from(SIZE.0 * SIZE.1 * STEPS) * multiplier / (512 * 512 * 20);
    let ledger = server
        .get_json(&format!("/api/v1/wallets/{WALLET}/ledger?limit=50"))
        .await;
    let entries = ledger["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), jobs, "{ledger}");
    for entry in entries {
        assert_eq!(entry["detail"]["base"], per_job as i64, "{entry}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_render_for_real_on_tiny_sd15() {
    render_for_real("tiny-sd15").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_render_for_real_on_tiny_sdxl() {
    render_for_real("tiny-sdxl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_render_for_real_on_tiny_flux() {
    render_for_real("tiny-flux").await;
}
