//! The OpenAPI document of the HTTP API, served at `GET /openapi.json` with a browsable UI at
//! `/docs`, and committed as `openapi/openapi.json`.
//!
//! The document comes from the router that serves: [`crate::routes`] registers every handler
//! through `utoipa_axum::routes!`, which reads the handler's `#[utoipa::path]`, so no route is
//! served undescribed. This module adds what no handler knows: the info, the `bearer` security
//! scheme, the tags, and the answers that middleware and extractors give on the handlers' behalf
//! (429 from the rate limiter, 413 and 415 from the JSON body extractor, 500).
//!
//! A test fails when the committed file is stale; regenerate it with
//! `cargo run -p infermine-server -- openapi --out openapi/openapi.json` or
//! `INFERMINE_UPDATE_OPENAPI=1 cargo test -p infermine-server openapi`.

use axum::Router;
use infermine_protocol::{ImageParams, LlmParams, SyntheticParams};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, OpenApi as Document, Ref, RefOr, ResponseBuilder, Type,
};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::AppState;

/// Where the document is served.
pub const SPEC_PATH: &str = "/openapi.json";
/// Where the Swagger UI is served.
pub const DOCS_PATH: &str = "/docs";

const DESCRIPTION: &str = "\
The infermine coordinator: consumers ask for chat completions and images through an \
OpenAI-compatible API (`/v1/chat/completions`, `/v1/images/generations`, `/v1/models`) or submit \
inference jobs of any kind (`/v1/jobs`), \
miners' agents run them over a WebSocket (`/v1/agent/ws`), and the portal shows points and \
manages miner tokens (`/api/v1/…`).

Errors answer in OpenAI's shape, `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}` \
(`ErrorBody`): `code` is stable and snake_case, for programs; `type` is OpenAI's class of error; \
`param` names the request field at fault, or is null; `message` says what to fix, for people.

Amounts of points are given both as exact micro-points (1 point = 1,000,000) and as decimal \
points for display.";

/// The parts of the document that belong to no route.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "infermine coordinator API",
        version = env!("CARGO_PKG_VERSION"),
        description = DESCRIPTION,
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&BearerScheme),
    components(schemas(LlmParams, ImageParams, SyntheticParams)),
    tags(
        (name = "openai", description = "Consumers: OpenAI-compatible chat completions and image generation (API key)"),
        (name = "models", description = "The models served, and their files for agents: public"),
        (name = "jobs", description = "Consumers: jobs of any model kind (API key)"),
        (name = "agent", description = "Miners' agents: the WebSocket they work over"),
        (name = "wallet", description = "Wallet sign-in and miner tokens"),
        (name = "portal", description = "Points, ledgers, miners, leaderboard and rules: public"),
        (name = "admin", description = "Operators: slashes and suspensions (admin token)"),
        (name = "meta", description = "Health and dispatcher status"),
    )
)]
struct ApiDoc;

/// The `bearer` scheme every protected operation names.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, doc: &mut Document) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("API key or JWT")
            .description(Some(
                "`Authorization: Bearer <token>`, where the token depends on the route:\n\
                 - consumer API keys (`imk_…`, from `infermine-server api-key create`) for \
                 `/v1/chat/completions`, `/v1/images/generations` and `/v1/jobs`;\n\
                 - wallet session JWTs (from `POST /api/v1/auth/verify`, good for 24 hours) for \
                 `/api/v1/miner-tokens`;\n\
                 - admin JWTs (from `infermine-server admin-token`) for `/api/v1/admin/…`.\n\
                 A route refuses the other kinds: 401 for a key it cannot read, 403 for a valid \
                 token of the wrong role.",
            ))
            .build();
        doc.components
            .get_or_insert_default()
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The document's base: info, tags, security scheme, and schemas no route names directly.
pub(crate) fn base() -> Document {
    ApiDoc::openapi()
}

/// The router serving `routes` plus the document and the docs UI.
pub(crate) fn serve(routes: OpenApiRouter<AppState>) -> Router<AppState> {
    let (router, doc) = routes.split_for_parts();
    router.merge(SwaggerUi::new(DOCS_PATH).url(SPEC_PATH, finish(doc)))
}

/// The OpenAPI document of every route [`crate::app`] serves.
pub fn spec() -> Document {
    finish(crate::routes().into_openapi())
}

