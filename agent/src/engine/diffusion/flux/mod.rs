//! The Flux.1 denoiser (FLUX.1-dev, FLUX.1-schnell), computed as diffusers 0.42.1's
//! `FluxTransformer2DModel` (`src/diffusers/models/transformers/transformer_flux.py`) computes it
//! for inference: packed latent tokens through `x_embedder` and T5 states through
//! `context_embedder`; a conditioning vector from the timestep and the guidance scale (both
//! multiplied by 1000 in the model's dtype first) and the pooled CLIP embedding (`embed.rs`);
//! RoPE over the text-then-image position ids (`rope.rs`); `num_layers` double-stream blocks and
//! `num_single_layers` single-stream blocks (`blocks.rs`); then `AdaLayerNormContinuous`
//! (`norm_out`) and `proj_out`. The pipeline's latent packing and position ids are in
//! `latents.rs`.
//!
//! Weights load from diffusers names (a `transformer/` folder) or from the original Black Forest
//! Labs names of single-file checkpoints (`double_blocks`, `single_blocks`, `final_layer`, …),
//! bare in BFL's `flux1-dev.safetensors` or under `model.diffusion_model.` in other single
//! files; `loader.rs` holds the mapping, the inverse of diffusers'
//! `convert_flux_transformer_checkpoint_to_diffusers`.
//!
//! Norms, softmax (libtorch's `scaled_dot_product_attention`) and RoPE (f64 frequencies, applied
//! in f32) run as diffusers runs them, so f32 on the CPU matches it closely and bf16 on CUDA
//! rounds where diffusers rounds. `scripts/fixtures/diffusion_flux.py` records diffusers' output
//! for tiny dev- and schnell-like configs in both layouts.

mod blocks;
mod config;
mod embed;
mod latents;
mod loader;
mod rope;

use tch::{Device, Kind, Tensor};

use self::blocks::{Dims, DoubleBlock, SingleBlock, modulate};
pub use self::config::FluxConfig;
use self::embed::TimeTextEmbed;
pub use self::latents::{latent_image_ids, latent_size, pack_latents, text_ids, unpack_latents};
use self::loader::{Linear, Loader};
use self::rope::Rope;
use super::weights::{TensorSource, WeightsError};

/// Why the Flux transformer could not be loaded or run. Messages say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum FluxError {
    /// A file or tensor could not be read, or does not fit the config.
    #[error(transparent)]
    Files(#[from] WeightsError),
    /// The caller passed input the transformer cannot take.
    #[error("invalid Flux input: {0}")]
    Input(String),
}

/// How the transformer's tensors are named in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FluxLayout {
    /// diffusers names (`transformer_blocks.0.attn.to_q.weight`, `x_embedder.weight`) after
    /// `prefix`: `""` for a diffusers `transformer/` folder.
    Diffusers {
        /// Prepended to every name.
        prefix: String,
    },
    /// The original Black Forest Labs names (`double_blocks.0.img_attn.qkv.weight` with q, k, v
    /// fused, `single_blocks.0.linear1.weight` with q, k, v and the MLP input fused, `img_in`,
    /// `final_layer.adaLN_modulation.1`) after `prefix`: `""` for BFL's `flux1-dev.safetensors`
    /// and `flux1-schnell.safetensors`, `model.diffusion_model.` for single files that bundle
    /// other components (lllyasviel's `flux1-dev-bnb-nf4`).
    Bfl {
        /// Prepended to every name.
        prefix: String,
    },
}

