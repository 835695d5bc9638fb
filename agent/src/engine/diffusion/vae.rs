//! The VAE decoder of SD 1.5, SDXL and Flux, computed as diffusers' `AutoencoderKL.decode`
//! computes it: the optional `post_quant_conv`, then the `Decoder` (`conv_in`; a mid block of
//! resnet, single-head self-attention over spatial positions, resnet; up blocks of
//! `layers_per_block + 1` resnets, each but the last followed by a nearest ×2 upsample and a 3×3
//! conv; GroupNorm, SiLU, `conv_out`). Every GroupNorm has eps 1e-6.
//!
//! Weights load from diffusers names (a `vae/` folder) or from the original LDM names that
//! single-file checkpoints keep (`first_stage_model.` in SD 1.5 / SDXL files, no prefix in BFL's
//! Flux `ae.safetensors`). The mapping follows diffusers 0.42.1
//! `src/diffusers/loaders/single_file_utils.py`: `DIFFUSERS_TO_LDM_MAPPING["vae"]`
//! (`decoder.conv_norm_out` ↔ `decoder.norm_out`, `post_quant_conv`, `conv_in`, `conv_out` kept),
//! and `convert_ldm_vae_checkpoint`: diffusers' `up_blocks.i` is LDM's `up.{n-1-i}` (`block.j` ↔
//! `resnets.j`, `upsample.conv` ↔ `upsamplers.0.conv`), `mid.block_{1,2}` ↔
//! `mid_block.resnets.{0,1}`, `nin_shortcut` ↔ `conv_shortcut`
//! (`update_vae_resnet_ldm_to_diffusers`), and `mid.attn_1.{norm,q,k,v,proj_out}` ↔
//! `mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}` with the 1×1 conv weights
//! squeezed to linear ones (`update_vae_attentions_ldm_to_diffusers`).
//! `scripts/fixtures/diffusion_vae.py` runs that diffusers function on its fixtures to confirm
//! the inverse it writes.

use std::path::Path;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::weights::{TensorSource, WeightsError, place, read_config};

const EPS: f64 = 1e-6;

/// Why the VAE decoder could not be loaded or run. Messages say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    /// A file or tensor could not be read, or does not fit the config.
    #[error(transparent)]
    Files(#[from] WeightsError),
    /// The caller passed input the decoder cannot take.
    #[error("invalid VAE input: {0}")]
    Input(String),
}

/// The decode-path fields of a diffusers `AutoencoderKL` `vae/config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VaeConfig {
    /// Latent channels: 4 for SD 1.5 / SDXL, 16 for Flux.
    pub latent_channels: i64,
    /// Image channels (3).
    #[serde(default = "default_out_channels")]
    pub out_channels: i64,
    /// Channels per level, from the highest resolution down (`[128, 256, 512, 512]`).
    pub block_out_channels: Vec<i64>,
    /// Resnets per encoder level; the decoder has one more per level.
    #[serde(default = "default_layers_per_block")]
    pub layers_per_block: i64,
    /// GroupNorm groups (32).
    #[serde(default = "default_groups")]
    pub norm_num_groups: i64,
    /// Latents are divided by this before decoding (0.18215 SD 1.5, 0.13025 SDXL, 0.3611 Flux).
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    /// Added after the scaling (0.1159 for Flux; absent elsewhere).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Whether a 1×1 `post_quant_conv` precedes the decoder (SD, SDXL; not Flux).
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    /// Whether the mid block has its self-attention.
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
    /// Whether pipelines run this VAE in f32 even when the rest is f16 (SDXL's VAE overflows in
    /// f16). The caller chooses the kind at load time; this only reports the advice.
    #[serde(default = "default_true")]
    pub force_upcast: bool,
}

fn default_out_channels() -> i64 {
    3
}
fn default_layers_per_block() -> i64 {
    1
}
fn default_groups() -> i64 {
    32
}
fn default_scaling_factor() -> f64 {
    0.18215
}
fn default_true() -> bool {
    true
}

