//! The cheater lab: the ways a dishonest miner could try to earn points with less work or a
//! false claim, built into `infermine-cheat-agent` so the coordinator's anti-cheat review can
//! be tested end to end against agents that really cheat.
//!
//! This module only exists with the `cheat-lab` cargo feature, which is off by default: the
//! `infermine-agent` miners run has none of it. Even with the feature on, nothing cheats until
//! the cheat binary calls [`init`], which reads the mode from [`MODE_ENV`] once at start.
//!
//! The agent reaches in through one-line hooks, each a no-op without a mode:
//!
//! - slots: [`rewrite_job`] before the engine runs (fewer steps, half size, another model),
//!   [`install_engine`] where the slot picks its engine (canned text), [`rewrite_output`]
//!   after it (upscaling) and [`rewrite_metrics`] on the timings;
//! - models: [`skip_verification`] instead of hashing the model files;
//! - link: [`claim_gpus`] on the hello.

mod canned;
mod upscale;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;

use infermine_protocol::{
    DeviceKind, GpuInfo, Hello, JobAssignment, JobOutput, JobParams, Metrics,
};
use sha2::{Digest, Sha256};

use crate::config::AgentConfig;
use crate::engine::{self, Engine, EngineError};
use crate::models::{self, Manifest};

/// The environment variable naming the cheat mode.
pub const MODE_ENV: &str = "INFERMINE_CHEAT";

/// The modes, as [`MODE_ENV`] spells them.
const MODES: &str =
    "fewer-steps, upscale, other-model=<id>, canned-text, tampered-weights, fake-latency, fake-gpu";

/// The GPU a `fake-gpu` agent claims for each of its devices.
const FAKE_GPU_NAME: &str = "NVIDIA H100 80GB HBM3";
const FAKE_GPU_VRAM_MB: u64 = 81_559;

/// One way to cheat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Image jobs run a quarter of the steps asked for (at least one).
    FewerSteps,
    /// Image jobs render at half the width and height, then are upscaled to the size asked.
    Upscale,
    /// Every job runs on this model's engine instead of the one it names.
    OtherModel(String),
    /// LLM jobs get a fixed paragraph, tokenized with the model's own tokenizer, without
    /// running the model.
    CannedText,
    /// Model files are not verified; the hello claims the hashes the registry pins.
    TamperedWeights,
    /// Reported inference times are inflated: `infer_ms × 10 + 2000`.
    FakeLatency,
    /// The hello claims an H100 for each device; jobs still run on the real ones.
    FakeGpu,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let mode = match value.trim() {
            "fewer-steps" => Self::FewerSteps,
            "upscale" => Self::Upscale,
            "canned-text" => Self::CannedText,
            "tampered-weights" => Self::TamperedWeights,
            "fake-latency" => Self::FakeLatency,
            "fake-gpu" => Self::FakeGpu,
            other => match other.strip_prefix("other-model=") {
                Some(id) if !id.is_empty() => Self::OtherModel(id.to_owned()),
                _ => {
                    return Err(format!(
                        "{MODE_ENV}={value:?} is not a cheat mode; use one of: {MODES}"
                    ));
                }
            },
        };
        Ok(mode)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FewerSteps => f.write_str("fewer-steps"),
            Self::Upscale => f.write_str("upscale"),
            Self::OtherModel(id) => write!(f, "other-model={id}"),
            Self::CannedText => f.write_str("canned-text"),
            Self::TamperedWeights => f.write_str("tampered-weights"),
            Self::FakeLatency => f.write_str("fake-latency"),
            Self::FakeGpu => f.write_str("fake-gpu"),
        }
    }
}

static MODE: OnceLock<Mode> = OnceLock::new();

/// Picks the cheat mode from [`MODE_ENV`] and says so loudly. Called once by
/// `infermine-cheat-agent` before the agent starts; an error stops it.
pub fn init(config: &AgentConfig) -> Result<(), String> {
    let value = std::env::var(MODE_ENV)
        .map_err(|_| format!("{MODE_ENV} is not set; use one of: {MODES}"))?;
    let mode: Mode = value.parse()?;
    if let Mode::OtherModel(id) = &mode {
        engine::check_available(id, &config.models_dir)
            .map_err(|e| format!("{MODE_ENV}={mode}: {e}"))?;
    }
    tracing::warn!(
        "CHEAT MODE {mode}: this agent cheats on purpose, for testing the coordinator's \
         anti-cheat review; never run it as a miner"
    );
    MODE.set(mode)
        .map_err(|_| "the cheat mode was already chosen".to_owned())
}

fn mode() -> Option<&'static Mode> {
    MODE.get()
}

/// The job the engine gets instead of `job`.
pub(crate) fn rewrite_job(job: &JobAssignment) -> JobAssignment {
    match mode() {
        Some(mode) => rewrite_job_for(mode, job),
        None => job.clone(),
    }
}

