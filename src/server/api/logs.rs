//! Task logs: a byte range of one attempt's log as JSON, or the log followed live as
//! server-sent events until the attempt ends.
//!
//! The file read is always the one the store names for an attempt of an existing run and
//! task, and it must lie inside the project's log folder: nothing a caller writes in the
//! path or query reaches the file system.

use super::{json, ApiError, ApiPath, ApiQuery, AppState, Viewer};
use crate::state::AttemptState;
use crate::store::AttemptRecord;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

/// Default and largest byte count of one read.
const DEFAULT_LIMIT: u64 = 256 * 1024;
const MAX_LIMIT: u64 = 4 * 1024 * 1024;
/// How often a followed log is looked at.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// How often a followed log written on another machine is fetched again (its writer
/// uploads it every 2 s).
const REMOTE_LOG_EVERY: Duration = Duration::from_secs(2);

/// Which part of which attempt's log.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Attempt number (default: the latest).
    pub attempt: Option<u32>,
    /// First byte; negative counts from the end (`-4096`: the last 4 KiB).
    pub offset: Option<i64>,
    /// Bytes to read, at most 4 MiB (default 256 KiB).
    pub limit: Option<u64>,
    /// Stream the log as server-sent events (`log` events with `{offset, next_offset, text}`
    /// (byte offsets, to resume from), then one
    /// `end` event with the attempt's state) until the attempt ends. A task of a running
    /// run that has not started yet is waited for, up to a minute.
    #[serde(default)]
    pub follow: bool,
}

/// A piece of a log.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogChunk {
    /// Run id.
    pub run_id: String,
    /// Task id.
    pub task_id: String,
    /// Attempt number.
    pub attempt: u32,
    /// The attempt's state.
    pub state: AttemptState,
    /// Where this text starts.
    pub offset: u64,
    /// Where the next read should start.
    pub next_offset: u64,
    /// The log's size now.
    pub size: u64,
    /// True when the attempt has ended and everything was read.
    pub complete: bool,
    /// The text (invalid UTF-8 replaced).
    pub text: String,
}

/// The data of one followed-log event: a `log` event has `offset`, `next_offset` and
/// `text`; the last, `end`, has `state` and `size`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogEvent {
    /// Where this text starts (bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Where the next text starts: pass it as `offset` to resume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u64>,
    /// The text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `end` only: the attempt's final state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// `end` only: the log's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

async fn find_attempt(
    state: &AppState,
    run_id: &str,
    task_id: &str,
    number: Option<u32>,
) -> Result<(AttemptRecord, PathBuf), ApiError> {
    let store = &state.services().store;
    if store.get_run(run_id).await?.is_none() {
        return Err(ApiError::not_found(format!("no run `{run_id}`")));
    }
    let attempts: Vec<AttemptRecord> = store
        .attempts(run_id)
        .await?
        .into_iter()
        .filter(|a| a.task_id == task_id && a.state != AttemptState::Queued)
        .collect();
    let attempt = match number {
        Some(n) => attempts.into_iter().find(|a| a.number == n),
        None => attempts.into_iter().max_by_key(|a| a.number),
    }
    .ok_or_else(|| {
        ApiError::not_found(format!(
            "no started attempt{} of task `{task_id}` in run `{run_id}`",
            number.map(|n| format!(" {n}")).unwrap_or_default()
        ))
    })?;
    let project = &state.services().project;
    let path = state.services().attempt_log_local(&attempt).await;
    let logs = std::fs::canonicalize(project.logs_dir()).unwrap_or_else(|_| project.logs_dir());
    match std::fs::canonicalize(&path) {
        Ok(real) if real.starts_with(&logs) => Ok((attempt, real)),
        Ok(_) => Err(ApiError::not_found(
            "this log is outside the project's log folder",
        )),
        Err(_) => Err(ApiError::not_found(format!(
            "attempt {} of `{task_id}` has no log file",
            attempt.number
        ))),
    }
}

/// How long a follower waits for a task of a running run to start.
const START_WAIT: Duration = Duration::from_secs(60);

