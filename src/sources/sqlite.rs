//! `source: sqlite`: the rows of a query (or a whole table) from a SQLite database file,
//! opened read-only (cauce never writes to it, and a missing file is an error, not a new
//! empty database), streamed row by row (sqlx `fetch`) into Arrow batches of `batch_size`
//! rows. `path` is templated and relative to the working directory; `query` is rendered
//! with SQL escaping (`{{ params.x }}`, `{{ watermark }}` become quoted literals).
//!
//! SQLite stores any value in any column, so a column's Arrow type comes from its declared
//! type when it is read straight from a table: INTEGER/INT/BIGINT... Int64, REAL/FLOAT/
//! DOUBLE Float64, DECIMAL(p,s)/NUMERIC(p,s) Decimal128(p,s) (other NUMERIC Float64),
//! TEXT/VARCHAR/CHAR/CLOB text, BLOB Binary, BOOLEAN Boolean (zero is false), DATE Date32,
//! DATETIME/TIMESTAMP Timestamp(us) (ISO-8601 text, as SQLite's date functions write it, or
//! integer Unix seconds). An expression, or a column declared with no or another type, takes
//! the type of the first batch's values: integers Int64, integers and reals Float64, text
//! Utf8, blobs Binary (all NULL: Utf8). A declared `columns:` type wins over both. A value
//! that does not fit its column's type is an error naming the row and column.

use super::{Source, SourceContext};
use crate::data::postgres::{cast_checked, CastFailure};
use crate::data::stream::{late_frame, read_rows, LateOut, RowBatcher};
use crate::data::types::{quote_ident, ColumnType};
use crate::data::DataError;
use crate::spec::error::SpecError;
use crate::tasks::BuildContext;
use crate::template::Escape;
use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BinaryBuilder, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::DataFrame;
use indexmap::IndexMap;
use marked_yaml::Node;
use serde::Deserialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteRow};
use sqlx::{Column, ConnectOptions, Executor, Row, SqlSafeStr, Statement, TypeInfo, ValueRef};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The `sqlite` source.
#[derive(Debug)]
pub struct SqliteSource {
    path: String,
    query: Option<String>,
    table: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqliteSpec {
    path: String,
    query: Option<String>,
    table: Option<String>,
}

/// Builds from `path` and `query` or `table`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn Source>, SpecError> {
    let spec: SqliteSpec = cx.decode(node)?;
    super::check_query_or_table(
        &spec.query,
        &spec.table,
        node,
        cx,
        "`source: sqlite` needs `query` (a SELECT) or `table`",
    )?;
    Ok(Arc::new(SqliteSource {
        path: spec.path,
        query: spec.query,
        table: spec.table,
    }))
}

/// What a column is read as.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// A known Arrow type.
    Known(DataType),
    /// Decided by the first batch's values.
    FromValues,
}

/// The type a declared column type gives, by SQLite's affinity rules plus the common
/// names (`None`: no declared type, or one that says nothing about the values).
fn declared_kind(decl: &str) -> Option<DataType> {
    let d = decl.trim().to_ascii_lowercase();
    if d.is_empty() {
        return None;
    }
    if d.starts_with("decimal") || d.starts_with("numeric") {
        return match crate::data::types::parse_type(&d) {
            Ok(t) if d.contains('(') => Some(t),
            _ => Some(DataType::Float64),
        };
    }
    Some(match d.as_str() {
        "bool" | "boolean" => DataType::Boolean,
        "date" => DataType::Date32,
        "datetime" | "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, None),
        _ if d.contains("int") => DataType::Int64,
        _ if d.contains("char") || d.contains("clob") || d.contains("text") => DataType::Utf8,
        _ if d.contains("blob") => DataType::Binary,
        _ if d.contains("real") || d.contains("floa") || d.contains("doub") => DataType::Float64,
        _ => return None,
    })
}

/// The storage classes seen in a column of the first batch.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    int: bool,
    real: bool,
    text: bool,
    blob: bool,
}

impl Seen {
    fn data_type(&self) -> DataType {
        if self.blob && !self.text && !self.int && !self.real {
            DataType::Binary
        } else if self.text || self.blob {
            DataType::Utf8
        } else if self.real {
            DataType::Float64
        } else if self.int {
            DataType::Int64
        } else {
            DataType::Utf8
        }
    }
}

struct Col {
    name: String,
    kind: Kind,
    seen: Seen,
    text: StringBuilder,
    bin: BinaryBuilder,
}

impl Col {
    /// Adds a value to the builders the column's type needs (both while the first batch
    /// decides it).
    fn push(&mut self, text: Option<&str>, bytes: Option<&[u8]>) {
        let binary = self.kind == Kind::Known(DataType::Binary);
        if !binary {
            self.text.append_option(text);
        }
        if binary || self.kind == Kind::FromValues {
            self.bin.append_option(bytes);
        }
    }

