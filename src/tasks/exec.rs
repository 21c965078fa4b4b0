//! `exec`: a program and its arguments as a list, run without a shell. Each element is
//! templated, and no quoting is needed since nothing is parsed by a shell.

use super::{
    check_program, BuildContext, CheckContext, TaskContext, TaskError, TaskKind, TaskOutput,
};
use crate::spec::error::SpecError;
use crate::template::Escape;
use async_trait::async_trait;
use marked_yaml::Node;
use std::path::Path;
use std::sync::Arc;

/// The `exec` kind.
#[derive(Debug)]
pub struct ExecTask {
    argv: Vec<String>,
}

/// Builds from `exec: [program, arg, ...]`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn TaskKind>, SpecError> {
    let argv: Vec<String> = cx.decode(node)?;
    if argv.first().is_none_or(|p| p.trim().is_empty()) {
        return Err(cx.error(
            node,
            "`exec` needs a list whose first element is the program",
        ));
    }
    Ok(Arc::new(ExecTask { argv }))
}

#[async_trait]
impl TaskKind for ExecTask {
    fn describe(&self) -> String {
        format!("exec: {}", self.argv.join(" "))
    }

    fn check(&self, _cx: &CheckContext, base_dir: &Path) -> Vec<String> {
        check_program(&self.argv[0], base_dir).into_iter().collect()
    }

    async fn run(&self, ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
        let mut argv = Vec::with_capacity(self.argv.len());
        for a in &self.argv {
            argv.push(ctx.render(a, Escape::Plain)?);
        }
        ctx.log.note(&format!("exec {argv:?}"));
        let program = argv.remove(0);
        ctx.run_process(&program, argv, vec![]).await?;
        Ok(TaskOutput::default())
    }
}
