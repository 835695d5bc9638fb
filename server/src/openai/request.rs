//! The body of `POST /v1/chat/completions`, read field by field so that every refusal names
//! the parameter at fault (`param` in the error), as OpenAI's API does.
//!
//! Fields this API does not know are ignored, as OpenAI's are, so newer clients keep working;
//! but fields that would change the answer in a way infermine cannot honour (function calling,
//! JSON mode, log probabilities, several choices, penalties, audio) are refused with a 400
//! saying so, rather than silently answered as if they had not been sent.

use infermine_protocol::{ChatMessage, LlmParams};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};

use super::fields::{
    describe, field, missing, unsupported_parameter, unsupported_value, wrong_type,
};
use crate::error::ApiError;

/// `POST /v1/chat/completions`: OpenAI's chat completion request. Other OpenAI fields are
/// ignored, except those that would change the answer in ways not supported here (`tools`,
/// `functions`, `response_format` other than text, `logprobs: true`, `top_logprobs`,
/// `logit_bias`, non-zero `presence_penalty` or `frequency_penalty`, `audio`, non-text
/// `modalities`, `web_search_options`), which are refused with 400.
#[derive(Debug, Clone, PartialEq, ToSchema)]
pub struct ChatCompletionRequest {
    /// An `llm` model id from `GET /v1/models`.
    #[schema(example = "tiny-llama")]
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<RequestMessage>,
    /// 0 to 2; 1 when absent.
    pub temperature: Option<f32>,
    /// Above 0, up to 1; 1 when absent.
    pub top_p: Option<f32>,
    /// infermine extension: sample among the k likeliest tokens; 0 or absent turns it off.
    pub top_k: Option<u32>,
    /// Most tokens to generate; the model's limit when absent.
    pub max_tokens: Option<u32>,
    /// OpenAI's newer name for `max_tokens`.
    pub max_completion_tokens: Option<u32>,
    /// Up to 4 strings; generation stops before any of them.
    #[schema(schema_with = stop_schema, required = false)]
    pub stop: Vec<String>,
    /// Sampling seed: the same seed, request and device give the same text. A random one is
    /// drawn when absent.
    pub seed: Option<i64>,
    /// Answer as server-sent events (`chat.completion.chunk` objects, then `[DONE]`).
    #[schema(required = false, default = false)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// How many choices to generate; only 1 is supported.
    #[schema(minimum = 1, maximum = 1)]
    pub n: Option<u32>,
    /// Accepted and ignored.
    pub user: Option<String>,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, ToSchema)]
pub struct RequestMessage {
    /// `system`, `user` or `assistant` (`developer` is read as `system`).
    #[schema(example = "user")]
    pub role: String,
    /// A string, or an array of content parts of which only `text` parts are supported
    /// (their texts are joined with newlines).
    #[schema(schema_with = content_schema)]
    pub content: String,
}

/// Options of a streamed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
pub struct StreamOptions {
    /// Send one more chunk before `[DONE]`, with empty `choices` and the token `usage`.
    #[schema(required = false, default = false)]
    pub include_usage: bool,
}

fn stop_schema() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(
            ArrayBuilder::new()
                .items(ObjectBuilder::new().schema_type(Type::String))
                .max_items(Some(4)),
        )
        .description(Some("A string or up to 4 strings."))
        .into()
}

fn content_schema() -> RefOr<Schema> {
    let text_part = ObjectBuilder::new()
        .property(
            "type",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["text"])),
        )
        .property("text", ObjectBuilder::new().schema_type(Type::String))
        .required("type")
        .required("text");
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ArrayBuilder::new().items(text_part))
        .description(Some(
            "The text, or an array of `{\"type\": \"text\", \"text\": …}` parts. Image, audio \
             and file parts are refused: the models read text only.",
        ))
        .into()
}

