//! `dimension`: maintains a dimension table (PostgreSQL or Parquet) from an upstream
//! dataset with one row per natural key: stable surrogate keys, SCD type 1 or 2, and the
//! unknown member (key -1). The task's dataset is the whole dimension after the merge (what
//! a `fact` task looks keys up in); `TASK@changes` holds the rows this run wrote. The merge
//! is [`crate::warehouse::dimension`]; reading and writing the table,
//! [`crate::warehouse::target`].

use super::{BuildContext, Metrics, TaskContext, TaskError, TaskKind, TaskOutput};
use crate::data::dataset::{self, Scratch};
use crate::data::types::quote_ident;
use crate::data::{session, spill_dir, DataError};
use crate::quality::{frame, register};
use crate::sinks::{Input, SinkContext};
use crate::spec::error::SpecError;
use crate::warehouse::dimension::{self as merge, Plan, Scd, CHANGE};
use crate::warehouse::target::Target;
use async_trait::async_trait;
use indexmap::IndexMap;
use marked_yaml::Node;
use serde::Deserialize;
use std::sync::Arc;

/// The `dimension` kind.
#[derive(Debug)]
pub struct DimensionTask {
    from: Option<String>,
    plan: Plan,
    target: Target,
}

/// One name or a list of names.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Names {
    One(String),
    Many(Vec<String>),
}

impl Names {
    pub(crate) fn into_vec(self) -> Vec<String> {
        match self {
            Names::One(s) => vec![s],
            Names::Many(v) => v,
        }
    }
}

/// A value written in YAML as text, a number or a boolean.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn text(self) -> String {
        match self {
            Scalar::Text(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    from: Option<String>,
    natural_key: Names,
    key: Option<String>,
    scd: Option<u8>,
    tracked: Option<Vec<String>>,
    effective: Option<String>,
    unknown: Option<IndexMap<String, Scalar>>,
    target: TargetSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetSpec {
    sink: String,
    url: Option<String>,
    table: Option<String>,
    path: Option<String>,
}

/// The default surrogate key of a dimension or lookup named `name`: `dim_cliente` →
/// `cliente_key`.
pub fn default_key(name: &str) -> String {
    format!("{}_key", name.strip_prefix("dim_").unwrap_or(name))
}

/// Builds from `{from, natural_key, key, scd, tracked, effective, unknown, target}`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn TaskKind>, SpecError> {
    if node.as_mapping().is_none() {
        return Err(cx.error(
            node,
            "`dimension` must be a mapping with `natural_key` and `target`",
        ));
    }
    let spec: Spec = cx.decode(node)?;
    let natural_key = spec.natural_key.into_vec();
    if natural_key.is_empty() {
        return Err(cx.error(node, "`natural_key` names no columns"));
    }
    let key = spec.key.unwrap_or_else(|| default_key(cx.task_id));
    if natural_key.contains(&key) {
        return Err(cx.error(
            node,
            format!("the surrogate key `{key}` is also in `natural_key`; name it apart with `key`"),
        ));
    }
    let scd = match spec.scd.unwrap_or(1) {
        1 => {
            if spec.tracked.is_some() || spec.effective.is_some() {
                return Err(cx.error(
                    node,
                    "`tracked` and `effective` belong to `scd: 2` (type 1 overwrites every column)",
                ));
            }
            Scd::One
        }
        2 => Scd::Two {
            tracked: spec.tracked,
            effective: spec.effective,
        },
        n => {
            return Err(cx.error(
                node,
                format!("`scd: {n}` is not supported; use 1 (overwrite) or 2 (versions)"),
            ))
        }
    };
    let t = spec.target;
    let target = match (t.sink.as_str(), t.url, t.table, t.path) {
        ("postgres", Some(url), Some(table), None) => {
            if !table.contains("{{") {
                crate::data::postgres::TableName::parse(&table).map_err(|e| cx.error(node, e))?;
            }
            Target::Postgres { url, table }
        }
        ("postgres", ..) => {
            return Err(cx.error(
                node,
                "a postgres `target` takes `url` and `table` (NAME or SCHEMA.NAME)",
            ))
        }
        ("parquet", None, None, Some(path)) => Target::Parquet { path },
        ("parquet", ..) => {
            return Err(cx.error(
                node,
                "a parquet `target` takes `path` (a .parquet file or a folder)",
            ))
        }
        (other, ..) => {
            return Err(cx.error(
                node,
                format!(
                    "a dimension lives in `sink: postgres` or `sink: parquet`, not `{other}`{}",
                    crate::spec::error::suggestion(other, ["postgres", "parquet"])
                ),
            ))
        }
    };
    let unknown = spec
        .unknown
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.text()))
        .collect();
    Ok(Arc::new(DimensionTask {
        from: spec.from,
        plan: Plan {
            natural_key,
            key,
            scd,
            unknown,
        },
        target,
    }))
}

