//! Column types as users write them in pipeline files (`int`, `decimal(10,2)`, `timestamp`
//! with a `format`, ...), their Arrow types, and the one step that applies them to a
//! dataset (`columns:` of an extract). Also turns the engine's error texts into messages a
//! user can act on.

use super::DataError;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::Column;
use datafusion::prelude::{cast, DataFrame, Expr};
use indexmap::IndexMap;
use serde::Deserialize;

/// A column's declared type, and for text sources how to parse it.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnType {
    /// The Arrow type.
    pub data_type: DataType,
    /// A chrono format for `timestamp`/`date` columns read from text (`%d/%m/%Y %H:%M`).
    pub format: Option<String>,
    /// As written, for messages.
    pub written: String,
}

/// `columns:` entries: `price: decimal(10,2)` or `created_at: {type: timestamp, format: ...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawColumn {
    /// Only the type.
    Type(String),
    /// Type and format.
    Full {
        /// The type.
        #[serde(rename = "type")]
        ty: String,
        /// Parse format.
        format: Option<String>,
    },
}

impl RawColumn {
    /// Parses the declared type.
    pub fn build(&self) -> Result<ColumnType, String> {
        let (ty, format) = match self {
            RawColumn::Type(t) => (t.as_str(), None),
            RawColumn::Full { ty, format } => (ty.as_str(), format.clone()),
        };
        let data_type = parse_type(ty)?;
        if format.is_some() && !matches!(data_type, DataType::Timestamp(..) | DataType::Date32) {
            return Err(format!(
                "`format` applies to `timestamp` and `date` columns, not `{ty}`"
            ));
        }
        Ok(ColumnType {
            data_type,
            format,
            written: ty.to_string(),
        })
    }
}

/// The type names cauce accepts, for messages.
pub const TYPE_NAMES: &str = "string, int, bigint, int32, smallint, float, double, decimal(P,S), bool, date, timestamp, timestamptz";

/// Parses a type name (case-insensitive; SQL spellings accepted).
pub fn parse_type(text: &str) -> Result<DataType, String> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.as_str();
    if let Some(args) = t
        .strip_prefix("decimal")
        .or_else(|| t.strip_prefix("numeric"))
    {
        let args = args.trim();
        if args.is_empty() {
            return Ok(DataType::Decimal128(38, 10));
        }
        let inner = args
            .strip_prefix('(')
            .and_then(|a| a.strip_suffix(')'))
            .ok_or_else(|| {
                if args.contains(')') {
                    format!("invalid type `{text}`; write decimal(P,S), such as decimal(10,2)")
                } else {
                    format!(
                        "invalid type `{text}`: inside a `{{...}}` mapping YAML splits at the comma; quote it: \"decimal(10,2)\""
                    )
                }
            })?;
        let mut parts = inner.split(',').map(|p| p.trim().parse::<u8>());
        let p = parts.next().and_then(|r| r.ok());
        let s = parts.next().map(|r| r.ok()).unwrap_or(Some(0));
        return match (p, s, parts.next()) {
            (Some(p), Some(s), None) if (1..=38).contains(&p) && s <= p => {
                Ok(DataType::Decimal128(p, s as i8))
            }
            _ => Err(format!(
                "invalid type `{text}`: precision must be 1 to 38 and scale at most the precision"
            )),
        };
    }
    Ok(match t {
        "string" | "text" | "varchar" | "utf8" | "str" => DataType::Utf8,
        "int" | "integer" | "bigint" | "int64" | "long" => DataType::Int64,
        "int32" => DataType::Int32,
        "smallint" | "int16" => DataType::Int16,
        "float" | "double" | "float64" | "double precision" => DataType::Float64,
        "float32" | "real" => DataType::Float32,
        "bool" | "boolean" => DataType::Boolean,
        "date" => DataType::Date32,
        "timestamp" | "datetime" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "timestamptz" | "timestamp with time zone" => {
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        }
        _ => {
            return Err(format!(
                "unknown type `{text}`{}; types: {TYPE_NAMES}",
                crate::spec::error::suggestion(t, TYPE_NAMES.split(", "))
            ))
        }
    })
}

