//! `source: http_api`: records from a JSON REST API (Magento, Connectif, any API that
//! answers pages of JSON objects). It owns the requests (templated URL, query parameters,
//! headers and body; bearer, basic or API-key auth), pagination (page number, offset, a
//! cursor read from the body, an RFC 8288 `Link` header, a next URL in the body), pacing
//! (`rate_limit`), its own retries of 429, 5xx and connection errors with exponential backoff
//! that honours `Retry-After`, and turning each page's records into Arrow batches as the
//! page arrives (with [`crate::data::records`], under the rules below). It leaves declared column types, the incremental filter and writing the
//! dataset to the `extract` task, and retries of the whole task to the engine.
//!
//! Limits: only JSON bodies; a page is held whole while it is converted (at most
//! `max_response_size`, 100 MiB by default), never more than one page at a time. Columns
//! are inferred from the first page's records (plus every declared column); a field that
//! first appears on a later page is ignored (noted once in the log), a field missing from a
//! record is null, and a later value that does not fit the inferred type is an error that
//! says to declare the column. Nested objects and arrays become JSON text. A next URL
//! (link header, next_url) must stay on the origin of `url`, and redirects are followed
//! only on the same origin, so credentials never go to another host. Pagination
//! parameters always go in the query string, even for POST.

use super::{Source, SourceContext};
use crate::data::records::{Column, Inference, Misfits, Rows, Rules};
use crate::data::stream::{channel_frame, stream_error, BatchSender};
use crate::data::types::ColumnType;
use crate::data::DataError;
use crate::process::LogFile;
use crate::spec::duration::{format_duration, parse_duration};
use crate::spec::error::{suggestion, SpecError};
use crate::spec::size::parse_size;
use crate::tasks::{BuildContext, TaskContext};
use crate::template::{Escape, RenderVars};
use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::DataFrame;
use indexmap::IndexMap;
use marked_yaml::Node;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The longest wait between two attempts of one request, whatever `Retry-After` says.
const MAX_WAIT: Duration = Duration::from_secs(300);
const DEFAULT_MAX_PAGES: u64 = 10_000;
const DEFAULT_RETRIES: u32 = 5;
const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_RESPONSE: u64 = 100 << 20;
/// How many distinct new fields are noted in the log before the rest are noted as one.
const MAX_FIELD_NOTES: usize = 20;
/// How much of an error response's body goes into the error message.
const ERROR_BODY_CHARS: usize = 200;

const PAGINATION_TYPES: &[&str] = &["page", "offset", "cursor", "link_header", "next_url"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpApiSpec {
    url: String,
    method: Option<String>,
    headers: Option<IndexMap<String, String>>,
    params: Option<IndexMap<String, String>>,
    body: Option<String>,
    #[allow(dead_code)]
    json: Option<serde::de::IgnoredAny>,
    auth: Option<AuthSpec>,
    records: Option<String>,
    pagination: Option<PaginationSpec>,
    max_pages: Option<u64>,
    rate_limit: Option<RateLimitSpec>,
    retries: Option<u32>,
    retry_delay: Option<String>,
    timeout: Option<String>,
    max_response_size: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSpec {
    bearer: Option<String>,
    basic: Option<BasicSpec>,
    api_key: Option<ApiKeySpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicSpec {
    user: String,
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeySpec {
    header: Option<String>,
    query: Option<String>,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PaginationSpec {
    #[serde(rename = "type")]
    ty: String,
    param: Option<String>,
    start: Option<i64>,
    size_param: Option<String>,
    size: Option<u64>,
    limit_param: Option<String>,
    limit: Option<u64>,
    path: Option<String>,
    total_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitSpec {
    requests_per_second: f64,
}

/// A dot path into a JSON body (`data.items`; a number indexes an array).
#[derive(Debug, Clone)]
struct JsonPath {
    text: String,
    parts: Vec<String>,
}

impl JsonPath {
    fn parse(text: &str) -> Result<JsonPath, String> {
        let parts: Vec<String> = text.split('.').map(|p| p.trim().to_string()).collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "invalid path `{text}`: write keys separated by dots, such as `data.items`"
            ));
        }
        Ok(JsonPath {
            text: text.to_string(),
            parts,
        })
    }

    fn get<'a>(&self, v: &'a Value) -> Option<&'a Value> {
        let mut cur = v;
        for p in &self.parts {
            cur = match cur {
                Value::Object(m) => m.get(p)?,
                Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// The value at the path, taken out of `v`; or why it is not there.
    fn take(&self, v: &mut Value) -> Result<Value, String> {
        let mut cur = v;
        for (i, p) in self.parts.iter().enumerate() {
            let at = if i == 0 {
                "the response".to_string()
            } else {
                format!("`{}`", self.parts[..i].join("."))
            };
            cur = match cur {
                Value::Object(m) => {
                    if !m.contains_key(p) {
                        let keys: Vec<&str> = m.keys().take(20).map(|k| k.as_str()).collect();
                        return Err(format!(
                            "{at} has no key `{p}`{}; its keys: {}",
                            suggestion(p, keys.iter().copied()),
                            if keys.is_empty() {
                                "none".to_string()
                            } else {
                                keys.join(", ")
                            }
                        ));
                    }
                    match m.get_mut(p) {
                        Some(x) => x,
                        None => return Err(format!("{at} has no key `{p}`")),
                    }
                }
                Value::Array(a) => {
                    let len = a.len();
                    match p.parse::<usize>().ok().and_then(|n| a.get_mut(n)) {
                        Some(x) => x,
                        None => {
                            return Err(format!(
                                "{at} is an array of {len}, which has no item `{p}`"
                            ))
                        }
                    }
                }
                other => return Err(format!("{at} is {}, not an object", kind_of(other))),
            };
        }
        Ok(cur.take())
    }
}

/// How a JSON value is described in messages.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal number",
        Value::Number(_) => "a whole number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[derive(Debug, Clone)]
enum Pagination {
    None,
    Page {
        param: String,
        start: i64,
        size: Option<(String, u64)>,
        total: Option<JsonPath>,
    },
    Offset {
        param: String,
        start: i64,
        limit: (String, u64),
        total: Option<JsonPath>,
    },
    Cursor {
        param: String,
        path: JsonPath,
    },
    LinkHeader,
    NextUrl {
        path: JsonPath,
    },
}

impl Pagination {
    fn name(&self) -> &'static str {
        match self {
            Pagination::None => "none",
            Pagination::Page { .. } => "page",
            Pagination::Offset { .. } => "offset",
            Pagination::Cursor { .. } => "cursor",
            Pagination::LinkHeader => "link_header",
            Pagination::NextUrl { .. } => "next_url",
        }
    }

    /// Query parameters the pagination itself sends.
    fn own_params(&self) -> Vec<&str> {
        match self {
            Pagination::Page { param, size, .. } => {
                let mut v = vec![param.as_str()];
                if let Some((p, _)) = size {
                    v.push(p);
                }
                v
            }
            Pagination::Offset { param, limit, .. } => vec![param.as_str(), limit.0.as_str()],
            Pagination::Cursor { param, .. } => vec![param.as_str()],
            _ => vec![],
        }
    }
}

/// Credentials as written (templates); values are rendered at read time.
#[derive(Clone)]
enum Auth {
    None,
    Bearer(String),
    Basic {
        user: String,
        password: Option<String>,
    },
    Header {
        name: HeaderName,
        value: String,
    },
    Query {
        param: String,
        value: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values, even as templates: a literal token may be written there.
        f.write_str(match self {
            Auth::None => "none",
            Auth::Bearer(_) => "bearer",
            Auth::Basic { .. } => "basic",
            Auth::Header { .. } => "api_key (header)",
            Auth::Query { .. } => "api_key (query)",
        })
    }
}

#[derive(Debug, Clone)]
enum Body {
    None,
    Text(String),
    Json(Value),
}

/// The `http_api` source, as built from the pipeline file.
#[derive(Debug)]
pub struct HttpApiSource {
    cfg: Arc<Config>,
}

#[derive(Debug)]
struct Config {
    url: String,
    method: Method,
    headers: Vec<(HeaderName, String)>,
    params: Vec<(String, String)>,
    body: Body,
    auth: Auth,
    records: Option<JsonPath>,
    pagination: Pagination,
    max_pages: u64,
    interval: Option<Duration>,
    retries: u32,
    retry_delay: Duration,
    timeout: Duration,
    max_response: u64,
}

fn sub_node<'a>(node: &'a Node, key: &str) -> &'a Node {
    node.as_mapping()
        .and_then(|m| m.get_node(key))
        .unwrap_or(node)
}

fn has_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("${")
}

