//! The rules of a `validate` task, applied to one dataset in one pass of checks: population
//! rules fill nulls first (seed 004: defaults, default dates, generated ids), then every
//! row rule becomes a boolean column of a view, the counts come from one aggregate, and
//! the valid rows and the quarantined rows are two filtered writes of that view. Input rows
//! are numbered in file order (the query runs in one partition), so row numbers, `keep:
//! first|last` and generated ids are the same on every attempt of a run.

use super::{define, frame, names, register, rows, ty};
use crate::data::dataset;
use crate::data::types::{quote_ident as q, quote_literal as l};
use crate::data::DataError;
use chrono::{DateTime, Utc};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::prelude::{DataFrame, SessionContext};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// What a violated rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The task fails (not retried), naming the rule, column, count and examples.
    Fail,
    /// The violating rows leave the dataset for `TASK@quarantine`, with a reason.
    Quarantine,
    /// Every row stays; the report says `warning`.
    Warn,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Fail => "fail",
            Action::Quarantine => "quarantine",
            Action::Warn => "warn",
        }
    }
}

/// Which duplicate of a key stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// The first row of each key in file order.
    First,
    /// The last one.
    Last,
    /// None: every row of a duplicated key is a violation.
    None,
}

/// `unique:`.
#[derive(Debug, Clone)]
pub struct Unique {
    /// The key columns.
    pub keys: Vec<String>,
    /// Which row of a key stays.
    pub keep: Keep,
}

/// `range:` of one column; bounds as written, cast to the column's type.
#[derive(Debug, Clone)]
pub struct Range {
    /// Smallest allowed value.
    pub min: Option<String>,
    /// Largest allowed value.
    pub max: Option<String>,
}

/// `references:` of one column.
#[derive(Debug, Clone)]
pub struct Reference {
    /// The upstream task whose dataset holds the keys.
    pub dataset: String,
    /// Its key column.
    pub column: String,
}

/// `freshness:`.
#[derive(Debug, Clone)]
pub struct Freshness {
    /// A date or timestamp column.
    pub column: String,
    /// The oldest its newest value may be, before the run's logical date.
    pub max_age: Duration,
    /// `max_age` as written.
    pub written: String,
}

/// `default_dates:` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DateDefault {
    /// When the attempt started.
    Now,
    /// The run's logical date.
    LogicalDate,
}

/// `generate_ids:`.
#[derive(Debug, Clone)]
pub struct GenerateIds {
    /// The id column.
    pub column: String,
    /// Text before the sequence (text columns only; default `AUTO_`).
    pub prefix: Option<String>,
}

/// Every rule of a `validate` task, decoded and checked.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Columns that must exist.
    pub required_columns: Vec<String>,
    /// Declared types: values must be castable.
    pub types: IndexMap<String, (DataType, String)>,
    /// Columns that must not be null.
    pub not_null: Vec<String>,
    /// Keys that must be unique.
    pub unique: Option<Unique>,
    /// Bounds per column.
    pub range: IndexMap<String, Range>,
    /// Allowed values per column.
    pub allowed: IndexMap<String, Vec<String>>,
    /// Regular expressions per column.
    pub pattern: IndexMap<String, String>,
    /// Foreign keys.
    pub references: IndexMap<String, Reference>,
    /// Bounds on the number of valid rows.
    pub row_count: Option<(Option<u64>, Option<u64>)>,
    /// Newest value of a column.
    pub freshness: Option<Freshness>,
    /// Values for nulls.
    pub defaults: IndexMap<String, String>,
    /// Dates for nulls.
    pub default_dates: IndexMap<String, DateDefault>,
    /// Ids for nulls.
    pub generate_ids: Option<GenerateIds>,
    /// The action of each rule (defaults filled in).
    pub actions: IndexMap<String, Action>,
}

/// Rule names, in report order.
pub const RULES: &[&str] = &[
    "required_columns",
    "types",
    "not_null",
    "unique",
    "range",
    "allowed",
    "pattern",
    "references",
    "row_count",
    "freshness",
];

