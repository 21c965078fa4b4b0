//! The project: a folder with `cauce.yaml` (settings) and `pipelines/*.yaml`, or a single
//! pipeline file run on its own with built-in defaults. It finds the root, reads settings,
//! loads the `.env` file (its values are secrets), lists and loads pipelines, and knows where
//! the state folder (`.cauce/`: store, logs, reports, data) is. It runs nothing.

use crate::secrets::Secrets;
use crate::spec::duration::parse_duration;
use crate::spec::error::{suggestion, Location, SpecError, SpecErrors};
use crate::spec::parse::{decode, parse_defaults, parse_pipeline, parse_tree, TaskDefaults};
use crate::spec::Pipeline;
use crate::tasks::CheckContext;
use indexmap::IndexMap;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The project settings file name.
pub const PROJECT_FILE: &str = "cauce.yaml";
/// Environment variable that overrides the store URL.
pub const ENV_STORE: &str = "CAUCE_STORE";

/// Settings from `cauce.yaml`, with defaults applied.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Project name.
    pub name: String,
    /// Store URL; `None` means the embedded SQLite file.
    pub store: Option<String>,
    /// Default parallel task slots.
    pub max_workers: usize,
    /// Python interpreter (a venv's `bin/python` works).
    pub python: String,
    /// Extra folders for Python imports, relative to the root.
    pub python_path: Vec<PathBuf>,
    /// Attempt lease duration; a holder that stops heartbeating loses it after this long.
    pub lease: Duration,
    /// Time between SIGTERM and SIGKILL when a task is cancelled or times out.
    pub kill_grace: Duration,
    /// Folder of pipeline files, relative to the root.
    pub pipelines_dir: PathBuf,
    /// Task defaults for every pipeline.
    pub defaults: TaskDefaults,
    /// `cauce server` settings.
    pub server: crate::server::config::ServerSettings,
    /// Alert channels.
    pub alerts: crate::alerts::AlertSettings,
    /// The data plane: memory limit, batch size, dataset retention.
    pub data: crate::data::DataSettings,
    /// Who runs the attempts of this project's runs.
    pub executor: Executor,
    /// Where logs, reports and datasets live when not in `.cauce/`: a folder every
    /// server and worker mounts (relative to the root).
    pub shared_dir: Option<PathBuf>,
    /// `shared_dir` as an object-store URL (`s3://bucket/prefix`): `.cauce/` is then
    /// mirrored through it ([`crate::shared`]).
    pub shared_url: Option<String>,
    /// `shared_options`: settings of the object store (`endpoint`, `region`...; values
    /// may use `${VAR}`).
    pub shared_options: Vec<(String, String)>,
}

/// Who runs attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// The process that executes the run (`cauce run`, the server).
    #[default]
    Local,
    /// `cauce worker` processes claiming them from the store.
    Workers,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            name: "cauce".into(),
            store: None,
            max_workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .max(2),
            python: "python3".into(),
            python_path: vec![],
            lease: Duration::from_secs(30),
            kill_grace: Duration::from_secs(5),
            pipelines_dir: PathBuf::from("pipelines"),
            defaults: TaskDefaults::default(),
            server: Default::default(),
            alerts: Default::default(),
            data: Default::default(),
            executor: Executor::Local,
            shared_dir: None,
            shared_url: None,
            shared_options: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataSettings {
    max_memory: Option<String>,
    batch_size: Option<usize>,
    threads: Option<usize>,
    retention: Option<String>,
    streaming: Option<bool>,
}

