//! Chat requests as OpenAI clients send them, and the refusals that name the parameter.

use serde_json::{Value, json};

use super::ChatCompletionRequest;
use crate::error::ApiError;

fn parse(body: Value) -> Result<ChatCompletionRequest, ApiError> {
    ChatCompletionRequest::parse(body)
}

/// The error's (code, param) and its message, for a body that must be refused.
fn refused(body: Value) -> (&'static str, Option<String>, String) {
    let error = parse(body.clone()).expect_err(&format!("refused: {body}"));
    assert_eq!(error.status(), 400, "{error}");
    (
        error.code(),
        error.param().map(str::to_owned),
        error.to_string(),
    )
}

fn chat(extra: Value) -> Value {
    let mut body =
        json!({ "model": "tiny-llama", "messages": [{ "role": "user", "content": "hi" }] });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    body
}

#[test]
fn a_full_openai_request_becomes_llm_params() {
    let request = parse(chat(json!({
        "messages": [
            { "role": "developer", "content": "be brief" },
            { "role": "user", "content": [
                { "type": "text", "text": "hello" },
                { "type": "text", "text": "there" }
            ], "name": "ann" },
            { "role": "assistant", "content": "hi", "refusal": null }
        ],
        "temperature": 0.5, "top_p": 0.9, "top_k": 40, "max_completion_tokens": 20,
        "stop": "\n\n", "seed": -1, "stream": true,
        "stream_options": { "include_usage": true }, "n": 1, "user": "u-1",
        "tool_choice": "none", "logprobs": false, "presence_penalty": 0,
        "response_format": { "type": "text" }, "store": false, "metadata": { "a": "b" },
        "some_future_field": [1, 2, 3]
    })))
    .expect("valid");
    assert!(request.stream && request.include_usage());
    assert_eq!(request.max_tokens_param(), "max_completion_tokens");
    let params = request.params().expect("params");
    let roles: Vec<&str> = params.messages.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant"]);
    assert_eq!(params.messages[1].content, "hello\nthere");
    assert_eq!(params.max_tokens, Some(20));
    assert_eq!(
        (params.temperature, params.top_p, params.top_k),
        (0.5, 0.9, 40)
    );
    assert_eq!(params.stop, ["\n\n"]);
    assert_eq!(params.seed, u64::MAX, "a negative seed keeps its bits");
}

#[test]
fn defaults_follow_openai_and_seeds_are_drawn() {
    let request = parse(chat(
        json!({ "max_tokens": 7, "stop": null, "temperature": null }),
    ))
    .expect("valid");
    assert!(!request.stream && !request.include_usage());
    let params = request.params().expect("params");
    assert_eq!(
        (params.temperature, params.top_p, params.top_k),
        (1.0, 1.0, 0)
    );
    assert_eq!(params.max_tokens, Some(7));
    assert!(params.stop.is_empty());
    let seeds: std::collections::HashSet<u64> = (0..4)
        .map(|_| request.params().expect("params").seed)
        .collect();
    assert!(seeds.len() > 1, "no seed: a random one each time");
}

#[test]
fn type_errors_name_the_parameter() {
    let cases = [
        (json!({ "messages": [] , "model": 3 }), "model"),
        (chat(json!({ "temperature": "hot" })), "temperature"),
        (chat(json!({ "max_tokens": -1 })), "max_tokens"),
        (chat(json!({ "max_tokens": 1.5 })), "max_tokens"),
        (chat(json!({ "stop": 3 })), "stop"),
        (chat(json!({ "stop": ["a", 1] })), "stop[1]"),
        (chat(json!({ "seed": "x" })), "seed"),
        (chat(json!({ "stream": "yes" })), "stream"),
        (
            chat(json!({ "stream_options": { "include_usage": 1 } })),
            "stream_options.include_usage",
        ),
        (chat(json!({ "messages": "hi" })), "messages"),
        (chat(json!({ "messages": ["hi"] })), "messages[0]"),
        (
            chat(json!({ "messages": [{ "role": 1, "content": "x" }] })),
            "messages[0].role",
        ),
        (
            chat(json!({ "messages": [{ "role": "user", "content": 5 }] })),
            "messages[0].content",
        ),
    ];
    for (body, param) in cases {
        let (code, got, message) = refused(body);
        assert_eq!(code, "invalid_type", "{message}");
        assert_eq!(got.as_deref(), Some(param), "{message}");
        assert!(message.contains(&format!("`{param}`")), "{message}");
    }
}

