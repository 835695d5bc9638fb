//! The frames of an agent session, one enum per direction.

use serde::{Deserialize, Serialize};

use crate::{JobId, JobOutput, JobParams, Metrics};

/// Frames an agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// The first frame of every session.
    Hello(Hello),
    /// The agent took the job and started (or queued) it.
    Accepted {
        job: JobId,
    },
    /// One streamed piece of an LLM completion. `index` counts from 0 within the job.
    Token {
        job: JobId,
        index: u32,
        text: String,
    },
    Result(JobResult),
    /// The job could not be done. A retryable failure sends it to another agent.
    Failed {
        job: JobId,
        reason: String,
        #[serde(default)]
        retryable: bool,
    },
    Heartbeat {
        #[serde(default)]
        gpus: Vec<GpuStats>,
    },
    /// Answer to a [`CoordinatorMessage::Challenge`]: the lowercase hex SHA-256 of the bytes
    /// asked for, or why the agent cannot hash them (then `sha256` is empty).
    Proof {
        id: u64,
        sha256: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// Frames the coordinator sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CoordinatorMessage {
    Welcome(Welcome),
    Job(JobAssignment),
    /// Stop working on a job: the consumer cancelled it or its lease moved elsewhere.
    Cancel {
        job: JobId,
    },
    Heartbeat {
        time_ms: u64,
    },
    /// Asks for the SHA-256 of `len` bytes at `offset` of one of a model's files, to prove
    /// the agent holds the file the registry lists.
    Challenge {
        id: u64,
        model: String,
        file: String,
        offset: u64,
        len: u64,
    },
}

/// Who the agent is and what it can run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// [`crate::PROTOCOL_VERSION`] of the agent.
    pub protocol: u32,
    /// The agent's build, e.g. `infermine-agent 0.1.0`.
    pub agent_version: String,
    /// The miner token minted for the wallet (a JWT).
    pub token: String,
    /// One entry per device the agent drives; each becomes a slot.
    pub gpus: Vec<GpuInfo>,
    /// Models the agent has on disk, verified, ready to load.
    pub models: Vec<ModelInfo>,
}

/// The coordinator's answer to a valid hello.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// Identifies this session in the coordinator's logs.
    pub session: String,
    /// The agent sends a heartbeat at least this often.
    pub heartbeat_s: u64,
    /// The slots the coordinator registered, one per GPU, with their miner ids.
    pub slots: Vec<SlotInfo>,
}

/// One registered slot: a GPU of the agent and the miner id its points go to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    pub gpu_index: u32,
    /// Wallet address plus a per-GPU suffix, e.g. `0xabc…-rig1-gpu0`.
    pub miner_id: String,
    /// Models this slot may be given; a model the GPU is too small for is left out.
    pub models: Vec<String>,
}

/// Whether a device is a CUDA GPU or the CPU fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Cuda,
    Cpu,
}

/// A device as the agent discovered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub kind: DeviceKind,
    /// NVML's UUID (`GPU-…`), or `cpu` for the CPU device.
    pub uuid: String,
    /// Marketing name as NVML reports it, e.g. `NVIDIA GeForce RTX 4090`.
    pub name: String,
    /// Total memory in MiB (system memory for the CPU device).
    pub vram_mb: u64,
}

/// A model the agent holds, with the SHA-256 of its manifest as it verified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    /// SHA-256 over the model's file manifest (empty for models without files).
    #[serde(default)]
    pub sha256: String,
}

/// A job pushed to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobAssignment {
    pub id: JobId,
    pub model: String,
    /// The slot (GPU index) that must run it.
    pub slot: u32,
    pub params: JobParams,
    /// The result must arrive within this many milliseconds of the frame, or the job moves
    /// to another agent.
    pub lease_ms: u64,
    /// 1 for the first attempt.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// For image jobs: a presigned HTTP PUT URL for the PNG (valid for the lease). The agent
    /// uploads there and returns the image's size and SHA-256 without `png_b64`; the
    /// coordinator checks both before it completes the job. Absent: send the PNG inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_url: Option<String>,
}

fn first_attempt() -> u32 {
    1
}

/// A finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub job: JobId,
    pub output: JobOutput,
    #[serde(default)]
    pub metrics: Metrics,
}

/// Live figures of one device, sent with heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GpuStats {
    pub index: u32,
    #[serde(default)]
    pub utilization_pct: u32,
    #[serde(default)]
    pub memory_used_mb: u64,
    #[serde(default)]
    pub temperature_c: u32,
}
