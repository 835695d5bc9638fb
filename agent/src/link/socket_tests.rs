//! The whole agent ([`crate::run_agent_with_devices`]) against a WebSocket server on a real
//! port: dialing, URL mapping, frame flow, refusal and clean shutdown.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use infermine_protocol::{
    AgentMessage, CoordinatorMessage, JobAssignment, JobParams, SlotInfo, SyntheticParams, Welcome,
    decode_agent, encode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use uuid::Uuid;

use crate::{AgentConfig, AgentError, Devices, run_agent_with_devices};

/// A listener on a free port and the base URL an operator would type for it.
async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    (listener, url)
}

/// The next frame from the agent other than a heartbeat.
async fn next_from_agent(ws: &mut WebSocketStream<TcpStream>) -> Message {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("a valid frame");
        if let Message::Text(text) = &message
            && matches!(decode_agent(text), Ok(AgentMessage::Heartbeat { .. }))
        {
            continue;
        }
        return message;
    }
}

async fn next_agent_message(ws: &mut WebSocketStream<TcpStream>) -> AgentMessage {
    match next_from_agent(ws).await {
        Message::Text(text) => decode_agent(&text).expect("an agent frame"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

async fn send(ws: &mut WebSocketStream<TcpStream>, message: &CoordinatorMessage) {
    ws.send(Message::text(encode(message))).await.expect("send");
}

#[expect(
    clippy::result_large_err,
    reason = "the signature tungstenite requires of a handshake callback"
)]
fn check_path(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    assert_eq!(request.uri().path(), "/v1/agent/ws");
    Ok(response)
}

/// Plays the coordinator for one session: welcome, one job, then asks the agent to stop.
async fn coordinator(listener: TcpListener, stop: oneshot::Sender<()>) {
    let (tcp, _) = listener.accept().await.expect("accept");
    let mut ws = tokio_tungstenite::accept_hdr_async(tcp, check_path)
        .await
        .expect("upgrade");
    let AgentMessage::Hello(hello) = next_agent_message(&mut ws).await else {
        panic!("expected the hello");
    };
    let slots = vec![SlotInfo {
        gpu_index: hello.gpus[0].index,
        miner_id: "0xabc-rig-gpu0".to_owned(),
        models: vec!["synthetic-echo".to_owned()],
    }];
    let welcome = Welcome {
        session: "s1".to_owned(),
        heartbeat_s: 1,
        slots,
    };
    send(&mut ws, &CoordinatorMessage::Welcome(welcome)).await;
    let job = JobAssignment {
        id: Uuid::now_v7(),
        model: "synthetic-echo".to_owned(),
        slot: 0,
        params: JobParams::Synthetic(SyntheticParams {
            output_bytes: 1000,
            delay_ms: 10,
            stream_tokens: 0,
            seed: 3,
            fail: false,
        }),
        lease_ms: 10_000,
        attempt: 1,
        upload_url: None,
    };
    send(&mut ws, &CoordinatorMessage::Job(job.clone())).await;
    assert_eq!(
        next_agent_message(&mut ws).await,
        AgentMessage::Accepted { job: job.id }
    );
    let AgentMessage::Result(result) = next_agent_message(&mut ws).await else {
        panic!("expected the result");
    };
    assert_eq!(result.job, job.id);
    stop.send(()).expect("agent waiting");
    let Message::Close(Some(frame)) = next_from_agent(&mut ws).await else {
        panic!("expected a close frame");
    };
    assert_eq!(frame.code, WsCloseCode::Normal);
    // Reading on lets tungstenite answer the close.
    while let Some(Ok(_)) = ws.next().await {}
}

#[tokio::test]
async fn agent_runs_a_job_over_a_real_socket_and_stops_cleanly() {
    let (listener, url) = listen().await;
    let (stop_tx, stop_rx) = oneshot::channel();
    let server = tokio::spawn(coordinator(listener, stop_tx));
    let config = AgentConfig::new(&url, "miner-token").expect("config");
    let stopped = async {
        let _ = stop_rx.await;
    };
    let run = run_agent_with_devices(config, Devices::cpu(1), stopped);
    let result = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the agent stops in time");
    server.await.expect("coordinator script passed");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn http_401_on_the_upgrade_refuses_the_token() {
    let (listener, url) = listen().await;
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut request = vec![0; 4096];
        let _ = tcp.read(&mut request).await;
        let response = "HTTP/1.1 401 Unauthorized\r\ncontent-length: 13\r\nconnection: close\r\n\r\ntoken revoked";
        tcp.write_all(response.as_bytes()).await.expect("write");
    });
    let config = AgentConfig::new(&url, "bad-token").expect("config");
    let run = run_agent_with_devices(config, Devices::cpu(1), std::future::pending());
    let err = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the agent gives up at once")
        .expect_err("a refused token is fatal");
    assert!(matches!(err, AgentError::Unauthorized { .. }), "{err}");
    assert_eq!(err.exit_code(), 2);
}

/// Benchmarks spawn many agents on one runtime, which needs the agent's future to be `Send`.
#[test]
fn the_agent_future_can_be_spawned() {
    fn assert_send<T: Send + 'static>(_: &T) {}
    let config = AgentConfig::new("ws://127.0.0.1:1", "t").expect("config");
    let run = run_agent_with_devices(config, Devices::cpu(1), std::future::pending());
    assert_send(&run);
    let run = crate::run_agent(
        AgentConfig::new("ws://127.0.0.1:1", "t").expect("config"),
        std::future::pending(),
    );
    assert_send(&run);
}
