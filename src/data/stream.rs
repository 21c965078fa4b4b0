//! Batches that arrive from outside DataFusion (a database cursor, pages of an API, sheets
//! of a workbook) as a [`DataFrame`], so every source hands the same thing to the extract
//! task: rows flow through a bounded channel as they are read, never collected whole. And
//! the table a live input is to a query ([`stream_table`]), with a size for the planner.

use super::DataError;
use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ColumnStatistics, Statistics};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext as DfTaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::statistics::StatisticsArgs;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::prelude::{DataFrame, SessionContext};
use futures_util::StreamExt;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Batches in flight between a reader and the writer.
pub const CHANNEL_BATCHES: usize = 4;

/// The sending half a reader pushes batches into; an `Err` ends the stream with it.
pub type BatchSender = mpsc::Sender<Result<RecordBatch, DataFusionError>>;

/// A table that yields what `stream` yields, once: it is a stream, not a table. `bytes` is
/// about how much it will yield, when known (the files a source reads): the planner's
/// statistics, so that a join hashes the smaller side, not a stream of unknown size.
pub fn stream_table(stream: SendableRecordBatchStream, bytes: Option<u64>) -> Arc<StreamTable> {
    Arc::new(StreamTable {
        schema: stream.schema(),
        stream: Arc::new(Mutex::new(Some(stream))),
        bytes,
    })
}

/// The row width a [`stream_table`] of known size is planned with: about that of a line of
/// the CSV files the benchmark reads (74 bytes), and of most exports.
const BYTES_PER_ROW: u64 = 64;

/// See [`stream_table`].
pub struct StreamTable {
    schema: SchemaRef,
    stream: Arc<Mutex<Option<SendableRecordBatchStream>>>,
    bytes: Option<u64>,
}

impl std::fmt::Debug for StreamTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTable")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Arc::new(StreamExec {
            schema,
            projection: projection.cloned(),
            stream: Arc::clone(&self.stream),
            bytes: self.bytes,
            props,
        }))
    }
}

/// The scan of a [`StreamTable`]: one partition, executed once.
struct StreamExec {
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    stream: Arc<Mutex<Option<SendableRecordBatchStream>>>,
    bytes: Option<u64>,
    props: Arc<PlanProperties>,
}

impl std::fmt::Debug for StreamExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamExec")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl DisplayAs for StreamExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.bytes {
            Some(b) => write!(f, "StreamExec: bytes~{b}"),
            None => write!(f, "StreamExec"),
        }
    }
}

impl ExecutionPlan for StreamExec {
    fn name(&self) -> &str {
        "StreamExec"
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
        _partition: usize,
        _context: Arc<DfTaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let Some(stream) = self.stream.lock().ok().and_then(|mut g| g.take()) else {
            return Err(DataFusionError::Execution(
                "this source can be read only once".into(),
            ));
        };
        let projection = self.projection.clone();
        let batches = stream.map(move |item| match (&projection, item) {
            (Some(p), Ok(batch)) => batch.project(p).map_err(DataFusionError::from),
            (_, item) => item,
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            batches,
        )))
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> DfResult<Arc<Statistics>> {
        let columns = self.schema.fields().len();
        let (num_rows, total_byte_size) = match self.bytes {
            // Rows too, or the planner knows nothing of a join's output over this input:
            // a guess that keeps inputs in order of size, which is what it needs.
            Some(b) => (
                Precision::Inexact((b / BYTES_PER_ROW) as usize),
                Precision::Inexact(b as usize),
            ),
            None => (Precision::Absent, Precision::Absent),
        };
        Ok(Arc::new(Statistics {
            num_rows,
            total_byte_size,
            column_statistics: vec![ColumnStatistics::new_unknown(); columns],
        }))
    }
}

