//! Hive-partitioned Parquet writing, for the `parquet` sink's `partition_by`: rows are split
//! by the values of the partition columns into `col=value/` folders, one file per partition,
//! the partition columns left out of the files as Hive, Spark, DuckDB and pyarrow expect.
//! What it owns: splitting, buffering, spilling, encoding in parallel and the memory that
//! takes. What it does not: where the folder goes and what a load replaces (the sink moves
//! the finished folder into place), the store.
//!
//! How: the query's output is read as `threads` streams at once. Each stream task keys every
//! row by its partition values (Arrow's row format, so any column type works), gathers the
//! rows of each partition in a buffer of its own and, once a buffer is worth it, hands it to
//! that partition's Parquet writer, shared by all streams behind a lock: encoding runs on
//! every core, and a partition gets one file, however many streams fed it. DataFusion's own
//! hive writer formats every row's key as a string and splits each batch into as many
//! slivers as it has partitions, all on one thread; this one wrote the benchmark's
//! warehouse (4.6 million rows into 90 days) in 4.0 s instead of 8.1 s.
//!
//! Memory: each stream's buffers are capped (`buffer_bytes`); each open writer holds its row
//! group in progress (capped by the writer properties' `max_row_group_bytes`) and, per
//! column, a compressor and a page being filled. At most `max_open` files are open at once.
//! The rows of a partition first seen after that go to a spill file instead (Arrow IPC in
//! the session's spill folder, one a stream), and once every row is read those partitions
//! are encoded from it, `threads` at a time. So a load into thousands of partitions stays
//! within its memory, every partition still gets exactly one file, and what it costs is one
//! more pass over the spilled rows on local disk. A null partition value is written as
//! `__HIVE_DEFAULT_PARTITION__`, as Hive and pyarrow do.

use super::DataError;
use datafusion::arrow::array::{Array, ArrayRef, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::HashMap;
use datafusion::execution::{DiskManager, SpillFile, SpillWriter};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::schema::types::ColumnPath;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning};
use datafusion::prelude::DataFrame;
use futures_util::StreamExt;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The folder name of a null partition value.
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Rows a partition's buffer gathers before it is encoded (fewer when the stream's buffers
/// are full): enough that the encoder's per-call cost is small.
const FLUSH_ROWS: usize = 8192;

/// How a partitioned write is done.
#[derive(Debug, Clone)]
pub struct Options {
    /// Partition columns, outermost first.
    pub partition_by: Vec<String>,
    /// The Parquet writer's settings (compression, row group limits).
    pub props: WriterProperties,
    /// Streams read and encoded at once.
    pub threads: usize,
    /// Bytes of rows one stream may hold in its buffers.
    pub buffer_bytes: usize,
    /// Files open at once.
    pub max_open: usize,
    /// Names the files of this write apart from any already in the target.
    pub write_id: String,
}

/// What a partitioned write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Rows written.
    pub rows: u64,
    /// Partitions (files) written.
    pub partitions: usize,
    /// Partitions whose rows went to a spill file first (the others went straight into
    /// their files, at most `max_open` at once).
    pub spilled: usize,
    /// Bytes of spilled rows (Arrow IPC).
    pub spilled_bytes: u64,
}

/// Where one partition's rows go.
enum Sink {
    /// Nowhere yet: no rows so far.
    New,
    /// Straight into its file.
    Open(Box<ArrowWriter<BufWriter<std::fs::File>>>),
    /// Into the streams' spill files, to be encoded once every row is read.
    Spilled(Vec<Segment>),
    /// Its file is finished.
    Done,
}

/// One partition.
struct Part {
    dir: PathBuf,
    sink: Sink,
}

/// Some rows of one partition in a spill file, as one Arrow IPC stream.
struct Segment {
    file: Arc<dyn SpillFile>,
    offset: u64,
    len: usize,
}

/// A stream's spill file, made when it first needs one.
struct Spill {
    file: Arc<dyn SpillFile>,
    writer: Box<dyn SpillWriter>,
    len: u64,
    buf: Vec<u8>,
}

/// What all streams share.
struct Shared {
    root: PathBuf,
    schema: SchemaRef,
    opts: Options,
    disk: Arc<DiskManager>,
    parts: Mutex<Registry>,
    /// The writer settings every file gets: `opts.props` with dictionary encoding turned
    /// off for the columns whose first rows show it would not last (see [`tune`]), decided
    /// once, from the first rows any stream reads, so all files are written alike.
    props: OnceLock<WriterProperties>,
}

