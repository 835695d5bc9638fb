//! Flux's second text encoder, T5 v1.1 XXL, computed as transformers' `T5EncoderModel`
//! computes it (transformers 5.24, `models/t5/modeling_t5.py`): token embedding; layers of
//! self-attention then a gated-GELU feed-forward, each behind a `T5LayerNorm` (RMS norm: no
//! mean subtraction, no bias) and added back to the residual; a final `T5LayerNorm`. Attention
//! scores are not scaled by 1/√d; instead a learned bias per head and relative-position bucket
//! (bidirectional, log-spaced beyond half the exact range, stored only in the first layer) is
//! added to the scores of every layer. Dropout is inference-off.
//!
//! Half precision follows transformers: the RMS norm's variance and the normalization are
//! computed in f32 and cast back to the weights' kind; the softmax runs in f32 (as
//! transformers 4.x, which Flux pipelines were released against, computes it; 5.x keeps the
//! scores' kind, which differs only in half precision); in f16 the `wo` projection stays f32
//! (`_keep_in_fp32_modules = ["wo"]`), which turns the residual stream f32 after the first
//! feed-forward, and f16 states are clamped below infinity after each sublayer. T5 overflows in
//! plain f16: run it in bf16 or f32.
//!
//! Weights load from transformers names after a prefix: `""` for a diffusers
//! `text_encoder_2/` folder or a standalone `t5xxl_*.safetensors`, [`SINGLE_FILE_PREFIX`] for
//! ComfyUI / Forge single-file Flux checkpoints. [`T5Tokenizer`] prepares the ids.
//! `scripts/fixtures/diffusion_t5.py` records the reference outputs.

mod tokenizer;

pub use tokenizer::{FLUX_DEV_MAX_LENGTH, FLUX_SCHNELL_MAX_LENGTH, T5Tokenizer};

use std::path::Path;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::weights::{TensorSource, WeightsError, place, read_config};

/// Where ComfyUI / Forge single-file Flux checkpoints keep T5's transformers names.
pub const SINGLE_FILE_PREFIX: &str = "text_encoders.t5xxl.transformer.";

/// The largest finite f16, which transformers clamps f16 states to.
const F16_MAX: f64 = 65504.0;

/// Why the T5 encoder or its tokenizer could not be loaded or run. Messages say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum T5Error {
    /// A file or tensor could not be read, or does not fit the config.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The caller passed input the encoder cannot take.
    #[error("invalid T5 input: {0}")]
    Input(String),
    /// The `tokenizers` library failed to encode a prompt.
    #[error("the T5 tokenizer failed to encode a prompt: {0}")]
    Tokenize(String),
}

/// The feed-forward variant, from `config.json`'s `feed_forward_proj`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum T5FeedForward {
    /// `gelu_new(x·wi_0ᵀ) ⊙ (x·wi_1ᵀ)` then `wo` (T5 v1.1, Flan-T5; Flux's text_encoder_2).
    /// `gelu_new` is the tanh approximation of GELU.
    #[serde(
        rename = "gated-gelu",
        alias = "gated-gelu_new",
        alias = "gated-gelu_pytorch_tanh"
    )]
    GatedGelu,
}

/// The encoder fields of a transformers `T5Config` (`config.json`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct T5Config {
    /// Embedding rows (32128 for T5 v1.1; the tokenizer uses fewer).
    pub vocab_size: i64,
    /// Model width (4096 for XXL).
    pub d_model: i64,
    /// Width of one attention head (64).
    pub d_kv: i64,
    /// Attention heads (64 for XXL); the attention width is `num_heads · d_kv`.
    pub num_heads: i64,
    /// Feed-forward width (10240 for XXL).
    pub d_ff: i64,
    /// Encoder layers (24 for XXL).
    pub num_layers: i64,
    /// Feed-forward variant; only `gated-gelu` is supported.
    pub feed_forward_proj: T5FeedForward,
    /// Relative-position buckets, half per direction (32).
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: i64,
    /// Distance from which every relative position shares the last bucket (128).
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: i64,
    /// RMS norm epsilon (1e-6).
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
}

fn default_buckets() -> i64 {
    32
}
fn default_max_distance() -> i64 {
    128
}
fn default_eps() -> f64 {
    1e-6
}

impl T5Config {
    /// Reads a `config.json` (a diffusers `text_encoder_2/config.json`).
    pub fn from_file(path: &Path) -> Result<Self, T5Error> {
        Ok(read_config(path, Self::from_json)?)
    }

