//! `GET /api/v1/workers`: the `cauce worker` processes the store has heard from lately,
//! with their last heartbeat, queues, slots and the attempts they hold.

use super::{json, ApiError, AppState, Viewer};
use crate::store::{now_ms, WorkerRecord};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

/// Workers not heard of for this long are left out.
const RECENT_MS: i64 = 10 * 60 * 1000;

/// A worker and what it is doing.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerStatus {
    /// `up`, `draining`, `lost` (no heartbeat for longer than a lease) or `stopped`.
    pub state: String,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: i64,
    /// What the store keeps of it.
    #[serde(flatten)]
    pub worker: WorkerRecord,
}

/// Workers heard of in the last ten minutes, newest first.
#[utoipa::path(get, path = "/api/v1/workers", tag = "workers", security(("bearer" = [])),
    responses((status = 200, body = Vec<WorkerStatus>)))]
pub async fn list(State(state): State<AppState>, _: Viewer) -> Result<Response, ApiError> {
    let svc = state.services();
    let now = now_ms();
    let lease = svc.project.settings.lease;
    let out: Vec<WorkerStatus> = svc
        .store
        .workers(now - RECENT_MS)
        .await?
        .into_iter()
        .map(|w| WorkerStatus {
            state: w.state(lease, now).into(),
            heartbeat_age_ms: (now - w.heartbeat_at).max(0),
            worker: w,
        })
        .collect();
    Ok(json(&state, StatusCode::OK, &out))
}
