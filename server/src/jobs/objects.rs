//! The objects kept for every completed job, for asynchronous review: `input.json` (model and
//! params as dispatched), the output (`output.png` for images, `output.json` otherwise) and
//! `meta.json` (who ran it, when, how long the coordinator saw it take, what the agent
//! reported, and the SHA-256 of the other two). Keys follow [`job_key`]; the database keeps
//! each object's key, size and SHA-256 next to the job.
//!
//! Image PNGs either travel inline (then the coordinator writes them) or were uploaded by the
//! agent to the presigned URL it got with the job (then the coordinator reads the object back
//! and checks its size and SHA-256 before anything else happens).

use base64::Engine as _;
use bytes::Bytes;
use infermine_protocol::{JobOutput, JobParams, Metrics};
use serde::Serialize;
use uuid::Uuid;

use crate::auth::sha256_hex;
use crate::storage::{Storage, StorageError, StoredObject, job_key};

/// Everything the objects of one completed job are made of.
#[derive(Debug)]
pub(crate) struct JobRecord<'a> {
    pub id: Uuid,
    pub model: &'a str,
    pub params: &'a JobParams,
    pub output: &'a JobOutput,
    pub metrics: &'a Metrics,
    pub miner_id: &'a str,
    pub wallet: &'a str,
    pub session: Uuid,
    pub attempt: u32,
    pub created_ms: i64,
    pub assigned_ms: i64,
    pub finished_ms: i64,
    /// Lease to result, as the coordinator measured it.
    pub latency_ms: u64,
}

/// Why a job's objects could not be stored or checked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ObjectError {
    /// The agent's output is wrong (the job's attempt fails, it is not the coordinator's fault).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// An object as stored, with its name within the job (`input.json`, …).
#[derive(Debug, Clone)]
pub struct JobObject {
    pub name: &'static str,
    pub stored: StoredObject,
}

/// Where an image job's PNG goes (what the presigned upload URL points at).
pub(crate) fn png_key(created_ms: i64, job: Uuid) -> String {
    job_key(created_ms, job, "output.png")
}

/// Stores (or, for uploaded PNGs, checks) the objects of a completed job. The three writes run
/// concurrently; each lands in S3 or, when S3 is down, in the spool.
pub(crate) async fn store(
    storage: &Storage,
    record: &JobRecord<'_>,
) -> Result<Vec<JobObject>, ObjectError> {
    let input = serde_json::json!({
        "job": record.id,
        "model": record.model,
        "params": record.params,
    });
    let input_put = put_json(storage, record, "input.json", &input);
    let output_put = store_output(storage, record);
    let (input, output) = tokio::try_join!(input_put, output_put)?;
    let meta = serde_json::json!({
        "job": record.id,
        "model": record.model,
        "kind": record.params.kind().as_str(),
        "miner_id": record.miner_id,
        "wallet": record.wallet,
        "session": record.session,
        "attempt": record.attempt,
        "created_ms": record.created_ms,
        "assigned_ms": record.assigned_ms,
        "finished_ms": record.finished_ms,
        "server_latency_ms": record.latency_ms,
        "agent_metrics": record.metrics,
        "objects": {
            input.name: { "key": input.stored.key, "sha256": input.stored.sha256, "size_bytes": input.stored.size_bytes },
            output.name: { "key": output.stored.key, "sha256": output.stored.sha256, "size_bytes": output.stored.size_bytes },
        },
    });
    let meta = put_json(storage, record, "meta.json", &meta).await?;
    Ok(vec![input, output, meta])
}

async fn put_json(
    storage: &Storage,
    record: &JobRecord<'_>,
    name: &'static str,
    value: &impl Serialize,
) -> Result<JobObject, ObjectError> {
    let body = serde_json::to_vec_pretty(value)
        .map_err(|e| ObjectError::Invalid(format!("cannot encode {name}: {e}")))?;
    let key = job_key(record.created_ms, record.id, name);
    let stored = storage
        .put(&key, Bytes::from(body), "application/json")
        .await?;
    Ok(JobObject { name, stored })
}

async fn store_output(storage: &Storage, record: &JobRecord<'_>) -> Result<JobObject, ObjectError> {
    let JobOutput::Image {
        width,
        height,
        size_bytes,
        sha256,
        png_b64,
    } = record.output
    else {
        return put_json(storage, record, "output.json", record.output).await;
    };
    let key = png_key(record.created_ms, record.id);
    let png = match png_b64 {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| ObjectError::Invalid(format!("png_b64 is not base64: {e}")))?,
        None => storage
            .get(&key)
            .await?
            .ok_or_else(|| {
                ObjectError::Invalid(
                    "no PNG inline and none uploaded to the job's upload_url".to_owned(),
                )
            })?
            .to_vec(),
    };
    if png.len() as u64 != *size_bytes {
        return Err(ObjectError::Invalid(format!(
            "the PNG has {} bytes, the result says {size_bytes}",
            png.len()
        )));
    }
    if sha256_hex(&png) != *sha256 {
        return Err(ObjectError::Invalid(
            "the PNG's SHA-256 does not match the result's".to_owned(),
        ));
    }
    match png_size(&png) {
        Some(size) if size == (*width, *height) => {}
        Some((w, h)) => {
            return Err(ObjectError::Invalid(format!(
                "the PNG is {w}x{h}, the result says {width}x{height}"
            )));
        }
        None => {
            return Err(ObjectError::Invalid(
                "the image is not a PNG (no PNG signature and IHDR header)".to_owned(),
            ));
        }
    }
    let stored = if png_b64.is_some() {
        storage.put(&key, Bytes::from(png), "image/png").await?
    } else {
        StoredObject {
            key,
            size_bytes: *size_bytes,
            sha256: sha256.clone(),
            spooled: false,
        }
    };
    Ok(JobObject {
        name: "output.png",
        stored,
    })
}

/// The width and height a PNG's header declares, or `None` when the bytes do not start with
/// a PNG signature and an IHDR chunk. Reads 24 bytes; decoding is the reviewer's business.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    let header = bytes
        .get(..24)
        .filter(|h| h.starts_with(SIGNATURE) && &h[12..16] == b"IHDR")?;
    let word = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    Some((word(16), word(20)))
}
