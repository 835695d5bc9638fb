//! kohya LoRAs merged at load time against diffusers' `load_lora_weights` + `fuse_lora`.
//!
//! `scripts/fixtures/diffusion_lora.py` wrote an SD 1.5-style LoRA (diffusers-path `lora_unet_`
//! modules, LoCon convs, `lora_te_`) and an SDXL-style one (LDM-path `lora_unet_` modules,
//! `lora_te1_`, `lora_te2_`) for the tiny UNet and CLIP fixtures, fused them in diffusers at scale
//! 0.7, and recorded the fused weights and outputs in `tests/fixtures/diffusion/lora/`. Merged
//! through [`LoraMerged`], every layout the loaders read (diffusers folders, SD 1.5 and SDXL
//! single files, bigG in OpenCLIP names) must reproduce them within 1e-4 on the CPU in f32.

mod common;

use common::Fixtures;
use infermine_agent::engine::diffusion::clip::{ClipLayout, ClipTextConfig, ClipTextModel};
use infermine_agent::engine::diffusion::lora::{
    LoraError, LoraFile, LoraMerged, LoraTarget, TextEncoderSlot,
};
use infermine_agent::engine::diffusion::unet::{AddedCond, UNet, UNetConfig, UNetLayout};
use infermine_agent::engine::diffusion::weights::{SafetensorsFiles, TensorSource};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;
const SCALE: f64 = 0.7;

const LORA: Fixtures = Fixtures("lora");
const UNET: Fixtures = Fixtures("unet");
const CLIP: Fixtures = Fixtures("clip");

fn lora(name: &str) -> LoraFile {
    LoraFile::read(&LORA.path(&format!("{name}.safetensors"))).expect("LoRA fixture")
}

fn lora_tensors(name: &str) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(LORA.path(&format!("{name}.safetensors"))).expect("LoRA fixture")
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let diff = (got - want).abs().max().double_value(&[]);
    assert!(diff <= TOLERANCE, "{what}: max abs difference {diff}");
}

fn unet_config(model: &str) -> UNetConfig {
    UNetConfig::from_file(&UNET.path(&format!("{model}/config.json"))).expect("config.json")
}

fn diffusers_unet(model: &str) -> (SafetensorsFiles, UNetLayout) {
    let files = UNET.files(&format!("{model}/diffusion_pytorch_model.safetensors"));
    let layout = UNetLayout::Diffusers {
        prefix: String::new(),
    };
    (files, layout)
}

fn single_file_unet(model: &str) -> (SafetensorsFiles, UNetLayout) {
    let files = UNET.files(&format!("{model}_single_file.safetensors"));
    let layout = UNetLayout::Ldm {
        prefix: "model.diffusion_model.".to_owned(),
    };
    (files, layout)
}

/// Loads the UNet from `base` through `loras`.
fn load_unet(
    model: &str,
    base: (SafetensorsFiles, UNetLayout),
    loras: &[(&LoraFile, f64)],
) -> UNet {
    let (files, layout) = base;
    let config = unet_config(model);
    let target = LoraTarget::UNet {
        config: &config,
        layout: &layout,
    };
    let merged = LoraMerged::new(&files, loras, target).expect("LoRA target");
    UNet::load(config.clone(), &merged, &layout, Device::Cpu, Kind::Float).expect("load")
}

/// Loads the UNet through `loras` and runs it on the UNet fixture's golden inputs.
fn unet_out(
    model: &str,
    base: (SafetensorsFiles, UNetLayout),
    loras: &[(&LoraFile, f64)],
) -> Tensor {
    let unet = load_unet(model, base, loras);
    let input = |what: &str| UNET.golden(model, what);
    let sdxl = (model == "sdxl").then(|| (input("text_embeds"), input("time_ids")));
    let added = sdxl.as_ref().map(|(text_embeds, time_ids)| AddedCond {
        text_embeds,
        time_ids,
    });
    let context = input("encoder_hidden_states");
    tch::no_grad(|| {
        unet.forward(
            &input("sample"),
            &input("timestep"),
            &context,
            added.as_ref(),
        )
    })
    .expect("forward")
}

