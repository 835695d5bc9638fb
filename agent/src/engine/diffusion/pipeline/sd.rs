//! SD 1.5 and SDXL text-to-image, as diffusers 0.42.1's `StableDiffusionPipeline` and
//! `StableDiffusionXLPipeline` compute it (pipelines/stable_diffusion*/pipeline_*.py):
//!
//! 1. Tokenize the prompt (and the negative prompt) to 77 ids per tokenizer.
//! 2. Encode. SD 1.5: CLIP-L's last hidden state. SDXL: the penultimate hidden states of CLIP-L
//!    and OpenCLIP bigG concatenated (768 + 1280), bigG's projected pooled state as
//!    `text_embeds`, and `time_ids` = (height, width, 0, 0, height, width). With guidance, an
//!    empty negative prompt is all zeros on SDXL (`force_zeros_for_empty_prompt`) and `""`
//!    encoded on SD 1.5.
//! 3. Latents: standard-normal noise from the seeded CPU generator, `[1, 4, h/8, w/8]`, times
//!    the sampler's initial sigma.
//! 4. Each step: the latents twice (negative, positive) through the UNet, the prediction
//!    `uncond + scale · (cond − uncond)`, then the sampler's step.
//! 5. Decode with the VAE and round to RGB8.

use std::path::Path;

use serde::Deserialize;
use tch::{Kind, Tensor};

use super::{
    ImageRequest, PipelineError, Placement, RenderedImage, component_weights, decode, seeded_noise,
    vae_scale_factor,
};
use crate::engine::diffusion::clip::{ClipLayout, ClipTextConfig, ClipTextModel};
use crate::engine::diffusion::clip_tokenizer::ClipTokenizer;
use crate::engine::diffusion::scheduler::{
    SamplerKind, ScheduleConfig, Scheduler, TimestepSpacing,
};
use crate::engine::diffusion::unet::{AddedCond, UNet, UNetConfig, UNetLayout};
use crate::engine::diffusion::vae::{VaeConfig, VaeDecoder, VaeLayout};
use crate::engine::diffusion::weights::{TensorSource, read_config};

/// Which of the two UNet pipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdFamily {
    /// SD 1.x: one CLIP-L encoder.
    Sd15,
    /// SDXL: CLIP-L and OpenCLIP bigG, size conditioning.
    Sdxl,
}

/// A text encoder with its tokenizer.
#[derive(Debug)]
struct TextEncoder {
    tokenizer: ClipTokenizer,
    model: ClipTextModel,
}

/// What an SD pipeline is made of, whatever files it came from.
#[derive(Debug, Clone)]
pub struct SdConfigs {
    pub family: SdFamily,
    /// One text encoder config per encoder (SDXL: CLIP-L, then bigG).
    pub clip: Vec<ClipTextConfig>,
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    pub schedule: ScheduleConfig,
    /// The sampler for requests that name none.
    pub default_sampler: SamplerKind,
    /// SDXL: an empty negative prompt is all zeros rather than `""` encoded.
    pub force_zeros_for_empty_prompt: bool,
}

