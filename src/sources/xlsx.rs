//! `source: xlsx`: a sheet of Excel workbooks (`.xlsx`, `.xlsm`, `.xlsb`, `.xls`, and
//! OpenDocument `.ods`), read with calamine. Options: `path` (a file, folder or glob; many
//! workbooks are read one after the other, their columns matched by header name), `sheet`
//! (a name, or a 0-based position; default the first sheet), `header_row` (the 1-based
//! sheet row holding the column names; default the first row of `range`, else the sheet's
//! first row that is not empty), `range` (`A1:F200`: only these cells).
//!
//! Column types are inferred from every cell of the column: whole numbers → Int64, numbers →
//! Float64, dates → Date32 (or Timestamp in microseconds when any has a time of day), true
//! and false → Boolean, text → Utf8, anything mixed → Utf8 (numbers and dates written as
//! text). Empty cells, blank text and Excel error cells (`#N/A`) are nulls; rows with no
//! value at all are skipped. An empty header is `column_N` (N the sheet's column number); a
//! repeated one gets `_2`, `_3`. A column declared in the extract's `columns` as `string`,
//! `decimal` or with a `format` is read as text (numbers in their shortest exact form, dates
//! in the declared format) so the cast is exact.
//!
//! Owns reading cells and inferring types; not the declared types (the extract casts them).
//! Limit: calamine reads a sheet whole into memory (one sheet of one workbook at a time,
//! at most Excel's 1,048,576 rows); rows are then built into batches as they are sent.

use super::{total_size, Source, SourceContext};
use crate::data::stream::{channel_frame, stream_error, BatchSender};
use crate::data::types::ColumnType;
use crate::data::DataError;
use crate::spec::error::{Location, SpecError};
use crate::tasks::BuildContext;
use async_trait::async_trait;
use calamine::{open_workbook_auto, Data, Range, Reader};
use chrono::{NaiveDate, NaiveDateTime, Timelike};
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::DataFrame;
use indexmap::IndexMap;
use marked_yaml::{Node, Spanned};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Excel's last row and column (0-based).
const MAX_ROW: u32 = 1_048_575;
const MAX_COL: u32 = 16_383;

/// A rectangle of cells, 0-based and inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Area {
    first_row: u32,
    first_col: u32,
    last_row: u32,
    last_col: u32,
}

/// The `xlsx` source.
#[derive(Debug, Clone)]
pub struct XlsxSource {
    path: String,
    sheet: Option<String>,
    /// 0-based sheet row of the header.
    header_row: Option<u32>,
    range: Option<Area>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct XlsxSpec {
    path: String,
    sheet: Option<String>,
    header_row: Option<Spanned<u32>>,
    range: Option<Spanned<String>>,
}

/// Parses `B3` into (row, col), 0-based.
fn cell_ref(text: &str) -> Option<(u32, u32)> {
    let t = text.trim().trim_start_matches('$');
    let letters: String = t.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    let digits = t[letters.len()..].trim_start_matches('$');
    if letters.is_empty() || letters.len() > 3 || digits.is_empty() {
        return None;
    }
    let mut col: u32 = 0;
    for c in letters.chars() {
        col = col * 26 + (c.to_ascii_uppercase() as u32 - 'A' as u32 + 1);
    }
    let row: u32 = digits.parse().ok()?;
    if row == 0 || row > MAX_ROW + 1 || col > MAX_COL + 1 {
        return None;
    }
    Some((row - 1, col - 1))
}

/// Parses `A1:F200`.
fn parse_area(text: &str) -> Option<Area> {
    let (a, b) = text.split_once(':')?;
    let (r0, c0) = cell_ref(a)?;
    let (r1, c1) = cell_ref(b)?;
    (r0 <= r1 && c0 <= c1).then_some(Area {
        first_row: r0,
        first_col: c0,
        last_row: r1,
        last_col: c1,
    })
}

/// The Excel name of a 0-based column (`0` → `A`).
fn col_name(mut col: u32) -> String {
    let mut out = Vec::new();
    loop {
        out.push((b'A' + (col % 26) as u8) as char);
        if col < 26 {
            break;
        }
        col = col / 26 - 1;
    }
    out.iter().rev().collect()
}

/// Builds from `path`, `sheet`, `header_row`, `range`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn Source>, SpecError> {
    let spec: XlsxSpec = cx.decode(node)?;
    let at = |span: &marked_yaml::Span, msg: String| {
        SpecError::new(
            Location::at(cx.file, span.start()),
            Some(cx.field.clone()),
            msg,
        )
    };
    let range = match &spec.range {
        None => None,
        Some(r) => Some(parse_area(r).ok_or_else(|| {
            at(
                r.span(),
                format!(
                    "`range` must be a block of cells such as `A1:F200` (top-left:bottom-right), not `{}`",
                    r.as_str()
                ),
            )
        })?),
    };
    let header_row = match &spec.header_row {
        None => None,
        Some(h) => {
            let n = **h;
            if n == 0 || n > MAX_ROW + 1 {
                return Err(at(
                    h.span(),
                    format!(
                        "`header_row` is a sheet row number from 1 (as Excel shows it), not {n}"
                    ),
                ));
            }
            if let Some(a) = range {
                if n - 1 < a.first_row || n - 1 > a.last_row {
                    return Err(at(
                        h.span(),
                        format!(
                            "`header_row` {n} is outside `range` (rows {} to {})",
                            a.first_row + 1,
                            a.last_row + 1
                        ),
                    ));
                }
            }
            Some(n - 1)
        }
    };
    Ok(Arc::new(XlsxSource {
        path: spec.path,
        sheet: spec.sheet,
        header_row,
        range,
    }))
}

