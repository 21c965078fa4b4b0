//! Endpoints that read definitions: health, the caller, pipelines, tasks, workflows and
//! schedules.

use super::{json, ApiError, ApiPath, ApiQuery, AppState, Caller, Viewer};
use crate::schedule::Schedule;
use crate::server::catalog::Entry;
use crate::spec::{Param, Pipeline};
use crate::store::{RunQuery, RunSummary};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// How many upcoming fire times listings show.
const UPCOMING: usize = 5;

/// `/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
    /// cauce's version.
    pub version: &'static str,
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    /// False while the server shuts down.
    pub accepting_runs: bool,
    /// Whether this server is the one that schedules (holds the scheduler lease).
    pub scheduling: bool,
}

/// Whether the server is up (no token needed).
#[utoipa::path(get, path = "/api/v1/health", tag = "server",
    responses((status = 200, description = "The server is up", body = Health)))]
pub async fn health(State(state): State<AppState>) -> Response {
    let body = Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        store: state.services().store.backend(),
        accepting_runs: state.runs.accepting(),
        scheduling: state.leading.load(std::sync::atomic::Ordering::SeqCst),
    };
    json(&state, StatusCode::OK, &body)
}

/// The caller's token name and role.
#[utoipa::path(get, path = "/api/v1/me", tag = "server", security(("bearer" = [])),
    responses((status = 200, body = Caller), (status = 401, body = super::ErrorBody)))]
pub async fn me(State(state): State<AppState>, Viewer(caller): Viewer) -> Response {
    json(&state, StatusCode::OK, &caller)
}

/// The last run of a pipeline, in listings.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunBrief {
    /// Run id.
    pub id: String,
    /// State.
    pub state: crate::state::RunState,
    /// How it started.
    pub trigger: String,
    /// Logical date.
    pub logical_date: String,
    /// Created (ms since the epoch).
    pub created_at: i64,
    /// Ended (ms since the epoch).
    pub ended_at: Option<i64>,
}

impl From<&RunSummary> for RunBrief {
    fn from(r: &RunSummary) -> Self {
        RunBrief {
            id: r.id.clone(),
            state: r.state,
            trigger: r.trigger.clone(),
            logical_date: r.logical_date.clone(),
            created_at: r.created_at,
            ended_at: r.ended_at,
        }
    }
}

/// A pipeline in listings.
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineSummary {
    /// Name.
    pub name: String,
    /// File, relative to the project.
    pub file: String,
    /// Whether it parses and passes the checks.
    pub valid: bool,
    /// Why not, when it does not.
    pub error: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Cron expression.
    pub schedule: Option<String>,
    /// Time zone of the schedule.
    pub timezone: Option<String>,
    /// Whether missed intervals are run.
    pub catchup: bool,
    /// Limit of simultaneous runs.
    pub max_active_runs: Option<u32>,
    /// SLA in seconds.
    pub sla_seconds: Option<f64>,
    /// Next fire times (RFC 3339, in the schedule's time zone).
    pub next_runs: Vec<String>,
    /// Declared params.
    pub params: Vec<Param>,
    /// Number of tasks.
    pub tasks: usize,
    /// Workflow names.
    pub workflows: Vec<String>,
    /// Whether a webhook may trigger it.
    pub webhook: bool,
    /// The newest run.
    pub last_run: Option<RunBrief>,
}

fn summary(state: &AppState, e: &Entry, last: Option<&RunSummary>) -> PipelineSummary {
    let file = e
        .file
        .strip_prefix(&state.services().project.root)
        .unwrap_or(&e.file)
        .display()
        .to_string();
    let mut s = PipelineSummary {
        name: e.name.clone(),
        file,
        valid: e.pipeline.is_ok(),
        error: e.pipeline.as_ref().err().cloned(),
        description: None,
        schedule: None,
        timezone: None,
        catchup: false,
        max_active_runs: None,
        sla_seconds: None,
        next_runs: vec![],
        params: vec![],
        tasks: 0,
        workflows: vec![],
        webhook: false,
        last_run: last.map(RunBrief::from),
    };
    if let Ok(p) = &e.pipeline {
        s.description = p.description.clone();
        s.schedule = p.schedule.clone();
        s.timezone = p.timezone.clone();
        s.catchup = p.catchup;
        s.max_active_runs = p.max_active_runs;
        s.sla_seconds = p.sla.map(|d| d.as_secs_f64());
        s.next_runs = upcoming(p, UPCOMING);
        s.params = p.params.values().cloned().collect();
        s.tasks = p.tasks.len();
        s.workflows = p.workflows.keys().cloned().collect();
        s.webhook = p.webhook_token.is_some();
    }
    s
}

