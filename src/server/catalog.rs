//! The project's pipelines as the server sees them: parsed and checked once, re-read when a
//! file changes (size or modification time), at most once a second. A pipeline file with
//! errors stays listed with its errors, so the API can show why it does not run.
//!
//! Names come from the `pipelines` folder only: a caller can never make the server read a
//! file elsewhere by naming a path.

use crate::project::Project;
use crate::spec::check::check_pipeline;
use crate::spec::Pipeline;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How often files are looked at again.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// One pipeline file.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The pipeline's name (its `name:`, else the file name).
    pub name: String,
    /// The file.
    pub file: PathBuf,
    /// The pipeline, or why the file is invalid.
    pub pipeline: Result<Arc<Pipeline>, String>,
    stamp: (u64, Option<SystemTime>),
}

#[derive(Debug)]
struct State {
    entries: Vec<Entry>,
    checked: Option<Instant>,
}

/// The pipelines of a project.
#[derive(Debug)]
pub struct Catalog {
    project: Arc<Project>,
    state: Mutex<State>,
}

impl Catalog {
    /// A catalogue of the project's pipelines (read on first use).
    pub fn new(project: Arc<Project>) -> Catalog {
        Catalog {
            project,
            state: Mutex::new(State {
                entries: vec![],
                checked: None,
            }),
        }
    }

    /// Every pipeline file, in file-name order, re-read if changed.
    pub fn entries(&self) -> Vec<Entry> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.checked.is_none_or(|c| c.elapsed() >= REFRESH_EVERY) {
            let old = std::mem::take(&mut st.entries);
            st.entries = self.scan(old);
            st.checked = Some(Instant::now());
        }
        st.entries.clone()
    }

    /// The valid pipelines.
    pub fn pipelines(&self) -> Vec<Arc<Pipeline>> {
        self.entries()
            .into_iter()
            .filter_map(|e| e.pipeline.ok())
            .collect()
    }

    /// A pipeline by name: `Ok(None)` when there is none, `Err` when its file is invalid.
    pub fn get(&self, name: &str) -> Result<Option<Arc<Pipeline>>, String> {
        match self.entries().into_iter().find(|e| e.name == name) {
            None => Ok(None),
            Some(e) => e.pipeline.map(Some),
        }
    }

    fn scan(&self, old: Vec<Entry>) -> Vec<Entry> {
        let cx = crate::tasks::CheckContext {
            spawn_checks: false,
            ..self.project.check_context()
        };
        let mut out = Vec::new();
        for file in self.project.pipeline_files() {
            let stamp = std::fs::metadata(&file)
                .map(|m| (m.len(), m.modified().ok()))
                .unwrap_or((0, None));
            if let Some(e) = old.iter().find(|e| e.file == file && e.stamp == stamp) {
                out.push(e.clone());
                continue;
            }
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let entry = match self.project.load_pipeline(&file) {
                Ok(p) => {
                    let problems = check_pipeline(&p, &cx);
                    Entry {
                        name: p.name.clone(),
                        file: file.clone(),
                        pipeline: if problems.is_empty() {
                            Ok(Arc::new(p))
                        } else {
                            Err(crate::spec::SpecErrors(problems).to_string())
                        },
                        stamp,
                    }
                }
                Err(e) => Entry {
                    name: stem,
                    file: file.clone(),
                    pipeline: Err(e.to_string()),
                    stamp,
                },
            };
            out.push(entry);
        }
        out
    }
}
