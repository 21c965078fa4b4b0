//! `sink: xlsx`: an Excel workbook (rust_xlsxwriter) with one sheet per dataset:
//! `from: [ventas, clientes]` writes both into one file. Options: `path` (templated),
//! `sheets` (dataset → sheet name; default the dataset's task id; Excel's rules are
//! checked: 1 to 31 characters, none of `[ ] : * ? / \`, no leading or trailing
//! apostrophe, not `History`, no two alike), `date_format` and `datetime_format` (Excel
//! number formats; `yyyy-mm-dd` and `yyyy-mm-dd hh:mm:ss`).
//!
//! Each sheet has a bold, frozen header row; numbers and decimals are numbers (decimals
//! shown with their scale), dates and timestamps real Excel dates (timestamps with a time
//! zone in that zone's local time, since Excel has none), booleans booleans, nulls empty
//! cells; other types (lists, structs, binary) as their text. The workbook is written under
//! a temporary name beside the target and renamed, so a failed or cancelled load leaves the
//! old file as it was.
//!
//! Limits: a sheet holds at most 1,048,575 data rows and 16,384 columns (more is an error,
//! never a cut file), a cell at most 32,767 characters; Excel numbers are doubles (integers
//! beyond 2^53 lose digits). The workbook is assembled in memory before it is saved (as
//! rust_xlsxwriter does without its constant-memory mode), so memory grows with the
//! number of cells, within Excel's limits.

use super::{Input, Sink, SinkContext};
use crate::data::dataset::{temp_beside, Written};
use crate::data::DataError;
use crate::spec::error::{Location, SpecError};
use crate::tasks::BuildContext;
use async_trait::async_trait;
use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Float64Array, StringArray, Time64MicrosecondArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Schema, TimeUnit};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use futures_util::StreamExt;
use indexmap::IndexMap;
use marked_yaml::{Node, Spanned};
use rust_xlsxwriter::{Format, Workbook, Worksheet, XlsxError};
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;

/// Data rows a sheet can hold (Excel's 1,048,576 rows, less the header).
pub const MAX_DATA_ROWS: u64 = 1_048_575;
/// Columns a sheet can hold.
pub const MAX_COLUMNS: usize = 16_384;
/// Characters a cell can hold.
const MAX_CELL_CHARS: usize = 32_767;

/// The `xlsx` sink.
#[derive(Debug)]
pub struct XlsxSink {
    path: String,
    sheets: IndexMap<String, String>,
    date_format: String,
    datetime_format: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct XlsxSpec {
    path: String,
    sheets: Option<IndexMap<String, Spanned<String>>>,
    date_format: Option<String>,
    datetime_format: Option<String>,
}

/// What is wrong with a sheet name, by Excel's rules.
pub fn sheet_name_problem(name: &str) -> Option<String> {
    let len = name.encode_utf16().count();
    if name.trim().is_empty() {
        return Some("a sheet name cannot be empty".into());
    }
    if len > 31 {
        return Some(format!(
            "sheet name `{name}` has {len} characters; Excel allows at most 31"
        ));
    }
    if let Some(c) = name.chars().find(|c| "[]:*?/\\".contains(*c)) {
        return Some(format!(
            "sheet name `{name}` contains `{c}`; Excel does not allow [ ] : * ? / \\ in sheet names"
        ));
    }
    if name.starts_with('\'') || name.ends_with('\'') {
        return Some(format!(
            "sheet name `{name}` starts or ends with an apostrophe, which Excel does not allow"
        ));
    }
    if name.eq_ignore_ascii_case("history") {
        return Some(format!("`{name}` is a sheet name Excel reserves"));
    }
    None
}

/// Builds from `path`, `sheets`, `date_format`, `datetime_format`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn Sink>, SpecError> {
    let spec: XlsxSpec = cx.decode(node)?;
    let mut sheets = IndexMap::new();
    for (dataset, name) in spec.sheets.unwrap_or_default() {
        let at = |msg: String| {
            SpecError::new(
                Location::at(cx.file, name.span().start()),
                Some(format!("{}.sheets.{dataset}", cx.field)),
                msg,
            )
        };
        if let Some(problem) = sheet_name_problem(&name) {
            return Err(at(problem));
        }
        if let Some((other, _)) = sheets
            .iter()
            .find(|(_, n): &(&String, &String)| n.to_lowercase() == name.to_lowercase())
        {
            return Err(at(format!(
                "`{dataset}` and `{other}` would both be sheet `{}` (Excel ignores case)",
                name.as_str()
            )));
        }
        sheets.insert(dataset, name.as_str().to_string());
    }
    let format = |v: Option<String>, default: &str, key: &str| match v {
        Some(f) if f.trim().is_empty() => Err(cx.error(node, format!("`{key}` cannot be empty"))),
        Some(f) => Ok(f),
        None => Ok(default.to_string()),
    };
    Ok(Arc::new(XlsxSink {
        path: spec.path,
        sheets,
        date_format: format(spec.date_format, "yyyy-mm-dd", "date_format")?,
        datetime_format: format(
            spec.datetime_format,
            "yyyy-mm-dd hh:mm:ss",
            "datetime_format",
        )?,
    }))
}

