//! The data plane's shared parts: the DataFusion session every data task runs in (with its
//! memory limit and spill folder), datasets (the materialised output of a task, read by the
//! tasks downstream), column types as users write them, JSON records built into Arrow
//! batches ([`records`], for the sources that read JSON), connections and type mappings
//! shared by each database's source and sink ([`postgres`], [`mysql`]), and the error type
//! sources and sinks return. What reads data lives in [`crate::sources`], what writes it in
//! [`crate::sinks`]; the task kinds that use them are `extract`, `sql` and `load` in
//! [`crate::tasks`]. Nothing here touches the store.

pub mod dataset;
pub mod files;
pub mod live;
pub mod memory;
pub mod mysql;
pub mod partitioned;
pub mod postgres;
pub mod records;
pub mod rules;
pub mod stream;
pub mod timestamps;
pub mod types;
pub mod uncached;
pub mod view;

use crate::tasks::TaskError;
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why reading, transforming or writing data failed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The data is not what the pipeline says it is (a value that does not parse as its
    /// column's type, a missing column); retrying will not help.
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing failed (a file, a database, the network); a retry may succeed.
    #[error("{0}")]
    Io(String),
    /// The task was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// An upstream task streaming into this one did not succeed (see [`live`]).
    #[error("{0}")]
    Upstream(String),
}

impl DataError {
    /// An I/O error with what was being done.
    pub fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> DataError {
        DataError::Io(format!("{what}: {e}"))
    }

    /// A DataFusion error, sorted into bad data (plan, schema, cast and parse errors) and
    /// failures of the machine (I/O, resources).
    pub fn from_datafusion(what: impl std::fmt::Display, e: DataFusionError) -> DataError {
        let root = e.find_root();
        // A source's own error carried through the engine keeps its kind.
        if let DataFusionError::External(inner) = root {
            if let Some(d) = inner.downcast_ref::<DataError>() {
                return match d {
                    DataError::Invalid(m) => DataError::Invalid(format!("{what}: {m}")),
                    DataError::Io(m) => DataError::Io(format!("{what}: {m}")),
                    DataError::Cancelled => DataError::Cancelled,
                    DataError::Upstream(m) => DataError::Upstream(m.clone()),
                };
            }
        }
        let retryable = matches!(
            root,
            DataFusionError::IoError(_)
                | DataFusionError::ObjectStore(_)
                | DataFusionError::ResourcesExhausted(_)
        );
        let mut text = types::explain_error(&root.to_string());
        if matches!(root, DataFusionError::ResourcesExhausted(_)) {
            text.push_str(" (the task needs more memory than `data.max_memory` allows: raise it in cauce.yaml, or lower `data.threads`)");
        }
        if retryable {
            DataError::Io(format!("{what}: {text}"))
        } else {
            DataError::Invalid(format!("{what}: {text}"))
        }
    }
}

impl From<DataError> for TaskError {
    fn from(e: DataError) -> TaskError {
        match e {
            DataError::Invalid(m) => TaskError::Invalid(m),
            DataError::Io(m) => TaskError::Failed(m),
            DataError::Cancelled => TaskError::Cancelled,
            DataError::Upstream(m) => TaskError::Upstream(m),
        }
    }
}

/// The `data:` settings of `cauce.yaml`.
#[derive(Debug, Clone)]
pub struct DataSettings {
    /// Memory the query engine may hold for sorts, joins and aggregations of one task
    /// (or of a group of tasks streaming together, [`live::Streams::settings`]) before it
    /// spills to disk.
    pub max_memory: u64,
    /// Rows per Arrow batch.
    pub batch_size: usize,
    /// Parallel partitions of a query (default: the number of cores).
    pub threads: usize,
    /// Run datasets older than this are removed when a run starts (`None`: kept).
    pub retention: Option<Duration>,
    /// Whether a task may start beside the upstream tasks writing its input datasets and
    /// take their batches as they are written ([`live`]).
    pub streaming: bool,
}

