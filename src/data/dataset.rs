//! Datasets: the output of an `extract`, `sql` (or `validate`) task, materialised as Arrow
//! IPC files ([`super::files`]) in a folder named by the task id under the run's data folder
//! (`.cauce/data/RUN/TASK/`); a task's named extra outputs are folders `TASK@NAME`. A dataset is written under a temporary name and renamed when
//! complete, so a folder with the task's name is always a whole dataset; a retried run finds
//! the datasets of tasks that succeeded where they were and reads them again. Old runs'
//! folders are removed by [`prune`] (the `data.retention` setting).

use super::DataError;
use datafusion::arrow::array::{Array, UInt64Array};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::config::TableParquetOptions;
use datafusion::prelude::{DataFrame, SessionContext};
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// What a write produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Rows written.
    pub rows: u64,
    /// Bytes on disk.
    pub bytes: u64,
}

/// The folder of task `task_id`'s dataset in a run's data folder.
pub fn dir(run_data_dir: &Path, task_id: &str) -> PathBuf {
    run_data_dir.join(task_id)
}

/// The name of a task's named extra output (`check@quarantine`, `rec@only_left`): a
/// dataset like the main one, in a folder of that name. `@` cannot appear in task ids, so
/// the names never clash with a task's.
pub fn output_name(task_id: &str, output: &str) -> String {
    format!("{task_id}@{output}")
}

/// The folder of task `task_id`'s named output `output`.
pub fn output_dir(run_data_dir: &Path, task_id: &str, output: &str) -> PathBuf {
    dir(run_data_dir, &output_name(task_id, output))
}