fn parse_data_settings(
    node: &marked_yaml::Node,
    file: &Path,
) -> Result<crate::data::DataSettings, Vec<SpecError>> {
    let raw: RawDataSettings = decode(node, file, "data").map_err(|e| vec![e])?;
    let mut s = crate::data::DataSettings::default();
    let mut errors = Vec::new();
    let err = |field: &str, msg: String| {
        SpecError::new(
            Location::at(file, node.span().start()),
            Some(format!("data.{field}")),
            msg,
        )
    };
    if let Some(m) = raw.max_memory {
        match crate::spec::size::parse_size(&m) {
            Ok(n) if n >= 64 << 20 => s.max_memory = n,
            Ok(_) => errors.push(err("max_memory", "must be at least 64MiB".into())),
            Err(e) => errors.push(err("max_memory", e)),
        }
    }
    match raw.batch_size {
        Some(0) => errors.push(err("batch_size", "must be at least 1".into())),
        Some(b) => s.batch_size = b,
        None => {}
    }
    match raw.threads {
        Some(0) => errors.push(err("threads", "must be at least 1".into())),
        Some(t) => s.threads = t,
        None => {}
    }
    if let Some(b) = raw.streaming {
        s.streaming = b;
    }
    if let Some(r) = raw.retention {
        match parse_duration(&r) {
            Ok(d) => s.retention = Some(d),
            Err(e) => errors.push(err("retention", e)),
        }
    }
    if errors.is_empty() {
        Ok(s)
    } else {
        Err(errors)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    name: Option<String>,
    store: Option<String>,
    max_workers: Option<usize>,
    python: Option<String>,
    python_path: Option<Vec<String>>,
    lease: Option<String>,
    kill_grace: Option<String>,
    pipelines_dir: Option<String>,
    executor: Option<Executor>,
    shared_dir: Option<String>,
    shared_options: Option<IndexMap<String, String>>,
}

/// A project (or a lone pipeline file's folder).
#[derive(Debug, Clone)]
pub struct Project {
    /// The root folder.
    pub root: PathBuf,
    /// `cauce.yaml`, when there is one.
    pub config_file: Option<PathBuf>,
    /// Settings.
    pub settings: Settings,
    /// Secret values (from `.env` and `${VAR}` references).
    pub secrets: Secrets,
    /// The variables of the project's `.env` file. The real environment wins over them.
    pub dotenv: std::sync::Arc<IndexMap<String, String>>,
}

impl Project {
    /// Finds the project: `explicit` if given, else the nearest folder upwards from `start`
    /// holding `cauce.yaml`, else `start` itself (a folder with loose pipeline files).
    pub fn discover(explicit: Option<&Path>, start: &Path) -> Result<Project, SpecErrors> {
        let root = match explicit {
            Some(p) => p.to_path_buf(),
            None => start
                .ancestors()
                .find(|d| d.join(PROJECT_FILE).is_file())
                .unwrap_or(start)
                .to_path_buf(),
        };
        let root = std::fs::canonicalize(&root).unwrap_or(root);
        let config_file = root.join(PROJECT_FILE);
        let secrets = Secrets::default();
        let settings = if config_file.is_file() {
            read_settings(&config_file)?
        } else {
            Settings::default()
        };
        // `.env` is read here and never written into this process's environment (which other
        // threads may be reading); tasks get it in their own environment, templates look it up.
        let mut dotenv = IndexMap::new();
        let env_file = root.join(".env");
        if env_file.is_file() {
            let iter = dotenvy::from_path_iter(&env_file).map_err(|e| {
                SpecError::new(
                    Location::file(&env_file),
                    None,
                    format!("cannot read .env: {e}"),
                )
            })?;
            for item in iter {
                let (key, value) = item.map_err(|e| {
                    SpecError::new(
                        Location::file(&env_file),
                        None,
                        format!("invalid line in .env: {e}"),
                    )
                })?;
                secrets.add(&value);
                dotenv.insert(key, value);
            }
        }
        Ok(Project {
            root,
            config_file: config_file.is_file().then_some(config_file),
            settings,
            secrets,
            dotenv: std::sync::Arc::new(dotenv),
        })
    }

    /// `.cauce/` under the root.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(".cauce")
    }

    /// The store URL: `CAUCE_STORE`, else `store:` in `cauce.yaml`, else `.cauce/state.db`.
    /// `store:` may use `${VAR}` (a password kept in `.env`); `CAUCE_STORE` may be set in
    /// `.env` too.
    pub fn store_url(&self, cli: Option<&str>) -> Result<String, String> {
        if let Some(u) = cli {
            return Ok(u.to_string());
        }
        let from_env = std::env::var(ENV_STORE)
            .ok()
            .or_else(|| self.dotenv.get(ENV_STORE).cloned());
        if let Some(u) = from_env.filter(|u| !u.is_empty()) {
            return Ok(u);
        }
        let configured = match &self.settings.store {
            Some(u) => Some(
                crate::template::Templates::new(
                    self.secrets.clone(),
                    std::sync::Arc::clone(&self.dotenv),
                )
                .expand_env(u)
                .map_err(|e| format!("`store` in cauce.yaml: {e}"))?,
            ),
            None => None,
        };
        Ok(match &configured {
            // A relative SQLite path in cauce.yaml is relative to the project, not to
            // wherever cauce was started from.
            Some(u) if u.starts_with("sqlite:") => {
                let path = u.trim_start_matches("sqlite:").trim_start_matches("//");
                format!("sqlite:{}", self.root.join(path).display())
            }
            Some(u) if u != "sqlite" => u.clone(),
            _ => format!("sqlite:{}", self.state_dir().join("state.db").display()),
        })
    }

    /// Where run logs go.
    pub fn logs_dir(&self) -> PathBuf {
        self.shared_root().join("logs")
    }

    /// Where logs, reports and datasets live: `shared_dir` (which every server and worker
    /// mounts), else `.cauce/`.
    pub fn shared_root(&self) -> PathBuf {
        match &self.settings.shared_dir {
            Some(d) => self.root.join(d),
            None => self.state_dir(),
        }
    }

    /// The log file of one attempt: `.cauce/logs/RUN/TASK.N.log`.
    pub fn attempt_log(&self, run_id: &str, task_id: &str, number: u32) -> PathBuf {
        self.logs_dir()
            .join(run_id)
            .join(format!("{task_id}.{number}.log"))
    }

    /// Where run reports go.
    pub fn reports_dir(&self) -> PathBuf {
        self.shared_root().join("reports")
    }

    /// Where run datasets go.
    pub fn data_dir(&self) -> PathBuf {
        self.shared_root().join("data")
    }

    /// The pipeline files of the project, sorted.
    pub fn pipeline_files(&self) -> Vec<PathBuf> {
        let dir = self.root.join(&self.settings.pipelines_dir);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        p.is_file()
                            && p.extension()
                                .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Resolves a pipeline argument: an existing file path, or the name of a project
    /// pipeline (its file name without extension, or its `name:`).
    pub fn resolve(&self, arg: &str) -> Result<PathBuf, String> {
        let as_path = Path::new(arg);
        if as_path.is_file() {
            return Ok(std::fs::canonicalize(as_path).unwrap_or_else(|_| as_path.to_path_buf()));
        }
        let files = self.pipeline_files();
        if let Some(f) = files
            .iter()
            .find(|f| f.file_stem().is_some_and(|s| s == arg))
        {
            return Ok(f.clone());
        }
        // A `name:` that differs from the file name.
        for f in &files {
            if let Ok(p) = self.load_pipeline(f) {
                if p.name == arg {
                    return Ok(f.clone());
                }
            }
        }
        let names: Vec<String> = files
            .iter()
            .filter_map(|f| f.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect();
        Err(format!(
            "no pipeline or file `{arg}`{}{}",
            suggestion(arg, names.iter().map(|s| s.as_str())),
            if names.is_empty() {
                format!(
                    " (no pipelines in {})",
                    self.root.join(&self.settings.pipelines_dir).display()
                )
            } else {
                format!("; pipelines: {}", names.join(", "))
            }
        ))
    }

    /// Reads and parses one pipeline file.
    pub fn load_pipeline(&self, file: &Path) -> Result<Pipeline, SpecErrors> {
        let text = read_spec_file(file)?;
        self.parse_pipeline_text(file, &text)
    }

    /// Parses a pipeline from text (a retried run re-reads the text stored with it).
    pub fn parse_pipeline_text(&self, file: &Path, text: &str) -> Result<Pipeline, SpecErrors> {
        let base_dir = if file.starts_with(&self.root) {
            self.root.clone()
        } else {
            file.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| self.root.clone())
        };
        parse_pipeline(file, text, &base_dir, &self.settings.defaults)
    }

    /// Reads a pipeline for `cauce validate`: the pipeline built from what parsed, and
    /// every error found in the file (parse errors and semantic checks together).
    pub fn check_file(&self, file: &Path) -> (Option<Pipeline>, Vec<SpecError>) {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                return (
                    None,
                    vec![SpecError::new(
                        Location::file(file),
                        None,
                        format!("cannot read: {e}"),
                    )],
                )
            }
        };
        match crate::spec::parse::parse_pipeline_all(
            file,
            &text,
            &self.base_dir_for(file),
            &self.settings.defaults,
        ) {
            Ok((p, mut errors)) => {
                errors.extend(crate::spec::check::check_pipeline(
                    &p,
                    &self.check_context(),
                ));
                errors.sort_by_key(|e| {
                    (e.location.line.unwrap_or(0), e.location.column.unwrap_or(0))
                });
                (Some(p), errors)
            }
            Err(e) => (None, e.0),
        }
    }

    fn base_dir_for(&self, file: &Path) -> PathBuf {
        if file.starts_with(&self.root) {
            self.root.clone()
        } else {
            file.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| self.root.clone())
        }
    }

    /// Loads every project pipeline; returns those that parsed and the errors of the rest.
    pub fn load_all(&self) -> (Vec<Pipeline>, Vec<SpecError>) {
        let mut ok = Vec::new();
        let mut errors = Vec::new();
        for f in self.pipeline_files() {
            match self.load_pipeline(&f) {
                Ok(p) => ok.push(p),
                Err(e) => errors.extend(e.0),
            }
        }
        (ok, errors)
    }

    /// What task kinds' static checks need.
    pub fn check_context(&self) -> CheckContext {
        let names = self
            .pipeline_files()
            .iter()
            .filter_map(|f| f.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect();
        CheckContext {
            python: self.settings.python.clone(),
            python_path: self.settings.python_path.clone(),
            pipelines: self.config_file.as_ref().map(|_| names),
            alert_channels: self
                .config_file
                .as_ref()
                .map(|_| self.settings.alerts.channels.keys().cloned().collect()),
            spawn_checks: true,
            installed: Default::default(),
        }
    }
}

