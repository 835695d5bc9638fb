//! What a job asks for ([`JobParams`]) and what it produces ([`JobOutput`]).

use serde::{Deserialize, Serialize};

/// The family of a model, which decides the shape of its params and output and which kind of
/// points it earns.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// A chat model; earns Llama points.
    Llm,
    /// A text-to-image model; earns Waifu points.
    Image,
    /// The built-in test engine: deterministic bytes after a delay. Earns nothing.
    Synthetic,
}

impl ModelKind {
    /// The lowercase name used in configs, URLs and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llm => "llm",
            Self::Image => "image",
            Self::Synthetic => "synthetic",
        }
    }
}

/// Parameters of a job, tagged with the model kind they belong to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobParams {
    Llm(LlmParams),
    Image(ImageParams),
    Synthetic(SyntheticParams),
    /// Review work for a trusted validator: score another agent's completion token by token
    /// (teacher forcing). Never submitted by consumers.
    LlmScore(LlmScoreParams),
}

impl JobParams {
    /// Parses untagged params (as a consumer sends them) for a model of the given kind.
    pub fn from_json(kind: ModelKind, value: serde_json::Value) -> Result<Self, serde_json::Error> {
        Ok(match kind {
            ModelKind::Llm => Self::Llm(serde_json::from_value(value)?),
            ModelKind::Image => Self::Image(serde_json::from_value(value)?),
            ModelKind::Synthetic => Self::Synthetic(serde_json::from_value(value)?),
        })
    }

    /// The kind of model these params are for.
    pub fn kind(&self) -> ModelKind {
        match self {
            Self::Llm(_) => ModelKind::Llm,
            Self::Image(_) => ModelKind::Image,
            Self::Synthetic(_) => ModelKind::Synthetic,
            Self::LlmScore(_) => ModelKind::Llm,
        }
    }
}

/// One turn of a chat.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// A chat completion request.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmParams {
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate; the model's limit applies when absent.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default = "default_temperature", deserialize_with = "finite")]
    #[cfg_attr(feature = "openapi", schema(default = 1.0))]
    pub temperature: f32,
    #[serde(default = "default_top_p", deserialize_with = "finite")]
    #[cfg_attr(feature = "openapi", schema(default = 1.0))]
    pub top_p: f32,
    /// 0 turns top-k filtering off.
    #[serde(default)]
    pub top_k: u32,
    /// Generation stops before any of these strings.
    #[serde(default)]
    pub stop: Vec<String>,
    /// Sampling seed: the same seed on the same device gives the same text.
    #[serde(default)]
    pub seed: u64,
}

/// An `f32` that must be finite. A JSON number beyond `f32`'s range would parse as infinity,
/// which JSON cannot carry: the job would be stored with `null` there and never read back.
fn finite<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f32, D::Error> {
    let value = f32::deserialize(deserializer)?;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(
            "expected a finite number within ±3.4e38",
        ))
    }
}

/// [`finite`], for an optional field (`null` is absent).
fn finite_or_none<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<f32>, D::Error> {
    #[derive(Deserialize)]
    struct Finite(#[serde(deserialize_with = "finite")] f32);
    Ok(Option::<Finite>::deserialize(deserializer)?.map(|Finite(value)| value))
}

fn default_temperature() -> f32 {
    1.0
}

fn default_top_p() -> f32 {
    1.0
}

/// A text-to-image request.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageParams {
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    #[serde(default = "default_guidance", deserialize_with = "finite")]
    #[cfg_attr(feature = "openapi", schema(default = 7.5))]
    pub guidance_scale: f32,
    /// Seed of the initial noise, drawn on the CPU so any device starts from the same latents.
    #[serde(default)]
    pub seed: u64,
    /// Sampler name (`euler`, `euler_a`, `dpmpp_2m_karras`, `ddim`); the model's default when
    /// absent.
    #[serde(default)]
    pub scheduler: Option<String>,
    /// Strength of the model's LoRA (`1.0` as trained, `0.0` off); only for models that
    /// carry a LoRA. The model's default when absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "finite_or_none"
    )]
    pub lora_scale: Option<f32>,
}

fn default_guidance() -> f32 {
    7.5
}

/// The synthetic test engine's request: `output_bytes` deterministic bytes after `delay_ms`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticParams {
    #[serde(default = "default_output_bytes")]
    #[cfg_attr(feature = "openapi", schema(default = 64))]
    pub output_bytes: u32,
    #[serde(default)]
    pub delay_ms: u32,
    /// Token frames to stream before the result, to exercise streaming.
    #[serde(default)]
    pub stream_tokens: u32,
    /// Seeds the output bytes.
    #[serde(default)]
    pub seed: u64,
    /// Makes the agent report a retryable failure instead of a result (tests retries).
    #[serde(default)]
    pub fail: bool,
}

fn default_output_bytes() -> u32 {
    64
}

