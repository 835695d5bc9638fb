//! Flux's rotary position embedding, as diffusers 0.42.1 computes it
//! (`src/diffusers/models/transformers/transformer_flux.py` `FluxPosEmbed`,
//! `src/diffusers/models/embeddings.py` `get_1d_rotary_pos_embed` and `apply_rotary_emb`):
//! each position axis `i` of the ids `[tokens, axes]` gets `axes_dims_rope[i]` dimensions of
//! frequencies `1 / θ^(2j / dim)` (θ = 10000) computed in f64, their cosines and sines
//! repeated element-wise to pairs and cast to f32; the axes are concatenated. Queries and keys
//! are rotated pairwise (`use_real_unbind_dim = -1`) in f32 and cast back to their dtype.

use tch::{Kind, Tensor};

/// `FluxPosEmbed`'s θ.
const THETA: f64 = 10000.0;

/// The cosines and sines of every token's rotation, `[1, tokens, 1, head_dim]` in f32, shaped to
/// broadcast over `[batch, tokens, heads, head_dim]`.
#[derive(Debug)]
pub(super) struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// `FluxPosEmbed(theta=10000, axes_dim)(ids)` for `ids` `[tokens, axes_dim.len()]`, on the
    /// ids' device.
    pub(super) fn new(ids: &Tensor, axes_dim: &[i64]) -> Self {
        let device = ids.device();
        // diffusers takes `ids.float()`, which the f64 frequencies then promote.
        let positions = ids.to_kind(Kind::Float).to_kind(Kind::Double);
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for (axis, &dim) in axes_dim.iter().enumerate() {
            let exponent = Tensor::arange_start_step(0, dim, 2, (Kind::Double, device)) / dim;
            let freqs = Tensor::pow_scalar(THETA, &exponent).reciprocal();
            let angles = positions.select(1, axis as i64).outer(&freqs);
            let pairs = |t: Tensor| t.repeat_interleave_self_int(2, 1, dim).to_kind(Kind::Float);
            cos.push(pairs(angles.cos()));
            sin.push(pairs(angles.sin()));
        }
        let shape = |parts: Vec<Tensor>| Tensor::cat(&parts, -1).unsqueeze(0).unsqueeze(2);
        Self {
            cos: shape(cos),
            sin: shape(sin),
        }
    }

    /// `apply_rotary_emb(x, (cos, sin), sequence_dim=1)` for `x` `[batch, tokens, heads,
    /// head_dim]`: each pair (a, b) becomes (a·cos − b·sin, b·cos + a·sin), in f32.
    pub(super) fn apply(&self, x: &Tensor) -> Tensor {
        let mut paired = x.size();
        let last = paired.pop().unwrap_or_default();
        paired.extend([last / 2, 2]);
        let halves = x.reshape(&paired[..]).unbind(-1);
        let rotated = Tensor::stack(&[-&halves[1], halves[0].shallow_clone()], -1).flatten(3, -1);
        (x.to_kind(Kind::Float) * &self.cos + rotated.to_kind(Kind::Float) * &self.sin)
            .to_kind(x.kind())
    }
}
