//! The body of `POST /v1/images/generations`, read field by field so that every refusal names
//! the parameter at fault; [`super::plan`] then resolves it against its model.
//!
//! Unlike the chat route, unknown fields are refused (`unknown_parameter`): image APIs spell
//! the same setting many ways (`num_inference_steps`, `cfg_scale`, `sampler`), and a
//! misspelt one ignored would render another image than the one asked for. OpenAI fields
//! that infermine cannot honour are accepted only with the values that change nothing.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::openai::fields::{describe, field, field_at, missing, unsupported_value, wrong_type};

/// Most images one request may ask for.
pub const MAX_IMAGES: u32 = 4;

/// OpenAI's fields of the request.
const OPENAI_FIELDS: [&str; 15] = [
    "model",
    "prompt",
    "n",
    "size",
    "response_format",
    "user",
    "safety_identifier",
    "quality",
    "style",
    "background",
    "moderation",
    "output_format",
    "output_compression",
    "stream",
    "partial_images",
];
/// infermine's extensions.
const EXTENSIONS: [&str; 6] = [
    "negative_prompt",
    "steps",
    "guidance_scale",
    "seed",
    "scheduler",
    "lora",
];

/// OpenAI fields whose other values infermine cannot honour: the values accepted (the
/// field's default among them) and what to do instead.
const NEUTRAL: [(&str, &[&str], &str); 5] = [
    (
        "quality",
        &["auto", "standard"],
        "infermine renders at one quality; raise `steps` for more detail",
    ),
    ("style", &["vivid"], "describe the style in the prompt"),
    ("background", &["auto", "opaque"], "the images are opaque"),
    ("moderation", &["auto", "low"], "those are OpenAI's levels"),
    ("output_format", &["png"], "the images are PNGs"),
];

/// `POST /v1/images/generations`: OpenAI's image generation request, plus infermine's
/// extensions (`negative_prompt`, `steps`, `guidance_scale`, `seed`, `scheduler`, `lora`).
/// Each of the `n` images is one image job. Unknown fields are refused with 400
/// (`unknown_parameter`). OpenAI's `quality` (`auto`, `standard`), `style` (`vivid`),
/// `background` (`auto`, `opaque`), `moderation` (`auto`, `low`), `output_format` (`png`),
/// `stream` (`false`) and `partial_images` (`0`) are accepted with these values only, since
/// others would change the answer in ways infermine cannot honour; `output_compression` is
/// refused (it applies to JPEG and WebP).
#[derive(Debug, Clone, PartialEq, ToSchema)]
pub struct ImageGenerationRequest {
    /// An `image` model id from `GET /v1/models`.
    #[schema(example = "stable-diffusion-1.5")]
    pub model: String,
    /// What to draw.
    pub prompt: String,
    /// How many images, 1 to 4, each its own job; 1 when absent.
    #[schema(minimum = 1, maximum = 4)]
    pub n: Option<u32>,
    /// `WIDTHxHEIGHT` in pixels with a lowercase `x`, sides multiples of 8 within the model's
    /// limits; or `auto`. Absent or `auto`: the family's native size (512x512 for SD 1.5,
    /// 1024x1024 for SDXL and Flux), shrunk to fit the model's limits.
    #[schema(value_type = Option<String>, example = "512x512",
        pattern = "^([0-9]+x[0-9]+|auto)$")]
    pub size: Option<ImageSize>,
    /// `b64_json` (the default) or `url`.
    pub response_format: Option<ResponseFormat>,
    /// Accepted and stored nowhere.
    pub user: Option<String>,
    /// OpenAI's successor to `user`: accepted and stored nowhere.
    pub safety_identifier: Option<String>,
    /// `auto` or `standard` only.
    pub quality: Option<String>,
    /// `vivid` only.
    pub style: Option<String>,
    /// infermine extension: what the images should not show.
    pub negative_prompt: Option<String>,
    /// infermine extension: sampling steps, up to the model's limit; 30 when absent (28 for
    /// Flux), or the model's limit if lower.
    pub steps: Option<u32>,
    /// infermine extension: classifier-free guidance, 0 to 30; 7.5 when absent (5 for SDXL,
    /// 3.5 for Flux).
    pub guidance_scale: Option<f32>,
    /// infermine extension: the seed of the first image's noise; image `i` (from 0) uses
    /// `seed + i`. The same request with the same seed gives the same images. A random seed
    /// below 2^32 is drawn when absent; the answer reports it (`infermine.seed`). Any 64-bit
    /// integer: a negative one stands for the unsigned number of the same bits.
    #[schema(value_type = Option<i64>)]
    pub seed: Option<u64>,
    /// infermine extension: the sampler, one of the model family's (`euler`, `euler_a`,
    /// `dpmpp_2m_karras`, `ddim` for SD 1.5 and SDXL; `flow_euler` for Flux); the model's
    /// default when absent.
    pub scheduler: Option<String>,
    /// infermine extension: the strength of the model's LoRA, for models that have one.
    pub lora: Option<LoraRequest>,
}

