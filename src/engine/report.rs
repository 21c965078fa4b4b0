//! The JSON report of a run, built from the store: seed 001's fields (`execution_id`,
//! `start_time`, `end_time`, `total_duration`, `execution_order`, `results` with `status`,
//! times, `duration`, `output`, `error`) plus the pipeline, params, attempts and metrics.
//! Written to `.cauce/reports/RUN_ID.json` when a run ends and printed by `cauce report`.

use super::Services;
use crate::store::{format_ms, Store, StoreError};
use serde_json::{json, Map, Value};

/// Builds the report of a run.
pub async fn build(store: &dyn Store, run_id: &str) -> Result<Value, StoreError> {
    let run = store
        .get_run(run_id)
        .await?
        .ok_or_else(|| StoreError::NoSuchRun(run_id.to_string()))?;
    let tasks = store.task_runs(run_id).await?;
    let attempts = store.attempts(run_id).await?;
    let secs = |a: Option<i64>, b: Option<i64>| match (a, b) {
        (Some(a), Some(b)) => json!(((b - a) as f64) / 1000.0),
        _ => Value::Null,
    };
    let mut order: Vec<(i64, String)> = tasks
        .iter()
        .filter_map(|t| t.started_at.map(|s| (s, t.task_id.clone())))
        .collect();
    order.sort();
    // Attempts grouped by task once, so a run of many tasks is not read quadratically.
    let mut by_task: std::collections::HashMap<&str, Vec<&crate::store::AttemptRecord>> =
        std::collections::HashMap::new();
    for a in attempts
        .iter()
        .filter(|a| a.state != crate::state::AttemptState::Queued)
    {
        by_task.entry(a.task_id.as_str()).or_default().push(a);
    }
    let mut results = Map::new();
    for t in &tasks {
        let tries: Vec<Value> = by_task
            .get(t.task_id.as_str())
            .into_iter()
            .flatten()
            .map(|a| {
                json!({
                    "attempt": a.number,
                    "status": a.state,
                    "start_time": a.started_at.map(format_ms),
                    "end_time": a.ended_at.map(format_ms),
                    "duration": secs(a.started_at, a.ended_at),
                    "exit_code": a.exit_code,
                    "error": a.error,
                    "peak_memory_kb": a.peak_rss_kb,
                    "cpu_user_ms": a.cpu_user_ms,
                    "cpu_sys_ms": a.cpu_sys_ms,
                    "log": a.log_path,
                })
            })
            .collect();
        results.insert(
            t.task_id.clone(),
            json!({
                "task_id": t.task_id,
                "status": t.state,
                "critical": t.critical,
                "start_time": t.started_at.map(format_ms),
                "end_time": t.ended_at.map(format_ms),
                "duration": secs(t.started_at, t.ended_at),
                "output": t.output,
                "error": t.error,
                "metrics": t.metrics,
                "attempts": tries,
            }),
        );
    }
    Ok(json!({
        "execution_id": run.id,
        "pipeline": run.pipeline,
        "pipeline_file": run.pipeline_file,
        "status": run.state,
        "trigger": run.trigger,
        "parent_run_id": run.parent_run_id,
        "logical_date": run.logical_date,
        "params": run.params,
        "start_time": format_ms(run.created_at),
        "end_time": run.ended_at.map(format_ms),
        "total_duration": secs(Some(run.created_at), run.ended_at),
        "error": run.error,
        "execution_order": order.into_iter().map(|(_, t)| t).collect::<Vec<_>>(),
        "results": results,
    }))
}

/// Writes the report file of a run; returns its path.
pub async fn write_report(
    svc: &Services,
    run_id: &str,
) -> Result<std::path::PathBuf, Box<dyn std::error::Error + Send + Sync>> {
    let report = build(svc.store.as_ref(), run_id).await?;
    let dir = svc.project.reports_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{run_id}.json"));
    let tmp = dir.join(format!(".{run_id}.json.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&report)?)?;
    std::fs::rename(&tmp, &path)?;
    if let Some(sh) = &svc.shared {
        sh.push_file(&path).await?;
    }
    Ok(path)
}
