//! The UNet against diffusers' `UNet2DConditionModel`.
//!
//! `scripts/fixtures/diffusion_unet.py` built a tiny SD 1.5-like UNet (1×1 conv projections,
//! heads from `attention_head_dim`, attention in the first down level) and a tiny SDXL-like one
//! (linear projections, `transformer_layers_per_block` [1, 2], no attention in the first down
//! level, `text_time` added conditioning), saved them in the diffusers `unet/` layout, and
//! recorded diffusers' prediction for a fixed batch of two with different timesteps in
//! `tests/fixtures/diffusion/unet/`, along with each model in the LDM single-file layout
//! (`model.diffusion_model.`) that diffusers' `convert_ldm_unet_checkpoint` maps back exactly.
//! Each layout must reproduce the prediction within 1e-4 on the CPU in f32.

mod common;

use std::path::PathBuf;

use common::Fixtures;
use infermine_agent::engine::diffusion::unet::{
    AddedCond, UNet, UNetConfig, UNetError, UNetLayout,
};
use infermine_agent::engine::diffusion::weights::{SafetensorsFiles, WeightsError};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

const FIXTURES: Fixtures = Fixtures("unet");

fn fixture(name: &str) -> PathBuf {
    FIXTURES.path(name)
}

fn config(model: &str) -> UNetConfig {
    UNetConfig::from_file(&fixture(&format!("{model}/config.json"))).expect("config.json")
}

fn weights(model: &str) -> Vec<(String, Tensor)> {
    let path = fixture(&format!("{model}/diffusion_pytorch_model.safetensors"));
    Tensor::read_safetensors(path).expect("fixture weights")
}

fn diffusers() -> UNetLayout {
    UNetLayout::Diffusers {
        prefix: String::new(),
    }
}

fn load(model: &str) -> UNet {
    let source = SafetensorsFiles::from_tensors(model, weights(model));
    UNet::load(
        config(model),
        &source,
        &diffusers(),
        Device::Cpu,
        Kind::Float,
    )
    .expect("load")
}

fn load_single_file(model: &str) -> UNet {
    let source = SafetensorsFiles::read(&[&fixture(&format!("{model}_single_file.safetensors"))])
        .expect("single-file fixture");
    let layout = UNetLayout::Ldm {
        prefix: "model.diffusion_model.".to_owned(),
    };
    UNet::load(config(model), &source, &layout, Device::Cpu, Kind::Float).expect("load")
}

fn golden(model: &str, what: &str) -> Tensor {
    let name = format!("{model}.{what}");
    Tensor::read_safetensors(fixture("golden.safetensors"))
        .expect("golden.safetensors")
        .into_iter()
        .find_map(|(n, t)| (n == name).then_some(t))
        .unwrap_or_else(|| panic!("golden `{name}` missing"))
}

fn check(model: &str, out: &Tensor) {
    let want = golden(model, "out");
    assert_eq!(out.size(), want.size(), "{model}: shape");
    let diff = (out - &want).abs().max().double_value(&[]);
    assert!(diff <= TOLERANCE, "{model}: max abs difference {diff}");
}

fn check_sd15(unet: &UNet) {
    let out = tch::no_grad(|| {
        unet.forward(
            &golden("sd15", "sample"),
            &golden("sd15", "timestep"),
            &golden("sd15", "encoder_hidden_states"),
            None,
        )
    })
    .expect("forward");
    check("sd15", &out);
}

fn check_sdxl(unet: &UNet) {
    let (text_embeds, time_ids) = (golden("sdxl", "text_embeds"), golden("sdxl", "time_ids"));
    let added = AddedCond {
        text_embeds: &text_embeds,
        time_ids: &time_ids,
    };
    let out = tch::no_grad(|| {
        unet.forward(
            &golden("sdxl", "sample"),
            &golden("sdxl", "timestep"),
            &golden("sdxl", "encoder_hidden_states"),
            Some(&added),
        )
    })
    .expect("forward");
    check("sdxl", &out);
}

#[test]
fn sd15_like_unet_matches_diffusers() {
    check_sd15(&load("sd15"));
}

#[test]
fn sdxl_like_unet_with_text_time_conditioning_matches_diffusers() {
    check_sdxl(&load("sdxl"));
}

#[test]
fn sd15_like_unet_from_single_file_ldm_layout_matches_diffusers() {
    check_sd15(&load_single_file("sd15"));
}

#[test]
fn sdxl_like_unet_from_single_file_ldm_layout_matches_diffusers() {
    check_sdxl(&load_single_file("sdxl"));
}

#[test]
fn odd_sizes_upsample_to_the_skip_size_as_diffusers_does() {
    let unet = load("sd15");
    let context = golden("sd15", "encoder_hidden_states").narrow(0, 0, 1);
    let out = tch::no_grad(|| {
        unet.forward(
            &golden("sd15", "odd_sample"),
            &Tensor::from(500i64),
            &context,
            None,
        )
    })
    .expect("forward");
    let want = golden("sd15", "odd_out");
    assert_eq!(out.size(), want.size());
    let diff = (&out - &want).abs().max().double_value(&[]);
    assert!(diff <= TOLERANCE, "max abs difference {diff}");
}

