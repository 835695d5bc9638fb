//! The LLM engine against the reference implementation.
//!
//! `scripts/fixtures/llm_golden.py` built each tiny model in `tests/fixtures/llm/` with Hugging
//! Face transformers and recorded its outputs: the logits of one forward pass over a fixed
//! prompt, a greedy continuation with the logits of each step, and the chat template rendered
//! and tokenized. These tests load the same files with this crate and must agree: logits within
//! 1e-4 (f32, CPU), the same greedy tokens, the same prompt text and ids.

use std::path::{Path, PathBuf};

use infermine_agent::engine::CancelToken;
use infermine_agent::engine::llm::LlmEngine;
use infermine_protocol::{ChatMessage, LlmParams};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn fixture(id: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llm")
        .join(id)
}

#[derive(Debug, Deserialize)]
struct Golden {
    chat_messages: Vec<ChatMessage>,
    chat_rendered: String,
    chat_ids: Vec<u32>,
}

struct Case {
    engine: LlmEngine,
    golden: Golden,
    tensors: Vec<(String, Tensor)>,
}

impl Case {
    fn load(id: &str) -> Self {
        let dir = fixture(id);
        let engine = LlmEngine::load(&dir, Device::Cpu, Kind::Float)
            .unwrap_or_else(|e| panic!("{id}: load: {e}"));
        let text = std::fs::read_to_string(dir.join("golden.json")).expect("golden.json");
        let golden: Golden = serde_json::from_str(&text).expect("golden.json fields");
        let tensors =
            Tensor::read_safetensors(dir.join("golden.safetensors")).expect("golden.safetensors");
        Self {
            engine,
            golden,
            tensors,
        }
    }

    fn tensor(&self, name: &str) -> &Tensor {
        &self
            .tensors
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("golden tensor {name}"))
            .1
    }

    fn ids(&self, name: &str) -> Vec<u32> {
        Vec::<i64>::try_from(self.tensor(name))
            .expect("ids")
            .into_iter()
            .map(|id| u32::try_from(id).expect("id fits u32"))
            .collect()
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().max().double_value(&[])
}

/// One forward pass over the prompt: every position's logits match.
fn prompt_logits_match(id: &str) {
    let case = Case::load(id);
    let prompt = case.ids("prompt_ids");
    let model = case.engine.model();
    let mut cache = model.new_cache(prompt.len());
    let logits = tch::no_grad(|| model.forward(&prompt, &mut cache, true));
    let diff = max_abs_diff(&logits, case.tensor("prompt_logits"));
    assert!(diff < TOLERANCE, "{id}: prompt logits differ by {diff}");
}

/// Prefill then one token at a time through the KV cache: the same tokens and, at each step,
/// the logits that chose them.
fn greedy_decode_matches(id: &str) {
    let case = Case::load(id);
    let prompt = case.ids("prompt_ids");
    let expected = case.ids("greedy_ids");
    let golden_logits = case.tensor("greedy_logits");
    let model = case.engine.model();
    let mut cache = model.new_cache(prompt.len() + expected.len());
    let _guard = tch::no_grad_guard();
    let mut logits = model.forward(&prompt, &mut cache, false);
    let mut got = Vec::new();
    for (step, _) in expected.iter().enumerate() {
        let diff = max_abs_diff(&logits.view([-1]), &golden_logits.get(step as i64));
        assert!(
            diff < TOLERANCE,
            "{id}: step {step} logits differ by {diff}"
        );
        let next = u32::try_from(logits.view([-1]).argmax(0, false).int64_value(&[])).expect("id");
        got.push(next);
        logits = model.forward(&[next], &mut cache, false);
    }
    assert_eq!(got, expected, "{id}: greedy tokens");
}

/// The engine's own path: chat template → ids, then greedy generation, as a job runs it.
fn chat_prompt_and_generation_match(id: &str) {
    let case = Case::load(id);
    let tokenizer = case.engine.tokenizer();
    let rendered = tokenizer
        .render_chat(&case.golden.chat_messages)
        .expect("render");
    assert_eq!(rendered, case.golden.chat_rendered, "{id}: chat template");
    let ids = tokenizer.encode(&rendered).expect("encode");
    assert_eq!(ids, case.golden.chat_ids, "{id}: prompt ids");

    let params = LlmParams {
        messages: case.golden.chat_messages.clone(),
        max_tokens: Some(8),
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        stop: vec![],
        seed: 0,
    };
    let mut streamed = String::new();
    let completion = case
        .engine
        .generate(&params, &CancelToken::new(), &mut |piece| {
            streamed.push_str(piece)
        })
        .expect("generate");
    assert_eq!(completion.usage.prompt_tokens as usize, ids.len());
    assert_eq!(
        completion.usage.completion_tokens as usize,
        completion.ids.len()
    );
    assert_eq!(
        streamed, completion.text,
        "{id}: streamed pieces add up to the text"
    );
    // Greedy decoding of the same prompt by one full forward pass per step agrees.
    let model = case.engine.model();
    let mut sequence = ids.clone();
    for &next in &completion.ids {
        let mut cache = model.new_cache(sequence.len());
        let logits = tch::no_grad(|| model.forward(&sequence, &mut cache, false));
        let argmax = logits.view([-1]).argmax(0, false).int64_value(&[]);
        assert_eq!(i64::from(next), argmax, "{id}: cached vs uncached decoding");
        sequence.push(next);
    }
}

macro_rules! golden_tests {
    ($($name:ident => $id:literal),* $(,)?) => {
        mod prompt_logits {
            $(#[test] fn $name() { super::prompt_logits_match($id) })*
        }
        mod greedy_decode {
            $(#[test] fn $name() { super::greedy_decode_matches($id) })*
        }
        mod chat {
            $(#[test] fn $name() { super::chat_prompt_and_generation_match($id) })*
        }
    };
}

golden_tests! {
    tiny_llama => "tiny-llama",
    tiny_mistral => "tiny-mistral",
    tiny_mixtral => "tiny-mixtral",
    tiny_mixtral_gptq => "tiny-mixtral-gptq",
}