/// Where each component's tensors are, and how they are named.
#[expect(missing_debug_implementations, reason = "tensor sources are not Debug")]
pub struct SdSources<'a> {
    pub text_encoders: Vec<(&'a dyn TensorSource, ClipLayout)>,
    pub unet: (&'a dyn TensorSource, UNetLayout),
    pub vae: (&'a dyn TensorSource, VaeLayout),
}

/// A loaded SD 1.5 or SDXL pipeline.
#[derive(Debug)]
pub struct SdPipeline {
    family: SdFamily,
    encoders: Vec<TextEncoder>,
    unet: UNet,
    vae: VaeDecoder,
    schedule: ScheduleConfig,
    default_sampler: SamplerKind,
    force_zeros_for_empty_prompt: bool,
    placement: Placement,
}

/// The fields of `model_index.json` this pipeline reads.
#[derive(Debug, Deserialize)]
struct ModelIndex {
    #[serde(rename = "_class_name")]
    class_name: String,
    #[serde(default = "default_true")]
    force_zeros_for_empty_prompt: bool,
}

fn default_true() -> bool {
    true
}

impl SdPipeline {
    /// Loads a diffusers pipeline folder (`model_index.json`, `tokenizer/`, `text_encoder/`,
    /// for SDXL `tokenizer_2/` and `text_encoder_2/`, `unet/`, `vae/`, `scheduler/`).
    pub fn load_diffusers(dir: &Path, placement: Placement) -> Result<Self, PipelineError> {
        let (configs, tokenizers) = read_configs(dir)?;
        let mut encoder_dirs = vec![dir.join("text_encoder")];
        if configs.family == SdFamily::Sdxl {
            encoder_dirs.push(dir.join("text_encoder_2"));
        }
        let encoder_weights = encoder_dirs
            .iter()
            .map(|d| component_weights(d))
            .collect::<Result<Vec<_>, _>>()?;
        let unet_weights = component_weights(&dir.join("unet"))?;
        let vae_weights = component_weights(&dir.join("vae"))?;
        let sources = SdSources {
            text_encoders: encoder_weights
                .iter()
                .map(|w| {
                    (
                        w as &dyn TensorSource,
                        ClipLayout::HuggingFace {
                            prefix: String::new(),
                        },
                    )
                })
                .collect(),
            unet: (
                &unet_weights,
                UNetLayout::Diffusers {
                    prefix: String::new(),
                },
            ),
            vae: (
                &vae_weights,
                VaeLayout::Diffusers {
                    prefix: String::new(),
                },
            ),
        };
        Self::assemble(configs, tokenizers, &sources, placement)
    }

    /// Loads the components `configs` describe from `sources`: the text encoders in order
    /// (the second with its projection), the UNet, and the VAE (in f32 when its config asks
    /// for upcasting).
    pub fn assemble(
        configs: SdConfigs,
        tokenizers: Vec<ClipTokenizer>,
        sources: &SdSources,
        placement: Placement,
    ) -> Result<Self, PipelineError> {
        let Placement { device, kind } = placement;
        let expected = match configs.family {
            SdFamily::Sd15 => 1,
            SdFamily::Sdxl => 2,
        };
        if configs.clip.len() != expected
            || tokenizers.len() != expected
            || sources.text_encoders.len() != expected
        {
            return Err(PipelineError::Format(format!(
                "{:?} has {expected} text encoders, each with a config, a tokenizer and weights",
                configs.family
            )));
        }
        let mut encoders = Vec::with_capacity(expected);
        for (i, ((config, tokenizer), (source, layout))) in configs
            .clip
            .into_iter()
            .zip(tokenizers)
            .zip(&sources.text_encoders)
            .enumerate()
        {
            let model = ClipTextModel::load(config, *source, layout, i == 1, device, kind)?;
            encoders.push(TextEncoder { tokenizer, model });
        }
        let (unet_source, unet_layout) = &sources.unet;
        let unet = UNet::load(configs.unet, *unet_source, unet_layout, device, kind)?;
        let vae_kind = if configs.vae.force_upcast {
            Kind::Float
        } else {
            kind
        };
        let (vae_source, vae_layout) = &sources.vae;
        let vae = VaeDecoder::load(configs.vae, *vae_source, vae_layout, device, vae_kind)?;
        Ok(Self {
            family: configs.family,
            encoders,
            unet,
            vae,
            schedule: configs.schedule,
            default_sampler: configs.default_sampler,
            force_zeros_for_empty_prompt: configs.force_zeros_for_empty_prompt,
            placement,
        })
    }

    /// SD 1.5 or SDXL.
    pub fn family(&self) -> SdFamily {
        self.family
    }

    /// Pixels per latent cell (8 for the published VAEs).
    pub fn vae_scale_factor(&self) -> u32 {
        vae_scale_factor(&self.vae)
    }

    /// The sampler used when a request names none (from `scheduler_config.json`'s class;
    /// Euler for a class this engine does not have, such as SD 1.5's PNDM).
    pub fn default_sampler(&self) -> SamplerKind {
        self.default_sampler
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

    /// The denoised latents for `request` (`[1, 4, h/8, w/8]`), before the VAE.
    pub fn denoise(
        &self,
        request: &ImageRequest,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Tensor, PipelineError> {
        let _no_grad = tch::no_grad_guard();
        let scale = self.vae_scale_factor();
        let (width, height) = (request.width, request.height);
        if width == 0 || height == 0 || width % scale != 0 || height % scale != 0 {
            return Err(PipelineError::Input(format!(
                "{width}x{height} is not a size this model renders: width and height must be \
                 positive multiples of {scale}"
            )));
        }
        let sampler = request.sampler.unwrap_or(self.default_sampler);
        let mut scheduler = Scheduler::new(sampler, &self.schedule, request.steps as usize)?;
        let guided = request.guidance_scale > 1.0;
        let cond = self.encode(request, guided)?;
        let channels = self.unet.config().in_channels;
        let shape = vec![
            1,
            channels,
            i64::from(height / scale),
            i64::from(width / scale),
        ];
        let draws = if sampler.needs_noise() {
            1 + request.steps as usize
        } else {
            1
        };
        let mut noise = seeded_noise(request.seed, &vec![shape; draws]).into_iter();
        let device = self.placement.device;
        let initial = noise.next().expect("one draw per latent");
        let mut latents = (initial * f64::from(scheduler.init_noise_sigma()))
            .to_device(device)
            .to_kind(self.placement.kind);
        for (i, &t) in scheduler.timesteps().to_vec().iter().enumerate() {
            if cancelled() {
                return Err(PipelineError::Cancelled);
            }
            let input = if guided {
                Tensor::cat(&[&latents, &latents], 0)
            } else {
                latents.shallow_clone()
            };
            let input = scheduler.scale_model_input(&input, i)?;
            let timestep = Tensor::from(t).to_device(device);
            let added = cond
                .added
                .as_ref()
                .map(|(text_embeds, time_ids)| AddedCond {
                    text_embeds,
                    time_ids,
                });
            let prediction = self
                .unet
                .forward(&input, &timestep, &cond.hidden, added.as_ref())?;
            let prediction = if guided {
                let parts = prediction.chunk(2, 0);
                let (uncond, text) = (&parts[0], &parts[1]);
                uncond + (text - uncond) * f64::from(request.guidance_scale)
            } else {
                prediction
            };
            let step_noise = sampler
                .needs_noise()
                .then(|| noise.next().map(|n| n.to_device(device)))
                .flatten();
            latents = scheduler.step(&prediction, i, &latents, step_noise.as_ref())?;
        }
        Ok(latents)
    }

    /// The text conditioning: `[batch, 77, dim]` hidden states and, for SDXL, the added
    /// `(text_embeds, time_ids)`; batch 2 (negative, positive) with guidance, else 1.
    fn encode(&self, request: &ImageRequest, guided: bool) -> Result<Conditioning, PipelineError> {
        let zero_negative = self.family == SdFamily::Sdxl
            && self.force_zeros_for_empty_prompt
            && request.negative_prompt.as_deref().unwrap_or("").is_empty();
        let negative = request.negative_prompt.as_deref().unwrap_or("");
        let mut prompts = vec![request.prompt.as_str()];
        if guided && !zero_negative {
            prompts.insert(0, negative);
        }
        let mut hidden = Vec::new();
        let mut pooled = None;
        for encoder in &self.encoders {
            let ids = prompts
                .iter()
                .map(|p| encoder.tokenizer.encode(p).map_err(PipelineError::Input))
                .collect::<Result<Vec<_>, _>>()?;
            let ids: Vec<Tensor> = ids.iter().map(|ids| Tensor::from_slice(ids)).collect();
            let ids = Tensor::stack(&ids, 0);
            let out = match self.family {
                SdFamily::Sd15 => encoder.model.forward(&ids, None)?,
                SdFamily::Sdxl => encoder.model.forward(&ids, Some(2))?,
            };
            hidden.push(match self.family {
                SdFamily::Sd15 => out.last_hidden_state,
                SdFamily::Sdxl => out.hidden_state.expect("asked for hidden_states[-2]"),
            });
            pooled = out.text_embeds;
        }
        let mut hidden = Tensor::cat(&hidden, -1);
        let kind = self.placement.kind;
        if guided && zero_negative {
            hidden = Tensor::cat(&[hidden.zeros_like(), hidden], 0);
        }
        let added = match self.family {
            SdFamily::Sd15 => None,
            SdFamily::Sdxl => {
                let pooled = pooled.ok_or_else(|| {
                    PipelineError::Format(
                        "the second text encoder has no text projection; SDXL needs \
                         text_encoder_2 to be a CLIPTextModelWithProjection"
                            .to_owned(),
                    )
                })?;
                let pooled = if guided && zero_negative {
                    Tensor::cat(&[pooled.zeros_like(), pooled], 0)
                } else {
                    pooled
                };
                let (h, w) = (f64::from(request.height), f64::from(request.width));
                let batch = pooled.size()[0];
                let time_ids = Tensor::from_slice(&[h, w, 0.0, 0.0, h, w])
                    .to_kind(kind)
                    .to_device(self.placement.device)
                    .view([1, 6])
                    .repeat([batch, 1]);
                Some((pooled.to_kind(kind), time_ids))
            }
        };
        Ok(Conditioning {
            hidden: hidden.to_kind(kind),
            added,
        })
    }
}

struct Conditioning {
    hidden: Tensor,
    added: Option<(Tensor, Tensor)>,
}

/// The configs and tokenizers of a diffusers pipeline folder (the files besides the weights:
/// `model_index.json`, `scheduler/`, `tokenizer*/`, and each component's `config.json`).
pub fn read_configs(dir: &Path) -> Result<(SdConfigs, Vec<ClipTokenizer>), PipelineError> {
    let index: ModelIndex = read_config(&dir.join("model_index.json"), |text| {
        serde_json::from_str(text)
            .map_err(|e| format!("is not a diffusers model_index.json ({e}); download it again"))
    })?;
    let family = match index.class_name.as_str() {
        "StableDiffusionPipeline" => SdFamily::Sd15,
        "StableDiffusionXLPipeline" => SdFamily::Sdxl,
        other => {
            return Err(PipelineError::Format(format!(
                "{}: pipeline class `{other}` is not supported here; SD 1.5 \
                 (StableDiffusionPipeline) and SDXL (StableDiffusionXLPipeline) are",
                dir.join("model_index.json").display()
            )));
        }
    };
    let suffixes: &[&str] = match family {
        SdFamily::Sd15 => &[""],
        SdFamily::Sdxl => &["", "_2"],
    };
    let tokenizers = suffixes
        .iter()
        .map(|s| ClipTokenizer::from_dir(&dir.join(format!("tokenizer{s}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let clip = suffixes
        .iter()
        .map(|s| ClipTextConfig::from_file(&dir.join(format!("text_encoder{s}/config.json"))))
        .collect::<Result<Vec<_>, _>>()?;
    let scheduler_path = dir.join("scheduler/scheduler_config.json");
    let (schedule, default_sampler) = read_config(&scheduler_path, schedule_from_json)?;
    let configs = SdConfigs {
        family,
        clip,
        unet: UNetConfig::from_file(&dir.join("unet/config.json"))?,
        vae: VaeConfig::from_file(&dir.join("vae/config.json"))?,
        schedule,
        default_sampler: default_sampler.unwrap_or(SamplerKind::Euler),
        force_zeros_for_empty_prompt: index.force_zeros_for_empty_prompt,
    };
    Ok((configs, tokenizers))
}

/// The fields of a diffusers `scheduler_config.json` that decide the noise schedule.
#[derive(Debug, Deserialize)]
struct SchedulerFile {
    #[serde(rename = "_class_name")]
    class_name: String,
    #[serde(default = "default_train_timesteps")]
    num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    beta_start: f64,
    #[serde(default = "default_beta_end")]
    beta_end: f64,
    #[serde(default = "default_beta_schedule")]
    beta_schedule: String,
    #[serde(default = "default_prediction_type")]
    prediction_type: String,
    #[serde(default)]
    steps_offset: usize,
    #[serde(default)]
    timestep_spacing: Option<String>,
    #[serde(default)]
    use_karras_sigmas: bool,
    #[serde(default)]
    clip_sample: bool,
    #[serde(default)]
    set_alpha_to_one: bool,
}

fn default_train_timesteps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_beta_schedule() -> String {
    "linear".to_owned()
}
fn default_prediction_type() -> String {
    "epsilon".to_owned()
}

/// Parses `scheduler_config.json` into the training schedule and the sampler its class names
/// (`None` for a class this engine does not have).
pub fn schedule_from_json(text: &str) -> Result<(ScheduleConfig, Option<SamplerKind>), String> {
    let file: SchedulerFile = serde_json::from_str(text)
        .map_err(|e| format!("is not a diffusers scheduler config ({e}); download it again"))?;
    if file.beta_schedule != "scaled_linear" {
        return Err(format!(
            "beta_schedule `{}` is not supported; SD 1.5 and SDXL checkpoints use \
             `scaled_linear`",
            file.beta_schedule
        ));
    }
    if file.prediction_type != "epsilon" {
        return Err(format!(
            "prediction_type `{}` is not supported (v-prediction models such as SD 2.x are \
             not served); use an epsilon-prediction SD 1.5 or SDXL checkpoint",
            file.prediction_type
        ));
    }
    if file.clip_sample || file.set_alpha_to_one {
        return Err(
            "clip_sample and set_alpha_to_one must be false (as in the published SD 1.5 \
                    and SDXL configs); this config is for another kind of model"
                .to_owned(),
        );
    }
    let timestep_spacing = match file.timestep_spacing.as_deref() {
        None => None,
        Some("linspace") => Some(TimestepSpacing::Linspace),
        Some("leading") => Some(TimestepSpacing::Leading),
        Some(other) => {
            return Err(format!(
                "timestep_spacing `{other}` is not supported; use `linspace` or `leading`"
            ));
        }
    };
    let sampler = match file.class_name.as_str() {
        "EulerDiscreteScheduler" => Some(SamplerKind::Euler),
        "EulerAncestralDiscreteScheduler" => Some(SamplerKind::EulerAncestral),
        "DPMSolverMultistepScheduler" if file.use_karras_sigmas => Some(SamplerKind::DpmPp2mKarras),
        "DDIMScheduler" => Some(SamplerKind::Ddim),
        _ => None,
    };
    let config = ScheduleConfig {
        num_train_timesteps: file.num_train_timesteps,
        beta_start: file.beta_start,
        beta_end: file.beta_end,
        steps_offset: file.steps_offset,
        timestep_spacing,
    };
    Ok((config, sampler))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_scheduler_configs_parse() {
        let sd15 = r#"{"_class_name": "PNDMScheduler", "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
            "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1}"#;
        let (config, sampler) = schedule_from_json(sd15).expect("succeeds");
        assert_eq!(config, ScheduleConfig::sd15());
        assert_eq!(sampler, None);
        let sdxl = r#"{"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
            "prediction_type": "epsilon", "steps_offset": 1, "timestep_spacing": "leading"}"#;
        let (config, sampler) = schedule_from_json(sdxl).expect("succeeds");
        assert_eq!(config, ScheduleConfig::sdxl());
        assert_eq!(sampler, Some(SamplerKind::Euler));
    }

    #[test]
    fn v_prediction_and_other_schedules_are_refused_with_the_reason() {
        let v = r#"{"_class_name": "EulerDiscreteScheduler", "beta_schedule": "scaled_linear",
            "prediction_type": "v_prediction"}"#;
        assert!(
            schedule_from_json(v)
                .expect_err("is refused")
                .contains("v-prediction")
        );
        let linear = r#"{"_class_name": "DDIMScheduler"}"#;
        assert!(
            schedule_from_json(linear)
                .expect_err("is refused")
                .contains("scaled_linear")
        );
    }
}
