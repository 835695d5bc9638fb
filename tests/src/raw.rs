//! A bare protocol peer over a real WebSocket: sends exactly the frames a test asks for, so
//! tests can break the rules on purpose, and the load generator can run thousands of agents
//! in one process.

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use infermine_protocol::{
    AgentMessage, CoordinatorMessage, DeviceKind, GpuInfo, Hello, JobOutput, JobParams, ModelInfo,
    PROTOCOL_VERSION, Welcome, decode_coordinator, encode,
};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// What arrived from the coordinator.
#[derive(Debug)]
pub enum Frame {
    Message(CoordinatorMessage),
    Closed { code: u16, reason: String },
    TimedOut,
}

#[derive(Debug)]
pub struct RawAgent {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Answer the coordinator's heartbeats as a real agent does, so a test that waits on
    /// something slow (a Python client starting) is not dropped as silent.
    answer_heartbeats: bool,
}

/// A CPU device as an agent without a GPU reports it.
pub fn cpu_device(index: u32) -> GpuInfo {
    GpuInfo {
        index,
        kind: DeviceKind::Cpu,
        uuid: format!("cpu-{index}"),
        name: "test CPU".to_owned(),
        vram_mb: 16_384,
    }
}

/// A well-formed hello for `synthetic-echo` on `devices` CPU devices.
pub fn hello(token: &str, devices: u32) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: "raw-test-agent".to_owned(),
        token: token.to_owned(),
        gpus: (0..devices).map(cpu_device).collect(),
        models: vec![ModelInfo {
            id: "synthetic-echo".to_owned(),
            sha256: String::new(),
        }],
    }
}

/// The output an honest synthetic engine returns for `params` (zero bytes of the right length).
pub fn synthetic_output(params: &JobParams) -> JobOutput {
    let len = match params {
        JobParams::Synthetic(p) => p.output_bytes as usize,
        _ => 0,
    };
    let data = vec![0u8; len];
    JobOutput::Bytes {
        data_b64: base64::engine::general_purpose::STANDARD.encode(&data),
        sha256: hex::encode(Sha256::digest(&data)),
    }
}

impl RawAgent {
    /// Opens `ws://…/v1/agent/ws` on `base` (`ws://host:port`).
    pub async fn connect(base: &str) -> anyhow::Result<Self> {
        let url = format!("{base}/v1/agent/ws");
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
        Ok(Self {
            ws,
            answer_heartbeats: false,
        })
    }

    /// Connects and completes the hello; fails if the coordinator does not welcome us.
    pub async fn join(base: &str, token: &str, devices: u32) -> anyhow::Result<(Self, Welcome)> {
        Self::join_with(base, hello(token, devices)).await
    }

    /// [`RawAgent::join`] with a hello of the test's making (other devices or models).
    pub async fn join_with(base: &str, hello: Hello) -> anyhow::Result<(Self, Welcome)> {
        let mut agent = Self::connect(base).await?;
        agent.send(&AgentMessage::Hello(hello)).await?;
        match agent.next(Duration::from_secs(10)).await {
            Frame::Message(CoordinatorMessage::Welcome(welcome)) => Ok((agent, welcome)),
            other => anyhow::bail!("expected a welcome, got {other:?}"),
        }
    }

    pub async fn send(&mut self, message: &AgentMessage) -> anyhow::Result<()> {
        self.send_raw(Message::Text(encode(message).into())).await
    }

    pub async fn send_raw(&mut self, message: Message) -> anyhow::Result<()> {
        self.ws.send(message).await?;
        Ok(())
    }

    /// From now on, [`RawAgent::next`] answers each heartbeat with one of its own.
    pub fn answer_heartbeats(&mut self) {
        self.answer_heartbeats = true;
    }

    /// The next frame that is not a heartbeat.
    pub async fn next(&mut self, within: Duration) -> Frame {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                return Frame::TimedOut;
            };
            match next {
                Some(Ok(Message::Text(text))) => match decode_coordinator(&text) {
                    Ok(CoordinatorMessage::Heartbeat { .. }) => {
                        if self.answer_heartbeats {
                            let beat = AgentMessage::Heartbeat { gpus: Vec::new() };
                            // A failed send shows as the socket closing on the next read.
                            let _ = self.send(&beat).await;
                        }
                        continue;
                    }
                    Ok(message) => return Frame::Message(message),
                    Err(e) => panic!("coordinator sent a frame we cannot parse: {e}: {text}"),
                },
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    });
                    return Frame::Closed { code, reason };
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    return Frame::Closed {
                        code: 1006,
                        reason: e.to_string(),
                    };
                }
                None => {
                    return Frame::Closed {
                        code: 1006,
                        reason: "stream ended".to_owned(),
                    };
                }
            }
        }
    }

    /// Waits for the close frame, skipping anything else; returns its code and reason.
    pub async fn closed(&mut self, within: Duration) -> (u16, String) {
        loop {
            match self.next(within).await {
                Frame::Closed { code, reason } => return (code, reason),
                Frame::TimedOut => {
                    panic!("the coordinator did not close the socket within {within:?}")
                }
                Frame::Message(_) => continue,
            }
        }
    }
}

/// Bytes that pass for a PNG of `width`×`height` where only the header is read (the
/// coordinator checks the declared size when a result arrives): the PNG signature and an
/// IHDR chunk, then `tail`. Not decodable.
pub fn png_header(width: u32, height: u32, tail: &[u8]) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    png.extend(width.to_be_bytes());
    png.extend(height.to_be_bytes());
    png.extend([8, 2, 0, 0, 0, 0, 0, 0, 0]);
    png.extend(tail);
    png
}
