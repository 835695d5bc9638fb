//! Oversized bodies, headers, frames, prompts and names: refused with 413, 431, 422 or close
//! code 1009 before anything is stored, and the coordinator goes on serving.

use base64::Engine as _;
use infermine_protocol::{
    AgentMessage, CloseCode, JobOutput, JobResult, MAX_FRAME_BYTES, Metrics, encode,
};
use infermine_tests::raw::{RawAgent, hello};
use infermine_tests::{Backend, WALLET};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

use super::{
    Tables, WAIT, admin_token, call, next_job, raw_http, seed_case, send, server, waifu_balance,
    wallet_session,
};
use crate::on_both_databases;
use crate::openai_errors::assert_openai_error;

/// Twice the default `max_body_bytes` (1 MiB).
fn two_mib() -> String {
    "x".repeat(2 << 20)
}

async fn oversized_chat_body(backend: Backend) {
    let server = server(&backend).await;
    let tables = Tables::open(&server).await;
    let before = tables.snapshot().await;
    let body = json!({
        "model": "tiny-llama",
        "messages": [{ "role": "user", "content": two_mib() }],
    });
    let request = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.http()))
        .bearer_auth(&server.api_key)
        .json(&body);
    let reply = send(request).await;
    assert_openai_error(
        &(reply.status, reply.body),
        413,
        "invalid_request_error",
        "payload_too_large",
        None,
        "max_body_bytes",
    );
    assert_eq!(tables.snapshot().await, before, "nothing stored");
}
on_both_databases!(oversized_chat_body);

/// A body declared far larger than allowed is refused from its `Content-Length`, within the
/// server's 2 s wait for what arrives of it (none does here), not after waiting forever.
async fn oversized_declared_length(backend: Backend) {
    let server = server(&backend).await;
    let tables = Tables::open(&server).await;
    let before = tables.snapshot().await;
    let request = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 10737418240\r\n\r\n",
        server.addr, server.api_key
    );
    let response = raw_http(&server, request.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 413"),
        "refused before the body: {response:?}"
    );
    assert!(response.contains("payload_too_large"), "{response}");
    assert_eq!(tables.snapshot().await, before, "nothing stored");
}
on_both_databases!(oversized_declared_length);

async fn oversized_admin_body(backend: Backend) {
    let server = server(&backend).await;
    seed_case(&server).await;
    let tables = Tables::open(&server).await;
    let before = tables.snapshot().await;
    let body = json!({ "address": WALLET, "fraction": 1.0, "reason": two_mib() });
    let reply = call(
        "POST",
        &format!("{}/api/v1/admin/slashes", server.http()),
        Some(&admin_token(&server).await),
        Some(&body),
    )
    .await;
    reply.refused(413, "max_body_bytes");
    assert_eq!(reply.code(), "payload_too_large");
    assert_eq!(tables.snapshot().await, before, "nothing stored");
    assert_eq!(waifu_balance(&server).await, 10_000_000, "nothing slashed");
}
on_both_databases!(oversized_admin_body);

/// 200 headers (hyper allows 100): 431 before any handler runs; no job.
async fn too_many_headers(backend: Backend) {
    let server = server(&backend).await;
    let tables = Tables::open(&server).await;
    let before = tables.snapshot().await;
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/jobs", server.http()))
        .bearer_auth(&server.api_key)
        .json(&json!({ "model": "synthetic-echo", "params": {} }));
    for i in 0..200 {
        request = request.header(format!("x-pad-{i}"), "x");
    }
    let response = request.send().await.expect("send");
    assert_eq!(response.status(), 431);
    assert_eq!(tables.snapshot().await, before, "nothing stored");
    let (status, _) = server
        .client()
        .submit("synthetic-echo", json!({ "output_bytes": 1 }))
        .await;
    assert_eq!(status, 202, "the coordinator goes on serving");
}
on_both_databases!(too_many_headers);

