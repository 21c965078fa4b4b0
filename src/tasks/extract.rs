//! `extract`: reads a source into the task's dataset. The extract's own keys are `source`
//! (which source, from [`crate::sources::SOURCES`]), `columns` (declared types, applied to
//! any source) and `incremental` (`{cursor, initial}`: only rows whose cursor is past the
//! value the last successful run reached; the new value is the task's output and the engine
//! commits it only when the whole run succeeds). Every other key belongs to the source.

use super::{BuildContext, Metrics, TaskContext, TaskError, TaskKind, TaskOutput};
use crate::data::dataset::Scratch;
use crate::data::types::{self, ColumnType, RawColumn};
use crate::data::{dataset, session, spill_dir, DataError};
use crate::sources::{Source, SourceContext, SOURCES};
use crate::spec::error::SpecError;
use async_trait::async_trait;
use datafusion::prelude::{cast, lit, DataFrame};
use indexmap::IndexMap;
use marked_yaml::Node;
use serde::Deserialize;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Keys of an extract that are not the source's.
const EXTRACT_KEYS: &[&str] = &["source", "columns", "incremental"];

/// The `extract` kind.
#[derive(Debug)]
pub struct ExtractTask {
    source_name: String,
    source: Arc<dyn Source>,
    columns: IndexMap<String, ColumnType>,
    incremental: Option<Incremental>,
}

/// `incremental:` of an extract.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incremental {
    /// The column whose largest value is kept.
    pub cursor: String,
    /// The value before the first successful run (all rows when absent).
    pub initial: Option<serde_json::Value>,
}

/// Builds from `{source, columns, incremental, ...source keys}`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn TaskKind>, SpecError> {
    let (source_name, build_source, rest) =
        cx.plugin(node, "extract", "source", SOURCES, EXTRACT_KEYS)?;
    let source = build_source(&rest, cx)?;
    let Some(map) = node.as_mapping() else {
        return Err(cx.error(node, "`extract` must be a mapping"));
    };
    let columns = match map.get_node("columns") {
        None => IndexMap::new(),
        Some(n) => parse_columns(n, cx)?,
    };
    let incremental = map
        .get_node("incremental")
        .map(|n| cx.decode::<Incremental>(n))
        .transpose()?;
    Ok(Arc::new(ExtractTask {
        source_name,
        source,
        columns,
        incremental,
    }))
}

/// Parses a `columns:` mapping of declared types.
pub fn parse_columns(
    node: &Node,
    cx: &BuildContext,
) -> Result<IndexMap<String, ColumnType>, SpecError> {
    let raw: IndexMap<String, RawColumn> = cx.decode(node)?;
    let mut out = IndexMap::new();
    for (name, c) in raw {
        let ct = c
            .build()
            .map_err(|e| cx.error(node, format!("column `{name}`: {e}")))?;
        out.insert(name, ct);
    }
    Ok(out)
}

