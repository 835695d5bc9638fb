//! The image engine as a slot runs it: a model folder in, an image job's params in, a PNG out.
//! The folder holds a single-file SD 1.5 checkpoint (f16, original layout) and a kohya LoRA,
//! as miners download them; the golden images are diffusers' renders of the same weights
//! (`scripts/fixtures/diffusion_single_file.py`), without the LoRA and with it fused at 0.8.

mod common;

use std::path::Path;

use base64::Engine as _;
use common::Fixtures;
use infermine_agent::engine::demo::synth;
use infermine_agent::engine::diffusion::engine::{DiffusionEngine, ModelFiles};
use infermine_agent::engine::{CancelToken, Engine, EngineError, Precision};
use infermine_protocol::{ImageParams, JobAssignment, JobOutput, JobParams};
use serde_json::Value;
use tch::{Device, Tensor};

const FIXTURES: Fixtures = Fixtures("single_file");

fn case() -> Value {
    let text = std::fs::read_to_string(FIXTURES.path("case.json")).expect("case.json");
    serde_json::from_str(&text).expect("case.json is well formed")
}

fn params(lora_scale: Option<f32>) -> ImageParams {
    let case = case();
    let text = |k: &str| {
        case[k]
            .as_str()
            .expect("cases.json is well formed")
            .to_owned()
    };
    let number = |k: &str| case[k].as_u64().expect("cases.json is well formed");
    ImageParams {
        prompt: text("prompt"),
        negative_prompt: text("negative_prompt"),
        width: number("width") as u32,
        height: number("height") as u32,
        steps: number("steps") as u32,
        guidance_scale: case["guidance_scale"]
            .as_f64()
            .expect("cases.json is well formed") as f32,
        seed: number("seed"),
        scheduler: Some(text("sampler")),
        lora_scale,
    }
}

fn job(params: ImageParams) -> JobAssignment {
    JobAssignment {
        id: uuid::Uuid::now_v7(),
        model: "tiny-sd15-single".to_owned(),
        slot: 0,
        params: JobParams::Image(params),
        lease_ms: 60_000,
        attempt: 1,
        upload_url: None,
    }
}

/// The model folder: the fixture checkpoint, with or without its LoRA, and the tiny model's
/// configs in `config/` (a test model has no built-in configs).
fn folder(with_lora: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let synth_dir = tempfile::tempdir().expect("temp dir");
    let model = synth("tiny-sd15", synth_dir.path()).expect("synth");
    copy_configs(&model, &dir.path().join("config"));
    let mut names = vec!["tiny-sd15.safetensors"];
    if with_lora {
        names.push("tiny-lora.safetensors");
    }
    for name in names {
        std::fs::copy(
            FIXTURES.path(&format!("model/{name}")),
            dir.path().join(name),
        )
        .expect("copy fixture");
    }
    dir
}

/// Runs `params` and returns the PNG's pixels as `[h, w, 3]` u8 and its text chunk.
fn render(engine: &mut DiffusionEngine, params: ImageParams) -> (Tensor, String) {
    let output = engine
        .run(&job(params), &CancelToken::new(), &mut |_| {})
        .expect("renders");
    let JobOutput::Image {
        width,
        height,
        png_b64,
        ..
    } = output
    else {
        panic!("an image job returns an image, got {output:?}");
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(png_b64.expect("inline PNG"))
        .expect("base64");
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("size")];
    let frame = reader.next_frame(&mut pixels).expect("frame");
    assert_eq!((frame.width, frame.height), (width, height));
    let text = reader.info().utf8_text[0].get_text().expect("text chunk");
    let rgb = Tensor::from_slice(&pixels).view([i64::from(height), i64::from(width), 3]);
    (rgb, text)
}