    fn target(&self) -> DataType {
        match &self.kind {
            Kind::Known(t) => t.clone(),
            Kind::FromValues => self.seen.data_type(),
        }
    }
}

struct Reader {
    path: PathBuf,
    query: String,
    declared: IndexMap<String, ColumnType>,
    batch_size: usize,
    cancel: CancellationToken,
    bytes: Arc<AtomicU64>,
}

fn sql_error(what: &str, e: &sqlx::Error) -> DataError {
    match e {
        sqlx::Error::Database(db) => DataError::Invalid(format!("{what}: {}", db.message())),
        sqlx::Error::Io(_) => DataError::Io(format!("{what}: {e}")),
        other => DataError::Invalid(format!("{what}: {other}")),
    }
}

impl Reader {
    async fn run(self, mut out: LateOut) {
        if let Err(e) = self.read(&mut out).await {
            out.fail(e).await;
        }
    }

    async fn declared_type(
        conn: &mut SqliteConnection,
        table: &str,
        column: &str,
    ) -> Option<String> {
        let (schema, table) = match table.split_once('.') {
            Some((s, t)) => (s.to_string(), t.to_string()),
            None => ("main".to_string(), table.to_string()),
        };
        let sql = format!(
            "SELECT type FROM {}.pragma_table_info(?) WHERE name = ?",
            quote_ident(&schema)
        );
        sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
            .bind(table)
            .bind(column)
            .fetch_optional(&mut *conn)
            .await
            .ok()
            .flatten()
    }

    async fn columns(&self, conn: &mut SqliteConnection) -> Result<Vec<Col>, DataError> {
        let stmt = conn
            .prepare(sqlx::AssertSqlSafe(self.query.clone()).into_sql_str())
            .await
            .map_err(|e| sql_error("preparing the query", &e))?;
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
        let mut cols: Vec<Col> = Vec::new();
        for (name, _type_name, origin) in described {
            if cols.iter().any(|c| c.name == name) {
                return Err(DataError::Invalid(format!(
                    "the query returns two columns named `{name}`; name them apart with AS"
                )));
            }
            let mut kind = Kind::FromValues;
            if let sqlx::ColumnOrigin::Table(t) = &origin {
                if let Some(decl) = Self::declared_type(conn, &t.table, &t.name).await {
                    if let Some(dt) = declared_kind(&decl) {
                        kind = Kind::Known(dt);
                    }
                }
            }
            if let Some(c) = self.declared.get(&name).filter(|c| c.format.is_none()) {
                kind = Kind::Known(c.data_type.clone());
            }
            cols.push(Col {
                name,
                kind,
                seen: Seen::default(),
                text: StringBuilder::new(),
                bin: BinaryBuilder::new(),
            });
        }
        Ok(cols)
    }

    async fn read(&self, out: &mut LateOut) -> Result<(), DataError> {
        let opts = SqliteConnectOptions::new()
            .filename(&self.path)
            .read_only(true)
            .create_if_missing(false);
        let mut conn = opts.connect().await.map_err(|e| {
            DataError::Invalid(format!(
                "cannot open the SQLite database {}: {e}",
                self.path.display()
            ))
        })?;
        let cols = self.columns(&mut conn).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(self.query.clone())).fetch(&mut conn);
        let mut batcher = Batcher { cols, schema: None };
        read_rows(
            rows,
            &mut batcher,
            out,
            self.batch_size,
            &self.cancel,
            &self.bytes,
            |e| sql_error("reading the rows", &e),
        )
        .await
    }
}

/// The columns being filled, and the schema that the first batch fixed.
struct Batcher {
    cols: Vec<Col>,
    schema: Option<SchemaRef>,
}

