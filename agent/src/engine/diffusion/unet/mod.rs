//! The denoising UNet of SD 1.5 and SDXL, computed as diffusers' `UNet2DConditionModel` computes
//! it: a sinusoidal timestep embedding (`flip_sin_to_cos`, `freq_shift`) through the
//! `time_embedding` MLP, plus for SDXL (`addition_embed_type = "text_time"`) the `add_embedding`
//! MLP of the pooled text embeds concatenated with the sinusoidal embeddings of the six time ids;
//! `conv_in`; down levels of resnets (each followed by a `Transformer2DModel` in
//! `CrossAttnDownBlock2D`s) and stride-2 downsamplers, every output kept as a skip; the
//! `UNetMidBlock2DCrossAttn` (resnet, transformer, resnet); up levels of `layers_per_block + 1`
//! resnets taking the skips concatenated on channels, their transformers, nearest ×2
//! upsamplers; GroupNorm, SiLU, `conv_out`.
//!
//! Heads come from `num_attention_heads`, else from `attention_head_dim`, which every SD 1.5 and
//! SDXL config uses to mean the number of heads (diffusers resolves
//! `num_attention_heads or attention_head_dim`). `upcast_attention` (SD 2.1) is read but not
//! applied: attention runs in the weights' kind, so such UNets want f32 or bf16.
//!
//! Weights load from diffusers names (a `unet/` folder) or from the LDM names single-file
//! checkpoints keep under `model.diffusion_model.` (see `ldm.rs` for the mapping, the inverse of
//! diffusers' `convert_ldm_unet_checkpoint`). `scripts/fixtures/diffusion_unet.py` records
//! diffusers 0.42.1's output for tiny SD 1.5- and SDXL-like configs in both layouts.

mod blocks;
mod config;
mod ldm;

use tch::{Device, Kind, Tensor};

use self::blocks::{Affine, Level, Loader, Resnet, Transformer2D, TransformerShape};
pub use self::config::UNetConfig;
pub(crate) use self::ldm::LdmNames;
use super::weights::{TensorSource, WeightsError};

/// Why the UNet could not be loaded or run. Messages say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum UNetError {
    /// A file or tensor could not be read, or does not fit the config.
    #[error(transparent)]
    Files(#[from] WeightsError),
    /// The caller passed input the UNet cannot take.
    #[error("invalid UNet input: {0}")]
    Input(String),
    /// The config cannot be loaded from the chosen layout.
    #[error("{0}")]
    Layout(String),
    /// The weights could not be read or placed.
    #[error("{0}")]
    Weights(String),
}

/// How the UNet's tensors are named in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UNetLayout {
    /// diffusers names (`down_blocks.0.resnets.0.conv1.weight`) after `prefix`: `""` for a
    /// diffusers `unet/` folder.
    Diffusers {
        /// Prepended to every name.
        prefix: String,
    },
    /// LDM names (`input_blocks.1.0.in_layers.2.weight`, `label_emb.0.0.weight`) after
    /// `prefix`: `model.diffusion_model.` for SD 1.5 / SDXL single-file checkpoints. Needs the
    /// same `layers_per_block` on every level, as diffusers' converter does.
    Ldm {
        /// Prepended to every name.
        prefix: String,
    },
}

/// SDXL's extra conditioning (`added_cond_kwargs`).
#[derive(Debug)]
pub struct AddedCond<'a> {
    /// The pooled, projected text embeds of the second text encoder: `[batch, pooled]`.
    pub text_embeds: &'a Tensor,
    /// Original size, crop top-left and target size, (height, width) each: `[batch, 6]`.
    pub time_ids: &'a Tensor,
}

/// A two-layer MLP with SiLU between (diffusers' `TimestepEmbedding`).
#[derive(Debug)]
struct Mlp {
    linear_1: Affine,
    linear_2: Affine,
}

