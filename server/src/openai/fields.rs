//! Reading the fields of a JSON request body, with OpenAI-style errors that name the
//! parameter (`param`) and say what it must be.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// A field of the expected type, or `None` when absent or null.
pub(crate) fn field<T: DeserializeOwned>(
    map: &Map<String, Value>,
    name: &str,
    expected: &str,
) -> Result<Option<T>, ApiError> {
    field_at(map, name, name, expected)
}

/// [`field`] for a nested field, whose errors name it as `param`.
pub(crate) fn field_at<T: DeserializeOwned>(
    map: &Map<String, Value>,
    name: &str,
    param: &str,
    expected: &str,
) -> Result<Option<T>, ApiError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => T::deserialize(value)
            .map(Some)
            .map_err(|_| wrong_type(param, expected, value)),
    }
}

/// What a value is, for error messages.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(_) => "a string".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

pub(crate) fn wrong_type(param: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::BadParam {
        code: "invalid_type",
        message: format!("`{param}` must be {expected}, not {}", describe(got)),
        param: Some(param.to_owned()),
    }
}

pub(crate) fn missing(param: &str, expected: &str) -> ApiError {
    ApiError::BadParam {
        code: "missing_parameter",
        message: format!("`{param}` is required: {expected}"),
        param: Some(param.to_owned()),
    }
}

pub(crate) fn unsupported_parameter(param: &str, message: String) -> ApiError {
    ApiError::BadParam {
        code: "unsupported_parameter",
        message,
        param: Some(param.to_owned()),
    }
}

pub(crate) fn unsupported_value(param: &str, message: String) -> ApiError {
    ApiError::BadParam {
        code: "unsupported_value",
        message,
        param: Some(param.to_owned()),
    }
}
