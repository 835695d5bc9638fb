//! Image requests as OpenAI clients send them, the defaults each family gets, and the
//! refusals that name the parameter.

use serde_json::{Value, json};

use super::plan::{FamilyDefaults, Plan};
use super::request::{ImageGenerationRequest, ImageSize, ResponseFormat};
use crate::error::ApiError;
use crate::registry::{Family, Limits, Registry};

fn body(model: &str, extra: Value) -> Value {
    let mut body = json!({ "model": model, "prompt": "a lighthouse at dusk" });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    body
}

fn plan(body: Value) -> Result<Plan, ApiError> {
    ImageGenerationRequest::parse(body)?.plan(&Registry::builtin())
}

fn planned(model: &str, extra: Value) -> Plan {
    plan(body(model, extra.clone())).unwrap_or_else(|e| panic!("{model} {extra}: {e}"))
}

/// The error's status, code and param, and its message, for a body that must be refused.
fn refused(body: Value) -> (u16, &'static str, Option<String>, String) {
    let error = plan(body.clone()).expect_err(&format!("refused: {body}"));
    (
        error.status().as_u16(),
        error.code(),
        error.param().map(str::to_owned),
        error.to_string(),
    )
}

/// Refused with 400 naming `param`, with `code`, and a message mentioning `mentions`.
fn assert_refused(extra: Value, param: &str, code: &str, mentions: &str) {
    let (status, got_code, got_param, message) = refused(body("stable-diffusion-1.5", extra));
    assert_eq!(status, 400, "{message}");
    assert_eq!(got_param.as_deref(), Some(param), "{message}");
    assert_eq!(got_code, code, "{message}");
    assert!(
        message.contains(mentions),
        "`{message}` mentions `{mentions}`"
    );
}

#[test]
fn a_minimal_request_gets_the_family_defaults() {
    let cases = [
        ("stable-diffusion-1.5", 512, 30, 7.5),
        ("sdxl-base-1.0", 1024, 30, 5.0),
        ("sdxl-base-1.0-offset-lora", 1024, 30, 5.0),
        ("flux.1-dev-nf4", 1024, 28, 3.5),
    ];
    for (model, side, steps, guidance) in cases {
        let plan = planned(model, json!({}));
        let first = &plan.first;
        assert_eq!((first.width, first.height), (side, side), "{model}");
        assert_eq!(first.steps, steps, "{model}");
        assert_eq!(first.guidance_scale, guidance, "{model}");
        assert_eq!(
            first.scheduler, None,
            "{model}: the model's default sampler"
        );
        assert_eq!(first.lora_scale, None, "{model}");
        assert_eq!(first.negative_prompt, "");
        assert_eq!(plan.n, 1);
        assert_eq!(plan.response_format, ResponseFormat::B64Json);
        assert!(
            first.seed < 1 << 32,
            "drawn seeds fit 32 bits: {}",
            first.seed
        );
    }
    let seeds: std::collections::HashSet<u64> = (0..4)
        .map(|_| planned("stable-diffusion-1.5", json!({})).first.seed)
        .collect();
    assert!(seeds.len() > 1, "no seed: a random one each time");
}

#[test]
fn default_sizes_shrink_to_the_model_limits() {
    let limits = |max_width, max_height, max_pixels, max_steps| crate::registry::ImageLimits {
        max_width,
        max_height,
        max_pixels,
        max_steps,
        max_prompt_chars: 100,
    };
    let sdxl = FamilyDefaults::of(Family::Sdxl).expect("image family");
    let size = |l| sdxl.size(&l);
    assert_eq!(
        size(limits(1536, 1536, 1_572_864, 60)),
        ImageSize {
            width: 1024,
            height: 1024
        }
    );
    assert_eq!(
        size(limits(768, 1536, 1_572_864, 60)),
        ImageSize {
            width: 768,
            height: 1024
        }
    );
    // 512×512 is above 200,000 pixels: both sides shrink to whole blocks of 8 that fit.
    let fitted = size(limits(512, 512, 200_000, 60));
    assert_eq!(
        fitted,
        ImageSize {
            width: 440,
            height: 440
        }
    );
    assert_eq!(sdxl.steps(&limits(512, 512, 200_000, 20)), 20);
    assert_eq!(sdxl.steps(&limits(512, 512, 200_000, 60)), 30);
    assert_eq!(FamilyDefaults::of(Family::Llama3), None);
    // Every built-in image model's defaults pass its own checks.
    for model in Registry::builtin().models() {
        if let Limits::Image(_) = model.limits {
            planned(&model.id, json!({}));
        }
    }
}