/// Builds from `url`, `method`, `headers`, `params`, `body` | `json`, `auth`, `records`,
/// `pagination`, `max_pages`, `rate_limit`, `retries`, `retry_delay`, `timeout`,
/// `max_response_size`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn Source>, SpecError> {
    let spec: HttpApiSpec = cx.decode(node)?;
    let method = match spec
        .method
        .as_deref()
        .unwrap_or("GET")
        .to_ascii_uppercase()
        .as_str()
    {
        "GET" => Method::GET,
        "POST" => Method::POST,
        other => {
            return Err(cx.error(
                sub_node(node, "method"),
                format!("`method` must be GET or POST, not `{other}`"),
            ))
        }
    };
    if !has_template(&spec.url) {
        match Url::parse(&spec.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => {
                return Err(cx.error(
                    sub_node(node, "url"),
                    format!("`url` must be http:// or https://, not {}://", u.scheme()),
                ))
            }
            Err(e) => {
                return Err(cx.error(
                    sub_node(node, "url"),
                    format!("invalid URL `{}`: {e}", spec.url),
                ))
            }
        }
    }
    let json = node
        .as_mapping()
        .and_then(|m| m.get_node("json"))
        .map(crate::spec::parse::node_to_json);
    let body = match (spec.body, json) {
        (Some(_), Some(_)) => return Err(cx.error(node, "give `body` or `json`, not both")),
        (Some(b), None) => Body::Text(b),
        (None, Some(j)) => Body::Json(j),
        (None, None) => Body::None,
    };
    if !matches!(body, Body::None) && method != Method::POST {
        return Err(cx.error(node, "`body` and `json` need `method: POST`"));
    }
    let mut headers = Vec::new();
    for (name, value) in spec.headers.unwrap_or_default() {
        let h = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            cx.error(
                sub_node(node, "headers"),
                format!("`{name}` is not a valid HTTP header name"),
            )
        })?;
        headers.push((h, value));
    }
    let auth = match spec.auth {
        None => Auth::None,
        Some(a) => build_auth(a, sub_node(node, "auth"), cx)?,
    };
    let auth_header = match &auth {
        Auth::Bearer(_) | Auth::Basic { .. } => Some(reqwest::header::AUTHORIZATION),
        Auth::Header { name, .. } => Some(name.clone()),
        _ => None,
    };
    if let Some(h) = auth_header {
        if headers.iter().any(|(n, _)| *n == h) {
            return Err(cx.error(
                sub_node(node, "headers"),
                format!("header `{h}` is set by `auth`; remove it from `headers`"),
            ));
        }
    }
    let records = spec
        .records
        .as_deref()
        .map(JsonPath::parse)
        .transpose()
        .map_err(|e| cx.error(sub_node(node, "records"), format!("`records`: {e}")))?;
    let pagination = match spec.pagination {
        None => Pagination::None,
        Some(p) => build_pagination(p, sub_node(node, "pagination"), cx)?,
    };
    let params: Vec<(String, String)> = spec.params.unwrap_or_default().into_iter().collect();
    let mut taken: Vec<(&str, &str)> = pagination
        .own_params()
        .into_iter()
        .map(|p| (p, "`pagination`"))
        .collect();
    if let Auth::Query { param, .. } = &auth {
        taken.push((param.as_str(), "`auth.api_key.query`"));
    }
    for (k, _) in &params {
        if let Some((_, by)) = taken.iter().find(|(p, _)| *p == k) {
            return Err(cx.error(
                sub_node(node, "params"),
                format!("query parameter `{k}` is set by {by}; remove it from `params`"),
            ));
        }
    }
    let max_pages = spec.max_pages.unwrap_or(DEFAULT_MAX_PAGES);
    if max_pages == 0 {
        return Err(cx.error(
            sub_node(node, "max_pages"),
            "`max_pages` must be at least 1",
        ));
    }
    let interval = match spec.rate_limit {
        None => None,
        Some(r) if r.requests_per_second.is_finite() && r.requests_per_second > 0.0 => {
            Some(Duration::from_secs_f64(1.0 / r.requests_per_second))
        }
        Some(_) => {
            return Err(cx.error(
                sub_node(node, "rate_limit"),
                "`rate_limit.requests_per_second` must be a number above 0, such as 5 or 0.5",
            ))
        }
    };
    let duration = |key: &str, v: Option<&str>, default: Duration| match v {
        None => Ok(default),
        Some(t) => parse_duration(t).map_err(|e| cx.error(sub_node(node, key), e)),
    };
    let timeout = duration("timeout", spec.timeout.as_deref(), DEFAULT_TIMEOUT)?;
    if timeout.is_zero() {
        return Err(cx.error(sub_node(node, "timeout"), "`timeout` must be above 0"));
    }
    let retry_delay = duration(
        "retry_delay",
        spec.retry_delay.as_deref(),
        DEFAULT_RETRY_DELAY,
    )?
    .min(MAX_WAIT);
    let retries = spec.retries.unwrap_or(DEFAULT_RETRIES);
    if retries > 100 {
        return Err(cx.error(sub_node(node, "retries"), "`retries` must be at most 100"));
    }
    let max_response = match spec.max_response_size.as_deref() {
        None => DEFAULT_MAX_RESPONSE,
        Some(t) => parse_size(t).map_err(|e| cx.error(sub_node(node, "max_response_size"), e))?,
    };
    Ok(Arc::new(HttpApiSource {
        cfg: Arc::new(Config {
            url: spec.url,
            method,
            headers,
            params,
            body,
            auth,
            records,
            pagination,
            max_pages,
            interval,
            retries,
            retry_delay,
            timeout,
            max_response: max_response.max(1),
        }),
    }))
}

