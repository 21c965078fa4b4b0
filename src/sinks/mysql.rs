//! `sink: mysql`: loads a dataset into a MySQL or MariaDB table with multi-row INSERTs of
//! bound values (up to 1,000 rows, and 65,535 values, a statement), all inside one
//! transaction, so a failed or cancelled load leaves the rows as they were. The session is
//! strict (`STRICT_ALL_TABLES`): a value that does not fit its column is an error, never a
//! silent truncation. `mode: append` (default) adds the rows; `replace` deletes the old rows
//! (DELETE, not TRUNCATE, which would commit) and inserts the new ones in the same
//! transaction; `upsert` inserts with `ON DUPLICATE KEY UPDATE` on `keys`, which must be
//! the table's primary key or a unique index (created so when cauce creates the table);
//! when the dataset holds a key twice, its last row wins.
//!
//! A missing table is created (InnoDB's default engine, utf8mb4): Int64 BIGINT, Int32 INT,
//! Int16 SMALLINT, Int8 TINYINT, Float64 DOUBLE, Float32 FLOAT, Decimal128(p,s)
//! DECIMAL(p,s), Utf8 LONGTEXT (VARCHAR(255) for keys), Boolean BOOLEAN, Date32 DATE,
//! Timestamp DATETIME(6) (a timestamp with a time zone is written in UTC), Binary LONGBLOB
//! (VARBINARY(255) for keys). Into an existing table each dataset column must exist with a
//! compatible type, checked before any row is written. Limits: MySQL cannot create a table
//! inside a transaction, so a first load that fails leaves the table it created (empty;
//! cauce drops it when it can); rows go through the server's parser, several times slower
//! than PostgreSQL's binary COPY.

use super::postgres::{check_keys, TableMode};
use super::{single, Input, Sink, SinkContext};
use crate::data::dataset::Written;
use crate::data::mysql::{self, compatible, ddl_type, quote, quote_table};
use crate::data::postgres::{cast_checked, CastFailure, TableName};
use crate::data::DataError;
use crate::spec::error::SpecError;
use crate::tasks::BuildContext;
use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Float64Array, Int64Array, StringArray,
    TimestampMicrosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use futures_util::StreamExt;
use marked_yaml::Node;
use serde::Deserialize;
use sqlx::mysql::MySqlArguments;
use sqlx::{Acquire, Arguments, Connection, Executor};
use std::sync::Arc;

/// Rows per INSERT statement at most.
const ROWS_PER_INSERT: usize = 1000;
/// Bound values per statement at most (the protocol's limit).
const MAX_PARAMS: usize = 65_535;

/// The `mysql` sink.
#[derive(Debug)]
pub struct MysqlSink {
    url: String,
    table: String,
    mode: TableMode,
    keys: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MysqlSpec {
    url: String,
    table: String,
    mode: Option<TableMode>,
    keys: Option<Vec<String>>,
}

/// Builds from `url`, `table`, `mode`, `keys`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn Sink>, SpecError> {
    let spec: MysqlSpec = cx.decode(node)?;
    let mode = spec.mode.unwrap_or(TableMode::Append);
    let keys = spec.keys.unwrap_or_default();
    check_keys(mode, &keys).map_err(|e| cx.error(node, e))?;
    if !spec.table.contains("{{") {
        TableName::parse(&spec.table).map_err(|e| cx.error(node, e))?;
    }
    Ok(Arc::new(MysqlSink {
        url: spec.url,
        table: spec.table,
        mode,
        keys,
    }))
}

/// A batch's column in the form it is bound.
enum Bind {
    I64(Int64Array),
    U64(UInt64Array),
    F64(Float64Array),
    Bool(BooleanArray),
    Text(StringArray),
    Ts(TimestampMicrosecondArray),
    Bin(BinaryArray),
}

/// What a dataset column is cast to before binding.
fn bind_type(t: &DataType) -> DataType {
    match t {
        DataType::UInt64 => DataType::UInt64,
        t if t.is_integer() => DataType::Int64,
        t if t.is_floating() => DataType::Float64,
        DataType::Boolean => DataType::Boolean,
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => DataType::Binary,
        // Decimals and dates as text (`10.50`, `2024-01-05`), which the server parses exactly.
        _ => DataType::Utf8,
    }
}

fn to_bind(a: &ArrayRef) -> Option<Bind> {
    Some(match a.data_type() {
        DataType::Int64 => Bind::I64(a.as_primitive_opt()?.clone()),
        DataType::UInt64 => Bind::U64(a.as_primitive_opt()?.clone()),
        DataType::Float64 => Bind::F64(a.as_primitive_opt()?.clone()),
        DataType::Boolean => Bind::Bool(a.as_boolean_opt()?.clone()),
        DataType::Timestamp(..) => Bind::Ts(a.as_primitive_opt()?.clone()),
        DataType::Binary => Bind::Bin(a.as_binary_opt::<i32>()?.clone()),
        _ => Bind::Text(a.as_string_opt::<i32>()?.clone()),
    })
}

