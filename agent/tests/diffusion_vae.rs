//! The VAE decoder against diffusers' `AutoencoderKL`.
//!
//! `scripts/fixtures/diffusion_vae.py` built a tiny SD-like VAE (post_quant_conv) and a tiny
//! Flux-like one (16 latent channels, no post_quant_conv, shift_factor), saved their decode
//! paths in the diffusers folder layout and in the LDM single-file layout (`first_stage_model.`
//! for SD, no prefix for Flux's `ae.safetensors`), and recorded diffusers' decode of fixed
//! latents and the RGB8 pixels its `VaeImageProcessor` makes of them in
//! `tests/fixtures/diffusion/vae/`. Every layout must reproduce the decode within 1e-4 on the
//! CPU in f32, and the pixels exactly.

mod common;

use std::path::PathBuf;

use common::Fixtures;
use infermine_agent::engine::diffusion::vae::{
    VaeConfig, VaeDecoder, VaeError, VaeLayout, to_rgb8,
};
use infermine_agent::engine::diffusion::weights::{SafetensorsFiles, TensorSource, WeightsError};
use infermine_agent::engine::llm::weights::Weights;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

const FIXTURES: Fixtures = Fixtures("vae");

fn fixture(name: &str) -> PathBuf {
    FIXTURES.path(name)
}

fn config(model: &str) -> VaeConfig {
    VaeConfig::from_file(&fixture(&format!("{model}/config.json"))).expect("config.json")
}

fn files(name: &str) -> SafetensorsFiles {
    FIXTURES.files(name)
}

fn diffusers() -> VaeLayout {
    VaeLayout::Diffusers {
        prefix: String::new(),
    }
}

fn ldm(prefix: &str) -> VaeLayout {
    VaeLayout::Ldm {
        prefix: prefix.to_owned(),
    }
}

fn load(model: &str, source: &dyn TensorSource, layout: &VaeLayout) -> VaeDecoder {
    VaeDecoder::load(config(model), source, layout, Device::Cpu, Kind::Float).expect("load")
}

fn golden(model: &str, what: &str) -> Tensor {
    FIXTURES.golden(model, what)
}

/// Decodes the golden latents and checks the image and its pixels.
fn check(model: &str, vae: &VaeDecoder, layout: &str) {
    let image = tch::no_grad(|| vae.latents_to_image(&golden(model, "latents"))).expect("decode");
    let want = golden(model, "decoded");
    assert_eq!(image.size(), want.size(), "{model} ({layout}): shape");
    let diff = (&image - &want).abs().max().double_value(&[]);
    assert!(
        diff <= TOLERANCE,
        "{model} ({layout}): max abs difference {diff}"
    );
    let rgb8 = to_rgb8(&image).expect("rgb8");
    let want = golden(model, "rgb8");
    assert_eq!(rgb8.size(), want.size(), "{model} ({layout}): rgb8 shape");
    let off = rgb8.ne_tensor(&want).sum(Kind::Int64).int64_value(&[]);
    assert_eq!(off, 0, "{model} ({layout}): {off} pixel values differ");
}

#[test]
fn sd_from_diffusers_folder_matches_diffusers() {
    let vae = load(
        "sd",
        &files("sd/diffusion_pytorch_model.safetensors"),
        &diffusers(),
    );
    check("sd", &vae, "diffusers folder");
}

#[test]
fn sd_from_single_file_ldm_layout_matches_diffusers() {
    let vae = load(
        "sd",
        &files("sd_single_file.safetensors"),
        &ldm("first_stage_model."),
    );
    check("sd", &vae, "SD single file");
}

#[test]
fn sd_single_file_memory_mapped_matches_diffusers() {
    let path = fixture("sd_single_file.safetensors");
    let mapped = Weights::open_files(&[path.as_path()]).expect("map the checkpoint");
    let vae = load("sd", &mapped, &ldm("first_stage_model."));
    check("sd", &vae, "SD single file, memory-mapped");
    let missing = mapped
        .tensor("first_stage_model.decoder.nope.weight", &[1])
        .expect_err("absent");
    assert!(missing.to_string().contains("decoder.nope"), "{missing}");
}