impl VaeConfig {
    /// Reads a diffusers `vae/config.json`.
    pub fn from_file(path: &Path) -> Result<Self, VaeError> {
        Ok(read_config(path, Self::from_json)?)
    }

    /// Parses `config.json` text; the error says which field is wrong.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let config: Self = serde_json::from_str(text).map_err(|e| {
            format!("is not an AutoencoderKL config ({e}); use the VAE's own vae/config.json")
        })?;
        if config.block_out_channels.is_empty() || config.layers_per_block < 0 {
            return Err(
                "block_out_channels is empty or layers_per_block is negative; the \
                        config is corrupt"
                    .to_owned(),
            );
        }
        if config.norm_num_groups <= 0
            || config
                .block_out_channels
                .iter()
                .any(|c| *c <= 0 || c % config.norm_num_groups != 0)
        {
            return Err(format!(
                "block_out_channels {:?} are not all divisible by norm_num_groups {}; the config \
                 is corrupt",
                config.block_out_channels, config.norm_num_groups
            ));
        }
        if config.scaling_factor == 0.0 {
            return Err("scaling_factor is 0; the config is corrupt".to_owned());
        }
        Ok(config)
    }
}

/// How the VAE's tensors are named in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaeLayout {
    /// diffusers names (`decoder.up_blocks.0.resnets.0.conv1.weight`) after `prefix`: `""` for a
    /// diffusers `vae/` folder. Older diffusers files name the attention `query`, `key`,
    /// `value`, `proj_attn`; those load too.
    Diffusers {
        /// Prepended to every name.
        prefix: String,
    },
    /// LDM names (`decoder.up.3.block.0.conv1.weight`, `decoder.mid.attn_1.q.weight`) after
    /// `prefix`: `first_stage_model.` for SD 1.5 / SDXL single files, `""` for Flux's
    /// `ae.safetensors`.
    Ldm {
        /// Prepended to every name.
        prefix: String,
    },
}

/// A convolution or linear layer's weight and bias.
#[derive(Debug)]
struct Affine {
    weight: Tensor,
    bias: Tensor,
}

impl Affine {
    fn conv(&self, x: &Tensor) -> Tensor {
        let pad = self.weight.size()[2] / 2;
        x.conv2d(
            &self.weight,
            Some(&self.bias),
            [1, 1],
            [pad, pad],
            [1, 1],
            1,
        )
    }

    fn group_norm(&self, x: &Tensor, groups: i64) -> Tensor {
        x.group_norm(groups, Some(&self.weight), Some(&self.bias), EPS, true)
    }

    /// SiLU of the GroupNorm, in place: at the decoder's high resolutions a second buffer of
    /// the activation's size is a measurable part of the pair's time.
    fn group_norm_silu(&self, x: &Tensor, groups: i64) -> Tensor {
        self.group_norm(x, groups).silu_()
    }
}

/// diffusers' `ResnetBlock2D` without a time embedding.
#[derive(Debug)]
struct Resnet {
    norm1: Affine,
    conv1: Affine,
    norm2: Affine,
    conv2: Affine,
    shortcut: Option<Affine>,
}

/// The mid block's single-head attention; q, k, v and out are linear `[c, c]`.
#[derive(Debug)]
struct Attention {
    norm: Affine,
    q: Affine,
    k: Affine,
    v: Affine,
    out: Affine,
}

#[derive(Debug)]
struct UpBlock {
    resnets: Vec<Resnet>,
    upsample: Option<Affine>,
}

/// Tensor names of one layout, in diffusers' block order.
struct Names<'a> {
    prefix: &'a str,
    ldm: bool,
    /// `to_q`… or the pre-0.14 diffusers names `query`….
    legacy_attention: bool,
    up_blocks: usize,
}

