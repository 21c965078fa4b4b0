//! Sinks: where a `load` task writes. A sink is one file here: a spec struct (decoded
//! strictly from the load's keys), a `build` function and an implementation of [`Sink`],
//! registered by one line in [`SINKS`]. A sink receives the upstream datasets as streaming
//! DataFusion frames and writes them atomically: a failed load leaves the target as it was
//! (files are written under a temporary name and renamed, database loads run in one
//! transaction). Sinks never touch the store.

pub mod csv;
pub mod mysql;
pub mod parquet;
pub mod postgres;
pub mod xlsx;

use crate::data::dataset::Written;
use crate::data::DataError;
use crate::spec::error::SpecError;
use crate::tasks::{BuildContext, TaskContext};
use crate::template::Escape;
use async_trait::async_trait;
use datafusion::prelude::{DataFrame, SessionContext};
use marked_yaml::Node;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Builds a sink from the load's keys (the common ones removed).
pub type BuildFn = fn(&Node, &BuildContext) -> Result<Arc<dyn Sink>, SpecError>;

/// The registry of sinks: the `sink:` name in a load, and its build function.
pub const SINKS: &[(&str, BuildFn)] = &[
    ("parquet", parquet::build),
    ("csv", csv::build),
    ("xlsx", xlsx::build),
    ("postgres", postgres::build),
    ("mysql", mysql::build),
];

/// What a sink may use while it writes.
pub struct SinkContext<'a> {
    /// The task attempt (templates, cancellation, log, working directory).
    pub task: &'a TaskContext,
    /// The query engine session.
    pub session: &'a SessionContext,
    /// A folder for this attempt's temporary files, removed when it ends.
    pub scratch: PathBuf,
}

impl SinkContext<'_> {
    /// Renders a templated setting (a URL, a table name) as plain text.
    pub fn text(&self, template: &str) -> Result<String, DataError> {
        self.task.render_data(template, Escape::Plain)
    }

    /// Renders a templated target path; relative paths are relative to the working
    /// directory.
    pub fn path(&self, template: &str) -> Result<PathBuf, DataError> {
        let rendered = self.text(template)?;
        if rendered.trim().is_empty() {
            return Err(DataError::Invalid(format!(
                "the path `{template}` renders to nothing"
            )));
        }
        let p = Path::new(&rendered);
        Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.task.work_dir.join(p)
        })
    }
}

/// One upstream dataset handed to a sink.
#[derive(Debug)]
pub struct Input {
    /// The upstream task id (a sheet or table name where the sink names things).
    pub name: String,
    /// Its rows.
    pub frame: DataFrame,
}

/// One kind of sink.
#[async_trait]
pub trait Sink: Send + Sync + Debug {
    /// One line saying where it writes.
    fn describe(&self) -> String;

    /// Whether it takes several datasets at once (a workbook with a sheet each); others
    /// take exactly one.
    fn many_inputs(&self) -> bool {
        false
    }

    /// Problems `cauce validate` can find without writing.
    fn check(&self, _base_dir: &Path) -> Vec<String> {
        Vec::new()
    }

    /// Writes the inputs; all or nothing.
    async fn write(&self, cx: &SinkContext<'_>, inputs: Vec<Input>) -> Result<Written, DataError>;
}

/// The one input of a single-input sink.
pub fn single(mut inputs: Vec<Input>, sink: &str) -> Result<Input, DataError> {
    if inputs.len() != 1 {
        return Err(DataError::Invalid(format!(
            "the {sink} sink writes one dataset; `from` names {}",
            inputs.len()
        )));
    }
    inputs
        .pop()
        .ok_or_else(|| DataError::Invalid("no dataset to load".into()))
}

impl std::fmt::Debug for SinkContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkContext")
            .field("task", &self.task.task_id)
            .finish_non_exhaustive()
    }
}
