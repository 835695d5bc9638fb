//! Weights stored as bitsandbytes 4-bit `Params4bit` (NF4 or FP4), as in lllyasviel's
//! `flux1-dev-bnb-nf4(-v2).safetensors`: [`Nf4Weights`] wraps a [`TensorSource`] and hands out
//! such weights dequantized to f32, every other tensor unchanged.
//!
//! The format follows bitsandbytes 0.50.2. `Linear4bit._save_to_state_dict`
//! (`bitsandbytes/nn/modules.py`) writes, for a weight `X.weight`:
//!
//! - `X.weight`: the 4-bit codes, two per byte, the first element in the high nibble, over the
//!   flattened weight, the last byte half filled when the element count is odd (uint8,
//!   `[(n + 1) / 2, 1]`; `backends/default/ops.py`: `quantize_4bit`, `_dequantize_4bit_compute`);
//! - `X.weight.quant_map`: the 16-entry code book (f32);
//! - `X.weight.absmax`: one scale per block of `blocksize` elements, blocks running over the
//!   flattened weight across row ends (f32), or with nested statistics (`compress_statistics`,
//!   Flux nf4 v1) those scales minus their mean quantized to uint8 with bitsandbytes' 8-bit
//!   dynamic map, `X.weight.nested_quant_map` (f32 `[256]`), and `X.weight.nested_absmax` (one
//!   f32 scale per `nested_blocksize` scales);
//! - `X.weight.quant_state.bitsandbytes__nf4` (or `__fp4`): the UTF-8 bytes of a JSON object
//!   with `quant_type`, `blocksize`, `dtype`, `shape`, and when nested `nested_blocksize`,
//!   `nested_dtype`, `nested_offset` (`functional.py`: `QuantState.as_dict(packed=True)`,
//!   `utils.py`: `pack_dict_to_tensor`).
//!
//! Dequantization is `dequantize_4bit`: `code[q] × absmax[block]` in f32, where for nested
//! statistics `absmax = nested_code[q_absmax] × nested_absmax[block'] + nested_offset`
//! (`dequantize_blockwise`). Like bitsandbytes' kernels, the code book is the built-in one of
//! the quant type (`get_4bit_type`); the stored `quant_map` must equal it. bitsandbytes then
//! casts to the quant state's `dtype` (bf16 in the Flux files); here the f32 values are returned
//! and [`super::weights::place`] casts them to the kind the model runs in, which gives the same
//! numbers when that kind is the quant state's dtype.
//! `scripts/fixtures/diffusion_nf4.py` checks all of this against bitsandbytes itself.

use std::path::PathBuf;

use serde::Deserialize;
use tch::{Kind, Tensor};

use super::weights::{TensorSource, WeightsError};

/// NF4's code book (`get_4bit_type("nf4")`): quantiles of N(0, 1), scaled to [-1, 1].
const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// FP4's values in bit-pattern order (`get_4bit_type("fp4")`: 1 sign, 2 exponent, 1 mantissa
/// bit), before the division by the largest magnitude, 12. Code 8 is +0: bitsandbytes writes
/// it as the Python integer `-0`.
const FP4_UNSCALED: [f32; 16] = [
    0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0,
];

/// Block sizes bitsandbytes' 4-bit kernels accept.
const BLOCKSIZES: [i64; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Entries of the 8-bit map that quantizes nested statistics.
const NESTED_CODES: i64 = 256;

/// How far the stored code book may be from the built-in one.
const CODE_TOLERANCE: f64 = 1e-6;

/// The 4-bit formats bitsandbytes serializes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuantType {
    Nf4,
    Fp4,
}

impl QuantType {
    const ALL: [Self; 2] = [Self::Nf4, Self::Fp4];

    fn name(self) -> &'static str {
        match self {
            Self::Nf4 => "nf4",
            Self::Fp4 => "fp4",
        }
    }

    fn code_book(self) -> [f32; 16] {
        match self {
            Self::Nf4 => NF4,
            Self::Fp4 => FP4_UNSCALED.map(|v| v / 12.0),
        }
    }
}

/// The JSON packed into `X.weight.quant_state.bitsandbytes__<type>`.
#[derive(Debug, Deserialize)]
struct PackedState {
    quant_type: String,
    blocksize: i64,
    dtype: String,
    shape: Option<Vec<i64>>,
    #[serde(default)]
    nested_blocksize: Option<i64>,
    #[serde(default)]
    nested_dtype: Option<String>,
    #[serde(default)]
    nested_offset: Option<f64>,
}

/// A [`TensorSource`] that dequantizes bitsandbytes 4-bit weights of the source it wraps.
///
/// A tensor `X` with a `X.quant_state.bitsandbytes__nf4` (or `__fp4`) companion comes back
/// dequantized, as f32 of the shape its quant state records (checked against the shape asked
/// for); every other tensor, the companions included, passes through unchanged.
pub struct Nf4Weights<'a> {
    inner: &'a dyn TensorSource,
    name: String,
}

