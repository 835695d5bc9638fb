//! From the tensor name a component loader asks for to the kohya module names whose deltas
//! change it.
//!
//! kohya names a module `lora_unet_` / `lora_te*_` + its path with `.` replaced by `_`, so a
//! requested name maps to its key exactly; the other direction is ambiguous (`to_q`,
//! `transformer_blocks`). UNet keys come in two spellings: diffusers paths (SD 1.5 LoRAs) and
//! LDM paths (SDXL LoRAs, trained on the LDM UNet). Both are compared in the LDM spelling: a
//! requested diffusers name goes through the UNet's own diffusers → LDM map (`unet/ldm.rs`), and
//! a diffusers-spelled key is split into its block head (`down_blocks_0_attentions_0_` …), which
//! has no ambiguous underscores, and renamed the same way. That is the mapping diffusers 0.42.1
//! `_maybe_map_sgm_blocks_to_diffusers` and `_convert_unet_lora_key` apply in the other direction
//! (`lora_conversion_utils.py`).

use crate::engine::diffusion::clip::ClipLayout;
use crate::engine::diffusion::unet::{LdmNames, UNetLayout};

/// Which share of a requested tensor a LoRA module's delta changes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Share {
    /// The whole tensor.
    Whole,
    /// Rows `start..start + len` (q, k or v of OpenCLIP's stacked `in_proj_weight`).
    Rows {
        /// First row.
        start: i64,
        /// Row count.
        len: i64,
    },
    /// The whole tensor, stored transposed (OpenCLIP's `text_projection`).
    Transposed,
}

/// One kohya module (in [`Names::canonical`] spelling) and the share of the tensor it changes.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Part {
    pub(super) key: String,
    pub(super) share: Share,
}

/// How one component's requested names map to kohya module names.
#[derive(Debug)]
pub(super) enum Names {
    /// The UNet, in either layout.
    UNet {
        /// The layout's tensor name prefix.
        prefix: String,
        /// Whether the loader asks for LDM names.
        ldm_layout: bool,
        /// The config's diffusers → LDM map; `None` where the config has none (uneven
        /// `layers_per_block`), and then keys are compared in the diffusers spelling.
        ldm: Option<LdmNames>,
    },
    /// A CLIP text encoder.
    Clip {
        /// The layout's tensor name prefix.
        prefix: String,
        /// Whether the loader asks for OpenCLIP names.
        open_clip: bool,
        /// The kohya prefixes of this encoder's modules.
        kohya: &'static [&'static str],
    },
}

impl Names {
    /// The names of a UNet loaded in `layout`.
    pub(super) fn unet(layout: &UNetLayout, ldm: Option<LdmNames>) -> Self {
        let (prefix, ldm_layout) = match layout {
            UNetLayout::Diffusers { prefix } => (prefix.clone(), false),
            UNetLayout::Ldm { prefix } => (prefix.clone(), true),
        };
        Self::UNet {
            prefix,
            ldm_layout,
            ldm,
        }
    }

    /// The names of a text encoder loaded in `layout` whose kohya modules start with `kohya`.
    pub(super) fn clip(layout: &ClipLayout, kohya: &'static [&'static str]) -> Self {
        let (prefix, open_clip) = match layout {
            ClipLayout::HuggingFace { prefix } => (prefix.clone(), false),
            ClipLayout::OpenClip { prefix } => (prefix.clone(), true),
        };
        Self::Clip {
            prefix,
            open_clip,
            kohya,
        }
    }

    /// The kohya prefixes of this component's modules.
    pub(super) fn kohya_prefixes(&self) -> &'static [&'static str] {
        match self {
            Self::UNet { .. } => &["lora_unet_"],
            Self::Clip { kohya, .. } => kohya,
        }
    }

    /// A kohya module name (without its `lora_…_` prefix) in the spelling [`Self::parts`]
    /// returns.
    pub(super) fn canonical(&self, module: &str) -> String {
        match self {
            Self::UNet { ldm: Some(ldm), .. } => match dotted_diffusers(module) {
                Some(dotted) => underscored(&ldm.rename(&dotted)),
                None => module.to_owned(),
            },
            _ => module.to_owned(),
        }
    }

    /// The kohya modules (in [`Self::canonical`] spelling) that change tensor `name`, of shape
    /// `shape`; empty for tensors no LoRA changes (biases, norms, other components).
    pub(super) fn parts(&self, name: &str, shape: &[i64]) -> Vec<Part> {
        let whole = |key: String| {
            vec![Part {
                key,
                share: Share::Whole,
            }]
        };
        match self {
            Self::UNet {
                prefix,
                ldm_layout,
                ldm,
            } => {
                let Some(rest) = name.strip_prefix(prefix.as_str()) else {
                    return Vec::new();
                };
                if !rest.ends_with(".weight") {
                    return Vec::new();
                }
                match (ldm_layout, ldm) {
                    (false, Some(ldm)) => whole(underscored(&ldm.rename(rest))),
                    _ => whole(underscored(rest)),
                }
            }
            Self::Clip {
                prefix, open_clip, ..
            } => {
                let Some(rest) = name.strip_prefix(prefix.as_str()) else {
                    return Vec::new();
                };
                if *open_clip {
                    open_clip_parts(rest, shape)
                } else {
                    hf_clip_key(rest).map(whole).unwrap_or_default()
                }
            }
        }
    }
}

/// `a.b_c.weight` → `a_b_c`: a module's kohya spelling.
fn underscored(weight_name: &str) -> String {
    weight_name
        .strip_suffix(".weight")
        .unwrap_or(weight_name)
        .replace('.', "_")
}

