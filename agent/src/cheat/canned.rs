//! `canned-text`: a fixed paragraph instead of a completion, made to pass cheap checks.
//!
//! Only the model's tokenizer is loaded, never its weights. The paragraph's token ids come
//! from that tokenizer, the prompt is counted the way the engine counts it (the chat template,
//! then encoding), and the ending follows the engine's rules: cut at `max_tokens`
//! (`length`), before a stop string (`stop`), or with the end-of-sequence token after the
//! whole paragraph (`stop`). The text streams as tokens like a real completion.

use std::path::Path;

use infermine_protocol::{JobAssignment, JobOutput, JobParams, LlmParams, LlmUsage, ModelKind};

use crate::engine::llm::tokenizer::TextTokenizer;
use crate::engine::{CancelToken, Engine, EngineError, EngineEvent};

/// What every completion says.
const PARAGRAPH: &str = "Thank you for the question. There are several factors to consider \
here, and the right answer depends on the details of your situation. In general, it helps to \
start with the basics, make sure you understand the main ideas, and then look at the specific \
points that matter most to you. Many people find it useful to break the problem into smaller \
steps, work through each one carefully, and check the results along the way. If you run into \
difficulties, reviewing reliable sources or asking someone with experience can save a lot of \
time. I hope this overview gives you a good starting point, and I am happy to go into more \
detail on any part of it.";

/// Completion length when the request sets no `max_tokens`, as in the LLM engine.
const DEFAULT_MAX_TOKENS: usize = 4096;

/// A tokenizer pretending to be an LLM engine.
#[derive(Debug)]
pub(super) struct CannedEngine {
    tokenizer: TextTokenizer,
    /// `max_position_embeddings` of `config.json`: prompt and completion fit in it.
    context: Option<usize>,
}

impl CannedEngine {
    /// Loads the tokenizer of the model folder `dir`.
    pub(super) fn load(dir: &Path) -> Result<Self, EngineError> {
        let tokenizer = TextTokenizer::load(dir).map_err(|e| EngineError::Agent(e.to_string()))?;
        let context = std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
            .and_then(|config| config.get("max_position_embeddings")?.as_u64())
            .and_then(|n| usize::try_from(n).ok());
        tracing::warn!(dir = %dir.display(), "canned-text: answering with a fixed paragraph");
        Ok(Self { tokenizer, context })
    }
}

impl Engine for CannedEngine {
    fn run(
        &mut self,
        job: &JobAssignment,
        cancel: &CancelToken,
        events: &mut dyn FnMut(EngineEvent),
    ) -> Result<JobOutput, EngineError> {
        let JobParams::Llm(params) = &job.params else {
            return Err(EngineError::wrong_params(job, ModelKind::Llm));
        };
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let canned = canned_completion(&self.tokenizer, self.context, params)?;
        stream(&self.tokenizer, &canned, events)?;
        Ok(canned)
    }
}