/// Loads a text encoder through `loras` and checks its outputs against `<l>.<component>.*`.
fn check_clip(
    golden: (&str, &str),
    source: &dyn TensorSource,
    layout: ClipLayout,
    slot: TextEncoderSlot,
    loras: &[(&LoraFile, f64)],
) {
    let (name, component) = golden;
    let clip = if component == "text_encoder" {
        "clip_l"
    } else {
        "clip_g"
    };
    let config =
        ClipTextConfig::from_file(&CLIP.path(&format!("{clip}/config.json"))).expect("config");
    let target = LoraTarget::TextEncoder {
        slot,
        layout: &layout,
    };
    let merged = LoraMerged::new(source, loras, target).expect("LoRA target");
    let projection = clip == "clip_g";
    let encoder = ClipTextModel::load(
        config,
        &merged,
        &layout,
        projection,
        Device::Cpu,
        Kind::Float,
    )
    .expect("load");
    let out = encoder
        .forward(&CLIP.golden(clip, "input_ids"), Some(2))
        .expect("forward");
    let want = |what: &str| LORA.golden(name, &format!("{component}.{what}"));
    let at = |what: &str| format!("{name} {component} ({layout:?}) {what}");
    assert_close(
        &at("last_hidden_state"),
        &out.last_hidden_state,
        &want("last_hidden_state"),
    );
    let penultimate = out.hidden_state.expect("hidden_states[-2]");
    assert_close(&at("penultimate"), &penultimate, &want("penultimate"));
    if projection {
        let embeds = out.text_embeds.expect("text_embeds");
        assert_close(&at("text_embeds"), &embeds, &want("text_embeds"));
    }
}

fn hf(prefix: &str) -> ClipLayout {
    ClipLayout::HuggingFace {
        prefix: prefix.to_owned(),
    }
}