#[test]
fn missing_fields_are_named() {
    let (code, param, message) = refused(json!({ "model": "tiny-llama" }));
    assert_eq!(
        (code, param.as_deref()),
        ("missing_parameter", Some("messages"))
    );
    assert!(message.contains("messages"), "{message}");
    let (_, param, _) = refused(json!({ "messages": [] }));
    assert_eq!(param.as_deref(), Some("model"));
    let (_, param, _) = refused(chat(json!({ "messages": [{ "role": "user" }] })));
    assert_eq!(param.as_deref(), Some("messages[0].content"));
    let error = parse(json!([1, 2])).expect_err("not an object");
    assert_eq!(error.code(), "invalid_request");
}

#[test]
fn images_and_other_parts_are_refused_with_their_place() {
    let image = json!({ "messages": [{ "role": "user", "content": [
        { "type": "text", "text": "what is this?" },
        { "type": "image_url", "image_url": { "url": "https://example.org/cat.png" } }
    ] }] });
    let (code, param, message) = refused(chat(image));
    assert_eq!(code, "unsupported_content");
    assert_eq!(param.as_deref(), Some("messages[0].content[1]"));
    assert!(
        message.contains("image") && message.contains("text only"),
        "{message}"
    );
    let audio = json!({ "messages": [{ "role": "user", "content": [{ "type": "input_audio" }] }] });
    let (code, _, message) = refused(chat(audio));
    assert_eq!(code, "unsupported_content");
    assert!(message.contains("input_audio"), "{message}");
}

#[test]
fn semantics_we_cannot_honour_are_refused() {
    let cases = [
        (json!({ "n": 2 }), "n", "only one choice"),
        (
            json!({ "tools": [{ "type": "function" }] }),
            "tools",
            "function calling",
        ),
        (
            json!({ "functions": [{ "name": "f" }] }),
            "functions",
            "function calling",
        ),
        (
            json!({ "tool_choice": "required" }),
            "tool_choice",
            "function calling",
        ),
        (
            json!({ "response_format": { "type": "json_object" } }),
            "response_format",
            "json_object",
        ),
        (json!({ "logprobs": true }), "logprobs", "probabilities"),
        (
            json!({ "top_logprobs": 3 }),
            "top_logprobs",
            "probabilities",
        ),
        (
            json!({ "logit_bias": { "50256": -100 } }),
            "logit_bias",
            "not supported",
        ),
        (
            json!({ "presence_penalty": 0.5 }),
            "presence_penalty",
            "not supported",
        ),
        (
            json!({ "frequency_penalty": -1 }),
            "frequency_penalty",
            "not supported",
        ),
        (
            json!({ "modalities": ["text", "audio"] }),
            "modalities",
            "text",
        ),
        (
            json!({ "audio": { "voice": "alloy" } }),
            "audio",
            "not supported",
        ),
        (
            json!({ "messages": [{ "role": "tool", "content": "42" }] }),
            "messages[0].role",
            "function calling",
        ),
        (
            json!({ "messages": [{ "role": "assistant", "content": null, "tool_calls": [{}] }] }),
            "messages[0].tool_calls",
            "function calling",
        ),
    ];
    for (extra, param, mentions) in cases {
        let (code, got, message) = refused(chat(extra));
        assert!(code.starts_with("unsupported_"), "{code}: {message}");
        assert_eq!(got.as_deref(), Some(param), "{message}");
        assert!(message.contains(mentions), "{message}");
    }
    // Empty or neutral values say nothing and pass.
    for extra in [
        json!({ "tools": [] }),
        json!({ "n": 1 }),
        json!({ "logit_bias": {} }),
        json!({ "frequency_penalty": 0.0 }),
        json!({ "modalities": ["text"] }),
        json!({ "top_logprobs": 0 }),
    ] {
        parse(chat(extra.clone())).unwrap_or_else(|e| panic!("{extra}: {e}"));
    }
}

#[test]
fn max_tokens_and_its_alias_must_agree() {
    let request =
        parse(chat(json!({ "max_tokens": 5, "max_completion_tokens": 5 }))).expect("valid");
    assert_eq!(request.params().expect("same").max_tokens, Some(5));
    let request =
        parse(chat(json!({ "max_tokens": 5, "max_completion_tokens": 6 }))).expect("valid");
    let error = request.params().expect_err("disagree");
    assert_eq!(error.param(), Some("max_tokens"));
}
