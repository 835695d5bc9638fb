//! Speed of the SD 1.5 / SDXL pipeline on the CPU: text encoding, denoising steps, VAE decode.
//!
//! ```sh
//! cargo run --release -p infermine-agent --example diffusion_bench -- \
//!     --model DIR --width 256 --height 256 --steps 20 --sampler euler --repeats 5 [--threads N]
//! ```
//!
//! `DIR` is a diffusers pipeline folder (`model_index.json`, `tokenizer*/`, `text_encoder*/`,
//! `unet/`, `vae/`, `scheduler/`), loaded on the CPU in f32. Every run renders the same request:
//! `--prompt`, `--negative-prompt`, size, `--steps`, `--guidance`, `--seed`, `--sampler`
//! (the pipeline's default when omitted). `bench/diffusion_vs_diffusers.py` gives diffusers the
//! same request and times the same phases.
//!
//! A first run goes through `SdPipeline::render`, warms up and is not counted; its image is the
//! reference the measured runs must reproduce. Each measured run is `SdPipeline::denoise`
//! followed by the decode `render` does (`VaeDecoder::latents_to_image`, then `to_rgb8`), with
//! the phases split at the points the pipeline exposes: the cancellation callback, which
//! `denoise` polls before every step.
//! - **text**: from the call to the first poll: tokenizing, the text encoders, the scheduler's
//!   tables and the initial noise;
//! - **steps**: from the first poll to `denoise`'s return; each step is the UNet on the
//!   (guided) batch, the guidance combination and the sampler's step;
//! - **decode**: the VAE decoder and the rounding to RGB8;
//! - **image**: all of the above.
//!
//! The medians of the `--repeats` runs are reported. Human-readable lines come first (one as
//! the warm-up ends and one as each run ends, so that a caller reading them as they come can
//! tell which run a disturbance fell on), and the last line is one JSON object
//! (`{"engine":"infermine", ...}`). `--image-out FILE` writes the
//! image as raw RGB8 bytes (`[height, width, 3]`), for comparison with diffusers'.

// A benchmark's result is what it prints.
#![allow(clippy::print_stdout)]

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use infermine_agent::engine::diffusion::pipeline::sd::{SdFamily, SdPipeline};
use infermine_agent::engine::diffusion::pipeline::{ImageRequest, Placement, component_weights};
use infermine_agent::engine::diffusion::scheduler::SamplerKind;
use infermine_agent::engine::diffusion::vae::{VaeConfig, VaeDecoder, VaeLayout, to_rgb8};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Parser)]
#[command(about = "Text-to-image speed of the SD 1.5 / SDXL pipeline on the CPU (f32)")]
struct Args {
    /// diffusers pipeline folder.
    #[arg(long)]
    model: PathBuf,
    #[arg(
        long,
        default_value = "a photo of an astronaut riding a horse on the moon"
    )]
    prompt: String,
    /// Omitted: the pipeline's default (SD 1.5: `""`; SDXL: zeros).
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Pixels; a multiple of 8.
    #[arg(long, default_value_t = 256)]
    width: u32,
    #[arg(long, default_value_t = 256)]
    height: u32,
    #[arg(long, default_value_t = 20)]
    steps: u32,
    /// Classifier-free guidance scale; at 1 or below the UNet runs on one latent, not two.
    #[arg(long, default_value_t = 7.5)]
    guidance: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// euler, euler_a, dpmpp_2m_karras or ddim (default: the pipeline's).
    #[arg(long)]
    sampler: Option<SamplerKind>,
    /// Measured runs after the warm-up; medians are reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// libtorch intra-op threads (default: libtorch's own choice).
    #[arg(long)]
    threads: Option<i32>,
    /// Also write the image here as raw RGB8 bytes, `[height, width, 3]`.
    #[arg(long)]
    image_out: Option<PathBuf>,
}

/// One run's phases, in seconds.
struct Run {
    text_s: f64,
    steps_s: f64,
    step_s: Vec<f64>,
    decode_s: f64,
    image_s: f64,
    rgb: Tensor,
}

fn run_once(pipe: &SdPipeline, vae: &VaeDecoder, request: &ImageRequest) -> anyhow::Result<Run> {
    let polls = RefCell::new(Vec::with_capacity(request.steps as usize));
    let poll = || {
        polls.borrow_mut().push(Instant::now());
        false
    };
    let start = Instant::now();
    let latents = pipe.denoise(request, &poll)?;
    let denoised = Instant::now();
    let image = vae.latents_to_image(&latents)?;
    let rgb = to_rgb8(&image)?.get(0);
    let end = Instant::now();
    let mut marks = polls.into_inner();
    anyhow::ensure!(
        marks.len() == request.steps as usize,
        "denoise polled {} times for {} steps",
        marks.len(),
        request.steps
    );
    let first = *marks.first().context("at least one step")?;
    marks.push(denoised);
    let step_s = marks
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64())
        .collect();
    Ok(Run {
        text_s: first.duration_since(start).as_secs_f64(),
        steps_s: denoised.duration_since(first).as_secs_f64(),
        step_s,
        decode_s: end.duration_since(denoised).as_secs_f64(),
        image_s: end.duration_since(start).as_secs_f64(),
        rgb,
    })
}