impl Mlp {
    fn load(l: &Loader, at: &str, input: i64, out: i64) -> Result<Self, UNetError> {
        Ok(Self {
            linear_1: l.linear(&format!("{at}.linear_1"), out, input)?,
            linear_2: l.linear(&format!("{at}.linear_2"), out, out)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.linear_2.linear(&self.linear_1.linear(x).silu())
    }
}

/// A `UNet2DConditionModel` with loaded weights.
#[derive(Debug)]
pub struct UNet {
    config: UNetConfig,
    time_embedding: Mlp,
    add_embedding: Option<Mlp>,
    conv_in: Affine,
    down: Vec<Level>,
    mid_resnets: [Resnet; 2],
    mid_attention: Transformer2D,
    up: Vec<Level>,
    norm_out: Affine,
    conv_out: Affine,
    kind: Kind,
}

impl UNet {
    /// Loads the weights `layout` names from `source` onto `device` as `kind`; other tensors
    /// in the file (text encoders, VAE) are ignored.
    pub fn load(
        config: UNetConfig,
        source: &dyn TensorSource,
        layout: &UNetLayout,
        device: Device,
        kind: Kind,
    ) -> Result<Self, UNetError> {
        let (prefix, ldm) = match layout {
            UNetLayout::Diffusers { prefix } => (prefix.as_str(), None),
            UNetLayout::Ldm { prefix } => (prefix.as_str(), Some(ldm_names(&config)?)),
        };
        let l = Loader {
            source,
            device,
            kind,
            prefix,
            ldm,
        };
        let c = &config;
        let channels = &c.block_out_channels;
        let temb = c.time_embed_dim();
        let time_embedding = Mlp::load(&l, "time_embedding", channels[0], temb)?;
        let add_embedding = match (
            c.addition_embed_type.as_ref(),
            c.projection_class_embeddings_input_dim,
        ) {
            (Some(_), Some(input)) => Some(Mlp::load(&l, "add_embedding", input, temb)?),
            _ => None,
        };
        let conv_in = l.conv("conv_in", channels[0], c.in_channels, 3)?;
        let down = load_down(&l, c)?;
        let top = channels[channels.len() - 1];
        let mid_shape = transformer_shape(c, c.levels() - 1);
        let mid_resnets = [
            Resnet::load(&l, "mid_block.resnets.0", top, top, temb)?,
            Resnet::load(&l, "mid_block.resnets.1", top, top, temb)?,
        ];
        let mid_attention = Transformer2D::load(&l, "mid_block.attentions.0", top, mid_shape)?;
        let up = load_up(&l, c)?;
        let norm_out = l.norm("conv_norm_out", channels[0])?;
        let conv_out = l.conv("conv_out", c.out_channels, channels[0], 3)?;
        Ok(Self {
            config,
            time_embedding,
            add_embedding,
            conv_in,
            down,
            mid_resnets,
            mid_attention,
            up,
            norm_out,
            conv_out,
            kind,
        })
    }

    /// The config the UNet was loaded with.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// diffusers' `unet(sample, timestep, encoder_hidden_states, added_cond_kwargs).sample`:
    /// the prediction for `sample` (`[batch, in_channels, h, w]`) at `timestep` (a scalar or one
    /// per batch row), attending to `encoder_hidden_states` (`[batch, tokens,
    /// cross_attention_dim]`). SDXL UNets need `added`. Inputs move to the weights' device and
    /// kind; run inside `tch::no_grad`.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        added: Option<&AddedCond>,
    ) -> Result<Tensor, UNetError> {
        let c = &self.config;
        let batch = self.check_input(sample, timestep, encoder_hidden_states)?;
        let device = self.conv_in.weight.device();
        let mut x = sample.to_device(device).to_kind(self.kind);
        if c.center_input_sample {
            x = 2.0 * x - 1.0;
        }
        let context = encoder_hidden_states.to_device(device).to_kind(self.kind);
        let emb = self.embedding(timestep, batch, added)?;
        let (groups, eps) = (c.norm_num_groups, c.norm_eps);
        let (x, skips) = self.down_pass(self.conv_in.conv(&x, 1), &emb, &context);
        let x = self.mid_resnets[0].forward(&x, &emb, groups, eps) / c.mid_block_scale_factor;
        let x = self.mid_attention.forward(&x, &context, groups);
        let x = self.mid_resnets[1].forward(&x, &emb, groups, eps) / c.mid_block_scale_factor;
        let x = self.up_pass(x, skips, &emb, &context)?;
        let x = self.norm_out.group_norm(&x, groups, eps).silu();
        Ok(self.conv_out.conv(&x, 1))
    }

    /// The time embedding, plus SDXL's added conditioning: `[batch, time_embed_dim]`.
    fn embedding(
        &self,
        timestep: &Tensor,
        batch: i64,
        added: Option<&AddedCond>,
    ) -> Result<Tensor, UNetError> {
        let c = &self.config;
        let device = self.conv_in.weight.device();
        let timesteps = timestep
            .to_device(device)
            .reshape([-1])
            .expand([batch], false);
        let t = sinusoidal(
            &timesteps,
            c.block_out_channels[0],
            c.flip_sin_to_cos,
            c.freq_shift,
        );
        let mut emb = self.time_embedding.forward(&t.to_kind(self.kind));
        if let Some(mlp) = &self.add_embedding {
            emb += mlp.forward(&self.add_embeds(added, batch)?);
        }
        Ok(emb)
    }

    /// The down levels' output and every skip they keep, `conv_in`'s first.
    fn down_pass(&self, x: Tensor, emb: &Tensor, context: &Tensor) -> (Tensor, Vec<Tensor>) {
        let (groups, eps) = (self.config.norm_num_groups, self.config.norm_eps);
        let mut x = x;
        let mut skips = vec![x.shallow_clone()];
        for level in &self.down {
            for (j, resnet) in level.resnets.iter().enumerate() {
                x = resnet.forward(&x, emb, groups, eps);
                if let Some(attention) = level.attentions.get(j) {
                    x = attention.forward(&x, context, groups);
                }
                skips.push(x.shallow_clone());
            }
            if let Some(conv) = &level.resample {
                x = conv.conv(&x, 2);
                skips.push(x.shallow_clone());
            }
        }
        (x, skips)
    }

    /// The up levels, taking the skips last first.
    fn up_pass(
        &self,
        x: Tensor,
        mut skips: Vec<Tensor>,
        emb: &Tensor,
        context: &Tensor,
    ) -> Result<Tensor, UNetError> {
        let (groups, eps) = (self.config.norm_num_groups, self.config.norm_eps);
        let mut x = x;
        for level in &self.up {
            for (j, resnet) in level.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| {
                    UNetError::Weights(
                        "the up levels take more skips than the down levels made".to_owned(),
                    )
                })?;
                x = resnet.forward(&Tensor::cat(&[&x, &skip], 1), emb, groups, eps);
                if let Some(attention) = level.attentions.get(j) {
                    x = attention.forward(&x, context, groups);
                }
            }
            if let Some(conv) = &level.resample {
                // The next skip's size, as diffusers passes `upsample_size` for odd sizes.
                let size = skips.last().map_or_else(|| x.size(), Tensor::size);
                let up = x.upsample_nearest2d([size[2], size[3]], None::<f64>, None::<f64>);
                x = conv.conv(&up, 1);
            }
        }
        Ok(x)
    }

    fn check_input(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
    ) -> Result<i64, UNetError> {
        let c = &self.config;
        let size = sample.size();
        if size.len() != 4 || size[1] != c.in_channels || size[0] == 0 {
            return Err(UNetError::Input(format!(
                "sample has shape {size:?}; pass [batch, {}, height, width]",
                c.in_channels
            )));
        }
        let batch = size[0];
        let steps = timestep.numel() as i64;
        if steps != 1 && steps != batch {
            return Err(UNetError::Input(format!(
                "{steps} timesteps for a batch of {batch}; pass one, or one per row"
            )));
        }
        let context_size = context.size();
        if context_size.len() != 3
            || context_size[0] != batch
            || context_size[2] != c.cross_attention_dim
        {
            return Err(UNetError::Input(format!(
                "encoder_hidden_states have shape {context_size:?}; pass [{batch}, tokens, {}]",
                c.cross_attention_dim
            )));
        }
        Ok(batch)
    }

    /// SDXL's `add_embedding` input: text embeds, then the time ids' sinusoidal embeddings.
    fn add_embeds(&self, added: Option<&AddedCond>, batch: i64) -> Result<Tensor, UNetError> {
        let c = &self.config;
        let (Some(added), Some(dim), Some(width)) = (
            added,
            c.addition_time_embed_dim,
            c.projection_class_embeddings_input_dim,
        ) else {
            return Err(UNetError::Input(
                "this SDXL UNet needs text_embeds and time_ids (added_cond_kwargs)".to_owned(),
            ));
        };
        let ids = added.time_ids.size();
        let pooled = added.text_embeds.size();
        if ids != [batch, 6]
            || pooled.len() != 2
            || pooled[0] != batch
            || pooled[1] + 6 * dim != width
        {
            return Err(UNetError::Input(format!(
                "text_embeds {pooled:?} and time_ids {ids:?} do not fit; pass [{batch}, {}] and \
                 [{batch}, 6]",
                width - 6 * dim
            )));
        }
        let device = self.conv_in.weight.device();
        let ids = added.time_ids.to_device(device).reshape([-1]);
        let time = sinusoidal(&ids, dim, c.flip_sin_to_cos, c.freq_shift).reshape([batch, -1]);
        let text = added.text_embeds.to_device(device).to_kind(Kind::Float);
        Ok(Tensor::cat(&[text, time], -1).to_kind(self.kind))
    }
}

