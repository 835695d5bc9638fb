//! `POST /v1/images/generations` end to end: refusals in OpenAI's shape before any job exists;
//! 503 when no agent serves the model and 502 when the agents fail an image; `n` images as
//! `n` image jobs (consecutive seeds, answered in order whatever order they finish in, inline
//! or uploaded PNGs), each credited its Waifu points once; signed links that work without
//! credentials until they expire and are refused when altered; and the official `openai`
//! Python client's `images.generate` ([`rendering`]).
//!
//! A raw protocol agent stands in for the diffusion engine here, answering each job with a
//! PNG header of the requested size followed by its seed; [`rendering`] also renders for real
//! with an agent process's diffusion engine on the demo models `tiny-sd15` and `tiny-sdxl`.

mod rendering;

use std::time::Duration;

use base64::Engine as _;
use infermine_protocol::{
    AgentMessage, DeviceKind, GpuInfo, Hello, ImageParams, JobAssignment, JobOutput, JobParams,
    JobResult, Metrics, ModelInfo, PROTOCOL_VERSION,
};
use infermine_tests::raw::RawAgent;
use infermine_tests::{Backend, TestServer, WALLET};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::chat::{join, next_job};
use crate::on_both_databases;
use crate::openai_errors::{answer, assert_openai_error};

const MODEL: &str = "stable-diffusion-1.5";
/// Micro-points of one 512×512, 25-step image on SD 1.5: 512·512·25 ÷ (512·512·20) × 0.3.
const POINTS_512_25: i64 = 375_000;

fn post(server: &TestServer, key: &str, body: &Value) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("{}/v1/images/generations", server.http()))
        .bearer_auth(key)
        .json(body)
}

fn image(extra: Value) -> Value {
    let mut body = json!({ "model": MODEL, "prompt": "a lighthouse at dusk" });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    body
}

/// `gpus` H100s serving `model` (a raw peer claims what it likes), one job at a time each.
fn gpu_hello(token: &str, model: &str, gpus: u32) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: "raw-test-agent".to_owned(),
        token: token.to_owned(),
        gpus: (0..gpus)
            .map(|index| GpuInfo {
                index,
                kind: DeviceKind::Cuda,
                uuid: format!("GPU-h100-{index}"),
                name: "NVIDIA H100 80GB HBM3".to_owned(),
                vram_mb: 81_559,
            })
            .collect(),
        models: vec![ModelInfo {
            id: model.to_owned(),
            sha256: String::new(),
        }],
    }
}

/// What the stand-in engine draws for `params`: a PNG header of the requested size, then the
/// seed, so the bytes depend on the params alone.
fn fake_png(p: &ImageParams) -> Vec<u8> {
    infermine_tests::raw::png_header(p.width, p.height, format!("seed {}", p.seed).as_bytes())
}

fn params_of(job: &JobAssignment) -> &ImageParams {
    match &job.params {
        JobParams::Image(params) => params,
        other => panic!("an image job expected, got {other:?}"),
    }
}

