//! The CLIP text encoders against transformers.
//!
//! `scripts/fixtures/diffusion_clip.py` built a tiny CLIP-L-like `CLIPTextModel` (quick_gelu,
//! pooled at the largest id) and a tiny bigG-like `CLIPTextModelWithProjection` (gelu, pooled at
//! the first EOS), saved their weights in the diffusers folder layout, in SD 1.5's and SDXL's
//! single-file layouts (bigG in OpenCLIP names), and recorded transformers' outputs for two
//! padded prompts in `tests/fixtures/diffusion/clip/`. Every layout must reproduce every output
//! within 1e-4 on the CPU in f32.

mod common;

use std::path::PathBuf;

use common::Fixtures;
use infermine_agent::engine::diffusion::clip::{
    ClipError, ClipLayout, ClipTextConfig, ClipTextModel,
};
use infermine_agent::engine::diffusion::weights::{SafetensorsFiles, TensorSource, WeightsError};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

const FIXTURES: Fixtures = Fixtures("clip");

fn fixture(name: &str) -> PathBuf {
    FIXTURES.path(name)
}

fn config(model: &str) -> ClipTextConfig {
    ClipTextConfig::from_file(&fixture(&format!("{model}/config.json"))).expect("config.json")
}

fn files(name: &str) -> SafetensorsFiles {
    FIXTURES.files(name)
}

fn hf(prefix: &str) -> ClipLayout {
    ClipLayout::HuggingFace {
        prefix: prefix.to_owned(),
    }
}

fn load(model: &str, source: &dyn TensorSource, layout: &ClipLayout) -> ClipTextModel {
    let with_projection = model == "clip_g";
    ClipTextModel::load(
        config(model),
        source,
        layout,
        with_projection,
        Device::Cpu,
        Kind::Float,
    )
    .expect("load")
}

fn golden(model: &str, what: &str) -> Tensor {
    FIXTURES.golden(model, what)
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let diff = (got - want).abs().max().double_value(&[]);
    assert!(diff <= TOLERANCE, "{what}: max abs difference {diff}");
}

/// Runs the golden prompts and checks every recorded output.
fn check(model: &str, encoder: &ClipTextModel, layout: &str) {
    let ids = golden(model, "input_ids");
    let out = encoder.forward(&ids, Some(2)).expect("forward");
    let at = |what: &str| format!("{model} ({layout}) {what}");
    assert_close(
        &at("last_hidden_state"),
        &out.last_hidden_state,
        &golden(model, "last_hidden_state"),
    );
    let penultimate = out.hidden_state.expect("hidden_states[-2] requested");
    assert_close(
        &at("hidden_states[-2]"),
        &penultimate,
        &golden(model, "penultimate"),
    );
    assert_close(&at("pooled"), &out.pooled, &golden(model, "pooled"));
    match out.text_embeds {
        Some(embeds) => assert_close(&at("text_embeds"), &embeds, &golden(model, "text_embeds")),
        None => assert_eq!(model, "clip_l", "bigG must return text_embeds"),
    }
}

#[test]
fn clip_l_from_diffusers_folder_matches_transformers() {
    let encoder = load("clip_l", &files("clip_l/model.safetensors"), &hf(""));
    check("clip_l", &encoder, "HF folder");
}

#[test]
fn clip_g_from_diffusers_folder_matches_transformers() {
    let encoder = load("clip_g", &files("clip_g/model.safetensors"), &hf(""));
    check("clip_g", &encoder, "HF folder");
}

/// transformers >= 5 saves `CLIPTextModel` without the `text_model.` prefix.
#[test]
fn clip_l_saved_by_transformers_5_without_text_model_prefix_loads() {
    let tensors = Tensor::read_safetensors(fixture("clip_l/model.safetensors"))
        .expect("fixture weights")
        .into_iter()
        .map(|(n, t)| (n.trim_start_matches("text_model.").to_owned(), t));
    let source = SafetensorsFiles::from_tensors("flat clip_l", tensors);
    assert!(!source.contains("text_model.final_layer_norm.weight"));
    let encoder = load("clip_l", &source, &hf(""));
    check("clip_l", &encoder, "transformers 5 flat names");
}

#[test]
fn clip_l_from_sd15_single_file_matches_transformers() {
    let layout = hf("cond_stage_model.transformer.");
    let encoder = load("clip_l", &files("sd15.safetensors"), &layout);
    check("clip_l", &encoder, "SD 1.5 single file");
}

