//! The `tiny-flux` demo model: a diffusers `FluxPipeline` folder with FLUX.1-dev's structure
//! and schedule (CLIP-L and T5 text encoders, a guidance-distilled transformer, a 16-channel VAE
//! with a shift factor, a dynamically shifted flow-matching scheduler) at toy sizes.
//!
//! The T5 tokenizer is built here too: a SentencePiece Unigram `tokenizer.json` over a small
//! hand-written vocabulary, laid out as transformers' `T5Tokenizer` writes one (`<pad>` 0,
//! `</s>` 1, `<unk>` 2, Metaspace pre-tokenization, `$A </s>` post-processing), so both
//! transformers and this engine's [`T5Tokenizer`](crate::engine::diffusion::t5::T5Tokenizer)
//! read it. The T5 prompt length (diffusers' `max_sequence_length`) is [`MAX_SEQUENCE_LENGTH`],
//! recorded as `tokenizer_2/tokenizer_config.json`'s `model_max_length`.

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};
use tch::{Device, Kind};

use super::{Files, clip, clip_config, parse, record, tiny_vae_config};
use crate::engine::demo::SynthError;
use crate::engine::diffusion::clip_tokenizer::{EOS, synth_vocab};
use crate::engine::diffusion::flux::{FluxConfig, FluxLayout, FluxTransformer};
use crate::engine::diffusion::t5::{T5Config, T5EncoderModel, T5Layout};
use crate::engine::diffusion::vae::{VaeConfig, VaeDecoder, VaeLayout};
use crate::engine::diffusion::weights::TensorSource;

/// T5 prompt length of the demo (FLUX.1-dev uses 512; short prompts keep the demo fast).
pub const MAX_SEQUENCE_LENGTH: usize = 32;

/// Merges in the demo CLIP vocabulary, as for the SD demos.
const MERGES: usize = 230;

/// Width of the demo T5 (the transformer's `joint_attention_dim`).
const T5_WIDTH: usize = 32;

/// Width of the demo CLIP (the transformer's `pooled_projection_dim`).
const CLIP_WIDTH: usize = 32;

/// Whole words of the demo T5 vocabulary, most likely first.
const WORDS: &str = "a the of and on in with at by an photo cat dog red blue green sitting \
    portrait astronaut riding horse moon painting lighthouse dawn castle mountains city night \
    light sky tree house car dragon ocean sunset forest snow flower book fire oil watercolor \
    digital art style high detailed cinematic masterpiece quality sports over under";

/// Word pieces that continue a word.
const SUBWORDS: &[&str] = &["s", "es", "ing", "ed", "er", "ly", "tion", "ful", "est"];

/// Single characters, so most text has a segmentation without `<unk>`.
const CHARACTERS: &str = "abcdefghijklmnopqrstuvwxyz0123456789,.!?'-:;()&";

