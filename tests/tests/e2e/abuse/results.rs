//! Results and failures an agent has no right to report: for a job leased to another agent
//! (of another wallet), for no job at all, for a queued or a cancelled job, and results
//! replayed after the job completed, in the same session or a new one. Each is ignored: the
//! job, its output, its objects and the ledger stay as they were, and points are credited once,
//! to the agent that held the lease.

use infermine_protocol::{AgentMessage, JobAssignment, JobOutput, JobResult, LlmUsage, Metrics};
use infermine_tests::raw::RawAgent;
use infermine_tests::{Backend, Client, TestServer, WALLET};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{OTHER_WALLET, Tables, next_job, server, still_connected};
use crate::chat::{cpu_hello, join};
use crate::on_both_databases;

const MODEL: &str = "tiny-llama";

fn chat_params() -> Value {
    json!({ "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 16 })
}

/// A completion as an honest engine reports it (1 prompt token, 4 completion tokens).
fn text_result(job: Uuid, text: &str) -> AgentMessage {
    AgentMessage::Result(JobResult {
        job,
        output: JobOutput::Text {
            text: text.to_owned(),
            usage: LlmUsage {
                prompt_tokens: 1,
                completion_tokens: 4,
            },
            finish_reason: "stop".to_owned(),
            token_ids: Vec::new(),
        },
        metrics: Metrics::default(),
    })
}

/// A job leased to wallet A's agent (the holder).
async fn leased(server: &TestServer) -> (RawAgent, JobAssignment, String) {
    let mut holder = join(server, MODEL).await;
    let id = server.client().submit_ok(MODEL, chat_params()).await;
    let job = next_job(&mut holder).await;
    assert_eq!(job.id.to_string(), id);
    (holder, job, id)
}

/// An agent of wallet B that serves the same model.
async fn intruder(server: &TestServer) -> RawAgent {
    let token = infermine_server::mint_miner_token(&server.config, OTHER_WALLET, "intruder")
        .await
        .expect("token");
    let (agent, _) = RawAgent::join_with(&server.ws(), cpu_hello(&token, MODEL))
        .await
        .expect("join");
    agent
}

async fn view(client: &Client, id: &str) -> Value {
    let (status, view) = client.get(id, 0.0).await;
    assert_eq!(status, 200, "{view}");
    view
}

/// The wallets credited, one per ledger entry.
async fn credited(tables: &Tables) -> Vec<Option<String>> {
    tables.texts("SELECT wallet FROM ledger").await
}

async fn result_for_a_job_leased_to_another_wallet(backend: Backend) {
    let server = server(&backend).await;
    let (mut holder, job, id) = leased(&server).await;
    let mut intruder = intruder(&server).await;
    let tables = Tables::open(&server).await;

    intruder
        .send(&text_result(job.id, "stolen"))
        .await
        .expect("send");
    still_connected(&mut intruder).await;
    let client = server.client();
    let before = view(&client, &id).await;
    assert_eq!(before["status"], "assigned", "{before}");
    assert_eq!(before["output"], Value::Null);
    assert_eq!(tables.count("ledger").await, 0, "nothing credited");
    assert_eq!(tables.count("job_objects").await, 0, "nothing stored");

    holder
        .send(&text_result(job.id, "mine"))
        .await
        .expect("send");
    let done = client.wait_final(&id, super::WAIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"]["text"], "mine");
    assert!(
        done["miner_id"]
            .as_str()
            .is_some_and(|m| m.starts_with(WALLET)),
        "{done}"
    );
    assert_eq!(credited(&tables).await, [Some(WALLET.to_owned())]);
}
on_both_databases!(result_for_a_job_leased_to_another_wallet);

async fn failure_for_a_job_leased_to_another_agent(backend: Backend) {
    let server = server(&backend).await;
    let (mut holder, job, id) = leased(&server).await;
    let mut intruder = intruder(&server).await;
    let sabotage = AgentMessage::Failed {
        job: job.id,
        reason: "sabotage".to_owned(),
        retryable: false,
    };
    intruder.send(&sabotage).await.expect("send");
    still_connected(&mut intruder).await;
    let client = server.client();
    let during = view(&client, &id).await;
    assert_eq!(
        (&during["status"], &during["error"], &during["attempts"]),
        (&json!("assigned"), &Value::Null, &json!(1)),
        "{during}"
    );

    holder
        .send(&text_result(job.id, "mine"))
        .await
        .expect("send");
    let done = client.wait_final(&id, super::WAIT).await;
    assert_eq!(
        (&done["status"], &done["attempts"], &done["error"]),
        (&json!("completed"), &json!(1), &Value::Null),
        "{done}"
    );
}
on_both_databases!(failure_for_a_job_leased_to_another_agent);

async fn result_for_an_unknown_job(backend: Backend) {
    let server = server(&backend).await;
    let (mut holder, job, id) = leased(&server).await;
    let tables = Tables::open(&server).await;
    let before = tables.snapshot().await;
    let unknown = Uuid::now_v7();
    holder
        .send(&text_result(unknown, "from nowhere"))
        .await
        .expect("send");
    still_connected(&mut holder).await;
    assert_eq!(tables.snapshot().await, before, "nothing stored");
    let (status, body) = server.client().get(&unknown.to_string(), 0.0).await;
    assert_eq!(status, 404, "no job came of it: {body}");

    // The session goes on and its real job completes.
    holder
        .send(&text_result(job.id, "mine"))
        .await
        .expect("send");
    let done = server.client().wait_final(&id, super::WAIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(tables.count("ledger").await, 1);
}
on_both_databases!(result_for_an_unknown_job);

async fn result_for_a_queued_job(backend: Backend) {
    let server = server(&backend).await;
    let mut agent = join(&server, MODEL).await;
    // No agent serves SDXL: the job stays queued, leased to no one.
    let client = server.client();
    let image = json!({ "prompt": "a lighthouse", "width": 1024, "height": 1024, "steps": 20 });
    let id = client.submit_ok("sdxl-base-1.0", image).await;
    let tables = Tables::open(&server).await;
    let before = tables.snapshot().await;
    let job = Uuid::parse_str(&id).expect("uuid");
    agent
        .send(&text_result(job, "never asked"))
        .await
        .expect("send");
    still_connected(&mut agent).await;
    let queued = view(&client, &id).await;
    assert_eq!(
        (&queued["status"], &queued["attempts"], &queued["output"]),
        (&json!("queued"), &json!(0), &Value::Null),
        "{queued}"
    );
    assert_eq!(tables.snapshot().await, before, "nothing stored");
}
on_both_databases!(result_for_a_queued_job);

async fn result_for_a_cancelled_job(backend: Backend) {
    let server = server(&backend).await;
    let (mut holder, job, id) = leased(&server).await;
    let client = server.client();
    let (status, cancelled) = client.cancel(&id).await;
    assert_eq!(status, 200, "{cancelled}");
    let tables = Tables::open(&server).await;
    let before = tables.snapshot().await;
    holder
        .send(&text_result(job.id, "too late"))
        .await
        .expect("send");
    still_connected(&mut holder).await;
    let after = view(&client, &id).await;
    assert_eq!(
        (&after["status"], &after["output"]),
        (&json!("cancelled"), &Value::Null),
        "{after}"
    );
    assert_eq!(tables.snapshot().await, before, "nothing stored");
    assert_eq!(tables.count("ledger").await, 0, "nothing credited");
}
on_both_databases!(result_for_a_cancelled_job);

/// Completes the holder's job with `mine`; returns the job as completed and the stored
/// objects' SHA-256s.
async fn completed(server: &TestServer) -> (RawAgent, JobAssignment, Value, Vec<Option<String>>) {
    let (mut holder, job, id) = leased(server).await;
    holder
        .send(&text_result(job.id, "mine"))
        .await
        .expect("send");
    let done = server.client().wait_final(&id, super::WAIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    let tables = Tables::open(server).await;
    let objects = tables
        .texts("SELECT sha256 FROM job_objects ORDER BY name")
        .await;
    assert_eq!(objects.len(), 3, "input, output and meta");
    (holder, job, done, objects)
}

/// The same result again, and then another output, from the same session: nothing changes.
async fn result_replayed_in_the_same_session(backend: Backend) {
    let server = server(&backend).await;
    let (mut holder, job, done, objects) = completed(&server).await;
    let tables = Tables::open(&server).await;
    let before = tables.snapshot().await;
    for text in ["mine", "tampered after the fact"] {
        holder.send(&text_result(job.id, text)).await.expect("send");
    }
    still_connected(&mut holder).await;
    unchanged_since_completion(
        &server,
        &tables,
        &before,
        &job.id.to_string(),
        &done,
        &objects,
    )
    .await;
}
on_both_databases!(result_replayed_in_the_same_session);

/// The holder leaves, comes back with the same token (a new session) and replays its result.
async fn result_replayed_from_a_new_session(backend: Backend) {
    let server = server(&backend).await;
    let (holder, job, done, objects) = completed(&server).await;
    drop(holder);
    server.wait_status("gone", |s| s["agents"] == 0).await;
    let mut again = join(&server, MODEL).await;
    let tables = Tables::open(&server).await;
    let before = tables.snapshot().await;
    again
        .send(&text_result(job.id, "mine"))
        .await
        .expect("send");
    still_connected(&mut again).await;
    unchanged_since_completion(
        &server,
        &tables,
        &before,
        &job.id.to_string(),
        &done,
        &objects,
    )
    .await;
}
on_both_databases!(result_replayed_from_a_new_session);

/// The completed job, its objects and its single credit are as they were, and no table changed.
async fn unchanged_since_completion(
    server: &TestServer,
    tables: &Tables,
    before: &std::collections::BTreeMap<&'static str, i64>,
    id: &str,
    done: &Value,
    objects: &[Option<String>],
) {
    assert_eq!(
        &view(&server.client(), id).await,
        done,
        "the job is as completed"
    );
    assert_eq!(&tables.snapshot().await, before, "nothing stored");
    assert_eq!(
        tables
            .texts("SELECT sha256 FROM job_objects ORDER BY name")
            .await,
        objects
    );
    assert_eq!(credited(tables).await, [Some(WALLET.to_owned())], "once");
}
