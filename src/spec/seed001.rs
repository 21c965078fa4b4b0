//! The seed-001 JSON config, read as it is: `orchestrator_config`, a `tasks` list with
//! `task_id`/`module_path`/`function_name`/`dependencies`/`parameters`/`timeout`/
//! `retry_count`/`critical`/`category`, and `workflows`. Each task becomes a `python` task
//! calling `function_name` in `module_path`; the rest maps onto the ordinary [`Pipeline`].

use super::error::{Location, SpecError, SpecErrors};
use super::parse::{check_task_id, decode, node_to_json, TaskDefaults};
use super::{Pipeline, RetryPolicy, Task, Workflow};
use crate::tasks::python::PythonTask;
use indexmap::IndexMap;
use marked_yaml::{Node, Spanned};
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrchestrator {
    name: Option<String>,
    version: Option<String>,
    description: Option<String>,
    default_timeout: Option<f64>,
    max_parallel_workers: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeedTask {
    task_id: Spanned<String>,
    name: Option<String>,
    description: Option<String>,
    module_path: String,
    function_name: String,
    dependencies: Option<Vec<Spanned<String>>>,
    /// Read separately with its types kept (see `node_to_json`).
    #[allow(dead_code)]
    parameters: Option<serde::de::IgnoredAny>,
    timeout: Option<f64>,
    retry_count: Option<u32>,
    critical: Option<bool>,
    category: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeedWorkflow {
    name: Option<String>,
    description: Option<String>,
    tasks: Vec<String>,
}

const TOP: &[&str] = &["orchestrator_config", "tasks", "workflows"];

/// Whether a parsed file has the seed-001 shape (rather than a cauce pipeline).
pub fn is_seed001(root: &Node) -> bool {
    root.as_mapping().is_some_and(|m| {
        m.get_node("orchestrator_config").is_some()
            || m.get_node("tasks")
                .is_some_and(|t| t.as_sequence().is_some())
    })
}

/// Converts a seed-001 config into a pipeline.
pub fn convert(
    root: &Node,
    file: &Path,
    text: &str,
    base_dir: &Path,
    project_defaults: &TaskDefaults,
) -> Result<Pipeline, SpecErrors> {
    let mut errors = Vec::new();
    let map = root
        .as_mapping()
        .ok_or_else(|| SpecError::new(Location::file(file), None, "expected a JSON object"))?;
    for key in map.keys() {
        if !TOP.contains(&key.as_str()) {
            errors.push(SpecError::new(
                Location::at(file, key.span().start()),
                Some(key.as_str().to_string()),
                format!(
                    "unknown key `{}`{} in a seed-001 config; expected one of: {}",
                    key.as_str(),
                    super::error::suggestion(key.as_str(), TOP.iter().copied()),
                    TOP.join(", ")
                ),
            ));
        }
    }
    let orch: RawOrchestrator = match map.get_node("orchestrator_config") {
        Some(n) => decode(n, file, "orchestrator_config").unwrap_or_else(|e| {
            errors.push(e);
            RawOrchestrator {
                name: None,
                version: None,
                description: None,
                default_timeout: None,
                max_parallel_workers: None,
            }
        }),
        None => RawOrchestrator {
            name: None,
            version: None,
            description: None,
            default_timeout: None,
            max_parallel_workers: None,
        },
    };
    let default_timeout = orch.default_timeout.and_then(secs);
    let mut tasks = IndexMap::new();
    let empty = Node::Sequence(marked_yaml::types::MarkedSequenceNode::new_empty(
        marked_yaml::Span::new_blank(),
    ));
    let task_nodes = map.get_node("tasks").unwrap_or(&empty);
    let Some(seq) = task_nodes.as_sequence() else {
        return Err(SpecError::new(
            Location::at(file, task_nodes.span().start()),
            Some("tasks".into()),
            "`tasks` must be a list",
        )
        .into());
    };
    for (i, node) in seq.iter().enumerate() {
        let field = format!("tasks[{i}]");
        let raw: RawSeedTask = match decode(node, file, &field) {
            Ok(r) => r,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let id = raw.task_id.as_str().to_string();
        let location = Location::at(file, raw.task_id.span().start());
        if let Err(msg) = check_task_id(&id) {
            errors.push(SpecError::new(
                location,
                Some(format!("{field}.task_id")),
                msg,
            ));
            continue;
        }
        if tasks.contains_key(&id) {
            errors.push(SpecError::new(
                location,
                Some(format!("{field}.task_id")),
                format!("duplicate task id `{id}`"),
            ));
            continue;
        }
        let params = node
            .as_mapping()
            .and_then(|m| m.get_node("parameters"))
            .map(node_to_json)
            .filter(|v| !v.is_null())
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        let action = PythonTask::for_function(raw.module_path, raw.function_name, params);
        let deps = raw.dependencies.unwrap_or_default();
        let base = RetryPolicy::default();
        let task = Task {
            id: id.clone(),
            name: raw.name,
            description: raw.description,
            kind: "python",
            action: Arc::new(action),
            depends_on: deps.iter().map(|d| d.as_str().to_string()).collect(),
            depends_on_locations: deps
                .iter()
                .map(|d| Location::at(file, d.span().start()))
                .collect(),
            trigger: project_defaults.trigger.unwrap_or_default(),
            retry: RetryPolicy {
                retries: raw.retry_count.or(project_defaults.retries).unwrap_or(0),
                delay: project_defaults.retry_delay.unwrap_or(base.delay),
                backoff: project_defaults.backoff.unwrap_or(base.backoff),
                max_delay: project_defaults.max_retry_delay.unwrap_or(base.max_delay),
            },
            timeout: raw
                .timeout
                .and_then(secs)
                .or(default_timeout)
                .or(project_defaults.timeout),
            critical: raw.critical.or(project_defaults.critical).unwrap_or(true),
            category: raw.category,
            alerts: None,
            queue: crate::spec::parse::DEFAULT_QUEUE.to_string(),
            env: project_defaults.env.clone(),
            location,
        };
        tasks.insert(id, task);
    }
    let mut workflows = IndexMap::new();
    if let Some(wf_node) = map.get_node("workflows") {
        match wf_node.as_mapping() {
            Some(wmap) => {
                for (key, value) in wmap.iter() {
                    let field = format!("workflows.{}", key.as_str());
                    match decode::<RawSeedWorkflow>(value, file, &field) {
                        Ok(r) => {
                            workflows.insert(
                                key.as_str().to_string(),
                                Workflow {
                                    title: r.name,
                                    description: r.description,
                                    tasks: r.tasks,
                                    location: Location::at(file, key.span().start()),
                                },
                            );
                        }
                        Err(e) => errors.push(e),
                    }
                }
            }
            None => errors.push(SpecError::new(
                Location::at(file, wf_node.span().start()),
                Some("workflows".into()),
                "`workflows` must be an object",
            )),
        }
    }
    if !errors.is_empty() {
        return Err(SpecErrors(errors));
    }
    let _ = orch.version;
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "etl_config".into());
    Ok(Pipeline {
        name,
        file: file.to_path_buf(),
        base_dir: base_dir.to_path_buf(),
        source: text.to_string(),
        description: orch.description.or(orch.name),
        schedule: None,
        timezone: None,
        catchup: false,
        max_active_runs: None,
        max_workers: orch.max_parallel_workers,
        sla: None,
        start_date: None,
        alerts: Default::default(),
        webhook_token: None,
        params: IndexMap::new(),
        workflows,
        tasks,
        env: IndexMap::new(),
        tasks_location: Location::at(file, task_nodes.span().start()),
        schedule_location: Location::file(file),
        timezone_location: Location::file(file),
    })
}

fn secs(s: f64) -> Option<Duration> {
    (s.is_finite() && s > 0.0).then(|| Duration::from_secs_f64(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse::parse_pipeline;

    const CONFIG: &str = r#"{
  "orchestrator_config": {"name": "ETL", "version": "1.0.0", "default_timeout": 3600, "max_parallel_workers": 3},
  "tasks": [
    {"task_id": "extract", "name": "Extract", "module_path": "etl.extract", "function_name": "main",
     "dependencies": [], "parameters": {"limit": 100, "label": "x"}, "timeout": 1800, "retry_count": 2,
     "critical": true, "category": "extraction"},
    {"task_id": "load", "name": "Load", "module_path": "etl.load", "function_name": "main",
     "dependencies": ["extract"], "critical": false, "category": "load"}
  ],
  "workflows": {"full_etl": {"name": "Full", "description": "all", "tasks": ["extract", "load"]}}
}"#;

    #[test]
    fn reads_the_seed_001_shape() {
        let p = parse_pipeline(
            Path::new("etl_config.json"),
            CONFIG,
            Path::new("."),
            &TaskDefaults::default(),
        )
        .unwrap();
        assert_eq!(p.name, "etl_config");
        assert_eq!(p.max_workers, Some(3));
        let e = &p.tasks["extract"];
        assert_eq!(e.kind, "python");
        assert_eq!(e.retry.retries, 2);
        assert_eq!(e.timeout, Some(Duration::from_secs(1800)));
        assert_eq!(e.category.as_deref(), Some("extraction"));
        let l = &p.tasks["load"];
        assert_eq!(l.depends_on, vec!["extract"]);
        assert!(!l.critical);
        assert_eq!(
            l.timeout,
            Some(Duration::from_secs(3600)),
            "default_timeout applies"
        );
        assert_eq!(p.workflows["full_etl"].tasks.len(), 2);
        assert!(e.action.describe().contains("etl.extract"));
        // A task without `parameters` calls the function with no arguments.
        assert!(
            format!("{:?}", l.action).contains("params: Object {}"),
            "{:?}",
            l.action
        );
    }

    #[test]
    fn seed_config_errors_are_located() {
        let bad = CONFIG.replace("\"retry_count\": 2", "\"retry_cuont\": 2");
        let e = parse_pipeline(
            Path::new("c.json"),
            &bad,
            Path::new("."),
            &TaskDefaults::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("did you mean `retry_count`"), "{e}");
        assert!(e.to_string().contains("c.json:5:"), "{e}");
    }
}