/// diffusers' `get_timestep_embedding` (scale 1, max period 10000), in f32: `[n, dim]`.
fn sinusoidal(timesteps: &Tensor, dim: i64, flip_sin_to_cos: bool, shift: f64) -> Tensor {
    let half = dim / 2;
    let device = timesteps.device();
    let exponent =
        Tensor::arange(half, (Kind::Float, device)) * (-(10000f64.ln())) / (half as f64 - shift);
    let angles = timesteps.to_kind(Kind::Float).unsqueeze(1) * exponent.exp().unsqueeze(0);
    let (sin, cos) = (angles.sin(), angles.cos());
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], -1)
    } else {
        Tensor::cat(&[sin, cos], -1)
    };
    if dim % 2 == 1 {
        emb.constant_pad_nd([0, 1])
    } else {
        emb
    }
}

/// The LDM single-file names of `c`'s tensors; errors when `layers_per_block` differs between
/// levels, which that layout cannot express.
pub(crate) fn ldm_names(c: &UNetConfig) -> Result<LdmNames, UNetError> {
    let layers = c.per_block(&c.layers_per_block);
    if layers.iter().any(|l| *l != layers[0] || *l < 0) {
        return Err(UNetError::Layout(format!(
            "layers_per_block {layers:?} differs between levels, which the LDM single-file \
             layout cannot express; load this UNet from a diffusers unet/ folder"
        )));
    }
    Ok(LdmNames {
        layers: layers[0] as usize,
        up_attention: (0..c.levels()).map(|i| c.up_attention(i)).collect(),
    })
}