#[async_trait]
impl TaskKind for DimensionTask {
    fn describe(&self) -> String {
        let scd = match self.plan.scd {
            Scd::One => "SCD1",
            Scd::Two { .. } => "SCD2",
        };
        format!(
            "dimension {} ({scd}, key {} by {})",
            self.target.describe(),
            self.plan.key,
            self.plan.natural_key.join(", ")
        )
    }

    fn produces_dataset(&self) -> bool {
        true
    }

    fn reads(&self) -> Vec<String> {
        self.from.iter().cloned().collect()
    }

    async fn run(&self, ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
        let from = match &self.from {
            Some(f) => f.clone(),
            None => ctx.one_upstream("build a dimension from", &[])?,
        };
        let effective_at = chrono::DateTime::parse_from_rfc3339(&ctx.vars.run.logical_date)
            .map(|d| d.with_timezone(&chrono::Utc))
            .map_err(|e| TaskError::Invalid(format!("the run's logical date: {e}")))?;
        let spill = Scratch::new(spill_dir(&ctx.data_dir, &ctx.task_id));
        let scratch = ctx.scratch();
        let session = session(&ctx.data, spill.path())?;
        let sx = SinkContext {
            task: ctx,
            session: &session,
            scratch: scratch.path().to_path_buf(),
        };
        ctx.log.note(&format!("{} from {from}", self.describe()));
        let work = async {
            let incoming = dataset::read(&session, &ctx.data_dir, &from).await?;
            let rows_in = incoming
                .clone()
                .count()
                .await
                .map_err(|e| DataError::from_datafusion(format!("counting `{from}`"), e))?
                as u64;
            let opened = self.target.open(&sx).await?;
            let merged = merge::merge(
                &self.plan,
                &session,
                incoming,
                opened.current.clone(),
                effective_at,
            )
            .await?;
            // The merge, once, then its two views.
            dataset::write(merged, scratch.path(), "merged").await?;
            let merged = dataset::read(&session, scratch.path(), "merged").await?;
            register(&session, "__cauce_merged", merged)?;
            let counts = merge::counts(&session, "__cauce_merged").await?;
            let cols: Vec<String> = frame(&session, "SELECT * FROM \"__cauce_merged\" LIMIT 0")
                .await?
                .schema()
                .fields()
                .iter()
                .filter(|f| f.name() != CHANGE)
                .map(|f| quote_ident(f.name()))
                .collect();
            let cols = cols.join(", ");
            let key = quote_ident(&self.plan.key);
            let change = quote_ident(CHANGE);
            let whole = frame(
                &session,
                &format!("SELECT {cols} FROM \"__cauce_merged\" ORDER BY {key}"),
            )
            .await?;
            let state = dataset::write(whole, &ctx.data_dir, &ctx.task_id).await?;
            let changes_name = dataset::output_name(&ctx.task_id, "changes");
            let changes = frame(
                &session,
                &format!(
                    "SELECT {cols} FROM \"__cauce_merged\" WHERE {change} <> 'same' ORDER BY {key}"
                ),
            )
            .await?;
            let changed = dataset::write(changes, &ctx.data_dir, &changes_name).await?;
            let written = self
                .target
                .apply(
                    &sx,
                    &self.plan.key,
                    Input {
                        name: changes_name.clone(),
                        frame: dataset::read(&session, &ctx.data_dir, &changes_name).await?,
                    },
                    Input {
                        name: ctx.task_id.clone(),
                        frame: dataset::read(&session, &ctx.data_dir, &ctx.task_id).await?,
                    },
                )
                .await?;
            drop(opened);
            Ok::<_, DataError>((rows_in, counts, state, changed, written))
        };
        let (rows_in, counts, state, changed, written) = tokio::select! {
            r = work => r,
            _ = ctx.cancel.cancelled() => Err(DataError::Cancelled),
        }?;
        let n = |k: &str| counts.get(k).copied().unwrap_or(0);
        ctx.log.note(&format!(
            "{} members new, {} new versions, {} updated in place, {} unchanged; {} rows in the dimension",
            n("new"),
            n("version"),
            n("updated"),
            n("same"),
            state.rows
        ));
        Ok(TaskOutput {
            value: serde_json::json!({
                "rows": state.rows,
                "new": n("new"),
                "versions": n("version"),
                "closed": n("closed"),
                "updated": n("updated"),
                "unchanged": n("same"),
                "unknown_member_added": n("unknown") > 0,
                "written": changed.rows,
            }),
            metrics: Metrics {
                rows_in: Some(rows_in),
                rows_out: Some(changed.rows),
                bytes_read: Some(dataset::size_of(&dataset::dir(&ctx.data_dir, &from))),
                bytes_written: Some(written.bytes),
                ..Default::default()
            },
            dataset: Some(dataset::dir(&ctx.data_dir, &ctx.task_id)),
        })
    }
}