fn build_auth(a: AuthSpec, node: &Node, cx: &BuildContext) -> Result<Auth, SpecError> {
    let given = [a.bearer.is_some(), a.basic.is_some(), a.api_key.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(cx.error(
            node,
            "`auth` takes one of `bearer: TOKEN`, `basic: {user, password}` or `api_key: {header | query, value}`",
        ));
    }
    if let Some(t) = a.bearer {
        return Ok(Auth::Bearer(t));
    }
    if let Some(b) = a.basic {
        return Ok(Auth::Basic {
            user: b.user,
            password: b.password,
        });
    }
    let Some(k) = a.api_key else {
        return Err(cx.error(node, "`auth` is empty"));
    };
    match (k.header, k.query) {
        (Some(h), None) => {
            let name = HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| cx.error(node, format!("`{h}` is not a valid HTTP header name")))?;
            Ok(Auth::Header {
                name,
                value: k.value,
            })
        }
        (None, Some(q)) if !q.is_empty() => Ok(Auth::Query {
            param: q,
            value: k.value,
        }),
        _ => Err(cx.error(
            node,
            "`auth.api_key` takes `header: NAME` or `query: NAME` (one of them) and `value`",
        )),
    }
}

fn build_pagination(
    p: PaginationSpec,
    node: &Node,
    cx: &BuildContext,
) -> Result<Pagination, SpecError> {
    let ty = p.ty.as_str();
    let allowed: &[&str] = match ty {
        "page" => &["param", "start", "size_param", "size", "total_path"],
        "offset" => &["param", "start", "limit_param", "limit", "total_path"],
        "cursor" => &["param", "path"],
        "link_header" => &[],
        "next_url" => &["path"],
        other => {
            return Err(cx.error(
                node,
                format!(
                    "unknown pagination type `{other}`{}; types: {}",
                    suggestion(other, PAGINATION_TYPES.iter().copied()),
                    PAGINATION_TYPES.join(", ")
                ),
            ))
        }
    };
    let present = [
        ("param", p.param.is_some()),
        ("start", p.start.is_some()),
        ("size_param", p.size_param.is_some()),
        ("size", p.size.is_some()),
        ("limit_param", p.limit_param.is_some()),
        ("limit", p.limit.is_some()),
        ("path", p.path.is_some()),
        ("total_path", p.total_path.is_some()),
    ];
    for (key, set) in present {
        if set && !allowed.contains(&key) {
            return Err(cx.error(
                node,
                format!(
                    "`{key}` does not apply to `type: {ty}`; it takes: {}",
                    if allowed.is_empty() {
                        "no other keys".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ),
            ));
        }
    }
    let path = |v: Option<&str>, key: &str| -> Result<Option<JsonPath>, SpecError> {
        v.map(JsonPath::parse)
            .transpose()
            .map_err(|e| cx.error(node, format!("`{key}`: {e}")))
    };
    let total = path(p.total_path.as_deref(), "total_path")?;
    let required_path = |what: &str| -> Result<JsonPath, SpecError> {
        path(p.path.as_deref(), "path")?.ok_or_else(|| {
            cx.error(
                node,
                format!("`type: {ty}` needs `path`: the dot path of {what} in the response, such as `meta.next`"),
            )
        })
    };
    Ok(match ty {
        "page" => {
            let size = match (p.size_param, p.size) {
                (Some(sp), size) => Some((sp, size.unwrap_or(100))),
                (None, Some(_)) => {
                    return Err(cx.error(
                        node,
                        "`size` needs `size_param`, the query parameter that carries it",
                    ))
                }
                (None, None) => None,
            };
            if size.as_ref().is_some_and(|(_, s)| *s == 0) {
                return Err(cx.error(node, "`size` must be at least 1"));
            }
            Pagination::Page {
                param: p.param.unwrap_or_else(|| "page".into()),
                start: p.start.unwrap_or(1),
                size,
                total,
            }
        }
        "offset" => {
            let limit = p.limit.unwrap_or(100);
            if limit == 0 {
                return Err(cx.error(node, "`limit` must be at least 1"));
            }
            Pagination::Offset {
                param: p.param.unwrap_or_else(|| "offset".into()),
                start: p.start.unwrap_or(0),
                limit: (p.limit_param.unwrap_or_else(|| "limit".into()), limit),
                total,
            }
        }
        "cursor" => Pagination::Cursor {
            param: p.param.unwrap_or_else(|| "cursor".into()),
            path: required_path("the next cursor")?,
        },
        "link_header" => Pagination::LinkHeader,
        _ => Pagination::NextUrl {
            path: required_path("the next page's URL")?,
        },
    })
}

/// What the templates of one attempt rendered into.
struct Prepared {
    /// The URL with `params` (and an API key in the query) added.
    base: Url,
    headers: HeaderMap,
    basic: Option<(String, Option<String>)>,
    body: Option<(Vec<u8>, Option<&'static str>)>,
    /// An API key sent in the query: its parameter and value.
    query_key: Option<(String, String)>,
    /// Credential values, masked in everything logged even when not `${VAR}` secrets.
    masks: Vec<String>,
}

/// Renders the source's templates with `watermark` set to the extract's cursor value (the
/// stored one, else `initial`, else empty).
struct Renderer<'a> {
    task: &'a TaskContext,
    vars: RenderVars,
}

impl Renderer<'_> {
    fn render(&self, what: &str, text: &str) -> Result<String, DataError> {
        self.task
            .templates
            .render(text, Escape::Plain, &self.vars)
            .map_err(|e| DataError::Invalid(format!("{what}: {e}")))
    }

    fn render_json(&self, v: &Value) -> Result<Value, DataError> {
        Ok(match v {
            Value::String(s) => Value::String(self.render("`json`", s)?),
            Value::Array(a) => Value::Array(
                a.iter()
                    .map(|x| self.render_json(x))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| Ok((k.clone(), self.render_json(x)?)))
                    .collect::<Result<_, DataError>>()?,
            ),
            other => other.clone(),
        })
    }
}

