//! OpenAI-compatible chat completions end to end: a raw protocol agent serving `tiny-llama` on
//! a CPU device gets the LLM job, streams token frames and returns a result; the consumer gets
//! an OpenAI `chat.completion`, or server-sent `chat.completion.chunk`s as the tokens come,
//! ending with `[DONE]`; the job is stored and credited Llama points by its token counts.

use std::time::Duration;

use infermine_protocol::{
    AgentMessage, CoordinatorMessage, Hello, JobAssignment, JobOutput, JobParams, JobResult,
    LlmUsage, Metrics, ModelInfo, PROTOCOL_VERSION,
};
use infermine_tests::raw::{Frame, RawAgent, cpu_device};
use infermine_tests::sse::SseReader;
use infermine_tests::{Backend, TestServer, WALLET};
use serde_json::{Value, json};

use crate::on_both_databases;

const WAIT: Duration = Duration::from_secs(10);

/// An agent with one CPU device and the `model` files on disk.
pub(crate) fn cpu_hello(token: &str, model: &str) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: "raw-test-agent".to_owned(),
        token: token.to_owned(),
        gpus: vec![cpu_device(0)],
        models: vec![ModelInfo {
            id: model.to_owned(),
            sha256: String::new(),
        }],
    }
}

pub(crate) async fn join(server: &TestServer, model: &str) -> RawAgent {
    let token = server.miner_token("cpu-rig").await;
    let (agent, welcome) = RawAgent::join_with(&server.ws(), cpu_hello(&token, model))
        .await
        .expect("join");
    assert_eq!(
        welcome.slots[0].models,
        [model],
        "a CPU device may run the model"
    );
    agent
}

pub(crate) async fn next_job(agent: &mut RawAgent) -> JobAssignment {
    loop {
        match agent.next(WAIT).await {
            Frame::Message(CoordinatorMessage::Job(job)) => return job,
            Frame::Message(_) => continue,
            other => panic!("expected a job, got {other:?}"),
        }
    }
}

async fn stream_tokens(agent: &mut RawAgent, job: &JobAssignment, pieces: &[&str]) {
    for (index, text) in (0u32..).zip(pieces) {
        let token = AgentMessage::Token {
            job: job.id,
            index,
            text: (*text).to_owned(),
        };
        agent.send(&token).await.expect("token");
    }
}

async fn finish(agent: &mut RawAgent, job: &JobAssignment, text: &str, usage: (u32, u32)) {
    let result = AgentMessage::Result(JobResult {
        job: job.id,
        output: JobOutput::Text {
            text: text.to_owned(),
            usage: LlmUsage {
                prompt_tokens: usage.0,
                completion_tokens: usage.1,
            },
            finish_reason: "stop".to_owned(),
            token_ids: Vec::new(),
        },
        metrics: Metrics::default(),
    });
    agent.send(&result).await.expect("result");
}

pub(crate) fn post(server: &TestServer, key: &str, body: &Value) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.http()))
        .bearer_auth(key)
        .json(body)
}

