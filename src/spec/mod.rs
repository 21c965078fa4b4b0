//! What the user writes, validated: pipelines, tasks, params, workflows, retry policies.
//!
//! `parse` turns a YAML or JSON file (or a seed-001 JSON config, see `seed001`) into a
//! [`Pipeline`]; `check` runs the semantic checks that `cauce validate` reports all at once.
//! Nothing here runs anything: the engine executes a `Pipeline`, the store records it.

pub mod check;
pub mod duration;
pub mod error;
pub mod parse;
pub mod seed001;
pub mod size;

use crate::state::Trigger;
use crate::tasks::TaskKind;
use indexmap::IndexMap;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use error::{Location, SpecError, SpecErrors};
pub use parse::decode;

/// A validated pipeline: a DAG of tasks plus its settings.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The pipeline's name (the `name` key, or the file name without extension).
    pub name: String,
    /// The file it was read from.
    pub file: PathBuf,
    /// The directory tasks run in and relative paths resolve from.
    pub base_dir: PathBuf,
    /// The file's text as read, kept so a retried run uses the same definition.
    pub source: String,
    /// Free text.
    pub description: Option<String>,
    /// Cron expression (5 fields or `@daily`-style).
    pub schedule: Option<String>,
    /// IANA time zone of the schedule.
    pub timezone: Option<String>,
    /// Whether missed schedule intervals are run.
    pub catchup: bool,
    /// How many runs of this pipeline may be active at once.
    pub max_active_runs: Option<u32>,
    /// Parallel task slots for runs of this pipeline.
    pub max_workers: Option<usize>,
    /// How long after its scheduled time a run may take to succeed before `sla_miss`.
    pub sla: Option<Duration>,
    /// The first schedule interval (local time in `timezone`); with `catchup`, missed
    /// intervals from here on are run.
    pub start_date: Option<chrono::NaiveDateTime>,
    /// Which alert channels hear of which events.
    pub alerts: AlertRoutes,
    /// The token a webhook caller must present to trigger this pipeline (may be `${VAR}`);
    /// no token, no webhook.
    pub webhook_token: Option<String>,
    /// Declared parameters, with defaults.
    pub params: IndexMap<String, Param>,
    /// Named subsets of tasks.
    pub workflows: IndexMap<String, Workflow>,
    /// The tasks, in file order.
    pub tasks: IndexMap<String, Task>,
    /// Environment variables for every task.
    pub env: IndexMap<String, String>,
    /// Where the `tasks` key is (for errors about the whole DAG).
    pub tasks_location: Location,
    /// Where `schedule` and `timezone` are written.
    pub schedule_location: Location,
    /// Where `timezone` is written.
    pub timezone_location: Location,
}

/// A declared run parameter.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Param {
    /// Its name.
    pub name: String,
    /// Its type; values given on the command line or the API are checked against it.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// The value used when a run does not give one; `None` makes the param required.
    pub default: Option<serde_json::Value>,
    /// Free text.
    pub description: Option<String>,
    /// When not empty, the only values accepted.
    pub choices: Vec<String>,
}

/// The type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    /// Any text.
    String,
    /// A whole number.
    Integer,
    /// Any number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
}

impl ParamType {
    /// The names accepted in files.
    pub const NAMES: [&'static str; 5] = ["string", "integer", "number", "boolean", "date"];

    /// Parses a type name.
    pub fn parse(s: &str) -> Option<ParamType> {
        Some(match s {
            "string" | "str" => ParamType::String,
            "integer" | "int" => ParamType::Integer,
            "number" | "float" => ParamType::Number,
            "boolean" | "bool" => ParamType::Boolean,
            "date" => ParamType::Date,
            _ => return None,
        })
    }

    /// Converts a textual value into a typed JSON value, or says why it cannot.
    pub fn coerce(self, text: &str) -> Result<serde_json::Value, String> {
        use serde_json::Value;
        match self {
            ParamType::String => Ok(Value::String(text.to_string())),
            ParamType::Integer => text
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("`{}` is not an integer", shown(text))),
            ParamType::Number => text
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| format!("`{}` is not a number", shown(text))),
            ParamType::Boolean => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => Ok(Value::Bool(true)),
                "false" | "no" | "0" => Ok(Value::Bool(false)),
                _ => Err(format!(
                    "`{}` is not a boolean (true or false)",
                    shown(text)
                )),
            },
            ParamType::Date => chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
                .map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
                .map_err(|_| format!("`{}` is not a date (YYYY-MM-DD)", shown(text))),
        }
    }
}

impl Param {
    /// Checks and converts a value given for this param.
    pub fn accept(&self, text: &str) -> Result<serde_json::Value, String> {
        let v = self.kind.coerce(text)?;
        if !self.choices.is_empty() && !self.choices.iter().any(|c| c == text) {
            return Err(format!(
                "`{}` is not one of the allowed values: {}",
                shown(text),
                self.choices.join(", ")
            ));
        }
        Ok(v)
    }
}

/// A value as quoted back in an error message: long values are cut, so that a hostile or
/// mistaken 100 KB parameter does not flood the terminal.
fn shown(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text.to_string(),
    }
}

