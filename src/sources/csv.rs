//! `source: csv`: delimited text files, one or a glob of many, read by DataFusion's
//! parallel CSV reader. Options: delimiter, header, quote, escape, comment, null markers,
//! encoding (UTF-8 by default; Latin-1/Windows-1252 and any other WHATWG label are
//! transcoded to UTF-8 as they are read, and a UTF-8 byte-order mark is dropped), schema
//! inference over the first `infer_rows` rows with the extract's `columns` applied on read
//! (so a `decimal(10,2)` is parsed as a decimal, and a bad value is reported with its file,
//! line and column). `decimal_comma: true` reads the declared numeric columns the Spanish
//! way (`1.234,50`: `.` groups thousands, `,` marks decimals): they are read as text, the
//! dots dropped and the comma turned into a point, then cast.

use super::{total_size, Source, SourceContext};
use crate::data::timestamps;
use crate::data::types::{quote_ident, quote_literal};
use crate::data::DataError;
use crate::spec::error::SpecError;
use crate::tasks::BuildContext;
use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{cast, CsvReadOptions, DataFrame, SessionContext};
use marked_yaml::Node;
use serde::Deserialize;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The `csv` source.
#[derive(Debug)]
pub struct CsvSource {
    path: String,
    delimiter: u8,
    header: bool,
    quote: u8,
    escape: Option<u8>,
    comment: Option<u8>,
    null_regex: Option<String>,
    /// Null markers other than the empty field (which the reader treats as null itself).
    markers: Vec<String>,
    encoding: &'static encoding_rs::Encoding,
    infer_rows: usize,
    newlines_in_values: bool,
    decimal_comma: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CsvSpec {
    path: String,
    delimiter: Option<String>,
    header: Option<bool>,
    quote: Option<String>,
    escape: Option<String>,
    comment: Option<String>,
    null: Option<OneOrMany>,
    encoding: Option<String>,
    infer_rows: Option<usize>,
    newlines_in_values: Option<bool>,
    decimal_comma: Option<bool>,
}

fn one_byte(cx: &BuildContext, node: &Node, key: &str, v: &str) -> Result<u8, SpecError> {
    let v = match v {
        "\\t" | "tab" => "\t",
        other => other,
    };
    match v.as_bytes() {
        [b] if b.is_ascii() => Ok(*b),
        _ => Err(cx.error(
            node,
            format!("`{key}` must be one ASCII character (`,`, `;`, `\\t`, `|`), not `{v}`"),
        )),
    }
}

/// Escapes regex metacharacters.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Builds from `path`, `delimiter`, `header`, `quote`, `escape`, `comment`, `null`,
/// `encoding`, `infer_rows`, `newlines_in_values`, `decimal_comma`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn Source>, SpecError> {
    let spec: CsvSpec = cx.decode(node)?;
    let delimiter = match &spec.delimiter {
        Some(d) => one_byte(cx, node, "delimiter", d)?,
        None => b',',
    };
    let quote = match &spec.quote {
        Some(q) => one_byte(cx, node, "quote", q)?,
        None => b'"',
    };
    let escape = spec
        .escape
        .as_deref()
        .map(|e| one_byte(cx, node, "escape", e))
        .transpose()?;
    let comment = spec
        .comment
        .as_deref()
        .map(|e| one_byte(cx, node, "comment", e))
        .transpose()?;
    let markers = match spec.null {
        None => vec![],
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    };
    let null_regex = (!markers.is_empty()).then(|| {
        format!(
            "^({})$",
            markers
                .iter()
                .map(|m| regex_escape(m))
                .collect::<Vec<_>>()
                .join("|")
        )
    });
    let encoding = match &spec.encoding {
        None => encoding_rs::UTF_8,
        Some(label) => {
            let l = label.trim().to_ascii_lowercase();
            let l = match l.as_str() {
                "latin1" | "latin-1" => "iso-8859-1",
                "cp1252" => "windows-1252",
                other => other,
            };
            encoding_rs::Encoding::for_label(l.as_bytes()).ok_or_else(|| {
                cx.error(
                    node,
                    format!("unknown encoding `{label}`; use utf-8, latin1, windows-1252 or another WHATWG label"),
                )
            })?
        }
    };
    Ok(Arc::new(CsvSource {
        path: spec.path,
        delimiter,
        header: spec.header.unwrap_or(true),
        quote,
        escape,
        comment,
        null_regex,
        markers: markers.into_iter().filter(|m| !m.is_empty()).collect(),
        encoding,
        infer_rows: spec.infer_rows.unwrap_or(10_000).max(1),
        newlines_in_values: spec.newlines_in_values.unwrap_or(false),
        decimal_comma: spec.decimal_comma.unwrap_or(false),
    }))
}