/// Like [`find_attempt`], but a task of a running run that has not started yet is waited
/// for (up to a minute), so that a client can follow a task before it starts.
async fn wait_for_attempt(
    state: &AppState,
    run_id: &str,
    task_id: &str,
    number: Option<u32>,
) -> Result<(AttemptRecord, PathBuf), ApiError> {
    let deadline = tokio::time::Instant::now() + START_WAIT;
    loop {
        let err = match find_attempt(state, run_id, task_id, number).await {
            Ok(found) => return Ok(found),
            Err(e) => e,
        };
        let store = &state.services().store;
        let waiting = match store.get_run(run_id).await? {
            Some(run) if !run.state.is_final() => store
                .task_runs(run_id)
                .await?
                .iter()
                .any(|t| t.task_id == task_id && !t.state.is_final()),
            _ => false,
        };
        if !waiting || tokio::time::Instant::now() >= deadline {
            return Err(err);
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

/// Reads up to `limit` bytes from `offset`, backing off a UTF-8 sequence cut at the end.
fn read_range(path: &PathBuf, offset: u64, limit: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let start = offset.min(size);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(limit).read_to_end(&mut buf)?;
    if let Err(e) = std::str::from_utf8(&buf) {
        if e.error_len().is_none() && buf.len() as u64 == limit {
            buf.truncate(e.valid_up_to());
        }
    }
    Ok((buf, size))
}

/// One attempt's log: a byte range as JSON, or followed live (`follow=true`).
#[utoipa::path(get, path = "/api/v1/runs/{id}/tasks/{task}/logs", tag = "runs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id"), ("task" = String, Path, description = "Task id"), LogQuery),
    responses((status = 200, description = "A piece of the log; with follow=true, an event stream of `log` events ({offset, text}) and one `end` event",
            content((LogChunk = "application/json"), (LogEvent = "text/event-stream"))),
        (status = 404, body = super::ErrorBody)))]
pub async fn read(
    State(state): State<AppState>,
    _: Viewer,
    ApiPath((run_id, task_id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit: between 1 and {MAX_LIMIT} bytes"
        )));
    }
    let (attempt, path) = if q.follow {
        wait_for_attempt(&state, &run_id, &task_id, q.attempt).await?
    } else {
        find_attempt(&state, &run_id, &task_id, q.attempt).await?
    };
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let offset = match q.offset.unwrap_or(0) {
        o if o < 0 => size.saturating_sub(o.unsigned_abs()),
        o => o as u64,
    };
    if q.follow {
        let cursor = Cursor {
            state,
            run_id,
            task_id,
            number: attempt.number,
            path,
            offset,
            done: false,
            pulled: None,
        };
        return Ok(follow(cursor).into_response());
    }
    let (buf, size) = read_range(&path, offset, limit)
        .map_err(|e| ApiError::internal(format!("reading {}: {e}", path.display())))?;
    let start = offset.min(size);
    let next = start + buf.len() as u64;
    let body = LogChunk {
        run_id,
        task_id,
        attempt: attempt.number,
        state: attempt.state,
        offset: start,
        next_offset: next,
        size,
        complete: attempt.state.is_final() && next >= size,
        text: String::from_utf8_lossy(&buf).into_owned(),
    };
    Ok(json(&state, StatusCode::OK, &body))
}

/// Where a followed log is.
struct Cursor {
    state: AppState,
    run_id: String,
    task_id: String,
    number: u32,
    path: PathBuf,
    offset: u64,
    done: bool,
    /// When the log was last fetched from shared storage.
    pulled: Option<tokio::time::Instant>,
}

impl Cursor {
    /// The text written since the last event, as a `log` event.
    fn next_chunk(&mut self) -> Option<Event> {
        let (buf, _) = read_range(&self.path, self.offset, MAX_LIMIT).ok()?;
        if buf.is_empty() {
            return None;
        }
        let data = LogEvent {
            offset: Some(self.offset),
            next_offset: Some(self.offset + buf.len() as u64),
            text: Some(String::from_utf8_lossy(&buf).into_owned()),
            state: None,
            size: None,
        };
        self.offset += buf.len() as u64;
        Some(
            Event::default()
                .event("log")
                .data(serde_json::to_string(&data).unwrap_or_default()),
        )
    }
}

fn follow(
    start: Cursor,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let stream = futures_util::stream::unfold(start, |mut c| async move {
        if c.done {
            return None;
        }
        loop {
            if let Some(event) = c.next_chunk() {
                return Some((Ok(event), c));
            }
            // Nothing new: the store is asked only now whether the attempt has ended. The
            // file is read once more after that answer, so that text written just before the
            // end is always sent before `end`.
            let attempt = c
                .state
                .services()
                .store
                .attempts(&c.run_id)
                .await
                .ok()
                .and_then(|all| {
                    all.into_iter()
                        .find(|a| a.task_id == c.task_id && a.number == c.number)
                });
            if let Some(a) = &attempt {
                // A log written on another machine: its latest copy from shared storage, as
                // often as the writer uploads it (and once more at the end).
                let due = c.pulled.is_none_or(|t| t.elapsed() >= REMOTE_LOG_EVERY);
                if due || a.state.is_final() {
                    c.state.services().attempt_log_local(a).await;
                    c.pulled = Some(tokio::time::Instant::now());
                }
            }
            match attempt.map(|a| a.state) {
                Some(s) if !s.is_final() => tokio::time::sleep(FOLLOW_POLL).await,
                other => {
                    if let Some(event) = c.next_chunk() {
                        return Some((Ok(event), c));
                    }
                    c.done = true;
                    let data = LogEvent {
                        state: Some(other.map(|s| s.as_str()).unwrap_or("unknown").into()),
                        size: Some(c.offset),
                        offset: None,
                        next_offset: None,
                        text: None,
                    };
                    let event = Event::default()
                        .event("end")
                        .data(serde_json::to_string(&data).unwrap_or_default());
                    return Some((Ok(event), c));
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