impl Bind {
    fn add(&self, row: usize, args: &mut MySqlArguments) -> Result<(), sqlx::error::BoxDynError> {
        match self {
            Bind::I64(a) => args.add(a.is_valid(row).then(|| a.value(row))),
            Bind::U64(a) => args.add(a.is_valid(row).then(|| a.value(row))),
            Bind::F64(a) => args.add(a.is_valid(row).then(|| a.value(row))),
            Bind::Bool(a) => args.add(a.is_valid(row).then(|| a.value(row))),
            Bind::Text(a) => args.add(a.is_valid(row).then(|| a.value(row).to_string())),
            Bind::Bin(a) => args.add(a.is_valid(row).then(|| a.value(row).to_vec())),
            Bind::Ts(a) => args.add(a.is_valid(row).then(|| {
                chrono::DateTime::from_timestamp_micros(a.value(row))
                    .map(|t| t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string())
                    .unwrap_or_default()
            })),
        }
    }
}

impl MysqlSink {
    /// Checks the target against the data; creates it when missing. `true` when created.
    async fn prepare_table(
        &self,
        cx: &SinkContext<'_>,
        my: &mut mysql::My,
        table: &TableName,
        input: &Input,
    ) -> Result<bool, DataError> {
        let schema = input.frame.schema().inner().clone();
        let existing = mysql::catalog(&mut my.conn, table.schema.as_deref(), &table.name).await?;
        if existing.is_empty() {
            let mut defs = Vec::new();
            for f in schema.fields() {
                let key = self.keys.iter().any(|k| k == f.name());
                defs.push(format!("{} {}", quote(f.name()), ddl_type(f, key)?));
            }
            if !self.keys.is_empty() {
                let keys: Vec<String> = self.keys.iter().map(|k| quote(k)).collect();
                defs.push(format!("PRIMARY KEY ({})", keys.join(", ")));
            }
            let ddl = format!(
                "CREATE TABLE {} ({}) DEFAULT CHARSET = utf8mb4",
                quote_table(table),
                defs.join(", ")
            );
            my.conn
                .execute(sqlx::AssertSqlSafe(ddl.clone()))
                .await
                .map_err(|e| mysql::error(&format!("creating table {table}"), &e))?;
            cx.task.log.note(&format!("created table {table}: {ddl}"));
            return Ok(true);
        }
        let mut problems = Vec::new();
        for f in schema.fields() {
            match existing.iter().find(|c| c.name == *f.name()) {
                None => problems.push(format!(
                    "column `{}` is not in table {table}{}",
                    f.name(),
                    crate::spec::error::suggestion(
                        f.name(),
                        existing.iter().map(|c| c.name.as_str())
                    )
                )),
                Some(c) if !compatible(f.data_type(), &c.data_type) => problems.push(format!(
                    "column `{}` is {} in the data but {} in table {table}",
                    f.name(),
                    f.data_type(),
                    c.column_type
                )),
                Some(_) => {}
            }
        }
        if !problems.is_empty() {
            return Err(DataError::Invalid(format!(
                "cannot load `{}` into {table}: {}; cast the columns in a `sql` task, or change the table",
                input.name,
                problems.join("; ")
            )));
        }
        if self.mode == TableMode::Upsert {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT CAST(INDEX_NAME AS CHAR), CAST(COLUMN_NAME AS CHAR) FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? AND NON_UNIQUE = 0",
            )
            .bind(table.schema.as_deref())
            .bind(&table.name)
            .fetch_all(&mut my.conn)
            .await
            .map_err(|e| mysql::error(&format!("reading the indexes of {table}"), &e))?;
            let mut indexes: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for (index, column) in rows {
                indexes.entry(index).or_default().push(column);
            }
            let mut want = self.keys.clone();
            want.sort();
            let found = indexes.values_mut().any(|cols| {
                cols.sort();
                *cols == want
            });
            if !found {
                return Err(DataError::Invalid(format!(
                    "upsert into {table} needs a primary key or unique index on ({}), which the table does not have; add one (ALTER TABLE {} ADD PRIMARY KEY (...))",
                    self.keys.join(", "),
                    quote_table(table)
                )));
            }
        }
        Ok(false)
    }

    async fn load(
        &self,
        cx: &SinkContext<'_>,
        my: &mut mysql::My,
        table: &TableName,
        input: Input,
    ) -> Result<Written, DataError> {
        let schema = input.frame.schema().inner().clone();
        let fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        let names: Vec<String> = fields.iter().map(|f| f.name().clone()).collect();
        let qt = quote_table(table);
        let list = names
            .iter()
            .map(|n| quote(n))
            .collect::<Vec<_>>()
            .join(", ");
        let per_stmt = (MAX_PARAMS / names.len().max(1)).clamp(1, ROWS_PER_INSERT);
        let tail = match self.mode {
            TableMode::Upsert => {
                let updates: Vec<String> = names
                    .iter()
                    .filter(|n| !self.keys.contains(n))
                    .map(|n| format!("{0} = VALUES({0})", quote(n)))
                    .collect();
                let updates = if updates.is_empty() {
                    // Nothing but keys: a duplicate is left as it is.
                    let k = quote(&self.keys[0]);
                    vec![format!("{k} = {k}")]
                } else {
                    updates
                };
                format!(" ON DUPLICATE KEY UPDATE {}", updates.join(", "))
            }
            _ => String::new(),
        };
        let row_marks = format!("({})", vec!["?"; names.len()].join(", "));
        let statement = |rows: usize| {
            format!(
                "INSERT INTO {qt} ({list}) VALUES {}{tail}",
                vec![row_marks.as_str(); rows].join(", ")
            )
        };
        let full = statement(per_stmt);
        let mut tx = Connection::begin(&mut my.conn)
            .await
            .map_err(|e| mysql::error("starting a transaction", &e))?;
        if self.mode == TableMode::Replace {
            let done = tx
                .execute(sqlx::AssertSqlSafe(format!("DELETE FROM {qt}")))
                .await
                .map_err(|e| mysql::error(&format!("emptying {table}"), &e))?;
            cx.task.log.note(&format!(
                "replace: {} old rows deleted (until commit, readers still see them)",
                done.rows_affected()
            ));
        }
        let mut stream = input
            .frame
            .execute_stream()
            .await
            .map_err(|e| DataError::from_datafusion(format!("reading `{}`", input.name), e))?;
        let mut rows: u64 = 0;
        let mut bytes: u64 = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch
                .map_err(|e| DataError::from_datafusion(format!("reading `{}`", input.name), e))?;
            let mut binds = Vec::with_capacity(fields.len());
            for (i, f) in fields.iter().enumerate() {
                let to = bind_type(f.data_type());
                let a = cast_checked(batch.column(i), &to).map_err(|e| match e {
                    CastFailure::Value { index, value } => DataError::Invalid(format!(
                        "table {table}, row {}, column `{}`: value `{value}` cannot be written",
                        rows + index as u64 + 1,
                        f.name()
                    )),
                    CastFailure::Types(e) => {
                        DataError::Invalid(format!("table {table}, column `{}`: {e}", f.name()))
                    }
                })?;
                bytes += a.get_buffer_memory_size() as u64;
                binds.push(to_bind(&a).ok_or_else(|| {
                    DataError::Invalid(format!("column `{}`: unexpected array type", f.name()))
                })?);
            }
            let n = batch.num_rows();
            let mut start = 0;
            while start < n {
                let count = per_stmt.min(n - start);
                let mut args = MySqlArguments::default();
                for row in start..start + count {
                    for b in &binds {
                        b.add(row, &mut args).map_err(|e| {
                            DataError::Invalid(format!(
                                "table {table}, row {}: {e}",
                                rows + row as u64 + 1
                            ))
                        })?;
                    }
                }
                let sql = if count == per_stmt {
                    full.clone()
                } else {
                    statement(count)
                };
                let conn = tx
                    .acquire()
                    .await
                    .map_err(|e| mysql::error("using the transaction", &e))?;
                sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
                    .execute(conn)
                    .await
                    .map_err(|e| {
                        mysql::error(
                            &format!(
                                "loading {table} (rows {} to {})",
                                rows + start as u64 + 1,
                                rows + (start + count) as u64
                            ),
                            &e,
                        )
                    })?;
                start += count;
            }
            rows += n as u64;
        }
        tx.commit()
            .await
            .map_err(|e| mysql::error(&format!("committing the load into {table}"), &e))?;
        Ok(Written { rows, bytes })
    }
}

