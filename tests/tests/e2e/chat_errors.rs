//! What the OpenAI-compatible routes refuse, in OpenAI's error shape with `param`, and how a
//! chat completion ends when no agent takes it, none finishes it, or the agents fail it; plus
//! the model list and the file manifests agents read.

use std::time::Duration;

use infermine_protocol::AgentMessage;
use infermine_tests::sse::SseReader;
use infermine_tests::{Backend, Client, TestServer};
use serde_json::{Value, json};

use crate::chat::{join, next_job, post};
use crate::openai_errors::{answer, assert_openai_error};

/// A refused body and its status, type, code, param and a word of its message.
type Case = (
    Value,
    u16,
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
);

fn chat(extra: Value) -> Value {
    let mut body =
        json!({ "model": "tiny-llama", "messages": [{ "role": "user", "content": "hi" }] });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_bad_requests_get_openai_errors_naming_the_param() {
    let server = TestServer::start(&Backend::Sqlite).await;
    let key = server.api_key.clone();
    let send = |body: Value| answer(post(&server, &key, &body));
    let invalid = "invalid_request_error";

    let bad_json = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.http()))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{not json");
    assert_openai_error(
        &answer(bad_json).await,
        400,
        invalid,
        "invalid_request",
        None,
        "JSON",
    );
    let cases: Vec<Case> = vec![
        (
            json!({ "model": "tiny-llama" }),
            400,
            invalid,
            "missing_parameter",
            Some("messages"),
            "messages",
        ),
        (
            chat(json!({ "model": "gpt-5" })),
            404,
            "not_found_error",
            "model_not_found",
            Some("model"),
            "gpt-5",
        ),
        (
            chat(json!({ "model": "sdxl-base-1.0" })),
            400,
            invalid,
            "model_not_chat",
            Some("model"),
            "image model",
        ),
        (
            chat(json!({ "n": 2 })),
            400,
            invalid,
            "unsupported_value",
            Some("n"),
            "n = 2",
        ),
        (
            chat(json!({ "tools": [{ "type": "function", "function": { "name": "f" } }] })),
            400,
            invalid,
            "unsupported_parameter",
            Some("tools"),
            "function calling",
        ),
        (
            chat(json!({ "response_format": { "type": "json_object" } })),
            400,
            invalid,
            "unsupported_value",
            Some("response_format"),
            "json_object",
        ),
        (
            chat(json!({ "messages": [{ "role": "user", "content": [
                { "type": "image_url", "image_url": { "url": "https://example.org/a.png" } }
            ] }] })),
            400,
            invalid,
            "unsupported_content",
            Some("messages[0].content[0]"),
            "image",
        ),
        (
            chat(json!({ "temperature": "warm" })),
            400,
            invalid,
            "invalid_type",
            Some("temperature"),
            "a number",
        ),
        // The model's limits, through the registry's validation.
        (
            chat(json!({ "max_tokens": 1000 })),
            400,
            invalid,
            "param_out_of_range",
            Some("max_tokens"),
            "128",
        ),
        (
            chat(json!({ "max_completion_tokens": 1000 })),
            400,
            invalid,
            "param_out_of_range",
            Some("max_completion_tokens"),
            "128",
        ),
        (
            chat(json!({ "messages": [{ "role": "user", "content": "x".repeat(2_001) }] })),
            400,
            invalid,
            "param_too_long",
            Some("messages"),
            "2000",
        ),
        (
            chat(json!({ "stop": ["a", "b", "c", "d", "e"] })),
            400,
            invalid,
            "param_too_long",
            Some("stop"),
            "4",
        ),
        (
            chat(json!({ "messages": [{ "role": "narrator", "content": "x" }] })),
            400,
            invalid,
            "param_not_supported",
            Some("messages[0].role"),
            "narrator",
        ),
        (
            chat(json!({ "temperature": 3 })),
            400,
            invalid,
            "param_out_of_range",
            Some("temperature"),
            "0 to 2",
        ),
    ];
    for (body, status, kind, code, param, mentions) in cases {
        assert_openai_error(&send(body).await, status, kind, code, param, mentions);
    }

    let auth = "authentication_error";
    assert_openai_error(
        &answer(post(&server, "imk_forged", &chat(json!({})))).await,
        401,
        auth,
        "unauthorized",
        None,
        "invalid",
    );
    let no_key = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.http()))
        .json(&chat(json!({})));
    assert_openai_error(
        &answer(no_key).await,
        401,
        auth,
        "unauthorized",
        None,
        "Authorization",
    );

    // The native API answers the same shape, with `param` pointing into `params`.
    let client = server.client();
    assert_openai_error(
        &client.submit("gpt-5", json!({})).await,
        404,
        "not_found_error",
        "model_not_found",
        Some("model"),
        "gpt-5",
    );
    let image = json!({ "prompt": "a lighthouse", "width": 1004, "height": 1024, "steps": 30 });
    assert_openai_error(
        &client.submit("sdxl-base-1.0", image).await,
        422,
        invalid,
        "param_out_of_range",
        Some("params.width"),
        "multiple of 8",
    );
    assert_openai_error(
        &client
            .submit("synthetic-echo", json!({ "colour": "red" }))
            .await,
        422,
        invalid,
        "invalid_params",
        Some("params.colour"),
        "colour",
    );

    let status = server.wait_status("status", |_| true).await;
    assert_eq!(status["queued"], 0, "no refused request became a job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_list_reads_as_openai_and_manifests_list_the_files() {
    let server = TestServer::start(&Backend::Sqlite).await;
    let get = |path: String| answer(reqwest::Client::new().get(format!("{}{path}", server.http())));
    let (status, list) = get("/v1/models".to_owned()).await;
    assert_eq!(status, 200);
    assert_eq!(list["object"], "list");
    let models = list["data"].as_array().expect("data");
    for model in models {
        assert_eq!(model["object"], "model", "{model}");
        assert_eq!(model["owned_by"], "infermine", "{model}");
        assert!(model["created"].as_i64().is_some_and(|t| t > 0), "{model}");
        let id = model["id"].as_str().expect("id");
        assert_eq!(model["demo"], id.starts_with("tiny-"), "{model}");
        assert!(model["kind"].is_string() && model["points_multiplier"].is_number());
    }
    assert!(models.iter().any(|m| m["id"] == "tiny-mixtral-gptq"));

    let (status, model) = get("/v1/models/tiny-llama".to_owned()).await;
    assert_eq!(
        (status, &model["display_name"]),
        (200, &json!("Tiny Llama 3 (demo, random weights)"))
    );

    let (status, manifest) = get("/v1/models/tiny-llama/files".to_owned()).await;
    assert_eq!(status, 200);
    assert_eq!(manifest["model"], "tiny-llama");
    let files = manifest["files"].as_array().expect("files");
    assert_eq!(files.len(), 5);
    assert_eq!(
        files[0],
        json!({
            "name": "config.json",
            "url": "synth:tiny-llama",
            "size_bytes": 691,
            "sha256": "a8bad78a99716aedad90cc9921b782b095ffc0bffe0c3e9ccf803f6a0bcaea58"
        })
    );
    let (_, pinned) = get("/v1/models/sdxl-base-1.0/files".to_owned()).await;
    assert_eq!(pinned["files"][0]["size_bytes"], 6_938_078_334u64);
    assert_eq!(
        pinned["files"][0]["sha256"],
        "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"
    );
    for path in ["/v1/models/gpt-5/files", "/v1/models/gpt-5"] {
        assert_openai_error(
            &get(path.to_owned()).await,
            404,
            "not_found_error",
            "model_not_found",
            Some("model"),
            "gpt-5",
        );
    }
}

