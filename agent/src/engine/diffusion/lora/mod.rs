//! LoRA and LoCon files in the kohya-ss sd-scripts / A1111 layout, merged into the UNet and text
//! encoder weights as they load.
//!
//! A file holds, per module, `<name>.lora_down.weight` (`[rank, in]`, or `[rank, in, kh, kw]`
//! for a conv), `<name>.lora_up.weight` (`[out, rank]` or `[out, rank, 1, 1]`) and an optional
//! scalar `<name>.alpha`; `<name>` is `lora_unet_` (UNet), `lora_te_` / `lora_te1_` (SD 1.5's
//! CLIP-L, SDXL's first encoder) or `lora_te2_` (SDXL's bigG) + the module's path with `.`
//! replaced by `_`. A LoRA at scale `s` changes the weight `W` to
//! `W + s · (alpha / rank) · (up ⋅ down)`, with `up` and `down` flattened to matrices and the
//! product reshaped to `W` (alpha defaults to rank), computed in f32 on the CPU and cast back to
//! `W`'s dtype. That is the merge diffusers 0.42.1 performs for such files
//! (`src/diffusers/loaders/lora_pipeline.py` `StableDiffusionLoraLoaderMixin.lora_state_dict`
//! and `fuse_lora`, with the key conversion of `lora_conversion_utils.py`
//! `_convert_non_diffusers_lora_to_diffusers` and `_maybe_map_sgm_blocks_to_diffusers`), except
//! where diffusers drops a per-module alpha for the file's most common one (UNet attention and
//! text encoder modules; see the fixture script).
//!
//! [`LoraMerged`] is a [`TensorSource`](super::weights::TensorSource) over the base weights, so
//! `UNet::load` and `ClipTextModel::load` merge without knowing it; `names.rs` maps the names
//! they ask for to kohya names. Every module must be merged exactly once:
//! [`LoraFile::check_applied`] refuses a LoRA whose modules matched nothing (one made for another
//! base model) and names the base it was probably made for. LoHa, LoKr, DoRA, Tucker LoCon and
//! diffusers / PEFT-format files are refused with the reason.
//! `scripts/fixtures/diffusion_lora.py` records diffusers' fused weights and outputs for tiny
//! SD 1.5- and SDXL-style LoRAs.

mod merge;
mod names;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use tch::Tensor;

pub use self::merge::{LoraMerged, LoraTarget, TextEncoderSlot};

/// The kohya prefixes of the modules this engine merges.
const PREFIXES: [&str; 4] = ["lora_unet_", "lora_te_", "lora_te1_", "lora_te2_"];

/// How many unmatched modules an error names.
const EXAMPLES: usize = 4;

/// Why a LoRA cannot be used. Messages name the file and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// The file could not be read.
    #[error("cannot read LoRA {file}: {problem}; download it again")]
    Read {
        /// The file.
        file: String,
        /// What failed.
        problem: String,
    },
    /// The file is a kind of network this engine does not merge.
    #[error(
        "LoRA {file} is {kind}, which is not supported (key `{key}`); use a LoRA or LoCon saved \
         in the kohya-ss / A1111 format (`lora_unet_….lora_down.weight`, `.lora_up.weight`, \
         `.alpha`)"
    )]
    Unsupported {
        /// The file.
        file: String,
        /// What kind of network it is.
        kind: String,
        /// A key that shows it.
        key: String,
    },
    /// The file is in the kohya layout but inconsistent.
    #[error("LoRA {file} is malformed: {problem}; download it again or re-save it with kohya-ss")]
    Malformed {
        /// The file.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// Modules that matched no weight of the loaded model.
    #[error(
        "LoRA {file} has {count} module(s) that match no weight of this model ({examples}); it \
         was probably made for {base}; choose a LoRA made for this model's base"
    )]
    Unmatched {
        /// The file.
        file: String,
        /// How many modules matched nothing.
        count: usize,
        /// A few of them.
        examples: String,
        /// The base model the LoRA was probably made for.
        base: String,
    },
    /// Modules merged more than once.
    #[error(
        "LoRA {file} had module(s) merged more than once ({examples}); load each component once \
         per parsed LoRA file"
    )]
    MergedTwice {
        /// The file.
        file: String,
        /// A few of them.
        examples: String,
    },
    /// A scale that is not a finite number.
    #[error("LoRA scale {scale} for {file} is not a finite number; pass a weight such as 0.8")]
    Scale {
        /// The file.
        file: String,
        /// The scale given.
        scale: f64,
    },
}

/// One module's factors.
#[derive(Debug)]
struct Module {
    down: Tensor,
    up: Tensor,
    alpha: Option<f64>,
    /// How many times a [`LoraMerged`] merged it.
    merged: Cell<usize>,
}