/// `url` with `pairs` set in its query (replacing parameters of the same names).
fn with_query(url: &Url, pairs: &[(String, String)]) -> Url {
    let mut u = url.clone();
    if pairs.is_empty() {
        return u;
    }
    let clash = u
        .query_pairs()
        .any(|(k, _)| pairs.iter().any(|(p, _)| *p == k));
    if clash {
        let kept: Vec<(String, String)> = u
            .query_pairs()
            .filter(|(k, _)| !pairs.iter().any(|(p, _)| p == k))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        u.set_query(None);
        if !kept.is_empty() {
            u.query_pairs_mut().extend_pairs(kept);
        }
    }
    u.query_pairs_mut().extend_pairs(pairs);
    u
}

impl HttpApiSource {
    fn prepare(&self, cx: &SourceContext<'_>) -> Result<Prepared, DataError> {
        let cfg = &self.cfg;
        let mut vars = cx.task.vars.clone();
        vars.watermark = match cx.watermark {
            None | Some(Value::Null) => Value::String(String::new()),
            Some(v) => v.clone(),
        };
        let r = Renderer {
            task: cx.task,
            vars,
        };
        let url_text = r.render("`url`", &cfg.url)?;
        let mut base = Url::parse(url_text.trim()).map_err(|e| {
            DataError::Invalid(format!(
                "`url` renders to `{}`, which is not a URL: {e}",
                cx.task.log.redactor().redact_str(&url_text)
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(DataError::Invalid(format!(
                "`url` must be http:// or https://, not {}://",
                base.scheme()
            )));
        }
        let mut params = Vec::new();
        for (k, v) in &cfg.params {
            let v = r.render(&format!("`params.{k}`"), v)?;
            // An empty value is not sent: `{{ watermark }}` before the first run.
            if !v.is_empty() {
                params.push((k.clone(), v));
            }
        }
        let mut masks = Vec::new();
        let mut headers = HeaderMap::new();
        for (name, v) in &cfg.headers {
            let v = r.render(&format!("`headers.{name}`"), v)?;
            let value = HeaderValue::from_str(&v).map_err(|_| {
                DataError::Invalid(format!(
                    "header `{name}` renders to a value that cannot be sent (a line break or other control character)"
                ))
            })?;
            headers.insert(name.clone(), value);
        }
        let secret_header = |name: &str, v: &str| {
            let mut value = HeaderValue::from_str(v).map_err(|_| {
                DataError::Invalid(format!(
                    "`auth` renders to a value that cannot go in the `{name}` header (a line break or other control character)"
                ))
            })?;
            value.set_sensitive(true);
            Ok::<_, DataError>(value)
        };
        let mut basic = None;
        let mut query_key = None;
        match &cfg.auth {
            Auth::None => {}
            Auth::Bearer(t) => {
                let t = r.render("`auth.bearer`", t)?;
                let t = t.trim().to_string();
                headers.insert(
                    reqwest::header::AUTHORIZATION,
                    secret_header("Authorization", &format!("Bearer {t}"))?,
                );
                masks.push(t);
            }
            Auth::Basic { user, password } => {
                let user = r.render("`auth.basic.user`", user)?;
                let password = password
                    .as_deref()
                    .map(|p| r.render("`auth.basic.password`", p))
                    .transpose()?;
                if let Some(p) = &password {
                    masks.push(p.clone());
                }
                basic = Some((user, password));
            }
            Auth::Header { name, value } => {
                let v = r.render("`auth.api_key.value`", value)?;
                headers.insert(name.clone(), secret_header(name.as_str(), &v)?);
                masks.push(v);
            }
            Auth::Query { param, value } => {
                let v = r.render("`auth.api_key.value`", value)?;
                masks.push(v.clone());
                query_key = Some((param.clone(), v.clone()));
                params.push((param.clone(), v));
            }
        }
        // Short values would mask ordinary text; `${VAR}` values are masked by the redactor.
        masks.retain(|m| m.len() >= 4);
        base = with_query(&base, &params);
        let body = match &cfg.body {
            Body::None => None,
            Body::Text(t) => Some((r.render("`body`", t)?.into_bytes(), None)),
            Body::Json(j) => {
                let v = r.render_json(j)?;
                Some((v.to_string().into_bytes(), Some("application/json")))
            }
        };
        Ok(Prepared {
            base,
            headers,
            basic,
            body,
            query_key,
            masks,
        })
    }
}

/// Whether a failed request may succeed when sent again.
fn retryable(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() || e.is_decode()
}

/// A reqwest error with its causes, without the URL (which may carry a key).
fn error_text(e: reqwest::Error) -> String {
    let timeout = e.is_timeout();
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    if timeout && !text.contains("timed out") {
        text.push_str(" (timed out)");
    }
    text
}

/// The wait a `Retry-After` header asks for (seconds or an HTTP date), capped at
/// [`MAX_WAIT`].
fn retry_after(headers: &HeaderMap, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let text = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Digits too many for a u64 are longer than the cap anyway.
        let secs = text.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_WAIT));
    }
    let at = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    let wait = (at.with_timezone(&chrono::Utc) - now)
        .to_std()
        .unwrap_or(Duration::ZERO);
    Some(wait.min(MAX_WAIT))
}

/// The wait before attempt `attempt + 1`: `base` doubled each time, capped, plus up to 10%
/// jitter so that many clients do not come back at once.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    let d = base.saturating_mul(factor).min(MAX_WAIT);
    d + d.mul_f64(rand::random::<f64>() * 0.1)
}

/// The `rel="next"` target of `Link` headers (RFC 8288).
fn next_link(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(reqwest::header::LINK) {
        let Ok(text) = value.to_str() else { continue };
        let mut rest = text;
        while let Some(open) = rest.find('<') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('>') else { break };
            let target = &after[..close];
            let tail = &after[close + 1..];
            // The parameters run to the next link (`, <`).
            let end = tail.find('<').unwrap_or(tail.len());
            let params = &tail[..end];
            let is_next = params.split(';').any(|p| {
                let Some((k, v)) = p.split_once('=') else {
                    return false;
                };
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches(|c| c == '"' || c == ',')
                        .split_ascii_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            });
            if is_next {
                return Some(target.trim().to_string());
            }
            rest = &tail[end..];
        }
    }
    None
}

/// One page as received.
struct Page {
    number: u64,
    url: Url,
    status: StatusCode,
    bytes: usize,
    headers: HeaderMap,
    body: Value,
}

/// Why reading a body failed.
enum BodyError {
    /// The connection broke; the request may be sent again.
    Retry(String),
    /// It cannot succeed (too large) or was cancelled.
    Fatal(DataError),
}

