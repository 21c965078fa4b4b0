//! The star schema: how a `dimension` task merges a dataset into a dimension (surrogate
//! keys, SCD type 1 and type 2, the unknown member) and how a `fact` task swaps natural keys
//! for surrogate keys (the version valid at the event time, -1 for a missing member). Both
//! are DataFusion queries over datasets they are handed; [`target`] reads and writes the
//! dimension where it lives (a PostgreSQL table, a Parquet file) through the postgres
//! source and the postgres and parquet sinks. Spec decoding is the task kinds' business
//! ([`crate::tasks::dimension`], [`crate::tasks::fact`]); nothing here touches the store.
//! The date dimension is a source ([`crate::sources::calendar`]), loaded like any dataset.

pub mod dimension;
pub mod fact;
pub mod target;

/// The surrogate key of the unknown member, in every dimension.
pub const UNKNOWN_KEY: i64 = -1;
