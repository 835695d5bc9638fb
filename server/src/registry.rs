//! The model registry: which models the network serves, what each pays, what hardware it
//! needs, which request parameters it accepts, and which files make it up.
//!
//! The registry is data, not code. `server/models.toml` is embedded as the default
//! ([`Registry::builtin`]) and an operator may load their own file instead
//! ([`Registry::load`]). Either way it is validated once, at start-up, so a mistake stops the
//! coordinator with a message naming the file, the model and the field rather than
//! surfacing mid-request.
//!
//! Who uses what:
//! - `jobs` calls [`ModelSpec::validate_params`] before a job is persisted and reads the
//!   multiplier and the latency target and deadline when crediting points.
//! - `gateway` and `dispatch` call [`Registry::eligible`] to decide which models a device may
//!   be given: enough memory, and a GPU at or above the model's minimum in the
//!   [`GpuTiers`] table (the seed's "3070, 4060 Ti, A4000 or better").
//! - Agents get the file manifests. A file without its SHA-256 and size is *unpinned*
//!   ([`ModelFile::is_pinned`]): the registry accepts it so a model can be listed before its
//!   hashes are known, but agents refuse to load it until an operator fills them in.

mod gpu;
mod model;
mod params;
mod schema;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use infermine_protocol::{DeviceKind, GpuInfo};

pub use gpu::GpuTiers;
pub use model::{Family, ImageLimits, Limits, LlmLimits, ModelFile, ModelSpec, SyntheticLimits};
pub use params::ParamError;

/// The default registry, compiled in so a coordinator runs without any file of its own.
const BUILTIN_TOML: &str = include_str!("../models.toml");
const BUILTIN_ORIGIN: &str = "built-in models.toml";

/// Why a registry file was refused. Each message names the file; model errors also name the
/// model and field and say what would be accepted.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read the model registry file {path}: {error}; check the configured path")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Not TOML, a value of the wrong type, a missing key, or an unknown key (named).
    #[error("{origin} is not a valid model registry: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: [gpu_tiers]: {problem}")]
    GpuTiers { origin: String, problem: String },
    #[error("{origin}: no models are defined; add at least one [[model]] table")]
    NoModels { origin: String },
    #[error("{origin}: model id `{id}` is defined more than once; give each [[model]] its own id")]
    DuplicateId { origin: String, id: String },
    #[error("{origin}: model `{model}`: {field} {problem}")]
    Model {
        origin: String,
        model: String,
        field: String,
        problem: String,
    },
}

/// The validated set of models and the GPU tier table they refer to.
#[derive(Debug, Clone)]
pub struct Registry {
    origin: String,
    /// In file order, which is the order the portal lists them.
    models: Vec<ModelSpec>,
    by_id: HashMap<String, usize>,
    tiers: GpuTiers,
}

impl Registry {
    /// The registry compiled in from `server/models.toml`.
    ///
    /// # Panics
    /// Only if the embedded file is invalid, which a unit test rules out.
    pub fn builtin() -> Registry {
        Self::from_toml(BUILTIN_TOML, BUILTIN_ORIGIN)
            .unwrap_or_else(|error| panic!("the embedded server/models.toml is invalid: {error}"))
    }

    /// Parses and validates a registry; `origin` names it in errors (usually the path).
    pub fn from_toml(text: &str, origin: &str) -> Result<Registry, RegistryError> {
        let raw = schema::RawRegistry::parse(text, origin)?;
        let tiers =
            GpuTiers::from_table(raw.gpu_tiers).map_err(|problem| RegistryError::GpuTiers {
                origin: origin.to_owned(),
                problem,
            })?;
        if raw.model.is_empty() {
            return Err(RegistryError::NoModels {
                origin: origin.to_owned(),
            });
        }
        let mut models = Vec::with_capacity(raw.model.len());
        let mut by_id = HashMap::with_capacity(raw.model.len());
        for raw_model in raw.model {
            let spec = schema::build_model(raw_model, &tiers, origin)?;
            if by_id.insert(spec.id.clone(), models.len()).is_some() {
                return Err(RegistryError::DuplicateId {
                    origin: origin.to_owned(),
                    id: spec.id,
                });
            }
            models.push(spec);
        }
        Ok(Registry {
            origin: origin.to_owned(),
            models,
            by_id,
            tiers,
        })
    }

    /// Reads and validates a registry file (at start-up, so blocking I/O is fine).
    pub fn load(path: &Path) -> Result<Registry, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|error| RegistryError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Where this registry came from: a path, or `built-in models.toml`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn get(&self, id: &str) -> Option<&ModelSpec> {
        self.by_id.get(id).map(|&index| &self.models[index])
    }

    /// Every model, in file order.
    pub fn models(&self) -> impl Iterator<Item = &ModelSpec> {
        self.models.iter()
    }

    pub fn gpu_tiers(&self) -> &GpuTiers {
        &self.tiers
    }

    /// Whether a device may run a model: enough memory, and for a GPU a tier at or above the
    /// model's minimum (an unknown GPU is tier 0, so it meets no GPU minimum). A CPU device
    /// may only run models with no GPU minimum and `allow_cpu = true`. Being discontinued is
    /// not a hardware matter and does not change the answer.
    pub fn eligible(&self, model: &ModelSpec, device: &GpuInfo) -> bool {
        if device.vram_mb < model.min_vram_mb {
            return false;
        }
        match device.kind {
            DeviceKind::Cpu => model.allow_cpu && model.min_gpu.is_empty(),
            DeviceKind::Cuda => self.tiers.device_tier(device) >= model.min_gpu_tier,
        }
    }

    /// The models a device may run, in file order.
    pub fn eligible_models<'a>(
        &'a self,
        device: &'a GpuInfo,
    ) -> impl Iterator<Item = &'a ModelSpec> + 'a {
        self.models
            .iter()
            .filter(move |model| self.eligible(model, device))
    }

    /// Files that agents will refuse until an operator adds their SHA-256 and size, with
    /// their models; worth a warning at start-up.
    pub fn unpinned_files(&self) -> impl Iterator<Item = (&ModelSpec, &ModelFile)> {
        self.models
            .iter()
            .flat_map(|model| model.unpinned_files().map(move |file| (model, file)))
    }
}
