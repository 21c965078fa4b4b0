//! Live progress of a run: a status line on a terminal (counts, running tasks, elapsed)
//! with a line per finished task above it, or plain timestamped lines when not on a terminal.

use crate::engine::{Event, EventSink};
use crate::spec::duration::format_duration;
use crate::state::TaskState;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Counts {
    done: usize,
    failed: usize,
    running: BTreeSet<String>,
}

/// Draws a run's progress on stderr.
pub struct Progress {
    bar: Option<ProgressBar>,
    counts: Mutex<Counts>,
}

impl Progress {
    /// Progress for a run of `total` tasks; `quiet` prints nothing.
    pub fn new(total: usize, quiet: bool) -> Arc<Progress> {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {pos}/{len} tasks done {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Arc::new(Progress {
            bar,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => errln!("{} {text}", chrono::Local::now().format("%H:%M:%S")),
        }
    }

    fn refresh(&self, c: &Counts) {
        if let Some(bar) = &self.bar {
            bar.set_position(c.done as u64);
            let running: Vec<&str> = c.running.iter().take(4).map(|s| s.as_str()).collect();
            let more = c.running.len().saturating_sub(running.len());
            let mut msg = String::new();
            if c.failed > 0 {
                msg.push_str(&format!("· {} failed ", c.failed));
            }
            if !running.is_empty() {
                msg.push_str(&format!("· running: {}", running.join(", ")));
                if more > 0 {
                    msg.push_str(&format!(" +{more}"));
                }
            }
            bar.set_message(msg);
        }
    }

    /// The engine's event sink drawing into this progress.
    pub fn sink(self: &Arc<Self>, quiet: bool) -> EventSink {
        let me = Arc::clone(self);
        Arc::new(move |event| {
            let Ok(mut c) = me.counts.lock() else { return };
            match event {
                Event::Started { task, attempt } => {
                    if !quiet && me.bar.is_none() {
                        me.line(format!(
                            "start   {task}{}",
                            if attempt > 1 {
                                format!(" (attempt {attempt})")
                            } else {
                                String::new()
                            }
                        ));
                    }
                    c.running.insert(task);
                }
                Event::Retrying {
                    task,
                    attempt,
                    delay,
                    error,
                } => {
                    c.running.remove(&task);
                    if !quiet {
                        me.line(format!(
                            "retry   {task}: attempt {attempt} failed ({error}); next in {}",
                            format_duration(delay)
                        ));
                    }
                }
                Event::Finished {
                    task,
                    state,
                    elapsed,
                    error,
                } => {
                    c.running.remove(&task);
                    c.done += 1;
                    if state == TaskState::Failed {
                        c.failed += 1;
                    }
                    if !quiet {
                        let took = elapsed
                            .map(|d| format!(" in {}", format_duration(d)))
                            .unwrap_or_default();
                        let why = error.map(|e| format!(": {e}")).unwrap_or_default();
                        me.line(format!("{:<7} {task}{took}{why}", state.as_str()));
                    }
                }
            }
            me.refresh(&c);
        })
    }

    /// Removes the status line.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
