//! `sql`: a DataFusion SQL query over the upstream datasets, each a table named by its task
//! id (and a task's named outputs, such as `"check@quarantine"`); the result is this task's
//! dataset. Written as `sql: "SELECT ..."`, or
//! `sql: {query: ...}` / `sql: {file: queries/x.sql}`. Run params reach the query two safe
//! ways: `$name` placeholders bound as typed values, and `{{ params.name }}` templates
//! rendered as quoted SQL literals. Only queries run: statements that create tables, write
//! files or change settings are refused. A query whose consumer reads its rows live is kept
//! as a view (its query, not its rows: [`crate::data::view`]) unless `materialize: true`.

use super::{BuildContext, Metrics, TaskContext, TaskError, TaskKind, TaskOutput};
use crate::data::dataset::Scratch;
use crate::data::live::{self, Streams};
use crate::data::{dataset, session, spill_dir, view, DataError};
use crate::spec::error::SpecError;
use crate::template::Escape;
use async_trait::async_trait;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::TableReference;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use marked_yaml::Node;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The `sql` kind.
#[derive(Debug)]
pub struct SqlTask {
    query: Option<String>,
    file: Option<PathBuf>,
    materialize: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlSpec {
    query: Option<String>,
    file: Option<String>,
    /// Write the rows even when the consumer read them live (no view).
    #[serde(default)]
    materialize: bool,
}

/// Builds from a query string, or `{query}` / `{file}`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn TaskKind>, SpecError> {
    let spec = match node.as_scalar() {
        Some(s) => SqlSpec {
            query: Some(s.as_str().to_string()),
            file: None,
            materialize: false,
        },
        None => cx.decode::<SqlSpec>(node)?,
    };
    match (&spec.query, &spec.file) {
        (Some(q), None) if q.trim().is_empty() => Err(cx.error(node, "the query is empty")),
        (Some(_), None) | (None, Some(_)) => Ok(Arc::new(SqlTask {
            query: spec.query,
            file: spec.file.map(|f| cx.base_dir.join(f)),
            materialize: spec.materialize,
        })),
        _ => Err(cx.error(node, "give the query as text or as `file`, one of them")),
    }
}

/// What [`register_upstream`] registered.
#[derive(Debug, Default)]
pub struct Registered {
    /// Every table, in order.
    pub tables: Vec<String>,
    /// Those registered as live feeds rather than datasets on disk.
    pub live: Vec<String>,
}

/// Registers the datasets of `tables` that exist in the run, or arrive live, as tables of
/// `session`, and their named outputs (`"check@quarantine"`, written in double quotes).
pub async fn register_upstream(
    session: &SessionContext,
    data_dir: &Path,
    tables: &[String],
    streams: &Streams,
    cancel: &CancellationToken,
) -> Result<Registered, DataError> {
    let mut registered = Registered::default();
    let mut all: Vec<String> = Vec::new();
    for t in tables {
        all.push(t.clone());
        all.extend(dataset::outputs(data_dir, t));
    }
    // Of several tables, one may be the small side of a join: only a live input of known
    // size is planned as one.
    let sized = all.len() > 1;
    for t in &all {
        if !streams.inputs.contains_key(t) && !dataset::exists(data_dir, t) {
            continue;
        }
        match live::table(t, streams, sized, cancel).await? {
            // A live input is its own table (not a view), so the query's scans of it count.
            Some(table) => {
                session
                    .register_table(TableReference::bare(t.as_str()), table)
                    .map_err(|e| DataError::from_datafusion(format!("registering `{t}`"), e))?;
                registered.live.push(t.clone());
            }
            None => register(session, t, dataset::read(session, data_dir, t).await?)?,
        }
        registered.tables.push(t.clone());
    }
    Ok(registered)
}

fn register(session: &SessionContext, name: &str, df: DataFrame) -> Result<(), DataError> {
    session
        .register_table(TableReference::bare(name), df.into_view())
        .map_err(|e| DataError::from_datafusion(format!("registering `{name}`"), e))?;
    Ok(())
}

