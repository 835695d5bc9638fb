//! Demo image models: tiny random-weight SD 1.5, SDXL and Flux pipelines written as diffusers
//! folders (`model_index.json`, `scheduler/`, `tokenizer*/`, `text_encoder*/`, `unet/` or
//! `transformer/`, `vae/`), which both this engine and diffusers load. Their images are noise.
//! `tiny-flux` is in [`flux`].
//!
//! The weights are exactly the tensors the engine's own loaders ask for: each component is
//! loaded once from a [`Recorder`] that answers every lookup with seeded random values and
//! keeps them. (The VAE's encoder, which text-to-image never runs, is therefore absent.)

use std::cell::RefCell;
use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use super::clip::{ClipLayout, ClipTextConfig, ClipTextModel};
use super::clip_tokenizer::{BOS, EOS, MAX_LENGTH, synth_vocab};
use super::unet::{UNet, UNetConfig, UNetLayout};
use super::vae::{VaeConfig, VaeDecoder, VaeLayout};
use super::weights::{TensorSource, WeightsError};
use crate::engine::demo::{Raw, SynthError, f32s};

pub mod flux;

/// The demo image model ids, in the registry's order.
pub const DEMO_MODELS: &[&str] = &["tiny-sd15", "tiny-sdxl", "tiny-flux"];

/// Merges in the demo CLIP vocabulary (512 byte symbols + merges + 2 special tokens).
const MERGES: usize = 230;

/// The files of demo model `id`, relative to its folder.
pub fn files(id: &str) -> Result<Vec<(String, Vec<u8>)>, SynthError> {
    let sdxl = match id {
        "tiny-sd15" => false,
        "tiny-sdxl" => true,
        "tiny-flux" => return flux::files(id),
        _ => return Err(SynthError::UnknownModel(id.to_owned())),
    };
    let vocab = synth_vocab(MERGES);
    let eos = vocab.vocab_size as i64 - 1;
    let mut out = Files(Vec::new());
    let class = if sdxl {
        "StableDiffusionXLPipeline"
    } else {
        "StableDiffusionPipeline"
    };
    out.json("model_index.json", &model_index(class, sdxl));
    out.json("scheduler/scheduler_config.json", &scheduler(sdxl));
    let clip_l = clip_config(vocab.vocab_size, eos, 32, 2, "quick_gelu");
    out.tokenizer("tokenizer", &vocab, EOS);
    out.json("text_encoder/config.json", &clip_l);
    out.weights(
        "text_encoder/model.safetensors",
        &record(id, "text_encoder", |s| clip(&clip_l, s, false))?,
    )?;
    let mut cross = 32;
    if sdxl {
        let mut clip_g = clip_config(vocab.vocab_size, eos, 48, 2, "gelu");
        clip_g["architectures"] = json!(["CLIPTextModelWithProjection"]);
        out.tokenizer("tokenizer_2", &vocab, "!");
        out.json("text_encoder_2/config.json", &clip_g);
        out.weights(
            "text_encoder_2/model.safetensors",
            &record(id, "text_encoder_2", |s| clip(&clip_g, s, true))?,
        )?;
        cross += 48;
    }
    let unet_config = unet_config(sdxl, cross);
    out.json("unet/config.json", &unet_config);
    out.weights(
        "unet/diffusion_pytorch_model.safetensors",
        &record(id, "unet", |s| {
            let config = parse(UNetConfig::from_json, &unet_config)?;
            UNet::load(
                config,
                s,
                &UNetLayout::Diffusers {
                    prefix: String::new(),
                },
                Device::Cpu,
                Kind::Float,
            )
            .map(drop)
            .map_err(|e| e.to_string())
        })?,
    )?;
    let vae_config = vae_config(sdxl);
    out.json("vae/config.json", &vae_config);
    out.weights(
        "vae/diffusion_pytorch_model.safetensors",
        &record(id, "vae", |s| {
            let config = parse(VaeConfig::from_json, &vae_config)?;
            VaeDecoder::load(
                config,
                s,
                &VaeLayout::Diffusers {
                    prefix: String::new(),
                },
                Device::Cpu,
                Kind::Float,
            )
            .map(drop)
            .map_err(|e| e.to_string())
        })?,
    )?;
    Ok(out.0)
}