#[derive(Default)]
struct Registry {
    by_key: HashMap<Vec<u8>, Arc<Mutex<Part>>>,
    open: usize,
}

fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> DataError {
    DataError::io(what, e)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// The partition with row key `key`, whose folder is `rel`.
    fn part(
        &self,
        key: &[u8],
        rel: impl FnOnce() -> Result<PathBuf, DataError>,
    ) -> Result<Arc<Mutex<Part>>, DataError> {
        let mut reg = lock(&self.parts);
        if let Some(p) = reg.by_key.get(key) {
            return Ok(p.clone());
        }
        let p = Arc::new(Mutex::new(Part {
            dir: self.root.join(rel()?),
            sink: Sink::New,
        }));
        reg.by_key.insert(key.to_vec(), p.clone());
        Ok(p)
    }

    /// Writes `batch` into `part`: into its file while fewer than `max_open` files are
    /// open when the partition first gets rows, else into this stream's spill file.
    fn write(
        &self,
        part: &Mutex<Part>,
        batch: &RecordBatch,
        spill: &mut Option<Spill>,
    ) -> Result<(), DataError> {
        let mut p = lock(part);
        if matches!(p.sink, Sink::New) {
            let direct = {
                let mut reg = lock(&self.parts);
                let room = reg.open < self.opts.max_open;
                if room {
                    reg.open += 1;
                }
                room
            };
            p.sink = if direct {
                Sink::Open(Box::new(self.create(&p.dir)?))
            } else {
                Sink::Spilled(Vec::new())
            };
        }
        let Part { dir, sink } = &mut *p;
        match sink {
            Sink::Open(w) => w
                .write(batch)
                .map_err(|e| io(format!("writing into {}", dir.display()), e)),
            Sink::Spilled(segments) => {
                segments.push(self.spill(spill, batch)?);
                Ok(())
            }
            Sink::New | Sink::Done => Err(DataError::Invalid(format!(
                "rows for {} after its file was finished",
                dir.display()
            ))),
        }
    }

    /// A writer of a new file in `dir`.
    fn create(&self, dir: &Path) -> Result<ArrowWriter<BufWriter<std::fs::File>>, DataError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io(format!("cannot create {}", dir.display()), e))?;
        let path = dir.join(format!("{}.parquet", self.opts.write_id));
        let f = std::fs::File::create(&path)
            .map_err(|e| io(format!("cannot create {}", path.display()), e))?;
        ArrowWriter::try_new(
            BufWriter::with_capacity(64 << 10, f),
            self.schema.clone(),
            Some(self.props.get().unwrap_or(&self.opts.props).clone()),
        )
        .map_err(|e| io(format!("writing {}", path.display()), e))
    }

    /// Appends `batch` to the stream's spill file (made on first use).
    fn spill(&self, spill: &mut Option<Spill>, batch: &RecordBatch) -> Result<Segment, DataError> {
        let s = match spill {
            Some(s) => s,
            None => {
                let file = self
                    .disk
                    .create_tmp_file("a partitioned write")
                    .map_err(|e| DataError::from_datafusion("making a spill file", e))?;
                let writer = file
                    .open_writer()
                    .map_err(|e| DataError::from_datafusion("making a spill file", e))?;
                spill.insert(Spill {
                    file,
                    writer,
                    len: 0,
                    buf: Vec::new(),
                })
            }
        };
        s.buf.clear();
        let mut w =
            StreamWriter::try_new(&mut s.buf, &self.schema).map_err(|e| io("spilling rows", e))?;
        w.write(batch).map_err(|e| io("spilling rows", e))?;
        w.finish().map_err(|e| io("spilling rows", e))?;
        drop(w);
        s.writer
            .write_all(&s.buf)
            .map_err(|e| io("writing a spill file", e))?;
        let segment = Segment {
            file: s.file.clone(),
            offset: s.len,
            len: s.buf.len(),
        };
        s.len += s.buf.len() as u64;
        Ok(segment)
    }

    /// Finishes `part`'s file: closes an open writer, or encodes a spilled partition's
    /// rows into a new file.
    fn finish(&self, part: &Mutex<Part>) -> Result<(), DataError> {
        let mut p = lock(part);
        let dir = p.dir.clone();
        let wrap = |e: &dyn std::fmt::Display| io(format!("writing into {}", dir.display()), e);
        match std::mem::replace(&mut p.sink, Sink::Done) {
            Sink::Open(w) => {
                w.close().map_err(|e| wrap(&e))?;
            }
            Sink::Spilled(segments) => {
                let mut w = self.create(&dir)?;
                let mut reader: Option<(PathBuf, std::fs::File)> = None;
                let mut buf = Vec::new();
                for s in segments {
                    let path = s.file.path().ok_or_else(|| {
                        DataError::Invalid("the spill folder has no local path".into())
                    })?;
                    let file = match &mut reader {
                        Some((open, f)) if open == path => f,
                        _ => {
                            let f = std::fs::File::open(path)
                                .map_err(|e| io("reading a spill file", e))?;
                            &mut reader.insert((path.to_path_buf(), f)).1
                        }
                    };
                    buf.resize(s.len, 0);
                    file.seek(SeekFrom::Start(s.offset))
                        .and_then(|_| file.read_exact(&mut buf))
                        .map_err(|e| io("reading a spill file", e))?;
                    let batches = StreamReader::try_new(std::io::Cursor::new(&buf[..]), None)
                        .map_err(|e| io("reading a spill file", e))?;
                    for b in batches {
                        let b = b.map_err(|e| io("reading a spill file", e))?;
                        w.write(&b).map_err(|e| wrap(&e))?;
                    }
                }
                w.close().map_err(|e| wrap(&e))?;
            }
            Sink::New | Sink::Done => {}
        }
        Ok(())
    }
}

