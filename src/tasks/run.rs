//! `run`: a shell command. Interpolated values are shell-quoted. A command with no shell
//! syntax at all is executed directly, without `sh -c` (as `make` does), which halves the
//! processes spawned for simple commands.

use super::{
    check_program, BuildContext, CheckContext, TaskContext, TaskError, TaskKind, TaskOutput,
};
use crate::process::split_simple_command;
use crate::spec::error::SpecError;
use crate::template::Escape;
use async_trait::async_trait;
use marked_yaml::Node;
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;

/// The `run` kind.
#[derive(Debug)]
pub struct RunTask {
    command: String,
    shell: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunSpec {
    command: String,
    shell: Option<String>,
}

/// Builds from `run: "cmd"` or `run: {command: "cmd", shell: bash}`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn TaskKind>, SpecError> {
    let spec = match node.as_scalar() {
        Some(s) => RunSpec {
            command: s.as_str().to_string(),
            shell: None,
        },
        None => cx.decode::<RunSpec>(node)?,
    };
    if spec.command.trim().is_empty() {
        return Err(cx.error(node, "the command is empty"));
    }
    Ok(Arc::new(RunTask {
        command: spec.command,
        shell: spec.shell.unwrap_or_else(|| "sh".into()),
    }))
}

#[async_trait]
impl TaskKind for RunTask {
    fn describe(&self) -> String {
        format!("run: {}", self.command.lines().next().unwrap_or(""))
    }

    fn check(&self, _cx: &CheckContext, base_dir: &Path) -> Vec<String> {
        let first = self.command.split_whitespace().next().unwrap_or("");
        let problem = if split_simple_command(&self.command).is_some() || first.contains('/') {
            check_program(first, base_dir)
        } else {
            None
        };
        problem.into_iter().collect()
    }

    async fn run(&self, ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
        let command = ctx.render(&self.command, Escape::Shell)?;
        ctx.log.note(&format!("$ {command}"));
        match split_simple_command(&command) {
            Some(mut argv) if self.shell == "sh" => {
                let program = argv.remove(0);
                ctx.run_process(&program, argv, vec![]).await?;
            }
            _ => {
                ctx.run_process(&self.shell, vec!["-c".into(), command], vec![])
                    .await?;
            }
        }
        Ok(TaskOutput::default())
    }
}