/// The files of `tiny-flux`, relative to its folder.
pub(super) fn files(id: &str) -> Result<Vec<(String, Vec<u8>)>, SynthError> {
    let vocab = synth_vocab(MERGES);
    let eos = vocab.vocab_size as i64 - 1;
    let mut out = Files(Vec::new());
    out.json("model_index.json", &model_index());
    out.json("scheduler/scheduler_config.json", &scheduler());
    let clip_l = clip_config(vocab.vocab_size, eos, CLIP_WIDTH, 2, "quick_gelu");
    out.tokenizer("tokenizer", &vocab, EOS);
    out.json("text_encoder/config.json", &clip_l);
    out.weights(
        "text_encoder/model.safetensors",
        &record(id, "text_encoder", |s| clip(&clip_l, s, false))?,
    )?;
    let pieces = t5_pieces();
    out.json("tokenizer_2/tokenizer.json", &t5_tokenizer(&pieces));
    out.json("tokenizer_2/tokenizer_config.json", &t5_tokenizer_config());
    let t5 = t5_config(pieces.len().div_ceil(16) * 16);
    out.json("text_encoder_2/config.json", &t5);
    let mut t5_weights = record(id, "text_encoder_2", |s| {
        let config = parse(T5Config::from_json, &t5)?;
        let layout = T5Layout::HuggingFace {
            prefix: String::new(),
        };
        T5EncoderModel::load(config, s, &layout, Device::Cpu, Kind::Float)
            .map(drop)
            .map_err(|e| e.to_string())
    })?;
    tie_embeddings(&mut t5_weights)?;
    out.weights("text_encoder_2/model.safetensors", &t5_weights)?;
    let transformer = transformer_config();
    out.json("transformer/config.json", &transformer);
    out.weights(
        "transformer/diffusion_pytorch_model.safetensors",
        &record(id, "transformer", |s| load_transformer(&transformer, s))?,
    )?;
    let vae = vae_config();
    out.json("vae/config.json", &vae);
    out.weights(
        "vae/diffusion_pytorch_model.safetensors",
        &record(id, "vae", |s| {
            let config = parse(VaeConfig::from_json, &vae)?;
            let layout = VaeLayout::Diffusers {
                prefix: String::new(),
            };
            VaeDecoder::load(config, s, &layout, Device::Cpu, Kind::Float)
                .map(drop)
                .map_err(|e| e.to_string())
        })?,
    )?;
    Ok(out.0)
}

fn load_transformer(config: &Json, source: &dyn TensorSource) -> Result<(), String> {
    let config = parse(FluxConfig::from_json, config)?;
    let layout = FluxLayout::Diffusers {
        prefix: String::new(),
    };
    FluxTransformer::load(config, source, &layout, Device::Cpu, Kind::Float)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// transformers ties T5's `encoder.embed_tokens` to `shared`; the file carries both, as
/// transformers' own `save_pretrained` of a T5 encoder does, so any loader finds its name.
fn tie_embeddings(
    weights: &mut BTreeMap<String, crate::engine::demo::Raw>,
) -> Result<(), SynthError> {
    let shared = weights
        .get("shared.weight")
        .ok_or_else(|| SynthError::Build("text_encoder_2: no shared.weight recorded".to_owned()))?
        .clone();
    weights.insert("encoder.embed_tokens.weight".to_owned(), shared);
    Ok(())
}

fn model_index() -> Json {
    json!({
        "_class_name": "FluxPipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
}

/// black-forest-labs/FLUX.1-dev's scheduler_config.json, field for field.
fn scheduler() -> Json {
    json!({
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "_diffusers_version": "0.42.1",
        "base_image_seq_len": 256,
        "base_shift": 0.5,
        "max_image_seq_len": 4096,
        "max_shift": 1.15,
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": true,
    })
}

/// The Unigram pieces with their log-probabilities: T5's special tokens first, then words
/// (`▁word`), word pieces, characters and word-initial characters, each group less likely than
/// the one before. Scores are exact decimals, so the JSON is the same everywhere.
fn t5_pieces() -> Vec<(String, f64)> {
    let mut pieces: Vec<(String, f64)> = ["<pad>", "</s>", "<unk>"]
        .iter()
        .map(|p| ((*p).to_owned(), 0.0))
        .collect();
    pieces.push(("▁".to_owned(), -3.0));
    let score = |base: i64, step: i64, i: usize| -((base + step * i as i64) as f64) / 100.0;
    let mut words: Vec<&str> = Vec::new();
    for word in WORDS.split_whitespace() {
        if !words.contains(&word) {
            words.push(word);
        }
    }
    pieces.extend(
        words
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("▁{w}"), score(400, 5, i))),
    );
    pieces.extend(
        SUBWORDS
            .iter()
            .enumerate()
            .map(|(i, p)| ((*p).to_owned(), score(600, 10, i))),
    );
    let characters = CHARACTERS.chars().map(|c| (c.to_string(), 900));
    let initials = CHARACTERS
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| (format!("▁{c}"), 800));
    for (i, (piece, base)) in characters.enumerate().chain(initials.enumerate()) {
        if !pieces.iter().any(|(p, _)| *p == piece) {
            pieces.push((piece, score(base, 1, i)));
        }
    }
    pieces
}

