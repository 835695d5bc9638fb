//! The agent gateway refuses what breaks the protocol with a WebSocket close code and a reason,
//! refuses results for jobs an agent does not hold, and loses no job over it.

use std::time::Duration;

use infermine_protocol::{
    AgentMessage, CloseCode, CoordinatorMessage, JobResult, Metrics, PROTOCOL_VERSION,
};
use infermine_tests::raw::{Frame, RawAgent, hello, synthetic_output};
use infermine_tests::{AgentProcess, Backend, TestServer};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

async fn first_frame_closes(server: &TestServer, frame: Message) -> (u16, String) {
    let mut agent = RawAgent::connect(&server.ws()).await.expect("connect");
    agent.send_raw(frame).await.expect("send");
    agent.closed(WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hellos_are_refused_with_a_reason() {
    let server = TestServer::start(&Backend::Sqlite).await;
    let token = server.miner_token("rig").await;

    let (code, reason) = first_frame_closes(&server, Message::Text("{not json".into())).await;
    assert_eq!(code, CloseCode::ProtocolError.code(), "{reason}");
    assert!(reason.contains("malformed hello"), "{reason}");

    let heartbeat = json!({ "type": "heartbeat", "gpus": [] }).to_string();
    let (code, reason) = first_frame_closes(&server, Message::Text(heartbeat.into())).await;
    assert_eq!(code, CloseCode::HelloExpected.code(), "{reason}");

    let mut old = hello(&token, 1);
    old.protocol = PROTOCOL_VERSION + 1;
    let text = serde_json::to_string(&AgentMessage::Hello(old)).expect("json");
    let (code, reason) = first_frame_closes(&server, Message::Text(text.into())).await;
    assert_eq!(code, CloseCode::IncompatibleProtocol.code(), "{reason}");
    assert!(reason.contains("protocol"), "{reason}");

    // A token signed by another coordinator, and a token that is not a JWT at all.
    let other = TestServer::start(&Backend::Sqlite).await;
    for bad in [other.miner_token("rig").await, "not-a-token".to_owned()] {
        let text = serde_json::to_string(&AgentMessage::Hello(hello(&bad, 1))).expect("json");
        let (code, reason) = first_frame_closes(&server, Message::Text(text.into())).await;
        assert_eq!(code, CloseCode::Unauthorized.code(), "{reason}");
        assert!(reason.contains("miner token"), "{reason}");
    }

    let text = serde_json::to_string(&AgentMessage::Hello(hello(&token, 0))).expect("json");
    let (code, reason) = first_frame_closes(&server, Message::Text(text.into())).await;
    assert_eq!(code, CloseCode::PolicyViolation.code(), "{reason}");

    let status = server.wait_status("status", |_| true).await;
    assert_eq!(
        status["agents"], 0,
        "no refused agent was registered: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_after_the_hello_close_the_session() {
    let server = TestServer::start(&Backend::Sqlite).await;
    let token = server.miner_token("rig").await;
    let cases: [(Message, CloseCode, &str); 3] = [
        (
            Message::Text(r#"{"type":"mine_faster"}"#.into()),
            CloseCode::ProtocolError,
            "malformed frame",
        ),
        (
            Message::Binary(vec![1, 2, 3].into()),
            CloseCode::ProtocolError,
            "binary",
        ),
        (
            Message::Text(
                serde_json::to_string(&AgentMessage::Hello(hello(&token, 1)))
                    .expect("json")
                    .into(),
            ),
            CloseCode::ProtocolError,
            "hello sent twice",
        ),
    ];
    for (frame, expected, mentions) in cases {
        let (mut agent, _) = RawAgent::join(&server.ws(), &token, 1).await.expect("join");
        agent.send_raw(frame).await.expect("send");
        let (code, reason) = agent.closed(WAIT).await;
        assert_eq!(code, expected.code(), "{reason}");
        assert!(
            reason.contains(mentions),
            "`{reason}` should mention `{mentions}`"
        );
    }
    server
        .wait_status("sessions gone", |s| s["agents"] == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_end_the_session_without_being_buffered() {
    let server = TestServer::start(&Backend::Sqlite).await;
    let token = server.miner_token("rig").await;
    let (mut agent, _) = RawAgent::join(&server.ws(), &token, 1).await.expect("join");
    server.wait_slots(1).await;
    let huge = Message::Text("x".repeat(infermine_protocol::MAX_FRAME_BYTES + 1).into());
    // The coordinator stops reading at the frame header, so the kernel may reset the
    // connection under the rest of our write: either the send fails, or we get the close.
    if agent.send_raw(huge).await.is_ok() {
        let (code, reason) = agent.closed(WAIT).await;
        assert!(
            code == CloseCode::MessageTooBig.code() || code == 1006,
            "expected 1009 or a reset, got {code}: {reason}"
        );
    }
    server
        .wait_status("session gone", |s| s["agents"] == 0 && s["slots"] == 0)
        .await;
    let (mut next, _) = RawAgent::join(&server.ws(), &token, 1)
        .await
        .expect("the coordinator still serves");
    assert!(matches!(
        next.next(Duration::from_millis(200)).await,
        Frame::TimedOut
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_for_jobs_held_by_someone_else_are_refused() {
    let server = TestServer::start(&Backend::Sqlite).await;
    let (mut holder, _) = RawAgent::join(&server.ws(), &server.miner_token("holder").await, 1)
        .await
        .expect("join");
    server.wait_slots(1).await;
    let client = server.client();
    let id = client
        .submit_ok("synthetic-echo", json!({ "output_bytes": 8 }))
        .await;
    let Frame::Message(CoordinatorMessage::Job(job)) = holder.next(WAIT).await else {
        panic!("no job frame")
    };
    let result = JobResult {
        job: job.id,
        output: synthetic_output(&job.params),
        metrics: Metrics::default(),
    };

    // An intruder claims the holder's job: refused, and its session goes on.
    let (mut intruder, _) = RawAgent::join(&server.ws(), &server.miner_token("intruder").await, 1)
        .await
        .expect("join");
    intruder
        .send(&AgentMessage::Result(result.clone()))
        .await
        .expect("send");
    intruder
        .send(&AgentMessage::Heartbeat { gpus: vec![] })
        .await
        .expect("send");
    assert!(
        matches!(
            intruder.next(Duration::from_millis(500)).await,
            Frame::TimedOut
        ),
        "intruder stays connected"
    );
    let (_, view) = client.get(&id, 0.0).await;
    assert_eq!(view["status"], "assigned", "{view}");

    // A result that does not match the request (wrong size) is refused and the job retried.
    let mut short = result.clone();
    short.output = synthetic_output(&infermine_protocol::JobParams::Synthetic(
        serde_json::from_value(json!({ "output_bytes": 7 })).expect("params"),
    ));
    holder
        .send(&AgentMessage::Result(short))
        .await
        .expect("send");
    let Frame::Message(CoordinatorMessage::Job(again)) = holder.next(WAIT).await else {
        panic!("job not retried")
    };
    assert_eq!((again.id, again.attempt), (job.id, 2));

    holder
        .send(&AgentMessage::Result(result.clone()))
        .await
        .expect("send");
    let view = client.wait_final(&id, WAIT).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert!(
        view["miner_id"]
            .as_str()
            .is_some_and(|m| m.ends_with("-holder-gpu0")),
        "{view}"
    );

    // Replaying the result changes nothing.
    holder
        .send(&AgentMessage::Result(result))
        .await
        .expect("send");
    let (_, replayed) = client.get(&id, 0.0).await;
    assert_eq!(replayed["finished_ms"], view["finished_ms"], "{replayed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agents_are_dropped_and_their_jobs_requeued() {
    let server = TestServer::start_with(&Backend::Sqlite, |c| {
        c.heartbeat_interval_s = 1;
        c.agent_timeout_s = 2;
    })
    .await;
    let (mut silent, _) = RawAgent::join(&server.ws(), &server.miner_token("silent").await, 1)
        .await
        .expect("join");
    let client = server.client();
    let id = client.submit_ok("synthetic-echo", json!({})).await;
    assert!(matches!(
        silent.next(WAIT).await,
        Frame::Message(CoordinatorMessage::Job(_))
    ));
    let (code, _) = silent.closed(WAIT).await;
    assert_eq!(code, CloseCode::HeartbeatTimeout.code());

    let token = server.miner_token("honest").await;
    let _agent = AgentProcess::spawn(&server, &token, &[]).await;
    let view = client.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(
        (view["status"].as_str(), view["attempts"].as_i64()),
        (Some("completed"), Some(2)),
        "{view}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_floods_are_cut_off() {
    let server = TestServer::start_with(&Backend::Sqlite, |c| c.agent_max_frames_per_s = 50).await;
    let (mut flooder, _) = RawAgent::join(&server.ws(), &server.miner_token("flood").await, 1)
        .await
        .expect("join");
    for _ in 0..500 {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_refused_token_exits_with_advice() {
    let server = TestServer::start(&Backend::Sqlite).await;
    let mut agent = AgentProcess::spawn(&server, "not-a-token", &[]).await;
    let status = agent
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("agent exits on its own");
    assert_eq!(status.code(), Some(2), "log:\n{}", agent.log());
    assert!(
        agent.log().contains("miner-token"),
        "the agent says how to get a token:\n{}",
        agent.log()
    );
}
