//! Alerts: the channels configured in `cauce.yaml` (SMTP e-mail, webhook, command), and the
//! dispatcher that sends an [`Alert`] to the channels a pipeline or task names for its event.
//!
//! Delivery never blocks or fails a run: each delivery runs in the background with a time
//! limit, a failing channel is logged and counted (`/metrics`), and an identical alert (same
//! channel, event, pipeline and task) is sent at most once per `rate_limit`; the next one
//! says how many were held back. Secrets are masked in every message. This module does not
//! decide when an event happens: the engine (failure, retry, success) and the server's
//! scheduler (`sla_miss`) call [`Alerter::send`].
//!
//! A new channel kind is one file here implementing [`Channel`] plus one arm in
//! [`ChannelConfig::build`].

mod command;
mod email;
mod webhook;

use crate::secrets::Secrets;
use crate::spec::decode;
use crate::spec::{Location, SpecError};
use crate::template::Templates;
use async_trait::async_trait;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::task::TaskTracker;

/// How long one delivery may take before it counts as failed.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The events alerts are sent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    /// A task failed for good.
    Failure,
    /// An attempt failed and the task will be retried.
    Retry,
    /// A run succeeded.
    Success,
    /// A scheduled run did not succeed within the pipeline's SLA.
    SlaMiss,
}

impl AlertEvent {
    /// The name used in files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertEvent::Failure => "failure",
            AlertEvent::Retry => "retry",
            AlertEvent::Success => "success",
            AlertEvent::SlaMiss => "sla_miss",
        }
    }
}

/// One alert.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// What happened.
    pub event: AlertEvent,
    /// Pipeline name.
    pub pipeline: String,
    /// Run id.
    pub run_id: String,
    /// Task id, for task events.
    pub task: Option<String>,
    /// Attempt number, for task events.
    pub attempt: Option<u32>,
    /// The run's or task's state.
    pub state: String,
    /// The error, if any (secrets masked).
    pub error: Option<String>,
    /// The run's logical date.
    pub logical_date: String,
    /// A link to the run (`server.base_url` + the run's API path), when a base URL is set.
    pub link: Option<String>,
    /// Alerts like this one held back by the rate limit since the last one sent.
    pub suppressed: u64,
    /// When it happened (RFC 3339).
    pub at: String,
}

impl Alert {
    /// A run-level alert happening now; set `task`, `attempt` and `error` on it as needed.
    pub fn new(
        event: AlertEvent,
        pipeline: &str,
        run_id: &str,
        logical_date: String,
        state: &str,
    ) -> Alert {
        Alert {
            event,
            pipeline: pipeline.to_string(),
            run_id: run_id.to_string(),
            task: None,
            attempt: None,
            state: state.to_string(),
            error: None,
            logical_date,
            link: None,
            suppressed: 0,
            at: chrono::Utc::now().to_rfc3339(),
        }
    }

    /// A one-line summary (an e-mail subject, a chat message's first line).
    pub fn title(&self) -> String {
        let what = match &self.task {
            Some(t) => format!("{}.{t}", self.pipeline),
            None => self.pipeline.clone(),
        };
        let verb = match self.event {
            AlertEvent::Failure => "failed",
            AlertEvent::Retry => "is retrying",
            AlertEvent::Success => "succeeded",
            AlertEvent::SlaMiss => "missed its SLA",
        };
        format!("[cauce] {what} {verb} (run {})", self.run_id)
    }

    /// The full text: title, fields, error and link.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{}\n\npipeline: {}\nrun: {}\n",
            self.title(),
            self.pipeline,
            self.run_id
        );
        if let Some(t) = &self.task {
            out.push_str(&format!("task: {t}\n"));
        }
        if let Some(a) = self.attempt {
            out.push_str(&format!("attempt: {a}\n"));
        }
        out.push_str(&format!(
            "state: {}\nlogical date: {}\nat: {}\n",
            self.state, self.logical_date, self.at
        ));
        if let Some(e) = &self.error {
            out.push_str(&format!("error: {e}\n"));
        }
        if let Some(l) = &self.link {
            out.push_str(&format!("link: {l}\n"));
        }
        if self.suppressed > 0 {
            out.push_str(&format!(
                "({} similar alert(s) were held back by the rate limit)\n",
                self.suppressed
            ));
        }
        out
    }
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeliveryError(pub String);