/// A [`DataFrame`] of [`stream_table`].
pub fn stream_frame(
    ctx: &SessionContext,
    stream: SendableRecordBatchStream,
) -> Result<DataFrame, DataError> {
    ctx.read_table(stream_table(stream, None))
        .map_err(|e| DataError::from_datafusion("setting up a stream", e))
}

/// A channel for a reader of `schema`, and the [`DataFrame`] that yields what is sent into
/// it. The reader runs beside the consumer (spawned by the caller) and stops when the
/// receiver is dropped (its `send` fails).
pub fn channel_frame(
    ctx: &SessionContext,
    schema: SchemaRef,
) -> Result<(BatchSender, DataFrame), DataError> {
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    let batches = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let df = stream_frame(
        ctx,
        Box::pin(RecordBatchStreamAdapter::new(schema, batches)),
    )?;
    Ok((tx, df))
}

/// A [`DataFrame`] over batches already in memory (small sources: a workbook sheet).
pub fn batches_frame(
    ctx: &SessionContext,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<DataFrame, DataError> {
    let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])
        .map_err(|e| DataError::from_datafusion("setting up a table", e))?;
    ctx.read_table(Arc::new(table))
        .map_err(|e| DataError::from_datafusion("setting up a table", e))
}

/// An error to end a stream with.
pub fn stream_error(e: DataError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Executes `df` to the end, keeping nothing (checks every value parses).
pub async fn drain(df: DataFrame) -> Result<u64, DataFusionError> {
    let mut stream = df.execute_stream().await?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        rows += batch?.num_rows() as u64;
    }
    Ok(rows)
}

/// The reader's end of a stream whose columns are known only once the first rows are read
/// (a database cursor typed by its values): the reader hands over the schema with its first
/// batch, and only then is the frame made. See [`late_frame`].
#[derive(Debug)]
pub struct LateOut {
    schema_tx: Option<tokio::sync::oneshot::Sender<Result<SchemaRef, DataError>>>,
    sender_rx: Option<tokio::sync::oneshot::Receiver<BatchSender>>,
    tx: Option<BatchSender>,
    cancel: tokio_util::sync::CancellationToken,
}

impl LateOut {
    /// Ends the stream with an error (before the schema: the frame is never made).
    pub async fn fail(&mut self, e: DataError) {
        if let Some(s) = self.schema_tx.take() {
            let _ = s.send(Err(e));
        } else if let Some(tx) = &self.tx {
            let _ = tx.send(Err(stream_error(e))).await;
        }
    }

    /// Hands over the schema (the first time) and waits for the channel; `false` when
    /// nobody wants the rows any more.
    pub async fn open(&mut self, schema: SchemaRef) -> bool {
        let (Some(s), Some(rx)) = (self.schema_tx.take(), self.sender_rx.take()) else {
            return self.tx.is_some();
        };
        if s.send(Ok(schema)).is_err() {
            return false;
        }
        match rx.await {
            Ok(tx) => {
                self.tx = Some(tx);
                true
            }
            Err(_) => false,
        }
    }

    /// Resolves when the consumer has gone away (never before the channel exists), so a
    /// reader waiting on its source can stop.
    pub async fn closed(&self) {
        match &self.tx {
            Some(tx) => tx.closed().await,
            None => std::future::pending().await,
        }
    }

    /// Sends a batch (handing over the schema with the first); `Ok(false)` when nobody is
    /// listening any more, [`DataError::Cancelled`] once the task is cancelled.
    pub async fn send(&mut self, batch: RecordBatch) -> Result<bool, DataError> {
        if self.cancel.is_cancelled() {
            return Err(DataError::Cancelled);
        }
        if !self.open(batch.schema()).await {
            return Ok(false);
        }
        match &self.tx {
            Some(tx) => Ok(tx.send(Ok(batch)).await.is_ok()),
            None => Ok(false),
        }
    }
}

