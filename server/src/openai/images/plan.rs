//! A request resolved against its model ([`ImageGenerationRequest::plan`]): the family's
//! defaults for what the request leaves out (the one place they live), then the registry's
//! checks with `param` named as the request names it, so every refusal comes before any job
//! exists.

use infermine_protocol::{ImageParams, JobParams};

use super::request::{ImageGenerationRequest, ImageSize, ResponseFormat};
use crate::error::ApiError;
use crate::registry::{Family, ImageLimits, Limits, ModelSpec, ParamError, Registry};

/// Smallest image side the registry accepts (its checks have the final word).
const SIDE_MIN: u32 = 64;

/// What a request leaves out, by family: the one place these defaults live.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FamilyDefaults {
    /// The side of the square the family was trained at.
    pub(crate) side: u32,
    /// Sides are multiples of this (the family's latent blocks).
    pub(crate) multiple: u32,
    pub(crate) steps: u32,
    pub(crate) guidance_scale: f32,
}

impl FamilyDefaults {
    /// `None` for families that make no images.
    pub(crate) fn of(family: Family) -> Option<Self> {
        let (side, steps, guidance_scale) = match family {
            Family::Sd15 => (512, 30, 7.5),
            Family::Sdxl => (1024, 30, 5.0),
            Family::Flux => (1024, 28, 3.5),
            Family::Llama3 | Family::Mistral | Family::Mixtral | Family::Synthetic => {
                return None;
            }
        };
        Some(Self {
            side,
            multiple: family.side_multiple(),
            steps,
            guidance_scale,
        })
    }

    /// The native square, shrunk to the model's limits (sides, then pixels) with sides kept
    /// multiples of the family's block.
    pub(crate) fn size(self, limits: &ImageLimits) -> ImageSize {
        let mut width = self.side.min(limits.max_width);
        let mut height = self.side.min(limits.max_height);
        let pixels = u64::from(width) * u64::from(height);
        if pixels > limits.max_pixels {
            let shrink = (limits.max_pixels as f64 / pixels as f64).sqrt();
            let fit = |side: u32| {
                let scaled = (f64::from(side) * shrink) as u32;
                (scaled - scaled % self.multiple).max(SIDE_MIN)
            };
            (width, height) = (fit(width), fit(height));
        }
        ImageSize { width, height }
    }

    /// The steps a request gets when it names none: the family's, or the model's limit.
    pub(crate) fn steps(self, limits: &ImageLimits) -> u32 {
        self.steps.min(limits.max_steps)
    }
}

/// A request resolved against its model: the first image's params, and how many follow.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub(crate) model: String,
    pub(crate) first: ImageParams,
    pub(crate) n: u32,
    pub(crate) response_format: ResponseFormat,
}

impl Plan {
    /// Each image's params: the first's, with seed `seed + i`.
    pub(crate) fn images(&self) -> impl Iterator<Item = ImageParams> + '_ {
        (0..u64::from(self.n)).map(|i| ImageParams {
            seed: self.first.seed.wrapping_add(i),
            ..self.first.clone()
        })
    }
}

impl ImageGenerationRequest {
    /// Resolves the request against its model: defaults for what it leaves out, then the
    /// registry's checks, so every refusal comes before any job exists. A seed is drawn when
    /// absent.
    pub(crate) fn plan(&self, registry: &Registry) -> Result<Plan, ApiError> {
        let spec = registry
            .get(&self.model)
            .ok_or_else(|| ApiError::ModelNotFound(self.model.clone()))?;
        let (Limits::Image(limits), Some(defaults)) =
            (&spec.limits, FamilyDefaults::of(spec.family))
        else {
            return Err(not_an_image_model(spec));
        };
        if self.lora.is_some() && spec.lora_file.is_none() {
            return Err(no_lora(spec, registry));
        }
        let size = self.size.unwrap_or_else(|| defaults.size(limits));
        let first = ImageParams {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone().unwrap_or_default(),
            width: size.width,
            height: size.height,
            steps: self.steps.unwrap_or_else(|| defaults.steps(limits)),
            guidance_scale: self.guidance_scale.unwrap_or(defaults.guidance_scale),
            seed: self
                .seed
                .unwrap_or_else(|| u64::from(rand::random::<u32>())),
            scheduler: self.scheduler.clone(),
            lora_scale: self.lora.map(|lora| lora.scale),
        };
        spec.validate_params(&JobParams::Image(first.clone()))
            .map_err(|e| refused(&e, size, limits, defaults.multiple))?;
        Ok(Plan {
            model: spec.id.clone(),
            first,
            n: self.n.unwrap_or(1),
            response_format: self.response_format.unwrap_or_default(),
        })
    }
}

/// A registry refusal, with `param` named as this request names it.
fn refused(error: &ParamError, size: ImageSize, limits: &ImageLimits, multiple: u32) -> ApiError {
    let (param, message) = match error.field() {
        Some("width" | "height" | "width×height") => (
            "size",
            format!(
                "size {size}: {error}; this model takes sides that are multiples of \
                 {multiple} from {SIDE_MIN} to {}x{}, at most {} pixels in all",
                limits.max_width, limits.max_height, limits.max_pixels
            ),
        ),
        Some("lora_scale") => (
            "lora.scale",
            error.to_string().replacen("lora_scale", "lora.scale", 1),
        ),
        Some(field) => (field, error.to_string()),
        None => return ApiError::Internal(format!("image params refused: {error}")),
    };
    ApiError::BadParam {
        code: error.code(),
        message,
        param: Some(param.to_owned()),
    }
}

fn not_an_image_model(spec: &ModelSpec) -> ApiError {
    ApiError::BadParam {
        code: "model_not_image",
        message: format!(
            "model `{}` is an {} model, not an image model: /v1/images/generations serves \
             `image` models (GET /v1/models gives each model's kind)",
            spec.id,
            spec.kind.as_str()
        ),
        param: Some("model".to_owned()),
    }
}

fn no_lora(spec: &ModelSpec, registry: &Registry) -> ApiError {
    let with_lora: Vec<&str> = registry
        .models()
        .filter(|m| m.lora_file.is_some())
        .map(|m| m.id.as_str())
        .collect();
    let instead = if with_lora.is_empty() {
        String::new()
    } else {
        format!(", or use a model that has one ({})", with_lora.join(", "))
    };
    ApiError::BadParam {
        code: "param_not_supported",
        message: format!("model `{}` has no LoRA: remove `lora`{instead}", spec.id),
        param: Some("lora".to_owned()),
    }
}
