//! The CLIP text encoders of SD 1.5 (CLIP-L), SDXL (CLIP-L and OpenCLIP bigG) and Flux (CLIP-L),
//! computed as transformers' `CLIPTextModel` / `CLIPTextModelWithProjection` compute them:
//! token + position embeddings, pre-LayerNorm layers with causal self-attention and a
//! `quick_gelu` or `gelu` MLP, a final LayerNorm, and the pooled EOS state with the optional
//! text projection.
//!
//! Weights load from Hugging Face names (a diffusers `text_encoder/` folder, or a single-file
//! checkpoint that keeps HF names under a prefix) or from OpenCLIP names (SDXL single files keep
//! bigG as `conditioner.embedders.1.model.*`). The OpenCLIP mapping follows diffusers 0.42.1
//! `src/diffusers/loaders/single_file_utils.py`: `DIFFUSERS_TO_LDM_MAPPING["openclip"]`
//! (`resblocks.` ↔ `text_model.encoder.layers.`, `ln_1`/`ln_2` ↔ `layer_norm1`/`2`, `c_fc`/`c_proj`
//! ↔ `fc1`/`fc2`, `attn` ↔ `self_attn`, `ln_final` ↔ `final_layer_norm`, `positional_embedding`
//! ↔ `position_embedding.weight`), and `convert_open_clip_checkpoint`, which splits
//! `in_proj_weight`/`in_proj_bias` into q, k, v by thirds and stores `text_projection.T` as HF's
//! `text_projection.weight`. `LDM_CLIP_PREFIX_TO_REMOVE` there gives the HF-named prefixes
//! `cond_stage_model.transformer.` (SD 1.5) and `conditioner.embedders.0.transformer.` (SDXL).
//! `scripts/fixtures/diffusion_clip.py` runs that diffusers function on its fixture to confirm
//! the inverse it writes.

use std::path::Path;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::weights::{TensorSource, WeightsError, place, read_config};

/// Why a CLIP text encoder could not be loaded or run. Messages say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// A file or tensor could not be read, or does not fit the config.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The caller passed input the encoder cannot take.
    #[error("invalid CLIP input: {0}")]
    Input(String),
}

/// The MLP activation, from `config.json`'s `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipActivation {
    /// `x * sigmoid(1.702 x)`: OpenAI CLIP-L.
    QuickGelu,
    /// Exact (erf) GELU: OpenCLIP bigG.
    Gelu,
    /// Tanh-approximated GELU (`gelu_new`, `gelu_pytorch_tanh`).
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
}

/// The text-model fields of a Hugging Face `CLIPTextConfig` (`config.json`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipTextConfig {
    /// Token vocabulary size (49408 for CLIP-L and bigG).
    pub vocab_size: i64,
    /// Model width (768 for CLIP-L, 1280 for bigG).
    pub hidden_size: i64,
    /// MLP width.
    pub intermediate_size: i64,
    /// Encoder layers (12 for CLIP-L, 32 for bigG).
    pub num_hidden_layers: i64,
    /// Attention heads; must divide `hidden_size`.
    pub num_attention_heads: i64,
    /// Longest input (77).
    pub max_position_embeddings: i64,
    /// MLP activation.
    pub hidden_act: ClipActivation,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Width of `text_projection` (used only when loaded with the projection).
    #[serde(default)]
    pub projection_dim: Option<i64>,
    /// Decides where the pooled state is taken; see [`ClipTextModel::forward`].
    pub eos_token_id: i64,
}

fn default_eps() -> f64 {
    1e-5
}

impl ClipTextConfig {
    /// Reads a `config.json` (a diffusers `text_encoder/config.json`, or a CLIP model's with a
    /// `text_config` section).
    pub fn from_file(path: &Path) -> Result<Self, ClipError> {
        Ok(read_config(path, Self::from_json)?)
    }

    /// Parses `config.json` text; the error says which field is wrong.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("is not valid JSON ({e}); download it again"))?;
        let value = value.get("text_config").cloned().unwrap_or(value);
        let config: Self = serde_json::from_value(value).map_err(|e| {
            format!("is not a CLIP text config ({e}); use the text encoder's own config.json")
        })?;
        if config.num_attention_heads <= 0 || config.hidden_size % config.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}; the config is corrupt",
                config.hidden_size, config.num_attention_heads
            ));
        }
        Ok(config)
    }
}

/// How the text encoder's tensors are named in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClipLayout {
    /// transformers names (`text_model.…`, `text_projection.weight`) after `prefix`: `""` for a
    /// diffusers folder, `cond_stage_model.transformer.` (SD 1.5 single file),
    /// `conditioner.embedders.0.transformer.` (SDXL single file, CLIP-L).
    HuggingFace {
        /// Prepended to every name.
        prefix: String,
    },
    /// OpenCLIP names (`token_embedding.weight`, `transformer.resblocks.N.…`) after `prefix`:
    /// `conditioner.embedders.1.model.` for SDXL's bigG.
    OpenClip {
        /// Prepended to every name.
        prefix: String,
    },
}

