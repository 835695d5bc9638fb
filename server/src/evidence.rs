//! A job's stored objects for admins: what the reviewer and the portal's case view show side
//! by side. Objects still waiting in the spool (S3 down) are served from there.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::jobs::store;
use crate::wallet::AdminSession;

/// One stored object of a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobObjectView {
    /// `input.json`, `output.json`, `output.png` or `meta.json`.
    pub name: String,
    /// Its key in the bucket.
    pub key: String,
    pub size_bytes: i64,
    /// Lowercase hex SHA-256 of the object.
    pub sha256: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobObjects {
    pub job: Uuid,
    pub objects: Vec<JobObjectView>,
}

fn job_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError::InvalidRequest(format!("`{id}` is not a job id (a UUID)")))
}

/// The objects stored for a completed job (admin).
#[utoipa::path(get, path = "/api/v1/admin/jobs/{id}/objects", tag = "admin",
    operation_id = "list_job_objects",
    params(("id" = Uuid, Path, description = "job id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "the job's stored objects", body = JobObjects),
        (status = 400, description = "not a job id", body = ErrorBody),
        (status = 401, description = "no valid admin token", body = ErrorBody),
        (status = 403, description = "a wallet session token, not an admin's", body = ErrorBody),
        (status = 404, description = "no objects for this job", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    _admin: AdminSession,
    Path(id): Path<String>,
) -> Result<axum::Json<JobObjects>, ApiError> {
    let job = job_id(&id)?;
    let rows = store::objects_of(&state.db, job).await?;
    if rows.is_empty() {
        return Err(ApiError::NotFound(format!(
            "job {job} has no stored objects (only completed jobs do)"
        )));
    }
    Ok(axum::Json(JobObjects {
        job,
        objects: rows
            .into_iter()
            .map(|(name, key, size_bytes, sha256)| JobObjectView {
                name,
                key,
                size_bytes,
                sha256,
            })
            .collect(),
    }))
}

/// One object's bytes (admin).
#[utoipa::path(get, path = "/api/v1/admin/jobs/{id}/objects/{name}", tag = "admin",
    operation_id = "get_job_object",
    params(("id" = Uuid, Path, description = "job id"),
        ("name" = String, Path, description = "object name, as the list gives it")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the object's bytes",
            content((Object = "application/json"), ("image/png"))),
        (status = 400, description = "not a job id", body = ErrorBody),
        (status = 401, description = "no valid admin token", body = ErrorBody),
        (status = 403, description = "a wallet session token, not an admin's", body = ErrorBody),
        (status = 404, description = "no such object", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    _admin: AdminSession,
    Path((id, name)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let job = job_id(&id)?;
    let rows = store::objects_of(&state.db, job).await?;
    let Some((_, key, _, _)) = rows.into_iter().find(|(n, ..)| *n == name) else {
        return Err(ApiError::NotFound(format!(
            "job {job} has no object `{name}`; GET /api/v1/admin/jobs/{job}/objects lists them"
        )));
    };
    let body = state
        .storage
        .get(&key)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| {
            ApiError::Internal(format!("object {key} is recorded but missing from storage"))
        })?;
    let content_type = if name.ends_with(".png") {
        "image/png"
    } else {
        "application/json"
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body))
}

/// The evidence routes.
pub fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get))
}
