//! `sink: postgres`: loads a dataset into a PostgreSQL table with binary COPY, all in one
//! transaction, so a failed or cancelled load leaves the table as it was (and readers see
//! the old rows or the new ones, never a mix). `mode: append` (the default) adds the rows;
//! `replace` deletes the table's rows and loads the new ones in the same transaction
//! (readers keep seeing the old rows until it commits; the table's indexes, grants and
//! columns stay); `upsert` copies into a temporary table, then `INSERT ... ON CONFLICT
//! (keys) DO UPDATE` the target: new keys are added and existing ones updated; when the
//! dataset holds a key twice, its last row wins.
//!
//! A missing table is created from the dataset's columns (inside the transaction; with a
//! primary key on `keys` for upsert): Int64 bigint, Int32 integer, Int16/Int8 smallint,
//! Float64 double precision, Float32 real, Decimal128(p,s) numeric(p,s), Utf8 text, Boolean
//! boolean, Date32 date, Timestamp(us) timestamp, Timestamp(us, tz) timestamptz, Binary
//! bytea. Into an existing table each dataset column must exist and have a compatible type
//! (integers into int2/int4/int8/numeric/float columns, checked for range; decimals into
//! numeric or float; text into text, varchar, char, json, jsonb, uuid and enum columns;
//! dates into date; timestamps into timestamp or timestamptz, a timestamp without time zone
//! taken as UTC), checked before any row is written; the table's other columns take their
//! defaults. Not here: creating schemas, changing existing columns, deletes of keys that
//! left the source.

use super::{single, Input, Sink, SinkContext};
use crate::data::dataset::Written;
use crate::data::postgres::{
    self, cast_checked, ddl_type, numeric_from_i128, CastFailure, TableName, PG_EPOCH_DAYS,
    PG_EPOCH_MICROS,
};
use crate::data::types::quote_ident;
use crate::data::DataError;
use crate::spec::error::SpecError;
use crate::tasks::BuildContext;
use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array,
    Float32Array, Float64Array, Int16Array, Int32Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use futures_util::StreamExt;
use marked_yaml::Node;
use serde::Deserialize;
use std::sync::Arc;
use tokio_postgres::types::{Kind, Type};
use tokio_util::bytes::{BufMut, BytesMut};

/// What a load does to the rows already in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableMode {
    /// Adds the rows.
    Append,
    /// Replaces all rows.
    Replace,
    /// Inserts new keys, updates existing ones.
    Upsert,
}

impl TableMode {
    /// `append`, `replace` or `upsert on KEYS`, for a load's description.
    pub fn describe(self, keys: &[String]) -> String {
        match self {
            TableMode::Append => "append".to_string(),
            TableMode::Replace => "replace".to_string(),
            TableMode::Upsert => format!("upsert on {}", keys.join(", ")),
        }
    }
}

/// The `postgres` sink.
#[derive(Debug)]
pub struct PostgresSink {
    url: String,
    table: String,
    mode: TableMode,
    keys: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresSpec {
    url: String,
    table: String,
    mode: Option<TableMode>,
    keys: Option<Vec<String>>,
}

impl PostgresSink {
    /// A sink for other kinds to write with (a dimension's changes, upserted on its key).
    pub fn new(url: String, table: String, mode: TableMode, keys: Vec<String>) -> PostgresSink {
        PostgresSink {
            url,
            table,
            mode,
            keys,
        }
    }
}

/// Checks `mode` and `keys` together (shared with the mysql sink's rules).
pub fn check_keys(mode: TableMode, keys: &[String]) -> Result<(), String> {
    match mode {
        TableMode::Upsert if keys.is_empty() => {
            Err("`mode: upsert` needs `keys`: the columns that identify a row".into())
        }
        TableMode::Append | TableMode::Replace if !keys.is_empty() => {
            Err("`keys` applies to `mode: upsert` only".into())
        }
        _ => {
            for (i, k) in keys.iter().enumerate() {
                if keys[..i].contains(k) {
                    return Err(format!("key `{k}` is listed twice in `keys`"));
                }
            }
            Ok(())
        }
    }
}

/// Builds from `url`, `table`, `mode`, `keys`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn Sink>, SpecError> {
    let spec: PostgresSpec = cx.decode(node)?;
    let mode = spec.mode.unwrap_or(TableMode::Append);
    let keys = spec.keys.unwrap_or_default();
    check_keys(mode, &keys).map_err(|e| cx.error(node, e))?;
    if !spec.table.contains("{{") {
        TableName::parse(&spec.table).map_err(|e| cx.error(node, e))?;
    }
    Ok(Arc::new(PostgresSink {
        url: spec.url,
        table: spec.table,
        mode,
        keys,
    }))
}

