//! A dataset's files: Arrow IPC files (the "Feather v2" format pyarrow, Polars and Arrow's
//! other libraries read), written as the batches arrive, several per dataset, and read back
//! as a table. What it owns: the encoding, the split into files and the table that reads
//! them. What it does not: where the folder is and when it is put in place
//! ([`super::dataset`]), what a task does with the rows.
//!
//! Why Arrow IPC and not Parquet: a dataset is written once and read once or twice by the
//! tasks of the same run, right after, from the page cache. Arrow IPC is the batches' own
//! memory layout, so writing and reading it is copying; Parquet's encoding and compression
//! were a quarter of the benchmark's CPU time on a three-task chain (see `docs/data.md`).
//! The price is disk: about the rows' size in memory, two to three times LZ4 Parquet.
//!
//! Writing: each partition of the query writes its own files, a new one once a file holds
//! [`FILE_BYTES`], so a large dataset has several files and a reader can take them on every
//! core. Each file's footer records its row count ([`ROWS_KEY`]).
//!
//! Reading ([`DatasetTable`]): the files are split among the session's partitions, each
//! reads its files one after the other, one batch at a time (memory stays at a batch a
//! partition, whatever the file's size), only the columns the query needs. The table
//! tells the planner its exact row count, which join ordering depends on.

use super::uncached::UncachedFile;
use super::DataError;
use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ColumnStatistics, Statistics};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::statistics::StatisticsArgs;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::prelude::DataFrame;
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The extension of a dataset's files.
pub const EXTENSION: &str = "arrow";

/// The footer key of a file's row count.
const ROWS_KEY: &str = "cauce.rows";

/// Bytes of Arrow data a file takes before the writer starts the next one.
const FILE_BYTES: usize = 64 << 20;

fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> DataError {
    DataError::io(what, e)
}

/// Where a file's bytes go: through the page cache, or around it for a dataset no task is
/// about to read ([`super::uncached`]).
enum Output {
    Cached(BufWriter<std::fs::File>),
    Uncached(UncachedFile),
}

impl Output {
    fn create(path: &Path, cached: bool) -> std::io::Result<Output> {
        Ok(if cached {
            Output::Cached(BufWriter::with_capacity(
                1 << 20,
                std::fs::File::create(path)?,
            ))
        } else {
            Output::Uncached(UncachedFile::create(path)?)
        })
    }

    /// Writes what is buffered and waits until it is in the file.
    fn finish(self) -> std::io::Result<()> {
        match self {
            Output::Cached(mut w) => w.flush(),
            Output::Uncached(w) => w.finish(),
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::Cached(w) => w.write(buf),
            Output::Uncached(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Cached(w) => w.flush(),
            Output::Uncached(w) => w.flush(),
        }
    }
}

/// One file being written.
struct Open {
    writer: FileWriter<Output>,
    path: PathBuf,
    rows: u64,
    bytes: usize,
}

impl Open {
    fn close(mut self) -> Result<(), DataError> {
        self.writer.write_metadata(ROWS_KEY, self.rows.to_string());
        let what = || format!("writing {}", self.path.display());
        let out = self.writer.into_inner().map_err(|e| io(what(), e))?;
        out.finish().map_err(|e| io(what(), e))
    }
}

/// Writes one partition's batches into files `part-PPP-NNNNNN.arrow` of `dir` (through the
/// page cache if `cached`); returns the rows written.
async fn write_partition(
    mut stream: SendableRecordBatchStream,
    dir: PathBuf,
    partition: usize,
    cached: bool,
) -> Result<u64, DataError> {
    let schema = stream.schema();
    let mut open: Option<Open> = None;
    let mut files = 0usize;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch =
            batch.map_err(|e| DataError::from_datafusion("computing the dataset's rows", e))?;
        if batch.num_rows() == 0 {
            continue;
        }
        let file = match &mut open {
            Some(f) => f,
            None => {
                let path = dir.join(format!("part-{partition:03}-{files:06}.{EXTENSION}"));
                files += 1;
                open.insert(create(&path, &schema, cached)?)
            }
        };
        file.writer
            .write(&batch)
            .map_err(|e| io(format!("writing {}", file.path.display()), e))?;
        file.rows += batch.num_rows() as u64;
        file.bytes += batch.get_array_memory_size();
        rows += batch.num_rows() as u64;
        if file.bytes >= FILE_BYTES {
            if let Some(f) = open.take() {
                f.close()?;
            }
        }
    }
    if let Some(f) = open.take() {
        f.close()?;
    }
    Ok(rows)
}

