//! Safetensors weights: a Hugging Face model folder (one `model.safetensors`, or the shards
//! listed in `model.safetensors.index.json`), or any given files, such as a single-file diffusion
//! checkpoint. Files are memory-mapped; each tensor is copied
//! once, straight to its device and dtype, so loading an 8B model never holds a second full
//! copy in host memory.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors, tensor::Metadata};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::LlmError;

/// One mapped file and its parsed header.
struct Mapped {
    path: PathBuf,
    map: Mmap,
    header_len: usize,
    metadata: Metadata,
}

impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapped")
            .field("path", &self.path)
            .field("bytes", &self.map.len())
            .finish_non_exhaustive()
    }
}

/// The weights of one model, by tensor name.
#[derive(Debug)]
pub struct Weights {
    files: Vec<Mapped>,
    /// Tensor name → index into `files`.
    index: HashMap<String, usize>,
}

#[derive(Debug, Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl Weights {
    /// Opens `model.safetensors`, or every shard `model.safetensors.index.json` names.
    pub fn open(dir: &Path) -> Result<Self, LlmError> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let names: Vec<PathBuf> = if index_path.is_file() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| LlmError::io(&index_path, e))?;
            let index: ShardIndex = serde_json::from_str(&text).map_err(|e| LlmError::File {
                path: index_path.clone(),
                problem: format!("is not a valid shard index: {e}"),
            })?;
            let mut shards: Vec<&String> = index.weight_map.values().collect();
            shards.sort();
            shards.dedup();
            if shards.is_empty() {
                return Err(LlmError::File {
                    path: index_path,
                    problem: "lists no tensors; re-download it".to_owned(),
                });
            }
            shards.into_iter().map(|name| dir.join(name)).collect()
        } else if single.is_file() {
            vec![single]
        } else {
            return Err(LlmError::File {
                path: dir.to_owned(),
                problem: "has neither model.safetensors nor model.safetensors.index.json; \
                          download the model's weights into this folder"
                    .to_owned(),
            });
        };
        let names: Vec<&Path> = names.iter().map(PathBuf::as_path).collect();
        Self::open_files(&names)
    }

    /// Maps the given safetensors files; a name in several files resolves to the last.
    pub fn open_files(names: &[&Path]) -> Result<Self, LlmError> {
        let mut files = Vec::with_capacity(names.len());
        let mut index = HashMap::new();
        for &path in names {
            let mapped = map(path)?;
            for name in mapped.metadata.tensors().into_keys() {
                index.insert(name, files.len());
            }
            files.push(mapped);
        }
        Ok(Self { files, index })
    }

    /// The stored shape of `name`, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<i64>> {
        let file = &self.files[*self.index.get(name)?];
        let info = file.metadata.info(name)?;
        Some(info.shape.iter().map(|&d| d as i64).collect())
    }

    /// The files, for messages.
    pub fn describe(&self) -> String {
        self.file_names()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Every tensor name, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Loads `name`, checks it has `shape`, and places it on `device` as `kind` (`None`
    /// keeps the stored dtype, as integer tensors need).
    pub fn load(
        &self,
        name: &str,
        shape: &[i64],
        device: Device,
        kind: Option<Kind>,
    ) -> Result<Tensor, LlmError> {
        let file = self
            .index
            .get(name)
            .map(|&i| &self.files[i])
            .ok_or_else(|| LlmError::MissingTensor {
                name: name.to_owned(),
                files: self.file_names(),
            })?;
        let info = file
            .metadata
            .info(name)
            .ok_or_else(|| LlmError::MissingTensor {
                name: name.to_owned(),
                files: self.file_names(),
            })?;
        let stored: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        if stored != shape {
            return Err(LlmError::File {
                path: file.path.clone(),
                problem: format!(
                    "tensor `{name}` has shape {stored:?}, but config.json implies {shape:?}; \
                     the weights do not belong to this config"
                ),
            });
        }
        let stored_kind = kind_of(info.dtype).ok_or_else(|| LlmError::File {
            path: file.path.clone(),
            problem: format!(
                "tensor `{name}` has dtype {:?}, which this engine does not load",
                info.dtype
            ),
        })?;
        let (start, end) = info.data_offsets;
        let bytes = file
            .map
            .get(8 + file.header_len + start..8 + file.header_len + end)
            .ok_or_else(|| LlmError::File {
                path: file.path.clone(),
                problem: format!("tensor `{name}` lies past the end of the file; it is truncated, download it again"),
            })?;
        let tensor = Tensor::f_from_data_size(bytes, &stored, stored_kind)
            .map_err(|e| LlmError::Torch(format!("cannot copy tensor `{name}`: {e}")))?;
        let tensor = match kind {
            Some(kind) if kind != stored_kind => tensor.f_to_kind(kind),
            _ => Ok(tensor),
        }
        .and_then(|t| t.f_to_device(device))
        .map_err(|e| LlmError::from_torch(&format!("placing tensor `{name}` on {device:?}"), e))?;
        Ok(tensor)
    }

    fn file_names(&self) -> String {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect();
        names.join(", ")
    }
}

fn map(path: &Path) -> Result<Mapped, LlmError> {
    let file = File::open(path).map_err(|e| LlmError::io(path, e))?;
    // SAFETY: the map is read-only and lives as long as `Weights`. Another process
    // truncating the file while it is mapped would fault; model files are checked against
    // their SHA-256 right before loading and are not written while an agent runs.
    #[allow(unsafe_code)]
    let map = unsafe { Mmap::map(&file) }.map_err(|e| LlmError::io(path, e))?;
    let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(|e| LlmError::File {
        path: path.to_owned(),
        problem: format!("is not a valid safetensors file ({e}); download it again"),
    })?;
    Ok(Mapped {
        path: path.to_owned(),
        map,
        header_len,
        metadata,
    })
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        // fp8 checkpoints (T5 in the Flux single files) are upcast where they are placed.
        Dtype::F8_E4M3 => Kind::Float8e4m3fn,
        Dtype::F8_E5M2 => Kind::Float8e5m2,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: fp8 tensors were refused as "a dtype this engine does not load".
    #[test]
    fn fp8_tensors_load_with_their_kind_and_upcast_exactly() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("fp8.safetensors");
        // e4m3fn: 1.0, 2.0, -1.0, 0.5; e5m2: 1.0, 2.0, -1.0, 0.5.
        let e4m3 = [0x38u8, 0x40, 0xB8, 0x30];
        let e5m2 = [0x3Cu8, 0x40, 0xBC, 0x38];
        let views = [
            (
                "a",
                safetensors::tensor::TensorView::new(Dtype::F8_E4M3, vec![2, 2], &e4m3),
            ),
            (
                "b",
                safetensors::tensor::TensorView::new(Dtype::F8_E5M2, vec![4], &e5m2),
            ),
        ]
        .map(|(name, view)| (name, view.expect("a valid view")));
        safetensors::serialize_to_file(views, None, &path).expect("written");
        let weights = Weights::open_files(&[path.as_path()]).expect("opens");
        let a = weights
            .load("a", &[2, 2], Device::Cpu, None)
            .expect("loads");
        assert_eq!(a.kind(), Kind::Float8e4m3fn);
        let want = Tensor::from_slice(&[1.0f32, 2.0, -1.0, 0.5]);
        assert_eq!(a.to_kind(Kind::Float).reshape([4]), want);
        let b = weights
            .load("b", &[4], Device::Cpu, Some(Kind::Float))
            .expect("loads");
        assert_eq!(b, want);
    }
}