#[test]
fn sdxl_single_file_both_encoders_match_transformers() {
    let source = files("sdxl.safetensors");
    let clip_l = load(
        "clip_l",
        &source,
        &hf("conditioner.embedders.0.transformer."),
    );
    check("clip_l", &clip_l, "SDXL embedder 0");
    let open_clip = ClipLayout::OpenClip {
        prefix: "conditioner.embedders.1.model.".to_owned(),
    };
    let clip_g = load("clip_g", &source, &open_clip);
    check("clip_g", &clip_g, "SDXL embedder 1, OpenCLIP names");
}

#[test]
fn last_hidden_layer_before_final_norm_is_hidden_states_minus_one() {
    let encoder = load("clip_l", &files("clip_l/model.safetensors"), &hf(""));
    let ids = golden("clip_l", "input_ids");
    let out = encoder.forward(&ids, Some(1)).expect("forward");
    let raw = out.hidden_state.expect("hidden_states[-1] requested");
    assert!(
        (&raw - &out.last_hidden_state)
            .abs()
            .max()
            .double_value(&[])
            > 1e-2,
        "hidden_states[-1] must be the pre-LayerNorm state"
    );
    assert!(
        encoder.forward(&ids, Some(5)).is_err(),
        "3 layers → at most [-4]"
    );
    assert!(encoder.forward(&ids, Some(0)).is_err());
}

/// The fixture `file` with tensor `name` dropped (`None`) or replaced.
fn tampered(file: &str, name: &str, replace: Option<fn(&Tensor) -> Tensor>) -> SafetensorsFiles {
    let tensors = Tensor::read_safetensors(fixture(file))
        .expect("fixture weights")
        .into_iter()
        .filter_map(|(n, t)| match (n == name, replace) {
            (false, _) => Some((n, t)),
            (true, Some(f)) => Some((n, f(&t))),
            (true, None) => None,
        });
    SafetensorsFiles::from_tensors(&format!("tampered {file}"), tensors)
}

#[test]
fn missing_tensor_error_names_it() {
    let name = "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_bias";
    let source = tampered("sdxl.safetensors", name, None);
    let layout = ClipLayout::OpenClip {
        prefix: "conditioner.embedders.1.model.".to_owned(),
    };
    let error = ClipTextModel::load(
        config("clip_g"),
        &source,
        &layout,
        true,
        Device::Cpu,
        Kind::Float,
    )
    .expect_err("a missing tensor must fail the load");
    assert!(
        matches!(
            error,
            ClipError::Weights(WeightsError::MissingTensor { .. })
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains(name), "{error}");
}

#[test]
fn wrong_layout_prefix_names_the_first_missing_tensor() {
    let error = ClipTextModel::load(
        config("clip_l"),
        &files("sd15.safetensors"),
        &hf("conditioner.embedders.0.transformer."),
        false,
        Device::Cpu,
        Kind::Float,
    )
    .expect_err("wrong prefix");
    let message = error.to_string();
    assert!(
        message.contains(
            "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
        ),
        "{message}"
    );
    assert!(message.contains("sd15.safetensors"), "{message}");
}

#[test]
fn wrong_shape_error_names_tensor_and_shapes() {
    let name = "text_model.encoder.layers.2.mlp.fc1.weight";
    let source = tampered(
        "clip_l/model.safetensors",
        name,
        Some(|t: &Tensor| t.narrow(0, 0, t.size()[0] - 1)),
    );
    let error = ClipTextModel::load(
        config("clip_l"),
        &source,
        &hf(""),
        false,
        Device::Cpu,
        Kind::Float,
    )
    .expect_err("a wrong shape must fail the load");
    let message = error.to_string();
    assert!(
        matches!(error, ClipError::Weights(WeightsError::Shape { .. })),
        "{error:?}"
    );
    assert!(message.contains(name), "{message}");
    assert!(
        message.contains("[63, 32]") && message.contains("[64, 32]"),
        "{message}"
    );
}

#[test]
fn clip_l_config_without_projection_refuses_projection() {
    let mut config = config("clip_l");
    config.projection_dim = None;
    let error = ClipTextModel::load(
        config,
        &files("clip_l/model.safetensors"),
        &hf(""),
        true,
        Device::Cpu,
        Kind::Float,
    )
    .expect_err("no projection_dim");
    assert!(error.to_string().contains("projection_dim"), "{error}");
}
