//! Inference engines: what a slot worker calls to turn a [`JobAssignment`] into a
//! [`JobOutput`].
//!
//! An engine runs on its slot's own OS thread and may block for as long as the job takes
//! (real engines run libtorch there). It streams tokens through a callback and polls a
//! [`CancelToken`] between steps. [`create`] maps a model id to its engine: the built-in
//! synthetic test engine, or the [`llm`] engine for a Hugging Face model folder in the models
//! directory.

pub mod demo;
pub mod diffusion;
pub mod llm;
mod synthetic;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use infermine_protocol::{GpuInfo, JobAssignment, JobOutput, ModelKind};

pub use synthetic::{SyntheticEngine, synthetic_bytes};

/// Model id of the synthetic engine: deterministic bytes after a delay.
pub const SYNTHETIC_ECHO: &str = "synthetic-echo";

/// Models built into the agent, served without files.
pub const BUILTIN_MODELS: &[&str] = &[SYNTHETIC_ECHO];

/// Where the files of `model` live: `<models_dir>/<model>/`.
pub fn model_dir(models_dir: &Path, model: &str) -> PathBuf {
    models_dir.join(model)
}

/// Whether this agent can serve `model`: a built-in, or a model folder with a `config.json`.
/// Says why not, with the fix.
pub fn check_available(model: &str, models_dir: &Path) -> Result<(), String> {
    if BUILTIN_MODELS.contains(&model) {
        return Ok(());
    }
    if model.contains(['/', '\\']) || model.starts_with('.') {
        return Err(format!("`{model}` is not a model id (ids have no slashes)"));
    }
    let dir = model_dir(models_dir, model);
    if ModelFormat::detect(&dir).is_some() {
        return Ok(());
    }
    let demo = if demo::is_demo_model(model) {
        format!(
            "; it is a demo model: `infermine-agent models synth --model {model} --out {}` writes it",
            models_dir.display()
        )
    } else {
        String::new()
    };
    Err(format!(
        "model `{model}` has no model folder at {} (a config.json for an LLM, a model_index.json for \
         a diffusers pipeline): download the model's files there{demo}",
        dir.display()
    ))
}

/// Something an engine reports while it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// One streamed piece of output; `index` counts from 0 within the job.
    Token { index: u32, text: String },
}

/// Set when the coordinator cancels a job; engines check it between steps and return
/// [`EngineError::Cancelled`].
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why an engine produced no output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The job was cancelled; nothing is reported to the coordinator.
    #[error("cancelled")]
    Cancelled,
    /// The params do not fit the model; no agent would do better.
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// A failure another attempt (here or on another agent) may not repeat.
    #[error("{0}")]
    Transient(String),
    /// A failure of this agent that retrying here will not fix, e.g. a model that fails to
    /// load. The job itself may still succeed elsewhere.
    #[error("{0}")]
    Agent(String),
}

impl EngineError {
    /// The job's params are for another kind of model than the engine's `kind`.
    pub fn wrong_params(job: &JobAssignment, kind: ModelKind) -> Self {
        Self::InvalidParams(format!(
            "model `{}` takes {} params, got {} params",
            job.model,
            kind.as_str(),
            job.params.kind().as_str()
        ))
    }

    /// Whether the coordinator should give the job to another attempt.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Transient(_) | Self::Agent(_))
    }
}

/// A model loaded on one device, ready to run jobs one at a time.
pub trait Engine: Send {
    /// Runs one job to completion on the calling thread. `events` receives streamed tokens;
    /// `cancel` is polled between steps.
    fn run(
        &mut self,
        job: &JobAssignment,
        cancel: &CancelToken,
        events: &mut dyn FnMut(EngineEvent),
    ) -> Result<JobOutput, EngineError>;
}

/// The number format engines run models in (`--precision`). Each engine's own choice by
/// default; forcing one trades speed or memory for agreement with other devices (an f32
/// validator and a bf16 miner round logits differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// LLMs in bf16 on CUDA and f32 on the CPU; image models in f16 (SD) or bf16 (Flux) on
    /// CUDA and f32 on the CPU.
    #[default]
    Auto,
    /// Everything in f32.
    F32,
    /// Everything in bf16 (the VAE of SD models whose config asks for it stays in f32).
    Bf16,
}

impl Precision {
    /// The name `--precision` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }

    /// The libtorch kind this precision forces, or `None` for each engine's own choice.
    pub fn kind(self) -> Option<tch::Kind> {
        match self {
            Self::Auto => None,
            Self::F32 => Some(tch::Kind::Float),
            Self::Bf16 => Some(tch::Kind::BFloat16),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            _ => Err(format!("`{s}` is not a precision: use auto, f32 or bf16")),
        }
    }
}

/// Loads the engine for `model` on `device` in `precision`. Called on the slot's thread the
/// first time the slot sees the model; the time it takes is reported as `load_ms`.
pub fn create(
    model: &str,
    device: &GpuInfo,
    models_dir: &Path,
    precision: Precision,
) -> Result<Box<dyn Engine>, EngineError> {
    if model == SYNTHETIC_ECHO {
        return Ok(Box::new(SyntheticEngine));
    }
    check_available(model, models_dir).map_err(EngineError::Agent)?;
    let dir = model_dir(models_dir, model);
    let (torch_device, dtype) = llm::placement(device, precision);
    let engine: Box<dyn Engine> = match ModelFormat::detect(&dir) {
        Some(ModelFormat::Diffusion) => Box::new(diffusion::engine::DiffusionEngine::load(
            model,
            &dir,
            torch_device,
            precision,
        )?),
        Some(ModelFormat::HuggingFaceLlm) | None => Box::new(
            llm::LlmEngine::load(&dir, torch_device, dtype)
                .map_err(|e| EngineError::Agent(format!("cannot load model `{model}`: {e}")))?,
        ),
    };
    tracing::info!(model, device = ?torch_device, precision = precision.as_str(), "model loaded");
    Ok(engine)
}

/// What kind of model folder a model directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A Hugging Face transformers folder (`config.json`): the LLM engine.
    HuggingFaceLlm,
    /// A diffusers pipeline folder (`model_index.json`), or `.safetensors` checkpoint files
    /// (a single-file image checkpoint and its LoRAs): the diffusion engine.
    Diffusion,
}

impl ModelFormat {
    /// The format of the folder `dir`, if it is one.
    pub fn detect(dir: &Path) -> Option<Self> {
        if dir.join("model_index.json").is_file() {
            Some(Self::Diffusion)
        } else if dir.join("config.json").is_file() {
            Some(Self::HuggingFaceLlm)
        } else if std::fs::read_dir(dir).ok()?.any(|entry| {
            entry
                .map(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .unwrap_or(false)
        }) {
            Some(Self::Diffusion)
        } else {
            None
        }
    }
}

/// Runs `f`, turning a libtorch panic (tch's infallible calls panic on errors such as
/// running out of device memory) into an error that says what failed.
pub(crate) fn catch_torch_panic<T>(during: &str, f: impl FnOnce() -> T) -> Result<T, EngineError> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let detail = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        if detail.contains("out of memory") {
            EngineError::Agent(format!(
                "out of device memory while {during}; choose a smaller model, or free the GPU \
                 ({})",
                detail.lines().next().unwrap_or_default()
            ))
        } else {
            EngineError::Transient(format!("libtorch failed while {during}: {detail}"))
        }
    })
}
