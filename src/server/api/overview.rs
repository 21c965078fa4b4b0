//! `GET /api/v1/overview`: what the dashboard's first page shows, in one answer: per
//! pipeline its schedule and next run, last run, success rates over 7 and 30 days, median
//! duration and the recent durations, data freshness against its SLA; and the runs in
//! progress. Built from a few narrow queries (no pipeline text is read from the store), so
//! it stays fast with a long history.

use super::pipelines::RunBrief;
use super::{json, ApiError, ApiQuery, AppState, Viewer};
use crate::state::RunState;
use crate::store::{RunQuery, RunSummary};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// Finished runs kept per pipeline for the median and the trend.
const RECENT: u32 = 20;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// One recent run's duration.
#[derive(Debug, Serialize, ToSchema)]
pub struct Duration {
    /// Run id.
    pub run_id: String,
    /// Its final state.
    pub state: RunState,
    /// Seconds from creation to end.
    pub seconds: f64,
    /// Created (ms since the epoch).
    pub created_at: i64,
}

/// A pipeline's line on the overview.
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineKpis {
    /// Name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Whether the file is valid.
    pub valid: bool,
    /// Why not.
    pub error: Option<String>,
    /// Cron expression.
    pub schedule: Option<String>,
    /// Its time zone.
    pub timezone: Option<String>,
    /// The next fire time (RFC 3339, in the schedule's time zone).
    pub next_run: Option<String>,
    /// The categories of its tasks.
    pub categories: Vec<String>,
    /// The newest run.
    pub last_run: Option<RunBrief>,
    /// Successful share of the runs created in the last 7 days that have ended.
    pub success_rate_7d: Option<f64>,
    /// The same over 30 days.
    pub success_rate_30d: Option<f64>,
    /// Ended runs created in the last 7 days.
    pub runs_7d: u64,
    /// Ended runs created in the last 30 days.
    pub runs_30d: u64,
    /// Median duration of the recent ended runs, seconds.
    pub median_duration_s: Option<f64>,
    /// The recent ended runs, oldest first (at most 20).
    pub durations: Vec<Duration>,
    /// End of the last successful run (ms since the epoch).
    pub last_success_at: Option<i64>,
    /// Seconds since then.
    pub freshness_s: Option<f64>,
    /// The pipeline's SLA, seconds.
    pub sla_seconds: Option<f64>,
    /// True when the last success is older than the SLA (or there is none and an SLA is set).
    pub stale: bool,
}

/// The overview.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    /// When it was computed (ms since the epoch).
    pub generated_at: i64,
    /// Pipelines, by name.
    pub pipelines: Vec<PipelineKpis>,
    /// Runs in progress, newest first (at most 200).
    pub running: Vec<RunSummary>,
}

/// Overview filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OverviewQuery {
    /// Only pipelines whose name contains this text.
    pub name: Option<String>,
    /// Only pipelines whose last run is in this state.
    pub state: Option<String>,
    /// Only pipelines with a task of this category.
    pub category: Option<String>,
}

/// KPIs of every pipeline and the runs in progress.
#[utoipa::path(get, path = "/api/v1/overview", tag = "pipelines", security(("bearer" = [])),
    params(OverviewQuery),
    responses((status = 200, body = Overview)))]
