//! The HTTP interface of `cauce server`: the REST API under `/api/v1`, its OpenAPI document
//! at `/api/v1/openapi.json`, `/health` and `/metrics`.
//!
//! This module owns the rules every endpoint shares: bearer-token authentication with roles
//! (tokens compared in constant time), JSON errors with a stable `code`, request bodies
//! limited in size with unknown fields refused, and secrets masked in every JSON answer.
//! The endpoints are in `pipelines` (reading definitions and schedules), `runs` (starting,
//! listing, cancelling, retrying runs; reports; webhooks) and `logs` (task logs, ranged and
//! followed). They act through [`RunManager`] and the store; none keeps state of its own.

mod logs;
mod overview;
mod pipelines;
mod runs;
mod workers;

use super::config::Role;
use super::metrics::ServerMetrics;
use super::runs::{RunManager, TriggerError};
use crate::engine::EngineError;
use crate::store::StoreError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use utoipa::OpenApi;

/// The largest request body accepted (trigger requests are small).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler shares.
#[derive(Debug)]
pub struct Shared {
    /// Executes runs.
    pub runs: Arc<RunManager>,
    /// Metrics.
    pub metrics: Arc<ServerMetrics>,
    /// API tokens: (name, value, role), values expanded.
    pub tokens: Vec<(String, String, Role)>,
    /// Role of requests without a token.
    pub anonymous: Option<Role>,
    /// Whether this server holds the scheduler lease.
    pub leading: Arc<std::sync::atomic::AtomicBool>,
}

/// The router's state.
pub type AppState = Arc<Shared>;

impl Shared {
    fn services(&self) -> &Arc<crate::engine::Services> {
        self.runs.engine().services()
    }
}

/// The router: every route of the server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(pipelines::health))
        .route("/metrics", get(metrics))
        .route("/api/v1/health", get(pipelines::health))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/", get(ui_index))
        .route("/ui/app.js", get(ui_js))
        .route("/ui/app.css", get(ui_css))
        .route("/api/v1/me", get(pipelines::me))
        .route("/api/v1/overview", get(overview::overview))
        .route("/api/v1/pipelines", get(pipelines::list))
        .route("/api/v1/pipelines/{name}", get(pipelines::detail))
        .route("/api/v1/pipelines/{name}/runs", post(runs::trigger))
        .route("/api/v1/tasks", get(pipelines::tasks))
        .route("/api/v1/workflows", get(pipelines::workflows))
        .route("/api/v1/schedules", get(pipelines::schedules))
        .route("/api/v1/execute", post(runs::execute))
        .route("/api/v1/runs", get(runs::list))
        .route("/api/v1/runs/{id}", get(runs::detail).delete(runs::delete))
        .route("/api/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/api/v1/runs/{id}/retry", post(runs::retry))
        .route(
            "/api/v1/runs/{id}/tasks/{task}/retry",
            post(runs::retry_task),
        )
        .route("/api/v1/runs/{id}/report", get(runs::report))
        .route("/api/v1/reports", get(runs::reports))
        .route("/api/v1/reports/{id}", get(runs::report))
        .route("/api/v1/runs/{id}/tasks/{task}/logs", get(logs::read))
        .route("/api/v1/hooks/{name}", post(runs::webhook))
        .route("/api/v1/workers", get(workers::list))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "cauce",
        description = "REST API of cauce, a single-binary ETL orchestrator. Every endpoint but health, metrics and this document needs `Authorization: Bearer TOKEN`; `viewer` tokens read, `operator` tokens also trigger, cancel and retry runs."
    ),
    paths(
        pipelines::health,
        pipelines::me,
        pipelines::list,
        pipelines::detail,
        pipelines::tasks,
        pipelines::workflows,
        pipelines::schedules,
        runs::trigger,
        runs::execute,
        runs::list,
        runs::detail,
        runs::cancel,
        runs::delete,
        runs::retry,
        runs::retry_task,
        overview::overview,
        runs::report,
        runs::reports,
        runs::webhook,
        logs::read,
        workers::list,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        // The answers every endpoint may give, documented once here rather than on each.
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |what: &str| {
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let secured = [&mut item.get, &mut item.post, &mut item.delete];
            for (i, op) in secured.into_iter().enumerate() {
                let Some(op) = op else { continue };
                let responses = &mut op.responses.responses;
                let mut add = |code: &str, what: &str| {
                    responses
                        .entry(code.to_string())
                        .or_insert_with(|| error(what).into());
                };
                add("400", "A bad parameter or body");
                add("401", "No token, or an unknown one");
                add("403", "The token's role may not do this");
                add("404", "No such pipeline, run, task or endpoint");
                if i == 1 {
                    add("409", "The request conflicts with the run's state");
                    add("413", "The body is larger than 64 KiB");
                    add("415", "The body is not JSON");
                    add("503", "The server is shutting down");
                }
            }
        }
    }
}