/// The newest run of a pipeline.
pub(super) async fn last_run(
    store: &dyn crate::store::Store,
    pipeline: &str,
) -> Result<Option<RunSummary>, crate::store::StoreError> {
    Ok(store
        .run_summaries(&RunQuery {
            pipeline: Some(pipeline.to_string()),
            limit: 1,
            ..Default::default()
        })
        .await?
        .into_iter()
        .next())
}

/// The next `n` fire times of a pipeline (RFC 3339, in its time zone); none if unscheduled.
pub(super) fn upcoming(p: &Pipeline, n: usize) -> Vec<String> {
    match Schedule::of(p) {
        Ok(Some(s)) => s
            .upcoming(Utc::now(), n)
            .iter()
            .map(|d| d.to_rfc3339())
            .collect(),
        _ => vec![],
    }
}

/// Filters of the pipeline list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PipelineFilter {
    /// Only pipelines whose name contains this text.
    pub name: Option<String>,
}

/// Every pipeline of the project, with its schedule and last run.
#[utoipa::path(get, path = "/api/v1/pipelines", tag = "pipelines", security(("bearer" = [])),
    params(PipelineFilter),
    responses((status = 200, body = Vec<PipelineSummary>), (status = 401, body = super::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    _: Viewer,
    ApiQuery(filter): ApiQuery<PipelineFilter>,
) -> Result<Response, ApiError> {
    let store = &state.services().store;
    let mut out = Vec::new();
    for e in state.runs.catalog().entries() {
        if filter
            .name
            .as_ref()
            .is_some_and(|n| !e.name.contains(n.as_str()))
        {
            continue;
        }
        let last = last_run(store.as_ref(), &e.name).await?;
        out.push(summary(&state, &e, last.as_ref()));
    }
    Ok(json(&state, StatusCode::OK, &out))
}

/// One task of a pipeline.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskInfo {
    /// Pipeline name.
    pub pipeline: String,
    /// Task id.
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// Kind (`run`, `python`, `http`, `sensor`, ...).
    pub kind: String,
    /// What it does, in one line.
    pub action: String,
    /// Free text.
    pub description: Option<String>,
    /// Upstream tasks.
    pub depends_on: Vec<String>,
    /// Trigger rule.
    pub trigger: String,
    /// Category.
    pub category: Option<String>,
    /// Whether its failure stops the run.
    pub critical: bool,
    /// Retries after a failure.
    pub retries: u32,
    /// Time limit of one attempt, seconds.
    pub timeout_seconds: Option<f64>,
    /// Its column when the DAG is drawn left to right (0: no upstream).
    pub layer: usize,
}

fn task_infos(p: &Pipeline) -> Vec<TaskInfo> {
    let all: indexmap::IndexSet<String> = p.tasks.keys().cloned().collect();
    let layer: std::collections::HashMap<String, usize> = crate::dag::layers(p, &all)
        .into_iter()
        .enumerate()
        .flat_map(|(i, ids)| ids.into_iter().map(move |id| (id, i)))
        .collect();
    p.tasks
        .values()
        .map(|t| TaskInfo {
            layer: layer.get(&t.id).copied().unwrap_or(0),
            pipeline: p.name.clone(),
            id: t.id.clone(),
            name: t.name.clone(),
            kind: t.kind.to_string(),
            action: t.action.describe(),
            description: t.description.clone(),
            depends_on: t.depends_on.clone(),
            trigger: t.trigger.as_str().to_string(),
            category: t.category.clone(),
            critical: t.critical,
            retries: t.retry.retries,
            timeout_seconds: t.timeout.map(|d| d.as_secs_f64()),
        })
        .collect()
}

/// A workflow (a named subset of a pipeline's tasks).
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowInfo {
    /// Pipeline name.
    pub pipeline: String,
    /// Workflow name.
    pub name: String,
    /// Display name.
    pub title: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Its tasks.
    pub tasks: Vec<String>,
}

fn workflow_infos(p: &Pipeline) -> Vec<WorkflowInfo> {
    p.workflows
        .iter()
        .map(|(name, w)| WorkflowInfo {
            pipeline: p.name.clone(),
            name: name.clone(),
            title: w.title.clone(),
            description: w.description.clone(),
            tasks: w.tasks.clone(),
        })
        .collect()
}

/// A pipeline with its tasks, workflows and file text.
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineDetail {
    /// The summary.
    #[serde(flatten)]
    pub summary: PipelineSummary,
    /// Its tasks, in file order.
    pub task_list: Vec<TaskInfo>,
    /// Its workflows.
    pub workflow_list: Vec<WorkflowInfo>,
    /// The pipeline file as written (`${VAR}` references, never their values).
    pub source: String,
}

