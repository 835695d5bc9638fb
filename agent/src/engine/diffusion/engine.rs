//! The image engine a slot runs: an image job's params in, a PNG out.
//!
//! The request is checked against the loaded model before any work (the coordinator checks the
//! registry's limits too, but a miner's own model folder decides what is possible here), the
//! pipeline renders it, and the PNG carries the parameters in a text chunk.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use infermine_protocol::{ImageParams, JobAssignment, JobOutput, JobParams, ModelKind};
use sha2::{Digest, Sha256};
use tch::Device;

use super::lora::LoraFile;
use super::pipeline::flux::{self, FluxPipeline};
use super::pipeline::flux_single_file;
use super::pipeline::png::{self, PngParameters};
use super::pipeline::sd::SdPipeline;
use super::pipeline::single_file;
use super::pipeline::{ImageRequest, PipelineError, Placement, RenderedImage};
use super::scheduler::SamplerKind;
use crate::engine::{CancelToken, Engine, EngineError, EngineEvent, Precision, catch_torch_panic};

/// A loaded text-to-image model.
#[derive(Debug)]
pub struct DiffusionEngine {
    model: String,
    files: ModelFiles,
    device: Device,
    precision: Precision,
    pipeline: Pipeline,
    /// The scale the loaded LoRAs are merged at.
    lora_scale: f64,
}

/// The files a model folder holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFiles {
    /// A diffusers pipeline folder.
    Diffusers(PathBuf),
    /// A single-file checkpoint and the LoRA files beside it, with the configs in `config/`
    /// when the folder has them (else the family's built-in ones).
    SingleFile {
        checkpoint: PathBuf,
        loras: Vec<PathBuf>,
        config_dir: Option<PathBuf>,
    },
}

/// LoRAs apply at full strength unless a request says otherwise.
const DEFAULT_LORA_SCALE: f64 = 1.0;
/// The strongest LoRA scale a request may ask for.
pub const MAX_LORA_SCALE: f64 = 2.0;

/// A loaded pipeline of either kind.
#[derive(Debug)]
enum Pipeline {
    /// SD 1.5 or SDXL.
    Sd(Box<SdPipeline>),
    /// Flux.1.
    Flux(Box<FluxPipeline>),
}

impl Pipeline {
    fn render(
        &self,
        request: &ImageRequest,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<RenderedImage, PipelineError> {
        match self {
            Self::Sd(p) => p.render(request, cancelled),
            Self::Flux(p) => p.render(request, cancelled),
        }
    }

    /// The sampler's name as requests and the PNG's parameters spell it.
    fn sampler_name(&self, requested: Option<SamplerKind>) -> &'static str {
        match self {
            Self::Sd(p) => requested.unwrap_or(p.default_sampler()).name(),
            Self::Flux(_) => flux::SAMPLER_NAME,
        }
    }
}

