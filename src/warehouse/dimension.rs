//! The dimension merge: from the dimension as it is (`current`, absent on the first run)
//! and the incoming rows (one per natural key), the dimension as it must become, every row
//! tagged with what happened to it ([`CHANGE`]: `new`, `version`, `closed`, `updated`,
//! `same`, `unknown`). Surrogate keys are stable: a row keeps its key forever; new rows take
//! keys above the largest one, in natural-key order, so the same input gives the same keys.
//! Members absent from the incoming rows are kept as they are (nothing is deleted).
//!
//! SCD type 1 overwrites a member's attributes in place. SCD type 2 closes the current
//! version when a tracked column changes (`valid_to` = the change time, `is_current` =
//! false) and adds a new version from the change time to 9999-12-31; a member's first
//! version is valid from 1900-01-01, so facts older than the dimension still find it.
//! Untracked columns of an SCD2 dimension are type 1: overwritten on every version.

use super::UNKNOWN_KEY;
use crate::data::types::quote_ident;
use crate::data::DataError;
use crate::quality::{frame, register, rows, ty};
use chrono::{DateTime, NaiveDate, Utc};
use datafusion::arrow::array::{new_null_array, ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::scalar::ScalarValue;
use indexmap::IndexMap;
use std::sync::Arc;

/// The column of the merged frame saying what happened to the row.
pub const CHANGE: &str = "__cauce_change";
/// SCD2: when a version starts.
pub const VALID_FROM: &str = "valid_from";
/// SCD2: when a version ends (exclusive).
pub const VALID_TO: &str = "valid_to";
/// SCD2: whether a version is the member's current one.
pub const IS_CURRENT: &str = "is_current";

/// How history is kept.
#[derive(Debug, Clone, PartialEq)]
pub enum Scd {
    /// Overwrite.
    One,
    /// Versions. `tracked`: the columns whose change makes a new version (all attributes
    /// when `None`); `effective`: the incoming column holding the change time (the run's
    /// logical date when `None`).
    Two {
        tracked: Option<Vec<String>>,
        effective: Option<String>,
    },
}

/// What a dimension is.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The natural key columns.
    pub natural_key: Vec<String>,
    /// The surrogate key column.
    pub key: String,
    /// How history is kept.
    pub scd: Scd,
    /// Values of the unknown member's columns (text columns default to `Unknown`).
    pub unknown: IndexMap<String, String>,
}

/// The start of a member's first version.
pub fn first_valid_from() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(1900, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
        .unwrap_or_default()
}

/// The end of a current version.
pub fn open_valid_to() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
        .unwrap_or_default()
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

/// A timestamp literal of the type the version columns have (microseconds; 9999-12-31 does
/// not fit DataFusion's default nanoseconds).
fn ts(t: DateTime<Utc>) -> String {
    format!(
        "arrow_cast(arrow_cast({}, 'Int64'), {})",
        t.timestamp_micros(),
        ty(&ts_type())
    )
}

fn q(name: &str) -> String {
    quote_ident(name)
}

