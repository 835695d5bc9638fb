//! Cheap checks every result passes before it completes a job: the output is of the kind the
//! job asked for and consistent with its params. Deeper review happens asynchronously.

use base64::Engine as _;
use infermine_protocol::{JobOutput, JobParams, LlmParams, LlmUsage};

use crate::auth::sha256_hex;
use crate::registry::{Limits, LlmLimits, ModelSpec};

/// How an LLM completion may end: a stop string or end of sequence, or max_tokens.
const FINISH_REASONS: [&str; 2] = ["stop", "length"];

/// Why an output was rejected, in words for the log and the job's error. `model` is the job's
/// model as the registry has it (its limits bound what an LLM may claim to have done).
pub(crate) fn output(
    model: Option<&ModelSpec>,
    params: &JobParams,
    output: &JobOutput,
) -> Result<(), String> {
    match (params, output) {
        (JobParams::Synthetic(p), JobOutput::Bytes { data_b64, sha256 }) => {
            let data = base64::engine::general_purpose::STANDARD
                .decode(data_b64)
                .map_err(|e| format!("data_b64 is not base64: {e}"))?;
            if data.len() != p.output_bytes as usize {
                return Err(format!(
                    "{} bytes returned, {} requested",
                    data.len(),
                    p.output_bytes
                ));
            }
            if sha256_hex(&data) != *sha256 {
                return Err("sha256 does not match the data".to_owned());
            }
            Ok(())
        }
        (
            JobParams::Llm(p),
            JobOutput::Text {
                text,
                usage,
                finish_reason,
                token_ids,
            },
        ) => {
            let limits = match model.map(|m| &m.limits) {
                Some(Limits::Llm(limits)) => Some(limits),
                _ => None,
            };
            if !token_ids.is_empty() && token_ids.len() != usage.completion_tokens as usize {
                return Err(format!(
                    "usage.completion_tokens is {} but {} token ids were returned",
                    usage.completion_tokens,
                    token_ids.len()
                ));
            }
            text_output(p, limits, text, *usage, finish_reason)
        }
        (JobParams::LlmScore(p), JobOutput::TokenScores { scores, .. }) => {
            if scores.len() != p.token_ids.len() {
                return Err(format!(
                    "{} token scores returned for {} tokens",
                    scores.len(),
                    p.token_ids.len()
                ));
            }
            match scores
                .iter()
                .zip(&p.token_ids)
                .position(|(s, id)| s.id != *id)
            {
                Some(i) => Err(format!("token score {i} is for another token than asked")),
                None => Ok(()),
            }
        }
        (JobParams::Image(p), JobOutput::Image { width, height, .. }) => {
            if (*width, *height) != (p.width, p.height) {
                return Err(format!(
                    "{width}x{height} image returned, {}x{} requested",
                    p.width, p.height
                ));
            }
            Ok(())
        }
        (params, _) => Err(format!(
            "output kind does not match a {} job",
            params.kind().as_str()
        )),
    }
}

/// Prompt tokens a chat template may add per message (role headers, separators) and once
/// (begin-of-text, the assistant's header), beyond the tokens of the text itself. Generous:
/// the templates of the registry's models add about five per message.
const TEMPLATE_TOKENS_PER_MESSAGE: u64 = 64;