    /// Parses `config.json` text; the error says which field is wrong.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let config: Self = serde_json::from_str(text).map_err(|e| {
            format!("is not a T5 encoder config ({e}); use the text encoder's own config.json")
        })?;
        let sizes = [
            ("vocab_size", config.vocab_size),
            ("d_model", config.d_model),
            ("d_kv", config.d_kv),
            ("num_heads", config.num_heads),
            ("d_ff", config.d_ff),
            ("num_layers", config.num_layers),
        ];
        if let Some((field, value)) = sizes.iter().find(|(_, v)| *v <= 0) {
            return Err(format!(
                "{field} is {value}; it must be positive, the config is corrupt"
            ));
        }
        // Bidirectional buckets: half per direction, of which half are exact distances.
        let max_exact = config.relative_attention_num_buckets / 4;
        if max_exact < 1 {
            return Err(format!(
                "relative_attention_num_buckets is {}; it must be at least 4",
                config.relative_attention_num_buckets
            ));
        }
        if config.relative_attention_max_distance <= max_exact {
            return Err(format!(
                "relative_attention_max_distance is {}; it must exceed a quarter of \
                 relative_attention_num_buckets ({max_exact})",
                config.relative_attention_max_distance
            ));
        }
        if !(config.layer_norm_epsilon.is_finite() && config.layer_norm_epsilon >= 0.0) {
            return Err(format!(
                "layer_norm_epsilon is {}; it must be a small non-negative number",
                config.layer_norm_epsilon
            ));
        }
        Ok(config)
    }
}

/// How the encoder's tensors are named in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum T5Layout {
    /// transformers names (`shared.weight` or `encoder.embed_tokens.weight`,
    /// `encoder.block.N.layer.0.SelfAttention.{q,k,v,o}.weight`, …) after `prefix`: `""` for a
    /// diffusers `text_encoder_2/` folder, [`SINGLE_FILE_PREFIX`] in single-file checkpoints.
    HuggingFace {
        /// Prepended to every name.
        prefix: String,
    },
}

impl T5Layout {
    fn prefix(&self) -> &str {
        match self {
            Self::HuggingFace { prefix } => prefix,
        }
    }
}

/// One encoder layer's weights (`[out, in]`, as `nn.Linear` stores them).
#[derive(Debug)]
struct Block {
    attention_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    feed_forward_norm: Tensor,
    wi_0: Tensor,
    wi_1: Tensor,
    /// f32 when the model runs in f16, as transformers keeps it.
    wo: Tensor,
}

/// Places loaded tensors on one device and dtype.
struct Loader<'a> {
    source: &'a dyn TensorSource,
    prefix: &'a str,
    device: Device,
    kind: Kind,
}

impl Loader<'_> {
    fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor, T5Error> {
        self.get_as(name, shape, self.kind)
    }

    fn get_as(&self, name: &str, shape: &[i64], kind: Kind) -> Result<Tensor, T5Error> {
        let name = format!("{}{name}", self.prefix);
        Ok(place(self.source, &name, shape, self.device, kind)?)
    }

    /// `shared.weight`, or `encoder.embed_tokens.weight` where only that is stored (the two
    /// are tied in transformers; files keep one or both). A missing embedding names both.
    fn embedding(&self, c: &T5Config) -> Result<Tensor, T5Error> {
        const SHARED: &str = "shared.weight";
        const EMBED_TOKENS: &str = "encoder.embed_tokens.weight";
        let shape = [c.vocab_size, c.d_model];
        let has = |name: &str| self.source.contains(&format!("{}{name}", self.prefix));
        if !has(SHARED) && has(EMBED_TOKENS) {
            return self.get(EMBED_TOKENS, &shape);
        }
        self.get(SHARED, &shape).map_err(|e| match e {
            T5Error::Weights(WeightsError::MissingTensor { name, source_name }) => {
                WeightsError::MissingTensor {
                    name: format!("{name}` or `{}{EMBED_TOKENS}", self.prefix),
                    source_name,
                }
                .into()
            }
            other => other,
        })
    }

    fn block(&self, i: i64, c: &T5Config) -> Result<Block, T5Error> {
        let (d, inner, ff) = (c.d_model, c.num_heads * c.d_kv, c.d_ff);
        let at = format!("encoder.block.{i}.layer");
        let attention =
            |p: &str, shape: &[i64]| self.get(&format!("{at}.0.SelfAttention.{p}.weight"), shape);
        let dense = |p: &str| format!("{at}.1.DenseReluDense.{p}.weight");
        let wo_kind = if self.kind == Kind::Half {
            Kind::Float
        } else {
            self.kind
        };
        Ok(Block {
            attention_norm: self.get(&format!("{at}.0.layer_norm.weight"), &[d])?,
            q: attention("q", &[inner, d])?,
            k: attention("k", &[inner, d])?,
            v: attention("v", &[inner, d])?,
            o: attention("o", &[d, inner])?,
            feed_forward_norm: self.get(&format!("{at}.1.layer_norm.weight"), &[d])?,
            wi_0: self.get(&dense("wi_0"), &[ff, d])?,
            wi_1: self.get(&dense("wi_1"), &[ff, d])?,
            wo: self.get_as(&dense("wo"), &[d, ff], wo_kind)?,
        })
    }
}