/// Sends the requests of one attempt: pacing, retries, bounded bodies, logging.
struct Fetcher {
    cfg: Arc<Config>,
    prep: Prepared,
    client: reqwest::Client,
    log: Arc<LogFile>,
    cancel: CancellationToken,
    /// Set once the frame exists: its closing (the reader went away) stops the fetcher.
    tx: Option<BatchSender>,
    bytes: Arc<AtomicU64>,
    last_request: Option<Instant>,
}

impl Fetcher {
    /// Runs `f` unless the task is cancelled or the reader went away first.
    async fn guard<F: Future>(&self, f: F) -> Result<F::Output, DataError> {
        let closed = async {
            match &self.tx {
                Some(tx) => tx.closed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(DataError::Cancelled),
            _ = closed => Err(DataError::Cancelled),
            v = f => Ok(v),
        }
    }

    async fn sleep(&self, d: Duration) -> Result<(), DataError> {
        self.guard(tokio::time::sleep(d)).await
    }

    /// Masks secrets and credentials in text that goes to the log or into an error.
    fn scrub(&self, text: &str) -> String {
        let mut t = self.log.redactor().redact_str(text);
        for m in &self.prep.masks {
            t = t.replace(m.as_str(), "***");
        }
        t
    }

    /// A URL for people: the query decoded, an API key in it masked, secrets redacted.
    fn show(&self, url: &Url) -> String {
        let mut u = url.clone();
        u.set_query(None);
        let mut text = u.to_string();
        let pairs: Vec<String> = url
            .query_pairs()
            .map(|(k, v)| match &self.prep.query_key {
                Some((p, _)) if *p == k => format!("{k}=***"),
                _ if v.is_empty() => k.into_owned(),
                _ => format!("{k}={v}"),
            })
            .collect();
        if !pairs.is_empty() {
            text.push('?');
            text.push_str(&pairs.join("&"));
        }
        self.scrub(&text)
    }

    /// Waits until `rate_limit` allows the next request. The interval counts from when the
    /// previous answer arrived (not when it was sent), so the server never sees two
    /// requests closer than the interval, whatever the network's delays.
    async fn pace(&self) -> Result<(), DataError> {
        if let (Some(interval), Some(last)) = (self.cfg.interval, self.last_request) {
            let due = last + interval;
            let now = Instant::now();
            if due > now {
                self.sleep(due - now).await?;
            }
        }
        Ok(())
    }

    fn request(&self, url: &Url) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .request(self.cfg.method.clone(), url.clone())
            .headers(self.prep.headers.clone());
        if let Some((user, password)) = &self.prep.basic {
            req = req.basic_auth(user, password.as_ref());
        }
        if let Some((body, content_type)) = &self.prep.body {
            if let Some(ct) = content_type {
                if !self
                    .prep
                    .headers
                    .contains_key(reqwest::header::CONTENT_TYPE)
                {
                    req = req.header(reqwest::header::CONTENT_TYPE, *ct);
                }
            }
            req = req.body(body.clone());
        }
        req
    }

    async fn read_body(
        &self,
        mut resp: reqwest::Response,
        what: &str,
    ) -> Result<Vec<u8>, BodyError> {
        let max = self.cfg.max_response;
        let too_big = || {
            BodyError::Fatal(DataError::Invalid(format!(
                "{what}: the response is larger than `max_response_size` ({max} bytes); raise it, or ask the API for smaller pages"
            )))
        };
        if resp.content_length().is_some_and(|n| n > max) {
            return Err(too_big());
        }
        let mut buf = Vec::new();
        loop {
            let chunk = match self.guard(resp.chunk()).await {
                Err(e) => return Err(BodyError::Fatal(e)),
                Ok(Err(e)) => return Err(BodyError::Retry(self.scrub(&error_text(e)))),
                Ok(Ok(None)) => return Ok(buf),
                Ok(Ok(Some(c))) => c,
            };
            self.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if buf.len() as u64 + chunk.len() as u64 > max {
                return Err(too_big());
            }
            buf.extend_from_slice(&chunk);
        }
    }

    /// The start of an error response's body, for the message.
    async fn snippet(&self, resp: reqwest::Response) -> String {
        let mut resp = resp;
        let mut buf = Vec::new();
        while buf.len() < 64 * 1024 {
            match self.guard(resp.chunk()).await {
                Ok(Ok(Some(c))) => buf.extend_from_slice(&c),
                _ => break,
            }
        }
        let lossy = String::from_utf8_lossy(&buf);
        // One line, runs of blanks (and control characters) as one space.
        let words: Vec<&str> = lossy
            .split(|c: char| c.is_whitespace() || c.is_control())
            .filter(|w| !w.is_empty())
            .collect();
        // Masked before it is cut, so no part of a secret is left at the end.
        let text: String = self
            .scrub(&words.join(" "))
            .chars()
            .take(ERROR_BODY_CHARS)
            .collect();
        if text.is_empty() {
            String::new()
        } else {
            format!(": {text}")
        }
    }

    /// Fetches page `number` from `url`, retrying what a retry may fix; logs one line.
    async fn fetch(&mut self, number: u64, url: &Url) -> Result<Page, DataError> {
        let what = format!("page {number} ({} {})", self.cfg.method, self.show(url));
        let attempts = self.cfg.retries + 1;
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.pace().await?;
            let sent = self.guard(self.request(url).send()).await?;
            self.last_request = Some(Instant::now());
            let (failure, wait) = match sent {
                Err(e) => {
                    let again = retryable(&e);
                    let text = self.scrub(&error_text(e));
                    if !again {
                        return Err(DataError::Invalid(format!("{what}: {text}")));
                    }
                    (text, None)
                }
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        let headers = resp.headers().clone();
                        match self.read_body(resp, &what).await {
                            Ok(buf) => {
                                let body = parse_body(status, &headers, &buf, &what)?;
                                return Ok(Page {
                                    number,
                                    url: url.clone(),
                                    status,
                                    bytes: buf.len(),
                                    headers,
                                    body,
                                });
                            }
                            Err(BodyError::Fatal(e)) => return Err(e),
                            Err(BodyError::Retry(text)) => {
                                (format!("reading the response failed: {text}"), None)
                            }
                        }
                    } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                        let wait = retry_after(resp.headers(), chrono::Utc::now());
                        (format!("HTTP {status}"), wait)
                    } else {
                        let hint = match status.as_u16() {
                            401 | 403 => " (check `auth`)",
                            404 => " (check `url`)",
                            300..=399 => " (redirects to another host are not followed)",
                            _ => "",
                        };
                        let body = self.snippet(resp).await;
                        return Err(DataError::Invalid(format!(
                            "{what}: HTTP {status}{hint}{body}"
                        )));
                    }
                }
            };
            if attempt >= attempts {
                return Err(DataError::Io(format!(
                    "{what}: {failure} (gave up after {attempts} attempts)"
                )));
            }
            let delay = wait.unwrap_or_else(|| backoff(self.cfg.retry_delay, attempt));
            self.log.note(&self.scrub(&format!(
                "{what}: {failure}; retrying in {} (attempt {} of {attempts})",
                format_duration(delay),
                attempt + 1
            )));
            self.sleep(delay).await?;
        }
    }
}

