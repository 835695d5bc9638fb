//! GPTQ 4-bit linear layers in the layout AutoGPTQ writes (and TheBloke's checkpoints use):
//!
//! - `qweight` int32 `[in / 8, out]`: eight 4-bit values per word along the input dimension,
//!   lowest bits first;
//! - `qzeros` int32 `[groups, out / 8]`: eight 4-bit zero points per word along the output
//!   dimension, stored minus one (the "v1" checkpoint format);
//! - `scales` f16 `[groups, out]`;
//! - `g_idx` int32 `[in]`: the group of each input channel. With act-order (`desc_act`) the
//!   groups follow the quantization order, so `g_idx` is not monotone.
//!
//! A weight is `(q - (zero + 1)) * scale` of its channel's group. On the CPU the layer is
//! dequantized once at load (f32 matmuls are the fast path there); on CUDA it stays packed
//! (a quarter of the f16 memory) and is dequantized on the fly for each product.

use tch::{Device, Kind, Tensor};

use super::LlmError;
use super::weights::Weights;

/// A packed 4-bit layer, `out_features × in_features`.
#[derive(Debug)]
pub struct GptqLinear {
    qweight: Tensor,
    qzeros: Tensor,
    scales: Tensor,
    g_idx: Tensor,
    shifts: Tensor,
}

impl GptqLinear {
    /// Loads `<prefix>.{qweight,qzeros,scales,g_idx}` and checks their shapes against the
    /// layer's size and group size.
    pub fn load(
        weights: &Weights,
        prefix: &str,
        in_features: usize,
        out_features: usize,
        group_size: usize,
        device: Device,
        dtype: Kind,
    ) -> Result<Self, LlmError> {
        if !in_features.is_multiple_of(8) || !out_features.is_multiple_of(8) {
            return Err(LlmError::Torch(format!(
                "`{prefix}` is {out_features}×{in_features}; 4-bit packing needs both multiples of 8"
            )));
        }
        let groups = in_features.div_ceil(group_size) as i64;
        let (inp, out) = (in_features as i64, out_features as i64);
        let qweight = weights.load(&format!("{prefix}.qweight"), &[inp / 8, out], device, None)?;
        let qzeros = weights.load(
            &format!("{prefix}.qzeros"),
            &[groups, out / 8],
            device,
            None,
        )?;
        let scales = weights.load(
            &format!("{prefix}.scales"),
            &[groups, out],
            device,
            Some(dtype),
        )?;
        let g_idx_name = format!("{prefix}.g_idx");
        let g_idx = if weights.contains(&g_idx_name) {
            weights.load(&g_idx_name, &[inp], device, Some(Kind::Int64))?
        } else {
            Tensor::arange(inp, (Kind::Int64, device)) / group_size as i64
        };
        let (lo, hi) = (g_idx.min().int64_value(&[]), g_idx.max().int64_value(&[]));
        if lo < 0 || hi >= groups {
            return Err(LlmError::Torch(format!(
                "`{g_idx_name}` names groups {lo}..={hi}, but the layer has {groups}; the file is corrupt"
            )));
        }
        let kind = qweight.kind();
        if kind != Kind::Int || qzeros.kind() != Kind::Int {
            return Err(LlmError::Torch(format!(
                "`{prefix}.qweight`/`qzeros` must be int32 (AutoGPTQ layout), found {kind:?}"
            )));
        }
        let shifts = Tensor::arange_start_step(0, 32, 4, (Kind::Int, device));
        Ok(Self {
            qweight,
            qzeros,
            scales,
            g_idx,
            shifts,
        })
    }

    /// The dense `[out, in]` weight in the scales' dtype, as a plain linear layer stores it.
    pub fn dequantize(&self) -> Tensor {
        self.dequantize_in_out().tr().contiguous()
    }

    /// `x · Wᵀ`, dequantizing for this product only.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.dequantize_in_out())
    }

    /// The dense weight as `[in, out]`, the packed layout's own order.
    fn dequantize_in_out(&self) -> Tensor {
        let words_in = self.qweight.size()[0];
        let out = self.qweight.size()[1];
        // [in/8, 1, out] >> [1, 8, 1] → [in/8, 8, out] → [in, out]
        let q = self
            .qweight
            .unsqueeze(1)
            .bitwise_right_shift(&self.shifts.view([1, 8, 1]))
            .bitwise_and(15)
            .reshape([words_in * 8, out]);
        let groups = self.qzeros.size()[0];
        let zeros = self
            .qzeros
            .unsqueeze(2)
            .bitwise_right_shift(&self.shifts.view([1, 1, 8]))
            .bitwise_and(15)
            .reshape([groups, out])
            + 1;
        let zeros = zeros.index_select(0, &self.g_idx);
        let scales = self.scales.index_select(0, &self.g_idx);
        (q - zeros).to_kind(scales.kind()) * scales
    }
}
