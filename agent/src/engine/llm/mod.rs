//! The LLM engine: Llama 3, Mistral and Mixtral (dense or GPTQ 4-bit) decoders on libtorch,
//! loaded from a Hugging Face model folder. It generates completions, and on a validator
//! scores other agents' completions token by token for review (`score`).

pub mod config;
mod engine;
mod gptq;
pub mod model;
pub mod sampling;
mod score;
pub mod synth;
pub mod synth_tokenizer;
pub mod template;
pub mod text;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

/// Why a model could not be loaded or run. Messages name the file and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "tensor `{name}` is missing from {files}; the download is incomplete or is not this architecture"
    )]
    MissingTensor { name: String, files: String },
    #[error("{0}")]
    Torch(String),
    #[error(
        "out of device memory while {during}; choose a smaller model or free the GPU ({detail})"
    )]
    OutOfMemory { during: String, detail: String },
}

impl LlmError {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            error,
        }
    }

    /// Wraps a libtorch failure, telling out-of-memory apart (its fix is different).
    pub(crate) fn from_torch(during: &str, error: tch::TchError) -> Self {
        let detail = error.to_string();
        if detail.contains("out of memory") {
            Self::OutOfMemory {
                during: during.to_owned(),
                detail: detail.lines().next().unwrap_or_default().to_owned(),
            }
        } else {
            Self::Torch(format!("{during}: {detail}"))
        }
    }
}

pub use engine::{Completion, LlmEngine, placement};
pub use score::{GREEDY_TIE_TOLERANCE, ScoredCompletion};
