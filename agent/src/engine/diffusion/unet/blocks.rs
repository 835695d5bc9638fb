//! The UNet's building blocks as diffusers computes them: `ResnetBlock2D` with the time
//! embedding added after the first conv, `Transformer2DModel` (GroupNorm eps 1e-6, `proj_in`,
//! `BasicTransformerBlock`s of LayerNorm → self-attention, LayerNorm → cross-attention, LayerNorm
//! → GEGLU feed-forward, each residual, then `proj_out` and the outer residual), and the
//! stride-2 / nearest ×2 resamplers. Weights load from diffusers names.

use tch::{Device, Kind, Tensor};

use super::UNetError;
use super::ldm::LdmNames;
use crate::engine::diffusion::weights::{TensorSource, place};

/// The transformer's GroupNorm epsilon, fixed in diffusers' `Transformer2DModel`.
const TRANSFORMER_GROUP_NORM_EPS: f64 = 1e-6;
/// `BasicTransformerBlock`'s LayerNorm epsilon.
const LAYER_NORM_EPS: f64 = 1e-5;

/// A convolution, linear or norm layer's weight and optional bias.
#[derive(Debug)]
pub(super) struct Affine {
    pub(super) weight: Tensor,
    bias: Option<Tensor>,
}

impl Affine {
    pub(super) fn conv(&self, x: &Tensor, stride: i64) -> Tensor {
        let pad = self.weight.size()[2] / 2;
        x.conv2d(
            &self.weight,
            self.bias.as_ref(),
            [stride, stride],
            [pad, pad],
            [1, 1],
            1,
        )
    }

    pub(super) fn linear(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }

    pub(super) fn group_norm(&self, x: &Tensor, groups: i64, eps: f64) -> Tensor {
        x.group_norm(groups, Some(&self.weight), self.bias.as_ref(), eps, true)
    }

    fn layer_norm(&self, x: &Tensor) -> Tensor {
        let width = self.weight.size();
        x.layer_norm(
            &width,
            Some(&self.weight),
            self.bias.as_ref(),
            LAYER_NORM_EPS,
            true,
        )
    }
}

/// Places loaded tensors on one device and dtype.
pub(super) struct Loader<'a> {
    pub(super) source: &'a dyn TensorSource,
    pub(super) device: Device,
    pub(super) kind: Kind,
    pub(super) prefix: &'a str,
    /// Set for the LDM layout.
    pub(super) ldm: Option<LdmNames>,
}

impl Loader<'_> {
    fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor, UNetError> {
        let name = match &self.ldm {
            Some(ldm) => format!("{}{}", self.prefix, ldm.rename(name)),
            None => format!("{}{name}", self.prefix),
        };
        Ok(place(self.source, &name, shape, self.device, self.kind)?)
    }

    fn affine(&self, at: &str, weight: &[i64], bias: bool) -> Result<Affine, UNetError> {
        Ok(Affine {
            weight: self.get(&format!("{at}.weight"), weight)?,
            bias: if bias {
                Some(self.get(&format!("{at}.bias"), &weight[..1])?)
            } else {
                None
            },
        })
    }

    pub(super) fn conv(&self, at: &str, out: i64, input: i64, k: i64) -> Result<Affine, UNetError> {
        self.affine(at, &[out, input, k, k], true)
    }

    pub(super) fn linear(&self, at: &str, out: i64, input: i64) -> Result<Affine, UNetError> {
        self.affine(at, &[out, input], true)
    }

    pub(super) fn norm(&self, at: &str, channels: i64) -> Result<Affine, UNetError> {
        self.affine(at, &[channels], true)
    }
}

/// diffusers' `ResnetBlock2D` (`resnet_time_scale_shift` "default").
#[derive(Debug)]
pub(super) struct Resnet {
    norm1: Affine,
    conv1: Affine,
    time_emb_proj: Affine,
    norm2: Affine,
    conv2: Affine,
    shortcut: Option<Affine>,
}

impl Resnet {
    pub(super) fn load(
        l: &Loader,
        at: &str,
        input: i64,
        out: i64,
        temb: i64,
    ) -> Result<Self, UNetError> {
        Ok(Self {
            norm1: l.norm(&format!("{at}.norm1"), input)?,
            conv1: l.conv(&format!("{at}.conv1"), out, input, 3)?,
            time_emb_proj: l.linear(&format!("{at}.time_emb_proj"), out, temb)?,
            norm2: l.norm(&format!("{at}.norm2"), out)?,
            conv2: l.conv(&format!("{at}.conv2"), out, out, 3)?,
            shortcut: if input == out {
                None
            } else {
                Some(l.conv(&format!("{at}.conv_shortcut"), out, input, 1)?)
            },
        })
    }

    /// `temb` is the time embedding before the SiLU each resnet applies.
    pub(super) fn forward(&self, x: &Tensor, temb: &Tensor, groups: i64, eps: f64) -> Tensor {
        let h = self
            .conv1
            .conv(&self.norm1.group_norm(x, groups, eps).silu(), 1);
        let t = self
            .time_emb_proj
            .linear(&temb.silu())
            .unsqueeze(-1)
            .unsqueeze(-1);
        let h = h + t;
        let h = self
            .conv2
            .conv(&self.norm2.group_norm(&h, groups, eps).silu(), 1);
        match &self.shortcut {
            Some(shortcut) => shortcut.conv(x, 1) + h,
            None => x + h,
        }
    }
}

/// Multi-head attention: q, k, v without bias, `to_out.0` with.
#[derive(Debug)]
struct Attention {
    heads: i64,
    q: Affine,
    k: Affine,
    v: Affine,
    out: Affine,
}