/// A chat model with a 1.5 s deadline, runnable on a CPU, so the waits are short.
const QUICK_REGISTRY: &str = r#"
[gpu_tiers]
"4090" = 220

[[model]]
id = "quick-chat"
kind = "llm"
display_name = "Quick chat (test)"
family = "llama3"
points_multiplier = 0.01
allow_cpu = true
target_latency_ms = 500
deadline_ms = 1500

[model.limits]
context_tokens = 256
max_tokens = 128
max_prompt_chars = 2000

[[model.files]]
name = "model.safetensors"
url = "https://example.org/model.safetensors"
"#;

/// Without an agent the request waits out the deadline (plus the lease grace) and gets 503;
/// an agent that never answers gets it 504; agents that fail it get it 502. Each unfinished
/// job is cancelled, so nothing runs for a consumer who was told it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_without_a_finishing_agent_ends_in_503_504_or_502() {
    let registry = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(registry.path(), QUICK_REGISTRY).expect("write registry");
    let path = registry.path().to_owned();
    let server = TestServer::start_with(&Backend::Sqlite, move |c| {
        c.models_file = Some(path);
        c.lease_grace_ms = 500;
    })
    .await;
    let key = server.api_key.clone();
    let body = json!({ "model": "quick-chat", "messages": [{ "role": "user", "content": "hi" }] });
    let unavailable = "no agent serving model `quick-chat` is connected; try again later";

    let started = std::time::Instant::now();
    let got = answer(post(&server, &key, &body)).await;
    assert_openai_error(
        &got,
        503,
        "server_error",
        "no_agent_available",
        None,
        unavailable,
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1_900),
        "waited the deadline out"
    );
    let status = server.wait_status("status", |_| true).await;
    assert_eq!(status["queued"], 0, "the job was cancelled: {status}");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let response = post(&server, &key, &streamed).send().await.expect("send");
    assert_eq!(
        response.status(),
        200,
        "a stream starts before the job runs"
    );
    let mut events = SseReader::new(response);
    let wait = Duration::from_secs(10);
    let role: Value = serde_json::from_str(&events.next(wait).await.expect("role")).expect("json");
    assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
    let rest = events.rest(wait).await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    let error: Value = serde_json::from_str(&rest[0]).expect("json");
    assert_eq!(error["error"]["code"], "no_agent_available", "{error}");

    let mut agent = join(&server, "quick-chat").await;
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

    // The agent takes the job and sits on it.
    let request = tokio::spawn(post(&server, &key, &body).send());
    let job = next_job(&mut agent).await;
    let response = request.await.expect("task").expect("send");
    let status = response.status().as_u16();
    let got = (status, response.json().await.expect("json"));
    assert_openai_error(
        &got,
        504,
        "server_error",
        "job_timeout",
        None,
        "no agent finished",
    );
    let view = Client::new(&server.http(), &key)
        .get(&job.id.to_string(), 0.0)
        .await
        .1;
    assert_eq!(view["status"], "cancelled", "{view}");
}