/// Answers an image job with its PNG: inline in the result, or uploaded to the job's
/// presigned URL first (as the real agent does).
async fn draw(agent: &mut RawAgent, job: &JobAssignment, upload: bool) {
    let png = fake_png(params_of(job));
    let mut png_b64 = Some(base64::engine::general_purpose::STANDARD.encode(&png));
    if upload {
        let url = job.upload_url.as_deref().expect("an upload URL");
        let response = reqwest::Client::new()
            .put(url)
            .header("content-type", "image/png")
            .body(png.clone())
            .send()
            .await
            .expect("upload");
        assert!(
            response.status().is_success(),
            "upload: {}",
            response.status()
        );
        png_b64 = None;
    }
    let p = params_of(job);
    let output = JobOutput::Image {
        width: p.width,
        height: p.height,
        size_bytes: png.len() as u64,
        sha256: hex::encode(Sha256::digest(&png)),
        png_b64,
    };
    let result = AgentMessage::Result(JobResult {
        job: job.id,
        output,
        metrics: Metrics::default(),
    });
    agent.send(&result).await.expect("result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_bad_requests_get_openai_errors_naming_the_param() {
    let server = TestServer::start(&Backend::Sqlite).await;
    let key = server.api_key.clone();
    let invalid = "invalid_request_error";
    let cases = [
        (
            image(json!({ "size": "1004x512" })),
            400,
            invalid,
            "param_out_of_range",
            Some("size"),
            "multiple of 8",
        ),
        (
            image(json!({ "size": "512X512" })),
            400,
            invalid,
            "invalid_value",
            Some("size"),
            "lowercase x",
        ),
        (
            image(json!({ "size": "1024x1024" })),
            400,
            invalid,
            "param_out_of_range",
            Some("size"),
            "589824 pixels",
        ),
        (
            image(json!({ "steps": 80 })),
            400,
            invalid,
            "param_out_of_range",
            Some("steps"),
            "limit of 50",
        ),
        (
            image(json!({ "model": "dall-e-3" })),
            404,
            "not_found_error",
            "model_not_found",
            Some("model"),
            "dall-e-3",
        ),
        (
            image(json!({ "model": "tiny-llama" })),
            400,
            invalid,
            "model_not_image",
            Some("model"),
            "llm model",
        ),
        (
            image(json!({ "cfg_scale": 7 })),
            400,
            invalid,
            "unknown_parameter",
            Some("cfg_scale"),
            "guidance_scale",
        ),
        (
            image(json!({ "n": 5 })),
            400,
            invalid,
            "param_out_of_range",
            Some("n"),
            "1 to 4",
        ),
        (
            image(json!({ "quality": "hd" })),
            400,
            invalid,
            "unsupported_value",
            Some("quality"),
            "hd",
        ),
        (
            image(json!({ "lora": { "scale": 1 } })),
            400,
            invalid,
            "param_not_supported",
            Some("lora"),
            "no LoRA",
        ),
        (
            image(json!({ "scheduler": "flow_euler" })),
            400,
            invalid,
            "param_not_supported",
            Some("scheduler"),
            "euler_a",
        ),
        (
            json!({ "model": MODEL }),
            400,
            invalid,
            "missing_parameter",
            Some("prompt"),
            "prompt",
        ),
    ];
    for (body, status, kind, code, param, mentions) in cases {
        let got = answer(post(&server, &key, &body)).await;
        assert_openai_error(&got, status, kind, code, param, mentions);
    }
    let got = answer(post(&server, "imk_forged", &image(json!({})))).await;
    assert_openai_error(
        &got,
        401,
        "authentication_error",
        "unauthorized",
        None,
        "invalid",
    );

    let status = server.wait_status("status", |_| true).await;
    assert_eq!(status["queued"], 0, "no refused request became a job");
}

/// An image model with a 1.5 s deadline, runnable on a CPU, so the waits are short.
const QUICK_REGISTRY: &str = r#"
[gpu_tiers]
"4090" = 220

[[model]]
id = "quick-image"
kind = "image"
display_name = "Quick image (test)"
family = "sd15"
points_multiplier = 0.3
allow_cpu = true
target_latency_ms = 500
deadline_ms = 1500

[model.limits]
max_width = 512
max_height = 512
max_pixels = 262144
max_steps = 50
max_prompt_chars = 2000

[[model.files]]
name = "model.safetensors"
url = "https://example.org/model.safetensors"
"#;

/// Without an agent the request waits out the first image's deadline (plus the lease grace)
/// and gets 503; when the agents fail an image it gets 502. Either way the request's jobs are
/// cancelled, so nothing runs for a consumer who was told it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_without_a_finishing_agent_end_in_503_or_502() {
    let registry = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(registry.path(), QUICK_REGISTRY).expect("write registry");
    let path = registry.path().to_owned();
    let server = TestServer::start_with(&Backend::Sqlite, move |c| {
        c.models_file = Some(path);
        c.lease_grace_ms = 500;
    })
    .await;
    let key = server.api_key.clone();
    let body = json!({ "model": "quick-image", "prompt": "a lighthouse", "n": 2 });

    let started = std::time::Instant::now();
    let got = answer(post(&server, &key, &body)).await;
    assert_openai_error(
        &got,
        503,
        "server_error",
        "no_agent_available",
        None,
        "no agent serving model `quick-image` is connected; try again later",
    );
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1_900), "{waited:?}");
    assert!(
        waited < Duration::from_millis(3_900),
        "one deadline, not two: {waited:?}"
    );
    let status = server.wait_status("status", |_| true).await;
    assert_eq!(status["queued"], 0, "both jobs were cancelled: {status}");

    let mut agent = join(&server, "quick-image").await;
    let request = tokio::spawn(post(&server, &key, &body).send());
    let job = next_job(&mut agent).await;
    let failed = AgentMessage::Failed {
        job: job.id,
        reason: "out of memory".to_owned(),
        retryable: false,
    };
    agent.send(&failed).await.expect("failed");
    let response = request.await.expect("task").expect("send");
    let status = response.status().as_u16();
    let got = (status, response.json().await.expect("json"));
    assert_openai_error(
        &got,
        502,
        "server_error",
        "job_failed",
        None,
        "out of memory",
    );
    server
        .wait_status("the other job cancelled", |s| {
            s["queued"] == 0 && s["leased"] == 0
        })
        .await;
}

