//! T5's tokenizer as FluxPipeline's `_get_t5_prompt_embeds` calls it (diffusers 0.42.1):
//! `tokenizer_2(prompt, padding="max_length", max_length=max_sequence_length,
//! truncation=True)`. The prompt is encoded by the `tokenizers` library from the model's
//! `tokenizer_2/tokenizer.json` (SentencePiece Unigram with Metaspace pre-tokenization), cut to
//! `max_length − 1` pieces, ended with `</s>` (T5's post-processor `$A </s>`) and padded with
//! `<pad>` to `max_length`. For T5 v1.1, `<pad>` is id 0 and `</s>` id 1.

use std::path::{Path, PathBuf};

use tch::Tensor;
use tokenizers::Tokenizer;

use super::T5Error;
use crate::engine::diffusion::weights::WeightsError;

/// FLUX.1-dev's `max_sequence_length` (FluxPipeline's default).
pub const FLUX_DEV_MAX_LENGTH: usize = 512;
/// FLUX.1-schnell's `max_sequence_length` (its model card's setting).
pub const FLUX_SCHNELL_MAX_LENGTH: usize = 256;

const PAD: &str = "<pad>";
const EOS: &str = "</s>";

/// A T5 tokenizer that ends every prompt with `</s>` and pads or truncates it to a fixed length.
pub struct T5Tokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    max_length: usize,
    pad_id: i64,
    eos_id: i64,
}

impl std::fmt::Debug for T5Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5Tokenizer")
            .field("path", &self.path)
            .field("max_length", &self.max_length)
            .finish_non_exhaustive()
    }
}

impl T5Tokenizer {
    /// Loads `tokenizer.json` (a diffusers `tokenizer_2/tokenizer.json`); prompts become
    /// `max_length` ids ([`FLUX_DEV_MAX_LENGTH`] or [`FLUX_SCHNELL_MAX_LENGTH`] for Flux).
    pub fn from_file(path: &Path, max_length: usize) -> Result<Self, T5Error> {
        let file_error = |problem: String| WeightsError::File {
            path: path.to_owned(),
            problem,
        };
        if max_length == 0 {
            return Err(T5Error::Input(
                "max_length is 0; T5 prompts need room for at least </s>".to_owned(),
            ));
        }
        let mut tokenizer = Tokenizer::from_file(path).map_err(|e| {
            file_error(format!(
                "is not a tokenizer the tokenizers library can load ({e}); download the model's \
                 tokenizer_2/tokenizer.json again"
            ))
        })?;
        // The file's own truncation and padding settings would apply before ours.
        tokenizer
            .with_truncation(None)
            .map_err(|e| file_error(format!("has unusable truncation settings ({e})")))?;
        tokenizer.with_padding(None);
        let id = |token: &str| {
            tokenizer.token_to_id(token).map(i64::from).ok_or_else(|| {
                file_error(format!(
                    "has no `{token}` token, so it is not a T5 tokenizer; use the tokenizer_2/ \
                     folder of the Flux model"
                ))
            })
        };
        let (pad_id, eos_id) = (id(PAD)?, id(EOS)?);
        Ok(Self {
            tokenizer,
            path: path.to_owned(),
            max_length,
            pad_id,
            eos_id,
        })
    }

    /// The length every prompt is padded or truncated to.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// `prompt`'s ids: at most `max_length − 1` pieces, `</s>`, then `<pad>` up to `max_length`.
    pub fn encode(&self, prompt: &str) -> Result<Vec<i64>, T5Error> {
        let encoding = self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| T5Error::Tokenize(format!("{} ({e})", self.path.display())))?;
        let mut ids: Vec<i64> = encoding
            .get_ids()
            .iter()
            .take(self.max_length - 1)
            .map(|&id| i64::from(id))
            .collect();
        ids.push(self.eos_id);
        ids.resize(self.max_length, self.pad_id);
        Ok(ids)
    }

    /// The ids of every prompt, `[prompts, max_length]` i64 on the CPU: the encoder's input.
    pub fn encode_batch(&self, prompts: &[&str]) -> Result<Tensor, T5Error> {
        let rows = prompts
            .iter()
            .map(|p| self.encode(p))
            .collect::<Result<Vec<_>, _>>()?;
        let flat: Vec<i64> = rows.concat();
        Ok(Tensor::from_slice(&flat).view([prompts.len() as i64, self.max_length as i64]))
    }
}
