//! Single-file SD 1.5 and SDXL checkpoints (`v1-5-pruned-emaonly.safetensors`,
//! `sd_xl_base_1.0.safetensors` and the fine-tunes on model hubs): every component in one file
//! in the original layout, with no configs and no tokenizer.
//!
//! The family is told from the keys, as diffusers' `infer_diffusers_model_type` does: SDXL has
//! `conditioner.embedders.1` (OpenCLIP bigG), SD 1.5 `cond_stage_model.transformer`. The configs
//! are the published ones of stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0 (what
//! diffusers' `from_single_file` fetches from the Hub), built in; the tokenizer is CLIP's own
//! vocabulary, built in too. LoRA files in the model folder are merged as the weights load.

use std::path::Path;

use super::sd::{SdConfigs, SdFamily, SdPipeline, SdSources, read_configs};
use super::{PipelineError, Placement};
use crate::engine::diffusion::clip::{ClipLayout, ClipTextConfig};
use crate::engine::diffusion::clip_tokenizer::{ClipTokenizer, EOS};
use crate::engine::diffusion::lora::{LoraFile, LoraMerged, LoraTarget, TextEncoderSlot};
use crate::engine::diffusion::scheduler::{SamplerKind, ScheduleConfig};
use crate::engine::diffusion::unet::{UNetConfig, UNetLayout};
use crate::engine::diffusion::vae::{VaeConfig, VaeLayout};
use crate::engine::diffusion::weights::{TensorSource, WeightsError};
use crate::engine::llm::weights::Weights;

const SD15_CLIP: &str = "cond_stage_model.transformer.";
const SDXL_CLIP_L: &str = "conditioner.embedders.0.transformer.";
const SDXL_CLIP_G: &str = "conditioner.embedders.1.model.";
const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";

/// The family of a single-file checkpoint, from its keys; `None` when it is neither.
pub fn detect_family(source: &dyn TensorSource) -> Option<SdFamily> {
    let has = |name: &str| source.contains(name);
    if has(&format!(
        "{SDXL_CLIP_G}transformer.resblocks.0.attn.in_proj_weight"
    )) {
        Some(SdFamily::Sdxl)
    } else if has(&format!(
        "{SD15_CLIP}text_model.embeddings.token_embedding.weight"
    )) || has(&format!("{SD15_CLIP}embeddings.token_embedding.weight"))
    {
        Some(SdFamily::Sd15)
    } else {
        None
    }
}

/// The published configs of the family's base model, and its tokenizers.
pub fn builtin(family: SdFamily) -> Result<(SdConfigs, Vec<ClipTokenizer>), PipelineError> {
    let parse = |what: &str, r: Result<(), String>| {
        r.map_err(|e| PipelineError::Format(format!("built-in {what} config: {e}")))
    };
    let clip_l = ClipTextConfig::from_json(CLIP_L);
    let unet = UNetConfig::from_json(match family {
        SdFamily::Sd15 => SD15_UNET,
        SdFamily::Sdxl => SDXL_UNET,
    });
    let vae = VaeConfig::from_json(match family {
        SdFamily::Sd15 => SD15_VAE,
        SdFamily::Sdxl => SDXL_VAE,
    });
    let (clip_l, unet, vae) = match (clip_l, unet, vae) {
        (Ok(c), Ok(u), Ok(v)) => (c, u, v),
        (c, u, v) => {
            parse("CLIP-L", c.map(drop))?;
            parse("UNet", u.map(drop))?;
            parse("VAE", v.map(drop))?;
            unreachable!("one of the three failed")
        }
    };
    let mut clip = vec![clip_l];
    let mut tokenizers = vec![ClipTokenizer::builtin(EOS).map_err(PipelineError::Format)?];
    if family == SdFamily::Sdxl {
        clip.push(
            ClipTextConfig::from_json(CLIP_G)
                .map_err(|e| PipelineError::Format(format!("built-in bigG config: {e}")))?,
        );
        tokenizers.push(ClipTokenizer::builtin("!").map_err(PipelineError::Format)?);
    }
    let configs = SdConfigs {
        family,
        clip,
        unet,
        vae,
        schedule: match family {
            SdFamily::Sd15 => ScheduleConfig::sd15(),
            SdFamily::Sdxl => ScheduleConfig::sdxl(),
        },
        default_sampler: SamplerKind::Euler,
        force_zeros_for_empty_prompt: true,
    };
    Ok((configs, tokenizers))
}

impl SdPipeline {
    /// Loads a single-file checkpoint, merging `loras` (each with its scale). The configs
    /// are the built-in ones of its family, or those in `config_dir` when given: a diffusers
    /// folder without weights (`model_index.json`, `scheduler/`, `tokenizer*/`, each component's
    /// `config.json`), as diffusers' `from_single_file(config=...)` takes it, for checkpoints
    /// whose architecture differs from the base model's.
    pub fn load_single_file(
        checkpoint: &Path,
        config_dir: Option<&Path>,
        loras: &[(&LoraFile, f64)],
        placement: Placement,
    ) -> Result<Self, PipelineError> {
        let weights = open(checkpoint)?;
        let family = detect_family(&weights).ok_or_else(|| {
            PipelineError::Format(format!(
                "{} is not an SD 1.5, SDXL or Flux checkpoint (it has neither \
                 `cond_stage_model.transformer.*` nor `conditioner.embedders.1.*` text encoder \
                 weights); use a full single-file checkpoint, not a UNet-only or pruned file",
                checkpoint.display()
            ))
        })?;
        let (configs, tokenizers) = match config_dir {
            Some(dir) => read_configs(dir)?,
            None => builtin(family)?,
        };
        if configs.family != family {
            return Err(PipelineError::Format(format!(
                "{} holds a {family:?} checkpoint but the configs describe {:?}; use the configs \
                 of the checkpoint's own family",
                checkpoint.display(),
                configs.family
            )));
        }
        Self::load_single_file_with(&weights, configs, tokenizers, loras, placement)
    }

