//! Reading pipeline files: YAML or JSON text → [`Pipeline`], strictly.
//!
//! The text is parsed once into a tree that remembers every line and column
//! (`marked_yaml`), so every error names its place. Unknown keys are errors with a
//! "did you mean" hint. Each task has common keys plus exactly one kind key, whose value
//! is handed to that kind's build function from the registry in `crate::tasks`.
//! Semantic checks across tasks (cycles, unknown dependencies) live in `spec::check`.

use super::duration::parse_duration;
use super::error::{suggestion, Location, SpecError, SpecErrors};
use super::{AlertRoutes, Backoff, Param, ParamType, Pipeline, RetryPolicy, Task, Workflow};
use crate::state::Trigger;
use crate::tasks::{self, BuildContext};
use indexmap::IndexMap;
use marked_yaml::{Node, Spanned};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// Task settings that `defaults` (in a pipeline or in `cauce.yaml`) give every task.
#[derive(Debug, Clone, Default)]
pub struct TaskDefaults {
    /// Extra attempts.
    pub retries: Option<u32>,
    /// First retry delay.
    pub retry_delay: Option<Duration>,
    /// Delay growth.
    pub backoff: Option<Backoff>,
    /// Delay cap.
    pub max_retry_delay: Option<Duration>,
    /// Attempt time limit.
    pub timeout: Option<Duration>,
    /// Whether failure stops the run.
    pub critical: Option<bool>,
    /// Trigger rule.
    pub trigger: Option<Trigger>,
    /// Environment variables.
    pub env: IndexMap<String, String>,
    /// The queue workers claim the task's attempts from.
    pub queue: Option<String>,
}

