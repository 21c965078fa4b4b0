//! Endpoints about runs: trigger (by name, seed 001's `/execute`, or a pipeline's webhook),
//! list with filters and pages, detail with attempts, cancel, retry, reports.

use super::{json, ApiError, ApiJson, ApiPath, ApiQuery, AppState, Operator, Viewer};
use crate::engine::CancelOutcome;
use crate::server::runs::TriggerRequest;
use crate::state::RunState;
use crate::store::{AttemptRecord, RunQuery, RunRecord, TaskRunRecord};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::{IntoParams, ToSchema};

/// Largest page of runs.
const MAX_PAGE: u32 = 500;

/// What to run.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerBody {
    /// Param values (text, numbers or booleans), checked against the declared params.
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Logical date: `YYYY-MM-DD` or RFC 3339 (default: now).
    pub logical_date: Option<String>,
    /// Run only this workflow's tasks.
    pub workflow: Option<String>,
    /// Run only these tasks.
    pub tasks: Option<Vec<String>>,
    /// With `tasks` or `workflow`: also what they depend on.
    #[serde(default)]
    pub with_upstream: bool,
}

/// A run was started.
#[derive(Debug, Serialize, ToSchema)]
pub struct Triggered {
    /// The new run's id.
    pub run_id: String,
    /// Its pipeline.
    pub pipeline: String,
    /// Where to follow it.
    pub url: String,
}

fn param_text(
    params: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<(String, String)>, ApiError> {
    params
        .iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "param `{k}` must be text, a number or a boolean"
                    )))
                }
            };
            Ok((k.clone(), text))
        })
        .collect()
}

fn request(pipeline: String, body: TriggerBody, trigger: &str) -> Result<TriggerRequest, ApiError> {
    let logical_date = body
        .logical_date
        .as_deref()
        .map(crate::schedule::parse_logical_date)
        .transpose()
        .map_err(|m| ApiError::bad_request(format!("logical_date: {m}")))?;
    Ok(TriggerRequest {
        pipeline,
        params: param_text(&body.params)?,
        logical_date,
        workflow: body.workflow,
        tasks: body.tasks.unwrap_or_default(),
        with_upstream: body.with_upstream,
        trigger: trigger.into(),
    })
}

async fn start(state: &AppState, req: TriggerRequest) -> Result<Response, ApiError> {
    let pipeline = req.pipeline.clone();
    let run_id = state.runs.trigger(req).await?;
    let body = Triggered {
        url: format!("/api/v1/runs/{run_id}"),
        run_id,
        pipeline,
    };
    Ok(json(state, StatusCode::CREATED, &body))
}

/// Starts a run of a pipeline.
#[utoipa::path(post, path = "/api/v1/pipelines/{name}/runs", tag = "runs", security(("bearer" = [])),
    params(("name" = String, Path, description = "Pipeline name")),
    request_body = TriggerBody,
    responses(
        (status = 201, body = Triggered),
        (status = 400, description = "Bad params, tasks or workflow", body = super::ErrorBody),
        (status = 403, description = "Needs the operator role", body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "max_active_runs reached", body = super::ErrorBody)))]
pub async fn trigger(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<TriggerBody>,
) -> Result<Response, ApiError> {
    tracing::info!(pipeline = %name, caller = %caller.name, "run requested through the API");
    start(&state, request(name, body, "api")?).await
}

/// Seed 001's `/execute` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteBody {
    /// Pipeline name (may be left out when the project has one pipeline).
    pub pipeline: Option<String>,
    /// Run only this workflow's tasks.
    pub workflow: Option<String>,
    /// Run only these tasks (with what they depend on).
    pub tasks: Option<Vec<String>>,
    /// Param values.
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Accepted for compatibility: independent tasks always run in parallel.
    #[allow(dead_code)]
    pub parallel: Option<bool>,
    /// Logical date.
    pub logical_date: Option<String>,
}

/// Seed 001's `POST /execute`: run a workflow or tasks.
#[utoipa::path(post, path = "/api/v1/execute", tag = "runs", security(("bearer" = [])),
    request_body = ExecuteBody,
    responses((status = 201, body = Triggered), (status = 400, body = super::ErrorBody)))]
pub async fn execute(
    State(state): State<AppState>,
    _: Operator,
    ApiJson(body): ApiJson<ExecuteBody>,
) -> Result<Response, ApiError> {
    let pipeline = match body.pipeline {
        Some(p) => p,
        None => {
            let all = state.runs.catalog().entries();
            match all.as_slice() {
                [only] => only.name.clone(),
                _ => {
                    return Err(ApiError::bad_request(
                        "the project has several pipelines: give `pipeline`",
                    ))
                }
            }
        }
    };
    let with_upstream = body.tasks.is_some();
    let req = request(
        pipeline,
        TriggerBody {
            params: body.params,
            logical_date: body.logical_date,
            workflow: body.workflow,
            tasks: body.tasks,
            with_upstream,
        },
        "api",
    )?;
    start(&state, req).await
}