fn create(path: &Path, schema: &SchemaRef, cached: bool) -> Result<Open, DataError> {
    let out = Output::create(path, cached)
        .map_err(|e| io(format!("cannot create {}", path.display()), e))?;
    let writer = FileWriter::try_new(out, schema)
        .map_err(|e| io(format!("writing {}", path.display()), e))?;
    Ok(Open {
        writer,
        path: path.to_path_buf(),
        rows: 0,
        bytes: 0,
    })
}

/// Writes every row of `df` into the folder `dir` (made if missing), one writer per
/// partition of the query, through the page cache if `cached` (else around it: for a
/// dataset no task is about to read, [`super::uncached`]); returns the rows written. A frame
/// without rows leaves one file with its columns and no rows, so that readers still see
/// them.
pub async fn write(df: DataFrame, dir: &Path, cached: bool) -> Result<u64, DataError> {
    std::fs::create_dir_all(dir).map_err(|e| io(format!("cannot create {}", dir.display()), e))?;
    let schema = df.schema().inner().clone();
    let streams = df
        .execute_stream_partitioned()
        .await
        .map_err(|e| DataError::from_datafusion("computing the dataset's rows", e))?;
    let mut writers = tokio::task::JoinSet::new();
    for (i, stream) in streams.into_iter().enumerate() {
        writers.spawn(write_partition(stream, dir.to_path_buf(), i, cached));
    }
    let mut rows = 0;
    while let Some(r) = writers.join_next().await {
        rows += r.map_err(|e| io("a dataset writer stopped", e))??;
    }
    if rows == 0 {
        create(&dir.join(format!("empty.{EXTENSION}")), &schema, true)?.close()?;
    }
    Ok(rows)
}

/// One file of a dataset.
#[derive(Debug, Clone)]
struct File {
    path: PathBuf,
    rows: u64,
    bytes: u64,
}

/// A dataset's files as a table.
#[derive(Debug)]
pub struct DatasetTable {
    schema: SchemaRef,
    files: Vec<File>,
}

impl DatasetTable {
    /// The table of the dataset in folder `dir`.
    pub fn open(dir: &Path) -> Result<DatasetTable, DataError> {
        let rd =
            std::fs::read_dir(dir).map_err(|e| io(format!("cannot read {}", dir.display()), e))?;
        let mut paths: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == EXTENSION))
            .collect();
        paths.sort();
        let mut schema = None;
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let what = || format!("reading {}", path.display());
            let f = std::fs::File::open(&path).map_err(|e| io(what(), e))?;
            let bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
            let reader = FileReader::try_new(f, None).map_err(|e| io(what(), e))?;
            let rows = reader
                .custom_metadata()
                .get(ROWS_KEY)
                .and_then(|r| r.parse().ok())
                .ok_or_else(|| DataError::Io(format!("{}: no row count", what())))?;
            match &schema {
                None => schema = Some(reader.schema()),
                Some(s) if *s != reader.schema() => {
                    return Err(DataError::Io(format!(
                        "{}: its columns differ from the dataset's other files",
                        what()
                    )))
                }
                Some(_) => {}
            }
            files.push(File { path, rows, bytes });
        }
        let schema = schema
            .ok_or_else(|| DataError::Io(format!(
                "{} holds no dataset file (.{EXTENSION}); datasets written as Parquet by an older cauce are not read: start a new run",
                dir.display()
            )))?;
        Ok(DatasetTable { schema, files })
    }

    /// Rows in the dataset.
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
}