/// One pipeline.
#[utoipa::path(get, path = "/api/v1/pipelines/{name}", tag = "pipelines", security(("bearer" = [])),
    params(("name" = String, Path, description = "Pipeline name")),
    responses((status = 200, body = PipelineDetail), (status = 404, body = super::ErrorBody)))]
pub async fn detail(
    State(state): State<AppState>,
    _: Viewer,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let Some(e) = state
        .runs
        .catalog()
        .entries()
        .into_iter()
        .find(|e| e.name == name)
    else {
        return Err(ApiError::not_found(format!("no pipeline `{name}`")));
    };
    let last = last_run(state.services().store.as_ref(), &name).await?;
    let source = std::fs::read_to_string(&e.file).unwrap_or_default();
    let (task_list, workflow_list) = match &e.pipeline {
        Ok(p) => (task_infos(p), workflow_infos(p)),
        Err(_) => (vec![], vec![]),
    };
    let body = PipelineDetail {
        summary: summary(&state, &e, last.as_ref()),
        task_list,
        workflow_list,
        source,
    };
    Ok(json(&state, StatusCode::OK, &body))
}

/// Filter by pipeline.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OfPipeline {
    /// Only this pipeline's.
    pub pipeline: Option<String>,
}

/// Every task of every valid pipeline (seed 001's `/tasks`).
#[utoipa::path(get, path = "/api/v1/tasks", tag = "pipelines", security(("bearer" = [])),
    params(OfPipeline),
    responses((status = 200, body = Vec<TaskInfo>)))]
pub async fn tasks(
    State(state): State<AppState>,
    _: Viewer,
    ApiQuery(q): ApiQuery<OfPipeline>,
) -> Response {
    let out: Vec<TaskInfo> = state
        .runs
        .catalog()
        .pipelines()
        .iter()
        .filter(|p| q.pipeline.as_ref().is_none_or(|n| *n == p.name))
        .flat_map(|p| task_infos(p))
        .collect();
    json(&state, StatusCode::OK, &out)
}

/// Every workflow of every valid pipeline (seed 001's `/workflows`).
#[utoipa::path(get, path = "/api/v1/workflows", tag = "pipelines", security(("bearer" = [])),
    params(OfPipeline),
    responses((status = 200, body = Vec<WorkflowInfo>)))]
pub async fn workflows(
    State(state): State<AppState>,
    _: Viewer,
    ApiQuery(q): ApiQuery<OfPipeline>,
) -> Response {
    let out: Vec<WorkflowInfo> = state
        .runs
        .catalog()
        .pipelines()
        .iter()
        .filter(|p| q.pipeline.as_ref().is_none_or(|n| *n == p.name))
        .flat_map(|p| workflow_infos(p))
        .collect();
    json(&state, StatusCode::OK, &out)
}

/// A pipeline's schedule.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleInfo {
    /// Pipeline name.
    pub pipeline: String,
    /// Cron expression.
    pub schedule: String,
    /// Time zone (`UTC` when not given).
    pub timezone: String,
    /// Whether missed intervals are run.
    pub catchup: bool,
    /// Limit of simultaneous runs.
    pub max_active_runs: Option<u32>,
    /// The last fire time handled (RFC 3339), if any.
    pub last_fire: Option<String>,
    /// The next fire times (RFC 3339, in the schedule's time zone).
    pub next: Vec<String>,
}

/// Every scheduled pipeline with its next fire times.
#[utoipa::path(get, path = "/api/v1/schedules", tag = "pipelines", security(("bearer" = [])),
    responses((status = 200, body = Vec<ScheduleInfo>)))]
pub async fn schedules(State(state): State<AppState>, _: Viewer) -> Result<Response, ApiError> {
    let marks = state.services().store.schedule_marks().await?;
    let out: Vec<ScheduleInfo> = state
        .runs
        .catalog()
        .pipelines()
        .iter()
        .filter_map(|p| {
            let s = Schedule::of(p).ok().flatten()?;
            Some(ScheduleInfo {
                pipeline: p.name.clone(),
                schedule: s.expr.clone(),
                timezone: s.tz.name().to_string(),
                catchup: s.catchup,
                max_active_runs: p.max_active_runs,
                last_fire: marks
                    .get(&p.name)
                    .and_then(|ms| DateTime::<Utc>::from_timestamp_millis(*ms))
                    .map(|d| d.with_timezone(&s.tz).to_rfc3339()),
                next: upcoming(p, UPCOMING),
            })
        })
        .collect();
    Ok(json(&state, StatusCode::OK, &out))
}