/// Keeps the rows whose `cursor` is past `after` (compared in the cursor's own type).
fn after_cursor(
    df: DataFrame,
    cursor: &str,
    after: &serde_json::Value,
) -> Result<DataFrame, DataError> {
    let Ok(field) = df.schema().field_with_unqualified_name(cursor) else {
        return Err(DataError::Invalid(format!(
            "the incremental cursor `{cursor}` is not a column of the data; columns: {}",
            df.schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let ty = field.data_type().clone();
    let text = match after {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    df.filter(types::column(cursor).gt(cast(lit(text), ty)))
        .map_err(|e| DataError::from_datafusion("applying the incremental cursor", e))
}

/// The largest cursor value in a written dataset, as text (`None` when it has no rows).
async fn max_cursor(
    session: &datafusion::prelude::SessionContext,
    data_dir: &Path,
    task_id: &str,
    cursor: &str,
) -> Result<Option<String>, DataError> {
    let df = dataset::read(session, data_dir, task_id).await?;
    let batches = df
        .aggregate(
            vec![],
            vec![datafusion::functions_aggregate::expr_fn::max(
                types::column(cursor),
            )],
        )
        .map_err(|e| DataError::from_datafusion("reading the cursor", e))?
        .collect()
        .await
        .map_err(|e| DataError::from_datafusion("reading the cursor", e))?;
    let Some(b) = batches.first() else {
        return Ok(None);
    };
    if b.num_rows() == 0 || b.column(0).is_null(0) {
        return Ok(None);
    }
    // Timestamps print as `2024-01-05T10:00:00`, which casts back to the same type.
    datafusion::arrow::util::display::array_value_to_string(b.column(0), 0)
        .map(Some)
        .map_err(|e| DataError::io("reading the cursor", e))
}

#[async_trait]
impl TaskKind for ExtractTask {
    fn describe(&self) -> String {
        let mut d = format!("extract {}", self.source.describe());
        if let Some(i) = &self.incremental {
            d.push_str(&format!(" (incremental on {})", i.cursor));
        }
        d
    }

    fn check(&self, _cx: &super::CheckContext, base_dir: &Path) -> Vec<String> {
        self.source.check(base_dir)
    }

    fn watermark_initial(&self) -> Option<serde_json::Value> {
        self.incremental
            .as_ref()
            .map(|i| i.initial.clone().unwrap_or(serde_json::Value::Null))
    }

    fn produces_dataset(&self) -> bool {
        true
    }

    fn streams_output(&self) -> bool {
        true
    }

    async fn run(&self, ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
        // Both removed however the attempt ends.
        let spill = Scratch::new(spill_dir(&ctx.data_dir, &ctx.task_id));
        let scratch = ctx.scratch();
        let session = session(&ctx.data, spill.path())?;
        // The engine gave the last committed cursor, or `initial`.
        let previous = self
            .incremental
            .as_ref()
            .and_then(|_| (!ctx.vars.watermark.is_null()).then(|| ctx.vars.watermark.clone()));
        let sx = SourceContext {
            task: ctx,
            session: &session,
            columns: &self.columns,
            watermark: previous.as_ref(),
            bytes_read: Arc::new(AtomicU64::new(0)),
            input_bytes: Arc::new(AtomicU64::new(0)),
            scratch: scratch.path().to_path_buf(),
        };
        ctx.log.note(&format!(
            "reading {} ({})",
            self.source_name,
            self.source.describe()
        ));
        let work = async {
            let df = self.source.read(&sx).await?;
            if let Some(live) = &ctx.streams.out {
                live.size_hint(sx.input_bytes.load(Ordering::Relaxed));
            }
            let df = types::apply(df, &self.columns)?;
            let df = match (&self.incremental, &previous) {
                (Some(i), Some(after)) => {
                    ctx.log
                        .note(&format!("incremental: rows with {} > {after}", i.cursor));
                    after_cursor(df, &i.cursor, after)?
                }
                _ => df,
            };
            dataset::write_streaming(
                df,
                &ctx.data_dir,
                &ctx.task_id,
                &ctx.streams,
                &ctx.cancel,
                None,
            )
            .await
            .map(|(written, _)| written)
        };
        let result = tokio::select! {
            r = work => r,
            _ = ctx.cancel.cancelled() => Err(DataError::Cancelled),
        };
        let result = match result {
            Ok(w) => Ok(w),
            Err(e) => Err(self.source.explain(&sx, e).await),
        };
        let written = result?;
        let bytes_read = sx.bytes_read.load(Ordering::Relaxed);
        ctx.log.note(&format!(
            "{} rows, {} bytes read, dataset {} bytes",
            written.rows, bytes_read, written.bytes
        ));
        let mut value = serde_json::json!({ "rows": written.rows });
        if let Some(i) = &self.incremental {
            let reached = max_cursor(&session, &ctx.data_dir, &ctx.task_id, &i.cursor).await?;
            let next = reached
                .map(serde_json::Value::String)
                .or_else(|| previous.clone());
            ctx.log.note(&format!(
                "incremental: cursor {} reaches {}",
                i.cursor,
                next.as_ref()
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "nothing".into())
            ));
            value["watermark"] = serde_json::json!({
                "cursor": i.cursor,
                "previous": previous,
                "value": next,
            });
        }
        Ok(TaskOutput {
            value,
            metrics: Metrics {
                rows_in: Some(written.rows),
                rows_out: Some(written.rows),
                bytes_read: Some(bytes_read),
                bytes_written: Some(written.bytes),
                ..Default::default()
            },
            dataset: Some(dataset::dir(&ctx.data_dir, &ctx.task_id)),
        })
    }
}
