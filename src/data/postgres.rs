//! PostgreSQL, shared by `source: postgres` and `sink: postgres`: connecting (TLS as the
//! URL's `sslmode` says), sorting the server's errors into bad data or configuration
//! ([`DataError::Invalid`]) and failures a retry may fix ([`DataError::Io`]), table names,
//! the column types cauce creates from Arrow types, and the binary wire format of
//! `numeric`, `date` and `timestamp` values (what `COPY ... (FORMAT binary)` carries). What
//! to read and how to write it is the source's and the sink's business. Also the one checked
//! cast every database source and sink here uses ([`cast_checked`]).
//!
//! Limits: TLS (`sslmode=require`, and `prefer`, the default, when the server offers it)
//! encrypts without verifying the server's certificate, as libpq's `require` does; the
//! `verify-ca`/`verify-full` modes and client certificates are not supported. Names are
//! used exactly as written (quoted), so `Orders` and `orders` are different tables.

use super::DataError;
use crate::secrets::Redactor;
use datafusion::arrow::datatypes::{DataType, Field};
use std::time::Duration;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, NoTls};

/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
pub const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
pub const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// How long a connection attempt may take when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// An open connection (its I/O runs on a task of its own until the client is dropped).
pub struct Pg {
    /// The client.
    pub client: Client,
    tls: Option<postgres_native_tls::MakeTlsConnector>,
    /// `host:port/database`, for messages (no user, no password).
    pub target: String,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg").field("target", &self.target).finish()
    }
}

/// `host:port/database` of a configuration.
fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

/// The place a URL points to, without user or password, for messages and `describe()`.
pub fn safe_target(url: &str) -> String {
    match url.parse::<Config>() {
        Ok(c) if !url.contains("{{") && !url.contains("${") => describe(&c),
        _ => {
            // A templated URL: drop the user information and the options.
            let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
            let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
            rest.split('?').next().unwrap_or(rest).to_string()
        }
    }
}

/// Connects to the server a `postgres://` URL (or `key=value` string) names.
pub async fn connect(url: &str, redactor: &Redactor) -> Result<Pg, DataError> {
    let mut config: Config = url.parse().map_err(|e: tokio_postgres::Error| {
        DataError::Invalid(format!(
            "invalid PostgreSQL url: {}",
            redactor.redact_str(&e.to_string())
        ))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("cauce");
    }
    let target = describe(&config);
    let failed = |e: tokio_postgres::Error| {
        let err = error(&format!("cannot connect to PostgreSQL at {target}"), &e);
        redact(err, redactor)
    };
    if config.get_ssl_mode() == SslMode::Disable {
        let (client, connection) = config.connect(NoTls).await.map_err(failed)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        return Ok(Pg {
            client,
            tls: None,
            target,
        });
    }
    let tls = make_tls()?;
    let (client, connection) = config.connect(tls.clone()).await.map_err(failed)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Pg {
        client,
        tls: Some(tls),
        target,
    })
}

/// A TLS connector that encrypts without checking the certificate (libpq's `require`).
fn make_tls() -> Result<postgres_native_tls::MakeTlsConnector, DataError> {
    let connector = native_tls::TlsConnector::builder()
        .danger_accept_invalid_certs(true)
        .danger_accept_invalid_hostnames(true)
        .build()
        .map_err(|e| DataError::io("cannot set up TLS", e))?;
    Ok(postgres_native_tls::MakeTlsConnector::new(connector))
}

impl Pg {
    /// Asks the server to stop the statement this connection is running (best effort, a
    /// few seconds at most): used when a read is abandoned mid-way.
    pub async fn cancel(&self) {
        let token = self.client.cancel_token();
        let wait = Duration::from_secs(5);
        let _ = match &self.tls {
            None => tokio::time::timeout(wait, token.cancel_query(NoTls)).await,
            Some(t) => tokio::time::timeout(wait, token.cancel_query(t.clone())).await,
        };
    }
}

impl Pg {
    /// A guard that, if dropped while armed (the future using the connection was dropped:
    /// cancellation, a timeout, the process shutting down), asks the server to stop the
    /// statement, and waits (a few seconds at most) until the request is sent, so a long
    /// query does not outlive the task that wanted it.
    pub fn cancel_guard(&self) -> CancelGuard {
        CancelGuard {
            armed: Some((self.client.cancel_token(), self.tls.clone())),
        }
    }
}

/// See [`Pg::cancel_guard`].
pub struct CancelGuard {
    armed: Option<(
        tokio_postgres::CancelToken,
        Option<postgres_native_tls::MakeTlsConnector>,
    )>,
}

impl CancelGuard {
    /// The statement ended on its own: nothing to cancel.
    pub fn disarm(mut self) {
        self.armed = None;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let Some((token, tls)) = self.armed.take() else {
            return;
        };
        // Dropped in synchronous code, possibly while the runtime shuts down: send the
        // request from a thread with a runtime of its own.
        let sender = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let wait = Duration::from_secs(5);
                let _ = match tls {
                    None => tokio::time::timeout(wait, token.cancel_query(NoTls)).await,
                    Some(t) => tokio::time::timeout(wait, token.cancel_query(t)).await,
                };
            });
        });
        let _ = sender.join();
    }
}

