//! MySQL and MariaDB, shared by `source: mysql` and `sink: mysql` (through sqlx): connecting
//! with a session cauce can rely on (time zone UTC, so `TIMESTAMP` values are read and
//! written in UTC; `NO_BACKSLASH_ESCAPES`, so a quoted literal rendered from a template means
//! what it says; `||` keeps MySQL's meaning), sorting errors into bad data
//! ([`DataError::Invalid`]) and failures a retry may fix ([`DataError::Io`]), quoting names,
//! reading a table's columns from `information_schema`, and the types of both directions.
//! What to read or write is the source's and the sink's business.
//!
//! Limits: TLS is what sqlx does with the URL's `ssl-mode`; names are used exactly as written.

use super::postgres::TableName;
use super::DataError;
use crate::secrets::Redactor;
use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlDatabaseError};
use sqlx::{ConnectOptions, Executor};
use std::time::Duration;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// An open connection and where it goes (`host:port/database`, no user or password).
pub struct My {
    /// The connection.
    pub conn: MySqlConnection,
    /// For messages.
    pub target: String,
}

impl std::fmt::Debug for My {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("My").field("target", &self.target).finish()
    }
}

/// The place a URL points to, without user or password.
pub fn safe_target(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    rest.split('?').next().unwrap_or(rest).to_string()
}