/// A cell's value as cauce sees it.
#[derive(Debug, Clone, PartialEq)]
enum Cell<'a> {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    Date(NaiveDate),
    DateTime(NaiveDateTime),
    Text(std::borrow::Cow<'a, str>),
    /// An Excel error (`#N/A`), read as null.
    Error,
}

fn parse_iso(s: &str) -> Option<Cell<'static>> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(Cell::Date(d));
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(s, f) {
            return Some(datetime_cell(dt));
        }
    }
    None
}

fn datetime_cell(dt: NaiveDateTime) -> Cell<'static> {
    if dt.time() == chrono::NaiveTime::MIN {
        Cell::Date(dt.date())
    } else {
        Cell::DateTime(dt)
    }
}

/// `h:mm:ss` of a duration or a time of day given in days.
fn clock(days: f64) -> String {
    let total = (days * 86_400.0).round() as i64;
    let sign = if total < 0 { "-" } else { "" };
    let t = total.abs();
    format!("{sign}{}:{:02}:{:02}", t / 3600, (t / 60) % 60, t % 60)
}

fn classify(d: &Data) -> Cell<'_> {
    match d {
        Data::Empty => Cell::Null,
        Data::Error(_) => Cell::Error,
        Data::Int(i) => Cell::Int(*i),
        Data::Float(f) => {
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                Cell::Int(*f as i64)
            } else {
                Cell::Float(*f)
            }
        }
        Data::Bool(b) => Cell::Bool(*b),
        Data::String(s) if s.trim().is_empty() => Cell::Null,
        Data::String(s) => Cell::Text(s.as_str().into()),
        Data::DateTime(dt) => {
            let v = dt.as_f64();
            if dt.is_duration() || (0.0..1.0).contains(&v) {
                // A duration or a time of day with no date.
                Cell::Text(clock(v).into())
            } else {
                match dt.as_datetime() {
                    Some(x) => datetime_cell(x),
                    None => Cell::Float(v),
                }
            }
        }
        Data::DateTimeIso(s) => parse_iso(s).unwrap_or(Cell::Text(s.as_str().into())),
        Data::DurationIso(s) => Cell::Text(s.as_str().into()),
    }
}

/// What a column is built as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
    Bool,
    Date,
    DateTime,
    Text,
}

impl Kind {
    fn data_type(self) -> DataType {
        match self {
            Kind::Int => DataType::Int64,
            Kind::Float => DataType::Float64,
            Kind::Bool => DataType::Boolean,
            Kind::Date => DataType::Date32,
            Kind::DateTime => DataType::Timestamp(TimeUnit::Microsecond, None),
            Kind::Text => DataType::Utf8,
        }
    }
}

/// The kinds of values seen in a column.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    int: bool,
    float: bool,
    bool: bool,
    date: bool,
    datetime: bool,
    text: bool,
}

