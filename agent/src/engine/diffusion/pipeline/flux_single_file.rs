//! All-in-one FLUX.1-dev checkpoints in the Forge / ComfyUI layout, as lllyasviel's
//! `flux1-dev-bnb-nf4-v2.safetensors` that miners download: the transformer under
//! `model.diffusion_model.` in Black Forest Labs' names with its linear weights stored as
//! bitsandbytes NF4, CLIP-L under `text_encoders.clip_l.transformer.` (transformers names), T5
//! v1.1 XXL under `text_encoders.t5xxl.transformer.` (transformers names, fp8 e4m3fn in that
//! file), and the VAE under `vae.` in the LDM layout. These are the prefixes diffusers 0.42.1's
//! `single_file_utils.py` reads (`CHECKPOINT_KEY_NAMES["flux"]`, `LDM_VAE_KEYS`,
//! `convert_ldm_clip_checkpoint(…, "text_encoders.clip_l.transformer.")`,
//! `is_t5_in_single_file`).
//!
//! The file has no configs and no tokenizers. The configs are FLUX.1-dev's published ones,
//! built in, and CLIP's tokenizer is built in; T5's SentencePiece tokenizer is not shipped with
//! the agent, so the caller passes a `tokenizer.json` (FLUX.1-dev's `tokenizer_2/tokenizer.json`,
//! which is google/t5-v1_1-xxl's). Every component is read through [`Nf4Weights`], which
//! dequantizes the 4-bit weights and passes everything else through; fp8 tensors are upcast
//! where they are placed. The transformer therefore runs dequantized, in the placement's kind:
//! FLUX.1-dev's 12B parameters take about 24 GB of GPU memory in bf16, and T5 XXL about 9.5 GB
//! more.

use std::path::Path;

use super::flux::{FluxConfigs, FluxPipeline, FluxSources, FluxTokenizers};
use super::single_file::{CLIP_L, open};
use super::{PipelineError, Placement};
use crate::engine::diffusion::clip::{ClipLayout, ClipTextConfig};
use crate::engine::diffusion::clip_tokenizer::{ClipTokenizer, EOS};
use crate::engine::diffusion::flux::{FluxConfig, FluxLayout};
use crate::engine::diffusion::nf4::Nf4Weights;
use crate::engine::diffusion::scheduler::FlowMatchConfig;
use crate::engine::diffusion::t5::{
    FLUX_DEV_MAX_LENGTH, SINGLE_FILE_PREFIX as T5_PREFIX, T5Config, T5Layout, T5Tokenizer,
};
use crate::engine::diffusion::vae::{VaeConfig, VaeLayout};
use crate::engine::diffusion::weights::TensorSource;

/// Where the transformer's BFL names are.
pub const TRANSFORMER_PREFIX: &str = "model.diffusion_model.";
/// Where CLIP-L's transformers names are.
pub const CLIP_PREFIX: &str = "text_encoders.clip_l.transformer.";
/// Where the VAE's LDM names are.
pub const VAE_PREFIX: &str = "vae.";

/// Whether `source` holds a Flux transformer in this layout (diffusers' own test:
/// `CHECKPOINT_KEY_NAMES["flux"]`).
pub fn is_flux(source: &dyn TensorSource) -> bool {
    source.contains(&format!(
        "{TRANSFORMER_PREFIX}double_blocks.0.img_attn.norm.key_norm.scale"
    ))
}

/// FLUX.1-dev's published configs and tokenizers; `t5_tokenizer` is the T5 `tokenizer.json`.
pub fn builtin(t5_tokenizer: &Path) -> Result<(FluxConfigs, FluxTokenizers), PipelineError> {
    let parse =
        |what: &str, e: String| PipelineError::Format(format!("built-in {what} config: {e}"));
    let configs = FluxConfigs {
        clip: ClipTextConfig::from_json(CLIP_L).map_err(|e| parse("CLIP-L", e))?,
        t5: T5Config::from_json(T5_XXL).map_err(|e| parse("T5", e))?,
        transformer: FluxConfig::from_json(FLUX_DEV).map_err(|e| parse("Flux", e))?,
        vae: VaeConfig::from_json(FLUX_VAE).map_err(|e| parse("VAE", e))?,
        schedule: FlowMatchConfig::flux_dev(),
    };
    let tokenizers = FluxTokenizers {
        clip: ClipTokenizer::builtin(EOS).map_err(PipelineError::Format)?,
        t5: T5Tokenizer::from_file(t5_tokenizer, FLUX_DEV_MAX_LENGTH)?,
    };
    Ok((configs, tokenizers))
}

impl FluxPipeline {
    /// Loads an all-in-one FLUX.1-dev checkpoint with the built-in configs; `t5_tokenizer` is
    /// T5 v1.1's `tokenizer.json`, which the checkpoint does not carry.
    pub fn load_single_file(
        checkpoint: &Path,
        t5_tokenizer: &Path,
        placement: Placement,
    ) -> Result<Self, PipelineError> {
        let weights = open(checkpoint)?;
        if !is_flux(&weights) {
            return Err(PipelineError::Format(format!(
                "{} is not a Flux checkpoint (it has no \
                 `{TRANSFORMER_PREFIX}double_blocks.*` transformer weights)",
                checkpoint.display()
            )));
        }
        let (configs, tokenizers) = builtin(t5_tokenizer)?;
        let name = checkpoint.display().to_string();
        Self::load_single_file_with(&weights, &name, configs, tokenizers, placement)
    }

