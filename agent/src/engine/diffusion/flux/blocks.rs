//! The transformer's blocks as diffusers 0.42.1 computes them
//! (`src/diffusers/models/transformers/transformer_flux.py`): `FluxTransformerBlock` (double
//! stream: `AdaLayerNormZero` on image and text, joint attention over text then image tokens
//! with RMSNorm on q and k per head and RoPE, gated residuals, a modulated LayerNorm and GELU-tanh
//! feed-forward per stream) and `FluxSingleTransformerBlock` (`AdaLayerNormZeroSingle`, then
//! attention and a GELU-tanh MLP side by side, concatenated into `proj_out`). Every LayerNorm is
//! affine-free with eps 1e-6; the RMSNorms have eps 1e-6 too. Attention is libtorch's
//! `scaled_dot_product_attention`, as diffusers' native backend calls it.

use tch::{Kind, Tensor};

use super::FluxError;
use super::loader::{Linear, Loader};
use super::rope::Rope;

/// Epsilon of every LayerNorm and RMSNorm in the blocks and `norm_out`.
pub(super) const NORM_EPS: f64 = 1e-6;

/// The widths a block needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    /// The model width.
    pub(super) inner: i64,
    /// Width of one head.
    pub(super) head_dim: i64,
}

/// `LayerNorm(x) · (1 + scale) + shift`, `scale` and `shift` `[batch, width]`.
pub(super) fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Tensor {
    let width = x.size().last().copied().unwrap_or_default();
    let normed = x.layer_norm([width], None::<&Tensor>, None::<&Tensor>, NORM_EPS, true);
    normed * (scale.unsqueeze(1) + 1.0) + shift.unsqueeze(1)
}

/// diffusers clips f16 residual streams to its finite range: the text stream after each double
/// block, both streams after each single block.
fn clip_f16(x: Tensor) -> Tensor {
    if x.kind() == Kind::Half {
        x.clamp(-65504.0, 65504.0)
    } else {
        x
    }
}

/// One stream's q, k, v projections and the RMSNorm scales of q and k.
#[derive(Debug)]
struct Projections {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: Tensor,
    norm_k: Tensor,
}

impl Projections {
    fn new([q, k, v]: [Linear; 3], norm_q: Tensor, norm_k: Tensor) -> Self {
        Self {
            q,
            k,
            v,
            norm_q,
            norm_k,
        }
    }

    /// q, k, v as `[batch, tokens, heads, head_dim]`, q and k RMS-normed per head.
    fn project(&self, x: &Tensor, head_dim: i64) -> [Tensor; 3] {
        let heads = |t: Tensor| t.unflatten(-1, [-1, head_dim]);
        let rms = |t: Tensor, scale: &Tensor| t.rms_norm([head_dim], Some(scale), NORM_EPS);
        [
            rms(heads(self.q.forward(x)), &self.norm_q),
            rms(heads(self.k.forward(x)), &self.norm_k),
            heads(self.v.forward(x)),
        ]
    }
}

/// RoPE on q and k, then attention over all tokens: `[batch, tokens, heads · head_dim]`.
fn attend([q, k, v]: [Tensor; 3], rope: &Rope) -> Tensor {
    let (q, k) = (rope.apply(&q), rope.apply(&k));
    let kind = q.kind();
    let heads_first = |t: &Tensor| t.permute([0, 2, 1, 3]);
    Tensor::scaled_dot_product_attention(
        &heads_first(&q),
        &heads_first(&k),
        &heads_first(&v),
        None::<Tensor>,
        0.0,
        false,
        None,
        false,
    )
    .permute([0, 2, 1, 3])
    .flatten(2, 3)
    .to_kind(kind)
}

/// diffusers' `FeedForward(activation_fn="gelu-approximate")`: `net.0.proj`, GELU-tanh,
/// `net.2`.
#[derive(Debug)]
struct FeedForward {
    up: Linear,
    down: Linear,
}