#[test]
fn a_full_request_becomes_n_jobs_with_consecutive_seeds() {
    let plan = planned(
        "sdxl-base-1.0-offset-lora",
        json!({
            "n": 3, "size": "1024x768", "response_format": "url", "user": "u-1",
            "safety_identifier": "s-1",
            "quality": "standard", "style": "vivid", "background": "auto",
            "moderation": "low", "output_format": "png", "stream": false,
            "partial_images": 0, "output_compression": null,
            "negative_prompt": "fog", "steps": 25, "guidance_scale": 6,
            "seed": 41, "scheduler": "dpmpp_2m_karras", "lora": { "scale": 0.8 }
        }),
    );
    assert_eq!(plan.model, "sdxl-base-1.0-offset-lora");
    assert_eq!(plan.response_format, ResponseFormat::Url);
    let images: Vec<_> = plan.images().collect();
    assert_eq!(images.len(), 3);
    let seeds: Vec<u64> = images.iter().map(|p| p.seed).collect();
    assert_eq!(seeds, [41, 42, 43]);
    for image in &images {
        assert_eq!((image.width, image.height, image.steps), (1024, 768, 25));
        assert_eq!(image.guidance_scale, 6.0);
        assert_eq!(image.negative_prompt, "fog");
        assert_eq!(image.scheduler.as_deref(), Some("dpmpp_2m_karras"));
        assert_eq!(image.lora_scale, Some(0.8));
        assert_eq!(image.prompt, "a lighthouse at dusk");
    }
    // A negative seed keeps its bits; seeds wrap rather than overflow.
    let plan = planned("stable-diffusion-1.5", json!({ "seed": -1, "n": 2 }));
    let seeds: Vec<u64> = plan.images().map(|p| p.seed).collect();
    assert_eq!(seeds, [u64::MAX, 0]);
    let plan = planned("stable-diffusion-1.5", json!({ "size": "auto", "n": 4 }));
    assert_eq!((plan.first.width, plan.n), (512, 4));
}

#[test]
fn sizes_are_width_x_height_with_a_lowercase_x() {
    let plan = planned("stable-diffusion-1.5", json!({ "size": "768x512" }));
    assert_eq!((plan.first.width, plan.first.height), (768, 512));
    for bad in [
        "512X512",
        "512",
        "512x",
        "x512",
        "512*512",
        "-512x512",
        "512x512x2",
        "big",
    ] {
        assert_refused(
            json!({ "size": bad }),
            "size",
            "invalid_value",
            "WIDTHxHEIGHT",
        );
    }
    assert_refused(json!({ "size": 512 }), "size", "invalid_type", "a string");
    // The registry's limits, named as `size`, with what the model takes.
    assert_refused(
        json!({ "size": "1004x512" }),
        "size",
        "param_out_of_range",
        "size 1004x512: width 1004 is not a multiple of 8; this model takes sides that are \
         multiples of 8 from 64 to 1024x1024, at most 589824 pixels",
    );
    assert_refused(
        json!({ "size": "1024x1024" }),
        "size",
        "param_out_of_range",
        "589824 pixels",
    );
    assert_refused(
        json!({ "size": "32x512" }),
        "size",
        "param_out_of_range",
        "minimum of 64",
    );
    assert_refused(
        json!({ "size": "2048x512" }),
        "size",
        "param_out_of_range",
        "1024",
    );
}

