//! The webhook channel: an HTTP POST of the alert as JSON. `format: slack` (the default)
//! sends a Slack-compatible body (`{"text": ...}`, which Slack, Mattermost, Rocket.Chat and
//! Microsoft Teams' incoming webhooks accept); `format: json` sends the alert's fields.

use super::{Alert, Channel, DeliveryError};
use crate::template::Templates;
use async_trait::async_trait;
use indexmap::IndexMap;
use serde::Deserialize;

/// `webhook:` settings of a channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST (may be `${VAR}`: webhook URLs are often secrets).
    pub url: String,
    /// `slack` or `json`.
    #[serde(default)]
    pub format: WebhookFormat,
    /// Extra request headers (values may be `${VAR}`).
    #[serde(default)]
    pub headers: IndexMap<String, String>,
}

/// The body sent.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// `{"text": "...", ...}`.
    #[default]
    Slack,
    /// The alert's fields.
    Json,
}

impl WebhookConfig {
    pub(super) fn build(&self, templates: &Templates) -> Result<WebhookChannel, String> {
        let url = templates.expand_env(&self.url)?;
        let parsed =
            reqwest::Url::parse(&url).map_err(|e| format!("webhook.url: not a URL ({e})"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err("webhook.url: use http:// or https://".into());
        }
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &self.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("webhook.headers: `{k}` is not a header name"))?;
            let value = reqwest::header::HeaderValue::from_str(&templates.expand_env(v)?)
                .map_err(|_| format!("webhook.headers.{k}: not a valid header value"))?;
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .timeout(super::DELIVERY_TIMEOUT)
            .default_headers(headers)
            .build()
            .map_err(|e| format!("webhook: {e}"))?;
        Ok(WebhookChannel {
            client,
            url: parsed,
            format: self.format,
        })
    }
}

/// Sends alerts to an HTTP endpoint.
#[derive(Debug)]
pub struct WebhookChannel {
    client: reqwest::Client,
    url: reqwest::Url,
    format: WebhookFormat,
}

#[async_trait]
impl Channel for WebhookChannel {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    async fn deliver(&self, alert: &Alert) -> Result<(), DeliveryError> {
        let body = match self.format {
            WebhookFormat::Json => serde_json::to_value(alert).unwrap_or_default(),
            WebhookFormat::Slack => serde_json::json!({
                "text": alert.text(),
                "cauce": alert,
            }),
        };
        let response = self
            .client
            .post(self.url.clone())
            .json(&body)
            .send()
            .await
            // The URL may hold a token: reqwest's error would print it.
            .map_err(|e| DeliveryError(format!("request failed: {}", e.without_url())))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(DeliveryError(format!("answered {}", response.status())))
        }
    }
}
