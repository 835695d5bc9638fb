//! FLUX.1-dev text-to-image, as diffusers 0.42.1's `FluxPipeline.__call__` computes it
//! (pipelines/flux/pipeline_flux.py) with `true_cfg_scale` 1:
//!
//! 1. CLIP-L on the prompt padded to 77 ids: its `pooler_output` is the transformer's
//!    `pooled_projections`.
//! 2. T5 on the prompt padded to `max_sequence_length` ids (512 for FLUX.1-dev; a diffusers
//!    folder's smaller `tokenizer_2/tokenizer_config.json` `model_max_length`, as the demo
//!    model records it): the last hidden state is `encoder_hidden_states`; every text position
//!    id is zero.
//! 3. Latents: standard-normal noise from the seeded CPU generator, `[1, 16, 2⌊h/16⌋,
//!    2⌊w/16⌋]` (`prepare_latents` draws the unpacked shape), packed into 2×2 patch tokens.
//! 4. Sigmas `linspace(1, 1/steps, steps)`, shifted by `mu` from the token count and the
//!    scheduler config (`calculate_shift`); timesteps `σ·1000`. Each step the transformer gets
//!    `t / 1000` and the guidance scale through its guidance embedding (FLUX.1-dev is
//!    guidance-distilled: one transformer call per step, no classifier-free guidance), then a
//!    flow-matching Euler step.
//! 5. Unpack, `latents / scaling_factor + shift_factor`, VAE decode, RGB8.
//!
//! A negative prompt would need true classifier-free guidance (`true_cfg_scale > 1`), which
//! requests do not carry, so it is refused rather than ignored.

use std::path::Path;

use serde::Deserialize;
use tch::Tensor;

use super::{
    ImageRequest, PipelineError, Placement, RenderedImage, component_weights, decode, seeded_noise,
    vae_scale_factor,
};
use crate::engine::diffusion::clip::{ClipLayout, ClipTextConfig, ClipTextModel};
use crate::engine::diffusion::clip_tokenizer::ClipTokenizer;
use crate::engine::diffusion::flux::{
    FluxConfig, FluxInput, FluxLayout, FluxTransformer, latent_image_ids, latent_size,
    pack_latents, text_ids, unpack_latents,
};
use crate::engine::diffusion::scheduler::{FlowMatchConfig, FlowMatchEuler};
use crate::engine::diffusion::t5::{
    FLUX_DEV_MAX_LENGTH, T5Config, T5EncoderModel, T5Layout, T5Tokenizer,
};
use crate::engine::diffusion::vae::{VaeConfig, VaeDecoder, VaeLayout};
use crate::engine::diffusion::weights::{TensorSource, read_config};

/// The name requests use for Flux's only sampler.
pub const SAMPLER_NAME: &str = "flow_euler";

/// What a Flux pipeline is made of, whatever files it came from.
#[derive(Debug, Clone)]
pub struct FluxConfigs {
    pub clip: ClipTextConfig,
    pub t5: T5Config,
    pub transformer: FluxConfig,
    pub vae: VaeConfig,
    pub schedule: FlowMatchConfig,
}

/// The two tokenizers: CLIP's (77 ids) and T5's (`max_sequence_length` ids).
#[derive(Debug)]
pub struct FluxTokenizers {
    pub clip: ClipTokenizer,
    pub t5: T5Tokenizer,
}