/// The largest pipeline or settings file cauce reads (a guard against a wrong path to a
/// data file, which would otherwise be read whole into memory).
pub const MAX_SPEC_FILE_BYTES: u64 = 16 * 1024 * 1024;

fn read_spec_file(file: &Path) -> Result<String, SpecError> {
    let err = |msg: String| SpecError::new(Location::file(file), None, msg);
    let meta = std::fs::metadata(file).map_err(|e| err(format!("cannot read: {e}")))?;
    if meta.len() > MAX_SPEC_FILE_BYTES {
        return Err(err(format!(
            "file is {} bytes; pipeline files may be at most {MAX_SPEC_FILE_BYTES} bytes",
            meta.len()
        )));
    }
    std::fs::read_to_string(file).map_err(|e| err(format!("cannot read: {e}")))
}

fn read_settings(file: &Path) -> Result<Settings, SpecErrors> {
    let text = read_spec_file(file)?;
    let root = parse_tree(file, &text)?;
    let Some(map) = root.as_mapping() else {
        return Err(SpecError::new(
            Location::file(file),
            None,
            "cauce.yaml must be a mapping of settings",
        )
        .into());
    };
    let mut rest = map.clone();
    let defaults_node = rest.remove("defaults");
    let server_node = rest.remove("server");
    let alerts_node = rest.remove("alerts");
    let data_node = rest.remove("data");
    let raw: RawSettings =
        decode(&marked_yaml::Node::Mapping(rest), file, "").map_err(|mut e| {
            if e.message.starts_with("unknown key") {
                e.message.push_str(", defaults, server, alerts, data");
            }
            e
        })?;
    let mut errors = Vec::new();
    let mut s = Settings::default();
    if let Some(n) = &server_node {
        match crate::server::config::parse_settings(n, file) {
            Ok(v) => s.server = v,
            Err(e) => errors.extend(e),
        }
    }
    if let Some(n) = &alerts_node {
        match crate::alerts::parse_settings(n, file) {
            Ok(v) => s.alerts = v,
            Err(e) => errors.extend(e),
        }
    }
    if let Some(n) = &data_node {
        match parse_data_settings(n, file) {
            Ok(v) => s.data = v,
            Err(e) => errors.extend(e),
        }
    }
    if let Some(n) = raw.name {
        s.name = n;
    }
    s.store = raw.store;
    if let Some(w) = raw.max_workers {
        if w == 0 {
            errors.push(SpecError::new(
                Location::file(file),
                Some("max_workers".into()),
                "must be at least 1",
            ));
        }
        s.max_workers = w.max(1);
    }
    if let Some(p) = raw.python {
        s.python = p;
    }
    s.python_path = raw
        .python_path
        .unwrap_or_default()
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let mut dur = |field: &str, v: Option<String>, target: &mut Duration| {
        if let Some(v) = v {
            match parse_duration(&v) {
                Ok(d) => *target = d,
                Err(m) => errors.push(SpecError::new(Location::file(file), Some(field.into()), m)),
            }
        }
    };
    dur("lease", raw.lease, &mut s.lease);
    dur("kill_grace", raw.kill_grace, &mut s.kill_grace);
    if let Some(d) = raw.pipelines_dir {
        s.pipelines_dir = PathBuf::from(d);
    }
    if let Some(e) = raw.executor {
        s.executor = e;
    }
    match raw.shared_dir {
        Some(v) if crate::shared::is_url(&v) => {
            if let Err(e) = crate::shared::SharedStorage::open(&v, Path::new("."), &[]) {
                let why = match e {
                    crate::shared::SharedError::BadUrl { url, why } => format!("`{url}`: {why}"),
                    other => other.to_string(),
                };
                errors.push(SpecError::new(
                    Location::file(file),
                    Some("shared_dir".into()),
                    why,
                ));
            }
            s.shared_url = Some(v);
        }
        Some(v) => {
            let folder = v.strip_prefix("file://").unwrap_or(&v);
            s.shared_dir = Some(PathBuf::from(folder));
        }
        None => {}
    }
    let options = raw.shared_options.unwrap_or_default();
    if !options.is_empty() && s.shared_url.is_none() {
        errors.push(SpecError::new(
            Location::file(file),
            Some("shared_options".into()),
            "applies only to an object-store `shared_dir` (s3://bucket/prefix)".to_string(),
        ));
    }
    for (k, v) in options {
        if let Err(e) = crate::shared::option_key(&k) {
            errors.push(SpecError::new(
                Location::file(file),
                Some(format!("shared_options.{k}")),
                e,
            ));
        }
        s.shared_options.push((k, v));
    }
    if let Some(n) = &defaults_node {
        match parse_defaults(n, file, "defaults") {
            Ok(d) => s.defaults = d,
            Err(e) => errors.extend(e.0),
        }
    }
    if s.lease < Duration::from_secs(2) {
        errors.push(SpecError::new(
            Location::file(file),
            Some("lease".into()),
            "must be at least 2s",
        ));
    }
    if errors.is_empty() {
        Ok(s)
    } else {
        Err(SpecErrors(errors))
    }
}