/// Token counts decide a completion's Llama points, so they must fit the request: no more
/// generated than max_tokens allowed, no more prompt tokens than the prompt's bytes (no
/// tokenizer makes more than one token of a byte) plus what a chat template adds, and some
/// of each when there is text. The model's context is the agent's to enforce: its window
/// may be larger than the registry's figure.
fn text_output(
    params: &LlmParams,
    limits: Option<&LlmLimits>,
    text: &str,
    usage: LlmUsage,
    finish_reason: &str,
) -> Result<(), String> {
    if !FINISH_REASONS.contains(&finish_reason) {
        return Err(format!(
            "finish_reason `{finish_reason}` is not one of {}",
            FINISH_REASONS.join(", ")
        ));
    }
    if usage.prompt_tokens == 0 {
        return Err("usage.prompt_tokens is 0, but a chat prompt has tokens".to_owned());
    }
    if usage.completion_tokens == 0 && !text.is_empty() {
        return Err("usage.completion_tokens is 0, but text was returned".to_owned());
    }
    let max_tokens = params.max_tokens.or(limits.map(|l| l.max_tokens));
    if let Some(max) = max_tokens
        && usage.completion_tokens > max
    {
        return Err(format!(
            "usage.completion_tokens {} is above the job's max_tokens {max}",
            usage.completion_tokens
        ));
    }
    let prompt_bytes: u64 = params
        .messages
        .iter()
        .map(|m| (m.role.len() + m.content.len()) as u64)
        .sum();
    let most = prompt_bytes + TEMPLATE_TOKENS_PER_MESSAGE * (params.messages.len() as u64 + 1);
    if u64::from(usage.prompt_tokens) > most {
        return Err(format!(
            "usage.prompt_tokens {} is more than a prompt of {prompt_bytes} bytes can make              (at most {most} with the chat template)",
            usage.prompt_tokens
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use infermine_protocol::SyntheticParams;

    use super::*;

    fn synthetic(bytes: u32) -> JobParams {
        JobParams::Synthetic(SyntheticParams {
            output_bytes: bytes,
            delay_ms: 0,
            stream_tokens: 0,
            seed: 0,
            fail: false,
        })
    }

    fn bytes_output(data: &[u8]) -> JobOutput {
        JobOutput::Bytes {
            data_b64: base64::engine::general_purpose::STANDARD.encode(data),
            sha256: sha256_hex(data),
        }
    }

    #[test]
    fn synthetic_output_must_match_size_and_hash() {
        assert_eq!(output(None, &synthetic(3), &bytes_output(b"abc")), Ok(()));
        assert!(
            output(None, &synthetic(4), &bytes_output(b"abc"))
                .expect_err("short")
                .contains("3 bytes returned")
        );
        let JobOutput::Bytes { data_b64, .. } = bytes_output(b"abc") else {
            unreachable!()
        };
        let forged = JobOutput::Bytes {
            data_b64,
            sha256: sha256_hex(b"abd"),
        };
        assert!(
            output(None, &synthetic(3), &forged)
                .expect_err("hash")
                .contains("sha256")
        );
    }

    fn chat(max_tokens: Option<u32>) -> JobParams {
        JobParams::Llm(LlmParams {
            messages: vec![infermine_protocol::ChatMessage {
                role: "user".into(),
                content: "hi".into(),
            }],
            max_tokens,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            stop: vec![],
            seed: 0,
        })
    }

    fn text(prompt_tokens: u32, completion_tokens: u32, finish_reason: &str) -> JobOutput {
        JobOutput::Text {
            text: "hello".into(),
            usage: LlmUsage {
                prompt_tokens,
                completion_tokens,
            },
            finish_reason: finish_reason.into(),
            token_ids: Vec::new(),
        }
    }

    /// Regression: inflated token counts would earn inflated Llama points.
    #[test]
    fn llm_usage_must_fit_the_request_and_the_model() {
        let registry = crate::registry::Registry::builtin();
        let tiny = registry.get("tiny-llama");
        assert_eq!(output(tiny, &chat(None), &text(20, 5, "stop")), Ok(()));
        // "user" + "hi", and two messages' worth of template: 6 + 64 × 2.
        assert_eq!(output(tiny, &chat(None), &text(134, 5, "stop")), Ok(()));
        assert!(output(tiny, &chat(None), &text(135, 5, "stop")).is_err());
        assert_eq!(output(tiny, &chat(Some(5)), &text(20, 5, "length")), Ok(()));
        let refused = [
            (chat(Some(5)), text(20, 6, "length"), "max_tokens 5"),
            (chat(None), text(20, 129, "length"), "max_tokens 128"),
            (chat(None), text(200, 100, "stop"), "prompt_tokens 200"),
            (chat(None), text(0, 5, "stop"), "prompt_tokens is 0"),
            (chat(None), text(20, 0, "stop"), "completion_tokens is 0"),
            (chat(None), text(20, 5, "tool_calls"), "finish_reason"),
        ];
        for (params, out, expected) in refused {
            let problem = output(tiny, &params, &out).expect_err(expected);
            assert!(problem.contains(expected), "{problem}");
        }
    }

    #[test]
    fn output_kind_must_match_job_kind() {
        let text = JobOutput::Text {
            text: "hi".into(),
            usage: Default::default(),
            finish_reason: "stop".into(),
            token_ids: Vec::new(),
        };
        assert!(
            output(None, &synthetic(2), &text)
                .expect_err("kind")
                .contains("synthetic")
        );
    }
}