/// `files` in at most `n` consecutive groups of about equal bytes: a file goes to the group
/// whose share of the bytes holds its middle byte (eight files of about equal size in
/// two groups are four and four; cutting a group only once it had reached its share made
/// them five and three, and one partition read most of the dataset alone).
fn split(files: &[File], n: usize) -> Vec<Vec<File>> {
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    let n = n.clamp(1, files.len().max(1));
    let share = total.div_ceil(n as u64).max(1);
    let mut groups: Vec<Vec<File>> = vec![Vec::new(); n];
    let mut before = 0u64;
    for f in files {
        let middle = before + f.bytes / 2;
        let g = usize::try_from(middle / share).map_or(n - 1, |g| g.min(n - 1));
        groups[g].push(f.clone());
        before += f.bytes;
    }
    groups.retain(|g| !g.is_empty());
    if groups.is_empty() {
        groups.push(Vec::new());
    }
    groups
}

fn statistics(files: &[File], columns: usize) -> Statistics {
    Statistics {
        num_rows: Precision::Exact(files.iter().map(|f| f.rows as usize).sum()),
        total_byte_size: Precision::Inexact(files.iter().map(|f| f.bytes as usize).sum()),
        column_statistics: vec![ColumnStatistics::new_unknown(); columns],
    }
}

#[async_trait]
impl TableProvider for DatasetTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let groups = split(&self.files, state.config().target_partitions());
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(groups.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Arc::new(DatasetExec {
            schema,
            projection: projection.cloned(),
            groups,
            props,
        }))
    }
}

/// Reads a dataset's files, a group of them per partition.
#[derive(Debug)]
struct DatasetExec {
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    groups: Vec<Vec<File>>,
    props: Arc<PlanProperties>,
}

impl DisplayAs for DatasetExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let files: usize = self.groups.iter().map(Vec::len).sum();
        write!(
            f,
            "DatasetExec: files={files}, partitions={}",
            self.groups.len()
        )
    }
}