async fn openapi() -> Response {
    let doc = ApiDoc::openapi();
    match doc.to_json() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

async fn metrics(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    let services = state.services();
    match state
        .metrics
        .render(
            services.store.as_ref(),
            &services.alerts,
            state.runs.active(),
        )
        .await
    {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

// The dashboard: the project's own HTML, CSS and JavaScript, compiled into the binary.
// Every data call it makes goes through the API with the user's token.
const UI_HEADERS: [(header::HeaderName, &str); 2] = [
    (header::CACHE_CONTROL, "no-cache"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
];

async fn ui_index() -> Response {
    (
        UI_HEADERS,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; frame-ancestors 'none'",
            ),
        ],
        include_str!("../ui/index.html"),
    )
        .into_response()
}

async fn ui_js() -> Response {
    (
        UI_HEADERS,
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../ui/app.js"),
    )
        .into_response()
}

async fn ui_css() -> Response {
    (
        UI_HEADERS,
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../ui/app.css"),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// An error: a stable machine-readable code and a message for people.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// `bad_request`, `invalid_json`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `payload_too_large`, `unsupported_media_type`, `method_not_allowed`,
    /// `shutting_down`, `internal`.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with a status, a code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 400 with another code.
    pub fn bad_request_code(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500 (the details go to the server log, not to the caller).
    pub fn internal(detail: String) -> ApiError {
        tracing::error!(error = %detail, "API request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed; its log says why",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchRun(id) => ApiError::not_found(format!("no run `{id}`")),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Store(s) => s.into(),
            EngineError::Refused(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            e @ EngineError::Shared(_) => ApiError::internal(e.to_string()),
            e @ EngineError::TakenOver { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            EngineError::Spec(s) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("the run's pipeline definition no longer parses:\n{s}"),
            ),
        }
    }
}

impl From<TriggerError> for ApiError {
    fn from(e: TriggerError) -> Self {
        match e {
            TriggerError::UnknownPipeline(m) => ApiError::not_found(m),
            TriggerError::Invalid(m) => ApiError::bad_request(m),
            TriggerError::Busy(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            TriggerError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
            ),
            TriggerError::Engine(e) => e.into(),
        }
    }
}

/// A JSON answer with secrets masked.
pub fn json<T: Serialize>(state: &Shared, status: StatusCode, value: &T) -> Response {
    match serde_json::to_value(value) {
        Ok(v) => {
            let v = state.services().project.secrets.redact_json(&v);
            (status, axum::Json(v)).into_response()
        }
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

/// A JSON request body: unknown fields and bad types are 400 `invalid_json`, a body over
/// [`MAX_BODY_BYTES`] is 413, a body that is not `application/json` is 415.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let status = r.status();
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            format!("request bodies may be at most {MAX_BODY_BYTES} bytes"),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "send JSON with `Content-Type: application/json`".to_string(),
        ),
        // Bad syntax (400) and a body of the wrong shape (axum says 422) are both
        // `invalid_json`, answered 400.
        _ => return ApiError::bad_request_code("invalid_json", r.body_text()),
    };
    ApiError::new(status, code, message)
}

/// Query parameters: bad ones are 400 `bad_request` with serde's reason.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|r: QueryRejection| ApiError::bad_request(r.body_text()))
    }
}

/// Path segments as text (any text: handlers look them up and answer 404).
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|r| ApiError::bad_request(r.body_text()))
    }
}

/// Who is calling.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Caller {
    /// The token's name (`anonymous` without one).
    pub name: String,
    /// Its role.
    pub role: Role,
}

fn authenticate(state: &Shared, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return state
            .anonymous
            .map(|role| Caller {
                name: "anonymous".into(),
                role,
            })
            .ok_or_else(|| unauthorized("send `Authorization: Bearer TOKEN`"));
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer TOKEN`"))?;
    // Every token is compared, each in constant time, so timing tells nothing of which
    // one matched or how much of one did.
    let mut found = None;
    for (name, token, role) in &state.tokens {
        if bool::from(token.as_bytes().ct_eq(given.as_bytes())) {
            found = Some(Caller {
                name: name.clone(),
                role: *role,
            });
        }
    }
    found.ok_or_else(|| unauthorized("unknown token"))
}

fn require(state: &Shared, parts: &Parts, role: Role) -> Result<Caller, ApiError> {
    let caller = authenticate(state, &parts.headers)?;
    if caller.role < role {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the `{}` role; token `{}` is `{}`",
                role.as_str(),
                caller.name,
                caller.role.as_str()
            ),
        ));
    }
    Ok(caller)
}

/// A caller allowed to read.
#[derive(Debug)]
pub struct Viewer(pub Caller);

/// A caller allowed to trigger, cancel and retry.
#[derive(Debug)]
pub struct Operator(pub Caller);

impl FromRequestParts<AppState> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        require(state, parts, Role::Viewer).map(Viewer)
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        require(state, parts, Role::Operator).map(Operator)
    }
}
