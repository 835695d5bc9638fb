//! Demo models end to end inside the agent: `models synth` output is deterministic, loads
//! through the engine like a downloaded model, and serves chat requests with the sampling
//! settings a consumer sends (seeded sampling, stop strings, max_tokens, streaming).

use std::path::{Path, PathBuf};

use infermine_agent::engine::CancelToken;
use infermine_agent::engine::demo::synth;
use infermine_agent::engine::llm::LlmEngine;
use infermine_agent::engine::llm::synth::DEMO_MODELS;
use infermine_protocol::{ChatMessage, LlmParams};
use tch::{Device, Kind};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("infermine-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read_all(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("read"))
        })
        .collect();
    files.sort();
    files
}

fn params(seed: u64, temperature: f32) -> LlmParams {
    LlmParams {
        messages: vec![
            ChatMessage {
                role: "system".into(),
                content: "You are terse.".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "Say something about the sea.".into(),
            },
        ],
        max_tokens: Some(24),
        temperature,
        top_p: 0.95,
        top_k: 50,
        stop: vec![],
        seed,
    }
}

fn run(
    engine: &LlmEngine,
    params: &LlmParams,
) -> (infermine_agent::engine::llm::Completion, String) {
    let mut streamed = String::new();
    let completion = engine
        .generate(params, &CancelToken::new(), &mut |piece| {
            streamed.push_str(piece)
        })
        .expect("generate");
    (completion, streamed)
}

#[test]
fn synth_is_deterministic_and_refuses_unknown_ids() {
    let a = TempDir::new("synth-a");
    let b = TempDir::new("synth-b");
    for id in DEMO_MODELS {
        let first = synth(id, &a.0).expect("synth");
        let second = synth(id, &b.0).expect("synth again");
        assert_eq!(
            read_all(&first),
            read_all(&second),
            "{id}: same bytes each time"
        );
        // Writing over an existing model replaces it whole.
        let again = synth(id, &a.0).expect("synth over");
        assert_eq!(read_all(&again), read_all(&second));
    }
    let err = synth("tiny-gpt", &a.0).expect_err("unknown");
    assert!(
        err.to_string().contains("tiny-llama"),
        "lists the demo models: {err}"
    );
}

#[test]
fn every_demo_model_serves_chat_requests() {
    let dir = TempDir::new("demo-serve");
    for id in DEMO_MODELS {
        let path = synth(id, &dir.0).expect("synth");
        let engine = LlmEngine::load(&path, Device::Cpu, Kind::Float)
            .unwrap_or_else(|e| panic!("{id}: {e}"));

        // Same seed, same text; streaming adds up to the text; usage counts the tokens.
        let (a, streamed) = run(&engine, &params(7, 0.9));
        let (b, _) = run(&engine, &params(7, 0.9));
        assert_eq!(a, b, "{id}: seeded sampling is reproducible");
        assert_eq!(streamed, a.text, "{id}: streamed text");
        assert_eq!(a.usage.completion_tokens as usize, a.ids.len());
        assert!(a.usage.prompt_tokens > 10, "{id}: {:?}", a.usage);
        assert!(a.ids.len() <= 24);
        if a.ids.len() == 24 {
            assert_eq!(a.finish_reason, "length", "{id}");
        }

        // Another seed gives another sample (24 tokens from ~450: a collision is negligible).
        let (c, _) = run(&engine, &params(8, 0.9));
        assert_ne!(a.ids, c.ids, "{id}: different seeds");

        // Greedy ignores the seed.
        let (g1, _) = run(&engine, &params(1, 0.0));
        let (g2, _) = run(&engine, &params(2, 0.0));
        assert_eq!(g1.ids, g2.ids, "{id}: greedy");

        // A stop string taken from the middle of the greedy text ends the completion before it.
        let chars: Vec<char> = g1.text.chars().collect();
        if chars.len() >= 6 {
            let stop: String = chars[3..6].iter().collect();
            let mut stopped = params(1, 0.0);
            stopped.stop = vec![stop.clone()];
            let (s, streamed) = run(&engine, &stopped);
            let expected = &g1.text[..g1.text.find(&stop).expect("stop in text")];
            assert_eq!(s.text, expected, "{id}: text before the stop string");
            assert_eq!(streamed, s.text);
            assert_eq!(s.finish_reason, "stop");
        }

        // max_tokens bounds the completion.
        let mut short = params(3, 0.9);
        short.max_tokens = Some(2);
        let (s, _) = run(&engine, &short);
        assert!(s.ids.len() <= 2);
    }
}

#[test]
fn a_prompt_longer_than_the_context_is_refused_before_any_work() {
    let dir = TempDir::new("demo-context");
    let path = synth("tiny-mistral", &dir.0).expect("synth");
    let engine = LlmEngine::load(&path, Device::Cpu, Kind::Float).expect("load");
    let mut long = params(0, 0.0);
    long.messages[1].content = "word ".repeat(2_000);
    let err = engine
        .generate(&long, &CancelToken::new(), &mut |_| {})
        .expect_err("too long");
    assert!(err.to_string().contains("context"), "{err}");
}

#[test]
fn a_cancelled_job_stops() {
    let dir = TempDir::new("demo-cancel");
    let path = synth("tiny-llama", &dir.0).expect("synth");
    let engine = LlmEngine::load(&path, Device::Cpu, Kind::Float).expect("load");
    let cancel = CancelToken::new();
    cancel.cancel();
    let err = engine
        .generate(&params(0, 0.7), &cancel, &mut |_| {})
        .expect_err("cancelled");
    assert_eq!(err, infermine_agent::engine::EngineError::Cancelled);
}

#[test]
fn damaged_model_files_are_refused_with_the_file_named() {
    let dir = TempDir::new("demo-damaged");
    let path = synth("tiny-llama", &dir.0).expect("synth");
    let weights = path.join("model.safetensors");
    let bytes = std::fs::read(&weights).expect("read");
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).expect("truncate");
    let err = LlmEngine::load(&path, Device::Cpu, Kind::Float).expect_err("truncated");
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    std::fs::write(&weights, b"not safetensors").expect("write");
    let err = LlmEngine::load(&path, Device::Cpu, Kind::Float).expect_err("garbage");
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    let config = path.join("config.json");
    std::fs::write(&config, "{\"model_type\": \"llama\"").expect("write");
    let err = LlmEngine::load(&path, Device::Cpu, Kind::Float).expect_err("bad config");
    assert!(err.to_string().contains("config.json"), "{err}");
}
