//! The API's error: an HTTP status, a stable snake_case code and a message a caller can act
//! on, answered in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, on every
//! route, so OpenAI clients read them (the native routes answer the same shape). Internal
//! failures are logged with their detail and answered as a bare 500.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but this credential may not use the route.
    #[error("{0}")]
    Forbidden(String),
    #[error("model `{0}` does not exist; GET /v1/models lists the available models")]
    ModelNotFound(String),
    /// A well-formed body whose params do not fit the model (422, the native jobs API).
    #[error("{message}")]
    InvalidParams {
        code: &'static str,
        message: String,
        /// The parameter at fault, e.g. `params.steps`.
        param: Option<String>,
    },
    #[error("{0}")]
    InvalidRequest(String),
    /// A request parameter refused with 400, as the OpenAI-compatible routes answer.
    #[error("{message}")]
    BadParam {
        code: &'static str,
        message: String,
        /// The parameter at fault, e.g. `messages[1].content` or `n`.
        param: Option<String>,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than this server accepts (its max_body_bytes setting)")]
    PayloadTooLarge,
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The job ran and failed on the agents (502: the upstream of this API failed).
    #[error("{0}")]
    JobFailed(String),
    /// No agent took the job in time (503: try again later).
    #[error("{0}")]
    Unavailable(String),
    /// An agent took the job but no result came in time (504).
    #[error("{0}")]
    Timeout(String),
    /// The coordinator is shutting down and stops waiting (503: retry against another
    /// replica, or once it is back).
    #[error("{0}")]
    ShuttingDown(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::ModelNotFound(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::InvalidParams { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::InvalidRequest(_) | Self::BadParam { .. } => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::JobFailed(_) => StatusCode::BAD_GATEWAY,
            Self::Unavailable(_) | Self::ShuttingDown(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::ModelNotFound(_) => "model_not_found",
            Self::InvalidParams { code, .. } | Self::BadParam { code, .. } => code,
            Self::InvalidRequest(_) => "invalid_request",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::JobFailed(_) => "job_failed",
            Self::Unavailable(_) => "no_agent_available",
            Self::Timeout(_) => "job_timeout",
            Self::ShuttingDown(_) => "shutting_down",
            Self::Internal(_) => "internal",
        }
    }

    /// The OpenAI error type: the broad class a client branches on.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "authentication_error",
            Self::Forbidden(_) => "permission_error",
            Self::ModelNotFound(_) | Self::NotFound(_) => "not_found_error",
            Self::InvalidParams { .. }
            | Self::InvalidRequest(_)
            | Self::BadParam { .. }
            | Self::Conflict(_)
            | Self::PayloadTooLarge
            | Self::UnsupportedMediaType(_) => "invalid_request_error",
            Self::JobFailed(_)
            | Self::Unavailable(_)
            | Self::Timeout(_)
            | Self::ShuttingDown(_)
            | Self::Internal(_) => "server_error",
        }
    }

    /// The request parameter at fault, when one is.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::ModelNotFound(_) => Some("model"),
            Self::InvalidParams { param, .. } | Self::BadParam { param, .. } => param.as_deref(),
            _ => None,
        }
    }

    /// The body this error answers with.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind: self.error_type(),
                param: self.param().map(str::to_owned),
                code: self.code(),
            },
        }
    }
}

impl From<DbError> for ApiError {
    fn from(err: DbError) -> Self {
        Self::Internal(err.to_string())
    }
}