/// Connects, and sets up the session: `extra_modes` are added to its `sql_mode` (the sink
/// adds `STRICT_ALL_TABLES`, so a value that does not fit is an error, not a warning).
pub async fn connect(url: &str, redactor: &Redactor, extra_modes: &str) -> Result<My, DataError> {
    let opts: MySqlConnectOptions = url.parse().map_err(|e: sqlx::Error| {
        DataError::Invalid(format!(
            "invalid MySQL url: {}",
            redactor.redact_str(&e.to_string())
        ))
    })?;
    let opts = opts
        .pipes_as_concat(false)
        .no_engine_substitution(false)
        .timezone(Some("+00:00".to_string()));
    let target = format!(
        "{}:{}/{}",
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or("")
    );
    let what = format!("cannot connect to MySQL at {target}");
    let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, opts.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(redact(error(&what, &e), redactor)),
        Err(_) => {
            return Err(DataError::Io(format!(
                "{what}: no answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            )))
        }
    };
    let modes = if extra_modes.is_empty() {
        "'NO_BACKSLASH_ESCAPES'".to_string()
    } else {
        format!("'NO_BACKSLASH_ESCAPES', '{extra_modes}'")
    };
    conn.execute(sqlx::AssertSqlSafe(format!(
        "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@sql_mode, ''), {modes})"
    )))
    .await
    .map_err(|e| error("setting up the session", &e))?;
    Ok(My { conn, target })
}

/// Passes a message through the redactor.
pub fn redact(e: DataError, redactor: &Redactor) -> DataError {
    super::postgres::redact(e, redactor)
}

/// Sorts an error: lost connections, deadlocks, lock timeouts, too many connections and
/// server shutdowns may pass on a retry; what the server rejects otherwise will not.
pub fn error(what: &str, e: &sqlx::Error) -> DataError {
    match e {
        sqlx::Error::Database(db) => {
            let number = db
                .try_downcast_ref::<MySqlDatabaseError>()
                .map(|m| m.number())
                .unwrap_or(0);
            let state = db.code().map(|c| c.to_string()).unwrap_or_default();
            let msg = format!("{what}: {} (error {number})", db.message());
            let retry = matches!(
                number,
                1040 | 1053 | 1205 | 1213 | 1317 | 1927 | 2006 | 2013
            ) || state.starts_with("08")
                || state.starts_with("40");
            if retry {
                DataError::Io(msg)
            } else {
                DataError::Invalid(msg)
            }
        }
        sqlx::Error::Configuration(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::Encode(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::InvalidArgument(_) => {
            DataError::Invalid(format!("{what}: {}", super::postgres::with_causes(e)))
        }
        _ => DataError::Io(format!("{what}: {}", super::postgres::with_causes(e))),
    }
}

/// A name in backticks.
pub fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `` `schema`.`table` ``.
pub fn quote_table(t: &TableName) -> String {
    match &t.schema {
        Some(s) => format!("{}.{}", quote(s), quote(&t.name)),
        None => quote(&t.name),
    }
}

/// A column as `information_schema.COLUMNS` describes it.
#[derive(Debug, Clone)]
pub struct CatalogColumn {
    /// Its name.
    pub name: String,
    /// `DATA_TYPE`, lower case (`decimal`, `varchar`).
    pub data_type: String,
    /// `COLUMN_TYPE`, lower case (`decimal(10,2)`, `tinyint(1)`, `int(10) unsigned`).
    pub column_type: String,
    /// Precision of numeric columns.
    pub precision: Option<u32>,
    /// Scale of numeric columns.
    pub scale: Option<u32>,
}

/// The columns of a table (none when it does not exist), in order. `schema` defaults to the
/// connection's database.
pub async fn catalog(
    conn: &mut MySqlConnection,
    schema: Option<&str>,
    table: &str,
) -> Result<Vec<CatalogColumn>, DataError> {
    type CatalogRow = (String, String, String, Option<String>, Option<String>);
    let rows: Vec<CatalogRow> = sqlx::query_as(
        "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR), CAST(COLUMN_TYPE AS CHAR), \
         CAST(NUMERIC_PRECISION AS CHAR), CAST(NUMERIC_SCALE AS CHAR) \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
         ORDER BY ORDINAL_POSITION",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| error(&format!("reading the columns of {table}"), &e))?;
    Ok(rows
        .into_iter()
        .map(|(name, dt, ct, p, s)| CatalogColumn {
            name,
            data_type: dt.to_ascii_lowercase(),
            column_type: ct.to_ascii_lowercase(),
            precision: p.and_then(|v| v.parse().ok()),
            scale: s.and_then(|v| v.parse().ok()),
        })
        .collect())
}

/// How a MySQL column is read: text on the wire, parsed into its Arrow type.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadKind {
    /// Integers (and YEAR) into this Arrow integer (or, for BIGINT UNSIGNED, decimal) type.
    Int(DataType),
    /// TINYINT(1) / BOOLEAN: zero is false.
    Bool,
    /// FLOAT.
    F32,
    /// DOUBLE.
    F64,
    /// DECIMAL(p,s); `None` when the server does not say (an expression): the scale is taken
    /// from the first rows' values.
    Decimal(Option<(u8, i8)>),
    /// DATE (the zero date `0000-00-00` is NULL).
    Date,
    /// DATETIME, no time zone.
    DateTime,
    /// TIMESTAMP, in UTC.
    Timestamp,
    /// Text of any kind (CHAR, VARCHAR, TEXT, ENUM, SET, JSON, TIME).
    Text,
    /// BINARY, VARBINARY, BLOB.
    Binary,
}

impl ReadKind {
    /// The Arrow type of the column.
    pub fn data_type(&self) -> DataType {
        match self {
            ReadKind::Int(t) => t.clone(),
            ReadKind::Bool => DataType::Boolean,
            ReadKind::F32 => DataType::Float32,
            ReadKind::F64 => DataType::Float64,
            ReadKind::Decimal(Some((p, s))) => DataType::Decimal128(*p, *s),
            ReadKind::Decimal(None) => DataType::Decimal128(38, 10),
            ReadKind::Date => DataType::Date32,
            ReadKind::DateTime => DataType::Timestamp(TimeUnit::Microsecond, None),
            ReadKind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ReadKind::Text => DataType::Utf8,
            ReadKind::Binary => DataType::Binary,
        }
    }
}

fn unsupported(name: &str, ty: &str) -> String {
    format!(
        "column `{name}` has MySQL type {ty}, which cauce does not read; cast it in the query (CAST({} AS CHAR), or CAST(... AS UNSIGNED) for BIT)",
        quote(name)
    )
}

/// DECIMAL(p,s) within Decimal128's 38 digits.
fn decimal(p: u32, s: u32) -> ReadKind {
    let s = s.min(38) as i8;
    let p = (p.clamp(1, 38) as u8).max(s as u8);
    ReadKind::Decimal(Some((p, s)))
}

/// How a table column is read, from the catalog.
pub fn kind_from_catalog(name: &str, c: &CatalogColumn) -> Result<ReadKind, String> {
    let unsigned = c.column_type.contains("unsigned");
    Ok(match c.data_type.as_str() {
        "tinyint" if c.column_type.starts_with("tinyint(1)") => ReadKind::Bool,
        "bool" | "boolean" => ReadKind::Bool,
        "tinyint" if unsigned => ReadKind::Int(DataType::Int16),
        "tinyint" => ReadKind::Int(DataType::Int8),
        "smallint" if unsigned => ReadKind::Int(DataType::Int32),
        "smallint" => ReadKind::Int(DataType::Int16),
        "mediumint" => ReadKind::Int(DataType::Int32),
        "int" | "integer" if unsigned => ReadKind::Int(DataType::Int64),
        "int" | "integer" => ReadKind::Int(DataType::Int32),
        "bigint" if unsigned => ReadKind::Int(DataType::Decimal128(20, 0)),
        "bigint" => ReadKind::Int(DataType::Int64),
        "year" => ReadKind::Int(DataType::Int16),
        "decimal" | "numeric" => decimal(c.precision.unwrap_or(38), c.scale.unwrap_or(0)),
        "float" => ReadKind::F32,
        "double" | "real" | "double precision" => ReadKind::F64,
        "date" => ReadKind::Date,
        "datetime" => ReadKind::DateTime,
        "timestamp" => ReadKind::Timestamp,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set"
        | "json" | "time" => ReadKind::Text,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            ReadKind::Binary
        }
        _ => return Err(unsupported(name, &c.column_type)),
    })
}

/// How an expression column is read, from the type the server reports for it.
pub fn kind_from_type_name(name: &str, ty: &str) -> Result<ReadKind, String> {
    Ok(match ty {
        "BOOLEAN" => ReadKind::Bool,
        "TINYINT" => ReadKind::Int(DataType::Int8),
        "TINYINT UNSIGNED" | "SMALLINT" | "YEAR" => ReadKind::Int(DataType::Int16),
        "SMALLINT UNSIGNED" | "MEDIUMINT" | "MEDIUMINT UNSIGNED" | "INT" => {
            ReadKind::Int(DataType::Int32)
        }
        "INT UNSIGNED" | "BIGINT" => ReadKind::Int(DataType::Int64),
        "BIGINT UNSIGNED" => ReadKind::Int(DataType::Decimal128(20, 0)),
        "FLOAT" => ReadKind::F32,
        "DOUBLE" => ReadKind::F64,
        "DECIMAL" => ReadKind::Decimal(None),
        "DATE" => ReadKind::Date,
        "DATETIME" => ReadKind::DateTime,
        "TIMESTAMP" => ReadKind::Timestamp,
        "NULL" | "CHAR" | "VARCHAR" | "TINYTEXT" | "TEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM"
        | "SET" | "JSON" | "TIME" => ReadKind::Text,
        "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB" => {
            ReadKind::Binary
        }
        other => return Err(unsupported(name, other)),
    })
}

/// The MySQL column type cauce creates for an Arrow field (`key`: part of the primary key,
/// where text and binary need a bounded length).
pub fn ddl_type(field: &Field, key: bool) -> Result<String, DataError> {
    Ok(match field.data_type() {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 | DataType::UInt8 => "SMALLINT".into(),
        DataType::Int32 | DataType::UInt16 => "INT".into(),
        DataType::Int64 | DataType::UInt32 => "BIGINT".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        DataType::Float16 | DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => {
            let s = (*s).max(0) as u8;
            if *p > 65 || s > 30 {
                return Err(DataError::Invalid(format!(
                    "column `{}` is decimal({p},{s}); MySQL allows at most 65 digits and a scale of 30",
                    field.name()
                )));
            }
            format!("DECIMAL({p},{s})")
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {
            if key {
                "VARCHAR(255)".into()
            } else {
                "LONGTEXT".into()
            }
        }
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => {
            if key {
                "VARBINARY(255)".into()
            } else {
                "LONGBLOB".into()
            }
        }
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Timestamp(..) => "DATETIME(6)".into(),
        other => {
            return Err(DataError::Invalid(format!(
            "column `{}` is {other}, which the mysql sink cannot store; cast it in a `sql` task",
            field.name()
        )))
        }
    })
}

/// Whether a dataset column of type `src` can go into a table column of `data_type`.
pub fn compatible(src: &DataType, data_type: &str) -> bool {
    let null = *src == DataType::Null;
    let int = src.is_integer() || null;
    let num = int
        || src.is_floating()
        || matches!(
            src,
            DataType::Decimal128(..)
                | DataType::Decimal256(..)
                | DataType::Decimal32(..)
                | DataType::Decimal64(..)
        );
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
    match data_type {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" | "bit" => {
            int || *src == DataType::Boolean
        }
        "decimal" | "numeric" | "float" | "double" | "real" => num,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set"
        | "json" | "time" => text,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => bin || text,
        "date" => date,
        "datetime" | "timestamp" => ts || date,
        _ => false,
    }
}
