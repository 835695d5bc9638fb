//! The SD 1.5, SDXL and Flux pipelines against diffusers on the demo models: the folders
//! `infermine-agent models synth` writes, rendered by diffusers' own pipelines in
//! `scripts/fixtures/diffusion_pipeline.py` (2–3 steps, every sampler, with and without
//! guidance and negative prompts, square and non-square), and tiny-flux written as one
//! checkpoint in the layout of the NF4 Flux file miners download (NF4 transformer, fp8 T5),
//! rendered by diffusers from the values that file holds.

mod common;

use std::path::Path;

use common::Fixtures;
use infermine_agent::engine::demo::synth;
use infermine_agent::engine::diffusion::clip_tokenizer::ClipTokenizer;
use infermine_agent::engine::diffusion::pipeline::flux::{FluxConfigs, FluxPipeline};
use infermine_agent::engine::diffusion::pipeline::sd::SdPipeline;
use infermine_agent::engine::diffusion::pipeline::{
    ImageRequest, PipelineError, Placement, RenderedImage,
};
use infermine_agent::engine::diffusion::pipeline::{flux_single_file, single_file};
use infermine_agent::engine::diffusion::t5::T5Tokenizer;
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
        sampler: case["sampler"]
            .as_str()
            .map(|s| s.parse().expect("cases.json is well formed")),
    }
}

/// A loaded demo pipeline of either kind.
enum Pipeline {
    Sd(Box<SdPipeline>),
    Flux(Box<FluxPipeline>),
}

impl Pipeline {
    fn denoise(&self, request: &ImageRequest) -> Result<Tensor, PipelineError> {
        match self {
            Self::Sd(p) => p.denoise(request, &|| false),
            Self::Flux(p) => p.denoise(request, &|| false),
        }
    }

    fn render(&self, request: &ImageRequest) -> Result<RenderedImage, PipelineError> {
        match self {
            Self::Sd(p) => p.render(request, &|| false),
            Self::Flux(p) => p.render(request, &|| false),
        }
    }
}

fn load(models: &Path, id: &str) -> SdPipeline {
    let dir = synth(id, models).expect("synth");
    SdPipeline::load_diffusers(&dir, Placement::for_device(Device::Cpu)).expect("load")
}

fn load_flux(models: &Path) -> FluxPipeline {
    let dir = synth("tiny-flux", models).expect("synth");
    FluxPipeline::load_diffusers(&dir, Placement::for_flux(Device::Cpu)).expect("load")
}