struct Files(Vec<(String, Vec<u8>)>);

impl Files {
    fn json(&mut self, name: &str, value: &Json) {
        let mut text = serde_json::to_string_pretty(value).expect("JSON values serialize");
        text.push('\n');
        self.0.push((name.to_owned(), text.into_bytes()));
    }

    fn tokenizer(&mut self, dir: &str, vocab: &super::clip_tokenizer::SynthVocab, pad: &str) {
        self.0.push((
            format!("{dir}/vocab.json"),
            vocab.vocab_json.clone().into_bytes(),
        ));
        self.0.push((
            format!("{dir}/merges.txt"),
            vocab.merges_txt.clone().into_bytes(),
        ));
        let special = json!({
            "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad,
        });
        self.json(&format!("{dir}/special_tokens_map.json"), &special);
        let mut config = special;
        config["tokenizer_class"] = json!("CLIPTokenizer");
        config["model_max_length"] = json!(MAX_LENGTH);
        config["do_lower_case"] = json!(true);
        self.json(&format!("{dir}/tokenizer_config.json"), &config);
    }

    fn weights(&mut self, name: &str, tensors: &BTreeMap<String, Raw>) -> Result<(), SynthError> {
        let metadata = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
        let bytes =
            safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(metadata))
                .map_err(|e| SynthError::Build(format!("{name}: {e}")))?;
        self.0.push((name.to_owned(), bytes));
        Ok(())
    }
}

fn parse<T>(from_json: fn(&str) -> Result<T, String>, value: &Json) -> Result<T, String> {
    from_json(&value.to_string())
}

fn clip(config: &Json, source: &dyn TensorSource, projection: bool) -> Result<(), String> {
    let config = parse(ClipTextConfig::from_json, config)?;
    let layout = ClipLayout::HuggingFace {
        prefix: String::new(),
    };
    ClipTextModel::load(
        config,
        source,
        &layout,
        projection,
        Device::Cpu,
        Kind::Float,
    )
    .map(drop)
    .map_err(|e| e.to_string())
}

/// Runs `load` against a [`Recorder`] and returns what it recorded.
fn record(
    id: &str,
    component: &str,
    load: impl FnOnce(&dyn TensorSource) -> Result<(), String>,
) -> Result<BTreeMap<String, Raw>, SynthError> {
    let recorder = Recorder {
        seed: format!("{id}/{component}"),
        tensors: RefCell::new(BTreeMap::new()),
    };
    load(&recorder).map_err(|e| SynthError::Build(format!("{component}: {e}")))?;
    Ok(recorder.tensors.into_inner())
}

/// A [`TensorSource`] that makes up every tensor asked for: values from a generator seeded by
/// the model, component and tensor name (so the order of lookups does not matter), scaled so
/// activations stay near unit size. Norm scales (1-D) are near 1, biases small; a norm's
/// modulation matrix (Flux's `norm1.linear`) is an ordinary linear weight.
struct Recorder {
    seed: String,
    tensors: RefCell<BTreeMap<String, Raw>>,
}

impl TensorSource for Recorder {
    fn tensor(&self, name: &str, shape: &[i64]) -> Result<Tensor, WeightsError> {
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let n: usize = dims.iter().product();
        let digest = Sha256::digest(format!("{}/{name}", self.seed));
        let mut rng = ChaCha8Rng::from_seed(digest.into());
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let is_norm = name.contains("norm") || name.contains("ln_");
        let values: Vec<f32> = if is_norm && leaf == "weight" && dims.len() == 1 {
            (0..n).map(|_| 1.0 + rng.random_range(-0.1..=0.1)).collect()
        } else if leaf == "bias" || dims.len() < 2 {
            (0..n).map(|_| rng.random_range(-0.05..=0.05)).collect()
        } else if name.contains("embedding") {
            (0..n).map(|_| rng.random_range(-0.5..=0.5)).collect()
        } else {
            let fan_in: usize = dims[1..].iter().product();
            let bound = (3.0 / fan_in as f32).sqrt();
            (0..n).map(|_| rng.random_range(-bound..=bound)).collect()
        };
        let tensor = Tensor::from_slice(&values).view(shape);
        self.tensors
            .borrow_mut()
            .insert(name.to_owned(), f32s(dims, &values));
        Ok(tensor)
    }