fn rewrite_job_for(mode: &Mode, job: &JobAssignment) -> JobAssignment {
    let mut job = job.clone();
    match (mode, &mut job.params) {
        (Mode::FewerSteps, JobParams::Image(params)) => params.steps = fewer_steps(params.steps),
        (Mode::Upscale, JobParams::Image(params)) => {
            params.width = half_size(params.width);
            params.height = half_size(params.height);
        }
        (Mode::OtherModel(id), _) => job.model.clone_from(id),
        _ => {}
    }
    job
}

/// A quarter of the steps, at least one.
fn fewer_steps(steps: u32) -> u32 {
    (steps / 4).max(1)
}

/// Half a side, rounded down to a multiple of 16, at least 16.
fn half_size(side: u32) -> u32 {
    (side / 2 / 16 * 16).max(16)
}

/// Puts the canned-text engine in the slot for an LLM job's model, so the real one is never
/// loaded.
pub(crate) fn install_engine(
    engines: &mut HashMap<String, Box<dyn Engine>>,
    job: &JobAssignment,
    models_dir: &Path,
) -> Result<(), EngineError> {
    if mode() == Some(&Mode::CannedText)
        && matches!(job.params, JobParams::Llm(_))
        && !engines.contains_key(&job.model)
    {
        let dir = engine::model_dir(models_dir, &job.model);
        engines.insert(
            job.model.clone(),
            Box::new(canned::CannedEngine::load(&dir)?),
        );
    }
    Ok(())
}

/// Turns `output` into what is reported for `requested` (the job as the coordinator sent
/// it).
pub(crate) fn rewrite_output(
    requested: &JobAssignment,
    output: &mut JobOutput,
) -> Result<(), EngineError> {
    if let (Some(Mode::Upscale), JobParams::Image(params)) = (mode(), &requested.params)
        && let Some(upscaled) = upscale::to_requested_size(output, params.width, params.height)
            .map_err(EngineError::Transient)?
    {
        *output = upscaled;
    }
    Ok(())
}

/// Inflates the reported inference time in `fake-latency` mode.
pub(crate) fn rewrite_metrics(metrics: &mut Metrics) {
    if mode() == Some(&Mode::FakeLatency) {
        *metrics = inflated(*metrics);
    }
}

fn inflated(metrics: Metrics) -> Metrics {
    Metrics {
        infer_ms: metrics.infer_ms.saturating_mul(10).saturating_add(2000),
        ..metrics
    }
}

/// In `tampered-weights` mode, the manifest digest an honest agent with intact files would
/// report, computed from the registry's pins without reading a byte of the files.
pub(crate) fn skip_verification(manifest: &Manifest) -> Option<String> {
    (mode() == Some(&Mode::TamperedWeights)).then(|| pinned_digest(manifest))
}

fn pinned_digest(manifest: &Manifest) -> String {
    models::manifest_digest(
        manifest
            .files
            .iter()
            .map(|file| {
                let pinned = file.sha256.as_deref().unwrap_or_default();
                models::manifest_line(&file.name, &pinned.to_ascii_lowercase())
            })
            .collect(),
    )
}

/// The hello with its devices dressed up as H100s in `fake-gpu` mode.
pub(crate) fn claim_gpus(mut hello: Hello) -> Hello {
    if mode() == Some(&Mode::FakeGpu) {
        for gpu in &mut hello.gpus {
            *gpu = fake_gpu(gpu);
        }
    }
    hello
}

/// An H100 in place of `real`, with a UUID that stays the same across restarts.
fn fake_gpu(real: &GpuInfo) -> GpuInfo {
    let seed = Sha256::digest(format!("infermine cheat lab {}", real.uuid));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&seed[..16]);
    let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
    GpuInfo {
        index: real.index,
        kind: DeviceKind::Cuda,
        uuid: format!("GPU-{uuid}"),
        name: FAKE_GPU_NAME.to_owned(),
        vram_mb: FAKE_GPU_VRAM_MB,
    }
}

#[cfg(test)]
mod tests {
    use infermine_protocol::{ImageParams, SyntheticParams};

    use super::*;
    use crate::models::ManifestFile;

    fn image_job(width: u32, height: u32, steps: u32) -> JobAssignment {
        JobAssignment {
            id: uuid::Uuid::now_v7(),
            model: "tiny-sd15".to_owned(),
            slot: 0,
            params: JobParams::Image(ImageParams {
                prompt: "a lighthouse".to_owned(),
                negative_prompt: String::new(),
                width,
                height,
                steps,
                guidance_scale: 7.5,
                seed: 1,
                scheduler: None,
                lora_scale: None,
            }),
            lease_ms: 60_000,
            attempt: 1,
            upload_url: None,
        }
    }

    fn image_params(job: &JobAssignment) -> &ImageParams {
        match &job.params {
            JobParams::Image(params) => params,
            other => panic!("expected image params, got {other:?}"),
        }
    }

