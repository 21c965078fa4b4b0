//! `sink: parquet`: a Parquet warehouse. `path` is a folder (its name templated:
//! `warehouse/sales/{{ yyyy }}/{{ mm }}/{{ dd }}/`) or one `.parquet` file. `partition_by`
//! writes hive-style `column=value/` folders below it. A load writes everything into a
//! staging folder beside the target and then renames it into place: with `mode: replace`
//! (the default) the target folder, or each partition folder the load produced, is swapped
//! whole, so re-running a logical date replaces its rows instead of adding to them, and a
//! reader sees the old or the new partition, never half of one. `mode: append` moves the new
//! files in beside the old ones. Compression is zstd unless `compression` says otherwise.

use super::{single, Input, Sink, SinkContext};
use crate::data::dataset::{count_rows, replace_dir, size_of, temp_beside, Scratch, Written};
use crate::data::{partitioned, DataError};
use crate::spec::error::SpecError;
use crate::tasks::BuildContext;
use async_trait::async_trait;
use datafusion::dataframe::DataFrameWriteOptions;
use marked_yaml::Node;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The row group size (encoded bytes) of partitioned writes. With 1 MiB the benchmark's
/// days had 4 row groups of 14k rows each, and making each column's compressor again for
/// every row group took 3% of T1's CPU; with 4 MiB a day is one row group of 51k rows,
/// T1 took 2.49 - 2.56 s instead of 2.63 - 2.92 s and peaked no higher.
const PARTITION_ROW_GROUP_BYTES: usize = 4 << 20;

/// What plain `zstd` means: level 1, as in pyarrow (Arrow C++) and the Rust Parquet crate.
/// On the benchmark's warehouse level 3 took 4.6 s instead of 2.7 s to write 90.1 MB
/// instead of 92.0 MB, and its compressors held half a MiB more a column.
const DEFAULT_ZSTD: &str = "zstd(1)";

/// A column's dictionary page may grow to this before the writer gives up on dictionary
/// encoding for it (in that row group). Parquet's 1 MiB default keeps up to 128k distinct
/// values per row group in a hash table, which made dictionary lookups the largest cost of
/// writing columns such as e-mails or order ids; with a small page, columns of few
/// distinct values (countries, states) keep their dictionary and the others fall back to
/// plain pages, which zstd compresses as well (the benchmark's warehouse: 87 MB against
/// 117 MB with the default).
const DICTIONARY_PAGE_BYTES: usize = 16 << 10;

/// What an existing target becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileMode {
    /// The target (or each partition written) is replaced.
    Replace,
    /// New files are added beside the old ones.
    Append,
}

/// The `parquet` sink.
#[derive(Debug)]
pub struct ParquetSink {
    path: String,
    partition_by: Vec<String>,
    compression: String,
    mode: FileMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParquetSpec {
    path: String,
    partition_by: Option<Vec<String>>,
    compression: Option<String>,
    mode: Option<FileMode>,
}

impl ParquetSink {
    /// A sink for other kinds to write with: `path` replaced whole, zstd.
    pub fn replacing(path: String) -> ParquetSink {
        ParquetSink {
            path,
            partition_by: Vec::new(),
            compression: DEFAULT_ZSTD.into(),
            mode: FileMode::Replace,
        }
    }
}

/// Checks a Parquet compression name: `zstd`, `zstd(1..22)`, `snappy`, `lz4`, `gzip`,
/// `gzip(0..9)`, `brotli`, `none`.
pub fn compression(text: &str) -> Result<String, String> {
    let t = text.trim().to_ascii_lowercase();
    let invalid = || {
        format!(
            "invalid compression `{text}`; use zstd, zstd(1..22), snappy, lz4, gzip, gzip(0..9), brotli or none"
        )
    };
    let (name, level) = match t.split_once('(') {
        Some((n, rest)) => {
            let level = rest.strip_suffix(')').ok_or_else(invalid)?;
            (
                n.trim().to_string(),
                Some(level.trim().parse::<u32>().map_err(|_| invalid())?),
            )
        }
        None => (t.clone(), None),
    };
    Ok(match (name.as_str(), level) {
        ("zstd", None) => DEFAULT_ZSTD.into(),
        ("zstd", Some(l)) if (1..=22).contains(&l) => format!("zstd({l})"),
        ("gzip", None) => "gzip(6)".into(),
        ("gzip", Some(l)) if l <= 9 => format!("gzip({l})"),
        ("brotli", None) => "brotli(4)".into(),
        ("snappy", None) | ("lz4", None) => name,
        ("none" | "uncompressed", None) => "uncompressed".into(),
        _ => return Err(invalid()),
    })
}

/// Whether a compression (as [`compression`] returns it) keeps a large state per column:
/// zstd from level 3 up, brotli, gzip.
fn heavy_compressor(compression: &str) -> bool {
    match compression.strip_prefix("zstd(") {
        Some(level) => level.trim_end_matches(')').parse::<u32>().unwrap_or(3) >= 3,
        None => compression.starts_with("brotli") || compression.starts_with("gzip"),
    }
}

/// Builds from `path`, `partition_by`, `compression`, `mode`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn Sink>, SpecError> {
    let spec: ParquetSpec = cx.decode(node)?;
    let partition_by = spec.partition_by.unwrap_or_default();
    if spec.path.ends_with(".parquet") && !partition_by.is_empty() {
        return Err(cx.error(
            node,
            "`partition_by` writes folders; give `path` as a folder, not a .parquet file",
        ));
    }
    let compression = compression(spec.compression.as_deref().unwrap_or("zstd"))
        .map_err(|e| cx.error(node, e))?;
    Ok(Arc::new(ParquetSink {
        path: spec.path,
        partition_by,
        compression,
        mode: spec.mode.unwrap_or(FileMode::Replace),
    }))
}