impl FeedForward {
    fn load(l: &Loader, diffusers: &str, bfl: &str, width: i64) -> Result<Self, FluxError> {
        Ok(Self {
            up: l.linear(
                &format!("{diffusers}.net.0.proj"),
                &format!("{bfl}.0"),
                4 * width,
                width,
            )?,
            down: l.linear(
                &format!("{diffusers}.net.2"),
                &format!("{bfl}.2"),
                width,
                4 * width,
            )?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.down.forward(&self.up.forward(x).gelu("tanh"))
    }
}

/// One stream of a double block: its modulation, projections, output and feed-forward.
#[derive(Debug)]
struct Stream {
    modulation: Linear,
    projections: Projections,
    out: Linear,
    ff: FeedForward,
}

/// diffusers' `FluxTransformerBlock`.
#[derive(Debug)]
pub(super) struct DoubleBlock {
    img: Stream,
    txt: Stream,
    head_dim: i64,
}

impl DoubleBlock {
    /// Loads `transformer_blocks.{i}` (BFL: `double_blocks.{i}`).
    pub(super) fn load(l: &Loader, i: i64, dims: Dims) -> Result<Self, FluxError> {
        let l = l.at(
            &format!("transformer_blocks.{i}"),
            &format!("double_blocks.{i}"),
        );
        let d = dims.inner;
        let rms = |diffusers: &str, bfl: &str| l.rms_scale(diffusers, bfl, dims.head_dim);
        let img = Stream {
            modulation: l.linear("norm1.linear", "img_mod.lin", 6 * d, d)?,
            projections: Projections::new(
                l.qkv(["attn.to_q", "attn.to_k", "attn.to_v"], "img_attn.qkv", d)?,
                rms("attn.norm_q", "img_attn.norm.query_norm")?,
                rms("attn.norm_k", "img_attn.norm.key_norm")?,
            ),
            out: l.linear("attn.to_out.0", "img_attn.proj", d, d)?,
            ff: FeedForward::load(&l, "ff", "img_mlp", d)?,
        };
        let txt = Stream {
            modulation: l.linear("norm1_context.linear", "txt_mod.lin", 6 * d, d)?,
            projections: Projections::new(
                l.qkv(
                    ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
                    "txt_attn.qkv",
                    d,
                )?,
                rms("attn.norm_added_q", "txt_attn.norm.query_norm")?,
                rms("attn.norm_added_k", "txt_attn.norm.key_norm")?,
            ),
            out: l.linear("attn.to_add_out", "txt_attn.proj", d, d)?,
            ff: FeedForward::load(&l, "ff_context", "txt_mlp", d)?,
        };
        Ok(Self {
            img,
            txt,
            head_dim: dims.head_dim,
        })
    }

    /// `(img, txt)` after the block; `temb_silu` is SiLU of the conditioning, `[batch, inner]`.
    pub(super) fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        temb_silu: &Tensor,
        rope: &Rope,
    ) -> (Tensor, Tensor) {
        let img_mod = self.img.modulation.forward(temb_silu).chunk(6, 1);
        let txt_mod = self.txt.modulation.forward(temb_silu).chunk(6, 1);
        let img_normed = modulate(img, &img_mod[0], &img_mod[1]);
        let txt_normed = modulate(txt, &txt_mod[0], &txt_mod[1]);
        let [iq, ik, iv] = self.img.projections.project(&img_normed, self.head_dim);
        let [tq, tk, tv] = self.txt.projections.project(&txt_normed, self.head_dim);
        let joint = [
            Tensor::cat(&[tq, iq], 1),
            Tensor::cat(&[tk, ik], 1),
            Tensor::cat(&[tv, iv], 1),
        ];
        let txt_tokens = txt.size()[1];
        let img_tokens = img.size()[1];
        let attended = attend(joint, rope).split_with_sizes([txt_tokens, img_tokens], 1);
        let img = self.img.finish(img, &attended[1], &img_mod);
        let txt = self.txt.finish(txt, &attended[0], &txt_mod);
        (img, clip_f16(txt))
    }
}

impl Stream {
    /// The gated attention residual, then the modulated, gated feed-forward residual;
    /// `modulation` is (shift, scale, gate) for attention, then for the feed-forward.
    fn finish(&self, x: &Tensor, attended: &Tensor, modulation: &[Tensor]) -> Tensor {
        let attn = self.out.forward(&attended.contiguous());
        let x = x + modulation[2].unsqueeze(1) * attn;
        let normed = modulate(&x, &modulation[3], &modulation[4]);
        let ff = self.ff.forward(&normed);
        &x + modulation[5].unsqueeze(1) * ff
    }
}

/// diffusers' `FluxSingleTransformerBlock`, over text and image tokens concatenated.
#[derive(Debug)]
pub(super) struct SingleBlock {
    modulation: Linear,
    projections: Projections,
    proj_mlp: Linear,
    proj_out: Linear,
    head_dim: i64,
}

impl SingleBlock {
    /// Loads `single_transformer_blocks.{i}` (BFL: `single_blocks.{i}`, whose `linear1` stacks
    /// q, k, v and the MLP's input projection).
    pub(super) fn load(l: &Loader, i: i64, dims: Dims) -> Result<Self, FluxError> {
        let l = l.at(
            &format!("single_transformer_blocks.{i}"),
            &format!("single_blocks.{i}"),
        );
        let d = dims.inner;
        let (qkv, proj_mlp) = l.qkv_mlp(
            ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"],
            "linear1",
            d,
            4 * d,
        )?;
        let rms = |diffusers: &str, bfl: &str| l.rms_scale(diffusers, bfl, dims.head_dim);
        Ok(Self {
            modulation: l.linear("norm.linear", "modulation.lin", 3 * d, d)?,
            projections: Projections::new(
                qkv,
                rms("attn.norm_q", "norm.query_norm")?,
                rms("attn.norm_k", "norm.key_norm")?,
            ),
            proj_mlp,
            proj_out: l.linear("proj_out", "linear2", d, 5 * d)?,
            head_dim: dims.head_dim,
        })
    }

    /// The text-then-image tokens after the block.
    pub(super) fn forward(&self, x: &Tensor, temb_silu: &Tensor, rope: &Rope) -> Tensor {
        let modulation = self.modulation.forward(temb_silu).chunk(3, 1);
        let normed = modulate(x, &modulation[0], &modulation[1]);
        let mlp = self.proj_mlp.forward(&normed).gelu("tanh");
        let attn = attend(self.projections.project(&normed, self.head_dim), rope);
        let out = self.proj_out.forward(&Tensor::cat(&[attn, mlp], 2));
        clip_f16(x + modulation[2].unsqueeze(1) * out)
    }
}