/// Something alerts can be sent to.
#[async_trait]
pub trait Channel: Send + Sync + std::fmt::Debug {
    /// `email`, `webhook` or `command`.
    fn kind(&self) -> &'static str;
    /// Delivers one alert.
    async fn deliver(&self, alert: &Alert) -> Result<(), DeliveryError>;
}

/// The `alerts:` section of `cauce.yaml`.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    /// Identical alerts are sent at most once per this long.
    pub rate_limit: Duration,
    /// Channels by name.
    pub channels: IndexMap<String, ChannelConfig>,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            rate_limit: Duration::from_secs(600),
            channels: IndexMap::new(),
        }
    }
}

/// One channel as written (values may hold `${VAR}`, expanded when the alerter starts).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// SMTP e-mail.
    pub email: Option<email::EmailConfig>,
    /// An HTTP POST of JSON.
    pub webhook: Option<webhook::WebhookConfig>,
    /// A shell command given the alert as JSON on stdin.
    pub command: Option<String>,
}

/// Parses the `alerts:` section of `cauce.yaml`.
pub fn parse_settings(
    node: &marked_yaml::Node,
    file: &Path,
) -> Result<AlertSettings, Vec<SpecError>> {
    let at = |n: &marked_yaml::Node| Location::at(file, n.span().start());
    let Some(map) = node.as_mapping() else {
        return Err(vec![SpecError::new(
            at(node),
            Some("alerts".into()),
            "`alerts` must be a mapping with `channels` (and `rate_limit`)",
        )]);
    };
    let mut errors = Vec::new();
    let mut out = AlertSettings::default();
    for (key, value) in map.iter() {
        match key.as_str() {
            "rate_limit" => {
                let text = value.as_scalar().map(|s| s.as_str()).unwrap_or("");
                match crate::spec::duration::parse_duration(text) {
                    Ok(d) => out.rate_limit = d,
                    Err(m) => errors.push(SpecError::new(
                        at(value),
                        Some("alerts.rate_limit".into()),
                        m,
                    )),
                }
            }
            "channels" => {
                let Some(channels) = value.as_mapping() else {
                    errors.push(SpecError::new(
                        at(value),
                        Some("alerts.channels".into()),
                        "`channels` must map a channel name to its settings",
                    ));
                    continue;
                };
                for (name, n) in channels.iter() {
                    let field = format!("alerts.channels.{}", name.as_str());
                    match decode::<ChannelConfig>(n, file, &field) {
                        Ok(c) => {
                            let kinds =
                                [c.email.is_some(), c.webhook.is_some(), c.command.is_some()]
                                    .iter()
                                    .filter(|k| **k)
                                    .count();
                            if kinds != 1 {
                                errors.push(SpecError::new(
                                    at(n),
                                    Some(field),
                                    "a channel has exactly one of `email`, `webhook`, `command`",
                                ));
                            } else {
                                out.channels.insert(name.as_str().to_string(), c);
                            }
                        }
                        Err(e) => errors.push(e),
                    }
                }
            }
            other => errors.push(SpecError::new(
                Location::at(file, key.span().start()),
                Some(format!("alerts.{other}")),
                format!("unknown key `{other}`; expected one of: channels, rate_limit"),
            )),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

impl ChannelConfig {
    /// Builds the channel, expanding `${VAR}` references.
    fn build(&self, templates: &Templates, root: &Path) -> Result<Arc<dyn Channel>, String> {
        if let Some(e) = &self.email {
            return Ok(Arc::new(e.build(templates)?));
        }
        if let Some(w) = &self.webhook {
            return Ok(Arc::new(w.build(templates)?));
        }
        if let Some(c) = &self.command {
            return Ok(Arc::new(command::CommandChannel::new(
                c.clone(),
                root.to_path_buf(),
            )));
        }
        Err("the channel has no kind".into())
    }
}

/// Delivery outcomes per channel, for `/metrics`.
pub type DeliveryCounts = BTreeMap<(String, &'static str), u64>;

/// Sends alerts to channels, in the background, rate-limited.
#[derive(Debug)]
pub struct Alerter {
    channels: IndexMap<String, Result<Arc<dyn Channel>, String>>,
    rate_limit: Duration,
    base_url: Option<String>,
    secrets: Secrets,
    /// Last send and held-back count per (channel, event, pipeline, task).
    recent: Mutex<HashMap<String, (Instant, u64)>>,
    deliveries: Arc<Mutex<DeliveryCounts>>,
    tracker: TaskTracker,
}

impl Alerter {
    /// An alerter over the project's channels. A channel whose settings cannot be expanded
    /// (a `${VAR}` not set) is kept as an error, logged on each delivery attempt.
    pub fn new(
        settings: &AlertSettings,
        base_url: Option<String>,
        templates: &Templates,
        secrets: Secrets,
        root: &Path,
    ) -> Alerter {
        let channels = settings
            .channels
            .iter()
            .map(|(name, c)| (name.clone(), c.build(templates, root)))
            .collect();
        Alerter {
            channels,
            rate_limit: settings.rate_limit,
            base_url: base_url.map(|u| u.trim_end_matches('/').to_string()),
            secrets,
            recent: Mutex::new(HashMap::new()),
            deliveries: Arc::new(Mutex::new(BTreeMap::new())),
            tracker: TaskTracker::new(),
        }
    }

    /// Channels whose settings cannot be used (a `${VAR}` not set, a bad URL or address),
    /// with why. `cauce server` refuses to start with any; a run only logs them.
    pub fn problems(&self) -> Vec<(String, String)> {
        self.channels
            .iter()
            .filter_map(|(name, c)| c.as_ref().err().map(|e| (name.clone(), e.clone())))
            .collect()
    }

    /// The link to a run, when a base URL is configured.
    pub fn run_link(&self, run_id: &str) -> Option<String> {
        self.base_url
            .as_ref()
            .map(|b| format!("{b}/api/v1/runs/{run_id}"))
    }

    /// Sends `alert` to each named channel, in the background. Unknown channel names are
    /// logged (`cauce validate` reports them before a run).
    pub fn send(&self, channels: &[String], mut alert: Alert) {
        if channels.is_empty() {
            return;
        }
        alert.error = alert.error.map(|e| self.secrets.redact(&e));
        if alert.link.is_none() {
            alert.link = self.run_link(&alert.run_id);
        }
        for name in channels {
            let Some(channel) = self.channels.get(name) else {
                tracing::warn!(channel = %name, "alert to an unknown channel dropped");
                continue;
            };
            let key = format!(
                "{name}\u{1f}{}\u{1f}{}\u{1f}{}",
                alert.event.as_str(),
                alert.pipeline,
                alert.task.as_deref().unwrap_or("")
            );
            let suppressed = {
                let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                match recent.get_mut(&key) {
                    Some((last, held)) if now.duration_since(*last) < self.rate_limit => {
                        *held += 1;
                        None
                    }
                    Some((last, held)) => {
                        let n = *held;
                        *last = now;
                        *held = 0;
                        Some(n)
                    }
                    None => {
                        recent.insert(key, (now, 0));
                        Some(0)
                    }
                }
            };
            let Some(suppressed) = suppressed else {
                self.count(name, "rate_limited");
                tracing::info!(channel = %name, event = alert.event.as_str(), pipeline = %alert.pipeline, "alert held back by the rate limit");
                continue;
            };
            let mut alert = alert.clone();
            alert.suppressed = suppressed;
            match channel {
                Err(why) => {
                    self.count(name, "failed");
                    tracing::error!(channel = %name, error = %why, "alert channel is misconfigured");
                }
                Ok(ch) => {
                    let ch = Arc::clone(ch);
                    let name = name.clone();
                    let deliveries = Arc::clone(&self.deliveries);
                    let secrets = self.secrets.clone();
                    self.tracker.spawn(async move {
                        let outcome =
                            tokio::time::timeout(DELIVERY_TIMEOUT, ch.deliver(&alert)).await;
                        let result = match outcome {
                            Ok(r) => r,
                            Err(_) => Err(DeliveryError(format!(
                                "no answer within {}s",
                                DELIVERY_TIMEOUT.as_secs()
                            ))),
                        };
                        let label = match &result {
                            Ok(()) => {
                                tracing::info!(channel = %name, kind = ch.kind(), event = alert.event.as_str(), run = %alert.run_id, "alert sent");
                                "sent"
                            }
                            Err(e) => {
                                let e = secrets.redact(&e.to_string());
                                tracing::error!(channel = %name, kind = ch.kind(), event = alert.event.as_str(), run = %alert.run_id, error = %e, "alert delivery failed");
                                "failed"
                            }
                        };
                        let mut d = deliveries.lock().unwrap_or_else(|p| p.into_inner());
                        *d.entry((name, label)).or_default() += 1;
                    });
                }
            }
        }
    }

    fn count(&self, channel: &str, outcome: &'static str) {
        let mut d = self.deliveries.lock().unwrap_or_else(|p| p.into_inner());
        *d.entry((channel.to_string(), outcome)).or_default() += 1;
    }

    /// Delivery outcomes so far: (channel, `sent` | `failed` | `rate_limited`) → count.
    pub fn deliveries(&self) -> DeliveryCounts {
        self.deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits for deliveries in flight, at most `limit` (a CLI run before it exits).
    pub async fn flush(&self, limit: Duration) {
        self.tracker.close();
        let _ = tokio::time::timeout(limit, self.tracker.wait()).await;
        self.tracker.reopen();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<Alert>>);

    #[async_trait]
    impl Channel for Recorder {
        fn kind(&self) -> &'static str {
            "test"
        }
        async fn deliver(&self, alert: &Alert) -> Result<(), DeliveryError> {
            self.0.lock().unwrap().push(alert.clone());
            Ok(())
        }
    }

    fn alerter(rate: Duration) -> (Alerter, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let secrets = Secrets::default();
        secrets.add("hunter2-secret");
        let mut channels: IndexMap<String, Result<Arc<dyn Channel>, String>> = IndexMap::new();
        channels.insert("rec".into(), Ok(rec.clone() as Arc<dyn Channel>));
        channels.insert("broken".into(), Err("SMTP_PASSWORD is not set".into()));
        let a = Alerter {
            channels,
            rate_limit: rate,
            base_url: Some("http://cauce.test:8080".into()),
            secrets,
            recent: Mutex::new(HashMap::new()),
            deliveries: Arc::new(Mutex::new(BTreeMap::new())),
            tracker: TaskTracker::new(),
        };
        (a, rec)
    }

    fn alert(task: &str) -> Alert {
        Alert {
            event: AlertEvent::Failure,
            pipeline: "sales".into(),
            run_id: "r1".into(),
            task: Some(task.into()),
            attempt: Some(2),
            state: "failed".into(),
            error: Some("login failed with hunter2-secret".into()),
            logical_date: "2024-01-01T00:00:00Z".into(),
            link: None,
            suppressed: 0,
            at: "2024-01-01T00:00:01Z".into(),
        }
    }

    #[tokio::test]
    async fn identical_alerts_are_rate_limited_and_counted() {
        let (a, rec) = alerter(Duration::from_secs(3600));
        let chans = vec!["rec".to_string()];
        a.send(&chans, alert("load"));
        a.send(&chans, alert("load"));
        a.send(&chans, alert("load"));
        a.send(&chans, alert("extract")); // another task: not the same alert
        a.flush(Duration::from_secs(5)).await;
        let got = rec.0.lock().unwrap().clone();
        assert_eq!(got.len(), 2);
        let d = a.deliveries();
        assert_eq!(d[&("rec".to_string(), "sent")], 2);
        assert_eq!(d[&("rec".to_string(), "rate_limited")], 2);
    }

    #[tokio::test]
    async fn the_next_alert_after_the_window_says_how_many_were_held_back() {
        let (a, rec) = alerter(Duration::from_millis(50));
        let chans = vec!["rec".to_string()];
        a.send(&chans, alert("load"));
        a.send(&chans, alert("load"));
        tokio::time::sleep(Duration::from_millis(80)).await;
        a.send(&chans, alert("load"));
        a.flush(Duration::from_secs(5)).await;
        let got = rec.0.lock().unwrap().clone();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].suppressed, 1);
        assert!(got[1].text().contains("1 similar alert"));
    }

    #[tokio::test]
    async fn messages_mask_secrets_and_link_to_the_run() {
        let (a, rec) = alerter(Duration::from_secs(1));
        a.send(
            &["rec".to_string(), "broken".to_string(), "nope".to_string()],
            alert("load"),
        );
        a.flush(Duration::from_secs(5)).await;
        let got = rec.0.lock().unwrap().clone();
        let text = got[0].text();
        assert!(!text.contains("hunter2-secret"), "{text}");
        assert!(
            text.contains("link: http://cauce.test:8080/api/v1/runs/r1"),
            "{text}"
        );
        assert!(text.contains("sales.load failed"), "{text}");
        assert_eq!(a.deliveries()[&("broken".to_string(), "failed")], 1);
    }
}
