#!/usr/bin/env python3
"""LLM speed on the CPU: the agent's libtorch engine against Hugging Face transformers.

Both engines run the same weights, on the same CPU, in f32, with the same number of threads,
on the same prompt (token ids drawn from SplitMix64, seed 0, modulo the vocabulary), and
report the median of the same number of measured runs after one warm-up run.

What it needs
-------------
A developer machine (CI never runs this) with a Rust toolchain and libtorch set up as for the
agent (scripts/setup.sh), and a Python environment with:

    pip install torch==2.11.0 transformers safetensors    # transformers 5.24 was used

How to run (from the repository root)
-------------------------------------
    python bench/llm_vs_transformers.py --config small --prompt-tokens 128 --new-tokens 64 --repeats 5
    python bench/llm_vs_transformers.py --config tiny
    python bench/llm_vs_transformers.py --config mixtral-small

Models (random weights; no download, no tokenizer: neither side needs one)
    small          LlamaForCausalLM, 4 layers, hidden 512, intermediate 1376, 8 heads,
                   4 KV heads (head_dim 64), vocab 32000; 44.4 M parameters (32.8 M of them in
                   the embedding and lm_head), 177 MB in f32
    mixtral-small  MixtralForCausalLM, the same sizes with 4 experts, top-2
    tiny           the golden-test fixture agent/tests/fixtures/llm/tiny-llama (2 layers,
                   hidden 64, vocab 448), used as it is
`small` and `mixtral-small` are written once, in the Hugging Face layout (config.json +
model.safetensors, f32, the published tensor names; Mixtral's experts one by one as in the
published checkpoints), under target/llm-bench/<config>/, and reused while their spec is the
same. The weights come from fixed seeds, so every machine builds the same files.

What is measured, on each side
------------------------------
One run is:
  prefill  one forward pass over the prompt with an empty KV cache, computing the logits of
           the last position only (transformers: `model(input_ids, use_cache=True,
           logits_to_keep=1)`, which is what `generate` does; infermine: `Transformer::forward`
           with `all = false`);
  decode   --new-tokens steps, each an argmax of the last logits, read back as a Python int /
           Rust u32, then a forward pass of that one token through the cache (transformers:
           `model(next_id, cache=cache, use_cache=True)` with its default
           DynamicCache; infermine: its preallocated KvCache).
This manual greedy loop is the fairest equivalent of what the Rust side does: `generate`
would add its logits processors, stopping criteria and bookkeeping to every step, and makes one
forward pass fewer. That `generate` figure is printed too, for information
(`generate(do_sample=False, min_new_tokens=N, max_new_tokens=N)`: the whole call minus the
median prefill, divided by its N - 1 decode passes).

transformers runs under `torch.inference_mode()` with attn_implementation "sdpa" (its
default), and again with "eager"; the ratios are against sdpa. The Rust side is
`agent/examples/llm_bench.rs`, built here with `cargo build --release`. Both sides set the
thread count explicitly (`torch.set_num_threads`, `tch::set_num_threads`); the default is every
core of the machine. The greedy tokens of the two sides are compared as a sanity check.

The last line printed is `ratio prefill=X.XX decode=Y.YY` (infermine / transformers sdpa,
higher is better for infermine). Other processes on the machine skew the figures a lot when
every core is used: the script prints the share of the CPU that other processes took during
each engine's measurement (from /proc/stat), and `--wait-idle SECONDS` waits for a quiet
machine before each one; `--rounds R` measures every engine R times, alternating, and reports
for each the medians over all the runs of its rounds in which other processes took under 10% of
the CPU (the `others` column shows the most they took in the rounds kept).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, MixtralConfig  # noqa: E402

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "target" / "llm-bench"
TINY_FIXTURE = REPO_ROOT / "agent" / "tests" / "fixtures" / "llm" / "tiny-llama"

SMALL = dict(
    vocab_size=32000,
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)
SPECS = {
    "small": {"class": "llama", "config": SMALL, "seed": 1},
    "mixtral-small": {
        "class": "mixtral",
        "config": dict(SMALL, num_local_experts=4, num_experts_per_tok=2, sliding_window=None),
        "seed": 2,
    },
}
CONFIGS = ["small", "tiny", "mixtral-small"]


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
def randn(seed: int, name: str, shape, std: float) -> torch.Tensor:
    """Each tensor from its own generator, seeded by (seed, name)."""
    h = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))
    return torch.randn(*shape, generator=g, dtype=torch.float32) * std


def make_weights(cfg, seed: int, moe: bool) -> dict[str, torch.Tensor]:
    """Published checkpoint names and layout ([out, in] for every linear), f32. Linears are
    N(0, 1/in) so activations keep unit scale through the layers; lm_head spreads the logits
    (std about 3) so that the greedy choices are not near-ties and both engines pick the same."""
    H, I, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    hd = cfg.head_dim
    nq, nkv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    w: dict[str, torch.Tensor] = {}

    def lin(name, out_f, in_f):
        w[name] = randn(seed, name, (out_f, in_f), in_f**-0.5)

    def norm(name):
        w[name] = 1.0 + randn(seed, name, (H,), 0.1)

    w["model.embed_tokens.weight"] = randn(seed, "model.embed_tokens.weight", (V, H), 1.0)
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}"
        norm(f"{p}.input_layernorm.weight")
        lin(f"{p}.self_attn.q_proj.weight", nq, H)
        lin(f"{p}.self_attn.k_proj.weight", nkv, H)
        lin(f"{p}.self_attn.v_proj.weight", nkv, H)
        lin(f"{p}.self_attn.o_proj.weight", H, nq)
        norm(f"{p}.post_attention_layernorm.weight")
        if moe:
            lin(f"{p}.block_sparse_moe.gate.weight", cfg.num_local_experts, H)
            for e in range(cfg.num_local_experts):
                q = f"{p}.block_sparse_moe.experts.{e}"
                lin(f"{q}.w1.weight", I, H)
                lin(f"{q}.w2.weight", H, I)
                lin(f"{q}.w3.weight", I, H)
        else:
            lin(f"{p}.mlp.gate_proj.weight", I, H)
            lin(f"{p}.mlp.up_proj.weight", I, H)
            lin(f"{p}.mlp.down_proj.weight", H, I)
    norm("model.norm.weight")
    w["lm_head.weight"] = randn(seed, "lm_head.weight", (V, H), 3.0 * H**-0.5)
    return w


def model_dir(name: str) -> Path:
    """The model folder of config `name`, written first if it is missing or stale."""
    if name == "tiny":
        return TINY_FIXTURE
    spec = SPECS[name]
    folder = MODELS_DIR / name
    stamp = folder / "bench_spec.json"
    want = json.dumps(spec, sort_keys=True)
    if stamp.is_file() and (folder / "model.safetensors").is_file() and stamp.read_text() == want:
        return folder
    print(f"writing {name} to {folder} ...", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    if spec["class"] == "llama":
        cfg = LlamaConfig(**spec["config"])
        cfg.architectures = ["LlamaForCausalLM"]
    else:
        cfg = MixtralConfig(**spec["config"])
        cfg.architectures = ["MixtralForCausalLM"]
    cfg.dtype = torch.float32
    weights = make_weights(cfg, spec["seed"], spec["class"] == "mixtral")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(str(folder))
    stamp.write_text(want)
    return folder


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------
def prompt_ids(seed: int, count: int, vocab: int) -> list[int]:
    """SplitMix64, as in agent/examples/llm_bench.rs."""
    mask = (1 << 64) - 1
    state = seed
    out = []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        out.append(z % vocab)
    return out


def cache_kwarg(model) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache` (the old name warns)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def hf_run(model, ids: torch.Tensor, new_tokens: int) -> tuple[float, float, list[int]]:
    """One run: (prefill seconds, decode seconds, greedy ids). Mirrors llm_bench.rs's run_once."""
    kw = cache_kwarg(model)
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    t1 = time.perf_counter()
    cache, logits = getattr(out, kw), out.logits[:, -1]
    toks = []
    for _ in range(new_tokens):
        nxt = logits.argmax(-1)
        toks.append(int(nxt))
        out = model(input_ids=nxt.view(1, 1), use_cache=True, **{kw: cache})
        cache, logits = getattr(out, kw), out.logits[:, -1]
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, toks


