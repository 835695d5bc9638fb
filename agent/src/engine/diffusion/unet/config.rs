//! The fields of a diffusers `UNet2DConditionModel` `unet/config.json` that SD 1.5 and SDXL use,
//! resolved per block as diffusers' `UNet2DConditionModel.__init__` resolves them.

use std::path::Path;

use serde::{Deserialize, Deserializer};

use super::UNetError;
use crate::engine::diffusion::weights::read_config;

/// A diffusers `unet/config.json`. Fields diffusers accepts as an int or a per-block list hold
/// the list as written (one element for an int); [`UNetConfig::per_block`] expands them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UNetConfig {
    /// Latent channels in (4).
    #[serde(default = "four")]
    pub in_channels: i64,
    /// Latent channels out (4).
    #[serde(default = "four")]
    pub out_channels: i64,
    /// Channels per level, highest resolution first (`[320, 640, 1280, 1280]` SD 1.5).
    pub block_out_channels: Vec<i64>,
    /// `CrossAttnDownBlock2D` or `DownBlock2D` per level.
    pub down_block_types: Vec<String>,
    /// `CrossAttnUpBlock2D` or `UpBlock2D` per level, lowest resolution first.
    pub up_block_types: Vec<String>,
    /// Only `UNetMidBlock2DCrossAttn` is supported.
    #[serde(default)]
    pub mid_block_type: Option<String>,
    /// Resnets per down level (the up levels have one more).
    #[serde(default = "two", deserialize_with = "one_or_many")]
    pub layers_per_block: Vec<i64>,
    /// Transformer blocks per attention, per level (`[1, 2, 10]` SDXL).
    #[serde(default = "one", deserialize_with = "one_or_many")]
    pub transformer_layers_per_block: Vec<i64>,
    /// Despite the name, the number of heads when `num_attention_heads` is absent (as in every
    /// SD 1.5 and SDXL config); diffusers resolves `num_attention_heads or attention_head_dim`.
    #[serde(default = "eight", deserialize_with = "one_or_many")]
    pub attention_head_dim: Vec<i64>,
    /// Heads per level, when given; takes precedence over `attention_head_dim`.
    #[serde(default, deserialize_with = "optional_one_or_many")]
    pub num_attention_heads: Option<Vec<i64>>,
    /// Width of `encoder_hidden_states` (768 SD 1.5, 2048 SDXL).
    pub cross_attention_dim: i64,
    /// GroupNorm groups (32).
    #[serde(default = "thirty_two")]
    pub norm_num_groups: i64,
    /// Epsilon of the resnets' and the output's GroupNorms (1e-5).
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    /// Whether the sinusoidal embeddings put cosines first.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` of the sinusoidal embeddings (0 for SD 1.5 and SDXL).
    #[serde(default)]
    pub freq_shift: f64,
    /// Linear `proj_in`/`proj_out` (SDXL, SD 2) rather than 1×1 convs (SD 1.5).
    #[serde(default)]
    pub use_linear_projection: bool,
    /// `text_time` for SDXL; `None` for SD 1.5.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Width of each of SDXL's six time-id embeddings (256).
    #[serde(default)]
    pub addition_time_embed_dim: Option<i64>,
    /// Input width of SDXL's `add_embedding` (pooled text width + 6 · `addition_time_embed_dim`).
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<i64>,
    /// Time embedding width; defaults to 4 · `block_out_channels[0]`.
    #[serde(default)]
    pub time_embedding_dim: Option<i64>,
    /// Whether the sample is mapped from [0, 1] to [-1, 1] first.
    #[serde(default)]
    pub center_input_sample: bool,
    /// The mid block's resnet output divisor (1).
    #[serde(default = "one_f64")]
    pub mid_block_scale_factor: f64,
    /// Kept for completeness; has no effect, as attention runs in the weights' kind.
    #[serde(default)]
    pub upcast_attention: bool,
    /// Unsupported when set (class-conditioned UNets).
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Unsupported when set (LCM's guidance embedding).
    #[serde(default)]
    pub time_cond_proj_dim: Option<i64>,
    /// Unsupported when set (text/image projection of the conditioning).
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    /// Unsupported when set (asymmetric UNets).
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    /// Only `silu` is supported.
    #[serde(default = "silu")]
    pub act_fn: String,
    /// Only `default` is supported.
    #[serde(default = "default_shift")]
    pub resnet_time_scale_shift: String,
    /// Only `false` is supported.
    #[serde(default, deserialize_with = "bool_or_list")]
    pub only_cross_attention: bool,
    /// Only `false` is supported.
    #[serde(default)]
    pub dual_cross_attention: bool,
    /// Only 3 is supported.
    #[serde(default = "three")]
    pub conv_in_kernel: i64,
    /// Only 3 is supported.
    #[serde(default = "three")]
    pub conv_out_kernel: i64,
    /// Only 1 is supported.
    #[serde(default = "one_i64")]
    pub downsample_padding: i64,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    match &value {
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(|n| vec![n])
            .ok_or_else(|| serde::de::Error::custom(format!("expected an integer, found {n}"))),
        _ => Vec::<i64>::deserialize(value).map_err(serde::de::Error::custom),
    }
}

