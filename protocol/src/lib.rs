//! Wire types between the infermine agent and coordinator.
//!
//! The agent dials `GET /v1/agent/ws` and the two sides exchange JSON text frames, each an
//! object with a `type` tag:
//!
//! ```text
//! agent                                  coordinator
//!   hello {protocol, token, gpus, models} ──▶
//!                                        ◀── welcome {session, heartbeat_s, slots}
//!                                        ◀── job {id, model, params, lease_ms, slot}
//!   accepted {job}                       ──▶
//!   token {job, index, text}*            ──▶   (LLM jobs stream as they decode)
//!   result {job, output, metrics}        ──▶   or failed {job, reason, retryable}
//!   heartbeat {gpus}                     ◀─▶   heartbeat {time_ms}
//!                                        ◀── cancel {job}
//!                                        ◀── challenge {id, model, file, offset, len}
//!   proof {id, sha256}                   ──▶
//! ```
//!
//! Everything here is plain serde data: no I/O, no runtime. [`PROTOCOL_VERSION`] is sent in
//! the hello; the coordinator refuses an agent it cannot talk to with
//! [`CloseCode::IncompatibleProtocol`]. Fields added later are optional, so frames written by
//! older peers keep parsing (the frozen payloads under `tests/frozen/` guard that).

mod close;
mod job;
mod message;

pub use close::CloseCode;
pub use job::{
    ChatMessage, ImageParams, JobOutput, JobParams, LlmParams, LlmScoreParams, LlmUsage, Metrics,
    ModelKind, SyntheticParams, TokenScore,
};
pub use message::{
    AgentMessage, CoordinatorMessage, DeviceKind, GpuInfo, GpuStats, Hello, JobAssignment,
    JobResult, ModelInfo, SlotInfo, Welcome,
};

/// Version of this protocol. Bump it only for a change an older peer cannot parse.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest text frame either side accepts. Image outputs travel through object storage,
/// not through the socket, so nothing legitimate comes close.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// A job's identity: a UUID (v7, so ids sort by creation time).
pub type JobId = uuid::Uuid;

/// Parses one text frame sent by an agent.
pub fn decode_agent(text: &str) -> Result<AgentMessage, serde_json::Error> {
    serde_json::from_str(text)
}

/// Parses one text frame sent by the coordinator.
pub fn decode_coordinator(text: &str) -> Result<CoordinatorMessage, serde_json::Error> {
    serde_json::from_str(text)
}

/// Serializes a message for the wire. Infallible for these types: every field is plain data.
pub fn encode<T: serde::Serialize>(message: &T) -> String {
    serde_json::to_string(message).expect("protocol messages always serialize")
}
