//! `cauce server`: one process that schedules pipelines, executes their runs, serves the
//! REST API and `/metrics`, and sends alerts.
//!
//! `runs` executes runs in this process (triggered, scheduled, retried, or resumed after a
//! crash); `scheduler` fires cron schedules and watches SLAs; `api` is the HTTP interface;
//! `metrics` renders Prometheus text; `config` is the `server:` section of `cauce.yaml`; `catalog` holds the
//! project's pipelines, re-read when their files change.
//! Every state change goes through the store: the server keeps only handles to the runs it
//! executes, so a restarted server finds everything it needs there.

pub mod api;
pub mod catalog;
pub mod config;
pub mod metrics;
pub mod runs;
pub mod scheduler;

use crate::engine::{Engine, Services};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting is wrong (exit code 2).
    #[error("{0}")]
    Config(String),
    /// The address cannot be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// How the server stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM: running runs had the grace period.
    Terminated,
    /// Ctrl-C: running runs were cancelled at once.
    Interrupted,
}

/// Runs the server until SIGTERM or Ctrl-C. `on_ready` is called with the bound address.
pub async fn serve(
    services: Arc<Services>,
    listen: Option<String>,
    on_ready: impl FnOnce(std::net::SocketAddr, &catalog::Catalog),
) -> Result<Stopped, ServerError> {
    let settings = services.project.settings.server.clone();
    let mut tokens = Vec::new();
    for t in &settings.tokens {
        let value = services
            .templates
            .expand_env(&t.token)
            .map_err(|e| ServerError::Config(format!("server.tokens `{}`: {e}", t.name)))?;
        if value.len() < 16 {
            return Err(ServerError::Config(format!(
                "server.tokens `{}`: a token must have at least 16 characters (`openssl rand -hex 32` makes one)",
                t.name
            )));
        }
        tokens.push((t.name.clone(), value, t.role));
    }
    if tokens.is_empty() && settings.anonymous.is_none() {
        tracing::warn!("no API tokens in cauce.yaml (server.tokens): every API call but /health and /metrics will be refused");
    }
    let problems = services.alerts.problems();
    if !problems.is_empty() {
        let lines: Vec<String> = problems
            .iter()
            .map(|(name, why)| format!("  alerts.channels.{name}: {why}"))
            .collect();
        return Err(ServerError::Config(format!(
            "alert channels cannot be used:\n{}",
            lines.join("\n")
        )));
    }
    let addr = listen.unwrap_or(settings.listen.clone());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ServerError::Listen {
            addr: addr.clone(),
            source,
        })?;
    let local = listener.local_addr()?;

    let engine = Engine::new(Arc::clone(&services));
    let catalog = Arc::new(catalog::Catalog::new(Arc::clone(&services.project)));
    let metrics = Arc::new(metrics::ServerMetrics::default());
    let runs = runs::RunManager::new(engine, Arc::clone(&catalog), Arc::clone(&metrics));
    let stop_scheduling = CancellationToken::new();
    let leading = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scheduler = scheduler::Scheduler::new(
        Arc::clone(&runs),
        Arc::clone(&metrics),
        Arc::clone(&leading),
    );
    let scheduler_task = tokio::spawn(scheduler.run(stop_scheduling.clone()));

    let state = Arc::new(api::Shared {
        runs: Arc::clone(&runs),
        metrics,
        tokens,
        anonymous: settings.anonymous,
        leading,
    });
    on_ready(local, &catalog);

    let stop_http = CancellationToken::new();
    let http = {
        let stop = stop_http.clone();
        let app = api::router(state);
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };

    let how = wait_for_signal().await;
    tracing::info!(signal = ?how, "stopping: no new runs");
    stop_scheduling.cancel();
    let _ = scheduler_task.await;
    let grace = match how {
        Stopped::Terminated => settings.shutdown_grace,
        Stopped::Interrupted => Duration::ZERO,
    };
    // A second signal during the grace period cancels at once.
    tokio::select! {
        _ = runs.drain(grace) => {}
        _ = wait_for_signal() => {
            tracing::warn!("second signal: cancelling running runs now");
            runs.drain(Duration::ZERO).await;
        }
    }
    stop_http.cancel();
    // Followed logs keep connections open; they get a moment, then the process ends.
    let _ = tokio::time::timeout(Duration::from_secs(2), http).await;
    services.alerts.flush(Duration::from_secs(10)).await;
    Ok(how)
}

async fn wait_for_signal() -> Stopped {
    match crate::process::stop_signal().await {
        crate::process::StopSignal::Interrupt => Stopped::Interrupted,
        crate::process::StopSignal::Terminate => Stopped::Terminated,
    }
}