/// Rules about the whole dataset: no row to quarantine.
pub const DATASET_RULES: &[&str] = &["required_columns", "row_count", "freshness"];

/// The action a rule has when `on_fail` does not say.
pub fn default_action(rule: &str) -> Action {
    if DATASET_RULES.contains(&rule) {
        Action::Fail
    } else {
        Action::Quarantine
    }
}

impl Rules {
    fn action(&self, rule: &str) -> Action {
        self.actions
            .get(rule)
            .copied()
            .unwrap_or_else(|| default_action(rule))
    }

    /// Upstream datasets the rules read besides the validated one.
    pub fn reads(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for r in self.references.values() {
            if !v.contains(&r.dataset) {
                v.push(r.dataset.clone());
            }
        }
        v
    }
}

/// What the run needs to know besides the rules.
#[derive(Debug)]
pub struct Env<'a> {
    /// The validated dataset's task id.
    pub source: &'a str,
    /// This task's id (outputs are named after it).
    pub task_id: &'a str,
    /// The run's data folder.
    pub data_dir: &'a Path,
    /// The run's logical date.
    pub logical_date: DateTime<Utc>,
    /// When the attempt started.
    pub now: DateTime<Utc>,
}

/// What a validation produced.
#[derive(Debug)]
pub struct Outcome {
    /// The seed-004 report.
    pub report: Value,
    /// Rows read.
    pub rows_in: u64,
    /// Valid rows written.
    pub rows_out: u64,
    /// Rows quarantined.
    pub rows_rejected: u64,
    /// Bytes of the outputs.
    pub bytes: u64,
    /// Why the task fails (a `fail` rule was violated); nothing was written then.
    pub failure: Option<String>,
}

/// One row rule on one column, as SQL.
struct Check {
    rule: &'static str,
    column: String,
    action: Action,
    /// True for a violating row.
    cond: String,
    /// The value shown in examples.
    value: String,
    /// What a violation is, for messages: "null values", "values outside [0, 100]".
    what: String,
}

const ROW: &str = "__cauce_row";

fn missing_column(rule: &str, name: &str, present: &[String], source: &str) -> DataError {
    DataError::Invalid(format!(
        "`{rule}` names column `{name}`, which is not in the dataset of `{source}`{}; columns: {}",
        crate::spec::error::suggestion(name, present.iter().map(|s| s.as_str())),
        present.join(", ")
    ))
}

fn ts_literal(t: DateTime<Utc>) -> String {
    format!(
        "arrow_cast({}, {})",
        l(&t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string()),
        ty(&DataType::Timestamp(TimeUnit::Microsecond, None))
    )
}

fn example_text(rows: &[Vec<Option<String>>]) -> (Vec<Value>, String) {
    let mut examples = Vec::new();
    let mut text = Vec::new();
    for r in rows {
        let row = r.first().cloned().flatten().unwrap_or_default();
        let value = r.get(1).cloned().flatten();
        text.push(format!(
            "row {row}: {}",
            value.clone().unwrap_or_else(|| "null".into())
        ));
        examples.push(json!({ "row": row.parse::<u64>().ok(), "value": value }));
    }
    (examples, text.join(", "))
}

fn count(cell: Option<&Option<String>>) -> u64 {
    cell.cloned()
        .flatten()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
}

