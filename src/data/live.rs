//! Live datasets: a task writing its dataset hands the same batches, as it writes them, to
//! the one downstream task started beside it, so that task neither waits for the whole
//! dataset nor reads it back from disk. Every task boundary stays a checkpoint (the
//! dataset is still written whole, or, for a `sql` task whose consumer read it live, kept
//! as its query: [`super::view`]), and nothing downstream commits before its upstream
//! succeeded: a live input ends only once its producer's attempt ended, with an error if
//! that attempt failed, and a `sql` task renames its dataset into place only after every
//! live input succeeded ([`Streams::upstream_done`]). The producer can ask whether its
//! consumer reads the feed ([`Live::uptake`]): one that let it go reads the dataset from
//! disk instead.
//!
//! Which tasks stream into which is the coordinator's decision (`crate::engine`); the
//! attempt runner ends each producer's [`Live`] with its result. This module owns the
//! hand-over only: the tee on the producer's side ([`Live::tee`]), the table on the
//! consumer's ([`read`]), and the wait between them. It touches neither the store nor files.

use super::stream::{stream_error, stream_frame, stream_table, BatchSender, CHANNEL_BATCHES};
use super::{dataset, DataError, DataSettings};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{DataFrame, SessionContext};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Where a producer's attempt is.
#[derive(Debug, Clone)]
enum Phase {
    /// Not writing its dataset yet.
    Starting,
    /// Writing, and sending the same batches (of this schema) down the feed.
    Streaming(SchemaRef),
    /// The attempt ended: its error, if it failed.
    Done(Result<(), String>),
}

type Feed = mpsc::Receiver<Result<RecordBatch, DataFusionError>>;

/// What the consumer did with the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uptake {
    /// Nothing yet.
    Pending,
    /// It started reading the batches live.
    Reading,
    /// It let the feed go before reading any batch: it reads the dataset from disk once
    /// the producer succeeded, or not at all.
    Released,
}

/// One producer's hand-over to its one live consumer, for one attempt of each.
#[derive(Debug)]
pub struct Live {
    task: String,
    phase: watch::Sender<Phase>,
    /// The sending half, taken by the producer's tee (once).
    tx: Mutex<Option<BatchSender>>,
    /// The receiving half, taken by the consumer (once); dropping it unblocks the producer.
    rx: Mutex<Option<Feed>>,
    /// About how many bytes the producer reads, when it knows before it starts (0: it does
    /// not): the size a query plans the live table with ([`Live::size_hint`]).
    bytes: AtomicU64,
    /// Whether the consumer reads the feed, once it knows.
    uptake: watch::Sender<Uptake>,
}

impl Live {
    /// The hand-over of task `task`'s dataset.
    pub fn new(task: &str) -> Arc<Live> {
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        Arc::new(Live {
            task: task.to_string(),
            phase: watch::Sender::new(Phase::Starting),
            tx: Mutex::new(Some(tx)),
            rx: Mutex::new(Some(rx)),
            bytes: AtomicU64::new(0),
            uptake: watch::Sender::new(Uptake::Pending),
        })
    }

    /// Producer, before [`Live::tee`]: it will read about `bytes` (the files of a file
    /// source). A consumer joining this input with others plans the join with it; without
    /// it, such a consumer reads the finished dataset instead ([`table`]).
    pub fn size_hint(&self, bytes: u64) {
        self.bytes.store(bytes, Ordering::Release);
    }

    fn known_size(&self) -> Option<u64> {
        Some(self.bytes.load(Ordering::Acquire)).filter(|b| *b > 0)
    }

    /// Producer: the frame to write instead of `df`, which also sends each batch down the
    /// feed (waiting while the consumer is behind; not at all once it has gone away). `df`
    /// is executed as one stream, as the dataset writer would have merged it anyway.
    pub async fn tee(&self, df: DataFrame) -> Result<DataFrame, DataError> {
        let Some(tx) = self.tx.lock().ok().and_then(|mut g| g.take()) else {
            return Ok(df);
        };
        let (state, plan) = df.into_parts();
        let ctx = SessionContext::new_with_state(state.clone());
        let df = DataFrame::new(state, plan);
        let schema = df.schema().inner().clone();
        let input = df
            .execute_stream()
            .await
            .map_err(|e| DataError::from_datafusion("starting the dataset's stream", e))?;
        self.phase.send_replace(Phase::Streaming(schema.clone()));
        let teed = futures_util::stream::unfold((input, Some(tx)), |(mut input, mut tx)| async {
            let item = input.next().await?;
            if let (Ok(batch), Some(sender)) = (&item, &tx) {
                if sender.send(Ok(batch.clone())).await.is_err() {
                    tx = None; // the consumer stopped reading; the dataset goes on
                }
            }
            Some((item, (input, tx)))
        });
        stream_frame(&ctx, Box::pin(RecordBatchStreamAdapter::new(schema, teed)))
    }

