//! `source: json` and `source: ndjson`: JSON records from a file, a folder or a glob.
//! `json` reads a document that is an array of records, or an object holding that array at
//! a dot path (`records: data.items`); `ndjson` reads one record per line (blank lines are
//! skipped). Both stream: records are parsed one at a time (serde_json) and built into
//! Arrow batches of `batch_size` rows, so memory holds one batch, never the document,
//! whatever the size of the file or the position of the array in it.
//!
//! Column types are inferred from the first `infer_rows` records (10,000; `all` reads every
//! record once more first): whole numbers → Int64, numbers → Float64, `true`/`false` →
//! Boolean, strings → Utf8, anything mixed or nested → Utf8. Nested objects and arrays are
//! kept as their JSON text, unless `flatten: true`, which turns nested objects into
//! `parent.child` columns (arrays stay JSON text). A column declared in the extract's
//! `columns` is read in a way its type can take (a `decimal` from the number's exact text,
//! a `timestamp` from its string) and cast by the extract.
//!
//! Owns reading, with its rules of inference; building records into batches is
//! [`crate::data::records`], and the declared types are the extract's to apply. A
//! malformed document is an error naming the file, line and column; a record with a field
//! or a type the inferred records did not show is an error naming the file, line, record
//! and field (raise `infer_rows` or declare the column). Files must be UTF-8 (a byte-order
//! mark is skipped); compressed files are not read.

use super::{total_size, Source, SourceContext};
use crate::data::records::{self, Column, Inference, Misfits, Rows, Rules};
use crate::data::stream::{channel_frame, stream_error, BatchSender};
use crate::data::types::ColumnType;
use crate::data::DataError;
use crate::spec::error::{Location, SpecError};
use crate::tasks::BuildContext;
use async_trait::async_trait;
use datafusion::prelude::DataFrame;
use indexmap::IndexMap;
use marked_yaml::{Node, Spanned};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::cell::Cell;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Records inferred from by default.
const DEFAULT_INFER_ROWS: usize = 10_000;

/// How records are laid out in a file.
#[derive(Debug, Clone, PartialEq)]
enum Layout {
    /// One record per line.
    Lines,
    /// One document: an array of records, at `path` inside nested objects (empty: the
    /// document itself).
    Document { path: Vec<String> },
}

/// The `json` and `ndjson` sources.
#[derive(Debug, Clone)]
pub struct JsonSource {
    path: String,
    layout: Layout,
    flatten: bool,
    /// `None`: every record.
    infer_rows: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSpec {
    path: String,
    records: Option<Spanned<String>>,
    flatten: Option<bool>,
    infer_rows: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NdjsonSpec {
    path: String,
    flatten: Option<bool>,
    infer_rows: Option<Spanned<String>>,
}

fn spanned_error(cx: &BuildContext, span: &marked_yaml::Span, msg: String) -> SpecError {
    SpecError::new(
        Location::at(cx.file, span.start()),
        Some(cx.field.clone()),
        msg,
    )
}

fn infer_rows(cx: &BuildContext, v: Option<Spanned<String>>) -> Result<Option<usize>, SpecError> {
    let Some(v) = v else {
        return Ok(Some(DEFAULT_INFER_ROWS));
    };
    let t = v.trim();
    if t.eq_ignore_ascii_case("all") {
        return Ok(None);
    }
    match t.parse::<usize>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(spanned_error(
            cx,
            v.span(),
            format!("`infer_rows` must be a number of records above 0, or `all`; not `{t}`"),
        )),
    }
}

/// Builds `source: json` from `path`, `records`, `flatten`, `infer_rows`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn Source>, SpecError> {
    let spec: JsonSpec = cx.decode(node)?;
    let path = match &spec.records {
        None => vec![],
        Some(r) => {
            let parts: Vec<String> = r.split('.').map(|p| p.trim().to_string()).collect();
            if parts.iter().any(|p| p.is_empty()) {
                return Err(spanned_error(
                    cx,
                    r.span(),
                    format!(
                        "`records` is a dot path of keys such as `data.items`, not `{}`",
                        r.as_str()
                    ),
                ));
            }
            parts
        }
    };
    Ok(Arc::new(JsonSource {
        path: spec.path,
        layout: Layout::Document { path },
        flatten: spec.flatten.unwrap_or(false),
        infer_rows: infer_rows(cx, spec.infer_rows)?,
    }))
}

/// Builds `source: ndjson` from `path`, `flatten`, `infer_rows`.
pub fn build_ndjson(node: &Node, cx: &BuildContext) -> Result<Arc<dyn Source>, SpecError> {
    let spec: NdjsonSpec = cx.decode(node)?;
    Ok(Arc::new(JsonSource {
        path: spec.path,
        layout: Layout::Lines,
        flatten: spec.flatten.unwrap_or(false),
        infer_rows: infer_rows(cx, spec.infer_rows)?,
    }))
}