/// The expression of a column by its exact name (no case folding, any characters).
pub fn column(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

/// A SQL identifier in double quotes.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Casts the declared columns of `df` to their types (parsing text with their formats);
/// other columns stay as they are. A declared column that is not there is an error naming
/// the columns that are.
pub fn apply(
    df: DataFrame,
    columns: &IndexMap<String, ColumnType>,
) -> Result<DataFrame, DataError> {
    if columns.is_empty() {
        return Ok(df);
    }
    let present: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    for name in columns.keys() {
        if !present.contains(name) {
            return Err(DataError::Invalid(format!(
                "column `{name}` in `columns` is not in the data{}; columns: {}",
                crate::spec::error::suggestion(name, present.iter().map(|s| s.as_str())),
                present.join(", ")
            )));
        }
    }
    let mut exprs = Vec::with_capacity(present.len());
    for (i, name) in present.iter().enumerate() {
        let current = df.schema().field(i).data_type().clone();
        let e = match columns.get(name) {
            Some(ct) if current != ct.data_type => {
                let expr = match (&ct.format, &ct.data_type) {
                    (Some(fmt), DataType::Timestamp(..)) => {
                        let parsed = df
                            .parse_sql_expr(&format!(
                                "to_timestamp_micros({}, {})",
                                quote_ident(name),
                                quote_literal(fmt)
                            ))
                            .map_err(|e| {
                                DataError::from_datafusion(format!("column `{name}`"), e)
                            })?;
                        cast(parsed, ct.data_type.clone())
                    }
                    (Some(fmt), DataType::Date32) => df
                        .parse_sql_expr(&format!(
                            "to_date({}, {})",
                            quote_ident(name),
                            quote_literal(fmt)
                        ))
                        .map_err(|e| DataError::from_datafusion(format!("column `{name}`"), e))?,
                    (None, to) if current == DataType::Utf8 => {
                        super::timestamps::parse(column(name), to)
                            .unwrap_or_else(|| cast(column(name), to.clone()))
                    }
                    _ => cast(column(name), ct.data_type.clone()),
                };
                expr.alias(name)
            }
            _ => column(name),
        };
        exprs.push(e);
    }
    df.select(exprs)
        .map_err(|e| DataError::from_datafusion("applying `columns`", e))
}

/// The type a column is stored as: timestamps in microseconds (Parquet has no seconds, and
/// readers such as pyarrow and DuckDB read microseconds everywhere), text as plain UTF-8,
/// dictionary-encoded columns (a Parquet file written by pandas) as their values (an Arrow
/// IPC file holds one dictionary per column for all its batches).
fn storage_type(t: &DataType) -> Option<DataType> {
    match t {
        DataType::Dictionary(_, values) => {
            Some(storage_type(values).unwrap_or_else(|| values.as_ref().clone()))
        }
        DataType::Timestamp(unit, tz) if *unit != TimeUnit::Microsecond => {
            Some(DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))
        }
        DataType::Utf8View | DataType::LargeUtf8 => Some(DataType::Utf8),
        _ => None,
    }
}

/// Casts columns to the types datasets and files store them as (see [`storage_type`]);
/// a frame that needs none comes back as it was.
pub fn normalize(df: DataFrame) -> Result<DataFrame, DataError> {
    let fields = df.schema().fields().clone();
    if !fields.iter().any(|f| storage_type(f.data_type()).is_some()) {
        return Ok(df);
    }
    let exprs: Vec<Expr> = fields
        .iter()
        .map(|f| match storage_type(f.data_type()) {
            Some(t) => cast(column(f.name()), t).alias(f.name()),
            None => column(f.name()),
        })
        .collect();
    df.select(exprs)
        .map_err(|e| DataError::from_datafusion("converting column types", e))
}

/// Makes an engine error text shorter and plainer: drops the nesting prefixes.
pub fn explain_error(text: &str) -> String {
    let mut t = text.trim();
    for prefix in [
        "External error: ",
        "Arrow error: ",
        "Execution error: ",
        "Parser error: ",
        "Cast error: ",
        "Error during planning: ",
        "Parquet error: ",
        "Schema error: ",
    ] {
        while let Some(rest) = t.strip_prefix(prefix) {
            t = rest.trim_start();
        }
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names() {
        assert_eq!(parse_type("decimal(10,2)"), Ok(DataType::Decimal128(10, 2)));
        assert_eq!(parse_type("NUMERIC(5)"), Ok(DataType::Decimal128(5, 0)));
        assert_eq!(parse_type("bigint"), Ok(DataType::Int64));
        assert_eq!(
            parse_type("timestamp"),
            Ok(DataType::Timestamp(TimeUnit::Microsecond, None))
        );
        assert!(parse_type("decimal(40,2)").is_err());
        assert!(parse_type("decimal(4,5)").is_err());
        let e = parse_type("integr").unwrap_err();
        assert!(e.contains("did you mean `int`"), "{e}");
    }

    #[test]
    fn formats_only_on_dates() {
        let c = RawColumn::Full {
            ty: "int".into(),
            format: Some("%Y".into()),
        };
        assert!(c.build().is_err());
    }
}