/// `props` with dictionary encoding turned off for each column whose distinct values in
/// `sample` (a writer's first rows) already fill more than its dictionary page may hold.
/// Such a column would fall back to plain pages in every row group anyway, after hashing
/// its first values for nothing and flushing an extra page at the fallback (the benchmark's
/// warehouse: 5% fewer bytes and a few percent less time this way). Columns with few
/// distinct values (countries, states) keep their dictionary, and may still fall back.
fn tune(props: WriterProperties, sample: &RecordBatch) -> WriterProperties {
    let mut plain = Vec::new();
    for (field, col) in sample.schema().fields().iter().zip(sample.columns()) {
        let path = ColumnPath::from(field.name().as_str());
        if field.data_type().is_nested() || !props.dictionary_enabled(&path) {
            continue;
        }
        let limit = props.column_dictionary_page_size_limit(&path);
        if dictionary_bytes(col).is_some_and(|bytes| bytes > limit) {
            plain.push(path);
        }
    }
    if plain.is_empty() {
        return props;
    }
    let mut b = props.into_builder();
    for path in plain {
        b = b.set_column_dictionary_enabled(path, false);
    }
    b.build()
}

/// About the bytes a dictionary of `col`'s distinct values takes: the size of each
/// distinct value in Arrow's row format (the value's bytes and a byte or two more, close to
/// what Parquet's dictionary page stores). `None` for types the row format cannot hold.
fn dictionary_bytes(col: &ArrayRef) -> Option<usize> {
    let converter = RowConverter::new(vec![SortField::new(col.data_type().clone())]).ok()?;
    let rows = converter.convert_columns(std::slice::from_ref(col)).ok()?;
    let mut distinct = std::collections::HashSet::with_capacity(rows.num_rows());
    Some(
        rows.iter()
            .filter(|r| distinct.insert(*r))
            .map(|r| r.as_ref().len())
            .sum(),
    )
}

/// The relative folder of the partition whose values are row `row` of `cols`.
fn partition_dir(
    names: &[String],
    cols: &[ArrayRef],
    row: usize,
    fmt: &FormatOptions,
) -> Result<PathBuf, DataError> {
    let mut dir = PathBuf::new();
    for (name, col) in names.iter().zip(cols) {
        let value = if col.is_null(row) {
            NULL_PARTITION.to_string()
        } else {
            ArrayFormatter::try_new(col.as_ref(), fmt)
                .map_err(|e| DataError::Invalid(format!("cannot partition by `{name}`: {e}")))?
                .value(row)
                .to_string()
        };
        // Percent-encodes `/`, `\` and the characters object stores avoid, as DataFusion
        // and Spark do, so a value can never climb out of the folder.
        let part = object_store::path::PathPart::from(format!("{name}={value}"));
        dir.push(part.as_ref());
    }
    Ok(dir)
}

/// One partition's rows gathered by one stream: slices of the stream's batches, each
/// batch reordered so that every partition's rows are next to each other.
struct Buffer {
    part: Arc<Mutex<Part>>,
    batches: Vec<RecordBatch>,
    rows: usize,
}