impl Attention {
    fn load(l: &Loader, at: &str, c: i64, context: i64, heads: i64) -> Result<Self, UNetError> {
        Ok(Self {
            heads,
            q: l.affine(&format!("{at}.to_q"), &[c, c], false)?,
            k: l.affine(&format!("{at}.to_k"), &[c, context], false)?,
            v: l.affine(&format!("{at}.to_v"), &[c, context], false)?,
            out: l.linear(&format!("{at}.to_out.0"), c, c)?,
        })
    }

    /// `x`: `[batch, tokens, c]`; `context`: `[batch, context_tokens, context_width]`.
    fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let split = |t: Tensor| {
            let (batch, tokens, width) = t.size3().unwrap_or_default();
            t.view([batch, tokens, self.heads, width / self.heads])
                .transpose(1, 2)
        };
        let q = split(self.q.linear(x));
        let k = split(self.k.linear(context));
        let v = split(self.v.linear(context));
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
        let (batch, _, tokens, _) = attn.size4().unwrap_or_default();
        self.out
            .linear(&attn.transpose(1, 2).reshape([batch, tokens, -1]))
    }
}

/// diffusers' `BasicTransformerBlock` with a GEGLU feed-forward.
#[derive(Debug)]
struct TransformerBlock {
    norm1: Affine,
    attn1: Attention,
    norm2: Affine,
    attn2: Attention,
    norm3: Affine,
    ff_in: Affine,
    ff_out: Affine,
}

impl TransformerBlock {
    fn load(l: &Loader, at: &str, c: i64, context: i64, heads: i64) -> Result<Self, UNetError> {
        Ok(Self {
            norm1: l.norm(&format!("{at}.norm1"), c)?,
            attn1: Attention::load(l, &format!("{at}.attn1"), c, c, heads)?,
            norm2: l.norm(&format!("{at}.norm2"), c)?,
            attn2: Attention::load(l, &format!("{at}.attn2"), c, context, heads)?,
            norm3: l.norm(&format!("{at}.norm3"), c)?,
            ff_in: l.linear(&format!("{at}.ff.net.0.proj"), 8 * c, c)?,
            ff_out: l.linear(&format!("{at}.ff.net.2"), c, 4 * c)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let h = self.norm1.layer_norm(x);
        let x = self.attn1.forward(&h, &h) + x;
        let x = self.attn2.forward(&self.norm2.layer_norm(&x), context) + &x;
        let projected = self.ff_in.linear(&self.norm3.layer_norm(&x));
        let parts = projected.chunk(2, -1);
        let geglu = &parts[0] * parts[1].gelu("none");
        self.ff_out.linear(&geglu) + x
    }
}

/// diffusers' `Transformer2DModel` over the spatial positions of a feature map.
#[derive(Debug)]
pub(super) struct Transformer2D {
    norm: Affine,
    /// Linear on the tokens, whether the file has a linear layer or a 1×1 conv.
    proj_in: Affine,
    blocks: Vec<TransformerBlock>,
    proj_out: Affine,
}

/// What a [`Transformer2D`] needs beyond its name and width.
#[derive(Debug, Clone, Copy)]
pub(super) struct TransformerShape {
    pub(super) heads: i64,
    pub(super) layers: i64,
    pub(super) context: i64,
    pub(super) linear: bool,
}

impl Transformer2D {
    pub(super) fn load(
        l: &Loader,
        at: &str,
        c: i64,
        shape: TransformerShape,
    ) -> Result<Self, UNetError> {
        // SD 1.5's 1×1 conv projections are the same map as a linear layer on the tokens, and
        // cheaper that way on the CPU: one GEMM on the token layout the blocks use anyway, where
        // the conv path adds its own input and output reorders.
        let projection = |name: &str| {
            let at = format!("{at}.{name}");
            if shape.linear {
                l.linear(&at, c, c)
            } else {
                let conv = l.conv(&at, c, c, 1)?;
                Ok(Affine {
                    weight: conv.weight.view([c, c]),
                    bias: conv.bias,
                })
            }
        };
        Ok(Self {
            norm: l.norm(&format!("{at}.norm"), c)?,
            proj_in: projection("proj_in")?,
            blocks: (0..shape.layers)
                .map(|k| {
                    let at = format!("{at}.transformer_blocks.{k}");
                    TransformerBlock::load(l, &at, c, shape.context, shape.heads)
                })
                .collect::<Result<_, _>>()?,
            proj_out: projection("proj_out")?,
        })
    }

    pub(super) fn forward(&self, x: &Tensor, context: &Tensor, groups: i64) -> Tensor {
        let (batch, c, h, w) = x.size4().unwrap_or_default();
        let normed = self.norm.group_norm(x, groups, TRANSFORMER_GROUP_NORM_EPS);
        let tokens = normed.permute([0, 2, 3, 1]).reshape([batch, h * w, c]);
        let mut tokens = self.proj_in.linear(&tokens);
        for block in &self.blocks {
            tokens = block.forward(&tokens, context);
        }
        let out = self
            .proj_out
            .linear(&tokens)
            .reshape([batch, h, w, c])
            .permute([0, 3, 1, 2]);
        // `x` first: a sum takes the layout of its first operand, and `out` is channels-last,
        // which would make every later conv and norm run channels-last (slower on the CPU).
        x + out
    }
}

/// One level of down or up blocks: resnets, each followed by its attention when the level has
/// them, then the optional resampler (stride-2 conv down, nearest ×2 and conv up).
#[derive(Debug)]
pub(super) struct Level {
    pub(super) resnets: Vec<Resnet>,
    pub(super) attentions: Vec<Transformer2D>,
    pub(super) resample: Option<Affine>,
}
