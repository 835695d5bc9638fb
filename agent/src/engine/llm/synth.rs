//! Demo models: tiny random-weight decoders of each supported architecture, written as a
//! Hugging Face model folder (`config.json`, `model.safetensors`, tokenizer files) so the
//! engine loads them exactly as it loads a downloaded model, integrity check included.
//!
//! The output is deterministic (fixed seeds, a portable random generator, canonical file
//! layout), so the registry pins the SHA-256 of every file like any other model. The weights
//! are random: the models produce gibberish, quickly, on a CPU.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::synth_tokenizer::{ChatStyle, synth_tokenizer};
use crate::engine::demo::{Raw, SynthError, f16s, f32s, i32s};

/// The demo LLM ids, in the registry's order.
pub const DEMO_MODELS: &[&str] = &[
    "tiny-llama",
    "tiny-mistral",
    "tiny-mixtral",
    "tiny-mixtral-gptq",
];

const VOCAB: usize = 512;
const HIDDEN: usize = 64;
const INTERMEDIATE: usize = 128;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const MAX_POSITIONS: usize = 512;
const EXPERTS: usize = 4;
const GPTQ_GROUP: usize = 32;

#[derive(Debug, Clone, Copy)]
struct Spec {
    model_type: &'static str,
    class: &'static str,
    style: ChatStyle,
    seed: u64,
    experts: bool,
    gptq: bool,
}

fn spec(id: &str) -> Option<Spec> {
    let (model_type, class, style, seed, experts, gptq) = match id {
        "tiny-llama" => (
            "llama",
            "LlamaForCausalLM",
            ChatStyle::Llama3,
            1,
            false,
            false,
        ),
        "tiny-mistral" => (
            "mistral",
            "MistralForCausalLM",
            ChatStyle::ChatMl,
            2,
            false,
            false,
        ),
        "tiny-mixtral" => (
            "mixtral",
            "MixtralForCausalLM",
            ChatStyle::ChatMl,
            3,
            true,
            false,
        ),
        "tiny-mixtral-gptq" => (
            "mixtral",
            "MixtralForCausalLM",
            ChatStyle::ChatMl,
            4,
            true,
            true,
        ),
        _ => return None,
    };
    Some(Spec {
        model_type,
        class,
        style,
        seed,
        experts,
        gptq,
    })
}

/// The files of demo model `id`, relative to its folder (written by
/// [`crate::engine::demo::synth`]).
pub fn files(id: &str) -> Result<Vec<(String, Vec<u8>)>, SynthError> {
    let spec = spec(id).ok_or_else(|| SynthError::UnknownModel(id.to_owned()))?;
    spec_files(&spec)
}

/// The files of demo model `id` with its weights drawn from `seed` instead of its own: the
/// same architecture and tokenizer, another model (review tests score one's completions
/// under the other).
pub fn files_with_seed(id: &str, seed: u64) -> Result<Vec<(String, Vec<u8>)>, SynthError> {
    let spec = spec(id).ok_or_else(|| SynthError::UnknownModel(id.to_owned()))?;
    spec_files(&Spec { seed, ..spec })
}

fn spec_files(spec: &Spec) -> Result<Vec<(String, Vec<u8>)>, SynthError> {
    let tokenizer = synth_tokenizer(spec.style, VOCAB)
        .map_err(|e| SynthError::Build(format!("tokenizer: {e}")))?;
    Ok(vec![
        (
            "config.json".to_owned(),
            config_json(spec, tokenizer.bos_id, tokenizer.eos_id),
        ),
        (
            "tokenizer.json".to_owned(),
            tokenizer.tokenizer_json.into_bytes(),
        ),
        (
            "tokenizer_config.json".to_owned(),
            tokenizer.tokenizer_config_json.into_bytes(),
        ),
        (
            "generation_config.json".to_owned(),
            tokenizer.generation_config_json.into_bytes(),
        ),
        ("model.safetensors".to_owned(), weights(spec)?),
    ])
}

