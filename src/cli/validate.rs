//! `cauce validate`: parses pipeline files and runs every semantic check, printing all
//! problems at once (file:line:column, field, message). Exit 2 on any error.

use super::{print_json, Context, UserError};
use crate::spec::SpecError;
use clap::Args;
use std::path::PathBuf;

/// `cauce validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Pipeline names or files (default: every pipeline of the project).
    pub targets: Vec<String>,
    /// A pipeline file or seed-001 JSON config to check.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `cauce validate`.
pub fn run(cx: Context, args: ValidateArgs) -> anyhow::Result<i32> {
    let mut targets = args.targets.clone();
    if let Some(c) = &args.config {
        targets.push(c.display().to_string());
    }
    let files: Vec<PathBuf> = if targets.is_empty() {
        let files = cx.project.pipeline_files();
        if files.is_empty() {
            return Err(UserError(format!(
                "no pipelines to check in {} (give a file, or run inside a project)",
                cx.project.root.display()
            ))
            .into());
        }
        files
    } else {
        targets
            .iter()
            .map(|t| cx.project.resolve(t).map_err(UserError))
            .collect::<Result<_, _>>()?
    };
    let mut errors: Vec<SpecError> = Vec::new();
    let mut checked = Vec::new();
    for f in &files {
        let (pipeline, found) = cx.project.check_file(f);
        checked.push(serde_json::json!({
            "pipeline": pipeline.as_ref().map(|p| p.name.clone()),
            "file": f,
            "tasks": pipeline.as_ref().map(|p| p.tasks.len()),
            "errors": found.len(),
        }));
        errors.extend(found);
    }
    if args.json {
        let list: Vec<_> = errors
            .iter()
            .map(|e| {
                serde_json::json!({
                    "file": e.location.file,
                    "line": e.location.line,
                    "column": e.location.column,
                    "field": e.field,
                    "message": e.message,
                })
            })
            .collect();
        print_json(
            &serde_json::json!({"valid": errors.is_empty(), "files": checked, "errors": list}),
        )?;
    } else {
        for e in &errors {
            errln!("error: {e}");
        }
        let n = files.len();
        if errors.is_empty() {
            outln!("{n} pipeline file(s) valid");
        } else {
            errln!("{} error(s) in {n} pipeline file(s)", errors.len());
        }
    }
    Ok(if errors.is_empty() {
        0
    } else {
        super::EXIT_USAGE
    })
}