impl RowBatcher<SqliteRow> for Batcher {
    fn push(&mut self, row: SqliteRow, row_no: u64) -> Result<u64, DataError> {
        let mut bytes = 0;
        for (i, col) in self.cols.iter_mut().enumerate() {
            let value = row
                .try_get_raw(i)
                .map_err(|e| sql_error("reading the rows", &e))?;
            let class = if value.is_null() {
                "NULL".to_string()
            } else {
                value.type_info().name().to_string()
            };
            let bad = |e: sqlx::Error| {
                DataError::Invalid(format!("row {row_no}, column `{}`: {e}", col.name))
            };
            match class.as_str() {
                "NULL" => col.push(None, None),
                "INTEGER" => {
                    col.seen.int = true;
                    let v: i64 = row.try_get_unchecked(i).map_err(bad)?;
                    bytes += 8;
                    let text = match &col.kind {
                        Kind::Known(DataType::Boolean) => (v != 0).to_string(),
                        Kind::Known(DataType::Timestamp(..)) => {
                            chrono::DateTime::from_timestamp(v, 0)
                                .map(|t| t.naive_utc().to_string())
                                .unwrap_or_else(|| v.to_string())
                        }
                        _ => v.to_string(),
                    };
                    col.push(Some(&text), Some(text.as_bytes()));
                }
                "REAL" => {
                    col.seen.real = true;
                    let v: f64 = row.try_get_unchecked(i).map_err(bad)?;
                    bytes += 8;
                    let text = v.to_string();
                    col.push(Some(&text), Some(text.as_bytes()));
                }
                "BLOB" => {
                    col.seen.blob = true;
                    let v: &[u8] = row.try_get_unchecked(i).map_err(bad)?;
                    bytes += v.len() as u64;
                    let text = match &col.kind {
                        Kind::FromValues | Kind::Known(DataType::Binary) => {
                            String::from_utf8_lossy(v)
                        }
                        Kind::Known(t) => {
                            std::borrow::Cow::Borrowed(std::str::from_utf8(v).map_err(|_| {
                                DataError::Invalid(format!(
                                    "row {row_no}, column `{}`: a blob where {t} was expected",
                                    col.name
                                ))
                            })?)
                        }
                    };
                    col.push(Some(&text), Some(v));
                }
                _ => {
                    col.seen.text = true;
                    let v: &str = row.try_get_unchecked(i).map_err(bad)?;
                    bytes += v.len() as u64;
                    col.push(Some(v), Some(v.as_bytes()));
                }
            }
        }
        Ok(bytes)
    }

    fn finish(&mut self, first_row: u64) -> Result<RecordBatch, DataError> {
        finish(&mut self.cols, &mut self.schema, first_row)
    }
}

/// The rows read so far as a batch; the first one fixes the columns' types.
fn finish(
    cols: &mut [Col],
    schema: &mut Option<SchemaRef>,
    first_row: u64,
) -> Result<RecordBatch, DataError> {
    if schema.is_none() {
        for c in cols.iter_mut() {
            if c.kind == Kind::FromValues {
                c.kind = Kind::Known(c.seen.data_type());
            }
        }
    }
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(cols.len());
    for col in cols.iter_mut() {
        let target = col.target();
        let text: ArrayRef = Arc::new(col.text.finish());
        let bin: ArrayRef = Arc::new(col.bin.finish());
        let raw = if target == DataType::Binary {
            bin
        } else {
            text
        };
        let array = cast_checked(&raw, &target).map_err(|f| match f {
            CastFailure::Value { index, value } => DataError::Invalid(format!(
                "row {}, column `{}`: value `{value}` is not a valid {target}",
                first_row + index as u64 + 1,
                col.name
            )),
            CastFailure::Types(e) => DataError::Invalid(format!("column `{}`: {e}", col.name)),
        })?;
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

impl SqliteSource {
    fn query(&self, cx: &SourceContext<'_>) -> Result<String, DataError> {
        super::select_sql(cx, &self.query, &self.table, |name| name.quoted())
    }
}

#[async_trait]
impl Source for SqliteSource {
    fn describe(&self) -> String {
        match &self.table {
            Some(t) => format!("sqlite {} (table {t})", self.path),
            None => format!("sqlite {} (query)", self.path),
        }
    }

    fn check(&self, base_dir: &Path) -> Vec<String> {
        if self.path.contains("{{") || self.path.contains("${") {
            return vec![];
        }
        let p = base_dir.join(&self.path);
        if p.is_file() {
            vec![]
        } else {
            vec![format!(
                "the SQLite database `{}` does not exist (looked in {})",
                self.path,
                base_dir.display()
            )]
        }
    }

    async fn read(&self, cx: &SourceContext<'_>) -> Result<DataFrame, DataError> {
        let rendered = cx.task.render_data(&self.path, Escape::Plain)?;
        let path = cx.task.work_dir.join(&rendered);
        if !path.is_file() {
            return Err(DataError::Invalid(format!(
                "no SQLite database at {}",
                path.display()
            )));
        }
        let reader = Reader {
            path,
            query: self.query(cx)?,
            declared: cx.columns.clone(),
            batch_size: cx.task.data.batch_size.max(1),
            cancel: cx.task.cancel.clone(),
            bytes: cx.bytes_read.clone(),
        };
        late_frame(
            cx.session,
            "the SQLite reader",
            cx.task.cancel.clone(),
            |out| reader.run(out),
        )
        .await
    }
}