/// Parameters given for a run (`-p KEY=VALUE`), checked against the declared params and
/// merged with their defaults. Unknown names and badly typed values are errors.
pub fn resolve_params(
    p: &Pipeline,
    given: &[(String, String)],
) -> Result<IndexMap<String, serde_json::Value>, String> {
    let mut out: IndexMap<String, serde_json::Value> = IndexMap::new();
    for (name, param) in &p.params {
        if let Some(d) = &param.default {
            out.insert(name.clone(), d.clone());
        }
    }
    for (k, v) in given {
        match p.params.get(k) {
            Some(param) => {
                let value = param.accept(v).map_err(|e| format!("param `{k}`: {e}"))?;
                out.insert(k.clone(), value);
            }
            None => {
                return Err(format!(
                    "pipeline `{}` declares no param `{k}`{}{}",
                    p.name,
                    suggestion(k, p.params.keys().map(|s| s.as_str())),
                    if p.params.is_empty() {
                        " (it declares no params; add them under `params:`)".to_string()
                    } else {
                        format!(
                            "; params: {}",
                            p.params.keys().cloned().collect::<Vec<_>>().join(", ")
                        )
                    }
                ))
            }
        }
    }
    for name in p.params.keys() {
        if !out.contains_key(name) {
            return Err(format!(
                "param `{name}` is required (it has no default); give it with -p {name}=VALUE"
            ));
        }
    }
    Ok(out)
}
