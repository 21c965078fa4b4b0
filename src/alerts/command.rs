//! The command channel: runs a shell command (`sh -c`) per alert, with the alert as JSON on
//! standard input and its main fields as `CAUCE_ALERT_*` variables. A non-zero exit is a
//! failed delivery; a command that outlives the delivery time limit is killed. It runs in
//! the project root; `$VAR` in it is the shell's (the environment, not `.env`).

use super::{Alert, Channel, DeliveryError};
use async_trait::async_trait;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

/// Runs a command per alert.
#[derive(Debug)]
pub struct CommandChannel {
    command: String,
    cwd: std::path::PathBuf,
}

impl CommandChannel {
    /// Runs `command` in `cwd` (the project root).
    pub(super) fn new(command: String, cwd: std::path::PathBuf) -> CommandChannel {
        CommandChannel { command, cwd }
    }
}

#[async_trait]
impl Channel for CommandChannel {
    fn kind(&self) -> &'static str {
        "command"
    }

    async fn deliver(&self, alert: &Alert) -> Result<(), DeliveryError> {
        let json = serde_json::to_vec(alert).unwrap_or_default();
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .current_dir(&self.cwd)
            .env("CAUCE_ALERT_EVENT", alert.event.as_str())
            .env("CAUCE_ALERT_PIPELINE", &alert.pipeline)
            .env("CAUCE_ALERT_RUN", &alert.run_id)
            .env("CAUCE_ALERT_TASK", alert.task.as_deref().unwrap_or(""))
            .env("CAUCE_ALERT_TITLE", alert.title())
            .env("CAUCE_ALERT_ERROR", alert.error.as_deref().unwrap_or(""))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| DeliveryError(format!("cannot start `sh`: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its input is fine.
            let _ = stdin.write_all(&json).await;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| DeliveryError(e.to_string()))?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let err: String = err.trim().chars().take(500).collect();
            Err(DeliveryError(format!(
                "command exited with {}: {err}",
                out.status
            )))
        }
    }
}