/// The coordinator stops reading at the frame header; the kernel may reset the connection under
/// the rest of the write. Either the send fails or the close says 1009.
async fn frame_refused(agent: &mut RawAgent, frame: String) {
    if agent.send_raw(Message::Text(frame.into())).await.is_ok() {
        let (code, reason) = agent.closed(WAIT).await;
        assert!(
            code == CloseCode::MessageTooBig.code() || code == 1006,
            "expected 1009 or a reset, got {code}: {reason}"
        );
    }
}

async fn oversized_hello_frame(backend: Backend) {
    let server = server(&backend).await;
    let mut big = hello(&server.miner_token("rig").await, 1);
    let tables = Tables::open(&server).await;
    let before = tables.snapshot().await;
    big.agent_version = "x".repeat(MAX_FRAME_BYTES);
    let mut agent = RawAgent::connect(&server.ws()).await.expect("connect");
    frame_refused(&mut agent, encode(&AgentMessage::Hello(big))).await;
    let status = server.wait_status("no session", |s| s["agents"] == 0).await;
    assert_eq!(status["slots"], 0, "{status}");
    assert_eq!(tables.snapshot().await, before, "no miner recorded");
    assert_eq!(tables.count("miners").await, 0);
}
on_both_databases!(oversized_hello_frame);

/// A result larger than a frame may be: the session ends, the job goes back to the queue
/// (not completed) and nothing is stored for it.
async fn oversized_result_frame(backend: Backend) {
    let server = server(&backend).await;
    let (mut agent, _) = RawAgent::join(&server.ws(), &server.miner_token("rig").await, 1)
        .await
        .expect("join");
    let client = server.client();
    let id = client
        .submit_ok("synthetic-echo", json!({ "output_bytes": 8 }))
        .await;
    let job = next_job(&mut agent).await;
    let data = vec![0u8; MAX_FRAME_BYTES];
    let result = AgentMessage::Result(JobResult {
        job: job.id,
        output: JobOutput::Bytes {
            data_b64: base64::engine::general_purpose::STANDARD.encode(&data),
            sha256: hex::encode(Sha256::digest(&data)),
        },
        metrics: Metrics::default(),
    });
    frame_refused(&mut agent, encode(&result)).await;
    server
        .wait_status("the job requeued", |s| s["agents"] == 0 && s["queued"] == 1)
        .await;
    let (_, view) = client.get(&id, 0.0).await;
    assert_eq!(
        (&view["status"], &view["output"]),
        (&json!("queued"), &Value::Null),
        "{view}"
    );
    let tables = Tables::open(&server).await;
    assert_eq!(tables.count("job_objects").await, 0, "nothing stored");
    assert_eq!(tables.count("ledger").await, 0);
}
on_both_databases!(oversized_result_frame);

async fn oversized_image_prompt(backend: Backend) {
    let server = server(&backend).await;
    let tables = Tables::open(&server).await;
    let before = tables.snapshot().await;
    let client = server.client();
    for (field, extra) in [("prompt", ""), ("negative_prompt", "x")] {
        let mut params = json!({ "prompt": "x", "width": 1024, "height": 1024, "steps": 20 });
        params[field] = json!(format!("{extra}{}", "y".repeat(2_001)));
        let got = client.submit("sdxl-base-1.0", params).await;
        let param = format!("params.{field}");
        assert_openai_error(
            &got,
            422,
            "invalid_request_error",
            "param_too_long",
            Some(param.as_str()),
            "2000",
        );
    }
    assert_eq!(tables.snapshot().await, before, "nothing stored");
}
on_both_databases!(oversized_image_prompt);

async fn oversized_miner_token_name(backend: Backend) {
    let server = server(&backend).await;
    let session = wallet_session(&server, WALLET);
    let tables = Tables::open(&server).await;
    for name in ["r".repeat(33), "r".repeat(100_000)] {
        let reply = call(
            "POST",
            &format!("{}/api/v1/miner-tokens", server.http()),
            Some(&session),
            Some(&json!({ "name": name })),
        )
        .await;
        reply.refused(422, "1-32 characters");
        assert_eq!(
            (reply.code(), &reply.body["error"]["param"]),
            ("invalid_name", &json!("name"))
        );
    }
    assert_eq!(tables.count("miner_tokens").await, 0, "nothing minted");
}
on_both_databases!(oversized_miner_token_name);
