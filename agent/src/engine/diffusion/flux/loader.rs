//! Reads the transformer's tensors in either naming scheme. Every call site names a layer twice,
//! by its diffusers name and by its Black Forest Labs name, so the mapping of diffusers 0.42.1
//! `convert_flux_transformer_checkpoint_to_diffusers` (`src/diffusers/loaders/single_file_utils.py`)
//! reads next to the structure it fills. BFL's fused tensors (`img_attn.qkv`, `linear1`) are
//! read once and split by rows here, and `final_layer.adaLN_modulation.1` has its shift and
//! scale halves swapped, so the model itself only ever sees diffusers' layout. Lookups go
//! through [`TensorSource`], so a source that dequantizes on lookup (nf4) composes.

use tch::{Device, Kind, Tensor};

use super::{FluxError, FluxLayout};
use crate::engine::diffusion::weights::{TensorSource, place};

/// A linear layer's weight `[out, in]` and bias `[out]`.
#[derive(Debug)]
pub(super) struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    pub(super) fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }

    /// The device the weights live on.
    pub(super) fn device(&self) -> Device {
        self.weight.device()
    }
}

/// Places tensors of one layout on one device and dtype, under a block's names.
pub(super) struct Loader<'a> {
    source: &'a dyn TensorSource,
    device: Device,
    kind: Kind,
    /// The layout's prefix, then the block's diffusers or BFL name and a dot.
    at: String,
    bfl: bool,
}

impl<'a> Loader<'a> {
    pub(super) fn new(
        source: &'a dyn TensorSource,
        layout: &FluxLayout,
        device: Device,
        kind: Kind,
    ) -> Self {
        let (prefix, bfl) = match layout {
            FluxLayout::Diffusers { prefix } => (prefix, false),
            FluxLayout::Bfl { prefix } => (prefix, true),
        };
        Self {
            source,
            device,
            kind,
            at: prefix.clone(),
            bfl,
        }
    }

    /// The loader of one block: `diffusers` (`transformer_blocks.0`) or `bfl`
    /// (`double_blocks.0`), whichever this layout uses.
    pub(super) fn at(&self, diffusers: &str, bfl: &str) -> Loader<'a> {
        Loader {
            source: self.source,
            device: self.device,
            kind: self.kind,
            at: format!("{}{}.", self.at, self.pick(diffusers, bfl)),
            bfl: self.bfl,
        }
    }

    fn pick<'n>(&self, diffusers: &'n str, bfl: &'n str) -> &'n str {
        if self.bfl { bfl } else { diffusers }
    }

    fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor, FluxError> {
        let name = format!("{}{name}", self.at);
        Ok(place(self.source, &name, shape, self.device, self.kind)?)
    }

    fn raw_linear(&self, name: &str, out: i64, input: i64) -> Result<Linear, FluxError> {
        Ok(Linear {
            weight: self.get(&format!("{name}.weight"), &[out, input])?,
            bias: self.get(&format!("{name}.bias"), &[out])?,
        })
    }

    /// A linear layer stored whole in both layouts.
    pub(super) fn linear(
        &self,
        diffusers: &str,
        bfl: &str,
        out: i64,
        input: i64,
    ) -> Result<Linear, FluxError> {
        self.raw_linear(self.pick(diffusers, bfl), out, input)
    }

    /// q, k, v of width `d` each: diffusers' `names`, or BFL's `bfl` (`img_attn.qkv`) with
    /// the three stacked by rows, read once and split.
    pub(super) fn qkv(
        &self,
        names: [&str; 3],
        bfl: &str,
        d: i64,
    ) -> Result<[Linear; 3], FluxError> {
        let whole = self.whole(bfl, 3 * d, d)?;
        let whole = whole.as_ref();
        Ok([
            self.rows(names[0], whole, 0, d, d)?,
            self.rows(names[1], whole, d, d, d)?,
            self.rows(names[2], whole, 2 * d, d, d)?,
        ])
    }

    /// q, k, v of width `d` and an MLP input projection of width `mlp`: diffusers' `names`, or
    /// BFL's `bfl` (`linear1`) with the four stacked by rows, read once and split.
    pub(super) fn qkv_mlp(
        &self,
        names: [&str; 4],
        bfl: &str,
        d: i64,
        mlp: i64,
    ) -> Result<([Linear; 3], Linear), FluxError> {
        let whole = self.whole(bfl, 3 * d + mlp, d)?;
        let whole = whole.as_ref();
        let qkv = [
            self.rows(names[0], whole, 0, d, d)?,
            self.rows(names[1], whole, d, d, d)?,
            self.rows(names[2], whole, 2 * d, d, d)?,
        ];
        Ok((qkv, self.rows(names[3], whole, 3 * d, mlp, d)?))
    }

    /// BFL's fused linear `bfl` with `out` rows; `None` in the diffusers layout.
    fn whole(&self, bfl: &str, out: i64, input: i64) -> Result<Option<Linear>, FluxError> {
        if self.bfl {
            self.raw_linear(bfl, out, input).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Rows `start..start + out` of `whole`, or diffusers' `name` when there is no `whole`.
    fn rows(
        &self,
        name: &str,
        whole: Option<&Linear>,
        start: i64,
        out: i64,
        input: i64,
    ) -> Result<Linear, FluxError> {
        match whole {
            Some(whole) => Ok(Linear {
                weight: whole.weight.narrow(0, start, out),
                bias: whole.bias.narrow(0, start, out),
            }),
            None => self.raw_linear(name, out, input),
        }
    }

    /// diffusers' `AdaLayerNormContinuous.linear`, whose output is (scale, shift); BFL's
    /// `final_layer.adaLN_modulation.1` computes (shift, scale), so its halves are swapped.
    pub(super) fn scale_shift(
        &self,
        diffusers: &str,
        bfl: &str,
        out: i64,
        input: i64,
    ) -> Result<Linear, FluxError> {
        let linear = self.linear(diffusers, bfl, out, input)?;
        if !self.bfl {
            return Ok(linear);
        }
        let swap = |t: &Tensor| {
            let halves = t.chunk(2, 0);
            Tensor::cat(&[&halves[1], &halves[0]], 0)
        };
        Ok(Linear {
            weight: swap(&linear.weight),
            bias: swap(&linear.bias),
        })
    }

    /// An RMSNorm's scale: diffusers' `<name>.weight`, BFL's `<name>.scale`.
    pub(super) fn rms_scale(
        &self,
        diffusers: &str,
        bfl: &str,
        width: i64,
    ) -> Result<Tensor, FluxError> {
        if self.bfl {
            self.get(&format!("{bfl}.scale"), &[width])
        } else {
            self.get(&format!("{diffusers}.weight"), &[width])
        }
    }
}