/// The size of an image in pixels, written `WIDTHxHEIGHT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

impl fmt::Display for ImageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// How the images come back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub enum ResponseFormat {
    /// The PNG itself, base64-encoded, in `b64_json`.
    #[default]
    #[serde(rename = "b64_json")]
    B64Json,
    /// A link to the PNG in `url`, fetchable without credentials for a while (60 minutes by
    /// default).
    #[serde(rename = "url")]
    Url,
}

/// infermine extension: the LoRA's strength.
#[derive(Debug, Clone, Copy, PartialEq, ToSchema)]
pub struct LoraRequest {
    /// 0 (off) to 2; 1 is the strength the LoRA was trained at.
    #[schema(minimum = 0, maximum = 2, example = 0.8)]
    pub scale: f32,
}

impl ImageGenerationRequest {
    /// Reads a request body; the error names the parameter at fault.
    pub fn parse(body: Value) -> Result<Self, ApiError> {
        let Value::Object(map) = body else {
            return Err(ApiError::InvalidRequest(format!(
                "the body must be a JSON object with `model` and `prompt`, not {}",
                describe(&body)
            )));
        };
        refuse_unknown(&map)?;
        refuse_unsupported(&map)?;
        let model = field::<String>(&map, "model", "a model id string")?
            .ok_or_else(|| missing("model", "an image model id from GET /v1/models"))?;
        let prompt = field::<String>(&map, "prompt", "a string")?
            .ok_or_else(|| missing("prompt", "a description of the image"))?;
        let n = field::<u32>(&map, "n", "an integer from 1 to 4")?;
        if let Some(n) = n
            && !(1..=MAX_IMAGES).contains(&n)
        {
            return Err(ApiError::BadParam {
                code: "param_out_of_range",
                message: format!(
                    "n = {n} is out of range: 1 to {MAX_IMAGES} images per request; send \
                     several requests for more"
                ),
                param: Some("n".to_owned()),
            });
        }
        Ok(Self {
            model,
            prompt,
            n,
            size: size(&map)?,
            response_format: response_format(&map)?,
            user: field(&map, "user", "a string")?,
            safety_identifier: field(&map, "safety_identifier", "a string")?,
            quality: field(&map, "quality", "a string")?,
            style: field(&map, "style", "a string")?,
            negative_prompt: field(&map, "negative_prompt", "a string")?,
            steps: field(&map, "steps", "a positive integer")?,
            guidance_scale: field(&map, "guidance_scale", "a number")?,
            seed: seed(&map)?,
            scheduler: field(&map, "scheduler", "a sampler name string")?,
            lora: lora(&map)?,
        })
    }
}

fn refuse_unknown(map: &Map<String, Value>) -> Result<(), ApiError> {
    let Some(name) = map
        .keys()
        .find(|k| !OPENAI_FIELDS.contains(&k.as_str()) && !EXTENSIONS.contains(&k.as_str()))
    else {
        return Ok(());
    };
    Err(ApiError::BadParam {
        code: "unknown_parameter",
        message: format!(
            "unknown parameter `{name}`: /v1/images/generations takes {} and the infermine \
             extensions {}; remove it or correct its name",
            OPENAI_FIELDS.join(", "),
            EXTENSIONS.join(", ")
        ),
        param: Some(name.clone()),
    })
}

