#!/usr/bin/env python3
"""Text-to-image speed on the CPU: the agent's SD 1.5 / SDXL pipeline against diffusers.

Both engines load the same diffusers folder, on the same CPU, in f32, with the same number of
threads, render the same request (prompt, size, steps, guidance, seed, sampler), and report
the median of the same number of measured runs after one warm-up run. Their images are
compared too: the same weights, seed and sampler give the same pixels (at most 1 apart).

What it needs
-------------
A developer machine (CI never runs this) with a Rust toolchain and libtorch set up as for the
agent (scripts/setup.sh), and a Python environment with:

    pip install torch==2.11.0 diffusers==0.42.1 transformers safetensors    # transformers 5.24

How to run (from the repository root)
-------------------------------------
    python bench/diffusion_vs_diffusers.py --config small-sd15 --steps 20 --repeats 5
    python bench/diffusion_vs_diffusers.py --config tiny
    python bench/diffusion_vs_diffusers.py --config small-sdxl

Models (random weights; the images are noise)
    tiny        the demo model tiny-sd15 exactly as `infermine-agent models synth` writes it
                (UNet [32, 64], CLIP hidden 32, VAE [16, 16, 32, 32]); 64x64 by default
    small-sd15  SD 1.5's shape scaled down: UNet block_out_channels [64, 128, 256, 256],
                2 layers per block, cross-attention 256, heads 2, 4, 8, 8 (32 wide: SD 1.5's
                8 heads would be 8 wide here, a shape on which the CPU attention kernel alone
                takes most of the time); CLIP (SD 1.5's CLIP-L shape) 12 layers, hidden 256,
                4 heads; VAE [32, 64, 128, 128]; 256x256 by default
    small-sdxl  SDXL's shape scaled down: UNet [64, 128, 256], 2 layers per block, transformer
                depth [1, 2, 4], head width 32, linear projections, text_time conditioning;
                CLIP-L hidden 128 and bigG hidden 256 (projection 256), cross-attention 384;
                the same VAE; 256x256 by default
`tiny` is synthesized again on every run (it takes a fraction of a second). The small models
are written once, in the diffusers layout (each component's config.json and safetensors),
under target/diffusion-bench/<config>/, and reused while their spec is the same. Their
tokenizers, scheduler config and model_index.json are the demo models' (tiny-sd15 /
tiny-sdxl); their weights are drawn as the demo models' are (norm scales 1 ± 0.1, biases
± 0.05, embeddings ± 0.5, other weights uniform with variance 1/fan-in), each tensor from its
own generator seeded by (config, component, name), so every machine builds the same files.

What is measured, on each side
------------------------------
One run renders the request and splits it into phases at the same points on both sides:
  text    from the call to the first UNet evaluation: tokenizing, the text encoder(s), the
          scheduler's tables, the initial noise (diffusers: `pipe(...)` entered, to a forward
          pre-hook on `pipe.unet`; infermine: `SdPipeline::denoise` entered, to the first poll
          of its cancellation callback, which comes just before the step's UNet input is made);
  steps   from there to the denoised latents: per step, the UNet on the guided batch of two,
          `uncond + scale * (cond - uncond)` and the sampler's step (diffusers: to the return
          of `pipe(..., output_type="latent")`); `step` is this divided by the step count;
  decode  `vae.decode(latents / scaling_factor).sample`, then `(x / 2 + 0.5).clamp(0, 1)`
          rounded to RGB8 (diffusers: its `image_processor.postprocess(..., "np")` and
          `np.round(x * 255)`, as `numpy_to_pil` does; infermine: `VaeDecoder::latents_to_image`
          and `to_rgb8`, as `SdPipeline::render` does);
  image   all three.
diffusers runs under `torch.inference_mode()` with its default attention processor
(`AttnProcessor2_0`, i.e. `F.scaled_dot_product_attention`) and the progress bar off; the
sampler is swapped in with `Cls.from_config(pipe.scheduler.config, **extra)` and the noise
comes from `torch.Generator().manual_seed(seed)`, as in scripts/fixtures/diffusion_pipeline.py.
The Rust side is `agent/examples/diffusion_bench.rs`, built here with `cargo build --release`.
Both sides set the thread count explicitly (`torch.set_num_threads`, `tch::set_num_threads`);
the default is every core of the machine.

The last line printed is `ratio step=X.XX image=Y.YY` (diffusers time / infermine time,
higher is better for infermine). Other processes on the machine skew the figures a lot when
every core is used: the script prints the share of the CPU that other processes took during
each engine's measurement (from /proc/stat), and `--wait-idle SECONDS` waits for a quiet
machine before each one; `--rounds R` measures every engine R times, alternating. The share is
also taken for every measured run on its own (diffusers: around each call; infermine: between
the lines the example prints as its warm-up and each run end, with the example's own CPU time
read from /proc/<pid>/stat), and each engine's medians are over all the runs of all its rounds
in which other processes took under 10% of the CPU (the `others` column shows the most they took
in the runs kept, and `kept` how many runs those were). A run of several seconds on two busy
cores is often disturbed for a moment only, so this keeps more clean runs than discarding whole
rounds would. The /proc/stat helpers are bench/llm_vs_transformers.py's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_vs_transformers import cpu_snapshot, loadavg, measured, others_share  # noqa: E402

diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "target" / "diffusion-bench"

SAMPLERS = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "ddim": (DDIMScheduler, {}),
}

SMALL_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=[32, 64, 128, 128],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    layers_per_block=2,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=256,
)
SPECS = {
    "small-sd15": {
        "demo": "tiny-sd15",
        "clip": [dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=12, num_attention_heads=4)],
        "unet": dict(
            sample_size=32,
            block_out_channels=[64, 128, 256, 256],
            down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            layers_per_block=2,
            attention_head_dim=[2, 4, 8, 8],
            cross_attention_dim=256,
            norm_num_groups=32,
        ),
        "vae": dict(SMALL_VAE, scaling_factor=0.18215, force_upcast=False),
        "size": 256,
    },
    "small-sdxl": {
        "demo": "tiny-sdxl",
        "clip": [
            dict(hidden_size=128, intermediate_size=512, num_hidden_layers=6, num_attention_heads=2),
            dict(
                hidden_size=256,
                intermediate_size=1024,
                num_hidden_layers=8,
                num_attention_heads=4,
                projection_dim=256,
            ),
        ],
        "unet": dict(
            sample_size=32,
            block_out_channels=[64, 128, 256],
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            layers_per_block=2,
            transformer_layers_per_block=[1, 2, 4],
            attention_head_dim=[2, 4, 8],
            cross_attention_dim=384,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=32,
            projection_class_embeddings_input_dim=256 + 6 * 32,
            norm_num_groups=32,
        ),
        "vae": dict(SMALL_VAE, scaling_factor=0.13025, force_upcast=True),
        "size": 256,
    },
}
CONFIGS = ["tiny", "small-sd15", "small-sdxl"]


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
def build_rust() -> tuple[Path, Path]:
    """The agent binary (for `models synth`) and the example, built in release mode."""
    cmd = [
        "cargo",
        "build",
        "--release",
        "-p",
        "infermine-agent",
        "--bin",
        "infermine-agent",
        "--example",
        "diffusion_bench",
        "--message-format=json-render-diagnostics",
    ]
    print("$ " + " ".join(cmd[:-1]), flush=True)
    proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"cargo build failed (exit {proc.returncode})")
    exes = {}
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
            exes[msg["target"]["name"]] = Path(msg["executable"])
    missing = {"infermine-agent", "diffusion_bench"} - exes.keys()
    if missing:
        sys.exit(f"cargo built no {', '.join(sorted(missing))} executable")
    return exes["infermine-agent"], exes["diffusion_bench"]


def synth_demo(agent: Path, demo: str) -> Path:
    """Writes demo model `demo` under target/diffusion-bench/tiny/ and returns its folder."""
    out = MODELS_DIR / "tiny"
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [str(agent), "models", "synth", "--model", demo, "--out", str(out)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"infermine-agent models synth --model {demo} failed:\n{proc.stderr}")
    return out / demo


def init_like_demo(model: torch.nn.Module, seed: str) -> None:
    """Every parameter drawn as agent/src/engine/diffusion/synth.rs draws the demo models',
    from its own generator seeded by (seed, name)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            h = hashlib.sha256(f"{seed}/{name}".encode()).digest()
            g = torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))
            u = torch.rand(p.shape, generator=g, dtype=torch.float32) * 2.0 - 1.0  # U(-1, 1)
            leaf = name.rsplit(".", 1)[-1]
            if ("norm" in name or "ln_" in name) and leaf == "weight" and p.dim() == 1:
                p.copy_(1.0 + 0.1 * u)
            elif leaf == "bias" or p.dim() < 2:
                p.copy_(0.05 * u)
            elif "embedding" in name:
                p.copy_(0.5 * u)
            else:
                fan_in = p[0].numel()
                p.copy_((3.0 / fan_in) ** 0.5 * u)