/// Validates `input` (the dataset of `env.source`); `refs` are the referenced datasets by
/// task id. Writes `TASK` and `TASK@quarantine` unless a `fail` rule is violated.
pub async fn run(
    rules: &Rules,
    session: &SessionContext,
    input: DataFrame,
    refs: Vec<(String, DataFrame)>,
    env: &Env<'_>,
) -> Result<Outcome, DataError> {
    let source = env.source;
    let original: Vec<String> = names(&input);
    let in_types: IndexMap<String, DataType> = input
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    if original.iter().any(|c| c == ROW) {
        return Err(DataError::Invalid(format!(
            "the dataset of `{source}` has a column `{ROW}`, a name validate keeps for itself"
        )));
    }
    register(session, "__cauce_in", input)?;
    for (i, (_, df)) in refs.into_iter().enumerate() {
        register(session, &format!("__cauce_ref{i}"), df)?;
    }
    let mut validations: Vec<Value> = Vec::new();
    let mut failures: Vec<String> = Vec::new();

    // Structure.
    if !rules.required_columns.is_empty() {
        let missing: Vec<&String> = rules
            .required_columns
            .iter()
            .filter(|c| !original.contains(c))
            .collect();
        let action = rules.action("required_columns");
        let status = match (missing.is_empty(), action) {
            (true, _) => "passed",
            (false, Action::Warn) => "warning",
            _ => "failed",
        };
        let issues: Vec<String> = missing
            .iter()
            .map(|c| format!("{c}: missing column"))
            .collect();
        if !missing.is_empty() && action == Action::Fail {
            failures.push(format!(
                "rule `required_columns` failed: the dataset of `{source}` has no column {}; columns: {}",
                missing.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "),
                original.join(", ")
            ));
        }
        validations.push(json!({
            "validation": "required_columns",
            "action": action.name(),
            "status": status,
            "missing_columns": missing,
            "issues": issues,
        }));
    }
    if !failures.is_empty() {
        return Ok(failed(source, validations, failures));
    }

    // Population (v1): nulls filled; `__cauce_p{i}` says a row's field was filled.
    let declared = |c: &str| rules.types.get(c).map(|(t, _)| t.clone());
    let mut populated: Vec<(&'static str, String)> = Vec::new();
    let mut fill: IndexMap<String, (String, DataType)> = IndexMap::new(); // column -> (expr given `cur` type, type)
    let fill_expr = |name: &str,
                     kind: &'static str,
                     cur: Option<&DataType>|
     -> Result<(String, DataType), DataError> {
        let target = cur.cloned().or_else(|| declared(name));
        let (value, t) = match kind {
            "defaults" => {
                let v = rules.defaults.get(name).cloned().unwrap_or_default();
                let t = target.unwrap_or(DataType::Utf8);
                (format!("arrow_cast({}, {})", l(&v), ty(&t)), t)
            }
            "default_dates" => {
                let when = match rules.default_dates.get(name) {
                    Some(DateDefault::LogicalDate) => env.logical_date,
                    _ => env.now,
                };
                let t = target.unwrap_or(DataType::Timestamp(TimeUnit::Microsecond, None));
                (format!("arrow_cast({}, {})", ts_literal(when), ty(&t)), t)
            }
            _ => {
                let prefix = rules.generate_ids.as_ref().and_then(|g| g.prefix.clone());
                let t = target.unwrap_or(DataType::Utf8);
                let expr = match (&t, cur.is_some()) {
                    (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, _) => format!(
                        "arrow_cast(concat({}, CAST({} AS VARCHAR)), {})",
                        l(prefix.as_deref().unwrap_or("AUTO_")),
                        q(ROW),
                        ty(&t)
                    ),
                    (DataType::Int64 | DataType::Int32 | DataType::Int16 | DataType::UInt64 | DataType::UInt32, true) if prefix.is_none() => format!(
                        "arrow_cast(CAST({} AS BIGINT) + (SELECT COALESCE(MAX(CAST({} AS BIGINT)), 0) FROM \"__cauce_in\"), {})",
                        q(ROW),
                        q(name),
                        ty(&t)
                    ),
                    (DataType::Int64 | DataType::Int32 | DataType::Int16 | DataType::UInt64 | DataType::UInt32, _) if prefix.is_none() => format!(
                        "arrow_cast({}, {})", q(ROW), ty(&t)
                    ),
                    _ => {
                        return Err(DataError::Invalid(format!(
                            "`generate_ids` fills text columns (prefix + sequence) or whole-number columns (no prefix: past the largest id); `{name}` is {t}{}",
                            if prefix.is_some() { " and a prefix was given" } else { "" }
                        )))
                    }
                };
                (expr, t)
            }
        };
        Ok((value, t))
    };
    for (c, _) in &rules.defaults {
        let (e, t) = fill_expr(c, "defaults", in_types.get(c))?;
        fill.insert(c.clone(), (e, t));
        populated.push(("defaults", c.clone()));
    }
    for (c, _) in &rules.default_dates {
        let (e, t) = fill_expr(c, "default_dates", in_types.get(c))?;
        fill.insert(c.clone(), (e, t));
        populated.push(("default_dates", c.clone()));
    }
    if let Some(g) = &rules.generate_ids {
        let (e, t) = fill_expr(&g.column, "generate_ids", in_types.get(&g.column))?;
        fill.insert(g.column.clone(), (e, t));
        populated.push(("generate_ids", g.column.clone()));
    }
    let mut cur_types = in_types.clone();
    let mut select = vec![q(ROW)];
    for c in &original {
        match fill.get(c) {
            Some((e, _)) => select.push(format!("COALESCE({}, {e}) AS {}", q(c), q(c))),
            None => select.push(q(c)),
        }
    }
    let mut columns = original.clone();
    for (c, (e, t)) in &fill {
        if !original.contains(c) {
            select.push(format!("{e} AS {}", q(c)));
            columns.push(c.clone());
            cur_types.insert(c.clone(), t.clone());
        }
    }
    for (i, (_, c)) in populated.iter().enumerate() {
        let marker = if original.contains(c) {
            format!("({} IS NULL)", q(c))
        } else {
            "true".to_string()
        };
        select.push(format!("{marker} AS \"__cauce_p{i}\""));
    }
    define(
        session,
        "__cauce_v0",
        &format!(
            "SELECT ROW_NUMBER() OVER () AS {}, * FROM \"__cauce_in\"",
            q(ROW)
        ),
    )
    .await?;
    define(
        session,
        "__cauce_v1",
        &format!("SELECT {} FROM \"__cauce_v0\"", select.join(", ")),
    )
    .await?;

    // Every column a rule names must be there now.
    let need = |rule: &str, c: &str| -> Result<(), DataError> {
        if columns.iter().any(|x| x == c) {
            Ok(())
        } else {
            Err(missing_column(rule, c, &columns, source))
        }
    };
    for c in rules.types.keys() {
        need("types", c)?;
    }
    for c in &rules.not_null {
        need("not_null", c)?;
    }
    if let Some(u) = &rules.unique {
        for c in &u.keys {
            need("unique", c)?;
        }
    }
    for c in rules.range.keys() {
        need("range", c)?;
    }
    for c in rules.allowed.keys() {
        need("allowed", c)?;
    }
    for c in rules.pattern.keys() {
        need("pattern", c)?;
    }
    for c in rules.references.keys() {
        need("references", c)?;
    }
    if let Some(f) = &rules.freshness {
        need("freshness", &f.column)?;
    }

    // A column's value in its declared type (null where it does not cast).
    let typed = |c: &str| -> String {
        match (declared(c), cur_types.get(c)) {
            (Some(t), Some(cur)) if *cur != t => format!("arrow_try_cast({}, {})", q(c), ty(&t)),
            _ => q(c),
        }
    };
    let typed_type = |c: &str| -> DataType {
        declared(c)
            .or_else(|| cur_types.get(c).cloned())
            .unwrap_or(DataType::Utf8)
    };
    let as_text = |c: &str| format!("CAST({} AS VARCHAR)", q(c));

    // References (v2): one left join per referenced column with the distinct keys.
    let mut from = "\"__cauce_v1\"".to_string();
    let mut ref_cols = Vec::new();
    for (i, (c, r)) in rules.references.iter().enumerate() {
        let rk = format!("__cauce_rk{i}");
        from = format!(
            "{from} LEFT JOIN (SELECT DISTINCT arrow_try_cast({}, {}) AS {} FROM \"__cauce_ref{}\") AS \"__cauce_r{i}\" ON {} = \"__cauce_r{i}\".{}",
            q(&r.column),
            ty(&typed_type(c)),
            q(&rk),
            rules
                .reads()
                .iter()
                .position(|d| *d == r.dataset)
                .unwrap_or(0),
            typed(c),
            q(&rk)
        );
        ref_cols.push(rk);
    }
    let mut checks: Vec<Check> = Vec::new();
    for (c, (_, written)) in &rules.types {
        checks.push(Check {
            rule: "types",
            column: c.clone(),
            action: rules.action("types"),
            cond: format!("{} IS NOT NULL AND {} IS NULL", q(c), typed(c)),
            value: as_text(c),
            what: format!("values that are not {written}"),
        });
    }
    for c in &rules.not_null {
        checks.push(Check {
            rule: "not_null",
            column: c.clone(),
            action: rules.action("not_null"),
            cond: format!("{} IS NULL", q(c)),
            value: as_text(c),
            what: "null values".into(),
        });
    }
    for (c, r) in &rules.range {
        let t = ty(&typed_type(c));
        let mut parts = Vec::new();
        if let Some(min) = &r.min {
            parts.push(format!("{} < arrow_cast({}, {t})", typed(c), l(min)));
        }
        if let Some(max) = &r.max {
            parts.push(format!("{} > arrow_cast({}, {t})", typed(c), l(max)));
        }
        checks.push(Check {
            rule: "range",
            column: c.clone(),
            action: rules.action("range"),
            cond: format!("({})", parts.join(" OR ")),
            value: as_text(c),
            what: format!(
                "values outside [{}, {}]",
                r.min.as_deref().unwrap_or(""),
                r.max.as_deref().unwrap_or("")
            ),
        });
    }
    for (c, values) in &rules.allowed {
        let t = ty(&typed_type(c));
        let list: Vec<String> = values
            .iter()
            .map(|v| format!("arrow_cast({}, {t})", l(v)))
            .collect();
        checks.push(Check {
            rule: "allowed",
            column: c.clone(),
            action: rules.action("allowed"),
            cond: format!("{} NOT IN ({})", typed(c), list.join(", ")),
            value: as_text(c),
            what: format!("values not in [{}]", values.join(", ")),
        });
    }
    for (c, p) in &rules.pattern {
        checks.push(Check {
            rule: "pattern",
            column: c.clone(),
            action: rules.action("pattern"),
            cond: format!("NOT regexp_like({}, {})", as_text(c), l(p)),
            value: as_text(c),
            what: format!("values not matching {p}"),
        });
    }
    for ((c, r), rk) in rules.references.iter().zip(&ref_cols) {
        checks.push(Check {
            rule: "references",
            column: c.clone(),
            action: rules.action("references"),
            cond: format!("{} IS NOT NULL AND {} IS NULL", typed(c), q(rk)),
            value: as_text(c),
            what: format!("values not found in {}.{}", r.dataset, r.column),
        });
    }
    let mut select: Vec<String> = vec!["\"__cauce_v1\".*".into()];
    for (j, ch) in checks.iter().enumerate() {
        select.push(format!("COALESCE({}, false) AS \"__cauce_c{j}\"", ch.cond));
    }
    // The condition columns are defined in the same SELECT, so the OR spells them out.
    let conds: Vec<String> = checks
        .iter()
        .filter(|c| c.action == Action::Quarantine)
        .map(|c| format!("COALESCE({}, false)", c.cond))
        .collect();
    let other_q = if conds.is_empty() {
        "false".to_string()
    } else {
        format!("({})", conds.join(" OR "))
    };
    select.push(format!("{other_q} AS \"__cauce_qo\""));
    define(
        session,
        "__cauce_v2",
        &format!("SELECT {} FROM {from}", select.join(", ")),
    )
    .await?;

    // Unique (v3): among the rows no other rule quarantines, the first (or last) of a key.
    let mut last_view = "__cauce_v2";
    if let Some(u) = &rules.unique {
        let keys: Vec<String> = u.keys.iter().map(|k| typed(k)).collect();
        let not_null: Vec<String> = keys.iter().map(|k| format!("{k} IS NOT NULL")).collect();
        let dup = match u.keep {
            Keep::First | Keep::Last => format!(
                "ROW_NUMBER() OVER (PARTITION BY {} ORDER BY \"__cauce_qo\", {} {}) > 1",
                keys.join(", "),
                q(ROW),
                if u.keep == Keep::First { "ASC" } else { "DESC" }
            ),
            Keep::None => format!(
                "SUM(CASE WHEN \"__cauce_qo\" THEN 0 ELSE 1 END) OVER (PARTITION BY {}) > 1",
                keys.join(", ")
            ),
        };
        define(
            session,
            "__cauce_v3",
            &format!(
                "SELECT *, (NOT \"__cauce_qo\" AND {} AND {dup}) AS \"__cauce_cu\" FROM \"__cauce_v2\"",
                not_null.join(" AND ")
            ),
        )
        .await?;
        last_view = "__cauce_v3";
        let value = if u.keys.len() == 1 {
            as_text(&u.keys[0])
        } else {
            format!(
                "concat_ws(', ', {})",
                u.keys
                    .iter()
                    .map(|k| as_text(k))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        checks.push(Check {
            rule: "unique",
            column: u.keys.join(", "),
            action: rules.action("unique"),
            cond: "\"__cauce_cu\"".into(),
            value,
            what: match u.keep {
                Keep::None => "rows with a duplicated key".into(),
                _ => "duplicate rows".into(),
            },
        });
    }
    let col_of = |j: usize, ch: &Check| -> String {
        if ch.rule == "unique" {
            "\"__cauce_cu\"".into()
        } else {
            format!("\"__cauce_c{j}\"")
        }
    };
    let unique_q = rules.unique.is_some() && rules.action("unique") == Action::Quarantine;
    let q_expr = if unique_q {
        "(\"__cauce_qo\" OR \"__cauce_cu\")"
    } else {
        "\"__cauce_qo\""
    };
    define(
        session,
        "__cauce_checked",
        &format!("SELECT *, {q_expr} AS \"__cauce_q\" FROM {}", q(last_view)),
    )
    .await?;

    // One aggregate: rows, quarantined, each check, each population, the newest value.
    let mut agg = vec![
        "COUNT(*)".to_string(),
        "COALESCE(SUM(CASE WHEN \"__cauce_q\" THEN 1 ELSE 0 END), 0)".into(),
    ];
    for (j, ch) in checks.iter().enumerate() {
        agg.push(format!(
            "COALESCE(SUM(CASE WHEN {} THEN 1 ELSE 0 END), 0)",
            col_of(j, ch)
        ));
    }
    for i in 0..populated.len() {
        agg.push(format!(
            "COALESCE(SUM(CASE WHEN \"__cauce_p{i}\" THEN 1 ELSE 0 END), 0)"
        ));
    }
    if let Some(f) = &rules.freshness {
        agg.push(format!(
            "MAX(arrow_cast(arrow_try_cast({}, {}), 'Int64'))",
            typed(&f.column),
            ty(&DataType::Timestamp(TimeUnit::Microsecond, None))
        ));
    }
    let result = rows(
        session,
        &format!("SELECT {} FROM \"__cauce_checked\"", agg.join(", ")),
    )
    .await?;
    let cells = result.into_iter().next().unwrap_or_default();
    let rows_in = count(cells.first());
    let rows_q = count(cells.get(1));
    let check_counts: Vec<u64> = (0..checks.len()).map(|j| count(cells.get(2 + j))).collect();
    let pop_counts: Vec<u64> = (0..populated.len())
        .map(|i| count(cells.get(2 + checks.len() + i)))
        .collect();
    let newest: Option<i64> = cells
        .get(2 + checks.len() + populated.len())
        .cloned()
        .flatten()
        .and_then(|s| s.parse().ok());
    let rows_out = rows_in - rows_q.min(rows_in);

    // Row rules in the report, in rule order.
    for rule in RULES {
        let of_rule: Vec<(usize, &Check)> = checks
            .iter()
            .enumerate()
            .filter(|(_, c)| c.rule == *rule)
            .collect();
        if of_rule.is_empty() {
            continue;
        }
        let action = rules.action(rule);
        let mut total = 0;
        let mut issues = Vec::new();
        let mut details = Vec::new();
        let mut fixed = false;
        for (j, ch) in &of_rule {
            let n = check_counts[*j];
            total += n;
            let mut examples = Vec::new();
            if n > 0 {
                let ex = rows(
                    session,
                    &format!(
                        "SELECT {}, {} FROM \"__cauce_checked\" WHERE {} ORDER BY {} LIMIT 5",
                        q(ROW),
                        ch.value,
                        col_of(*j, ch),
                        q(ROW)
                    ),
                )
                .await?;
                let (list, text) = example_text(&ex);
                examples = list;
                issues.push(format!("{}: {n} {} ({text})", ch.column, ch.what));
                if ch.action == Action::Fail {
                    failures.push(format!(
                        "rule `{}` failed on column `{}`: {n} {} ({text})",
                        ch.rule, ch.column, ch.what
                    ));
                }
            } else if ch.rule == "not_null" {
                // Nulls the population rules filled count as fixed.
                let filled: u64 = populated
                    .iter()
                    .zip(&pop_counts)
                    .filter(|((_, c), _)| *c == ch.column)
                    .map(|(_, n)| *n)
                    .sum();
                if filled > 0 {
                    fixed = true;
                    issues.push(format!("{}: {filled} values populated", ch.column));
                }
            }
            details.push(json!({"column": ch.column, "violations": n, "examples": examples}));
        }
        let status = if total == 0 {
            if fixed {
                "fixed"
            } else {
                "passed"
            }
        } else {
            match action {
                Action::Warn => "warning",
                Action::Quarantine
                    if *rule == "unique"
                        && rules.unique.as_ref().is_some_and(|u| u.keep != Keep::None) =>
                {
                    "fixed"
                }
                _ => "failed",
            }
        };
        validations.push(json!({
            "validation": rule,
            "action": action.name(),
            "status": status,
            "violations": total,
            "issues": issues,
            "columns": details,
        }));
    }

    // Dataset rules.
    if let Some((min, max)) = rules.row_count {
        let action = rules.action("row_count");
        let low = min.is_some_and(|m| rows_out < m);
        let high = max.is_some_and(|m| rows_out > m);
        let bounds = format!(
            "[{}, {}]",
            min.map(|m| m.to_string()).unwrap_or_default(),
            max.map(|m| m.to_string()).unwrap_or_default()
        );
        let mut issues = Vec::new();
        if low || high {
            let msg = format!("{rows_out} valid rows, outside {bounds}");
            if action == Action::Fail {
                failures.push(format!("rule `row_count` failed: {msg}"));
            }
            issues.push(msg);
        }
        validations.push(json!({
            "validation": "row_count",
            "action": action.name(),
            "status": if issues.is_empty() { "passed" } else if action == Action::Warn { "warning" } else { "failed" },
            "rows": rows_out,
            "min": min,
            "max": max,
            "issues": issues,
        }));
    }
    if let Some(f) = &rules.freshness {
        let action = rules.action("freshness");
        let logical = env.logical_date.timestamp_micros();
        let newest_text = newest
            .and_then(DateTime::from_timestamp_micros)
            .map(|t| t.naive_utc().format("%Y-%m-%dT%H:%M:%S").to_string());
        let (stale, detail) = match newest {
            None => (true, "no values, so no fresh data".to_string()),
            Some(n) => {
                let age = Duration::from_micros((logical - n).max(0) as u64);
                (
                    age > f.max_age,
                    format!(
                        "newest value {} is {} older than the logical date {} (max_age {})",
                        newest_text.clone().unwrap_or_default(),
                        crate::spec::duration::format_duration(age),
                        env.logical_date.format("%Y-%m-%dT%H:%M:%SZ"),
                        f.written
                    ),
                )
            }
        };
        let msg = format!("{}: {detail}", f.column);
        if stale && action == Action::Fail {
            failures.push(format!(
                "rule `freshness` failed on column `{}`: {detail}",
                f.column
            ));
        }
        validations.push(json!({
            "validation": "freshness",
            "action": action.name(),
            "status": if !stale { "passed" } else if action == Action::Warn { "warning" } else { "failed" },
            "column": f.column,
            "newest": newest_text,
            "max_age": f.written,
            "issues": if stale { vec![msg] } else { vec![] },
        }));
    }

    // Populations, grouped by rule.
    let mut populations = Vec::new();
    for kind in ["defaults", "default_dates", "generate_ids"] {
        let fields: Vec<(String, u64)> = populated
            .iter()
            .zip(&pop_counts)
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, c), n)| (c.clone(), *n))
            .collect();
        if fields.is_empty() {
            continue;
        }
        populations.push(json!({
            "population": kind,
            "status": "completed",
            "fields_populated": fields.iter().map(|(c, n)| format!("{c}: {n} values")).collect::<Vec<_>>(),
            "counts": fields.iter().map(|(c, n)| (c.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
        }));
    }
    let report = json!({
        "source": source,
        "original_rows": rows_in,
        "final_rows": rows_out,
        "rows_added": 0,
        "rows_quarantined": rows_q,
        "validations": validations,
        "populations": populations,
    });
    if !failures.is_empty() {
        return Ok(Outcome {
            report,
            rows_in,
            rows_out: 0,
            rows_rejected: 0,
            bytes: 0,
            failure: Some(failures.join("; ")),
        });
    }

    // The outputs: valid rows (typed), quarantined rows with their reasons.
    let out_cols: Vec<String> = columns
        .iter()
        .map(|c| match declared(c) {
            Some(t) if cur_types.get(c) != Some(&t) => {
                format!("arrow_try_cast({}, {}) AS {}", q(c), ty(&t), q(c))
            }
            _ => q(c),
        })
        .collect();
    let valid = frame(
        session,
        &format!(
            "SELECT {} FROM \"__cauce_checked\" WHERE NOT \"__cauce_q\" ORDER BY {}",
            out_cols.join(", "),
            q(ROW)
        ),
    )
    .await?;
    let written = dataset::write(valid, env.data_dir, env.task_id).await?;
    let reasons: Vec<String> = checks
        .iter()
        .enumerate()
        .filter(|(_, c)| c.action == Action::Quarantine)
        .map(|(j, c)| {
            format!(
                "CASE WHEN {} THEN {} END",
                col_of(j, c),
                l(&format!("{}({})", c.rule, c.column))
            )
        })
        .collect();
    let reason = if reasons.is_empty() {
        "CAST(NULL AS VARCHAR)".to_string()
    } else {
        format!("concat_ws('; ', {})", reasons.join(", "))
    };
    // `_row` and `reason`, unless the data has columns of those names already.
    let free = |name: &str| {
        if columns.iter().any(|c| c == name) {
            format!("_cauce_{}", name.trim_start_matches('_'))
        } else {
            name.to_string()
        }
    };
    let mut q_cols: Vec<String> = vec![format!("{} AS {}", q(ROW), q(&free("_row")))];
    q_cols.extend(columns.iter().map(|c| q(c)));
    q_cols.push(format!("{reason} AS {}", q(&free("reason"))));
    let bad = frame(
        session,
        &format!(
            "SELECT {} FROM \"__cauce_checked\" WHERE \"__cauce_q\" ORDER BY {}",
            q_cols.join(", "),
            q(ROW)
        ),
    )
    .await?;
    let qname = dataset::output_name(env.task_id, "quarantine");
    let written_q = dataset::write(bad, env.data_dir, &qname).await?;
    Ok(Outcome {
        report,
        rows_in,
        rows_out: written.rows,
        rows_rejected: written_q.rows,
        bytes: written.bytes + written_q.bytes,
        failure: None,
    })
}

fn failed(source: &str, validations: Vec<Value>, failures: Vec<String>) -> Outcome {
    Outcome {
        report: json!({
            "source": source,
            "original_rows": Value::Null,
            "final_rows": 0,
            "rows_added": 0,
            "rows_quarantined": 0,
            "validations": validations,
            "populations": [],
        }),
        rows_in: 0,
        rows_out: 0,
        rows_rejected: 0,
        bytes: 0,
        failure: Some(failures.join("; ")),
    }
}
