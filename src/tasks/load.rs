//! `load`: writes upstream datasets to a sink. The load's own keys are `sink` (which sink,
//! from [`crate::sinks::SINKS`]) and `from` (a task id or a list; by default its one
//! upstream task with a dataset). Every other key belongs to the sink. What makes a load
//! atomic is each sink's business; this kind streams the datasets to it and counts.

use super::{BuildContext, Metrics, TaskContext, TaskError, TaskKind, TaskOutput};
use crate::data::dataset::{Scratch, Written};
use crate::data::{dataset, live, session, spill_dir, DataError};
use crate::sinks::{Input, Sink, SinkContext, SINKS};
use crate::spec::error::SpecError;
use async_trait::async_trait;
use marked_yaml::Node;
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;

/// Keys of a load that are not the sink's.
const LOAD_KEYS: &[&str] = &["sink", "from"];

/// The `load` kind.
#[derive(Debug)]
pub struct LoadTask {
    sink_name: String,
    sink: Arc<dyn Sink>,
    from: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum From {
    One(String),
    Many(Vec<String>),
}

/// Builds from `{sink, from, ...sink keys}`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn TaskKind>, SpecError> {
    let (sink_name, build_sink, rest) = cx.plugin(node, "load", "sink", SINKS, LOAD_KEYS)?;
    let Some(map) = node.as_mapping() else {
        return Err(cx.error(node, "`load` must be a mapping"));
    };
    let from = match map.get_node("from") {
        None => vec![],
        Some(n) => match cx.decode::<From>(n)? {
            From::One(s) => vec![s],
            From::Many(v) => v,
        },
    };
    let sink = build_sink(&rest, cx)?;
    if from.len() > 1 && !sink.many_inputs() {
        return Err(cx.error(
            node,
            format!(
                "the {sink_name} sink writes one dataset; `from` names {}",
                from.len()
            ),
        ));
    }
    Ok(Arc::new(LoadTask {
        sink_name,
        sink,
        from,
    }))
}

#[async_trait]
impl TaskKind for LoadTask {
    fn describe(&self) -> String {
        if self.from.is_empty() {
            format!("load {}", self.sink.describe())
        } else {
            format!(
                "load {} into {}",
                self.from.join(", "),
                self.sink.describe()
            )
        }
    }

    fn check(&self, _cx: &super::CheckContext, base_dir: &Path) -> Vec<String> {
        self.sink.check(base_dir)
    }

    fn streams_input(&self) -> bool {
        true
    }

    fn reads(&self) -> Vec<String> {
        self.from.clone()
    }

    async fn run(&self, ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
        let from: Vec<String> = if self.from.is_empty() {
            let with_data: Vec<String> = ctx
                .upstream
                .iter()
                .filter(|t| {
                    ctx.streams.inputs.contains_key(*t) || dataset::exists(&ctx.data_dir, t)
                })
                .cloned()
                .collect();
            match with_data.len() {
                1 => with_data,
                0 => {
                    return Err(TaskError::Invalid(
                        "nothing to load: no upstream task has a dataset (depend on an extract or sql task, or name it in `from`)".into(),
                    ))
                }
                _ if self.sink.many_inputs() => with_data,
                _ => {
                    return Err(TaskError::Invalid(format!(
                        "several upstream datasets ({}); say which to load with `from`",
                        with_data.join(", ")
                    )))
                }
            }
        } else {
            self.from.clone()
        };
        let (written, bytes_read) =
            deliver(ctx, &self.sink_name, self.sink.as_ref(), &from).await?;
        Ok(TaskOutput {
            value: serde_json::json!({ "rows": written.rows }),
            metrics: Metrics {
                rows_in: Some(written.rows),
                rows_out: Some(written.rows),
                bytes_read: Some(bytes_read),
                bytes_written: Some(written.bytes),
                ..Default::default()
            },
            dataset: None,
        })
    }
}

/// Streams the datasets `from` of the run into `sink` (all or nothing, as the sink makes it)
/// and logs it; returns what was written and the bytes of the datasets read. The `fact`
/// kind loads through here too.
pub async fn deliver(
    ctx: &TaskContext,
    sink_name: &str,
    sink: &dyn Sink,
    from: &[String],
) -> Result<(Written, u64), TaskError> {
    // Both removed however the attempt ends.
    let spill = Scratch::new(spill_dir(&ctx.data_dir, &ctx.task_id));
    let scratch = ctx.scratch();
    let session = session(&ctx.data, spill.path())?;
    let mut inputs = Vec::with_capacity(from.len());
    for name in from {
        inputs.push(Input {
            name: name.clone(),
            frame: live::read(&session, &ctx.data_dir, name, &ctx.streams, &ctx.cancel).await?,
        });
    }
    let sx = SinkContext {
        task: ctx,
        session: &session,
        scratch: scratch.path().to_path_buf(),
    };
    ctx.log.note(&format!(
        "loading {} into {} ({})",
        from.join(", "),
        sink_name,
        sink.describe()
    ));
    let result = tokio::select! {
        r = sink.write(&sx, inputs) => r,
        _ = ctx.cancel.cancelled() => Err(DataError::Cancelled),
    };
    let written = result?;
    ctx.log.note(&format!(
        "{} rows, {} bytes written",
        written.rows, written.bytes
    ));
    // Counted after: a live input is complete on disk only once it has been read.
    let bytes_read = from
        .iter()
        .map(|name| dataset::size_of(&dataset::dir(&ctx.data_dir, name)))
        .sum();
    Ok((written, bytes_read))
}