def hf_generate(model, ids: torch.Tensor, new_tokens: int) -> tuple[float, list[int]]:
    t0 = time.perf_counter()
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        eos_token_id=None,
        pad_token_id=0,
    )
    return time.perf_counter() - t0, out[0, ids.shape[1] :].tolist()


def bench_transformers(folder: Path, attn: str, args) -> dict:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation=attn)
    model.eval()
    load_s = time.perf_counter() - t0
    vocab = model.config.vocab_size
    ids = torch.tensor([prompt_ids(args.seed, args.prompt_tokens, vocab)], dtype=torch.long)
    with torch.inference_mode():
        hf_run(model, ids, args.new_tokens)  # warm-up
        runs = [hf_run(model, ids, args.new_tokens) for _ in range(args.repeats)]
        gen = None
        if args.generate:
            hf_generate(model, ids, args.new_tokens)  # warm-up
            gen = [hf_generate(model, ids, args.new_tokens) for _ in range(args.repeats)]
    prefill_s = statistics.median(r[0] for r in runs)
    decode_s = statistics.median(r[1] for r in runs)
    res = {
        "engine": f"transformers-{attn}",
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "prefill_ms": prefill_s * 1e3,
        "decode_ms": decode_s * 1e3,
        "prefill_tok_s": args.prompt_tokens / prefill_s,
        "decode_tok_s": args.new_tokens / decode_s,
        "decode_ms_per_token": decode_s * 1e3 / args.new_tokens,
        "prefill_ms_runs": [r[0] * 1e3 for r in runs],
        "decode_ms_runs": [r[1] * 1e3 for r in runs],
        "greedy_ids": runs[0][2],
    }
    if gen is not None and args.new_tokens > 1:
        total = statistics.median(g[0] for g in gen)
        per_step = (total - prefill_s) / (args.new_tokens - 1)
        res["generate_ms"] = total * 1e3
        res["generate_decode_tok_s"] = 1.0 / per_step
        res["generate_ids_match"] = gen[0][1] == runs[0][2]
    del model
    return res


