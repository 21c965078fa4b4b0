//! `sink: csv`: one CSV file with a header, written under a temporary name and renamed, so a
//! reader never sees half a file. Options: `path` (templated), `delimiter`, `header`.

use super::{single, Input, Sink, SinkContext};
use crate::data::dataset::{count_rows, size_of, temp_beside, Scratch, Written};
use crate::data::DataError;
use crate::spec::error::SpecError;
use crate::tasks::BuildContext;
use async_trait::async_trait;
use datafusion::config::CsvOptions;
use datafusion::dataframe::DataFrameWriteOptions;
use marked_yaml::Node;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;

/// The `csv` sink.
#[derive(Debug)]
pub struct CsvSink {
    path: String,
    delimiter: u8,
    header: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CsvSpec {
    path: String,
    delimiter: Option<String>,
    header: Option<bool>,
}

/// Builds from `path`, `delimiter`, `header`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn Sink>, SpecError> {
    let spec: CsvSpec = cx.decode(node)?;
    let delimiter = match spec.delimiter.as_deref() {
        None => b',',
        Some("\\t") | Some("tab") => b'\t',
        Some(d) if d.len() == 1 && d.is_ascii() => d.as_bytes()[0],
        Some(d) => {
            return Err(cx.error(
                node,
                format!("`delimiter` must be one ASCII character, not `{d}`"),
            ))
        }
    };
    Ok(Arc::new(CsvSink {
        path: spec.path,
        delimiter,
        header: spec.header.unwrap_or(true),
    }))
}

#[async_trait]
impl Sink for CsvSink {
    fn describe(&self) -> String {
        format!("csv {}", self.path)
    }

    async fn write(&self, cx: &SinkContext<'_>, inputs: Vec<Input>) -> Result<Written, DataError> {
        let input = single(inputs, "csv")?;
        let target = cx.path(&self.path)?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| DataError::io(format!("cannot create {}", parent.display()), e))?;
        }
        let tmp = Scratch::new(PathBuf::from(format!(
            "{}.csv",
            temp_beside(&target, "tmp").display()
        )));
        let tmp_file = tmp.path().display().to_string();
        let opts = CsvOptions::default()
            .with_delimiter(self.delimiter)
            .with_has_header(self.header);
        let batches = input
            .frame
            .write_csv(
                &tmp_file,
                DataFrameWriteOptions::new().with_single_file_output(true),
                Some(opts),
            )
            .await
            .map_err(|e| DataError::from_datafusion(format!("writing {}", target.display()), e))?;
        if !tmp.path().exists() {
            std::fs::write(tmp.path(), b"")
                .map_err(|e| DataError::io(format!("writing {}", target.display()), e))?;
        }
        let bytes = size_of(tmp.path());
        std::fs::rename(tmp.path(), &target)
            .map_err(|e| DataError::io(format!("cannot rename into {}", target.display()), e))?;
        Ok(Written {
            rows: count_rows(&batches),
            bytes,
        })
    }
}