/// Webhook body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HookBody {
    /// Param values.
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Logical date.
    pub logical_date: Option<String>,
}

/// Token query of a webhook.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HookQuery {
    /// The pipeline's webhook token, for senders that cannot set headers.
    pub token: Option<String>,
}

/// Triggers a pipeline from a webhook. The pipeline's `webhook.token` goes in
/// `Authorization: Bearer`, `X-Cauce-Token` or `?token=`; API tokens are not accepted here.
#[utoipa::path(post, path = "/api/v1/hooks/{name}", tag = "runs",
    params(("name" = String, Path, description = "Pipeline name"), HookQuery),
    request_body(content = HookBody, description = "Optional"),
    responses((status = 201, body = Triggered), (status = 401, body = super::ErrorBody),
        (status = 404, description = "No such pipeline, or it has no webhook", body = super::ErrorBody)))]
pub async fn webhook(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<HookQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let no_hook = || ApiError::not_found(format!("no pipeline `{name}` with a webhook"));
    let pipeline = state.runs.pipeline(&name).map_err(|_| no_hook())?;
    let Some(raw) = &pipeline.webhook_token else {
        return Err(no_hook());
    };
    // A token whose `${VAR}` is not set disables the webhook (and says so in the log).
    let expected = state.services().templates.expand_env(raw).map_err(|e| {
        tracing::error!(pipeline = %name, error = %e, "webhook token cannot be read; the webhook is off");
        no_hook()
    })?;
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-cauce-token").and_then(|v| v.to_str().ok()))
        .map(str::to_string)
        .or(q.token)
        .unwrap_or_default();
    if expected.len() < 16 {
        tracing::error!(pipeline = %name, "webhook token is shorter than 16 characters; the webhook is off");
        return Err(no_hook());
    }
    if !bool::from(expected.as_bytes().ct_eq(given.trim().as_bytes())) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong webhook token",
        ));
    }
    let body: HookBody = if body.iter().all(u8::is_ascii_whitespace) {
        HookBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?
    };
    let req = request(
        name,
        TriggerBody {
            params: body.params,
            logical_date: body.logical_date,
            ..Default::default()
        },
        "webhook",
    )?;
    start(&state, req).await
}

/// Filters and page of the run list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Only this pipeline's runs.
    pub pipeline: Option<String>,
    /// Only runs in this state (`running`, `success`, `partial`, `failed`, `cancelled`).
    pub state: Option<String>,
    /// Only runs started this way (`api`, `schedule`, `webhook`, `manual`, `child`).
    pub trigger: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunsPage {
    /// Runs, newest first.
    pub runs: Vec<RunRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn page_query(q: RunsQuery) -> Result<RunQuery, ApiError> {
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(RunState::parse(s).ok_or_else(|| {
            ApiError::bad_request("state: use running, success, partial, failed or cancelled")
        })?),
    };
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit: between 1 and {MAX_PAGE}"
        )));
    }
    Ok(RunQuery {
        pipeline: q.pipeline,
        state,
        trigger: q.trigger,
        before: q.cursor,
        ended: false,
        limit,
    })
}

async fn page(state: &AppState, q: RunQuery) -> Result<RunsPage, ApiError> {
    let limit = q.limit as usize;
    let runs = state.services().store.runs_page(&q).await?;
    let next_cursor = if runs.len() == limit {
        runs.last().map(|r| r.id.clone())
    } else {
        None
    };
    Ok(RunsPage { runs, next_cursor })
}

/// Runs, newest first, filtered and paged (seed 001's `/executions`).
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs", security(("bearer" = [])),
    params(RunsQuery),
    responses((status = 200, body = RunsPage), (status = 400, body = super::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    _: Viewer,
    ApiQuery(q): ApiQuery<RunsQuery>,
) -> Result<Response, ApiError> {
    let body = page(&state, page_query(q)?).await?;
    Ok(json(&state, StatusCode::OK, &body))
}

/// A run with its tasks and every attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunDetail {
    /// The run.
    pub run: RunRecord,
    /// Its tasks in pipeline order.
    pub tasks: Vec<TaskRunRecord>,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptRecord>,
}

async fn get_run(state: &AppState, id: &str) -> Result<RunRecord, ApiError> {
    state
        .services()
        .store
        .get_run(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run `{id}`")))
}

/// One run with tasks and attempts.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = RunDetail), (status = 404, body = super::ErrorBody)))]
pub async fn detail(
    State(state): State<AppState>,
    _: Viewer,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let run = get_run(&state, &id).await?;
    let store = &state.services().store;
    let body = RunDetail {
        tasks: store.task_runs(&id).await?,
        attempts: store.attempts(&id).await?,
        run,
    };
    Ok(json(&state, StatusCode::OK, &body))
}

/// What a cancel or retry did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Action {
    /// The run.
    pub run_id: String,
    /// `cancel_requested`, `cancelled`, `retrying`.
    pub status: &'static str,
    /// For a retry: the tasks that run again.
    pub tasks: Vec<String>,
}