pub async fn overview(
    State(state): State<AppState>,
    _: Viewer,
    ApiQuery(q): ApiQuery<OverviewQuery>,
) -> Result<Response, ApiError> {
    let store = &state.services().store;
    let now = chrono::Utc::now().timestamp_millis();
    let counts: HashMap<String, crate::store::RunCounts> = store
        .run_counts(now - 7 * DAY_MS, now - 30 * DAY_MS)
        .await?
        .into_iter()
        .map(|c| (c.pipeline.clone(), c))
        .collect();
    // Pipelines filtered by what the catalogue knows, then their runs fetched a few at a
    // time in parallel (SQLite serves reads on several connections).
    let mut chosen = Vec::new();
    for e in state.runs.catalog().entries() {
        if q.name
            .as_ref()
            .is_some_and(|n| !e.name.contains(n.as_str()))
        {
            continue;
        }
        let mut categories: Vec<String> = e
            .pipeline
            .as_ref()
            .map(|p| {
                p.tasks
                    .values()
                    .filter_map(|t| t.category.clone())
                    .collect()
            })
            .unwrap_or_default();
        categories.sort();
        categories.dedup();
        if q.category.as_ref().is_some_and(|c| !categories.contains(c)) {
            continue;
        }
        chosen.push((e, categories));
    }
    let fetched: Vec<Result<_, crate::store::StoreError>> = futures_util::stream::iter(chosen)
        .map(|(e, categories)| {
            let store = Arc::clone(store);
            async move {
                let by_pipeline = |limit, ended, state| RunQuery {
                    pipeline: Some(e.name.clone()),
                    state,
                    ended,
                    limit,
                    ..Default::default()
                };
                let last = super::pipelines::last_run(store.as_ref(), &e.name).await?;
                let recent = store
                    .run_summaries(&by_pipeline(RECENT, true, None))
                    .await?;
                let last_ok = match recent.iter().find(|r| r.state == RunState::Success) {
                    Some(r) => r.ended_at,
                    None => store
                        .run_summaries(&by_pipeline(1, false, Some(RunState::Success)))
                        .await?
                        .first()
                        .and_then(|r| r.ended_at),
                };
                Ok((e, categories, last, recent, last_ok))
            }
        })
        .buffered(8)
        .collect()
        .await;
    let mut pipelines = Vec::new();
    for item in fetched {
        let (e, categories, last, recent, last_ok) = item?;
        let p = e.pipeline.as_ref().ok();
        let last = last.as_ref();
        if let Some(want) = &q.state {
            if last.map(|r| r.state.as_str()) != Some(want.as_str()) {
                continue;
            }
        }
        let mut durations: Vec<Duration> = recent
            .iter()
            .filter_map(|r| {
                r.ended_at.map(|end| Duration {
                    run_id: r.id.clone(),
                    state: r.state,
                    seconds: (end - r.created_at).max(0) as f64 / 1000.0,
                    created_at: r.created_at,
                })
            })
            .collect();
        durations.reverse();
        let mut secs: Vec<f64> = durations.iter().map(|d| d.seconds).collect();
        secs.sort_by(f64::total_cmp);
        let median = match secs.len() {
            0 => None,
            n if n % 2 == 1 => Some(secs[n / 2]),
            n => Some((secs[n / 2 - 1] + secs[n / 2]) / 2.0),
        };
        let c = counts.get(&e.name).cloned().unwrap_or_default();
        let rate = |ok: u64, all: u64| (all > 0).then(|| ok as f64 / all as f64);
        let sla = p.and_then(|p| p.sla).map(|d| d.as_secs_f64());
        let freshness = last_ok.map(|t| (now - t).max(0) as f64 / 1000.0);
        let stale = match (sla, freshness) {
            (Some(s), Some(f)) => f > s,
            (Some(_), None) => true,
            _ => false,
        };
        let next_run = p.and_then(|p| super::pipelines::upcoming(p, 1).into_iter().next());
        pipelines.push(PipelineKpis {
            name: e.name.clone(),
            description: p.and_then(|p| p.description.clone()),
            valid: p.is_some(),
            error: e.pipeline.as_ref().err().cloned(),
            schedule: p.and_then(|p| p.schedule.clone()),
            timezone: p.and_then(|p| p.timezone.clone()),
            next_run,
            categories,
            last_run: last.map(RunBrief::from),
            success_rate_7d: rate(c.success_a, c.ended_a),
            success_rate_30d: rate(c.success_b, c.ended_b),
            runs_7d: c.ended_a,
            runs_30d: c.ended_b,
            median_duration_s: median,
            durations,
            last_success_at: last_ok,
            freshness_s: freshness,
            sla_seconds: sla,
            stale,
        });
    }
    let running = store
        .run_summaries(&RunQuery {
            state: Some(RunState::Running),
            limit: 200,
            ..Default::default()
        })
        .await?;
    let body = Overview {
        generated_at: now,
        pipelines,
        running,
    };
    Ok(json(&state, StatusCode::OK, &body))
}