impl std::fmt::Debug for Nf4Weights<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nf4Weights")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<'a> Nf4Weights<'a> {
    /// Wraps `inner`; `name` stands for it (its file) in error messages.
    pub fn new(inner: &'a dyn TensorSource, name: &str) -> Self {
        Self {
            inner,
            name: name.to_owned(),
        }
    }

    /// Whether `name` is stored quantized (has a bitsandbytes 4-bit quant state).
    pub fn is_quantized(&self, name: &str) -> bool {
        QuantType::ALL
            .iter()
            .any(|t| self.inner.contains(&state_key(name, *t)))
    }

    /// Dequantizes the 4-bit weight `name` to f32 of the shape its quant state records, on the
    /// CPU. Errors name the weight and say what in its quant state is wrong.
    pub fn dequantize(&self, name: &str) -> Result<Tensor, WeightsError> {
        let quant_type = self.quant_type(name)?;
        let state = self.packed_state(name, quant_type)?;
        let shape = self.check_state(name, quant_type, &state)?;
        let n: i64 = shape.iter().product();
        let packed = self.packed_codes(name, n)?;
        let blocks = (n + state.blocksize - 1) / state.blocksize;
        let absmax = self.absmax(name, &state, blocks)?;
        let code = self.code_book(name, quant_type)?;
        let codes = Tensor::stack(
            &[
                packed.bitwise_right_shift_tensor_scalar(4),
                packed.bitwise_and(0x0f),
            ],
            1,
        )
        .view([-1])
        .narrow(0, 0, n);
        let scales = absmax
            .repeat_interleave_self_int(state.blocksize, 0, None)
            .narrow(0, 0, n);
        Ok((code.index_select(0, &codes) * scales).view(shape.as_slice()))
    }

    fn quant_type(&self, name: &str) -> Result<QuantType, WeightsError> {
        let found: Vec<QuantType> = QuantType::ALL
            .into_iter()
            .filter(|t| self.inner.contains(&state_key(name, *t)))
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(WeightsError::MissingTensor {
                name: state_key(name, QuantType::Nf4),
                source_name: self.name.clone(),
            }),
            _ => Err(self.corrupt(name, "has both an nf4 and an fp4 quant state")),
        }
    }

    fn packed_state(&self, name: &str, quant_type: QuantType) -> Result<PackedState, WeightsError> {
        let key = state_key(name, quant_type);
        let bytes = self.inner.stored(&key)?;
        if bytes.kind() != Kind::Uint8 || bytes.dim() != 1 {
            return Err(self.corrupt(
                name,
                &format!(
                    "has `{key}` of dtype {:?} and shape {:?}, not the bytes of a JSON object",
                    bytes.kind(),
                    bytes.size()
                ),
            ));
        }
        let bytes = Vec::<u8>::try_from(&bytes)
            .map_err(|e| self.corrupt(name, &format!("has an unreadable `{key}` ({e})")))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            self.corrupt(
                name,
                &format!("has `{key}` that is not a bitsandbytes quant state ({e})"),
            )
        })
    }

    /// Checks the packed state against itself and the bitsandbytes limits; returns the shape.
    fn check_state(
        &self,
        name: &str,
        quant_type: QuantType,
        state: &PackedState,
    ) -> Result<Vec<i64>, WeightsError> {
        if state.quant_type != quant_type.name() {
            return Err(self.corrupt(
                name,
                &format!(
                    "says quant_type `{}` under a `bitsandbytes__{}` key",
                    state.quant_type,
                    quant_type.name()
                ),
            ));
        }
        if !BLOCKSIZES.contains(&state.blocksize) {
            return Err(self.corrupt(
                name,
                &format!(
                    "has blocksize {}; bitsandbytes writes one of {BLOCKSIZES:?}",
                    state.blocksize
                ),
            ));
        }
        if !["float32", "float16", "bfloat16"].contains(&state.dtype.as_str()) {
            return Err(self.corrupt(
                name,
                &format!(
                    "has dtype `{}`; bitsandbytes writes float32, float16 or bfloat16",
                    state.dtype
                ),
            ));
        }
        match &state.shape {
            Some(shape) if !shape.is_empty() && shape.iter().all(|&d| d > 0) => Ok(shape.clone()),
            shape => Err(self.corrupt(
                name,
                &format!("has shape {shape:?}, not the weight's dimensions"),
            )),
        }
    }

    /// The packed codes as i64, one byte per entry.
    fn packed_codes(&self, name: &str, n: i64) -> Result<Tensor, WeightsError> {
        let packed = self.inner.stored(name)?;
        if packed.kind() != Kind::Uint8 {
            return Err(self.corrupt(
                name,
                &format!(
                    "is stored as {:?}; only uint8 storage (bitsandbytes' default \
                     quant_storage) is supported",
                    packed.kind()
                ),
            ));
        }
        let bytes = (n + 1) / 2;
        if packed.numel() != bytes as usize {
            return Err(self.corrupt(
                name,
                &format!(
                    "holds {} packed bytes where its quant state's shape needs {bytes}",
                    packed.numel()
                ),
            ));
        }
        Ok(packed.view([-1]).to_kind(Kind::Int64))
    }

    /// One f32 scale per block, undoing the nested quantization when present.
    fn absmax(&self, name: &str, state: &PackedState, blocks: i64) -> Result<Tensor, WeightsError> {
        let absmax = self.inner.stored(&format!("{name}.absmax"))?;
        self.check_count(name, "absmax", &absmax, blocks)?;
        if !self.inner.contains(&format!("{name}.nested_absmax")) {
            return self.float(name, "absmax", absmax);
        }
        let (Some(nested_blocksize), Some(offset)) = (state.nested_blocksize, state.nested_offset)
        else {
            return Err(self.corrupt(
                name,
                "has nested statistics but no nested_blocksize or nested_offset in its quant state",
            ));
        };
        if nested_blocksize <= 0 || !offset.is_finite() {
            return Err(self.corrupt(
                name,
                &format!("has nested_blocksize {nested_blocksize}, nested_offset {offset}"),
            ));
        }
        if let Some(dtype) = state.nested_dtype.as_deref().filter(|d| *d != "float32") {
            return Err(self.corrupt(
                name,
                &format!("has nested_dtype `{dtype}`; bitsandbytes writes float32"),
            ));
        }
        if absmax.kind() != Kind::Uint8 {
            return Err(self.corrupt(
                name,
                &format!(
                    "has nested statistics but absmax of dtype {:?}, not uint8",
                    absmax.kind()
                ),
            ));
        }
        let nested = self.inner.stored(&format!("{name}.nested_absmax"))?;
        let nested_blocks = (blocks + nested_blocksize - 1) / nested_blocksize;
        self.check_count(name, "nested_absmax", &nested, nested_blocks)?;
        let nested = self.float(name, "nested_absmax", nested)?;
        let code = self.inner.stored(&format!("{name}.nested_quant_map"))?;
        self.check_count(name, "nested_quant_map", &code, NESTED_CODES)?;
        let code = self.float(name, "nested_quant_map", code)?;
        let scales = nested
            .repeat_interleave_self_int(nested_blocksize, 0, None)
            .narrow(0, 0, blocks);
        let offset = Tensor::from(offset as f32);
        Ok(code.index_select(0, &absmax.view([-1]).to_kind(Kind::Int64)) * scales + offset)
    }

    /// The built-in code book, after checking the stored `quant_map` agrees with it.
    fn code_book(&self, name: &str, quant_type: QuantType) -> Result<Tensor, WeightsError> {
        let stored = self.inner.stored(&format!("{name}.quant_map"))?;
        self.check_count(name, "quant_map", &stored, 16)?;
        let stored = self.float(name, "quant_map", stored)?;
        let code = Tensor::from_slice(&quant_type.code_book());
        let off = (&stored - &code).abs().max().double_value(&[]);
        if off.is_nan() || off > CODE_TOLERANCE {
            return Err(self.corrupt(
                name,
                &format!(
                    "has a quant_map that is not bitsandbytes' {} code book (off by {off})",
                    quant_type.name()
                ),
            ));
        }
        Ok(code)
    }

    fn check_count(
        &self,
        name: &str,
        part: &str,
        tensor: &Tensor,
        want: i64,
    ) -> Result<(), WeightsError> {
        if tensor.numel() == want as usize {
            return Ok(());
        }
        Err(self.corrupt(
            name,
            &format!(
                "has `{name}.{part}` of shape {:?} where {want} values are needed",
                tensor.size()
            ),
        ))
    }

    fn float(&self, name: &str, part: &str, tensor: Tensor) -> Result<Tensor, WeightsError> {
        if tensor.is_floating_point() {
            return Ok(tensor.view([-1]).to_kind(Kind::Float));
        }
        Err(self.corrupt(
            name,
            &format!(
                "has `{name}.{part}` of dtype {:?}, not floating point",
                tensor.kind()
            ),
        ))
    }

    fn corrupt(&self, name: &str, problem: &str) -> WeightsError {
        WeightsError::File {
            path: PathBuf::from(&self.name),
            problem: format!(
                "the 4-bit weight `{name}` {problem}; the file is damaged or was not written by \
                 bitsandbytes' Linear4bit, download it again"
            ),
        }
    }
}

impl TensorSource for Nf4Weights<'_> {
    fn tensor(&self, name: &str, shape: &[i64]) -> Result<Tensor, WeightsError> {
        if !self.is_quantized(name) {
            return self.inner.tensor(name, shape);
        }
        let tensor = self.dequantize(name)?;
        if tensor.size() != shape {
            return Err(WeightsError::Shape {
                name: name.to_owned(),
                source_name: self.name.clone(),
                expected: shape.to_vec(),
                found: tensor.size(),
            });
        }
        Ok(tensor)
    }

    fn stored(&self, name: &str) -> Result<Tensor, WeightsError> {
        if self.is_quantized(name) {
            self.dequantize(name)
        } else {
            self.inner.stored(name)
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
}

fn state_key(name: &str, quant_type: QuantType) -> String {
    format!("{name}.quant_state.bitsandbytes__{}", quant_type.name())
}
