//! `config.json` of a Hugging Face decoder model: the architecture numbers the engine needs,
//! validated before any weight is read.
//!
//! Llama, Mistral and Mixtral share one decoder shape; they differ in the MLP (dense SwiGLU or
//! a sparse mixture of SwiGLU experts), the attention window (Mistral's sliding window) and
//! the rotary embedding (Llama 3's frequency scaling). Both spellings of the rotary settings are
//! read: `rope_theta` + `rope_scaling` (checkpoints saved by transformers 4) and
//! `rope_parameters` (transformers 5).

use std::path::Path;

use serde::Deserialize;

use super::LlmError;

/// Which decoder `config.json` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Mixtral,
}

/// How rotary frequencies are adjusted for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's band-wise scaling of the inverse frequencies.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// GPTQ settings from `quantization_config` (or `quantize_config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GptqConfig {
    pub bits: u32,
    /// Input channels per quantization group.
    pub group_size: usize,
    /// Act-order: `g_idx` maps channels to groups in a permuted order.
    pub desc_act: bool,
}

/// The validated architecture of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    /// Mistral: a query sees at most this many keys (itself included).
    pub sliding_window: Option<usize>,
    pub tie_word_embeddings: bool,
    /// Mixtral: `(experts, experts per token)`.
    pub experts: Option<(usize, usize)>,
    pub gptq: Option<GptqConfig>,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    num_local_experts: Option<usize>,
    #[serde(default)]
    num_experts_per_tok: Option<usize>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    quantization_config: Option<RawQuant>,
}

#[derive(Debug, Deserialize)]
struct RawQuant {
    #[serde(default)]
    quant_method: Option<String>,
    bits: u32,
    group_size: i64,
    #[serde(default)]
    desc_act: bool,
    #[serde(default = "default_true")]
    sym: bool,
    #[serde(default)]
    checkpoint_format: Option<String>,
}

fn default_eps() -> f64 {
    1e-6
}

fn default_max_positions() -> usize {
    4096
}

fn default_true() -> bool {
    true
}

impl ModelConfig {
    /// Reads `config.json` from a model folder, and `quantize_config.json` when `config.json`
    /// has no `quantization_config` but the folder has one.
    pub fn load(dir: &Path) -> Result<Self, LlmError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| LlmError::io(&path, e))?;
        let mut raw: RawConfig = serde_json::from_str(&text).map_err(|e| LlmError::File {
            path: path.clone(),
            problem: format!("is not a valid model config: {e}"),
        })?;
        let quant_path = dir.join("quantize_config.json");
        if raw.quantization_config.is_none() && quant_path.is_file() {
            let text =
                std::fs::read_to_string(&quant_path).map_err(|e| LlmError::io(&quant_path, e))?;
            raw.quantization_config =
                Some(serde_json::from_str(&text).map_err(|e| LlmError::File {
                    path: quant_path.clone(),
                    problem: format!("is not a valid GPTQ config: {e}"),
                })?);
        }
        Self::from_raw(raw).map_err(|problem| LlmError::File { path, problem })
    }

    /// Parses a config from JSON text (tests and the synthesizer).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| format!("is not a valid model config: {e}"))?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> Result<Self, String> {
        let architecture = architecture(&raw)?;
        if let Some(act) = raw.hidden_act.as_deref()
            && act != "silu"
        {
            return Err(format!(
                "has hidden_act `{act}`; only `silu` (SwiGLU) decoders are supported"
            ));
        }
        if raw.attention_bias || raw.mlp_bias {
            return Err("uses attention or MLP biases, which Llama, Mistral and Mixtral checkpoints do not have".to_owned());
        }
        let positive = |value: usize, name: &str| {
            if value == 0 {
                Err(format!("has {name} = 0; it must be positive"))
            } else {
                Ok(value)
            }
        };
        positive(raw.vocab_size, "vocab_size")?;
        positive(raw.hidden_size, "hidden_size")?;
        positive(raw.intermediate_size, "intermediate_size")?;
        positive(raw.num_hidden_layers, "num_hidden_layers")?;
        let num_heads = positive(raw.num_attention_heads, "num_attention_heads")?;
        let num_kv_heads = positive(
            raw.num_key_value_heads.unwrap_or(num_heads),
            "num_key_value_heads",
        )?;
        if num_heads % num_kv_heads != 0 {
            return Err(format!(
                "has {num_heads} attention heads and {num_kv_heads} key/value heads; the first must be a multiple of the second"
            ));
        }
        let head_dim = match raw.head_dim {
            Some(dim) => positive(dim, "head_dim")?,
            None if raw.hidden_size.is_multiple_of(num_heads) => raw.hidden_size / num_heads,
            None => {
                return Err(format!(
                    "hidden_size {} is not a multiple of num_attention_heads {num_heads} and no head_dim is given",
                    raw.hidden_size
                ));
            }
        };
        if head_dim % 2 != 0 {
            return Err(format!(
                "has head_dim {head_dim}; rotary embeddings need it even"
            ));
        }
        let (rope_theta, rope_scaling) = rope(&raw)?;
        let experts = match (architecture, raw.num_local_experts, raw.num_experts_per_tok) {
            (Architecture::Mixtral, Some(n), Some(k)) if n > 0 && k > 0 && k <= n => Some((n, k)),
            (Architecture::Mixtral, n, k) => {
                return Err(format!(
                    "is a Mixtral config with num_local_experts {n:?} and num_experts_per_tok {k:?}; both must be set, with 0 < per-token <= experts"
                ));
            }
            _ => None,
        };
        // Mistral honours sliding_window; Mixtral checkpoints set it to null (older ones to
        // 4096 with use_sliding_window absent, which transformers also applies).
        let sliding_window = match raw.use_sliding_window {
            Some(false) => None,
            _ => raw
                .sliding_window
                .filter(|_| architecture != Architecture::Llama),
        };
        if sliding_window == Some(0) {
            return Err("has sliding_window = 0; use null for no window".to_owned());
        }
        let gptq = raw.quantization_config.map(gptq).transpose()?;
        Ok(Self {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings,
            sliding_window,
            tie_word_embeddings: raw.tie_word_embeddings,
            experts,
            gptq,
        })
    }
}

