//! `python`: call a function in a Python module in a subprocess (seed 001's
//! `module_path`/`function_name`/`parameters`), or run a script with arguments.
//!
//! The function gets the params as keyword arguments (strings in them are templated); what it
//! returns becomes the task's output in the report. A returned dict whose `status` is
//! `error`, `failed` or `failure` fails the task, as seed 001's functions signal failure.
//! Modules are found under the pipeline's base folder, the project's `python_path`, and the
//! current directory. The interpreter is the project's `python` setting (a venv path works)
//! or the task's own `interpreter`.

use super::{
    check_program, BuildContext, CheckContext, TaskContext, TaskError, TaskKind, TaskOutput,
};
use crate::spec::error::SpecError;
use crate::template::Escape;
use async_trait::async_trait;
use marked_yaml::Node;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SHIM: &str = include_str!("python_shim.py");

/// The `python` kind.
#[derive(Debug)]
pub struct PythonTask {
    target: Target,
    interpreter: Option<String>,
}

#[derive(Debug)]
enum Target {
    Function {
        module: String,
        function: String,
        params: serde_json::Value,
    },
    Script {
        script: String,
        args: Vec<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PythonSpec {
    module: Option<String>,
    function: Option<String>,
    #[allow(dead_code)]
    params: Option<serde::de::IgnoredAny>,
    script: Option<String>,
    args: Option<Vec<String>>,
    interpreter: Option<String>,
}

impl PythonTask {
    /// A task calling `function` in `module` with `params` (seed-001 configs).
    pub fn for_function(module: String, function: String, params: serde_json::Value) -> PythonTask {
        PythonTask {
            target: Target::Function {
                module,
                function,
                params,
            },
            interpreter: None,
        }
    }
}

/// Builds from `python: {module, function, params}` or `python: {script, args}`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn TaskKind>, SpecError> {
    let spec: PythonSpec = cx.decode(node)?;
    let params = node
        .as_mapping()
        .and_then(|m| m.get_node("params"))
        .map(crate::spec::parse::node_to_json)
        .unwrap_or(serde_json::Value::Object(Default::default()));
    let target = match (spec.module, spec.function, spec.script) {
        (Some(module), function, None) => Target::Function {
            module,
            function: function.unwrap_or_else(|| "main".into()),
            params,
        },
        (None, None, Some(script)) => Target::Script {
            script,
            args: spec.args.unwrap_or_default(),
        },
        _ => return Err(cx.error(node, "give either `module` (with optional `function` and `params`) or `script` (with optional `args`)")),
    };
    if let Target::Function { params, .. } = &target {
        if !params.is_object() {
            return Err(cx.error(node, "`params` must be a mapping of keyword arguments"));
        }
    }
    Ok(Arc::new(PythonTask {
        target,
        interpreter: spec.interpreter,
    }))
}

/// Where a dotted module would be, as a file, under one of `dirs`.
pub fn find_module(module: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    let rel: PathBuf = module.split('.').collect();
    dirs.iter().find_map(|d| {
        let file = d.join(&rel).with_extension("py");
        let package = d.join(&rel).join("__init__.py");
        [file, package].into_iter().find(|p| p.is_file())
    })
}

fn search_dirs(base_dir: &Path, python_path: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = vec![base_dir.to_path_buf()];
    dirs.extend(python_path.iter().map(|p| base_dir.join(p)));
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd);
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(std::fs::canonicalize(d).unwrap_or_else(|_| d.clone())));
    dirs
}

#[async_trait]
impl TaskKind for PythonTask {
    fn describe(&self) -> String {
        match &self.target {
            Target::Function {
                module, function, ..
            } => format!("python: {module}.{function}()"),
            Target::Script { script, args } => format!("python: {script} {}", args.join(" ")),
        }
    }