/// How one column's values are put on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Wire {
    Bool,
    I16,
    I32,
    I64,
    F32,
    F64,
    Numeric,
    Text,
    Jsonb,
    Uuid,
    Bytea,
    Date,
    Timestamp,
}

/// One dataset column and the table column it goes to.
#[derive(Debug)]
struct Target {
    name: String,
    /// The table column's type (what COPY expects).
    pg: Type,
    /// What the values are cast to before encoding.
    cast_to: DataType,
    wire: Wire,
}

/// The name of a PostgreSQL type as a user would write it.
fn pg_name(ty: &Type) -> String {
    match ty.name() {
        "int2" => "smallint".into(),
        "int4" => "integer".into(),
        "int8" => "bigint".into(),
        "float4" => "real".into(),
        "float8" => "double precision".into(),
        "bpchar" => "char".into(),
        "bool" => "boolean".into(),
        other => other.into(),
    }
}

/// How a dataset column is written into a table column of type `ty`, or why it cannot be.
fn plan(field: &Field, ty: &Type, typmod: i32) -> Result<(DataType, Wire), ()> {
    let src = field.data_type();
    let null = *src == DataType::Null;
    let int = src.is_integer() || null;
    let float = src.is_floating() || null;
    let dec = matches!(
        src,
        DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
    ) || null;
    let text = matches!(
        src,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) || null;
    let bin = matches!(
        src,
        DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
    ) || null;
    let date = matches!(src, DataType::Date32 | DataType::Date64) || null;
    let ts = matches!(src, DataType::Timestamp(..)) || null;
    let base = match ty.kind() {
        Kind::Domain(inner) => return plan(field, inner, -1),
        Kind::Enum(_) => "enum",
        _ => ty.name(),
    };
    Ok(match base {
        "bool" if *src == DataType::Boolean || null => (DataType::Boolean, Wire::Bool),
        "int2" if int => (DataType::Int16, Wire::I16),
        "int4" if int => (DataType::Int32, Wire::I32),
        "int8" if int => (DataType::Int64, Wire::I64),
        "float4" if int || float || dec => (DataType::Float32, Wire::F32),
        "float8" if int || float || dec => (DataType::Float64, Wire::F64),
        "numeric" if int || float || dec => {
            let scale = if typmod >= 4 {
                let raw = ((typmod - 4) & 0x7ff) as i16;
                (if raw >= 1024 { raw - 2048 } else { raw }).clamp(0, 38) as i8
            } else {
                match src {
                    DataType::Decimal32(_, s)
                    | DataType::Decimal64(_, s)
                    | DataType::Decimal128(_, s)
                    | DataType::Decimal256(_, s) => (*s).clamp(0, 38),
                    _ if src.is_floating() => 10,
                    _ => 0,
                }
            };
            (DataType::Decimal128(38, scale), Wire::Numeric)
        }
        "text" | "varchar" | "bpchar" | "name" | "citext" | "json" | "xml" | "enum" if text => {
            (DataType::Utf8, Wire::Text)
        }
        "jsonb" if text => (DataType::Utf8, Wire::Jsonb),
        "uuid" if text => (DataType::Utf8, Wire::Uuid),
        "bytea" if bin => (DataType::Binary, Wire::Bytea),
        "date" if date => (DataType::Date32, Wire::Date),
        "timestamp" | "timestamptz" if ts || date => {
            let tz = match src {
                DataType::Timestamp(_, tz) => tz.clone(),
                _ => None,
            };
            (
                DataType::Timestamp(TimeUnit::Microsecond, tz),
                Wire::Timestamp,
            )
        }
        _ => return Err(()),
    })
}

