//! Each parameter rule, checked against the built-in models.

use infermine_protocol::{
    ChatMessage, ImageParams, JobParams, LlmParams, ModelKind, SyntheticParams,
};

use crate::registry::{ModelSpec, ParamError, Registry};

fn model(id: &str) -> ModelSpec {
    Registry::builtin()
        .get(id)
        .cloned()
        .unwrap_or_else(|| panic!("`{id}` is built in"))
}

fn image(width: u32, height: u32, steps: u32) -> ImageParams {
    ImageParams {
        prompt: "a lighthouse at dawn".to_owned(),
        negative_prompt: String::new(),
        width,
        height,
        steps,
        guidance_scale: 7.5,
        seed: 1,
        scheduler: None,
        lora_scale: None,
    }
}

fn chat(content: &str) -> LlmParams {
    LlmParams {
        messages: vec![ChatMessage {
            role: "user".to_owned(),
            content: content.to_owned(),
        }],
        max_tokens: Some(256),
        temperature: 0.7,
        top_p: 0.9,
        top_k: 0,
        stop: Vec::new(),
        seed: 1,
    }
}

fn synthetic() -> SyntheticParams {
    SyntheticParams {
        output_bytes: 64,
        delay_ms: 0,
        stream_tokens: 0,
        seed: 0,
        fail: false,
    }
}

/// The error for `params` on model `id`, which must refuse them.
fn refused(id: &str, params: JobParams) -> ParamError {
    model(id)
        .validate_params(&params)
        .expect_err("these params are refused")
}

fn refused_image(id: &str, params: ImageParams) -> (String, &'static str) {
    let error = refused(id, JobParams::Image(params));
    (error.to_string(), error.code())
}

fn refused_llm(params: LlmParams) -> (String, &'static str) {
    let error = refused("dolphin-2.9-llama3-8b", JobParams::Llm(params));
    (error.to_string(), error.code())
}

#[test]
fn valid_params_pass() {
    let ok = |id: &str, params: JobParams| {
        model(id)
            .validate_params(&params)
            .unwrap_or_else(|e| panic!("{id}: {e}"));
    };
    ok(
        "stable-diffusion-1.5",
        JobParams::Image(image(512, 512, 20)),
    );
    ok(
        "stable-diffusion-1.5",
        JobParams::Image(image(1024, 512, 50)),
    );
    ok("sdxl-base-1.0", JobParams::Image(image(1536, 1024, 60)));
    let mut flux = image(1024, 1024, 28);
    flux.scheduler = Some("flow_euler".to_owned());
    flux.guidance_scale = 3.5;
    ok("flux.1-dev-nf4", JobParams::Image(flux));
    let mut llm = chat("hello");
    llm.max_tokens = None;
    llm.stop = vec!["</s>".to_owned(); 4];
    ok("dolphin-2.9-llama3-8b", JobParams::Llm(llm));
    ok("openhermes-mixtral-8x7b-gptq", JobParams::Llm(chat("hi")));
    ok("synthetic-echo", JobParams::Synthetic(synthetic()));
}

#[test]
fn image_sides_are_multiples_of_8_within_limits() {
    let (message, code) = refused_image("stable-diffusion-1.5", image(1004, 512, 20));
    assert_eq!(message, "width 1004 is not a multiple of 8");
    assert_eq!(code, "param_out_of_range");
    let (message, _) = refused_image("stable-diffusion-1.5", image(512, 36, 20));
    assert_eq!(message, "height 36 is below the minimum of 64");
    let (message, _) = refused_image("sdxl-base-1.0", image(2048, 512, 20));
    assert_eq!(message, "width 2048 is above this model's limit of 1536");
}

#[test]
fn flux_sides_are_multiples_of_16_and_it_takes_no_negative_prompt() {
    let flux = model("flux.1-dev-nf4");
    let ok = image(1024, 768, 28);
    assert!(flux.validate_params(&JobParams::Image(ok)).is_ok());
    let (message, code) = refused_image("flux.1-dev-nf4", image(1032, 1024, 28));
    assert!(message.contains("multiple of 16"), "{message}");
    assert_eq!(code, "param_out_of_range");
    let mut negative = image(1024, 1024, 28);
    negative.negative_prompt = "blurry".to_owned();
    let (message, code) = refused_image("flux.1-dev-nf4", negative.clone());
    assert!(message.contains("negative_prompt"), "{message}");
    assert_eq!(code, "param_not_supported");
    // SD models take both.
    negative.width = 1032;
    assert!(
        model("sdxl-base-1.0")
            .validate_params(&JobParams::Image(ImageParams {
                height: 1032,
                ..negative
            }))
            .is_ok()
    );
}

