//! The decoder shared by Llama 3, Mistral and Mixtral, on libtorch.
//!
//! Per layer: RMSNorm → attention (grouped-query, rotary positions, Mistral's sliding window)
//! → residual → RMSNorm → SwiGLU MLP or Mixtral's sparse mixture of SwiGLU experts (top-k
//! routing) → residual. Tensor names and numerics follow the Hugging Face implementations
//! (`modeling_llama.py`, `modeling_mistral.py`, `modeling_mixtral.py`); the golden tests hold
//! this file to their outputs.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::LlmError;
use super::config::{Architecture, ModelConfig, RopeScaling};
use super::gptq::GptqLinear;
use super::weights::Weights;

/// A linear layer without bias: dense, or GPTQ-packed on CUDA.
#[derive(Debug)]
enum Linear {
    Dense(Tensor),
    Gptq(GptqLinear),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Self::Dense(w) => x.linear(w, None::<Tensor>),
            Self::Gptq(layer) => layer.forward(x),
        }
    }
}

/// Everything a layer load needs to know about where and how weights go.
#[derive(Debug, Clone, Copy)]
struct Placement<'a> {
    weights: &'a Weights,
    config: &'a ModelConfig,
    device: Device,
    dtype: Kind,
}

impl Placement<'_> {
    fn tensor(&self, name: &str, shape: &[i64]) -> Result<Tensor, LlmError> {
        self.weights
            .load(name, shape, self.device, Some(self.dtype))
    }

    /// A `[out, in]` linear layer `prefix`, GPTQ when the checkpoint stores it packed.
    fn linear(&self, prefix: &str, inp: usize, out: usize) -> Result<Linear, LlmError> {
        if let Some(gptq) = self.config.gptq
            && self.weights.contains(&format!("{prefix}.qweight"))
        {
            let layer = GptqLinear::load(
                self.weights,
                prefix,
                inp,
                out,
                gptq.group_size,
                self.device,
                self.dtype,
            )?;
            return Ok(if self.device == Device::Cpu {
                Linear::Dense(layer.dequantize())
            } else {
                Linear::Gptq(layer)
            });
        }
        Ok(Linear::Dense(self.tensor(
            &format!("{prefix}.weight"),
            &[out as i64, inp as i64],
        )?))
    }
}

#[derive(Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
}

#[derive(Debug)]
struct Expert {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Expert {
    fn load(p: &Placement<'_>, prefix: &str, names: [&str; 3]) -> Result<Self, LlmError> {
        let (h, i) = (p.config.hidden_size, p.config.intermediate_size);
        Ok(Self {
            gate: p.linear(&format!("{prefix}.{}", names[0]), h, i)?,
            up: p.linear(&format!("{prefix}.{}", names[1]), h, i)?,
            down: p.linear(&format!("{prefix}.{}", names[2]), i, h)?,
        })
    }

    /// SwiGLU: `down(silu(gate(x)) · up(x))`.
    fn forward(&self, x: &Tensor) -> Tensor {
        self.down
            .forward(&(self.gate.forward(x).silu() * self.up.forward(x)))
    }
}

#[derive(Debug)]
enum Mlp {
    Dense(Expert),
    Sparse {
        router: Tensor,
        experts: Vec<Expert>,
        top_k: i64,
    },
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Self::Dense(expert) => expert.forward(x),
            Self::Sparse {
                router,
                experts,
                top_k,
            } => moe(x, router, experts, *top_k),
        }
    }
}