/// One batch's column, ready to encode.
#[derive(Debug)]
enum Enc {
    Bool(BooleanArray),
    I16(Int16Array),
    I32(Int32Array),
    I64(Int64Array),
    F32(Float32Array),
    F64(Float64Array),
    Numeric(Decimal128Array, i8),
    Text(StringArray, bool),
    Uuid(Vec<Option<[u8; 16]>>),
    Bytea(BinaryArray),
    Date(Date32Array),
    Ts(TimestampMicrosecondArray),
}

/// Parses a UUID written with or without hyphens (and braces).
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .bytes()
        .filter(|b| *b != b'-')
        .collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Casts a column to what its target expects; a value that does not fit is an error naming
/// the row (1-based in the dataset) and the column.
fn prepare(
    array: &ArrayRef,
    target: &Target,
    first_row: u64,
    table: &TableName,
) -> Result<Enc, DataError> {
    let cast = cast_checked(array, &target.cast_to).map_err(|f| match f {
        CastFailure::Value { index, value } => DataError::Invalid(format!(
            "table {table}, row {}, column `{}`: value `{value}` does not fit the column's type {}",
            first_row + index as u64 + 1,
            target.name,
            pg_name(&target.pg)
        )),
        CastFailure::Types(e) => {
            DataError::Invalid(format!("table {table}, column `{}`: {e}", target.name))
        }
    })?;
    let bad = || DataError::Invalid(format!("column `{}`: unexpected array type", target.name));
    Ok(match target.wire {
        Wire::Bool => Enc::Bool(cast.as_boolean_opt().ok_or_else(bad)?.clone()),
        Wire::I16 => Enc::I16(cast.as_primitive_opt().ok_or_else(bad)?.clone()),
        Wire::I32 => Enc::I32(cast.as_primitive_opt().ok_or_else(bad)?.clone()),
        Wire::I64 => Enc::I64(cast.as_primitive_opt().ok_or_else(bad)?.clone()),
        Wire::F32 => Enc::F32(cast.as_primitive_opt().ok_or_else(bad)?.clone()),
        Wire::F64 => Enc::F64(cast.as_primitive_opt().ok_or_else(bad)?.clone()),
        Wire::Numeric => {
            let a: &Decimal128Array = cast.as_primitive_opt().ok_or_else(bad)?;
            Enc::Numeric(a.clone(), a.scale())
        }
        Wire::Text | Wire::Jsonb => Enc::Text(
            cast.as_string_opt::<i32>().ok_or_else(bad)?.clone(),
            target.wire == Wire::Jsonb,
        ),
        Wire::Uuid => {
            let a = cast.as_string_opt::<i32>().ok_or_else(bad)?;
            let mut out = Vec::with_capacity(a.len());
            for (i, v) in a.iter().enumerate() {
                match v {
                    None => out.push(None),
                    Some(t) => match parse_uuid(t) {
                        Some(u) => out.push(Some(u)),
                        None => {
                            return Err(DataError::Invalid(format!(
                                "table {table}, row {}, column `{}`: `{t}` is not a UUID",
                                first_row + i as u64 + 1,
                                target.name
                            )))
                        }
                    },
                }
            }
            Enc::Uuid(out)
        }
        Wire::Bytea => Enc::Bytea(cast.as_binary_opt::<i32>().ok_or_else(bad)?.clone()),
        Wire::Date => Enc::Date(cast.as_primitive_opt().ok_or_else(bad)?.clone()),
        Wire::Timestamp => Enc::Ts(cast.as_primitive_opt().ok_or_else(bad)?.clone()),
    })
}

impl Enc {
    fn is_null(&self, row: usize) -> bool {
        match self {
            Enc::Bool(a) => a.is_null(row),
            Enc::I16(a) => a.is_null(row),
            Enc::I32(a) => a.is_null(row),
            Enc::I64(a) => a.is_null(row),
            Enc::F32(a) => a.is_null(row),
            Enc::F64(a) => a.is_null(row),
            Enc::Numeric(a, _) => a.is_null(row),
            Enc::Text(a, _) => a.is_null(row),
            Enc::Uuid(v) => v.get(row).is_none_or(|x| x.is_none()),
            Enc::Bytea(a) => a.is_null(row),
            Enc::Date(a) => a.is_null(row),
            Enc::Ts(a) => a.is_null(row),
        }
    }

