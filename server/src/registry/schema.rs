//! The registry file as written (serde types mirroring the TOML) and its validation into
//! [`ModelSpec`]s. Every check names the model and the field and says what to write instead,
//! because the reader is an operator whose coordinator just refused to start.

use std::collections::{BTreeMap, HashSet};

use infermine_protocol::{MAX_FRAME_BYTES, ModelKind};
use serde::Deserialize;

use super::params::{IMAGE_SIDE_MIN, IMAGE_SIDE_MULTIPLE};
use super::{
    Family, GpuTiers, ImageLimits, Limits, LlmLimits, ModelFile, ModelSpec, RegistryError,
    SyntheticLimits,
};

/// Largest image side a registry may allow; far beyond what any listed model can draw.
const MAX_IMAGE_SIDE: u32 = 8192;
const MAX_STEPS: u32 = 500;
const MAX_DEADLINE_MS: u64 = 60 * 60 * 1000;
const MAX_SLOT_CONCURRENCY: u32 = 64;
const MAX_ID_LEN: usize = 64;
/// Synthetic output travels inline in the result frame as base64 (4/3 larger), so half the
/// frame limit leaves room for the encoding and the rest of the frame.
const MAX_SYNTHETIC_OUTPUT: usize = MAX_FRAME_BYTES / 2;
/// The URL scheme of files an agent synthesizes instead of downloading (demo models).
pub(crate) const SYNTH_SCHEME: &str = "synth:";

const IMAGE_FIELDS: &[&str] = &[
    "max_width",
    "max_height",
    "max_pixels",
    "max_steps",
    "max_prompt_chars",
];
const LLM_FIELDS: &[&str] = &["context_tokens", "max_tokens", "max_prompt_chars"];
const SYNTHETIC_FIELDS: &[&str] = &["max_output_bytes", "max_delay_ms", "max_stream_tokens"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    pub(super) gpu_tiers: BTreeMap<String, u32>,
    #[serde(default)]
    pub(super) model: Vec<RawModel>,
}

