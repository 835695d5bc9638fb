//! [`LlmEngine`]: one loaded model on one device, turning chat requests into completions.
//!
//! A job renders the conversation with the model's own chat template, tokenizes it, runs the
//! prompt through the decoder in one prefill pass (filling a KV cache sized for the whole
//! sequence), then decodes one token per step: sample, detokenize incrementally, check stop
//! strings, stream the text that is certain. It ends at an end-of-sequence token, a stop
//! string, or `max_tokens`. A review job (`LlmScore`) scores another agent's completion
//! instead (see `score.rs`).

use std::path::Path;

use infermine_protocol::{
    DeviceKind, GpuInfo, JobAssignment, JobOutput, JobParams, LlmParams, LlmUsage, ModelKind,
};
use tch::{Device, Kind};

use super::LlmError;
use super::config::ModelConfig;
use super::model::Transformer;
use super::sampling::Sampler;
use super::text::CompletionText;
use super::tokenizer::TextTokenizer;
use crate::engine::{CancelToken, Engine, EngineError, EngineEvent, Precision};

/// Completion length when the request sets no `max_tokens`.
const DEFAULT_MAX_TOKENS: usize = 4096;

/// A model loaded on one device.
#[derive(Debug)]
pub struct LlmEngine {
    model: Transformer,
    tokenizer: TextTokenizer,
}

/// What a generation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub ids: Vec<u32>,
    pub usage: LlmUsage,
    /// `stop` or `length`, as OpenAI reports it.
    pub finish_reason: &'static str,
}

/// The libtorch device and dtype for an agent device: what `precision` forces, else bf16 on
/// CUDA and f32 on the CPU.
pub fn placement(device: &GpuInfo, precision: Precision) -> (Device, Kind) {
    let (torch_device, default) = match device.kind {
        DeviceKind::Cuda => (Device::Cuda(device.index as usize), Kind::BFloat16),
        DeviceKind::Cpu => (Device::Cpu, Kind::Float),
    };
    (torch_device, precision.kind().unwrap_or(default))
}

impl LlmEngine {
    /// Loads the model folder `dir` onto `device` in `dtype`.
    pub fn load(dir: &Path, device: Device, dtype: Kind) -> Result<Self, LlmError> {
        let _no_grad = tch::no_grad_guard();
        let config = ModelConfig::load(dir)?;
        let tokenizer = TextTokenizer::load(dir).map_err(|e| LlmError::Torch(e.to_string()))?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(LlmError::File {
                path: dir.join("tokenizer.json"),
                problem: format!(
                    "has {} tokens but config.json's vocab_size is {}; they belong to different models",
                    tokenizer.vocab_size(),
                    config.vocab_size
                ),
            });
        }
        let model = super::super::catch_torch_panic("loading the weights", || {
            Transformer::load(dir, config, device, dtype)
        })
        .map_err(|e| LlmError::Torch(e.to_string()))??;
        Ok(Self { model, tokenizer })
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }

    /// The prompt ids of a request: its conversation in the model's chat template.
    pub(super) fn encode_prompt(&self, params: &LlmParams) -> Result<Vec<u32>, EngineError> {
        self.tokenizer
            .encode_chat(&params.messages)
            .map_err(|e| EngineError::InvalidParams(e.to_string()))
    }

    /// Runs a chat request; `on_text` receives the completion as it is produced.
    pub fn generate(
        &self,
        params: &LlmParams,
        cancel: &CancelToken,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Completion, EngineError> {
        let prompt = self.encode_prompt(params)?;
        let room = self.model.max_positions().saturating_sub(prompt.len());
        if room == 0 {
            return Err(EngineError::InvalidParams(format!(
                "the prompt is {} tokens, and the model's context is {}; shorten the conversation",
                prompt.len(),
                self.model.max_positions()
            )));
        }
        let max_new = params
            .max_tokens
            .map_or(DEFAULT_MAX_TOKENS, |m| m as usize)
            .min(room);
        if max_new == 0 {
            return Err(EngineError::InvalidParams(
                "max_tokens must be at least 1".to_owned(),
            ));
        }
        let _no_grad = tch::no_grad_guard();
        super::super::catch_torch_panic("generating", || {
            self.decode_loop(params, &prompt, max_new, cancel, on_text)
        })?
    }

    fn decode_loop(
        &self,
        params: &LlmParams,
        prompt: &[u32],
        max_new: usize,
        cancel: &CancelToken,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Completion, EngineError> {
        let mut cache = self.model.new_cache(prompt.len() + max_new);
        let mut sampler = Sampler::new(params);
        let mut out = CompletionText::new(&self.tokenizer, &params.stop);
        let mut text = String::new();
        let mut emit = |piece: &str, text: &mut String| {
            if !piece.is_empty() {
                text.push_str(piece);
                on_text(piece);
            }
        };
        let transient = |e: super::tokenizer::TextError| EngineError::Transient(e.to_string());
        let mut logits = self.model.forward(prompt, &mut cache, false);
        let mut ids = Vec::with_capacity(max_new);
        let mut finish_reason = "length";
        while ids.len() < max_new {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let row = Vec::<f32>::try_from(logits.view([-1]))
                .map_err(|e| EngineError::Transient(format!("reading logits: {e}")))?;
            let id = sampler
                .sample(&row)
                .map_err(|e| EngineError::Transient(e.to_string()))?;
            ids.push(id);
            if self.tokenizer.is_eos(id) {
                finish_reason = "stop";
                break;
            }
            let step = out.push(id).map_err(transient)?;
            emit(&step.emit, &mut text);
            if step.stopped {
                finish_reason = "stop";
                break;
            }
            if ids.len() < max_new {
                logits = self.model.forward(&[id], &mut cache, false);
            }
        }
        let last = out.finish().map_err(transient)?;
        emit(&last.emit, &mut text);
        if last.stopped {
            finish_reason = "stop";
        }
        Ok(Completion {
            text,
            usage: LlmUsage {
                prompt_tokens: prompt.len() as u32,
                completion_tokens: ids.len() as u32,
            },
            ids,
            finish_reason,
        })
    }
}

impl Engine for LlmEngine {
    fn run(
        &mut self,
        job: &JobAssignment,
        cancel: &CancelToken,
        events: &mut dyn FnMut(EngineEvent),
    ) -> Result<JobOutput, EngineError> {
        let params = match &job.params {
            JobParams::Llm(params) => params,
            JobParams::LlmScore(params) => return Ok(self.score(params, cancel)?.into()),
            _ => return Err(EngineError::wrong_params(job, ModelKind::Llm)),
        };
        let mut index = 0u32;
        let completion = self.generate(params, cancel, &mut |piece| {
            events(EngineEvent::Token {
                index,
                text: piece.to_owned(),
            });
            index += 1;
        })?;
        Ok(JobOutput::Text {
            text: completion.text,
            usage: completion.usage,
            finish_reason: completion.finish_reason.to_owned(),
            token_ids: completion.ids,
        })
    }
}
