//! The T5 text encoder and tokenizer against transformers.
//!
//! `scripts/fixtures/diffusion_t5.py` built a tiny `T5EncoderModel` with Flux's text_encoder_2
//! architecture (gated-gelu, 32 relative-position buckets up to distance 128, an attention
//! width unlike d_model), saved it with transformers (`shared.weight`) and in the single-file
//! layout under `text_encoders.t5xxl.transformer.` (`encoder.embed_tokens.weight` instead), and
//! recorded its `last_hidden_state` for a 160-token batch with padding, without an attention
//! mask as FluxPipeline calls it. It also built a tiny T5 tokenizer and recorded the ids
//! `T5TokenizerFast` gives for a few prompts with FluxPipeline's padding and truncation. All in
//! `tests/fixtures/diffusion/t5/`. Both layouts must reproduce the states within 1e-4 on the
//! CPU in f32, and the tokenizer the ids exactly.

mod common;

use common::Fixtures;
use infermine_agent::engine::diffusion::t5::{
    SINGLE_FILE_PREFIX, T5Config, T5EncoderModel, T5Error, T5Layout, T5Tokenizer,
};
use infermine_agent::engine::diffusion::weights::{SafetensorsFiles, TensorSource, WeightsError};
use infermine_agent::engine::llm::weights::Weights;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

const FIXTURES: Fixtures = Fixtures("t5");

/// The prompts of the fixture script, in its order.
const PROMPTS: [&str; 7] = [
    "a photo of a cat",
    "A Photo  of the dog, sitting on grass.",
    "a red cat and a blue dog sitting under the green tree in the city at night with a light",
    "",
    "   leading and trailing spaces   ",
    "the cat</s> dog <extra_id_0> sky",
    "unknown: café 日本 ☃",
];

fn config() -> T5Config {
    T5Config::from_file(&FIXTURES.path("t5/config.json")).expect("config.json")
}

fn hf(prefix: &str) -> T5Layout {
    T5Layout::HuggingFace {
        prefix: prefix.to_owned(),
    }
}

fn load(source: &dyn TensorSource, layout: &T5Layout, kind: Kind) -> T5EncoderModel {
    T5EncoderModel::load(config(), source, layout, Device::Cpu, kind).expect("load")
}

fn max_diff(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size(), "shape");
    (got.to_kind(Kind::Float) - want)
        .abs()
        .max()
        .double_value(&[])
}

fn check(encoder: &T5EncoderModel, layout: &str) {
    let ids = FIXTURES.golden("t5", "input_ids");
    let got = tch::no_grad(|| encoder.forward(&ids)).expect("forward");
    let diff = max_diff(&got, &FIXTURES.golden("t5", "last_hidden_state"));
    assert!(diff <= TOLERANCE, "{layout}: max abs difference {diff}");
}

#[test]
fn encoder_from_diffusers_folder_matches_transformers() {
    let source = FIXTURES.files("t5/model.safetensors");
    check(&load(&source, &hf(""), Kind::Float), "HF folder");
}

#[test]
fn encoder_from_single_file_matches_transformers() {
    let source = FIXTURES.files("single_file.safetensors");
    assert!(!source.contains(&format!("{SINGLE_FILE_PREFIX}shared.weight")));
    check(
        &load(&source, &hf(SINGLE_FILE_PREFIX), Kind::Float),
        "single file",
    );
}

#[test]
fn encoder_from_memory_mapped_single_file_matches_transformers() {
    let mapped =
        Weights::open_files(&[&FIXTURES.path("single_file.safetensors")]).expect("map file");
    check(
        &load(&mapped, &hf(SINGLE_FILE_PREFIX), Kind::Float),
        "memory-mapped single file",
    );
}

/// bf16 and f16 run with the norms and softmax in f32 (and `wo` in f32 for f16), so they stay
/// close to the f32 reference; the output has the kind the model was loaded as.
#[test]
fn half_precision_stays_close_to_f32() {
    let source = FIXTURES.files("t5/model.safetensors");
    let ids = FIXTURES.golden("t5", "input_ids");
    let want = FIXTURES.golden("t5", "last_hidden_state");
    let scale = want.abs().max().double_value(&[]);
    for kind in [Kind::BFloat16, Kind::Half] {
        let encoder = load(&source, &hf(""), kind);
        let got = tch::no_grad(|| encoder.forward(&ids)).expect("forward");
        assert_eq!(got.kind(), kind);
        let diff = max_diff(&got, &want);
        assert!(diff <= 0.05 * scale, "{kind:?}: max abs difference {diff}");
    }
}

#[test]
fn tokenizer_matches_t5_tokenizer_fast() {
    let tokenizer =
        T5Tokenizer::from_file(&FIXTURES.path("tokenizer/tokenizer.json"), 16).expect("load");
    let want = FIXTURES.golden("tokenizer", "input_ids");
    let got = tokenizer.encode_batch(&PROMPTS).expect("encode");
    assert_eq!(got.size(), want.size());
    for (i, prompt) in PROMPTS.iter().enumerate() {
        let (got, want) = (
            Vec::<i64>::try_from(got.get(i as i64)).expect("ids"),
            Vec::<i64>::try_from(want.get(i as i64)).expect("ids"),
        );
        assert_eq!(got, want, "prompt {prompt:?}");
    }
}