    /// Writes the binary form of a non-null value.
    fn encode(&self, row: usize, out: &mut BytesMut) {
        match self {
            Enc::Bool(a) => out.put_u8(a.value(row) as u8),
            Enc::I16(a) => out.put_i16(a.value(row)),
            Enc::I32(a) => out.put_i32(a.value(row)),
            Enc::I64(a) => out.put_i64(a.value(row)),
            Enc::F32(a) => out.put_f32(a.value(row)),
            Enc::F64(a) => out.put_f64(a.value(row)),
            Enc::Numeric(a, s) => {
                let mut tmp = Vec::with_capacity(16);
                numeric_from_i128(a.value(row), *s, &mut tmp);
                out.put_slice(&tmp);
            }
            Enc::Text(a, jsonb) => {
                if *jsonb {
                    out.put_u8(1);
                }
                out.put_slice(a.value(row).as_bytes());
            }
            Enc::Uuid(v) => {
                if let Some(Some(u)) = v.get(row) {
                    out.put_slice(u);
                }
            }
            Enc::Bytea(a) => out.put_slice(a.value(row)),
            Enc::Date(a) => out.put_i32(a.value(row).saturating_sub(PG_EPOCH_DAYS)),
            Enc::Ts(a) => out.put_i64(a.value(row).saturating_sub(PG_EPOCH_MICROS)),
        }
    }
}