/// Run `i`, printed as soon as it ends.
fn measured_run(
    i: usize,
    pipe: &SdPipeline,
    vae: &VaeDecoder,
    request: &ImageRequest,
) -> anyhow::Result<Run> {
    let run = run_once(pipe, vae, request)?;
    println!(
        "run {i}: text {:8.2} ms   steps {:9.2} ms ({:8.2} ms/step)   decode {:8.2} ms   \
         image {:9.2} ms",
        run.text_s * 1e3,
        run.steps_s * 1e3,
        run.steps_s * 1e3 / f64::from(request.steps),
        run.decode_s * 1e3,
        run.image_s * 1e3,
    );
    Ok(run)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The decoder `render` uses, loaded a second time so that decoding can be timed on its own.
fn load_vae(model: &std::path::Path) -> anyhow::Result<VaeDecoder> {
    let dir = model.join("vae");
    let config = VaeConfig::from_file(&dir.join("config.json"))?;
    let weights = component_weights(&dir)?;
    let layout = VaeLayout::Diffusers {
        prefix: String::new(),
    };
    Ok(VaeDecoder::load(
        config,
        &weights,
        &layout,
        Device::Cpu,
        Kind::Float,
    )?)
}

fn request(args: &Args) -> ImageRequest {
    ImageRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        width: args.width,
        height: args.height,
        steps: args.steps,
        guidance_scale: args.guidance,
        seed: args.seed,
        sampler: args.sampler,
    }
}

fn check_args(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.steps > 0, "--steps must be at least 1");
    anyhow::ensure!(args.repeats > 0, "--repeats must be at least 1");
    if let Some(n) = args.threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        tch::set_num_threads(n);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    check_args(&args)?;
    let _no_grad = tch::no_grad_guard();

    let started = Instant::now();
    let pipe = SdPipeline::load_diffusers(&args.model, Placement::for_device(Device::Cpu))?;
    let vae = load_vae(&args.model)?;
    let load_s = started.elapsed().as_secs_f64();
    let threads = tch::get_num_threads();
    let request = request(&args);
    let sampler = args.sampler.unwrap_or(pipe.default_sampler());
    let family = match pipe.family() {
        SdFamily::Sd15 => "SD 1.5",
        SdFamily::Sdxl => "SDXL",
    };
    println!("model {} ({family})", args.model.display());
    println!(
        "loaded in {load_s:.2} s; cpu f32, {threads} threads; {}x{}, {} steps, {sampler}, \
         guidance {}, seed {}, {} repeats",
        args.width, args.height, args.steps, args.guidance, args.seed, args.repeats
    );

    let warm_start = Instant::now();
    let warm = pipe.render(&request, &|| false)?;
    println!(
        "warm-up: image {:.2} ms",
        warm_start.elapsed().as_secs_f64() * 1e3
    );
    let runs = (1..=args.repeats)
        .map(|i| measured_run(i, &pipe, &vae, &request))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let same_image = runs.iter().all(|r| r.rgb.equal(&warm.rgb));
    if !same_image {
        println!("warning: a measured run's image differs from render()'s");
    }
    if let Some(path) = &args.image_out {
        let bytes = Vec::<u8>::try_from(warm.rgb.flatten(0, -1))?;
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    report(&args, threads, load_s, sampler, &runs, same_image);
    Ok(())
}

fn report(
    args: &Args,
    threads: i32,
    load_s: f64,
    sampler: SamplerKind,
    runs: &[Run],
    same_image: bool,
) {
    let ms = |f: fn(&Run) -> f64| runs.iter().map(|r| f(r) * 1e3).collect::<Vec<_>>();
    let steps = f64::from(args.steps);
    let text_ms = median(ms(|r| r.text_s));
    let steps_ms = median(ms(|r| r.steps_s));
    let decode_ms = median(ms(|r| r.decode_s));
    let image_ms = median(ms(|r| r.image_s));
    let step_ms = steps_ms / steps;
    println!(
        "median: text {text_ms:.2} ms, step {step_ms:.2} ms ({steps_ms:.1} ms for {steps}), \
         decode {decode_ms:.2} ms, image {image_ms:.1} ms"
    );
    let summary = serde_json::json!({
        "engine": "infermine",
        "model": args.model.display().to_string(),
        "threads": threads,
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "guidance": args.guidance,
        "seed": args.seed,
        "sampler": sampler.name(),
        "repeats": args.repeats,
        "load_s": load_s,
        "text_ms": text_ms,
        "steps_ms": steps_ms,
        "step_ms": step_ms,
        "decode_ms": decode_ms,
        "image_ms": image_ms,
        "text_ms_runs": ms(|r| r.text_s),
        "steps_ms_runs": ms(|r| r.steps_s),
        "decode_ms_runs": ms(|r| r.decode_s),
        "image_ms_runs": ms(|r| r.image_s),
        "step_ms_all": runs
            .iter()
            .flat_map(|r| r.step_s.iter().map(|s| s * 1e3))
            .collect::<Vec<_>>(),
        "image_stable": same_image,
    });
    println!("{summary}");
}