impl RawRegistry {
    pub(super) fn parse(text: &str, origin: &str) -> Result<Self, RegistryError> {
        toml::from_str(text).map_err(|error| RegistryError::Parse {
            origin: origin.to_owned(),
            message: error.to_string(),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    id: String,
    kind: ModelKind,
    display_name: String,
    family: Family,
    points_multiplier: f64,
    #[serde(default)]
    discontinued: bool,
    #[serde(default)]
    demo: bool,
    #[serde(default)]
    min_vram_mb: u64,
    #[serde(default)]
    min_gpu: Vec<String>,
    #[serde(default)]
    allow_cpu: bool,
    target_latency_ms: u64,
    deadline_ms: u64,
    #[serde(default = "one")]
    slot_concurrency: u32,
    limits: RawLimits,
    #[serde(default)]
    files: Vec<ModelFile>,
    /// Names the file among `files` that is a LoRA (image models only).
    #[serde(default)]
    lora_file: Option<String>,
}

fn one() -> u32 {
    1
}

/// Every limit any kind knows; which ones a model must set depends on its kind.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_width: Option<u32>,
    max_height: Option<u32>,
    max_pixels: Option<u64>,
    max_steps: Option<u32>,
    max_prompt_chars: Option<u32>,
    context_tokens: Option<u32>,
    max_tokens: Option<u32>,
    max_output_bytes: Option<u32>,
    max_delay_ms: Option<u32>,
    max_stream_tokens: Option<u32>,
}

impl RawLimits {
    fn present(&self) -> [(&'static str, bool); 10] {
        [
            ("max_width", self.max_width.is_some()),
            ("max_height", self.max_height.is_some()),
            ("max_pixels", self.max_pixels.is_some()),
            ("max_steps", self.max_steps.is_some()),
            ("max_prompt_chars", self.max_prompt_chars.is_some()),
            ("context_tokens", self.context_tokens.is_some()),
            ("max_tokens", self.max_tokens.is_some()),
            ("max_output_bytes", self.max_output_bytes.is_some()),
            ("max_delay_ms", self.max_delay_ms.is_some()),
            ("max_stream_tokens", self.max_stream_tokens.is_some()),
        ]
    }
}

/// Where an error is: the file and the model.
struct Ctx<'a> {
    origin: &'a str,
    model: &'a str,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, problem: impl Into<String>) -> RegistryError {
        RegistryError::Model {
            origin: self.origin.to_owned(),
            model: self.model.to_owned(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// A limit the model's kind requires.
    fn need<T>(&self, value: Option<T>, field: &str, kind: ModelKind) -> Result<T, RegistryError> {
        value.ok_or_else(|| {
            self.err(
                format!("limits.{field}"),
                format!("is required for {} models", kind.as_str()),
            )
        })
    }
}

/// Validates one `[[model]]` table.
pub(super) fn build_model(
    raw: RawModel,
    tiers: &GpuTiers,
    origin: &str,
) -> Result<ModelSpec, RegistryError> {
    let ctx = Ctx {
        origin,
        model: &raw.id,
    };
    check_identity(&raw, &ctx)?;
    check_points(&raw, &ctx)?;
    check_timing(&raw, &ctx)?;
    let min_gpu_tier = min_gpu_tier(&raw, tiers, &ctx)?;
    let limits = build_limits(&raw.limits, raw.kind, &ctx)?;
    check_files(&raw.files, raw.kind, raw.demo, &ctx)?;
    check_lora(&raw, &ctx)?;
    Ok(ModelSpec {
        id: raw.id,
        kind: raw.kind,
        display_name: raw.display_name,
        family: raw.family,
        points_multiplier: raw.points_multiplier,
        discontinued: raw.discontinued,
        demo: raw.demo,
        min_vram_mb: raw.min_vram_mb,
        min_gpu: raw.min_gpu,
        min_gpu_tier,
        allow_cpu: raw.allow_cpu,
        limits,
        target_latency_ms: raw.target_latency_ms,
        deadline_ms: raw.deadline_ms,
        slot_concurrency: raw.slot_concurrency,
        files: raw.files,
        lora_file: raw.lora_file,
    })
}

fn check_identity(raw: &RawModel, ctx: &Ctx<'_>) -> Result<(), RegistryError> {
    let id_ok = !raw.id.is_empty()
        && raw.id.len() <= MAX_ID_LEN
        && raw
            .id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
    if !id_ok {
        return Err(ctx.err(
            "id",
            format!(
                "must be 1 to {MAX_ID_LEN} lowercase letters, digits, '.', '-' or '_' \
                 (it appears in URLs and the database)"
            ),
        ));
    }
    if raw.display_name.trim().is_empty() {
        return Err(ctx.err("display_name", "must not be empty"));
    }
    if raw.family.kind() != raw.kind {
        return Err(ctx.err(
            "family",
            format!(
                "`{}` is a family of {} models, but kind is {}; fix one of them",
                raw.family.as_str(),
                raw.family.kind().as_str(),
                raw.kind.as_str()
            ),
        ));
    }
    Ok(())
}

/// Synthetic jobs earn nothing, so their multiplier is exactly 0; every other model must
/// pay something, or its miners would work for free.
fn check_points(raw: &RawModel, ctx: &Ctx<'_>) -> Result<(), RegistryError> {
    let multiplier = raw.points_multiplier;
    if raw.kind == ModelKind::Synthetic {
        if multiplier != 0.0 {
            return Err(ctx.err(
                "points_multiplier",
                format!("must be 0 for synthetic models, which earn no points (got {multiplier})"),
            ));
        }
    } else if !(multiplier.is_finite() && multiplier > 0.0) {
        return Err(ctx.err(
            "points_multiplier",
            format!("must be > 0 and finite (got {multiplier})"),
        ));
    }
    Ok(())
}

fn check_timing(raw: &RawModel, ctx: &Ctx<'_>) -> Result<(), RegistryError> {
    let (target, deadline) = (raw.target_latency_ms, raw.deadline_ms);
    if target == 0 {
        return Err(ctx.err("target_latency_ms", "must be > 0"));
    }
    if target >= deadline {
        return Err(ctx.err(
            "target_latency_ms",
            format!(
                "({target}) must be below deadline_ms ({deadline}): points fall from full at \
                 the target to none at the deadline"
            ),
        ));
    }
    if deadline > MAX_DEADLINE_MS {
        return Err(ctx.err(
            "deadline_ms",
            format!("({deadline}) must be at most {MAX_DEADLINE_MS} (one hour)"),
        ));
    }
    if !(1..=MAX_SLOT_CONCURRENCY).contains(&raw.slot_concurrency) {
        return Err(ctx.err(
            "slot_concurrency",
            format!(
                "must be between 1 and {MAX_SLOT_CONCURRENCY} (got {})",
                raw.slot_concurrency
            ),
        ));
    }
    Ok(())
}

/// The lowest tier among the named minimum GPUs: the seed lists equivalents ("3070, 4060 Ti,
/// A4000"), any of which, or better, qualifies.
fn min_gpu_tier(raw: &RawModel, tiers: &GpuTiers, ctx: &Ctx<'_>) -> Result<u32, RegistryError> {
    if raw.allow_cpu && !raw.min_gpu.is_empty() {
        return Err(ctx.err(
            "allow_cpu",
            "cannot be true when min_gpu is set: a CPU never meets a GPU minimum; drop one",
        ));
    }
    let mut lowest: Option<u32> = None;
    for (index, name) in raw.min_gpu.iter().enumerate() {
        let tier = tiers.tier_of(name).ok_or_else(|| {
            ctx.err(
                format!("min_gpu[{index}]"),
                format!("`{name}` is not in [gpu_tiers]; add it there or use a listed name"),
            )
        })?;
        lowest = Some(lowest.map_or(tier, |low| low.min(tier)));
    }
    Ok(lowest.unwrap_or(0))
}

fn build_limits(raw: &RawLimits, kind: ModelKind, ctx: &Ctx<'_>) -> Result<Limits, RegistryError> {
    let allowed = match kind {
        ModelKind::Image => IMAGE_FIELDS,
        ModelKind::Llm => LLM_FIELDS,
        ModelKind::Synthetic => SYNTHETIC_FIELDS,
    };
    let foreign = raw
        .present()
        .into_iter()
        .find(|(field, present)| *present && !allowed.contains(field));
    if let Some((field, _)) = foreign {
        return Err(ctx.err(
            format!("limits.{field}"),
            format!(
                "does not apply to {} models (they take {}); remove it",
                kind.as_str(),
                allowed.join(", ")
            ),
        ));
    }
    match kind {
        ModelKind::Image => image_limits(raw, ctx).map(Limits::Image),
        ModelKind::Llm => llm_limits(raw, ctx).map(Limits::Llm),
        ModelKind::Synthetic => synthetic_limits(raw, ctx).map(Limits::Synthetic),
    }
}

fn image_limits(raw: &RawLimits, ctx: &Ctx<'_>) -> Result<ImageLimits, RegistryError> {
    let kind = ModelKind::Image;
    let limits = ImageLimits {
        max_width: ctx.need(raw.max_width, "max_width", kind)?,
        max_height: ctx.need(raw.max_height, "max_height", kind)?,
        max_pixels: ctx.need(raw.max_pixels, "max_pixels", kind)?,
        max_steps: ctx.need(raw.max_steps, "max_steps", kind)?,
        max_prompt_chars: ctx.need(raw.max_prompt_chars, "max_prompt_chars", kind)?,
    };
    for (field, side) in [
        ("max_width", limits.max_width),
        ("max_height", limits.max_height),
    ] {
        if !(IMAGE_SIDE_MIN..=MAX_IMAGE_SIDE).contains(&side)
            || !side.is_multiple_of(IMAGE_SIDE_MULTIPLE)
        {
            return Err(ctx.err(
                format!("limits.{field}"),
                format!(
                    "({side}) must be a multiple of {IMAGE_SIDE_MULTIPLE} between \
                     {IMAGE_SIDE_MIN} and {MAX_IMAGE_SIDE}"
                ),
            ));
        }
    }
    let square = u64::from(limits.max_width) * u64::from(limits.max_height);
    let smallest = u64::from(IMAGE_SIDE_MIN * IMAGE_SIDE_MIN);
    if limits.max_pixels < smallest || limits.max_pixels > square {
        return Err(ctx.err(
            "limits.max_pixels",
            format!(
                "({}) must be between {smallest} and max_width × max_height ({square})",
                limits.max_pixels
            ),
        ));
    }
    if !(1..=MAX_STEPS).contains(&limits.max_steps) {
        return Err(ctx.err(
            "limits.max_steps",
            format!("({}) must be between 1 and {MAX_STEPS}", limits.max_steps),
        ));
    }
    at_least_one(limits.max_prompt_chars, "max_prompt_chars", ctx)?;
    Ok(limits)
}

fn llm_limits(raw: &RawLimits, ctx: &Ctx<'_>) -> Result<LlmLimits, RegistryError> {
    let kind = ModelKind::Llm;
    let limits = LlmLimits {
        context_tokens: ctx.need(raw.context_tokens, "context_tokens", kind)?,
        max_tokens: ctx.need(raw.max_tokens, "max_tokens", kind)?,
        max_prompt_chars: ctx.need(raw.max_prompt_chars, "max_prompt_chars", kind)?,
    };
    at_least_one(limits.max_tokens, "max_tokens", ctx)?;
    at_least_one(limits.max_prompt_chars, "max_prompt_chars", ctx)?;
    if limits.context_tokens < limits.max_tokens {
        return Err(ctx.err(
            "limits.context_tokens",
            format!(
                "({}) must be at least max_tokens ({}): generated tokens live in the context",
                limits.context_tokens, limits.max_tokens
            ),
        ));
    }
    Ok(limits)
}

fn synthetic_limits(raw: &RawLimits, ctx: &Ctx<'_>) -> Result<SyntheticLimits, RegistryError> {
    let kind = ModelKind::Synthetic;
    let limits = SyntheticLimits {
        max_output_bytes: ctx.need(raw.max_output_bytes, "max_output_bytes", kind)?,
        max_delay_ms: ctx.need(raw.max_delay_ms, "max_delay_ms", kind)?,
        max_stream_tokens: ctx.need(raw.max_stream_tokens, "max_stream_tokens", kind)?,
    };
    let output = limits.max_output_bytes as usize;
    if output == 0 || output > MAX_SYNTHETIC_OUTPUT {
        return Err(ctx.err(
            "limits.max_output_bytes",
            format!(
                "({output}) must be between 1 and {MAX_SYNTHETIC_OUTPUT}: the output travels \
                 base64-encoded inside one result frame"
            ),
        ));
    }
    Ok(limits)
}

fn at_least_one(value: u32, field: &str, ctx: &Ctx<'_>) -> Result<(), RegistryError> {
    if value == 0 {
        return Err(ctx.err(format!("limits.{field}"), "must be at least 1"));
    }
    Ok(())
}

fn check_files(
    files: &[ModelFile],
    kind: ModelKind,
    demo: bool,
    ctx: &Ctx<'_>,
) -> Result<(), RegistryError> {
    if kind != ModelKind::Synthetic && files.is_empty() {
        return Err(ctx.err(
            "files",
            format!(
                "must list at least one file: {} models need weights to run",
                kind.as_str()
            ),
        ));
    }
    let mut seen = HashSet::new();
    for (index, file) in files.iter().enumerate() {
        let field = |name: &str| format!("files[{index}].{name}");
        if !is_relative_path(&file.name) {
            return Err(ctx.err(
                field("name"),
                format!(
                    "must be a relative path inside the model's folder, without `..` (got `{}`)",
                    file.name
                ),
            ));
        }
        if !seen.insert(file.name.as_str()) {
            return Err(ctx.err(field("name"), format!("`{}` is listed twice", file.name)));
        }
        check_url(&file.url, demo).map_err(|problem| ctx.err(field("url"), problem))?;
        if file.size_bytes == Some(0) {
            return Err(ctx.err(
                field("size_bytes"),
                "must be > 0; leave it out while the size is not known",
            ));
        }
        if let Some(hash) = &file.sha256
            && !is_sha256_hex(hash)
        {
            return Err(ctx.err(
                field("sha256"),
                format!(
                    "must be 64 lowercase hex characters, as sha256sum prints it (got `{hash}`)"
                ),
            ));
        }
    }
    Ok(())
}

/// A LoRA is explicit: a file name saying `lora` would be a guess, and requests may set the
/// LoRA's strength only on models that have one.
fn check_lora(raw: &RawModel, ctx: &Ctx<'_>) -> Result<(), RegistryError> {
    let Some(name) = &raw.lora_file else {
        return Ok(());
    };
    if raw.kind != ModelKind::Image {
        return Err(ctx.err(
            "lora_file",
            format!(
                "applies to image models only, not {} models; remove it",
                raw.kind.as_str()
            ),
        ));
    }
    if !raw.files.iter().any(|file| &file.name == name) {
        return Err(ctx.err(
            "lora_file",
            format!("`{name}` is not one of the model's files; name its [[model.files]] entry"),
        ));
    }
    if raw.files.len() < 2 {
        return Err(ctx.err(
            "lora_file",
            "names the model's only file: list the base checkpoint the LoRA applies on too",
        ));
    }
    Ok(())
}

/// Where an agent gets a file: an https:// download, or for a demo model `synth:<name>`, a
/// file the agent makes itself (`infermine-agent models synth`), since demo weights are
/// random and published nowhere.
fn check_url(url: &str, demo: bool) -> Result<(), String> {
    if let Some(name) = url.strip_prefix(SYNTH_SCHEME) {
        if !demo {
            return Err(format!(
                "`{url}`: synth: URLs (files the agent makes with `infermine-agent models \
                 synth`) are for demo models only; set demo = true or give an https:// URL"
            ));
        }
        let name_ok = !name.is_empty()
            && name.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
            });
        if !name_ok {
            return Err(format!(
                "`{url}`: a synth: URL names a recipe, as in `synth:tiny-llama` (lowercase \
                 letters, digits, '.', '-' or '_')"
            ));
        }
        return Ok(());
    }
    if !url.starts_with("https://") || url.len() <= "https://".len() {
        return Err(format!(
            "must be an https:// URL, or synth:<name> for a demo model (got `{url}`)"
        ));
    }
    Ok(())
}

/// Agents join the name to their model folder, so it must not escape it.
fn is_relative_path(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\\')
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

fn is_sha256_hex(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

#[cfg(test)]
mod tests;