/// How a column is written.
enum Out {
    Number(Option<Format>),
    Bool,
    Text,
    Date,
    DateTime(Option<datafusion::arrow::array::timezone::Tz>),
    Time,
    /// Any other type, as its display text.
    Display,
    Nothing,
}

impl Out {
    fn of(t: &DataType) -> Out {
        match t {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float16
            | DataType::Float32
            | DataType::Float64 => Out::Number(None),
            DataType::Decimal32(_, s)
            | DataType::Decimal64(_, s)
            | DataType::Decimal128(_, s)
            | DataType::Decimal256(_, s) => {
                let s = (*s).max(0) as usize;
                let f = if s == 0 {
                    "0".to_string()
                } else {
                    format!("0.{}", "0".repeat(s.min(30)))
                };
                Out::Number(Some(Format::new().set_num_format(f)))
            }
            DataType::Boolean => Out::Bool,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Out::Text,
            DataType::Date32 | DataType::Date64 => Out::Date,
            DataType::Timestamp(_, tz) => Out::DateTime(tz.as_ref().and_then(|z| z.parse().ok())),
            DataType::Time32(_) | DataType::Time64(_) => Out::Time,
            DataType::Dictionary(_, v) => Out::of(v),
            DataType::Null => Out::Nothing,
            _ => Out::Display,
        }
    }

    /// The type a column is cast to before it is written.
    fn target(&self, t: &DataType) -> Option<DataType> {
        Some(match self {
            Out::Number(_) => DataType::Float64,
            Out::Bool => DataType::Boolean,
            Out::Text => DataType::Utf8,
            Out::Date => DataType::Date32,
            Out::DateTime(_) => match t {
                DataType::Timestamp(_, tz) => {
                    DataType::Timestamp(TimeUnit::Microsecond, tz.clone())
                }
                DataType::Dictionary(_, v) => return self.target(v),
                _ => return None,
            },
            Out::Time => DataType::Time64(TimeUnit::Microsecond),
            Out::Display | Out::Nothing => return None,
        })
    }
}

/// Formats shared by the sheets.
struct Formats {
    header: Format,
    date: Format,
    datetime: Format,
    time: Format,
}

/// Where a cell is, for messages.
fn cell_error(sheet: &str, row: u32, col: &str, e: XlsxError) -> DataError {
    let what = match e {
        XlsxError::MaxStringLengthExceeded => {
            format!("text longer than {MAX_CELL_CHARS} characters, Excel's limit for a cell")
        }
        other => other.to_string(),
    };
    DataError::Invalid(format!(
        "sheet `{sheet}`, row {}, column `{col}`: {what}",
        row + 1
    ))
}

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()
}

