//! Floods: an agent sending frames past its rate is cut off while other agents and consumers
//! carry on; an API key, a wallet's pages and an address signing in past their buckets get 429
//! with `Retry-After`, the refused requests store nothing, and other keys, wallets and
//! addresses are unaffected.

use std::net::IpAddr;

use infermine_protocol::{AgentMessage, CloseCode, JobResult, Metrics};
use infermine_server::limits::Limit;
use infermine_tests::raw::{RawAgent, synthetic_output};
use infermine_tests::{Backend, Client, TestServer, WALLET};
use serde_json::{Value, json};

use super::{OTHER_WALLET, Reply, Tables, WAIT, next_job, send, still_connected};
use crate::on_both_databases;

async fn agent(server: &TestServer, rig: &str) -> RawAgent {
    let (agent, _) = RawAgent::join(&server.ws(), &server.miner_token(rig).await, 1)
        .await
        .expect("join");
    agent
}

/// The flooder holds a job when it floods: its session is closed with 1008, the job goes to
/// the honest agent, which completes it undisturbed, and consumers are served throughout.
async fn flooding_agent(backend: Backend) {
    let server = TestServer::start_with(&backend, |c| {
        c.agent_max_frames_per_s = 50;
        c.review.enabled = false;
        c.agent_timeout_s = 30;
    })
    .await;
    let mut flooder = agent(&server, "flood").await;
    let client = server.client();
    let id = client
        .submit_ok("synthetic-echo", json!({ "output_bytes": 8 }))
        .await;
    let held = next_job(&mut flooder).await;
    let mut honest = agent(&server, "honest").await;
    server.wait_slots(2).await;

    for _ in 0..1000 {
        if flooder
            .send(&AgentMessage::Heartbeat { gpus: vec![] })
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, reason) = flooder.closed(WAIT).await;
    assert_eq!(code, CloseCode::PolicyViolation.code(), "{reason}");
    assert!(reason.contains("frames per second"), "{reason}");

    let job = next_job(&mut honest).await;
    assert_eq!((job.id, job.attempt), (held.id, 2), "the job moved on");
    let result = AgentMessage::Result(JobResult {
        job: job.id,
        output: synthetic_output(&job.params),
        metrics: Metrics::default(),
    });
    honest.send(&result).await.expect("result");
    let done = client.wait_final(&id, WAIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(
        done["miner_id"]
            .as_str()
            .is_some_and(|m| m.ends_with("-honest-gpu0")),
        "{done}"
    );
    still_connected(&mut honest).await;
    let (status, _) = client.submit("synthetic-echo", json!({})).await;
    assert_eq!(status, 202, "consumers are served");
}
on_both_databases!(flooding_agent);

/// A server whose rate limits are on: `limit` for the bucket under test, roomy ones elsewhere.
async fn limited(
    backend: &Backend,
    tweak: impl FnOnce(&mut infermine_server::config::Config),
) -> TestServer {
    TestServer::start_with(backend, |c| {
        c.review.enabled = false;
        c.rate_limits.enabled = true;
        let roomy = Limit {
            per_second: 1_000,
            burst: 1_000,
        };
        c.rate_limits.per_ip = roomy;
        c.rate_limits.per_api_key = roomy;
        c.rate_limits.per_wallet = roomy;
        tweak(c);
    })
    .await
}

const TIGHT: Limit = Limit {
    per_second: 1,
    burst: 3,
};

/// Checks a flood's answers: the burst passes, then 429s with `Retry-After` and the API's
/// rate-limit error. Returns how many passed.
fn flood_refused(replies: &[(u16, Option<u64>, Value)], ok: u16) -> usize {
    let statuses: Vec<u16> = replies.iter().map(|(s, ..)| *s).collect();
    assert_eq!(&statuses[..3], [ok; 3], "the burst passes: {statuses:?}");
    let refused: Vec<_> = replies.iter().filter(|(s, ..)| *s == 429).collect();
    assert!(refused.len() >= 3, "the flood is refused: {statuses:?}");
    for (_, retry_after, body) in refused {
        assert!(
            retry_after.is_some_and(|s| (1..=2).contains(&s)),
            "{retry_after:?}"
        );
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    }
    assert!(
        statuses.iter().all(|s| *s == ok || *s == 429),
        "{statuses:?}"
    );
    statuses.iter().filter(|s| **s == ok).count()
}

async fn answer(request: reqwest::RequestBuilder) -> (u16, Option<u64>, Value) {
    let response = request.send().await.expect("send");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let status = response.status().as_u16();
    (
        status,
        retry_after,
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn flooding_api_key(backend: Backend) {
    let server = limited(&backend, |c| c.rate_limits.per_api_key = TIGHT).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/jobs", server.http());
    let body = json!({ "model": "synthetic-echo", "params": {} });
    let mut replies = Vec::new();
    for _ in 0..10 {
        replies.push(answer(http.post(&url).bearer_auth(&server.api_key).json(&body)).await);
    }
    let accepted = flood_refused(&replies, 202);
    let tables = Tables::open(&server).await;
    assert_eq!(
        tables.consumer_jobs().await,
        i64::try_from(accepted).expect("count"),
        "only the accepted requests became jobs"
    );
    let other_key = infermine_server::create_api_key(&server.config, "neighbour")
        .await
        .expect("key");
    let (status, body) = Client::new(&server.http(), &other_key)
        .submit("synthetic-echo", json!({}))
        .await;
    assert_eq!(status, 202, "another key has its own bucket: {body}");
}
on_both_databases!(flooding_api_key);

async fn flooding_a_wallets_pages(backend: Backend) {
    let server = limited(&backend, |c| c.rate_limits.per_wallet = TIGHT).await;
    let http = reqwest::Client::new();
    let page = |wallet: &str| format!("{}/api/v1/wallets/{wallet}/ledger", server.http());
    let mut replies = Vec::new();
    for _ in 0..10 {
        replies.push(answer(http.get(page(WALLET))).await);
    }
    flood_refused(&replies, 200);
    let neighbour = send(http.get(page(OTHER_WALLET))).await;
    assert_eq!(neighbour.status, 200, "another wallet: {}", neighbour.text);
    let health = send(http.get(format!("{}/healthz", server.http()))).await;
    assert_eq!(health.status, 200, "health checks are never limited");
}
on_both_databases!(flooding_a_wallets_pages);

fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .build()
        .expect("client")
}

/// Sign-in nonces from one address: the refused requests store no nonce.
async fn flooding_sign_in(backend: Backend) {
    let server = limited(&backend, |c| c.rate_limits.per_ip = TIGHT).await;
    let url = format!("{}/api/v1/auth/nonce", server.http());
    let body = json!({ "address": WALLET });
    let flooder = client_from([127, 0, 0, 1]);
    let mut replies = Vec::new();
    for _ in 0..10 {
        replies.push(answer(flooder.post(&url).json(&body)).await);
    }
    let issued = flood_refused(&replies, 200);
    let tables = Tables::open(&server).await;
    assert_eq!(
        tables.count("wallet_nonces").await,
        i64::try_from(issued).expect("count"),
        "one nonce per accepted request"
    );
    let neighbour: Reply = send(client_from([127, 0, 0, 2]).post(&url).json(&body)).await;
    assert_eq!(neighbour.status, 200, "another address: {}", neighbour.text);
}
on_both_databases!(flooding_sign_in);
