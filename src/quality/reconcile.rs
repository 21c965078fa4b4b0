//! The comparison of two datasets on key columns (seed 004's symmetry check and
//! `merge_and_reconcile`): one full outer join, from which the rows only on the left, the
//! rows only on the right and the matched rows whose compared columns differ are written as
//! three named outputs, and, when asked, the merge (every key once, the priority side's
//! values where both sides have the key) as the main dataset.

use super::{define, names, register, rows};
use crate::data::dataset;
use crate::data::types::{quote_ident as q, quote_literal as l};
use crate::data::DataError;
use datafusion::prelude::{DataFrame, SessionContext};
use serde_json::{json, Map, Value};
use std::path::Path;

/// Which side wins in a merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// The left dataset's values.
    Left,
    /// The right dataset's values.
    Right,
}

/// What to compare.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Upstream task ids.
    pub left: String,
    /// Upstream task ids.
    pub right: String,
    /// Key columns, in both datasets.
    pub keys: Vec<String>,
    /// Columns to compare (`None`: every common non-key column).
    pub columns: Option<Vec<String>>,
    /// Write the merge as the main dataset, with this priority.
    pub merge: Option<Priority>,
}

/// What a reconciliation produced.
#[derive(Debug)]
pub struct Outcome {
    /// The report (the task's output value).
    pub report: Value,
    /// Rows read on both sides.
    pub rows_in: u64,
    /// Rows of the merge (or of the three outputs without a merge).
    pub rows_out: u64,
    /// Bytes written.
    pub bytes: u64,
}

async fn examples(
    session: &SessionContext,
    data_dir: &Path,
    name: &str,
) -> Result<Vec<Value>, DataError> {
    let df = dataset::read(session, data_dir, name).await?;
    let cols = names(&df);
    register(session, "__cauce_ex", df)?;
    let found = rows(session, "SELECT * FROM \"__cauce_ex\" LIMIT 5").await?;
    session
        .deregister_table("__cauce_ex")
        .map_err(|e| DataError::from_datafusion("examples", e))?;
    Ok(found
        .into_iter()
        .map(|r| {
            Value::Object(
                cols.iter()
                    .cloned()
                    .zip(
                        r.into_iter()
                            .map(|v| v.map(Value::String).unwrap_or(Value::Null)),
                    )
                    .collect::<Map<_, _>>(),
            )
        })
        .collect())
}

