//! `source: mysql`: the rows of a query (or a whole table) from MySQL or MariaDB (a Magento
//! shop's database), streamed row by row over the text protocol (sqlx `fetch`) into Arrow
//! batches of `batch_size` rows, never held whole. The query is prepared first for its
//! columns; a column read straight from a table takes its exact type from
//! `information_schema` (DECIMAL(10,2) stays decimal(10,2)), an expression the type the
//! server reports. `url` is templated (`${MYSQL_PASSWORD}`); `query` is rendered with SQL
//! escaping (`{{ params.x }}`, `{{ watermark }}` become quoted literals) and runs with
//! `NO_BACKSLASH_ESCAPES`, so a backslash in a value cannot end its literal.
//!
//! Types: TINYINT(1)/BOOLEAN as Boolean (zero is false), TINYINT Int8, SMALLINT Int16,
//! MEDIUMINT/INT Int32, BIGINT Int64 (UNSIGNED ones one size up; BIGINT UNSIGNED as
//! Decimal128(20,0)), YEAR Int16, DECIMAL(p,s) Decimal128(p,s) (at most 38 digits), FLOAT
//! Float32, DOUBLE Float64, DATE Date32, DATETIME Timestamp(us), TIMESTAMP Timestamp(us, UTC)
//! (the session runs in UTC), CHAR/VARCHAR/TEXT/ENUM/SET/JSON/TIME as text, BINARY/
//! VARBINARY/BLOB as Binary. A declared `columns:` type is parsed from the text directly.
//! Limits: zero dates (`0000-00-00`) are read as NULL; BIT and spatial types are errors
//! naming the column (cast them in the query); a DECIMAL expression (`SUM(price)`) has no
//! scale the server reports, so its scale is taken from the first batch's values (declare
//! the column in `columns:` to fix it); a cancelled read closes the connection, which ends
//! the query when the server next writes to it.

use super::{Source, SourceContext};
use crate::data::mysql::{self, kind_from_catalog, kind_from_type_name, CatalogColumn, ReadKind};
use crate::data::postgres::{cast_checked, CastFailure};
use crate::data::stream::{late_frame, read_rows, LateOut, RowBatcher};
use crate::data::types::ColumnType;
use crate::data::DataError;
use crate::spec::error::SpecError;
use crate::tasks::BuildContext;
use crate::template::Escape;
use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, BinaryBuilder, StringArray, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::DataFrame;
use indexmap::IndexMap;
use marked_yaml::Node;
use serde::Deserialize;
use sqlx::mysql::MySqlRow;
use sqlx::{Column, Executor, Row, SqlSafeStr, Statement, TypeInfo};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The `mysql` source.
#[derive(Debug)]
pub struct MysqlSource {
    url: String,
    query: Option<String>,
    table: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MysqlSpec {
    url: String,
    query: Option<String>,
    table: Option<String>,
}

/// Builds from `url` and `query` or `table`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn Source>, SpecError> {
    let spec: MysqlSpec = cx.decode(node)?;
    super::check_query_or_table(
        &spec.query,
        &spec.table,
        node,
        cx,
        "`source: mysql` needs `query` (a SELECT) or `table` (NAME or DATABASE.NAME)",
    )?;
    Ok(Arc::new(MysqlSource {
        url: spec.url,
        query: spec.query,
        table: spec.table,
    }))
}

/// A column's values of the batch being read, as the wire gives them.
enum Acc {
    Text(StringBuilder),
    Bin(BinaryBuilder),
}

/// One result column.
struct Col {
    name: String,
    kind: ReadKind,
    /// The Arrow type (decided after the first batch for decimals of unknown scale).
    target: Option<DataType>,
    acc: Acc,
}

struct Reader {
    url: String,
    query: String,
    declared: IndexMap<String, ColumnType>,
    batch_size: usize,
    cancel: CancellationToken,
    bytes: Arc<AtomicU64>,
    redactor: Arc<crate::secrets::Redactor>,
}

/// The digits after the point of the longest fraction in a column of decimal text.
fn scale_of(a: &StringArray) -> i8 {
    a.iter()
        .flatten()
        .map(|v| v.split_once('.').map_or(0, |(_, f)| f.len()))
        .max()
        .unwrap_or(10)
        .min(38) as i8
}

