//! Checks a job's parameters against its model's limits before the job is accepted, so the
//! consumer hears what to change instead of a miner failing the job later.

use infermine_protocol::{ImageParams, JobParams, LlmParams, ModelKind, SyntheticParams};

use super::{Family, ImageLimits, Limits, LlmLimits, ModelSpec, SyntheticLimits};

/// Smallest image side: below this the models produce noise.
pub(super) const IMAGE_SIDE_MIN: u32 = 64;
/// Image sides are whole blocks of the 8× downsampling latent space.
pub(super) const IMAGE_SIDE_MULTIPLE: u32 = 8;
const GUIDANCE_MAX: f32 = 30.0;
/// Strongest LoRA strength a request may ask for: twice the strength it was trained at.
const LORA_SCALE_MAX: f32 = 2.0;
const TEMPERATURE_MAX: f32 = 2.0;
const MAX_STOP_STRINGS: usize = 4;
const CHAT_ROLES: &[&str] = &["system", "user", "assistant"];

/// Why a job's parameters were refused. The message names the field, the value and what is
/// allowed; [`ParamError::code`] is stable for API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error(
        "model `{model}` takes {} params, not {} params",
        .expected.as_str(),
        .got.as_str()
    )]
    WrongKind {
        model: String,
        expected: ModelKind,
        got: ModelKind,
    },
    #[error("{field} {value} is above this model's limit of {limit}")]
    AboveLimit {
        field: String,
        value: String,
        limit: String,
    },
    #[error("{field} {value} is below the minimum of {min}")]
    BelowMinimum {
        field: String,
        value: String,
        min: String,
    },
    #[error("{field} {value} is outside the allowed range {range}")]
    OutOfRange {
        field: String,
        value: String,
        range: String,
    },
    #[error("{field} {value} is not a multiple of {multiple}")]
    NotMultiple {
        field: String,
        value: u32,
        multiple: u32,
    },
    #[error("{field} must not be empty")]
    Empty { field: String },
    #[error("{field} has {len} {unit}, above the limit of {limit}")]
    TooLong {
        field: String,
        len: usize,
        unit: &'static str,
        limit: usize,
    },
    #[error("{field} `{value}` is not supported; use one of: {allowed}")]
    Unsupported {
        field: String,
        value: String,
        allowed: String,
    },
    /// The parameter means nothing for this model (a LoRA strength without a LoRA).
    #[error("{field} does not apply to model `{model}`: {reason}")]
    NotApplicable {
        field: String,
        model: String,
        reason: String,
    },
}

impl ParamError {
    /// Stable snake_case code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::WrongKind { .. } => "wrong_param_kind",
            Self::AboveLimit { .. }
            | Self::BelowMinimum { .. }
            | Self::OutOfRange { .. }
            | Self::NotMultiple { .. } => "param_out_of_range",
            Self::Empty { .. } => "param_empty",
            Self::TooLong { .. } => "param_too_long",
            Self::Unsupported { .. } | Self::NotApplicable { .. } => "param_not_supported",
        }
    }

    /// The parameter at fault, e.g. `steps` or `messages[2].role`; `None` for a wrong kind.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::WrongKind { .. } => None,
            Self::AboveLimit { field, .. }
            | Self::BelowMinimum { field, .. }
            | Self::OutOfRange { field, .. }
            | Self::NotMultiple { field, .. }
            | Self::Empty { field }
            | Self::TooLong { field, .. }
            | Self::Unsupported { field, .. }
            | Self::NotApplicable { field, .. } => Some(field),
        }
    }
}

impl ModelSpec {
    /// Checks a request against this model's limits.
    pub fn validate_params(&self, params: &JobParams) -> Result<(), ParamError> {
        match (&self.limits, params) {
            (Limits::Image(limits), JobParams::Image(p)) => {
                if !p.negative_prompt.is_empty() && !self.family.takes_negative_prompt() {
                    return Err(ParamError::NotApplicable {
                        field: "negative_prompt".to_owned(),
                        model: self.id.clone(),
                        reason: "it runs without classifier-free guidance; leave \
                                 negative_prompt out"
                            .to_owned(),
                    });
                }
                check_image(limits, self.family, p)?;
                check_lora_scale(self, p.lora_scale)
            }
            (Limits::Llm(limits), JobParams::Llm(p)) => check_llm(limits, p),
            (Limits::Synthetic(limits), JobParams::Synthetic(p)) => check_synthetic(limits, p),
            _ => Err(ParamError::WrongKind {
                model: self.id.clone(),
                expected: self.kind,
                got: params.kind(),
            }),
        }
    }
}

/// A LoRA strength needs a model with a LoRA (the registry's `lora_file`).
fn check_lora_scale(model: &ModelSpec, scale: Option<f32>) -> Result<(), ParamError> {
    let Some(scale) = scale else {
        return Ok(());
    };
    if model.lora_file.is_none() {
        return Err(ParamError::NotApplicable {
            field: "lora_scale".to_owned(),
            model: model.id.clone(),
            reason: "it has no LoRA; remove lora_scale, or use a model that has one".to_owned(),
        });
    }
    if !(0.0..=LORA_SCALE_MAX).contains(&scale) {
        let range = format!("0 to {LORA_SCALE_MAX}");
        return Err(out_of_range("lora_scale", scale, &range));
    }
    Ok(())
}