/// Passes a message through the redactor.
pub fn redact(e: DataError, redactor: &Redactor) -> DataError {
    match e {
        DataError::Invalid(m) => DataError::Invalid(redactor.redact_str(&m)),
        DataError::Io(m) => DataError::Io(redactor.redact_str(&m)),
        DataError::Cancelled => DataError::Cancelled,
        DataError::Upstream(m) => DataError::Upstream(m),
    }
}

/// Sorts a client or server error: connection failures, lost connections, deadlocks,
/// serialization failures, lack of resources and server shutdowns may pass on a retry;
/// everything else the server rejects (bad SQL, a missing table, a constraint, a value that
/// does not fit) will not. The message keeps the server's detail, hint and context (`COPY t,
/// line 3, column x`).
pub fn error(what: &str, e: &tokio_postgres::Error) -> DataError {
    let Some(db) = e.as_db_error() else {
        return DataError::Io(format!("{what}: {}", with_causes(e)));
    };
    let code = db.code().code();
    let mut msg = format!("{what}: {}", db.message());
    if let Some(d) = db.detail() {
        msg.push_str(&format!("; {d}"));
    }
    if let Some(h) = db.hint() {
        msg.push_str(&format!(" (hint: {h})"));
    }
    if let Some(w) = db.where_() {
        msg.push_str(&format!(" [{}]", w.lines().next().unwrap_or(w)));
    }
    let class = code.get(..2).unwrap_or("");
    let retry = matches!(class, "08" | "40" | "53" | "57" | "58") || code == "55P03";
    if retry {
        DataError::Io(msg)
    } else {
        DataError::Invalid(msg)
    }
}

/// An error's text followed by its causes (`error connecting to server: Connection refused`).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    text
}

/// A table name as written: `name` or `schema.name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// The schema, when given.
    pub schema: Option<String>,
    /// The table.
    pub name: String,
}

impl TableName {
    /// Parses `name` or `schema.name` (each part used exactly as written).
    pub fn parse(text: &str) -> Result<TableName, String> {
        let t = text.trim();
        let parts: Vec<&str> = t.split('.').collect();
        let bad = || {
            format!("invalid table name `{text}`; write NAME or SCHEMA.NAME (used as written, case included)")
        };
        match parts.as_slice() {
            [n] if !n.is_empty() => Ok(TableName {
                schema: None,
                name: n.to_string(),
            }),
            [s, n] if !s.is_empty() && !n.is_empty() => Ok(TableName {
                schema: Some(s.to_string()),
                name: n.to_string(),
            }),
            _ => Err(bad()),
        }
    }

