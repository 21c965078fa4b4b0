//! The fact lookup: each fact row's natural keys are swapped for the surrogate key of the
//! matching dimension row, one lookup per dimension. A dimension with versions (an SCD2
//! dimension: `valid_from`, `valid_to`) gives the version valid at the fact's `as_of`
//! time, or its current version (`is_current`) when the lookup names no time. A row whose
//! member is missing, or whose natural key is null, gets the unknown member's key (-1);
//! [`missing`] counts them and shows a few of the keys that were not found.

use super::dimension::{IS_CURRENT, VALID_FROM, VALID_TO};
use super::UNKNOWN_KEY;
use crate::data::types::quote_ident;
use crate::data::DataError;
use crate::quality::{frame, names, register, rows, ty};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::prelude::{DataFrame, SessionContext};

/// One dimension to look up.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The dataset holding the dimension (a `dimension` task, or any upstream dataset).
    pub dimension: String,
    /// Pairs of (fact column, dimension column) that must match.
    pub on: Vec<(String, String)>,
    /// The dimension's surrogate key column.
    pub key: String,
    /// The name of the key column in the fact (the key's own name unless `key_as` says).
    pub column: String,
    /// The fact column with the event time, for dimensions with versions.
    pub as_of: Option<String>,
}

/// What a fact is built from.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The lookups, in the order their key columns are added.
    pub lookups: Vec<Lookup>,
    /// Whether the natural key columns stay in the fact.
    pub keep_natural_keys: bool,
}

const FACT: &str = "__cauce_fact";

fn q(name: &str) -> String {
    quote_ident(name)
}

fn dim_table(i: usize) -> String {
    format!("__cauce_dim_{i}")
}

/// The join of the fact with dimension `i`'s lookup rows (alias `d{i}`).
fn join(i: usize, l: &Lookup, versioned: bool, current_only: bool) -> String {
    let d = format!("d{i}");
    let mut cond: Vec<String> =
        l.on.iter()
            .map(|(f, c)| format!("f.{} = {d}.{}", q(f), q(c)))
            .collect();
    if versioned {
        if let Some(t) = &l.as_of {
            let at = format!(
                "arrow_cast(f.{}, {})",
                q(t),
                ty(&DataType::Timestamp(TimeUnit::Microsecond, None))
            );
            cond.push(format!("{at} >= {d}.{}", q(VALID_FROM)));
            cond.push(format!("{at} < {d}.{}", q(VALID_TO)));
        }
    }
    let mut filter = format!("{} <> {UNKNOWN_KEY}", q(&l.key));
    if current_only {
        filter.push_str(&format!(" AND {}", q(IS_CURRENT)));
    }
    format!(
        "LEFT JOIN (SELECT * FROM {} WHERE {filter}) {d} ON {}",
        q(&dim_table(i)),
        cond.join(" AND ")
    )
}

/// A planned fact: its frame, and per lookup the join that finds its dimension rows.
pub struct Built {
    /// The fact rows with surrogate keys.
    pub frame: DataFrame,
    /// The `LEFT JOIN` clause of each lookup, for [`missing`].
    joins: Vec<String>,
}

