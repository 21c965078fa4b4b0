//! JSON records (serde_json objects) as Arrow batches, for every source that reads them
//! (`json`, `ndjson`, `http_api`): the kinds a column is built as, inferring them from the
//! values seen, nested objects flattened into `parent.child` names when asked (otherwise
//! kept, like arrays, as their JSON text), how a declared column is read, and building
//! records into batches, with an error when a value does not fit its column. Where the
//! sources differ it takes [`Rules`], and it leaves the messages that name a record's place
//! (a file and line, a page and record) to the source through [`Misfits`]. It does not read
//! or fetch anything, does not send batches anywhere, and does not apply the declared types
//! (the extract does, with [`crate::data::types::apply`]).

use super::types::ColumnType;
use super::DataError;
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use indexmap::IndexMap;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// What a column is built as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Float,
    Bool,
    Text,
}

impl Kind {
    /// The Arrow type of the column.
    pub fn data_type(self) -> DataType {
        match self {
            Kind::Int => DataType::Int64,
            Kind::Float => DataType::Float64,
            Kind::Bool => DataType::Boolean,
            Kind::Text => DataType::Utf8,
        }
    }

    /// The type as a user writes it in `columns`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Int => "int",
            Kind::Float => "double",
            Kind::Bool => "bool",
            Kind::Text => "string",
        }
    }

    /// The kind a declared type is read as, in a way the type can take (a decimal from the
    /// number's text, a timestamp from its string); `None`: as inferred.
    pub fn for_declared(t: &ColumnType) -> Option<Kind> {
        match &t.data_type {
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => Some(Kind::Int),
            DataType::Float32 | DataType::Float64 => Some(Kind::Float),
            DataType::Boolean => Some(Kind::Bool),
            DataType::Utf8
            | DataType::Decimal128(..)
            | DataType::Date32
            | DataType::Timestamp(..) => Some(Kind::Text),
            _ => None,
        }
    }
}

/// How a source reads its records, where the sources differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Nested objects become `parent.child` fields (else their JSON text); arrays stay text.
    pub flatten: bool,
    /// Whole numbers beyond Int64 make a column text, which keeps them exact (else float).
    pub big_ints_as_text: bool,
    /// A value is converted to its column's kind where it can be (a string that parses as
    /// a number or `true`/`false`, a whole float into an int); else it must already be of
    /// the column's JSON type.
    pub loose: bool,
    /// A declared column is read as the kind of its type ([`Kind::for_declared`]); else as
    /// text, which the extract casts.
    pub typed_declared: bool,
    /// A declared column no record showed is a column all the same (nulls); else it is one
    /// only when no record showed any field.
    pub keep_unseen_declared: bool,
}

/// A column to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
    /// The declared type, as written (`None`: inferred).
    pub declared: Option<String>,
}

/// The schema of `columns` (every field nullable).
pub fn schema(columns: &[Column]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(&c.name, c.kind.data_type(), true))
            .collect::<Vec<_>>(),
    ))
}

/// Calls `each` for every field of a record, nested objects first flattened when asked.
fn fields<'v, E>(
    rec: &'v Map<String, Value>,
    flatten: bool,
    prefix: &str,
    each: &mut dyn FnMut(&str, &'v Value) -> Result<(), E>,
) -> Result<(), E> {
    for (k, v) in rec {
        match v {
            Value::Object(inner) if flatten => {
                fields(inner, true, &format!("{prefix}{k}."), each)?;
            }
            _ if prefix.is_empty() => each(k, v)?,
            _ => each(&format!("{prefix}{k}"), v)?,
        }
    }
    Ok(())
}

/// The kinds of values seen in one field during inference.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    int: bool,
    float: bool,
    bool: bool,
    text: bool,
}

impl Seen {
    fn mark(&mut self, v: &Value, big_ints_as_text: bool) {
        match v {
            Value::Null => {}
            Value::Bool(_) => self.bool = true,
            Value::Number(n) if n.is_i64() => self.int = true,
            Value::Number(n) if n.is_f64() || !big_ints_as_text => self.float = true,
            _ => self.text = true,
        }
    }

    /// Whole numbers → Int, numbers → Float, booleans → Bool; anything else, mixed or
    /// only null → Text.
    fn kind(self) -> Kind {
        match (self.int, self.float, self.bool, self.text) {
            (true, false, false, false) => Kind::Int,
            (_, true, false, false) => Kind::Float,
            (false, false, true, false) => Kind::Bool,
            _ => Kind::Text,
        }
    }
}

/// The fields seen in the records inferred from, in order of first appearance.
#[derive(Debug, Default)]
pub struct Inference {
    seen: IndexMap<String, Seen>,
}