#[test]
fn flux_from_diffusers_folder_matches_diffusers() {
    let vae = load(
        "flux",
        &files("flux/diffusion_pytorch_model.safetensors"),
        &diffusers(),
    );
    check("flux", &vae, "diffusers folder");
}

#[test]
fn flux_from_ae_ldm_layout_matches_diffusers() {
    let vae = load("flux", &files("flux_ae.safetensors"), &ldm(""));
    check("flux", &vae, "Flux ae.safetensors");
}

#[test]
fn configs_read_the_scaling_the_pipelines_apply() {
    let (sd, flux) = (config("sd"), config("flux"));
    assert_eq!((sd.scaling_factor, sd.shift_factor), (0.18215, None));
    assert!(sd.use_post_quant_conv && sd.force_upcast);
    assert_eq!(
        (flux.scaling_factor, flux.shift_factor),
        (0.3611, Some(0.1159))
    );
    assert!(!flux.use_post_quant_conv);
    assert!(VaeConfig::from_json(r#"{"latent_channels": 4, "block_out_channels": [48]}"#).is_err());
}

/// Renames tensors of a fixture file.
fn renamed(file: &str, rename: impl Fn(&str) -> Option<String>) -> SafetensorsFiles {
    let tensors = Tensor::read_safetensors(fixture(file))
        .expect("fixture weights")
        .into_iter()
        .filter_map(|(n, t)| rename(&n).map(|n| (n, t)));
    SafetensorsFiles::from_tensors(&format!("edited {file}"), tensors)
}

/// diffusers before 0.14 (and many Hub `vae/` files) name the attention `query`, `key`,
/// `value`, `proj_attn`.
#[test]
fn legacy_diffusers_attention_names_load() {
    let source = renamed("sd/diffusion_pytorch_model.safetensors", |n| {
        Some(
            n.replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn."),
        )
    });
    assert!(source.contains("decoder.mid_block.attentions.0.query.weight"));
    check(
        "sd",
        &load("sd", &source, &diffusers()),
        "legacy attention names",
    );
}

#[test]
fn missing_tensor_error_names_it() {
    let name = "first_stage_model.decoder.up.0.block.0.nin_shortcut.bias";
    let source = renamed("sd_single_file.safetensors", |n| {
        (n != name).then(|| n.to_owned())
    });
    let error = VaeDecoder::load(
        config("sd"),
        &source,
        &ldm("first_stage_model."),
        Device::Cpu,
        Kind::Float,
    )
    .expect_err("a missing tensor must fail the load");
    assert!(
        matches!(error, VaeError::Files(WeightsError::MissingTensor { .. })),
        "{error:?}"
    );
    assert!(error.to_string().contains(name), "{error}");
}

#[test]
fn flux_config_with_sd_weights_reports_the_shape() {
    let error = VaeDecoder::load(
        config("flux"),
        &files("sd/diffusion_pytorch_model.safetensors"),
        &diffusers(),
        Device::Cpu,
        Kind::Float,
    )
    .expect_err("16 latent channels against 4");
    assert!(
        matches!(error, VaeError::Files(WeightsError::Shape { .. })),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("decoder.conv_in.weight"),
        "{error}"
    );
}

#[test]
fn latents_with_the_wrong_channels_are_refused() {
    let vae = load(
        "sd",
        &files("sd/diffusion_pytorch_model.safetensors"),
        &diffusers(),
    );
    let latents = Tensor::zeros([1, 16, 8, 8], (Kind::Float, Device::Cpu));
    let error = vae
        .decode(&latents)
        .expect_err("16 channels into a 4-channel VAE");
    assert!(matches!(error, VaeError::Input(_)), "{error:?}");
}

/// Out-of-range values clamp to 0 and 255; mid-grey 127.5 rounds to 128 as `np.round` does.
#[test]
fn rgb8_clamps_out_of_range_values() {
    let image = Tensor::from_slice(&[-3.0f32, 3.0, -1.0, 1.0, 0.0, 0.0]).view([1, 1, 2, 3]);
    let rgb8 = to_rgb8(&image).expect("rgb8");
    assert_eq!(rgb8.size(), [1, 2, 3, 1]);
    let values = Vec::<u8>::try_from(rgb8.flatten(0, -1)).expect("u8");
    assert_eq!(values, [0, 255, 0, 255, 128, 128]);
}