    #[test]
    fn modes_parse_and_print_back_and_unknown_ones_list_the_choices() {
        for text in [
            "fewer-steps",
            "upscale",
            "other-model=tiny-llama",
            "canned-text",
            "tampered-weights",
            "fake-latency",
            "fake-gpu",
        ] {
            let mode: Mode = text.parse().expect(text);
            assert_eq!(mode.to_string(), text);
        }
        assert_eq!(
            "other-model=x".parse::<Mode>(),
            Ok(Mode::OtherModel("x".to_owned()))
        );
        for bad in ["", "honest", "other-model=", "FAKE-GPU"] {
            let err = bad.parse::<Mode>().expect_err(bad);
            assert!(err.contains(MODE_ENV) && err.contains(MODES), "{err}");
        }
    }

    #[test]
    fn image_jobs_lose_steps_or_size_and_other_jobs_keep_theirs() {
        let job = image_job(512, 768, 30);
        let fewer = rewrite_job_for(&Mode::FewerSteps, &job);
        assert_eq!(image_params(&fewer).steps, 7);
        assert_eq!(
            (image_params(&fewer).width, image_params(&fewer).height),
            (512, 768)
        );
        assert_eq!(
            image_params(&rewrite_job_for(&Mode::FewerSteps, &image_job(64, 64, 3))).steps,
            1
        );

        let half = rewrite_job_for(&Mode::Upscale, &job);
        assert_eq!(
            (image_params(&half).width, image_params(&half).height),
            (256, 384)
        );
        assert_eq!(image_params(&half).steps, 30);

        let other = rewrite_job_for(&Mode::OtherModel("tiny-sdxl".to_owned()), &job);
        assert_eq!(other.model, "tiny-sdxl");
        assert_eq!(other.params, job.params);

        let mut synthetic = job.clone();
        synthetic.params = JobParams::Synthetic(SyntheticParams {
            output_bytes: 1,
            delay_ms: 0,
            stream_tokens: 0,
            seed: 0,
            fail: false,
        });
        assert_eq!(rewrite_job_for(&Mode::FewerSteps, &synthetic), synthetic);
        assert_eq!(rewrite_job_for(&Mode::FakeLatency, &job), job);
    }

    #[test]
    fn steps_and_sides_round_as_documented() {
        assert_eq!([1, 3, 4, 7, 8, 50].map(fewer_steps), [1, 1, 1, 1, 2, 12]);
        assert_eq!(
            [8, 16, 32, 48, 100, 512, 1000, 1024].map(half_size),
            [16, 16, 16, 16, 48, 256, 496, 512]
        );
    }

    #[test]
    fn latency_is_inflated_tenfold_plus_two_seconds_and_nothing_else_changes() {
        let real = Metrics {
            queue_ms: 3,
            load_ms: 40,
            infer_ms: 150,
            upload_ms: 5,
        };
        assert_eq!(
            inflated(real),
            Metrics {
                infer_ms: 3500,
                ..real
            }
        );
        let huge = Metrics {
            infer_ms: u64::MAX / 2,
            ..real
        };
        assert_eq!(inflated(huge).infer_ms, u64::MAX);
    }

    #[test]
    fn the_claimed_digest_is_the_one_intact_files_give() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("a.json"), b"{}").expect("write");
        std::fs::write(dir.path().join("b.safetensors"), b"weights").expect("write");
        let pin = |name: &str, data: &[u8]| ManifestFile {
            name: name.to_owned(),
            url: None,
            size_bytes: Some(data.len() as u64),
            sha256: Some(hex::encode_upper(Sha256::digest(data))),
        };
        let manifest = Manifest {
            model: "m".to_owned(),
            files: vec![pin("b.safetensors", b"weights"), pin("a.json", b"{}")],
        };
        let honest = models::verify(dir.path(), &manifest).expect("intact files");
        std::fs::write(dir.path().join("b.safetensors"), b"tampered!").expect("tamper");
        assert_eq!(pinned_digest(&manifest), honest);
    }

    #[test]
    fn fake_gpus_are_h100s_with_stable_uuids_on_the_real_indexes() {
        let cpu = GpuInfo {
            index: 2,
            kind: DeviceKind::Cpu,
            uuid: "cpu-2".to_owned(),
            name: "Xeon (CPU)".to_owned(),
            vram_mb: 1024,
        };
        let fake = fake_gpu(&cpu);
        assert_eq!(fake.index, 2);
        assert_eq!(fake.kind, DeviceKind::Cuda);
        assert_eq!(fake.name, FAKE_GPU_NAME);
        assert_eq!(fake.vram_mb, FAKE_GPU_VRAM_MB);
        assert!(
            fake.uuid.starts_with("GPU-") && fake.uuid.len() == 40,
            "{}",
            fake.uuid
        );
        assert_eq!(fake_gpu(&cpu), fake);
        let other = GpuInfo {
            uuid: "cpu-3".to_owned(),
            ..cpu
        };
        assert_ne!(fake_gpu(&other).uuid, fake.uuid);
    }
}