def small_model(name: str, agent: Path) -> Path:
    """The folder of small config `name`, written first if it is missing or stale."""
    spec = SPECS[name]
    folder = MODELS_DIR / name
    stamp = folder / "bench_spec.json"
    want = json.dumps(spec, sort_keys=True)
    if stamp.is_file() and stamp.read_text() == want:
        return folder
    print(f"writing {name} to {folder} ...", flush=True)
    demo = synth_demo(agent, spec["demo"])
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copy(demo / "model_index.json", folder)
    shutil.copytree(demo / "scheduler", folder / "scheduler")
    for i, overrides in enumerate(spec["clip"]):
        suffix = "" if i == 0 else f"_{i + 1}"
        shutil.copytree(demo / f"tokenizer{suffix}", folder / f"tokenizer{suffix}")
        config = CLIPTextConfig.from_pretrained(demo / f"text_encoder{suffix}")
        for key, value in overrides.items():
            setattr(config, key, value)
        cls = CLIPTextModelWithProjection if i == 1 else CLIPTextModel
        write(cls(config), f"{name}/text_encoder{suffix}", folder / f"text_encoder{suffix}")
    write(UNet2DConditionModel(**spec["unet"]), f"{name}/unet", folder / "unet")
    write(AutoencoderKL(**spec["vae"]), f"{name}/vae", folder / "vae")
    stamp.write_text(want)
    return folder


