//! `source: postgres`: the rows of a query (or a whole table) from PostgreSQL, streamed with
//! `COPY (query) TO STDOUT (FORMAT binary)`, decoded into Arrow batches of `batch_size` rows
//! as they arrive, never held whole. The query is prepared first: that checks it and gives
//! its column types, which decide the Arrow types. `url` is templated (`${PG_PASSWORD}` reads
//! a secret); `query` is rendered with SQL escaping, so `{{ params.x }}` and `{{ watermark }}`
//! become quoted literals, never SQL text (and the session's `standard_conforming_strings`
//! is set on, so a backslash in a value stays a backslash). `{{ watermark }}` is the
//! incremental cursor of the last successful run, or the extract's `initial`.
//!
//! Types: int2/int4/int8 as Int16/Int32/Int64, oid as Int64, float4/float8, numeric as
//! Decimal128 (the column's own precision and scale; an unbounded `numeric` takes a
//! declared `columns:` type or Decimal128(38, 10); digits past the scale are rounded), text,
//! varchar, char, name, citext, enums, json, jsonb, xml and uuid as text, bool, bytea as
//! Binary, date, timestamp as Timestamp(us) and timestamptz as Timestamp(us, UTC); domains as
//! their base type. Any other type (arrays, intervals, times, ranges, geometry, money) is an
//! error naming the column and suggesting a cast in the query. Limits: NaN and infinite
//! numerics, and infinite dates and timestamps, are errors; a query must be one statement
//! that COPY accepts (SELECT, VALUES, TABLE, WITH ...). When the read stops early (the
//! task is cancelled or times out, or the consumer fails) the server is asked to cancel the
//! query. The source writes nothing.

use super::{Source, SourceContext};
use crate::data::postgres::{self, numeric_to_i128, Pg, PG_EPOCH_DAYS, PG_EPOCH_MICROS};
use crate::data::stream::{channel_frame, stream_error, BatchSender};
use crate::data::types::ColumnType;
use crate::data::DataError;
use crate::spec::error::SpecError;
use crate::tasks::BuildContext;
use crate::template::Escape;
use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::DataFrame;
use futures_util::StreamExt;
use indexmap::IndexMap;
use marked_yaml::Node;
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::{FromSql, Kind, Type};
use tokio_util::sync::CancellationToken;

/// The `postgres` source.
#[derive(Debug)]
pub struct PostgresSource {
    url: String,
    query: Option<String>,
    table: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresSpec {
    url: String,
    query: Option<String>,
    table: Option<String>,
}

impl PostgresSource {
    /// A source reading a whole table, for other kinds (a dimension's current rows).
    pub fn table(url: String, table: String) -> PostgresSource {
        PostgresSource {
            url,
            query: None,
            table: Some(table),
        }
    }
}

/// Builds from `url` and `query` or `table`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn Source>, SpecError> {
    let spec: PostgresSpec = cx.decode(node)?;
    super::check_query_or_table(
        &spec.query,
        &spec.table,
        node,
        cx,
        "`source: postgres` needs `query` (a SELECT) or `table` (NAME or SCHEMA.NAME)",
    )?;
    Ok(Arc::new(PostgresSource {
        url: spec.url,
        query: spec.query,
        table: spec.table,
    }))
}

/// Any value, as the bytes of its binary format.
struct Raw<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// How a column's values are decoded.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind2 {
    Bool,
    I16,
    I32,
    I64,
    Oid,
    F32,
    F64,
    Numeric(u8, i8),
    Text,
    Jsonb,
    Uuid,
    Bytea,
    Date,
    Timestamp,
    TimestampTz,
}