/// A source that reads a database cursor row by row and builds its batches itself
/// ([`read_rows`] drives it).
pub trait RowBatcher<R> {
    /// Adds row number `row_no` (from 1, for errors); returns about how many bytes it held.
    fn push(&mut self, row: R, row_no: u64) -> Result<u64, DataError>;
    /// The rows added since the last batch, as one; `first_row` rows came before them.
    fn finish(&mut self, first_row: u64) -> Result<RecordBatch, DataError>;
}

/// Reads `rows` to their end into `out`, in batches of `batch_size` rows built by
/// `batcher`, adding the bytes read to `bytes_read` batch by batch. A cursor with no rows
/// still hands over its columns (an empty first batch). Stops quietly once nobody reads
/// the batches any more, with [`DataError::Cancelled`] once `cancel` fires; `row_error`
/// says what a failed read was.
pub async fn read_rows<R, E, S>(
    mut rows: S,
    batcher: &mut impl RowBatcher<R>,
    out: &mut LateOut,
    batch_size: usize,
    cancel: &tokio_util::sync::CancellationToken,
    bytes_read: &std::sync::atomic::AtomicU64,
    row_error: impl Fn(E) -> DataError,
) -> Result<(), DataError>
where
    S: futures_util::Stream<Item = Result<R, E>> + Unpin,
{
    use std::sync::atomic::Ordering;
    let (mut in_batch, mut first_row, mut bytes, mut sent) = (0usize, 0u64, 0u64, false);
    loop {
        let next = {
            let closed = out.closed();
            tokio::select! {
                biased;
                r = rows.next() => r,
                _ = cancel.cancelled() => return Err(DataError::Cancelled),
                _ = closed => return Ok(()),
            }
        };
        let Some(row) = next else { break };
        bytes += batcher.push(row.map_err(&row_error)?, first_row + in_batch as u64 + 1)?;
        in_batch += 1;
        if in_batch >= batch_size {
            bytes_read.fetch_add(std::mem::take(&mut bytes), Ordering::Relaxed);
            let batch = batcher.finish(first_row)?;
            sent = true;
            if !out.send(batch).await? {
                return Ok(());
            }
            first_row += in_batch as u64;
            in_batch = 0;
        }
    }
    bytes_read.fetch_add(bytes, Ordering::Relaxed);
    if in_batch > 0 || !sent {
        let batch = batcher.finish(first_row)?;
        if batch.num_rows() == 0 {
            out.open(batch.schema()).await;
        } else {
            out.send(batch).await?;
        }
    }
    Ok(())
}

