//! The model registry as consumers and agents read it: `GET /v1/models` (OpenAI's model list,
//! with infermine's fields added), `GET /v1/models/{id}`, and `GET /v1/models/{id}/files`, the
//! file manifest agents verify their downloads against. All public: the registry is no secret.

use axum::Json;
use axum::extract::{Path, State};
use infermine_protocol::ModelKind;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::registry::ModelSpec;

/// The `created` time of every model (2025-01-01T00:00:00Z): OpenAI clients require one, and
/// the registry does not date its models.
const CREATED: i64 = 1_735_689_600;

/// `GET /v1/models`, shaped like OpenAI's model list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    #[schema(example = "list")]
    pub object: &'static str,
    pub data: Vec<ModelView>,
}

/// One model: OpenAI's fields (`id`, `object`, `created`, `owned_by`) and infermine's.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelView {
    #[schema(example = "tiny-llama")]
    pub id: String,
    /// Always `model`.
    #[schema(example = "model")]
    pub object: &'static str,
    /// Unix seconds; one fixed time for every model.
    pub created: i64,
    /// Always `infermine`.
    #[schema(example = "infermine")]
    pub owned_by: &'static str,
    /// `llm` models answer `POST /v1/chat/completions`; every kind runs through `POST /v1/jobs`.
    pub kind: ModelKind,
    pub display_name: String,
    pub points_multiplier: f64,
    pub discontinued: bool,
    /// Random weights for trying the network out (they answer gibberish); see the registry.
    pub demo: bool,
    pub min_vram_mb: u64,
    pub min_gpu: Vec<String>,
    pub target_latency_ms: u64,
    pub deadline_ms: u64,
}

impl ModelView {
    fn of(m: &ModelSpec) -> Self {
        Self {
            id: m.id.clone(),
            object: "model",
            created: CREATED,
            owned_by: "infermine",
            kind: m.kind,
            display_name: m.display_name.clone(),
            points_multiplier: m.points_multiplier,
            discontinued: m.discontinued,
            demo: m.demo,
            min_vram_mb: m.min_vram_mb,
            min_gpu: m.min_gpu.clone(),
            target_latency_ms: m.target_latency_ms,
            deadline_ms: m.deadline_ms,
        }
    }
}

/// The models this coordinator serves, with what a GPU needs to run each and what it earns.
#[utoipa::path(get, path = "/v1/models", tag = "models", operation_id = "list_models",
    responses((status = 200, description = "every model of the registry", body = ModelList)))]
pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: state.jobs.registry().models().map(ModelView::of).collect(),
    })
}

/// One model of the registry.
#[utoipa::path(get, path = "/v1/models/{id}", tag = "models", operation_id = "get_model",
    params(("id" = String, Path, description = "a model id from `GET /v1/models`")),
    responses(
        (status = 200, description = "the model", body = ModelView),
        (status = 404, description = "`model_not_found`: no such model", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelView>, ApiError> {
    let spec = state
        .jobs
        .registry()
        .get(&id)
        .ok_or(ApiError::ModelNotFound(id))?;
    Ok(Json(ModelView::of(spec)))
}

/// `GET /v1/models/{id}/files`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelFiles {
    pub model: String,
    pub files: Vec<FileView>,
}

/// One file of a model. A file whose `sha256` or `size_bytes` is null is not pinned yet, and
/// agents refuse to serve it.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileView {
    /// Path inside the model's folder.
    #[schema(example = "model.safetensors")]
    pub name: String,
    /// An https:// download, or `synth:<recipe>` for a demo model's file that the agent makes
    /// itself (`infermine-agent models synth`).
    pub url: String,
    pub size_bytes: Option<u64>,
    /// Lowercase hex SHA-256 of the whole file.
    pub sha256: Option<String>,
}

/// The files of a model, as agents download and verify them: name, source, size and SHA-256.
#[utoipa::path(get, path = "/v1/models/{id}/files", tag = "models", operation_id = "model_files",
    params(("id" = String, Path, description = "a model id from `GET /v1/models`")),
    responses(
        (status = 200, description = "the model's file manifest", body = ModelFiles),
        (status = 404, description = "`model_not_found`: no such model", body = ErrorBody)))]
pub async fn files(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelFiles>, ApiError> {
    let spec = state
        .jobs
        .registry()
        .get(&id)
        .ok_or(ApiError::ModelNotFound(id))?;
    Ok(Json(ModelFiles {
        model: spec.id.clone(),
        files: spec
            .files
            .iter()
            .map(|f| FileView {
                name: f.name.clone(),
                url: f.url.clone(),
                size_bytes: f.size_bytes,
                sha256: f.sha256.clone(),
            })
            .collect(),
    }))
}
