//! The conditioning vector, as diffusers 0.42.1 computes it (`src/diffusers/models/embeddings.py`
//! `CombinedTimestepGuidanceTextProjEmbeddings` / `CombinedTimestepTextProjEmbeddings`): the
//! 256-wide sinusoidal embedding (`Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)`,
//! in f32) of the timestep through `timestep_embedder`, plus that of the guidance scale through
//! `guidance_embedder` when the model has one, plus the pooled text embedding through
//! `text_embedder`; each is a two-layer MLP with SiLU between.

use tch::{Kind, Tensor};

use super::FluxError;
use super::loader::{Linear, Loader};

/// Width of the sinusoidal timestep and guidance embeddings.
const TIME_CHANNELS: i64 = 256;

/// `linear_2(silu(linear_1(x)))`: diffusers' `TimestepEmbedding` and
/// `PixArtAlphaTextProjection(act_fn="silu")`, BFL's `MLPEmbedder` (`in_layer`, `out_layer`).
#[derive(Debug)]
struct Mlp {
    linear_1: Linear,
    linear_2: Linear,
}

impl Mlp {
    fn load(
        l: &Loader,
        diffusers: &str,
        bfl: &str,
        input: i64,
        out: i64,
    ) -> Result<Self, FluxError> {
        let l = l.at(diffusers, bfl);
        Ok(Self {
            linear_1: l.linear("linear_1", "in_layer", out, input)?,
            linear_2: l.linear("linear_2", "out_layer", out, out)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.linear_2.forward(&self.linear_1.forward(x).silu())
    }
}

/// diffusers' `time_text_embed` (BFL: `time_in`, `guidance_in`, `vector_in`).
#[derive(Debug)]
pub(super) struct TimeTextEmbed {
    timestep: Mlp,
    guidance: Option<Mlp>,
    text: Mlp,
}

impl TimeTextEmbed {
    pub(super) fn load(
        l: &Loader,
        inner: i64,
        pooled: i64,
        guidance: bool,
    ) -> Result<Self, FluxError> {
        let at = "time_text_embed";
        let mlp = |name: &str, bfl: &str, input: i64| {
            Mlp::load(l, &format!("{at}.{name}"), bfl, input, inner)
        };
        Ok(Self {
            timestep: mlp("timestep_embedder", "time_in", TIME_CHANNELS)?,
            guidance: if guidance {
                Some(mlp("guidance_embedder", "guidance_in", TIME_CHANNELS)?)
            } else {
                None
            },
            text: mlp("text_embedder", "vector_in", pooled)?,
        })
    }

    /// Whether the model embeds a guidance scale.
    pub(super) fn has_guidance(&self) -> bool {
        self.guidance.is_some()
    }

    /// The conditioning `[batch, inner]` in `pooled`'s kind, from `timestep` and `guidance`
    /// already scaled by 1000 (`[batch]` each) and `pooled` `[batch, pooled_projection_dim]`.
    pub(super) fn forward(
        &self,
        timestep: &Tensor,
        guidance: Option<&Tensor>,
        pooled: &Tensor,
    ) -> Tensor {
        let kind = pooled.kind();
        let embed = |mlp: &Mlp, t: &Tensor| mlp.forward(&sinusoidal(t).to_kind(kind));
        let mut emb = embed(&self.timestep, timestep);
        if let (Some(mlp), Some(guidance)) = (&self.guidance, guidance) {
            emb += embed(mlp, guidance);
        }
        emb + self.text.forward(pooled)
    }
}

/// diffusers' `get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0)`,
/// in f32: `[n, 256]`, cosines first.
fn sinusoidal(timesteps: &Tensor) -> Tensor {
    let half = TIME_CHANNELS / 2;
    let device = timesteps.device();
    let exponent = -(10000f64.ln()) * Tensor::arange(half, (Kind::Float, device)) / (half as f64);
    let angles = timesteps.to_kind(Kind::Float).unsqueeze(1) * exponent.exp().unsqueeze(0);
    Tensor::cat(&[angles.cos(), angles.sin()], -1)
}