/// A transformers CLIP weight name (with or without the `text_model.` level transformers >= 5
/// drops) as kohya spells its module.
fn hf_clip_key(rest: &str) -> Option<String> {
    let path = rest.strip_suffix(".weight")?;
    let path = if path.starts_with("text_model.") || path == "text_projection" {
        path.to_owned()
    } else {
        format!("text_model.{path}")
    };
    Some(path.replace('.', "_"))
}

/// OpenCLIP names (diffusers' `convert_open_clip_checkpoint` mapping, reversed): the stacked
/// `in_proj_weight` takes q, k and v by thirds.
fn open_clip_parts(rest: &str, shape: &[i64]) -> Vec<Part> {
    if rest == "text_projection" {
        return vec![Part {
            key: "text_projection".to_owned(),
            share: Share::Transposed,
        }];
    }
    let Some((layer, tail)) = rest
        .strip_prefix("transformer.resblocks.")
        .and_then(|r| r.split_once('.'))
    else {
        return Vec::new();
    };
    let at = format!("text_model_encoder_layers_{layer}_");
    let whole = |module: &str| {
        vec![Part {
            key: format!("{at}{module}"),
            share: Share::Whole,
        }]
    };
    match tail {
        "attn.in_proj_weight" => {
            let len = shape.first().copied().unwrap_or(0) / 3;
            ["q", "k", "v"]
                .iter()
                .zip(0..)
                .map(|(p, i)| Part {
                    key: format!("{at}self_attn_{p}_proj"),
                    share: Share::Rows {
                        start: i * len,
                        len,
                    },
                })
                .collect()
        }
        "attn.out_proj.weight" => whole("self_attn_out_proj"),
        "mlp.c_fc.weight" => whole("mlp_fc1"),
        "mlp.c_proj.weight" => whole("mlp_fc2"),
        _ => Vec::new(),
    }
}

/// A diffusers-spelled kohya UNet module (`down_blocks_0_resnets_1_conv_shortcut`) as a dotted
/// diffusers weight name whose block head is exact (`down_blocks.0.resnets.1.conv_shortcut.weight`)
/// and whose tail keeps kohya's underscores, which the LDM rename leaves alone; `None` for
/// modules spelled otherwise (LDM paths).
fn dotted_diffusers(module: &str) -> Option<String> {
    const TOP: [(&str, &str); 7] = [
        ("time_embedding_linear_1", "time_embedding.linear_1"),
        ("time_embedding_linear_2", "time_embedding.linear_2"),
        ("add_embedding_linear_1", "add_embedding.linear_1"),
        ("add_embedding_linear_2", "add_embedding.linear_2"),
        ("conv_in", "conv_in"),
        ("conv_norm_out", "conv_norm_out"),
        ("conv_out", "conv_out"),
    ];
    if let Some((_, dotted)) = TOP.iter().find(|(kohya, _)| *kohya == module) {
        return Some(format!("{dotted}.weight"));
    }
    let (block, rest) = match module.strip_prefix("mid_block_") {
        Some(rest) => ("mid_block".to_owned(), rest),
        None => {
            let (group, rest) = ["down_blocks_", "up_blocks_"]
                .iter()
                .find_map(|g| Some((g.trim_end_matches('_'), module.strip_prefix(g)?)))?;
            let (index, rest) = rest.split_once('_')?;
            index.parse::<usize>().ok()?;
            (format!("{group}.{index}"), rest)
        }
    };
    let kind = ["resnets", "attentions", "downsamplers", "upsamplers"]
        .into_iter()
        .find(|kind| rest.starts_with(kind) && rest[kind.len()..].starts_with('_'))?;
    let (item, tail) = rest[kind.len() + 1..].split_once('_')?;
    item.parse::<usize>().ok()?;
    Some(format!("{block}.{kind}.{item}.{tail}.weight"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_spelled_modules_get_an_exact_block_head() {
        assert_eq!(
            dotted_diffusers("down_blocks_0_attentions_1_transformer_blocks_0_attn1_to_q")
                .as_deref(),
            Some("down_blocks.0.attentions.1.transformer_blocks_0_attn1_to_q.weight")
        );
        assert_eq!(
            dotted_diffusers("mid_block_resnets_1_time_emb_proj").as_deref(),
            Some("mid_block.resnets.1.time_emb_proj.weight")
        );
        assert_eq!(
            dotted_diffusers("time_embedding_linear_2").as_deref(),
            Some("time_embedding.linear_2.weight")
        );
        assert_eq!(dotted_diffusers("input_blocks_4_1_proj_in"), None);
        assert_eq!(dotted_diffusers("down_blocks_x_resnets_0_conv1"), None);
    }

    #[test]
    fn open_clip_in_proj_takes_q_k_v_by_thirds() {
        let parts = open_clip_parts("transformer.resblocks.3.attn.in_proj_weight", &[30, 10]);
        let keys: Vec<_> = parts.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "text_model_encoder_layers_3_self_attn_q_proj",
                "text_model_encoder_layers_3_self_attn_k_proj",
                "text_model_encoder_layers_3_self_attn_v_proj",
            ]
        );
        assert_eq!(parts[2].share, Share::Rows { start: 20, len: 10 });
        assert!(open_clip_parts("transformer.resblocks.3.attn.in_proj_bias", &[30]).is_empty());
    }

    #[test]
    fn hf_clip_names_with_and_without_text_model_map_alike() {
        let key = "text_model_encoder_layers_0_mlp_fc1";
        assert_eq!(
            hf_clip_key("text_model.encoder.layers.0.mlp.fc1.weight").as_deref(),
            Some(key)
        );
        assert_eq!(
            hf_clip_key("encoder.layers.0.mlp.fc1.weight").as_deref(),
            Some(key)
        );
        assert_eq!(hf_clip_key("encoder.layers.0.mlp.fc1.bias"), None);
    }
}
