//! Views: the dataset of a `sql` task kept as its query instead of its rows. When the task
//! downstream read every batch live ([`super::live`]), the rows on disk would serve only a
//! later reader (a retry of that task, or a task of a `cauce retry`), and they cost as many
//! bytes as the rows are (the benchmark's T1: 491 MB of page cache to filter a CSV). So the
//! task writes [`FILE`] in its dataset's folder instead: the query as it ran, its bound
//! params and the tables it read. A reader runs that query again over the same upstream
//! datasets, which are checkpoints of their own and do not change for the run's life (a
//! view over a view reads through both). Only a query that gives the same rows when run
//! again is kept so ([`repeatable`]); others, and a task with `materialize: true`, write
//! their rows as any dataset.
//!
//! What it owns: the file, what counts as repeatable, and planning a task's query (the
//! restrictions on what a query may do, the binding of `$name` params) for the `sql` task
//! and for readers of a view alike. What it does not: when a task streams (the
//! coordinator), a dataset's files ([`super::files`]), where folders go ([`super::dataset`]).

use super::{dataset, DataError};
use datafusion::catalog::MemoryCatalogProviderList;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{ParamValues, ScalarValue, TableReference};
use datafusion::execution::context::SQLOptions;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{Distinct, Expr, LogicalPlan, Volatility};
use datafusion::prelude::{DataFrame, SessionContext};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// The file that makes a dataset's folder a view.
pub const FILE: &str = "view.json";

/// Views read through at most this many views below them (each level is a task upstream
/// of the last): every level nests the query plan deeper, and the planner's recursion must
/// stay within a thread's 2 MiB stack (32 levels overflowed it in a debug build). A `sql`
/// task whose view would be deeper writes its rows instead ([`depth_below`]).
pub const MAX_DEPTH: usize = 16;

/// Aggregate functions whose result does not depend on the order of their input rows
/// (a sum of floating-point numbers may differ in its last digits, as with any re-run).
const REPEATABLE_AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "median",
    "bool_and",
    "bool_or",
    "bit_and",
    "bit_or",
    "bit_xor",
    "stddev",
    "stddev_pop",
    "var",
    "var_pop",
    "covar_samp",
    "covar_pop",
    "corr",
    "approx_distinct",
    "grouping",
];

/// A dataset kept as its query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// The query as it ran (templates rendered).
    pub query: String,
    /// The `$name` params bound to it (none when it has no placeholder).
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// The run's datasets it reads, each registered as a table of that name.
    pub tables: Vec<String>,
    /// The rows it gave when it ran.
    #[serde(default)]
    pub rows: u64,
    /// How many views a reader reads through to reach rows, this one included (1 when its
    /// tables are rows on disk); views written before it was recorded lack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
}

impl View {
    /// Writes the view into the (new, empty) folder `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), DataError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| DataError::io(format!("cannot create {}", dir.display()), e))?;
        let path = dir.join(FILE);
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| DataError::io(format!("writing {}", path.display()), e))?;
        std::fs::write(&path, text)
            .map_err(|e| DataError::io(format!("writing {}", path.display()), e))
    }

    /// The view in dataset folder `dir`, if it is one.
    pub fn load(dir: &Path) -> Result<Option<View>, DataError> {
        let path = dir.join(FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DataError::io(format!("reading {}", path.display()), e)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| DataError::Io(format!("{} is damaged: {e}", path.display())))
    }
}

/// What a task's query may do: read, never create tables, write files or change settings.
pub fn options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// A run param as a typed SQL value.
pub fn scalar(v: &serde_json::Value) -> ScalarValue {
    match v {
        serde_json::Value::Null => ScalarValue::Utf8(None),
        serde_json::Value::Bool(b) => ScalarValue::Boolean(Some(*b)),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => ScalarValue::Int64(Some(i)),
            None => ScalarValue::Float64(n.as_f64()),
        },
        serde_json::Value::String(s) => ScalarValue::Utf8(Some(s.clone())),
        other => ScalarValue::Utf8(Some(other.to_string())),
    }
}