fn check_image(limits: &ImageLimits, family: Family, p: &ImageParams) -> Result<(), ParamError> {
    check_text("prompt", &p.prompt, limits.max_prompt_chars, true)?;
    check_text(
        "negative_prompt",
        &p.negative_prompt,
        limits.max_prompt_chars,
        false,
    )?;
    let multiple = family.side_multiple();
    check_side("width", p.width, limits.max_width, multiple)?;
    check_side("height", p.height, limits.max_height, multiple)?;
    let pixels = u64::from(p.width) * u64::from(p.height);
    if pixels > limits.max_pixels {
        return Err(ParamError::AboveLimit {
            field: "width×height".to_owned(),
            value: format!("{}×{} ({pixels} pixels)", p.width, p.height),
            limit: format!("{} pixels", limits.max_pixels),
        });
    }
    if p.steps == 0 {
        return Err(below("steps", 0, 1));
    }
    at_most("steps", p.steps, limits.max_steps)?;
    if !(0.0..=GUIDANCE_MAX).contains(&p.guidance_scale) {
        return Err(out_of_range(
            "guidance_scale",
            p.guidance_scale,
            &format!("0 to {GUIDANCE_MAX}"),
        ));
    }
    if let Some(scheduler) = &p.scheduler
        && !family.schedulers().contains(&scheduler.as_str())
    {
        return Err(ParamError::Unsupported {
            field: "scheduler".to_owned(),
            value: scheduler.clone(),
            allowed: family.schedulers().join(", "),
        });
    }
    Ok(())
}

fn check_side(field: &str, value: u32, max: u32, multiple: u32) -> Result<(), ParamError> {
    if value < IMAGE_SIDE_MIN {
        return Err(below(field, value, IMAGE_SIDE_MIN));
    }
    if !value.is_multiple_of(multiple) {
        return Err(ParamError::NotMultiple {
            field: field.to_owned(),
            value,
            multiple,
        });
    }
    at_most(field, value, max)
}

fn check_text(field: &str, text: &str, max_chars: u32, required: bool) -> Result<(), ParamError> {
    if required && text.trim().is_empty() {
        return Err(ParamError::Empty {
            field: field.to_owned(),
        });
    }
    too_long(
        field,
        text.chars().count(),
        "characters",
        max_chars as usize,
    )
}

fn check_llm(limits: &LlmLimits, p: &LlmParams) -> Result<(), ParamError> {
    if p.messages.is_empty() {
        return Err(ParamError::Empty {
            field: "messages".to_owned(),
        });
    }
    let mut chars = 0;
    for (index, message) in p.messages.iter().enumerate() {
        if !CHAT_ROLES.contains(&message.role.as_str()) {
            return Err(ParamError::Unsupported {
                field: format!("messages[{index}].role"),
                value: message.role.clone(),
                allowed: CHAT_ROLES.join(", "),
            });
        }
        chars += message.content.chars().count();
    }
    let max_chars = limits.max_prompt_chars as usize;
    too_long("messages", chars, "characters in total", max_chars)?;
    if let Some(max_tokens) = p.max_tokens {
        if max_tokens == 0 {
            return Err(below("max_tokens", 0, 1));
        }
        at_most("max_tokens", max_tokens, limits.max_tokens)?;
    }
    if !(0.0..=TEMPERATURE_MAX).contains(&p.temperature) {
        let range = format!("0 to {TEMPERATURE_MAX}");
        return Err(out_of_range("temperature", p.temperature, &range));
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return Err(out_of_range("top_p", p.top_p, "above 0, up to 1"));
    }
    too_long("stop", p.stop.len(), "strings", MAX_STOP_STRINGS)?;
    if let Some(index) = p.stop.iter().position(String::is_empty) {
        return Err(ParamError::Empty {
            field: format!("stop[{index}]"),
        });
    }
    Ok(())
}

fn check_synthetic(limits: &SyntheticLimits, p: &SyntheticParams) -> Result<(), ParamError> {
    at_most("output_bytes", p.output_bytes, limits.max_output_bytes)?;
    at_most("delay_ms", p.delay_ms, limits.max_delay_ms)?;
    at_most("stream_tokens", p.stream_tokens, limits.max_stream_tokens)
}

fn at_most(field: &str, value: u32, limit: u32) -> Result<(), ParamError> {
    if value > limit {
        return Err(ParamError::AboveLimit {
            field: field.to_owned(),
            value: value.to_string(),
            limit: limit.to_string(),
        });
    }
    Ok(())
}

fn too_long(field: &str, len: usize, unit: &'static str, limit: usize) -> Result<(), ParamError> {
    if len > limit {
        return Err(ParamError::TooLong {
            field: field.to_owned(),
            len,
            unit,
            limit,
        });
    }
    Ok(())
}

fn below(field: &str, value: u32, min: u32) -> ParamError {
    ParamError::BelowMinimum {
        field: field.to_owned(),
        value: value.to_string(),
        min: min.to_string(),
    }
}

fn out_of_range(field: &str, value: f32, range: &str) -> ParamError {
    ParamError::OutOfRange {
        field: field.to_owned(),
        value: value.to_string(),
        range: range.to_owned(),
    }
}

#[cfg(test)]
mod tests;