fn architecture(raw: &RawConfig) -> Result<Architecture, String> {
    let by_type = match raw.model_type.as_deref() {
        Some("llama") => Some(Architecture::Llama),
        Some("mistral") => Some(Architecture::Mistral),
        Some("mixtral") => Some(Architecture::Mixtral),
        _ => None,
    };
    let by_class = raw
        .architectures
        .iter()
        .find_map(|class| match class.as_str() {
            "LlamaForCausalLM" => Some(Architecture::Llama),
            "MistralForCausalLM" => Some(Architecture::Mistral),
            "MixtralForCausalLM" => Some(Architecture::Mixtral),
            _ => None,
        });
    by_type.or(by_class).ok_or_else(|| {
        format!(
            "describes model_type {:?} / architectures {:?}; this engine runs llama, mistral and mixtral decoders",
            raw.model_type, raw.architectures
        )
    })
}

/// Reads theta and scaling from whichever spelling the config uses.
fn rope(raw: &RawConfig) -> Result<(f64, RopeScaling), String> {
    let params = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref());
    let param_theta = raw
        .rope_parameters
        .as_ref()
        .and_then(|p| p.get("rope_theta"))
        .and_then(serde_json::Value::as_f64);
    let theta = param_theta.or(raw.rope_theta).unwrap_or(10_000.0);
    if !(theta.is_finite() && theta > 0.0) {
        return Err(format!("has rope_theta {theta}; it must be positive"));
    }
    let Some(params) = params.filter(|p| !p.is_null()) else {
        return Ok((theta, RopeScaling::None));
    };
    let kind = params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("default");
    let number = |name: &str| {
        params
            .get(name)
            .and_then(serde_json::Value::as_f64)
            .filter(|v| v.is_finite() && *v > 0.0)
            .ok_or_else(|| format!("rope scaling `{kind}` needs a positive `{name}`"))
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: number("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_position_embeddings: number("original_max_position_embeddings")?,
        },
        other => {
            return Err(format!(
                "uses rope scaling `{other}`; supported: default, linear, llama3"
            ));
        }
    };
    Ok((theta, scaling))
}