    /// Producer, after [`Live::tee`] and before reading the teed frame: waits until the
    /// consumer either reads the feed ([`Uptake::Reading`]) or lets it go
    /// ([`Uptake::Released`]). The consumer decides as soon as it has planned its work,
    /// without waiting for rows (a query reading the input twice lets it go first).
    pub async fn uptake(&self, cancel: &CancellationToken) -> Result<Uptake, DataError> {
        let mut rx = self.uptake.subscribe();
        let known = rx.wait_for(|u| *u != Uptake::Pending);
        tokio::select! {
            r = known => Ok(r.map(|u| *u).unwrap_or(Uptake::Released)),
            _ = cancel.cancelled() => Err(DataError::Cancelled),
        }
    }

    /// Consumer: records what it did with the feed; only the first word counts.
    fn took(&self, what: Uptake) {
        self.uptake.send_if_modified(|u| {
            let first = *u == Uptake::Pending;
            if first {
                *u = what;
            }
            first
        });
    }

    /// Producer: the attempt ended (`Err` with its error). The consumer's input ends now.
    pub fn finish(&self, result: Result<(), String>) {
        // A feed never started is dropped, so nothing waits on it.
        self.tx.lock().ok().and_then(|mut g| g.take());
        self.phase.send_if_modified(|p| {
            let first = !matches!(p, Phase::Done(_));
            if first {
                *p = Phase::Done(result);
            }
            first
        });
    }

    /// Waits for the producer's attempt to end; `Err` names it if it did not succeed.
    pub async fn outcome(&self, cancel: &CancellationToken) -> Result<(), DataError> {
        let mut rx = self.phase.subscribe();
        let done = rx.wait_for(|p| matches!(p, Phase::Done(_)));
        let phase = tokio::select! {
            r = done => r.map(|p| p.clone()).ok(),
            _ = cancel.cancelled() => return Err(DataError::Cancelled),
        };
        match phase {
            Some(Phase::Done(Ok(()))) => Ok(()),
            Some(Phase::Done(Err(e))) => Err(DataError::Upstream(format!(
                "upstream task `{}` did not succeed: {e}",
                self.task
            ))),
            _ => Err(DataError::Upstream(format!(
                "upstream task `{}` stopped",
                self.task
            ))),
        }
    }

    /// Consumer: gives up the feed if it was not taken (the producer then writes on
    /// without waiting for a reader).
    fn release(&self) {
        self.rx.lock().ok().and_then(|mut g| g.take());
        self.took(Uptake::Released);
    }

    /// Consumer: the feed and its schema once the producer writes, or `None` when the
    /// producer ended without streaming (or the feed was taken): then its dataset, if it
    /// succeeded, is on disk.
    async fn feed(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Option<(SchemaRef, Feed)>, DataError> {
        let mut rx = self.phase.subscribe();
        let started = rx.wait_for(|p| !matches!(p, Phase::Starting));
        let phase = tokio::select! {
            r = started => r.map(|p| p.clone()).ok(),
            _ = cancel.cancelled() => return Err(DataError::Cancelled),
        };
        match phase {
            Some(Phase::Streaming(schema)) => Ok(self
                .rx
                .lock()
                .ok()
                .and_then(|mut g| g.take())
                .map(|feed| (schema, feed))),
            _ => Ok(None),
        }
    }
}

/// A task attempt's live inputs and output, as the coordinator set them up (none for
/// attempts that do not stream, and always none on `cauce worker`).
#[derive(Debug, Clone, Default)]
pub struct Streams {
    /// Where this attempt's dataset is handed over as it is written.
    pub out: Option<Arc<Live>>,
    /// The upstream tasks whose datasets arrive live, by task id.
    pub inputs: HashMap<String, Arc<Live>>,
    /// How many tasks, this one included, were started together joined by streams (0 or
    /// 1: alone). They share one `data.max_memory` ([`Streams::settings`]).
    pub group: usize,
    /// Whether the consumer of `out` is the only task of the run downstream of this one:
    /// if it reads the rows live, nothing else reads the dataset unless that consumer is
    /// retried ([`super::dataset::write_streaming`]).
    pub sole_reader: bool,
}

impl Streams {
    /// The data settings of an attempt of this group: `max_memory` split evenly among
    /// the tasks streaming together (at least 64 MiB each), so a chain holds no more
    /// than one task alone would.
    pub fn settings(&self, data: &Arc<DataSettings>) -> Arc<DataSettings> {
        if self.group <= 1 {
            return Arc::clone(data);
        }
        Arc::new(DataSettings {
            max_memory: (data.max_memory / self.group as u64).max(64 << 20),
            ..DataSettings::clone(data)
        })
    }