impl Names<'_> {
    fn top(&self, diffusers: &str, ldm: &str) -> String {
        format!("{}{}", self.prefix, if self.ldm { ldm } else { diffusers })
    }

    fn mid_resnet(&self, i: usize) -> String {
        if self.ldm {
            format!("{}decoder.mid.block_{}", self.prefix, i + 1)
        } else {
            format!("{}decoder.mid_block.resnets.{i}", self.prefix)
        }
    }

    fn up_block(&self, i: usize) -> String {
        if self.ldm {
            format!("{}decoder.up.{}", self.prefix, self.up_blocks - 1 - i)
        } else {
            format!("{}decoder.up_blocks.{i}", self.prefix)
        }
    }

    fn resnet(&self, block: usize, j: usize) -> String {
        let part = if self.ldm { "block" } else { "resnets" };
        format!("{}.{part}.{j}", self.up_block(block))
    }

    fn upsample(&self, block: usize) -> String {
        let part = if self.ldm {
            "upsample.conv"
        } else {
            "upsamplers.0.conv"
        };
        format!("{}.{part}", self.up_block(block))
    }

    fn shortcut(&self) -> &'static str {
        if self.ldm {
            "nin_shortcut"
        } else {
            "conv_shortcut"
        }
    }

    /// The attention's prefix and its norm, q, k, v and out names.
    fn attention(&self) -> (String, [&'static str; 5]) {
        if self.ldm {
            let at = format!("{}decoder.mid.attn_1", self.prefix);
            (at, ["norm", "q", "k", "v", "proj_out"])
        } else if self.legacy_attention {
            let at = format!("{}decoder.mid_block.attentions.0", self.prefix);
            (at, ["group_norm", "query", "key", "value", "proj_attn"])
        } else {
            let at = format!("{}decoder.mid_block.attentions.0", self.prefix);
            (at, ["group_norm", "to_q", "to_k", "to_v", "to_out.0"])
        }
    }
}

/// Places loaded tensors on one device and dtype.
struct Loader<'a> {
    source: &'a dyn TensorSource,
    device: Device,
    kind: Kind,
}

impl Loader<'_> {
    fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor, VaeError> {
        Ok(place(self.source, name, shape, self.device, self.kind)?)
    }

    fn affine(&self, prefix: &str, weight: &[i64]) -> Result<Affine, VaeError> {
        Ok(Affine {
            weight: self.get(&format!("{prefix}.weight"), weight)?,
            bias: self.get(&format!("{prefix}.bias"), &weight[..1])?,
        })
    }

    fn conv(&self, prefix: &str, out: i64, input: i64, size: i64) -> Result<Affine, VaeError> {
        let conv = self.affine(prefix, &[out, input, size, size])?;
        Ok(if self.device == Device::Cpu {
            Affine {
                weight: channels_last(&conv.weight),
                bias: conv.bias,
            }
        } else {
            conv
        })
    }

    fn norm(&self, prefix: &str, channels: i64) -> Result<Affine, VaeError> {
        self.affine(prefix, &[channels])
    }

    /// A `[c, c]` linear weight, or LDM's `[c, c, 1, 1]` conv weight squeezed to one.
    fn linear(&self, prefix: &str, c: i64) -> Result<Affine, VaeError> {
        match self.affine(prefix, &[c, c]) {
            Err(VaeError::Files(WeightsError::Shape { .. })) => {
                let conv = self.conv(prefix, c, c, 1)?;
                Ok(Affine {
                    weight: conv.weight.view([c, c]),
                    bias: conv.bias,
                })
            }
            other => other,
        }
    }

    fn resnet(&self, at: &str, names: &Names, input: i64, out: i64) -> Result<Resnet, VaeError> {
        Ok(Resnet {
            norm1: self.norm(&format!("{at}.norm1"), input)?,
            conv1: self.conv(&format!("{at}.conv1"), out, input, 3)?,
            norm2: self.norm(&format!("{at}.norm2"), out)?,
            conv2: self.conv(&format!("{at}.conv2"), out, out, 3)?,
            shortcut: if input == out {
                None
            } else {
                Some(self.conv(&format!("{at}.{}", names.shortcut()), out, input, 1)?)
            },
        })
    }

    fn attention(&self, names: &Names, c: i64) -> Result<Attention, VaeError> {
        let (at, [norm, q, k, v, out]) = names.attention();
        Ok(Attention {
            norm: self.norm(&format!("{at}.{norm}"), c)?,
            q: self.linear(&format!("{at}.{q}"), c)?,
            k: self.linear(&format!("{at}.{k}"), c)?,
            v: self.linear(&format!("{at}.{v}"), c)?,
            out: self.linear(&format!("{at}.{out}"), c)?,
        })
    }
}

