//! `pipeline`: run another pipeline of the project as one task (seed 000's master
//! pipeline). The child is a run of its own, recorded in the store with its parent; this
//! task succeeds when the child run succeeds, and cancelling it cancels the child.

use super::{BuildContext, CheckContext, TaskContext, TaskError, TaskKind, TaskOutput};
use crate::spec::error::{suggestion, SpecError};
use crate::state::RunState;
use crate::template::Escape;
use async_trait::async_trait;
use indexmap::IndexMap;
use marked_yaml::Node;
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;

/// The `pipeline` kind.
#[derive(Debug)]
pub struct PipelineTask {
    name: String,
    params: IndexMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineSpec {
    name: String,
    params: Option<IndexMap<String, String>>,
}

/// Builds from `pipeline: NAME` or `pipeline: {name: NAME, params: {k: v}}`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn TaskKind>, SpecError> {
    let spec = match node.as_scalar() {
        Some(s) => PipelineSpec {
            name: s.as_str().to_string(),
            params: None,
        },
        None => cx.decode::<PipelineSpec>(node)?,
    };
    Ok(Arc::new(PipelineTask {
        name: spec.name,
        params: spec.params.unwrap_or_default(),
    }))
}

#[async_trait]
impl TaskKind for PipelineTask {
    fn describe(&self) -> String {
        format!("pipeline: {}", self.name)
    }

    fn check(&self, cx: &CheckContext, _base_dir: &Path) -> Vec<String> {
        match &cx.pipelines {
            Some(names) if !names.iter().any(|n| n == &self.name) => vec![format!(
                "unknown pipeline `{}`{}",
                self.name,
                suggestion(&self.name, names.iter().map(|s| s.as_str()))
            )],
            None => {
                vec!["the `pipeline` kind needs a project (a cauce.yaml with pipelines/)".into()]
            }
            _ => vec![],
        }
    }

    async fn run(&self, ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
        let runner = ctx
            .runner
            .clone()
            .ok_or_else(|| TaskError::Invalid("this run cannot start child pipelines".into()))?;
        let mut params = Vec::new();
        for (k, v) in &self.params {
            params.push((k.clone(), ctx.render(v, Escape::Plain)?));
        }
        ctx.log.note(&format!("starting pipeline `{}`", self.name));
        let (run_id, state) = runner.run_child(&self.name, params, ctx).await?;
        ctx.log.note(&format!("child run {run_id} ended {state}"));
        let value = serde_json::json!({ "run_id": run_id, "state": state.as_str() });
        match state {
            RunState::Success => Ok(TaskOutput {
                value,
                ..Default::default()
            }),
            RunState::Cancelled => Err(TaskError::Cancelled),
            other => Err(TaskError::Failed(format!(
                "child run {run_id} of pipeline `{}` ended {other}",
                self.name
            ))),
        }
    }
}