/// Binds `params` to the `$name` placeholders of `df` (`query` is its text: a query
/// without `$` has none, and is left as it is).
pub fn bind(
    df: DataFrame,
    query: &str,
    params: &serde_json::Map<String, serde_json::Value>,
) -> Result<DataFrame, DataError> {
    if !query.contains('$') {
        return Ok(df);
    }
    let values: Vec<(String, ScalarValue)> =
        params.iter().map(|(k, v)| (k.clone(), scalar(v))).collect();
    df.with_param_values(ParamValues::from(values))
        .map_err(|e| DataError::from_datafusion("binding params", e))
}

/// Whether `plan` (as planned from SQL, before optimisation) gives the same rows each time
/// it runs over the same tables: no function that may answer differently (`random()`,
/// `now()`), no `LIMIT` or `DISTINCT ON` (which rows they keep depends on the order rows
/// arrive in), no window function (ties in its order), and only aggregates that do not
/// depend on the order of their input ([`REPEATABLE_AGGREGATES`]).
pub fn repeatable(plan: &LogicalPlan) -> bool {
    let next = |ok: bool| match ok {
        true => TreeNodeRecursion::Continue,
        false => TreeNodeRecursion::Stop,
    };
    let mut ok = true;
    let _ = plan.apply_with_subqueries(|p| {
        ok = !matches!(
            p,
            LogicalPlan::Limit(_) | LogicalPlan::Window(_) | LogicalPlan::Distinct(Distinct::On(_))
        ) && !matches!(p, LogicalPlan::Sort(s) if s.fetch.is_some());
        if ok {
            p.apply_expressions(|e| {
                ok = !e.exists(|e| Ok(!repeatable_expr(e)))?;
                Ok(next(ok))
            })?;
        }
        Ok(next(ok))
    });
    ok
}

fn repeatable_expr(e: &Expr) -> bool {
    match e {
        Expr::ScalarFunction(f) => f.func.signature().volatility == Volatility::Immutable,
        Expr::AggregateFunction(a) => REPEATABLE_AGGREGATES.contains(&a.func.name()),
        Expr::WindowFunction(_) => false,
        _ => true,
    }
}

/// How many views a reader of the run's datasets `tables` reads through, at most (0 when
/// all are rows on disk): what a view over them would add one to.
pub fn depth_below(run_data_dir: &Path, tables: &[String]) -> Result<usize, DataError> {
    depth_at(run_data_dir, tables, 0)
}

fn depth_at(run_data_dir: &Path, tables: &[String], level: usize) -> Result<usize, DataError> {
    let mut most = 0;
    for t in tables {
        let Some(view) = View::load(&dataset::dir(run_data_dir, t))? else {
            continue;
        };
        let d = match view.depth {
            Some(d) => d,
            // Unrecorded (an older view): counted, as far as a reader could go.
            None if level >= MAX_DEPTH => MAX_DEPTH + 1,
            None => (depth_at(run_data_dir, &view.tables, level + 1)? + 1).min(MAX_DEPTH + 1),
        };
        most = most.max(d);
    }
    Ok(most)
}

/// The rows of the view in dataset folder `dir` of the run, as a frame of `ctx` ([`rows`]).
/// `readers` are the tasks whose views led to this one (`task_id`'s), outermost first.
pub async fn read(
    ctx: &SessionContext,
    run_data_dir: &Path,
    task_id: &str,
    view: View,
    readers: &[String],
) -> Result<DataFrame, DataError> {
    if readers.len() >= MAX_DEPTH {
        return Err(DataError::Io(format!(
            "the view of `{task_id}` in {} reads through more than {MAX_DEPTH} other views",
            run_data_dir.display()
        )));
    }
    let mut chain = readers.to_vec();
    chain.push(task_id.to_string());
    if let Some(t) = view.tables.iter().find(|t| chain.contains(t)) {
        return Err(DataError::Io(format!(
            "the view of `{task_id}` in {} is damaged: it reads `{t}`, which reads it ({} -> {t})",
            run_data_dir.display(),
            chain.join(" -> ")
        )));
    }
    rows(ctx, run_data_dir, &view, &chain).await
}

