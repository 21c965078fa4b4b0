//! Semantic checks over a parsed pipeline, all collected before anything fails: unknown
//! dependencies (with suggestions), cycles with their path, workflows naming unknown tasks,
//! cron expressions and time zones, and each task kind's own checks (a program or Python
//! module that cannot be found).

use super::error::{suggestion, SpecError};
use super::Pipeline;
use crate::tasks::CheckContext;

/// Returns every problem found in `p`.
pub fn check_pipeline(p: &Pipeline, cx: &CheckContext) -> Vec<SpecError> {
    let mut errors = Vec::new();
    for (id, task) in &p.tasks {
        for (i, dep) in task.depends_on.iter().enumerate() {
            let location = task
                .depends_on_locations
                .get(i)
                .cloned()
                .unwrap_or_else(|| task.location.clone());
            let field = Some(format!("tasks.{id}.depends_on"));
            if dep == id {
                errors.push(SpecError::new(
                    location,
                    field,
                    format!("task `{id}` depends on itself"),
                ));
            } else if !p.tasks.contains_key(dep) {
                errors.push(SpecError::new(
                    location,
                    field,
                    format!(
                        "unknown dependency `{dep}`{}",
                        suggestion(dep, p.tasks.keys().map(|k| k.as_str()))
                    ),
                ));
            }
        }
        for name in task.action.reads() {
            // A named output (`check@quarantine`) belongs to its task.
            if !task
                .depends_on
                .iter()
                .any(|d| d == crate::data::dataset::owner(&name))
            {
                errors.push(SpecError::new(
                    task.location.clone(),
                    Some(format!("tasks.{id}.{}.from", task.kind)),
                    format!(
                        "`from` names `{name}`, which is not in `depends_on` of `{id}`; add it there so its dataset exists when `{id}` runs"
                    ),
                ));
            }
        }
        for msg in task.action.check(cx, &p.base_dir) {
            errors.push(SpecError::new(
                task.location.clone(),
                Some(format!("tasks.{id}.{}", task.kind)),
                msg,
            ));
        }
    }
    for cycle in crate::dag::find_cycles(&crate::dag::dependencies(p)) {
        if cycle.len() <= 2 && cycle.first() == cycle.last() {
            continue; // self-dependency, reported above
        }
        let location = cycle
            .first()
            .and_then(|id| p.tasks.get(id))
            .map(|t| t.location.clone())
            .unwrap_or_else(|| p.tasks_location.clone());
        errors.push(SpecError::new(
            location,
            Some("tasks".into()),
            format!("dependency cycle: {}", cycle.join(" -> ")),
        ));
    }
    for (name, wf) in &p.workflows {
        for t in &wf.tasks {
            if !p.tasks.contains_key(t) {
                errors.push(SpecError::new(
                    wf.location.clone(),
                    Some(format!("workflows.{name}")),
                    format!(
                        "workflow `{name}` names unknown task `{t}`{}",
                        suggestion(t, p.tasks.keys().map(|k| k.as_str()))
                    ),
                ));
            }
        }
    }
    if let Some(expr) = &p.schedule {
        if let Err(msg) = crate::schedule::parse_cron(expr) {
            errors.push(SpecError::new(
                p.schedule_location.clone(),
                Some("schedule".into()),
                msg,
            ));
        }
    }
    if let Some(tz) = &p.timezone {
        if tz.parse::<chrono_tz::Tz>().is_err() {
            errors.push(SpecError::new(
                p.timezone_location.clone(),
                Some("timezone".into()),
                format!("unknown time zone `{tz}`; use an IANA name such as `America/Argentina/Buenos_Aires` or `UTC`"),
            ));
        }
    }
    if p.max_active_runs == Some(0) {
        errors.push(SpecError::new(
            p.schedule_location.clone(),
            Some("max_active_runs".into()),
            "max_active_runs must be at least 1",
        ));
    }
    if p.schedule.is_some() {
        for (name, param) in &p.params {
            if param.default.is_none() {
                errors.push(SpecError::new(
                    p.schedule_location.clone(),
                    Some(format!("params.{name}")),
                    format!("param `{name}` has no default, so a scheduled run could not start; give it a default"),
                ));
            }
        }
    }
    if let Some(token) = &p.webhook_token {
        let t = token.trim();
        if !(t.starts_with("${") && t.ends_with('}')) {
            errors.push(SpecError::new(
                p.schedule_location.clone(),
                Some("webhook.token".into()),
                "write the webhook token as `${VAR}` (from .env or the environment): the pipeline file is shown to every API viewer",
            ));
        }
    }
    let task_routes = p
        .tasks
        .iter()
        .filter_map(|(id, t)| t.alerts.as_ref().map(|a| (Some(id.as_str()), a)));
    for (task, routes) in std::iter::once((None, &p.alerts)).chain(task_routes) {
        let prefix = match task {
            Some(id) => format!("tasks.{id}.alerts"),
            None => "alerts".to_string(),
        };
        for (event, channel, location) in routes.all() {
            if task.is_some() && event == "sla_miss" {
                errors.push(SpecError::new(
                    location.clone(),
                    Some(format!("{prefix}.sla_miss")),
                    "`sla_miss` alerts belong to the pipeline (its `sla`), not to a task",
                ));
            }
            if let Some(known) = &cx.alert_channels {
                if !known.iter().any(|k| k == channel) {
                    let hint = if known.is_empty() {
                        " (cauce.yaml defines no `alerts.channels`)".to_string()
                    } else {
                        format!(
                            "{}; channels in cauce.yaml: {}",
                            suggestion(channel, known.iter().map(|k| k.as_str())),
                            known.join(", ")
                        )
                    };
                    errors.push(SpecError::new(
                        location.clone(),
                        Some(format!("{prefix}.{event}")),
                        format!("unknown alert channel `{channel}`{hint}"),
                    ));
                }
            }
        }
    }
    errors.sort_by_key(|e| (e.location.line.unwrap_or(0), e.location.column.unwrap_or(0)));
    errors
}