/// One call's inputs; `batch` rows each. Tensors may be on any device and of any float kind;
/// they move to the weights' device and kind.
#[derive(Debug)]
pub struct FluxInput<'a> {
    /// Packed latent tokens `[batch, image_tokens, in_channels]` (see [`pack_latents`]).
    pub hidden_states: &'a Tensor,
    /// T5 text states `[batch, text_tokens, joint_attention_dim]`.
    pub encoder_hidden_states: &'a Tensor,
    /// Pooled CLIP text embedding `[batch, pooled_projection_dim]`.
    pub pooled_projections: &'a Tensor,
    /// The noise level σ in [0, 1] (the model multiplies it by 1000): one, or one per row.
    pub timestep: &'a Tensor,
    /// Image token positions `[image_tokens, 3]` (see [`latent_image_ids`]).
    pub img_ids: &'a Tensor,
    /// Text token positions `[text_tokens, 3]` (see [`text_ids`]).
    pub txt_ids: &'a Tensor,
    /// The guidance scale (3.5 typical), one or one per row: required by guidance-distilled
    /// models (`guidance_embeds`, FLUX.1-dev), refused by the others (FLUX.1-schnell).
    pub guidance: Option<&'a Tensor>,
}

/// A `FluxTransformer2DModel` with loaded weights.
#[derive(Debug)]
pub struct FluxTransformer {
    config: FluxConfig,
    x_embedder: Linear,
    context_embedder: Linear,
    time_text_embed: TimeTextEmbed,
    double_blocks: Vec<DoubleBlock>,
    single_blocks: Vec<SingleBlock>,
    /// `AdaLayerNormContinuous.linear`: (scale, shift).
    norm_out: Linear,
    proj_out: Linear,
    kind: Kind,
}

impl FluxTransformer {
    /// Loads the weights `layout` names from `source` onto `device` as `kind` (bf16 on CUDA,
    /// f32 on the CPU); other tensors in the file (text encoders, VAE) are ignored.
    pub fn load(
        config: FluxConfig,
        source: &dyn TensorSource,
        layout: &FluxLayout,
        device: Device,
        kind: Kind,
    ) -> Result<Self, FluxError> {
        let l = Loader::new(source, layout, device, kind);
        let c = &config;
        let d = c.inner_dim();
        let dims = Dims {
            inner: d,
            head_dim: c.attention_head_dim,
        };
        let time_text_embed =
            TimeTextEmbed::load(&l, d, c.pooled_projection_dim, c.guidance_embeds)?;
        let context_embedder = l.linear("context_embedder", "txt_in", d, c.joint_attention_dim)?;
        let x_embedder = l.linear("x_embedder", "img_in", d, c.in_channels)?;
        let double_blocks = (0..c.num_layers)
            .map(|i| DoubleBlock::load(&l, i, dims))
            .collect::<Result<_, _>>()?;
        let single_blocks = (0..c.num_single_layers)
            .map(|i| SingleBlock::load(&l, i, dims))
            .collect::<Result<_, _>>()?;
        let norm_out = l.scale_shift(
            "norm_out.linear",
            "final_layer.adaLN_modulation.1",
            2 * d,
            d,
        )?;
        let proj_out = l.linear("proj_out", "final_layer.linear", c.out_width(), d)?;
        Ok(Self {
            config,
            x_embedder,
            context_embedder,
            time_text_embed,
            double_blocks,
            single_blocks,
            norm_out,
            proj_out,
            kind,
        })
    }

    /// The config the transformer was loaded with.
    pub fn config(&self) -> &FluxConfig {
        &self.config
    }

