//! `reconcile`: compares two upstream datasets on key columns (seed 004's symmetry check):
//! rows only on the left, only on the right, and matched rows whose compared columns differ
//! become the named outputs `TASK@only_left`, `TASK@only_right` and `TASK@different`; with
//! `merge: {priority: left|right}` the merge is the task's dataset. The report (counts and a
//! few examples) is the output value. The comparison itself is [`crate::quality::reconcile`].

use super::{BuildContext, Metrics, TaskContext, TaskError, TaskKind, TaskOutput};
use crate::data::dataset::Scratch;
use crate::data::{dataset, session, spill_dir, DataError};
use crate::quality::reconcile::{self as engine, Plan, Priority};
use crate::spec::error::SpecError;
use async_trait::async_trait;
use marked_yaml::Node;
use serde::Deserialize;
use std::sync::Arc;

/// The `reconcile` kind.
#[derive(Debug)]
pub struct ReconcileTask {
    plan: Plan,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    left: String,
    right: String,
    keys: Vec<String>,
    columns: Option<Vec<String>>,
    merge: Option<MergeSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MergeSpec {
    priority: Priority,
}

/// Builds from `{left, right, keys, columns, merge}`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn TaskKind>, SpecError> {
    if node.as_mapping().is_none() {
        return Err(cx.error(
            node,
            "`reconcile` must be a mapping with `left`, `right` and `keys`",
        ));
    }
    let spec: Spec = cx.decode(node)?;
    if spec.keys.is_empty() {
        return Err(cx.error(node, "`keys` lists no columns; name the key columns"));
    }
    if spec.left == spec.right {
        return Err(cx.error(node, format!("`left` and `right` are both `{}`", spec.left)));
    }
    if let Some(c) = spec
        .columns
        .iter()
        .flatten()
        .find(|c| spec.keys.contains(c))
    {
        return Err(cx.error(
            node,
            format!("`{c}` is a key; `columns` lists the non-key columns to compare"),
        ));
    }
    Ok(Arc::new(ReconcileTask {
        plan: Plan {
            left: spec.left,
            right: spec.right,
            keys: spec.keys,
            columns: spec.columns,
            merge: spec.merge.map(|m| m.priority),
        },
    }))
}

#[async_trait]
impl TaskKind for ReconcileTask {
    fn describe(&self) -> String {
        format!(
            "reconcile {} with {} on {}",
            self.plan.left,
            self.plan.right,
            self.plan.keys.join(", ")
        )
    }

    fn produces_dataset(&self) -> bool {
        self.plan.merge.is_some()
    }

    fn reads(&self) -> Vec<String> {
        vec![self.plan.left.clone(), self.plan.right.clone()]
    }

    async fn run(&self, ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
        let spill = Scratch::new(spill_dir(&ctx.data_dir, &ctx.task_id));
        let session = session(&ctx.data, spill.path())?;
        let left = dataset::read(&session, &ctx.data_dir, &self.plan.left).await?;
        let right = dataset::read(&session, &ctx.data_dir, &self.plan.right).await?;
        let bytes_read = dataset::size_of(&dataset::dir(&ctx.data_dir, &self.plan.left))
            + dataset::size_of(&dataset::dir(&ctx.data_dir, &self.plan.right));
        ctx.log.note(&self.describe());
        let work = engine::run(
            &self.plan,
            &session,
            left,
            right,
            &ctx.data_dir,
            &ctx.task_id,
        );
        let outcome = tokio::select! {
            r = work => r,
            _ = ctx.cancel.cancelled() => Err(DataError::Cancelled),
        }?;
        ctx.log.note(&format!(
            "only left {}, only right {}, different {}",
            outcome.report["only_left"], outcome.report["only_right"], outcome.report["different"]
        ));
        Ok(TaskOutput {
            value: outcome.report,
            metrics: Metrics {
                rows_in: Some(outcome.rows_in),
                rows_out: Some(outcome.rows_out),
                bytes_read: Some(bytes_read),
                bytes_written: Some(outcome.bytes),
                ..Default::default()
            },
            dataset: self
                .plan
                .merge
                .map(|_| dataset::dir(&ctx.data_dir, &ctx.task_id)),
        })
    }
}