/// Mixtral's sparse MoE on `x` of shape `[tokens, hidden]`: softmax over the router's logits
/// in f32, the top-k experts per token with their weights renormalized to sum to one, each
/// expert run once on the tokens routed to it.
fn moe(x: &Tensor, router: &Tensor, experts: &[Expert], top_k: i64) -> Tensor {
    let logits = x.linear(router, None::<Tensor>);
    let probs = logits.softmax(-1, Kind::Float);
    let (weights, chosen) = probs.topk(top_k, -1, true, true);
    let weights = (&weights / weights.sum_dim_intlist(-1, true, Kind::Float)).to_kind(x.kind());
    let mut out = x.zeros_like();
    // Which experts got any token: one host round trip per layer, then only those run.
    let mut hit: Vec<i64> =
        Vec::<i64>::try_from(chosen.flatten(0, -1).to_device(Device::Cpu)).unwrap_or_default();
    hit.sort_unstable();
    hit.dedup();
    for e in hit {
        let Some(expert) = usize::try_from(e).ok().and_then(|e| experts.get(e)) else {
            continue;
        };
        // [n, 2]: (token, slot) pairs routed to this expert.
        let pairs = chosen.eq(e).nonzero();
        let tokens = pairs.select(1, 0);
        let slots = pairs.select(1, 1);
        let y = expert.forward(&x.index_select(0, &tokens));
        let w = weights
            .index_select(0, &tokens)
            .gather(1, &slots.unsqueeze(1), false);
        let _ = out.index_add_(0, &tokens, &(y * w));
    }
    out
}

#[derive(Debug)]
struct Layer {
    input_norm: Tensor,
    attention: Attention,
    post_norm: Tensor,
    mlp: Mlp,
}

/// Rotary tables: `cos` and `sin` of shape `[positions, head_dim]` in the model's dtype.
#[derive(Debug)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(config: &ModelConfig, positions: usize, device: Device, dtype: Kind) -> Self {
        let inv_freq = inverse_frequencies(config);
        let mut scale = 1.0f32;
        if let RopeScaling::Linear { factor } = config.rope_scaling {
            scale = factor as f32;
        }
        let inv = Tensor::from_slice(&inv_freq).view([1, -1]);
        let pos = (Tensor::arange(positions as i64, (Kind::Float, Device::Cpu)) / f64::from(scale))
            .view([-1, 1]);
        let freqs = pos.matmul(&inv);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        Self {
            cos: emb.cos().to_kind(dtype).to_device(device),
            sin: emb.sin().to_kind(dtype).to_device(device),
        }
    }

    /// Rotates `x` of shape `[batch, heads, tokens, head_dim]` for positions `start..`.
    fn apply(&self, x: &Tensor, start: i64) -> Tensor {
        let t = x.size()[2];
        let cos = self.cos.narrow(0, start, t);
        let sin = self.sin.narrow(0, start, t);
        let half = x.size()[3] / 2;
        let rotated = Tensor::cat(&[&-x.narrow(3, half, half), &x.narrow(3, 0, half)], -1);
        x * cos + rotated * sin
    }
}

/// `1 / θ^(2i/d)`, adjusted by Llama 3's band-wise scaling when the config asks for it.
fn inverse_frequencies(config: &ModelConfig) -> Vec<f32> {
    let dim = config.head_dim;
    let base = config.rope_theta as f32;
    let plain = (0..dim)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / dim as f32));
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings: old,
    } = config.rope_scaling
    else {
        return plain.collect();
    };
    let (factor, low, high, old) = (
        factor as f32,
        low_freq_factor as f32,
        high_freq_factor as f32,
        old as f32,
    );
    let low_wavelen = old / low;
    let high_wavelen = old / high;
    plain
        .map(|f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

/// Keys and values of every layer for one sequence, preallocated to its full length so a
/// decode step writes in place instead of concatenating.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: i64,
    capacity: i64,
}