    /// The name quoted for SQL: `"schema"."name"`.
    pub fn quoted(&self) -> String {
        use super::types::quote_ident;
        match &self.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// The PostgreSQL column type cauce creates for an Arrow field.
pub fn ddl_type(field: &Field) -> Result<String, DataError> {
    Ok(match field.data_type() {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 => "bigint".into(),
        DataType::UInt64 => "numeric(20,0)".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => {
            if *s < 0 {
                format!("numeric({},0)", *p as i16 - *s as i16)
            } else {
                format!("numeric({p},{s})")
            }
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {
            "text".into()
        }
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => "bytea".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        other => {
            return Err(DataError::Invalid(format!(
                "column `{}` is {other}, which the postgres sink cannot store; cast it in a `sql` task (to text, a number or a timestamp)",
                field.name()
            )))
        }
    })
}

/// A value a checked cast could not convert.
#[derive(Debug)]
pub enum CastFailure {
    /// The value at `index` (0-based in the array) does not fit the type.
    Value {
        /// Where.
        index: usize,
        /// The value, as text.
        value: String,
    },
    /// The types do not convert at all.
    Types(String),
}

/// Casts an array (used by every database source and sink here): a value that does not
/// convert is reported with its position instead of becoming NULL quietly.
pub fn cast_checked(
    array: &datafusion::arrow::array::ArrayRef,
    to: &DataType,
) -> Result<datafusion::arrow::array::ArrayRef, CastFailure> {
    use datafusion::arrow::array::Array;
    if array.data_type() == to {
        return Ok(array.clone());
    }
    let opts = datafusion::arrow::compute::CastOptions {
        safe: true,
        ..Default::default()
    };
    let out = datafusion::arrow::compute::cast_with_options(array, to, &opts)
        .map_err(|e| CastFailure::Types(e.to_string()))?;
    if out.null_count() != array.null_count() {
        if let Some(index) = (0..array.len()).find(|&i| array.is_valid(i) && out.is_null(i)) {
            let value = datafusion::arrow::util::display::array_value_to_string(array, index)
                .unwrap_or_default();
            return Err(CastFailure::Value { index, value });
        }
    }
    Ok(out)
}

/// Decodes a binary `numeric` into an integer at `scale` (digits past it are rounded half
/// away from zero, as PostgreSQL rounds); `Err` for NaN, infinities and values too large
/// for 38 digits.
pub fn numeric_to_i128(raw: &[u8], scale: i8) -> Result<i128, String> {
    let word = |i: usize| -> Result<i16, String> {
        raw.get(i..i + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric value".to_string())
    };
    let ndigits = word(0)?.max(0) as usize;
    let weight = word(2)? as i32;
    let sign = word(4)? as u16;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Err("NaN cannot be stored as a decimal".into()),
        _ => return Err("an infinite value cannot be stored as a decimal".into()),
    }
    // The value as decimal digits: integer part, then fraction.
    let mut int_part = String::new();
    let mut frac = String::new();
    if weight < -1 {
        for _ in 0..(-1 - weight) {
            frac.push_str("0000");
        }
    }
    for i in 0..ndigits {
        let d = word(8 + 2 * i)?;
        let pos = weight - i as i32;
        let text = format!("{d:04}");
        if pos >= 0 {
            int_part.push_str(&text);
        } else {
            frac.push_str(&text);
        }
    }
    if weight >= ndigits as i32 {
        for _ in 0..(weight + 1 - ndigits as i32) {
            int_part.push_str("0000");
        }
    }
    let scale = scale.max(0) as usize;
    let mut v: i128 = 0;
    let overflow = || "the value has more than 38 digits".to_string();
    let digits = int_part
        .bytes()
        .chain(frac.bytes().chain(std::iter::repeat(b'0')).take(scale));
    for b in digits {
        v = v
            .checked_mul(10)
            .and_then(|x| x.checked_add((b - b'0') as i128))
            .ok_or_else(overflow)?;
    }
    if frac.as_bytes().get(scale).is_some_and(|b| *b >= b'5') {
        v = v.checked_add(1).ok_or_else(overflow)?;
    }
    if v >= 10i128.pow(38) {
        return Err(overflow());
    }
    Ok(if sign == 0x4000 { -v } else { v })
}

/// Encodes an integer at `scale` as a binary `numeric`.
pub fn numeric_from_i128(value: i128, scale: i8, out: &mut Vec<u8>) {
    let scale = scale.max(0) as usize;
    let digits = value.unsigned_abs().to_string();
    let (int_part, frac) = if digits.len() > scale {
        digits.split_at(digits.len() - scale)
    } else {
        ("", digits.as_str())
    };
    let frac = format!("{frac:0>scale$}");
    let mut groups: Vec<i16> = Vec::new();
    let lead = (4 - int_part.len() % 4) % 4;
    let padded_int = format!("{}{int_part}", "0".repeat(lead));
    for chunk in padded_int.as_bytes().chunks(4) {
        groups.push(group(chunk));
    }
    let mut weight = groups.len() as i16 - 1;
    let padded_frac = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
    for chunk in padded_frac.as_bytes().chunks(4) {
        groups.push(group(chunk));
    }
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    out.extend_from_slice(&(groups.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    let sign: u16 = if value < 0 && !groups.is_empty() {
        0x4000
    } else {
        0
    };
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&(scale as u16).to_be_bytes());
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
}

fn group(chunk: &[u8]) -> i16 {
    chunk
        .iter()
        .fold(0i16, |acc, b| acc * 10 + (b.saturating_sub(b'0')) as i16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_round_trips() {
        for (v, s) in [
            (0i128, 2i8),
            (1050, 2),
            (-1050, 2),
            (5, 4),
            (123_456_789, 0),
            (10_000, 0),
            (-1, 10),
            (99_999_999_999_999_999_999_999_999_999_999_999_999, 0),
            (12_345_678_901_234_567_890, 10),
        ] {
            let mut out = Vec::new();
            numeric_from_i128(v, s, &mut out);
            assert_eq!(numeric_to_i128(&out, s), Ok(v), "{v} scale {s}");
        }
    }

    #[test]
    fn numeric_rescales_and_rounds() {
        let mut out = Vec::new();
        numeric_from_i128(12_345, 3, &mut out); // 12.345
        assert_eq!(numeric_to_i128(&out, 2), Ok(1_235));
        assert_eq!(numeric_to_i128(&out, 5), Ok(1_234_500));
        assert_eq!(numeric_to_i128(&out, 0), Ok(12));
        // 0.00001
        let raw = [0, 1, 0xff, 0xfe, 0, 0, 0, 5, 0x03, 0xe8];
        assert_eq!(numeric_to_i128(&raw, 5), Ok(1));
        let nan = [0, 0, 0, 0, 0xC0, 0, 0, 0];
        assert!(numeric_to_i128(&nan, 2).is_err());
    }

    #[test]
    fn table_names() {
        assert_eq!(TableName::parse("a.b").unwrap().quoted(), "\"a\".\"b\"");
        assert_eq!(TableName::parse("Orders").unwrap().quoted(), "\"Orders\"");
        assert!(TableName::parse("a.b.c").is_err());
        assert!(TableName::parse("").is_err());
    }
}