/// Opens a streamed completion and reads its first chunk, the role.
async fn open_stream(server: &TestServer, body: &Value) -> SseReader {
    let response = post(server, &server.api_key, body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let mut events = SseReader::new(response);
    let first = chunk(&events.next(WAIT).await.expect("the role chunk"));
    assert_eq!(
        first["choices"][0]["delta"],
        json!({ "role": "assistant", "content": "" })
    );
    assert_eq!(first["object"], "chat.completion.chunk");
    events
}

fn chunk(data: &str) -> Value {
    serde_json::from_str(data).unwrap_or_else(|e| panic!("event is not JSON ({e}): {data}"))
}

/// Reads content chunks until their text adds up to `until`; returns the pieces.
async fn read_until(events: &mut SseReader, until: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    while text != until {
        let event = chunk(&events.next(WAIT).await.expect("a content chunk"));
        assert!(event["choices"][0]["finish_reason"].is_null(), "{event}");
        let piece = event["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("content chunk expected: {event}"));
        text.push_str(piece);
        assert!(until.starts_with(&text), "{text:?} strays from {until:?}");
        pieces.push(piece.to_owned());
    }
    pieces
}

async fn chat_completion_is_openai_json_and_earns_llama_points(backend: Backend) {
    let server = TestServer::start(&backend).await;
    let mut agent = join(&server, "tiny-llama").await;
    let body = json!({
        "model": "tiny-llama",
        "messages": [
            { "role": "system", "content": "You are terse." },
            { "role": "user", "content": [{ "type": "text", "text": "Say hello" }] }
        ],
        "max_tokens": 60, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 42,
        "stop": ["\n\n"], "user": "ann", "metadata": { "ignored": true }
    });
    let request = tokio::spawn(post(&server, &server.api_key, &body).send());

    let job = next_job(&mut agent).await;
    assert_eq!(job.model, "tiny-llama");
    let JobParams::Llm(params) = &job.params else {
        panic!("an LLM job, got {:?}", job.params)
    };
    assert_eq!(params.messages[1].content, "Say hello");
    assert_eq!(
        (params.max_tokens, params.top_k, params.seed),
        (Some(60), 40, 42)
    );
    assert_eq!((params.temperature, params.top_p), (0.7, 0.9));
    assert_eq!(params.stop, ["\n\n"]);
    // Nobody streams this job: tokens are dropped, the answer comes from the result.
    stream_tokens(&mut agent, &job, &["Hello", " there"]).await;
    finish(&mut agent, &job, "Hello there, friend.", (100, 50)).await;

    let response = request.await.expect("task").expect("send");
    assert_eq!(response.status(), 200);
    let completion: Value = response.json().await.expect("json");
    assert_eq!(completion["id"], format!("chatcmpl-{}", job.id));
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], "tiny-llama");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let created = completion["created"].as_u64().expect("created");
    assert!(created.abs_diff(now) < 60, "{created} vs {now}");
    assert_eq!(
        completion["choices"],
        json!([{
            "index": 0,
            "message": { "role": "assistant", "content": "Hello there, friend." },
            "logprobs": null,
            "finish_reason": "stop"
        }])
    );
    assert_eq!(
        completion["usage"],
        json!({ "prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150 })
    );
    assert!(
        completion["system_fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("infermine-"))
    );

    // A job like any other: readable through the jobs API, and credited by its usage:
    // (100 + 50) ÷ 1000 × 0.01 = 0.0015 points.
    let (status, view) = server.client().get(&job.id.to_string(), 0.0).await;
    assert_eq!(status, 200);
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["output"]["text"], "Hello there, friend.");
    let ledger = server
        .get_json(&format!("/api/v1/wallets/{WALLET}/ledger"))
        .await;
    let entries = ledger["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{ledger}");
    let entry = &entries[0];
    assert_eq!(entry["job_id"], job.id.to_string());
    assert_eq!(entry["model"], "tiny-llama");
    assert_eq!(entry["entry"], "accrual");
    assert_eq!(
        entry["detail"]["work"],
        json!({ "prompt_tokens": 100, "completion_tokens": 50 })
    );
    assert_eq!(entry["detail"]["base"], 1_500, "{entry}");
    assert_eq!(entry["amount"]["micro"], 1_500, "{entry}");
    let wallet = server.get_json(&format!("/api/v1/wallets/{WALLET}")).await;
    assert_eq!(wallet["balances"]["llama"]["micro"], 1_500);
}

on_both_databases!(chat_completion_is_openai_json_and_earns_llama_points);

async fn chat_stream_sends_tokens_as_they_come_then_usage_and_done(backend: Backend) {
    let server = TestServer::start(&backend).await;
    let mut agent = join(&server, "tiny-llama").await;
    let body = json!({
        "model": "tiny-llama",
        "messages": [{ "role": "user", "content": "Say hello" }],
        "stream": true, "stream_options": { "include_usage": true }
    });
    let mut events = open_stream(&server, &body).await;

    let job = next_job(&mut agent).await;
    let JobParams::Llm(params) = &job.params else {
        panic!("an LLM job, got {:?}", job.params)
    };
    assert_eq!(
        params.max_tokens,
        Some(128),
        "without max_tokens, the model's limit"
    );
    stream_tokens(&mut agent, &job, &["Hel", "lo", " wor"]).await;
    // The pieces reach the consumer while the job still runs, one chunk each, in order.
    assert_eq!(
        read_until(&mut events, "Hello wor").await,
        ["Hel", "lo", " wor"]
    );
    // A repeated frame is not sent twice; the result brings the rest in one chunk.
    let repeat = AgentMessage::Token {
        job: job.id,
        index: 1,
        text: "lo".to_owned(),
    };
    agent.send(&repeat).await.expect("token");
    finish(&mut agent, &job, "Hello world!", (12, 4)).await;

    let rest = events.rest(WAIT).await;
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"), "{rest:?}");
    let chunks: Vec<Value> = rest[..rest.len() - 1].iter().map(|e| chunk(e)).collect();
    assert_eq!(chunks.len(), 3, "rest, finish, usage: {chunks:#?}");
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({ "content": "ld!" })
    );
    assert_eq!(chunks[1]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[1]["choices"][0]["finish_reason"], "stop");
    assert!(chunks[1]["usage"].is_null() && chunks[1].get("usage").is_some());
    assert_eq!(chunks[2]["choices"], json!([]));
    assert_eq!(
        chunks[2]["usage"],
        json!({ "prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16 })
    );
    for chunk in &chunks {
        assert_eq!(chunk["id"], format!("chatcmpl-{}", job.id));
        assert_eq!(chunk["model"], "tiny-llama");
    }

    let (_, view) = server.client().get(&job.id.to_string(), 0.0).await;
    assert_eq!(view["status"], "completed", "{view}");
    let wallet = server.get_json(&format!("/api/v1/wallets/{WALLET}")).await;
    // (12 + 4) ÷ 1000 × 0.01 = 0.00016 points.
    assert_eq!(wallet["balances"]["llama"]["micro"], 160);
}

on_both_databases!(chat_stream_sends_tokens_as_they_come_then_usage_and_done);

/// A job retried after part of its text was streamed: a retry that writes the same text
/// continues the stream where it was; one that writes other text ends it with an error event.
async fn chat_stream_survives_a_retry_only_if_the_text_agrees(backend: Backend) {
    let server = TestServer::start(&backend).await;
    let mut agent = join(&server, "tiny-llama").await;
    let body = json!({
        "model": "tiny-llama", "seed": 7, "stream": true,
        "messages": [{ "role": "user", "content": "Say hello" }]
    });
    let failed = |job: &JobAssignment| AgentMessage::Failed {
        job: job.id,
        reason: "the device was lost".to_owned(),
        retryable: true,
    };

    let mut events = open_stream(&server, &body).await;
    let job = next_job(&mut agent).await;
    assert_eq!(job.attempt, 1);
    stream_tokens(&mut agent, &job, &["Hello", " wo"]).await;
    assert_eq!(read_until(&mut events, "Hello wo").await, ["Hello", " wo"]);
    agent.send(&failed(&job)).await.expect("failed");
    let retry = next_job(&mut agent).await;
    assert_eq!((retry.id, retry.attempt), (job.id, 2));
    stream_tokens(&mut agent, &retry, &["Hello", " world"]).await;
    assert_eq!(read_until(&mut events, "rld").await, ["rld"]);
    finish(&mut agent, &retry, "Hello world", (10, 2)).await;
    let rest = events.rest(WAIT).await;
    assert_eq!(rest.len(), 2, "finish and [DONE]: {rest:?}");
    assert_eq!(chunk(&rest[0])["choices"][0]["finish_reason"], "stop");
    assert_eq!(rest[1], "[DONE]");

    let mut events = open_stream(&server, &body).await;
    let job = next_job(&mut agent).await;
    stream_tokens(&mut agent, &job, &["Yes"]).await;
    assert_eq!(read_until(&mut events, "Yes").await, ["Yes"]);
    agent.send(&failed(&job)).await.expect("failed");
    let retry = next_job(&mut agent).await;
    stream_tokens(&mut agent, &retry, &["No"]).await;
    finish(&mut agent, &retry, "No way", (10, 2)).await;
    let rest = events.rest(WAIT).await;
    assert_eq!(rest.len(), 1, "only the error, no [DONE]: {rest:?}");
    let error = chunk(&rest[0]);
    assert_eq!(error["error"]["code"], "stream_diverged", "{error}");
    assert_eq!(error["error"]["type"], "server_error");
    assert!(error["error"]["param"].is_null());
    let message = error["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(&format!("GET /v1/jobs/{}", job.id)),
        "{message}"
    );
    // The job itself completed with the retry's text, which is the answer.
    let (_, view) = server.client().get(&job.id.to_string(), 0.0).await;
    assert_eq!(
        (&view["status"], &view["output"]["text"]),
        (&json!("completed"), &json!("No way"))
    );
}

on_both_databases!(chat_stream_survives_a_retry_only_if_the_text_agrees);

/// Like OpenAI, a consumer that hangs up does not cancel its request: the job runs to its
/// end, is recorded and credits its miner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_consumer_leaving_a_stream_leaves_the_job_to_finish() {
    let server = TestServer::start(&Backend::Sqlite).await;
    let mut agent = join(&server, "tiny-llama").await;
    let body = json!({
        "model": "tiny-llama", "stream": true,
        "messages": [{ "role": "user", "content": "Say hello" }]
    });
    let events = open_stream(&server, &body).await;
    let job = next_job(&mut agent).await;
    drop(events);
    stream_tokens(&mut agent, &job, &["Hi", " there"]).await;
    finish(&mut agent, &job, "Hi there", (20, 2)).await;
    let view = server
        .client()
        .wait_final(&job.id.to_string(), Duration::from_secs(10))
        .await;
    assert_eq!(view["status"], "completed", "{view}");
    let ledger = server
        .get_json(&format!("/api/v1/wallets/{WALLET}/ledger"))
        .await;
    assert_eq!(ledger["entries"][0]["job_id"], job.id.to_string());
    assert_eq!(ledger["entries"][0]["amount"]["micro"], 220);
}

/// Open chat requests do not hold a shutdown up until their deadline: they are answered 503
/// `shutting_down` once running jobs had their drain time, and their jobs are kept for the
/// next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_requests_end_promptly_at_shutdown_and_their_jobs_are_kept() {
    let mut server = TestServer::start_with(&Backend::Sqlite, |c| c.drain_timeout_s = 1).await;
    let mut agent = join(&server, "tiny-llama").await;
    let body = json!({
        "model": "tiny-llama", "stream": true,
        "messages": [{ "role": "user", "content": "Say hello" }]
    });
    let mut events = open_stream(&server, &body).await;
    let job = next_job(&mut agent).await;
    let mut plain = body.clone();
    plain["stream"] = json!(false);
    let waiting = tokio::spawn(post(&server, &server.api_key, &plain).send());
    // Queued behind the first, on the only slot.
    server
        .wait_status("a queued job", |s| s["queued"] == 1)
        .await;

    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(15), server.stop())
        .await
        .expect("the coordinator stops without waiting for the jobs' deadlines");
    assert!(started.elapsed() < Duration::from_secs(10));
    let rest = events.rest(WAIT).await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    let error = chunk(&rest[0]);
    assert_eq!(error["error"]["code"], "shutting_down", "{error}");
    let response = waiting.await.expect("task").expect("send");
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "shutting_down", "{body}");

    server.restart().await;
    let (_, view) = server.client().get(&job.id.to_string(), 0.0).await;
    assert_eq!(view["status"], "queued", "kept for an agent: {view}");
}