    fn contains(&self, _name: &str) -> bool {
        false
    }
}

fn model_index(class: &str, sdxl: bool) -> Json {
    let mut index = json!({
        "_class_name": class,
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", if sdxl { "EulerDiscreteScheduler" } else { "PNDMScheduler" }],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    });
    if sdxl {
        index["text_encoder_2"] = json!(["transformers", "CLIPTextModelWithProjection"]);
        index["tokenizer_2"] = json!(["transformers", "CLIPTokenizer"]);
        index["force_zeros_for_empty_prompt"] = json!(true);
    } else {
        index["safety_checker"] = json!([null, null]);
        index["feature_extractor"] = json!([null, null]);
        index["requires_safety_checker"] = json!(false);
    }
    index
}

/// The published schedulers: SD 1.5's PNDM config and SDXL's Euler config, field for field.
fn scheduler(sdxl: bool) -> Json {
    let mut config = json!({
        "_class_name": if sdxl { "EulerDiscreteScheduler" } else { "PNDMScheduler" },
        "_diffusers_version": "0.42.1",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": false,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": false,
        "skip_prk_steps": true,
        "steps_offset": 1,
        "trained_betas": null,
    });
    if sdxl {
        config["interpolation_type"] = json!("linear");
        config["prediction_type"] = json!("epsilon");
        config["sample_max_value"] = json!(1.0);
        config["timestep_spacing"] = json!("leading");
        config["use_karras_sigmas"] = json!(false);
    }
    config
}

fn clip_config(vocab: usize, eos: i64, hidden: usize, heads: usize, act: &str) -> Json {
    json!({
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "max_position_embeddings": MAX_LENGTH,
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
        "projection_dim": 32,
        "bos_token_id": eos - 1,
        "eos_token_id": eos,
        "pad_token_id": eos,
        "torch_dtype": "float32",
    })
}

fn unet_config(sdxl: bool, cross: usize) -> Json {
    let mut config = json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.42.1",
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "cross_attention_dim": cross,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "act_fn": "silu",
    });
    if sdxl {
        config["down_block_types"] = json!(["DownBlock2D", "CrossAttnDownBlock2D"]);
        config["up_block_types"] = json!(["CrossAttnUpBlock2D", "UpBlock2D"]);
        config["attention_head_dim"] = json!([2, 4]);
        config["transformer_layers_per_block"] = json!([1, 2]);
        config["use_linear_projection"] = json!(true);
        config["addition_embed_type"] = json!("text_time");
        config["addition_time_embed_dim"] = json!(8);
        config["projection_class_embeddings_input_dim"] = json!(6 * 8 + 32);
    } else {
        config["down_block_types"] = json!(["CrossAttnDownBlock2D", "DownBlock2D"]);
        config["up_block_types"] = json!(["UpBlock2D", "CrossAttnUpBlock2D"]);
        config["attention_head_dim"] = json!(4);
    }
    config
}

/// Four levels, so one latent cell is 8×8 pixels as in the published VAEs.
fn vae_config(sdxl: bool) -> Json {
    let mut config = tiny_vae_config(4, if sdxl { 0.13025 } else { 0.18215 });
    config["force_upcast"] = json!(sdxl);
    config
}

/// The demo VAEs' shared shape: four narrow levels (8×8 pixels per latent cell, as in the
/// published VAEs) with `latent_channels` and `scaling_factor`.
pub(super) fn tiny_vae_config(latent_channels: i64, scaling_factor: f64) -> Json {
    json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.42.1",
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": latent_channels,
        "block_out_channels": [16, 16, 32, 32],
        "down_block_types": vec!["DownEncoderBlock2D"; 4],
        "up_block_types": vec!["UpDecoderBlock2D"; 4],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "act_fn": "silu",
        "sample_size": 64,
        "scaling_factor": scaling_factor,
    })
}