fn gptq(raw: RawQuant) -> Result<GptqConfig, String> {
    if let Some(method) = raw.quant_method.as_deref()
        && method != "gptq"
    {
        return Err(format!(
            "is quantized with `{method}`; only GPTQ 4-bit checkpoints are supported"
        ));
    }
    if raw.bits != 4 {
        return Err(format!(
            "is a {}-bit GPTQ checkpoint; only 4-bit is supported",
            raw.bits
        ));
    }
    if !raw.sym {
        return Err(
            "is an asymmetric (sym = false) GPTQ checkpoint; only symmetric ones are supported"
                .to_owned(),
        );
    }
    if raw
        .checkpoint_format
        .as_deref()
        .is_some_and(|f| f != "gptq")
    {
        return Err(format!(
            "uses GPTQ checkpoint_format {:?}; only the original `gptq` (v1) layout is supported",
            raw.checkpoint_format
        ));
    }
    let group_size = usize::try_from(raw.group_size)
        .ok()
        .filter(|g| *g > 0)
        .ok_or_else(|| {
            format!(
                "has GPTQ group_size {}; per-channel (-1) checkpoints are not supported",
                raw.group_size
            )
        })?;
    Ok(GptqConfig {
        bits: raw.bits,
        group_size,
        desc_act: raw.desc_act,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA3_8B: &str = r#"{
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
      "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
      "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
      "rope_theta": 500000.0, "rope_scaling": null, "max_position_embeddings": 8192,
      "hidden_act": "silu", "tie_word_embeddings": false, "torch_dtype": "bfloat16"
    }"#;

    #[test]
    fn reads_a_llama3_8b_config() {
        let config = ModelConfig::from_json(LLAMA3_8B).expect("valid");
        assert_eq!(config.architecture, Architecture::Llama);
        assert_eq!(config.head_dim, 128);
        assert_eq!(config.num_kv_heads, 8);
        assert_eq!(config.rope_theta, 500_000.0);
        assert_eq!(config.rope_scaling, RopeScaling::None);
        assert_eq!(config.sliding_window, None);
    }

    #[test]
    fn reads_both_spellings_of_llama3_rope_scaling() {
        let scaling = r#""rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192"#;
        let v4 = LLAMA3_8B.replace(
            r#""rope_scaling": null"#,
            &format!(r#""rope_scaling": {{{scaling}}}"#),
        );
        let v5 = LLAMA3_8B.replace(
            r#""rope_theta": 500000.0, "rope_scaling": null"#,
            &format!(r#""rope_parameters": {{"rope_theta": 500000.0, {scaling}}}"#),
        );
        let a = ModelConfig::from_json(&v4).expect("v4");
        let b = ModelConfig::from_json(&v5).expect("v5");
        assert_eq!(a, b);
        assert!(matches!(a.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    }

    #[test]
    fn refuses_what_it_cannot_run_with_the_reason() {
        let cases = [
            (
                r#""model_type": "llama""#,
                r#""model_type": "gpt2""#,
                "llama, mistral and mixtral",
            ),
            (
                r#""hidden_act": "silu""#,
                r#""hidden_act": "gelu""#,
                "only `silu`",
            ),
            (
                r#""num_key_value_heads": 8"#,
                r#""num_key_value_heads": 5"#,
                "multiple",
            ),
            (
                r#""rope_scaling": null"#,
                r#""rope_scaling": {"type": "yarn", "factor": 4}"#,
                "yarn",
            ),
        ];
        for (from, to, expected) in cases {
            let mut text = LLAMA3_8B.replace(from, to);
            if from.contains("model_type") {
                text = text.replace("LlamaForCausalLM", "GPT2LMHeadModel");
            }
            let err = ModelConfig::from_json(&text).expect_err(to);
            assert!(err.contains(expected), "{to}: {err}");
        }
    }

    #[test]
    fn reads_mixtral_gptq_with_act_order() {
        let text = r#"{"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
          "vocab_size": 32002, "hidden_size": 4096, "intermediate_size": 14336,
          "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
          "num_local_experts": 8, "num_experts_per_tok": 2, "rope_theta": 1e6,
          "sliding_window": null, "quantization_config": {"bits": 4, "group_size": 32,
          "desc_act": true, "sym": true, "quant_method": "gptq"}}"#;
        let config = ModelConfig::from_json(text).expect("valid");
        assert_eq!(config.experts, Some((8, 2)));
        assert_eq!(
            config.gptq,
            Some(GptqConfig {
                bits: 4,
                group_size: 32,
                desc_act: true
            })
        );
        let three_bit = text.replace(r#""bits": 4"#, r#""bits": 3"#);
        assert!(
            ModelConfig::from_json(&three_bit)
                .expect_err("3-bit")
                .contains("only 4-bit")
        );
    }
}
