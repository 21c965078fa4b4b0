//! Sources: where an `extract` task reads from. A source is one file here: a spec struct
//! (decoded strictly from the extract's keys), a `build` function and an implementation of
//! [`Source`], registered by one line in [`SOURCES`]. A source turns its input into a
//! DataFusion [`DataFrame`] that streams (files through DataFusion's own readers; databases
//! and APIs through [`crate::data::stream::channel_frame`]); the extract task applies the
//! declared column types, the incremental cursor, and writes the dataset. Sources write
//! nothing and never touch the store.

pub mod calendar;
pub mod csv;
pub mod http_api;
pub mod json;
pub mod mysql;
pub mod parquet;
pub mod postgres;
pub mod sqlite;
pub mod xlsx;

use crate::data::types::ColumnType;
use crate::data::DataError;
use crate::spec::error::SpecError;
use crate::tasks::{BuildContext, TaskContext};
use crate::template::Escape;
use async_trait::async_trait;
use datafusion::prelude::{DataFrame, SessionContext};
use indexmap::IndexMap;
use marked_yaml::Node;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Builds a source from the extract's keys (the common ones removed).
pub type BuildFn = fn(&Node, &BuildContext) -> Result<Arc<dyn Source>, SpecError>;

/// The registry of sources: the `source:` name in an extract, and its build function.
pub const SOURCES: &[(&str, BuildFn)] = &[
    ("csv", csv::build),
    ("json", json::build),
    ("ndjson", json::build_ndjson),
    ("parquet", parquet::build),
    ("xlsx", xlsx::build),
    ("http_api", http_api::build),
    ("postgres", postgres::build),
    ("mysql", mysql::build),
    ("sqlite", sqlite::build),
    ("calendar", calendar::build),
];

/// What a source may use while it reads.
pub struct SourceContext<'a> {
    /// The task attempt (templates, cancellation, log, working directory).
    pub task: &'a TaskContext,
    /// The query engine session.
    pub session: &'a SessionContext,
    /// Declared column types; a source that can parse them on read (CSV) does so.
    pub columns: &'a IndexMap<String, ColumnType>,
    /// For incremental extracts: the cursor value the last successful run reached (or the
    /// configured initial value), for sources that filter at the origin.
    pub watermark: Option<&'a serde_json::Value>,
    /// Bytes read; sources add to it as they read.
    pub bytes_read: Arc<AtomicU64>,
    /// What a source knows it will read before it starts ([`SourceContext::input_size`]).
    pub input_bytes: Arc<AtomicU64>,
    /// A folder for this attempt's temporary files, removed when it ends.
    pub scratch: PathBuf,
}

impl SourceContext<'_> {
    /// Counts bytes read.
    pub fn add_bytes(&self, n: u64) {
        self.bytes_read.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts the bytes of the files a source reads, before it reads them: they are also
    /// its size for a query that takes its rows live ([`crate::data::live::Live::size_hint`]).
    pub fn input_size(&self, n: u64) {
        self.add_bytes(n);
        self.input_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Renders a templated path and lists the files it names (a glob matches many, sorted);
    /// relative paths are relative to the task's working directory. No match is an error.
    pub fn files(&self, pattern: &str) -> Result<Vec<PathBuf>, DataError> {
        let rendered = self.task.render_data(pattern, Escape::Plain)?;
        files(&rendered, &self.task.work_dir)
    }
}

/// The files a path or glob names, relative to `base`, sorted; none is an error.
pub fn files(pattern: &str, base: &Path) -> Result<Vec<PathBuf>, DataError> {
    let full = if Path::new(pattern).is_absolute() {
        PathBuf::from(pattern)
    } else {
        base.join(pattern)
    };
    let text = full.to_string_lossy().into_owned();
    let mut out: Vec<PathBuf> = if text.contains(['*', '?', '[']) {
        glob::glob(&text)
            .map_err(|e| DataError::Invalid(format!("invalid glob `{pattern}`: {e}")))?
            .filter_map(|p| p.ok())
            .filter(|p| p.is_file())
            .collect()
    } else if full.is_dir() {
        std::fs::read_dir(&full)
            .map_err(|e| DataError::io(format!("cannot read {}", full.display()), e))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect()
    } else if full.is_file() {
        vec![full.clone()]
    } else {
        vec![]
    };
    out.sort();
    if out.is_empty() {
        return Err(DataError::Io(format!(
            "no file matches `{pattern}` (looked in {})",
            base.display()
        )));
    }
    Ok(out)
}

/// A file source's size, for the bytes-read count.
pub fn total_size(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// Checks the `query` / `table` pair of a database source's spec: exactly one of them, a
/// query that is not empty, a table name that parses (unless it is templated). `needs`
/// ends the message for neither: "`source: mysql` needs `query` (a SELECT) or ...".
pub fn check_query_or_table(
    query: &Option<String>,
    table: &Option<String>,
    node: &Node,
    cx: &BuildContext,
    needs: &str,
) -> Result<(), SpecError> {
    match (query, table) {
        (Some(_), Some(_)) => Err(cx.error(
            node,
            "give either `query` or `table`, not both (a table is `SELECT * FROM` it)",
        )),
        (None, None) => Err(cx.error(node, needs)),
        (None, Some(t)) if !t.contains("{{") => crate::data::postgres::TableName::parse(t)
            .map(|_| ())
            .map_err(|e| cx.error(node, e)),
        (Some(q), None) if q.trim().is_empty() => Err(cx.error(node, "`query` is empty")),
        _ => Ok(()),
    }
}

/// The SQL a database source runs: its `query` rendered with every value as a SQL literal
/// (`{{ watermark }}` included), or `SELECT * FROM` its `table`, named with `quote`.
pub fn select_sql(
    cx: &SourceContext<'_>,
    query: &Option<String>,
    table: &Option<String>,
    quote: impl Fn(&crate::data::postgres::TableName) -> String,
) -> Result<String, DataError> {
    match (query, table) {
        (Some(q), _) => cx.task.render_data(q, Escape::Sql),
        (None, Some(t)) => {
            let t = cx.task.render_data(t, Escape::Plain)?;
            let name = crate::data::postgres::TableName::parse(&t).map_err(DataError::Invalid)?;
            Ok(format!("SELECT * FROM {}", quote(&name)))
        }
        (None, None) => Err(DataError::Invalid("no `query` or `table`".into())),
    }
}

/// One kind of source.
#[async_trait]
pub trait Source: Send + Sync + Debug {
    /// One line saying what it reads.
    fn describe(&self) -> String;

    /// Problems `cauce validate` can find without reading.
    fn check(&self, _base_dir: &Path) -> Vec<String> {
        Vec::new()
    }

    /// Starts reading: a frame whose execution streams the rows.
    async fn read(&self, cx: &SourceContext<'_>) -> Result<DataFrame, DataError>;

    /// Given an error met while the frame was being read, a better one (a CSV source finds
    /// the file and line at fault). Runs only on the failure path.
    async fn explain(&self, _cx: &SourceContext<'_>, err: DataError) -> DataError {
        err
    }
}

impl std::fmt::Debug for SourceContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceContext")
            .field("task", &self.task.task_id)
            .finish_non_exhaustive()
    }
}