impl CsvSource {
    fn options<'a>(&self, schema: Option<&'a Schema>) -> CsvReadOptions<'a> {
        let mut o = CsvReadOptions::new()
            .has_header(self.header)
            .delimiter(self.delimiter)
            .quote(self.quote)
            .file_extension("")
            .schema_infer_max_records(self.infer_rows)
            .newlines_in_values(self.newlines_in_values);
        o.escape = self.escape;
        o.comment = self.comment;
        o.null_regex = self.null_regex.clone();
        o.schema = schema;
        o
    }

    /// The files as DataFusion reads them: UTF-8 ones as they are, others (and UTF-8 with
    /// a byte-order mark) transcoded into the scratch folder.
    fn prepare(&self, files: &[PathBuf], scratch: &Path) -> Result<Vec<String>, DataError> {
        let mut out = Vec::with_capacity(files.len());
        for (i, f) in files.iter().enumerate() {
            let needs = self.encoding != encoding_rs::UTF_8 || starts_with_bom(f);
            if !needs {
                out.push(f.display().to_string());
                continue;
            }
            std::fs::create_dir_all(scratch)
                .map_err(|e| DataError::io(format!("cannot create {}", scratch.display()), e))?;
            let target = scratch.join(format!("{i}.csv"));
            transcode(f, &target, self.encoding)?;
            out.push(target.display().to_string());
        }
        Ok(out)
    }

    /// The declared numeric columns read with a decimal comma, and their types.
    fn comma_columns(
        &self,
        columns: &indexmap::IndexMap<String, crate::data::types::ColumnType>,
    ) -> Vec<(String, DataType)> {
        if !self.decimal_comma {
            return vec![];
        }
        columns
            .iter()
            .filter(|(_, ct)| ct.data_type.is_numeric())
            .map(|(n, ct)| (n.clone(), ct.data_type.clone()))
            .collect()
    }

    /// The files as a frame. With `timestamps_as_text`, declared timestamp columns come as
    /// text, which [`crate::data::types::apply`] parses faster than the CSV reader does;
    /// without it the reader parses them, and names the line of a bad value.
    async fn frame(
        &self,
        session: &SessionContext,
        paths: Vec<String>,
        columns: &indexmap::IndexMap<String, crate::data::types::ColumnType>,
        timestamps_as_text: bool,
    ) -> Result<DataFrame, DataError> {
        let comma = self.comma_columns(columns);
        let df = self
            .frame_text(session, paths, columns, &comma, timestamps_as_text)
            .await?;
        if comma.is_empty() {
            return Ok(df);
        }
        let exprs: Vec<_> = df
            .schema()
            .fields()
            .iter()
            .map(|f| match comma.iter().find(|(n, _)| n == f.name()) {
                Some((n, t)) => cast(crate::data::types::column(n), t.clone()).alias(n),
                None => crate::data::types::column(f.name()),
            })
            .collect();
        df.select(exprs)
            .map_err(|e| DataError::from_datafusion(format!("reading {}", self.path), e))
    }

    /// The frame with the decimal-comma columns as text in the usual notation (`1234.50`),
    /// not yet cast.
    async fn frame_text(
        &self,
        session: &SessionContext,
        paths: Vec<String>,
        columns: &indexmap::IndexMap<String, crate::data::types::ColumnType>,
        comma: &[(String, DataType)],
        timestamps_as_text: bool,
    ) -> Result<DataFrame, DataError> {
        let df = self
            .frame_raw(session, paths, columns, comma, timestamps_as_text)
            .await?;
        if comma.is_empty() {
            return Ok(df);
        }
        let what = || format!("reading {}", self.path);
        let mut exprs = Vec::new();
        for f in df.schema().fields() {
            let e = if comma.iter().any(|(n, _)| n == f.name()) {
                let name = quote_ident(f.name());
                df.parse_sql_expr(&format!(
                    "replace(replace(trim({name}), '.', ''), ',', '.')"
                ))
                .map_err(|e| DataError::from_datafusion(what(), e))?
                .alias(f.name())
            } else {
                crate::data::types::column(f.name())
            };
            exprs.push(e);
        }
        df.select(exprs)
            .map_err(|e| DataError::from_datafusion(what(), e))
    }

    async fn frame_raw(
        &self,
        session: &SessionContext,
        paths: Vec<String>,
        columns: &indexmap::IndexMap<String, crate::data::types::ColumnType>,
        comma: &[(String, DataType)],
        timestamps_as_text: bool,
    ) -> Result<DataFrame, DataError> {
        let what = || format!("reading {}", self.path);
        let inferred = session
            .read_csv(paths.clone(), self.options(None))
            .await
            .map_err(|e| DataError::from_datafusion(what(), e))?;
        // Declared types are parsed on read (those with a format, and timestamps if asked,
        // are read as text and parsed after, by the extract).
        let fields: Vec<Field> = inferred
            .schema()
            .fields()
            .iter()
            .map(|f| match columns.get(f.name()) {
                _ if comma.iter().any(|(n, _)| n == f.name()) => {
                    Field::new(f.name(), DataType::Utf8, true)
                }
                Some(ct) if timestamps_as_text && timestamps::parses(&ct.data_type) => {
                    Field::new(f.name(), DataType::Utf8, true)
                }
                Some(ct) if ct.format.is_none() => Field::new(f.name(), ct.data_type.clone(), true),
                Some(_) => Field::new(f.name(), DataType::Utf8, true),
                None => f.as_ref().clone().with_nullable(true),
            })
            .collect();
        if self.markers.is_empty() {
            let schema = Schema::new(fields);
            return session
                .read_csv(paths, self.options(Some(&schema)))
                .await
                .map_err(|e| DataError::from_datafusion(what(), e));
        }
        // DataFusion's CSV scan knows only the empty field as null: with other markers,
        // every column is read as text, the markers become nulls, then the types apply.
        let text = all_text(fields.iter().map(|f| f.name()));
        let df = session
            .read_csv(paths, self.options(Some(&text)))
            .await
            .map_err(|e| DataError::from_datafusion(what(), e))?;
        let list = self
            .markers
            .iter()
            .map(|m| quote_literal(m))
            .collect::<Vec<_>>()
            .join(", ");
        let mut exprs = Vec::with_capacity(fields.len());
        for f in &fields {
            let name = quote_ident(f.name());
            let e = df
                .parse_sql_expr(&format!(
                    "CASE WHEN {name} IN ({list}) THEN NULL ELSE {name} END"
                ))
                .map_err(|e| DataError::from_datafusion(what(), e))?;
            // A column with no value but markers in the rows inferred from (or in a file of
            // a header only) is inferred as Null: it stays text, so no later value is lost.
            let e = if matches!(f.data_type(), DataType::Utf8 | DataType::Null) {
                e
            } else {
                cast(e, f.data_type().clone())
            };
            exprs.push(e.alias(f.name()));
        }
        df.select(exprs)
            .map_err(|e| DataError::from_datafusion(what(), e))
    }
}