    /// Loads the components of a single-file checkpoint held in `weights`, described by
    /// `configs` (the built-in ones, or a test model's).
    pub fn load_single_file_with(
        weights: &dyn TensorSource,
        configs: SdConfigs,
        tokenizers: Vec<ClipTokenizer>,
        loras: &[(&LoraFile, f64)],
        placement: Placement,
    ) -> Result<Self, PipelineError> {
        let mut clip_layouts = Vec::new();
        match configs.family {
            SdFamily::Sd15 => clip_layouts.push(ClipLayout::HuggingFace {
                prefix: SD15_CLIP.to_owned(),
            }),
            SdFamily::Sdxl => {
                clip_layouts.push(ClipLayout::HuggingFace {
                    prefix: SDXL_CLIP_L.to_owned(),
                });
                clip_layouts.push(ClipLayout::OpenClip {
                    prefix: SDXL_CLIP_G.to_owned(),
                });
            }
        }
        let unet_layout = UNetLayout::Ldm {
            prefix: UNET.to_owned(),
        };
        let merged_clip = clip_layouts
            .iter()
            .enumerate()
            .map(|(i, layout)| {
                let slot = if i == 0 {
                    TextEncoderSlot::First
                } else {
                    TextEncoderSlot::Second
                };
                LoraMerged::new(weights, loras, LoraTarget::TextEncoder { slot, layout })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PipelineError::Format(e.to_string()))?;
        let merged_unet = LoraMerged::new(
            weights,
            loras,
            LoraTarget::UNet {
                config: &configs.unet,
                layout: &unet_layout,
            },
        )
        .map_err(|e| PipelineError::Format(e.to_string()))?;
        let sources = SdSources {
            text_encoders: merged_clip
                .iter()
                .map(|m| m as &dyn TensorSource)
                .zip(clip_layouts)
                .collect(),
            unet: (&merged_unet, unet_layout),
            vae: (
                weights,
                VaeLayout::Ldm {
                    prefix: VAE.to_owned(),
                },
            ),
        };
        let pipeline = Self::assemble(configs, tokenizers, &sources, placement)?;
        for (lora, _) in loras {
            lora.check_applied()
                .map_err(|e| PipelineError::Format(e.to_string()))?;
        }
        Ok(pipeline)
    }
}

/// Memory-maps a checkpoint, so a multi-GB file is never read whole.
pub fn open(path: &Path) -> Result<Weights, PipelineError> {
    Weights::open_files(&[path]).map_err(|e| {
        PipelineError::Weights(WeightsError::File {
            path: path.to_owned(),
            problem: e.to_string(),
        })
    })
}

/// openai/clip-vit-large-patch14's text config (SD 1.5's encoder, SDXL's first, Flux's pooled one).
pub(super) const CLIP_L: &str = r#"{"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
    "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 768,
    "eos_token_id": 2}"#;

/// stable-diffusion-xl-base-1.0 text_encoder_2/config.json (OpenCLIP ViT-bigG-14).
const CLIP_G: &str = r#"{"vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120,
    "num_hidden_layers": 32, "num_attention_heads": 20, "max_position_embeddings": 77,
    "hidden_act": "gelu", "layer_norm_eps": 1e-5, "projection_dim": 1280, "eos_token_id": 2}"#;

/// stable-diffusion-v1-5 unet/config.json.
const SD15_UNET: &str = r#"{"act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
    "cross_attention_dim": 768, "down_block_types": ["CrossAttnDownBlock2D",
    "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"], "downsample_padding": 1,
    "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
    "sample_size": 64, "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D",
    "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}"#;

/// stable-diffusion-xl-base-1.0 unet/config.json.
const SDXL_UNET: &str = r#"{"act_fn": "silu", "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "center_input_sample": false, "cross_attention_dim": 2048, "down_block_types":
    ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "downsample_padding": 1,
    "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10], "up_block_types": ["CrossAttnUpBlock2D",
    "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": true}"#;

/// stable-diffusion-v1-5 vae/config.json.
const SD15_VAE: &str = r#"{"block_out_channels": [128, 256, 512, 512], "in_channels": 3,
    "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 512, "scaling_factor": 0.18215}"#;

/// stable-diffusion-xl-base-1.0 vae/config.json.
const SDXL_VAE: &str = r#"{"block_out_channels": [128, 256, 512, 512], "in_channels": 3,
    "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": true}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_configs_parse_with_the_published_sizes() {
        let (sd15, tokenizers) = builtin(SdFamily::Sd15).expect("SD 1.5 configs");
        assert_eq!(tokenizers.len(), 1);
        assert_eq!(sd15.unet.cross_attention_dim, 768);
        assert_eq!(sd15.clip[0].hidden_size, 768);
        let (sdxl, tokenizers) = builtin(SdFamily::Sdxl).expect("SDXL configs");
        assert_eq!(tokenizers.len(), 2);
        assert_eq!(sdxl.unet.cross_attention_dim, 768 + 1280);
        assert_eq!(sdxl.clip[1].projection_dim, Some(1280));
        assert_eq!(sdxl.vae.scaling_factor, 0.13025);
    }
}
