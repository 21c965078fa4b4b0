//! The memory pool of a data task: one `data.max_memory` budget split in two, so that file
//! writers (which cannot spill) always have room while sorts, joins and aggregations (which
//! can) use the rest and spill to disk when it is full. With DataFusion's plain fair pool a
//! sort that took the whole budget left a Parquet writer downstream of it nothing, and the
//! task failed instead of spilling.

use datafusion::common::Result;
use datafusion::execution::memory_pool::{
    FairSpillPool, GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
    TrackConsumersPool,
};
use std::fmt;
use std::num::NonZeroUsize;

/// The budget is divided by this, and one part is kept for writers. A writer's memory is
/// its row group in progress (encoded pages, dictionaries, page buffers): in practice about
/// twice the row group's encoded size, which [`super::session`] caps accordingly.
pub const WRITER_SHARE: usize = 2;

/// How many consumers an out-of-memory error names.
const TOP: NonZeroUsize = NonZeroUsize::MIN.saturating_add(2);

/// A pool routing writers' reservations to their own share.
#[derive(Debug)]
pub struct SplitPool {
    limit: usize,
    writers: TrackConsumersPool<GreedyMemoryPool>,
    query: TrackConsumersPool<FairSpillPool>,
}

impl SplitPool {
    /// A pool of `limit` bytes: half for writers, half for the query.
    pub fn new(limit: usize) -> SplitPool {
        let writers = limit / WRITER_SHARE;
        SplitPool {
            limit,
            // Errors name the largest consumers, so a user sees what needed the memory.
            writers: TrackConsumersPool::new(GreedyMemoryPool::new(writers), TOP),
            query: TrackConsumersPool::new(FairSpillPool::new(limit - writers), TOP),
        }
    }

    fn is_writer(consumer: &MemoryConsumer) -> bool {
        let n = consumer.name();
        n.starts_with("ParquetSink") || n.ends_with("Sink") || n.contains("Writer")
    }

    fn pool(&self, consumer: &MemoryConsumer) -> &dyn MemoryPool {
        if Self::is_writer(consumer) {
            &self.writers
        } else {
            &self.query
        }
    }
}

impl fmt::Display for SplitPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cauce pool of {} MiB (query: {}, writers: {})",
            self.limit >> 20,
            self.query,
            self.writers
        )
    }
}

impl MemoryPool for SplitPool {
    fn name(&self) -> &str {
        "cauce"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.pool(consumer).register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.pool(consumer).unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.pool(reservation.consumer())
            .grow(reservation, additional)
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.pool(reservation.consumer())
            .shrink(reservation, shrink)
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        self.pool(reservation.consumer())
            .try_grow(reservation, additional)
    }

    fn reserved(&self) -> usize {
        self.writers.reserved() + self.query.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}