/// Checks `pipe`'s latents and image for `case` against the golden `<prefix><name>.*`; returns
/// what differs.
fn compare(pipe: &Pipeline, prefix: &str, name: &str, case: &Value) -> Option<String> {
    let request = request(case);
    let latents = pipe.denoise(&request).expect("succeeds");
    let want = FIXTURES.golden(&format!("{prefix}{name}"), "latents");
    assert_eq!(latents.size(), want.size(), "{name}");
    // Relative to the latents' size: after the last step they are O(10).
    let scale = want.abs().max().double_value(&[]).max(1.0);
    let diff = max_abs_diff(&latents, &want) / scale;
    if diff >= 1e-5 {
        return Some(format!("{prefix}{name}: latents differ by {diff}"));
    }
    let image = pipe.render(&request).expect("succeeds");
    let want = FIXTURES.golden(&format!("{prefix}{name}"), "rgb8");
    assert_eq!(image.rgb.size(), want.size(), "{name}");
    assert_eq!(image.rgb.kind(), Kind::Uint8);
    let diff = max_abs_diff(&image.rgb, &want);
    (diff > 1.0).then(|| format!("{prefix}{name}: pixels differ by {diff}"))
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
        (
            "tiny-sd15",
            Pipeline::Sd(Box::new(load(models.path(), "tiny-sd15"))),
        ),
        (
            "tiny-sdxl",
            Pipeline::Sd(Box::new(load(models.path(), "tiny-sdxl"))),
        ),
        (
            "tiny-flux",
            Pipeline::Flux(Box::new(load_flux(models.path()))),
        ),
    ];
    let cases = cases();
    let cases = cases["cases"].as_object().expect("succeeds");
    assert_eq!(cases.len(), 10);
    let mut failures = Vec::new();
    for (name, case) in cases {
        let model = case["model"].as_str().expect("cases.json is well formed");
        let pipe = &pipes
            .iter()
            .find(|(id, _)| *id == model)
            .expect("succeeds")
            .1;
        failures.extend(compare(pipe, "", name, case));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_nf4_single_file_renders_what_diffusers_renders_from_its_values() {
    let models = tempfile::tempdir().expect("succeeds");
    let meta = cases();
    let spec = &meta["single_file"];
    let model = spec["model"].as_str().expect("cases.json is well formed");
    let dir = synth(model, models.path()).expect("synth");
    let (configs, tokenizers) = FluxConfigs::from_diffusers(&dir).expect("succeeds");
    let file = spec["file"].as_str().expect("cases.json is well formed");
    let weights = single_file::open(&FIXTURES.path(file)).expect("opens");
    assert!(flux_single_file::is_flux(&weights));
    assert_eq!(single_file::detect_family(&weights), None, "not an SD file");
    let pipe = FluxPipeline::load_single_file_with(
        &weights,
        file,
        configs,
        tokenizers,
        Placement::for_flux(Device::Cpu),
    )
    .expect("loads");
    let pipe = Pipeline::Flux(Box::new(pipe));
    let mut failures = Vec::new();
    for name in spec["cases"].as_array().expect("cases.json is well formed") {
        let name = name.as_str().expect("cases.json is well formed");
        failures.extend(compare(&pipe, "single_file.", name, &meta["cases"][name]));
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
        ("tiny-flux", &["tokenizer"][..]),
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
fn the_demo_t5_tokenizer_gives_the_reference_ids() {
    let models = tempfile::tempdir().expect("succeeds");
    let meta = cases();
    let dir = synth("tiny-flux", models.path()).expect("succeeds");
    let tokenizer =
        T5Tokenizer::from_file(&dir.join("tokenizer_2/tokenizer.json"), 32).expect("loads");
    let prompts = meta["token_prompts"]
        .as_array()
        .expect("cases.json is well formed");
    for (i, prompt) in prompts.iter().enumerate() {
        let ids = tokenizer
            .encode(prompt.as_str().expect("cases.json is well formed"))
            .expect("encodes");
        let want = FIXTURES.golden("tokens.tiny-flux.tokenizer_2", &i.to_string());
        assert_eq!(Tensor::from_slice(&ids), want, "prompt {i}");
    }
    let pipe = load_flux(models.path());
    assert_eq!(pipe.max_sequence_length(), 32, "from tokenizer_config.json");
}

#[test]
fn flux_refuses_negative_prompts_sd_samplers_and_sizes_off_its_grid() {
    let models = tempfile::tempdir().expect("succeeds");
    let pipe = load_flux(models.path());
    let base = request(&cases()["cases"]["flux_square"]);
    let refused = |req: ImageRequest| {
        pipe.render(&req, &|| false)
            .expect_err("is refused")
            .to_string()
    };
    let err = refused(ImageRequest {
        negative_prompt: Some("blurry".to_owned()),
        ..base.clone()
    });
    assert!(err.contains("negative prompt"), "{err}");
    let err = refused(ImageRequest {
        sampler: Some("euler".parse().expect("a sampler")),
        ..base.clone()
    });
    assert!(err.contains("flow_euler"), "{err}");
    let err = refused(ImageRequest {
        width: 72,
        ..base.clone()
    });
    assert!(err.contains("multiples of 16"), "{err}");
    let empty = ImageRequest {
        negative_prompt: Some(String::new()),
        steps: 1,
        ..base
    };
    let latents = pipe
        .denoise(&empty, &|| false)
        .expect("an empty negative prompt is no negative prompt");
    assert_eq!(latents.size(), [1, 16, 8, 8]);
    let err = pipe
        .render(&request(&cases()["cases"]["flux_square"]), &|| true)
        .expect_err("is cancelled");
    assert!(matches!(err, PipelineError::Cancelled), "{err}");
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