/// Spawns `reader` with a [`LateOut`] and returns the frame of what it sends, once it has
/// given its schema (or its error). `what` names the reader in the error of one that stops
/// before that ("the MySQL reader").
pub async fn late_frame<F, Fut>(
    ctx: &SessionContext,
    what: &str,
    cancel: tokio_util::sync::CancellationToken,
    reader: F,
) -> Result<DataFrame, DataError>
where
    F: FnOnce(LateOut) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (schema_tx, schema_rx) = tokio::sync::oneshot::channel();
    let (sender_tx, sender_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(reader(LateOut {
        schema_tx: Some(schema_tx),
        sender_rx: Some(sender_rx),
        tx: None,
        cancel,
    }));
    let schema = schema_rx
        .await
        .map_err(|_| DataError::Io(format!("{what} stopped before it had the columns")))??;
    let (tx, df) = channel_frame(ctx, schema)?;
    let _ = sender_tx.send(tx);
    Ok(df)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_plan::displayable;

    fn batch(schema: &SchemaRef, rows: i64) -> RecordBatch {
        let ids: Vec<i64> = (0..rows).collect();
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(ids))])
            .expect("a batch")
    }

    /// The plan of a query joining a stream of 10,000 rows (said to be `bytes`, if known)
    /// with tables of 10 and 600,000 rows, in that order, as DataFusion's indented text.
    async fn join_plan(bytes: Option<u64>) -> String {
        let spill = tempfile::tempdir().expect("a temporary folder");
        let settings = super::super::DataSettings {
            max_memory: 64 << 20,
            ..Default::default()
        };
        let ctx = super::super::session(&settings, spill.path()).expect("a session");
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let big = futures_util::stream::iter(vec![Ok(batch(&schema, 10_000))]);
        let big = Box::pin(RecordBatchStreamAdapter::new(schema.clone(), big));
        ctx.register_table("big", stream_table(big, bytes))
            .expect("registered");
        // `b` (4.8 MB) is above the size hashed once for all partitions without comparing
        // (a sixteenth of `max_memory`, 4 MiB here).
        for (small, rows) in [("a", 10), ("b", 600_000)] {
            ctx.register_batch(small, batch(&schema, rows))
                .expect("registered");
        }
        let df = ctx
            .sql("SELECT big.k FROM big JOIN a ON big.k = a.k JOIN b ON big.k = b.k")
            .await
            .expect("planned");
        let plan = df.create_physical_plan().await.expect("a physical plan");
        let text = displayable(plan.as_ref()).indent(false).to_string();
        text
    }

    fn depth(line: &str) -> usize {
        line.len() - line.trim_start().len()
    }

    /// Whether the outer join of `plan` hashes a small table: its first (build) child's
    /// subtree holds neither the stream nor the other join.
    fn outer_join_builds_a_table(plan: &str) -> bool {
        let mut lines = plan.lines().skip_while(|l| !l.contains("HashJoinExec"));
        let Some(join) = lines.next() else {
            panic!("no hash join in {plan}");
        };
        let mut below = lines.take_while(|l| depth(l) > depth(join));
        let Some(first) = below.next() else {
            panic!("a join without inputs in {plan}");
        };
        let subtree: Vec<&str> = std::iter::once(first)
            .chain(below.take_while(|l| depth(l) > depth(first)))
            .collect();
        !subtree
            .iter()
            .any(|l| l.contains("StreamExec") || l.contains("HashJoinExec"))
    }

    #[tokio::test]
    async fn a_live_input_of_known_size_is_not_hashed_as_the_small_side() {
        // The query names the stream first; its size makes the planner hash the tables.
        let plan = join_plan(Some(1 << 30)).await;
        assert!(outer_join_builds_a_table(&plan), "{plan}");
        // Without a size, the join over the stream is the side hashed whole: what a query
        // over several inputs avoids by reading such an input from disk.
        let plan = join_plan(None).await;
        assert!(!outer_join_builds_a_table(&plan), "{plan}");
    }

    #[tokio::test]
    async fn a_stream_table_yields_the_projected_columns_once() {
        let spill = tempfile::tempdir().expect("a temporary folder");
        let ctx = super::super::session(&super::super::DataSettings::default(), spill.path())
            .expect("a session");
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Int64, false),
        ]));
        let cols: Vec<Arc<dyn datafusion::arrow::array::Array>> = vec![
            Arc::new(Int64Array::from(vec![1, 2, 3])),
            Arc::new(Int64Array::from(vec![10, 20, 30])),
        ];
        let b = RecordBatch::try_new(schema.clone(), cols).expect("a batch");
        let s = futures_util::stream::iter(vec![Ok(b)]);
        let table = stream_table(Box::pin(RecordBatchStreamAdapter::new(schema, s)), None);
        ctx.register_table("t", table).expect("registered");
        let out = ctx
            .sql("SELECT SUM(b) AS s FROM t")
            .await
            .expect("planned")
            .collect()
            .await
            .expect("ran");
        let sum = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .map(|a| a.value(0));
        assert_eq!(sum, Some(60));
        let again = ctx
            .sql("SELECT a FROM t")
            .await
            .expect("planned")
            .collect()
            .await;
        let err = again.expect_err("a stream is read once").to_string();
        assert!(err.contains("read only once"), "{err}");
    }
}