impl Seen {
    fn mark(&mut self, c: &Cell) {
        match c {
            Cell::Null | Cell::Error => {}
            Cell::Int(_) => self.int = true,
            Cell::Float(_) => self.float = true,
            Cell::Bool(_) => self.bool = true,
            Cell::Date(_) => self.date = true,
            Cell::DateTime(_) => self.datetime = true,
            Cell::Text(_) => self.text = true,
        }
    }

    fn merge(&mut self, o: Seen) {
        self.int |= o.int;
        self.float |= o.float;
        self.bool |= o.bool;
        self.date |= o.date;
        self.datetime |= o.datetime;
        self.text |= o.text;
    }

    fn kind(self) -> Kind {
        let numbers = self.int || self.float;
        let dates = self.date || self.datetime;
        match (numbers, dates, self.bool, self.text) {
            (true, false, false, false) if self.float => Kind::Float,
            (true, false, false, false) => Kind::Int,
            (false, true, false, false) if self.datetime => Kind::DateTime,
            (false, true, false, false) => Kind::Date,
            (false, false, true, false) => Kind::Bool,
            _ => Kind::Text,
        }
    }
}

/// One workbook's part of the read: its sheet, and where its columns go.
#[derive(Debug)]
struct FilePlan {
    file: PathBuf,
    sheet: String,
    /// First and last data row (0-based, inclusive); none when the header is the last row.
    rows: Option<(u32, u32)>,
    /// (sheet column, output column).
    cols: Vec<(u32, usize)>,
}

/// What one sheet holds: its plan, the kinds seen in each named column, and its Excel
/// error cells (how many, and the first one's address).
#[derive(Debug)]
struct Survey {
    plan: FilePlan,
    seen: Vec<(String, Seen)>,
    errors: u64,
    first_error: Option<String>,
}

/// The columns of the whole read.
#[derive(Debug)]
struct Plan {
    files: Vec<FilePlan>,
    names: Vec<String>,
    kinds: Vec<Kind>,
    /// Declared formats of columns read as text (dates are written with them).
    formats: Vec<Option<String>>,
    /// Excel error cells met, and the first one's address.
    errors: (u64, Option<String>),
}

impl Plan {
    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.names
                .iter()
                .zip(&self.kinds)
                .map(|(n, k)| Field::new(n, k.data_type(), true))
                .collect::<Vec<_>>(),
        ))
    }
}