/// Cancels a run (also `DELETE /api/v1/runs/{id}`, seed 001's form). Running tasks' process
/// groups are stopped; the run ends `cancelled` within about a second.
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "runs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id")),
    responses((status = 202, body = Action), (status = 404, body = super::ErrorBody),
        (status = 409, description = "The run already ended", body = super::ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let status = match state.runs.engine().cancel(&id).await? {
        CancelOutcome::AlreadyEnded(s) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("run {id} already ended ({s})"),
            ))
        }
        CancelOutcome::Closed => "cancelled",
        CancelOutcome::Requested => "cancel_requested",
    };
    tracing::info!(run = %id, caller = %caller.name, "run cancel requested through the API");
    let body = Action {
        run_id: id,
        status,
        tasks: vec![],
    };
    Ok(json(&state, StatusCode::ACCEPTED, &body))
}

/// Seed 001's `DELETE /executions/{id}`: the same as `POST /api/v1/runs/{id}/cancel`.
#[utoipa::path(delete, path = "/api/v1/runs/{id}", tag = "runs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id")),
    responses((status = 202, body = Action), (status = 404, body = super::ErrorBody),
        (status = 409, description = "The run already ended", body = super::ErrorBody)))]
pub async fn delete(
    state: State<AppState>,
    caller: Operator,
    id: ApiPath<String>,
) -> Result<Response, ApiError> {
    cancel(state, caller, id).await
}

/// Runs again the tasks of a run that did not succeed.
#[utoipa::path(post, path = "/api/v1/runs/{id}/retry", tag = "runs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id")),
    responses((status = 202, body = Action), (status = 404, body = super::ErrorBody),
        (status = 409, description = "The run is still running", body = super::ErrorBody)))]
pub async fn retry(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let tasks = state.runs.retry(&id).await?;
    tracing::info!(run = %id, caller = %caller.name, tasks = tasks.len(), "run retried through the API");
    let body = Action {
        run_id: id,
        status: "retrying",
        tasks,
    };
    Ok(json(&state, StatusCode::ACCEPTED, &body))
}

/// Runs one task of an ended run again, and every task downstream of it.
#[utoipa::path(post, path = "/api/v1/runs/{id}/tasks/{task}/retry", tag = "runs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id"), ("task" = String, Path, description = "Task id")),
    responses((status = 202, body = Action), (status = 404, body = super::ErrorBody),
        (status = 409, description = "The run is still running, or has no such task", body = super::ErrorBody)))]
pub async fn retry_task(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiPath((id, task)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let tasks = state.runs.retry_task(&id, &task).await?;
    tracing::info!(run = %id, task = %task, caller = %caller.name, "task retried through the API");
    let body = Action {
        run_id: id,
        status: "retrying",
        tasks,
    };
    Ok(json(&state, StatusCode::ACCEPTED, &body))
}

/// The JSON report of a run (also `/api/v1/reports/{id}`): seed 001's fields plus attempts
/// and metrics.
#[utoipa::path(get, path = "/api/v1/runs/{id}/report", tag = "runs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = serde_json::Value), (status = 404, body = super::ErrorBody)))]
pub async fn report(
    State(state): State<AppState>,
    _: Viewer,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let report = crate::engine::report::build(state.services().store.as_ref(), &id).await?;
    Ok(json(&state, StatusCode::OK, &report))
}

/// A report in the list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportEntry {
    /// Run id.
    pub run_id: String,
    /// Pipeline.
    pub pipeline: String,
    /// Final state.
    pub state: RunState,
    /// End (ms since the epoch).
    pub ended_at: Option<i64>,
    /// Where to read it.
    pub url: String,
}

/// Reports of ended runs, newest first (seed 001's `/reports`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportsPage {
    /// Reports.
    pub reports: Vec<ReportEntry>,
    /// Cursor of the next page.
    pub next_cursor: Option<String>,
}

/// Reports of ended runs.
#[utoipa::path(get, path = "/api/v1/reports", tag = "runs", security(("bearer" = [])),
    params(RunsQuery),
    responses((status = 200, body = ReportsPage)))]
pub async fn reports(
    State(state): State<AppState>,
    _: Viewer,
    ApiQuery(q): ApiQuery<RunsQuery>,
) -> Result<Response, ApiError> {
    let p = page(&state, page_query(q)?).await?;
    let body = ReportsPage {
        reports: p
            .runs
            .into_iter()
            .filter(|r| r.state.is_final())
            .map(|r| ReportEntry {
                url: format!("/api/v1/runs/{}/report", r.id),
                run_id: r.id,
                pipeline: r.pipeline,
                state: r.state,
                ended_at: r.ended_at,
            })
            .collect(),
        next_cursor: p.next_cursor,
    };
    Ok(json(&state, StatusCode::OK, &body))
}