def pool(rounds: list[dict], args) -> dict:
    """One engine's figures over its rounds: the medians over all runs of the rounds that other
    processes left alone (under 10% of the CPU), or the least disturbed round if none was."""
    share = lambda r: r["others_cpu_share"] or 0.0  # noqa: E731
    clean = [r for r in rounds if share(r) < 0.1] or [min(rounds, key=share)]
    res = dict(clean[0])
    prefill = [ms for r in clean for ms in r["prefill_ms_runs"]]
    decode = [ms for r in clean for ms in r["decode_ms_runs"]]
    prefill_ms, decode_ms = statistics.median(prefill), statistics.median(decode)
    res.update(
        prefill_ms=prefill_ms,
        decode_ms=decode_ms,
        prefill_tok_s=args.prompt_tokens / (prefill_ms / 1e3),
        decode_tok_s=args.new_tokens / (decode_ms / 1e3),
        decode_ms_per_token=decode_ms / args.new_tokens,
        prefill_ms_runs=prefill,
        decode_ms_runs=decode,
        others_cpu_share=max(share(r) for r in clean),
        rounds_used=len(clean),
        rounds=[{k: r.get(k) for k in ("prefill_tok_s", "decode_tok_s", "others_cpu_share")} for r in rounds],
    )
    gens = [r["generate_decode_tok_s"] for r in clean if "generate_decode_tok_s" in r]
    if gens:
        res["generate_decode_tok_s"] = statistics.median(gens)
    if len(rounds) > 1:
        per_round = ", ".join(
            f"{r['prefill_tok_s']:.0f}/{r['decode_tok_s']:.1f}" + ("" if r in clean else " (dropped)") for r in rounds
        )
        print(f"  {res['engine']}: prefill/decode tok/s by round: {per_round}")
    return res


def build_rust() -> Path:
    cmd = [
        "cargo",
        "build",
        "--release",
        "-p",
        "infermine-agent",
        "--example",
        "llm_bench",
        "--message-format=json-render-diagnostics",
    ]
    print("$ " + " ".join(cmd[:-1]), flush=True)
    proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"cargo build failed (exit {proc.returncode})")
    exe = None
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "llm_bench":
            exe = msg.get("executable") or exe
    if not exe:
        sys.exit("cargo built no llm_bench executable")
    return Path(exe)