    fn check(&self, cx: &CheckContext, base_dir: &Path) -> Vec<String> {
        let mut problems = Vec::new();
        let interpreter = self.interpreter.as_deref().unwrap_or(&cx.python);
        if let Some(p) = check_program(interpreter, base_dir) {
            problems.push(format!("Python interpreter: {p}"));
        }
        match &self.target {
            Target::Function { module, .. } => {
                let dirs = search_dirs(base_dir, &cx.python_path);
                let installed = || {
                    let key = (interpreter.to_string(), module.clone());
                    if let Some(known) = cx.installed.lock().ok().and_then(|m| m.get(&key).copied())
                    {
                        return known;
                    }
                    let found = installed_module(interpreter, module, base_dir);
                    if let Ok(mut m) = cx.installed.lock() {
                        m.insert(key, found);
                    }
                    found
                };
                if find_module(module, &dirs).is_none() && cx.spawn_checks && !installed() {
                    let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                    problems.push(format!(
                        "python module `{module}` not found (looked for {}.py in {}, and among installed packages)",
                        module.replace('.', "/"),
                        shown.join(", ")
                    ));
                }
            }
            Target::Script { script, .. } => {
                if !script.contains("{{") && !base_dir.join(script).is_file() {
                    problems.push(format!(
                        "python script `{script}` does not exist (looked in {})",
                        base_dir.display()
                    ));
                }
            }
        }
        problems
    }

    async fn run(&self, ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
        let interpreter = self
            .interpreter
            .clone()
            .unwrap_or_else(|| ctx.python.clone());
        let dirs = search_dirs(&ctx.work_dir, &ctx.python_path);
        let mut pythonpath: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        if let Ok(existing) = std::env::var("PYTHONPATH") {
            pythonpath.push(existing);
        }
        let mut env = vec![
            ("PYTHONPATH".to_string(), pythonpath.join(":")),
            ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
        ];
        match &self.target {
            Target::Script { script, args } => {
                let mut argv = vec![ctx.render(script, Escape::Plain)?];
                for a in args {
                    argv.push(ctx.render(a, Escape::Plain)?);
                }
                ctx.log.note(&format!("{interpreter} {}", argv.join(" ")));
                ctx.run_process(&interpreter, argv, env).await?;
                Ok(TaskOutput::default())
            }
            Target::Function {
                module,
                function,
                params,
            } => {
                let params = ctx.render_json(params)?;
                let out_file = ctx
                    .data_dir
                    .join(format!("{}.{}.output.json", ctx.task_id, ctx.attempt));
                if let Some(dir) = out_file.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        TaskError::Failed(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                let _ = std::fs::remove_file(&out_file);
                env.push(("CAUCE_PY_PARAMS".into(), params.to_string()));
                env.push(("CAUCE_OUTPUT_FILE".into(), out_file.display().to_string()));
                ctx.log.note(&format!("{module}.{function}(**{params})"));
                let args = vec![
                    "-c".to_string(),
                    SHIM.to_string(),
                    module.clone(),
                    function.clone(),
                ];
                ctx.run_process(&interpreter, args, env).await?;
                let text = std::fs::read_to_string(&out_file).map_err(|e| {
                    TaskError::Failed(format!("the function returned no result ({e})"))
                })?;
                let _ = std::fs::remove_file(&out_file);
                let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                    TaskError::Failed(format!("the function's result is not JSON: {e}"))
                })?;
                if let Some(status) = value.get("status").and_then(|s| s.as_str()) {
                    if matches!(status, "error" | "failed" | "failure") {
                        let msg = value
                            .get("message")
                            .or_else(|| value.get("error"))
                            .map(|m| {
                                m.as_str()
                                    .map(String::from)
                                    .unwrap_or_else(|| m.to_string())
                            })
                            .unwrap_or_else(|| format!("the function returned status `{status}`"));
                        return Err(TaskError::Failed(msg));
                    }
                }
                Ok(TaskOutput {
                    value,
                    ..Default::default()
                })
            }
        }
    }
}

/// Whether the interpreter can find `module` among installed packages (validation only).
fn installed_module(interpreter: &str, module: &str, base_dir: &Path) -> bool {
    let top = module.split('.').next().unwrap_or(module);
    std::process::Command::new(interpreter)
        .args(["-c", "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else 1)", top])
        .current_dir(base_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