/// Where each component's tensors are, and how they are named.
#[expect(missing_debug_implementations, reason = "tensor sources are not Debug")]
pub struct FluxSources<'a> {
    pub clip: (&'a dyn TensorSource, ClipLayout),
    pub t5: (&'a dyn TensorSource, T5Layout),
    pub transformer: (&'a dyn TensorSource, FluxLayout),
    pub vae: (&'a dyn TensorSource, VaeLayout),
}

/// A loaded FLUX.1-dev pipeline.
#[derive(Debug)]
pub struct FluxPipeline {
    tokenizers: FluxTokenizers,
    clip: ClipTextModel,
    t5: T5EncoderModel,
    transformer: FluxTransformer,
    vae: VaeDecoder,
    schedule: FlowMatchConfig,
    placement: Placement,
}

/// The fields of `model_index.json` this pipeline reads.
#[derive(Debug, Deserialize)]
struct ModelIndex {
    #[serde(rename = "_class_name")]
    class_name: String,
}

impl FluxConfigs {
    /// Reads the configs and tokenizers of a diffusers `FluxPipeline` folder.
    pub fn from_diffusers(dir: &Path) -> Result<(Self, FluxTokenizers), PipelineError> {
        let index_path = dir.join("model_index.json");
        let index: ModelIndex = read_config(&index_path, |text| {
            serde_json::from_str(text).map_err(|e| {
                format!("is not a diffusers model_index.json ({e}); download it again")
            })
        })?;
        if index.class_name != "FluxPipeline" {
            return Err(PipelineError::Format(format!(
                "{}: pipeline class `{}` is not a FluxPipeline",
                index_path.display(),
                index.class_name
            )));
        }
        let max_length = t5_max_length(&dir.join("tokenizer_2/tokenizer_config.json"))?;
        let tokenizers = FluxTokenizers {
            clip: ClipTokenizer::from_dir(&dir.join("tokenizer"))?,
            t5: T5Tokenizer::from_file(&dir.join("tokenizer_2/tokenizer.json"), max_length)?,
        };
        let configs = Self {
            clip: ClipTextConfig::from_file(&dir.join("text_encoder/config.json"))?,
            t5: T5Config::from_file(&dir.join("text_encoder_2/config.json"))?,
            transformer: FluxConfig::from_file(&dir.join("transformer/config.json"))?,
            vae: VaeConfig::from_file(&dir.join("vae/config.json"))?,
            schedule: read_config(
                &dir.join("scheduler/scheduler_config.json"),
                flow_schedule_from_json,
            )?,
        };
        Ok((configs, tokenizers))
    }

    /// Checks that the components fit together, so a mismatched folder fails at load time.
    fn check(&self) -> Result<(), PipelineError> {
        let t = &self.transformer;
        let mismatch = |what: String| {
            Err(PipelineError::Format(format!(
                "the components do not belong together: {what}; use the files of one Flux model"
            )))
        };
        if t.in_channels != 4 * self.vae.latent_channels || t.out_width() != t.in_channels {
            return mismatch(format!(
                "the transformer takes {}-wide tokens but the VAE has {} latent channels \
                 (tokens are 2×2 patches, 4 × channels wide)",
                t.in_channels, self.vae.latent_channels
            ));
        }
        if t.joint_attention_dim != self.t5.d_model {
            return mismatch(format!(
                "the transformer takes {}-wide text states but T5 is {} wide",
                t.joint_attention_dim, self.t5.d_model
            ));
        }
        if t.pooled_projection_dim != self.clip.hidden_size {
            return mismatch(format!(
                "the transformer takes a {}-wide pooled embedding but CLIP is {} wide",
                t.pooled_projection_dim, self.clip.hidden_size
            ));
        }
        if !t.guidance_embeds {
            return Err(PipelineError::Format(
                "this transformer has no guidance embedding (a FLUX.1-schnell-like model); \
                 only guidance-distilled FLUX.1-dev models are supported"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

impl FluxPipeline {
    /// Loads a diffusers `FluxPipeline` folder (`model_index.json`, `scheduler/`,
    /// `tokenizer/`, `text_encoder/`, `tokenizer_2/`, `text_encoder_2/`, `transformer/`,
    /// `vae/`).
    pub fn load_diffusers(dir: &Path, placement: Placement) -> Result<Self, PipelineError> {
        let (configs, tokenizers) = FluxConfigs::from_diffusers(dir)?;
        let clip = component_weights(&dir.join("text_encoder"))?;
        let t5 = component_weights(&dir.join("text_encoder_2"))?;
        let transformer = component_weights(&dir.join("transformer"))?;
        let vae = component_weights(&dir.join("vae"))?;
        let bare = String::new;
        let sources = FluxSources {
            clip: (&clip, ClipLayout::HuggingFace { prefix: bare() }),
            t5: (&t5, T5Layout::HuggingFace { prefix: bare() }),
            transformer: (&transformer, FluxLayout::Diffusers { prefix: bare() }),
            vae: (&vae, VaeLayout::Diffusers { prefix: bare() }),
        };
        Self::assemble(configs, tokenizers, &sources, placement)
    }

    /// Loads the components `configs` describe from `sources`, all in the placement's kind (as
    /// `FluxPipeline` runs its VAE in the pipeline's dtype, whatever `force_upcast` says).
    pub fn assemble(
        configs: FluxConfigs,
        tokenizers: FluxTokenizers,
        sources: &FluxSources,
        placement: Placement,
    ) -> Result<Self, PipelineError> {
        configs.check()?;
        let Placement { device, kind } = placement;
        let (source, layout) = &sources.clip;
        let clip = ClipTextModel::load(configs.clip, *source, layout, false, device, kind)?;
        let (source, layout) = &sources.t5;
        let t5 = T5EncoderModel::load(configs.t5, *source, layout, device, kind)?;
        let (source, layout) = &sources.transformer;
        let transformer =
            FluxTransformer::load(configs.transformer, *source, layout, device, kind)?;
        let (source, layout) = &sources.vae;
        let vae = VaeDecoder::load(configs.vae, *source, layout, device, kind)?;
        Ok(Self {
            tokenizers,
            clip,
            t5,
            transformer,
            vae,
            schedule: configs.schedule,
            placement,
        })
    }

    /// Pixels per latent cell (8 for FLUX.1's VAE); images are sized in multiples of twice
    /// this, as latents are packed in 2×2 patches.
    pub fn vae_scale_factor(&self) -> u32 {
        vae_scale_factor(&self.vae)
    }

    /// The T5 prompt length (`max_sequence_length`).
    pub fn max_sequence_length(&self) -> usize {
        self.tokenizers.t5.max_length()
    }

    /// Renders `request`; `cancelled` is polled before every step.
    pub fn render(
        &self,
        request: &ImageRequest,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<RenderedImage, PipelineError> {
        let latents = self.denoise(request, cancelled)?;
        decode(&self.vae, &latents, request)
    }

    /// The denoised latents for `request`, unpacked (`[1, 16, h/8, w/8]`), before the VAE.
    pub fn denoise(
        &self,
        request: &ImageRequest,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Tensor, PipelineError> {
        let _no_grad = tch::no_grad_guard();
        self.check(request)?;
        let scale = i64::from(self.vae_scale_factor());
        let (height, width) =
            latent_size(i64::from(request.height), i64::from(request.width), scale);
        let tokens = (height / 2) * (width / 2);
        let scheduler =
            FlowMatchEuler::new(&self.schedule, request.steps as usize, tokens as usize)?;
        let (pooled, text) = self.encode(&request.prompt)?;
        let channels = self.transformer.config().in_channels / 4;
        let noise = seeded_noise(request.seed, &[vec![1, channels, height, width]]);
        let Placement { device, kind } = self.placement;
        let mut latents = pack_latents(&noise[0])?.to_device(device).to_kind(kind);
        let img_ids = latent_image_ids(height / 2, width / 2);
        let txt_ids = text_ids(text.size()[1]);
        let guidance = Tensor::from_slice(&[request.guidance_scale]).to_device(device);
        for (i, &t) in scheduler.timesteps().iter().enumerate() {
            if cancelled() {
                return Err(PipelineError::Cancelled);
            }
            // As diffusers: the timestep in the latents' dtype, divided by 1000 there.
            let timestep = Tensor::from_slice(&[t]).to_device(device).to_kind(kind) / 1000.0;
            let velocity = self.transformer.forward(&FluxInput {
                hidden_states: &latents,
                encoder_hidden_states: &text,
                pooled_projections: &pooled,
                timestep: &timestep,
                img_ids: &img_ids,
                txt_ids: &txt_ids,
                guidance: Some(&guidance),
            })?;
            latents = scheduler.step(&velocity, i, &latents)?;
        }
        Ok(unpack_latents(&latents, height, width)?)
    }

    /// Refuses what this pipeline cannot render as asked, before any work.
    fn check(&self, request: &ImageRequest) -> Result<(), PipelineError> {
        if request
            .negative_prompt
            .as_deref()
            .is_some_and(|n| !n.is_empty())
        {
            return Err(PipelineError::Input(
                "Flux models take no negative prompt: FLUX.1-dev is guidance-distilled and is \
                 steered by the guidance scale alone; leave negative_prompt empty"
                    .to_owned(),
            ));
        }
        if let Some(sampler) = request.sampler {
            return Err(PipelineError::Input(format!(
                "sampler `{sampler}` is for SD models; Flux renders with its flow-matching Euler \
                 sampler (`{SAMPLER_NAME}`) only, so leave the sampler unset or name that one"
            )));
        }
        let multiple = 2 * self.vae_scale_factor();
        let (width, height) = (request.width, request.height);
        if width == 0 || height == 0 || width % multiple != 0 || height % multiple != 0 {
            return Err(PipelineError::Input(format!(
                "{width}x{height} is not a size this model renders: width and height must be \
                 positive multiples of {multiple}"
            )));
        }
        if !request.guidance_scale.is_finite() {
            return Err(PipelineError::Input(format!(
                "guidance scale {} is not a number; use a value such as 3.5",
                request.guidance_scale
            )));
        }
        Ok(())
    }

    /// CLIP's pooled embedding `[1, clip_width]` and T5's states `[1, max_sequence_length,
    /// t5_width]`.
    fn encode(&self, prompt: &str) -> Result<(Tensor, Tensor), PipelineError> {
        let ids = self
            .tokenizers
            .clip
            .encode(prompt)
            .map_err(PipelineError::Input)?;
        let pooled = self
            .clip
            .forward(&Tensor::from_slice(&ids).unsqueeze(0), None)?
            .pooled;
        let ids = self.tokenizers.t5.encode_batch(&[prompt])?;
        let text = self.t5.forward(&ids)?;
        Ok((pooled, text))
    }
}

/// The T5 prompt length of a diffusers folder: `tokenizer_config.json`'s `model_max_length`
/// when it is below FLUX.1-dev's 512 (FluxPipeline refuses longer ones), else 512. FLUX.1-dev's
/// own file says 512; the demo model's says 32.
fn t5_max_length(path: &Path) -> Result<usize, PipelineError> {
    if !path.is_file() {
        return Ok(FLUX_DEV_MAX_LENGTH);
    }
    let json: serde_json::Value = read_config(path, |text| {
        serde_json::from_str(text)
            .map_err(|e| format!("is not valid JSON ({e}); download it again"))
    })?;
    let max = json["model_max_length"].as_u64().unwrap_or(u64::MAX);
    Ok(usize::try_from(max).map_or(FLUX_DEV_MAX_LENGTH, |m| m.clamp(1, FLUX_DEV_MAX_LENGTH)))
}

/// The fields of a `FlowMatchEulerDiscreteScheduler` `scheduler_config.json`, with diffusers'
/// defaults; the ones that would change the schedule away from FLUX.1-dev's must be off.
#[derive(Debug, Deserialize)]
struct FlowSchedulerFile {
    #[serde(rename = "_class_name")]
    class_name: String,
    #[serde(default = "default_train_timesteps")]
    num_train_timesteps: usize,
    #[serde(default)]
    use_dynamic_shifting: bool,
    #[serde(default = "default_base_shift")]
    base_shift: f64,
    #[serde(default = "default_max_shift")]
    max_shift: f64,
    #[serde(default = "default_base_seq_len")]
    base_image_seq_len: usize,
    #[serde(default = "default_max_seq_len")]
    max_image_seq_len: usize,
    #[serde(default)]
    shift_terminal: Option<f64>,
    #[serde(default)]
    use_karras_sigmas: bool,
    #[serde(default)]
    use_exponential_sigmas: bool,
    #[serde(default)]
    use_beta_sigmas: bool,
    #[serde(default)]
    invert_sigmas: bool,
    #[serde(default)]
    stochastic_sampling: bool,
    #[serde(default)]
    time_shift_type: Option<String>,
}

fn default_train_timesteps() -> usize {
    1000
}
fn default_base_shift() -> f64 {
    0.5
}
fn default_max_shift() -> f64 {
    1.15
}
fn default_base_seq_len() -> usize {
    256
}
fn default_max_seq_len() -> usize {
    4096
}

/// Parses a Flux `scheduler_config.json` into the flow-matching schedule.
pub fn flow_schedule_from_json(text: &str) -> Result<FlowMatchConfig, String> {
    let file: FlowSchedulerFile = serde_json::from_str(text)
        .map_err(|e| format!("is not a diffusers scheduler config ({e}); download it again"))?;
    if file.class_name != "FlowMatchEulerDiscreteScheduler" {
        return Err(format!(
            "scheduler `{}` is not FlowMatchEulerDiscreteScheduler; use the Flux model's own \
             scheduler/scheduler_config.json",
            file.class_name
        ));
    }
    if !file.use_dynamic_shifting {
        return Err(
            "use_dynamic_shifting is false (a FLUX.1-schnell-like schedule); only FLUX.1-dev's \
             resolution-dependent shifting is supported"
                .to_owned(),
        );
    }
    let off = [
        ("shift_terminal", file.shift_terminal.is_some()),
        ("use_karras_sigmas", file.use_karras_sigmas),
        ("use_exponential_sigmas", file.use_exponential_sigmas),
        ("use_beta_sigmas", file.use_beta_sigmas),
        ("invert_sigmas", file.invert_sigmas),
        ("stochastic_sampling", file.stochastic_sampling),
        (
            "time_shift_type",
            file.time_shift_type
                .as_deref()
                .is_some_and(|t| t != "exponential"),
        ),
    ];
    if let Some((field, _)) = off.iter().find(|(_, set)| *set) {
        return Err(format!(
            "{field} is set; FLUX.1-dev's schedule does not use it and this engine does not \
             support it, so remove it from the config"
        ));
    }
    if file.max_image_seq_len == file.base_image_seq_len {
        return Err(format!(
            "base_image_seq_len and max_image_seq_len are both {}; the shift cannot be \
             interpolated, the config is corrupt",
            file.base_image_seq_len
        ));
    }
    Ok(FlowMatchConfig {
        num_train_timesteps: file.num_train_timesteps,
        base_shift: file.base_shift,
        max_shift: file.max_shift,
        base_image_seq_len: file.base_image_seq_len,
        max_image_seq_len: file.max_image_seq_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_flux_dev_scheduler_config_parses() {
        let dev = r#"{"_class_name": "FlowMatchEulerDiscreteScheduler",
            "_diffusers_version": "0.30.0.dev0", "base_image_seq_len": 256, "base_shift": 0.5,
            "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000,
            "shift": 3.0, "use_dynamic_shifting": true}"#;
        assert_eq!(
            flow_schedule_from_json(dev).expect("parses"),
            FlowMatchConfig::flux_dev()
        );
    }

    #[test]
    fn schedules_other_than_flux_dev_are_refused_with_the_reason() {
        let schnell = r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0,
            "use_dynamic_shifting": false}"#;
        let err = flow_schedule_from_json(schnell).expect_err("is refused");
        assert!(err.contains("use_dynamic_shifting"), "{err}");
        let karras = r#"{"_class_name": "FlowMatchEulerDiscreteScheduler",
            "use_dynamic_shifting": true, "use_karras_sigmas": true}"#;
        let err = flow_schedule_from_json(karras).expect_err("is refused");
        assert!(err.contains("use_karras_sigmas"), "{err}");
        let euler = r#"{"_class_name": "EulerDiscreteScheduler"}"#;
        let err = flow_schedule_from_json(euler).expect_err("is refused");
        assert!(err.contains("FlowMatchEulerDiscreteScheduler"), "{err}");
    }
}
