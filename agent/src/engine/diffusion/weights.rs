//! Where the diffusion components read their tensors from, and why that can fail.
//!
//! [`TensorSource`] looks a tensor up by its full name and checks it against the shape the
//! component's config implies. Two sources: memory-mapped safetensors files
//! ([`crate::engine::llm::weights::Weights`], for multi-GB single-file checkpoints) and
//! [`SafetensorsFiles`], tensors held in memory (small files and tests).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::Tensor;

/// Why a weights file or one of its tensors could not be used. Messages name the file and the
/// tensor and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A file could not be read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// `config.json` or a weights file is malformed or unsupported.
    #[error("{path}: {problem}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The weights lack a tensor the config requires.
    #[error(
        "tensor `{name}` is missing from {source_name}; the download is incomplete, the key \
         prefix or layout is wrong, or the file does not hold this component"
    )]
    MissingTensor {
        /// The full tensor name looked up.
        name: String,
        /// Where it was looked up.
        source_name: String,
    },
    /// A tensor's shape disagrees with the config.
    #[error(
        "tensor `{name}` in {source_name} has shape {found:?}, but the config implies \
         {expected:?}; the weights do not belong to this config"
    )]
    Shape {
        /// The full tensor name.
        name: String,
        /// Where it was found.
        source_name: String,
        /// The shape the config implies.
        expected: Vec<i64>,
        /// The stored shape.
        found: Vec<i64>,
    },
    /// libtorch could not copy the tensor to its device (usually: out of device memory).
    #[error(
        "cannot place tensor `{name}` on the device: {detail}; if the device is out of memory, \
         choose a smaller model or free the GPU"
    )]
    Place {
        /// The full tensor name.
        name: String,
        /// libtorch's message.
        detail: String,
    },
}

/// Reads `name` from `source` (checking its shape) and places it on `device` as `kind`.
pub fn place(
    source: &dyn TensorSource,
    name: &str,
    shape: &[i64],
    device: tch::Device,
    kind: tch::Kind,
) -> Result<Tensor, WeightsError> {
    source
        .tensor(name, shape)?
        .f_to_device(device)
        .and_then(|t| t.f_to_kind(kind))
        .map_err(|e| WeightsError::Place {
            name: name.to_owned(),
            detail: e.to_string(),
        })
}

/// Reads a component's `config.json` and parses it with `parse`, whose error says which field
/// is wrong; the error names the file.
pub fn read_config<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, WeightsError> {
    let text = std::fs::read_to_string(path).map_err(|error| WeightsError::Io {
        path: path.to_owned(),
        error,
    })?;
    parse(&text).map_err(|problem| WeightsError::File {
        path: path.to_owned(),
        problem,
    })
}

/// Somewhere tensors can be looked up by name, checked against the shape the config implies.
pub trait TensorSource {
    /// Returns `name` as stored, after checking it has `shape`; errors name the tensor.
    fn tensor(&self, name: &str, shape: &[i64]) -> Result<Tensor, WeightsError>;

    /// Returns `name` as stored, whatever its shape: for tensors the config does not fix, such
    /// as a quantized weight's packed bytes and quant state. Errors name the tensor.
    ///
    /// Sources backed by files override this. The default answers that the tensor is missing,
    /// which suits sources that make tensors up from the shape they are asked for.
    fn stored(&self, name: &str) -> Result<Tensor, WeightsError> {
        Err(WeightsError::MissingTensor {
            name: name.to_owned(),
            source_name: "a tensor source that serves tensors only at a given shape".to_owned(),
        })
    }

    /// Whether `name` is present.
    fn contains(&self, name: &str) -> bool;
}

/// Memory-mapped safetensors files (a multi-GB single-file checkpoint is never read whole):
/// tensors are copied out one at a time, on the CPU in their stored dtype.
impl TensorSource for crate::engine::llm::weights::Weights {
    fn tensor(&self, name: &str, shape: &[i64]) -> Result<Tensor, WeightsError> {
        let found = self
            .shape(name)
            .ok_or_else(|| WeightsError::MissingTensor {
                name: name.to_owned(),
                source_name: self.describe(),
            })?;
        if found != shape {
            return Err(WeightsError::Shape {
                name: name.to_owned(),
                source_name: self.describe(),
                expected: shape.to_vec(),
                found,
            });
        }
        self.load(name, shape, tch::Device::Cpu, None)
            .map_err(|e| WeightsError::File {
                path: PathBuf::from(self.describe()),
                problem: e.to_string(),
            })
    }

    fn stored(&self, name: &str) -> Result<Tensor, WeightsError> {
        let shape = self
            .shape(name)
            .ok_or_else(|| WeightsError::MissingTensor {
                name: name.to_owned(),
                source_name: self.describe(),
            })?;
        self.tensor(name, &shape)
    }

    fn contains(&self, name: &str) -> bool {
        crate::engine::llm::weights::Weights::contains(self, name)
    }
}

/// The tensors of safetensors files held in host memory. Fine for text encoders on their own;
/// a full single-file checkpoint is read whole (a memory-mapped source can replace it).
#[derive(Debug)]
pub struct SafetensorsFiles {
    name: String,
    tensors: HashMap<String, Tensor>,
}

impl SafetensorsFiles {
    /// Reads every tensor of `paths`.
    pub fn read(paths: &[&Path]) -> Result<Self, WeightsError> {
        let mut tensors = HashMap::new();
        for path in paths {
            let read = Tensor::read_safetensors(path).map_err(|e| WeightsError::File {
                path: path.to_path_buf(),
                problem: format!("is not a readable safetensors file ({e}); download it again"),
            })?;
            tensors.extend(read);
        }
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        Ok(Self {
            name: names.join(", "),
            tensors,
        })
    }

    /// Wraps tensors already in memory; `name` stands for their origin in error messages.
    pub fn from_tensors(name: &str, tensors: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        Self {
            name: name.to_owned(),
            tensors: tensors.into_iter().collect(),
        }
    }
}

impl TensorSource for SafetensorsFiles {
    fn tensor(&self, name: &str, shape: &[i64]) -> Result<Tensor, WeightsError> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| WeightsError::MissingTensor {
                name: name.to_owned(),
                source_name: self.name.clone(),
            })?;
        if tensor.size() != shape {
            return Err(WeightsError::Shape {
                name: name.to_owned(),
                source_name: self.name.clone(),
                expected: shape.to_vec(),
                found: tensor.size(),
            });
        }
        Ok(tensor.shallow_clone())
    }

    fn stored(&self, name: &str) -> Result<Tensor, WeightsError> {
        self.tensors
            .get(name)
            .map(Tensor::shallow_clone)
            .ok_or_else(|| WeightsError::MissingTensor {
                name: name.to_owned(),
                source_name: self.name.clone(),
            })
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}