    /// Loads the components of an all-in-one checkpoint held in `source` (named `name` in
    /// errors), described by `configs` (the built-in ones, or a test model's).
    pub fn load_single_file_with(
        source: &dyn TensorSource,
        name: &str,
        configs: FluxConfigs,
        tokenizers: FluxTokenizers,
        placement: Placement,
    ) -> Result<Self, PipelineError> {
        check_components(source, name)?;
        let weights = Nf4Weights::new(source, name);
        let sources = FluxSources {
            clip: (
                &weights,
                ClipLayout::HuggingFace {
                    prefix: CLIP_PREFIX.to_owned(),
                },
            ),
            t5: (
                &weights,
                T5Layout::HuggingFace {
                    prefix: T5_PREFIX.to_owned(),
                },
            ),
            transformer: (
                &weights,
                FluxLayout::Bfl {
                    prefix: TRANSFORMER_PREFIX.to_owned(),
                },
            ),
            vae: (
                &weights,
                VaeLayout::Ldm {
                    prefix: VAE_PREFIX.to_owned(),
                },
            ),
        };
        Self::assemble(configs, tokenizers, &sources, placement)
    }
}

/// Names the component a checkpoint lacks, so a transformer-only or schnell file is refused
/// with the reason rather than a missing tensor.
fn check_components(source: &dyn TensorSource, name: &str) -> Result<(), PipelineError> {
    let has = |key: &str| source.contains(key);
    if !has(&format!("{TRANSFORMER_PREFIX}guidance_in.in_layer.bias")) {
        return Err(PipelineError::Format(format!(
            "{name} has no guidance embedding (`{TRANSFORMER_PREFIX}guidance_in`): it is not \
             FLUX.1-dev (FLUX.1-schnell is not supported); use flux1-dev-bnb-nf4-v2.safetensors"
        )));
    }
    let token_embedding = "embeddings.token_embedding.weight";
    let components = [
        (
            "the CLIP-L text encoder (`text_encoders.clip_l.transformer.*`)",
            has(&format!("{CLIP_PREFIX}text_model.{token_embedding}"))
                || has(&format!("{CLIP_PREFIX}{token_embedding}")),
        ),
        (
            "the T5 text encoder (`text_encoders.t5xxl.transformer.*`)",
            has(&format!("{T5_PREFIX}shared.weight"))
                || has(&format!("{T5_PREFIX}encoder.embed_tokens.weight")),
        ),
        (
            "the VAE (`vae.*`)",
            has(&format!("{VAE_PREFIX}decoder.conv_in.weight")),
        ),
    ];
    if let Some((missing, _)) = components.iter().find(|(_, present)| !present) {
        return Err(PipelineError::Format(format!(
            "{name} has no {missing}: it holds the transformer only; use the all-in-one \
             flux1-dev-bnb-nf4-v2.safetensors, which bundles CLIP-L, T5 and the VAE"
        )));
    }
    Ok(())
}

/// google/t5-v1_1-xxl's encoder config (FLUX.1-dev's text_encoder_2/config.json).
const T5_XXL: &str = r#"{"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "num_heads": 64,
    "d_ff": 10240, "num_layers": 24, "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6}"#;

/// FLUX.1-dev transformer/config.json.
const FLUX_DEV: &str = r#"{"_class_name": "FluxTransformer2DModel", "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56], "guidance_embeds": true, "in_channels": 64,
    "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19,
    "num_single_layers": 38, "out_channels": null, "patch_size": 1,
    "pooled_projection_dim": 768}"#;

/// FLUX.1-dev vae/config.json (the decode-path fields).
const FLUX_VAE: &str = r#"{"block_out_channels": [128, 256, 512, 512], "in_channels": 3,
    "latent_channels": 16, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
    "use_post_quant_conv": false, "use_quant_conv": false, "mid_block_add_attention": true,
    "force_upcast": true}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_configs_parse_with_the_published_sizes() {
        let parse = |json: &str| FluxConfig::from_json(json).expect("parses");
        let transformer = parse(FLUX_DEV);
        assert_eq!(transformer.inner_dim(), 3072);
        assert!(transformer.guidance_embeds);
        let t5 = T5Config::from_json(T5_XXL).expect("parses");
        assert_eq!(t5.d_model, transformer.joint_attention_dim);
        let clip = ClipTextConfig::from_json(CLIP_L).expect("parses");
        assert_eq!(clip.hidden_size, transformer.pooled_projection_dim);
        let vae = VaeConfig::from_json(FLUX_VAE).expect("parses");
        assert_eq!(4 * vae.latent_channels, transformer.in_channels);
        assert_eq!(vae.shift_factor, Some(0.1159));
        assert!(!vae.use_post_quant_conv);
    }
}
