//! Speed of the LLM engine on the CPU: prefill and greedy decode through the KV cache.
//!
//! ```sh
//! cargo run --release -p infermine-agent --example llm_bench -- \
//!     --model DIR --prompt-tokens 128 --new-tokens 64 --repeats 5 [--threads N]
//! ```
//!
//! `DIR` is a Hugging Face model folder (`config.json` + safetensors weights); no tokenizer is
//! needed. The model is loaded on the CPU in f32. The prompt is `--prompt-tokens` token ids
//! drawn from SplitMix64 seeded with `--seed`, modulo the vocabulary size;
//! `bench/llm_vs_transformers.py` draws the same ids, so both engines see identical input.
//!
//! One run is: a new KV cache sized for prompt + new tokens; **prefill**, one forward pass
//! over the whole prompt (logits of the last position only, as a job computes them); then
//! **decode**, `--new-tokens` steps, each an argmax of the last logits (read back to the host)
//! and a forward pass of that one token through the cache. A first run warms up and is not
//! counted; the medians of the `--repeats` runs after it are reported. Human-readable lines
//! come first, and the last line is one JSON object (`{"engine":"infermine", ...}`).

// A benchmark's result is what it prints.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use infermine_agent::engine::llm::config::ModelConfig;
use infermine_agent::engine::llm::model::Transformer;
use tch::{Device, Kind};

#[derive(Debug, Parser)]
#[command(about = "Prefill and decode speed of the LLM engine on the CPU (f32)")]
struct Args {
    /// Model folder: config.json and model.safetensors (or shards).
    #[arg(long)]
    model: PathBuf,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens decoded after the prompt, one forward pass each.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Measured runs after the warm-up; medians are reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// libtorch intra-op threads (default: libtorch's own choice).
    #[arg(long)]
    threads: Option<i32>,
    /// Seed of the prompt's token ids.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// SplitMix64: tiny, and easy to reproduce in Python.
fn prompt_ids(seed: u64, count: usize, vocab: usize) -> Vec<u32> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z % vocab as u64) as u32
        })
        .collect()
}

/// One run's timings, in seconds, and the greedy tokens it produced.
struct Run {
    prefill_s: f64,
    decode_s: f64,
    ids: Vec<u32>,
}

fn run_once(model: &Transformer, prompt: &[u32], new_tokens: usize) -> anyhow::Result<Run> {
    let mut cache = model.new_cache(prompt.len() + new_tokens);
    let start = Instant::now();
    let mut logits = model.forward(prompt, &mut cache, false);
    let prefill_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut ids = Vec::with_capacity(new_tokens);
    for _ in 0..new_tokens {
        let id = u32::try_from(logits.argmax(-1, false).int64_value(&[0]))
            .context("argmax gave a negative token id")?;
        ids.push(id);
        logits = model.forward(&[id], &mut cache, false);
    }
    let decode_s = start.elapsed().as_secs_f64();
    Ok(Run {
        prefill_s,
        decode_s,
        ids,
    })
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.prompt_tokens > 0, "--prompt-tokens must be at least 1");
    anyhow::ensure!(args.new_tokens > 0, "--new-tokens must be at least 1");
    anyhow::ensure!(args.repeats > 0, "--repeats must be at least 1");
    if let Some(n) = args.threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        tch::set_num_threads(n);
    }
    let _no_grad = tch::no_grad_guard();

    let started = Instant::now();
    let config = ModelConfig::load(&args.model)?;
    let vocab = config.vocab_size;
    let model = Transformer::load(&args.model, config, Device::Cpu, Kind::Float)?;
    let load_s = started.elapsed().as_secs_f64();
    let total = args.prompt_tokens + args.new_tokens;
    anyhow::ensure!(
        total <= model.max_positions(),
        "prompt + new tokens = {total}, more than the model's {} positions",
        model.max_positions()
    );
    let threads = tch::get_num_threads();
    let c = model.config();
    println!(
        "model {} ({:?}): {} layers, hidden {}, intermediate {}, heads {}/{}, vocab {}{}",
        args.model.display(),
        model.architecture(),
        c.num_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_heads,
        c.num_kv_heads,
        c.vocab_size,
        c.experts
            .map(|(n, k)| format!(", {n} experts top-{k}"))
            .unwrap_or_default()
    );
    println!(
        "loaded in {:.2} s; cpu f32, {threads} threads; prompt {} tokens, {} new tokens, {} repeats",
        load_s, args.prompt_tokens, args.new_tokens, args.repeats
    );

    let prompt = prompt_ids(args.seed, args.prompt_tokens, vocab);
    let warm = run_once(&model, &prompt, args.new_tokens)?;
    let mut runs = Vec::with_capacity(args.repeats);
    for i in 0..args.repeats {
        let run = run_once(&model, &prompt, args.new_tokens)?;
        println!(
            "run {}: prefill {:8.2} ms ({:9.1} tok/s)   decode {:8.2} ms ({:7.2} ms/token, {:7.1} tok/s)",
            i + 1,
            run.prefill_s * 1e3,
            args.prompt_tokens as f64 / run.prefill_s,
            run.decode_s * 1e3,
            run.decode_s * 1e3 / args.new_tokens as f64,
            args.new_tokens as f64 / run.decode_s,
        );
        runs.push(run);
    }
    let same_tokens = runs.iter().all(|r| r.ids == warm.ids);
    let prefill_s = median(runs.iter().map(|r| r.prefill_s).collect());
    let decode_s = median(runs.iter().map(|r| r.decode_s).collect());
    let prefill_tok_s = args.prompt_tokens as f64 / prefill_s;
    let decode_tok_s = args.new_tokens as f64 / decode_s;
    let decode_ms_per_token = decode_s * 1e3 / args.new_tokens as f64;
    println!(
        "median: prefill {prefill_tok_s:.1} tok/s ({:.2} ms), decode {decode_tok_s:.1} tok/s \
         ({decode_ms_per_token:.3} ms/token)",
        prefill_s * 1e3
    );
    if !same_tokens {
        println!("warning: the greedy tokens differed between runs");
    }
    let summary = serde_json::json!({
        "engine": "infermine",
        "model": args.model.display().to_string(),
        "threads": threads,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "seed": args.seed,
        "load_s": load_s,
        "prefill_ms": prefill_s * 1e3,
        "decode_ms": decode_s * 1e3,
        "prefill_tok_s": prefill_tok_s,
        "decode_tok_s": decode_tok_s,
        "decode_ms_per_token": decode_ms_per_token,
        "prefill_ms_runs": runs.iter().map(|r| r.prefill_s * 1e3).collect::<Vec<_>>(),
        "decode_ms_runs": runs.iter().map(|r| r.decode_s * 1e3).collect::<Vec<_>>(),
        "greedy_ids": warm.ids,
        "greedy_stable": same_tokens,
    });
    println!("{summary}");
    Ok(())
}