#[test]
fn image_pixels_are_capped() {
    let (message, code) = refused_image("stable-diffusion-1.5", image(1024, 1024, 20));
    assert_eq!(
        message,
        "width×height 1024×1024 (1048576 pixels) is above this model's limit of 589824 pixels"
    );
    assert_eq!(code, "param_out_of_range");
}

#[test]
fn image_steps_are_between_1_and_the_model_limit() {
    let (message, code) = refused_image("stable-diffusion-1.5", image(512, 512, 80));
    assert_eq!(message, "steps 80 is above this model's limit of 50");
    assert_eq!(code, "param_out_of_range");
    let (message, _) = refused_image("sdxl-base-1.0", image(1024, 1024, 0));
    assert_eq!(message, "steps 0 is below the minimum of 1");
}

#[test]
fn image_prompt_is_present_and_bounded() {
    let mut params = image(512, 512, 20);
    params.prompt = "   ".to_owned();
    let (message, code) = refused_image("stable-diffusion-1.5", params);
    assert_eq!(
        (message.as_str(), code),
        ("prompt must not be empty", "param_empty")
    );
    let mut params = image(512, 512, 20);
    params.prompt = "x".repeat(2_001);
    let (message, code) = refused_image("stable-diffusion-1.5", params);
    assert_eq!(
        message,
        "prompt has 2001 characters, above the limit of 2000"
    );
    assert_eq!(code, "param_too_long");
    let mut params = image(512, 512, 20);
    params.negative_prompt = "é".repeat(2_001);
    let (message, _) = refused_image("stable-diffusion-1.5", params);
    assert!(
        message.starts_with("negative_prompt has 2001 characters"),
        "{message}"
    );
}

#[test]
fn guidance_scale_is_finite_between_0_and_30() {
    for bad in [f32::NAN, f32::INFINITY, -0.5, 30.5] {
        let mut params = image(512, 512, 20);
        params.guidance_scale = bad;
        let (message, code) = refused_image("stable-diffusion-1.5", params);
        assert!(message.starts_with("guidance_scale "), "{message}");
        assert!(
            message.ends_with("is outside the allowed range 0 to 30"),
            "{message}"
        );
        assert_eq!(code, "param_out_of_range");
    }
}

#[test]
fn schedulers_depend_on_the_family() {
    let with = |name: &str| {
        let mut params = image(1024, 1024, 20);
        params.scheduler = Some(name.to_owned());
        params
    };
    for name in ["euler", "euler_a", "dpmpp_2m_karras", "ddim"] {
        let params = JobParams::Image(with(name));
        assert_eq!(
            model("sdxl-base-1.0").validate_params(&params),
            Ok(()),
            "{name}"
        );
    }
    let (message, code) = refused_image("sdxl-base-1.0", with("flow_euler"));
    assert_eq!(
        message,
        "scheduler `flow_euler` is not supported; use one of: euler, euler_a, dpmpp_2m_karras, ddim"
    );
    assert_eq!(code, "param_not_supported");
    let (message, _) = refused_image("flux.1-dev-nf4", with("euler"));
    assert_eq!(
        message,
        "scheduler `euler` is not supported; use one of: flow_euler"
    );
}

#[test]
fn lora_scale_needs_a_lora_model_and_is_between_0_and_2() {
    let with = |scale: f32| {
        let mut params = image(1024, 1024, 20);
        params.lora_scale = Some(scale);
        params
    };
    for scale in [0.0, 0.8, 2.0] {
        let params = JobParams::Image(with(scale));
        assert_eq!(
            model("sdxl-base-1.0-offset-lora").validate_params(&params),
            Ok(()),
            "{scale}"
        );
    }
    for bad in [-0.1, 2.5, f32::NAN] {
        let error = refused("sdxl-base-1.0-offset-lora", JobParams::Image(with(bad)));
        assert_eq!(error.field(), Some("lora_scale"));
        assert!(
            error
                .to_string()
                .ends_with("is outside the allowed range 0 to 2"),
            "{error}"
        );
    }
    let error = refused("sdxl-base-1.0", JobParams::Image(with(1.0)));
    assert_eq!(error.code(), "param_not_supported");
    assert_eq!(error.field(), Some("lora_scale"));
    assert!(
        error
            .to_string()
            .starts_with("lora_scale does not apply to model `sdxl-base-1.0`: it has no LoRA"),
        "{error}"
    );
}