/// A successful response's body as JSON (a 204 is an empty page).
fn parse_body(
    status: StatusCode,
    headers: &HeaderMap,
    buf: &[u8],
    what: &str,
) -> Result<Value, DataError> {
    if status == StatusCode::NO_CONTENT {
        return Ok(Value::Array(vec![]));
    }
    let text = buf.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(buf);
    serde_json::from_slice(text).map_err(|e| {
        let ct = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let note = if ct.is_empty() || ct.contains("json") {
            String::new()
        } else {
            format!(" (the server sent content type `{ct}`)")
        };
        let e = e.to_string();
        let e = if e.starts_with("recursion limit exceeded") {
            format!("nested more than 128 levels deep ({e})")
        } else {
            e
        };
        DataError::Invalid(format!("{what}: malformed JSON: {e}{note}"))
    })
}

/// Where pagination stands, and the next request it asks for.
struct Pager {
    pagination: Pagination,
    records: Option<JsonPath>,
    base: Url,
    query_key: Option<(String, String)>,
    /// Records received so far.
    seen: u64,
    /// The page number or offset of the last request.
    position: i64,
    last_cursor: Option<String>,
}

impl Pager {
    fn new(cfg: &Config, prep: &Prepared) -> Pager {
        let position = match &cfg.pagination {
            Pagination::Page { start, .. } | Pagination::Offset { start, .. } => *start,
            _ => 0,
        };
        Pager {
            pagination: cfg.pagination.clone(),
            records: cfg.records.clone(),
            base: prep.base.clone(),
            query_key: prep.query_key.clone(),
            seen: 0,
            position,
            last_cursor: None,
        }
    }

    /// The first request's URL.
    fn first(&self) -> Url {
        match &self.pagination {
            Pagination::Page { param, size, .. } => {
                let mut q = vec![(param.clone(), self.position.to_string())];
                if let Some((sp, s)) = size {
                    q.push((sp.clone(), s.to_string()));
                }
                with_query(&self.base, &q)
            }
            Pagination::Offset { param, limit, .. } => with_query(
                &self.base,
                &[
                    (param.clone(), self.position.to_string()),
                    (limit.0.clone(), limit.1.to_string()),
                ],
            ),
            _ => self.base.clone(),
        }
    }

    /// A next URL from the server: resolved against the page's URL, kept on the origin of
    /// `url`, with the API key added when it is sent in the query.
    fn follow(&self, page: &Page, target: &str) -> Result<Url, DataError> {
        let url = page.url.join(target).map_err(|e| {
            DataError::Invalid(format!(
                "page {}: the next page's URL is not a URL ({e})",
                page.number
            ))
        })?;
        if url.origin() != self.base.origin() {
            return Err(DataError::Invalid(format!(
                "page {}: the next page is on another host ({}); cauce sends requests (and credentials) only to the origin of `url`",
                page.number,
                url.origin().ascii_serialization()
            )));
        }
        Ok(match &self.query_key {
            Some((k, v)) if !url.query_pairs().any(|(q, _)| q == k.as_str()) => {
                with_query(&url, &[(k.clone(), v.clone())])
            }
            _ => url,
        })
    }

    /// Takes the page's records and decides what comes next (`None`: the end).
    fn step(&mut self, mut page: Page) -> Result<(Vec<Value>, Option<Url>), DataError> {
        let n = page.number;
        // What the body says about the next page, read before the records are taken out.
        let total = match &self.pagination {
            Pagination::Page {
                total: Some(path), ..
            }
            | Pagination::Offset {
                total: Some(path), ..
            } => Some(read_total(path, &page.body, n)?),
            _ => None,
        };
        let pointer = match &self.pagination {
            Pagination::Cursor { path, .. } | Pagination::NextUrl { path } => {
                read_pointer(path, &page.body, n)?
            }
            Pagination::LinkHeader => next_link(&page.headers),
            _ => None,
        };
        let records = match &self.records {
            None => page.body.take(),
            Some(path) => path.take(&mut page.body).map_err(|why| {
                DataError::Invalid(format!(
                    "page {n}: the records path `{}` is not in the response: {why}",
                    path.text
                ))
            })?,
        };
        let records = match records {
            Value::Array(a) => a,
            Value::Null if self.records.is_some() => vec![],
            Value::Object(m) if self.records.is_none() => {
                let keys: Vec<&str> = m.keys().take(20).map(|k| k.as_str()).collect();
                return Err(DataError::Invalid(format!(
                    "page {n}: the response is an object, not an array of records; set `records` to the path of the array (the response's keys: {})",
                    keys.join(", ")
                )));
            }
            other => {
                return Err(DataError::Invalid(format!(
                    "page {n}: {} is {}, not an array of records",
                    self.records
                        .as_ref()
                        .map(|p| format!("`{}`", p.text))
                        .unwrap_or_else(|| "the response".into()),
                    kind_of(&other)
                )))
            }
        };
        self.seen += records.len() as u64;
        if records.is_empty() {
            return Ok((records, None));
        }
        let next = match &self.pagination {
            Pagination::None => None,
            Pagination::Page { param, size, .. } => {
                if total.is_some_and(|t| self.seen >= t) {
                    None
                } else {
                    self.position += 1;
                    let mut q = vec![(param.clone(), self.position.to_string())];
                    if let Some((sp, s)) = size {
                        q.push((sp.clone(), s.to_string()));
                    }
                    Some(with_query(&self.base, &q))
                }
            }
            Pagination::Offset { param, limit, .. } => {
                if total.is_some_and(|t| self.seen >= t) {
                    None
                } else {
                    // By the records received, not the limit asked for: a server that caps
                    // the limit lower leaves no gap.
                    self.position += records.len() as i64;
                    Some(with_query(
                        &self.base,
                        &[
                            (param.clone(), self.position.to_string()),
                            (limit.0.clone(), limit.1.to_string()),
                        ],
                    ))
                }
            }
            Pagination::Cursor { param, .. } => match pointer {
                None => None,
                Some(c) => {
                    if self.last_cursor.as_deref() == Some(c.as_str()) {
                        return Err(DataError::Invalid(format!(
                            "page {n}: the server returned the same cursor as on the page before; it would loop"
                        )));
                    }
                    let url = with_query(&self.base, &[(param.clone(), c.clone())]);
                    self.last_cursor = Some(c);
                    Some(url)
                }
            },
            Pagination::LinkHeader | Pagination::NextUrl { .. } => match pointer {
                None => None,
                Some(target) => {
                    let url = self.follow(&page, &target)?;
                    if url == page.url {
                        return Err(DataError::Invalid(format!(
                            "page {n}: the next page's URL is this page's; it would loop"
                        )));
                    }
                    Some(url)
                }
            },
        };
        Ok((records, next))
    }
}

