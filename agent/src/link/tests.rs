//! Sessions driven by a fake coordinator over channels instead of a socket.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{Sink, Stream};
use infermine_protocol::{
    AgentMessage, CoordinatorMessage, JobAssignment, JobOutput, JobParams, SlotInfo,
    SyntheticParams, Welcome, decode_agent, encode,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use uuid::Uuid;

use super::session::{self, Session, SessionEnd};
use crate::config::AgentConfig;
use crate::engine::{SYNTHETIC_ECHO, synthetic_bytes};
use crate::error::AgentError;
use crate::gpu::Devices;
use crate::slots::{SlotEvent, Slots};

/// The agent's side of a fake socket.
fn agent_halves(
    to_coordinator: mpsc::Sender<Message>,
    from_coordinator: mpsc::Receiver<Message>,
) -> (
    impl Sink<Message, Error = &'static str> + Send + 'static,
    impl Stream<Item = Result<Message, Infallible>> + Send + 'static,
) {
    let sink = futures_util::sink::unfold(to_coordinator, |tx, message: Message| async move {
        tx.send(message).await.map_err(|_| "coordinator gone")?;
        Ok(tx)
    });
    let stream = futures_util::stream::unfold(from_coordinator, |mut rx| async move {
        rx.recv().await.map(|message| (Ok(message), rx))
    });
    (sink, stream)
}

/// The coordinator's side of the fake socket.
struct Coordinator {
    to_agent: mpsc::Sender<Message>,
    from_agent: mpsc::Receiver<Message>,
}

impl Coordinator {
    async fn send(&self, message: &CoordinatorMessage) {
        self.to_agent
            .send(Message::text(encode(message)))
            .await
            .expect("agent reading");
    }

    async fn close(&self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: WsCloseCode::from(code),
            reason: reason.into(),
        };
        self.to_agent
            .send(Message::Close(Some(frame)))
            .await
            .expect("agent reading");
    }

    /// The next frame from the agent other than a heartbeat.
    async fn recv(&mut self) -> Message {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.from_agent.recv())
                .await
                .expect("a frame in time")
                .expect("agent writing");
            if let Message::Text(text) = &message {
                let decoded = decode_agent(text).expect("a valid agent frame");
                if matches!(decoded, AgentMessage::Heartbeat { .. }) {
                    continue;
                }
            }
            return message;
        }
    }

    async fn recv_agent(&mut self) -> AgentMessage {
        match self.recv().await {
            Message::Text(text) => decode_agent(&text).expect("a valid agent frame"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    async fn welcome(&mut self) {
        let AgentMessage::Hello(hello) = self.recv_agent().await else {
            panic!("the first frame must be the hello");
        };
        assert_eq!(hello.protocol, infermine_protocol::PROTOCOL_VERSION);
        assert_eq!(hello.token, "miner-token");
        assert_eq!(hello.models[0].id, SYNTHETIC_ECHO);
        let slots = hello
            .gpus
            .iter()
            .map(|gpu| SlotInfo {
                gpu_index: gpu.index,
                miner_id: format!("0xabc-rig-gpu{}", gpu.index),
                models: vec![SYNTHETIC_ECHO.to_owned()],
            })
            .collect();
        self.send(&CoordinatorMessage::Welcome(Welcome {
            session: "s1".to_owned(),
            heartbeat_s: 1,
            slots,
        }))
        .await;
    }
}

/// The agent around a session: its slots and channels.
struct Agent {
    hello: infermine_protocol::Hello,
    devices: Arc<Devices>,
    slots: Slots,
    events: mpsc::Receiver<SlotEvent>,
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    models_dir: std::path::PathBuf,
}

fn agent() -> Agent {
    let config = AgentConfig::new("ws://127.0.0.1:1", "miner-token").expect("valid config");
    let devices = Devices::cpu(1);
    let (events_tx, events) = mpsc::channel(64);
    let slots = Slots::start(
        devices.infos(),
        events_tx,
        std::path::Path::new("models"),
        config.precision,
    )
    .expect("slots");
    let (stop_tx, stop_rx) = watch::channel(false);
    Agent {
        hello: super::hello(&config, &devices, &std::collections::HashMap::new()),
        devices: Arc::new(devices),
        slots,
        events,
        stop_tx,
        stop_rx,
        models_dir: "models".into(),
    }
}

/// Runs a session of `agent` against the coordinator script `script`.
async fn session_with<F, Fut>(agent: &mut Agent, script: F) -> SessionEnd
where
    F: FnOnce(Coordinator, watch::Sender<bool>) -> Fut,
    Fut: Future<Output = ()>,
{
    let (to_coordinator, from_agent) = mpsc::channel(64);
    let (to_agent, from_coordinator) = mpsc::channel(64);
    let (sink, stream) = agent_halves(to_coordinator, from_coordinator);
    let session = Session {
        hello: agent.hello.clone(),
        devices: Arc::clone(&agent.devices),
        slots: &agent.slots,
        events: &mut agent.events,
        shutdown: &mut agent.stop_rx,
        drain_timeout: Duration::from_secs(10),
        models_dir: agent.models_dir.clone(),
    };
    let coordinator = Coordinator {
        to_agent,
        from_agent,
    };
    let (end, ()) = tokio::join!(
        session::run(sink, stream, session),
        script(coordinator, agent.stop_tx.clone())
    );
    end
}

fn synthetic_job(delay_ms: u32, stream_tokens: u32) -> JobAssignment {
    JobAssignment {
        id: Uuid::now_v7(),
        model: SYNTHETIC_ECHO.to_owned(),
        slot: 0,
        params: JobParams::Synthetic(SyntheticParams {
            output_bytes: 48,
            delay_ms,
            stream_tokens,
            seed: 42,
            fail: false,
        }),
        lease_ms: 60_000,
        attempt: 1,
        upload_url: None,
    }
}

fn assert_synthetic_output(output: &JobOutput) {
    let JobOutput::Bytes { data_b64, sha256 } = output else {
        panic!("expected bytes, got {output:?}");
    };
    let data = base64::engine::general_purpose::STANDARD
        .decode(data_b64)
        .expect("base64");
    assert_eq!(data, synthetic_bytes(42, 48));
    assert_eq!(*sha256, hex::encode(Sha256::digest(&data)));
}

#[tokio::test]
async fn hello_welcome_job_accepted_tokens_result() {
    let mut agent = agent();
    let end = session_with(&mut agent, |mut coordinator, _| async move {
        coordinator.welcome().await;
        let job = synthetic_job(20, 2);
        coordinator
            .send(&CoordinatorMessage::Job(job.clone()))
            .await;
        assert_eq!(
            coordinator.recv_agent().await,
            AgentMessage::Accepted { job: job.id }
        );
        for index in 0..2 {
            let AgentMessage::Token {
                job: id,
                index: got,
                text,
            } = coordinator.recv_agent().await
            else {
                panic!("expected a token");
            };
            assert_eq!((id, got, text), (job.id, index, format!("tok{index} ")));
        }
        let AgentMessage::Result(result) = coordinator.recv_agent().await else {
            panic!("expected the result");
        };
        assert_eq!(result.job, job.id);
        assert!(result.metrics.infer_ms >= 15, "{:?}", result.metrics);
        assert_synthetic_output(&result.output);
        coordinator.close(1001, "restarting").await;
    })
    .await;
    assert!(
        matches!(end, SessionEnd::Lost(ref why) if why.contains("restarting")),
        "{end:?}"
    );
}

#[tokio::test]
async fn a_fatal_close_code_refuses_the_agent() {
    let mut agent = agent();
    let end = session_with(&mut agent, |mut coordinator, _| async move {
        let _hello = coordinator.recv_agent().await;
        coordinator.close(4001, "token revoked").await;
    })
    .await;
    assert!(
        matches!(end, SessionEnd::Refused(AgentError::Unauthorized { ref reason }) if reason == "token revoked"),
        "{end:?}"
    );
}

#[tokio::test]
async fn shutdown_refuses_new_jobs_finishes_running_ones_and_closes_normally() {
    let mut agent = agent();
    let end = session_with(&mut agent, |mut coordinator, stop| async move {
        coordinator.welcome().await;
        let running = synthetic_job(300, 0);
        coordinator
            .send(&CoordinatorMessage::Job(running.clone()))
            .await;
        assert_eq!(
            coordinator.recv_agent().await,
            AgentMessage::Accepted { job: running.id }
        );
        stop.send(true).expect("agent listening");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let late = synthetic_job(0, 0);
        coordinator
            .send(&CoordinatorMessage::Job(late.clone()))
            .await;
        let AgentMessage::Failed { job, retryable, .. } = coordinator.recv_agent().await else {
            panic!("a job sent during shutdown must be refused");
        };
        assert_eq!((job, retryable), (late.id, true));
        let AgentMessage::Result(result) = coordinator.recv_agent().await else {
            panic!("the running job must finish");
        };
        assert_eq!(result.job, running.id);
        let Message::Close(Some(frame)) = coordinator.recv().await else {
            panic!("expected a close frame");
        };
        assert_eq!(frame.code, WsCloseCode::Normal);
        coordinator.close(1000, "bye").await;
    })
    .await;
    assert!(matches!(end, SessionEnd::Shutdown), "{end:?}");
}

#[tokio::test]
async fn cancelled_jobs_report_nothing_and_free_their_slot() {
    let mut agent = agent();
    let end = session_with(&mut agent, |mut coordinator, _| async move {
        coordinator.welcome().await;
        let long = synthetic_job(60_000, 0);
        coordinator
            .send(&CoordinatorMessage::Job(long.clone()))
            .await;
        assert_eq!(
            coordinator.recv_agent().await,
            AgentMessage::Accepted { job: long.id }
        );
        coordinator
            .send(&CoordinatorMessage::Cancel { job: long.id })
            .await;
        let next = synthetic_job(0, 0);
        coordinator
            .send(&CoordinatorMessage::Job(next.clone()))
            .await;
        assert_eq!(
            coordinator.recv_agent().await,
            AgentMessage::Accepted { job: next.id }
        );
        let AgentMessage::Result(result) = coordinator.recv_agent().await else {
            panic!("expected the second job's result, and nothing for the cancelled one");
        };
        assert_eq!(result.job, next.id);
        coordinator.close(1001, "done").await;
    })
    .await;
    assert!(matches!(end, SessionEnd::Lost(_)), "{end:?}");
}

#[tokio::test]
async fn unknown_models_and_slots_fail_retryably() {
    let mut agent = agent();
    let end = session_with(&mut agent, |mut coordinator, _| async move {
        coordinator.welcome().await;
        let mut wrong_model = synthetic_job(0, 0);
        wrong_model.model = "sdxl".to_owned();
        let mut wrong_slot = synthetic_job(0, 0);
        wrong_slot.slot = 7;
        for job in [wrong_model, wrong_slot] {
            coordinator
                .send(&CoordinatorMessage::Job(job.clone()))
                .await;
            let AgentMessage::Failed {
                job: id,
                retryable,
                reason,
            } = coordinator.recv_agent().await
            else {
                panic!("expected a failure");
            };
            assert_eq!((id, retryable), (job.id, true), "{reason}");
        }
        drop(coordinator);
    })
    .await;
    assert!(matches!(end, SessionEnd::Lost(_)), "{end:?}");
}

#[tokio::test]
async fn challenges_are_answered_with_the_range_hash_or_why_not() {
    let models = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(models.path().join("tiny-model")).expect("model dir");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(models.path().join("tiny-model/model.safetensors"), &data).expect("file");
    let mut agent = agent();
    agent.models_dir = models.path().to_owned();
    agent.hello.models.push(infermine_protocol::ModelInfo {
        id: "tiny-model".to_owned(),
        sha256: String::new(),
    });
    let end = session_with(&mut agent, |mut coordinator, _| async move {
        coordinator.welcome().await;
        let challenge = |id, file: &str, offset, len| CoordinatorMessage::Challenge {
            id,
            model: "tiny-model".to_owned(),
            file: file.to_owned(),
            offset,
            len,
        };
        coordinator
            .send(&challenge(1, "model.safetensors", 500, 70_000))
            .await;
        coordinator
            .send(&challenge(2, "../../etc/passwd", 0, 10))
            .await;
        coordinator
            .send(&challenge(3, "model.safetensors", 99_999, 2))
            .await;
        let mut proofs = std::collections::BTreeMap::new();
        while proofs.len() < 3 {
            let AgentMessage::Proof { id, sha256, error } = coordinator.recv_agent().await else {
                panic!("expected proofs");
            };
            proofs.insert(id, (sha256, error));
        }
        let expected = hex::encode(Sha256::digest(&data[500..70_500]));
        assert_eq!(proofs[&1], (expected, None));
        let (sha256, error) = &proofs[&2];
        assert!(sha256.is_empty());
        assert!(
            error.as_deref().is_some_and(|e| e.contains("..")),
            "{error:?}"
        );
        let error = proofs[&3].1.as_deref().expect("past the end");
        assert!(error.contains("is 100000 bytes"), "{error}");
        let job = synthetic_job(0, 0);
        coordinator
            .send(&CoordinatorMessage::Job(job.clone()))
            .await;
        assert_eq!(
            coordinator.recv_agent().await,
            AgentMessage::Accepted { job: job.id },
            "the session goes on after refused challenges"
        );
        coordinator.close(1001, "done").await;
    })
    .await;
    assert!(matches!(end, SessionEnd::Lost(_)), "{end:?}");
}
