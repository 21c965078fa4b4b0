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
use crate::data::DataError;
use crate::spec::error::SpecError;
use crate::tasks::BuildContext;
use async_trait::async_trait;
use datafusion::dataframe::DataFrameWriteOptions;
use marked_yaml::Node;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The row group size (encoded bytes) of partitioned writes.
const PARTITION_ROW_GROUP_BYTES: usize = 1 << 20;

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
            compression: "zstd(3)".into(),
            mode: FileMode::Replace,
        }
    }
}

/// Checks a Parquet compression name: `zstd`, `zstd(1..22)`, `snappy`, `lz4`, `gzip`,
/// `gzip(0..9)`, `brotli`, `none`.
pub fn compression(text: &str) -> Result<String, String> {
    let t = text.trim().to_ascii_lowercase();
    let (name, level) = match t.split_once('(') {
        Some((n, rest)) => (n.to_string(), rest.strip_suffix(')').map(str::to_string)),
        None => (t.clone(), None),
    };
    let level: Option<u32> = match level {
        Some(l) => Some(
            l.trim()
                .parse()
                .map_err(|_| format!("invalid compression `{text}`"))?,
        ),
        None => None,
    };
    Ok(match (name.as_str(), level) {
        ("zstd", None) => "zstd(3)".into(),
        ("zstd", Some(l)) if (1..=22).contains(&l) => format!("zstd({l})"),
        ("gzip", None) => "gzip(6)".into(),
        ("gzip", Some(l)) if l <= 9 => format!("gzip({l})"),
        ("brotli", None) => "brotli(4)".into(),
        ("snappy", None) | ("lz4", None) => name,
        ("none" | "uncompressed", None) => "uncompressed".into(),
        _ => {
            return Err(format!(
                "invalid compression `{text}`; use zstd, zstd(1..22), snappy, lz4, gzip, gzip(0..9), brotli or none"
            ))
        }
    })
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
        if !self.partition_by.is_empty() {
            // Every partition's file is open at once, each holding its row group in progress:
            // small row groups keep that to about 2 MiB a partition.
            opts.global.max_row_group_bytes =
                datafusion::config::MaxRowGroupBytes::try_new(PARTITION_ROW_GROUP_BYTES).ok();
        }
        let write_opts = DataFrameWriteOptions::new()
            .with_single_file_output(single_file)
            .with_partition_by(self.partition_by.clone());
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
                crate::data::dataset::write_empty(staging, schema.inner().clone())?;
                std::fs::rename(staging.join("empty.parquet"), file)
                    .map_err(|e| DataError::io("writing an empty file", e))?;
            }
            let bytes = size_of(file);
            std::fs::rename(file, &target).map_err(|e| {
                DataError::io(format!("cannot rename into {}", target.display()), e)
            })?;
            return Ok(Written { rows, bytes });
        }
        if !staging.exists() {
            if self.partition_by.is_empty() && self.mode == FileMode::Replace {
                crate::data::dataset::write_empty(staging, schema.inner().clone())?;
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