/// A T5 encoder with loaded weights.
#[derive(Debug)]
pub struct T5EncoderModel {
    config: T5Config,
    embedding: Tensor,
    /// `[num_buckets, num_heads]`, from the first layer, shared by all.
    relative_attention_bias: Tensor,
    blocks: Vec<Block>,
    final_norm: Tensor,
}

impl T5EncoderModel {
    /// Loads the weights `layout` names from `source` onto `device` as `kind` (bf16 or f32; see
    /// the module docs for f16).
    pub fn load(
        config: T5Config,
        source: &dyn TensorSource,
        layout: &T5Layout,
        device: Device,
        kind: Kind,
    ) -> Result<Self, T5Error> {
        let loader = Loader {
            source,
            prefix: layout.prefix(),
            device,
            kind,
        };
        let embedding = loader.embedding(&config)?;
        let relative_attention_bias = loader.get(
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            &[config.relative_attention_num_buckets, config.num_heads],
        )?;
        let blocks = (0..config.num_layers)
            .map(|i| loader.block(i, &config))
            .collect::<Result<Vec<_>, _>>()?;
        let final_norm = loader.get("encoder.final_layer_norm.weight", &[config.d_model])?;
        Ok(Self {
            config,
            embedding,
            relative_attention_bias,
            blocks,
            final_norm,
        })
    }

    /// The config the model was loaded with.
    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// Encodes `input_ids` (`[batch, seq]`, integer) into transformers' `last_hidden_state`,
    /// `[batch, seq, d_model]`, in the kind the model was loaded as.
    ///
    /// There is no attention mask: every position, padding included, attends to every other,
    /// exactly as FluxPipeline's `_get_t5_prompt_embeds` calls the encoder on ids padded to
    /// `max_sequence_length` (see [`T5Tokenizer`]). The padded positions' states are part of
    /// Flux's conditioning.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor, T5Error> {
        let (batch, seq) = self.check_input(input_ids)?;
        let device = self.embedding.device();
        let ids = input_ids.to_device(device);
        let eps = self.config.layer_norm_epsilon;
        let bias = self.position_bias(seq);
        let mut x = Tensor::embedding(&self.embedding, &ids, -1, false, false);
        for block in &self.blocks {
            let normed = rms_norm(&x, &block.attention_norm, eps);
            x = clamp_f16(&x + self.attention(block, &normed, &bias, batch, seq));
            let normed = rms_norm(&x, &block.feed_forward_norm, eps);
            let gated = normed.linear(&block.wi_0, None::<Tensor>).gelu("tanh")
                * normed.linear(&block.wi_1, None::<Tensor>);
            let out = gated
                .to_kind(block.wo.kind())
                .linear(&block.wo, None::<Tensor>);
            x = clamp_f16(&x + out);
        }
        Ok(rms_norm(&x, &self.final_norm, eps))
    }

    fn attention(&self, block: &Block, x: &Tensor, bias: &Tensor, batch: i64, seq: i64) -> Tensor {
        let (heads, head_dim) = (self.config.num_heads, self.config.d_kv);
        let split = |w: &Tensor| {
            x.linear(w, None::<Tensor>)
                .view([batch, seq, heads, head_dim])
                .transpose(1, 2)
        };
        let (q, k, v) = (split(&block.q), split(&block.k), split(&block.v));
        let scores = q.matmul(&k.transpose(-2, -1)) + bias;
        let weights = scores.softmax(-1, Kind::Float).to_kind(scores.kind());
        weights
            .matmul(&v)
            .transpose(1, 2)
            .reshape([batch, seq, heads * head_dim])
            .linear(&block.o, None::<Tensor>)
    }

    /// The learned bias of every (query, key) pair, `[1, heads, seq, seq]`.
    fn position_bias(&self, seq: i64) -> Tensor {
        let buckets = relative_position_buckets(
            seq,
            self.config.relative_attention_num_buckets,
            self.config.relative_attention_max_distance,
        )
        .to_device(self.relative_attention_bias.device());
        Tensor::embedding(&self.relative_attention_bias, &buckets, -1, false, false)
            .permute([2, 0, 1])
            .unsqueeze(0)
    }

    fn check_input(&self, input_ids: &Tensor) -> Result<(i64, i64), T5Error> {
        let &[batch, seq] = input_ids.size().as_slice() else {
            return Err(T5Error::Input(format!(
                "input ids have shape {:?}; pass [batch, sequence]",
                input_ids.size()
            )));
        };
        if !matches!(input_ids.kind(), Kind::Int64 | Kind::Int) {
            return Err(T5Error::Input(format!(
                "input ids are {:?}; pass an integer (i64) tensor",
                input_ids.kind()
            )));
        }
        if batch == 0 || seq == 0 {
            return Err(T5Error::Input(format!(
                "input ids have shape [{batch}, {seq}]; pass at least one prompt of at least \
                 one token (the tokenizer always ends a prompt with </s>)"
            )));
        }
        let (low, high) = (
            input_ids.min().int64_value(&[]),
            input_ids.max().int64_value(&[]),
        );
        if low < 0 || high >= self.config.vocab_size {
            return Err(T5Error::Input(format!(
                "token ids span {low}..={high}, outside the vocabulary 0..{}; use this encoder's \
                 own tokenizer",
                self.config.vocab_size
            )));
        }
        Ok((batch, seq))
    }
}