impl Buffer {
    fn flush(&mut self, shared: &Shared, spill: &mut Option<Spill>) -> Result<(), DataError> {
        if self.rows == 0 {
            return Ok(());
        }
        let batch = if self.batches.len() == 1 {
            self.batches
                .pop()
                .unwrap_or_else(|| RecordBatch::new_empty(shared.schema.clone()))
        } else {
            concat_batches(&shared.schema, &self.batches)
                .map_err(|e| io("gathering a partition's rows", e))?
        };
        self.batches.clear();
        self.rows = 0;
        shared.write(&self.part, &batch, spill)
    }
}

/// Reads one stream to its end, writing its rows into the partitions.
async fn run_stream(
    shared: Arc<Shared>,
    mut stream: datafusion::execution::SendableRecordBatchStream,
    key_cols: Vec<usize>,
    keep_cols: Vec<usize>,
) -> Result<u64, DataError> {
    let input_schema = stream.schema();
    let converter = RowConverter::new(
        key_cols
            .iter()
            .map(|&i| SortField::new(input_schema.field(i).data_type().clone()))
            .collect(),
    )
    .map_err(|e| DataError::Invalid(format!("cannot partition by these columns: {e}")))?;
    let fmt = FormatOptions::default();
    let mut slots: HashMap<Vec<u8>, usize> = HashMap::default();
    let mut buffers: Vec<Buffer> = Vec::new();
    let mut slot_of: Vec<usize> = Vec::new();
    let mut held = 0usize;
    let mut rows = 0u64;
    let mut spill: Option<Spill> = None;
    while let Some(batch) = stream.next().await {
        let batch =
            batch.map_err(|e| DataError::from_datafusion("reading the rows to write", e))?;
        let n = batch.num_rows();
        if n == 0 {
            continue;
        }
        rows += n as u64;
        let cols: Vec<ArrayRef> = key_cols.iter().map(|&i| batch.column(i).clone()).collect();
        let keys = converter
            .convert_columns(&cols)
            .map_err(|e| io("computing partition keys", e))?;
        let data = batch
            .project(&keep_cols)
            .map_err(|e| io("dropping the partition columns", e))?;
        shared
            .props
            .get_or_init(|| tune(shared.opts.props.clone(), &data));
        // Each row's partition slot, then the rows reordered by slot (a counting sort): one
        // copy of the batch, of which every partition takes a slice, instead of a copy per
        // partition (with 90 partitions, 900 small allocations a batch for 9 columns).
        slot_of.clear();
        for row in 0..n {
            let key = keys.row(row);
            let slot = match slots.get(key.as_ref()) {
                Some(&s) => s,
                None => {
                    let names = &shared.opts.partition_by;
                    let part =
                        shared.part(key.as_ref(), || partition_dir(names, &cols, row, &fmt))?;
                    buffers.push(Buffer {
                        part,
                        batches: Vec::new(),
                        rows: 0,
                    });
                    slots.insert(key.as_ref().to_vec(), buffers.len() - 1);
                    buffers.len() - 1
                }
            };
            slot_of.push(slot);
        }
        let mut starts = vec![0usize; buffers.len() + 1];
        for &slot in &slot_of {
            starts[slot + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let single = starts.windows(2).any(|w| w[1] - w[0] == n);
        let sorted = if single {
            data
        } else {
            let mut next = starts.clone();
            let mut order = vec![0u32; n];
            for (row, &slot) in slot_of.iter().enumerate() {
                order[next[slot]] = row as u32;
                next[slot] += 1;
            }
            take_record_batch(&data, &UInt32Array::from(order))
                .map_err(|e| io("splitting rows by partition", e))?
        };
        // The slices keep the reordered batch in memory until every partition with rows in
        // it has been encoded: what the stream holds is counted by whole batches.
        held += sorted.get_array_memory_size();
        for (slot, b) in buffers.iter_mut().enumerate() {
            let (start, len) = (starts[slot], starts[slot + 1] - starts[slot]);
            if len == 0 {
                continue;
            }
            b.rows += len;
            b.batches.push(sorted.slice(start, len));
            if b.rows >= FLUSH_ROWS {
                b.flush(&shared, &mut spill)?;
            }
        }
        if held > shared.opts.buffer_bytes {
            // Encode every buffer, which lets go of every batch held.
            for b in &mut buffers {
                b.flush(&shared, &mut spill)?;
            }
            held = 0;
        }
        // Encoding is CPU work on this thread; let other tasks in between batches.
        tokio::task::yield_now().await;
    }
    for b in &mut buffers {
        b.flush(&shared, &mut spill)?;
    }
    if let Some(mut s) = spill {
        s.writer
            .flush()
            .map_err(|e| io("writing a spill file", e))?;
        s.writer
            .finish()
            .map_err(|e| DataError::from_datafusion("writing a spill file", e))?;
    }
    Ok(rows)
}

/// Writes `df` under `root` partitioned by `opts.partition_by`. Nothing is created under
/// `root` when there are no rows.
pub async fn write(df: DataFrame, root: &Path, opts: Options) -> Result<Outcome, DataError> {
    let task_ctx = Arc::new(df.task_ctx());
    let mut plan: Arc<dyn ExecutionPlan> = df
        .create_physical_plan()
        .await
        .map_err(|e| DataError::from_datafusion("planning the write", e))?;
    let threads = opts.threads.max(1);
    // Exactly `threads` streams: each holds its own buffers, so more would take more memory
    // than the budget allows for, and fewer would leave cores idle.
    if plan.output_partitioning().partition_count() != threads {
        plan = Arc::new(
            RepartitionExec::try_new(plan, Partitioning::RoundRobinBatch(threads))
                .map_err(|e| DataError::from_datafusion("planning the write", e))?,
        );
    }
    // The batches' own schema (the plan's), which the files must match exactly.
    let schema = plan.schema();
    let mut key_cols = Vec::new();
    for p in &opts.partition_by {
        let i = schema
            .index_of(p)
            .map_err(|_| DataError::Invalid(format!("`partition_by` column `{p}` is missing")))?;
        key_cols.push(i);
    }
    let keep_cols: Vec<usize> = (0..schema.fields().len())
        .filter(|i| !key_cols.contains(i))
        .collect();
    if keep_cols.is_empty() {
        return Err(DataError::Invalid(
            "`partition_by` names every column: the files would have none left".into(),
        ));
    }
    let file_schema = Arc::new(
        schema
            .project(&keep_cols)
            .map_err(|e| io("dropping the partition columns", e))?,
    );
    let shared = Arc::new(Shared {
        root: root.to_path_buf(),
        schema: file_schema,
        opts,
        disk: task_ctx.runtime_env().disk_manager.clone(),
        parts: Mutex::new(Registry::default()),
        props: OnceLock::new(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..plan.output_partitioning().partition_count() {
        let stream = plan
            .execute(i, task_ctx.clone())
            .map_err(|e| DataError::from_datafusion("reading the rows to write", e))?;
        tasks.spawn(run_stream(
            shared.clone(),
            stream,
            key_cols.clone(),
            keep_cols.clone(),
        ));
    }
    let mut rows = 0;
    while let Some(r) = tasks.join_next().await {
        rows += r.map_err(|e| io("a writer stopped", e))??;
    }
    // Finish every file, on as many threads as there were streams: first the open ones,
    // which frees their memory, then the spilled ones, taken one at a time by each thread.
    let all: Vec<Arc<Mutex<Part>>> = lock(&shared.parts).by_key.values().cloned().collect();
    let mut outcome = Outcome {
        rows,
        partitions: all.len(),
        ..Outcome::default()
    };
    let (mut parts, mut spilled) = (Vec::new(), Vec::new());
    for p in all {
        let spilled_bytes = match &lock(&p).sink {
            Sink::Spilled(segments) => Some(segments.iter().map(|s| s.len as u64).sum::<u64>()),
            _ => None,
        };
        match spilled_bytes {
            Some(bytes) => {
                outcome.spilled += 1;
                outcome.spilled_bytes += bytes;
                spilled.push(p);
            }
            None => parts.push(p),
        }
    }
    parts.append(&mut spilled);
    let parts = Arc::new(parts);
    let next = Arc::new(AtomicUsize::new(0));
    let mut closers = tokio::task::JoinSet::new();
    for _ in 0..threads {
        let (shared, parts, next) = (shared.clone(), parts.clone(), next.clone());
        closers.spawn_blocking(move || {
            while let Some(p) = parts.get(next.fetch_add(1, Ordering::Relaxed)) {
                shared.finish(p)?;
            }
            Ok::<(), DataError>(())
        });
    }
    while let Some(r) = closers.join_next().await {
        r.map_err(|e| io("a writer stopped", e))??;
    }
    Ok(outcome)
}
