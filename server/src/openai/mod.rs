//! The OpenAI-compatible surface of the consumer API: `POST /v1/chat/completions` ([`chat`],
//! streamed by [`stream`]) and the model list ([`models`], which also serves the file
//! manifests agents verify against). Chat completions are LLM jobs: they go through the same
//! lifecycle as `POST /v1/jobs` ([`crate::jobs`]), so they are stored, reviewed and credited
//! like any other job.
//!
//! Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, as every
//! route of this API does ([`crate::error`]).

pub mod chat;
mod fields;
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

/// The 503 for a job of `model` that no agent took within `waited` seconds: none serving the
/// model is connected, or all of them stayed busy.
pub(crate) async fn unavailable(
    dispatcher: &crate::dispatch::Dispatcher,
    model: &str,
    waited: u64,
) -> crate::error::ApiError {
    let message = match dispatcher.serving(model).await {
        0 => format!("no agent serving model `{model}` is connected; try again later"),
        slots => format!(
            "every agent slot serving model `{model}` ({slots}) stayed busy for {waited} s; try \
             again later"
        ),
    };
    crate::error::ApiError::Unavailable(message)
}