/// A named subset of tasks (seed 001's workflows).
#[derive(Debug, Clone, Serialize)]
pub struct Workflow {
    /// Display name.
    pub title: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// The task ids it selects.
    pub tasks: Vec<String>,
    /// Where it is defined.
    #[serde(skip)]
    pub location: Location,
}

/// Alert channel names per event, each with where it is written.
#[derive(Debug, Clone, Default)]
pub struct AlertRoutes {
    /// A task failed for good.
    pub failure: Vec<(String, Location)>,
    /// An attempt failed and will be retried.
    pub retry: Vec<(String, Location)>,
    /// The run succeeded.
    pub success: Vec<(String, Location)>,
    /// A scheduled run did not succeed within the pipeline's `sla`.
    pub sla_miss: Vec<(String, Location)>,
}

impl AlertRoutes {
    /// Every (event, channel, location) named.
    pub fn all(&self) -> impl Iterator<Item = (&'static str, &str, &Location)> {
        [
            ("failure", &self.failure),
            ("retry", &self.retry),
            ("success", &self.success),
            ("sla_miss", &self.sla_miss),
        ]
        .into_iter()
        .flat_map(|(event, v)| v.iter().map(move |(c, l)| (event, c.as_str(), l)))
    }

    /// The channels for an event.
    pub fn channels(&self, event: &str) -> Vec<String> {
        let v = match event {
            "failure" => &self.failure,
            "retry" => &self.retry,
            "success" => &self.success,
            "sla_miss" => &self.sla_miss,
            _ => return vec![],
        };
        v.iter().map(|(c, _)| c.clone()).collect()
    }
}

/// How failed attempts are retried.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Extra attempts after the first one fails.
    pub retries: u32,
    /// Delay before the first retry.
    #[serde(with = "duration_secs")]
    pub delay: Duration,
    /// How the delay grows.
    pub backoff: Backoff,
    /// Upper bound of the delay.
    #[serde(with = "duration_secs")]
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 0,
            delay: Duration::from_secs(10),
            backoff: Backoff::Fixed,
            max_delay: Duration::from_secs(3600),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `n` (1-based): exponential doubles each time, capped by
    /// `max_delay`, with up to 10% random jitter so that many retries do not fire together.
    pub fn delay_for(&self, n: u32) -> Duration {
        let base = match self.backoff {
            Backoff::Fixed => self.delay,
            Backoff::Exponential => {
                let factor = 2u32.saturating_pow(n.saturating_sub(1).min(30));
                self.delay.saturating_mul(factor)
            }
        };
        let capped = base.min(self.max_delay);
        if capped.is_zero() {
            return capped;
        }
        let jitter = capped.mul_f64(rand::random::<f64>() * 0.1);
        (capped + jitter).min(self.max_delay.max(capped))
    }
}

/// How retry delays grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// The same delay every time.
    Fixed,
    /// Doubling delays, capped by `max_retry_delay`.
    Exponential,
}

/// One task of a pipeline.
#[derive(Debug, Clone)]
pub struct Task {
    /// Its id, unique in the pipeline.
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// The kind key (`run`, `python`, ...).
    pub kind: &'static str,
    /// The built task kind that runs it.
    pub action: Arc<dyn TaskKind>,
    /// Upstream task ids.
    pub depends_on: Vec<String>,
    /// When it may start.
    pub trigger: Trigger,
    /// How failures are retried.
    pub retry: RetryPolicy,
    /// Limit for one attempt.
    pub timeout: Option<Duration>,
    /// Whether its failure stops the run.
    pub critical: bool,
    /// Free grouping label (`extraction`, `load`, ...).
    pub category: Option<String>,
    /// Extra environment variables (templated).
    pub env: IndexMap<String, String>,
    /// Alert channels for this task's events (the pipeline's when `None`).
    pub alerts: Option<AlertRoutes>,
    /// The queue workers claim its attempts from (`default` unless it or `defaults` names one).
    pub queue: String,
    /// Where it is defined.
    pub location: Location,
    /// Where each `depends_on` entry is written.
    pub depends_on_locations: Vec<Location>,
}

mod duration_secs {
    use serde::Serializer;
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_is_capped_with_bounded_jitter() {
        let p = RetryPolicy {
            retries: 5,
            delay: Duration::from_secs(1),
            backoff: Backoff::Exponential,
            max_delay: Duration::from_secs(5),
        };
        let d1 = p.delay_for(1);
        assert!(
            d1 >= Duration::from_secs(1) && d1 <= Duration::from_millis(1100),
            "{d1:?}"
        );
        let d3 = p.delay_for(3);
        assert!(
            d3 >= Duration::from_secs(4) && d3 <= Duration::from_secs(5),
            "{d3:?}"
        );
        assert_eq!(p.delay_for(10), Duration::from_secs(5));
    }

    #[test]
    fn params_are_typed() {
        let p = Param {
            name: "n".into(),
            kind: ParamType::Integer,
            default: None,
            description: None,
            choices: vec![],
        };
        assert_eq!(p.accept("42"), Ok(serde_json::json!(42)));
        assert!(p.accept("forty").is_err());
        assert!(ParamType::Date.coerce("2024-02-30").is_err());
        assert_eq!(
            ParamType::Boolean.coerce("yes"),
            Ok(serde_json::json!(true))
        );
    }
}