#[test]
fn merged_weights_equal_diffusers_fused_weights() {
    let golden = Tensor::read_safetensors(LORA.path("golden.safetensors")).expect("golden");
    let sources = [
        (
            "sd15.unet.",
            "sd15",
            UNET.files("sd15/diffusion_pytorch_model.safetensors"),
        ),
        (
            "sdxl.unet.",
            "sdxl",
            UNET.files("sdxl/diffusion_pytorch_model.safetensors"),
        ),
        (
            "sd15.text_encoder.",
            "sd15",
            CLIP.files("clip_l/model.safetensors"),
        ),
        (
            "sdxl.text_encoder.",
            "sdxl",
            CLIP.files("clip_l/model.safetensors"),
        ),
        (
            "sdxl.text_encoder_2.",
            "sdxl",
            CLIP.files("clip_g/model.safetensors"),
        ),
    ];
    let mut checked = 0;
    for (prefix, name, files) in &sources {
        let file = lora(name);
        let config = unet_config(name);
        let layout = UNetLayout::Diffusers {
            prefix: String::new(),
        };
        let clip_layout = hf("");
        let target = match *prefix {
            p if p.ends_with(".unet.") => LoraTarget::UNet {
                config: &config,
                layout: &layout,
            },
            p if p.ends_with("_2.") => LoraTarget::TextEncoder {
                slot: TextEncoderSlot::Second,
                layout: &clip_layout,
            },
            _ => LoraTarget::TextEncoder {
                slot: TextEncoderSlot::First,
                layout: &clip_layout,
            },
        };
        let merged = LoraMerged::new(files, &[(&file, SCALE)], target).expect("target");
        for (key, want) in &golden {
            let Some(weight) = key.strip_prefix(prefix).filter(|w| w.ends_with(".weight")) else {
                continue;
            };
            let got = merged.tensor(weight, &want.size()).expect("weight");
            assert_close(key, &got, want);
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} fused weights compared");
}

#[test]
fn sd15_lora_on_diffusers_folders_matches_diffusers() {
    let file = lora("sd15");
    let out = unet_out("sd15", diffusers_unet("sd15"), &[(&file, SCALE)]);
    assert_close("sd15 unet", &out, &LORA.golden("sd15", "unet.out"));
    let clip_l = CLIP.files("clip_l/model.safetensors");
    check_clip(
        ("sd15", "text_encoder"),
        &clip_l,
        hf(""),
        TextEncoderSlot::First,
        &[(&file, SCALE)],
    );
    file.check_applied().expect("every module merged once");
}

#[test]
fn sd15_lora_on_single_file_checkpoint_matches_diffusers() {
    let file = lora("sd15");
    let out = unet_out("sd15", single_file_unet("sd15"), &[(&file, SCALE)]);
    assert_close(
        "sd15 unet (LDM names)",
        &out,
        &LORA.golden("sd15", "unet.out"),
    );
    let single = CLIP.files("sd15.safetensors");
    let layout = hf("cond_stage_model.transformer.");
    check_clip(
        ("sd15", "text_encoder"),
        &single,
        layout,
        TextEncoderSlot::First,
        &[(&file, SCALE)],
    );
    file.check_applied().expect("every module merged once");
}

#[test]
fn sdxl_lora_on_diffusers_folders_matches_diffusers() {
    let file = lora("sdxl");
    let out = unet_out("sdxl", diffusers_unet("sdxl"), &[(&file, SCALE)]);
    assert_close("sdxl unet", &out, &LORA.golden("sdxl", "unet.out"));
    let loras = [(&file, SCALE)];
    let clip_l = CLIP.files("clip_l/model.safetensors");
    check_clip(
        ("sdxl", "text_encoder"),
        &clip_l,
        hf(""),
        TextEncoderSlot::First,
        &loras,
    );
    let clip_g = CLIP.files("clip_g/model.safetensors");
    check_clip(
        ("sdxl", "text_encoder_2"),
        &clip_g,
        hf(""),
        TextEncoderSlot::Second,
        &loras,
    );
    file.check_applied().expect("every module merged once");
}

#[test]
fn sdxl_lora_on_single_file_checkpoint_with_open_clip_big_g_matches_diffusers() {
    let file = lora("sdxl");
    let out = unet_out("sdxl", single_file_unet("sdxl"), &[(&file, SCALE)]);
    assert_close(
        "sdxl unet (LDM names)",
        &out,
        &LORA.golden("sdxl", "unet.out"),
    );
    let loras = [(&file, SCALE)];
    let single = CLIP.files("sdxl.safetensors");
    let clip_l = hf("conditioner.embedders.0.transformer.");
    check_clip(
        ("sdxl", "text_encoder"),
        &single,
        clip_l,
        TextEncoderSlot::First,
        &loras,
    );
    let open_clip = ClipLayout::OpenClip {
        prefix: "conditioner.embedders.1.model.".to_owned(),
    };
    check_clip(
        ("sdxl", "text_encoder_2"),
        &single,
        open_clip,
        TextEncoderSlot::Second,
        &loras,
    );
    file.check_applied().expect("every module merged once");
}

#[test]
fn scale_zero_leaves_the_model_unchanged() {
    let file = lora("sdxl");
    let out = unet_out("sdxl", single_file_unet("sdxl"), &[(&file, 0.0)]);
    let base = unet_out("sdxl", single_file_unet("sdxl"), &[]);
    assert_eq!((&out - &base).abs().max().double_value(&[]), 0.0);
    assert_close("scale 0 vs base", &out, &UNET.golden("sdxl", "out"));
}

#[test]
fn two_loras_on_one_weight_add_up() {
    let (a, b) = (lora("sd15"), lora("sd15"));
    let out = unet_out(
        "sd15",
        single_file_unet("sd15"),
        &[(&a, 0.25), (&b, SCALE - 0.25)],
    );
    assert_close("0.25 + 0.45", &out, &LORA.golden("sd15", "unet.out"));
}

#[test]
fn alpha_defaults_to_the_rank() {
    let module = "lora_unet_down_blocks_0_resnets_0_conv1";
    let rank = lora_tensors("sd15")
        .into_iter()
        .find_map(|(k, t)| (k == format!("{module}.lora_down.weight")).then(|| t.size()[0]))
        .expect("module");
    let with = |alpha: Option<f64>| {
        let tensors = lora_tensors("sd15").into_iter().filter_map(|(k, t)| {
            match (k == format!("{module}.alpha"), alpha) {
                (false, _) => Some((k, t)),
                (true, Some(a)) => Some((k, Tensor::from(a as f32))),
                (true, None) => None,
            }
        });
        LoraFile::from_tensors("sd15 edited", tensors).expect("valid LoRA")
    };
    let (missing, explicit) = (with(None), with(Some(rank as f64)));
    let out_missing = unet_out("sd15", diffusers_unet("sd15"), &[(&missing, SCALE)]);
    let out_explicit = unet_out("sd15", diffusers_unet("sd15"), &[(&explicit, SCALE)]);
    assert_eq!(
        (&out_missing - &out_explicit).abs().max().double_value(&[]),
        0.0
    );
    let out_file = unet_out("sd15", diffusers_unet("sd15"), &[(&lora("sd15"), SCALE)]);
    assert!((&out_file - &out_missing).abs().max().double_value(&[]) > 1e-3);
}

#[test]
fn modules_no_component_merged_are_reported_with_the_probable_base() {
    let file = lora("sd15");
    load_unet("sd15", diffusers_unet("sd15"), &[(&file, SCALE)]);
    let unused = file.unused_keys();
    assert_eq!(unused.len(), 6, "{unused:?}");
    assert!(
        unused.iter().all(|k| k.starts_with("lora_te_")),
        "{unused:?}"
    );
    let message = file
        .check_applied()
        .expect_err("text encoder modules unused")
        .to_string();
    assert!(message.contains(&format!("`{}`", unused[0])), "{message}");
    assert!(
        message.contains("6 module(s)") && message.contains("SD 1.5"),
        "{message}"
    );
}

#[test]
fn a_lora_for_another_base_is_refused_naming_its_modules_and_base() {
    let mut tensors = Vec::new();
    for module in ["double_blocks_0_img_attn_qkv", "single_blocks_3_linear1"] {
        let key = format!("lora_unet_{module}");
        tensors.push((
            format!("{key}.lora_down.weight"),
            Tensor::ones([2, 8], (Kind::Float, Device::Cpu)),
        ));
        tensors.push((
            format!("{key}.lora_up.weight"),
            Tensor::ones([8, 2], (Kind::Float, Device::Cpu)),
        ));
    }
    let flux = LoraFile::from_tensors("flux-style.safetensors", tensors).expect("kohya layout");
    load_unet("sd15", diffusers_unet("sd15"), &[(&flux, 1.0)]);
    let message = flux
        .check_applied()
        .expect_err("nothing matched")
        .to_string();
    assert!(
        message.contains("`lora_unet_double_blocks_0_img_attn_qkv`"),
        "{message}"
    );
    assert!(message.contains("made for Flux"), "{message}");

    let sdxl = lora("sdxl");
    let config = unet_config("sd15");
    let (files, layout) = diffusers_unet("sd15");
    let target = LoraTarget::UNet {
        config: &config,
        layout: &layout,
    };
    let merged = LoraMerged::new(&files, &[(&sdxl, SCALE)], target).expect("target");
    let message = match UNet::load(config.clone(), &merged, &layout, Device::Cpu, Kind::Float) {
        Err(e) => e.to_string(),
        Ok(_) => sdxl.check_applied().expect_err("SDXL modules").to_string(),
    };
    assert!(message.contains("SDXL"), "{message}");
}

fn refused(keys: &[&str]) -> String {
    let tensors = keys.iter().map(|k| {
        (
            k.to_string(),
            Tensor::ones([2, 4], (Kind::Float, Device::Cpu)),
        )
    });
    match LoraFile::from_tensors("odd.safetensors", tensors) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{keys:?} must be refused"),
    }
}