/// The folders `depth` levels below `root` (the leaf partitions of a hive layout).
fn leaves(root: &Path, depth: usize) -> Vec<PathBuf> {
    if depth == 0 {
        return vec![root.to_path_buf()];
    }
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.filter_map(|e| e.ok()) {
            if e.path().is_dir() {
                out.extend(leaves(&e.path(), depth - 1));
            }
        }
    }
    out
}

/// Moves the files of `from` into `to` (created if needed).
fn move_files(from: &Path, to: &Path) -> Result<(), DataError> {
    std::fs::create_dir_all(to)
        .map_err(|e| DataError::io(format!("cannot create {}", to.display()), e))?;
    let rd = std::fs::read_dir(from)
        .map_err(|e| DataError::io(format!("cannot read {}", from.display()), e))?;
    for e in rd.filter_map(|e| e.ok()) {
        let target = to.join(e.file_name());
        std::fs::rename(e.path(), &target)
            .map_err(|err| DataError::io(format!("cannot move into {}", target.display()), err))?;
    }
    Ok(())
}

#[async_trait]
impl Sink for ParquetSink {
    fn describe(&self) -> String {
        if self.partition_by.is_empty() {
            format!("parquet {}", self.path)
        } else {
            format!("parquet {} by {}", self.path, self.partition_by.join(", "))
        }
    }

