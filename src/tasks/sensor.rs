//! `sensor`: waits until a file or glob matches (seed 003's "when new data arrives"), looking
//! every `poke_interval`, and fails after `timeout`. The files found are its output
//! (`{"files": [...]}`, in the report and the API) and are named in its log. The path is
//! templated (`data/in/{{ ds }}/*.csv`) and relative to the folder tasks run in (the
//! project root for a project's pipelines).

use super::{BuildContext, TaskContext, TaskError, TaskKind, TaskOutput};
use crate::spec::duration::parse_duration;
use crate::spec::error::SpecError;
use crate::template::Escape;
use async_trait::async_trait;
use marked_yaml::Node;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// The `sensor` kind.
#[derive(Debug)]
pub struct SensorTask {
    path: String,
    poke_interval: Duration,
    timeout: Duration,
    min_files: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    path: String,
    poke_interval: Option<String>,
    timeout: Option<String>,
    min_files: Option<usize>,
}

/// Builds from `sensor: {path, poke_interval, timeout, min_files}` or `sensor: PATH`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn TaskKind>, SpecError> {
    let raw: Raw = match node.as_scalar() {
        Some(s) => Raw {
            path: s.as_str().to_string(),
            poke_interval: None,
            timeout: None,
            min_files: None,
        },
        None => cx.decode(node)?,
    };
    if raw.path.trim().is_empty() {
        return Err(cx.error(node, "`sensor` needs a `path` (a file or a glob)"));
    }
    let duration = |v: &Option<String>, default: Duration, what: &str| match v {
        None => Ok(default),
        Some(t) => parse_duration(t).map_err(|m| cx.error(node, format!("{what}: {m}"))),
    };
    let poke_interval = duration(&raw.poke_interval, Duration::from_secs(30), "poke_interval")?;
    if poke_interval < Duration::from_millis(100) {
        return Err(cx.error(node, "poke_interval: at least 100ms"));
    }
    Ok(Arc::new(SensorTask {
        path: raw.path,
        poke_interval,
        timeout: duration(&raw.timeout, Duration::from_secs(24 * 3600), "timeout")?,
        min_files: raw.min_files.unwrap_or(1).max(1),
    }))
}

fn matches(pattern: &str) -> Result<Vec<String>, TaskError> {
    let paths = glob::glob(pattern)
        .map_err(|e| TaskError::Invalid(format!("invalid glob `{pattern}`: {e}")))?;
    let mut out: Vec<String> = paths
        .filter_map(|p| p.ok())
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    out.sort();
    Ok(out)
}

#[async_trait]
impl TaskKind for SensorTask {
    fn describe(&self) -> String {
        format!("sensor: wait for {}", self.path)
    }

    async fn run(&self, ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
        let rendered = ctx.render(&self.path, Escape::Plain)?;
        let pattern = if std::path::Path::new(&rendered).is_absolute() {
            rendered.clone()
        } else {
            ctx.work_dir.join(&rendered).display().to_string()
        };
        ctx.log.note(&format!(
            "waiting for {} file(s) matching {pattern} (every {}, at most {})",
            self.min_files,
            humantime::format_duration(self.poke_interval),
            humantime::format_duration(self.timeout)
        ));
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let found = matches(&pattern)?;
            if found.len() >= self.min_files {
                for f in &found {
                    ctx.log.note(&format!("found {f}"));
                }
                return Ok(TaskOutput {
                    value: serde_json::json!({ "files": found }),
                    ..Default::default()
                });
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(TaskError::Failed(format!(
                    "sensor timed out after {}: {} file(s) match `{rendered}`, {} wanted",
                    humantime::format_duration(self.timeout),
                    found.len(),
                    self.min_files
                )));
            }
            let wait = self.poke_interval.min(deadline - now);
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(TaskError::Cancelled),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
