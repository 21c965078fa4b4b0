//! `validate`: data-quality rules on one upstream dataset (seed 004). Population rules fill
//! nulls, row rules (`types`, `not_null`, `unique`, `range`, `allowed`, `pattern`,
//! `references`) fail the task, quarantine the bad rows into `TASK@quarantine` or warn, and
//! dataset rules (`required_columns`, `row_count`, `freshness`) fail or warn. The valid rows
//! are the task's dataset; the validation report is its output value and is also written to
//! `.cauce/reports/RUN/TASK.validation.json`. This file decodes and checks the spec; the
//! rules engine is [`crate::quality::validate`].

use super::{BuildContext, Metrics, TaskContext, TaskError, TaskKind, TaskOutput};
use crate::data::dataset::Scratch;
use crate::data::types::parse_type;
use crate::data::{dataset, session, spill_dir, DataError};
use crate::quality::validate::{
    self as engine, Action, DateDefault, Env, Freshness, GenerateIds, Keep, Range, Reference,
    Rules, Unique, DATASET_RULES, RULES,
};
use crate::spec::error::{suggestion, SpecError};
use async_trait::async_trait;
use indexmap::IndexMap;
use marked_yaml::Node;
use serde::Deserialize;
use std::sync::Arc;

/// The `validate` kind.
#[derive(Debug)]
pub struct ValidateTask {
    from: Option<String>,
    rules: Rules,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    from: Option<String>,
    required_columns: Option<Vec<String>>,
    types: Option<IndexMap<String, String>>,
    not_null: Option<Vec<String>>,
    unique: Option<UniqueSpec>,
    range: Option<IndexMap<String, RangeSpec>>,
    allowed: Option<IndexMap<String, Vec<String>>>,
    pattern: Option<IndexMap<String, String>>,
    references: Option<IndexMap<String, RefSpec>>,
    row_count: Option<CountSpec>,
    freshness: Option<FreshSpec>,
    defaults: Option<IndexMap<String, String>>,
    default_dates: Option<IndexMap<String, DateDefault>>,
    generate_ids: Option<IdsSpec>,
    on_fail: Option<IndexMap<String, Action>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UniqueSpec {
    keys: Vec<String>,
    keep: Option<Keep>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeSpec {
    min: Option<String>,
    max: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefSpec {
    dataset: String,
    column: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CountSpec {
    min: Option<u64>,
    max: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FreshSpec {
    column: String,
    max_age: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdsSpec {
    column: String,
    prefix: Option<String>,
}

/// Builds from the rules mapping.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn TaskKind>, SpecError> {
    if node.as_mapping().is_none() {
        return Err(cx.error(
            node,
            "`validate` must be a mapping of rules, such as `not_null: [id]`",
        ));
    }
    let spec: Spec = cx.decode(node)?;
    let at = |key: &str| -> &Node {
        node.as_mapping()
            .and_then(|m| m.get_node(key))
            .unwrap_or(node)
    };
    let mut rules = Rules {
        required_columns: spec.required_columns.unwrap_or_default(),
        not_null: spec.not_null.unwrap_or_default(),
        allowed: spec.allowed.unwrap_or_default(),
        pattern: spec.pattern.unwrap_or_default(),
        defaults: spec.defaults.unwrap_or_default(),
        default_dates: spec.default_dates.unwrap_or_default(),
        ..Default::default()
    };
    for (c, t) in spec.types.unwrap_or_default() {
        let dt = parse_type(&t).map_err(|e| cx.error(at("types"), format!("column `{c}`: {e}")))?;
        rules.types.insert(c, (dt, t));
    }
    if let Some(u) = spec.unique {
        if u.keys.is_empty() {
            return Err(cx.error(at("unique"), "`unique` needs `keys`: the key columns"));
        }
        rules.unique = Some(Unique {
            keys: u.keys,
            keep: u.keep.unwrap_or(Keep::First),
        });
    }
    for (c, r) in spec.range.unwrap_or_default() {
        if r.min.is_none() && r.max.is_none() {
            return Err(cx.error(
                at("range"),
                format!("range of `{c}` needs `min`, `max` or both"),
            ));
        }
        rules.range.insert(
            c,
            Range {
                min: r.min,
                max: r.max,
            },
        );
    }
    for (c, v) in &rules.allowed {
        if v.is_empty() {
            return Err(cx.error(at("allowed"), format!("`allowed` of `{c}` lists no values")));
        }
    }
    for (c, r) in spec.references.unwrap_or_default() {
        if r.dataset.contains('@') || r.dataset.is_empty() {
            return Err(cx.error(
                at("references"),
                format!("`references` of `{c}`: `dataset` must be an upstream task id"),
            ));
        }
        rules.references.insert(
            c,
            Reference {
                dataset: r.dataset,
                column: r.column,
            },
        );
    }
    if let Some(r) = spec.row_count {
        if r.min.is_none() && r.max.is_none() {
            return Err(cx.error(at("row_count"), "`row_count` needs `min`, `max` or both"));
        }
        if let (Some(a), Some(b)) = (r.min, r.max) {
            if a > b {
                return Err(cx.error(
                    at("row_count"),
                    format!("`row_count`: min {a} is above max {b}"),
                ));
            }
        }
        rules.row_count = Some((r.min, r.max));
    }
    if let Some(f) = spec.freshness {
        let max_age = crate::spec::duration::parse_duration(&f.max_age)
            .map_err(|e| cx.error(at("freshness"), format!("`max_age`: {e}")))?;
        rules.freshness = Some(Freshness {
            column: f.column,
            max_age,
            written: f.max_age,
        });
    }
    if let Some(g) = spec.generate_ids {
        rules.generate_ids = Some(GenerateIds {
            column: g.column,
            prefix: g.prefix,
        });
    }
    // A column is filled by one population rule.
    let mut filled: Vec<&String> = rules.defaults.keys().collect();
    for c in rules
        .default_dates
        .keys()
        .chain(rules.generate_ids.as_ref().map(|g| &g.column))
    {
        if filled.contains(&c) {
            return Err(cx.error(
                node,
                format!("column `{c}` is filled by two population rules; keep one"),
            ));
        }
        filled.push(c);
    }
    for (rule, action) in spec.on_fail.unwrap_or_default() {
        if !RULES.contains(&rule.as_str()) {
            return Err(cx.error(
                at("on_fail"),
                format!(
                    "`on_fail` names `{rule}`, which is not a rule{}; rules: {}",
                    suggestion(&rule, RULES.iter().copied()),
                    RULES.join(", ")
                ),
            ));
        }
        if action == Action::Quarantine && DATASET_RULES.contains(&rule.as_str()) {
            return Err(cx.error(
                at("on_fail"),
                format!("`{rule}` is about the whole dataset, so it can `fail` or `warn`, not `quarantine`"),
            ));
        }
        rules.actions.insert(rule, action);
    }
    let any_rule = !rules.required_columns.is_empty()
        || !rules.types.is_empty()
        || !rules.not_null.is_empty()
        || rules.unique.is_some()
        || !rules.range.is_empty()
        || !rules.allowed.is_empty()
        || !rules.pattern.is_empty()
        || !rules.references.is_empty()
        || rules.row_count.is_some()
        || rules.freshness.is_some()
        || !filled.is_empty();
    if !any_rule {
        return Err(cx.error(
            node,
            format!("`validate` has no rules; rules: {}", RULES.join(", ")),
        ));
    }
    Ok(Arc::new(ValidateTask {
        from: spec.from,
        rules,
    }))
}

#[async_trait]
impl TaskKind for ValidateTask {
    fn describe(&self) -> String {
        match &self.from {
            Some(f) => format!("validate {f}"),
            None => "validate".into(),
        }
    }

    fn produces_dataset(&self) -> bool {
        true
    }

    fn reads(&self) -> Vec<String> {
        let mut v: Vec<String> = self.from.iter().cloned().collect();
        v.extend(self.rules.reads());
        v
    }

    async fn run(&self, ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
        let refs = self.rules.reads();
        let source = match &self.from {
            Some(f) => f.clone(),
            None => ctx.one_upstream("validate", &refs)?,
        };
        let logical_date = chrono::DateTime::parse_from_rfc3339(&ctx.vars.run.logical_date)
            .map(|d| d.with_timezone(&chrono::Utc))
            .map_err(|e| TaskError::Invalid(format!("the run's logical date: {e}")))?;
        let spill = Scratch::new(spill_dir(&ctx.data_dir, &ctx.task_id));
        // One partition: rows are numbered in file order, the same on every attempt.
        let mut settings = (*ctx.data).clone();
        settings.threads = 1;
        let session = session(&settings, spill.path())?;
        let input = dataset::read(&session, &ctx.data_dir, &source).await?;
        let mut ref_frames = Vec::new();
        for r in &refs {
            ref_frames.push((r.clone(), dataset::read(&session, &ctx.data_dir, r).await?));
        }
        let bytes_read = dataset::size_of(&dataset::dir(&ctx.data_dir, &source));
        ctx.log.note(&format!("validating {source}"));
        let env = Env {
            source: &source,
            task_id: &ctx.task_id,
            data_dir: &ctx.data_dir,
            logical_date,
            now: chrono::Utc::now(),
        };
        let work = engine::run(&self.rules, &session, input, ref_frames, &env);
        let outcome = tokio::select! {
            r = work => r,
            _ = ctx.cancel.cancelled() => Err(DataError::Cancelled),
        }?;
        let text = serde_json::to_string_pretty(&outcome.report).unwrap_or_default();
        ctx.log.write_bytes(format!("{text}\n").as_bytes());
        if let Some(path) = report_path(ctx) {
            let written = path
                .parent()
                .map(std::fs::create_dir_all)
                .unwrap_or(Ok(()))
                .and_then(|_| std::fs::write(&path, &text));
            match written {
                Ok(()) => ctx.log.note(&format!("report: {}", path.display())),
                Err(e) => ctx
                    .log
                    .note(&format!("could not write {}: {e}", path.display())),
            }
        }
        if let Some(msg) = outcome.failure {
            return Err(TaskError::Invalid(format!(
                "validation of `{source}`: {msg}"
            )));
        }
        ctx.log.note(&format!(
            "{} rows in, {} valid, {} quarantined",
            outcome.rows_in, outcome.rows_out, outcome.rows_rejected
        ));
        Ok(TaskOutput {
            value: outcome.report,
            metrics: Metrics {
                rows_in: Some(outcome.rows_in),
                rows_out: Some(outcome.rows_out),
                rows_rejected: Some(outcome.rows_rejected),
                bytes_read: Some(bytes_read),
                bytes_written: Some(outcome.bytes),
            },
            dataset: Some(dataset::dir(&ctx.data_dir, &ctx.task_id)),
        })
    }
}

/// `.cauce/reports/RUN/TASK.validation.json`: the run's data folder is `.cauce/data/RUN`.
fn report_path(ctx: &TaskContext) -> Option<std::path::PathBuf> {
    let state = ctx.data_dir.parent()?.parent()?;
    Some(
        state
            .join("reports")
            .join(&ctx.run_id)
            .join(format!("{}.validation.json", ctx.task_id)),
    )
}