/// Whether reading goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

/// A record as read, with where it is.
struct At<'a> {
    file: &'a Path,
    /// The line the record ends on.
    line: u64,
    /// 1-based, in its file.
    number: u64,
}

impl At<'_> {
    fn error(&self, what: impl std::fmt::Display) -> DataError {
        DataError::Invalid(format!(
            "{}: line {}, record {}: {what}",
            self.file.display(),
            self.line,
            self.number
        ))
    }
}

/// A [`Read`] that counts the lines it has handed out, for messages.
struct Lines<R> {
    inner: R,
    newlines: Rc<Cell<u64>>,
}

impl<R: Read> Read for Lines<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let more = buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        if more > 0 {
            self.newlines.set(self.newlines.get() + more);
        }
        Ok(n)
    }
}

/// A `serde_json` error as a message with its file, line and column.
fn syntax_error(file: &Path, e: &serde_json::Error, line_offset: Option<u64>) -> DataError {
    if e.is_io() {
        return DataError::io(format!("reading {}", file.display()), e);
    }
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let msg = text.strip_suffix(&suffix).unwrap_or(&text);
    let line = line_offset.unwrap_or(e.line() as u64);
    DataError::Invalid(format!(
        "{}: line {line}, column {}: invalid JSON: {msg}",
        file.display(),
        e.column()
    ))
}

fn open(file: &Path) -> Result<BufReader<std::fs::File>, DataError> {
    let f = std::fs::File::open(file)
        .map_err(|e| DataError::io(format!("cannot open {}", file.display()), e))?;
    let mut r = BufReader::with_capacity(1 << 16, f);
    // A UTF-8 byte-order mark is not JSON; skip it.
    let bom = r
        .fill_buf()
        .map_err(|e| DataError::io(format!("reading {}", file.display()), e))?
        .starts_with(&[0xEF, 0xBB, 0xBF]);
    if bom {
        r.consume(3);
    }
    Ok(r)
}

/// The type name of a JSON value, for messages.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What is called with each record.
type OnRecord<'x> = dyn FnMut(Map<String, Value>, &At) -> Result<Flow, DataError> + 'x;

/// Reads the records of one file in order, calling `each` with each; stops when it says.
fn each_record(
    file: &Path,
    layout: &Layout,
    cancel: &CancellationToken,
    each: &mut OnRecord<'_>,
) -> Result<Flow, DataError> {
    match layout {
        Layout::Lines => {
            let mut r = open(file)?;
            let mut buf = Vec::with_capacity(4096);
            let mut line = 0u64;
            let mut number = 0u64;
            loop {
                buf.clear();
                let n = r
                    .read_until(b'\n', &mut buf)
                    .map_err(|e| DataError::io(format!("reading {}", file.display()), e))?;
                if n == 0 {
                    return Ok(Flow::Go);
                }
                line += 1;
                if buf.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                if cancel.is_cancelled() {
                    return Err(DataError::Cancelled);
                }
                number += 1;
                let at = At { file, line, number };
                let v: Value =
                    serde_json::from_slice(&buf).map_err(|e| syntax_error(file, &e, Some(line)))?;
                let Value::Object(rec) = v else {
                    return Err(at.error(format!(
                        "expected an object (one record per line), found {}",
                        json_kind(&v)
                    )));
                };
                if each(rec, &at)? == Flow::Stop {
                    return Ok(Flow::Stop);
                }
            }
        }
        Layout::Document { path } => {
            let newlines = Rc::new(Cell::new(0));
            let reader = Lines {
                inner: open(file)?,
                newlines: newlines.clone(),
            };
            let mut de = serde_json::Deserializer::from_reader(reader);
            let mut walk = Walk {
                file,
                path,
                depth: 0,
                cancel,
                each,
                number: 0,
                newlines,
                outcome: None,
            };
            let result = (&mut walk).deserialize(&mut de);
            let outcome = walk.outcome.take();
            match (result, outcome) {
                // Stopped by `each`, or an error of ours carried out of the parser.
                (_, Some(Err(e))) => Err(e),
                (_, Some(Ok(Flow::Stop))) => Ok(Flow::Stop),
                (Err(e), _) => Err(syntax_error(file, &e, None)),
                (Ok(()), _) => {
                    de.end().map_err(|e| syntax_error(file, &e, None))?;
                    Ok(Flow::Go)
                }
            }
        }
    }
}