/// The paragraph as a completion of `params`.
fn canned_completion(
    tokenizer: &TextTokenizer,
    context: Option<usize>,
    params: &LlmParams,
) -> Result<JobOutput, EngineError> {
    let failed =
        |e: crate::engine::llm::tokenizer::TextError| EngineError::Transient(e.to_string());
    let prompt = tokenizer
        .encode_chat(&params.messages)
        .map_err(|e| EngineError::InvalidParams(e.to_string()))?;
    let room = context.map_or(usize::MAX, |c| c.saturating_sub(prompt.len()));
    if room == 0 {
        return Err(EngineError::InvalidParams(format!(
            "the prompt is {} tokens, and the model's context is {}; shorten the conversation",
            prompt.len(),
            context.unwrap_or_default()
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
    let paragraph = tokenizer.encode(PARAGRAPH).map_err(failed)?;
    let (mut ids, mut finish_reason) = if paragraph.len() >= max_new {
        (paragraph[..max_new].to_vec(), "length")
    } else {
        (paragraph, "stop")
    };
    let mut text = tokenizer.decode(&ids).map_err(failed)?;
    if let Some((kept, cut_text)) = cut_at_stop(tokenizer, &ids, &params.stop)? {
        ids.truncate(kept);
        text = cut_text;
        finish_reason = "stop";
    } else if finish_reason == "stop" {
        ids.push(tokenizer.eos_ids()[0]);
    }
    Ok(JobOutput::Text {
        text,
        usage: LlmUsage {
            prompt_tokens: prompt.len() as u32,
            completion_tokens: ids.len() as u32,
        },
        finish_reason: finish_reason.to_owned(),
        token_ids: ids,
    })
}

/// Where a stop string ends the paragraph, as the engine would stop: the fewest ids whose
/// text holds a stop string, and that text cut before it.
fn cut_at_stop(
    tokenizer: &TextTokenizer,
    ids: &[u32],
    stops: &[String],
) -> Result<Option<(usize, String)>, EngineError> {
    let stops: Vec<&str> = stops
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    if stops.is_empty() {
        return Ok(None);
    }
    for kept in 1..=ids.len() {
        let mut text = tokenizer
            .decode(&ids[..kept])
            .map_err(|e| EngineError::Transient(e.to_string()))?;
        if let Some(start) = stops.iter().filter_map(|s| text.find(s)).min() {
            text.truncate(start);
            return Ok(Some((kept, text)));
        }
    }
    Ok(None)
}

/// Streams the completion's text in token-sized pieces, as the engine does.
fn stream(
    tokenizer: &TextTokenizer,
    output: &JobOutput,
    events: &mut dyn FnMut(EngineEvent),
) -> Result<(), EngineError> {
    let JobOutput::Text {
        text, token_ids, ..
    } = output
    else {
        return Ok(());
    };
    let failed =
        |e: crate::engine::llm::tokenizer::TextError| EngineError::Transient(e.to_string());
    let mut decoder = tokenizer.incremental();
    let (mut sent, mut index) = (0usize, 0u32);
    let mut emit = |piece: String| {
        let room = text.len().saturating_sub(sent);
        let piece: String = piece
            .chars()
            .scan(0, |len, c| {
                *len += c.len_utf8();
                (*len <= room).then_some(c)
            })
            .collect();
        if !piece.is_empty() {
            sent += piece.len();
            events(EngineEvent::Token { index, text: piece });
            index += 1;
        }
    };
    for &id in token_ids.iter().filter(|&&id| !tokenizer.is_eos(id)) {
        emit(decoder.push(id).map_err(failed)?);
    }
    emit(decoder.finish().map_err(failed)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use infermine_protocol::ChatMessage;

    use super::*;
    use crate::engine::demo;

    /// The tokenizer of the demo LLM, written once per test into a temp folder.
    fn tokenizer() -> (tempfile::TempDir, TextTokenizer) {
        let dir = tempfile::tempdir().expect("temp dir");
        let model = demo::synth("tiny-llama", dir.path()).expect("demo model");
        let tokenizer = TextTokenizer::load(&model).expect("tokenizer");
        (dir, tokenizer)
    }

    fn params(max_tokens: Option<u32>, stop: &[&str]) -> LlmParams {
        LlmParams {
            messages: vec![ChatMessage {
                role: "user".to_owned(),
                content: "How do I learn to cook?".to_owned(),
            }],
            max_tokens,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            stop: stop.iter().map(|s| (*s).to_owned()).collect(),
            seed: 0,
        }
    }

    fn text_of(output: &JobOutput) -> (&str, LlmUsage, &str, &[u32]) {
        match output {
            JobOutput::Text {
                text,
                usage,
                finish_reason,
                token_ids,
            } => (text, *usage, finish_reason, token_ids),
            other => panic!("expected text, got {other:?}"),
        }
    }

    #[test]
    fn the_paragraph_is_cut_at_max_tokens_or_ends_with_eos() {
        let (_dir, tokenizer) = tokenizer();
        let request = params(Some(5), &[]);
        let prompt = tokenizer
            .encode_chat(&request.messages)
            .expect("prompt")
            .len() as u32;
        let short = canned_completion(&tokenizer, None, &request).expect("completion");
        let (text, usage, finish, ids) = text_of(&short);
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens, finish),
            (prompt, 5, "length")
        );
        assert_eq!(text, tokenizer.decode(ids).expect("decode"));
        assert!(PARAGRAPH.starts_with(text.trim_start()), "{text}");
        let context = prompt as usize + 3;
        let cramped =
            canned_completion(&tokenizer, Some(context), &params(None, &[])).expect("completion");
        let (_, usage, finish, _) = text_of(&cramped);
        assert_eq!((usage.completion_tokens, finish), (3, "length"));

        let full =
            canned_completion(&tokenizer, Some(4096), &params(None, &[])).expect("completion");
        let (text, usage, finish, ids) = text_of(&full);
        assert_eq!(finish, "stop");
        assert!(tokenizer.is_eos(ids[ids.len() - 1]));
        assert_eq!(usage.completion_tokens as usize, ids.len());
        assert_eq!(text, tokenizer.decode(ids).expect("decode"));
    }

    #[test]
    fn stop_strings_end_the_paragraph_before_them_and_the_stream_matches_the_text() {
        let (_dir, tokenizer) = tokenizer();
        let mut engine = CannedEngine {
            tokenizer,
            context: None,
        };
        let job = JobAssignment {
            id: uuid::Uuid::now_v7(),
            model: "tiny-llama".to_owned(),
            slot: 0,
            params: JobParams::Llm(params(None, &["consider"])),
            lease_ms: 60_000,
            attempt: 1,
            upload_url: None,
        };
        let mut streamed = String::new();
        let output = engine
            .run(
                &job,
                &CancelToken::new(),
                &mut |EngineEvent::Token { text, .. }| {
                    streamed.push_str(&text);
                },
            )
            .expect("completion");
        let (text, usage, finish, ids) = text_of(&output);
        assert_eq!(finish, "stop");
        assert!(
            !text.contains("consider") && text.ends_with("to "),
            "{text:?}"
        );
        assert_eq!(streamed, text);
        assert_eq!(usage.completion_tokens as usize, ids.len());
    }
}