/// A total count read from the body.
fn read_total(path: &JsonPath, body: &Value, page: u64) -> Result<u64, DataError> {
    let value = path.get(body);
    let count = match value {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match (count, value) {
        (Some(c), _) => Ok(c),
        (None, Some(other)) => Err(DataError::Invalid(format!(
            "page {page}: `{}` (total_path) is {}, not a count",
            path.text,
            kind_of(other)
        ))),
        (None, None) => Err(DataError::Invalid(format!(
            "page {page}: `{}` (total_path) is not in the response",
            path.text
        ))),
    }
}

/// A next cursor or URL read from the body; `None` when it is absent, null, empty or false.
fn read_pointer(path: &JsonPath, body: &Value, page: u64) -> Result<Option<String>, DataError> {
    match path.get(body) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(DataError::Invalid(format!(
            "page {page}: `{}` is {}, not a cursor or URL",
            path.text,
            kind_of(other)
        ))),
    }
}

/// How the API source reads records: a value must be of its column's JSON type, whole
/// numbers past Int64 stay exact as text, declared columns are read as text (the extract
/// casts them) and are always there.
const RULES: Rules = Rules {
    flatten: false,
    big_ints_as_text: true,
    loose: false,
    typed_declared: false,
    keep_unseen_declared: true,
};

/// Columns from the first page's records: fields in order of first appearance, typed by
/// their values; declared columns are read as text (the extract casts them) and are always
/// there. Returns the columns and the declared ones no record had.
fn infer(records: &[Value], declared: &IndexMap<String, ColumnType>) -> (Vec<Column>, Vec<String>) {
    let mut seen = Inference::default();
    for r in records {
        if let Value::Object(m) = r {
            seen.record(m, &RULES);
        }
    }
    let missing = declared
        .keys()
        .filter(|k| !seen.contains(k))
        .cloned()
        .collect();
    (seen.columns(declared, &RULES), missing)
}

/// Fields not on the first page, noted in the log once each (up to [`MAX_FIELD_NOTES`]).
#[derive(Default)]
struct Noted {
    names: HashSet<String>,
    more: bool,
}

impl Noted {
    fn note(&mut self, name: &str, page: u64, log: &LogFile) {
        if self.names.contains(name) || self.more {
            return;
        }
        if self.names.len() >= MAX_FIELD_NOTES {
            self.more = true;
            log.note(&format!(
                "page {page}: more fields not seen on the first page; they are ignored too"
            ));
            return;
        }
        self.names.insert(name.to_string());
        log.note(&format!(
            "page {page}: field `{name}` was not on the first page; it is ignored (declare it in `columns` to keep it)"
        ));
    }
}

/// A record's misfits, named by its page and number.
struct Place<'a> {
    page: u64,
    record: usize,
    noted: &'a mut Noted,
    log: &'a LogFile,
}

impl Misfits for Place<'_> {
    fn unknown(&mut self, name: &str, _: &Value) -> Result<(), DataError> {
        self.noted.note(name, self.page, self.log);
        Ok(())
    }

    fn misfit(&mut self, column: &Column, name: &str, v: &Value, _: &str) -> DataError {
        DataError::Invalid(format!(
            "page {}, record {}: field `{name}` is {}, but the first page made it a column of type `{}`; declare it in `columns` (such as `{name}: string`)",
            self.page,
            self.record,
            kind_of(v),
            column.kind.name()
        ))
    }
}

/// Turns records into batches of the inferred schema.
struct Converter {
    rows: Rows,
    batch_size: usize,
    noted: Noted,
}

impl Converter {
    fn new(cols: Vec<Column>, batch_size: usize) -> Converter {
        let batch_size = batch_size.max(1);
        Converter {
            rows: Rows::new(cols, batch_size, RULES),
            batch_size,
            noted: Noted::default(),
        }
    }

    /// One batch of `records` (numbered from `first` within page `page`).
    fn batch(
        &mut self,
        records: &[Value],
        page: u64,
        first: usize,
        log: &LogFile,
    ) -> Result<RecordBatch, DataError> {
        for (i, r) in records.iter().enumerate() {
            let Value::Object(m) = r else {
                return Err(DataError::Invalid(format!(
                    "page {page}, record {} is {}, not an object; `records` must point at an array of objects",
                    first + i + 1,
                    kind_of(r)
                )));
            };
            let mut place = Place {
                page,
                record: first + i + 1,
                noted: &mut self.noted,
                log,
            };
            self.rows.push(m, &mut place)?;
        }
        self.rows.finish(&format!("page {page}"))
    }
}

/// Converts and sends one page's records; `Err(Cancelled)` when the reader went away.
async fn send_page(
    f: &Fetcher,
    conv: &mut Converter,
    tx: &BatchSender,
    records: &[Value],
    page: u64,
) -> Result<(), DataError> {
    let size = conv.batch_size;
    for (i, chunk) in records.chunks(size).enumerate() {
        let batch = conv.batch(chunk, page, i * size, &f.log)?;
        if f.guard(tx.send(Ok(batch))).await?.is_err() {
            return Err(DataError::Cancelled);
        }
    }
    Ok(())
}

/// The reader: sends the first page's records, then fetches and sends page after page.
async fn produce(
    mut f: Fetcher,
    mut pager: Pager,
    mut conv: Converter,
    tx: BatchSender,
    first: (Vec<Value>, Option<Url>),
) {
    let max_pages = f.cfg.max_pages;
    let run = async {
        let (mut records, mut next) = first;
        let mut number = 1u64;
        loop {
            send_page(&f, &mut conv, &tx, &records, number).await?;
            let Some(url) = next else { return Ok(()) };
            if number >= max_pages {
                return Err(DataError::Invalid(format!(
                    "stopped after `max_pages` ({max_pages}) pages: page {number} still points at a next page; raise `max_pages` if the API really has more, or check the pagination settings"
                )));
            }
            number += 1;
            drop(records);
            let page = f.fetch(number, &url).await?;
            (records, next) = page_step(&f, &mut pager, page)?;
        }
    };
    let result: Result<(), DataError> = run.await;
    match result {
        Ok(()) | Err(DataError::Cancelled) => {}
        Err(e) => {
            let _ = f.guard(tx.send(Err(stream_error(e)))).await;
        }
    }
}