/// Walks a document down `path` to the array of records, skipping everything else without
/// keeping it, and hands each record to `each` as it is parsed.
struct Walk<'a> {
    file: &'a Path,
    path: &'a [String],
    depth: usize,
    cancel: &'a CancellationToken,
    each: &'a mut OnRecord<'a>,
    number: u64,
    /// Lines the parser has read so far.
    newlines: Rc<Cell<u64>>,
    /// Set when reading ended for a reason of ours (an error, or `each` said stop); the
    /// parser is then unwound with a placeholder error.
    outcome: Option<Result<Flow, DataError>>,
}

impl Walk<'_> {
    fn here(&self) -> String {
        if self.depth == 0 {
            "the document".into()
        } else {
            format!("`{}`", self.path[..self.depth].join("."))
        }
    }

    fn stop<E: serde::de::Error>(&mut self, r: Result<Flow, DataError>) -> E {
        self.outcome = Some(r);
        E::custom("stopped")
    }
}

impl<'de> DeserializeSeed<'de> for &mut Walk<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &mut Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of records, or an object holding one")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth < self.path.len() {
            let msg = format!(
                "{}: {} is an array, so it has no key `{}` (see `records`)",
                self.file.display(),
                self.here(),
                self.path[self.depth]
            );
            return Err(self.stop(Err(DataError::Invalid(msg))));
        }
        loop {
            if self.cancel.is_cancelled() {
                return Err(self.stop(Err(DataError::Cancelled)));
            }
            let Some(v) = seq.next_element::<Value>()? else {
                return Ok(());
            };
            self.number += 1;
            // The reader has handed out the record's last byte (and at most one more).
            let at = At {
                file: self.file,
                line: self.newlines.get() + 1,
                number: self.number,
            };
            let Value::Object(rec) = v else {
                let msg = format!(
                    "{}: record {} of {} is {}, not an object",
                    self.file.display(),
                    self.number,
                    self.here(),
                    json_kind(&v)
                );
                return Err(self.stop(Err(DataError::Invalid(msg))));
            };
            match (self.each)(rec, &at) {
                Ok(Flow::Go) => {}
                other => return Err(self.stop(other)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let want = self.path.get(self.depth).cloned();
        let mut keys = Vec::new();
        let mut found = false;
        while let Some(key) = map.next_key::<String>()? {
            if !found && want.as_deref() == Some(key.as_str()) {
                found = true;
                self.depth += 1;
                map.next_value_seed(&mut *self)?;
                self.depth -= 1;
            } else {
                map.next_value::<IgnoredAny>()?;
                if keys.len() < 20 {
                    keys.push(key);
                }
            }
        }
        if found {
            return Ok(());
        }
        let listed = if keys.is_empty() {
            "it has no keys".to_string()
        } else {
            format!("its keys: {}", keys.join(", "))
        };
        let msg = match want {
            None => format!(
                "{}: {} is an object, not an array of records; name the array with `records` ({listed})",
                self.file.display(),
                self.here()
            ),
            Some(k) => format!(
                "{}: {} has no key `{k}` (see `records`); {listed}",
                self.file.display(),
                self.here()
            ),
        };
        Err(self.stop(Err(DataError::Invalid(msg))))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.not_records("a boolean"))
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.not_records("a number"))
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.not_records("a number"))
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.not_records("a number"))
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.not_records("a string"))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Err(self.not_records("null"))
    }
}

impl Walk<'_> {
    fn not_records<E: serde::de::Error>(&mut self, found: &str) -> E {
        let msg = format!(
            "{}: {} is {found}, not an array of records (see `records`)",
            self.file.display(),
            self.here()
        );
        self.stop(Err(DataError::Invalid(msg)))
    }
}

impl JsonSource {
    /// How these sources read records: values converted where they can be, declared
    /// columns read as their type's kind, and only the fields the records show.
    fn rules(&self) -> Rules {
        Rules {
            flatten: self.flatten,
            big_ints_as_text: false,
            loose: true,
            typed_declared: true,
            keep_unseen_declared: false,
        }
    }
}