/// A schema of the columns `names`, all read as text.
fn all_text<'a>(names: impl Iterator<Item = &'a String>) -> Schema {
    Schema::new(
        names
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    )
}

fn starts_with_bom(f: &Path) -> bool {
    let mut buf = [0u8; 3];
    std::fs::File::open(f)
        .and_then(|mut h| h.read_exact(&mut buf))
        .is_ok()
        && buf == [0xEF, 0xBB, 0xBF]
}

/// Copies `from` into `to` as UTF-8, decoding it as `enc`, in bounded chunks.
fn transcode(from: &Path, to: &Path, enc: &'static encoding_rs::Encoding) -> Result<(), DataError> {
    let mut input = std::fs::File::open(from)
        .map_err(|e| DataError::io(format!("cannot open {}", from.display()), e))?;
    let out = std::fs::File::create(to)
        .map_err(|e| DataError::io(format!("cannot create {}", to.display()), e))?;
    let mut out = std::io::BufWriter::new(out);
    let mut decoder = enc.new_decoder();
    let mut buf = vec![0u8; 1 << 20];
    let mut text = String::with_capacity((1 << 20) * 3 + 16);
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| DataError::io(format!("reading {}", from.display()), e))?;
        let last = n == 0;
        text.clear();
        let (_, _, _) = decoder.decode_to_string(&buf[..n], &mut text, last);
        out.write_all(text.as_bytes())
            .map_err(|e| DataError::io(format!("writing {}", to.display()), e))?;
        if last {
            break;
        }
    }
    out.flush()
        .map_err(|e| DataError::io(format!("writing {}", to.display()), e))
}