impl XlsxSource {
    /// Opens a workbook and reads the chosen sheet whole.
    fn load(&self, file: &Path) -> Result<(String, Range<Data>), DataError> {
        let mut wb = open_workbook_auto(file).map_err(|e| match e {
            calamine::Error::Io(e) => DataError::io(format!("cannot open {}", file.display()), e),
            other => DataError::Invalid(format!(
                "{} is not a workbook calamine can read (xlsx, xlsm, xlsb, xls, ods): {other}",
                file.display()
            )),
        })?;
        let names = wb.sheet_names();
        let name = match &self.sheet {
            None => names.first().cloned(),
            Some(want) => names
                .iter()
                .find(|n| *n == want)
                .or_else(|| names.iter().find(|n| n.eq_ignore_ascii_case(want)))
                .cloned()
                .or_else(|| {
                    want.trim()
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| names.get(i).cloned())
                }),
        };
        let Some(name) = name else {
            return Err(DataError::Invalid(format!(
                "{} has no sheet {}; its sheets: {}",
                file.display(),
                self.sheet
                    .as_deref()
                    .map(|s| format!("`{s}`"))
                    .unwrap_or_else(|| "at all".into()),
                names.join(", ")
            )));
        };
        let range = wb.worksheet_range(&name).map_err(|e| {
            DataError::Invalid(format!(
                "{}: cannot read sheet `{name}`: {e}",
                file.display()
            ))
        })?;
        Ok((name, range))
    }

    /// The header row and the columns' names of one sheet, and the inferred kinds.
    fn survey(&self, file: &Path, sheet: &str, range: &Range<Data>) -> Result<Survey, DataError> {
        let (Some(start), Some(end)) = (range.start(), range.end()) else {
            return Ok(Survey {
                plan: FilePlan {
                    file: file.to_path_buf(),
                    sheet: sheet.to_string(),
                    rows: None,
                    cols: vec![],
                },
                seen: vec![],
                errors: 0,
                first_error: None,
            });
        };
        let area = match self.range {
            Some(a) => a,
            None => Area {
                first_row: self.header_row.unwrap_or(start.0),
                first_col: start.1,
                last_row: end.0,
                last_col: end.1,
            },
        };
        let header = self.header_row.unwrap_or(area.first_row);
        let last_row = area.last_row.min(end.0);
        let rows = (header < last_row).then_some((header + 1, last_row));
        let get = |r: u32, c: u32| range.get_value((r, c)).unwrap_or(&Data::Empty);
        let mut names: Vec<String> = Vec::new();
        let mut seen: Vec<(String, Seen)> = Vec::new();
        let mut cols = Vec::new();
        let mut errors = 0u64;
        let mut first_error = None;
        for c in area.first_col..=area.last_col.min(end.1) {
            let title = match classify(get(header, c)) {
                Cell::Null | Cell::Error => None,
                other => Some(text_of(&other, None).trim().to_string()),
            };
            let mut s = Seen::default();
            if let Some((r0, r1)) = rows {
                for r in r0..=r1 {
                    let cell = classify(get(r, c));
                    if cell == Cell::Error {
                        errors += 1;
                        if first_error.is_none() {
                            first_error = Some(format!(
                                "{}, sheet `{sheet}`, cell {}{}",
                                file.display(),
                                col_name(c),
                                r + 1
                            ));
                        }
                    }
                    s.mark(&cell);
                }
            }
            let empty = !(s.int || s.float || s.bool || s.date || s.datetime || s.text);
            let base = match title {
                Some(t) if !t.is_empty() => t,
                _ if empty => continue, // no header and no data: not a column
                _ => format!("column_{}", c + 1),
            };
            let mut name = base.clone();
            let mut n = 2;
            while names.contains(&name) {
                name = format!("{base}_{n}");
                n += 1;
            }
            names.push(name.clone());
            cols.push(c);
            seen.push((name, s));
        }
        Ok(Survey {
            plan: FilePlan {
                file: file.to_path_buf(),
                sheet: sheet.to_string(),
                rows,
                cols: cols.into_iter().map(|c| (c, 0)).collect(),
            },
            seen,
            errors,
            first_error,
        })
    }

    /// Reads every workbook once: names, kinds and where each column goes. The sheet of a
    /// single workbook is kept for the read that follows.
    fn plan(
        &self,
        files: &[PathBuf],
        declared: &IndexMap<String, ColumnType>,
        cancel: &CancellationToken,
    ) -> Result<(Plan, Option<Range<Data>>), DataError> {
        let mut all: IndexMap<String, Seen> = IndexMap::new();
        let mut plans = Vec::new();
        let mut kept = None;
        let mut errors = (0u64, None);
        for file in files {
            if cancel.is_cancelled() {
                return Err(DataError::Cancelled);
            }
            let (sheet, range) = self.load(file)?;
            let Survey {
                plan: mut fp,
                seen,
                errors: n,
                first_error: first,
            } = self.survey(file, &sheet, &range)?;
            errors.0 += n;
            if errors.1.is_none() {
                errors.1 = first;
            }
            for ((_, out), (name, s)) in fp.cols.iter_mut().zip(seen) {
                let entry = all.entry(name);
                *out = entry.index();
                entry.or_default().merge(s);
            }
            plans.push(fp);
            if files.len() == 1 {
                kept = Some(range);
            }
        }
        if all.is_empty() {
            let f = files
                .first()
                .map(|f| f.display().to_string())
                .unwrap_or_default();
            return Err(DataError::Invalid(format!(
                "{f}: the sheet has no columns{}",
                match (self.header_row, self.range) {
                    (Some(h), _) => format!(" (nothing in header row {})", h + 1),
                    (None, Some(_)) => " in `range`".to_string(),
                    _ => String::new(),
                }
            )));
        }
        let mut names = Vec::new();
        let mut kinds = Vec::new();
        let mut formats = Vec::new();
        for (name, s) in all {
            let inferred = s.kind();
            let (kind, format) = match declared.get(&name) {
                Some(t) if t.format.is_some() => (Kind::Text, t.format.clone()),
                Some(t) if matches!(t.data_type, DataType::Utf8 | DataType::Decimal128(..)) => {
                    (Kind::Text, None)
                }
                _ => (inferred, None),
            };
            names.push(name);
            kinds.push(kind);
            formats.push(format);
        }
        Ok((
            Plan {
                files: plans,
                names,
                kinds,
                formats,
                errors,
            },
            kept,
        ))
    }
}