/// Copies everything but the weights.
fn copy_configs(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_configs(&path, &target);
        } else if path.extension().is_none_or(|e| e != "safetensors") {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn load(dir: &Path) -> DiffusionEngine {
    DiffusionEngine::load("tiny-sd15-single", dir, Device::Cpu, Precision::Auto).expect("loads")
}

#[test]
fn a_single_file_checkpoint_renders_what_diffusers_renders() {
    let dir = folder(false);
    assert!(matches!(
        ModelFiles::detect(dir.path()).expect("detects"),
        ModelFiles::SingleFile { ref loras, ref config_dir, .. }
            if loras.is_empty() && config_dir.is_some()
    ));
    let mut engine = load(dir.path());
    let (rgb, text) = render(&mut engine, params(None));
    let diff = max_diff(&rgb, &FIXTURES.golden("plain", "rgb8"));
    assert!(diff <= 1.0, "pixels differ by {diff}");
    assert!(
        text.starts_with("a photo of a cat\nNegative prompt: blurry\nSteps: 2"),
        "{text}"
    );
    assert!(
        text.contains("Sampler: euler, CFG scale: 7.5, Seed: 42, Size: 64x64"),
        "{text}"
    );
    let err = engine
        .run(&job(params(Some(0.5))), &CancelToken::new(), &mut |_| {})
        .expect_err("no LoRA to scale");
    assert!(
        matches!(err, EngineError::InvalidParams(ref m) if m.contains("has no LoRA")),
        "{err}"
    );
}

#[test]
fn a_lora_beside_the_checkpoint_is_merged_at_the_requested_scale() {
    let dir = folder(true);
    let mut engine = load(dir.path());
    let (with_lora, _) = render(&mut engine, params(Some(0.8)));
    let diff = max_diff(&with_lora, &FIXTURES.golden("lora", "rgb8"));
    assert!(diff <= 1.0, "pixels differ by {diff}");
    let (off, _) = render(&mut engine, params(Some(0.0)));
    let diff = max_diff(&off, &FIXTURES.golden("plain", "rgb8"));
    assert!(
        diff <= 1.0,
        "scale 0 is the plain checkpoint; pixels differ by {diff}"
    );
    let err = engine
        .run(&job(params(Some(2.5))), &CancelToken::new(), &mut |_| {})
        .expect_err("out of range");
    assert!(err.to_string().contains("use 0 (off) to 2"), "{err}");
}

#[test]
fn folders_without_exactly_one_checkpoint_are_refused_with_the_reason() {
    let empty = tempfile::tempdir().expect("temp dir");
    let err = ModelFiles::detect(empty.path()).expect_err("no checkpoint");
    assert!(err.contains("has no checkpoint"), "{err}");
    let two = folder(false);
    std::fs::copy(
        FIXTURES.path("model/tiny-sd15.safetensors"),
        two.path().join("copy.safetensors"),
    )
    .expect("copy");
    let err = ModelFiles::detect(two.path()).expect_err("two checkpoints");
    assert!(
        err.contains("2 checkpoints") && err.contains("copy.safetensors"),
        "{err}"
    );
    let lora_only = tempfile::tempdir().expect("temp dir");
    std::fs::copy(
        FIXTURES.path("model/tiny-lora.safetensors"),
        lora_only.path().join("tiny-lora.safetensors"),
    )
    .expect("copy");
    assert!(ModelFiles::detect(lora_only.path()).is_err());
}

#[test]
fn a_file_that_is_not_an_image_checkpoint_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let llm = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion/t5");
    let file = std::fs::read_dir(&llm)
        .expect("t5 fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .expect("a safetensors fixture");
    std::fs::copy(&file, dir.path().join("model.safetensors")).expect("copy");
    let err =
        DiffusionEngine::load("x", dir.path(), Device::Cpu, Precision::Auto).expect_err("not SD");
    assert!(
        err.to_string()
            .contains("is not an SD 1.5, SDXL or Flux checkpoint"),
        "{err}"
    );
}

#[test]
fn a_flux_folder_renders_through_the_engine_with_its_flow_sampler() {
    let models = tempfile::tempdir().expect("temp dir");
    let dir = synth("tiny-flux", models.path()).expect("synth");
    let mut engine =
        DiffusionEngine::load("tiny-flux", &dir, Device::Cpu, Precision::Auto).expect("loads");
    let mut request = params(None);
    request.negative_prompt = String::new();
    request.scheduler = Some("flow_euler".to_owned());
    request.guidance_scale = 3.5;
    let (rgb, text) = render(&mut engine, request.clone());
    assert_eq!(rgb.size(), [64, 64, 3]);
    assert!(
        text.contains("Sampler: flow_euler, CFG scale: 3.5"),
        "{text}"
    );
    let err = engine
        .run(
            &job(ImageParams {
                scheduler: Some("euler".to_owned()),
                ..request
            }),
            &CancelToken::new(),
            &mut |_| {},
        )
        .expect_err("an SD sampler on Flux");
    assert!(matches!(err, EngineError::InvalidParams(_)), "{err}");
}

fn mean_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .mean(tch::Kind::Double)
        .double_value(&[])
}

/// `--precision bf16` reaches the image pipelines on the CPU too, and changes the image only
/// by rounding.
#[test]
fn bf16_renders_on_the_cpu_are_close_to_f32_renders() {
    let models = tempfile::tempdir().expect("temp dir");
    for id in ["tiny-sd15", "tiny-sdxl", "tiny-flux"] {
        let dir = synth(id, models.path()).expect("synth");
        let mut request = params(None);
        if id == "tiny-flux" {
            request.negative_prompt = String::new();
            request.scheduler = Some("flow_euler".to_owned());
            request.guidance_scale = 3.5;
        }
        let render_in = |precision| {
            let mut engine =
                DiffusionEngine::load(id, &dir, Device::Cpu, precision).expect("loads");
            render(&mut engine, request.clone()).0
        };
        let (f32, bf16) = (render_in(Precision::F32), render_in(Precision::Bf16));
        assert_eq!(
            render_in(Precision::Auto),
            f32,
            "{id}: f32 is the CPU default"
        );
        let (mean, max) = (mean_abs_diff(&f32, &bf16), max_diff(&f32, &bf16));
        eprintln!("{id}: bf16 vs f32 on the CPU: mean |Δ| {mean:.2}, max |Δ| {max} (of 255)");
        // Seen: 2.65 (SD 1.5), 1.46 (SDXL), 11.5 (Flux: the random demo transformer
        // amplifies rounding over its blocks far more than the UNets do).
        let bound = if id == "tiny-flux" { 20.0 } else { 4.0 };
        assert!(mean < bound, "{id}: mean |Δ| {mean}");
    }
}