fn transformer_shape(c: &UNetConfig, level: usize) -> TransformerShape {
    TransformerShape {
        heads: c.heads()[level],
        layers: c.per_block(&c.transformer_layers_per_block)[level],
        context: c.cross_attention_dim,
        linear: c.use_linear_projection,
    }
}

fn load_down(l: &Loader, c: &UNetConfig) -> Result<Vec<Level>, UNetError> {
    let layers = c.per_block(&c.layers_per_block);
    let temb = c.time_embed_dim();
    let mut input = c.block_out_channels[0];
    let mut levels = Vec::with_capacity(c.levels());
    for (i, &out) in c.block_out_channels.iter().enumerate() {
        let at = format!("down_blocks.{i}");
        let mut level = Level {
            resnets: Vec::new(),
            attentions: Vec::new(),
            resample: None,
        };
        for j in 0..layers[i] {
            let from = if j == 0 { input } else { out };
            level.resnets.push(Resnet::load(
                l,
                &format!("{at}.resnets.{j}"),
                from,
                out,
                temb,
            )?);
            if c.down_attention(i) {
                let shape = transformer_shape(c, i);
                let name = format!("{at}.attentions.{j}");
                level
                    .attentions
                    .push(Transformer2D::load(l, &name, out, shape)?);
            }
        }
        if i + 1 < c.levels() {
            level.resample = Some(l.conv(&format!("{at}.downsamplers.0.conv"), out, out, 3)?);
        }
        levels.push(level);
        input = out;
    }
    Ok(levels)
}

fn load_up(l: &Loader, c: &UNetConfig) -> Result<Vec<Level>, UNetError> {
    let n = c.levels();
    let reversed = |v: Vec<i64>| v.into_iter().rev().collect::<Vec<_>>();
    let channels = reversed(c.block_out_channels.clone());
    let layers = reversed(c.per_block(&c.layers_per_block));
    let temb = c.time_embed_dim();
    let mut levels = Vec::with_capacity(n);
    let mut prev = channels[0];
    for (i, &out) in channels.iter().enumerate() {
        let at = format!("up_blocks.{i}");
        let skip_in = channels[(i + 1).min(n - 1)];
        let count = layers[i] + 1;
        let mut level = Level {
            resnets: Vec::new(),
            attentions: Vec::new(),
            resample: None,
        };
        for j in 0..count {
            let skip = if j == count - 1 { skip_in } else { out };
            let from = if j == 0 { prev } else { out };
            let name = format!("{at}.resnets.{j}");
            level
                .resnets
                .push(Resnet::load(l, &name, from + skip, out, temb)?);
            if c.up_attention(i) {
                let shape = transformer_shape(c, n - 1 - i);
                let name = format!("{at}.attentions.{j}");
                level
                    .attentions
                    .push(Transformer2D::load(l, &name, out, shape)?);
            }
        }
        if i + 1 < n {
            level.resample = Some(l.conv(&format!("{at}.upsamplers.0.conv"), out, out, 3)?);
        }
        levels.push(level);
        prev = out;
    }
    Ok(levels)
}