impl KvCache {
    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A loaded decoder, ready for prefill and decode steps.
#[derive(Debug)]
pub struct Transformer {
    config: ModelConfig,
    device: Device,
    dtype: Kind,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `[vocab, hidden]` on CUDA; `[hidden, vocab]` (transposed, contiguous) on the CPU, where
    /// a one-token product with that layout takes about half the time (see bench/RESULTS.md).
    lm_head: Tensor,
    rope: Rope,
}

impl Transformer {
    /// Loads the weights in `dir` for `config` onto `device` in `dtype`.
    pub fn load(
        dir: &Path,
        config: ModelConfig,
        device: Device,
        dtype: Kind,
    ) -> Result<Self, LlmError> {
        let weights = Weights::open(dir)?;
        let p = Placement {
            weights: &weights,
            config: &config,
            device,
            dtype,
        };
        let (h, v) = (config.hidden_size as i64, config.vocab_size as i64);
        let kv = config.num_kv_heads * config.head_dim;
        let q = config.num_heads * config.head_dim;
        let embed = p.tensor("model.embed_tokens.weight", &[v, h])?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let at = format!("model.layers.{i}");
            let attention = Attention {
                q: p.linear(&format!("{at}.self_attn.q_proj"), config.hidden_size, q)?,
                k: p.linear(&format!("{at}.self_attn.k_proj"), config.hidden_size, kv)?,
                v: p.linear(&format!("{at}.self_attn.v_proj"), config.hidden_size, kv)?,
                o: p.linear(&format!("{at}.self_attn.o_proj"), q, config.hidden_size)?,
            };
            let mlp = match config.experts {
                Some((count, top_k)) => Mlp::Sparse {
                    router: p.tensor(
                        &format!("{at}.block_sparse_moe.gate.weight"),
                        &[count as i64, h],
                    )?,
                    experts: (0..count)
                        .map(|e| {
                            Expert::load(
                                &p,
                                &format!("{at}.block_sparse_moe.experts.{e}"),
                                ["w1", "w3", "w2"],
                            )
                        })
                        .collect::<Result<_, _>>()?,
                    top_k: top_k as i64,
                },
                None => Mlp::Dense(Expert::load(
                    &p,
                    &format!("{at}.mlp"),
                    ["gate_proj", "up_proj", "down_proj"],
                )?),
            };
            layers.push(Layer {
                input_norm: p.tensor(&format!("{at}.input_layernorm.weight"), &[h])?,
                attention,
                post_norm: p.tensor(&format!("{at}.post_attention_layernorm.weight"), &[h])?,
                mlp,
            });
        }
        let norm = p.tensor("model.norm.weight", &[h])?;
        let lm_head = if config.tie_word_embeddings && !weights.contains("lm_head.weight") {
            embed.shallow_clone()
        } else {
            p.tensor("lm_head.weight", &[v, h])?
        };
        let lm_head = if device == Device::Cpu {
            lm_head.tr().contiguous()
        } else {
            lm_head
        };
        let rope = Rope::new(&config, config.max_position_embeddings, device, dtype);
        Ok(Self {
            config,
            device,
            dtype,
            embed,
            layers,
            norm,
            lm_head,
            rope,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// An empty cache for a sequence of at most `capacity` tokens (prompt included).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let shape = [
            1,
            self.config.num_kv_heads as i64,
            capacity as i64,
            self.config.head_dim as i64,
        ];
        let make = || {
            (0..self.config.num_layers)
                .map(|_| Tensor::zeros(shape, (self.dtype, self.device)))
                .collect()
        };
        KvCache {
            keys: make(),
            values: make(),
            len: 0,
            capacity: capacity as i64,
        }
    }