def write(model: torch.nn.Module, seed: str, folder: Path) -> None:
    init_like_demo(model, seed)
    model.save_pretrained(str(folder), safe_serialization=True)


def model_dir(name: str, agent: Path) -> Path:
    return synth_demo(agent, "tiny-sd15") if name == "tiny" else small_model(name, agent)


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------
def load_pipe(folder: Path, sampler: str):
    index = json.loads((folder / "model_index.json").read_text())
    cls = StableDiffusionXLPipeline if index["_class_name"] == "StableDiffusionXLPipeline" else StableDiffusionPipeline
    pipe = cls.from_pretrained(str(folder), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    sampler_cls, extra = SAMPLERS[sampler]
    pipe.scheduler = sampler_cls.from_config(pipe.scheduler.config, **extra)
    return pipe


def hf_run(pipe, args) -> dict:
    """One run: the phases in seconds and the image. Mirrors diffusion_bench.rs's run_once."""
    unet_calls: list[float] = []
    hook = pipe.unet.register_forward_pre_hook(lambda _m, _a: unet_calls.append(time.perf_counter()))
    try:
        t0 = time.perf_counter()
        latents = pipe(
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            width=args.width,
            height=args.height,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=torch.Generator().manual_seed(args.seed),
            output_type="latent",
        ).images
        t1 = time.perf_counter()
        vae = pipe.vae
        image = vae.decode(latents / vae.config.scaling_factor).sample
        image = pipe.image_processor.postprocess(image, output_type="np")[0]
        rgb = np.round(image * 255).astype(np.uint8)
        t2 = time.perf_counter()
    finally:
        hook.remove()
    if len(unet_calls) != args.steps:
        sys.exit(f"diffusers ran the UNet {len(unet_calls)} times for {args.steps} steps")
    marks = unet_calls + [t1]
    return {
        "text_s": unet_calls[0] - t0,
        "steps_s": t1 - unet_calls[0],
        "step_s": [b - a for a, b in zip(marks, marks[1:])],
        "decode_s": t2 - t1,
        "image_s": t2 - t0,
        "rgb": rgb,
    }


PHASES = ("text", "steps", "decode", "image")


def bench_diffusers(folder: Path, args) -> dict:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pipe = load_pipe(folder, args.sampler)
    load_s = time.perf_counter() - t0
    with torch.inference_mode():
        warm = hf_run(pipe, args)
        runs = []
        for _ in range(args.repeats):
            before = cpu_snapshot()
            run = hf_run(pipe, args)
            run["others"] = others_share(before, cpu_snapshot())
            runs.append(run)
    for i, r in enumerate(runs):
        print(
            f"  | run {i + 1}: text {r['text_s'] * 1e3:8.2f} ms   steps {r['steps_s'] * 1e3:9.2f} ms "
            f"({r['steps_s'] * 1e3 / args.steps:8.2f} ms/step)   decode {r['decode_s'] * 1e3:8.2f} ms   "
            f"image {r['image_s'] * 1e3:9.2f} ms"
        )
    res = {
        "engine": "diffusers",
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "image_stable": all(np.array_equal(r["rgb"], warm["rgb"]) for r in runs),
        "step_ms_all": [s * 1e3 for r in runs for s in r["step_s"]],
        "others_runs": [r["others"] for r in runs],
        "rgb": warm["rgb"],
    }
    for phase in PHASES:
        res[f"{phase}_ms_runs"] = [r[f"{phase}_s"] * 1e3 for r in runs]
    del pipe
    return with_medians(res, args)


def with_medians(res: dict, args) -> dict:
    for phase in PHASES:
        res[f"{phase}_ms"] = statistics.median(res[f"{phase}_ms_runs"])
    res["step_ms"] = res["steps_ms"] / args.steps
    return res


def child_cpu_snapshot(pid: int):
    """cpu_snapshot, with the CPU time of the running child `pid` counted as this process's."""
    snap = cpu_snapshot()
    if snap is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        child = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    busy, total, own = snap
    return busy, total, own + child


def bench_rust(exe: Path, folder: Path, image_out: Path, args) -> dict:
    cmd = [
        str(exe),
        "--model",
        str(folder),
        "--prompt",
        args.prompt,
        "--width",
        str(args.width),
        "--height",
        str(args.height),
        "--steps",
        str(args.steps),
        "--guidance",
        str(args.guidance),
        "--seed",
        str(args.seed),
        "--sampler",
        args.sampler,
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--image-out",
        str(image_out),
    ]
    if args.negative_prompt is not None:
        cmd += ["--negative-prompt", args.negative_prompt]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    lines, shares = [], []
    mark = child_cpu_snapshot(proc.pid)
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        if line.startswith(("warm-up:", "run ")):
            now = child_cpu_snapshot(proc.pid)
            if line.startswith("run "):
                shares.append(others_share(mark, now))
            mark = now
    proc.wait()
    if proc.returncode != 0 or not lines:
        sys.exit(f"diffusion_bench failed (exit {proc.returncode}):\n" + "\n".join(lines))
    for line in lines[:-1]:
        print("  | " + line)
    res = json.loads(lines[-1])
    res["others_runs"] = shares
    res["rgb"] = np.frombuffer(image_out.read_bytes(), dtype=np.uint8).reshape(args.height, args.width, 3)
    return res


def pool(rounds: list[dict], args) -> dict:
    """One engine's figures over its rounds: the medians over all its runs that other processes
    left alone (under 10% of the CPU during that run), or over the least disturbed round's runs
    if none was."""
    runs = []
    for n, r in enumerate(rounds):
        for i, share in enumerate(r["others_runs"]):
            runs.append({"round": n, "others": share or 0.0, **{p: r[f"{p}_ms_runs"][i] for p in PHASES}})
    clean = [run for run in runs if run["others"] < 0.1]
    if not clean:
        worst = lambda r: max(s or 0.0 for s in r["others_runs"])  # noqa: E731
        calmest = min(range(len(rounds)), key=lambda n: worst(rounds[n]))
        clean = [run for run in runs if run["round"] == calmest]
    res = {k: v for k, v in rounds[0].items() if k not in ("others_runs", "step_ms_all")}
    for phase in PHASES:
        res[f"{phase}_ms_runs"] = [run[phase] for run in clean]
    res = with_medians(res, args)
    res.update(
        others_cpu_share=max(run["others"] for run in clean),
        runs_used=len(clean),
        runs_total=len(runs),
        image_stable=all(r["image_stable"] for r in rounds),
        rounds=[
            {
                "step_ms": r["steps_ms"] / args.steps,
                "image_ms": r["image_ms"],
                "others_cpu_share": r["others_cpu_share"],
                "others_runs": r["others_runs"],
            }
            for r in rounds
        ],
    )
    per_round = ", ".join(
        f"{r['steps_ms'] / args.steps:.2f}/{r['image_ms']:.0f} "
        f"({sum(1 for run in clean if run['round'] == n)} of {len(r['others_runs'])} runs kept)"
        for n, r in enumerate(rounds)
    )
    print(f"  {res['engine']}: ms per step / ms per image by round: {per_round}")
    return res


def compare_images(rust: np.ndarray, hf: np.ndarray) -> tuple[int, str]:
    diff = np.abs(rust.astype(np.int16) - hf.astype(np.int16))
    worst = int(diff.max())
    note = (
        f"max pixel difference {worst}, {int((diff > 0).sum())} of {diff.size} values differ; "
        f"mean pixel {hf.mean():.1f}, std {hf.std():.1f}, "
        f"{100 * np.isin(hf, (0, 255)).mean():.0f}% saturated"
    )
    return worst, note


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=CONFIGS, default="small-sd15")
    ap.add_argument("--prompt", default="a photo of an astronaut riding a horse on the moon")
    ap.add_argument("--negative-prompt", default=None, help="default: none (SD 1.5: \"\"; SDXL: zeros)")
    ap.add_argument("--width", type=int, help="pixels (default: 64 for tiny, 256 for the small models)")
    ap.add_argument("--height", type=int, help="pixels (default: as --width)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampler", choices=sorted(SAMPLERS), default="euler")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="both sides (default: all cores)")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each engine, wait up to this long for the other processes to leave the CPU idle",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every engine this many times, alternating; the medians pool the runs of "
        "the rounds that other processes left alone",
    )
    ap.add_argument("--json", type=Path, help="also write all results to this file")
    args = ap.parse_args()
    size = 64 if args.config == "tiny" else SPECS[args.config]["size"]
    args.width = args.width or size
    args.height = args.height or args.width
    if args.width % 8 or args.height % 8 or args.steps < 1 or args.repeats < 1:
        sys.exit("--width and --height must be multiples of 8; --steps and --repeats at least 1")
    return args