    async fn write(&self, cx: &SinkContext<'_>, inputs: Vec<Input>) -> Result<Written, DataError> {
        let input = single(inputs, "parquet")?;
        let target = cx.path(&self.path)?;
        let single_file = self.path.ends_with(".parquet");
        let schema = input.frame.schema().clone();
        for p in &self.partition_by {
            if schema.field_with_unqualified_name(p).is_err() {
                return Err(DataError::Invalid(format!(
                    "`partition_by` column `{p}` is not in `{}`; its columns: {}",
                    input.name,
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| DataError::io(format!("cannot create {}", parent.display()), e))?;
        }
        // Removed however the load ends; on success its contents were renamed away.
        let staging_dir = Scratch::new(temp_beside(&target, "staging"));
        let staging = staging_dir.path();
        let staging_file = Scratch::new(PathBuf::from(format!("{}.parquet", staging.display())));
        let mut opts = crate::data::dataset::writer_options(&input.frame, &self.compression);
        opts.global.dictionary_page_size_limit = DICTIONARY_PAGE_BYTES;
        if !self.partition_by.is_empty() {
            // Many partitions' files are open at once, each holding its row group in
            // progress: row groups capped in bytes keep that to a few MiB a file.
            opts.global.max_row_group_bytes =
                datafusion::config::MaxRowGroupBytes::try_new(PARTITION_ROW_GROUP_BYTES).ok();
            let rows = self
                .write_partitioned(cx, input.frame, staging, &opts)
                .await?;
            return self.finish_folder(staging, &target, rows, schema.inner().clone());
        }
        let write_opts = DataFrameWriteOptions::new().with_single_file_output(single_file);
        let dest = if single_file {
            staging_file.path().display().to_string()
        } else {
            format!("{}/", staging.display())
        };
        let batches = input
            .frame
            .write_parquet(&dest, write_opts, Some(opts))
            .await
            .map_err(|e| DataError::from_datafusion(format!("writing {}", target.display()), e))?;
        let rows = count_rows(&batches);
        if single_file {
            let file = staging_file.path();
            if !file.exists() {
                // No rows: still leave a file with the columns.
                write_empty(staging, schema.inner().clone())?;
                std::fs::rename(staging.join("empty.parquet"), file)
                    .map_err(|e| DataError::io("writing an empty file", e))?;
            }
            let bytes = size_of(file);
            std::fs::rename(file, &target).map_err(|e| {
                DataError::io(format!("cannot rename into {}", target.display()), e)
            })?;
            return Ok(Written { rows, bytes });
        }
        self.finish_folder(staging, &target, rows, schema.inner().clone())
    }
}

impl ParquetSink {
    /// Writes `frame` into `staging` partitioned by `partition_by`.
    async fn write_partitioned(
        &self,
        cx: &SinkContext<'_>,
        frame: datafusion::prelude::DataFrame,
        staging: &Path,
        opts: &datafusion::config::TableParquetOptions,
    ) -> Result<u64, DataError> {
        // DataFusion's conversion wants the Arrow schema among the options' metadata unless
        // told to skip it; the Arrow writer embeds it in every file itself.
        let mut opts = opts.clone();
        opts.global.skip_arrow_metadata = true;
        let props = datafusion::parquet::file::properties::WriterPropertiesBuilder::try_from(&opts)
            .map_err(|e| DataError::from_datafusion("the Parquet settings", e))?
            .build();
        let data = &cx.task.data;
        let writers = data.max_memory as usize / crate::data::memory::WRITER_SHARE;
        let threads = data.threads.max(1);
        // The writers' share of the budget: rows waiting to be encoded (a few MiB a stream:
        // more did not make it faster) and open files. An open file holds its row group in
        // progress (up to its cap) and, per column, a compressor's state and a page being
        // filled: half a MiB a column (a whole MiB with zstd levels from 3 up), as
        // measured on the benchmark's warehouse. Open files get half the writers' share:
        // the rest is for the rows being read, and partitions past that are spilled to disk
        // and encoded at the end, which cost little (2.8 s instead of 2.7 s for the
        // benchmark's 90 days when half of them were).
        let buffer_bytes = (writers / 8 / threads).clamp(2 << 20, 8 << 20);
        let columns = frame
            .schema()
            .fields()
            .len()
            .saturating_sub(self.partition_by.len());
        let per_column: usize = if heavy_compressor(&self.compression) {
            1 << 20
        } else {
            512 << 10
        };
        let per_file = PARTITION_ROW_GROUP_BYTES + columns * per_column;
        let max_open =
            ((writers / 2).saturating_sub(buffer_bytes * threads) / per_file.max(1)).max(threads);
        let options = partitioned::Options {
            partition_by: self.partition_by.clone(),
            props,
            threads,
            buffer_bytes,
            max_open,
            // Apart from the files of earlier loads (`mode: append` puts them side by side).
            write_id: crate::data::dataset::unique_suffix(),
        };
        let done = partitioned::write(frame, staging, options).await?;
        cx.task.log.note(&format!(
            "partitioned write: {} rows into {} partitions, at most {max_open} files open at once; {} partitions spilled first ({} MiB)",
            done.rows,
            done.partitions,
            done.spilled,
            done.spilled_bytes >> 20
        ));
        Ok(done.rows)
    }

    /// Moves the folder a write left in `staging` into `target` as the mode says (an
    /// unpartitioned replace with no rows leaves one empty file with the columns).
    fn finish_folder(
        &self,
        staging: &Path,
        target: &Path,
        rows: u64,
        schema: datafusion::arrow::datatypes::SchemaRef,
    ) -> Result<Written, DataError> {
        if !staging.exists() {
            if self.partition_by.is_empty() && self.mode == FileMode::Replace {
                write_empty(staging, schema)?;
            } else {
                return Ok(Written { rows, bytes: 0 }); // nothing to add
            }
        }
        let bytes = size_of(staging);
        for leaf in leaves(staging, self.partition_by.len()) {
            let rel = leaf.strip_prefix(staging).unwrap_or(Path::new(""));
            let dest = target.join(rel);
            match self.mode {
                FileMode::Replace => replace_dir(&leaf, &dest)?,
                FileMode::Append => move_files(&leaf, &dest)?,
            }
        }
        Ok(Written { rows, bytes })
    }
}

/// Writes one Parquet file with `schema` and no rows into `dir`.
fn write_empty(
    dir: &Path,
    schema: datafusion::arrow::datatypes::SchemaRef,
) -> Result<(), DataError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| DataError::io(format!("cannot create {}", dir.display()), e))?;
    let file = dir.join("empty.parquet");
    let f = std::fs::File::create(&file)
        .map_err(|e| DataError::io(format!("cannot create {}", file.display()), e))?;
    let w = datafusion::parquet::arrow::ArrowWriter::try_new(f, schema, None)
        .map_err(|e| DataError::io(format!("writing {}", file.display()), e))?;
    w.close()
        .map_err(|e| DataError::io(format!("writing {}", file.display()), e))?;
    Ok(())
}
