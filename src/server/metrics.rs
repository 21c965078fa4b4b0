//! Prometheus metrics for `/metrics`, through `prometheus-client`.
//!
//! Durations (runs, tasks) and scheduler lag are histograms this process observes as runs
//! end and schedules fire. Counts by state, queue depth and alert deliveries are read at
//! each scrape from the store and the alerter, so they are right even for runs executed by
//! other processes sharing the store.

use crate::alerts::Alerter;
use crate::store::Store;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

type Labels = Vec<(String, String)>;

fn duration_histogram() -> Histogram {
    // 0.05 s to about 15 days.
    Histogram::new(exponential_buckets(0.05, 4.0, 13))
}

fn lag_histogram() -> Histogram {
    // 1 ms to about 65 s, doubling.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// What this process observes.
#[derive(Debug)]
pub struct ServerMetrics {
    run_duration: Family<Labels, Histogram, fn() -> Histogram>,
    task_duration: Family<Labels, Histogram, fn() -> Histogram>,
    scheduler_lag: Histogram,
    schedule_fires: Family<Labels, Counter>,
    sla_misses: Family<Labels, Counter>,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics {
            run_duration: Family::new_with_constructor(duration_histogram),
            task_duration: Family::new_with_constructor(duration_histogram),
            scheduler_lag: lag_histogram(),
            schedule_fires: Family::default(),
            sla_misses: Family::default(),
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl ServerMetrics {
    /// A run executed here ended.
    pub fn observe_run(&self, pipeline: &str, state: &str, took: Duration) {
        self.run_duration
            .get_or_create(&labels(&[("pipeline", pipeline), ("state", state)]))
            .observe(took.as_secs_f64());
    }

    /// A task of a run executed here ended.
    pub fn observe_task(&self, pipeline: &str, state: &str, took: Duration) {
        self.task_duration
            .get_or_create(&labels(&[("pipeline", pipeline), ("state", state)]))
            .observe(took.as_secs_f64());
    }

    /// A schedule fired `lag` after its due time.
    pub fn observe_fire(&self, pipeline: &str, lag: Duration) {
        self.scheduler_lag.observe(lag.as_secs_f64());
        self.schedule_fires
            .get_or_create(&labels(&[("pipeline", pipeline)]))
            .inc();
    }

    /// A scheduled run missed its SLA.
    pub fn observe_sla_miss(&self, pipeline: &str) {
        self.sla_misses
            .get_or_create(&labels(&[("pipeline", pipeline)]))
            .inc();
    }

    /// The Prometheus text exposition of everything.
    pub async fn render(
        &self,
        store: &dyn Store,
        alerter: &Alerter,
        active_here: usize,
    ) -> Result<String, crate::store::StoreError> {
        let stats = store.stats().await?;
        let mut reg = Registry::with_prefix("cauce");
        let runs: Family<Labels, Gauge> = Family::default();
        for (pipeline, state, n) in &stats.runs {
            runs.get_or_create(&labels(&[
                ("pipeline", pipeline),
                ("state", state.as_str()),
            ]))
            .set(*n as i64);
        }
        reg.register("runs", "Runs in the store by pipeline and state", runs);
        let tasks: Family<Labels, Gauge> = Family::default();
        for (state, n) in &stats.tasks {
            tasks
                .get_or_create(&labels(&[("state", state.as_str())]))
                .set(*n as i64);
        }
        reg.register("tasks", "Task runs in the store by state", tasks);
        let queued: Gauge = Gauge::default();
        queued.set(stats.queued_attempts as i64);
        reg.register("queue_depth", "Attempts waiting in the queue", queued);
        let running: Gauge = Gauge::default();
        running.set(stats.running_attempts as i64);
        reg.register("attempts_running", "Attempts being executed", running);
        let active: Gauge = Gauge::default();
        active.set(active_here as i64);
        reg.register(
            "server_active_runs",
            "Runs this server process executes",
            active,
        );
        let alerts: Family<Labels, Counter> = Family::default();
        for ((channel, outcome), n) in alerter.deliveries() {
            alerts
                .get_or_create(&labels(&[("channel", &channel), ("outcome", outcome)]))
                .inc_by(n);
        }
        reg.register(
            "alert_deliveries",
            "Alert deliveries by channel and outcome (sent, failed, rate_limited)",
            alerts,
        );
        reg.register(
            "run_duration_seconds",
            "Duration of runs executed by this server",
            self.run_duration.clone(),
        );
        reg.register(
            "task_duration_seconds",
            "Duration of the last attempt of tasks executed by this server",
            self.task_duration.clone(),
        );
        reg.register(
            "scheduler_lag_seconds",
            "Time from a schedule's due time to the run being created",
            self.scheduler_lag.clone(),
        );
        reg.register(
            "schedule_fires",
            "Runs started by the scheduler",
            self.schedule_fires.clone(),
        );
        reg.register(
            "sla_misses",
            "Scheduled runs that missed their SLA",
            self.sla_misses.clone(),
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &reg);
        Ok(out)
    }
}