/// `a.x = b.x AND ...` over the natural key.
fn key_match(nk: &[String], a: &str, b: &str) -> String {
    nk.iter()
        .map(|c| format!("{a}.{0} = {b}.{0}", q(c)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `(c.x IS DISTINCT FROM i.x OR ...)`, `false` for no columns.
fn differs(cols: &[&String]) -> String {
    if cols.is_empty() {
        return "false".into();
    }
    let parts: Vec<String> = cols
        .iter()
        .map(|c| format!("(c.{0} IS DISTINCT FROM i.{0})", q(c)))
        .collect();
    format!("({})", parts.join(" OR "))
}

const CUR: &str = "__cauce_dim_current";
const INC: &str = "__cauce_dim_incoming";
const UNK: &str = "__cauce_dim_unknown";

/// The merged dimension, with [`CHANGE`] as its last column. `effective_at` is the change
/// time of SCD2 versions when the plan names no effective column.
pub async fn merge(
    plan: &Plan,
    session: &SessionContext,
    incoming: DataFrame,
    current: Option<DataFrame>,
    effective_at: DateTime<Utc>,
) -> Result<DataFrame, DataError> {
    let in_schema = incoming.schema().inner().clone();
    let in_names: Vec<String> = in_schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let scd2 = matches!(plan.scd, Scd::Two { .. });
    let mut reserved = vec![plan.key.as_str(), CHANGE];
    if scd2 {
        reserved.extend([VALID_FROM, VALID_TO, IS_CURRENT]);
    }
    for r in &reserved {
        if in_names.iter().any(|n| n == r) {
            return Err(DataError::Invalid(format!(
                "the incoming rows have a column `{r}`, which the dimension keeps itself; drop or rename it in a `sql` task"
            )));
        }
    }
    let missing = |what: &str, c: &str| {
        DataError::Invalid(format!(
            "{what} `{c}` is not a column of the incoming rows{}; columns: {}",
            crate::spec::error::suggestion(c, in_names.iter().map(String::as_str)),
            in_names.join(", ")
        ))
    };
    for c in &plan.natural_key {
        if !in_names.contains(c) {
            return Err(missing("natural key", c));
        }
    }
    let (tracked, effective) = match &plan.scd {
        Scd::One => (None, None),
        Scd::Two { tracked, effective } => (tracked.clone(), effective.clone()),
    };
    if let Some(e) = &effective {
        if !in_names.contains(e) {
            return Err(missing("effective column", e));
        }
        if plan.natural_key.contains(e) {
            return Err(DataError::Invalid(format!(
                "`{e}` is in the natural key; the effective column says when a change happened"
            )));
        }
    }
    // Attributes: every incoming column but the natural key and the effective time.
    let attrs: Vec<String> = in_names
        .iter()
        .filter(|n| !plan.natural_key.contains(n) && Some(*n) != effective.as_ref())
        .cloned()
        .collect();
    if let Some(t) = &tracked {
        for c in t {
            if !attrs.contains(c) {
                return Err(if in_names.contains(c) {
                    DataError::Invalid(format!(
                        "tracked column `{c}` is the natural key or the effective column; track attributes"
                    ))
                } else {
                    missing("tracked column", c)
                });
            }
        }
    }
    for c in plan.unknown.keys() {
        if !attrs.contains(c) {
            return Err(missing("`unknown` column", c));
        }
    }
    register(session, INC, incoming)?;
    check_incoming(session, &plan.natural_key).await?;

    // The dimension as it is, or an empty one shaped like the incoming rows.
    let current = match current {
        Some(c) => c,
        None => {
            let mut fields = vec![Field::new(&plan.key, DataType::Int64, false)];
            fields.extend(
                in_schema
                    .fields()
                    .iter()
                    .filter(|f| plan.natural_key.contains(f.name()) || attrs.contains(f.name()))
                    .map(|f| f.as_ref().clone().with_nullable(true)),
            );
            if scd2 {
                fields.push(Field::new(VALID_FROM, ts_type(), true));
                fields.push(Field::new(VALID_TO, ts_type(), true));
                fields.push(Field::new(IS_CURRENT, DataType::Boolean, true));
            }
            let schema = Arc::new(Schema::new(fields));
            session
                .read_batch(RecordBatch::new_empty(schema))
                .map_err(|e| DataError::from_datafusion("an empty dimension", e))?
        }
    };
    let cur_schema = current.schema().inner().clone();
    let cur_names: Vec<String> = cur_schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut needed = vec![plan.key.clone()];
    needed.extend(plan.natural_key.iter().cloned());
    if scd2 {
        needed.extend([VALID_FROM.into(), VALID_TO.into(), IS_CURRENT.into()]);
    }
    for c in &needed {
        if !cur_names.contains(c) {
            return Err(DataError::Invalid(format!(
                "the existing dimension has no column `{c}` (its columns: {}); is it a{} dimension with surrogate key `{}`?",
                cur_names.join(", "),
                if scd2 { "n SCD type 2" } else { "" },
                plan.key
            )));
        }
    }
    register(session, CUR, current)?;
    // Columns the dimension has that the incoming rows no longer bring: kept as they are.
    let extras: Vec<String> = cur_names
        .iter()
        .filter(|n| !needed.contains(n) && !attrs.contains(n))
        .cloned()
        .collect();
    let in_both = |c: &&String| cur_names.contains(c);
    let nk = &plan.natural_key;
    let first = q(&nk[0]);
    let eq = key_match(nk, "c", "i");
    let order: Vec<String> = nk.iter().map(|c| format!("i.{}", q(c))).collect();
    let order = order.join(", ");
    let cur_t = q(CUR);
    let inc_t = q(INC);
    let k = q(&plan.key);
    let max_key = format!(
        "(SELECT COALESCE(MAX(CASE WHEN {k} > 0 THEN arrow_cast({k}, 'Int64') END), 0) AS mx FROM {cur_t}) m"
    );
    let new_key = format!("arrow_cast(m.mx + ROW_NUMBER() OVER (ORDER BY {order}), 'Int64')");
    let null_of = |c: &str| -> Result<String, DataError> {
        let f = cur_schema
            .field_with_name(c)
            .map_err(|e| DataError::Invalid(e.to_string()))?;
        Ok(format!("arrow_cast(NULL, {})", ty(f.data_type())))
    };
    // Output columns: key, natural key, attributes, extras, [versions], change.
    let mut names: Vec<String> = vec![plan.key.clone()];
    names.extend(nk.iter().cloned());
    names.extend(attrs.iter().cloned());
    names.extend(extras.iter().cloned());
    let overwrite = |c: &String| {
        if cur_names.contains(c) {
            format!(
                "CASE WHEN i.{first} IS NULL THEN c.{0} ELSE i.{0} END",
                q(c)
            )
        } else {
            format!("i.{}", q(c))
        }
    };
    let mut old = vec![format!("c.{k}")];
    old.extend(nk.iter().map(|c| format!("c.{}", q(c))));
    let mut new = vec![new_key];
    new.extend(nk.iter().map(|c| format!("i.{}", q(c))));
    new.extend(attrs.iter().map(|c| format!("i.{}", q(c))));
    for e in &extras {
        new.push(null_of(e)?);
    }
    let sql = match &tracked {
        _ if !scd2 => {
            let compared: Vec<&String> = attrs.iter().filter(in_both).collect();
            old.extend(attrs.iter().map(overwrite));
            old.extend(extras.iter().map(|c| format!("c.{}", q(c))));
            old.push(format!(
                "CASE WHEN i.{first} IS NOT NULL AND {} THEN 'updated' ELSE 'same' END",
                differs(&compared)
            ));
            new.push("'new'".into());
            format!(
                "SELECT {} FROM {cur_t} c LEFT JOIN {inc_t} i ON {eq} \
                 UNION ALL \
                 SELECT {} FROM {inc_t} i CROSS JOIN {max_key} LEFT JOIN {cur_t} c ON {eq} WHERE c.{k} IS NULL",
                old.join(", "),
                new.join(", ")
            )
        }
        tracked => {
            let tracked: Vec<&String> = match tracked {
                Some(t) => t.iter().collect(),
                None => attrs.iter().collect(),
            };
            let untracked: Vec<&String> = attrs
                .iter()
                .filter(|a| !tracked.contains(a) && cur_names.contains(a))
                .collect();
            let tracked_both: Vec<&String> =
                tracked.iter().copied().filter(|c| in_both(c)).collect();
            let change_at = match &effective {
                Some(e) => format!("arrow_cast(i.{}, {})", q(e), ty(&ts_type())),
                None => ts(effective_at),
            };
            let ch = format!(
                "(i.{first} IS NOT NULL AND c.{} AND {})",
                q(IS_CURRENT),
                differs(&tracked_both)
            );
            for a in &attrs {
                old.push(if tracked.contains(&a) && cur_names.contains(a) {
                    format!("c.{}", q(a))
                } else {
                    overwrite(a)
                });
            }
            old.extend(extras.iter().map(|c| format!("c.{}", q(c))));
            old.push(format!("c.{}", q(VALID_FROM)));
            old.push(format!(
                "CASE WHEN {ch} THEN {change_at} ELSE c.{} END",
                q(VALID_TO)
            ));
            old.push(format!(
                "CASE WHEN {ch} THEN false ELSE c.{} END",
                q(IS_CURRENT)
            ));
            old.push(format!(
                "CASE WHEN {ch} THEN 'closed' WHEN i.{first} IS NOT NULL AND {} THEN 'updated' ELSE 'same' END",
                differs(&untracked)
            ));
            new.push(format!(
                "CASE WHEN c.{k} IS NULL THEN {} ELSE {change_at} END",
                ts(first_valid_from())
            ));
            new.push(ts(open_valid_to()));
            new.push("true".into());
            new.push(format!(
                "CASE WHEN c.{k} IS NULL THEN 'new' ELSE 'version' END"
            ));
            format!(
                "SELECT {} FROM {cur_t} c LEFT JOIN {inc_t} i ON {eq} \
                 UNION ALL \
                 SELECT {} FROM {inc_t} i CROSS JOIN {max_key} \
                 LEFT JOIN (SELECT * FROM {cur_t} WHERE {}) c ON {eq} \
                 WHERE c.{k} IS NULL OR {}",
                old.join(", "),
                new.join(", "),
                q(IS_CURRENT),
                differs(&tracked_both)
            )
        }
    };
    if scd2 {
        names.extend([VALID_FROM.into(), VALID_TO.into(), IS_CURRENT.into()]);
    }
    names.push(CHANGE.into());
    let mut merged = frame(session, &sql).await?;
    // The unknown member, once.
    let has_unknown = rows(
        session,
        &format!("SELECT COUNT(*) FROM {cur_t} WHERE {k} = {UNKNOWN_KEY}"),
    )
    .await?;
    let has_unknown = has_unknown
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .is_some_and(|n| n != "0");
    let schema = merged.schema().inner().clone();
    if !has_unknown {
        let batch = unknown_row(plan, &schema, &names)?;
        let df = session
            .read_batch(batch)
            .map_err(|e| DataError::from_datafusion("the unknown member", e))?;
        register(session, UNK, df)?;
        let cols: Vec<String> = schema.fields().iter().map(|f| q(f.name())).collect();
        merged = frame(
            session,
            &format!("{sql} UNION ALL SELECT {} FROM {}", cols.join(", "), q(UNK)),
        )
        .await?;
    }
    // Name the columns (a union takes its names from its first branch's expressions).
    let exprs: Vec<datafusion::prelude::Expr> = merged
        .schema()
        .columns()
        .into_iter()
        .zip(&names)
        .map(|(c, n)| datafusion::prelude::Expr::Column(c).alias(n))
        .collect();
    merged
        .select(exprs)
        .map_err(|e| DataError::from_datafusion("naming the dimension's columns", e))
}

/// The unknown member: key -1, the natural key null, text attributes `Unknown` unless the
/// plan says otherwise, others null; SCD2: valid over all time and current.
fn unknown_row(plan: &Plan, schema: &Schema, names: &[String]) -> Result<RecordBatch, DataError> {
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(names.len());
    let mut fields = Vec::with_capacity(names.len());
    for (f, name) in schema.fields().iter().zip(names) {
        let dt = f.data_type();
        let value = if name == &plan.key {
            Some(ScalarValue::Int64(Some(UNKNOWN_KEY)))
        } else if name == CHANGE {
            Some(ScalarValue::Utf8(Some("unknown".into())))
        } else if name == VALID_FROM {
            Some(ScalarValue::TimestampMicrosecond(
                Some(first_valid_from().timestamp_micros()),
                None,
            ))
        } else if name == VALID_TO {
            Some(ScalarValue::TimestampMicrosecond(
                Some(open_valid_to().timestamp_micros()),
                None,
            ))
        } else if name == IS_CURRENT {
            Some(ScalarValue::Boolean(Some(true)))
        } else if plan.natural_key.contains(name) {
            None
        } else if let Some(v) = plan.unknown.get(name) {
            Some(ScalarValue::try_from_string(v.clone(), dt).map_err(|e| {
                DataError::Invalid(format!(
                    "`unknown: {{{name}: {v}}}` is not a value of the column's type {dt}: {e}"
                ))
            })?)
        } else if matches!(
            dt,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            ScalarValue::try_from_string("Unknown".into(), dt).ok()
        } else {
            None
        };
        let array = match value {
            Some(v) => v
                .cast_to(dt)
                .and_then(|v| v.to_array_of_size(1))
                .map_err(|e| DataError::Invalid(format!("the unknown member's `{name}`: {e}")))?,
            None => new_null_array(dt, 1),
        };
        arrays.push(array);
        fields.push(Field::new(f.name(), dt.clone(), true));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| DataError::Invalid(format!("the unknown member: {e}")))
}

/// Null and repeated natural keys make a dimension ambiguous: refused with examples.
async fn check_incoming(session: &SessionContext, nk: &[String]) -> Result<(), DataError> {
    let inc = q(INC);
    let nulls: Vec<String> = nk.iter().map(|c| format!("{} IS NULL", q(c))).collect();
    let n = rows(
        session,
        &format!("SELECT COUNT(*) FROM {inc} WHERE {}", nulls.join(" OR ")),
    )
    .await?;
    let n = n
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default();
    if n != "0" && !n.is_empty() {
        return Err(DataError::Invalid(format!(
            "{n} incoming rows have a null natural key ({}); drop or fill them first (a `validate` task with `not_null`, `defaults` or `generate_ids`)",
            nk.join(", ")
        )));
    }
    let cols: Vec<String> = nk
        .iter()
        .map(|c| format!("CAST({} AS VARCHAR)", q(c)))
        .collect();
    let list: Vec<String> = nk.iter().map(|c| q(c)).collect();
    let dups = rows(
        session,
        &format!(
            "SELECT concat_ws(', ', {}) AS k, n FROM (SELECT {}, COUNT(*) AS n FROM {inc} GROUP BY {}) WHERE n > 1 ORDER BY k LIMIT 5",
            cols.join(", "),
            list.join(", "),
            list.join(", ")
        ),
    )
    .await?;
    if !dups.is_empty() {
        let shown: Vec<String> = dups
            .iter()
            .map(|r| {
                format!(
                    "{} ({} rows)",
                    r.first().cloned().flatten().unwrap_or_default(),
                    r.get(1).cloned().flatten().unwrap_or_default()
                )
            })
            .collect();
        return Err(DataError::Invalid(format!(
            "the incoming rows hold a natural key ({}) more than once: {}; keep one row per member first (a `validate` task with `unique`)",
            nk.join(", "),
            shown.join("; ")
        )));
    }
    Ok(())
}

/// How many rows of each [`CHANGE`] kind a merged dimension holds (read from its dataset).
pub async fn counts(
    session: &SessionContext,
    table: &str,
) -> Result<IndexMap<String, u64>, DataError> {
    let mut out: IndexMap<String, u64> = ["new", "version", "closed", "updated", "same", "unknown"]
        .iter()
        .map(|k| (k.to_string(), 0))
        .collect();
    let found = rows(
        session,
        &format!(
            "SELECT {0}, COUNT(*) FROM {1} GROUP BY {0}",
            q(CHANGE),
            q(table)
        ),
    )
    .await?;
    for r in found {
        if let (Some(Some(k)), Some(Some(n))) = (r.first(), r.get(1)) {
            out.insert(k.clone(), n.parse().unwrap_or(0));
        }
    }
    Ok(out)
}
