//! bitsandbytes 4-bit weights against bitsandbytes.
//!
//! `scripts/fixtures/diffusion_nf4.py` quantized five small `Linear4bit` layers with
//! bitsandbytes 0.50.2 (NF4 and FP4; blocksizes 32, 64, 128; nested and plain statistics; an odd
//! element count and partial blocks; f32 and bf16 quant dtypes), saved the model's state dict
//! under `model.diffusion_model.` as the Flux nf4 checkpoints do, and recorded bitsandbytes'
//! dequantization of what it wrote in `tests/fixtures/diffusion/nf4/`. The f32 values must
//! match exactly; cast to the quant state's dtype, so must bitsandbytes' own output.

mod common;

use common::Fixtures;
use infermine_agent::engine::diffusion::nf4::Nf4Weights;
use infermine_agent::engine::diffusion::weights::{
    SafetensorsFiles, TensorSource, WeightsError, place,
};
use infermine_agent::engine::llm::weights::Weights;
use tch::{Device, Kind, Tensor};

const FIXTURES: Fixtures = Fixtures("nf4");

const PREFIX: &str = "model.diffusion_model.";

/// Layer, `[out, in]`, the quant state's dtype.
const LAYERS: [(&str, [i64; 2], Kind); 5] = [
    ("odd", [5, 37], Kind::Float),
    ("plain", [48, 64], Kind::Float),
    ("many", [90, 100], Kind::Float),
    ("fp4", [24, 40], Kind::BFloat16),
    ("flux_like", [32, 128], Kind::BFloat16),
];

fn files() -> SafetensorsFiles {
    FIXTURES.files("model.safetensors")
}