impl Reader {
    async fn run(self, mut out: LateOut) {
        if let Err(e) = self.read(&mut out).await {
            out.fail(mysql::redact(e, &self.redactor)).await;
        }
    }

    /// The columns of the query, with their kinds.
    async fn columns(&self, my: &mut mysql::My) -> Result<Vec<Col>, DataError> {
        let stmt = my
            .conn
            .prepare(sqlx::AssertSqlSafe(self.query.clone()).into_sql_str())
            .await
            .map_err(|e| mysql::error("preparing the query", &e))?;
        let mut catalogs: HashMap<String, Vec<CatalogColumn>> = HashMap::new();
        let mut cols: Vec<Col> = Vec::new();
        let described: Vec<(String, String, sqlx::ColumnOrigin)> = stmt
            .columns()
            .iter()
            .map(|c| {
                (
                    c.name().to_string(),
                    c.type_info().name().to_string(),
                    c.origin(),
                )
            })
            .collect();
        for (name, type_name, origin) in described {
            if cols.iter().any(|c| c.name == name) {
                return Err(DataError::Invalid(format!(
                    "the query returns two columns named `{name}`; name them apart with AS"
                )));
            }
            let mut kind = None;
            if let sqlx::ColumnOrigin::Table(t) = origin {
                let key = t.table.to_string();
                if !catalogs.contains_key(&key) {
                    let (schema, table) = match key.split_once('.') {
                        Some((s, t)) => (Some(s), t),
                        None => (None, key.as_str()),
                    };
                    let found = mysql::catalog(&mut my.conn, schema, table).await?;
                    catalogs.insert(key.clone(), found);
                }
                if let Some(c) = catalogs
                    .get(&key)
                    .and_then(|cs| cs.iter().find(|c| c.name == *t.name))
                {
                    kind = Some(kind_from_catalog(&name, c).map_err(DataError::Invalid)?);
                }
            }
            let kind = match kind {
                Some(k) => k,
                None => kind_from_type_name(&name, &type_name).map_err(DataError::Invalid)?,
            };
            let declared = self
                .declared
                .get(&name)
                .filter(|c| c.format.is_none() && kind != ReadKind::Binary)
                .map(|c| c.data_type.clone());
            let target = match (&declared, &kind) {
                (Some(t), _) => Some(t.clone()),
                (None, ReadKind::Decimal(None)) => None,
                (None, k) => Some(k.data_type()),
            };
            let acc = match kind {
                ReadKind::Binary => Acc::Bin(BinaryBuilder::new()),
                _ => Acc::Text(StringBuilder::new()),
            };
            cols.push(Col {
                name,
                kind,
                target,
                acc,
            });
        }
        Ok(cols)
    }

    async fn read(&self, out: &mut LateOut) -> Result<(), DataError> {
        let mut my = mysql::connect(&self.url, &self.redactor, "").await?;
        let cols = self.columns(&mut my).await?;
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(self.query.clone())).fetch(&mut my.conn);
        let mut batcher = Batcher { cols, schema: None };
        read_rows(
            rows,
            &mut batcher,
            out,
            self.batch_size,
            &self.cancel,
            &self.bytes,
            |e| mysql::error("reading the rows", &e),
        )
        .await
    }
}

/// The columns being filled, and the schema that the first batch fixed.
struct Batcher {
    cols: Vec<Col>,
    schema: Option<SchemaRef>,
}