impl Inference {
    /// Takes in the fields of one record.
    pub fn record(&mut self, rec: &Map<String, Value>, rules: &Rules) {
        let seen = &mut self.seen;
        let _ = fields::<()>(rec, rules.flatten, "", &mut |name, v| {
            match seen.get_mut(name) {
                Some(s) => s.mark(v, rules.big_ints_as_text),
                None => {
                    let mut s = Seen::default();
                    s.mark(v, rules.big_ints_as_text);
                    seen.insert(name.to_string(), s);
                }
            }
            Ok(())
        });
    }

    /// No record had a field.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Whether a record had the field.
    pub fn contains(&self, name: &str) -> bool {
        self.seen.contains_key(name)
    }

    /// The columns: the fields seen, then the declared ones no record had (see
    /// [`Rules::keep_unseen_declared`]).
    pub fn columns(&self, declared: &IndexMap<String, ColumnType>, rules: &Rules) -> Vec<Column> {
        let read_as = |t: &ColumnType| {
            if rules.typed_declared {
                Kind::for_declared(t)
            } else {
                Some(Kind::Text)
            }
        };
        let mut cols: Vec<Column> = self
            .seen
            .iter()
            .map(|(name, s)| {
                let t = declared.get(name);
                Column {
                    name: name.clone(),
                    kind: t.and_then(read_as).unwrap_or_else(|| s.kind()),
                    declared: t.map(|t| t.written.clone()),
                }
            })
            .collect();
        if rules.keep_unseen_declared || self.seen.is_empty() {
            for (name, t) in declared {
                if !self.seen.contains_key(name) {
                    cols.push(Column {
                        name: name.clone(),
                        kind: read_as(t).unwrap_or(Kind::Text),
                        declared: Some(t.written.clone()),
                    });
                }
            }
        }
        cols
    }
}

/// One column being built.
enum Builder {
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Text(StringBuilder),
}

impl Builder {
    fn new(kind: Kind, rows: usize) -> Builder {
        match kind {
            Kind::Int => Builder::Int(Int64Builder::with_capacity(rows)),
            Kind::Float => Builder::Float(Float64Builder::with_capacity(rows)),
            Kind::Bool => Builder::Bool(BooleanBuilder::with_capacity(rows)),
            Kind::Text => Builder::Text(StringBuilder::with_capacity(rows, rows * 16)),
        }
    }

    fn null(&mut self) {
        match self {
            Builder::Int(b) => b.append_null(),
            Builder::Float(b) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
            Builder::Text(b) => b.append_null(),
        }
    }

    /// Appends a value (see [`Rules::loose`]); `Err` says what the column takes.
    fn push(&mut self, v: &Value, loose: bool) -> Result<(), &'static str> {
        if v.is_null() {
            self.null();
            return Ok(());
        }
        match self {
            Builder::Int(b) => {
                let n = match v {
                    Value::Number(n) => n.as_i64().or_else(|| {
                        n.as_f64()
                            .filter(|f| loose && f.fract() == 0.0 && f.abs() < 9.0e15)
                            .map(|f| f as i64)
                    }),
                    Value::String(s) if loose => s.trim().parse().ok(),
                    _ => None,
                };
                b.append_value(n.ok_or("a whole number")?);
            }
            Builder::Float(b) => {
                let n = match v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) if loose => s.trim().parse().ok(),
                    _ => None,
                };
                b.append_value(n.ok_or("a number")?);
            }
            Builder::Bool(b) => {
                let x = match v {
                    Value::Bool(x) => Some(*x),
                    Value::String(s) if loose && s == "true" => Some(true),
                    Value::String(s) if loose && s == "false" => Some(false),
                    _ => None,
                };
                b.append_value(x.ok_or("true or false")?);
            }
            // Numbers, booleans, objects and arrays as their JSON text.
            Builder::Text(b) => match v {
                Value::String(s) => b.append_value(s),
                other => b.append_value(other.to_string()),
            },
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Text(b) => Arc::new(b.finish()),
        }
    }
}

/// What a source makes of the fields and values that do not fit the columns; it knows
/// where the record is, for its messages.
pub trait Misfits {
    /// A field that is no column: an error, or `Ok` to leave it out.
    fn unknown(&mut self, name: &str, v: &Value) -> Result<(), DataError>;
    /// The error for a value that does not fit its column; `want` is what the column takes
    /// ("a whole number", "a number", "true or false").
    fn misfit(&mut self, column: &Column, name: &str, v: &Value, want: &str) -> DataError;
}

/// Records built into the rows of a batch.
pub struct Rows {
    schema: SchemaRef,
    columns: Vec<Column>,
    index: HashMap<String, usize>,
    cols: Vec<Builder>,
    filled: Vec<bool>,
    rows: usize,
    rules: Rules,
}