/// The Arrow type and decoding of a result column.
fn column_kind(
    name: &str,
    ty: &Type,
    typmod: i32,
    declared: Option<&ColumnType>,
) -> Result<(DataType, Kind2), DataError> {
    match ty.kind() {
        Kind::Enum(_) => return Ok((DataType::Utf8, Kind2::Text)),
        Kind::Domain(inner) => return column_kind(name, inner, -1, declared),
        _ => {}
    }
    let k = match ty.name() {
        "bool" => Kind2::Bool,
        "int2" => Kind2::I16,
        "int4" => Kind2::I32,
        "int8" => Kind2::I64,
        "oid" => Kind2::Oid,
        "float4" => Kind2::F32,
        "float8" => Kind2::F64,
        "numeric" => {
            let (p, s) = match declared.map(|c| &c.data_type) {
                Some(DataType::Decimal128(p, s)) => (*p, *s),
                _ if typmod >= 4 => {
                    let p = (((typmod - 4) >> 16) & 0xffff) as u8;
                    // The scale's 11 low bits, signed (PostgreSQL 15 allows negative ones).
                    let raw = ((typmod - 4) & 0x7ff) as i16;
                    let s = if raw >= 1024 { raw - 2048 } else { raw };
                    let s = s.clamp(0, 38) as i8;
                    let p = p.clamp(1, 38).max(s as u8);
                    (p, s)
                }
                _ => (38, 10),
            };
            Kind2::Numeric(p, s)
        }
        "text" | "varchar" | "bpchar" | "name" | "citext" | "json" | "xml" | "unknown" => {
            Kind2::Text
        }
        "jsonb" => Kind2::Jsonb,
        "uuid" => Kind2::Uuid,
        "bytea" => Kind2::Bytea,
        "date" => Kind2::Date,
        "timestamp" => Kind2::Timestamp,
        "timestamptz" => Kind2::TimestampTz,
        other => {
            return Err(DataError::Invalid(format!(
                "column `{name}` has PostgreSQL type {other}, which cauce does not read; cast it in the query (for example `{}::text`)",
                crate::data::types::quote_ident(name)
            )))
        }
    };
    let dt = match k {
        Kind2::Bool => DataType::Boolean,
        Kind2::I16 => DataType::Int16,
        Kind2::I32 => DataType::Int32,
        Kind2::I64 | Kind2::Oid => DataType::Int64,
        Kind2::F32 => DataType::Float32,
        Kind2::F64 => DataType::Float64,
        Kind2::Numeric(p, s) => DataType::Decimal128(p, s),
        Kind2::Text | Kind2::Jsonb | Kind2::Uuid => DataType::Utf8,
        Kind2::Bytea => DataType::Binary,
        Kind2::Date => DataType::Date32,
        Kind2::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        Kind2::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    };
    Ok((dt, k))
}

/// A column being filled.
enum Column {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Numeric(Decimal128Builder, i8),
    Text(StringBuilder, Kind2),
    Bytea(BinaryBuilder),
    Date(Date32Builder),
    Ts(TimestampMicrosecondBuilder),
}

fn fixed<const N: usize>(raw: &[u8]) -> Result<[u8; N], String> {
    raw.try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", raw.len()))
}

impl Column {
    fn new(kind: Kind2, dt: &DataType, capacity: usize) -> Column {
        match kind {
            Kind2::Bool => Column::Bool(BooleanBuilder::with_capacity(capacity)),
            Kind2::I16 => Column::I16(Int16Builder::with_capacity(capacity)),
            Kind2::I32 => Column::I32(Int32Builder::with_capacity(capacity)),
            Kind2::I64 | Kind2::Oid => Column::I64(Int64Builder::with_capacity(capacity)),
            Kind2::F32 => Column::F32(Float32Builder::with_capacity(capacity)),
            Kind2::F64 => Column::F64(Float64Builder::with_capacity(capacity)),
            Kind2::Numeric(_, s) => Column::Numeric(
                Decimal128Builder::with_capacity(capacity).with_data_type(dt.clone()),
                s,
            ),
            Kind2::Text | Kind2::Jsonb | Kind2::Uuid => {
                Column::Text(StringBuilder::with_capacity(capacity, capacity * 16), kind)
            }
            Kind2::Bytea => Column::Bytea(BinaryBuilder::with_capacity(capacity, capacity * 16)),
            Kind2::Date => Column::Date(Date32Builder::with_capacity(capacity)),
            Kind2::Timestamp | Kind2::TimestampTz => Column::Ts(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_data_type(dt.clone()),
            ),
        }
    }