/// Rewrites arrow's "for column N at line L" (numbers) or "Error parsing column N at line
/// L" (timestamps) with the column's name, the file and the line in the file (arrow counts
/// data records from 1; a header line comes before them).
fn locate(msg: &str, file: &Path, schema: &datafusion::common::DFSchema, header: bool) -> String {
    let parsed = (|| {
        let marker = ["for column ", "Error parsing column "]
            .into_iter()
            .find(|m| msg.contains(m))?;
        let at = msg.find(marker)?;
        let rest = &msg[at + marker.len()..];
        let (idx, rest) = rest.split_once(" at line ")?;
        let idx: usize = idx.trim().parse().ok()?;
        let line: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let line = line.parse::<usize>().ok()? + usize::from(header);
        let quoted = |after: &str| {
            msg.split_once(after)
                .and_then(|(_, r)| r.split_once('\''))
                .map(|(v, _)| v.to_string())
        };
        let value = quoted("parsing value '").or_else(|| quoted("timestamp from '"))?;
        let field = schema.fields().get(idx)?;
        let ty = match field.data_type() {
            DataType::Timestamp(..) => Some("timestamp".to_string()),
            _ => quoted("as type '"),
        }?;
        let name = field.name().clone();
        Some(format!(
            "{}: line {line}, column `{name}` (column {}): value `{value}` is not a valid {ty}",
            file.display(),
            idx + 1
        ))
    })();
    parsed.unwrap_or_else(|| format!("{}: {msg}", file.display()))
}