#[test]
fn every_field_refusal_names_its_param() {
    let cases = [
        (
            json!({ "n": 0 }),
            "n",
            "param_out_of_range",
            "1 to 4 images",
        ),
        (json!({ "n": 5 }), "n", "param_out_of_range", "n = 5"),
        (json!({ "n": 1.5 }), "n", "invalid_type", "integer"),
        (json!({ "n": "2" }), "n", "invalid_type", "integer"),
        (
            json!({ "steps": 51 }),
            "steps",
            "param_out_of_range",
            "limit of 50",
        ),
        (
            json!({ "steps": 0 }),
            "steps",
            "param_out_of_range",
            "minimum of 1",
        ),
        (
            json!({ "steps": -3 }),
            "steps",
            "invalid_type",
            "positive integer",
        ),
        (
            json!({ "guidance_scale": 31 }),
            "guidance_scale",
            "param_out_of_range",
            "0 to 30",
        ),
        (
            json!({ "guidance_scale": "high" }),
            "guidance_scale",
            "invalid_type",
            "a number",
        ),
        (json!({ "seed": 1.5 }), "seed", "invalid_type", "integer"),
        (json!({ "seed": "7" }), "seed", "invalid_type", "integer"),
        (
            json!({ "scheduler": "flow_euler" }),
            "scheduler",
            "param_not_supported",
            "euler, euler_a, dpmpp_2m_karras, ddim",
        ),
        (
            json!({ "scheduler": 3 }),
            "scheduler",
            "invalid_type",
            "string",
        ),
        (
            json!({ "prompt": " " }),
            "prompt",
            "param_empty",
            "must not be empty",
        ),
        (
            json!({ "prompt": "x".repeat(2_001) }),
            "prompt",
            "param_too_long",
            "2000",
        ),
        (
            json!({ "prompt": ["a"] }),
            "prompt",
            "invalid_type",
            "a string",
        ),
        (
            json!({ "negative_prompt": "x".repeat(2_001) }),
            "negative_prompt",
            "param_too_long",
            "2000",
        ),
        (
            json!({ "response_format": "png" }),
            "response_format",
            "unsupported_value",
            "b64_json",
        ),
        (json!({ "user": 5 }), "user", "invalid_type", "a string"),
        (
            json!({ "quality": "hd" }),
            "quality",
            "unsupported_value",
            "auto or standard",
        ),
        (
            json!({ "style": "natural" }),
            "style",
            "unsupported_value",
            "vivid",
        ),
        (
            json!({ "background": "transparent" }),
            "background",
            "unsupported_value",
            "opaque",
        ),
        (
            json!({ "output_format": "webp" }),
            "output_format",
            "unsupported_value",
            "png",
        ),
        (
            json!({ "stream": true }),
            "stream",
            "unsupported_value",
            "whole",
        ),
        (
            json!({ "partial_images": 2 }),
            "partial_images",
            "unsupported_value",
            "whole",
        ),
        (
            json!({ "output_compression": 80 }),
            "output_compression",
            "unsupported_parameter",
            "PNGs",
        ),
        (
            json!({ "num_inference_steps": 20 }),
            "num_inference_steps",
            "unknown_parameter",
            "steps",
        ),
        (
            json!({ "cfg_scale": 7 }),
            "cfg_scale",
            "unknown_parameter",
            "guidance_scale",
        ),
        (json!({ "lora": 0.5 }), "lora", "invalid_type", "an object"),
        (
            json!({ "lora": {} }),
            "lora.scale",
            "missing_parameter",
            "0 to 2",
        ),
        (
            json!({ "lora": { "scale": "x" } }),
            "lora.scale",
            "invalid_type",
            "a number",
        ),
        (
            json!({ "lora": { "scale": 1, "name": "a" } }),
            "lora.name",
            "unknown_parameter",
            "only `scale`",
        ),
    ];
    for (extra, param, code, mentions) in cases {
        assert_refused(extra, param, code, mentions);
    }
}

#[test]
fn model_and_prompt_are_required_and_the_model_must_draw() {
    let (status, code, param, _) = refused(json!({ "prompt": "a cat" }));
    assert_eq!(
        (status, code, param.as_deref()),
        (400, "missing_parameter", Some("model"))
    );
    let (_, code, param, _) = refused(json!({ "model": "stable-diffusion-1.5" }));
    assert_eq!(
        (code, param.as_deref()),
        ("missing_parameter", Some("prompt"))
    );
    let (status, code, param, message) = refused(body("dall-e-3", json!({})));
    assert_eq!(
        (status, code, param.as_deref()),
        (404, "model_not_found", Some("model"))
    );
    assert!(message.contains("dall-e-3"), "{message}");
    let (status, code, param, message) = refused(body("tiny-llama", json!({})));
    assert_eq!(
        (status, code, param.as_deref()),
        (400, "model_not_image", Some("model"))
    );
    assert!(message.contains("llm model"), "{message}");
    let error = ImageGenerationRequest::parse(json!("draw a cat")).expect_err("not an object");
    assert_eq!(error.code(), "invalid_request");
}

#[test]
fn lora_strength_needs_a_model_with_a_lora() {
    let (status, code, param, message) =
        refused(body("sdxl-base-1.0", json!({ "lora": { "scale": 1 } })));
    assert_eq!(
        (status, code, param.as_deref()),
        (400, "param_not_supported", Some("lora"))
    );
    assert!(
        message.contains("has no LoRA") && message.contains("sdxl-base-1.0-offset-lora"),
        "{message}"
    );
    for bad in [-0.5, 2.5] {
        let (_, code, param, message) = refused(body(
            "sdxl-base-1.0-offset-lora",
            json!({ "lora": { "scale": bad } }),
        ));
        assert_eq!(
            (code, param.as_deref()),
            ("param_out_of_range", Some("lora.scale"))
        );
        assert!(message.starts_with("lora.scale "), "{message}");
        assert!(message.contains("0 to 2"), "{message}");
    }
    let plan = planned("sdxl-base-1.0-offset-lora", json!({ "lora": null }));
    assert_eq!(plan.first.lora_scale, None);
}
