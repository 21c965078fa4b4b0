//! The task graph of a pipeline: cycle detection with the whole path, topological layers,
//! and task selection (`--workflow`, `--tasks`, `--with-upstream`, `--category`).
//!
//! Pure functions over ids; it knows nothing of task kinds, states or the store.

use crate::spec::error::suggestion;
use crate::spec::Pipeline;
use indexmap::{IndexMap, IndexSet};

/// Every cycle found, each as the path of ids that closes it (`a -> b -> a` is `[a, b, a]`).
/// Edges to unknown tasks are ignored (they are reported separately).
pub fn find_cycles(deps: &IndexMap<String, Vec<String>>) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnStack,
        Done,
    }
    let mut marks: IndexMap<&str, Mark> = deps.keys().map(|k| (k.as_str(), Mark::New)).collect();
    let mut cycles = Vec::new();
    for start in deps.keys() {
        if marks[start.as_str()] != Mark::New {
            continue;
        }
        // Iterative DFS: (node, index of next dependency to visit).
        let mut stack: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
        marks[start.as_str()] = Mark::OnStack;
        while let Some((node, i)) = stack.pop() {
            let ds = &deps[node];
            if i < ds.len() {
                stack.push((node, i + 1));
                let next = ds[i].as_str();
                match marks.get(next).copied() {
                    Some(Mark::New) => {
                        marks[next] = Mark::OnStack;
                        stack.push((next, 0));
                    }
                    Some(Mark::OnStack) => {
                        let pos = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                        let mut path: Vec<String> =
                            stack[pos..].iter().map(|(n, _)| n.to_string()).collect();
                        path.push(next.to_string());
                        cycles.push(path);
                    }
                    _ => {}
                }
            } else {
                marks[node] = Mark::Done;
            }
        }
    }
    cycles
}

/// The dependency map of a pipeline.
pub fn dependencies(p: &Pipeline) -> IndexMap<String, Vec<String>> {
    p.tasks
        .iter()
        .map(|(id, t)| (id.clone(), t.depends_on.clone()))
        .collect()
}

/// Topological layers of the selected tasks: layer 0 has no selected upstream, layer n
/// depends only on earlier layers. Assumes no cycles.
pub fn layers(p: &Pipeline, selected: &IndexSet<String>) -> Vec<Vec<String>> {
    let mut level: IndexMap<&str, usize> = IndexMap::new();
    let mut remaining: Vec<&str> = selected.iter().map(|s| s.as_str()).collect();
    while !remaining.is_empty() {
        let before = remaining.len();
        remaining.retain(|id| {
            let deps: Vec<&str> = p.tasks[*id]
                .depends_on
                .iter()
                .map(|d| d.as_str())
                .filter(|d| selected.contains(*d))
                .collect();
            if deps.iter().all(|d| level.contains_key(d)) {
                let l = deps.iter().map(|d| level[d] + 1).max().unwrap_or(0);
                level.insert(id, l);
                false
            } else {
                true
            }
        });
        if remaining.len() == before {
            break; // a cycle; validation reports it
        }
    }
    let depth = level.values().copied().max().map(|m| m + 1).unwrap_or(0);
    let mut out = vec![Vec::new(); depth];
    for id in selected {
        if let Some(l) = level.get(id.as_str()) {
            out[*l].push(id.clone());
        }
    }
    out
}

/// Which tasks a run covers.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// A named workflow.
    pub workflow: Option<String>,
    /// Explicit task ids.
    pub tasks: Vec<String>,
    /// Also include everything the selected tasks depend on.
    pub with_upstream: bool,
    /// Only tasks of this category.
    pub category: Option<String>,
}

/// Resolves a selection to task ids in file order, or says what is wrong.
pub fn select(p: &Pipeline, sel: &Selection) -> Result<IndexSet<String>, String> {
    let mut chosen: IndexSet<String> = match &sel.workflow {
        Some(w) => match p.workflows.get(w) {
            Some(wf) => wf.tasks.iter().cloned().collect(),
            None => {
                let names: Vec<&str> = p.workflows.keys().map(|k| k.as_str()).collect();
                return Err(format!(
                    "pipeline `{}` has no workflow `{w}`{}; workflows: {}",
                    p.name,
                    suggestion(w, names.iter().copied()),
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ));
            }
        },
        None if sel.tasks.is_empty() => p.tasks.keys().cloned().collect(),
        None => IndexSet::new(),
    };
    for t in &sel.tasks {
        if !p.tasks.contains_key(t) {
            return Err(format!(
                "pipeline `{}` has no task `{t}`{}",
                p.name,
                suggestion(t, p.tasks.keys().map(|k| k.as_str()))
            ));
        }
        chosen.insert(t.clone());
    }
    if let Some(c) = &sel.category {
        chosen.retain(|id| p.tasks[id].category.as_deref() == Some(c.as_str()));
        if chosen.is_empty() {
            return Err(format!("no selected task has category `{c}`"));
        }
    }
    if sel.with_upstream {
        let mut stack: Vec<String> = chosen.iter().cloned().collect();
        while let Some(id) = stack.pop() {
            if let Some(t) = p.tasks.get(&id) {
                for d in &t.depends_on {
                    if chosen.insert(d.clone()) {
                        stack.push(d.clone());
                    }
                }
            }
        }
    }
    // Keep file order.
    Ok(p.tasks
        .keys()
        .filter(|k| chosen.contains(*k))
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(pairs: &[(&str, &[&str])]) -> IndexMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn reports_the_cycle_path() {
        let d = deps(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"]), ("d", &[])]);
        let cycles = find_cycles(&d);
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0], vec!["a", "c", "b", "a"]);
        assert!(find_cycles(&deps(&[("a", &[]), ("b", &["a"])])).is_empty());
        assert_eq!(find_cycles(&deps(&[("a", &["a"])])), vec![vec!["a", "a"]]);
    }
}