    /// The most tokens a sequence may have: the position table's length.
    pub fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// Runs `ids` (the tokens after those already in `cache`) and returns f32 logits of
    /// shape `[ids.len(), vocab]`, or `[1, vocab]` for the last token only when `all` is false.
    ///
    /// # Panics
    /// When the cache would overflow; callers size it from the request first.
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache, all: bool) -> Tensor {
        let t = ids.len() as i64;
        assert!(
            cache.len + t <= cache.capacity,
            "KV cache of {} tokens cannot take {} more after {}",
            cache.capacity,
            t,
            cache.len
        );
        let ids: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
        let ids = Tensor::from_slice(&ids).to_device(self.device);
        let mut x = self.embed.index_select(0, &ids).unsqueeze(0);
        let start = cache.len;
        let mask = self.mask(start, t);
        for (i, layer) in self.layers.iter().enumerate() {
            let normed = self.rms_norm(&x, &layer.input_norm);
            let attended = self.attention(
                &layer.attention,
                &normed,
                start,
                &cache.keys[i],
                &cache.values[i],
                mask.as_ref(),
            );
            x += attended;
            let normed = self.rms_norm(&x, &layer.post_norm);
            let h = self.config.hidden_size as i64;
            let mixed = layer.mlp.forward(&normed.view([t, h])).view([1, t, h]);
            x += mixed;
        }
        cache.len += t;
        let x = if all { x } else { x.narrow(1, t - 1, 1) };
        let x = self.rms_norm(&x, &self.norm);
        let logits = if self.device == Device::Cpu {
            x.matmul(&self.lm_head)
        } else {
            x.linear(&self.lm_head, None::<Tensor>)
        };
        logits.squeeze_dim(0).to_kind(Kind::Float)
    }

    /// RMSNorm as Hugging Face computes it: normalize in f32, cast back, then scale.
    fn rms_norm(&self, x: &Tensor, weight: &Tensor) -> Tensor {
        let x32 = x.to_kind(Kind::Float);
        let var = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = x32 * (var + self.config.rms_norm_eps).rsqrt();
        normed.to_kind(self.dtype) * weight
    }

    /// The attention mask for `t` new tokens after `start` cached ones, or `None` when plain
    /// causal attention (or a single decode token) needs none. `true` means "may attend".
    fn mask(&self, start: i64, t: i64) -> Option<Tensor> {
        let window = self.config.sliding_window.map(|w| w as i64);
        if t == 1 || (start == 0 && window.is_none_or(|w| t <= w)) {
            return None;
        }
        let q = Tensor::arange_start(start, start + t, (Kind::Int64, self.device)).view([-1, 1]);
        let k = Tensor::arange(start + t, (Kind::Int64, self.device)).view([1, -1]);
        let mut allowed = k.le_tensor(&q);
        if let Some(w) = window {
            allowed = allowed.logical_and(&(q - &k).lt(w));
        }
        Some(allowed)
    }

    fn attention(
        &self,
        attn: &Attention,
        x: &Tensor,
        start: i64,
        keys: &Tensor,
        values: &Tensor,
        mask: Option<&Tensor>,
    ) -> Tensor {
        let t = x.size()[1];
        let (heads, kv_heads, dim) = (
            self.config.num_heads as i64,
            self.config.num_kv_heads as i64,
            self.config.head_dim as i64,
        );
        let split = |y: Tensor, n: i64| y.view([1, t, n, dim]).transpose(1, 2);
        let q = self.rope.apply(&split(attn.q.forward(x), heads), start);
        let k = self.rope.apply(&split(attn.k.forward(x), kv_heads), start);
        let v = split(attn.v.forward(x), kv_heads);
        keys.narrow(2, start, t).copy_(&k);
        values.narrow(2, start, t).copy_(&v);
        let total = start + t;
        // A lone decode token under a sliding window sees only the last `window` keys.
        let from = match self.config.sliding_window {
            Some(w) if t == 1 => (total - w as i64).max(0),
            _ => 0,
        };
        let k_all = keys.narrow(2, from, total - from);
        let v_all = values.narrow(2, from, total - from);
        let causal = mask.is_none() && t > 1;
        let y =
            Tensor::scaled_dot_product_attention(&q, &k_all, &v_all, mask, 0.0, causal, None, true);
        let y = y.transpose(1, 2).reshape([1, t, heads * dim]);
        attn.o.forward(&y)
    }

    /// Which architecture this is, for logs.
    pub fn architecture(&self) -> Architecture {
        self.config.architecture
    }
}
