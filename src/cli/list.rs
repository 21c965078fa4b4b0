//! `cauce list [pipelines|tasks|workflows]`: what the project defines. Reads files only.

use super::{print_json, Context, UserError};
use crate::spec::Pipeline;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// What to list.
#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum What {
    /// Pipelines with their schedule and task count.
    #[default]
    Pipelines,
    /// Tasks with kind, category and dependencies.
    Tasks,
    /// Workflows with their tasks.
    Workflows,
}

/// `cauce list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// What to list.
    #[arg(value_enum, default_value_t = What::Pipelines)]
    pub what: What,
    /// Only this pipeline (name or file).
    #[arg(long)]
    pub pipeline: Option<String>,
    /// A pipeline file or seed-001 JSON config (same as --pipeline FILE).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Only tasks of this category.
    #[arg(long)]
    pub category: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `cauce list`.
pub fn run(cx: Context, args: ListArgs) -> anyhow::Result<i32> {
    let target = args
        .config
        .as_ref()
        .map(|c| c.display().to_string())
        .or(args.pipeline.clone());
    let pipelines: Vec<Pipeline> = match target {
        Some(t) => vec![cx
            .project
            .load_pipeline(&cx.project.resolve(&t).map_err(UserError)?)?],
        None => {
            let (ok, errors) = cx.project.load_all();
            for e in &errors {
                errln!("warning: {e}");
            }
            ok
        }
    };
    match args.what {
        What::Pipelines => {
            let rows: Vec<_> = pipelines
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "name": p.name,
                        "file": p.file,
                        "description": p.description,
                        "schedule": p.schedule,
                        "timezone": p.timezone,
                        "tasks": p.tasks.len(),
                        "workflows": p.workflows.keys().collect::<Vec<_>>(),
                        "params": p.params.values().collect::<Vec<_>>(),
                    })
                })
                .collect();
            if args.json {
                print_json(&rows)?;
            } else if pipelines.is_empty() {
                outln!("no pipelines (create pipelines/NAME.yaml, or `cauce init`)");
            } else {
                outln!(
                    "{:<28} {:>6}  {:<16} description",
                    "pipeline",
                    "tasks",
                    "schedule"
                );
                for p in &pipelines {
                    outln!(
                        "{:<28} {:>6}  {:<16} {}",
                        p.name,
                        p.tasks.len(),
                        p.schedule.as_deref().unwrap_or("-"),
                        p.description.as_deref().unwrap_or("")
                    );
                }
            }
        }
        What::Tasks => {
            let mut rows = Vec::new();
            for p in &pipelines {
                for t in p.tasks.values() {
                    if args
                        .category
                        .as_ref()
                        .is_some_and(|c| t.category.as_ref() != Some(c))
                    {
                        continue;
                    }
                    rows.push(serde_json::json!({
                        "pipeline": p.name,
                        "task": t.id,
                        "name": t.name,
                        "kind": t.kind,
                        "category": t.category,
                        "critical": t.critical,
                        "depends_on": t.depends_on,
                        "retries": t.retry.retries,
                        "timeout_seconds": t.timeout.map(|d| d.as_secs_f64()),
                        "description": t.description,
                        "action": t.action.describe(),
                    }));
                }
            }
            if args.json {
                print_json(&rows)?;
            } else {
                outln!(
                    "{:<20} {:<28} {:<9} {:<15} {:<8} depends on",
                    "pipeline",
                    "task",
                    "kind",
                    "category",
                    "critical"
                );
                for r in &rows {
                    let deps: Vec<&str> = r["depends_on"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                        .unwrap_or_default();
                    outln!(
                        "{:<20} {:<28} {:<9} {:<15} {:<8} {}",
                        r["pipeline"].as_str().unwrap_or(""),
                        r["task"].as_str().unwrap_or(""),
                        r["kind"].as_str().unwrap_or(""),
                        r["category"].as_str().unwrap_or("-"),
                        if r["critical"].as_bool().unwrap_or(true) {
                            "yes"
                        } else {
                            "no"
                        },
                        deps.join(", ")
                    );
                }
            }
        }
        What::Workflows => {
            let mut rows = Vec::new();
            for p in &pipelines {
                for (name, w) in &p.workflows {
                    rows.push(serde_json::json!({
                        "pipeline": p.name,
                        "workflow": name,
                        "name": w.title,
                        "description": w.description,
                        "tasks": w.tasks,
                    }));
                }
            }
            if args.json {
                print_json(&rows)?;
            } else if rows.is_empty() {
                outln!("no workflows");
            } else {
                for r in &rows {
                    outln!(
                        "{} / {}: {}",
                        r["pipeline"].as_str().unwrap_or(""),
                        r["workflow"].as_str().unwrap_or(""),
                        r["description"]
                            .as_str()
                            .or(r["name"].as_str())
                            .unwrap_or("")
                    );
                    let tasks: Vec<&str> = r["tasks"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                        .unwrap_or_default();
                    outln!("    tasks: {}", tasks.join(", "));
                }
            }
        }
    }
    Ok(0)
}