def print_table(results: list[dict]) -> None:
    print()
    print(
        f"{'engine':<12} {'text ms':>9} {'ms/step':>9} {'steps ms':>10} {'decode ms':>10} {'image ms':>10} "
        f"{'others':>7} {'kept':>7}"
    )
    for r in results:
        share = r.get("others_cpu_share")
        print(
            f"{r['engine']:<12} {r['text_ms']:>9.2f} {r['step_ms']:>9.2f} {r['steps_ms']:>10.1f} "
            f"{r['decode_ms']:>10.2f} {r['image_ms']:>10.1f} "
            f"{'?' if share is None else f'{100 * share:.0f}%':>7} {r['runs_used']:>3}/{r['runs_total']:<3}"
        )


def main() -> None:
    args = parse_args()
    agent, exe = build_rust()
    folder = model_dir(args.config, agent)
    print(
        f"config {args.config} ({folder}); {args.width}x{args.height}, {args.steps} steps, {args.sampler}, "
        f"guidance {args.guidance}, seed {args.seed}, repeats {args.repeats}, threads {args.threads}; "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}",
        flush=True,
    )
    print(f"load average before: {loadavg()}", flush=True)
    image_out = MODELS_DIR / f"{args.config}.rgb"
    engines = [
        ("diffusers", lambda: bench_diffusers(folder, args)),
        ("infermine (agent/examples/diffusion_bench)", lambda: bench_rust(exe, folder, image_out, args)),
    ]
    rounds: dict[str, list[dict]] = {label: [] for label, _ in engines}
    for round_no in range(args.rounds):
        for label, run in engines:
            print(f"{label}" + (f", round {round_no + 1}" if args.rounds > 1 else "") + " ...", flush=True)
            rounds[label].append(measured(label, run, args))
    print(f"load average after: {loadavg()}")
    hf, rust = (pool(rounds[label], args) for label, _ in engines)

    print_table([rust, hf])
    worst, note = compare_images(rust.pop("rgb"), hf.pop("rgb"))
    print(f"images, infermine vs diffusers: {note}" + ("" if worst <= 1 else "  (MISMATCH: more than 1 apart)"))
    for r in (rust, hf):
        if not r["image_stable"]:
            print(f"warning: {r['engine']}'s image changed between runs")
        if (r["others_cpu_share"] or 0.0) >= 0.1:
            print(
                f"warning: other processes disturbed every run of {r['engine']}; its figures, and the "
                "ratios, are not meaningful (try a larger --wait-idle or more --rounds)"
            )
    print(
        f"infermine / diffusers speed: text {hf['text_ms'] / rust['text_ms']:.2f}x, "
        f"step {hf['step_ms'] / rust['step_ms']:.2f}x, decode {hf['decode_ms'] / rust['decode_ms']:.2f}x, "
        f"image {hf['image_ms'] / rust['image_ms']:.2f}x"
    )
    if args.json:
        meta = {k: v for k, v in vars(args).items() if k != "json"}
        meta.update(
            model=str(folder),
            torch=torch.__version__,
            diffusers=diffusers.__version__,
            transformers=transformers.__version__,
            max_pixel_difference=worst,
        )
        args.json.write_text(json.dumps({"meta": meta, "results": [rust, hf]}, indent=1, default=str))
    print(f"ratio step={hf['step_ms'] / rust['step_ms']:.2f} image={hf['image_ms'] / rust['image_ms']:.2f}")
    if worst > 1:
        sys.exit(1)


if __name__ == "__main__":
    main()