fn config_json(spec: &Spec, bos: u32, eos: u32) -> Vec<u8> {
    let mut config = serde_json::json!({
        "architectures": [spec.class],
        "model_type": spec.model_type,
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": false,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
        "_comment": "infermine demo model: random weights, produces gibberish",
    });
    let extra = match spec.model_type {
        "llama" => serde_json::json!({
            "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        }),
        "mistral" => serde_json::json!({"rope_theta": 10000.0, "sliding_window": 32}),
        _ => serde_json::json!({
            "rope_theta": 1e6, "sliding_window": null,
            "num_local_experts": EXPERTS, "num_experts_per_tok": 2,
        }),
    };
    let (Some(config_map), serde_json::Value::Object(extra)) = (config.as_object_mut(), extra)
    else {
        unreachable!("both are JSON objects")
    };
    config_map.extend(extra);
    if spec.gptq {
        config_map.insert(
            "quantization_config".to_owned(),
            serde_json::json!({"bits": 4, "group_size": GPTQ_GROUP, "desc_act": true,
                "sym": true, "damp_percent": 0.1, "true_sequential": true,
                "model_file_base_name": "model", "quant_method": "gptq"}),
        );
    }
    // serde_json's map is ordered by key, so the bytes are stable.
    let mut text = serde_json::to_string_pretty(&config).unwrap_or_default();
    text.push('\n');
    text.into_bytes()
}

/// A tensor to be written: dtype, shape and little-endian bytes.
/// Uniform random values in `[-scale, scale]`.
fn random(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..=scale)).collect()
}

fn weights(spec: &Spec) -> Result<Vec<u8>, SynthError> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut tensors: BTreeMap<String, Raw> = BTreeMap::new();
    let head_dim = HIDDEN / HEADS;
    // Scales chosen so activations keep a spread through the layers (logits differ clearly).
    let dense = |name: String, out: usize, inp: usize, rng: &mut ChaCha8Rng| {
        let values = random(rng, out * inp, 1.5 / (inp as f32).sqrt());
        (name, out, inp, values)
    };
    let mut linears = Vec::new();
    tensors.insert(
        "model.embed_tokens.weight".into(),
        f32s(vec![VOCAB, HIDDEN], &random(&mut rng, VOCAB * HIDDEN, 1.0)),
    );
    for layer in 0..LAYERS {
        let at = format!("model.layers.{layer}");
        for (proj, out) in [
            ("q_proj", HEADS * head_dim),
            ("k_proj", KV_HEADS * head_dim),
            ("v_proj", KV_HEADS * head_dim),
        ] {
            linears.push(dense(
                format!("{at}.self_attn.{proj}"),
                out,
                HIDDEN,
                &mut rng,
            ));
        }
        linears.push(dense(
            format!("{at}.self_attn.o_proj"),
            HIDDEN,
            HEADS * head_dim,
            &mut rng,
        ));
        if spec.experts {
            let router = random(&mut rng, EXPERTS * HIDDEN, 1.0 / (HIDDEN as f32).sqrt());
            tensors.insert(
                format!("{at}.block_sparse_moe.gate.weight"),
                f32s(vec![EXPERTS, HIDDEN], &router),
            );
            for e in 0..EXPERTS {
                let ex = format!("{at}.block_sparse_moe.experts.{e}");
                linears.push(dense(format!("{ex}.w1"), INTERMEDIATE, HIDDEN, &mut rng));
                linears.push(dense(format!("{ex}.w3"), INTERMEDIATE, HIDDEN, &mut rng));
                linears.push(dense(format!("{ex}.w2"), HIDDEN, INTERMEDIATE, &mut rng));
            }
        } else {
            linears.push(dense(
                format!("{at}.mlp.gate_proj"),
                INTERMEDIATE,
                HIDDEN,
                &mut rng,
            ));
            linears.push(dense(
                format!("{at}.mlp.up_proj"),
                INTERMEDIATE,
                HIDDEN,
                &mut rng,
            ));
            linears.push(dense(
                format!("{at}.mlp.down_proj"),
                HIDDEN,
                INTERMEDIATE,
                &mut rng,
            ));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            let values: Vec<f32> = random(&mut rng, HIDDEN, 0.2)
                .iter()
                .map(|v| 1.0 + v)
                .collect();
            tensors.insert(format!("{at}.{norm}.weight"), f32s(vec![HIDDEN], &values));
        }
    }
    tensors.insert(
        "model.norm.weight".into(),
        f32s(vec![HIDDEN], &vec![1.0; HIDDEN]),
    );
    tensors.insert(
        "lm_head.weight".into(),
        f32s(
            vec![VOCAB, HIDDEN],
            &random(&mut rng, VOCAB * HIDDEN, 3.0 / (HIDDEN as f32).sqrt()),
        ),
    );
    for (name, out, inp, values) in linears {
        if spec.gptq {
            for (suffix, raw) in gptq_pack(&values, out, inp, &mut rng) {
                tensors.insert(format!("{name}.{suffix}"), raw);
            }
        } else {
            tensors.insert(format!("{name}.weight"), f32s(vec![out, inp], &values));
        }
    }
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("format".to_owned(), "pt".to_owned());
    safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(metadata))
        .map_err(|e| SynthError::Build(format!("safetensors: {e}")))
}