/// Plans the fact from its rows and the dimensions (by dataset name, in lookup order).
pub async fn build(
    plan: &Plan,
    session: &SessionContext,
    fact: DataFrame,
    dims: Vec<DataFrame>,
) -> Result<Built, DataError> {
    let fact_cols = names(&fact);
    register(session, FACT, fact)?;
    let dropped: Vec<&String> = if plan.keep_natural_keys {
        Vec::new()
    } else {
        plan.lookups
            .iter()
            .flat_map(|l| l.on.iter().map(|(f, _)| f))
            .collect()
    };
    let mut joins = Vec::new();
    let mut keys = Vec::new();
    for (i, (l, dim)) in plan.lookups.iter().zip(dims).enumerate() {
        let dim_cols = names(&dim);
        let absent = |what: &str, c: &str, cols: &[String], of: &str| {
            DataError::Invalid(format!(
                "{what} `{c}` is not a column of {of}{}; columns: {}",
                crate::spec::error::suggestion(c, cols.iter().map(String::as_str)),
                cols.join(", ")
            ))
        };
        let of_dim = format!("dimension `{}`", l.dimension);
        if !dim_cols.contains(&l.key) {
            return Err(absent("key", &l.key, &dim_cols, &of_dim));
        }
        for (f, c) in &l.on {
            if !fact_cols.contains(f) {
                return Err(absent("lookup column", f, &fact_cols, "the fact rows"));
            }
            if !dim_cols.contains(c) {
                return Err(absent("natural key", c, &dim_cols, &of_dim));
            }
        }
        let versioned =
            dim_cols.iter().any(|c| c == VALID_FROM) && dim_cols.iter().any(|c| c == VALID_TO);
        if let Some(t) = &l.as_of {
            if !fact_cols.contains(t) {
                return Err(absent("`as_of` column", t, &fact_cols, "the fact rows"));
            }
            if !versioned {
                return Err(DataError::Invalid(format!(
                    "`as_of` looks up the version valid at a time, but {of_dim} has no `{VALID_FROM}`/`{VALID_TO}` columns (is it SCD type 2?)"
                )));
            }
        }
        let current_only = l.as_of.is_none() && dim_cols.iter().any(|c| c == IS_CURRENT);
        if fact_cols.contains(&l.column) && !dropped.contains(&&l.column) {
            return Err(DataError::Invalid(format!(
                "the fact rows already have a column `{}`; the lookup of `{}` adds it (name it apart with `key_as`)",
                l.column, l.dimension
            )));
        }
        if keys.contains(&l.column) {
            return Err(DataError::Invalid(format!(
                "two lookups add the key column `{}`; name one apart with `key_as`",
                l.column
            )));
        }
        keys.push(l.column.clone());
        register(session, &dim_table(i), dim)?;
        joins.push(join(i, l, versioned, current_only));
    }
    let mut cols: Vec<String> = fact_cols
        .iter()
        .filter(|c| !dropped.contains(c))
        .map(|c| format!("f.{}", q(c)))
        .collect();
    for (i, l) in plan.lookups.iter().enumerate() {
        cols.push(format!(
            "COALESCE(arrow_cast(d{i}.{}, 'Int64'), {UNKNOWN_KEY}) AS {}",
            q(&l.key),
            q(&l.column)
        ));
    }
    let sql = format!(
        "SELECT {} FROM {} f {}",
        cols.join(", "),
        q(FACT),
        joins.join(" ")
    );
    Ok(Built {
        frame: frame(session, &sql).await?,
        joins,
    })
}

/// Per lookup: how many fact rows got the unknown member, and up to five of the natural
/// keys that were not found (`null` for a null key). `written` is the fact's dataset,
/// registered in `session` under that name.
pub async fn missing(
    plan: &Plan,
    built: &Built,
    session: &SessionContext,
    written: &str,
) -> Result<Vec<(u64, Vec<String>)>, DataError> {
    let mut out = Vec::new();
    for (i, l) in plan.lookups.iter().enumerate() {
        let n = rows(
            session,
            &format!(
                "SELECT COUNT(*) FROM {} WHERE {} = {UNKNOWN_KEY}",
                q(written),
                q(&l.column)
            ),
        )
        .await?;
        let n: u64 = n
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut examples = Vec::new();
        if n > 0 {
            let shown: Vec<String> =
                l.on.iter()
                    .map(|(f, _)| format!("COALESCE(CAST(f.{} AS VARCHAR), 'null')", q(f)))
                    .collect();
            let found = rows(
                session,
                &format!(
                    "SELECT DISTINCT concat_ws(', ', {}) AS k FROM {} f {} WHERE d{i}.{} IS NULL ORDER BY k LIMIT 5",
                    shown.join(", "),
                    q(FACT),
                    built.joins[i],
                    q(&l.key)
                ),
            )
            .await?;
            examples = found
                .into_iter()
                .filter_map(|r| r.into_iter().next().flatten())
                .collect();
        }
        out.push((n, examples));
    }
    Ok(out)
}