impl TaskDefaults {
    /// `self` with every unset field taken from `base`.
    pub fn over(&self, base: &TaskDefaults) -> TaskDefaults {
        let mut env = base.env.clone();
        env.extend(self.env.clone());
        TaskDefaults {
            retries: self.retries.or(base.retries),
            retry_delay: self.retry_delay.or(base.retry_delay),
            backoff: self.backoff.or(base.backoff),
            max_retry_delay: self.max_retry_delay.or(base.max_retry_delay),
            timeout: self.timeout.or(base.timeout),
            critical: self.critical.or(base.critical),
            trigger: self.trigger.or(base.trigger),
            env,
            queue: self.queue.clone().or_else(|| base.queue.clone()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    retries: Option<u32>,
    retry_delay: Option<Spanned<String>>,
    backoff: Option<Spanned<String>>,
    max_retry_delay: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    critical: Option<bool>,
    trigger: Option<Spanned<String>>,
    env: Option<IndexMap<String, String>>,
    queue: Option<String>,
}

/// The queue of tasks that name none.
pub const DEFAULT_QUEUE: &str = "default";

/// The keys every task may have besides its kind key.
pub const COMMON_TASK_KEYS: &[&str] = &[
    "name",
    "description",
    "depends_on",
    "trigger",
    "retries",
    "retry_delay",
    "backoff",
    "max_retry_delay",
    "timeout",
    "critical",
    "category",
    "env",
    "alerts",
    "queue",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: Option<String>,
    description: Option<String>,
    depends_on: Option<Vec<Spanned<String>>>,
    trigger: Option<Spanned<String>>,
    retries: Option<u32>,
    retry_delay: Option<Spanned<String>>,
    backoff: Option<Spanned<String>>,
    max_retry_delay: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    critical: Option<bool>,
    category: Option<String>,
    env: Option<IndexMap<String, String>>,
    alerts: Option<RawAlerts>,
    queue: Option<String>,
}

/// `alerts:` of a pipeline or a task: channel names per event.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    failure: Option<Vec<Spanned<String>>>,
    retry: Option<Vec<Spanned<String>>>,
    success: Option<Vec<Spanned<String>>>,
    sla_miss: Option<Vec<Spanned<String>>>,
}

impl RawAlerts {
    fn build(self, file: &Path) -> AlertRoutes {
        let names = |v: Option<Vec<Spanned<String>>>| -> Vec<(String, Location)> {
            v.unwrap_or_default()
                .iter()
                .map(|s| (s.as_str().to_string(), spanned_loc(file, s)))
                .collect()
        };
        AlertRoutes {
            failure: names(self.failure),
            retry: names(self.retry),
            success: names(self.success),
            sla_miss: names(self.sla_miss),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTop {
    name: Option<String>,
    description: Option<String>,
    schedule: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    catchup: Option<bool>,
    max_active_runs: Option<u32>,
    max_workers: Option<usize>,
    env: Option<IndexMap<String, String>>,
    sla: Option<Spanned<String>>,
    start_date: Option<Spanned<String>>,
    alerts: Option<RawAlerts>,
    webhook: Option<RawWebhook>,
}

/// The top-level keys of a pipeline file.
pub const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "schedule",
    "timezone",
    "catchup",
    "max_active_runs",
    "max_workers",
    "env",
    "sla",
    "start_date",
    "alerts",
    "webhook",
    "params",
    "defaults",
    "workflows",
    "tasks",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    default: Option<String>,
    description: Option<String>,
    choices: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    name: Option<String>,
    description: Option<String>,
    tasks: Vec<String>,
}

/// Parses a file's text into a tree with positions; JSON is read by the same parser.
pub fn parse_tree(file: &Path, text: &str) -> Result<Node, SpecError> {
    // JSON only allows tabs as whitespace outside strings, and the YAML scanner refuses
    // tabs for indentation, so they are turned into spaces for JSON files.
    let is_json = file.extension().is_some_and(|e| e == "json");
    let text = if is_json && text.contains('\t') {
        std::borrow::Cow::Owned(text.replace('\t', " "))
    } else {
        std::borrow::Cow::Borrowed(text)
    };
    let options = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true);
    marked_yaml::parse_yaml_with_options(0, text.as_ref(), options).map_err(|e| load_error(file, e))
}

fn load_error(file: &Path, e: marked_yaml::LoadError) -> SpecError {
    use marked_yaml::LoadError as L;
    let (mark, msg) = match &e {
        L::TopLevelMustBeMapping(m) => (Some(*m), "the file must be a mapping of keys".to_string()),
        L::TopLevelMustBeSequence(m) => (Some(*m), "the file must be a list".to_string()),
        L::UnexpectedAnchor(m) => (
            Some(*m),
            "YAML anchors and aliases are not supported".into(),
        ),
        L::MappingKeyMustBeScalar(m) => (Some(*m), "keys must be plain names".into()),
        L::UnexpectedTag(m) => (Some(*m), "YAML tags are not supported".into()),
        L::ScanError(m, s) => (Some(*m), format!("syntax error: {s}")),
        L::DuplicateKey(inner) => {
            let key = inner.key.as_str().to_string();
            (
                inner.key.span().start().copied(),
                format!(
                    "duplicate key `{key}` (first defined at line {})",
                    inner.prev_key.span().start().map(|m| m.line()).unwrap_or(0)
                ),
            )
        }
    };
    SpecError::new(Location::at(file, mark.as_ref()), None, msg)
}

/// Deserializes a node strictly, turning serde's errors into located [`SpecError`]s.
pub fn decode<T: DeserializeOwned>(node: &Node, file: &Path, field: &str) -> Result<T, SpecError> {
    marked_yaml::from_node(node).map_err(|e| {
        use marked_yaml::Error as E;
        match &*e {
            E::UnknownFieldError(name, expected, span) => SpecError::new(
                Location::at(
                    file,
                    span.start()
                        .or_else(|| find_key_mark(node, name))
                        .or(node.span().start()),
                ),
                Some(join(field, name)),
                format!(
                    "unknown key `{name}`{}; expected one of: {}",
                    suggestion(name, expected.iter().copied()),
                    expected.join(", ")
                ),
            ),
            other => {
                let mark = other.start_mark().or_else(|| node.span().start().copied());
                let msg = match other {
                    E::NotBoolean(_) => "expected `true` or `false`".to_string(),
                    E::IntegerParseFailure(err, _) => format!("expected a whole number ({err})"),
                    _ => other.to_string(),
                };
                SpecError::new(
                    Location::at(file, mark.as_ref()),
                    Some(field.to_string()),
                    msg,
                )
            }
        }
    })
}

/// Where a key is written inside a node (the first one found, depth first).
fn find_key_mark<'a>(node: &'a Node, key: &str) -> Option<&'a marked_yaml::Marker> {
    match node {
        Node::Mapping(m) => m.iter().find_map(|(k, v)| {
            if k.as_str() == key {
                k.span().start()
            } else {
                find_key_mark(v, key)
            }
        }),
        Node::Sequence(s) => s.iter().find_map(|v| find_key_mark(v, key)),
        Node::Scalar(_) => None,
    }
}

/// `a.b` from `a` and `b` (or just `b` at the top).
pub fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// The text of a scalar node.
pub fn scalar(node: &Node) -> Option<&str> {
    node.as_scalar().map(|s| s.as_str())
}

fn loc(file: &Path, node: &Node) -> Location {
    Location::at(file, node.span().start())
}

fn spanned_loc<T>(file: &Path, s: &Spanned<T>) -> Location {
    Location::at(file, s.span().start())
}

fn duration_field(
    file: &Path,
    field: &str,
    value: &Option<Spanned<String>>,
    errors: &mut Vec<SpecError>,
) -> Option<Duration> {
    let v = value.as_ref()?;
    match parse_duration(v.as_str()) {
        Ok(d) => Some(d),
        Err(msg) => {
            errors.push(SpecError::new(
                spanned_loc(file, v),
                Some(field.into()),
                msg,
            ));
            None
        }
    }
}

/// Reads one of a fixed set of names (a trigger rule, a backoff kind).
fn choice_field<T: Copy>(
    file: &Path,
    field: &str,
    what: &str,
    value: &Option<Spanned<String>>,
    choices: &[(&str, T)],
    errors: &mut Vec<SpecError>,
) -> Option<T> {
    let v = value.as_ref()?;
    if let Some((_, t)) = choices.iter().find(|(name, _)| *name == v.as_str()) {
        return Some(*t);
    }
    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
    errors.push(SpecError::new(
        spanned_loc(file, v),
        Some(field.into()),
        format!(
            "unknown {what} `{}`{}; expected one of: {}",
            v.as_str(),
            suggestion(v.as_str(), names.iter().copied()),
            names.join(", ")
        ),
    ));
    None
}

fn trigger_field(
    file: &Path,
    field: &str,
    value: &Option<Spanned<String>>,
    errors: &mut Vec<SpecError>,
) -> Option<Trigger> {
    let choices = Trigger::ALL.map(|t| (t.as_str(), t));
    choice_field(file, field, "trigger", value, &choices, errors)
}

fn backoff_field(
    file: &Path,
    field: &str,
    value: &Option<Spanned<String>>,
    errors: &mut Vec<SpecError>,
) -> Option<Backoff> {
    let choices = [
        ("fixed", Backoff::Fixed),
        ("exponential", Backoff::Exponential),
    ];
    choice_field(file, field, "backoff", value, &choices, errors)
}

/// Reads a `defaults` block (of a pipeline or of `cauce.yaml`).
pub fn parse_defaults(node: &Node, file: &Path, field: &str) -> Result<TaskDefaults, SpecErrors> {
    let raw: RawDefaults = decode(node, file, field)?;
    let mut errors = Vec::new();
    let f = |k: &str| join(field, k);
    let d = TaskDefaults {
        retries: raw.retries,
        retry_delay: duration_field(file, &f("retry_delay"), &raw.retry_delay, &mut errors),
        backoff: backoff_field(file, &f("backoff"), &raw.backoff, &mut errors),
        max_retry_delay: duration_field(
            file,
            &f("max_retry_delay"),
            &raw.max_retry_delay,
            &mut errors,
        ),
        timeout: duration_field(file, &f("timeout"), &raw.timeout, &mut errors),
        critical: raw.critical,
        trigger: trigger_field(file, &f("trigger"), &raw.trigger, &mut errors),
        env: raw.env.unwrap_or_default(),
        queue: raw.queue,
    };
    if errors.is_empty() {
        Ok(d)
    } else {
        Err(SpecErrors(errors))
    }
}

/// Parses a pipeline file's text. `base_dir` is where tasks run and relative paths resolve;
/// `project_defaults` come from `cauce.yaml`.
pub fn parse_pipeline(
    file: &Path,
    text: &str,
    base_dir: &Path,
    project_defaults: &TaskDefaults,
) -> Result<Pipeline, SpecErrors> {
    let (pipeline, errors) = parse_pipeline_all(file, text, base_dir, project_defaults)?;
    if errors.is_empty() {
        Ok(pipeline)
    } else {
        Err(SpecErrors(errors))
    }
}

/// Like [`parse_pipeline`], but keeps going past field errors: returns the pipeline built
/// from what parsed together with every error, so that `cauce validate` can also run the
/// semantic checks. Fails only when the file cannot be read as a pipeline at all.
pub fn parse_pipeline_all(
    file: &Path,
    text: &str,
    base_dir: &Path,
    project_defaults: &TaskDefaults,
) -> Result<(Pipeline, Vec<SpecError>), SpecErrors> {
    let root = parse_tree(file, text)?;
    let Some(map) = root.as_mapping() else {
        return Err(SpecError::new(
            loc(file, &root),
            None,
            "a pipeline file must be a mapping of keys",
        )
        .into());
    };
    if super::seed001::is_seed001(&root) {
        return super::seed001::convert(&root, file, text, base_dir, project_defaults)
            .map(|p| (p, Vec::new()));
    }
    let mut errors: Vec<SpecError> = Vec::new();

    // Top-level keys: known ones are peeled off, the rest must be plain settings.
    let mut rest = map.clone();
    for key in map.keys() {
        if !TOP_KEYS.contains(&key.as_str()) {
            errors.push(SpecError::new(
                Location::at(file, key.span().start()),
                Some(key.as_str().to_string()),
                format!(
                    "unknown key `{}`{}; expected one of: {}",
                    key.as_str(),
                    suggestion(key.as_str(), TOP_KEYS.iter().copied()),
                    TOP_KEYS.join(", ")
                ),
            ));
            rest.remove(key.as_str());
        }
    }
    let tasks_node = rest.remove("tasks");
    let defaults_node = rest.remove("defaults");
    let params_node = rest.remove("params");
    let workflows_node = rest.remove("workflows");
    let top: RawTop = match decode(&Node::Mapping(rest), file, "") {
        Ok(t) => t,
        Err(e) => {
            errors.push(e);
            RawTop {
                name: None,
                description: None,
                schedule: None,
                timezone: None,
                catchup: None,
                max_active_runs: None,
                max_workers: None,
                env: None,
                sla: None,
                start_date: None,
                alerts: None,
                webhook: None,
            }
        }
    };
    let sla = duration_field(file, "sla", &top.sla, &mut errors);
    let start_date = top.start_date.as_ref().and_then(|s| {
        match parse_start_date(s.as_str()) {
            Some(d) => Some(d),
            None => {
                errors.push(SpecError::new(
                    spanned_loc(file, s),
                    Some("start_date".into()),
                    format!(
                        "invalid start_date `{}`: write YYYY-MM-DD or `YYYY-MM-DD HH:MM` (in the pipeline's timezone)",
                        s.as_str()
                    ),
                ));
                None
            }
        }
    });

    let defaults = match &defaults_node {
        Some(n) => match parse_defaults(n, file, "defaults") {
            Ok(d) => d.over(project_defaults),
            Err(e) => {
                errors.extend(e.0);
                project_defaults.clone()
            }
        },
        None => project_defaults.clone(),
    };

    let params = match &params_node {
        Some(n) => parse_params(n, file, &mut errors),
        None => IndexMap::new(),
    };
    let workflows = match &workflows_node {
        Some(n) => parse_workflows(n, file, &mut errors),
        None => IndexMap::new(),
    };

    let mut tasks = IndexMap::new();
    let tasks_location = match &tasks_node {
        Some(n) => {
            parse_tasks(n, file, base_dir, &defaults, &mut tasks, &mut errors);
            loc(file, n)
        }
        None => {
            errors.push(SpecError::new(
                Location::file(file),
                Some("tasks".into()),
                "a pipeline needs a `tasks` mapping",
            ));
            Location::file(file)
        }
    };

    let name = top.name.unwrap_or_else(|| {
        file.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pipeline".into())
    });
    let pipeline = Pipeline {
        name,
        file: file.to_path_buf(),
        base_dir: base_dir.to_path_buf(),
        source: text.to_string(),
        description: top.description,
        schedule_location: top
            .schedule
            .as_ref()
            .map(|s| spanned_loc(file, s))
            .unwrap_or_else(|| Location::file(file)),
        timezone_location: top
            .timezone
            .as_ref()
            .map(|s| spanned_loc(file, s))
            .unwrap_or_else(|| Location::file(file)),
        schedule: top.schedule.map(|s| s.as_str().to_string()),
        timezone: top.timezone.map(|s| s.as_str().to_string()),
        catchup: top.catchup.unwrap_or(false),
        max_active_runs: top.max_active_runs,
        max_workers: top.max_workers,
        sla,
        start_date,
        alerts: top.alerts.map(|a| a.build(file)).unwrap_or_default(),
        webhook_token: top.webhook.map(|w| w.token),
        params,
        workflows,
        tasks,
        env: top.env.unwrap_or_default(),
        tasks_location,
    };
    Ok((pipeline, errors))
}

fn parse_params(node: &Node, file: &Path, errors: &mut Vec<SpecError>) -> IndexMap<String, Param> {
    let mut out = IndexMap::new();
    let Some(map) = node.as_mapping() else {
        errors.push(SpecError::new(
            loc(file, node),
            Some("params".into()),
            "`params` must be a mapping of name to default or settings",
        ));
        return out;
    };
    for (key, value) in map.iter() {
        let name = key.as_str().to_string();
        let field = format!("params.{name}");
        let param = if let Some(s) = value.as_scalar() {
            // `day: 2024-01-01` is shorthand for a string param with that default.
            Param {
                name: name.clone(),
                kind: ParamType::String,
                default: Some(serde_json::Value::String(s.as_str().to_string())),
                description: None,
                choices: vec![],
            }
        } else {
            let raw: RawParam = match decode(value, file, &field) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let kind = match &raw.kind {
                None => ParamType::String,
                Some(k) => match ParamType::parse(k.as_str()) {
                    Some(t) => t,
                    None => {
                        errors.push(SpecError::new(
                            spanned_loc(file, k),
                            Some(format!("{field}.type")),
                            format!(
                                "unknown param type `{}`{}; expected one of: {}",
                                k.as_str(),
                                suggestion(k.as_str(), ParamType::NAMES),
                                ParamType::NAMES.join(", ")
                            ),
                        ));
                        continue;
                    }
                },
            };
            let mut p = Param {
                name: name.clone(),
                kind,
                default: None,
                description: raw.description,
                choices: raw.choices.unwrap_or_default(),
            };
            if let Some(d) = raw.default {
                match p.accept(&d) {
                    Ok(v) => p.default = Some(v),
                    Err(msg) => {
                        errors.push(SpecError::new(
                            loc(file, value),
                            Some(format!("{field}.default")),
                            msg,
                        ));
                        continue;
                    }
                }
            }
            p
        };
        out.insert(name, param);
    }
    out
}

fn parse_workflows(
    node: &Node,
    file: &Path,
    errors: &mut Vec<SpecError>,
) -> IndexMap<String, Workflow> {
    let mut out = IndexMap::new();
    let Some(map) = node.as_mapping() else {
        errors.push(SpecError::new(
            loc(file, node),
            Some("workflows".into()),
            "`workflows` must be a mapping of name to a task list",
        ));
        return out;
    };
    for (key, value) in map.iter() {
        let field = format!("workflows.{}", key.as_str());
        let location = Location::at(file, key.span().start());
        let wf = if value.as_sequence().is_some() {
            match decode::<Vec<String>>(value, file, &field) {
                Ok(tasks) => Workflow {
                    title: None,
                    description: None,
                    tasks,
                    location,
                },
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            }
        } else {
            match decode::<RawWorkflow>(value, file, &field) {
                Ok(r) => Workflow {
                    title: r.name,
                    description: r.description,
                    tasks: r.tasks,
                    location,
                },
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            }
        };
        out.insert(key.as_str().to_string(), wf);
    }
    out
}

fn parse_tasks(
    node: &Node,
    file: &Path,
    base_dir: &Path,
    defaults: &TaskDefaults,
    tasks: &mut IndexMap<String, Task>,
    errors: &mut Vec<SpecError>,
) {
    let Some(map) = node.as_mapping() else {
        errors.push(SpecError::new(
            loc(file, node),
            Some("tasks".into()),
            "`tasks` must be a mapping from task id to task",
        ));
        return;
    };
    let kind_names: Vec<&str> = tasks::KINDS.iter().map(|(n, _)| *n).collect();
    for (key, value) in map.iter() {
        let id = key.as_str().to_string();
        let field = format!("tasks.{id}");
        let location = Location::at(file, key.span().start());
        if let Err(msg) = check_task_id(&id) {
            errors.push(SpecError::new(location.clone(), Some(field.clone()), msg));
            continue;
        }
        // `id: "command"` is shorthand for `id: {run: "command"}`.
        let shorthand;
        let task_map = match value {
            Node::Mapping(m) => m,
            Node::Scalar(_) => {
                shorthand = [(
                    marked_yaml::types::MarkedScalarNode::from("run"),
                    value.clone(),
                )]
                .into_iter()
                .collect::<marked_yaml::types::MarkedMappingNode>();
                &shorthand
            }
            Node::Sequence(_) => {
                errors.push(SpecError::new(
                    loc(file, value),
                    Some(field),
                    "a task must be a mapping of keys (or a shell command)",
                ));
                continue;
            }
        };
        let mut common = task_map.clone();
        let mut kinds_found = Vec::new();
        for k in task_map.keys() {
            let name = k.as_str();
            if let Some((kind, build)) = tasks::KINDS.iter().find(|(n, _)| *n == name) {
                kinds_found.push((*kind, *build, k.clone()));
                common.remove(name);
            } else if !COMMON_TASK_KEYS.contains(&name) {
                let all: Vec<&str> = COMMON_TASK_KEYS
                    .iter()
                    .chain(kind_names.iter())
                    .copied()
                    .collect();
                errors.push(SpecError::new(
                    Location::at(file, k.span().start()),
                    Some(format!("{field}.{name}")),
                    format!(
                        "unknown key `{name}`{}; a task has one kind key ({}) and common keys ({})",
                        suggestion(name, all.iter().copied()),
                        kind_names.join(", "),
                        COMMON_TASK_KEYS.join(", ")
                    ),
                ));
                common.remove(name);
            }
        }
        let (kind, build, kind_key) = match kinds_found.len() {
            1 => kinds_found.remove(0),
            0 => {
                errors.push(SpecError::new(
                    location.clone(),
                    Some(field.clone()),
                    format!(
                        "task `{id}` has no kind; give it exactly one of: {}",
                        kind_names.join(", ")
                    ),
                ));
                continue;
            }
            _ => {
                let names: Vec<&str> = kinds_found.iter().map(|k| k.0).collect();
                errors.push(SpecError::new(
                    location.clone(),
                    Some(field.clone()),
                    format!(
                        "task `{id}` has several kinds ({}); give it exactly one",
                        names.join(", ")
                    ),
                ));
                continue;
            }
        };
        let kind_node = task_map
            .get(kind_key.as_str())
            .cloned()
            .unwrap_or_else(|| value.clone());
        let cx = BuildContext {
            file,
            base_dir,
            field: format!("{field}.{kind}"),
            task_id: &id,
        };
        let action = match build(&kind_node, &cx) {
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let raw: RawTask = match decode(&Node::Mapping(common), file, &field) {
            Ok(r) => r,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let f = |k: &str| format!("{field}.{k}");
        let retry_delay = duration_field(file, &f("retry_delay"), &raw.retry_delay, errors);
        let max_retry_delay =
            duration_field(file, &f("max_retry_delay"), &raw.max_retry_delay, errors);
        let timeout = duration_field(file, &f("timeout"), &raw.timeout, errors);
        let trigger = trigger_field(file, &f("trigger"), &raw.trigger, errors);
        let backoff = backoff_field(file, &f("backoff"), &raw.backoff, errors);
        let queue = raw
            .queue
            .clone()
            .or_else(|| defaults.queue.clone())
            .unwrap_or_else(|| DEFAULT_QUEUE.to_string());
        if queue.trim().is_empty() || queue.contains(',') {
            errors.push(SpecError::new(
                location.clone(),
                Some(f("queue")),
                format!("queue `{queue}` is not a name (no worker could subscribe to it)"),
            ));
        }
        let Some(action) = action else { continue };
        let base = RetryPolicy::default();
        let mut env = defaults.env.clone();
        env.extend(raw.env.unwrap_or_default());
        let deps = raw.depends_on.unwrap_or_default();
        let task = Task {
            id: id.clone(),
            name: raw.name,
            description: raw.description,
            kind,
            action,
            depends_on: deps.iter().map(|d| d.as_str().to_string()).collect(),
            depends_on_locations: deps.iter().map(|d| spanned_loc(file, d)).collect(),
            trigger: trigger.or(defaults.trigger).unwrap_or_default(),
            retry: RetryPolicy {
                retries: raw.retries.or(defaults.retries).unwrap_or(base.retries),
                delay: retry_delay.or(defaults.retry_delay).unwrap_or(base.delay),
                backoff: backoff.or(defaults.backoff).unwrap_or(base.backoff),
                max_delay: max_retry_delay
                    .or(defaults.max_retry_delay)
                    .unwrap_or(base.max_delay),
            },
            timeout: timeout.or(defaults.timeout),
            critical: raw.critical.or(defaults.critical).unwrap_or(true),
            category: raw.category,
            env,
            alerts: raw.alerts.map(|a| a.build(file)),
            queue,
            location,
        };
        tasks.insert(id, task);
    }
}

/// A pipeline's `start_date`: a local date and time in the pipeline's time zone.
pub fn parse_start_date(text: &str) -> Option<chrono::NaiveDateTime> {
    let t = text.trim();
    chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M"))
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
}

/// Task ids become file names and environment variable names: keep them plain.
pub fn check_task_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid task id `{id}`: use 1 to 128 letters, digits, `_`, `-` or `.` (not first)"
        ))
    }
}