/// Quantizes a `[out, in]` weight to symmetric 4-bit GPTQ with act-order: a random channel
/// order decides the groups (so `g_idx` is not monotone, as in act-order checkpoints), each
/// group and output column gets `scale = 2·max|w| / 15` and zero point 8, and the values are
/// packed as AutoGPTQ packs them (see `gptq.rs`).
fn gptq_pack(w: &[f32], out: usize, inp: usize, rng: &mut ChaCha8Rng) -> Vec<(&'static str, Raw)> {
    const ZERO: i32 = 8;
    let groups = inp / GPTQ_GROUP;
    let mut order: Vec<usize> = (0..inp).collect();
    for i in (1..inp).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut g_idx = vec![0i32; inp];
    for (rank, &channel) in order.iter().enumerate() {
        g_idx[channel] = (rank / GPTQ_GROUP) as i32;
    }
    let mut scales = vec![0f32; groups * out];
    for o in 0..out {
        for (i, g) in g_idx.iter().enumerate() {
            let cell = &mut scales[*g as usize * out + o];
            *cell = cell.max(w[o * inp + i].abs() * 2.0 / 15.0);
        }
    }
    // The scales are stored as f16; quantize against the stored value.
    let scales16: Vec<half::f16> = scales
        .iter()
        .map(|s| half::f16::from_f32(s.max(1e-6)))
        .collect();
    let mut qweight = vec![0i32; inp / 8 * out];
    for o in 0..out {
        for i in 0..inp {
            let scale = scales16[g_idx[i] as usize * out + o].to_f32();
            let q = ((w[o * inp + i] / scale).round() as i32 + ZERO).clamp(0, 15);
            qweight[i / 8 * out + o] |= q << (4 * (i % 8));
        }
    }
    // Zero points are stored minus one (the v1 format), eight per word along the outputs.
    let mut qzeros = vec![0i32; groups * out / 8];
    for g in 0..groups {
        for o in 0..out {
            qzeros[g * out / 8 + o / 8] |= (ZERO - 1) << (4 * (o % 8));
        }
    }
    vec![
        ("qweight", i32s(vec![inp / 8, out], &qweight)),
        ("qzeros", i32s(vec![groups, out / 8], &qzeros)),
        ("scales", f16s(vec![groups, out], &scales16)),
        ("g_idx", i32s(vec![inp], &g_idx)),
    ]
}