impl Module {
    /// Module `module`'s down, up and alpha from a file's `tensors`.
    fn from_tensors(tensors: &BTreeMap<String, Tensor>, module: &str) -> Result<Self, String> {
        let factor = |suffix: &str| {
            let key = format!("{module}.{suffix}");
            tensors
                .get(&key)
                .map(Tensor::shallow_clone)
                .ok_or_else(|| format!("module `{module}` has no `{key}`"))
        };
        let (down, up) = (factor("lora_down.weight")?, factor("lora_up.weight")?);
        check_factors(module, &down, &up)?;
        let alpha = match tensors.get(&format!("{module}.alpha")) {
            Some(a) if a.numel() == 1 => Some(a.reshape([-1]).double_value(&[0])),
            Some(a) => {
                return Err(format!(
                    "`{module}.alpha` has shape {:?}; it must be a scalar",
                    a.size()
                ));
            }
            None => None,
        };
        Ok(Self {
            down,
            up,
            alpha,
            merged: Cell::new(0),
        })
    }
}

/// A parsed kohya LoRA / LoCon file.
#[derive(Debug)]
pub struct LoraFile {
    name: String,
    /// `ss_base_model_version` from the file's metadata, as kohya writes it.
    base_hint: Option<String>,
    /// By module name with its `lora_…_` prefix.
    modules: BTreeMap<String, Module>,
}

impl LoraFile {
    /// Reads and checks a `.safetensors` LoRA.
    pub fn read(path: &Path) -> Result<Self, LoraError> {
        let file = path.display().to_string();
        let tensors = Tensor::read_safetensors(path).map_err(|e| LoraError::Read {
            file: file.clone(),
            problem: format!("not a readable safetensors file ({e})"),
        })?;
        let mut lora = Self::from_tensors(&file, tensors)?;
        lora.base_hint = base_model_metadata(path);
        Ok(lora)
    }

    /// Checks tensors already in memory; `name` stands for their origin in messages.
    pub fn from_tensors(
        name: &str,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Result<Self, LoraError> {
        let tensors: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        if let Some((kind, key)) = tensors.keys().find_map(|k| unsupported(k).map(|u| (u, k))) {
            return Err(LoraError::Unsupported {
                file: name.to_owned(),
                kind: kind.to_owned(),
                key: key.clone(),
            });
        }
        let malformed = |problem: String| LoraError::Malformed {
            file: name.to_owned(),
            problem,
        };
        let mut modules = BTreeMap::new();
        for key in tensors.keys() {
            if let Some(module) = key.strip_suffix(".lora_down.weight") {
                let factors = Module::from_tensors(&tensors, module).map_err(malformed)?;
                modules.insert(module.to_owned(), factors);
            }
        }
        let orphan = tensors.keys().find(|k| {
            let module = k
                .strip_suffix(".lora_up.weight")
                .or_else(|| k.strip_suffix(".alpha"));
            module.is_some_and(|m| !modules.contains_key(m))
        });
        if let Some(orphan) = orphan {
            return Err(malformed(format!(
                "`{orphan}` has no matching lora_down.weight"
            )));
        }
        Ok(Self {
            name: name.to_owned(),
            base_hint: None,
            modules,
        })
    }

    /// Where the LoRA came from (its path, or the name given to [`Self::from_tensors`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many modules the file changes.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// Whether the file changes nothing.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// The modules (kohya names, such as `lora_te2_text_model_encoder_layers_0_mlp_fc1`) no
    /// [`LoraMerged`] has merged yet, in name order.
    pub fn unused_keys(&self) -> Vec<String> {
        self.modules
            .iter()
            .filter(|(_, m)| m.merged.get() == 0)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// After every component has loaded: an error unless each module was merged exactly once.
    /// A LoRA whose modules match nothing was made for another base model; the error names a
    /// few modules and that base.
    pub fn check_applied(&self) -> Result<(), LoraError> {
        let unused = self.unused_keys();
        if !unused.is_empty() {
            return Err(LoraError::Unmatched {
                file: self.name.clone(),
                count: unused.len(),
                examples: examples(unused.iter()),
                base: self.probable_base(),
            });
        }
        let twice: Vec<&String> = self
            .modules
            .iter()
            .filter(|(_, m)| m.merged.get() > 1)
            .map(|(k, _)| k)
            .collect();
        if !twice.is_empty() {
            return Err(LoraError::MergedTwice {
                file: self.name.clone(),
                examples: examples(twice.into_iter()),
            });
        }
        Ok(())
    }

    /// The base model the LoRA was probably trained on: from kohya's `ss_base_model_version`
    /// metadata when present, else from its module names and cross-attention width.
    pub fn probable_base(&self) -> String {
        if let Some(hint) = &self.base_hint {
            let known = [
                ("sdxl", "SDXL"),
                ("sd_v1", "SD 1.5"),
                ("sd_v2", "SD 2.x"),
                ("sd3", "SD 3"),
                ("flux", "Flux"),
            ];
            return match known.iter().find(|(p, _)| hint.starts_with(p)) {
                Some((_, base)) => format!("{base} (its metadata says `{hint}`)"),
                None => format!("`{hint}` (from its metadata)"),
            };
        }
        let any = |f: &dyn Fn(&str) -> bool| self.modules.keys().any(|k| f(k));
        if any(&|k| k.contains("double_blocks") || k.contains("single_blocks")) {
            return "Flux".to_owned();
        }
        let cross = self
            .modules
            .iter()
            .find(|(k, _)| k.starts_with("lora_unet_") && k.ends_with("attn2_to_k"))
            .map(|(_, m)| m.down.size()[1]);
        match cross {
            Some(768) => return "SD 1.5".to_owned(),
            Some(1024) => return "SD 2.x".to_owned(),
            Some(2048) => return "SDXL".to_owned(),
            _ => {}
        }
        let ldm = [
            "lora_unet_input_blocks",
            "lora_unet_middle_block",
            "lora_unet_output",
        ];
        if any(&|k| k.starts_with("lora_te2_") || ldm.iter().any(|p| k.starts_with(p))) {
            "SDXL".to_owned()
        } else if any(&|k| k.starts_with("lora_unet_") || k.starts_with("lora_te_")) {
            "SD 1.x / 2.x".to_owned()
        } else {
            "an unknown base model".to_owned()
        }
    }

    /// The module named `key` (with its prefix), counting the merge.
    fn take(&self, key: &str) -> Option<&Module> {
        let module = self.modules.get(key)?;
        module.merged.set(module.merged.get() + 1);
        Some(module)
    }

    /// The module names that start with one of `prefixes`, with the prefix it starts with.
    fn modules_under<'a>(
        &'a self,
        prefixes: &'a [&'static str],
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.modules.keys().filter_map(move |k| {
            let prefix = prefixes.iter().find(|p| k.starts_with(**p))?;
            Some((k.as_str(), &k[prefix.len()..]))
        })
    }
}