/// A weight and bias.
#[derive(Debug)]
struct Affine {
    weight: Tensor,
    bias: Tensor,
}

impl Affine {
    fn linear(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }

    fn layer_norm(&self, x: &Tensor, eps: f64) -> Tensor {
        let width = self.weight.size();
        x.layer_norm(&width, Some(&self.weight), Some(&self.bias), eps, true)
    }
}

#[derive(Debug)]
struct Layer {
    norm1: Affine,
    /// q, k, v stacked: `[3·hidden, hidden]`, as OpenCLIP stores `in_proj_weight`.
    qkv: Affine,
    out: Affine,
    norm2: Affine,
    fc1: Affine,
    fc2: Affine,
}

/// Places loaded tensors on one device and dtype.
struct Loader<'a> {
    source: &'a dyn TensorSource,
    device: Device,
    kind: Kind,
}

impl Loader<'_> {
    fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor, ClipError> {
        Ok(place(self.source, name, shape, self.device, self.kind)?)
    }

    fn affine(&self, prefix: &str, out: i64, input: Option<i64>) -> Result<Affine, ClipError> {
        let shape: Vec<i64> = std::iter::once(out).chain(input).collect();
        Ok(Affine {
            weight: self.get(&format!("{prefix}.weight"), &shape)?,
            bias: self.get(&format!("{prefix}.bias"), &[out])?,
        })
    }

    /// OpenCLIP's `in_proj_{weight,bias}`, or HF's separate q/k/v projections stacked alike.
    fn qkv(&self, layout: &ClipLayout, at: &str, h: i64) -> Result<Affine, ClipError> {
        match layout {
            ClipLayout::OpenClip { .. } => Ok(Affine {
                weight: self.get(&format!("{at}.attn.in_proj_weight"), &[3 * h, h])?,
                bias: self.get(&format!("{at}.attn.in_proj_bias"), &[3 * h])?,
            }),
            ClipLayout::HuggingFace { .. } => {
                let parts = ["q_proj", "k_proj", "v_proj"]
                    .map(|p| self.affine(&format!("{at}.self_attn.{p}"), h, Some(h)));
                let [q, k, v] = parts;
                let (q, k, v) = (q?, k?, v?);
                Ok(Affine {
                    weight: Tensor::cat(&[q.weight, k.weight, v.weight], 0),
                    bias: Tensor::cat(&[q.bias, k.bias, v.bias], 0),
                })
            }
        }
    }

    fn layer(&self, layout: &ClipLayout, i: i64, c: &ClipTextConfig) -> Result<Layer, ClipError> {
        let (h, m) = (c.hidden_size, c.intermediate_size);
        let names = Names::new(layout, self.source);
        let at = names.layer(i);
        Ok(Layer {
            norm1: self.affine(&format!("{at}.{}", names.norm1), h, None)?,
            qkv: self.qkv(layout, &at, h)?,
            out: self.affine(&format!("{at}.{}", names.out_proj), h, Some(h))?,
            norm2: self.affine(&format!("{at}.{}", names.norm2), h, None)?,
            fc1: self.affine(&format!("{at}.{}", names.fc1), m, Some(h))?,
            fc2: self.affine(&format!("{at}.{}", names.fc2), h, Some(m))?,
        })
    }
}

const TOKEN_EMBEDDING: &str = "embeddings.token_embedding.weight";

/// Tensor names of one layout.
struct Names<'a> {
    prefix: &'a str,
    open_clip: bool,
    /// `text_model.` as the Hub's files and single-file checkpoints have it, or empty for a
    /// `CLIPTextModel` saved by transformers >= 5, which drops that prefix
    /// (`conversion_mapping.py`: `PrefixChange(prefix_to_remove="text_model")`).
    text: &'static str,
    norm1: &'static str,
    norm2: &'static str,
    out_proj: &'static str,
    fc1: &'static str,
    fc2: &'static str,
}

impl<'a> Names<'a> {
    fn new(layout: &'a ClipLayout, source: &dyn TensorSource) -> Self {
        match layout {
            ClipLayout::HuggingFace { prefix } => Self {
                prefix,
                open_clip: false,
                text: if !source.contains(&format!("{prefix}text_model.{TOKEN_EMBEDDING}"))
                    && source.contains(&format!("{prefix}{TOKEN_EMBEDDING}"))
                {
                    ""
                } else {
                    "text_model."
                },
                norm1: "layer_norm1",
                norm2: "layer_norm2",
                out_proj: "self_attn.out_proj",
                fc1: "mlp.fc1",
                fc2: "mlp.fc2",
            },
            ClipLayout::OpenClip { prefix } => Self {
                prefix,
                open_clip: true,
                text: "",
                norm1: "ln_1",
                norm2: "ln_2",
                out_proj: "attn.out_proj",
                fc1: "mlp.c_fc",
                fc2: "mlp.c_proj",
            },
        }
    }