async fn images_come_back_in_order_as_base64_or_signed_links(backend: Backend) {
    let server = TestServer::start_with(&backend, |c| c.image_url_ttl_s = 4).await;
    let token = server.miner_token("h100rig").await;
    let (mut agent, _) = RawAgent::join_with(&server.ws(), gpu_hello(&token, MODEL, 2))
        .await
        .expect("join");
    let key = server.api_key.clone();

    let body = image(json!({ "n": 2, "size": "512x512", "steps": 25, "seed": 7 }));
    let request = tokio::spawn(post(&server, &key, &body).send());
    let (first, second) = (next_job(&mut agent).await, next_job(&mut agent).await);
    let mut seeds = [params_of(&first).seed, params_of(&second).seed];
    seeds.sort_unstable();
    assert_eq!(seeds, [7, 8], "image i runs with seed + i");
    // The second image finishes first, uploaded; the first comes inline.
    let (early, late) = if params_of(&first).seed == 8 {
        (&first, &second)
    } else {
        (&second, &first)
    };
    draw(&mut agent, early, true).await;
    draw(&mut agent, late, false).await;
    let response = request.await.expect("task").expect("send");
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.expect("json");
    let data = reply["data"].as_array().expect("data");
    assert_eq!(data.len(), 2, "{reply}");
    for (i, item) in data.iter().enumerate() {
        assert!(item.get("url").is_none(), "{item}");
        let png = base64::engine::general_purpose::STANDARD
            .decode(item["b64_json"].as_str().expect("b64_json"))
            .expect("base64");
        let mut expected = params_of(&first).clone();
        expected.seed = 7 + i as u64;
        assert_eq!(png, fake_png(&expected), "image {i} in index order");
    }
    let detail = &reply["infermine"];
    assert_eq!(detail["seed"], 7);
    assert_eq!(
        (&detail["width"], &detail["height"]),
        (&json!(512), &json!(512))
    );
    assert_eq!(
        (&detail["steps"], &detail["guidance_scale"]),
        (&json!(25), &json!(7.5))
    );
    assert!(detail["urls_expire"].is_null());
    let ids: Vec<String> = detail["job_ids"]
        .as_array()
        .expect("job ids")
        .iter()
        .map(|id| id.as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), 2);
    let by_seed = |seed: u64| {
        if params_of(&first).seed == seed {
            &first
        } else {
            &second
        }
    };
    assert_eq!(ids, [by_seed(7).id.to_string(), by_seed(8).id.to_string()]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!((now - reply["created"].as_i64().expect("created")).abs() < 60);
    let client = server.client();
    for id in &ids {
        assert_eq!(client.get(id, 0.0).await.1["status"], "completed");
    }

    // A link: fetched without credentials, refused when altered, and once expired.
    let request = tokio::spawn(
        post(
            &server,
            &key,
            &image(json!({ "response_format": "url", "seed": 99, "steps": 25 })),
        )
        .send(),
    );
    let job = next_job(&mut agent).await;
    draw(&mut agent, &job, false).await;
    let reply: Value = request
        .await
        .expect("task")
        .expect("send")
        .json()
        .await
        .expect("json");
    let url = reply["data"][0]["url"].as_str().expect("url").to_owned();
    assert!(reply["data"][0].get("b64_json").is_none(), "{reply}");
    let expires = reply["infermine"]["urls_expire"]
        .as_i64()
        .expect("urls_expire");
    assert!(
        url.starts_with(&format!(
            "{}/v1/images/{}.png?expires={expires}&sig=",
            server.http(),
            job.id
        )),
        "{url}"
    );
    let http = reqwest::Client::new();
    let response = http.get(&url).send().await.expect("fetch");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(
        response.bytes().await.expect("png").to_vec(),
        fake_png(params_of(&job))
    );

    let fetch = |url: String| answer(http.get(url));
    let sig = url.rsplit_once("&sig=").expect("sig").1;
    let flipped = format!(
        "{}{}",
        &sig[..sig.len() - 1],
        if sig.ends_with('A') { "B" } else { "A" }
    );
    let altered = [
        url.replace(sig, &flipped),
        url.replace(
            &format!("expires={expires}"),
            &format!("expires={}", expires + 3600),
        ),
        url.replace(&job.id.to_string(), &ids[0]),
    ];
    for altered in altered {
        let got = fetch(altered).await;
        assert_openai_error(
            &got,
            403,
            "permission_error",
            "forbidden",
            None,
            "does not match",
        );
    }
    let bare = url.split_once('?').expect("query").0.to_owned();
    assert_openai_error(
        &fetch(bare).await,
        403,
        "permission_error",
        "forbidden",
        None,
        "expires",
    );
    let unknown = format!("{}/v1/images/lighthouse.png", server.http());
    assert_openai_error(
        &fetch(unknown).await,
        404,
        "not_found_error",
        "not_found",
        None,
        "job id",
    );
    let wait = u64::try_from(expires + 1 - now).unwrap_or(0).min(10);
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_openai_error(
        &fetch(url).await,
        403,
        "permission_error",
        "forbidden",
        None,
        "expired",
    );

    // Each of the three jobs earned its Waifu points, once.
    let ledger = server
        .get_json(&format!("/api/v1/wallets/{WALLET}/ledger?limit=50"))
        .await;
    let entries = ledger["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 3, "{ledger}");
    for entry in entries {
        assert_eq!(entry["amount"]["micro"], POINTS_512_25, "{entry}");
    }
    let wallet = server.get_json(&format!("/api/v1/wallets/{WALLET}")).await;
    assert_eq!(wallet["balances"]["waifu"]["micro"], 3 * POINTS_512_25);
}

on_both_databases!(images_come_back_in_order_as_base64_or_signed_links);