impl ExecutionPlan for DatasetExec {
    fn name(&self) -> &str {
        "DatasetExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let files = self.groups.get(partition).cloned().unwrap_or_default();
        let batches = Batches {
            files: files.into_iter().map(|f| f.path).collect(),
            projection: self.projection.clone(),
            current: None,
        };
        // The batches come from the page cache without waiting, so the stream would never
        // return `Pending`: made cooperative, it yields to the runtime now and then. Without
        // that, a task reading one partition kept its thread, the task of the other
        // partition waited on the same thread, and a query whose joins all probe shared
        // hash tables ran its partitions one after the other.
        Ok(datafusion::physical_plan::coop::make_cooperative(Box::pin(
            RecordBatchStreamAdapter::new(self.schema.clone(), futures_util::stream::iter(batches)),
        )))
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> DfResult<Arc<Statistics>> {
        let columns = self.schema.fields().len();
        Ok(Arc::new(match args.partition() {
            Some(p) => statistics(
                self.groups.get(p).map(Vec::as_slice).unwrap_or(&[]),
                columns,
            ),
            None => statistics(&self.groups.concat(), columns),
        }))
    }
}

/// The batches of some files, one file after the other.
struct Batches {
    files: VecDeque<PathBuf>,
    projection: Option<Vec<usize>>,
    current: Option<FileReader<std::fs::File>>,
}

impl Iterator for Batches {
    type Item = DfResult<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(reader) = &mut self.current {
                match reader.next() {
                    Some(b) => return Some(b.map_err(Into::into)),
                    None => self.current = None,
                }
            }
            let path = self.files.pop_front()?;
            let opened = std::fs::File::open(&path)
                .map_err(DataFusionError::from)
                .and_then(|f| FileReader::try_new(f, self.projection.clone()).map_err(Into::into));
            match opened {
                Ok(r) => self.current = Some(r),
                Err(e) => {
                    self.files.clear();
                    return Some(Err(e.context(format!("reading {}", path.display()))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;

    fn frame(ctx: &SessionContext, rows: i64) -> DataFrame {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let batches: Vec<RecordBatch> = (0..rows)
            .step_by(1000)
            .map(|start| {
                let ids: Vec<i64> = (start..(start + 1000).min(rows)).collect();
                let names: Vec<String> = ids.iter().map(|i| format!("n{i}")).collect();
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(Int64Array::from(ids)),
                        Arc::new(StringArray::from(names)),
                    ],
                )
                .unwrap()
            })
            .collect();
        let table = datafusion::datasource::MemTable::try_new(schema, vec![batches]).unwrap();
        ctx.read_table(Arc::new(table)).unwrap()
    }

    #[test]
    fn files_split_into_groups_of_about_equal_bytes() {
        let files = |sizes: &[u64]| -> Vec<File> {
            sizes
                .iter()
                .enumerate()
                .map(|(i, b)| File {
                    path: PathBuf::from(format!("{i}.arrow")),
                    rows: 1,
                    bytes: *b,
                })
                .collect()
        };
        let shape = |sizes: &[u64], n: usize| -> Vec<usize> {
            split(&files(sizes), n).iter().map(|g| g.len()).collect()
        };
        // Two partitions' writers, four files each, the last of each smaller.
        let eight = [59, 59, 59, 53, 59, 59, 59, 55];
        assert_eq!(shape(&eight, 2), vec![4, 4]);
        assert_eq!(shape(&eight, 4), vec![2, 2, 2, 2]);
        assert_eq!(shape(&eight, 3), vec![3, 2, 3]);
        // Never more groups than files, never an empty group, every file once and in order.
        assert_eq!(shape(&[10, 10], 8), vec![1, 1]);
        assert_eq!(shape(&[100, 1, 1, 1], 2), vec![1, 3]);
        assert_eq!(shape(&[0, 0, 0], 2), vec![3]);
        assert_eq!(shape(&[], 2), vec![0]);
        let groups = split(&files(&eight), 3);
        let order: Vec<PathBuf> = groups.concat().into_iter().map(|f| f.path).collect();
        assert_eq!(
            order,
            files(&eight)
                .into_iter()
                .map(|f| f.path)
                .collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn a_dataset_reads_back_whole_with_its_row_count_and_a_damaged_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = SessionContext::new();
        // Through the page cache and around it, the same rows.
        for cached in [false, true] {
            let ds = dir.path().join(format!("ds-{cached}"));
            assert_eq!(
                write(frame(&ctx, 10_000), &ds, cached).await.unwrap(),
                10_000
            );
            let table = DatasetTable::open(&ds).unwrap();
            assert_eq!(table.rows(), 10_000);
            ctx.register_table(format!("ds_{cached}"), Arc::new(table))
                .unwrap();
            let out = ctx
                .sql(&format!(
                    "SELECT COUNT(*) AS n, SUM(id) AS s, MAX(name) AS m FROM ds_{cached} WHERE id % 2 = 0"
                ))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let text = datafusion::arrow::util::pretty::pretty_format_batches(&out)
                .unwrap()
                .to_string();
            assert!(
                text.contains("| 5000 | 24995000 | n9998 |"),
                "{cached}: {text}"
            );
        }
        let ds = dir.path().join("ds-true");

        // No rows: one file with the columns.
        let empty = dir.path().join("empty");
        let none = frame(&ctx, 10)
            .filter(datafusion::prelude::col("id").lt(datafusion::prelude::lit(0)))
            .unwrap();
        assert_eq!(write(none, &empty, true).await.unwrap(), 0);
        let table = DatasetTable::open(&empty).unwrap();
        assert_eq!((table.rows(), table.schema().fields().len()), (0, 2));

        // A truncated file is an error naming it, not a panic or missing rows.
        let file = std::fs::read_dir(&ds)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(100).unwrap();
        let err = DatasetTable::open(&ds).unwrap_err().to_string();
        assert!(err.contains(&file.display().to_string()), "{err}");
    }
}