/// A cell as text (a column of mixed values, or one declared as text).
fn text_of(c: &Cell, format: Option<&str>) -> String {
    match c {
        Cell::Null | Cell::Error => String::new(),
        Cell::Int(i) => i.to_string(),
        Cell::Float(f) => f.to_string(),
        Cell::Bool(b) => if *b { "true" } else { "false" }.to_string(),
        Cell::Date(d) => d.format(format.unwrap_or("%Y-%m-%d")).to_string(),
        Cell::DateTime(dt) => {
            let f = format.unwrap_or(if dt.nanosecond() == 0 {
                "%Y-%m-%d %H:%M:%S"
            } else {
                "%Y-%m-%d %H:%M:%S%.3f"
            });
            dt.format(f).to_string()
        }
        Cell::Text(t) => t.to_string(),
    }
}

/// One column being built.
enum Builder {
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Date(Date32Builder),
    DateTime(TimestampMicrosecondBuilder),
    Text(StringBuilder),
}

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()
}

impl Builder {
    fn new(kind: Kind, rows: usize) -> Builder {
        match kind {
            Kind::Int => Builder::Int(Int64Builder::with_capacity(rows)),
            Kind::Float => Builder::Float(Float64Builder::with_capacity(rows)),
            Kind::Bool => Builder::Bool(BooleanBuilder::with_capacity(rows)),
            Kind::Date => Builder::Date(Date32Builder::with_capacity(rows)),
            Kind::DateTime => Builder::DateTime(TimestampMicrosecondBuilder::with_capacity(rows)),
            Kind::Text => Builder::Text(StringBuilder::with_capacity(rows, rows * 16)),
        }
    }

    /// Appends a cell; types were inferred from every cell, so each fits its column.
    fn push(&mut self, c: &Cell, format: Option<&str>) {
        match (self, c) {
            (b, Cell::Null | Cell::Error) => b.null(),
            (Builder::Int(b), Cell::Int(i)) => b.append_value(*i),
            (Builder::Float(b), Cell::Int(i)) => b.append_value(*i as f64),
            (Builder::Float(b), Cell::Float(f)) => b.append_value(*f),
            (Builder::Bool(b), Cell::Bool(x)) => b.append_value(*x),
            (Builder::Date(b), Cell::Date(d)) => b.append_value((*d - epoch()).num_days() as i32),
            (Builder::DateTime(b), Cell::Date(d)) => b.append_value(
                d.and_time(chrono::NaiveTime::MIN)
                    .and_utc()
                    .timestamp_micros(),
            ),
            (Builder::DateTime(b), Cell::DateTime(dt)) => {
                b.append_value(dt.and_utc().timestamp_micros())
            }
            (Builder::Text(b), c) => b.append_value(text_of(c, format)),
            (b, _) => b.null(),
        }
    }