    fn layer(&self, i: i64) -> String {
        if self.open_clip {
            format!("{}transformer.resblocks.{i}", self.prefix)
        } else {
            format!("{}{}encoder.layers.{i}", self.prefix, self.text)
        }
    }

    fn token_embedding(&self) -> String {
        if self.open_clip {
            format!("{}token_embedding.weight", self.prefix)
        } else {
            format!("{}{}{TOKEN_EMBEDDING}", self.prefix, self.text)
        }
    }

    fn position_embedding(&self) -> String {
        if self.open_clip {
            format!("{}positional_embedding", self.prefix)
        } else {
            format!(
                "{}{}embeddings.position_embedding.weight",
                self.prefix, self.text
            )
        }
    }

    fn final_norm(&self) -> String {
        if self.open_clip {
            format!("{}ln_final", self.prefix)
        } else {
            format!("{}{}final_layer_norm", self.prefix, self.text)
        }
    }

    fn projection(&self) -> String {
        if self.open_clip {
            format!("{}text_projection", self.prefix)
        } else {
            format!("{}text_projection.weight", self.prefix)
        }
    }
}

/// What one forward pass returns.
#[derive(Debug)]
pub struct ClipOutput {
    /// The last layer's output after the final LayerNorm, `[batch, seq, hidden]`: SD 1.5's and
    /// Flux's conditioning (transformers' `last_hidden_state`).
    pub last_hidden_state: Tensor,
    /// The requested `hidden_states[-n]`, without the final LayerNorm; SDXL takes `n = 2` from
    /// both encoders.
    pub hidden_state: Option<Tensor>,
    /// `last_hidden_state` at each row's EOS position, `[batch, hidden]` (`pooler_output`).
    pub pooled: Tensor,
    /// `pooled` through `text_projection`, `[batch, projection_dim]` (`text_embeds`), when the
    /// model was loaded with its projection; SDXL's pooled conditioning.
    pub text_embeds: Option<Tensor>,
}

/// A CLIP text transformer with loaded weights.
#[derive(Debug)]
pub struct ClipTextModel {
    config: ClipTextConfig,
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    final_norm: Affine,
    /// `[projection_dim, hidden]`, HF's orientation.
    projection: Option<Tensor>,
}