/// The signature, flags and header extension that open a binary COPY stream.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Appends the rows of one batch to `out` in binary COPY format: per row the field count,
/// then per field its length (-1 for null) and bytes.
fn encode_rows(encs: &[Enc], rows: usize, out: &mut BytesMut) {
    let fields = encs.len() as i16;
    for row in 0..rows {
        out.put_i16(fields);
        for enc in encs {
            if enc.is_null(row) {
                out.put_i32(-1);
                continue;
            }
            let at = out.len();
            out.put_i32(0);
            enc.encode(row, out);
            let len = (out.len() - at - 4) as i32;
            out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
}

/// Reads `stream` and sends each batch as one chunk of binary COPY data (the header before
/// the first rows, the trailer after the last) with its row count; the first error ends it.
async fn encode_copy(
    mut stream: datafusion::execution::SendableRecordBatchStream,
    targets: Vec<Target>,
    input: String,
    table: TableName,
    out: tokio::sync::mpsc::Sender<Result<(tokio_util::bytes::Bytes, u64), DataError>>,
) {
    let mut first = true;
    let mut done = 0u64;
    loop {
        let batch = match stream.next().await {
            None => break,
            Some(Err(e)) => {
                let _ = out
                    .send(Err(DataError::from_datafusion(
                        format!("reading `{input}`"),
                        e,
                    )))
                    .await;
                return;
            }
            Some(Ok(b)) => b,
        };
        let encs: Result<Vec<Enc>, DataError> = targets
            .iter()
            .enumerate()
            .map(|(i, t)| prepare(batch.column(i), t, done, &table))
            .collect();
        let encs = match encs {
            Ok(e) => e,
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        };
        let n = batch.num_rows();
        let mut buf = BytesMut::with_capacity(batch.get_array_memory_size() + 8 * n + 32);
        if first {
            buf.put_slice(COPY_HEADER);
            first = false;
        }
        encode_rows(&encs, n, &mut buf);
        done += n as u64;
        if out.send(Ok((buf.freeze(), n as u64))).await.is_err() {
            return;
        }
    }
    let mut end = BytesMut::with_capacity(COPY_HEADER.len() + 2);
    if first {
        end.put_slice(COPY_HEADER);
    }
    end.put_i16(-1);
    let _ = out.send(Ok((end.freeze(), 0))).await;
}

/// The column list of a statement.
fn column_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| quote_ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

impl PostgresSink {
    async fn load(
        &self,
        cx: &SinkContext<'_>,
        input: Input,
        table: &TableName,
        pg: &mut postgres::Pg,
    ) -> Result<Written, DataError> {
        let schema = input.frame.schema().inner().clone();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        for k in &self.keys {
            if !names.contains(&k.as_str()) {
                return Err(DataError::Invalid(format!(
                    "key `{k}` is not a column of `{}`{}; its columns: {}",
                    input.name,
                    crate::spec::error::suggestion(k, names.iter().copied()),
                    names.join(", ")
                )));
            }
        }
        let qt = table.quoted();
        let pgerr = |what: &str| {
            let what = what.to_string();
            move |e: tokio_postgres::Error| postgres::error(&what, &e)
        };
        let tx = pg
            .client
            .transaction()
            .await
            .map_err(pgerr("starting a transaction"))?;
        let oid: Option<u32> = tx
            .query_one("SELECT to_regclass($1::text)::oid", &[&qt])
            .await
            .map_err(pgerr(&format!("looking up table {table}")))?
            .try_get(0)
            .map_err(pgerr(&format!("looking up table {table}")))?;
        let created = oid.is_none();
        if created {
            let mut defs = Vec::with_capacity(names.len() + 1);
            for f in schema.fields() {
                defs.push(format!("{} {}", quote_ident(f.name()), ddl_type(f)?));
            }
            if !self.keys.is_empty() {
                let keys: Vec<&str> = self.keys.iter().map(String::as_str).collect();
                defs.push(format!("PRIMARY KEY ({})", column_list(&keys)));
            }
            let ddl = format!("CREATE TABLE {qt} ({})", defs.join(", "));
            tx.batch_execute(&ddl)
                .await
                .map_err(pgerr(&format!("creating table {table}")))?;
            cx.task.log.note(&format!("created table {table}: {ddl}"));
        }
        // The table's columns, as COPY sees them.
        let probe = tx
            .prepare(&format!("SELECT * FROM {qt} LIMIT 0"))
            .await
            .map_err(pgerr(&format!("reading the columns of {table}")))?;
        let cols = probe.columns();
        let mut targets = Vec::with_capacity(names.len());
        let mut problems = Vec::new();
        for f in schema.fields() {
            let Some(c) = cols.iter().find(|c| c.name() == f.name()) else {
                problems.push(format!(
                    "column `{}` is not in table {table}{}",
                    f.name(),
                    crate::spec::error::suggestion(f.name(), cols.iter().map(|c| c.name()))
                ));
                continue;
            };
            match plan(f, c.type_(), c.type_modifier()) {
                Ok((cast_to, wire)) => targets.push(Target {
                    name: f.name().clone(),
                    pg: c.type_().clone(),
                    cast_to,
                    wire,
                }),
                Err(()) => problems.push(format!(
                    "column `{}` is {} in the data but {} in table {table}",
                    f.name(),
                    f.data_type(),
                    pg_name(c.type_())
                )),
            }
        }
        if !problems.is_empty() {
            return Err(DataError::Invalid(format!(
                "cannot load `{}` into {table}: {}; cast the columns in a `sql` task, or change the table",
                input.name,
                problems.join("; ")
            )));
        }
        if self.mode == TableMode::Upsert && !created {
            self.check_unique(&tx, oid.unwrap_or_default(), table)
                .await?;
        }
        let list = column_list(&names);
        let copy_into = match self.mode {
            TableMode::Upsert => {
                tx.batch_execute(&format!(
                    "CREATE TEMP TABLE cauce_stage ON COMMIT DROP AS SELECT {list} FROM {qt} WITH NO DATA"
                ))
                .await
                .map_err(pgerr("creating the staging table"))?;
                "cauce_stage".to_string()
            }
            TableMode::Replace => {
                let n = tx
                    .execute(&format!("DELETE FROM {qt}"), &[])
                    .await
                    .map_err(pgerr(&format!("emptying {table}")))?;
                cx.task.log.note(&format!(
                    "replace: {n} old rows deleted (until commit, readers still see them)"
                ));
                qt.clone()
            }
            TableMode::Append => qt.clone(),
        };
        let sink = tx
            .copy_in::<_, tokio_util::bytes::Bytes>(&format!(
                "COPY {copy_into} ({list}) FROM STDIN (FORMAT binary)"
            ))
            .await
            .map_err(pgerr(&format!("starting COPY into {table}")))?;
        futures_util::pin_mut!(sink);
        let stream = input
            .frame
            .execute_stream()
            .await
            .map_err(|e| DataError::from_datafusion(format!("reading `{}`", input.name), e))?;
        // Batches are encoded on a task of their own while the previous chunk is on its way
        // to the server, which is what bounds a load: PostgreSQL takes a binary COPY on one
        // core. Two chunks wait at most.
        let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel(2);
        let encoder = tokio::spawn(encode_copy(
            stream,
            targets,
            input.name.clone(),
            table.clone(),
            chunks_tx,
        ));
        // Aborted when the load ends however it ends: a cancelled load stops encoding.
        let _stop_encoder = tokio_util::task::AbortOnDropHandle::new(encoder);
        let copy_err = pgerr(&format!("loading {table}"));
        let mut bytes = 0u64;
        let mut rows = 0u64;
        while let Some(chunk) = chunks.recv().await {
            let (chunk, n) = chunk?;
            bytes += chunk.len() as u64;
            rows += n;
            futures_util::SinkExt::send(&mut sink, chunk)
                .await
                .map_err(&copy_err)?;
        }
        let copied = sink.as_mut().finish().await.map_err(&copy_err)?;
        if self.mode == TableMode::Upsert {
            let keys: Vec<&str> = self.keys.iter().map(String::as_str).collect();
            let key_list = column_list(&keys);
            let updates: Vec<String> = names
                .iter()
                .filter(|n| !self.keys.iter().any(|k| k == *n))
                .map(|n| format!("{0} = EXCLUDED.{0}", quote_ident(n)))
                .collect();
            let action = if updates.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!("DO UPDATE SET {}", updates.join(", "))
            };
            // The last row of each key wins: rows sit in the staging table in load order.
            let sql = format!(
                "INSERT INTO {qt} ({list}) SELECT {list} FROM (SELECT DISTINCT ON ({key_list}) {list} FROM cauce_stage ORDER BY {key_list}, ctid DESC) AS s ON CONFLICT ({key_list}) {action}"
            );
            let n = tx
                .execute(&sql, &[])
                .await
                .map_err(pgerr(&format!("upserting into {table}")))?;
            cx.task.log.note(&format!(
                "upsert: {copied} rows staged, {n} inserted or updated"
            ));
        }
        tx.commit()
            .await
            .map_err(pgerr(&format!("committing the load into {table}")))?;
        Ok(Written {
            rows: copied.max(rows),
            bytes,
        })
    }

    /// Upsert needs a primary key or unique index on exactly the keys.
    async fn check_unique(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        oid: u32,
        table: &TableName,
    ) -> Result<(), DataError> {
        let rows = tx
            .query(
                "SELECT array(SELECT a.attname::text FROM unnest(i.indkey) AS k(n) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n) \
                 FROM pg_index i WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL",
                &[&oid],
            )
            .await
            .map_err(|e| postgres::error(&format!("reading the indexes of {table}"), &e))?;
        let mut want: Vec<&str> = self.keys.iter().map(String::as_str).collect();
        want.sort_unstable();
        for r in rows {
            let mut cols: Vec<String> = r.try_get(0).unwrap_or_default();
            cols.sort_unstable();
            if cols == want {
                return Ok(());
            }
        }
        Err(DataError::Invalid(format!(
            "upsert into {table} needs a primary key or unique index on ({}), which the table does not have; add one (ALTER TABLE {} ADD PRIMARY KEY ({}))",
            self.keys.join(", "),
            table.quoted(),
            column_list(&self.keys.iter().map(String::as_str).collect::<Vec<_>>())
        )))
    }
}

#[async_trait]
impl Sink for PostgresSink {
    fn describe(&self) -> String {
        let mode = self.mode.describe(&self.keys);
        format!(
            "postgres {} table {} ({mode})",
            postgres::safe_target(&self.url),
            self.table
        )
    }

    async fn write(&self, cx: &SinkContext<'_>, inputs: Vec<Input>) -> Result<Written, DataError> {
        let input = single(inputs, "postgres")?;
        let url = cx.text(&self.url)?;
        let table = cx.text(&self.table)?;
        let table = TableName::parse(&table).map_err(DataError::Invalid)?;
        let redactor = cx.task.log.redactor();
        let mut pg = postgres::connect(&url, &redactor).await?;
        // Dropping this future (cancellation, a timeout) drops the transaction and the
        // connection with it: the server rolls back. The guard also cancels the statement
        // running then, so the server stops at once instead of finishing it first.
        let guard = pg.cancel_guard();
        let result = self.load(cx, input, &table, &mut pg).await;
        guard.disarm();
        result.map_err(|e| postgres::redact(e, &redactor))
    }
}