impl ChatCompletionRequest {
    /// Reads a request body; the error names the parameter at fault.
    pub fn parse(body: Value) -> Result<Self, ApiError> {
        let Value::Object(map) = body else {
            return Err(ApiError::InvalidRequest(format!(
                "the body must be a JSON object with `model` and `messages`, not {}",
                describe(&body)
            )));
        };
        refuse_unsupported(&map)?;
        let model = field::<String>(&map, "model", "a model id string")?
            .ok_or_else(|| missing("model", "a model id from GET /v1/models"))?;
        let n = field::<u32>(&map, "n", "a positive integer")?;
        if let Some(n) = n
            && n != 1
        {
            let instead = if n > 1 {
                format!("; send {n} requests instead")
            } else {
                String::new()
            };
            return Err(unsupported_value(
                "n",
                format!("n = {n} is not supported: only one choice per request (n = 1){instead}"),
            ));
        }
        let stream_options = match map.get("stream_options") {
            None | Some(Value::Null) => None,
            Some(Value::Object(options)) => Some(StreamOptions {
                include_usage: field::<bool>(options, "include_usage", "true or false")
                    .map_err(|e| rename_param(e, "stream_options.include_usage"))?
                    .unwrap_or(false),
            }),
            Some(other) => return Err(wrong_type("stream_options", "an object", other)),
        };
        Ok(Self {
            model,
            messages: messages(&map)?,
            temperature: field(&map, "temperature", "a number")?,
            top_p: field(&map, "top_p", "a number")?,
            top_k: field(&map, "top_k", "an integer ≥ 0")?,
            max_tokens: field(&map, "max_tokens", "a positive integer")?,
            max_completion_tokens: field(&map, "max_completion_tokens", "a positive integer")?,
            stop: stop(&map)?,
            seed: seed(&map)?,
            stream: field(&map, "stream", "true or false")?.unwrap_or(false),
            stream_options,
            n,
            user: field(&map, "user", "a string")?,
        })
    }

    /// The name the request gave its token limit, for errors about it.
    pub fn max_tokens_param(&self) -> &'static str {
        if self.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        }
    }

    /// The job's params. `seed` is drawn at random when absent, so that, as with OpenAI, two
    /// identical requests do not give the same text, while the job keeps the seed it ran
    /// with (for review by re-execution).
    pub fn params(&self) -> Result<LlmParams, ApiError> {
        let max_tokens = match (self.max_tokens, self.max_completion_tokens) {
            (Some(a), Some(b)) if a != b => {
                return Err(ApiError::BadParam {
                    code: "conflicting_parameters",
                    message: format!(
                        "max_tokens ({a}) and max_completion_tokens ({b}) disagree; send one of them"
                    ),
                    param: Some("max_tokens".to_owned()),
                });
            }
            (a, b) => b.or(a),
        };
        Ok(LlmParams {
            messages: self
                .messages
                .iter()
                .map(|m| ChatMessage {
                    role: m.role.clone(),
                    content: m.content.clone(),
                })
                .collect(),
            max_tokens,
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0),
            stop: self.stop.clone(),
            seed: self.seed.map_or_else(rand::random, |seed| seed as u64),
        })
    }

    /// Whether the streamed answer ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options.is_some_and(|o| o.include_usage)
    }
}

fn messages(map: &Map<String, Value>) -> Result<Vec<RequestMessage>, ApiError> {
    let list = match map.get("messages") {
        None | Some(Value::Null) => {
            return Err(missing(
                "messages",
                "an array of {\"role\", \"content\"} objects",
            ));
        }
        Some(Value::Array(list)) => list,
        Some(other) => return Err(wrong_type("messages", "an array of messages", other)),
    };
    list.iter()
        .enumerate()
        .map(|(index, value)| message(index, value))
        .collect()
}

fn message(index: usize, value: &Value) -> Result<RequestMessage, ApiError> {
    let at = |name: &str| format!("messages[{index}].{name}");
    let Value::Object(map) = value else {
        return Err(wrong_type(
            &format!("messages[{index}]"),
            "an object with `role` and `content`",
            value,
        ));
    };
    let role = field::<String>(map, "role", "a string")
        .map_err(|e| rename_param(e, &at("role")))?
        .ok_or_else(|| missing(&at("role"), "system, user or assistant"))?;
    let role = match role.as_str() {
        "developer" => "system".to_owned(),
        "tool" | "function" => {
            return Err(unsupported_parameter(
                &at("role"),
                format!("`{role}` messages are not supported: infermine has no function calling"),
            ));
        }
        _ => role,
    };
    for calls in ["tool_calls", "function_call"] {
        if present(map.get(calls)) {
            return Err(unsupported_parameter(
                &at(calls),
                format!("`{calls}` is not supported: infermine has no function calling"),
            ));
        }
    }
    let content = match map.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => text_parts(index, parts)?,
        None | Some(Value::Null) => {
            return Err(missing(
                &at("content"),
                "a string or an array of text parts",
            ));
        }
        Some(other) => {
            return Err(wrong_type(
                &at("content"),
                "a string or an array of text parts",
                other,
            ));
        }
    };
    Ok(RequestMessage { role, content })
}