impl Default for DataSettings {
    fn default() -> Self {
        DataSettings {
            max_memory: 1 << 30,
            batch_size: 8192,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            retention: None,
            streaming: true,
        }
    }
}

/// A DataFusion session for one task attempt: memory bounded by `max_memory` (sorts,
/// joins and aggregations spill into `spill_dir`; see [`memory`]), `threads` partitions.
pub fn session(settings: &DataSettings, spill_dir: &Path) -> Result<SessionContext, DataError> {
    std::fs::create_dir_all(spill_dir)
        .map_err(|e| DataError::io(format!("cannot create {}", spill_dir.display()), e))?;
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(memory::SplitPool::new(
            settings.max_memory as usize,
        )))
        .with_disk_manager_builder(
            DiskManagerBuilder::default()
                .with_mode(DiskManagerMode::Directories(vec![spill_dir.to_path_buf()])),
        )
        .build_arc()
        .map_err(|e| DataError::from_datafusion("cannot set up the query engine", e))?;
    let mut config = SessionConfig::new()
        .with_batch_size(settings.batch_size)
        .with_target_partitions(settings.threads.max(1))
        .with_information_schema(true);
    // Text stays plain UTF-8 strings (not string views), which every reader of the files
    // cauce writes understands.
    let options = config.options_mut();
    options.execution.parquet.schema_force_view_types = false;
    // Join order from estimates that assume the worst where a key's distinct count is
    // unknown (as it is for datasets): without it, a join's output counted as "unknown"
    // and was kept as the build side of the next join, so a 5-million-row join result was
    // hashed to probe 100,000 customers (the benchmark's T2: 4.8 s instead of 1.1 s, and
    // 474 MB of hash table).
    options.optimizer.use_statistics_registry = true;
    options.sql_parser.map_string_types_to_utf8view = false;
    // A join's smaller side of up to a sixteenth of `max_memory` (64 MiB by default) is
    // hashed once and probed by every partition. Above DataFusion's 1 MiB, both sides were
    // split by the key first: in the benchmark's T2, the 5 million rows joined with
    // 100,000 customers were hashed and copied once more to be split.
    options.optimizer.hash_join_single_partition_threshold =
        (settings.max_memory as usize / 16).clamp(1 << 20, 64 << 20);
    // Joins run in `sql` tasks, over datasets, whose scan cannot use a filter pushed down
    // from a join's hash table; building and applying one cost T2 a fifth of its CPU.
    options.optimizer.enable_join_dynamic_filter_pushdown = false;
    // As many files written at once as there are threads (each writer holds a row group's
    // pages in memory).
    if let Ok(n) = datafusion::config::ConfigNonZeroUsize::try_new(settings.threads.max(1)) {
        options.execution.minimum_parallel_output_files = n;
    }
    // Parquet files are written by one encoder each, with row groups cut by rows and by
    // bytes so that the writers' buffers fit their share of the memory budget.
    let parquet = &mut options.execution.parquet;
    parquet.allow_single_file_parallelism = false;
    parquet.max_row_group_size = dataset::ROW_GROUP_ROWS;
    let cap = (settings.max_memory as usize / memory::WRITER_SHARE / (4 * settings.threads.max(1)))
        .clamp(1 << 20, 128 << 20);
    parquet.max_row_group_bytes = datafusion::config::MaxRowGroupBytes::try_new(cap).ok();
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    ctx.add_optimizer_rule(Arc::new(rules::DistinctBesideCount));
    ctx.add_optimizer_rule(Arc::new(rules::DateOfTimestamp));
    Ok(ctx)
}

/// The spill folder of a task attempt, inside the run's data folder.
pub fn spill_dir(run_data_dir: &Path, task_id: &str) -> PathBuf {
    run_data_dir.join(format!(".spill-{task_id}"))
}