    fn null(&mut self) {
        match self {
            Builder::Int(b) => b.append_null(),
            Builder::Float(b) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::DateTime(b) => b.append_null(),
            Builder::Text(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::DateTime(b) => Arc::new(b.finish()),
            Builder::Text(b) => Arc::new(b.finish()),
        }
    }
}

/// Sends the rows of every workbook down the channel.
fn produce(
    src: &XlsxSource,
    plan: &Plan,
    mut kept: Option<Range<Data>>,
    batch_size: usize,
    cancel: &CancellationToken,
    tx: &BatchSender,
) -> Result<(), DataError> {
    let schema = plan.schema();
    let width = plan.names.len();
    let mut cols: Vec<Builder> = plan
        .kinds
        .iter()
        .map(|k| Builder::new(*k, batch_size))
        .collect();
    let mut rows = 0usize;
    let mut present = vec![false; width];
    let send = |cols: &mut Vec<Builder>, rows: &mut usize| -> Result<bool, DataError> {
        if *rows == 0 {
            return Ok(true);
        }
        *rows = 0;
        let arrays: Vec<ArrayRef> = cols.iter_mut().map(|b| b.finish()).collect();
        let batch = RecordBatch::try_new(schema.clone(), arrays)
            .map_err(|e| DataError::Invalid(format!("building a batch: {e}")))?;
        Ok(tx.blocking_send(Ok(batch)).is_ok())
    };
    for fp in &plan.files {
        let Some((r0, r1)) = fp.rows else {
            continue;
        };
        let range = match kept.take() {
            Some(r) => r,
            None => src.load(&fp.file)?.1,
        };
        for r in r0..=r1 {
            if cancel.is_cancelled() {
                return Err(DataError::Cancelled);
            }
            let cells: Vec<(usize, Cell)> = fp
                .cols
                .iter()
                .map(|(c, out)| {
                    (
                        *out,
                        classify(range.get_value((r, *c)).unwrap_or(&Data::Empty)),
                    )
                })
                .collect();
            if cells
                .iter()
                .all(|(_, c)| matches!(c, Cell::Null | Cell::Error))
            {
                continue; // an empty row
            }
            present.iter_mut().for_each(|p| *p = false);
            for (out, cell) in &cells {
                cols[*out].push(cell, plan.formats[*out].as_deref());
                present[*out] = true;
            }
            for (i, p) in present.iter().enumerate() {
                if !p {
                    cols[i].null();
                }
            }
            rows += 1;
            if rows >= batch_size && !send(&mut cols, &mut rows)? {
                return Ok(());
            }
        }
    }
    send(&mut cols, &mut rows).map(|_| ())
}

#[async_trait]
impl Source for XlsxSource {
    fn describe(&self) -> String {
        match &self.sheet {
            Some(s) => format!("xlsx {} sheet {s}", self.path),
            None => format!("xlsx {}", self.path),
        }
    }

    async fn read(&self, cx: &SourceContext<'_>) -> Result<DataFrame, DataError> {
        let files = cx.files(&self.path)?;
        cx.input_size(total_size(&files));
        let me = Arc::new(self.clone());
        let cancel = cx.task.cancel.clone();
        let declared = cx.columns.clone();
        let (plan, kept) = {
            let (me, cancel) = (me.clone(), cancel.clone());
            tokio::task::spawn_blocking(move || me.plan(&files, &declared, &cancel))
                .await
                .map_err(|e| DataError::Io(format!("reading {}: {e}", self.path)))??
        };
        if plan.errors.0 > 0 {
            cx.task.log.note(&format!(
                "{} cells hold Excel errors (#N/A, #DIV/0!, ...) and are read as empty; the first: {}",
                plan.errors.0,
                plan.errors.1.as_deref().unwrap_or("?")
            ));
        }
        for fp in &plan.files {
            cx.task.log.note(&format!(
                "{}: sheet `{}`, {} columns",
                fp.file.display(),
                fp.sheet,
                fp.cols.len()
            ));
        }
        let (tx, df) = channel_frame(cx.session, plan.schema())?;
        let batch_size = cx.task.data.batch_size.max(1);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = produce(&me, &plan, kept, batch_size, &cancel, &tx) {
                let _ = tx.blocking_send(Err(stream_error(e)));
            }
        });
        Ok(df)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_references() {
        assert_eq!(cell_ref("A1"), Some((0, 0)));
        assert_eq!(cell_ref("$AB$12"), Some((11, 27)));
        assert_eq!(cell_ref("1A"), None);
        assert_eq!(
            parse_area("B3:F200"),
            Some(Area {
                first_row: 2,
                first_col: 1,
                last_row: 199,
                last_col: 5
            })
        );
        assert_eq!(parse_area("F3:B200"), None);
        assert_eq!(col_name(0), "A");
        assert_eq!(col_name(25), "Z");
        assert_eq!(col_name(26), "AA");
        assert_eq!(col_name(27), "AB");
    }

    #[test]
    fn kinds_unify() {
        let mut s = Seen::default();
        s.mark(&Cell::Int(1));
        assert_eq!(s.kind(), Kind::Int);
        s.mark(&Cell::Float(1.5));
        assert_eq!(s.kind(), Kind::Float);
        s.mark(&Cell::Text("x".into()));
        assert_eq!(s.kind(), Kind::Text);
        let mut d = Seen::default();
        d.mark(&Cell::Date(epoch()));
        assert_eq!(d.kind(), Kind::Date);
        d.mark(&Cell::Null);
        assert_eq!(d.kind(), Kind::Date);
    }
}