impl ClipTextModel {
    /// Loads the weights `layout` names from `source` onto `device` as `kind`;
    /// `with_projection` also loads `text_projection` (`CLIPTextModelWithProjection`, which
    /// needs `projection_dim` in the config).
    pub fn load(
        config: ClipTextConfig,
        source: &dyn TensorSource,
        layout: &ClipLayout,
        with_projection: bool,
        device: Device,
        kind: Kind,
    ) -> Result<Self, ClipError> {
        let loader = Loader {
            source,
            device,
            kind,
        };
        let names = Names::new(layout, source);
        let h = config.hidden_size;
        let token_embedding = loader.get(&names.token_embedding(), &[config.vocab_size, h])?;
        let position_embedding = loader.get(
            &names.position_embedding(),
            &[config.max_position_embeddings, h],
        )?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| loader.layer(layout, i, &config))
            .collect::<Result<Vec<_>, _>>()?;
        let final_norm = loader.affine(&names.final_norm(), h, None)?;
        let projection = if with_projection {
            let p = config.projection_dim.ok_or_else(|| {
                ClipError::Input(
                    "a text projection was requested but config.json has no projection_dim; \
                     use the text encoder's own config"
                        .to_owned(),
                )
            })?;
            Some(match layout {
                ClipLayout::OpenClip { .. } => {
                    loader.get(&names.projection(), &[h, p])?.tr().contiguous()
                }
                ClipLayout::HuggingFace { .. } => loader.get(&names.projection(), &[p, h])?,
            })
        } else {
            None
        };
        Ok(Self {
            config,
            token_embedding,
            position_embedding,
            layers,
            final_norm,
            projection,
        })
    }

    /// The config the model was loaded with.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Encodes `input_ids` (`[batch, seq]`, integer, `seq <= max_position_embeddings`, padded as
    /// the pipeline's tokenizer pads; only the causal mask applies, as in SD pipelines).
    /// `hidden_from_end = Some(n)` also returns transformers' `hidden_states[-n]` (1 = the last
    /// layer's output before the final LayerNorm, `num_hidden_layers + 1` = the embeddings).
    ///
    /// The pooled state is taken where transformers takes it: for `eos_token_id == 2` (configs
    /// from before transformers PR #24773, SD's CLIP-L among them) at the largest id in the
    /// row, which is EOS for CLIP's vocabulary; otherwise at the first `eos_token_id`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        hidden_from_end: Option<usize>,
    ) -> Result<ClipOutput, ClipError> {
        let (batch, seq) = self.check_input(input_ids, hidden_from_end)?;
        let input_ids = &input_ids.to_device(self.token_embedding.device());
        let heads = self.config.num_attention_heads;
        let head_dim = self.config.hidden_size / heads;
        let eps = self.config.layer_norm_eps;
        let positions = self.position_embedding.narrow(0, 0, seq);
        let mut x =
            Tensor::embedding(&self.token_embedding, input_ids, -1, false, false) + positions;
        let total = self.layers.len() + 1;
        let wanted = hidden_from_end.map(|n| total - n);
        let mut hidden_state = (wanted == Some(0)).then(|| x.shallow_clone());
        for (i, layer) in self.layers.iter().enumerate() {
            let qkv = layer.qkv.linear(&layer.norm1.layer_norm(&x, eps));
            let qkv = qkv
                .view([batch, seq, 3, heads, head_dim])
                .permute([2, 0, 3, 1, 4]);
            let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
            let attn = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                None::<Tensor>,
                0.0,
                true,
                None,
                false,
            );
            let attn = attn
                .transpose(1, 2)
                .reshape([batch, seq, self.config.hidden_size]);
            x = &x + layer.out.linear(&attn);
            let mlp = layer.fc1.linear(&layer.norm2.layer_norm(&x, eps));
            x = &x + layer.fc2.linear(&self.activation(&mlp));
            if wanted == Some(i + 1) {
                hidden_state = Some(x.shallow_clone());
            }
        }
        let last_hidden_state = self.final_norm.layer_norm(&x, eps);
        let eos = if self.config.eos_token_id == 2 {
            input_ids.to_kind(Kind::Int).argmax(-1, false)
        } else {
            input_ids
                .eq(self.config.eos_token_id)
                .to_kind(Kind::Int)
                .argmax(-1, false)
        };
        let rows = Tensor::arange(batch, (Kind::Int64, input_ids.device()));
        let pooled = last_hidden_state.index(&[Some(rows), Some(eos)]);
        let text_embeds = self
            .projection
            .as_ref()
            .map(|p| pooled.linear(p, None::<Tensor>));
        Ok(ClipOutput {
            last_hidden_state,
            hidden_state,
            pooled,
            text_embeds,
        })
    }

    fn check_input(
        &self,
        input_ids: &Tensor,
        hidden_from_end: Option<usize>,
    ) -> Result<(i64, i64), ClipError> {
        let &[batch, seq] = input_ids.size().as_slice() else {
            return Err(ClipError::Input(format!(
                "input ids have shape {:?}; pass [batch, sequence]",
                input_ids.size()
            )));
        };
        if !matches!(input_ids.kind(), Kind::Int64 | Kind::Int) {
            return Err(ClipError::Input(format!(
                "input ids are {:?}; pass an integer (i64) tensor",
                input_ids.kind()
            )));
        }
        if seq == 0 || seq > self.config.max_position_embeddings {
            return Err(ClipError::Input(format!(
                "sequence length {seq} is outside 1..={}; truncate or pad to the tokenizer's \
                 model_max_length",
                self.config.max_position_embeddings
            )));
        }
        if batch == 0 {
            return Err(ClipError::Input(
                "the batch is empty; pass at least one prompt".to_owned(),
            ));
        }
        let (low, high) = (
            input_ids.min().int64_value(&[]),
            input_ids.max().int64_value(&[]),
        );
        if low < 0 || high >= self.config.vocab_size {
            return Err(ClipError::Input(format!(
                "token ids span {low}..={high}, outside the vocabulary 0..{}; use this encoder's \
                 own tokenizer",
                self.config.vocab_size
            )));
        }
        if let Some(n) = hidden_from_end
            && (n == 0 || n > self.layers.len() + 1)
        {
            return Err(ClipError::Input(format!(
                "hidden_states[-{n}] does not exist; choose 1..={}",
                self.layers.len() + 1
            )));
        }
        Ok((batch, seq))
    }

    fn activation(&self, x: &Tensor) -> Tensor {
        match self.config.hidden_act {
            ClipActivation::QuickGelu => x * (x * 1.702).sigmoid(),
            ClipActivation::Gelu => x.gelu("none"),
            ClipActivation::GeluTanh => x.gelu("tanh"),
        }
    }
}