fn weight(layer: &str) -> String {
    format!("{PREFIX}{layer}.weight")
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Every layer of `source` dequantizes to bitsandbytes' values.
fn check_all(source: &dyn TensorSource, what: &str) {
    let weights = Nf4Weights::new(source, what);
    for (layer, shape, dtype) in LAYERS {
        let got = weights.tensor(&weight(layer), &shape).expect("dequantize");
        assert_eq!(got.kind(), Kind::Float, "{layer}: dequantized to f32");
        let want = FIXTURES.golden(layer, "dequantized_f32");
        assert_eq!(got.size(), want.size(), "{layer}: shape");
        let diff = max_diff(&got, &want);
        assert!(diff == 0.0, "{layer} ({what}): max abs difference {diff}");
        if dtype != Kind::Float {
            let cast = got.to_kind(dtype);
            let bnb = FIXTURES.golden(layer, "dequantized");
            assert!(
                cast.equal(&bnb),
                "{layer} ({what}): cast to {dtype:?} differs from bitsandbytes' output"
            );
        }
    }
}

#[test]
fn dequantized_weights_equal_bitsandbytes() {
    check_all(&files(), "in memory");
}

#[test]
fn dequantized_weights_from_memory_mapped_file_equal_bitsandbytes() {
    let mapped = Weights::open_files(&[&FIXTURES.path("model.safetensors")]).expect("map");
    check_all(&mapped, "memory-mapped");
}

#[test]
fn plain_tensors_and_quant_companions_pass_through() {
    let source = files();
    let weights = Nf4Weights::new(&source, "fixture");
    for name in [
        format!("{PREFIX}fp4.bias"),
        format!("{PREFIX}norm.scale"),
        format!("{PREFIX}odd.weight.absmax"),
    ] {
        assert!(!weights.is_quantized(&name), "{name}");
        let inner = source.stored(&name).expect("fixture tensor");
        let got = weights.tensor(&name, &inner.size()).expect("pass through");
        assert_eq!(got.kind(), inner.kind(), "{name}: dtype kept");
        assert!(got.equal(&inner), "{name}: values kept");
        assert!(weights.contains(&name));
    }
    assert!(weights.is_quantized(&weight("odd")));
    assert!(weights.is_quantized(&weight("fp4")));
    assert!(!weights.contains(&format!("{PREFIX}nothing.weight")));
}

#[test]
fn place_casts_dequantized_weight_to_the_model_kind() {
    let source = files();
    let weights = Nf4Weights::new(&source, "fixture");
    let placed = place(
        &weights,
        &weight("flux_like"),
        &[32, 128],
        Device::Cpu,
        Kind::BFloat16,
    )
    .expect("place");
    assert!(placed.equal(&FIXTURES.golden("flux_like", "dequantized")));
}

#[test]
fn wrong_requested_shape_names_weight_and_shapes() {
    let source = files();
    let weights = Nf4Weights::new(&source, "fixture");
    let error = weights
        .tensor(&weight("plain"), &[64, 48])
        .expect_err("transposed shape");
    assert!(matches!(error, WeightsError::Shape { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&weight("plain")), "{message}");
    assert!(
        message.contains("[64, 48]") && message.contains("[48, 64]"),
        "{message}"
    );
}

/// The fixture with `name` dropped (`None`) or replaced.
fn tampered(name: &str, replace: Option<Tensor>) -> SafetensorsFiles {
    let mut replace = replace;
    let tensors = Tensor::read_safetensors(FIXTURES.path("model.safetensors"))
        .expect("fixture weights")
        .into_iter()
        .filter_map(|(n, t)| {
            if n != name {
                Some((n, t))
            } else {
                replace.take().map(|r| (n, r))
            }
        });
    SafetensorsFiles::from_tensors("tampered.safetensors", tensors)
}

fn json_bytes(text: &str) -> Tensor {
    Tensor::from_slice(text.as_bytes())
}

const MANY_STATE: &str = "model.diffusion_model.many.weight.quant_state.bitsandbytes__nf4";

/// `layer`'s weight read from `source` must fail with a message naming it and `expected`.
fn assert_corrupt(source: &SafetensorsFiles, layer: &str, shape: [i64; 2], expected: &str) {
    let weights = Nf4Weights::new(source, "tampered.safetensors");
    let error = weights
        .tensor(&weight(layer), &shape)
        .expect_err("corrupt quant state");
    let message = error.to_string();
    assert!(message.contains(&weight(layer)), "{message}");
    assert!(message.contains(expected), "{message}");
    assert!(message.contains("tampered.safetensors"), "{message}");
}

#[test]
fn quant_state_that_is_not_json_is_reported() {
    let source = tampered(MANY_STATE, Some(json_bytes("{\"quant_type\": \"nf4\", ")));
    assert_corrupt(&source, "many", [90, 100], "not a bitsandbytes quant state");
}

#[test]
fn quant_state_shape_disagreeing_with_packed_bytes_is_reported() {
    let state = r#"{"quant_type": "nf4", "blocksize": 32, "dtype": "float32", "shape": [90, 101],
        "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 3.5}"#;
    let source = tampered(MANY_STATE, Some(json_bytes(state)));
    let weights = Nf4Weights::new(&source, "tampered.safetensors");
    let message = weights
        .dequantize(&weight("many"))
        .expect_err("wrong shape")
        .to_string();
    assert!(message.contains("4500 packed bytes"), "{message}");
    assert!(message.contains("4545"), "{message}");
}

#[test]
fn quant_state_problems_are_named() {
    let cases = [
        (
            r#"{"quant_type": "fp4", "blocksize": 32, "dtype": "float32", "shape": [90, 100]}"#,
            "quant_type `fp4`",
        ),
        (
            r#"{"quant_type": "nf4", "blocksize": 48, "dtype": "float32", "shape": [90, 100]}"#,
            "blocksize 48",
        ),
        (
            r#"{"quant_type": "nf4", "blocksize": 32, "dtype": "int8", "shape": [90, 100]}"#,
            "dtype `int8`",
        ),
        (
            r#"{"quant_type": "nf4", "blocksize": 32, "dtype": "float32", "shape": null}"#,
            "shape None",
        ),
        (
            r#"{"quant_type": "nf4", "blocksize": 32, "dtype": "float32", "shape": [90, 100]}"#,
            "no nested_blocksize or nested_offset",
        ),
    ];
    for (state, expected) in cases {
        let source = tampered(MANY_STATE, Some(json_bytes(state)));
        assert_corrupt(&source, "many", [90, 100], expected);
    }
}

#[test]
fn wrong_code_book_is_reported() {
    let name = format!("{PREFIX}plain.weight.quant_map");
    let fp4_code = Tensor::read_safetensors(FIXTURES.path("model.safetensors"))
        .expect("fixture weights")
        .into_iter()
        .find_map(|(n, t)| (n == format!("{PREFIX}fp4.weight.quant_map")).then_some(t))
        .expect("fp4 code book");
    let source = tampered(&name, Some(fp4_code));
    assert_corrupt(
        &source,
        "plain",
        [48, 64],
        "not bitsandbytes' nf4 code book",
    );
}

#[test]
fn missing_statistics_are_named() {
    for part in ["absmax", "nested_absmax", "quant_map"] {
        let name = format!("{PREFIX}odd.weight.{part}");
        let source = tampered(&name, None);
        let weights = Nf4Weights::new(&source, "tampered.safetensors");
        let error = weights
            .tensor(&weight("odd"), &[5, 37])
            .expect_err("missing statistics");
        let message = error.to_string();
        if part == "nested_absmax" {
            // Without it the uint8 absmax reads as plain statistics of the wrong dtype.
            assert!(message.contains("not floating point"), "{message}");
        } else {
            assert!(
                matches!(error, WeightsError::MissingTensor { .. }),
                "{error:?}"
            );
            assert!(message.contains(&name), "{message}");
        }
    }
}

#[test]
fn truncated_packed_weight_is_reported() {
    let name = weight("plain");
    let short = Tensor::zeros([1535, 1], (Kind::Uint8, Device::Cpu));
    let source = tampered(&name, Some(short));
    assert_corrupt(&source, "plain", [48, 64], "1535 packed bytes");
}
