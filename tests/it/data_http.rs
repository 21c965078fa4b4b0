//! `source: http_api` end to end: a real HTTP server on loopback (axum, one per test on its
//! own port) serves pages; pipelines run through the binary and load what they read into
//! CSV or Parquet, which is read back. Every pagination style, retries of 429 and 500,
//! malformed pages, auth (and tokens kept out of the log), records paths, incremental
//! cursors sent as query parameters, typed columns, the `max_pages` guard and cancellation.

use crate::common::{latest_run, py, Project};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: String,
    at: Instant,
}

impl Req {
    fn q(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// An answer.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

fn ok(body: Value) -> Resp {
    Resp {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string(),
    }
}

fn status(code: u16, body: &str) -> Resp {
    Resp {
        status: code,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string(),
    }
}

type Handler = dyn Fn(&Req, usize) -> Resp + Send + Sync;

/// An axum server on 127.0.0.1 answering with `handler(request, index)`; stops when dropped.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Req>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    fn start(handler: impl Fn(&Req, usize) -> Resp + Send + Sync + 'static) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Req>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let log = seen.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
                    let handler = handler.clone();
                    let log = log.clone();
                    async move {
                        let at = Instant::now();
                        let method = req.method().to_string();
                        let path = req.uri().path().to_string();
                        let raw = req.uri().query().unwrap_or("").to_string();
                        let query = reqwest::Url::parse(&format!("http://x/?{raw}"))
                            .unwrap()
                            .query_pairs()
                            .map(|(k, v)| (k.into_owned(), v.into_owned()))
                            .collect();
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                            .await
                            .unwrap();
                        let r = Req {
                            method,
                            path,
                            query,
                            headers,
                            body: String::from_utf8_lossy(&body).into_owned(),
                            at,
                        };
                        let index = {
                            let mut seen = log.lock().unwrap();
                            seen.push(r.clone());
                            seen.len() - 1
                        };
                        let resp = handler(&r, index);
                        let mut b = axum::response::Response::builder().status(resp.status);
                        for (k, v) in &resp.headers {
                            b = b.header(k, v);
                        }
                        b.body(axum::body::Body::from(resp.body)).unwrap()
                    }
                });
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Server {
            port,
            seen,
            stop: Some(stop),
        }
    }

    fn requests(&self) -> Vec<Req> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Records `{id, name}` numbered 1..=n.
fn items(from: usize, to: usize) -> Vec<Value> {
    (from..=to)
        .map(|i| json!({"id": i, "name": format!("item {i}")}))
        .collect()
}

/// Records `first..first+count` of 7, clipped.
fn slice(first: usize, count: usize) -> Vec<Value> {
    let to = (first + count - 1).min(7);
    if first > 7 {
        vec![]
    } else {
        items(first, to)
    }
}

/// A pipeline that extracts with `source` (YAML lines indented for the extract, `PORT`
/// replaced) and loads into `out/items.csv`.
fn extract_to_csv(p: &Project, name: &str, server: &Server, source: &str) {
    let yaml = format!(
        "tasks:\n  pull:\n    extract:\n      source: http_api\n{}\n  save:\n    depends_on: [pull]\n    load: {{sink: csv, path: out/items.csv}}\n",
        source.trim_end().replace("PORT", &server.port.to_string())
    );
    p.pipeline(name, &yaml);
}