/// Writes one column of a batch starting at sheet row `row0`; returns the widest text.
#[allow(clippy::too_many_arguments)]
fn write_column(
    ws: &mut Worksheet,
    sheet: &str,
    name: &str,
    col: u16,
    row0: u32,
    array: &ArrayRef,
    out: &Out,
    formats: &Formats,
) -> Result<usize, DataError> {
    let err = |row: u32, e: XlsxError| cell_error(sheet, row, name, e);
    let cast_to = out.target(array.data_type());
    let array = match &cast_to {
        Some(t) if t != array.data_type() => cast(array, t)
            .map_err(|e| DataError::Invalid(format!("sheet `{sheet}`, column `{name}`: {e}")))?,
        _ => array.clone(),
    };
    let mut widest = 0usize;
    let n = array.len();
    macro_rules! each {
        ($ty:ty, |$r:ident, $v:ident| $body:expr) => {{
            let a = array.as_any().downcast_ref::<$ty>().ok_or_else(|| {
                DataError::Invalid(format!(
                    "sheet `{sheet}`, column `{name}`: unexpected array type"
                ))
            })?;
            for i in 0..n {
                if a.is_null(i) {
                    continue;
                }
                let $r = row0 + i as u32;
                let $v = a.value(i);
                $body;
            }
        }};
    }
    match out {
        Out::Nothing => {}
        Out::Number(fmt) => each!(Float64Array, |r, v| {
            widest = widest.max(12);
            if v.is_finite() {
                match fmt {
                    Some(f) => ws.write_number_with_format(r, col, v, f),
                    None => ws.write_number(r, col, v),
                }
                .map_err(|e| err(r, e))?;
            } else {
                ws.write_string(r, col, v.to_string())
                    .map_err(|e| err(r, e))?;
            }
        }),
        Out::Bool => each!(BooleanArray, |r, v| {
            ws.write_boolean(r, col, v).map_err(|e| err(r, e))?;
        }),
        Out::Text => each!(StringArray, |r, v| {
            let chars = v.chars().count();
            if chars > MAX_CELL_CHARS {
                return Err(err(r, XlsxError::MaxStringLengthExceeded));
            }
            widest = widest.max(chars);
            ws.write_string(r, col, v).map_err(|e| err(r, e))?;
        }),
        Out::Date => each!(Date32Array, |r, v| {
            let d = epoch() + chrono::Duration::days(v as i64);
            ws.write_datetime_with_format(r, col, d, &formats.date)
                .map_err(|e| err(r, e))?;
        }),
        Out::DateTime(tz) => each!(TimestampMicrosecondArray, |r, v| {
            let utc = chrono::DateTime::from_timestamp_micros(v).map(|d| d.naive_utc());
            let local: Option<NaiveDateTime> = match (utc, tz) {
                (Some(u), Some(z)) => {
                    use chrono::TimeZone;
                    Some(z.from_utc_datetime(&u).naive_local())
                }
                (u, None) => u,
                (None, _) => None,
            };
            if let Some(dt) = local {
                ws.write_datetime_with_format(r, col, dt, &formats.datetime)
                    .map_err(|e| err(r, e))?;
            }
        }),
        Out::Time => each!(Time64MicrosecondArray, |r, v| {
            let t = NaiveTime::from_num_seconds_from_midnight_opt(
                (v / 1_000_000) as u32,
                ((v % 1_000_000) * 1000) as u32,
            );
            if let Some(t) = t {
                ws.write_datetime_with_format(r, col, t, &formats.time)
                    .map_err(|e| err(r, e))?;
            }
        }),
        Out::Display => {
            let options = FormatOptions::default();
            let f = ArrayFormatter::try_new(array.as_ref(), &options).map_err(|e| {
                DataError::Invalid(format!("sheet `{sheet}`, column `{name}`: {e}"))
            })?;
            for i in 0..n {
                if array.is_null(i) {
                    continue;
                }
                let r = row0 + i as u32;
                let text = f.value(i).to_string();
                let chars = text.chars().count();
                if chars > MAX_CELL_CHARS {
                    return Err(err(r, XlsxError::MaxStringLengthExceeded));
                }
                widest = widest.max(chars);
                ws.write_string(r, col, text).map_err(|e| err(r, e))?;
            }
        }
    }
    Ok(widest)
}

impl XlsxSink {
    /// The sheet names of the inputs, checked.
    fn names(&self, inputs: &[Input]) -> Result<Vec<String>, DataError> {
        for key in self.sheets.keys() {
            if !inputs.iter().any(|i| &i.name == key) {
                return Err(DataError::Invalid(format!(
                    "`sheets` names `{key}`, which is not a dataset of this load (it loads {})",
                    inputs
                        .iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let mut names: Vec<String> = Vec::new();
        for i in inputs {
            let name = self.sheets.get(&i.name).cloned().unwrap_or(i.name.clone());
            if let Some(p) = sheet_name_problem(&name) {
                return Err(DataError::Invalid(format!(
                    "dataset `{}`: {p}; name its sheet with `sheets: {{{}: ...}}`",
                    i.name, i.name
                )));
            }
            if names
                .iter()
                .any(|n| n.to_lowercase() == name.to_lowercase())
            {
                return Err(DataError::Invalid(format!(
                    "two datasets would both be sheet `{name}`; name them apart with `sheets`"
                )));
            }
            names.push(name);
        }
        Ok(names)
    }

    /// Streams one dataset into a new sheet; returns its rows.
    async fn sheet(
        &self,
        wb: &mut Workbook,
        sheet: &str,
        input: Input,
        formats: &Formats,
    ) -> Result<u64, DataError> {
        let schema: Arc<Schema> = Arc::new(input.frame.schema().as_arrow().clone());
        if schema.fields().len() > MAX_COLUMNS {
            return Err(DataError::Invalid(format!(
                "dataset `{}` has {} columns; an Excel sheet holds at most {MAX_COLUMNS}",
                input.name,
                schema.fields().len()
            )));
        }
        let ws = wb.add_worksheet();
        ws.set_name(sheet)
            .map_err(|e| DataError::Invalid(format!("sheet `{sheet}`: {e}")))?;
        let outs: Vec<Out> = schema
            .fields()
            .iter()
            .map(|f| Out::of(f.data_type()))
            .collect();
        let mut widths: Vec<usize> = Vec::with_capacity(outs.len());
        for (c, f) in schema.fields().iter().enumerate() {
            ws.write_string_with_format(0, c as u16, f.name(), &formats.header)
                .map_err(|e| cell_error(sheet, 0, f.name(), e))?;
            widths.push(match outs[c] {
                Out::Date => 12,
                Out::DateTime(_) => 20,
                _ => f.name().chars().count().max(8),
            });
        }
        ws.set_freeze_panes(1, 0)
            .map_err(|e| DataError::Invalid(format!("sheet `{sheet}`: {e}")))?;
        let mut stream = input
            .frame
            .execute_stream()
            .await
            .map_err(|e| DataError::from_datafusion(format!("reading `{}`", input.name), e))?;
        let mut rows: u64 = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch
                .map_err(|e| DataError::from_datafusion(format!("reading `{}`", input.name), e))?;
            let n = batch.num_rows() as u64;
            if rows + n > MAX_DATA_ROWS {
                return Err(DataError::Invalid(format!(
                    "dataset `{}` has more than {MAX_DATA_ROWS} rows, the most an Excel sheet holds below its header; filter or split it (nothing was written)",
                    input.name
                )));
            }
            let row0 = (rows + 1) as u32;
            for (c, f) in schema.fields().iter().enumerate() {
                let w = write_column(
                    ws,
                    sheet,
                    f.name(),
                    c as u16,
                    row0,
                    batch.column(c),
                    &outs[c],
                    formats,
                )?;
                widths[c] = widths[c].max(w);
            }
            rows += n;
        }
        for (c, w) in widths.iter().enumerate() {
            ws.set_column_width(c as u16, (*w as f64 + 2.0).min(60.0))
                .map_err(|e| DataError::Invalid(format!("sheet `{sheet}`: {e}")))?;
        }
        Ok(rows)
    }
}

/// Removes a file when dropped, unless told it was kept.
struct TempFile<'a> {
    path: &'a Path,
    keep: bool,
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(self.path);
        }
    }
}

#[async_trait]
impl Sink for XlsxSink {
    fn describe(&self) -> String {
        format!("xlsx {}", self.path)
    }