/// Refuses values of OpenAI's fields that infermine cannot honour.
fn refuse_unsupported(map: &Map<String, Value>) -> Result<(), ApiError> {
    for (name, accepted, instead) in NEUTRAL {
        if let Some(value) = field::<String>(map, name, "a string")?
            && !accepted.contains(&value.as_str())
        {
            return Err(unsupported_value(
                name,
                format!(
                    "{name} `{value}` is not supported: {instead}; send {} or leave it out",
                    accepted.join(" or ")
                ),
            ));
        }
    }
    if field::<bool>(map, "stream", "true or false")? == Some(true) {
        return Err(unsupported_value(
            "stream",
            "stream is not supported: the images come whole, in one answer".to_owned(),
        ));
    }
    if field::<u32>(map, "partial_images", "an integer")?.is_some_and(|n| n > 0) {
        return Err(unsupported_value(
            "partial_images",
            "partial_images is not supported: the images come whole, in one answer".to_owned(),
        ));
    }
    if map.get("output_compression").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::BadParam {
            code: "unsupported_parameter",
            message: "output_compression applies to JPEG and WebP, and the images are PNGs; \
                      remove it"
                .to_owned(),
            param: Some("output_compression".to_owned()),
        });
    }
    Ok(())
}

/// `WIDTHxHEIGHT` with a lowercase `x`, or `auto` (`None`). One spelling only, so that a size
/// reads the same in requests, logs and the OpenAI documentation.
fn size(map: &Map<String, Value>) -> Result<Option<ImageSize>, ApiError> {
    let Some(text) = field::<String>(map, "size", "a string such as \"512x512\"")? else {
        return Ok(None);
    };
    if text == "auto" {
        return Ok(None);
    }
    let side = |s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u32>().ok()
    };
    let parsed = text.split_once('x').and_then(|(w, h)| {
        Some(ImageSize {
            width: side(w)?,
            height: side(h)?,
        })
    });
    parsed.map(Some).ok_or_else(|| ApiError::BadParam {
        code: "invalid_value",
        message: format!(
            "size `{text}` is not WIDTHxHEIGHT: write the width and height in pixels joined by \
             a lowercase x, such as 512x512 or 1024x768, or `auto` for the model's native size"
        ),
        param: Some("size".to_owned()),
    })
}

fn response_format(map: &Map<String, Value>) -> Result<Option<ResponseFormat>, ApiError> {
    match field::<String>(map, "response_format", "a string")?.as_deref() {
        None => Ok(None),
        Some("b64_json") => Ok(Some(ResponseFormat::B64Json)),
        Some("url") => Ok(Some(ResponseFormat::Url)),
        Some(other) => Err(unsupported_value(
            "response_format",
            format!(
                "response_format `{other}` is not supported: use b64_json (the default) or url"
            ),
        )),
    }
}

/// Any integer that fits 64 bits; a negative one keeps its bits, as on the chat route.
fn seed(map: &Map<String, Value>) -> Result<Option<u64>, ApiError> {
    match map.get("seed") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        Some(Value::Number(n)) if n.as_i64().is_some() => Ok(n.as_i64().map(|s| s as u64)),
        Some(other) => Err(wrong_type("seed", "an integer", other)),
    }
}

fn lora(map: &Map<String, Value>) -> Result<Option<LoraRequest>, ApiError> {
    let lora = match map.get("lora") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(lora)) => lora,
        Some(other) => {
            return Err(wrong_type(
                "lora",
                "an object such as {\"scale\": 0.8}",
                other,
            ));
        }
    };
    if let Some(name) = lora.keys().find(|k| *k != "scale") {
        return Err(ApiError::BadParam {
            code: "unknown_parameter",
            message: format!("unknown parameter `lora.{name}`: `lora` takes only `scale`"),
            param: Some(format!("lora.{name}")),
        });
    }
    let expected = "a number from 0 to 2 (1 is the strength the LoRA was trained at)";
    let scale = field_at::<f32>(lora, "scale", "lora.scale", expected)?
        .ok_or_else(|| missing("lora.scale", expected))?;
    Ok(Some(LoraRequest { scale }))
}