/// The kind of network `key` shows the file to be, when it is one this engine does not merge.
fn unsupported(key: &str) -> Option<&'static str> {
    let kinds = [
        ("hada_", "a LoHa (LyCORIS `hada_` keys)"),
        ("lokr_", "a LoKr (LyCORIS `lokr_` keys)"),
        ("dora_scale", "a DoRA (`dora_scale` keys)"),
        (
            ".lora_mid.",
            "a LoCon with Tucker decomposition (`lora_mid` keys)",
        ),
        (".oft_", "an OFT (`oft_` keys)"),
        (
            ".lora_A.",
            "in the diffusers / PEFT format (`lora_A` / `lora_B` keys)",
        ),
        (
            ".lora_B.",
            "in the diffusers / PEFT format (`lora_A` / `lora_B` keys)",
        ),
        (
            "_lora.down.",
            "in the old diffusers format (`to_q_lora.down` keys)",
        ),
        (
            ".lora_linear_layer.",
            "in the diffusers format (`lora_linear_layer` keys)",
        ),
    ];
    if let Some((_, kind)) = kinds.iter().find(|(marker, _)| key.contains(marker)) {
        return Some(kind);
    }
    if key.ends_with(".diff") || key.ends_with(".diff_b") {
        return Some("a full weight difference (LyCORIS `diff` keys)");
    }
    let suffixes = [".lora_down.weight", ".lora_up.weight", ".alpha"];
    if !suffixes.iter().any(|s| key.ends_with(s)) {
        return Some("not a kohya LoRA (a key without lora_down / lora_up / alpha)");
    }
    if !PREFIXES.iter().any(|p| key.starts_with(p)) {
        return Some(
            "for a model this engine does not merge (its keys are not under lora_unet_, \
             lora_te_, lora_te1_ or lora_te2_)",
        );
    }
    None
}

/// Checks that `down` and `up` form a LoRA or LoCon pair.
fn check_factors(module: &str, down: &Tensor, up: &Tensor) -> Result<(), String> {
    let (d, u) = (down.size(), up.size());
    let conv_up = u.len() == 4 && u[2] == 1 && u[3] == 1;
    let pair = matches!((d.len(), u.len()), (2, 2) | (4, 2) | (2, 4) | (4, 4));
    if !pair || (u.len() == 4 && !conv_up) || d[0] != u[1] || d[0] == 0 {
        return Err(format!(
            "`{module}` has lora_down {d:?} and lora_up {u:?}; expected [rank, in(, kh, kw)] and \
             [out, rank(, 1, 1)]"
        ));
    }
    Ok(())
}

/// Up to [`EXAMPLES`] names, quoted, and how many more.
fn examples<'a>(names: impl ExactSizeIterator<Item = &'a String>) -> String {
    let total = names.len();
    let mut shown: Vec<String> = names.take(EXAMPLES).map(|k| format!("`{k}`")).collect();
    if total > EXAMPLES {
        shown.push(format!("and {} more", total - EXAMPLES));
    }
    shown.join(", ")
}

/// kohya's `ss_base_model_version` from a safetensors header (8-byte length, then JSON).
fn base_model_metadata(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = usize::try_from(u64::from_le_bytes(len)).ok()?;
    if len > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; len];
    file.read_exact(&mut header).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    let version = header.get("__metadata__")?.get("ss_base_model_version")?;
    Some(version.as_str()?.to_owned())
}