    fn many_inputs(&self) -> bool {
        true
    }

    async fn write(&self, cx: &SinkContext<'_>, inputs: Vec<Input>) -> Result<Written, DataError> {
        if inputs.is_empty() {
            return Err(DataError::Invalid("no dataset to load".into()));
        }
        let target = cx.path(&self.path)?;
        let names = self.names(&inputs)?;
        let formats = Formats {
            header: Format::new().set_bold(),
            date: Format::new().set_num_format(&self.date_format),
            datetime: Format::new().set_num_format(&self.datetime_format),
            time: Format::new().set_num_format("hh:mm:ss"),
        };
        let mut wb = Workbook::new();
        let mut rows = 0;
        for (input, name) in inputs.into_iter().zip(&names) {
            rows += self.sheet(&mut wb, name, input, &formats).await?;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| DataError::io(format!("cannot create {}", parent.display()), e))?;
        }
        let tmp = temp_beside(&target, "tmp");
        let mut guard = TempFile {
            path: &tmp,
            keep: false,
        };
        let cancel = cx.task.cancel.clone();
        let (tmp_owned, target_owned) = (tmp.clone(), target.clone());
        // Zipping the workbook is CPU work; it runs off the async threads, and the rename
        // happens only if the load was not cancelled meanwhile.
        let saved = tokio::task::spawn_blocking(move || -> Result<u64, DataError> {
            let result = wb.save(&tmp_owned).map_err(|e| match e {
                XlsxError::IoError(e) => {
                    DataError::io(format!("writing {}", target_owned.display()), e)
                }
                other => DataError::Invalid(format!("writing {}: {other}", target_owned.display())),
            });
            if result.is_err() || cancel.is_cancelled() {
                let _ = std::fs::remove_file(&tmp_owned);
                result?;
                return Err(DataError::Cancelled);
            }
            let bytes = std::fs::metadata(&tmp_owned).map(|m| m.len()).unwrap_or(0);
            std::fs::rename(&tmp_owned, &target_owned).map_err(|e| {
                let _ = std::fs::remove_file(&tmp_owned);
                DataError::io(format!("cannot rename into {}", target_owned.display()), e)
            })?;
            Ok(bytes)
        })
        .await
        .map_err(|e| DataError::Io(format!("writing {}: {e}", target.display())))?;
        let bytes = saved?;
        guard.keep = true;
        Ok(Written { rows, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheet_names() {
        assert_eq!(sheet_name_problem("Ventas 2024"), None);
        assert!(sheet_name_problem("").is_some());
        assert!(sheet_name_problem("a/b").unwrap().contains('/'));
        assert!(sheet_name_problem(&"x".repeat(32)).unwrap().contains("31"));
        assert_eq!(sheet_name_problem(&"ñ".repeat(31)), None);
        assert!(sheet_name_problem("'x").is_some());
        assert!(sheet_name_problem("history").is_some());
    }
}
