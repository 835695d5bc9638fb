//! Operations: liveness (`/healthz`), readiness (`/readyz`: the database and object storage
//! answer, and the coordinator is not shutting down) and the dispatcher's counts
//! (`/v1/status`).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{AppState, storage};

/// How long a readiness probe waits for each dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Answers `ok` while the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "meta", operation_id = "healthz",
    responses((status = 200, description = "alive", body = String, content_type = "text/plain",
        example = "ok")))]
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /v1/status` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct CoordinatorStatus {
    /// Agents connected.
    pub agents: usize,
    /// Their slots: one per GPU.
    pub slots: usize,
    /// Jobs waiting for a slot.
    pub queued: usize,
    /// Jobs leased to agents now.
    pub leased: usize,
    /// True once shutdown began: no new assignments.
    pub draining: bool,
    /// This coordinator replica (a new id at every start). The counts above are its own.
    pub replica: uuid::Uuid,
    /// Replicas alive on the database, this one included (absent when the database does not
    /// answer).
    pub replicas: Option<usize>,
    pub storage: StorageStatus,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StorageStatus {
    /// The S3 endpoint objects go to.
    pub endpoint: String,
    /// Objects waiting to be uploaded.
    pub spool: storage::SpoolStats,
}

/// `GET /v1/status`: what the dispatcher holds right now.
#[utoipa::path(get, path = "/v1/status", tag = "meta", operation_id = "status",
    responses((status = 200, description = "the dispatcher's counts", body = CoordinatorStatus)))]
async fn status(State(state): State<AppState>) -> Json<CoordinatorStatus> {
    let snapshot = state.dispatcher.snapshot().await;
    let cluster = state.jobs.cluster();
    let replicas = match cluster.alive(&state.db).await {
        Ok(alive) => Some(alive.len()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot count the replicas");
            None
        }
    };
    Json(CoordinatorStatus {
        agents: snapshot.agents,
        slots: snapshot.slots,
        queued: snapshot.queued,
        leased: snapshot.leased,
        draining: *state.closing.borrow(),
        replica: cluster.id(),
        replicas,
        storage: StorageStatus {
            endpoint: state.storage.endpoint().to_owned(),
            spool: state.storage.spool(),
        },
    })
}

/// `GET /readyz` body: each dependency, `ok` or what went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub database: String,
    pub storage: String,
    /// True once shutdown began: a load balancer should send no more traffic.
    pub draining: bool,
}

/// Ready to take traffic: the database answers a query and object storage answers a `HEAD`
/// within 3 s each, and shutdown has not begun. 503 otherwise, naming what failed.
#[utoipa::path(get, path = "/readyz", tag = "meta", operation_id = "readyz",
    responses(
        (status = 200, description = "ready", body = Readiness),
        (status = 503, description = "a dependency is down, or the coordinator is draining",
            body = Readiness)))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let database = match tokio::time::timeout(PROBE_TIMEOUT, state.db.ping()).await {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
    };
    let probe = tokio::time::timeout(PROBE_TIMEOUT, state.storage.head("readyz-probe")).await;
    let storage = match probe {
        Ok(Ok(_)) => "ok".to_owned(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
    };
    let draining = *state.closing.borrow();
    let ready = database == "ok" && storage == "ok" && !draining;
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Readiness {
            ready,
            database,
            storage,
            draining,
        }),
    )
}

/// The operations routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(status))
}
