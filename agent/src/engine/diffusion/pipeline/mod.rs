//! Text-to-image pipelines: the components of [`super`] put together as diffusers' pipelines
//! put them together, so a request renders the same image here as in diffusers for the same
//! weights, seed and sampler.
//!
//! - [`sd`]: `StableDiffusionPipeline` (SD 1.5) and `StableDiffusionXLPipeline` (SDXL).
//! - [`single_file`]: SD 1.5 / SDXL single-file checkpoints with built-in configs.
//! - [`flux`]: `FluxPipeline` (FLUX.1-dev); [`flux_single_file`]: its all-in-one NF4 checkpoint.
//! - [`png`]: the PNG file, with the request in a `parameters` text chunk.
//!
//! The initial noise (and an ancestral sampler's per-step noise) is drawn on the CPU from a
//! generator seeded with the request's seed, in diffusers' order, so any device starts from
//! the same latents.

pub mod flux;
pub mod flux_single_file;
pub mod png;
pub mod sd;
pub mod single_file;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tch::{Device, Kind, Tensor};

use super::clip::ClipError;
use super::flux::FluxError;
use super::scheduler::{SamplerKind, SchedulerError};
use super::t5::T5Error;
use super::unet::UNetError;
use super::vae::{VaeDecoder, VaeError, to_rgb8};
use super::weights::WeightsError;
use crate::engine::Precision;
use crate::engine::llm::weights::Weights;

/// What to render.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRequest {
    pub prompt: String,
    /// `None` leaves the negative side to the pipeline's default (SDXL: zeros; SD 1.5: `""`).
    /// Flux refuses a non-empty one.
    pub negative_prompt: Option<String>,
    /// Pixels; a multiple of the VAE's scale factor (8), for Flux of twice that (16).
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    /// Classifier-free guidance scale; at 1 or below the negative side is not computed. Flux
    /// (guidance-distilled) embeds it instead and runs one pass per step (3.5 typical).
    pub guidance_scale: f32,
    pub seed: u64,
    /// `None`: the pipeline's default sampler. Flux has only its flow-matching Euler sampler
    /// and takes `None`.
    pub sampler: Option<SamplerKind>,
}

/// Why a pipeline could not load or render. Messages say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("text encoder: {0}")]
    Clip(#[from] ClipError),
    #[error("UNet: {0}")]
    UNet(#[from] UNetError),
    #[error("T5 text encoder: {0}")]
    T5(#[from] T5Error),
    #[error("Flux transformer: {0}")]
    Flux(#[from] FluxError),
    #[error("VAE: {0}")]
    Vae(#[from] VaeError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The request does not fit the model.
    #[error("{0}")]
    Input(String),
    /// The model folder is not a pipeline this engine runs.
    #[error("{0}")]
    Format(String),
    /// The caller cancelled between steps.
    #[error("cancelled")]
    Cancelled,
}

/// A rendered image: `[height, width, 3]` RGB8 on the CPU.
#[derive(Debug)]
pub struct RenderedImage {
    pub rgb: Tensor,
    pub width: u32,
    pub height: u32,
}

/// The one CPU generator all seeded noise comes from. libtorch's default generator is
/// process-wide, so draws for concurrent jobs are serialized here: a job seeds it and takes
/// all its noise in one go.
static NOISE: Mutex<()> = Mutex::new(());

/// Standard-normal f32 tensors of the given shapes on the CPU, drawn in order from a generator
/// seeded with `seed`: the same values as `torch.Generator().manual_seed(seed)` followed by one
/// `torch.randn(shape, generator=g)` per shape (same libtorch, same algorithm).
pub fn seeded_noise(seed: u64, shapes: &[Vec<i64>]) -> Vec<Tensor> {
    let _guard = NOISE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // libtorch takes the seed as a u64 too; tch's signature is i64 only by convention.
    tch::manual_seed(seed as i64);
    shapes
        .iter()
        .map(|shape| Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)))
        .collect()
}

/// Where a pipeline's tensors go: the device, the kind of the denoiser and text encoders, and
/// the VAE's kind (f32 where the VAE overflows in f16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub device: Device,
    pub kind: Kind,
}

impl Placement {
    /// f32 on the CPU; f16 on CUDA (the precision SD checkpoints are published in).
    pub fn for_device(device: Device) -> Self {
        let kind = if device.is_cuda() {
            Kind::Half
        } else {
            Kind::Float
        };
        Self { device, kind }
    }

    /// f32 on the CPU; bf16 on CUDA, the precision Flux is published and run in (its T5
    /// overflows in f16).
    pub fn for_flux(device: Device) -> Self {
        let kind = if device.is_cuda() {
            Kind::BFloat16
        } else {
            Kind::Float
        };
        Self { device, kind }
    }

    /// This placement in the kind `precision` forces, if it forces one.
    pub fn with_precision(self, precision: Precision) -> Self {
        Self {
            kind: precision.kind().unwrap_or(self.kind),
            ..self
        }
    }
}

/// Memory-maps the weights of one diffusers component folder (`unet/`, `vae/`,
/// `text_encoder/`…): `diffusion_pytorch_model.safetensors` or `model.safetensors`, or the
/// shards their `.index.json` lists.
pub fn component_weights(dir: &Path) -> Result<Weights, WeightsError> {
    for stem in ["diffusion_pytorch_model", "model"] {
        let index = dir.join(format!("{stem}.safetensors.index.json"));
        let files: Vec<PathBuf> = if index.is_file() {
            shard_files(&index)?
        } else if dir.join(format!("{stem}.safetensors")).is_file() {
            vec![dir.join(format!("{stem}.safetensors"))]
        } else {
            continue;
        };
        let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        return Weights::open_files(&paths).map_err(|e| WeightsError::File {
            path: dir.to_owned(),
            problem: e.to_string(),
        });
    }
    Err(WeightsError::File {
        path: dir.to_owned(),
        problem: "has no diffusion_pytorch_model.safetensors or model.safetensors (nor a shard \
                  index); download the component's safetensors weights into this folder"
            .to_owned(),
    })
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>, WeightsError> {
    let text = std::fs::read_to_string(index).map_err(|error| WeightsError::Io {
        path: index.to_owned(),
        error,
    })?;
    let bad = |problem: String| WeightsError::File {
        path: index.to_owned(),
        problem,
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("is not valid JSON ({e})")))?;
    let map = json["weight_map"]
        .as_object()
        .ok_or_else(|| bad("has no weight_map; download it again".to_owned()))?;
    let mut files: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    files.sort_unstable();
    files.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Pixels per latent cell of `vae`: 2 to the number of its upsampling levels (8 for the
/// published VAEs).
pub(crate) fn vae_scale_factor(vae: &VaeDecoder) -> u32 {
    1 << (vae.config().block_out_channels.len() - 1)
}

/// The image for a request's denoised `latents`: VAE decode, then RGB8 as diffusers rounds it.
pub(crate) fn decode(
    vae: &VaeDecoder,
    latents: &Tensor,
    request: &ImageRequest,
) -> Result<RenderedImage, PipelineError> {
    let _no_grad = tch::no_grad_guard();
    let image = vae.latents_to_image(latents)?;
    let rgb = to_rgb8(&image)?.get(0);
    Ok(RenderedImage {
        rgb,
        width: request.width,
        height: request.height,
    })
}
