//! `fact`: builds a fact table's rows from an upstream dataset, swapping natural keys for
//! the surrogate keys of the dimensions it names (upstream datasets: `dimension` tasks, or
//! any dataset with the key columns), the SCD2 version valid at the event time, -1 for a
//! missing member, counted per dimension in the output. The rows are the task's dataset;
//! with `target` (a sink and its options, as in `load`) they are also loaded. The lookup is
//! [`crate::warehouse::fact`].

use super::dimension::{default_key, Names};
use super::load::deliver;
use super::{BuildContext, Metrics, TaskContext, TaskError, TaskKind, TaskOutput};
use crate::data::dataset::{self, Scratch};
use crate::data::{session, spill_dir, DataError};
use crate::quality::register;
use crate::sinks::{Sink, SINKS};
use crate::spec::error::SpecError;
use crate::warehouse::fact::{self as engine, Lookup, Plan};
use async_trait::async_trait;
use indexmap::IndexMap;
use marked_yaml::Node;
use serde::Deserialize;
use std::sync::Arc;

/// The `fact` kind.
#[derive(Debug)]
pub struct FactTask {
    from: Option<String>,
    plan: Plan,
    target: Option<(String, Arc<dyn Sink>)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    from: Option<String>,
    dimensions: Vec<LookupSpec>,
    keep_natural_keys: Option<bool>,
    /// Decoded as a sink below; here only allowed.
    #[serde(rename = "target")]
    _target: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum On {
    Same(Names),
    Pairs(IndexMap<String, String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupSpec {
    dimension: String,
    on: On,
    key: Option<String>,
    key_as: Option<String>,
    as_of: Option<String>,
}

/// Builds from `{from, dimensions: [{dimension, on, key, key_as, as_of}], keep_natural_keys,
/// target}`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn TaskKind>, SpecError> {
    let Some(map) = node.as_mapping() else {
        return Err(cx.error(
            node,
            "`fact` must be a mapping with `dimensions` (and `from`, `target`)",
        ));
    };
    let spec: Spec = cx.decode(node)?;
    if spec.dimensions.is_empty() {
        return Err(cx.error(node, "`dimensions` lists no lookups"));
    }
    let mut lookups = Vec::new();
    for l in spec.dimensions {
        let on: Vec<(String, String)> = match l.on {
            On::Same(n) => n.into_vec().into_iter().map(|c| (c.clone(), c)).collect(),
            On::Pairs(m) => m.into_iter().collect(),
        };
        if on.is_empty() {
            return Err(cx.error(
                node,
                format!("the lookup of `{}` has an empty `on`", l.dimension),
            ));
        }
        if Some(&l.dimension) == spec.from.as_ref() {
            return Err(cx.error(
                node,
                format!("`{}` is both `from` and a dimension", l.dimension),
            ));
        }
        let key = l.key.unwrap_or_else(|| default_key(&l.dimension));
        lookups.push(Lookup {
            column: l.key_as.unwrap_or_else(|| key.clone()),
            key,
            dimension: l.dimension,
            on,
            as_of: l.as_of,
        });
    }
    let target = match map.get_node("target") {
        None => None,
        Some(t) => {
            let (name, build_sink, rest) = cx.plugin(t, "target", "sink", SINKS, &["sink"])?;
            Some((name, build_sink(&rest, cx)?))
        }
    };
    Ok(Arc::new(FactTask {
        from: spec.from,
        plan: Plan {
            lookups,
            keep_natural_keys: spec.keep_natural_keys.unwrap_or(false),
        },
        target,
    }))
}

impl FactTask {
    fn dimensions(&self) -> Vec<String> {
        self.plan
            .lookups
            .iter()
            .map(|l| l.dimension.clone())
            .collect()
    }
}

#[async_trait]
impl TaskKind for FactTask {
    fn describe(&self) -> String {
        let dims = self.dimensions().join(", ");
        match &self.target {
            Some((_, sink)) => format!("fact by {dims} into {}", sink.describe()),
            None => format!("fact by {dims}"),
        }
    }

    fn check(&self, _cx: &super::CheckContext, base_dir: &std::path::Path) -> Vec<String> {
        self.target
            .as_ref()
            .map(|(_, s)| s.check(base_dir))
            .unwrap_or_default()
    }

    fn produces_dataset(&self) -> bool {
        true
    }

    fn reads(&self) -> Vec<String> {
        let mut v: Vec<String> = self.from.iter().cloned().collect();
        v.extend(self.dimensions());
        v
    }

    async fn run(&self, ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
        let dims = self.dimensions();
        let from = match &self.from {
            Some(f) => f.clone(),
            None => ctx.one_upstream("build a fact from", &dims)?,
        };
        let spill = Scratch::new(spill_dir(&ctx.data_dir, &ctx.task_id));
        let session = session(&ctx.data, spill.path())?;
        ctx.log.note(&format!("{} from {from}", self.describe()));
        let work = async {
            let fact = dataset::read(&session, &ctx.data_dir, &from).await?;
            let rows_in = fact
                .clone()
                .count()
                .await
                .map_err(|e| DataError::from_datafusion(format!("counting `{from}`"), e))?
                as u64;
            let mut frames = Vec::new();
            for d in &dims {
                frames.push(dataset::read(&session, &ctx.data_dir, d).await?);
            }
            let built = engine::build(&self.plan, &session, fact, frames).await?;
            let written = dataset::write(built.frame.clone(), &ctx.data_dir, &ctx.task_id).await?;
            if written.rows != rows_in {
                return Err(DataError::Invalid(format!(
                    "the lookups turned {rows_in} fact rows into {}: a dimension holds a natural key more than once (for an SCD2 dimension, give `as_of`; otherwise keep one row per key)",
                    written.rows
                )));
            }
            let out = dataset::read(&session, &ctx.data_dir, &ctx.task_id).await?;
            register(&session, "__cauce_fact_rows", out)?;
            let missing =
                engine::missing(&self.plan, &built, &session, "__cauce_fact_rows").await?;
            Ok::<_, DataError>((written, missing))
        };
        let (written, missing) = tokio::select! {
            r = work => r,
            _ = ctx.cancel.cancelled() => Err(DataError::Cancelled),
        }?;
        let mut report = serde_json::Map::new();
        for (l, (n, examples)) in self.plan.lookups.iter().zip(&missing) {
            if *n > 0 {
                ctx.log.note(&format!(
                    "{n} rows have no member in `{}` and point at the unknown member (-1); keys not found: {}",
                    l.dimension,
                    examples.join("; ")
                ));
            }
            report.insert(
                l.column.clone(),
                serde_json::json!({
                    "dimension": l.dimension,
                    "missing": n,
                    "examples": examples,
                }),
            );
        }
        let mut bytes_read = dataset::size_of(&dataset::dir(&ctx.data_dir, &from));
        let mut bytes_written = written.bytes;
        let loaded = match &self.target {
            None => None,
            Some((name, sink)) => {
                let (w, _) =
                    deliver(ctx, name, sink.as_ref(), std::slice::from_ref(&ctx.task_id)).await?;
                bytes_written += w.bytes;
                Some(w.rows)
            }
        };
        for d in &dims {
            bytes_read += dataset::size_of(&dataset::dir(&ctx.data_dir, d));
        }
        let missing_total: u64 = missing.iter().map(|(n, _)| n).sum();
        Ok(TaskOutput {
            value: serde_json::json!({
                "rows": written.rows,
                "missing": missing_total,
                "keys": report,
                "loaded": loaded,
            }),
            metrics: Metrics {
                rows_in: Some(written.rows),
                rows_out: Some(written.rows),
                bytes_read: Some(bytes_read),
                bytes_written: Some(bytes_written),
                ..Default::default()
            },
            dataset: Some(dataset::dir(&ctx.data_dir, &ctx.task_id)),
        })
    }
}
