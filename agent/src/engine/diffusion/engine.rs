//! The image engine a slot runs: an image job's params in, a PNG out.
//!
//! The request is checked against the loaded model before any work (the coordinator checks the
//! registry's limits too, but a miner's own model folder decides what is possible here), the
//! pipeline renders it, and the PNG carries the parameters in a text chunk.

use std::path::Path;

use base64::Engine as _;
use infermine_protocol::{ImageParams, JobAssignment, JobOutput, JobParams, ModelKind};
use sha2::{Digest, Sha256};
use tch::Device;

use super::pipeline::png::{self, PngParameters};
use super::pipeline::sd::SdPipeline;
use super::pipeline::{ImageRequest, PipelineError, Placement};
use super::scheduler::SamplerKind;
use crate::engine::{CancelToken, Engine, EngineError, EngineEvent, catch_torch_panic};

/// A loaded text-to-image model.
#[derive(Debug)]
pub struct DiffusionEngine {
    model: String,
    pipeline: SdPipeline,
}

impl DiffusionEngine {
    /// Loads the diffusers folder `dir` (model id `model`) onto `device`.
    pub fn load(model: &str, dir: &Path, device: Device) -> Result<Self, EngineError> {
        let placement = Placement::for_device(device);
        let pipeline = catch_torch_panic("loading the weights", || {
            SdPipeline::load_diffusers(dir, placement)
        })?
        .map_err(|e| EngineError::Agent(format!("cannot load model `{model}`: {e}")))?;
        Ok(Self {
            model: model.to_owned(),
            pipeline,
        })
    }

    /// The pipeline's request for `params`, or why the params do not fit this model.
    fn request(&self, params: &ImageParams) -> Result<ImageRequest, EngineError> {
        let sampler = match params.scheduler.as_deref() {
            None => None,
            Some(name) => Some(
                name.parse::<SamplerKind>()
                    .map_err(|e| EngineError::InvalidParams(e.to_string()))?,
            ),
        };
        if params.lora_scale.is_some() {
            return Err(EngineError::InvalidParams(format!(
                "model `{}` has no LoRA; leave lora_scale out",
                self.model
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
        let sampler = request.sampler.unwrap_or(self.pipeline.default_sampler());
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
            sampler: sampler.name(),
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