/// How many times `plan` scans each table.
fn scans(plan: &LogicalPlan) -> HashMap<String, usize> {
    let mut n: HashMap<String, usize> = HashMap::new();
    let _ = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::TableScan(scan) = p {
            *n.entry(scan.table_name.table().to_string()).or_default() += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    n
}

/// A live input is a stream: a query may read it once. Of the tables registered `live`,
/// one that the query reads twice (a self-join) is read from disk once its producer
/// succeeded; one it does not read at all is dropped, so that its producer does not wait for
/// a reader that never comes. `counts` are the query's scans of each table ([`scans`]).
async fn settle_live_inputs(
    session: &SessionContext,
    counts: &HashMap<String, usize>,
    live: &[&String],
    data_dir: &Path,
    streams: &Streams,
    cancel: &CancellationToken,
) -> Result<(), DataError> {
    for name in live {
        session
            .deregister_table(TableReference::bare(name.as_str()))
            .map_err(|e| DataError::from_datafusion(format!("registering `{name}`"), e))?;
        let read_twice = counts.get(*name).copied().unwrap_or(0) > 1;
        if let (true, Some(feed)) = (read_twice, streams.inputs.get(*name)) {
            feed.outcome(cancel).await?;
            register(session, name, dataset::read(session, data_dir, name).await?)?;
        }
    }
    Ok(())
}

#[async_trait]
impl TaskKind for SqlTask {
    fn describe(&self) -> String {
        match (&self.query, &self.file) {
            (_, Some(f)) => format!("sql {}", f.display()),
            (Some(q), _) => {
                let one_line: String = q.split_whitespace().collect::<Vec<_>>().join(" ");
                let short: String = one_line.chars().take(60).collect();
                format!(
                    "sql {short}{}",
                    if one_line.len() > 60 { "..." } else { "" }
                )
            }
            _ => "sql".into(),
        }
    }

    fn check(&self, _cx: &super::CheckContext, _base_dir: &Path) -> Vec<String> {
        match &self.file {
            Some(f) if !f.is_file() => vec![format!("SQL file {} does not exist", f.display())],
            _ => vec![],
        }
    }

    fn produces_dataset(&self) -> bool {
        true
    }

    fn streams_output(&self) -> bool {
        true
    }

    fn streams_input(&self) -> bool {
        true
    }

    async fn run(&self, ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
        let text = match (&self.query, &self.file) {
            (_, Some(f)) => std::fs::read_to_string(f).map_err(|e| {
                TaskError::Invalid(format!("cannot read SQL file {}: {e}", f.display()))
            })?,
            (Some(q), _) => q.clone(),
            _ => return Err(TaskError::Invalid("no query".into())),
        };
        let query = ctx.render(&text, Escape::Sql)?;
        let spill = Scratch::new(spill_dir(&ctx.data_dir, &ctx.task_id));
        let session = session(&ctx.data, spill.path())?;
        let tables = register_upstream(
            &session,
            &ctx.data_dir,
            &ctx.upstream,
            &ctx.streams,
            &ctx.cancel,
        )
        .await?;
        ctx.log.note(&format!(
            "tables: {}",
            if tables.tables.is_empty() {
                "none".to_string()
            } else {
                tables.tables.join(", ")
            }
        ));
        let shown = ctx.log.redactor().redact_str(&query);
        ctx.log.write_bytes(format!("{shown}\n").as_bytes());
        let params: serde_json::Map<String, serde_json::Value> = if query.contains('$') {
            ctx.vars.params.clone().into_iter().collect()
        } else {
            Default::default()
        };
        let work = async {
            let plan = || async {
                session
                    .sql_with_options(&query, view::options())
                    .await
                    .map_err(|e| DataError::from_datafusion("the query", e))
            };
            let mut df = plan().await?;
            let counts = scans(df.logical_plan());
            let unsettled: Vec<&String> = tables
                .live
                .iter()
                .filter(|t| counts.get(*t).copied().unwrap_or(0) != 1)
                .collect();
            if !unsettled.is_empty() {
                // The plan holds the live tables: dropped before any is replaced.
                drop(df);
                let (dir, streams) = (&ctx.data_dir, &ctx.streams);
                settle_live_inputs(&session, &counts, &unsettled, dir, streams, &ctx.cancel)
                    .await?;
                df = plan().await?;
            }
            // Kept as a view only if running it again gives the same rows, and nothing in
            // it is a secret (the view is a file beside the data, not a redacted log).
            let redactor = ctx.log.redactor();
            let secret = |text: &str| redactor.redact_str(text) != text;
            let keep_query = !self.materialize
                && view::repeatable(df.logical_plan())
                && !secret(&query)
                && !secret(&serde_json::Value::Object(params.clone()).to_string());
            let df = view::bind(df, &query, &params)?;
            let view = keep_query.then(|| view::View {
                query: query.clone(),
                params: params.clone(),
                tables: tables.tables.clone(),
                rows: 0,
                depth: None,
            });
            let (dir, streams, cancel) = (&ctx.data_dir, &ctx.streams, &ctx.cancel);
            dataset::write_streaming(df, dir, &ctx.task_id, streams, cancel, view).await
        };
        let result = tokio::select! {
            r = work => r,
            _ = ctx.cancel.cancelled() => Err(DataError::Cancelled),
        };
        let (written, kept) = result?;
        ctx.log.note(&match kept {
            dataset::Kept::View => format!(
                "{} rows, read live downstream; kept as a view (its query, not its rows: a task that reads it later runs the query again)",
                written.rows
            ),
            dataset::Kept::RowsBelowDeepViews => format!(
                "{} rows, read live downstream; dataset {} bytes, written by running the query again, as a view over its upstream views would read through more than {} views",
                written.rows,
                written.bytes,
                view::MAX_DEPTH
            ),
            dataset::Kept::Rows => format!("{} rows, dataset {} bytes", written.rows, written.bytes),
        });
        Ok(TaskOutput {
            value: serde_json::json!({ "rows": written.rows }),
            metrics: Metrics {
                rows_out: Some(written.rows),
                bytes_written: Some(written.bytes),
                ..Default::default()
            },
            dataset: Some(dataset::dir(&ctx.data_dir, &ctx.task_id)),
        })
    }
}