/// Compares `left_df` and `right_df`; writes `TASK@only_left`, `TASK@only_right`,
/// `TASK@different` and, with a merge, `TASK`.
pub async fn run(
    plan: &Plan,
    session: &SessionContext,
    left_df: DataFrame,
    right_df: DataFrame,
    data_dir: &Path,
    task_id: &str,
) -> Result<Outcome, DataError> {
    let lc = names(&left_df);
    let rc = names(&right_df);
    for k in &plan.keys {
        for (side, cols, name) in [("left", &lc, &plan.left), ("right", &rc, &plan.right)] {
            if !cols.contains(k) {
                return Err(DataError::Invalid(format!(
                    "key `{k}` is not a column of the {side} dataset `{name}`; columns: {}",
                    cols.join(", ")
                )));
            }
        }
    }
    let compared: Vec<String> = match &plan.columns {
        Some(cols) => {
            for c in cols {
                for (side, have, name) in [("left", &lc, &plan.left), ("right", &rc, &plan.right)] {
                    if !have.contains(c) {
                        return Err(DataError::Invalid(format!(
                            "compared column `{c}` is not in the {side} dataset `{name}`; columns: {}",
                            have.join(", ")
                        )));
                    }
                }
            }
            cols.clone()
        }
        None => lc
            .iter()
            .filter(|c| !plan.keys.contains(c) && rc.contains(c))
            .cloned()
            .collect(),
    };
    register(session, "__cauce_left", left_df)?;
    register(session, "__cauce_right", right_df)?;
    define(
        session,
        "__cauce_lx",
        "SELECT *, true AS \"__cauce_inl\" FROM \"__cauce_left\"",
    )
    .await?;
    define(
        session,
        "__cauce_rx",
        "SELECT *, true AS \"__cauce_inr\" FROM \"__cauce_right\"",
    )
    .await?;
    let on: Vec<String> = plan
        .keys
        .iter()
        .map(|k| format!("\"l\".{} = \"r\".{}", q(k), q(k)))
        .collect();
    let join = format!(
        "\"__cauce_lx\" AS \"l\" FULL OUTER JOIN \"__cauce_rx\" AS \"r\" ON {}",
        on.join(" AND ")
    );
    let both = "\"l\".\"__cauce_inl\" IS NOT NULL AND \"r\".\"__cauce_inr\" IS NOT NULL";
    let differ = |c: &str| format!("(\"l\".{} IS DISTINCT FROM \"r\".{})", q(c), q(c));
    let any_differ = if compared.is_empty() {
        "false".to_string()
    } else {
        compared
            .iter()
            .map(|c| differ(c))
            .collect::<Vec<_>>()
            .join(" OR ")
    };
    let order: Vec<String> = plan.keys.iter().map(|k| q(k)).collect();
    let side_cols = |alias: &str, cols: &[String]| -> String {
        cols.iter()
            .map(|c| format!("\"{alias}\".{} AS {}", q(c), q(c)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut bytes = 0;
    let write = |sql: String, name: String| async move {
        let df = super::frame(session, &sql).await?;
        dataset::write(df, data_dir, &name).await
    };
    let only_left = write(
        format!(
            "SELECT {} FROM {join} WHERE \"r\".\"__cauce_inr\" IS NULL ORDER BY {}",
            side_cols("l", &lc),
            order.join(", ")
        ),
        dataset::output_name(task_id, "only_left"),
    )
    .await?;
    let only_right = write(
        format!(
            "SELECT {} FROM {join} WHERE \"l\".\"__cauce_inl\" IS NULL ORDER BY {}",
            side_cols("r", &rc),
            order.join(", ")
        ),
        dataset::output_name(task_id, "only_right"),
    )
    .await?;
    let mut diff_cols: Vec<String> = plan
        .keys
        .iter()
        .map(|k| format!("\"l\".{} AS {}", q(k), q(k)))
        .collect();
    let listing: Vec<String> = compared
        .iter()
        .map(|c| format!("CASE WHEN {} THEN {} END", differ(c), l(c)))
        .collect();
    diff_cols.push(if listing.is_empty() {
        "CAST(NULL AS VARCHAR) AS \"differs\"".to_string()
    } else {
        format!("concat_ws(', ', {}) AS \"differs\"", listing.join(", "))
    });
    for c in &compared {
        diff_cols.push(format!("\"l\".{} AS {}", q(c), q(&format!("{c}_left"))));
        diff_cols.push(format!("\"r\".{} AS {}", q(c), q(&format!("{c}_right"))));
    }
    let different = write(
        format!(
            "SELECT {} FROM {join} WHERE {both} AND ({any_differ}) ORDER BY {}",
            diff_cols.join(", "),
            order.join(", ")
        ),
        dataset::output_name(task_id, "different"),
    )
    .await?;
    bytes += only_left.bytes + only_right.bytes + different.bytes;
    let counts = rows(
        session,
        &format!(
            "SELECT (SELECT COUNT(*) FROM \"__cauce_left\") AS a, (SELECT COUNT(*) FROM \"__cauce_right\") AS b, (SELECT COUNT(*) FROM {join} WHERE {both}) AS c"
        ),
    )
    .await?;
    let n = |i: usize| -> u64 {
        counts
            .first()
            .and_then(|r| r.get(i).cloned().flatten())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let (left_rows, right_rows, matched) = (n(0), n(1), n(2));
    let mut merged_rows = None;
    if let Some(priority) = plan.merge {
        let (first, second, first_cols, second_cols, first_in) = match priority {
            Priority::Left => ("l", "r", &lc, &rc, "\"l\".\"__cauce_inl\""),
            Priority::Right => ("r", "l", &rc, &lc, "\"r\".\"__cauce_inr\""),
        };
        let mut cols: Vec<String> = Vec::new();
        for c in lc.iter().chain(rc.iter().filter(|c| !lc.contains(c))) {
            let e = if plan.keys.contains(c) {
                format!("COALESCE(\"{first}\".{}, \"{second}\".{})", q(c), q(c))
            } else {
                match (first_cols.contains(c), second_cols.contains(c)) {
                    (true, true) => format!(
                        "CASE WHEN {first_in} IS NOT NULL THEN \"{first}\".{} ELSE \"{second}\".{} END",
                        q(c),
                        q(c)
                    ),
                    (true, false) => format!("\"{first}\".{}", q(c)),
                    _ => format!("\"{second}\".{}", q(c)),
                }
            };
            cols.push(format!("{e} AS {}", q(c)));
        }
        let merged = write(
            format!(
                "SELECT * FROM (SELECT {} FROM {join}) ORDER BY {}",
                cols.join(", "),
                order.join(", ")
            ),
            task_id.to_string(),
        )
        .await?;
        bytes += merged.bytes;
        merged_rows = Some(merged.rows);
    }
    let report = json!({
        "left": plan.left,
        "right": plan.right,
        "keys": plan.keys,
        "columns": compared,
        "left_rows": left_rows,
        "right_rows": right_rows,
        "matched": matched,
        "only_left": only_left.rows,
        "only_right": only_right.rows,
        "different": different.rows,
        "symmetric": only_left.rows == 0 && only_right.rows == 0 && different.rows == 0,
        "merge": plan.merge.map(|p| match p { Priority::Left => "left", Priority::Right => "right" }),
        "merged_rows": merged_rows,
        "examples": {
            "only_left": examples(session, data_dir, &dataset::output_name(task_id, "only_left")).await?,
            "only_right": examples(session, data_dir, &dataset::output_name(task_id, "only_right")).await?,
            "different": examples(session, data_dir, &dataset::output_name(task_id, "different")).await?,
        },
    });
    Ok(Outcome {
        report,
        rows_in: left_rows + right_rows,
        rows_out: merged_rows.unwrap_or(only_left.rows + only_right.rows + different.rows),
        bytes,
    })
}