#[test]
fn tokenizer_feeds_the_encoder_the_golden_ids() {
    let tokenizer =
        T5Tokenizer::from_file(&FIXTURES.path("tokenizer/tokenizer.json"), 160).expect("load");
    let ids = tokenizer.encode(PROMPTS[0]).expect("encode");
    let want = Vec::<i64>::try_from(FIXTURES.golden("t5", "input_ids").get(0)).expect("ids");
    assert_eq!(ids, want);
}

#[test]
fn tokenizer_without_t5_tokens_is_refused() {
    let path = std::env::temp_dir().join(format!("t5-no-eos-{}.json", std::process::id()));
    let text = std::fs::read_to_string(FIXTURES.path("tokenizer/tokenizer.json")).expect("read");
    std::fs::write(&path, text.replace("</s>", "<eos>")).expect("write");
    let error = T5Tokenizer::from_file(&path, 16).expect_err("no </s>");
    std::fs::remove_file(&path).ok();
    assert!(error.to_string().contains("`</s>`"), "{error}");
    let error = T5Tokenizer::from_file(&FIXTURES.path("t5/config.json"), 16).expect_err("json");
    assert!(error.to_string().contains("config.json"), "{error}");
}

/// The fixture `file` with tensor `name` dropped.
fn without(file: &str, name: &str) -> SafetensorsFiles {
    let tensors = Tensor::read_safetensors(FIXTURES.path(file))
        .expect("fixture weights")
        .into_iter()
        .filter(|(n, _)| n != name);
    SafetensorsFiles::from_tensors(&format!("tampered {file}"), tensors)
}

fn load_error(source: &dyn TensorSource, layout: &T5Layout) -> T5Error {
    T5EncoderModel::load(config(), source, layout, Device::Cpu, Kind::Float)
        .expect_err("the load must fail")
}

#[test]
fn missing_tensor_error_names_it() {
    for name in [
        "encoder.block.1.layer.1.layer_norm.weight",
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "encoder.final_layer_norm.weight",
    ] {
        let error = load_error(&without("t5/model.safetensors", name), &hf(""));
        assert!(
            matches!(error, T5Error::Weights(WeightsError::MissingTensor { .. })),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(name), "{message}");
        assert!(
            message.contains("tampered t5/model.safetensors"),
            "{message}"
        );
    }
}

#[test]
fn missing_embedding_names_both_accepted_names() {
    let name = format!("{SINGLE_FILE_PREFIX}encoder.embed_tokens.weight");
    let error = load_error(
        &without("single_file.safetensors", &name),
        &hf(SINGLE_FILE_PREFIX),
    );
    let message = error.to_string();
    assert!(message.contains(&name), "{message}");
    assert!(
        message.contains(&format!("{SINGLE_FILE_PREFIX}shared.weight")),
        "{message}"
    );
}

#[test]
fn wrong_layout_prefix_names_the_first_missing_tensor() {
    let error = load_error(&FIXTURES.files("single_file.safetensors"), &hf(""));
    assert!(error.to_string().contains("`shared.weight`"), "{error}");
}

#[test]
fn config_errors_name_the_field() {
    let text = std::fs::read_to_string(FIXTURES.path("t5/config.json")).expect("config");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let edit = |field: &str, value: serde_json::Value| {
        let mut json = json.clone();
        match value {
            serde_json::Value::Null => json.as_object_mut().expect("object").remove(field),
            v => json
                .as_object_mut()
                .expect("object")
                .insert(field.into(), v),
        };
        T5Config::from_json(&json.to_string()).expect_err("bad config")
    };
    let cases = [
        ("d_model", serde_json::Value::Null, "d_model"),
        ("num_heads", 0.into(), "num_heads"),
        ("feed_forward_proj", "relu".into(), "relu"),
        (
            "relative_attention_num_buckets",
            2.into(),
            "relative_attention_num_buckets",
        ),
        (
            "relative_attention_max_distance",
            4.into(),
            "relative_attention_max_distance",
        ),
    ];
    for (field, value, expected) in cases {
        let message = edit(field, value);
        assert!(message.contains(expected), "{field}: {message}");
    }
    assert_eq!(
        T5Config::from_json(&text).expect("fixture config").d_kv,
        6,
        "attention width 24 differs from d_model 32"
    );
}

#[test]
fn invalid_input_ids_are_refused() {
    let encoder = load(
        &FIXTURES.files("t5/model.safetensors"),
        &hf(""),
        Kind::Float,
    );
    let vocab = encoder.config().vocab_size;
    let bad = [
        Tensor::from_slice(&[1i64, 2, 3]),
        Tensor::from_slice(&[1.0f32, 2.0]).view([1, 2]),
        Tensor::from_slice(&[1i64, vocab]).view([1, 2]),
        Tensor::zeros([1, 0], (Kind::Int64, Device::Cpu)),
    ];
    for ids in bad {
        let error = encoder.forward(&ids).expect_err("invalid ids");
        assert!(matches!(error, T5Error::Input(_)), "{error:?}");
    }
}