fn metaspace() -> Json {
    json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true})
}

/// A `tokenizers` `tokenizer.json` as transformers' `T5Tokenizer` writes it.
fn t5_tokenizer(pieces: &[(String, f64)]) -> Json {
    let special = |id: usize, content: &str| {
        json!({
            "id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true,
        })
    };
    let sequence = |id: &str| json!({"Sequence": {"id": id, "type_id": 0}});
    let eos = json!({"SpecialToken": {"id": "</s>", "type_id": 0}});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<pad>"), special(1, "</s>"), special(2, "<unk>")],
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [{"type": "WhitespaceSplit"}, metaspace()],
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [sequence("A"), eos.clone()],
            "pair": [sequence("A"), eos.clone(), sequence("B"), eos],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}},
        },
        "decoder": metaspace(),
        "model": {
            "type": "Unigram",
            "unk_id": 2,
            "vocab": pieces.iter().map(|(p, s)| json!([p, s])).collect::<Vec<_>>(),
            "byte_fallback": false,
        },
    })
}

fn t5_tokenizer_config() -> Json {
    json!({
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": MAX_SEQUENCE_LENGTH,
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "extra_ids": 0,
        "extra_special_tokens": [],
    })
}

/// T5 v1.1's architecture (gated GELU, 32 relative-position buckets up to distance 128) at a
/// toy width.
fn t5_config(vocab_size: usize) -> Json {
    json!({
        "architectures": ["T5EncoderModel"],
        "model_type": "t5",
        "vocab_size": vocab_size,
        "d_model": T5_WIDTH,
        "d_kv": 8,
        "num_heads": 4,
        "d_ff": 64,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "feed_forward_proj": "gated-gelu",
        "dense_act_fn": "gelu_new",
        "is_gated_act": true,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "layer_norm_epsilon": 1e-6,
        "dropout_rate": 0.0,
        "initializer_factor": 1.0,
        "is_encoder_decoder": false,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "tie_word_embeddings": false,
        "use_cache": false,
        "torch_dtype": "float32",
    })
}

/// FLUX.1-dev's transformer (guidance embedding, double then single blocks, RoPE over three
/// position axes) with one double and two single blocks of two 16-wide heads. A packed token
/// is a 2×2 patch of the VAE's 16 latent channels.
fn transformer_config() -> Json {
    json!({
        "_class_name": "FluxTransformer2DModel",
        "_diffusers_version": "0.42.1",
        "patch_size": 1,
        "in_channels": 64,
        "out_channels": null,
        "num_layers": 1,
        "num_single_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": T5_WIDTH,
        "pooled_projection_dim": CLIP_WIDTH,
        "guidance_embeds": true,
        "axes_dims_rope": [4, 6, 6],
    })
}

/// FLUX.1-dev's VAE (16 latent channels, shift factor, no quant convs) with four narrow levels,
/// so one latent cell is 8×8 pixels as in the published one.
fn vae_config() -> Json {
    let mut config = tiny_vae_config(16, 0.3611);
    for (key, value) in [
        ("shift_factor", json!(0.1159)),
        ("use_quant_conv", json!(false)),
        ("use_post_quant_conv", json!(false)),
        ("mid_block_add_attention", json!(true)),
        ("force_upcast", json!(true)),
        ("latents_mean", Json::Null),
        ("latents_std", Json::Null),
    ] {
        config[key] = value;
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_t5_pieces_are_unique_and_start_with_the_special_tokens() {
        let pieces = t5_pieces();
        let names: Vec<&str> = pieces.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(&names[..4], ["<pad>", "</s>", "<unk>", "▁"]);
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "duplicate pieces");
    }
}