/// transformers' `T5LayerNorm`: scale by the root mean square, computed in f32; the result is
/// cast to the weight's kind when that is half precision.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let variance = x
        .to_kind(Kind::Float)
        .square()
        .mean_dim(-1, true, Kind::Float);
    let normed = x * (variance + eps).rsqrt();
    let normed = match weight.kind() {
        Kind::Half | Kind::BFloat16 => normed.to_kind(weight.kind()),
        _ => normed,
    };
    weight * normed
}

/// transformers' guard for f16 residual states: clamp to the largest finite value (less 1000
/// once an infinity has appeared). Other kinds pass unchanged.
fn clamp_f16(x: Tensor) -> Tensor {
    if x.kind() != Kind::Half {
        return x;
    }
    let overflowed = x.isinf().any().int64_value(&[]) != 0;
    let limit = if overflowed {
        F16_MAX - 1000.0
    } else {
        F16_MAX
    };
    x.clamp(-limit, limit)
}

/// transformers' `T5Attention._relative_position_bucket` for an encoder (bidirectional), for
/// every (query, key) pair of a `seq`-long input: `[seq, seq]` i64 on the CPU. Keys after the
/// query take the upper half of the buckets; within a half, distances below a quarter of
/// `num_buckets` have a bucket each, longer ones share log-spaced buckets up to `max_distance`.
/// The log is taken in f32 with the reference's operations, so distances on a bucket boundary
/// (16, 32, 64 with the defaults) land where transformers puts them.
fn relative_position_buckets(seq: i64, num_buckets: i64, max_distance: i64) -> Tensor {
    let positions = Tensor::arange(seq, (Kind::Int64, Device::Cpu));
    let relative = positions.unsqueeze(0) - positions.unsqueeze(1);
    let half = num_buckets / 2;
    let direction = relative.gt(0).to_kind(Kind::Int64) * half;
    let distance = relative.abs();
    let max_exact = half / 2;
    let log_range = (max_distance as f64 / max_exact as f64).ln();
    // Distances below max_exact take the exact branch; clamping keeps log(0) out of the other.
    let log_spaced = ((distance.clamp_min(1).to_kind(Kind::Float) / max_exact as f64).log()
        / log_range
        * (half - max_exact) as f64)
        .to_kind(Kind::Int64)
        + max_exact;
    let log_spaced = log_spaced.clamp_max(half - 1);
    direction + distance.where_self(&distance.lt(max_exact), &log_spaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' buckets for the default 32 buckets and max distance 128, worked by hand:
    /// exact below 8, then 8 + ⌊ln(d / 8) / ln(16) · 8⌋, capped at 15, +16 for keys after the
    /// query.
    #[test]
    fn relative_buckets_match_the_reference_rule() {
        let buckets = relative_position_buckets(300, 32, 128);
        let at = |query: i64, key: i64| buckets.int64_value(&[query, key]);
        let cases = [
            (0, 0),
            (1, 17),
            (-1, 1),
            (7, 23),
            (-7, 7),
            (8, 24),
            (11, 24),
            (12, 25),
            (16, 26),
            (-16, 10),
            (32, 28),
            (64, 30),
            (127, 31),
            (128, 31),
            (-299, 15),
        ];
        for (relative, want) in cases {
            let (query, key) = if relative >= 0 {
                (0, relative)
            } else {
                (-relative, 0)
            };
            assert_eq!(at(query, key), want, "relative position {relative}");
        }
    }
}