#[test]
fn llm_messages_are_present_with_known_roles() {
    let mut params = chat("hi");
    params.messages.clear();
    assert_eq!(
        refused_llm(params),
        ("messages must not be empty".to_owned(), "param_empty")
    );
    let mut params = chat("hi");
    params.messages.push(ChatMessage {
        role: "tool".to_owned(),
        content: "{}".to_owned(),
    });
    let (message, code) = refused_llm(params);
    assert_eq!(
        message,
        "messages[1].role `tool` is not supported; use one of: system, user, assistant"
    );
    assert_eq!(code, "param_not_supported");
}

#[test]
fn llm_prompt_characters_are_bounded_in_total() {
    let mut params = chat(&"a".repeat(20_000));
    params.messages.push(ChatMessage {
        role: "assistant".to_owned(),
        content: "b".repeat(12_001),
    });
    let (message, code) = refused_llm(params);
    assert_eq!(
        message,
        "messages has 32001 characters in total, above the limit of 32000"
    );
    assert_eq!(code, "param_too_long");
}

#[test]
fn llm_max_tokens_is_between_1_and_the_model_limit() {
    let mut params = chat("hi");
    params.max_tokens = Some(9_000);
    let (message, code) = refused_llm(params);
    assert_eq!(
        message,
        "max_tokens 9000 is above this model's limit of 4096"
    );
    assert_eq!(code, "param_out_of_range");
    let mut params = chat("hi");
    params.max_tokens = Some(0);
    assert_eq!(
        refused_llm(params).0,
        "max_tokens 0 is below the minimum of 1"
    );
}

#[test]
fn llm_sampling_settings_are_in_range() {
    for bad in [f32::NAN, -0.1, 2.5] {
        let mut params = chat("hi");
        params.temperature = bad;
        let (message, code) = refused_llm(params);
        assert!(
            message.ends_with("is outside the allowed range 0 to 2"),
            "{message}"
        );
        assert_eq!(code, "param_out_of_range");
    }
    for bad in [0.0, -1.0, 1.5, f32::NAN] {
        let mut params = chat("hi");
        params.top_p = bad;
        let (message, _) = refused_llm(params);
        assert!(message.starts_with("top_p "), "{message}");
        assert!(
            message.ends_with("outside the allowed range above 0, up to 1"),
            "{message}"
        );
    }
}

#[test]
fn llm_stop_strings_are_at_most_4_and_not_empty() {
    let mut params = chat("hi");
    params.stop = vec!["x".to_owned(); 5];
    let (message, code) = refused_llm(params);
    assert_eq!(message, "stop has 5 strings, above the limit of 4");
    assert_eq!(code, "param_too_long");
    let mut params = chat("hi");
    params.stop = vec!["x".to_owned(), String::new()];
    assert_eq!(refused_llm(params).0, "stop[1] must not be empty");
}

#[test]
fn synthetic_output_delay_and_tokens_are_bounded() {
    let refused_synthetic = |params: SyntheticParams| {
        refused("synthetic-echo", JobParams::Synthetic(params)).to_string()
    };
    let mut params = synthetic();
    params.output_bytes = 1_048_577;
    assert_eq!(
        refused_synthetic(params),
        "output_bytes 1048577 is above this model's limit of 1048576"
    );
    let mut params = synthetic();
    params.delay_ms = 60_001;
    assert_eq!(
        refused_synthetic(params),
        "delay_ms 60001 is above this model's limit of 60000"
    );
    let mut params = synthetic();
    params.stream_tokens = 5_000;
    assert!(refused_synthetic(params).starts_with("stream_tokens 5000 is above"));
}

#[test]
fn params_of_another_kind_are_refused() {
    let error = refused(
        "dolphin-2.9-llama3-8b",
        JobParams::Image(image(512, 512, 20)),
    );
    assert_eq!(error.code(), "wrong_param_kind");
    assert_eq!(
        error.to_string(),
        "model `dolphin-2.9-llama3-8b` takes llm params, not image params"
    );
    assert_eq!(
        error,
        ParamError::WrongKind {
            model: "dolphin-2.9-llama3-8b".to_owned(),
            expected: ModelKind::Llm,
            got: ModelKind::Image,
        }
    );
    let error = refused("synthetic-echo", JobParams::Llm(chat("hi")));
    assert_eq!(error.code(), "wrong_param_kind");
    assert_eq!(error.field(), None);
}

#[test]
fn errors_name_their_field() {
    let error = refused(
        "stable-diffusion-1.5",
        JobParams::Image(image(512, 512, 99)),
    );
    assert_eq!(error.field(), Some("steps"));
    let mut params = chat("hi");
    params.messages[0].role = "robot".to_owned();
    let error = refused("dolphin-2.9-llama3-8b", JobParams::Llm(params));
    assert_eq!(error.field(), Some("messages[0].role"));
}