/// Converts a node into JSON, typing unquoted scalars the YAML way (numbers, booleans,
/// `null`), so that `limit: 100` reaches a Python function as a number and `"100"` as text.
pub fn node_to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match node {
        Node::Scalar(s) => {
            let text = s.as_str();
            if !s.may_coerce() {
                return Value::String(text.to_string());
            }
            match text {
                "null" | "~" | "Null" | "NULL" => return Value::Null,
                "true" | "True" | "TRUE" => return Value::Bool(true),
                "false" | "False" | "FALSE" => return Value::Bool(false),
                _ => {}
            }
            if let Ok(i) = text.parse::<i64>() {
                return Value::from(i);
            }
            if text.contains(['.', 'e', 'E']) {
                if let Some(n) = text
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                {
                    return Value::Number(n);
                }
            }
            Value::String(text.to_string())
        }
        Node::Sequence(seq) => Value::Array(seq.iter().map(node_to_json).collect()),
        Node::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().to_string(), node_to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Pipeline, SpecErrors> {
        parse_pipeline(
            Path::new("p.yaml"),
            text,
            Path::new("."),
            &TaskDefaults::default(),
        )
    }

    #[test]
    fn parses_a_small_pipeline_with_defaults() {
        let p = parse(
            "name: demo\ndefaults:\n  retries: 2\n  retry_delay: 1s\ntasks:\n  a:\n    run: echo hi\n  b:\n    run: echo b\n    depends_on: [a]\n    retries: 0\n    timeout: 1h30m\n  c: echo short\n",
        )
        .unwrap();
        assert_eq!(p.name, "demo");
        assert_eq!(p.tasks["a"].retry.retries, 2);
        assert_eq!(p.tasks["a"].retry.delay, Duration::from_secs(1));
        assert_eq!(p.tasks["b"].retry.retries, 0);
        assert_eq!(p.tasks["b"].timeout, Some(Duration::from_secs(5400)));
        assert_eq!(p.tasks["b"].depends_on, vec!["a"]);
        assert_eq!(p.tasks["c"].kind, "run");
    }

    #[test]
    fn unknown_keys_are_located_with_a_suggestion() {
        let e = parse("tasks:\n  a:\n    run: echo\n    retires: 3\n").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("p.yaml:4:5"), "{text}");
        assert!(text.contains("did you mean `retries`"), "{text}");
        let e = parse("taks:\n  a:\n    run: x\n").unwrap_err().to_string();
        assert!(e.contains("did you mean `tasks`"), "{e}");
    }

    #[test]
    fn reports_every_problem_at_once() {
        let e = parse("tasks:\n  a:\n    run: x\n    timeout: soon\n  b:\n    backoff: linear\n    run: y\n  c:\n    description: none\n").unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
        let text = e.to_string();
        assert!(
            text.contains("p.yaml:4:14") && text.contains("invalid duration"),
            "{text}"
        );
        assert!(text.contains("unknown backoff"), "{text}");
        assert!(text.contains("has no kind"), "{text}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = parse("tasks:\n  a:\n    run: x\n    retries: many\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`tasks.a`") && e.contains("whole number"), "{e}");
        let e = parse("tasks:\n  a:\n    run: x\n  a:\n    run: y\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("duplicate key `a`"), "{e}");
    }

    #[test]
    fn params_and_workflows() {
        let p = parse("params:\n  day: 2024-01-01\n  n: {type: integer, default: 3}\nworkflows:\n  quick: [a]\n  full:\n    description: all\n    tasks: [a, b]\ntasks:\n  a: echo\n  b: echo\n").unwrap();
        assert_eq!(
            p.params["day"].default,
            Some(serde_json::json!("2024-01-01"))
        );
        assert_eq!(p.params["n"].default, Some(serde_json::json!(3)));
        assert_eq!(p.workflows["full"].tasks, vec!["a", "b"]);
        let e =
            parse("params:\n  n: {type: integer, default: x}\ntasks:\n  a: echo\n").unwrap_err();
        assert!(e.to_string().contains("not an integer"), "{e}");
    }

    #[test]
    fn json_files_parse_too() {
        let p = parse_pipeline(
            Path::new("p.json"),
            "{\n\t\"tasks\": {\"a\": {\"run\": \"echo\", \"retries\": 1}}\n}\n",
            Path::new("."),
            &TaskDefaults::default(),
        )
        .unwrap();
        assert_eq!(p.tasks["a"].retry.retries, 1);
    }
}