impl CsvSource {
    /// The first value that is not of its column's type, with its line, in a file whose
    /// columns are read as text and cast after the read (decimal-comma columns; every
    /// column when there are null markers), where the cast's error cannot say which line.
    /// `schema` is the frame's, with the types the values are cast to.
    async fn find_bad_value(
        &self,
        session: &SessionContext,
        path: String,
        file: &Path,
        columns: &indexmap::IndexMap<String, crate::data::types::ColumnType>,
        schema: &datafusion::common::DFSchema,
    ) -> Option<String> {
        use datafusion::arrow::array::{Array, StringArray};
        use futures_util::StreamExt;
        let inferred = session
            .read_csv(vec![path.clone()], self.options(None))
            .await
            .ok()?;
        let text = all_text(inferred.schema().fields().iter().map(|f| f.name()));
        let raw = session
            .read_csv(vec![path], self.options(Some(&text)))
            .await
            .ok()?;
        let mut raw = raw.execute_stream().await.ok()?;
        let comma = self.comma_columns(columns);
        let mut row = 0usize;
        while let Some(Ok(batch)) = raw.next().await {
            for (idx, field) in schema.fields().iter().enumerate() {
                let (name, ty) = (field.name(), field.data_type());
                let original = batch
                    .column_by_name(name)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>());
                let Some(original) = original.filter(|_| *ty != DataType::Utf8) else {
                    continue;
                };
                let with_comma = comma.iter().any(|(n, _)| n == name);
                // The same rewriting as the read: markers become nulls; with a decimal comma,
                // trim, drop the dots, comma to point.
                let text: StringArray = original
                    .iter()
                    .map(|v| {
                        v.filter(|s| !self.markers.iter().any(|m| m == s)).map(|s| {
                            if with_comma {
                                s.trim().replace('.', "").replace(',', ".")
                            } else {
                                s.to_string()
                            }
                        })
                    })
                    .collect();
                let Ok(casted) = datafusion::arrow::compute::cast(&text, ty) else {
                    continue;
                };
                if let Some(i) = (0..text.len()).find(|i| !text.is_null(*i) && casted.is_null(*i)) {
                    let line = row + i + 1 + usize::from(self.header);
                    let declared = columns
                        .get(name)
                        .map(|c| c.written.clone())
                        .unwrap_or_else(|| ty.to_string());
                    let hint = if with_comma {
                        " (with `decimal_comma`, `.` groups thousands and `,` marks decimals, as in 1.234,50)"
                    } else {
                        ""
                    };
                    return Some(format!(
                        "{}: line {line}, column `{name}` (column {}): value `{}` is not a valid {declared}{hint}",
                        file.display(),
                        idx + 1,
                        original.value(i)
                    ));
                }
            }
            row += batch.num_rows();
        }
        None
    }
}

#[async_trait]
impl Source for CsvSource {
    fn describe(&self) -> String {
        format!("csv {}", self.path)
    }

    async fn read(&self, cx: &SourceContext<'_>) -> Result<DataFrame, DataError> {
        let files = cx.files(&self.path)?;
        cx.input_size(total_size(&files));
        let paths = self.prepare(&files, &cx.scratch)?;
        self.frame(cx.session, paths, cx.columns, true).await
    }

    async fn explain(&self, cx: &SourceContext<'_>, err: DataError) -> DataError {
        let DataError::Invalid(msg) = &err else {
            return err;
        };
        // Find the file at fault by reading each on its own, in one partition, so the line
        // number counts from the top of the file.
        let Ok(files) = cx.files(&self.path) else {
            return err;
        };
        let Ok(paths) = self.prepare(&files, &cx.scratch) else {
            return err;
        };
        let config = datafusion::prelude::SessionConfig::new()
            .with_target_partitions(1)
            .with_repartition_file_scans(false);
        let session = SessionContext::new_with_config(config);
        let comma = self.comma_columns(cx.columns);
        for (file, path) in files.iter().zip(paths) {
            let Ok(df) = self
                .frame(&session, vec![path.clone()], cx.columns, false)
                .await
            else {
                continue;
            };
            let schema = df.schema().clone();
            if let Err(e) = crate::data::stream::drain(df).await {
                if !comma.is_empty() || !self.markers.is_empty() {
                    if let Some(found) = self
                        .find_bad_value(&session, path, file, cx.columns, &schema)
                        .await
                    {
                        return DataError::Invalid(found);
                    }
                }
                let text = crate::data::types::explain_error(&e.find_root().to_string());
                return DataError::Invalid(locate(&text, file, &schema, self.header));
            }
        }
        DataError::Invalid(msg.clone())
    }
}
