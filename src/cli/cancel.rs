//! `cauce cancel RUN`: asks the process executing a run to stop it (it polls the store,
//! kills its tasks' process groups and records `cancelled`). If that process is gone, the
//! run is marked cancelled here directly.

use super::inspect::resolve_run_id;
use super::{Context, UserError};
use crate::engine::CancelOutcome;
use clap::Args;
use std::time::Duration;

/// `cauce cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The run (`latest` for the newest).
    pub run_id: String,
    /// Return at once instead of waiting for the run to stop.
    #[arg(long)]
    pub no_wait: bool,
}

/// `cauce cancel`.
pub async fn run(cx: Context, args: CancelArgs) -> anyhow::Result<i32> {
    let svc = cx.services().await?;
    let store = svc.store.as_ref();
    let id = resolve_run_id(store, &args.run_id).await?;
    let engine = crate::engine::Engine::new(std::sync::Arc::clone(&svc));
    match engine.cancel(&id).await? {
        CancelOutcome::AlreadyEnded(state) => {
            return Err(UserError(format!("run {id} already ended ({state})")).into())
        }
        CancelOutcome::Closed => {
            outln!("run {id} cancelled (no live process was executing it)");
            return Ok(0);
        }
        CancelOutcome::Requested => {}
    }
    outln!("cancel requested for run {id}");
    if args.no_wait {
        return Ok(0);
    }
    let deadline =
        tokio::time::Instant::now() + svc.project.settings.kill_grace + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if let Some(r) = store.get_run(&id).await? {
            if r.state.is_final() {
                outln!("run {id} {}", r.state);
                return Ok(0);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    outln!("run {id} has not stopped yet; check with `cauce status {id}`");
    Ok(1)
}