    /// The attempt ended (`Err` with its error): its consumer's input ends, and the feeds
    /// it did not take are let go, so that no producer waits for it. Ending twice changes
    /// nothing.
    pub fn end(&self, result: Result<(), String>) {
        if let Some(out) = &self.out {
            out.finish(result);
        }
        for live in self.inputs.values() {
            live.release();
        }
    }

    /// Waits until every live input's producer ended; `Err` if one did not succeed.
    pub async fn upstream_done(&self, cancel: &CancellationToken) -> Result<(), DataError> {
        for live in self.inputs.values() {
            live.outcome(cancel).await?;
        }
        Ok(())
    }
}

/// Ends an attempt's [`Streams`] when dropped, if nothing ended them before (the attempt
/// panicked or was dropped).
#[derive(Debug)]
pub struct EndOnDrop(pub Streams);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.end(Err("the attempt stopped".into()));
    }
}

/// Task `task_id`'s dataset for a downstream task: its live feed when it streams into this
/// attempt (the frame ends once the producer succeeded, and with an error if it did not),
/// else the dataset on disk (after waiting for a live producer that ended up not streaming).
pub async fn read(
    ctx: &SessionContext,
    run_data_dir: &Path,
    task_id: &str,
    streams: &Streams,
    cancel: &CancellationToken,
) -> Result<DataFrame, DataError> {
    match table(task_id, streams, false, cancel).await? {
        Some(t) => ctx
            .read_table(t)
            .map_err(|e| DataError::from_datafusion("setting up a stream", e)),
        None => dataset::read(ctx, run_data_dir, task_id).await,
    }
}

/// A consumer's feed: let go unread (the stream dropped before its first poll, as by a
/// query that reads its input twice), it tells the producer so.
struct Held {
    feed: Feed,
    live: Arc<Live>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.live.took(Uptake::Released);
    }
}

/// [`read`] as a table to register: the live feed, or `None` for the dataset on disk
/// (its producer, if it streamed, has succeeded). With `sized`, a feed whose producer gave
/// no [`Live::size_hint`] is let go and the dataset read once written: a query joining
/// several tables must not take a stream of unknown size for the small side of a join
/// (DataFusion hashes that side whole, in memory).
pub async fn table(
    task_id: &str,
    streams: &Streams,
    sized: bool,
    cancel: &CancellationToken,
) -> Result<Option<Arc<dyn TableProvider>>, DataError> {
    let Some(live) = streams.inputs.get(task_id) else {
        return Ok(None);
    };
    let feed = match live.feed(cancel).await? {
        Some(_) if sized && live.known_size().is_none() => None,
        feed => feed,
    };
    let Some((schema, feed)) = feed else {
        // Dropped: the producer writes on without waiting for this reader (told so first,
        // as it may wait to know).
        live.took(Uptake::Released);
        live.outcome(cancel).await?;
        return Ok(None);
    };
    let bytes = live.known_size();
    let feed = Held {
        feed,
        live: Arc::clone(live),
    };
    let live = Arc::clone(live);
    let cancel = cancel.clone();
    let batches = futures_util::stream::unfold(Some(feed), move |feed| {
        let live = Arc::clone(&live);
        let cancel = cancel.clone();
        async move {
            let mut feed = feed?;
            live.took(Uptake::Reading);
            if let Some(item) = feed.feed.recv().await {
                return Some((item, Some(feed)));
            }
            // The producer sent everything: the input ends only if its attempt succeeded.
            match live.outcome(&cancel).await {
                Ok(()) => None,
                Err(e) => Some((Err(stream_error(e)), None)),
            }
        }
    });
    let stream = Box::pin(RecordBatchStreamAdapter::new(schema, batches));
    Ok(Some(stream_table(stream, bytes)))
}