/// The `id` column of `out/items.csv`, sorted.
fn ids(p: &Project) -> Vec<i64> {
    let text = p.read("out/items.csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let at = header
        .iter()
        .position(|h| *h == "id")
        .expect("no id column");
    let mut ids: Vec<i64> = lines
        .map(|l| l.split(',').nth(at).unwrap().parse().unwrap())
        .collect();
    ids.sort();
    ids
}

fn all_seven() -> Vec<i64> {
    (1..=7).collect()
}

/// The error of task `task` in the newest run.
fn task_error(p: &Project, task: &str) -> String {
    let s = p.status(&latest_run(p));
    s["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == task)
        .and_then(|t| t["error"].as_str())
        .unwrap_or("")
        .to_string()
}

/// The first attempt's log of `task` in the newest run.
fn attempt_log(p: &Project, task: &str) -> String {
    let run = latest_run(p);
    p.read(&format!(".cauce/logs/{run}/{task}.1.log"))
}

#[test]
fn page_pagination_delivers_every_record_once_at_the_rate_asked() {
    let server = Server::start(|r, _| {
        let page: usize = r.q("page").unwrap().parse().unwrap();
        let size: usize = r.q("per_page").unwrap().parse().unwrap();
        ok(json!(slice((page - 1) * size + 1, size)))
    });
    let p = Project::new();
    extract_to_csv(
        &p,
        "pages",
        &server,
        r#"
      url: http://127.0.0.1:PORT/items
      params: {status: complete}
      pagination: {type: page, param: page, start: 1, size_param: per_page, size: 2}
      rate_limit: {requests_per_second: 5}
"#,
    );
    let r = p.run(&["run", "pages"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(ids(&p), all_seven());
    let seen = server.requests();
    let pages: Vec<&str> = seen.iter().map(|r| r.q("page").unwrap()).collect();
    assert_eq!(pages, ["1", "2", "3", "4", "5"], "stops on the empty page");
    assert!(seen.iter().all(|r| r.q("status") == Some("complete")));
    for pair in seen.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(190), "requests {gap:?} apart");
    }
    let log = attempt_log(&p, "pull");
    assert!(
        log.contains("page 4: GET http://127.0.0.1:") && log.contains("1 records"),
        "{log}"
    );
}

#[test]
fn offset_pagination_posts_json_and_advances_by_what_arrived() {
    // The server caps the limit at 2 whatever is asked: offsets follow the records received.
    let server = Server::start(|r, _| {
        let offset: usize = r.q("offset").unwrap().parse().unwrap();
        let limit: usize = r.q("limit").unwrap().parse().unwrap();
        ok(json!({"result": slice(offset + 1, limit.min(2))}))
    });
    let p = Project::new();
    extract_to_csv(
        &p,
        "offsets",
        &server,
        r#"
      url: http://127.0.0.1:PORT/search
      method: POST
      json: {filter: {day: "{{ ds }}"}, fields: [id, name]}
      records: result
      pagination: {type: offset, param: offset, limit_param: limit, limit: 3}
"#,
    );
    let r = p.run(&["run", "offsets", "--logical-date", "2024-05-06"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(ids(&p), all_seven());
    let seen = server.requests();
    let offsets: Vec<&str> = seen.iter().map(|r| r.q("offset").unwrap()).collect();
    assert_eq!(offsets, ["0", "2", "4", "6", "7"]);
    for r in &seen {
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            body,
            json!({"filter": {"day": "2024-05-06"}, "fields": ["id", "name"]})
        );
    }
}

#[test]
fn cursor_pagination_follows_the_cursor_in_the_body_until_it_is_null() {
    let server = Server::start(|r, _| {
        let start: usize = match r.q("cursor") {
            None => 1,
            Some(c) => c.trim_start_matches("after-").parse::<usize>().unwrap() + 1,
        };
        let records = slice(start, 2);
        let last = records.last().and_then(|v| v["id"].as_u64()).unwrap();
        let next = if last >= 7 {
            Value::Null
        } else {
            json!(format!("after-{last}"))
        };
        ok(json!({"data": records, "meta": {"next_cursor": next}}))
    });
    let p = Project::new();
    extract_to_csv(
        &p,
        "cursor",
        &server,
        r#"
      url: http://127.0.0.1:PORT/contacts
      params: {limit: 2}
      records: data
      pagination: {type: cursor, param: cursor, path: meta.next_cursor}
"#,
    );
    let r = p.run(&["run", "cursor"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(ids(&p), all_seven());
    let seen = server.requests();
    let cursors: Vec<Option<&str>> = seen.iter().map(|r| r.q("cursor")).collect();
    assert_eq!(
        cursors,
        [None, Some("after-2"), Some("after-4"), Some("after-6")],
        "a null cursor ends it without another request"
    );
    assert!(seen.iter().all(|r| r.q("limit") == Some("2")));
}

#[test]
fn link_header_pagination_follows_rel_next() {
    let server = Server::start(|r, _| {
        let page: usize = r.q("p").map(|p| p.parse().unwrap()).unwrap_or(1);
        let mut resp = ok(json!(slice((page - 1) * 2 + 1, 2)));
        if page < 4 {
            // A relative target, beside other relations.
            resp.headers.push((
                "link".into(),
                format!(
                    "</orders?p=1>; rel=\"first\", </orders?p={}>; rel=\"next\", </orders?p=4>; rel=\"last\"",
                    page + 1
                ),
            ));
        }
        resp
    });
    let p = Project::new();
    extract_to_csv(
        &p,
        "links",
        &server,
        r#"
      url: http://127.0.0.1:PORT/orders
      pagination: {type: link_header}
"#,
    );
    let r = p.run(&["run", "links"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(ids(&p), all_seven());
    let pages: Vec<Option<String>> = server
        .requests()
        .iter()
        .map(|r| r.q("p").map(String::from))
        .collect();
    assert_eq!(
        pages,
        [None, Some("2".into()), Some("3".into()), Some("4".into())]
    );
}

#[test]
fn next_url_pagination_follows_the_url_in_the_body() {
    let server = Arc::new(Mutex::new(0u16));
    let port = server.clone();
    let s = Server::start(move |r, _| {
        let after: usize = r.q("after").map(|a| a.parse().unwrap()).unwrap_or(0);
        let records = slice(after + 1, 2);
        let last = records.last().and_then(|v| v["id"].as_u64()).unwrap();
        let next = if last >= 7 {
            Value::Null
        } else {
            json!(format!(
                "http://127.0.0.1:{}/v1/items?after={last}",
                port.lock().unwrap()
            ))
        };
        ok(json!({"items": records, "links": {"next": next}}))
    });
    *server.lock().unwrap() = s.port;
    let p = Project::new();
    extract_to_csv(
        &p,
        "next",
        &s,
        r#"
      url: http://127.0.0.1:PORT/v1/items
      records: items
      pagination: {type: next_url, path: links.next}
"#,
    );
    let r = p.run(&["run", "next"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(ids(&p), all_seven());
    assert_eq!(s.requests().len(), 4);
}

#[test]
fn a_429_with_retry_after_is_waited_out() {
    let server = Server::start(|_, i| {
        if i == 0 {
            let mut r = status(429, "{\"error\": \"slow down\"}");
            r.headers.push(("retry-after".into(), "1".into()));
            r
        } else {
            ok(json!(items(1, 3)))
        }
    });
    let p = Project::new();
    extract_to_csv(
        &p,
        "limited",
        &server,
        "      url: http://127.0.0.1:PORT/items\n",
    );
    let r = p.run(&["run", "limited"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(ids(&p), vec![1, 2, 3]);
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    let log = attempt_log(&p, "pull");
    assert!(
        log.contains("HTTP 429") && log.contains("retrying"),
        "{log}"
    );
}

#[test]
fn a_500_is_retried_with_backoff() {
    let server = Server::start(|_, i| {
        if i < 2 {
            status(500, "oops")
        } else {
            ok(json!(items(1, 2)))
        }
    });
    let p = Project::new();
    extract_to_csv(
        &p,
        "flaky",
        &server,
        "      url: http://127.0.0.1:PORT/items\n      retry_delay: 100ms\n",
    );
    let r = p.run(&["run", "flaky"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(ids(&p), vec![1, 2]);
    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    // 100ms, then 200ms.
    assert!(seen[2].at - seen[1].at >= Duration::from_millis(200));
}

#[test]
fn a_malformed_page_fails_the_task_naming_the_page() {
    let server = Server::start(|r, _| match r.q("page") {
        Some("1") => ok(json!(items(1, 2))),
        _ => status(200, "[{\"id\": 3, \"name\": \"x\"},"),
    });
    let p = Project::new();
    p.pipeline(
        "bad",
        &r#"
tasks:
  pull:
    retries: 2
    retry_delay: 10ms
    extract:
      source: http_api
      url: http://127.0.0.1:PORT/items
      pagination: {type: page}
"#
        .replace("PORT", &server.port.to_string()),
    );
    let r = p.run(&["run", "bad"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let err = task_error(&p, "pull");
    assert!(err.contains("page 2"), "{err}");
    assert!(err.contains("malformed JSON"), "{err}");
    assert!(err.contains("line 1 column"), "{err}");
    assert!(err.contains("/items?page=2"), "{err}");
    assert_eq!(
        server.requests().len(),
        2,
        "bad data is not retried, by the source or the engine"
    );
}

#[test]
fn auth_reaches_the_server_and_secrets_stay_out_of_the_log() {
    const TOKEN: &str = "tok-s3cr3t-9f8e7d";
    const KEY: &str = "key-s3cr3t-5678";
    let server = Server::start(|r, _| {
        let allowed = match r.path.as_str() {
            "/bearer" => r.header("authorization") == Some(&format!("Bearer {TOKEN}")[..]),
            // etl:pw-s3cr3t-1234
            "/basic" => r.header("authorization") == Some("Basic ZXRsOnB3LXMzY3IzdC0xMjM0"),
            "/header" => r.header("x-api-key") == Some(KEY),
            "/query" => r.q("api_key") == Some(KEY),
            _ => false,
        };
        if allowed {
            ok(json!(items(1, 2)))
        } else {
            status(401, "{\"error\": \"unauthorized\"}")
        }
    });
    let p = Project::new();
    p.write(
        ".env",
        &format!("API_TOKEN={TOKEN}\nAPI_PASSWORD=pw-s3cr3t-1234\nAPI_KEY={KEY}\n"),
    );
    p.pipeline(
        "auth",
        &r#"
tasks:
  bearer:
    extract: {source: http_api, url: "http://127.0.0.1:PORT/bearer", auth: {bearer: "${API_TOKEN}"}}
  basic:
    extract:
      source: http_api
      url: http://127.0.0.1:PORT/basic
      auth: {basic: {user: etl, password: "${API_PASSWORD}"}}
  header:
    extract:
      source: http_api
      url: http://127.0.0.1:PORT/header
      auth: {api_key: {header: X-Api-Key, value: "${API_KEY}"}}
  query:
    extract:
      source: http_api
      url: http://127.0.0.1:PORT/query
      auth: {api_key: {query: api_key, value: "${API_KEY}"}}
  none:
    critical: false
    extract: {source: http_api, url: "http://127.0.0.1:PORT/bearer"}
"#
        .replace("PORT", &server.port.to_string()),
    );
    let r = p.run(&["run", "auth", "--json"]);
    assert_eq!(r.code, 1, "only `none` fails: {}{}", r.stdout, r.stderr);
    let run = latest_run(&p);
    let s = p.status(&run);
    for t in s["tasks"].as_array().unwrap() {
        let id = t["task_id"].as_str().unwrap();
        if id == "none" {
            assert_eq!(t["state"], "failed");
            let err = t["error"].as_str().unwrap();
            assert!(
                err.contains("HTTP 401") && err.contains("unauthorized"),
                "{err}"
            );
        } else {
            assert_eq!(t["state"], "success", "{t}");
            assert_eq!(t["metrics"]["rows_out"], 2, "{t}");
        }
    }
    let mut everything = format!("{}{}{}", r.stdout, r.stderr, s);
    for task in ["bearer", "basic", "header", "query", "none"] {
        let log = p.read(&format!(".cauce/logs/{run}/{task}.1.log"));
        assert!(log.contains("page 1"), "{task}: {log}");
        everything.push_str(&log);
    }
    let query_log = p.read(&format!(".cauce/logs/{run}/query.1.log"));
    assert!(query_log.contains("api_key=***"), "{query_log}");
    for secret in [TOKEN, KEY, "pw-s3cr3t-1234", "ZXRsOnB3LXMzY3IzdC0xMjM0"] {
        assert!(
            !everything.contains(secret),
            "{secret} leaked: {everything}"
        );
    }
}

#[test]
fn a_missing_records_path_is_a_clear_error() {
    let server = Server::start(|_, _| ok(json!({"data": {"rows": items(1, 2), "count": 2}})));
    let p = Project::new();
    extract_to_csv(
        &p,
        "path",
        &server,
        "      url: http://127.0.0.1:PORT/items\n      records: data.items\n",
    );
    let r = p.run(&["run", "path"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let err = task_error(&p, "pull");
    assert!(err.contains("`data.items`"), "{err}");
    assert!(err.contains("page 1"), "{err}");
    assert!(err.contains("has no key `items`"), "{err}");
    assert!(err.contains("rows, count"), "{err}");
}

#[test]
fn an_incremental_extract_sends_the_stored_cursor() {
    let orders = Arc::new(Mutex::new(vec![
        json!({"id": 1, "updated_at": "2024-01-05 10:00:00"}),
        json!({"id": 2, "updated_at": "2024-01-06 09:30:00"}),
        json!({"id": 3, "updated_at": "2024-01-05 12:00:00"}),
    ]));
    let data = orders.clone();
    let server = Server::start(move |r, _| {
        let since = r.q("updated_since").map(String::from);
        let rows: Vec<Value> = data
            .lock()
            .unwrap()
            .iter()
            .filter(|o| match &since {
                None => true,
                Some(s) => o["updated_at"].as_str().unwrap() > s.as_str(),
            })
            .cloned()
            .collect();
        ok(json!({"items": rows}))
    });
    let p = Project::new();
    p.pipeline(
        "orders",
        &r#"
tasks:
  orders:
    extract:
      source: http_api
      url: http://127.0.0.1:PORT/orders
      params: {updated_since: "{{ watermark }}"}
      records: items
      columns: {updated_at: string}
      incremental: {cursor: updated_at}
"#
        .replace("PORT", &server.port.to_string()),
    );
    let rows = |p: &Project| {
        let s = p.status(&latest_run(p));
        s["tasks"][0]["metrics"]["rows_out"].as_u64().unwrap()
    };
    let r = p.run(&["run", "orders"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(rows(&p), 3);
    orders
        .lock()
        .unwrap()
        .push(json!({"id": 4, "updated_at": "2024-01-07 08:00:00"}));
    let r = p.run(&["run", "orders"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(rows(&p), 1);
    // Nothing new: an empty page, still the declared cursor column, and a success.
    let r = p.run(&["run", "orders"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(rows(&p), 0);
    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].q("updated_since"), None, "no cursor yet: not sent");
    assert_eq!(seen[1].q("updated_since"), Some("2024-01-06 09:30:00"));
    assert_eq!(seen[2].q("updated_since"), Some("2024-01-07 08:00:00"));
}

#[test]
fn records_become_typed_columns_and_later_fields_are_noted() {
    let server = Server::start(|r, _| match r.q("page") {
        Some("1") => ok(json!([
            {"id": 1, "price": 10, "paid": true, "customer": {"email": "a@x.com"}, "tags": ["a", "b"], "created_at": "2024-01-05 10:00:00", "note": "first"},
            {"id": 2, "price": 5.25, "paid": false, "customer": null, "tags": [], "created_at": "2024-01-06 11:30:00"}
        ])),
        Some("2") => ok(json!([
            {"id": 3, "price": 7, "paid": true, "created_at": "2024-01-07 08:00:00", "coupon": "X1"}
        ])),
        _ => ok(json!([])),
    });
    let p = Project::new();
    p.pipeline(
        "typed",
        &r#"
tasks:
  pull:
    extract:
      source: http_api
      url: http://127.0.0.1:PORT/orders
      pagination: {type: page}
      columns: {created_at: timestamp}
  save:
    depends_on: [pull]
    load: {sink: parquet, path: out/orders.parquet}
"#
        .replace("PORT", &server.port.to_string()),
    );
    let r = p.run(&["run", "typed"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let out = py(
        p.path(),
        r#"
import pyarrow.parquet as pq
t = pq.read_table('out/orders.parquet').sort_by('id')
print({f.name: str(f.type) for f in t.schema})
for row in t.to_pylist():
    print(row)
"#,
    );
    let mut lines = out.lines();
    let types = lines.next().unwrap();
    assert_eq!(
        types,
        "{'id': 'int64', 'price': 'double', 'paid': 'bool', 'customer': 'string', 'tags': 'string', 'created_at': 'timestamp[us]', 'note': 'string'}"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(
        rows[0].contains("'customer': '{\"email\":\"a@x.com\"}', 'tags': '[\"a\",\"b\"]'")
            && rows[0].contains("datetime.datetime(2024, 1, 5, 10, 0)"),
        "{}",
        rows[0]
    );
    assert!(
        rows[1].contains("'price': 5.25") && rows[1].contains("'customer': None"),
        "{}",
        rows[1]
    );
    assert!(
        rows[2].contains("'price': 7.0") && rows[2].contains("'note': None"),
        "{}",
        rows[2]
    );
    let log = attempt_log(&p, "pull");
    assert!(
        log.contains("field `coupon` was not on the first page; it is ignored"),
        "{log}"
    );
}

#[test]
fn a_server_that_never_stops_hits_max_pages() {
    let server = Server::start(|_, i| ok(json!({"data": [{"id": i}], "next": format!("c{i}")})));
    let p = Project::new();
    extract_to_csv(
        &p,
        "endless",
        &server,
        r#"
      url: http://127.0.0.1:PORT/items
      records: data
      pagination: {type: cursor, path: next}
      max_pages: 3
"#,
    );
    let r = p.run(&["run", "endless"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let err = task_error(&p, "pull");
    assert!(err.contains("`max_pages` (3)"), "{err}");
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn a_long_retry_after_is_cut_short_by_the_task_timeout() {
    let server = Server::start(|_, _| {
        let mut r = status(429, "{}");
        r.headers.push(("retry-after".into(), "315360000".into()));
        r
    });
    let p = Project::new();
    p.pipeline(
        "slow",
        &"tasks:\n  pull:\n    timeout: 2s\n    extract: {source: http_api, url: \"http://127.0.0.1:PORT/x\"}\n"
            .replace("PORT", &server.port.to_string()),
    );
    let start = Instant::now();
    let r = p.run(&["run", "slow"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
    let err = task_error(&p, "pull");
    assert!(
        err.contains("timed out") || err.contains("timeout"),
        "{err}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn spec_mistakes_are_located_errors() {
    let p = Project::new();
    p.pipeline(
        "typo",
        "tasks:\n  a:\n    extract:\n      source: http_api\n      url: http://127.0.0.1:1/x\n      pagination: {type: pages}\n  b:\n    extract:\n      source: http_api\n      url: http://127.0.0.1:1/x\n      paginaton: {type: page}\n  c:\n    extract:\n      source: http_api\n      url: http://127.0.0.1:1/x\n      pagination: {type: cursor}\n",
    );
    let r = p.run(&["validate", "typo"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("unknown pagination type `pages`") && all.contains("did you mean `page`"),
        "{all}"
    );
    assert!(all.contains("paginaton"), "{all}");
    assert!(all.contains("`type: cursor` needs `path`"), "{all}");
    assert!(all.contains("typo.yaml:6:"), "{all}");
}
