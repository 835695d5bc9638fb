//! Helpers for checking answers in OpenAI's error shape, shared by the OpenAI-compatible
//! routes' tests.

use serde_json::Value;

/// The status and JSON body of a request's answer (`null` when the body is not JSON).
pub async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Checks an OpenAI-shaped error: status, `type`, `code`, `param` (always present, null when
/// no parameter is at fault), and words of the message.
pub fn assert_openai_error(
    got: &(u16, Value),
    status: u16,
    kind: &str,
    code: &str,
    param: Option<&str>,
    mentions: &str,
) {
    let (got_status, body) = got;
    assert_eq!(*got_status, status, "{body}");
    let error = &body["error"];
    assert_eq!(error["type"], kind, "{body}");
    assert_eq!(error["code"], code, "{body}");
    assert!(
        error.as_object().is_some_and(|e| e.contains_key("param")),
        "param is always present: {body}"
    );
    assert_eq!(
        error["param"],
        param.map_or(Value::Null, Value::from),
        "{body}"
    );
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "message should mention `{mentions}`: {message}"
    );
}
