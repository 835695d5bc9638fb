//! Demo models: tiny random-weight models of each supported architecture that the agent writes
//! itself (`infermine-agent models synth`), in the same folder layout as a downloaded model, so
//! a fresh install serves real jobs on a CPU with no download. Their output is gibberish text
//! and noise images.
//!
//! Every synthesizer is deterministic (fixed seeds, a portable random generator, canonical
//! file layout), so the registry pins each file's SHA-256 like any other model's and the
//! integrity check runs for real.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, View};

use super::{diffusion, llm};

/// Every demo model id: the LLMs, then the image models.
pub fn demo_models() -> impl Iterator<Item = &'static str> {
    llm::synth::DEMO_MODELS
        .iter()
        .chain(diffusion::synth::DEMO_MODELS)
        .copied()
}

/// Whether `id` is a demo model.
pub fn is_demo_model(id: &str) -> bool {
    demo_models().any(|m| m == id)
}

/// Why a demo model could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("`{0}` is not a demo model; the demo models are {list}",
        list = demo_models().collect::<Vec<_>>().join(", "))]
    UnknownModel(String),
    #[error("cannot write {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Build(String),
}

/// Writes demo model `id` into `out/<id>/` and returns that folder.
pub fn synth(id: &str, out: &Path) -> Result<PathBuf, SynthError> {
    let files = if llm::synth::DEMO_MODELS.contains(&id) {
        llm::synth::files(id)?
    } else if diffusion::synth::DEMO_MODELS.contains(&id) {
        diffusion::synth::files(id)?
    } else {
        return Err(SynthError::UnknownModel(id.to_owned()));
    };
    write_folder(out, id, &files)
}

/// Writes `files` (paths relative to the model folder) into `out/<id>/`. They go to a
/// temporary folder first, which then replaces the model folder, so a failure leaves no half
/// model.
fn write_folder(out: &Path, id: &str, files: &[(String, Vec<u8>)]) -> Result<PathBuf, SynthError> {
    let dest = out.join(id);
    let staging = out.join(format!(".{id}.partial-{}", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |error| SynthError::Io { path, error }
    };
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    for (name, bytes) in files {
        let path = staging.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, bytes).map_err(io(&path))?;
    }
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
    }
    std::fs::rename(&staging, &dest).map_err(io(&dest))?;
    Ok(dest)
}

/// A tensor ready for `safetensors::serialize`.
#[derive(Debug, Clone)]
pub(crate) struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

pub(crate) fn f32s(shape: Vec<usize>, values: &[f32]) -> Raw {
    Raw {
        dtype: Dtype::F32,
        shape,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

pub(crate) fn i32s(shape: Vec<usize>, values: &[i32]) -> Raw {
    Raw {
        dtype: Dtype::I32,
        shape,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

pub(crate) fn f16s(shape: Vec<usize>, values: &[half::f16]) -> Raw {
    Raw {
        dtype: Dtype::F16,
        shape,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}
