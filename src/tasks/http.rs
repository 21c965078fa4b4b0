//! `http`: call a URL (refresh a dashboard, ping a webhook, trigger a job elsewhere) and
//! check the response status. URL, headers and body are templated; `${VAR}` values in them
//! are secrets and never reach the log. The response body goes to the attempt's log (up to
//! 1 MiB); a small JSON response is also the task's output.

use super::{BuildContext, TaskContext, TaskError, TaskKind, TaskOutput};
use crate::spec::duration::parse_duration;
use crate::spec::error::SpecError;
use crate::template::Escape;
use async_trait::async_trait;
use indexmap::IndexMap;
use marked_yaml::Node;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

const LOG_BODY_LIMIT: usize = 1024 * 1024;
const OUTPUT_BODY_LIMIT: usize = 64 * 1024;

/// The `http` kind.
#[derive(Debug)]
pub struct HttpTask {
    url: String,
    method: reqwest::Method,
    headers: IndexMap<String, String>,
    body: Option<String>,
    json: Option<serde_json::Value>,
    expect_status: Vec<u16>,
    timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSpec {
    url: String,
    method: Option<String>,
    headers: Option<IndexMap<String, String>>,
    body: Option<String>,
    #[allow(dead_code)]
    json: Option<serde::de::IgnoredAny>,
    expect_status: Option<Vec<u16>>,
    timeout: Option<String>,
}

/// Builds from `http: {url, method, headers, body | json, expect_status, timeout}` or
/// `http: URL` (a GET).
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn TaskKind>, SpecError> {
    let spec = match node.as_scalar() {
        Some(s) => HttpSpec {
            url: s.as_str().to_string(),
            method: None,
            headers: None,
            body: None,
            json: None,
            expect_status: None,
            timeout: None,
        },
        None => cx.decode::<HttpSpec>(node)?,
    };
    let method_name = spec
        .method
        .unwrap_or_else(|| "GET".into())
        .to_ascii_uppercase();
    let method = match method_name.as_str() {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => {
            reqwest::Method::from_bytes(method_name.as_bytes())
                .map_err(|e| cx.error(node, e.to_string()))?
        }
        other => return Err(cx.error(node, format!("unknown HTTP method `{other}`"))),
    };
    let json = node
        .as_mapping()
        .and_then(|m| m.get_node("json"))
        .map(crate::spec::parse::node_to_json);
    if json.is_some() && spec.body.is_some() {
        return Err(cx.error(node, "give `body` or `json`, not both"));
    }
    let timeout = match &spec.timeout {
        Some(t) => parse_duration(t).map_err(|e| cx.error(node, e))?,
        None => Duration::from_secs(60),
    };
    if !spec.url.contains("{{")
        && !spec.url.contains("${")
        && reqwest::Url::parse(&spec.url).is_err()
    {
        return Err(cx.error(node, format!("invalid URL `{}`", spec.url)));
    }
    Ok(Arc::new(HttpTask {
        url: spec.url,
        method,
        headers: spec.headers.unwrap_or_default(),
        body: spec.body,
        json,
        expect_status: spec.expect_status.unwrap_or_default(),
        timeout,
    }))
}

#[async_trait]
impl TaskKind for HttpTask {
    fn describe(&self) -> String {
        format!("http: {} {}", self.method, self.url)
    }

    async fn run(&self, ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
        let url = ctx.render(&self.url, Escape::Plain)?;
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(|e| TaskError::Failed(format!("cannot build HTTP client: {e}")))?;
        let mut req = client.request(self.method.clone(), &url);
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), ctx.render(v, Escape::Plain)?);
        }
        if let Some(body) = &self.body {
            req = req.body(ctx.render(body, Escape::Plain)?);
        } else if let Some(json) = &self.json {
            let rendered = ctx.render_json(json)?.to_string();
            req = req
                .header("content-type", "application/json")
                .body(rendered);
        }
        ctx.log.note(&format!("{} {url}", self.method));
        let send = req.send();
        let mut resp = tokio::select! {
            r = send => r.map_err(|e| TaskError::Failed(format!("request failed: {}", ctx.log.redactor().redact_str(&e.to_string()))))?,
            _ = ctx.cancel.cancelled() => return Err(TaskError::Cancelled),
        };
        let status = resp.status();
        ctx.log.note(&format!("status {status}"));
        let mut kept = Vec::new();
        let mut total = 0usize;
        loop {
            let chunk = tokio::select! {
                c = resp.chunk() => c.map_err(|e| TaskError::Failed(format!("reading the response failed: {e}")))?,
                _ = ctx.cancel.cancelled() => return Err(TaskError::Cancelled),
            };
            let Some(chunk) = chunk else { break };
            if total < LOG_BODY_LIMIT {
                let take = chunk.len().min(LOG_BODY_LIMIT - total);
                ctx.log.write_bytes(
                    ctx.log
                        .redactor()
                        .redact_str(&String::from_utf8_lossy(&chunk[..take]))
                        .as_bytes(),
                );
            }
            if kept.len() < OUTPUT_BODY_LIMIT {
                kept.extend_from_slice(&chunk[..chunk.len().min(OUTPUT_BODY_LIMIT - kept.len())]);
            }
            total += chunk.len();
        }
        ctx.log.write_bytes(b"\n");
        let ok = if self.expect_status.is_empty() {
            status.is_success()
        } else {
            self.expect_status.contains(&status.as_u16())
        };
        if !ok {
            return Err(TaskError::Failed(format!(
                "unexpected HTTP status {status} from {}",
                ctx.log.redactor().redact_str(&url)
            )));
        }
        let mut value = serde_json::json!({ "status": status.as_u16(), "bytes": total });
        if total <= OUTPUT_BODY_LIMIT {
            if let Ok(body) = serde_json::from_slice::<serde_json::Value>(&kept) {
                value["body"] = body;
            }
        }
        Ok(TaskOutput {
            value,
            metrics: super::Metrics {
                bytes_read: Some(total as u64),
                ..Default::default()
            },
            dataset: None,
        })
    }
}