fn optional_one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<i64>>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    if value.is_null() {
        return Ok(None);
    }
    one_or_many(value)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn bool_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    match &value {
        serde_json::Value::Bool(b) => Ok(*b),
        serde_json::Value::Array(items) => Ok(items.iter().any(|v| v.as_bool() == Some(true))),
        _ => Err(serde::de::Error::custom(
            "expected a bool or a list of bools",
        )),
    }
}

fn one() -> Vec<i64> {
    vec![1]
}
fn two() -> Vec<i64> {
    vec![2]
}
fn eight() -> Vec<i64> {
    vec![8]
}
fn four() -> i64 {
    4
}
fn three() -> i64 {
    3
}
fn one_i64() -> i64 {
    1
}
fn thirty_two() -> i64 {
    32
}
fn norm_eps() -> f64 {
    1e-5
}
fn one_f64() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn silu() -> String {
    "silu".to_owned()
}
fn default_shift() -> String {
    "default".to_owned()
}

impl UNetConfig {
    /// Reads a diffusers `unet/config.json`.
    pub fn from_file(path: &Path) -> Result<Self, UNetError> {
        Ok(read_config(path, Self::from_json)?)
    }

    /// Parses `config.json` text; the error says which field is wrong.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let mut value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("is not valid JSON ({e}); download it again"))?;
        let Some(fields) = value.as_object_mut() else {
            return Err("is not a JSON object; use the model's unet/config.json".to_owned());
        };
        if fields.get("mid_block_type").is_some_and(|v| v.is_null()) {
            return Err(
                "has no mid block (mid_block_type null); this UNet is not supported".into(),
            );
        }
        // diffusers reads null as "the default" (SDXL's config has `"upcast_attention": null`).
        fields.retain(|_, v| !v.is_null());
        let config: Self = serde_json::from_value(value).map_err(|e| {
            format!("is not a UNet2DConditionModel config ({e}); use the model's unet/config.json")
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The levels (`block_out_channels.len()`).
    pub fn levels(&self) -> usize {
        self.block_out_channels.len()
    }

    /// `field` expanded to one value per level, as diffusers does with an int.
    pub fn per_block(&self, field: &[i64]) -> Vec<i64> {
        if field.len() == 1 {
            vec![field[0]; self.levels()]
        } else {
            field.to_vec()
        }
    }

    /// Heads per level: `num_attention_heads`, else `attention_head_dim` (diffusers' quirk).
    pub fn heads(&self) -> Vec<i64> {
        self.per_block(
            self.num_attention_heads
                .as_deref()
                .unwrap_or(&self.attention_head_dim),
        )
    }

    /// The time embedding width.
    pub fn time_embed_dim(&self) -> i64 {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels[0])
    }

    /// Whether down level `i` has attention.
    pub fn down_attention(&self, i: usize) -> bool {
        self.down_block_types[i] == "CrossAttnDownBlock2D"
    }

    /// Whether up level `i` (lowest resolution first) has attention.
    pub fn up_attention(&self, i: usize) -> bool {
        self.up_block_types[i] == "CrossAttnUpBlock2D"
    }

    fn validate(&self) -> Result<(), String> {
        let n = self.levels();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "block_out_channels, down_block_types and up_block_types have {n}, {} and {} \
                 entries; they must be equal and non-zero; the config is corrupt",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        for (name, field) in [
            ("layers_per_block", &self.layers_per_block),
            (
                "transformer_layers_per_block",
                &self.transformer_layers_per_block,
            ),
            ("attention_head_dim", &self.attention_head_dim),
        ] {
            if field.len() != 1 && field.len() != n {
                return Err(format!(
                    "{name} has {} entries for {n} levels; the config is corrupt",
                    field.len()
                ));
            }
        }
        let unsupported = [
            (self.class_embed_type.is_some(), "class_embed_type"),
            (self.time_cond_proj_dim.is_some(), "time_cond_proj_dim"),
            (self.encoder_hid_dim_type.is_some(), "encoder_hid_dim_type"),
            (
                self.reverse_transformer_layers_per_block.is_some(),
                "reverse_transformer_layers_per_block",
            ),
            (self.act_fn != "silu", "act_fn other than silu"),
            (
                self.resnet_time_scale_shift != "default",
                "resnet_time_scale_shift",
            ),
            (self.only_cross_attention, "only_cross_attention"),
            (self.dual_cross_attention, "dual_cross_attention"),
            (
                self.conv_in_kernel != 3 || self.conv_out_kernel != 3,
                "conv kernels other than 3",
            ),
            (
                self.downsample_padding != 1,
                "downsample_padding other than 1",
            ),
            (
                self.mid_block_type
                    .as_deref()
                    .is_some_and(|t| t != "UNetMidBlock2DCrossAttn"),
                "mid_block_type other than UNetMidBlock2DCrossAttn",
            ),
            (
                self.addition_embed_type
                    .as_deref()
                    .is_some_and(|t| t != "text_time"),
                "addition_embed_type other than text_time",
            ),
        ];
        if let Some((_, what)) = unsupported.iter().find(|(set, _)| *set) {
            return Err(format!(
                "sets {what}, which this UNet does not support; only SD 1.5 / SD 2 / SDXL-style \
                 UNets load"
            ));
        }
        let types_ok = self
            .down_block_types
            .iter()
            .all(|t| t == "CrossAttnDownBlock2D" || t == "DownBlock2D")
            && self
                .up_block_types
                .iter()
                .all(|t| t == "CrossAttnUpBlock2D" || t == "UpBlock2D");
        if !types_ok {
            return Err(format!(
                "block types {:?} / {:?} are not all CrossAttnDownBlock2D, DownBlock2D, \
                 CrossAttnUpBlock2D or UpBlock2D; this UNet is not supported",
                self.down_block_types, self.up_block_types
            ));
        }
        let groups = self.norm_num_groups;
        if groups <= 0
            || self
                .block_out_channels
                .iter()
                .any(|c| *c <= 0 || c % groups != 0)
        {
            return Err(format!(
                "block_out_channels {:?} are not all divisible by norm_num_groups {groups}; the \
                 config is corrupt",
                self.block_out_channels
            ));
        }
        let heads = self.heads();
        if heads.len() != n
            || heads
                .iter()
                .zip(&self.block_out_channels)
                .any(|(h, c)| *h <= 0 || c % h != 0)
        {
            return Err(format!(
                "attention heads {heads:?} do not divide block_out_channels {:?}; the config is \
                 corrupt",
                self.block_out_channels
            ));
        }
        if self.addition_embed_type.is_some()
            && (self.addition_time_embed_dim.is_none()
                || self.projection_class_embeddings_input_dim.is_none())
        {
            return Err(
                "addition_embed_type text_time needs addition_time_embed_dim and \
                 projection_class_embeddings_input_dim; the config is corrupt"
                    .to_owned(),
            );
        }
        Ok(())
    }
}