    /// diffusers' `transformer(hidden_states, encoder_hidden_states, pooled_projections,
    /// timestep, img_ids, txt_ids, guidance).sample`: the flow prediction `[batch,
    /// image_tokens, patch_size² · out_channels]` in the weights' kind. Run inside
    /// `tch::no_grad`.
    pub fn forward(&self, input: &FluxInput) -> Result<Tensor, FluxError> {
        let batch = self.check(input)?;
        let device = self.x_embedder.device();
        let to_model = |t: &Tensor| t.to_device(device).to_kind(self.kind);
        let per_row = |t: &Tensor| to_model(t).reshape([-1]).expand([batch], false) * 1000.0;
        let img = self.x_embedder.forward(&to_model(input.hidden_states));
        let timestep = per_row(input.timestep);
        let guidance = input.guidance.map(per_row);
        let pooled = to_model(input.pooled_projections);
        let temb = self
            .time_text_embed
            .forward(&timestep, guidance.as_ref(), &pooled);
        let txt = self
            .context_embedder
            .forward(&to_model(input.encoder_hidden_states));
        let ids = Tensor::cat(
            &[input.txt_ids, input.img_ids].map(|t| t.to_device(device).to_kind(Kind::Float)),
            0,
        );
        let rope = Rope::new(&ids, &self.config.axes_dims_rope);
        let temb_silu = temb.silu();
        let (mut img, mut txt) = (img, txt);
        for block in &self.double_blocks {
            (img, txt) = block.forward(&img, &txt, &temb_silu, &rope);
        }
        let (txt_tokens, img_tokens) = (txt.size()[1], img.size()[1]);
        let mut joint = Tensor::cat(&[txt, img], 1);
        for block in &self.single_blocks {
            joint = block.forward(&joint, &temb_silu, &rope);
        }
        let img = joint.narrow(1, txt_tokens, img_tokens);
        let scale_shift = self.norm_out.forward(&temb_silu).chunk(2, 1);
        let img = modulate(&img, &scale_shift[1], &scale_shift[0]);
        Ok(self.proj_out.forward(&img))
    }

    /// Checks every input's shape against the config; returns the batch size.
    fn check(&self, input: &FluxInput) -> Result<i64, FluxError> {
        let c = &self.config;
        let bad = |what: &str, found: &Tensor, want: String| {
            Err(FluxError::Input(format!(
                "{what} has shape {:?}; pass {want}",
                found.size()
            )))
        };
        let hidden = input.hidden_states.size();
        let &[batch, img_tokens, width] = hidden.as_slice() else {
            return bad(
                "hidden_states",
                input.hidden_states,
                format!("[batch, image_tokens, {}]", c.in_channels),
            );
        };
        if width != c.in_channels || batch == 0 || img_tokens == 0 {
            return bad(
                "hidden_states",
                input.hidden_states,
                format!("[batch, image_tokens, {}] (packed latents)", c.in_channels),
            );
        }
        let text = input.encoder_hidden_states.size();
        let txt_tokens = match text.as_slice() {
            &[b, t, w] if b == batch && w == c.joint_attention_dim => t,
            _ => {
                return bad(
                    "encoder_hidden_states",
                    input.encoder_hidden_states,
                    format!("[{batch}, text_tokens, {}]", c.joint_attention_dim),
                );
            }
        };
        if input.pooled_projections.size() != [batch, c.pooled_projection_dim] {
            return bad(
                "pooled_projections",
                input.pooled_projections,
                format!("[{batch}, {}]", c.pooled_projection_dim),
            );
        }
        let axes = c.axes_dims_rope.len() as i64;
        for (what, ids, tokens) in [
            ("img_ids", input.img_ids, img_tokens),
            ("txt_ids", input.txt_ids, txt_tokens),
        ] {
            if ids.size() != [tokens, axes] {
                return bad(what, ids, format!("[{tokens}, {axes}], one row per token"));
            }
        }
        let rows = |t: &Tensor| {
            let n = t.numel() as i64;
            n == 1 || n == batch
        };
        if !rows(input.timestep) {
            return bad(
                "timestep",
                input.timestep,
                format!("one σ, or one per row ([{batch}])"),
            );
        }
        match (input.guidance, self.time_text_embed.has_guidance()) {
            (Some(g), true) if !rows(g) => bad(
                "guidance",
                g,
                format!("one scale, or one per row ([{batch}])"),
            ),
            (None, true) => Err(FluxError::Input(
                "this model embeds the guidance scale (guidance_embeds, FLUX.1-dev-like); pass \
                 guidance"
                    .to_owned(),
            )),
            (Some(_), false) => Err(FluxError::Input(
                "this model has no guidance embedding (FLUX.1-schnell-like); pass no guidance"
                    .to_owned(),
            )),
            _ => Ok(batch),
        }
    }
}