def bench_rust(exe: Path, folder: Path, args) -> dict:
    cmd = [
        str(exe),
        "--model",
        str(folder),
        "--prompt-tokens",
        str(args.prompt_tokens),
        "--new-tokens",
        str(args.new_tokens),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        sys.exit(f"llm_bench failed (exit {proc.returncode}):\n{proc.stdout}")
    for line in lines[:-1]:
        print("  | " + line)
    return json.loads(lines[-1])


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(busy CPU seconds of the whole machine, all CPU seconds, CPU seconds of this process
    and its finished children), or None where /proc/stat is missing."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    busy = (user + nice + system + irq + softirq + steal) / tick
    t = os.times()
    return busy, busy + (idle + iowait) / tick, t.user + t.system + t.children_user + t.children_system


def others_share(before, after) -> float | None:
    """The share of the machine's CPU time that other processes used between two snapshots."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    other = (after[0] - before[0]) - (after[2] - before[2])
    return max(other, 0.0) / (after[1] - before[1])


def wait_idle(limit_s: float, threshold: float = 0.1) -> None:
    """Waits (at most limit_s) until the machine was at least 90% idle over one second."""
    deadline = time.monotonic() + limit_s
    waited = 0
    while True:
        a = cpu_snapshot()
        time.sleep(1.0)
        share = others_share(a, cpu_snapshot())
        if share is None or share < threshold or time.monotonic() > deadline:
            if waited:
                print(f"  (waited {waited} s for an idle machine; others now use {100 * (share or 0):.0f}%)", flush=True)
            return
        waited += 1


def measured(label: str, f, args):
    """Runs f() and records how much CPU other processes took meanwhile."""
    if args.wait_idle:
        wait_idle(args.wait_idle)
    before = cpu_snapshot()
    res = f()
    share = others_share(before, cpu_snapshot())
    res["others_cpu_share"] = share
    if share is not None:
        note = "  (figures unreliable)" if share > 0.1 else ""
        print(f"  {label}: other processes used {100 * share:.0f}% of the CPU meanwhile{note}", flush=True)
    return res


def first_divergence(a: list[int], b: list[int]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"differ from step {i} on ({len(a)} steps)"
    return f"identical ({len(a)} steps)" if len(a) == len(b) else "different lengths"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=CONFIGS, default="small")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="both sides (default: all cores)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the prompt's token ids")
    ap.add_argument("--no-eager", dest="eager", action="store_false", help="skip transformers eager")
    ap.add_argument("--no-generate", dest="generate", action="store_false", help="skip the generate() figure")
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

    exe = build_rust()
    folder = model_dir(args.config)
    positions = json.loads((folder / "config.json").read_text())["max_position_embeddings"]
    if args.prompt_tokens + args.new_tokens > positions:
        sys.exit(f"--prompt-tokens + --new-tokens is more than the model's {positions} positions")
    print(
        f"config {args.config} ({folder}); prompt {args.prompt_tokens}, new {args.new_tokens}, "
        f"repeats {args.repeats}, threads {args.threads}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        flush=True,
    )
    print(f"load average before: {loadavg()}", flush=True)
    engines = [
        (f"transformers ({attn})", lambda attn=attn: bench_transformers(folder, attn, args))
        for attn in ["sdpa"] + (["eager"] if args.eager else [])
    ]
    engines.append(("infermine (agent/examples/llm_bench)", lambda: bench_rust(exe, folder, args)))
    rounds: dict[str, list[dict]] = {label: [] for label, _ in engines}
    for round_no in range(args.rounds):
        for label, run in engines:
            print(f"{label}" + (f", round {round_no + 1}" if args.rounds > 1 else "") + " ...", flush=True)
            rounds[label].append(measured(label, run, args))
    print(f"load average after: {loadavg()}")
    results = [pool(rounds[label], args) for label, _ in engines]
    rust = results.pop()
    results.insert(0, rust)

    hf = results[1]
    print()
    print(
        f"{'engine':<20} {'prefill tok/s':>14} {'prefill ms':>11} {'decode tok/s':>13} {'ms/token':>9} {'others':>7}"
    )
    for r in results:
        share = r.get("others_cpu_share")
        print(
            f"{r['engine']:<20} {r['prefill_tok_s']:>14.1f} {r['prefill_ms']:>11.2f} "
            f"{r['decode_tok_s']:>13.1f} {r['decode_ms_per_token']:>9.3f} "
            f"{'?' if share is None else f'{100 * share:.0f}%':>7}"
        )
        if "generate_decode_tok_s" in r:
            print(
                f"{'  via generate()':<20} {'':>14} {'':>11} {r['generate_decode_tok_s']:>13.1f} "
                f"{1e3 / r['generate_decode_tok_s']:>9.3f}"
            )
    for r in results[1:]:
        print(
            f"infermine / {r['engine']}: prefill {rust['prefill_tok_s'] / r['prefill_tok_s']:.2f}x, "
            f"decode {rust['decode_tok_s'] / r['decode_tok_s']:.2f}x"
        )
    print(f"greedy tokens, infermine vs {hf['engine']}: {first_divergence(rust['greedy_ids'], hf['greedy_ids'])}")
    if args.json:
        meta = {
            "config": args.config,
            "model": str(folder),
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "threads": args.threads,
            "rounds": args.rounds,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(
        f"ratio prefill={rust['prefill_tok_s'] / hf['prefill_tok_s']:.2f} "
        f"decode={rust['decode_tok_s'] / hf['decode_tok_s']:.2f}"
    )


if __name__ == "__main__":
    main()