/// The rows of `view` as a frame of `ctx`: its query planned again over the run's
/// datasets, in a session of its own (its tables' names are its own business) that shares
/// `ctx`'s memory budget and settings. `readers` are the views that led here, outermost
/// first.
pub async fn rows(
    ctx: &SessionContext,
    run_data_dir: &Path,
    view: &View,
    readers: &[String],
) -> Result<DataFrame, DataError> {
    let own = own_session(ctx.state());
    for t in &view.tables {
        let df = Box::pin(dataset::read_at(&own, run_data_dir, t, readers)).await?;
        own.register_table(TableReference::bare(t.as_str()), df.into_view())
            .map_err(|e| DataError::from_datafusion(format!("registering `{t}`"), e))?;
    }
    let df = own
        .sql_with_options(&view.query, options())
        .await
        .map_err(|e| DataError::from_datafusion("planning the view's query again", e))?;
    let df = super::types::normalize(bind(df, &view.query, &view.params)?)?;
    ctx.read_table(df.into_view())
        .map_err(|e| DataError::from_datafusion("reading a view", e))
}

/// A session with `state`'s settings, functions, rules and runtime (memory pool, spill
/// folder), and a catalog of its own.
pub(super) fn own_session(state: SessionState) -> SessionContext {
    let config = state
        .config()
        .clone()
        .with_create_default_catalog_and_schema(true);
    let state = SessionStateBuilder::new_from_existing(state)
        .with_config(config)
        .with_catalog_list(Arc::new(MemoryCatalogProviderList::new()))
        .build();
    SessionContext::new_with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn plan(query: &str) -> LogicalPlan {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t (a BIGINT, b VARCHAR) AS VALUES (1, 'x')")
            .await
            .expect("table");
        ctx.sql(query)
            .await
            .expect("planned")
            .logical_plan()
            .clone()
    }

    #[tokio::test]
    async fn only_queries_that_give_the_same_rows_again_are_repeatable() {
        for q in [
            "SELECT a, b FROM t WHERE a > 0",
            "SELECT a * 2 AS c, upper(b) FROM t",
            "SELECT b, count(*), sum(a), avg(a), count(DISTINCT a) FROM t GROUP BY b",
            "SELECT * FROM t ORDER BY a",
            "SELECT a FROM t WHERE a IN (SELECT max(a) FROM t)",
            "SELECT a FROM t UNION SELECT a + 1 FROM t",
        ] {
            assert!(repeatable(&plan(q).await), "{q}");
        }
        for q in [
            "SELECT a, random() FROM t",
            "SELECT a, now() FROM t",
            "SELECT a FROM t LIMIT 1",
            "SELECT a FROM t ORDER BY a LIMIT 1",
            "SELECT DISTINCT ON (b) a, b FROM t",
            "SELECT a, row_number() OVER (ORDER BY b) FROM t",
            "SELECT b, array_agg(a) FROM t GROUP BY b",
            "SELECT b, first_value(a) FROM t GROUP BY b",
            "SELECT a FROM t WHERE a IN (SELECT a FROM t LIMIT 1)",
        ] {
            assert!(!repeatable(&plan(q).await), "{q}");
        }
    }

    /// A dataset `t0` and views `t1`..`tN`, each reading the one before (`t1` from `t0`).
    fn chain(run: &Path, n: usize) {
        for i in 1..=n {
            let dir = dataset::dir(run, &format!("t{i}"));
            std::fs::create_dir_all(&dir).expect("view dir");
            View {
                query: format!("SELECT a + 1 AS a FROM t{}", i - 1),
                params: Default::default(),
                tables: vec![format!("t{}", i - 1)],
                rows: 2,
                depth: None,
            }
            .save(&dir)
            .expect("view saved");
        }
    }

    async fn sum(run: &Path, task: &str) -> Result<String, DataError> {
        let ctx = SessionContext::new();
        let df = dataset::read(&ctx, run, task).await?;
        let batches = df
            .aggregate(
                vec![],
                vec![datafusion::functions_aggregate::expr_fn::sum(
                    datafusion::prelude::col("a"),
                )],
            )
            .map_err(|e| DataError::from_datafusion("sum", e))?
            .collect()
            .await
            .map_err(|e| DataError::from_datafusion("sum", e))?;
        Ok(
            datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                .expect("printed")
                .to_string(),
        )
    }

    /// Views over views read to the deepest level allowed; deeper, and a view that reads
    /// itself round a loop, are errors that name the view (not a stack overflow).
    #[tokio::test]
    async fn views_read_through_views_to_a_limit_and_a_loop_is_an_error() {
        let run = tempfile::tempdir().expect("tempdir");
        let ctx = SessionContext::new();
        let t0 = ctx
            .sql("SELECT * FROM (VALUES (1), (2)) AS v(a)")
            .await
            .expect("rows");
        dataset::write(t0, run.path(), "t0")
            .await
            .expect("t0 written");
        chain(run.path(), MAX_DEPTH + 1);
        // t32 reads 32 views down to t0's rows: (1 + 32) + (2 + 32).
        let top = format!("t{MAX_DEPTH}");
        let out = sum(run.path(), &top).await.expect("deepest view read");
        assert!(out.contains(&format!("| {} ", 3 + 2 * MAX_DEPTH)), "{out}");
        let deeper = format!("t{}", MAX_DEPTH + 1);
        let e = sum(run.path(), &deeper).await.expect_err("too deep");
        assert!(e.to_string().contains("more than 16 other views"), "{e}");
        // What a view over each would count (none recorded here: counted by reading them).
        let depth = |t: &str| depth_below(run.path(), &[t.to_string()]).expect("counted");
        assert_eq!((depth("t0"), depth("t1"), depth(&top)), (0, 1, MAX_DEPTH));
        assert_eq!(depth(&deeper), MAX_DEPTH + 1);
        // t1 damaged so that it reads t3, which reads t2, which reads t1.
        View {
            query: "SELECT a FROM t3".into(),
            params: Default::default(),
            tables: vec!["t3".into()],
            rows: 2,
            depth: None,
        }
        .save(&dataset::dir(run.path(), "t1"))
        .expect("damaged");
        // Counting round the loop stops where a reader would, as too deep.
        assert_eq!(depth("t3"), MAX_DEPTH + 1);
        let e = sum(run.path(), "t3").await.expect_err("a loop");
        assert!(
            e.to_string()
                .contains("it reads `t3`, which reads it (t3 -> t2 -> t1 -> t3)"),
            "{e}"
        );
    }

    #[test]
    fn a_view_round_trips_and_a_damaged_one_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(View::load(dir.path()).expect("no view"), None);
        let mut params = serde_json::Map::new();
        params.insert("day".into(), serde_json::json!("2024-01-05"));
        let v = View {
            query: "SELECT * FROM raw WHERE d = $day".into(),
            params,
            tables: vec!["raw".into()],
            rows: 12,
            depth: Some(3),
        };
        v.save(dir.path()).expect("saved");
        assert_eq!(View::load(dir.path()).expect("loaded"), Some(v));
        std::fs::write(dir.path().join(FILE), "{not json").expect("damaged");
        let e = View::load(dir.path()).expect_err("damaged");
        assert!(e.to_string().contains("view.json is damaged"), "{e}");
    }
}
