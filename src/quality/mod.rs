//! Data quality: the rules engine behind the `validate` task kind (population rules, row
//! checks with their actions, dataset checks, the seed-004 validation report) and the
//! comparison behind `reconcile` (rows only on one side, rows that differ, the merge).
//! Both work as DataFusion queries over datasets the task kinds read; this module writes
//! the outputs it is given names for and returns reports, but it decodes no specs (that is
//! [`crate::tasks::validate`] and [`crate::tasks::reconcile`]) and never touches the store.

pub mod reconcile;
pub mod validate;

use crate::data::types::quote_literal;
use crate::data::DataError;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::common::TableReference;
use datafusion::prelude::{DataFrame, SessionContext};

/// Plans a query.
pub(crate) async fn frame(session: &SessionContext, sql: &str) -> Result<DataFrame, DataError> {
    session
        .sql(sql)
        .await
        .map_err(|e| DataError::from_datafusion("planning the checks", e))
}

/// Registers a query as a view named `name`.
pub(crate) async fn define(
    session: &SessionContext,
    name: &str,
    sql: &str,
) -> Result<(), DataError> {
    let df = frame(session, sql).await?;
    register(session, name, df)
}

/// Registers a frame as a table named `name`.
pub(crate) fn register(
    session: &SessionContext,
    name: &str,
    df: DataFrame,
) -> Result<(), DataError> {
    session
        .register_table(TableReference::bare(name), df.into_view())
        .map_err(|e| DataError::from_datafusion(format!("registering `{name}`"), e))?;
    Ok(())
}

/// Runs a query with a small answer (an aggregate, a few examples) and returns its cells
/// as text, `None` for nulls.
pub(crate) async fn rows(
    session: &SessionContext,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, DataError> {
    let batches = frame(session, sql)
        .await?
        .collect()
        .await
        .map_err(|e| DataError::from_datafusion("running the checks", e))?;
    let mut out = Vec::new();
    for b in &batches {
        for r in 0..b.num_rows() {
            let mut row = Vec::with_capacity(b.num_columns());
            for c in b.columns() {
                row.push(if c.is_null(r) {
                    None
                } else {
                    Some(
                        array_value_to_string(c, r)
                            .map_err(|e| DataError::io("reading a result", e))?,
                    )
                });
            }
            out.push(row);
        }
    }
    Ok(out)
}

/// An Arrow type as the SQL literal `arrow_cast` takes.
pub(crate) fn ty(dt: &DataType) -> String {
    quote_literal(&dt.to_string())
}

/// The column names of a frame.
pub(crate) fn names(df: &DataFrame) -> Vec<String> {
    df.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}