/// An `AutoencoderKL`'s decode path with loaded weights.
#[derive(Debug)]
pub struct VaeDecoder {
    config: VaeConfig,
    post_quant_conv: Option<Affine>,
    conv_in: Affine,
    mid_resnets: [Resnet; 2],
    mid_attention: Option<Attention>,
    up_blocks: Vec<UpBlock>,
    norm_out: Affine,
    conv_out: Affine,
    kind: Kind,
}

impl VaeDecoder {
    /// Loads the decoder weights `layout` names from `source` onto `device` as `kind`; encoder
    /// weights in the file are ignored. For SDXL in f16 pipelines load as f32 when
    /// [`VaeConfig::force_upcast`] says so.
    pub fn load(
        config: VaeConfig,
        source: &dyn TensorSource,
        layout: &VaeLayout,
        device: Device,
        kind: Kind,
    ) -> Result<Self, VaeError> {
        let loader = Loader {
            source,
            device,
            kind,
        };
        let (prefix, ldm) = match layout {
            VaeLayout::Diffusers { prefix } => (prefix.as_str(), false),
            VaeLayout::Ldm { prefix } => (prefix.as_str(), true),
        };
        let legacy_attention =
            !ldm && !source.contains(&format!(
                "{prefix}decoder.mid_block.attentions.0.to_q.weight"
            )) && source.contains(&format!(
                "{prefix}decoder.mid_block.attentions.0.query.weight"
            ));
        let channels: Vec<i64> = config.block_out_channels.iter().rev().copied().collect();
        let names = Names {
            prefix,
            ldm,
            legacy_attention,
            up_blocks: channels.len(),
        };
        let (latent, top) = (config.latent_channels, channels[0]);
        let post_quant_conv = if config.use_post_quant_conv {
            Some(loader.conv(
                &names.top("post_quant_conv", "post_quant_conv"),
                latent,
                latent,
                1,
            )?)
        } else {
            None
        };
        let conv_in = loader.conv(
            &names.top("decoder.conv_in", "decoder.conv_in"),
            top,
            latent,
            3,
        )?;
        let mid_resnets = [
            loader.resnet(&names.mid_resnet(0), &names, top, top)?,
            loader.resnet(&names.mid_resnet(1), &names, top, top)?,
        ];
        let mid_attention = if config.mid_block_add_attention {
            Some(loader.attention(&names, top)?)
        } else {
            None
        };
        let mut up_blocks = Vec::with_capacity(channels.len());
        let mut input = top;
        for (i, &out) in channels.iter().enumerate() {
            let resnets = (0..=config.layers_per_block as usize)
                .map(|j| {
                    let from = if j == 0 { input } else { out };
                    loader.resnet(&names.resnet(i, j), &names, from, out)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let upsample = if i + 1 < channels.len() {
                Some(loader.conv(&names.upsample(i), out, out, 3)?)
            } else {
                None
            };
            up_blocks.push(UpBlock { resnets, upsample });
            input = out;
        }
        let norm_out = loader.norm(
            &names.top("decoder.conv_norm_out", "decoder.norm_out"),
            input,
        )?;
        let conv_out = loader.conv(
            &names.top("decoder.conv_out", "decoder.conv_out"),
            config.out_channels,
            input,
            3,
        )?;
        Ok(Self {
            config,
            post_quant_conv,
            conv_in,
            mid_resnets,
            mid_attention,
            up_blocks,
            norm_out,
            conv_out,
            kind,
        })
    }

    /// The config the decoder was loaded with.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The image for the denoiser's `latents` (`[batch, latent_channels, h, w]`): divides by
    /// `scaling_factor`, adds `shift_factor`, then [`Self::decode`]s, as the pipelines do.
    pub fn latents_to_image(&self, latents: &Tensor) -> Result<Tensor, VaeError> {
        let scaled = latents / self.config.scaling_factor;
        let shifted = match self.config.shift_factor {
            Some(shift) => scaled + shift,
            None => scaled,
        };
        self.decode(&shifted)
    }

    /// diffusers' `AutoencoderKL.decode(z).sample`: `[batch, out_channels, 2^(n-1)·h,
    /// 2^(n-1)·w]`, nominally in [-1, 1] (not clamped). `z` moves to the weights' device and
    /// kind; run inside `tch::no_grad`.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor, VaeError> {
        let size = z.size();
        if size.len() != 4 || size[1] != self.config.latent_channels || size[0] == 0 {
            return Err(VaeError::Input(format!(
                "latents have shape {size:?}; pass [batch, {}, height, width]",
                self.config.latent_channels
            )));
        }
        let groups = self.config.norm_num_groups;
        let device = self.conv_in.weight.device();
        let mut x = z.to_device(device).to_kind(self.kind);
        if device == Device::Cpu {
            x = channels_last(&x);
        }
        if let Some(conv) = &self.post_quant_conv {
            x = conv.conv(&x);
        }
        x = self.conv_in.conv(&x);
        x = self.mid_resnets[0].forward(&x, groups);
        if let Some(attention) = &self.mid_attention {
            x = attention.forward(&x, groups);
        }
        x = self.mid_resnets[1].forward(&x, groups);
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(&x, groups);
            }
            if let Some(conv) = &block.upsample {
                let (h, w) = (x.size()[2], x.size()[3]);
                x = conv.conv(&x.upsample_nearest2d([2 * h, 2 * w], 2.0, 2.0));
            }
        }
        let x = self.norm_out.group_norm_silu(&x, groups);
        Ok(self.conv_out.conv(&x).contiguous())
    }
}

