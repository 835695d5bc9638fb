//! [`LoraMerged`]: base weights with the LoRA deltas added as a component loader reads them.

use std::collections::HashMap;
use std::path::PathBuf;

use tch::{Device, Kind, Tensor};

use super::names::{Names, Share};
use super::{LoraError, LoraFile, Module};
use crate::engine::diffusion::clip::ClipLayout;
use crate::engine::diffusion::unet::{UNetConfig, UNetLayout, ldm_names};
use crate::engine::diffusion::weights::{TensorSource, WeightsError};

/// Which text encoder a [`LoraTarget::TextEncoder`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoderSlot {
    /// SD 1.5's CLIP-L or SDXL's first encoder (CLIP-L): kohya's `lora_te_` and `lora_te1_`
    /// modules, as diffusers reads both.
    First,
    /// SDXL's second encoder (OpenCLIP bigG): kohya's `lora_te2_` modules.
    Second,
}

/// The component a [`LoraMerged`] feeds, named as its loader will be called.
#[derive(Debug, Clone, Copy)]
pub enum LoraTarget<'a> {
    /// The UNet, to be loaded with this config and layout.
    UNet {
        /// The UNet's config (its LDM names follow from it).
        config: &'a UNetConfig,
        /// The layout `UNet::load` will be given.
        layout: &'a UNetLayout,
    },
    /// A CLIP text encoder.
    TextEncoder {
        /// Which of the pipeline's encoders.
        slot: TextEncoderSlot,
        /// The layout `ClipTextModel::load` will be given.
        layout: &'a ClipLayout,
    },
}

/// A [`TensorSource`] that returns `base`'s tensors with the deltas of LoRA modules that target
/// them added, and `base`'s tensors unchanged otherwise. Pass it to the component's loader in
/// place of `base`, then call [`LoraFile::check_applied`] once every component has loaded.
pub struct LoraMerged<'a> {
    base: &'a dyn TensorSource,
    loras: Vec<(&'a LoraFile, f64)>,
    names: Names,
    /// Module name in [`Names::canonical`] spelling → the LoRA (index) and its full name there.
    index: HashMap<String, Vec<(usize, &'a str)>>,
}

impl std::fmt::Debug for LoraMerged<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loras: Vec<(&str, f64)> = self.loras.iter().map(|(l, s)| (l.name(), *s)).collect();
        f.debug_struct("LoraMerged")
            .field("loras", &loras)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl<'a> LoraMerged<'a> {
    /// Merges `loras`, each at its scale (0 leaves the weights as they are), into the tensors
    /// `target`'s loader reads from `base`.
    pub fn new(
        base: &'a dyn TensorSource,
        loras: &[(&'a LoraFile, f64)],
        target: LoraTarget<'_>,
    ) -> Result<Self, LoraError> {
        if let Some((lora, scale)) = loras.iter().find(|(_, s)| !s.is_finite()) {
            return Err(LoraError::Scale {
                file: lora.name().to_owned(),
                scale: *scale,
            });
        }
        let names = match target {
            LoraTarget::UNet { config, layout } => Names::unet(layout, ldm_names(config).ok()),
            LoraTarget::TextEncoder { slot, layout } => Names::clip(
                layout,
                match slot {
                    TextEncoderSlot::First => &["lora_te_", "lora_te1_"],
                    TextEncoderSlot::Second => &["lora_te2_"],
                },
            ),
        };
        let mut index: HashMap<String, Vec<(usize, &'a str)>> = HashMap::new();
        for (i, (lora, _)) in loras.iter().enumerate() {
            for (key, module) in lora.modules_under(names.kohya_prefixes()) {
                index
                    .entry(names.canonical(module))
                    .or_default()
                    .push((i, key));
            }
        }
        Ok(Self {
            base,
            loras: loras.to_vec(),
            names,
            index,
        })
    }

    /// The sum of the deltas the LoRAs add to tensor `name` of `shape`, in f32 on the CPU;
    /// `None` when none targets it.
    fn delta(&self, name: &str, shape: &[i64]) -> Result<Option<Tensor>, WeightsError> {
        let mut total: Option<Tensor> = None;
        for part in self.names.parts(name, shape) {
            let Some(hits) = self.index.get(&part.key) else {
                continue;
            };
            let target = share_shape(&part.share, shape);
            for &(i, key) in hits {
                let (lora, scale) = self.loras[i];
                let Some(module) = lora.take(key) else {
                    continue;
                };
                if scale == 0.0 {
                    continue;
                }
                let delta = module_delta(module, scale, &target)
                    .ok_or_else(|| mismatch(lora, key, module, name, &target))?;
                let delta = place_share(delta, &part.share, shape);
                total = Some(match total {
                    Some(sum) => sum + delta,
                    None => delta,
                });
            }
        }
        Ok(total)
    }
}

impl TensorSource for LoraMerged<'_> {
    fn tensor(&self, name: &str, shape: &[i64]) -> Result<Tensor, WeightsError> {
        let base = self.base.tensor(name, shape)?;
        Ok(match self.delta(name, shape)? {
            Some(delta) => {
                (base.to_kind(Kind::Float) + delta.to_device(base.device())).to_kind(base.kind())
            }
            None => base,
        })
    }

    fn contains(&self, name: &str) -> bool {
        self.base.contains(name)
    }
}

/// The shape of the share of a tensor of `shape` one module changes.
fn share_shape(share: &Share, shape: &[i64]) -> Vec<i64> {
    match share {
        Share::Whole => shape.to_vec(),
        Share::Transposed => shape.iter().rev().copied().collect(),
        Share::Rows { len, .. } => std::iter::once(*len)
            .chain(shape.iter().skip(1).copied())
            .collect(),
    }
}

/// `scale · alpha / rank · up ⋅ down` reshaped to `target`, or `None` when the factors do not
/// fit it.
fn module_delta(module: &Module, scale: f64, target: &[i64]) -> Option<Tensor> {
    let f32_cpu = |t: &Tensor| t.to_device(Device::Cpu).to_kind(Kind::Float).flatten(1, -1);
    let (down, up) = (f32_cpu(&module.down), f32_cpu(&module.up));
    let (rank, fan_in, out) = (down.size()[0], down.size()[1], up.size()[0]);
    if target.first() != Some(&out) || out * fan_in != target.iter().product::<i64>() {
        return None;
    }
    let alpha = module.alpha.unwrap_or(rank as f64);
    Some(up.mm(&down).reshape(target) * (scale * alpha / rank as f64))
}

/// A share's delta as a delta of the whole tensor of `shape`.
fn place_share(delta: Tensor, share: &Share, shape: &[i64]) -> Tensor {
    match share {
        Share::Whole => delta,
        Share::Transposed => delta.tr().contiguous(),
        Share::Rows { start, len } => {
            let whole = Tensor::zeros(shape, (Kind::Float, Device::Cpu));
            whole.narrow(0, *start, *len).copy_(&delta);
            whole
        }
    }
}

fn mismatch(
    lora: &LoraFile,
    key: &str,
    module: &Module,
    name: &str,
    target: &[i64],
) -> WeightsError {
    WeightsError::File {
        path: PathBuf::from(lora.name()),
        problem: format!(
            "module `{key}` (lora_down {:?}, lora_up {:?}) does not fit `{name}` ({target:?}); \
             the LoRA was probably made for {}; choose a LoRA made for this model's base",
            module.down.size(),
            module.up.size(),
            lora.probable_base()
        ),
    }
}