impl RowBatcher<MySqlRow> for Batcher {
    fn push(&mut self, row: MySqlRow, row_no: u64) -> Result<u64, DataError> {
        let mut bytes = 0;
        for (i, col) in self.cols.iter_mut().enumerate() {
            let v: Option<&[u8]> = row.try_get_unchecked(i).map_err(|e| {
                DataError::Invalid(format!("row {row_no}, column `{}`: {e}", col.name))
            })?;
            bytes += v.map_or(0, |b| b.len() as u64);
            match (&mut col.acc, v) {
                (Acc::Bin(b), v) => b.append_option(v),
                (Acc::Text(b), None) => b.append_null(),
                (Acc::Text(b), Some(raw)) => {
                    let text = std::str::from_utf8(raw).map_err(|_| {
                        DataError::Invalid(format!(
                            "row {row_no}, column `{}`: the text is not UTF-8",
                            col.name
                        ))
                    })?;
                    let zero_date = matches!(
                        col.kind,
                        ReadKind::Date | ReadKind::DateTime | ReadKind::Timestamp
                    ) && text.starts_with("0000-00-00");
                    if zero_date {
                        b.append_null();
                    } else {
                        b.append_value(text);
                    }
                }
            }
        }
        Ok(bytes)
    }

    fn finish(&mut self, first_row: u64) -> Result<RecordBatch, DataError> {
        finish(&mut self.cols, &mut self.schema, first_row)
    }
}

/// Turns the rows read so far into a batch of the columns' types (fixing the schema with
/// the first batch).
fn finish(
    cols: &mut [Col],
    schema: &mut Option<SchemaRef>,
    first_row: u64,
) -> Result<RecordBatch, DataError> {
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(cols.len());
    for col in cols.iter_mut() {
        let raw: ArrayRef = match &mut col.acc {
            Acc::Text(b) => Arc::new(b.finish()),
            Acc::Bin(b) => Arc::new(b.finish()),
        };
        let target = match &col.target {
            Some(t) => t.clone(),
            None => {
                let s = raw
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .map_or(10, scale_of);
                let t = DataType::Decimal128(38, s);
                col.target = Some(t.clone());
                t
            }
        };
        let fail = |f: CastFailure| match f {
            CastFailure::Value { index, value } => DataError::Invalid(format!(
                "row {}, column `{}`: value `{value}` is not a valid {target}",
                first_row + index as u64 + 1,
                col.name
            )),
            CastFailure::Types(e) => DataError::Invalid(format!("column `{}`: {e}", col.name)),
        };
        let array = if col.kind == ReadKind::Bool && target == DataType::Boolean {
            // Any non-zero TINYINT(1) is true.
            let ints = cast_checked(&raw, &DataType::Int64).map_err(&fail)?;
            cast_checked(&ints, &DataType::Boolean).map_err(&fail)?
        } else {
            cast_checked(&raw, &target).map_err(&fail)?
        };
        arrays.push(array);
    }
    let schema = schema
        .get_or_insert_with(|| {
            Arc::new(Schema::new(
                cols.iter()
                    .zip(&arrays)
                    .map(|(c, a)| Field::new(&c.name, a.data_type().clone(), true))
                    .collect::<Vec<_>>(),
            ))
        })
        .clone();
    RecordBatch::try_new(schema, arrays)
        .map_err(|e| DataError::Invalid(format!("building a batch: {e}")))
}

impl MysqlSource {
    fn query(&self, cx: &SourceContext<'_>) -> Result<String, DataError> {
        let sql = super::select_sql(cx, &self.query, &self.table, mysql::quote_table)?;
        let mut t = sql.trim();
        while let Some(rest) = t.strip_suffix(';') {
            t = rest.trim_end();
        }
        Ok(t.to_string())
    }
}

#[async_trait]
impl Source for MysqlSource {
    fn describe(&self) -> String {
        let what = match (&self.query, &self.table) {
            (_, Some(t)) => format!("table {t}"),
            _ => "query".to_string(),
        };
        format!("mysql {} ({what})", mysql::safe_target(&self.url))
    }

    async fn read(&self, cx: &SourceContext<'_>) -> Result<DataFrame, DataError> {
        let url = cx.task.render_data(&self.url, Escape::Plain)?;
        let query = self.query(cx)?;
        let reader = Reader {
            url,
            query,
            declared: cx.columns.clone(),
            batch_size: cx.task.data.batch_size.max(1),
            cancel: cx.task.cancel.clone(),
            bytes: cx.bytes_read.clone(),
            redactor: cx.task.log.redactor(),
        };
        late_frame(
            cx.session,
            "the MySQL reader",
            cx.task.cancel.clone(),
            |out| reader.run(out),
        )
        .await
    }
}
