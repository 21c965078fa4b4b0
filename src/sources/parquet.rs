//! `source: parquet`: Parquet files through DataFusion's reader, which streams row groups,
//! reads only the columns the query needs and runs files in parallel. `path` is a file, a
//! glob, or a folder; a folder is read whole, down its hive partition folders
//! (`day=2024-01-05/`), whose keys become text columns (declare their types in the
//! extract's `columns`, such as `day: date`). `select` keeps only some columns, so the
//! others are never read from disk.
//!
//! Owns finding the files and the partition keys; not the declared types (the extract casts
//! them). Files of one read must have compatible schemas (DataFusion merges them); a
//! folder's files must end in `.parquet`, and files in other subfolders than `key=value`
//! ones are not read.

use super::{total_size, Source, SourceContext};
use crate::data::DataError;
use crate::spec::error::SpecError;
use crate::tasks::BuildContext;
use crate::template::Escape;
use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{DataFrame, ParquetReadOptions};
use marked_yaml::Node;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The `parquet` source.
#[derive(Debug)]
pub struct ParquetSource {
    path: String,
    select: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParquetSpec {
    path: String,
    select: Option<Vec<String>>,
}

/// Builds from `path`, `select`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn Source>, SpecError> {
    let spec: ParquetSpec = cx.decode(node)?;
    let select = spec.select.unwrap_or_default();
    if let Some(dup) = select
        .iter()
        .enumerate()
        .find(|(i, c)| select[..*i].contains(c))
        .map(|(_, c)| c)
    {
        return Err(cx.error(node, format!("`select` names `{dup}` twice")));
    }
    Ok(Arc::new(ParquetSource {
        path: spec.path,
        select,
    }))
}

/// The `.parquet` files below `dir`, and the hive keys of the first one's folders.
fn scan_folder(dir: &Path) -> (Vec<PathBuf>, Vec<String>) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            if p.is_dir() {
                if name.contains('=') {
                    walk(&p, out);
                }
            } else if name.ends_with(".parquet") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    let keys = files
        .first()
        .and_then(|f| f.strip_prefix(dir).ok())
        .map(|rel| {
            rel.parent()
                .map(|p| {
                    p.components()
                        .filter_map(|c| {
                            c.as_os_str()
                                .to_string_lossy()
                                .split_once('=')
                                .map(|(k, _)| k.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
        .unwrap_or_default();
    (files, keys)
}

#[async_trait]
impl Source for ParquetSource {
    fn describe(&self) -> String {
        format!("parquet {}", self.path)
    }

    async fn read(&self, cx: &SourceContext<'_>) -> Result<DataFrame, DataError> {
        let rendered = cx.task.render_data(&self.path, Escape::Plain)?;
        let full = if Path::new(&rendered).is_absolute() {
            PathBuf::from(&rendered)
        } else {
            cx.task.work_dir.join(&rendered)
        };
        let what = || format!("reading {}", self.path);
        let df = if full.is_dir() {
            let (files, keys) = scan_folder(&full);
            if files.is_empty() {
                return Err(DataError::Io(format!(
                    "no .parquet file in {} (nor in its key=value partition folders)",
                    full.display()
                )));
            }
            cx.input_size(total_size(&files));
            let options = ParquetReadOptions::default()
                .table_partition_cols(keys.into_iter().map(|k| (k, DataType::Utf8)).collect());
            cx.session
                .read_parquet(format!("{}/", full.display()), options)
                .await
                .map_err(|e| DataError::from_datafusion(what(), e))?
        } else {
            let files = cx.files(&self.path)?;
            cx.input_size(total_size(&files));
            let paths: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            let options = ParquetReadOptions {
                file_extension: "",
                ..Default::default()
            };
            cx.session
                .read_parquet(paths, options)
                .await
                .map_err(|e| DataError::from_datafusion(what(), e))?
        };
        if self.select.is_empty() {
            return Ok(df);
        }
        let present: Vec<String> = df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        for c in &self.select {
            if !present.contains(c) {
                return Err(DataError::Invalid(format!(
                    "`select` names `{c}`, which is not a column of {}{}; columns: {}",
                    self.path,
                    crate::spec::error::suggestion(c, present.iter().map(|s| s.as_str())),
                    present.join(", ")
                )));
            }
        }
        let cols: Vec<&str> = self.select.iter().map(|s| s.as_str()).collect();
        df.select_columns(&cols)
            .map_err(|e| DataError::from_datafusion(what(), e))
    }
}