/// The document as committed: pretty JSON, keys in a stable order, a final newline.
pub fn to_json(doc: &Document) -> String {
    let mut json = doc
        .to_pretty_json()
        .expect("utoipa's document types always serialize to JSON");
    json.push('\n');
    json
}

/// Adds the answers that come from around the handlers, as shared `components.responses`.
fn finish(mut doc: Document) -> Document {
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        )
    };
    let rate_limited = ResponseBuilder::new()
        .description("`rate_limited`: too many requests from this address, key or wallet")
        .header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Some(utoipa::openapi::schema::Object::with_type(
                    Type::Integer,
                )))
                .description(Some("seconds to wait before trying again"))
                .build(),
        )
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build();
    let components = doc.components.get_or_insert_default();
    components
        .responses
        .insert("RateLimited".to_owned(), RefOr::T(rate_limited));
    components.responses.insert(
        "PayloadTooLarge".to_owned(),
        error("`payload_too_large`: the body exceeds the server's `max_body_bytes`"),
    );
    components.responses.insert(
        "UnsupportedMediaType".to_owned(),
        error("`unsupported_media_type`: the body is not sent as `application/json`"),
    );
    components.responses.insert(
        "Internal".to_owned(),
        error("`internal`: the server failed; the details are in its log"),
    );

    for (path, item) in &mut doc.paths.paths {
        let limited = !crate::limits::EXEMPT.contains(&path.as_str());
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            add_shared_responses(operation, limited);
        }
    }
    doc
}

fn add_shared_responses(operation: &mut Operation, limited: bool) {
    let answers_errors = operation.responses.responses.values().any(|r| {
        matches!(r, RefOr::T(r) if r.content.values().any(|c| matches!(c,
            RefOr::T(c) if matches!(&c.schema, Some(RefOr::Ref(s)) if s.ref_location.ends_with("/ErrorBody")))))
    });
    let mut shared = Vec::new();
    if operation.request_body.is_some() {
        shared.extend([("413", "PayloadTooLarge"), ("415", "UnsupportedMediaType")]);
    }
    if limited {
        shared.push(("429", "RateLimited"));
    }
    if answers_errors {
        shared.push(("500", "Internal"));
    }
    for (status, name) in shared {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use serde_json::Value;

    use super::{spec, to_json};

    fn committed_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json")
    }

    /// Guards `openapi/openapi.json` against drifting from the annotations.
    #[test]
    fn openapi_committed_file_matches_the_code() {
        let generated = to_json(&spec());
        let path = committed_path();
        if std::env::var_os("INFERMINE_UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("write openapi/openapi.json");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "openapi/openapi.json is stale (or missing): the API's annotations changed. \
             Regenerate it with `INFERMINE_UPDATE_OPENAPI=1 cargo test -p infermine-server \
             openapi` or `cargo run -p infermine-server -- openapi --out openapi/openapi.json`, \
             and commit it"
        );
    }

    fn refs(value: &Value, found: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match value {
                        Value::String(target) if key == "$ref" => {
                            found.insert(target.clone());
                        }
                        _ => refs(value, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }

    /// A schema named only from a parameter or a `schema_with` is not collected by utoipa;
    /// this catches a `$ref` to nothing.
    #[test]
    fn openapi_every_ref_resolves() {
        let doc = serde_json::to_value(spec()).expect("spec as JSON");
        let mut found = BTreeSet::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for target in found {
            let pointer = target.strip_prefix('#').expect("local reference");
            assert!(
                doc.pointer(pointer).is_some(),
                "{target} resolves to nothing"
            );
        }
    }

    #[test]
    fn openapi_operations_are_named_uniquely_and_secured_by_a_known_scheme() {
        let doc = serde_json::to_value(spec()).expect("spec as JSON");
        let mut ids = BTreeSet::new();
        let paths = doc["paths"].as_object().expect("paths");
        for (path, item) in paths {
            for (method, operation) in item.as_object().expect("path item") {
                let id = operation["operationId"].as_str().expect("operationId");
                assert!(
                    ids.insert(id.to_owned()),
                    "{method} {path}: operationId {id} twice"
                );
                for requirement in operation["security"].as_array().into_iter().flatten() {
                    for scheme in requirement.as_object().expect("requirement").keys() {
                        assert!(
                            doc["components"]["securitySchemes"][scheme].is_object(),
                            "{method} {path} names an undefined scheme {scheme}"
                        );
                    }
                }
            }
        }
    }
}