#[async_trait]
impl Sink for MysqlSink {
    fn describe(&self) -> String {
        let mode = self.mode.describe(&self.keys);
        format!(
            "mysql {} table {} ({mode})",
            mysql::safe_target(&self.url),
            self.table
        )
    }

    async fn write(&self, cx: &SinkContext<'_>, inputs: Vec<Input>) -> Result<Written, DataError> {
        let input = single(inputs, "mysql")?;
        let url = cx.text(&self.url)?;
        let table = cx.text(&self.table)?;
        let table = TableName::parse(&table).map_err(DataError::Invalid)?;
        let redactor = cx.task.log.redactor();
        let mut my = mysql::connect(&url, &redactor, "STRICT_ALL_TABLES").await?;
        let names: Vec<String> = input
            .frame
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        for k in &self.keys {
            if !names.contains(k) {
                return Err(DataError::Invalid(format!(
                    "key `{k}` is not a column of `{}`; its columns: {}",
                    input.name,
                    names.join(", ")
                )));
            }
        }
        let created = self
            .prepare_table(cx, &mut my, &table, &input)
            .await
            .map_err(|e| mysql::redact(e, &redactor))?;
        let result = self.load(cx, &mut my, &table, input).await;
        if result.is_err() && created {
            // DDL is not transactional in MySQL: take back the table this load created.
            let _ = my
                .conn
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP TABLE IF EXISTS {}",
                    quote_table(&table)
                )))
                .await;
        }
        result.map_err(|e| mysql::redact(e, &redactor))
    }
}