/// Infers the columns from the first records of the files.
fn infer(
    src: &JsonSource,
    files: &[PathBuf],
    declared: &IndexMap<String, ColumnType>,
    cancel: &CancellationToken,
) -> Result<Vec<Column>, DataError> {
    let rules = src.rules();
    let mut seen = Inference::default();
    let mut left = src.infer_rows;
    for file in files {
        let flow = each_record(file, &src.layout, cancel, &mut |rec, _| {
            seen.record(&rec, &rules);
            Ok(match &mut left {
                None => Flow::Go,
                Some(n) => {
                    *n -= 1;
                    if *n == 0 {
                        Flow::Stop
                    } else {
                        Flow::Go
                    }
                }
            })
        })?;
        if flow == Flow::Stop {
            break;
        }
    }
    // No records: the declared columns still make a typed empty dataset.
    if seen.is_empty() && declared.is_empty() {
        return Err(DataError::Invalid(format!(
            "{} has no records (and no fields); declare the extract's `columns` so that an empty input still gives a dataset with them",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(seen.columns(declared, &rules))
}

/// A record's misfits, named by its file, line and number.
struct Place<'a> {
    at: &'a At<'a>,
    infer_hint: &'a str,
}

impl Misfits for Place<'_> {
    fn unknown(&mut self, name: &str, v: &Value) -> Result<(), DataError> {
        if v.is_null() {
            return Ok(());
        }
        Err(self.at.error(format!(
            "field `{name}` is not in the records types were inferred from ({}); raise `infer_rows` (or write `infer_rows: all`)",
            self.infer_hint
        )))
    }

    fn misfit(&mut self, column: &Column, name: &str, v: &Value, want: &str) -> DataError {
        let mut shown = v.to_string();
        if shown.len() > 60 {
            let cut = (0..=60)
                .rev()
                .find(|c| shown.is_char_boundary(*c))
                .unwrap_or(0);
            shown.truncate(cut);
            shown.push('…');
        }
        match &column.declared {
            Some(t) => self.at.error(format!(
                "field `{name}` is {shown}, but the column is declared `{t}`, which takes {want}"
            )),
            None => self.at.error(format!(
                "field `{name}` is {shown}, but the column holds {want} ({}, inferred from {}); declare its type in `columns` (such as `{name}: string`) or raise `infer_rows`",
                column.kind.data_type(),
                self.infer_hint
            )),
        }
    }
}

/// Builds batches from records and sends them down the channel.
struct Emitter {
    rows: Rows,
    batch_size: usize,
    infer_hint: String,
    tx: BatchSender,
}

impl Emitter {
    fn push(&mut self, rec: &Map<String, Value>, at: &At) -> Result<Flow, DataError> {
        let mut place = Place {
            at,
            infer_hint: &self.infer_hint,
        };
        self.rows.push(rec, &mut place)?;
        if self.rows.len() >= self.batch_size {
            return self.flush();
        }
        Ok(Flow::Go)
    }

    /// Sends the rows built so far; `Stop` when the reader went away.
    fn flush(&mut self) -> Result<Flow, DataError> {
        if self.rows.is_empty() {
            return Ok(Flow::Go);
        }
        let batch = self.rows.finish(&"building a batch")?;
        Ok(if self.tx.blocking_send(Ok(batch)).is_err() {
            Flow::Stop
        } else {
            Flow::Go
        })
    }
}

/// Reads every file into the channel; an error ends the stream with it.
fn produce(
    src: &JsonSource,
    files: &[PathBuf],
    columns: Vec<Column>,
    batch_size: usize,
    cancel: &CancellationToken,
    tx: BatchSender,
) {
    let mut em = Emitter {
        rows: Rows::new(columns, batch_size, src.rules()),
        batch_size,
        infer_hint: match src.infer_rows {
            Some(n) => format!("the first {n}"),
            None => "all of them".into(),
        },
        tx: tx.clone(),
    };
    let mut run = || -> Result<(), DataError> {
        for file in files {
            let flow = each_record(file, &src.layout, cancel, &mut |rec, at| em.push(&rec, at))?;
            if flow == Flow::Stop {
                return Ok(());
            }
        }
        em.flush().map(|_| ())
    };
    if let Err(e) = run() {
        let _ = tx.blocking_send(Err(stream_error(e)));
    }
}

#[async_trait]
impl Source for JsonSource {
    fn describe(&self) -> String {
        match &self.layout {
            Layout::Lines => format!("ndjson {}", self.path),
            Layout::Document { path } if path.is_empty() => format!("json {}", self.path),
            Layout::Document { path } => {
                format!("json {} (records at {})", self.path, path.join("."))
            }
        }
    }

    async fn read(&self, cx: &SourceContext<'_>) -> Result<DataFrame, DataError> {
        let files = cx.files(&self.path)?;
        cx.input_size(total_size(&files));
        let me = Arc::new(self.clone());
        let cancel = cx.task.cancel.clone();
        let declared = cx.columns.clone();
        let columns = {
            let (me, files, cancel) = (me.clone(), files.clone(), cancel.clone());
            tokio::task::spawn_blocking(move || infer(&me, &files, &declared, &cancel))
                .await
                .map_err(|e| DataError::Io(format!("reading {}: {e}", self.path)))??
        };
        let (tx, df) = channel_frame(cx.session, records::schema(&columns))?;
        let batch_size = cx.task.data.batch_size.max(1);
        tokio::task::spawn_blocking(move || produce(&me, &files, columns, batch_size, &cancel, tx));
        Ok(df)
    }
}
