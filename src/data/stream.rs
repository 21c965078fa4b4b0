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
#[derive(Debug)]
struct OneShot {
    schema: SchemaRef,
    rx: Mutex<Option<mpsc::Receiver<Result<RecordBatch, DataFusionError>>>>,
}

impl PartitionStream for OneShot {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<DfTaskContext>) -> SendableRecordBatchStream {
        let rx = self.rx.lock().ok().and_then(|mut g| g.take());
        let stream = futures_util::stream::unfold(rx, |rx| async move {
            match rx {
                Some(mut rx) => rx.recv().await.map(|item| (item, Some(rx))),
                None => Some((
                    Err(DataFusionError::Execution(
                        "this source can be read only once".into(),
                    )),
                    None,
                )),
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// A channel for a reader of `schema`, and the [`DataFrame`] that yields what is sent into
/// it. The reader runs beside the consumer (spawned by the caller) and stops when the
/// receiver is dropped (its `send` fails).
pub fn channel_frame(
    ctx: &SessionContext,
    schema: SchemaRef,
) -> Result<(BatchSender, DataFrame), DataError> {
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    let part = OneShot {
        schema: schema.clone(),
        rx: Mutex::new(Some(rx)),
    };
    let table = StreamingTable::try_new(schema, vec![Arc::new(part)])
        .map_err(|e| DataError::from_datafusion("setting up a stream", e))?;
    let df = ctx
        .read_table(Arc::new(table))
        .map_err(|e| DataError::from_datafusion("setting up a stream", e))?;
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