#[test]
fn a_scalar_timestep_is_broadcast_over_the_batch() {
    let unet = load("sd15");
    let sample = golden("sd15", "sample");
    let context = golden("sd15", "encoder_hidden_states");
    let scalar = Tensor::from(261.0f32);
    let each = Tensor::from_slice(&[261.0f32, 261.0]);
    let (a, b) = tch::no_grad(|| {
        (
            unet.forward(&sample, &scalar, &context, None)
                .expect("scalar"),
            unet.forward(&sample, &each, &context, None)
                .expect("per row"),
        )
    });
    assert_eq!((a - b).abs().max().double_value(&[]), 0.0);
}

#[test]
fn configs_resolve_heads_and_layers_as_diffusers_does() {
    let sd15 = config("sd15");
    assert_eq!(sd15.heads(), [4, 4], "attention_head_dim means heads");
    assert!(!sd15.use_linear_projection && sd15.addition_embed_type.is_none());
    let sdxl = config("sdxl");
    assert_eq!(sdxl.heads(), [1, 4]);
    assert_eq!(sdxl.per_block(&sdxl.transformer_layers_per_block), [1, 2]);
    assert_eq!(sdxl.addition_embed_type.as_deref(), Some("text_time"));
}

/// The published SDXL base `unet/config.json` (diffusers 0.19), nulls included: they mean
/// "the default" to diffusers and must not fail to parse.
const SDXL_BASE_CONFIG: &str = r#"{
  "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.19.0.dev0",
  "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
  "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
  "block_out_channels": [320, 640, 1280], "center_input_sample": false,
  "class_embed_type": null, "class_embeddings_concat": false, "conv_in_kernel": 3,
  "conv_out_kernel": 3, "cross_attention_dim": 2048, "cross_attention_norm": null,
  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  "downsample_padding": 1, "dual_cross_attention": false, "encoder_hid_dim": null,
  "encoder_hid_dim_type": null, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
  "layers_per_block": 2, "mid_block_only_cross_attention": null, "mid_block_scale_factor": 1,
  "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
  "num_attention_heads": null, "num_class_embeds": null, "only_cross_attention": false,
  "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
  "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": false,
  "resnet_time_scale_shift": "default", "sample_size": 128, "time_cond_proj_dim": null,
  "time_embedding_act_fn": null, "time_embedding_dim": null,
  "time_embedding_type": "positional", "timestep_post_act": null,
  "transformer_layers_per_block": [1, 2, 10],
  "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
  "upcast_attention": null, "use_linear_projection": true
}"#;

#[test]
fn the_published_sdxl_config_with_nulls_parses() {
    let config = UNetConfig::from_json(SDXL_BASE_CONFIG).expect("SDXL base config");
    assert_eq!(config.heads(), [5, 10, 20]);
    assert_eq!(config.per_block(&config.layers_per_block), [2, 2, 2]);
    assert_eq!(
        config.per_block(&config.transformer_layers_per_block),
        [1, 2, 10]
    );
    assert_eq!(config.time_embed_dim(), 1280);
    assert!(!config.upcast_attention && config.use_linear_projection);
}

#[test]
fn sdxl_without_added_conditioning_says_what_it_needs() {
    let unet = load("sdxl");
    let err = tch::no_grad(|| {
        unet.forward(
            &golden("sdxl", "sample"),
            &golden("sdxl", "timestep"),
            &golden("sdxl", "encoder_hidden_states"),
            None,
        )
    })
    .expect_err("SDXL needs added_cond_kwargs");
    assert!(
        err.to_string().contains("text_embeds and time_ids"),
        "{err}"
    );
}

#[test]
fn a_missing_tensor_is_named() {
    let missing = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    let tensors = weights("sd15").into_iter().filter(|(n, _)| n != missing);
    let source = SafetensorsFiles::from_tensors("sd15 without attn2.to_k", tensors);
    let err = UNet::load(
        config("sd15"),
        &source,
        &diffusers(),
        Device::Cpu,
        Kind::Float,
    )
    .expect_err("a tensor is missing");
    match &err {
        UNetError::Files(WeightsError::MissingTensor { name, .. }) => assert_eq!(name, missing),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    assert!(err.to_string().contains(missing), "{err}");
}

#[test]
fn a_missing_tensor_in_the_ldm_layout_is_named_by_its_ldm_name() {
    let path = fixture("sdxl_single_file.safetensors");
    let missing = "model.diffusion_model.label_emb.0.2.weight";
    let tensors = Tensor::read_safetensors(path)
        .expect("single-file fixture")
        .into_iter()
        .filter(|(n, _)| n != missing);
    let source = SafetensorsFiles::from_tensors("sdxl single file without label_emb", tensors);
    let layout = UNetLayout::Ldm {
        prefix: "model.diffusion_model.".to_owned(),
    };
    let err = UNet::load(config("sdxl"), &source, &layout, Device::Cpu, Kind::Float)
        .expect_err("a tensor is missing");
    assert!(err.to_string().contains(missing), "{err}");
}

#[test]
fn unsupported_configs_are_refused_with_the_reason() {
    let text = std::fs::read_to_string(fixture("sd15/config.json")).expect("config");
    let mut value: serde_json::Value = serde_json::from_str(&text).expect("json");
    value["class_embed_type"] = serde_json::json!("timestep");
    let err = UNetConfig::from_json(&value.to_string()).expect_err("unsupported");
    assert!(err.contains("class_embed_type"), "{err}");
}