/// `x` (`[n, c, h, w]`) with channels-last strides. On the CPU the decoder runs in this layout
/// (activations and conv weights): oneDNN's convolutions are up to 2× faster on it at the
/// decoder's high resolutions and few channels, and every other op here keeps the layout.
fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

impl Resnet {
    fn forward(&self, x: &Tensor, groups: i64) -> Tensor {
        let h = self.conv1.conv(&self.norm1.group_norm_silu(x, groups));
        let h = self.conv2.conv(&self.norm2.group_norm_silu(&h, groups));
        match &self.shortcut {
            Some(shortcut) => shortcut.conv(x) + h,
            None => x + h,
        }
    }
}

impl Attention {
    fn forward(&self, x: &Tensor, groups: i64) -> Tensor {
        let &[batch, c, h, w] = x.size().as_slice() else {
            return x.shallow_clone();
        };
        let tokens = self
            .norm
            .group_norm(x, groups)
            .view([batch, 1, c, h * w])
            .transpose(2, 3);
        let project = |a: &Affine| tokens.linear(&a.weight, Some(&a.bias));
        let (q, k, v) = (project(&self.q), project(&self.k), project(&self.v));
        let attn = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        );
        let out = attn.linear(&self.out.weight, Some(&self.out.bias));
        x + out.transpose(2, 3).reshape([batch, c, h, w])
    }
}

/// The RGB8 pixels of decoded images (`[batch, channels, h, w]`, nominally in [-1, 1]) as
/// `[batch, h, w, channels]` u8 on the CPU, as diffusers' `VaeImageProcessor.postprocess`
/// followed by `numpy_to_pil` computes them: `(x * 0.5 + 0.5).clamp(0, 1)` in the image's own
/// dtype, then to f32, `* 255`, rounded half to even (`np.round`, which `torch.round` matches).
pub fn to_rgb8(image: &Tensor) -> Result<Tensor, VaeError> {
    if image.dim() != 4 {
        return Err(VaeError::Input(format!(
            "image has shape {:?}; pass [batch, channels, height, width]",
            image.size()
        )));
    }
    let unit = (image * 0.5 + 0.5).clamp(0.0, 1.0);
    let unit = unit.to_device(Device::Cpu).to_kind(Kind::Float);
    Ok((unit.permute([0, 2, 3, 1]) * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .contiguous())
}