    /// Appends one value (`None` is NULL); `Err` says what is wrong with it.
    fn append(&mut self, raw: Option<&[u8]>, oid: bool) -> Result<(), String> {
        let Some(raw) = raw else {
            self.append_null();
            return Ok(());
        };
        match self {
            Column::Bool(b) => b.append_value(raw.first().is_some_and(|v| *v != 0)),
            Column::I16(b) => b.append_value(i16::from_be_bytes(fixed(raw)?)),
            Column::I32(b) => b.append_value(i32::from_be_bytes(fixed(raw)?)),
            Column::I64(b) if oid => b.append_value(u32::from_be_bytes(fixed(raw)?) as i64),
            Column::I64(b) => b.append_value(i64::from_be_bytes(fixed(raw)?)),
            Column::F32(b) => b.append_value(f32::from_be_bytes(fixed(raw)?)),
            Column::F64(b) => b.append_value(f64::from_be_bytes(fixed(raw)?)),
            Column::Numeric(b, s) => b.append_value(numeric_to_i128(raw, *s)?),
            Column::Text(b, Kind2::Uuid) => {
                let u: [u8; 16] = fixed(raw)?;
                let h: String = u.iter().map(|x| format!("{x:02x}")).collect();
                b.append_value(format!(
                    "{}-{}-{}-{}-{}",
                    &h[0..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..32]
                ));
            }
            Column::Text(b, kind) => {
                // jsonb's binary format is a version byte, then the text.
                let body = if *kind == Kind2::Jsonb {
                    raw.get(1..).unwrap_or_default()
                } else {
                    raw
                };
                let text =
                    std::str::from_utf8(body).map_err(|_| "the text is not UTF-8".to_string())?;
                b.append_value(text);
            }
            Column::Bytea(b) => b.append_value(raw),
            Column::Date(b) => {
                let d = i32::from_be_bytes(fixed(raw)?);
                if d == i32::MAX || d == i32::MIN {
                    return Err(
                        "an infinite date cannot be stored; filter or cast it in the query".into(),
                    );
                }
                b.append_value(d.checked_add(PG_EPOCH_DAYS).ok_or("date out of range")?);
            }
            Column::Ts(b) => {
                let t = i64::from_be_bytes(fixed(raw)?);
                if t == i64::MAX || t == i64::MIN {
                    return Err(
                        "an infinite timestamp cannot be stored; filter or cast it in the query"
                            .into(),
                    );
                }
                b.append_value(
                    t.checked_add(PG_EPOCH_MICROS)
                        .ok_or("timestamp out of range")?,
                );
            }
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match self {
            Column::Bool(b) => b.append_null(),
            Column::I16(b) => b.append_null(),
            Column::I32(b) => b.append_null(),
            Column::I64(b) => b.append_null(),
            Column::F32(b) => b.append_null(),
            Column::F64(b) => b.append_null(),
            Column::Numeric(b, _) => b.append_null(),
            Column::Text(b, _) => b.append_null(),
            Column::Bytea(b) => b.append_null(),
            Column::Date(b) => b.append_null(),
            Column::Ts(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Bool(b) => Arc::new(b.finish()),
            Column::I16(b) => Arc::new(b.finish()),
            Column::I32(b) => Arc::new(b.finish()),
            Column::I64(b) => Arc::new(b.finish()),
            Column::F32(b) => Arc::new(b.finish()),
            Column::F64(b) => Arc::new(b.finish()),
            Column::Numeric(b, _) => Arc::new(b.finish()),
            Column::Text(b, _) => Arc::new(b.finish()),
            Column::Bytea(b) => Arc::new(b.finish()),
            Column::Date(b) => Arc::new(b.finish()),
            Column::Ts(b) => Arc::new(b.finish()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Column::Bool(b) => b.len(),
            Column::I16(b) => b.len(),
            Column::I32(b) => b.len(),
            Column::I64(b) => b.len(),
            Column::F32(b) => b.len(),
            Column::F64(b) => b.len(),
            Column::Numeric(b, _) => b.len(),
            Column::Text(b, _) => b.len(),
            Column::Bytea(b) => b.len(),
            Column::Date(b) => b.len(),
            Column::Ts(b) => b.len(),
        }
    }
}

/// Everything the reading task owns.
struct Reader {
    pg: Pg,
    copy_sql: String,
    types: Vec<Type>,
    kinds: Vec<Kind2>,
    schema: SchemaRef,
    batch_size: usize,
    tx: BatchSender,
    cancel: CancellationToken,
    bytes: Arc<AtomicU64>,
    redactor: Arc<crate::secrets::Redactor>,
}

impl Reader {
    /// Streams the rows into the channel; stops at the end, on an error (sent as the
    /// stream's last item), when the consumer goes away, or on cancellation.
    async fn run(self) {
        // Dropped before the end (the runtime shutting down under a cancelled run), the
        // guard still stops the query on the server.
        let guard = self.pg.cancel_guard();
        let outcome = self.copy().await;
        let stopped_early = !matches!(outcome, Ok(true));
        if stopped_early {
            // Let the server stop producing rows nobody will read.
            self.pg.cancel().await;
        }
        guard.disarm();
        if let Err(e) = outcome {
            let e = postgres::redact(e, &self.redactor);
            let _ = self.tx.send(Err(stream_error(e))).await;
        }
    }

    /// `Ok(true)` when every row was read, `Ok(false)` when the consumer went away.
    async fn copy(&self) -> Result<bool, DataError> {
        let start = self.pg.client.copy_out(self.copy_sql.as_str());
        let stream = tokio::select! {
            r = start => r.map_err(|e| postgres::error("running the query", &e))?,
            _ = self.cancel.cancelled() => return Err(DataError::Cancelled),
            _ = self.tx.closed() => return Ok(false),
        };
        let rows = BinaryCopyOutStream::new(stream, &self.types);
        futures_util::pin_mut!(rows);
        let names: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        let mut cols: Vec<Column> = self
            .kinds
            .iter()
            .zip(self.schema.fields())
            .map(|(k, f)| Column::new(*k, f.data_type(), self.batch_size))
            .collect();
        let mut row_no: u64 = 0;
        let mut bytes: u64 = 0;
        loop {
            let next = tokio::select! {
                biased;
                r = rows.next() => r,
                _ = self.cancel.cancelled() => return Err(DataError::Cancelled),
                _ = self.tx.closed() => return Ok(false),
            };
            let Some(row) = next else { break };
            let row = row.map_err(|e| postgres::error("reading the rows", &e))?;
            row_no += 1;
            for (i, col) in cols.iter_mut().enumerate() {
                let raw: Option<Raw> = row
                    .try_get(i)
                    .map_err(|e| postgres::error("reading the rows", &e))?;
                let raw = raw.map(|r| r.0);
                bytes += raw.map_or(0, |r| r.len() as u64) + 4;
                col.append(raw, self.kinds[i] == Kind2::Oid).map_err(|m| {
                    DataError::Invalid(format!("row {row_no}, column `{}`: {m}", names[i]))
                })?;
            }
            if cols.first().map_or(0, |c| c.len()) >= self.batch_size {
                self.bytes.fetch_add(bytes, Ordering::Relaxed);
                bytes = 0;
                if !self.send(&mut cols).await? {
                    return Ok(false);
                }
            }
        }
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if cols.first().map_or(0, |c| c.len()) > 0 && !self.send(&mut cols).await? {
            return Ok(false);
        }
        Ok(true)
    }

    /// Sends the rows so far as a batch; `Ok(false)` when nobody is listening.
    async fn send(&self, cols: &mut [Column]) -> Result<bool, DataError> {
        if self.cancel.is_cancelled() {
            return Err(DataError::Cancelled);
        }
        let arrays: Vec<ArrayRef> = cols.iter_mut().map(|c| c.finish()).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| DataError::Invalid(format!("building a batch: {e}")))?;
        Ok(self.tx.send(Ok(batch)).await.is_ok())
    }
}

impl PostgresSource {
    /// The query to run, rendered (values as SQL literals; `{{ watermark }}` is the
    /// incremental cursor, or the extract's `initial` before the first successful run).
    fn query(&self, cx: &SourceContext<'_>) -> Result<String, DataError> {
        super::select_sql(cx, &self.query, &self.table, |name| name.quoted())
    }
}

/// The query without trailing semicolons, as `COPY` takes it.
fn trim_query(q: &str) -> &str {
    let mut t = q.trim();
    while let Some(rest) = t.strip_suffix(';') {
        t = rest.trim_end();
    }
    t
}

/// The Arrow schema of the prepared query's columns.
fn schema_of(
    stmt: &tokio_postgres::Statement,
    declared: &IndexMap<String, ColumnType>,
) -> Result<(Schema, Vec<Kind2>), DataError> {
    let mut fields = Vec::new();
    let mut kinds = Vec::new();
    for c in stmt.columns() {
        if fields.iter().any(|f: &Field| f.name() == c.name()) {
            return Err(DataError::Invalid(format!(
                "the query returns two columns named `{}`; name them apart with AS",
                c.name()
            )));
        }
        let (dt, k) = column_kind(
            c.name(),
            c.type_(),
            c.type_modifier(),
            declared.get(c.name()),
        )?;
        fields.push(Field::new(c.name(), dt, true));
        kinds.push(k);
    }
    Ok((Schema::new(fields), kinds))
}

#[async_trait]
impl Source for PostgresSource {
    fn describe(&self) -> String {
        let what = match (&self.query, &self.table) {
            (_, Some(t)) => format!("table {t}"),
            _ => "query".to_string(),
        };
        format!("postgres {} ({what})", postgres::safe_target(&self.url))
    }

    async fn read(&self, cx: &SourceContext<'_>) -> Result<DataFrame, DataError> {
        let url = cx.task.render_data(&self.url, Escape::Plain)?;
        let query = self.query(cx)?;
        let redactor = cx.task.log.redactor();
        let pg = postgres::connect(&url, &redactor).await?;
        let fail = |what: &str, e: tokio_postgres::Error| {
            postgres::redact(postgres::error(what, &e), &redactor)
        };
        pg.client
            .batch_execute("SET standard_conforming_strings = on")
            .await
            .map_err(|e| fail("setting up the session", e))?;
        let query = trim_query(&query);
        let stmt = pg
            .client
            .prepare(query)
            .await
            .map_err(|e| fail("preparing the query", e))?;
        let (schema, kinds) = schema_of(&stmt, cx.columns)?;
        let schema = Arc::new(schema);
        let types: Vec<Type> = stmt.columns().iter().map(|c| c.type_().clone()).collect();
        cx.task.log.note(&format!(
            "postgres {}: {} columns, streaming with COPY (FORMAT binary)",
            pg.target,
            types.len()
        ));
        let (tx, df) = channel_frame(cx.session, schema.clone())?;
        let reader = Reader {
            pg,
            // A newline before the parenthesis, so a query ending in a `--` comment works.
            copy_sql: format!("COPY (\n{query}\n) TO STDOUT (FORMAT binary)"),
            types,
            kinds,
            schema,
            batch_size: cx.task.data.batch_size.max(1),
            tx,
            cancel: cx.task.cancel.clone(),
            bytes: cx.bytes_read.clone(),
            redactor,
        };
        tokio::spawn(reader.run());
        Ok(df)
    }
}