impl ModelFiles {
    /// What the folder `dir` holds: a diffusers pipeline (`model_index.json`), or `.safetensors`
    /// files of which exactly one is a checkpoint and the rest kohya LoRAs (told apart by their
    /// `lora_` keys).
    pub fn detect(dir: &Path) -> Result<Self, String> {
        if dir.join("model_index.json").is_file() {
            return Ok(Self::Diffusers(dir.to_owned()));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        let mut checkpoints = Vec::new();
        let mut loras = Vec::new();
        for file in files {
            let weights = single_file::open(&file).map_err(|e| e.to_string())?;
            if weights.names().any(|n| n.starts_with("lora_")) {
                loras.push(file);
            } else {
                checkpoints.push(file);
            }
        }
        match checkpoints.as_slice() {
            [checkpoint] => Ok(Self::SingleFile {
                checkpoint: checkpoint.clone(),
                loras,
                config_dir: Some(dir.join("config"))
                    .filter(|d| d.join("model_index.json").is_file()),
            }),
            [] => Err(format!(
                "{} has no checkpoint: put the model's .safetensors file (or its diffusers folder \
                 with model_index.json) there",
                dir.display()
            )),
            several => Err(format!(
                "{} has {} checkpoints ({}); a model folder holds one checkpoint and its LoRAs",
                dir.display(),
                several.len(),
                several
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

impl DiffusionEngine {
    /// Loads the model in folder `dir` (model id `model`) onto `device` in `precision`.
    pub fn load(
        model: &str,
        dir: &Path,
        device: Device,
        precision: Precision,
    ) -> Result<Self, EngineError> {
        let files = ModelFiles::detect(dir)
            .map_err(|e| EngineError::Agent(format!("cannot load model `{model}`: {e}")))?;
        let pipeline = load_pipeline(model, &files, device, precision, DEFAULT_LORA_SCALE)?;
        Ok(Self {
            model: model.to_owned(),
            files,
            device,
            precision,
            pipeline,
            lora_scale: DEFAULT_LORA_SCALE,
        })
    }

    fn has_lora(&self) -> bool {
        matches!(&self.files, ModelFiles::SingleFile { loras, .. } if !loras.is_empty())
    }

    /// Merges the LoRAs at `scale` instead of the current scale (reloads the weights).
    fn set_lora_scale(&mut self, scale: f64) -> Result<(), EngineError> {
        if scale == self.lora_scale {
            return Ok(());
        }
        self.pipeline =
            load_pipeline(&self.model, &self.files, self.device, self.precision, scale)?;
        self.lora_scale = scale;
        Ok(())
    }

    /// The pipeline's request for `params`, or why the params do not fit this model.
    fn request(&self, params: &ImageParams) -> Result<ImageRequest, EngineError> {
        let sampler = match params.scheduler.as_deref() {
            None => None,
            Some(flux::SAMPLER_NAME) if matches!(self.pipeline, Pipeline::Flux(_)) => None,
            Some(name) => Some(
                name.parse::<SamplerKind>()
                    .map_err(|e| EngineError::InvalidParams(e.to_string()))?,
            ),
        };
        if params.lora_scale.is_some() && !self.has_lora() {
            return Err(EngineError::InvalidParams(format!(
                "model `{}` has no LoRA; leave lora_scale out",
                self.model
            )));
        }
        if let Some(scale) = params.lora_scale
            && !(0.0..=MAX_LORA_SCALE as f32).contains(&scale)
        {
            return Err(EngineError::InvalidParams(format!(
                "lora_scale {scale} is out of range; use 0 (off) to {MAX_LORA_SCALE}"
            )));
        }
        if !params.guidance_scale.is_finite() || params.guidance_scale < 0.0 {
            return Err(EngineError::InvalidParams(format!(
                "guidance_scale {} is not a non-negative number",
                params.guidance_scale
            )));
        }
        Ok(ImageRequest {
            prompt: params.prompt.clone(),
            negative_prompt: (!params.negative_prompt.is_empty())
                .then(|| params.negative_prompt.clone()),
            width: params.width,
            height: params.height,
            steps: params.steps,
            guidance_scale: params.guidance_scale,
            seed: params.seed,
            sampler,
        })
    }
}

impl Engine for DiffusionEngine {
    fn run(
        &mut self,
        job: &JobAssignment,
        cancel: &CancelToken,
        _events: &mut dyn FnMut(EngineEvent),
    ) -> Result<JobOutput, EngineError> {
        let JobParams::Image(params) = &job.params else {
            return Err(EngineError::wrong_params(job, ModelKind::Image));
        };
        let request = self.request(params)?;
        self.set_lora_scale(params.lora_scale.map_or(DEFAULT_LORA_SCALE, f64::from))?;
        let sampler = self.pipeline.sampler_name(request.sampler);
        let image = catch_torch_panic("rendering", || {
            self.pipeline.render(&request, &|| cancel.is_cancelled())
        })?
        .map_err(|e| match e {
            PipelineError::Cancelled => EngineError::Cancelled,
            PipelineError::Input(m) => EngineError::InvalidParams(m),
            PipelineError::Scheduler(e) => EngineError::InvalidParams(e.to_string()),
            other => EngineError::Transient(other.to_string()),
        })?;
        let parameters = PngParameters {
            prompt: &params.prompt,
            negative_prompt: &params.negative_prompt,
            steps: params.steps,
            sampler,
            guidance_scale: params.guidance_scale,
            seed: params.seed,
            model: &self.model,
        };
        let bytes = png::encode(&image.rgb, &parameters).map_err(EngineError::Transient)?;
        Ok(JobOutput::Image {
            width: image.width,
            height: image.height,
            size_bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
            png_b64: Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
        })
    }
}

/// Loads the pipeline of `files`, merging LoRAs at `lora_scale`.
fn load_pipeline(
    model: &str,
    files: &ModelFiles,
    device: Device,
    precision: Precision,
    lora_scale: f64,
) -> Result<Pipeline, EngineError> {
    let sd = Placement::for_device(device).with_precision(precision);
    let flux = Placement::for_flux(device).with_precision(precision);
    let loaded = catch_torch_panic("loading the weights", || match files {
        ModelFiles::Diffusers(dir) if is_flux_folder(dir) => {
            FluxPipeline::load_diffusers(dir, flux).map(|p| Pipeline::Flux(Box::new(p)))
        }
        ModelFiles::Diffusers(dir) => {
            SdPipeline::load_diffusers(dir, sd).map(|p| Pipeline::Sd(Box::new(p)))
        }
        ModelFiles::SingleFile {
            checkpoint,
            loras,
            config_dir,
        } => {
            let weights = single_file::open(checkpoint)?;
            if flux_single_file::is_flux(&weights) {
                if !loras.is_empty() {
                    return Err(PipelineError::Format(
                        "LoRAs on Flux checkpoints are not supported yet; remove the LoRA files \
                         from the model folder"
                            .to_owned(),
                    ));
                }
                let folder = checkpoint.parent().unwrap_or(Path::new("."));
                let t5 = folder.join("tokenizer_2/tokenizer.json");
                return FluxPipeline::load_single_file(checkpoint, &t5, flux)
                    .map(|p| Pipeline::Flux(Box::new(p)));
            }
            drop(weights);
            let parsed = loras
                .iter()
                .map(|path| LoraFile::read(path))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| PipelineError::Format(e.to_string()))?;
            let with_scale: Vec<(&LoraFile, f64)> =
                parsed.iter().map(|lora| (lora, lora_scale)).collect();
            SdPipeline::load_single_file(checkpoint, config_dir.as_deref(), &with_scale, sd)
                .map(|p| Pipeline::Sd(Box::new(p)))
        }
    })?;
    loaded.map_err(|e| EngineError::Agent(format!("cannot load model `{model}`: {e}")))
}

/// Whether a diffusers folder holds a Flux pipeline (its `model_index.json` class).
fn is_flux_folder(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("model_index.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|index| index["_class_name"] == "FluxPipeline")
}