/// A completion to score under the model: the validator runs the request's prompt followed by
/// `token_ids` through the model in one pass and reports, per token, how likely the model and
/// the request's sampling settings made it ([`TokenScore`]).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmScoreParams {
    /// The request the completion answered (messages, sampling settings, seed).
    pub request: LlmParams,
    /// The completion's token ids as the agent that produced it reported them.
    pub token_ids: Vec<u32>,
    /// The completion's text as that agent returned it.
    pub text: String,
}

/// How one completion token fares under the validator's model (see [`LlmScoreParams`]).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenScore {
    /// The token scored.
    pub id: u32,
    /// Its log-probability under the model itself (temperature 1, nothing cut), floored at
    /// [`TokenScore::LOGPROB_FLOOR`].
    pub logprob: f32,
    /// Its rank by logit, 0 for the most likely token.
    pub rank: u32,
    /// Whether the request's sampling (temperature, top-k, top-p; for greedy decoding, a
    /// near-tie with the best) could have drawn it.
    pub in_support: bool,
    /// Its log-probability under the request's sampling distribution `q` (floored like
    /// `logprob`; the floor when not in support).
    pub sample_logprob: f32,
    /// `E_q[log q]` at this position: what an honest draw scores on average.
    pub expected_logprob: f32,
    /// `Var_q[log q]` at this position.
    pub logprob_variance: f32,
    /// The token the request's seeded sampler draws here on the validator, given the same
    /// preceding tokens.
    pub seeded: u32,
}

impl TokenScore {
    /// The lowest log-probability reported (JSON has no infinities).
    pub const LOGPROB_FLOOR: f32 = -1000.0;
}

/// Token counts of an LLM job, as the OpenAI API reports them.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LlmUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// What a job produced.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobOutput {
    /// An LLM completion.
    Text {
        text: String,
        usage: LlmUsage,
        /// `stop` (a stop string or end of sequence) or `length` (hit max_tokens).
        finish_reason: String,
        /// The generated token ids, end-of-sequence token included; reviewers score them.
        /// Empty from agents that predate it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        token_ids: Vec<u32>,
    },
    /// An image. The PNG travels inline (`png_b64`) or was uploaded by the agent to the
    /// presigned URL it got with the job (then `png_b64` is absent).
    Image {
        width: u32,
        height: u32,
        size_bytes: u64,
        /// Lowercase hex SHA-256 of the PNG file.
        sha256: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        png_b64: Option<String>,
    },
    /// A validator's scores of a completion ([`JobParams::LlmScore`]).
    TokenScores {
        /// One per scored token, in order.
        scores: Vec<TokenScore>,
        /// Tokens of the request's prompt, as the validator's chat template made them.
        prompt_tokens: u32,
        /// Whether the ids decode (stop strings applied) to exactly the text returned.
        text_matches: bool,
    },
    /// Raw bytes from the synthetic engine.
    Bytes {
        data_b64: String,
        /// Lowercase hex SHA-256 of the decoded bytes.
        sha256: String,
    },
}

/// Timings the agent measured for one job, in milliseconds. The coordinator measures its own
/// and never trusts these beyond what it saw.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Metrics {
    /// From receipt of the job frame to the start of work.
    #[serde(default)]
    pub queue_ms: u64,
    /// Model loading, when the job needed it.
    #[serde(default)]
    pub load_ms: u64,
    #[serde(default)]
    pub infer_ms: u64,
    #[serde(default)]
    pub upload_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (found by fuzz/job_params): a number beyond f32's range parsed as infinity,
    /// which was stored as `null` and could not be read back.
    #[test]
    fn floats_beyond_f32_are_refused_at_the_door() {
        let llm = |field: &str, value: &str| {
            let json =
                format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],"{field}":{value}}}"#);
            JobParams::from_json(ModelKind::Llm, serde_json::from_str(&json).expect("json"))
        };
        for field in ["temperature", "top_p"] {
            let error = llm(field, "1e39").expect_err("out of range").to_string();
            assert!(error.contains("finite number"), "{field}: {error}");
            assert!(llm(field, "0.5").is_ok(), "{field}");
        }
        let image = |extra: &str| {
            let json = format!(r#"{{"prompt":"p","width":64,"height":64,"steps":2{extra}}}"#);
            JobParams::from_json(ModelKind::Image, serde_json::from_str(&json).expect("json"))
        };
        assert!(image(r#","guidance_scale":-1e40"#).is_err());
        assert!(image(r#","lora_scale":1e39"#).is_err());
        let Ok(JobParams::Image(p)) = image(r#","lora_scale":null"#) else {
            panic!("null lora_scale is absent")
        };
        assert_eq!(p.lora_scale, None);
        let Ok(JobParams::Image(p)) = image(r#","lora_scale":0.8"#) else {
            panic!("a finite lora_scale parses")
        };
        assert_eq!(p.lora_scale, Some(0.8));
        let stored = serde_json::to_string(&JobParams::Image(p.clone())).expect("encode");
        assert_eq!(
            serde_json::from_str::<JobParams>(&stored).expect("decode"),
            JobParams::Image(p)
        );
    }
}