/// The task a dataset name belongs to: `check` for `check@quarantine` and for `check`.
pub fn owner(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

/// The named outputs task `task_id` has in the run (`check@quarantine`...), sorted.
pub fn outputs(run_data_dir: &Path, task_id: &str) -> Vec<String> {
    let prefix = format!("{task_id}@");
    let mut v: Vec<String> = std::fs::read_dir(run_data_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Whether task `task_id` of the run has a complete dataset.
pub fn exists(run_data_dir: &Path, task_id: &str) -> bool {
    dir(run_data_dir, task_id).is_dir()
}

/// Rows per Parquet row group in the files cauce writes: small enough that the writer's
/// buffers stay well inside `data.max_memory`, large enough for fast scans.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// The Parquet options for writing `df`: the session's (row groups sized for the memory
/// budget, see [`super::session`]) with `compression`.
pub fn writer_options(df: &DataFrame, compression: &str) -> TableParquetOptions {
    let mut o = TableParquetOptions {
        global: df
            .task_ctx()
            .session_config()
            .options()
            .execution
            .parquet
            .clone(),
        ..Default::default()
    };
    o.global.compression = Some(compression.to_string());
    o
}

/// Sums the `count` column DataFusion's writers answer with.
pub fn count_rows(batches: &[RecordBatch]) -> u64 {
    batches
        .iter()
        .filter_map(|b| b.column_by_name("count"))
        .filter_map(|c| c.as_any().downcast_ref::<UInt64Array>())
        .flat_map(|a| a.iter().flatten())
        .sum()
}

/// Total size of the files in a folder tree.
pub fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

/// Text unique to this process and moment: the process id and the time in nanoseconds.
pub fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// A name beside `target` for work in progress, unique to this process and moment.
pub fn temp_beside(target: &Path, tag: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{tag}-{name}-{}", unique_suffix()))
}

/// A temporary file or folder, removed when dropped: on success it has been renamed away
/// (and there is nothing left to remove); on failure, cancellation or a panic it goes.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// Guards `path`.
    pub fn new(path: PathBuf) -> Scratch {
        Scratch(path)
    }

    /// The guarded path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
        // A write interrupted mid-file leaves the object store's part beside it
        // (`NAME#1`); it goes too.
        let (Some(parent), Some(name)) = (self.0.parent(), self.0.file_name()) else {
            return;
        };
        let prefix = format!("{}#", name.to_string_lossy());
        if let Ok(rd) = std::fs::read_dir(parent) {
            for e in rd.filter_map(|e| e.ok()) {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Writes `df` as the dataset of `task_id`, replacing any earlier one whole.
pub async fn write(
    df: DataFrame,
    run_data_dir: &Path,
    task_id: &str,
) -> Result<Written, DataError> {
    let none = super::live::Streams::default();
    let (written, _) = write_streaming(
        df,
        run_data_dir,
        task_id,
        &none,
        &CancellationToken::new(),
        None,
    )
    .await?;
    Ok(written)
}

/// How [`write_streaming`] kept a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// As rows in files.
    Rows,
    /// As its query ([`super::view`]).
    View,
    /// As rows, although its consumer read it live: a view over it would read through
    /// more than [`super::view::MAX_DEPTH`] views, so the query ran again over its
    /// upstream datasets and wrote what it gave.
    RowsBelowDeepViews,
}

/// [`write`], handing the batches to `streams.out`'s consumer as they are written, and
/// putting the dataset in place only once every live input of `streams` succeeded (a
/// query can end before its input does, with a `LIMIT`). When that consumer is the only
/// task downstream and reads the batches live, nothing is about to read the dataset: it is
/// `view` if given (the rows are not written at all, see [`super::view`]), else written
/// around the page cache ([`super::uncached`]).
pub async fn write_streaming(
    df: DataFrame,
    run_data_dir: &Path,
    task_id: &str,
    streams: &super::live::Streams,
    cancel: &CancellationToken,
    view: Option<super::view::View>,
) -> Result<(Written, Kept), DataError> {
    let target = dir(run_data_dir, task_id);
    let guard = Scratch::new(temp_beside(&target, "tmp"));
    let tmp = guard.path();
    let df = super::types::normalize(df)?;
    let (df, read_live) = match &streams.out {
        Some(live) => {
            let df = live.tee(df).await?;
            let read =
                streams.sole_reader && live.uptake(cancel).await? == super::live::Uptake::Reading;
            (df, read)
        }
        None => (df, false),
    };
    let (rows, kept) = match view {
        Some(mut view) if read_live => {
            // The session's settings and memory budget without its tables, for running the
            // query again should the view be too deep.
            let (state, plan) = df.into_parts();
            let ctx = super::view::own_session(state.clone());
            view.rows = count(DataFrame::new(state, plan)).await?;
            // The upstream datasets are in place once their tasks succeeded.
            streams.upstream_done(cancel).await?;
            let below = super::view::depth_below(run_data_dir, &view.tables)?;
            if below < super::view::MAX_DEPTH {
                view.depth = Some(below + 1);
                view.save(tmp)?;
                (view.rows, Kept::View)
            } else {
                let again = super::view::rows(&ctx, run_data_dir, &view, &[]).await?;
                let rows = super::files::write(again, tmp, false).await?;
                (rows, Kept::RowsBelowDeepViews)
            }
        }
        _ => (super::files::write(df, tmp, !read_live).await?, Kept::Rows),
    };
    streams.upstream_done(cancel).await?;
    replace_dir(tmp, &target)?;
    let bytes = size_of(&target);
    Ok((Written { rows, bytes }, kept))
}

/// Runs `df` to its end, keeping nothing; returns its rows.
async fn count(df: DataFrame) -> Result<u64, DataError> {
    let mut stream = df
        .execute_stream()
        .await
        .map_err(|e| DataError::from_datafusion("computing the dataset's rows", e))?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch =
            batch.map_err(|e| DataError::from_datafusion("computing the dataset's rows", e))?;
        rows += batch.num_rows() as u64;
    }
    Ok(rows)
}

/// Puts the complete folder `tmp` where `target` is: the old one, if any, is moved aside
/// first and removed after, so `target` is always either the old or the new whole folder.
pub fn replace_dir(tmp: &Path, target: &Path) -> Result<(), DataError> {
    let old = temp_beside(target, "old");
    let had_old = target.exists();
    if had_old {
        std::fs::rename(target, &old)
            .map_err(|e| DataError::io(format!("cannot move {} aside", target.display()), e))?;
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| DataError::io(format!("cannot create {}", parent.display()), e))?;
    }
    if let Err(e) = std::fs::rename(tmp, target) {
        if had_old {
            let _ = std::fs::rename(&old, target);
        }
        return Err(DataError::io(
            format!("cannot rename into {}", target.display()),
            e,
        ));
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// Reads task `task_id`'s dataset of the run: its files, or its query run again when it is
/// a view ([`super::view`]).
pub async fn read(
    ctx: &SessionContext,
    run_data_dir: &Path,
    task_id: &str,
) -> Result<DataFrame, DataError> {
    read_at(ctx, run_data_dir, task_id, &[]).await
}

/// [`read`] of a dataset that the views of `readers` read through, outermost first.
pub(super) async fn read_at(
    ctx: &SessionContext,
    run_data_dir: &Path,
    task_id: &str,
    readers: &[String],
) -> Result<DataFrame, DataError> {
    let d = dir(run_data_dir, task_id);
    if !d.is_dir() {
        return Err(DataError::Invalid(format!(
            "task `{task_id}` has no dataset in this run (is it an extract, sql or validate task, and did it succeed?)"
        )));
    }
    if let Some(view) = super::view::View::load(&d)? {
        return super::view::read(ctx, run_data_dir, task_id, view, readers).await;
    }
    let table = super::files::DatasetTable::open(&d)?;
    ctx.read_table(std::sync::Arc::new(table))
        .map_err(|e| DataError::from_datafusion(format!("reading the dataset of `{task_id}`"), e))
}

/// Removes the data folders of runs last written more than `keep` ago under `data_root`,
/// except `current`'s (a retried old run keeps its own); returns how many it removed.
/// Folders of runs still going are recent, so they stay.
pub fn prune(data_root: &Path, keep: Duration, current: &str) -> usize {
    let Ok(rd) = std::fs::read_dir(data_root) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in rd.filter_map(|e| e.ok()) {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > keep);
        if old
            && entry.file_name() != current
            && entry.path().is_dir()
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}
