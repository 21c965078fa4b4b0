//! The one template engine (minijinja) for every templated field: `{{ params.day }}`,
//! `{{ run.id }}`, `{{ run.logical_date }}`, `{{ ds }}`, `{{ task.id }}`, and `${VAR}` for
//! environment variables (secrets, registered for redaction; `$${` writes a literal `${`).
//!
//! Fields that become shell commands are rendered with [`Escape::Shell`]: every interpolated
//! value is shell-quoted, so a parameter given by a caller can never inject a command.
//! SQL text (a database source's query, a `sql` transform) is rendered with [`Escape::Sql`]:
//! every value becomes a quoted SQL literal, never SQL text.

use crate::secrets::Secrets;
use indexmap::IndexMap;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde::Serialize;

/// How interpolated values are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// Inserted as they are.
    Plain,
    /// Each value is quoted for `sh`.
    Shell,
    /// Each value becomes a SQL literal: a string in single quotes (quotes doubled), a
    /// number or boolean as itself, nothing as `NULL`.
    Sql,
}

/// The variables a template sees.
#[derive(Debug, Clone, Serialize)]
pub struct RenderVars {
    /// The run's params (defaults merged with given values).
    pub params: IndexMap<String, serde_json::Value>,
    /// The run.
    pub run: RunVars,
    /// The logical date as `YYYY-MM-DD`.
    pub ds: String,
    /// The logical date as `YYYYMMDD`.
    pub ds_nodash: String,
    /// The logical date's year (`2024`), month (`01`) and day (`05`), for paths.
    pub yyyy: String,
    /// Month, two digits.
    pub mm: String,
    /// Day of the month, two digits.
    pub dd: String,
    /// The task being rendered.
    pub task: TaskVars,
    /// An incremental extract's cursor value from the last successful run (or its
    /// `initial`); null otherwise.
    pub watermark: serde_json::Value,
}

/// `run.*` in templates.
#[derive(Debug, Clone, Serialize)]
pub struct RunVars {
    /// Run id.
    pub id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Logical date and time, RFC 3339.
    pub logical_date: String,
}

/// `task.*` in templates.
#[derive(Debug, Clone, Serialize)]
pub struct TaskVars {
    /// Task id.
    pub id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
}

/// The template engine, with the process's secrets.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Builds the engine. `${VAR}` reads the environment, then `dotenv` (the project's
    /// `.env`); the values it reads are added to `secrets`.
    pub fn new(secrets: Secrets, dotenv: std::sync::Arc<IndexMap<String, String>>) -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".sh") {
                AutoEscape::Custom("shell".into())
            } else if name.ends_with(".sql") {
                AutoEscape::Custom("sql".into())
            } else {
                AutoEscape::None
            }
        });
        env.set_formatter(|out, state, value| {
            // Booleans as YAML, JSON and shells spell them, not Python's True/False.
            if value.kind() == minijinja::value::ValueKind::Bool {
                return out
                    .write_str(if value.is_true() { "true" } else { "false" })
                    .map_err(minijinja::Error::from);
            }
            if matches!(state.auto_escape(), AutoEscape::Custom(name) if name == "shell") {
                let text = if value.is_none() || value.is_undefined() {
                    String::new()
                } else {
                    value.to_string()
                };
                let quoted = shlex::try_quote(&text).map_err(|_| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "a value with a NUL byte cannot go into a shell command",
                    )
                })?;
                out.write_str(&quoted).map_err(minijinja::Error::from)
            } else if matches!(state.auto_escape(), AutoEscape::Custom(name) if name == "sql") {
                use minijinja::value::ValueKind;
                let text = match value.kind() {
                    ValueKind::None | ValueKind::Undefined => "NULL".to_string(),
                    ValueKind::Number => value.to_string(),
                    _ => format!("'{}'", value.to_string().replace('\'', "''")),
                };
                out.write_str(&text).map_err(minijinja::Error::from)
            } else {
                minijinja::escape_formatter(out, state, value)
            }
        });
        env.add_function("__env", move |name: String, default: Option<String>| {
            match std::env::var(&name).ok().or_else(|| dotenv.get(&name).cloned()) {
                Some(v) => {
                    secrets.add(&v);
                    Ok(v)
                }
                None => default.ok_or_else(|| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("environment variable `{name}` is not set (neither in the environment nor in the project's .env)"),
                    )
                }),
            }
        });
        Templates { env }
    }

    /// Expands only `${VAR}` references (settings outside any run, such as the store URL).
    pub fn expand_env(&self, text: &str) -> Result<String, String> {
        if !text.contains("${") {
            return Ok(text.to_string());
        }
        let source = translate_env_refs(text);
        self.env
            .render_named_str("setting.txt", &source, minijinja::context! {})
            .map_err(|e| describe_error(&e))
    }

    /// Renders `text`. Text with no template syntax is returned as it is, without parsing.
    pub fn render(&self, text: &str, escape: Escape, vars: &RenderVars) -> Result<String, String> {
        if !text.contains("{{") && !text.contains("{%") && !text.contains("${") {
            return Ok(text.to_string());
        }
        let source = translate_env_refs(text);
        let name = match escape {
            Escape::Shell => "field.sh",
            Escape::Sql => "field.sql",
            Escape::Plain => "field.txt",
        };
        self.env
            .render_named_str(name, &source, minijinja::value::Serde(vars))
            .map_err(|e| describe_error(&e))
    }
}

