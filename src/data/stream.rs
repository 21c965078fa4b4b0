//! Batches that arrive from outside DataFusion (a database cursor, pages of an API, sheets
//! of a workbook) as a [`DataFrame`], so every source hands the same thing to the extract
//! task: rows flow through a bounded channel as they are read, never collected whole.

use super::DataError;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext as DfTaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{DataFrame, SessionContext};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Batches in flight between a reader and the writer.
pub const CHANNEL_BATCHES: usize = 4;

/// The sending half a reader pushes batches into; an `Err` ends the stream with it.
pub type BatchSender = mpsc::Sender<Result<RecordBatch, DataFusionError>>;

/// A stream that can be executed once.
struct OneShot {
    schema: SchemaRef,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl std::fmt::Debug for OneShot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneShot").finish_non_exhaustive()
    }
}

impl PartitionStream for OneShot {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<DfTaskContext>) -> SendableRecordBatchStream {
        match self.stream.lock().ok().and_then(|mut g| g.take()) {
            Some(stream) => stream,
            None => Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures_util::stream::once(async {
                    Err(DataFusionError::Execution(
                        "this source can be read only once".into(),
                    ))
                }),
            )),
        }
    }
}

/// A table that yields what `stream` yields (once: it is a stream, not a table).
pub fn stream_table(stream: SendableRecordBatchStream) -> Result<Arc<StreamingTable>, DataError> {
    let schema = stream.schema();
    let part = OneShot {
        schema: schema.clone(),
        stream: Mutex::new(Some(stream)),
    };
    StreamingTable::try_new(schema, vec![Arc::new(part)])
        .map(Arc::new)
        .map_err(|e| DataError::from_datafusion("setting up a stream", e))
}

/// A [`DataFrame`] of [`stream_table`].
pub fn stream_frame(
    ctx: &SessionContext,
    stream: SendableRecordBatchStream,
) -> Result<DataFrame, DataError> {
    ctx.read_table(stream_table(stream)?)
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
    use futures_util::StreamExt;
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
