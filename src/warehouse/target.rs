//! Where a dimension lives and how it is read and written: a PostgreSQL table (read whole
//! with the postgres source under an advisory lock held until the changes are written, so
//! two runs never hand out the same surrogate keys; written by upserting the changed rows
//! on the surrogate key with the postgres sink, in one transaction) or a Parquet file or
//! folder (read whole, written whole under a temporary name and renamed, with the parquet
//! sink). Only one run at a time may maintain a Parquet dimension: files have no lock.

use crate::data::dataset::{self, Written};
use crate::data::postgres::{self, Pg, TableName};
use crate::data::DataError;
use crate::sinks::parquet::ParquetSink;
use crate::sinks::postgres::{PostgresSink, TableMode};
use crate::sinks::{Input, Sink, SinkContext};
use crate::sources::postgres::PostgresSource;
use crate::sources::{Source, SourceContext};
use datafusion::prelude::{DataFrame, ParquetReadOptions};
use indexmap::IndexMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Where a dimension lives.
#[derive(Debug, Clone)]
pub enum Target {
    /// A PostgreSQL table.
    Postgres {
        /// Connection URL (templated).
        url: String,
        /// `NAME` or `SCHEMA.NAME` (templated).
        table: String,
    },
    /// A Parquet file (`.parquet`) or folder.
    Parquet {
        /// The path (templated).
        path: String,
    },
}

/// A dimension opened for a merge: its current rows, and the lock that keeps other runs
/// out until [`Opened`] is dropped.
pub struct Opened {
    /// The rows as they are, `None` before the first load.
    pub current: Option<DataFrame>,
    _lock: Option<Pg>,
}

impl Target {
    /// One line for listings.
    pub fn describe(&self) -> String {
        match self {
            Target::Postgres { url, table } => {
                format!("postgres {} table {table}", postgres::safe_target(url))
            }
            Target::Parquet { path } => format!("parquet {path}"),
        }
    }

    /// Locks the dimension and reads its rows. The rows are copied into `cx.scratch` first
    /// (a snapshot the merge may scan more than once).
    pub async fn open(&self, cx: &SinkContext<'_>) -> Result<Opened, DataError> {
        match self {
            Target::Parquet { path } => {
                let p = cx.path(path)?;
                if !p.exists() {
                    return Ok(Opened {
                        current: None,
                        _lock: None,
                    });
                }
                let location = if p.is_dir() {
                    format!("{}/", p.display())
                } else {
                    p.display().to_string()
                };
                let df = cx
                    .session
                    .read_parquet(location, ParquetReadOptions::default())
                    .await
                    .map_err(|e| {
                        DataError::from_datafusion(format!("reading {}", p.display()), e)
                    })?;
                Ok(Opened {
                    current: Some(snapshot(cx, df).await?),
                    _lock: None,
                })
            }
            Target::Postgres { url, table } => {
                let url = cx.text(url)?;
                let table_text = cx.text(table)?;
                let name = TableName::parse(&table_text).map_err(DataError::Invalid)?;
                let redactor = cx.task.log.redactor();
                let pg = postgres::connect(&url, &redactor).await?;
                let fail = |what: String, e: tokio_postgres::Error| {
                    postgres::redact(postgres::error(&what, &e), &redactor)
                };
                // Held by this connection until it closes: the end of the task.
                let lock = format!("cauce dimension {}", name.quoted());
                pg.client
                    .execute("SELECT pg_advisory_lock(hashtext($1))", &[&lock])
                    .await
                    .map_err(|e| fail(format!("locking dimension {name}"), e))?;
                let exists: Option<u32> = pg
                    .client
                    .query_one("SELECT to_regclass($1::text)::oid", &[&name.quoted()])
                    .await
                    .and_then(|r| r.try_get(0))
                    .map_err(|e| fail(format!("looking up table {name}"), e))?;
                let current = match exists {
                    None => None,
                    Some(_) => {
                        let source = PostgresSource::table(url.clone(), table_text);
                        let columns = IndexMap::new();
                        let sx = SourceContext {
                            task: cx.task,
                            session: cx.session,
                            columns: &columns,
                            watermark: None,
                            bytes_read: Arc::new(AtomicU64::new(0)),
                            input_bytes: Arc::new(AtomicU64::new(0)),
                            scratch: cx.scratch.clone(),
                        };
                        let df = source.read(&sx).await?;
                        Some(snapshot(cx, df).await?)
                    }
                };
                Ok(Opened {
                    current,
                    _lock: Some(pg),
                })
            }
        }
    }

    /// Writes the merge: a PostgreSQL table gets the changed rows upserted on `key` (a
    /// missing table is created with `key` as its primary key); a Parquet target gets the
    /// whole dimension.
    pub async fn apply(
        &self,
        cx: &SinkContext<'_>,
        key: &str,
        changes: Input,
        whole: Input,
    ) -> Result<Written, DataError> {
        match self {
            Target::Parquet { path } => {
                ParquetSink::replacing(path.clone())
                    .write(cx, vec![whole])
                    .await
            }
            Target::Postgres { url, table } => {
                PostgresSink::new(
                    url.clone(),
                    table.clone(),
                    TableMode::Upsert,
                    vec![key.to_string()],
                )
                .write(cx, vec![changes])
                .await
            }
        }
    }
}

/// Copies `df` into the scratch folder and reads it back.
async fn snapshot(cx: &SinkContext<'_>, df: DataFrame) -> Result<DataFrame, DataError> {
    dataset::write(df, &cx.scratch, "current").await?;
    dataset::read(cx.session, &cx.scratch, "current").await
}