/// Joins the texts of a content-part array; any other kind of part is refused.
fn text_parts(index: usize, parts: &[Value]) -> Result<String, ApiError> {
    let mut texts = Vec::with_capacity(parts.len());
    for (part_index, part) in parts.iter().enumerate() {
        let param = format!("messages[{index}].content[{part_index}]");
        let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
        match (kind, part.get("text")) {
            ("text", Some(Value::String(text))) => texts.push(text.as_str()),
            ("text", _) => return Err(missing(&format!("{param}.text"), "a string")),
            ("image_url" | "input_image" | "image", _) => {
                return Err(ApiError::BadParam {
                    code: "unsupported_content",
                    message: format!(
                        "{param} is an image, but infermine's chat models read text only; send \
                         text content"
                    ),
                    param: Some(param),
                });
            }
            ("", _) => {
                return Err(missing(&format!("{param}.type"), "the part's type, `text`"));
            }
            (other, _) => {
                return Err(ApiError::BadParam {
                    code: "unsupported_content",
                    message: format!(
                        "{param} is a `{other}` part; only `text` parts are supported"
                    ),
                    param: Some(param),
                });
            }
        }
    }
    Ok(texts.join("\n"))
}

fn stop(map: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    match map.get("stop") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(one)) => Ok(vec![one.clone()]),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(index, value)| match value {
                Value::String(text) => Ok(text.clone()),
                other => Err(wrong_type(&format!("stop[{index}]"), "a string", other)),
            })
            .collect(),
        Some(other) => Err(wrong_type("stop", "a string or an array of strings", other)),
    }
}

/// Any integer that fits 64 bits, negative ones included (OpenAI's seed is signed; the
/// engines take its bits).
fn seed(map: &Map<String, Value>) -> Result<Option<i64>, ApiError> {
    match map.get("seed") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_i64().is_some() => Ok(n.as_i64()),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64().map(|s| s as i64)),
        Some(other) => Err(wrong_type("seed", "an integer", other)),
    }
}

/// Refuses the OpenAI fields whose meaning infermine cannot honour.
fn refuse_unsupported(map: &Map<String, Value>) -> Result<(), ApiError> {
    for name in ["tools", "functions"] {
        if present(map.get(name)) {
            return Err(unsupported_parameter(
                name,
                format!("`{name}` is not supported: infermine has no function calling; remove it"),
            ));
        }
    }
    for name in ["tool_choice", "function_call"] {
        match map.get(name) {
            None | Some(Value::Null) => {}
            Some(Value::String(mode)) if mode == "none" || mode == "auto" => {}
            Some(_) => {
                return Err(unsupported_parameter(
                    name,
                    format!("`{name}` is not supported: infermine has no function calling"),
                ));
            }
        }
    }
    if let Some(format) = map.get("response_format").filter(|v| !v.is_null()) {
        let kind = format.get("type").and_then(Value::as_str);
        if kind != Some("text") {
            return Err(unsupported_value(
                "response_format",
                format!(
                    "response_format `{}` is not supported: the models answer plain text only",
                    kind.unwrap_or("?")
                ),
            ));
        }
    }
    if map.get("logprobs").is_some_and(|v| v == &Value::Bool(true)) {
        return Err(unsupported_value(
            "logprobs",
            "logprobs is not supported: the agents do not report token probabilities".to_owned(),
        ));
    }
    if map
        .get("top_logprobs")
        .is_some_and(|v| !v.is_null() && v.as_u64() != Some(0))
    {
        return Err(unsupported_value(
            "top_logprobs",
            "top_logprobs is not supported: the agents do not report token probabilities"
                .to_owned(),
        ));
    }
    for name in ["presence_penalty", "frequency_penalty"] {
        if map
            .get(name)
            .is_some_and(|v| !v.is_null() && v.as_f64() != Some(0.0))
        {
            return Err(unsupported_value(
                name,
                format!("`{name}` is not supported (only 0); remove it"),
            ));
        }
    }
    for name in ["logit_bias", "audio", "web_search_options"] {
        if present(map.get(name)) {
            return Err(unsupported_parameter(
                name,
                format!("`{name}` is not supported; remove it"),
            ));
        }
    }
    if let Some(modalities) = map.get("modalities").filter(|v| !v.is_null())
        && modalities != &Value::Array(vec![Value::String("text".to_owned())])
    {
        return Err(unsupported_value(
            "modalities",
            "only the `text` modality is supported".to_owned(),
        ));
    }
    Ok(())
}

/// Whether a field says something: not absent, null, false, or an empty array or object.
fn present(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null | Value::Bool(false)) => false,
        Some(Value::Array(items)) => !items.is_empty(),
        Some(Value::Object(fields)) => !fields.is_empty(),
        Some(_) => true,
    }
}

/// The same error about a nested field, named in full.
fn rename_param(error: ApiError, param: &str) -> ApiError {
    match error {
        ApiError::BadParam { code, message, .. } => ApiError::BadParam {
            code,
            message: message.replacen(
                &format!("`{}`", param.rsplit('.').next().unwrap_or(param)),
                &format!("`{param}`"),
                1,
            ),
            param: Some(param.to_owned()),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests;
