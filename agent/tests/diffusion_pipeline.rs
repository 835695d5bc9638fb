//! The SD 1.5 and SDXL pipelines against diffusers on the demo models: the folders
//! `infermine-agent models synth` writes, rendered by diffusers' own pipelines in
//! `scripts/fixtures/diffusion_pipeline.py` (2–3 steps, every sampler, with and without
//! guidance and negative prompts, square and non-square).

mod common;

use std::path::Path;

use common::Fixtures;
use infermine_agent::engine::demo::synth;
use infermine_agent::engine::diffusion::clip_tokenizer::ClipTokenizer;
use infermine_agent::engine::diffusion::pipeline::sd::SdPipeline;
use infermine_agent::engine::diffusion::pipeline::{ImageRequest, PipelineError, Placement};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

const FIXTURES: Fixtures = Fixtures("pipeline");

fn cases() -> Value {
    let text = std::fs::read_to_string(FIXTURES.path("cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("cases.json parses")
}

fn request(case: &Value) -> ImageRequest {
    ImageRequest {
        prompt: case["prompt"]
            .as_str()
            .expect("cases.json is well formed")
            .to_owned(),
        negative_prompt: case["negative_prompt"].as_str().map(str::to_owned),
        width: case["width"].as_u64().expect("cases.json is well formed") as u32,
        height: case["height"].as_u64().expect("cases.json is well formed") as u32,
        steps: case["steps"].as_u64().expect("cases.json is well formed") as u32,
        guidance_scale: case["guidance_scale"]
            .as_f64()
            .expect("cases.json is well formed") as f32,
        seed: case["seed"].as_u64().expect("cases.json is well formed"),
        sampler: Some(
            case["sampler"]
                .as_str()
                .expect("cases.json is well formed")
                .parse()
                .expect("cases.json is well formed"),
        ),
    }
}

fn load(models: &Path, id: &str) -> SdPipeline {
    let dir = synth(id, models).expect("synth");
    SdPipeline::load_diffusers(&dir, Placement::for_device(Device::Cpu)).expect("load")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn every_case_renders_what_diffusers_renders() {
    let models = tempfile::tempdir().expect("succeeds");
    let pipes = [
        ("tiny-sd15", load(models.path(), "tiny-sd15")),
        ("tiny-sdxl", load(models.path(), "tiny-sdxl")),
    ];
    let cases = cases();
    let cases = cases["cases"].as_object().expect("succeeds");
    assert_eq!(cases.len(), 7);
    let mut failures = Vec::new();
    for (name, case) in cases {
        let model = case["model"].as_str().expect("cases.json is well formed");
        let pipe = &pipes
            .iter()
            .find(|(id, _)| *id == model)
            .expect("succeeds")
            .1;
        let request = request(case);
        let latents = pipe.denoise(&request, &|| false).expect("succeeds");
        let want = FIXTURES.golden(name, "latents");
        assert_eq!(latents.size(), want.size(), "{name}");
        // Relative to the latents' size: after the last step they are O(10).
        let scale = want.abs().max().double_value(&[]).max(1.0);
        let diff = max_abs_diff(&latents, &want) / scale;
        if diff >= 1e-5 {
            failures.push(format!("{name}: latents differ by {diff}"));
            continue;
        }
        let image = pipe.render(&request, &|| false).expect("succeeds");
        let want = FIXTURES.golden(name, "rgb8");
        assert_eq!(image.rgb.size(), want.size(), "{name}");
        assert_eq!(image.rgb.kind(), Kind::Uint8);
        let diff = max_abs_diff(&image.rgb, &want);
        if diff > 1.0 {
            failures.push(format!("{name}: pixels differ by {diff}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_tokenizers_give_the_reference_ids() {
    let models = tempfile::tempdir().expect("succeeds");
    let meta = cases();
    let prompts = meta["token_prompts"]
        .as_array()
        .expect("cases.json is well formed");
    for (model, tokenizers) in [
        ("tiny-sd15", &["tokenizer"][..]),
        ("tiny-sdxl", &["tokenizer", "tokenizer_2"][..]),
    ] {
        let dir = synth(model, models.path()).expect("succeeds");
        for name in tokenizers {
            let tokenizer = ClipTokenizer::from_dir(&dir.join(name)).expect("succeeds");
            for (i, prompt) in prompts.iter().enumerate() {
                let ids = tokenizer
                    .encode(prompt.as_str().expect("cases.json is well formed"))
                    .expect("cases.json is well formed");
                let want = FIXTURES.golden(&format!("tokens.{model}.{name}"), &i.to_string());
                assert_eq!(Tensor::from_slice(&ids), want, "{model} {name} prompt {i}");
            }
        }
    }
}

#[test]
fn a_cancelled_render_stops_between_steps() {
    let models = tempfile::tempdir().expect("succeeds");
    let pipe = load(models.path(), "tiny-sd15");
    let mut req = request(&cases()["cases"]["sd15_euler"]);
    req.steps = 5;
    let err = pipe.render(&req, &|| true).expect_err("is refused");
    assert!(matches!(err, PipelineError::Cancelled), "{err}");
}

#[test]
fn sizes_off_the_latent_grid_are_refused_before_any_work() {
    let models = tempfile::tempdir().expect("succeeds");
    let pipe = load(models.path(), "tiny-sd15");
    let mut req = request(&cases()["cases"]["sd15_euler"]);
    req.width = 60;
    let err = pipe.render(&req, &|| false).expect_err("is refused");
    assert!(err.to_string().contains("multiples of 8"), "{err}");
}

#[test]
fn the_same_seed_gives_the_same_image_and_another_seed_another() {
    let models = tempfile::tempdir().expect("succeeds");
    let pipe = load(models.path(), "tiny-sdxl");
    let req = request(&cases()["cases"]["sdxl_euler_a_negative"]);
    let a = pipe.render(&req, &|| false).expect("succeeds").rgb;
    let b = pipe.render(&req, &|| false).expect("succeeds").rgb;
    assert_eq!(a, b);
    let other = ImageRequest {
        seed: req.seed + 1,
        ..req
    };
    let c = pipe.render(&other, &|| false).expect("succeeds").rgb;
    assert!(max_abs_diff(&a, &c) > 10.0);
}