/// Takes a page's records, logging the page's line.
fn page_step(
    f: &Fetcher,
    pager: &mut Pager,
    page: Page,
) -> Result<(Vec<Value>, Option<Url>), DataError> {
    let (number, status, bytes) = (page.number, page.status, page.bytes);
    let shown = f.show(&page.url);
    let step = pager.step(page)?;
    f.log.note(&format!(
        "page {number}: {} {shown} -> {status}, {} records, {bytes} bytes{}",
        f.cfg.method,
        step.0.len(),
        if step.1.is_some() { "" } else { "; last page" }
    ));
    Ok(step)
}

#[async_trait]
impl Source for HttpApiSource {
    fn describe(&self) -> String {
        let cfg = &self.cfg;
        let mut d = format!("http_api {} {}", cfg.method, cfg.url);
        if !matches!(cfg.pagination, Pagination::None) {
            d.push_str(&format!(" ({} pagination)", cfg.pagination.name()));
        }
        d
    }

    async fn read(&self, cx: &SourceContext<'_>) -> Result<DataFrame, DataError> {
        let prep = self.prepare(cx)?;
        let origin = prep.base.origin();
        let client = reqwest::Client::builder()
            .timeout(self.cfg.timeout)
            .user_agent(concat!("cauce/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::custom(move |a| {
                if a.previous().len() >= 10 || a.url().origin() != origin {
                    a.stop()
                } else {
                    a.follow()
                }
            }))
            .build()
            .map_err(|e| DataError::Io(format!("cannot set up the HTTP client: {e}")))?;
        let pager = Pager::new(&self.cfg, &prep);
        let mut f = Fetcher {
            cfg: self.cfg.clone(),
            prep,
            client,
            log: cx.task.log.clone(),
            cancel: cx.task.cancel.clone(),
            tx: None,
            bytes: cx.bytes_read.clone(),
            last_request: None,
        };
        let mut pager = pager;
        let url = pager.first();
        let page = f.fetch(1, &url).await?;
        let first = page_step(&f, &mut pager, page)?;
        let (cols, missing) = infer(&first.0, cx.columns);
        if !missing.is_empty() {
            cx.task.log.note(&format!(
                "declared column(s) {} not in the first page's records; they are null where absent",
                missing
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let conv = Converter::new(cols, cx.task.data.batch_size);
        let (tx, df) = channel_frame(cx.session, conv.rows.schema())?;
        f.tx = Some(tx.clone());
        tokio::spawn(produce(f, pager, conv, tx, first));
        Ok(df)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::records::Kind;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn link_headers_give_the_next_target() {
        let h = headers(&[(
            "link",
            r#"<https://api.x/items?page=1>; rel="prev first", <https://api.x/items?page=3>; rel="next", <https://api.x/items?page=9>; rel=last"#,
        )]);
        assert_eq!(next_link(&h).as_deref(), Some("https://api.x/items?page=3"));
        let h = headers(&[("link", "</items?page=2>; rel=NEXT")]);
        assert_eq!(next_link(&h).as_deref(), Some("/items?page=2"));
        let h = headers(&[("link", r#"<https://api.x/a>; rel="last""#)]);
        assert_eq!(next_link(&h), None);
        assert_eq!(next_link(&headers(&[("link", "garbage <")])), None);
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        let now = chrono::DateTime::parse_from_rfc3339("2024-01-05T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let h = headers(&[("retry-after", "3")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(3)));
        let h = headers(&[("retry-after", "315360000")]);
        assert_eq!(retry_after(&h, now), Some(MAX_WAIT));
        let h = headers(&[("retry-after", "99999999999999999999999999")]);
        assert_eq!(retry_after(&h, now), Some(MAX_WAIT));
        let h = headers(&[("retry-after", "Fri, 05 Jan 2024 10:00:20 GMT")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(20)));
        let h = headers(&[("retry-after", "Fri, 05 Jan 2024 09:00:00 GMT")]);
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        let h = headers(&[("retry-after", "Thu, 05 Jan 2034 09:00:00 GMT")]);
        assert_eq!(retry_after(&h, now), Some(MAX_WAIT));
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = backoff(Duration::from_secs(1), 3);
        assert!(b >= Duration::from_secs(4) && b <= Duration::from_millis(4400));
        assert!(backoff(Duration::from_secs(1), 60) <= MAX_WAIT.mul_f64(1.1));
    }

    #[test]
    fn paths_take_records_or_say_what_is_there() {
        let p = JsonPath::parse("data.items").unwrap();
        let mut v = serde_json::json!({"data": {"items": [1, 2]}});
        assert_eq!(p.take(&mut v).unwrap(), serde_json::json!([1, 2]));
        let mut v = serde_json::json!({"data": {"rows": []}});
        let e = p.take(&mut v).unwrap_err();
        assert!(
            e.contains("`data` has no key `items`") && e.contains("rows"),
            "{e}"
        );
        assert!(JsonPath::parse("a..b").is_err());
        let p = JsonPath::parse("links.0.href").unwrap();
        let v = serde_json::json!({"links": [{"href": "x"}]});
        assert_eq!(p.get(&v), Some(&Value::String("x".into())));
    }

    #[test]
    fn inference_widens_and_declared_columns_are_text() {
        let records = vec![
            serde_json::json!({"id": 1, "price": 2, "ok": true, "tags": ["a"], "n": null}),
            serde_json::json!({"id": 2, "price": 2.5, "ok": false, "when": "2024-01-05"}),
        ];
        let mut declared = IndexMap::new();
        declared.insert(
            "when".to_string(),
            crate::data::types::RawColumn::Type("timestamp".into())
                .build()
                .unwrap(),
        );
        declared.insert(
            "later".to_string(),
            crate::data::types::RawColumn::Type("int".into())
                .build()
                .unwrap(),
        );
        let (cols, missing) = infer(&records, &declared);
        let kinds: Vec<(&str, Kind)> = cols.iter().map(|c| (c.name.as_str(), c.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("id", Kind::Int),
                ("price", Kind::Float),
                ("ok", Kind::Bool),
                ("tags", Kind::Text),
                ("n", Kind::Text),
                ("when", Kind::Text),
                ("later", Kind::Text),
            ]
        );
        assert_eq!(missing, vec!["later".to_string()]);
    }

    #[test]
    fn query_parameters_replace_those_of_the_same_name() {
        let u = Url::parse("http://h/x?page=7&a=1").unwrap();
        let u = with_query(&u, &[("page".into(), "2".into())]);
        assert_eq!(u.as_str(), "http://h/x?a=1&page=2");
        let u = with_query(&u, &[("q".into(), "a b&c".into())]);
        assert_eq!(u.as_str(), "http://h/x?a=1&page=2&q=a+b%26c");
    }
}