/// What every failed request answers: `{"error": {"message", "type", "param", "code"}}`,
/// OpenAI's error shape.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// For people: what was wrong and how to fix it.
    pub message: String,
    /// The class of error, as OpenAI names them: `invalid_request_error`,
    /// `authentication_error`, `permission_error`, `not_found_error`, `rate_limit_error`,
    /// `server_error`.
    #[serde(rename = "type")]
    #[schema(example = "invalid_request_error")]
    pub kind: &'static str,
    /// The request parameter at fault (e.g. `model`, `messages[0].content`,
    /// `params.steps`), or null.
    #[schema(required = true)]
    pub param: Option<String>,
    /// Stable and snake_case, for programs: `unauthorized`, `forbidden`, `not_found`,
    /// `model_not_found`, `invalid_request`, `invalid_params` (or a more precise code for a
    /// rejected parameter, such as `param_out_of_range`, `unsupported_parameter` or
    /// `invalid_address`), `conflict`, `payload_too_large`, `unsupported_media_type`,
    /// `rate_limited`, `job_failed`, `no_agent_available`, `job_timeout`, `shutting_down`,
    /// `internal`.
    #[schema(example = "invalid_request")]
    pub code: &'static str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "request failed");
        }
        (self.status(), axum::Json(self.body())).into_response()
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::InvalidRequest(format!("invalid query string: {}", rejection.body_text()))
    }
}

/// `axum::extract::Query` whose rejections answer in the API's error shape (JSON, naming
/// the parameter), not axum's plain text.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType(
                "send the body as JSON with `Content-Type: application/json`".to_owned(),
            ),
            JsonRejection::BytesRejection(inner)
                if inner.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Self::PayloadTooLarge
            }
            other => Self::InvalidRequest(format!("invalid JSON body: {}", other.body_text())),
        }
    }
}

/// `axum::Json` whose rejections answer in the API's error shape, and which refuses a NUL
/// character (U+0000) anywhere in the body's strings, naming where: PostgreSQL cannot store
/// one in text, so it is refused (on either database) before anything is stored.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<Value>::from_request(request, state).await?;
        if let Some(path) = nul_at(&value, String::new()) {
            let at = if path.is_empty() {
                "the body".to_owned()
            } else {
                format!("`{path}`")
            };
            return Err(ApiError::BadParam {
                code: "invalid_character",
                message: format!("{at} contains a NUL character (\\u0000), which no text may"),
                param: (!path.is_empty()).then_some(path),
            });
        }
        serde_json::from_value(value).map(Self).map_err(|e| {
            ApiError::InvalidRequest(format!(
                "invalid JSON body: Failed to deserialize the JSON body into the target type: {e}"
            ))
        })
    }
}

/// Where the first NUL character in `value`'s strings (object keys included) is, as a path
/// such as `messages[0].content`; `None` when there is none.
fn nul_at(value: &Value, path: String) -> Option<String> {
    match value {
        Value::String(text) => text.contains('\0').then_some(path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_at(item, format!("{path}[{i}]"))),
        Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            let inner = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            if key.contains('\0') {
                Some(inner)
            } else {
                nul_at(item, inner)
            }
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{ApiError, nul_at};

    #[test]
    fn nul_characters_are_found_and_located() {
        let body = serde_json::json!({
            "model": "m",
            "messages": [{ "role": "user", "content": "ok" }, { "content": "a\u{0}b" }],
        });
        assert_eq!(
            nul_at(&body, String::new()).as_deref(),
            Some("messages[1].content")
        );
        assert_eq!(
            nul_at(&serde_json::json!({ "k\u{0}": 1 }), String::new()).as_deref(),
            Some("k\u{0}")
        );
        assert_eq!(
            nul_at(&serde_json::json!("\u{0}"), String::new()).as_deref(),
            Some("")
        );
        let clean = serde_json::json!({ "a": ["'; DROP TABLE jobs; --", "\u{1F600}", 1, null] });
        assert_eq!(nul_at(&clean, String::new()), None);
    }

    #[test]
    fn errors_carry_openai_type_and_param() {
        let body =
            serde_json::to_value(ApiError::ModelNotFound("gpt-9".into()).body()).expect("json");
        assert_eq!(body["error"]["type"], "not_found_error");
        assert_eq!(body["error"]["param"], "model");
        assert_eq!(body["error"]["code"], "model_not_found");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("gpt-9"))
        );
        let body =
            serde_json::to_value(ApiError::Unauthorized("no key".into()).body()).expect("json");
        assert_eq!(body["error"]["type"], "authentication_error");
        assert!(
            body["error"]["param"].is_null(),
            "param is present, as null"
        );
    }
}