impl Rows {
    /// Rows of `columns`, with room for `capacity` of them per batch.
    pub fn new(columns: Vec<Column>, capacity: usize, rules: Rules) -> Rows {
        Rows {
            schema: schema(&columns),
            index: columns
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect(),
            cols: columns
                .iter()
                .map(|c| Builder::new(c.kind, capacity))
                .collect(),
            filled: vec![false; columns.len()],
            columns,
            rows: 0,
            rules,
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Rows built since the last batch.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Adds a record as a row: its fields in order, a field missing is null, a flattened
    /// name met twice keeps the first. After an error the rows are not to be used.
    pub fn push(
        &mut self,
        rec: &Map<String, Value>,
        report: &mut dyn Misfits,
    ) -> Result<(), DataError> {
        self.filled.iter_mut().for_each(|f| *f = false);
        let Rows {
            columns,
            index,
            cols,
            filled,
            rules,
            ..
        } = self;
        fields(rec, rules.flatten, "", &mut |name, v| {
            let Some(&i) = index.get(name) else {
                return report.unknown(name, v);
            };
            if filled[i] {
                return Ok(());
            }
            cols[i]
                .push(v, rules.loose)
                .map_err(|want| report.misfit(&columns[i], name, v, want))?;
            filled[i] = true;
            Ok(())
        })?;
        for (i, f) in self.filled.iter().enumerate() {
            if !f {
                self.cols[i].null();
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// The rows built so far as a batch (`what` starts the message of an error); the rows
    /// start again empty.
    pub fn finish(&mut self, what: &dyn std::fmt::Display) -> Result<RecordBatch, DataError> {
        let arrays: Vec<ArrayRef> = self.cols.iter_mut().map(|b| b.finish()).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        self.rows = 0;
        RecordBatch::try_new_with_options(self.schema.clone(), arrays, &options)
            .map_err(|e| DataError::Invalid(format!("{what}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const EXACT: Rules = Rules {
        flatten: false,
        big_ints_as_text: true,
        loose: false,
        typed_declared: false,
        keep_unseen_declared: true,
    };

    struct Strict;
    impl Misfits for Strict {
        fn unknown(&mut self, name: &str, _: &Value) -> Result<(), DataError> {
            Err(DataError::Invalid(format!("unknown {name}")))
        }
        fn misfit(&mut self, c: &Column, name: &str, _: &Value, want: &str) -> DataError {
            DataError::Invalid(format!("{name} ({}) takes {want}", c.kind.name()))
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn kinds_widen_and_big_ints_follow_the_rules() {
        let mut inf = Inference::default();
        let loose = Rules {
            big_ints_as_text: false,
            ..EXACT
        };
        for r in [
            json!({"a": 1, "b": 1, "c": true, "d": 1, "e": null, "big": 18446744073709551615u64}),
            json!({"a": 2, "b": 2.5, "c": false, "d": "x"}),
        ] {
            inf.record(&obj(r), &loose);
        }
        let kinds: Vec<Kind> = inf
            .columns(&IndexMap::new(), &loose)
            .iter()
            .map(|c| c.kind)
            .collect();
        use Kind::*;
        assert_eq!(kinds, vec![Int, Float, Bool, Text, Text, Float]);
        let mut inf = Inference::default();
        inf.record(&obj(json!({"big": 18446744073709551615u64})), &EXACT);
        assert_eq!(inf.columns(&IndexMap::new(), &EXACT)[0].kind, Text);
    }

    #[test]
    fn loose_rows_convert_and_exact_rows_refuse() {
        let cols = vec![Column {
            name: "n".into(),
            kind: Kind::Int,
            declared: None,
        }];
        let rec = obj(json!({"n": "42"}));
        let mut rows = Rows::new(cols.clone(), 4, EXACT);
        let e = rows.push(&rec, &mut Strict).unwrap_err().to_string();
        assert_eq!(e, "n (int) takes a whole number");
        let loose = Rules {
            loose: true,
            flatten: true,
            ..EXACT
        };
        let mut rows = Rows::new(cols, 4, loose);
        rows.push(&rec, &mut Strict).unwrap();
        rows.push(&obj(json!({"n": 3.0})), &mut Strict).unwrap();
        let e = rows.push(&obj(json!({"m": 1})), &mut Strict).unwrap_err();
        assert_eq!(e.to_string(), "unknown m");
    }

    #[test]
    fn flattened_names_keep_the_first_and_empty_rows_count() {
        let rules = Rules {
            flatten: true,
            ..EXACT
        };
        let mut inf = Inference::default();
        let rec = obj(json!({"a.b": 1, "a": {"b": 2}}));
        inf.record(&rec, &rules);
        let mut rows = Rows::new(inf.columns(&IndexMap::new(), &rules), 2, rules);
        rows.push(&rec, &mut Strict).unwrap();
        let b = rows.finish(&"test").unwrap();
        assert_eq!(b.num_columns(), 1);
        let mut none = Rows::new(vec![], 2, rules);
        none.push(&Map::new(), &mut Strict).unwrap();
        assert_eq!(none.finish(&"test").unwrap().num_rows(), 1);
    }
}