#[test]
fn unsupported_kinds_are_refused_with_the_reason() {
    let cases = [
        ("lora_unet_conv_in.hada_w1_a", "LoHa"),
        ("lora_unet_conv_in.lokr_w1", "LoKr"),
        ("lora_unet_conv_in.dora_scale", "DoRA"),
        ("lora_unet_conv_in.lora_mid.weight", "Tucker"),
        (
            "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight",
            "PEFT",
        ),
        (
            "lora_transformer_blocks_0_attn_to_q.lora_down.weight",
            "lora_unet_",
        ),
    ];
    for (key, kind) in cases {
        let message = refused(&[key]);
        assert!(
            message.contains(kind) && message.contains("kohya"),
            "{key}: {message}"
        );
        assert!(message.contains("odd.safetensors"), "{message}");
    }
    let message = refused(&["lora_unet_conv_in.lora_down.weight"]);
    assert!(
        message.contains("malformed") && message.contains("lora_up"),
        "{message}"
    );
}

#[test]
fn a_scale_that_is_not_a_number_is_refused() {
    let file = lora("sd15");
    let (files, layout) = diffusers_unet("sd15");
    let config = unet_config("sd15");
    let target = LoraTarget::UNet {
        config: &config,
        layout: &layout,
    };
    let error = LoraMerged::new(&files, &[(&file, f64::NAN)], target).expect_err("NaN scale");
    assert!(matches!(error, LoraError::Scale { .. }), "{error:?}");
}
