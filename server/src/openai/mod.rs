//! The OpenAI-compatible surface of the consumer API: `POST /v1/chat/completions` ([`chat`],
//! streamed by [`stream`]) and the model list ([`models`], which also serves the file
//! manifests agents verify against). Chat completions are LLM jobs: they go through the same
//! lifecycle as `POST /v1/jobs` ([`crate::jobs`]), so they are stored, reviewed and credited
//! like any other job.
//!
//! Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, as every
//! route of this API does ([`crate::error`]).

pub mod chat;
pub mod images;
pub mod models;
pub mod request;
pub mod stream;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

/// The routes of this module, with their OpenAPI descriptions.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(models::list))
        .routes(routes!(models::get))
        .routes(routes!(models::files))
        .routes(routes!(chat::completions))
        .routes(routes!(images::generations))
        .routes(routes!(images::url::image))
}
