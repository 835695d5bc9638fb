//! The fields of a diffusers `FluxTransformer2DModel` `transformer/config.json`, with the
//! defaults of diffusers 0.42.1's `FluxTransformer2DModel.__init__` (FLUX.1's sizes).

use std::path::Path;

use serde::Deserialize;

use super::FluxError;
use crate::engine::diffusion::weights::read_config;

/// A diffusers `transformer/config.json` of a Flux.1 transformer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FluxConfig {
    /// Side of the square patches `proj_out` predicts per token (1; the pipeline packs 2×2
    /// latent patches itself).
    #[serde(default = "one")]
    pub patch_size: i64,
    /// Width of a packed latent token (64: 16 latent channels × 2 × 2).
    #[serde(default = "sixty_four")]
    pub in_channels: i64,
    /// Channels predicted per patch position; `None` means `in_channels`.
    #[serde(default)]
    pub out_channels: Option<i64>,
    /// Double-stream blocks (19).
    #[serde(default = "nineteen")]
    pub num_layers: i64,
    /// Single-stream blocks (38).
    #[serde(default = "thirty_eight")]
    pub num_single_layers: i64,
    /// Width of one attention head (128); the sum of `axes_dims_rope`.
    #[serde(default = "one_twenty_eight")]
    pub attention_head_dim: i64,
    /// Attention heads (24); the model width is heads × `attention_head_dim`.
    #[serde(default = "twenty_four")]
    pub num_attention_heads: i64,
    /// Width of the T5 text states (4096).
    #[serde(default = "four_thousand_ninety_six")]
    pub joint_attention_dim: i64,
    /// Width of the pooled CLIP text embedding (768).
    #[serde(default = "seven_sixty_eight")]
    pub pooled_projection_dim: i64,
    /// Whether the model embeds the guidance scale (FLUX.1-dev) or not (FLUX.1-schnell).
    #[serde(default)]
    pub guidance_embeds: bool,
    /// Rotary dimensions per position axis (`[16, 56, 56]`: index, row, column).
    #[serde(default = "axes_dims_rope")]
    pub axes_dims_rope: Vec<i64>,
}

fn one() -> i64 {
    1
}
fn sixty_four() -> i64 {
    64
}
fn nineteen() -> i64 {
    19
}
fn thirty_eight() -> i64 {
    38
}
fn one_twenty_eight() -> i64 {
    128
}
fn twenty_four() -> i64 {
    24
}
fn four_thousand_ninety_six() -> i64 {
    4096
}
fn seven_sixty_eight() -> i64 {
    768
}
fn axes_dims_rope() -> Vec<i64> {
    vec![16, 56, 56]
}

impl FluxConfig {
    /// Reads a diffusers `transformer/config.json`.
    pub fn from_file(path: &Path) -> Result<Self, FluxError> {
        Ok(read_config(path, Self::from_json)?)
    }

    /// Parses `config.json` text; the error says which field is wrong.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let mut value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("is not valid JSON ({e}); download it again"))?;
        let Some(fields) = value.as_object_mut() else {
            return Err("is not a JSON object; use the model's transformer/config.json".to_owned());
        };
        if let Some(class) = fields.get("_class_name").and_then(|v| v.as_str())
            && class != "FluxTransformer2DModel"
        {
            return Err(format!(
                "describes a {class}, not a FluxTransformer2DModel; use the model's \
                 transformer/config.json"
            ));
        }
        // diffusers reads null as "the default" (FLUX.1's config has `"out_channels": null`).
        fields.retain(|_, v| !v.is_null());
        let config: Self = serde_json::from_value(value).map_err(|e| {
            format!(
                "is not a FluxTransformer2DModel config ({e}); use the model's \
                 transformer/config.json"
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The model width: `num_attention_heads · attention_head_dim` (3072).
    pub fn inner_dim(&self) -> i64 {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Channels predicted per patch position.
    pub fn out_channels(&self) -> i64 {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Width of each output token: `patch_size² · out_channels`.
    pub fn out_width(&self) -> i64 {
        self.patch_size * self.patch_size * self.out_channels()
    }

    fn validate(&self) -> Result<(), String> {
        let sizes = [
            ("patch_size", self.patch_size),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels()),
            ("attention_head_dim", self.attention_head_dim),
            ("num_attention_heads", self.num_attention_heads),
            ("joint_attention_dim", self.joint_attention_dim),
            ("pooled_projection_dim", self.pooled_projection_dim),
        ];
        if let Some((name, value)) = sizes.iter().find(|(_, v)| *v <= 0) {
            return Err(format!(
                "{name} is {value}; it must be positive; the config is corrupt"
            ));
        }
        if self.num_layers < 0 || self.num_single_layers < 0 {
            return Err(format!(
                "num_layers {} or num_single_layers {} is negative; the config is corrupt",
                self.num_layers, self.num_single_layers
            ));
        }
        let axes = &self.axes_dims_rope;
        if axes.is_empty() || axes.iter().any(|d| *d <= 0 || d % 2 != 0) {
            return Err(format!(
                "axes_dims_rope {axes:?} must be positive even sizes, one per position axis; the \
                 config is corrupt"
            ));
        }
        let sum: i64 = axes.iter().sum();
        if sum != self.attention_head_dim {
            return Err(format!(
                "axes_dims_rope {axes:?} sum to {sum}, but attention_head_dim is {}; they must \
                 be equal; the config is corrupt",
                self.attention_head_dim
            ));
        }
        Ok(())
    }
}