fn describe_error(e: &minijinja::Error) -> String {
    let mut msg = match e.kind() {
        ErrorKind::UndefinedError => "template refers to an undefined value".to_string(),
        _ => "template error".to_string(),
    };
    if let Some(detail) = e.detail() {
        msg.push_str(": ");
        msg.push_str(detail);
    } else {
        msg = format!("{msg}: {e}");
    }
    msg
}

/// Rewrites `${NAME}` and `${NAME:-default}` into calls of the `__env` function, and `$${`
/// into a literal `${`.
fn translate_env_refs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("${") {
        if pos > 0 && rest.as_bytes()[pos - 1] == b'$' {
            out.push_str(&rest[..pos - 1]);
            out.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[pos..]);
            return out;
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if valid {
            match default {
                Some(d) => out.push_str(&format!("{{{{ __env({name:?}, {d:?}) }}}}")),
                None => out.push_str(&format!("{{{{ __env({name:?}) }}}}")),
            }
        } else {
            out.push_str("${");
            out.push_str(inner);
            out.push('}');
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> RenderVars {
        let mut params = IndexMap::new();
        params.insert("day".into(), serde_json::json!("2024-01-02"));
        params.insert("evil".into(), serde_json::json!("x; rm -rf / #"));
        RenderVars {
            params,
            run: RunVars {
                id: "r1".into(),
                pipeline: "p".into(),
                logical_date: "2024-01-02T00:00:00Z".into(),
            },
            ds: "2024-01-02".into(),
            ds_nodash: "20240102".into(),
            yyyy: "2024".into(),
            mm: "01".into(),
            dd: "02".into(),
            task: TaskVars {
                id: "t".into(),
                attempt: 1,
            },
            watermark: serde_json::Value::Null,
        }
    }

    #[test]
    fn renders_params_run_and_ds() {
        let t = Templates::new(Secrets::default(), Default::default());
        let out = t
            .render(
                "{{ params.day }} {{ run.id }} {{ ds }}",
                Escape::Plain,
                &vars(),
            )
            .unwrap();
        assert_eq!(out, "2024-01-02 r1 2024-01-02");
    }

    #[test]
    fn shell_fields_quote_every_value() {
        let t = Templates::new(Secrets::default(), Default::default());
        let out = t
            .render("echo {{ params.evil }}", Escape::Shell, &vars())
            .unwrap();
        assert_eq!(out, "echo 'x; rm -rf / #'");
    }

    #[test]
    fn env_refs_are_secrets_and_missing_ones_fail() {
        let secrets = Secrets::default();
        let t = Templates::new(secrets.clone(), Default::default());
        std::env::set_var("CAUCE_TEST_TEMPLATE_SECRET", "p4ssw0rd!");
        let out = t
            .render("pw=${CAUCE_TEST_TEMPLATE_SECRET}", Escape::Plain, &vars())
            .unwrap();
        assert_eq!(out, "pw=p4ssw0rd!");
        assert_eq!(secrets.redact(&out), "pw=***");
        let e = t
            .render("${CAUCE_TEST_SURELY_UNSET_VAR}", Escape::Plain, &vars())
            .unwrap_err();
        assert!(e.contains("CAUCE_TEST_SURELY_UNSET_VAR"), "{e}");
        assert_eq!(
            t.render(
                "${CAUCE_TEST_SURELY_UNSET_VAR:-dflt}",
                Escape::Plain,
                &vars()
            )
            .unwrap(),
            "dflt"
        );
        assert_eq!(
            t.render("echo $${HOME} $HOME", Escape::Shell, &vars())
                .unwrap(),
            "echo ${HOME} $HOME"
        );
    }

    #[test]
    fn sql_fields_quote_every_value() {
        let t = Templates::new(Secrets::default(), Default::default());
        let mut v = vars();
        v.params.insert(
            "who".into(),
            serde_json::json!("O'Brien'; DROP TABLE x; --"),
        );
        v.params.insert("n".into(), serde_json::json!(42));
        assert_eq!(
            t.render(
                "SELECT * FROM t WHERE name = {{ params.who }} AND n > {{ params.n }} AND w > {{ watermark }}",
                Escape::Sql,
                &v
            )
            .unwrap(),
            "SELECT * FROM t WHERE name = 'O''Brien''; DROP TABLE x; --' AND n > 42 AND w > NULL"
        );
    }

    #[test]
    fn booleans_render_lowercase() {
        let t = Templates::new(Secrets::default(), Default::default());
        let mut v = vars();
        v.params.insert("flag".into(), serde_json::json!(true));
        assert_eq!(
            t.render("--full={{ params.flag }}", Escape::Shell, &v)
                .unwrap(),
            "--full=true"
        );
        assert_eq!(
            t.render("{{ params.flag }}", Escape::Plain, &v).unwrap(),
            "true"
        );
    }

    #[test]
    fn undefined_values_are_errors() {
        let t = Templates::new(Secrets::default(), Default::default());
        let e = t
            .render("{{ params.nope }}", Escape::Plain, &vars())
            .unwrap_err();
        assert!(e.contains("undefined"), "{e}");
    }
}
