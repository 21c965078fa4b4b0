//! The SQL implementation of [`Store`], one code path for SQLite and PostgreSQL through
//! sqlx's `Any` driver. The dialects differ only in the schema file, how a write
//! transaction begins (`BEGIN IMMEDIATE` on SQLite, so writers queue instead of failing),
//! and `FOR UPDATE SKIP LOCKED` in the claim query on PostgreSQL. Every query binds its
//! values; none is built from user text.

use super::*;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

/// Schema migrations in order; the store records how many it has applied.
const MIGRATIONS: [(&str, &str); 5] = [
    (
        include_str!("migrations/sqlite_v1.sql"),
        include_str!("migrations/postgres_v1.sql"),
    ),
    (
        include_str!("migrations/sqlite_v2.sql"),
        include_str!("migrations/postgres_v2.sql"),
    ),
    (
        include_str!("migrations/sqlite_v3.sql"),
        include_str!("migrations/postgres_v3.sql"),
    ),
    (
        include_str!("migrations/sqlite_v4.sql"),
        include_str!("migrations/postgres_v4.sql"),
    ),
    (
        include_str!("migrations/sqlite_v5.sql"),
        include_str!("migrations/postgres_v5.sql"),
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

/// A store on SQLite or PostgreSQL.
#[derive(Debug)]
pub struct SqlStore {
    /// Writes (and reads inside write transactions). One connection on SQLite.
    pool: AnyPool,
    /// Reads outside transactions: on SQLite, several read-only connections that WAL lets
    /// run beside the writer (the API's listings do not queue behind the engine); on
    /// PostgreSQL, the same pool.
    reader: AnyPool,
    dialect: Dialect,
}

// Column lists as macros, so that queries using them are `concat!`ed string literals that
// sqlx can see are static (no text from outside ever reaches the SQL).
macro_rules! run_cols {
    () => {
        "id, pipeline, pipeline_file, base_dir, source, state, params, selection, options, logical_date, trigger_kind, parent_run_id, parent_task_id, created_at, ended_at, owner, heartbeat_at, cancel_requested, error, sla_missed_at"
    };
}
macro_rules! task_cols {
    () => {
        "run_id, task_id, state, critical, attempts, budget_base, started_at, ended_at, output, error, metrics"
    };
}
macro_rules! run_counts_sums {
    () => {
        "SUM(CASE WHEN created_at >= $1 THEN 1 ELSE 0 END) AS ended_a, \
         SUM(CASE WHEN created_at >= $1 AND state = 'success' THEN 1 ELSE 0 END) AS success_a, \
         SUM(CASE WHEN created_at >= $2 THEN 1 ELSE 0 END) AS ended_b, \
         SUM(CASE WHEN created_at >= $2 AND state = 'success' THEN 1 ELSE 0 END) AS success_b"
    };
}
macro_rules! attempt_cols {
    () => {
        "id, run_id, task_id, number, state, available_at, owner, lease_until, started_at, ended_at, exit_code, error, log_path, peak_rss_kb, cpu_user_ms, cpu_sys_ms, output, metrics"
    };
}

impl SqlStore {
    /// Enqueues `task_ids` of run `run_id`, then claims what `claim` asks for, in one
    /// transaction.
    async fn enqueue_then_claim(
        &self,
        run_id: &str,
        task_ids: &[String],
        owner: &str,
        claim: ClaimRequest<'_>,
        now: Millis,
    ) -> StoreResult<Vec<AttemptRecord>> {
        let mut tx = self.pool.begin_with(self.begin_sql()).await?;
        enqueue_in(&mut tx, run_id, task_ids, now).await?;
        let claimed = claim_in(&mut tx, self.dialect, owner, claim, now).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Connects (creating a SQLite file if needed) and brings the schema up to date.
    pub async fn open(url: &str) -> StoreResult<SqlStore> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.trim_start_matches("//");
            if path.is_empty() {
                return Err(StoreError::BadUrl(url.to_string()));
            }
            if let Some(dir) = std::path::Path::new(path).parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
                }
            }
            (Dialect::Sqlite, format!("sqlite://{path}?mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Dialect::Postgres, url.to_string())
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        let options = match dialect {
            // One connection per process: SQLite has one writer anyway, and a single
            // connection keeps in-process writes ordered without busy waits.
            Dialect::Sqlite => AnyPoolOptions::new()
                .max_connections(1)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            // WAL with synchronous=NORMAL is durable across a crash of cauce
                            // (kill -9); only a power loss can lose the last commits.
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA busy_timeout = 30000",
                            "PRAGMA foreign_keys = ON",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                        Ok(())
                    })
                }),
            Dialect::Postgres => AnyPoolOptions::new().max_connections(8),
        };
        // One direct connection first: a wrong host, port, password or path then fails at
        // once with the driver's own message, instead of a pool time-out 30 s later.
        {
            use sqlx::Connection;
            let probe =
                tokio::time::timeout(Duration::from_secs(10), sqlx::AnyConnection::connect(&url))
                    .await
                    .map_err(|_| StoreError::Database(sqlx::Error::PoolTimedOut))??;
            probe.close().await?;
        }
        let pool = options
            .acquire_timeout(Duration::from_secs(30))
            .connect(&url)
            .await?;
        let mut store = SqlStore {
            reader: pool.clone(),
            pool,
            dialect,
        };
        store.migrate().await?;
        if dialect == Dialect::Sqlite {
            store.reader = AnyPoolOptions::new()
                .max_connections(4)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        for pragma in ["PRAGMA busy_timeout = 30000", "PRAGMA query_only = ON"] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                        Ok(())
                    })
                })
                .acquire_timeout(Duration::from_secs(30))
                .connect(&url)
                .await?;
        }
        Ok(store)
    }

    /// Runs matching a query, newest first, with the given SELECT (columns and table). Only
    /// the filters given are in the WHERE clause, so that SQLite can use the
    /// (pipeline, state, id) index instead of scanning every run.
    async fn run_rows(&self, select: &'static str, q: &RunQuery) -> StoreResult<Vec<AnyRow>> {
        let mut filters: Vec<&'static str> = Vec::new();
        let mut values: Vec<String> = Vec::new();
        for (column, value) in [
            ("pipeline = ", q.pipeline.clone()),
            ("state = ", q.state.map(|s| s.as_str().to_string())),
            ("trigger_kind = ", q.trigger.clone()),
            ("id < ", q.before.clone()),
            ("state <> ", q.ended.then(|| "running".to_string())),
        ] {
            if let Some(v) = value {
                filters.push(column);
                values.push(v);
            }
        }
        let mut sql = select.to_string();
        for (i, f) in filters.iter().enumerate() {
            sql.push_str(if i == 0 { " WHERE " } else { " AND " });
            sql.push_str(f);
            sql.push_str(&format!("${}", i + 1));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", values.len() + 1));
        // Audited: only fixed column lists, column names and `$n` placeholders are
        // formatted in; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for v in values {
            query = query.bind(v);
        }
        Ok(query
            .bind(i64::from(q.limit))
            .fetch_all(&self.reader)
            .await?)
    }

    fn begin_sql(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }

    async fn migrate(&self) -> StoreResult<()> {
        let mut tx = self.pool.begin_with(self.begin_sql()).await?;
        if self.dialect == Dialect::Postgres {
            // Two processes starting on a fresh database must not race on CREATE TABLE.
            sqlx::query("SELECT pg_advisory_xact_lock(7216354)")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS cauce_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        let version: Option<String> =
            sqlx::query("SELECT value FROM cauce_meta WHERE key = 'schema_version'")
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
        let current: usize = match version.as_deref() {
            None => 0,
            Some(v) => v
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("schema version `{v}`")))?,
        };
        if current > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "the store has schema version {current}, this cauce knows up to {}; use a newer cauce",
                MIGRATIONS.len()
            )));
        }
        for (sqlite, postgres) in &MIGRATIONS[current..] {
            let schema = match self.dialect {
                Dialect::Sqlite => sqlite,
                Dialect::Postgres => postgres,
            };
            for statement in schema.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                // Audited: the statements are the migration files compiled into cauce.
                sqlx::query(sqlx::AssertSqlSafe(statement))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if current < MIGRATIONS.len() {
            sqlx::query("DELETE FROM cauce_meta WHERE key = 'schema_version'")
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO cauce_meta (key, value) VALUES ('schema_version', $1)")
                .bind(MIGRATIONS.len().to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn json_col(row: &AnyRow, col: &str) -> StoreResult<Option<serde_json::Value>> {
    let text: Option<String> = row.try_get(col)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("{col}: {e}"))))
        .transpose()
}

fn run_from_row(row: &AnyRow) -> StoreResult<RunRecord> {
    let state: String = row.try_get("state")?;
    let selection: String = row.try_get("selection")?;
    Ok(RunRecord {
        id: row.try_get("id")?,
        pipeline: row.try_get("pipeline")?,
        pipeline_file: row.try_get("pipeline_file")?,
        base_dir: row.try_get("base_dir")?,
        source: row.try_get("source")?,
        state: RunState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("run state `{state}`")))?,
        params: json_col(row, "params")?.unwrap_or_default(),
        selection: serde_json::from_str(&selection)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        options: json_col(row, "options")?.unwrap_or_default(),
        logical_date: row.try_get("logical_date")?,
        trigger: row.try_get("trigger_kind")?,
        parent_run_id: row.try_get("parent_run_id")?,
        parent_task_id: row.try_get("parent_task_id")?,
        created_at: row.try_get("created_at")?,
        ended_at: row.try_get("ended_at")?,
        owner: row.try_get("owner")?,
        heartbeat_at: row.try_get("heartbeat_at")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        error: row.try_get("error")?,
        sla_missed_at: row.try_get("sla_missed_at")?,
    })
}

fn task_from_row(row: &AnyRow) -> StoreResult<TaskRunRecord> {
    let state: String = row.try_get("state")?;
    Ok(TaskRunRecord {
        run_id: row.try_get("run_id")?,
        task_id: row.try_get("task_id")?,
        state: TaskState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("task state `{state}`")))?,
        critical: row.try_get::<i64, _>("critical")? != 0,
        attempts: row.try_get::<i64, _>("attempts")? as u32,
        budget_base: row.try_get::<i64, _>("budget_base")? as u32,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        output: json_col(row, "output")?,
        error: row.try_get("error")?,
        metrics: json_col(row, "metrics")?,
    })
}

fn attempt_from_row(row: &AnyRow) -> StoreResult<AttemptRecord> {
    let state: String = row.try_get("state")?;
    Ok(AttemptRecord {
        id: row.try_get("id")?,
        run_id: row.try_get("run_id")?,
        task_id: row.try_get("task_id")?,
        number: row.try_get::<i64, _>("number")? as u32,
        state: AttemptState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("attempt state `{state}`")))?,
        available_at: row.try_get("available_at")?,
        owner: row.try_get("owner")?,
        lease_until: row.try_get("lease_until")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        exit_code: row.try_get("exit_code")?,
        error: row.try_get("error")?,
        log_path: row.try_get("log_path")?,
        peak_rss_kb: row.try_get("peak_rss_kb")?,
        cpu_user_ms: row.try_get("cpu_user_ms")?,
        cpu_sys_ms: row.try_get("cpu_sys_ms")?,
        output: json_col(row, "output")?,
        metrics: json_col(row, "metrics")?,
    })
}

/// How many task ids go into one `IN (...)` list.
const ENQUEUE_BATCH: usize = 500;

/// How many task rows one `INSERT` writes.
const INSERT_BATCH: usize = 100;

/// `$first, $first+1, ...` for `n` bound values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Applies the step after an attempt to its task, inside the caller's transaction.
async fn apply_next(
    tx: &mut sqlx::AnyConnection,
    run_id: &str,
    task_id: &str,
    result: &AttemptResult,
    next: Next,
    now: Millis,
) -> StoreResult<()> {
    let output = result.output.as_ref().map(|v| v.to_string());
    let metrics = result.metrics.as_ref().map(|v| v.to_string());
    match next {
        Next::Final(state) => {
            sqlx::query("UPDATE task_runs SET state = $1, ended_at = $2, changed_at = $2, error = $3, output = $4, metrics = $5 WHERE run_id = $6 AND task_id = $7")
                .bind(state.as_str())
                .bind(now)
                .bind(result.error.clone())
                .bind(output)
                .bind(metrics)
                .bind(run_id)
                .bind(task_id)
                .execute(&mut *tx)
                .await?;
        }
        Next::Retry { available_at } => {
            sqlx::query("UPDATE task_runs SET state = 'retrying', attempts = attempts + 1, error = $1, changed_at = $2 WHERE run_id = $3 AND task_id = $4")
                .bind(result.error.clone())
                .bind(now)
                .bind(run_id)
                .bind(task_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO attempts (run_id, task_id, number, state, available_at, queue) SELECT run_id, task_id, attempts, 'queued', $1, queue FROM task_runs WHERE run_id = $2 AND task_id = $3")
                .bind(available_at)
                .bind(run_id)
                .bind(task_id)
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}

/// Moves pending tasks to `queued` and inserts their next attempts (caller's transaction).
/// Inserts a run and its task rows (inside the caller's transaction).
async fn insert_run(conn: &mut sqlx::AnyConnection, run: &NewRun, now: Millis) -> StoreResult<()> {
    let selection: Vec<&str> = run.tasks.iter().map(|t| t.id.as_str()).collect();
    sqlx::query(
        "INSERT INTO runs (id, pipeline, pipeline_file, base_dir, source, state, params, selection, options, logical_date, trigger_kind, parent_run_id, parent_task_id, created_at, owner, heartbeat_at, cancel_requested) \
         VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, $8, $9, $10, $11, $12, $13, $14, $13, 0)",
    )
    .bind(&run.id)
    .bind(&run.pipeline)
    .bind(&run.pipeline_file)
    .bind(&run.base_dir)
    .bind(&run.source)
    .bind(run.params.to_string())
    .bind(serde_json::to_string(&selection).unwrap_or_default())
    .bind(run.options.to_string())
    .bind(&run.logical_date)
    .bind(&run.trigger)
    .bind(run.parent.as_ref().map(|p| p.0.clone()))
    .bind(run.parent.as_ref().map(|p| p.1.clone()))
    .bind(now)
    .bind(&run.owner)
    .execute(&mut *conn)
    .await?;
    // Many rows per statement: a 10,000-task run is 100 round trips, not 10,000.
    for (chunk_no, chunk) in run.tasks.chunks(INSERT_BATCH).enumerate() {
        let values: Vec<String> = (0..chunk.len())
            .map(|r| {
                format!(
                    "($1, ${}, ${}, 'pending', ${}, ${})",
                    2 + r * 4,
                    3 + r * 4,
                    4 + r * 4,
                    5 + r * 4
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO task_runs (run_id, task_id, position, state, critical, queue) VALUES {}",
            values.join(", ")
        );
        // Audited: only `$n` placeholders are formatted in; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&run.id);
        for (r, task) in chunk.iter().enumerate() {
            query = query
                .bind(&task.id)
                .bind((chunk_no * INSERT_BATCH + r) as i64)
                .bind(i64::from(task.critical))
                .bind(&task.queue);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

async fn enqueue_in(
    conn: &mut sqlx::AnyConnection,
    run_id: &str,
    task_ids: &[String],
    now: Millis,
) -> StoreResult<()> {
    // Two statements per batch of tasks, not two per task: a layer of a wide DAG
    // becomes ready at once.
    for chunk in task_ids.chunks(ENQUEUE_BATCH) {
        let update = format!(
            "UPDATE task_runs SET state = 'queued', attempts = attempts + 1, changed_at = $2 \
                 WHERE run_id = $1 AND state = 'pending' AND task_id IN ({}) RETURNING task_id",
            placeholders(3, chunk.len())
        );
        // Audited: only `$n` placeholders are formatted in; every value is bound.
        let mut moved = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(update))
            .bind(run_id)
            .bind(now);
        for t in chunk {
            moved = moved.bind(t);
        }
        let moved: Vec<String> = moved
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|(t,)| t)
            .collect();
        if moved.is_empty() {
            continue;
        }
        let insert = format!(
                "INSERT INTO attempts (run_id, task_id, number, state, available_at, queue) \
                 SELECT run_id, task_id, attempts, 'queued', $2, queue FROM task_runs WHERE run_id = $1 AND task_id IN ({}) ORDER BY position",
                placeholders(3, moved.len())
            );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(insert))
            .bind(run_id)
            .bind(now);
        for t in &moved {
            query = query.bind(t);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Claims what `claim` asks for, for `owner` (caller's transaction).
async fn claim_in(
    conn: &mut sqlx::AnyConnection,
    dialect: Dialect,
    owner: &str,
    claim: ClaimRequest<'_>,
    now: Millis,
) -> StoreResult<Vec<AttemptRecord>> {
    let ClaimRequest {
        run_id,
        queues,
        tasks,
        lease,
        limit,
    } = claim;
    if limit == 0 || queues.is_some_and(|q| q.is_empty()) || tasks.is_some_and(|t| t.is_empty()) {
        return Ok(Vec::new());
    }
    let queue_filter = match queues {
        None => String::new(),
        Some(q) => format!(" AND queue IN ({})", placeholders(6, q.len())),
    };
    let task_filter = match tasks {
        None => String::new(),
        Some(t) => format!(
            " AND task_id IN ({})",
            placeholders(6 + queues.map_or(0, <[String]>::len), t.len())
        ),
    };
    // The only difference between the dialects: PostgreSQL skips rows other workers hold.
    let lock = match dialect {
        Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        Dialect::Sqlite => "",
    };
    let sql = format!(
        "UPDATE attempts SET state = 'running', owner = $1, lease_until = $2, started_at = $3 \
         WHERE id IN (SELECT id FROM attempts WHERE state = 'queued' AND available_at <= $3 AND ($4 IS NULL OR run_id = $4){queue_filter}{task_filter} \
         ORDER BY available_at, id LIMIT $5{lock}) RETURNING {}",
        attempt_cols!()
    );
    // Audited: only `$n` placeholders and fixed text are formatted in; every value is bound.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(owner)
        .bind(now + ms(lease))
        .bind(now)
        .bind(run_id.map(String::from))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX));
    for q in queues.unwrap_or_default() {
        query = query.bind(q);
    }
    for t in tasks.unwrap_or_default() {
        query = query.bind(t);
    }
    let rows = query.fetch_all(&mut *conn).await?;
    let mut claimed = rows
        .iter()
        .map(attempt_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    // RETURNING gives no order guarantee; keep the queue's.
    claimed.sort_by_key(|a| (a.available_at, a.id));
    // One statement for the claimed attempts' tasks, not one each.
    for chunk in claimed.chunks(ENQUEUE_BATCH) {
        let pairs: Vec<String> = (0..chunk.len())
            .map(|i| format!("(${}, ${})", 2 + 2 * i, 3 + 2 * i))
            .collect();
        let sql = format!(
            "UPDATE task_runs SET state = 'running', started_at = COALESCE(started_at, $1), changed_at = $1 \
             WHERE (run_id, task_id) IN ({})",
            pairs.join(", ")
        );
        // Audited: only `$n` placeholders are formatted in; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
        for attempt in chunk {
            query = query.bind(&attempt.run_id).bind(&attempt.task_id);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(claimed)
}

/// Records an attempt's result and the task's next step if `owner` holds its lease
/// (caller's transaction; on false the caller rolls back).
async fn complete_in(
    conn: &mut sqlx::AnyConnection,
    attempt_id: i64,
    owner: &str,
    result: &AttemptResult,
    next: Next,
    now: Millis,
) -> StoreResult<bool> {
    let row = sqlx::query(
        "UPDATE attempts SET state = $1, ended_at = $2, error = $3, exit_code = $4, peak_rss_kb = $5, cpu_user_ms = $6, cpu_sys_ms = $7, output = $8, metrics = $9, log_path = $10 \
         WHERE id = $11 AND owner = $12 AND state = 'running' RETURNING run_id, task_id",
    )
    .bind(result.state.unwrap_or(AttemptState::Failed).as_str())
    .bind(now)
    .bind(result.error.clone())
    .bind(result.exit_code)
    .bind(result.peak_rss_kb)
    .bind(result.cpu_user_ms)
    .bind(result.cpu_sys_ms)
    .bind(result.output.as_ref().map(|v| v.to_string()))
    .bind(result.metrics.as_ref().map(|v| v.to_string()))
    .bind(result.log_path.clone())
    .bind(attempt_id)
    .bind(owner)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let run_id: String = row.try_get("run_id")?;
    let task_id: String = row.try_get("task_id")?;
    apply_next(conn, &run_id, &task_id, result, next, now).await?;
    Ok(true)
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    async fn create_run(&self, run: &NewRun, now: Millis) -> StoreResult<()> {
        let mut tx = self.pool.begin_with(self.begin_sql()).await?;
        insert_run(&mut tx, run, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn runs_page(&self, q: &RunQuery) -> StoreResult<Vec<RunRecord>> {
        let rows = self
            .run_rows(concat!("SELECT ", run_cols!(), " FROM runs"), q)
            .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn run_summaries(&self, q: &RunQuery) -> StoreResult<Vec<RunSummary>> {
        let rows = self
            .run_rows(
                "SELECT id, pipeline, state, trigger_kind, logical_date, created_at, ended_at, parent_run_id FROM runs",
                q,
            )
            .await?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("state")?;
                Ok(RunSummary {
                    id: row.try_get("id")?,
                    pipeline: row.try_get("pipeline")?,
                    state: RunState::parse(&state)
                        .ok_or_else(|| StoreError::Corrupt(format!("run state `{state}`")))?,
                    trigger: row.try_get("trigger_kind")?,
                    logical_date: row.try_get("logical_date")?,
                    created_at: row.try_get("created_at")?,
                    ended_at: row.try_get("ended_at")?,
                    parent_run_id: row.try_get("parent_run_id")?,
                })
            })
            .collect()
    }

    async fn run_counts(&self, a: Millis, b: Millis) -> StoreResult<Vec<RunCounts>> {
        // SQLite would walk the (pipeline, id) index to save the GROUP BY sort, reading
        // every run; the covering (created_at, pipeline, state) index reads only the window.
        let sql = match self.dialect {
            Dialect::Sqlite => concat!(
                "SELECT pipeline, ",
                run_counts_sums!(),
                " FROM runs INDEXED BY runs_by_created WHERE created_at >= $3 AND state <> 'running' GROUP BY pipeline"
            ),
            Dialect::Postgres => concat!(
                "SELECT pipeline, ",
                run_counts_sums!(),
                " FROM runs WHERE created_at >= $3 AND state <> 'running' GROUP BY pipeline"
            ),
        };
        let rows = sqlx::query(sql)
            .bind(a)
            .bind(b)
            .bind(a.min(b))
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                let n = |c: &str| -> StoreResult<u64> {
                    Ok(r.try_get::<Option<i64>, _>(c)?.unwrap_or(0).max(0) as u64)
                };
                Ok(RunCounts {
                    pipeline: r.try_get("pipeline")?,
                    ended_a: n("ended_a")?,
                    success_a: n("success_a")?,
                    ended_b: n("ended_b")?,
                    success_b: n("success_b")?,
                })
            })
            .collect()
    }

    async fn schedule_marks(&self) -> StoreResult<std::collections::HashMap<String, Millis>> {
        let rows = sqlx::query("SELECT pipeline, last_fire FROM schedules")
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("pipeline")?, r.try_get("last_fire")?)))
            .collect()
    }

    async fn fire_schedules(&self, fires: &[ScheduleFire], now: Millis) -> StoreResult<Vec<bool>> {
        let mut tx = self.pool.begin_with(self.begin_sql()).await?;
        let mut moved = Vec::with_capacity(fires.len());
        for f in fires {
            let n = match f.prev {
                Some(p) => sqlx::query(
                    "UPDATE schedules SET last_fire = $1, updated_at = $2 WHERE pipeline = $3 AND last_fire = $4",
                )
                .bind(f.mark)
                .bind(now)
                .bind(&f.pipeline)
                .bind(p)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                None => sqlx::query(
                    "INSERT INTO schedules (pipeline, last_fire, updated_at) VALUES ($1, $2, $3) ON CONFLICT (pipeline) DO NOTHING",
                )
                .bind(&f.pipeline)
                .bind(f.mark)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
            };
            // A mark another scheduler moved first is left alone, and its runs not made.
            if n > 0 {
                for run in &f.runs {
                    insert_run(&mut tx, run, now).await?;
                }
            }
            moved.push(n > 0);
        }
        tx.commit().await?;
        Ok(moved)
    }

    async fn try_lead(
        &self,
        name: &str,
        holder: &str,
        lease: Duration,
        now: Millis,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO leaders (name, holder, lease_until) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, lease_until = excluded.lease_until \
             WHERE leaders.holder = excluded.holder OR leaders.lease_until < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(now + ms(lease))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn leader(&self, name: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT holder FROM leaders WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("holder")).transpose()?)
    }

    async fn resign(&self, name: &str, holder: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM leaders WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mark_sla_missed(&self, run_id: &str, now: Millis) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE runs SET sla_missed_at = $1 WHERE id = $2 AND sla_missed_at IS NULL",
        )
        .bind(now)
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        let mut stats = StoreStats::default();
        for r in
            sqlx::query("SELECT pipeline, state, COUNT(*) AS n FROM runs GROUP BY pipeline, state")
                .fetch_all(&self.reader)
                .await?
        {
            let state: String = r.try_get("state")?;
            if let Some(s) = RunState::parse(&state) {
                stats
                    .runs
                    .push((r.try_get("pipeline")?, s, r.try_get::<i64, _>("n")? as u64));
            }
        }
        for r in sqlx::query("SELECT state, COUNT(*) AS n FROM task_runs GROUP BY state")
            .fetch_all(&self.reader)
            .await?
        {
            let state: String = r.try_get("state")?;
            if let Some(s) = TaskState::parse(&state) {
                stats.tasks.push((s, r.try_get::<i64, _>("n")? as u64));
            }
        }
        for r in sqlx::query("SELECT state, COUNT(*) AS n FROM attempts WHERE state IN ('queued', 'running') GROUP BY state")
            .fetch_all(&self.reader)
            .await?
        {
            let state: String = r.try_get("state")?;
            let n = r.try_get::<i64, _>("n")? as u64;
            match state.as_str() {
                "queued" => stats.queued_attempts = n,
                _ => stats.running_attempts = n,
            }
        }
        Ok(stats)
    }

    async fn get_run(&self, id: &str) -> StoreResult<Option<RunRecord>> {
        let row = sqlx::query(concat!("SELECT ", run_cols!(), " FROM runs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn list_runs(
        &self,
        pipeline: Option<&str>,
        state: Option<RunState>,
        limit: u32,
    ) -> StoreResult<Vec<RunRecord>> {
        self.runs_page(&RunQuery {
            pipeline: pipeline.map(String::from),
            state,
            limit,
            ..RunQuery::default()
        })
        .await
    }

    async fn task_runs(&self, run_id: &str) -> StoreResult<Vec<TaskRunRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_cols!(),
            " FROM task_runs WHERE run_id = $1 ORDER BY position"
        ))
        .bind(run_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn task_changes(&self, run_id: &str, since: Millis) -> StoreResult<Vec<TaskChange>> {
        let rows = sqlx::query(
            "SELECT task_id, state, attempts, started_at, ended_at, error FROM task_runs \
             WHERE run_id = $1 AND changed_at >= $2 ORDER BY position",
        )
        .bind(run_id)
        .bind(since)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("state")?;
                Ok(TaskChange {
                    task_id: row.try_get("task_id")?,
                    state: TaskState::parse(&state)
                        .ok_or_else(|| StoreError::Corrupt(format!("task state `{state}`")))?,
                    attempts: row.try_get::<i64, _>("attempts")? as u32,
                    started_at: row.try_get("started_at")?,
                    ended_at: row.try_get("ended_at")?,
                    error: row.try_get("error")?,
                })
            })
            .collect()
    }

    async fn task_run(&self, run_id: &str, task_id: &str) -> StoreResult<Option<TaskRunRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            task_cols!(),
            " FROM task_runs WHERE run_id = $1 AND task_id = $2"
        ))
        .bind(run_id)
        .bind(task_id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn attempts(&self, run_id: &str) -> StoreResult<Vec<AttemptRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            attempt_cols!(),
            " FROM attempts WHERE run_id = $1 ORDER BY id"
        ))
        .bind(run_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn take_run(&self, run_id: &str, owner: &str, now: Millis) -> StoreResult<()> {
        let done = sqlx::query("UPDATE runs SET owner = $1, heartbeat_at = $2, state = 'running', ended_at = NULL, error = NULL, cancel_requested = 0 WHERE id = $3")
            .bind(owner)
            .bind(now)
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoSuchRun(run_id.to_string()));
        }
        Ok(())
    }

    async fn finish_run(
        &self,
        run_id: &str,
        state: RunState,
        error: Option<&str>,
        watermarks: &[Watermark],
        now: Millis,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin_with(self.begin_sql()).await?;
        let pipeline: Option<(String,)> = sqlx::query_as("SELECT pipeline FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?;
        sqlx::query("UPDATE runs SET state = $1, ended_at = $2, error = $3 WHERE id = $4")
            .bind(state.as_str())
            .bind(now)
            .bind(error.map(String::from))
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        if let Some((pipeline,)) = pipeline {
            for w in watermarks {
                sqlx::query(
                    "INSERT INTO watermarks (pipeline, task_id, value, run_id, updated_at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (pipeline, task_id) DO UPDATE SET value = excluded.value, run_id = excluded.run_id, updated_at = excluded.updated_at",
                )
                .bind(pipeline.clone())
                .bind(w.task_id.clone())
                .bind(w.value.to_string())
                .bind(run_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn watermark(
        &self,
        pipeline: &str,
        task_id: &str,
    ) -> StoreResult<Option<serde_json::Value>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT value FROM watermarks WHERE pipeline = $1 AND task_id = $2")
                .bind(pipeline)
                .bind(task_id)
                .fetch_optional(&self.reader)
                .await?;
        row.map(|(v,)| {
            serde_json::from_str(&v)
                .map_err(|e| StoreError::Corrupt(format!("watermark of {pipeline}.{task_id}: {e}")))
        })
        .transpose()
    }

    async fn watermarks(&self, pipeline: &str) -> StoreResult<Vec<WatermarkRecord>> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT task_id, value, run_id, updated_at FROM watermarks WHERE pipeline = $1 ORDER BY task_id",
        )
        .bind(pipeline)
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|(task_id, value, run_id, updated_at)| {
                Ok(WatermarkRecord {
                    task_id,
                    value: serde_json::from_str(&value).map_err(|e| {
                        StoreError::Corrupt(format!("watermark of {pipeline}: {e}"))
                    })?,
                    run_id,
                    updated_at,
                })
            })
            .collect()
    }

    async fn cancel_requested(&self, run_id: &str) -> StoreResult<bool> {
        let flag: Option<(i64,)> =
            sqlx::query_as("SELECT cancel_requested FROM runs WHERE id = $1")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(flag.is_some_and(|(f,)| f != 0))
    }

    async fn request_cancel(&self, run_id: &str) -> StoreResult<bool> {
        let done =
            sqlx::query("UPDATE runs SET cancel_requested = 1 WHERE id = $1 AND state = 'running'")
                .bind(run_id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn enqueue(&self, run_id: &str, task_ids: &[String], now: Millis) -> StoreResult<()> {
        if task_ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with(self.begin_sql()).await?;
        enqueue_in(&mut tx, run_id, task_ids, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn enqueue_and_claim(
        &self,
        run_id: &str,
        task_ids: &[String],
        owner: &str,
        lease: Duration,
        limit: usize,
        now: Millis,
    ) -> StoreResult<Vec<AttemptRecord>> {
        let claim = ClaimRequest {
            run_id: Some(run_id),
            queues: None,
            tasks: None,
            lease,
            limit,
        };
        self.enqueue_then_claim(run_id, task_ids, owner, claim, now)
            .await
    }

    async fn start_tasks(
        &self,
        run_id: &str,
        task_ids: &[String],
        owner: &str,
        lease: Duration,
        now: Millis,
    ) -> StoreResult<Vec<AttemptRecord>> {
        let claim = ClaimRequest {
            run_id: Some(run_id),
            queues: None,
            tasks: Some(task_ids),
            lease,
            limit: task_ids.len(),
        };
        self.enqueue_then_claim(run_id, task_ids, owner, claim, now)
            .await
    }

    async fn finalize_tasks(
        &self,
        run_id: &str,
        keep_running: bool,
        updates: &[(String, TaskState, Option<String>)],
        now: Millis,
    ) -> StoreResult<Vec<String>> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let mut kept = Vec::new();
        let mut tx = self.pool.begin_with(self.begin_sql()).await?;
        // Attempts before tasks, the order a claim and a completion lock them in.
        for (task, state, error) in updates {
            sqlx::query("UPDATE attempts SET state = 'cancelled', ended_at = $1 WHERE run_id = $2 AND task_id = $3 AND state = 'queued'")
                .bind(now)
                .bind(run_id)
                .bind(task)
                .execute(&mut *tx)
                .await?;
            let done = sqlx::query("UPDATE task_runs SET state = $1, ended_at = $2, changed_at = $2, error = COALESCE($3, error) WHERE run_id = $4 AND task_id = $5 AND state NOT IN ('success', 'failed', 'skipped', 'cancelled') AND ($6 = 0 OR state <> 'running')")
                .bind(state.as_str())
                .bind(now)
                .bind(error.clone())
                .bind(run_id)
                .bind(task)
                .bind(i64::from(keep_running))
                .execute(&mut *tx)
                .await?;
            if keep_running && done.rows_affected() == 0 {
                let running: Option<(String,)> = sqlx::query_as(
                    "SELECT state FROM task_runs WHERE run_id = $1 AND task_id = $2 AND state = 'running'",
                )
                .bind(run_id)
                .bind(task)
                .fetch_optional(&mut *tx)
                .await?;
                if running.is_some() {
                    kept.push(task.clone());
                }
            }
        }
        tx.commit().await?;
        Ok(kept)
    }

    async fn reset_tasks(&self, run_id: &str, task_ids: &[String]) -> StoreResult<()> {
        let mut tx = self.pool.begin_with(self.begin_sql()).await?;
        for task in task_ids {
            sqlx::query("UPDATE task_runs SET state = 'pending', budget_base = attempts, ended_at = NULL, error = NULL, output = NULL, metrics = NULL WHERE run_id = $1 AND task_id = $2")
                .bind(run_id)
                .bind(task)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE attempts SET state = 'cancelled' WHERE run_id = $1 AND task_id = $2 AND state = 'queued'")
                .bind(run_id)
                .bind(task)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn register_worker(&self, w: &super::WorkerInfo, now: Millis) -> StoreResult<()> {
        let mut tx = self.pool.begin_with(self.begin_sql()).await?;
        sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(&w.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO workers (id, host, pid, slots, queues, labels, version, started_at, heartbeat_at, draining) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, 0)",
        )
        .bind(&w.id)
        .bind(&w.host)
        .bind(w.pid)
        .bind(w.slots)
        .bind(serde_json::to_string(&w.queues).unwrap_or_default())
        .bind(serde_json::to_string(&w.labels).unwrap_or_default())
        .bind(&w.version)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn worker_heartbeat(&self, id: &str, draining: bool, now: Millis) -> StoreResult<()> {
        sqlx::query("UPDATE workers SET heartbeat_at = $1, draining = $2 WHERE id = $3")
            .bind(now)
            .bind(i64::from(draining))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn worker_stopped(&self, id: &str, now: Millis) -> StoreResult<()> {
        sqlx::query("UPDATE workers SET stopped_at = $1, heartbeat_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn workers(&self, since: Millis) -> StoreResult<Vec<super::WorkerRecord>> {
        let rows = sqlx::query(
            "SELECT w.id, w.host, w.pid, w.slots, w.queues, w.labels, w.version, w.started_at, w.heartbeat_at, w.stopped_at, w.draining, \
             (SELECT COUNT(*) FROM attempts a WHERE a.owner = w.id AND a.state = 'running') AS running \
             FROM workers w WHERE w.heartbeat_at >= $1 ORDER BY w.started_at DESC, w.id",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let list = |col: &str| -> StoreResult<Vec<String>> {
                    let text: String = r.try_get(col)?;
                    serde_json::from_str(&text)
                        .map_err(|e| StoreError::Corrupt(format!("workers.{col}: {e}")))
                };
                Ok(super::WorkerRecord {
                    info: super::WorkerInfo {
                        id: r.try_get("id")?,
                        host: r.try_get("host")?,
                        pid: r.try_get("pid")?,
                        slots: r.try_get("slots")?,
                        queues: list("queues")?,
                        labels: list("labels")?,
                        version: r.try_get("version")?,
                    },
                    started_at: r.try_get("started_at")?,
                    heartbeat_at: r.try_get("heartbeat_at")?,
                    stopped_at: r.try_get("stopped_at")?,
                    draining: r.try_get::<i64, _>("draining")? != 0,
                    running: r.try_get("running")?,
                })
            })
            .collect()
    }

    async fn claim_many(
        &self,
        owner: &str,
        claim: ClaimRequest<'_>,
        now: Millis,
    ) -> StoreResult<Vec<AttemptRecord>> {
        if claim.limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin_with(self.begin_sql()).await?;
        let claimed = claim_in(&mut tx, self.dialect, owner, claim, now).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn heartbeat(
        &self,
        run_id: Option<&str>,
        owner: &str,
        lease: Duration,
        now: Millis,
    ) -> StoreResult<Heartbeat> {
        let runs = sqlx::query(
            "UPDATE runs SET heartbeat_at = $1 WHERE owner = $2 AND state = 'running' AND ($3 IS NULL OR id = $3)",
        )
        .bind(now)
        .bind(owner)
        .bind(run_id.map(String::from))
        .execute(&self.pool)
        .await?;
        let holds_run = run_id.is_none() || runs.rows_affected() > 0;
        if !holds_run {
            // The run is no longer this owner's: nothing of it is renewed.
            return Ok(Heartbeat {
                leases: 0,
                holds_run,
            });
        }
        let done = sqlx::query(
            "UPDATE attempts SET lease_until = $1 WHERE owner = $2 AND state = 'running' AND ($3 IS NULL OR run_id = $3)",
        )
        .bind(now + ms(lease))
        .bind(owner)
        .bind(run_id.map(String::from))
        .execute(&self.pool)
        .await?;
        Ok(Heartbeat {
            leases: done.rows_affected(),
            holds_run,
        })
    }

    async fn complete(
        &self,
        attempt_id: i64,
        owner: &str,
        result: &AttemptResult,
        next: Next,
        now: Millis,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin_with(self.begin_sql()).await?;
        if !complete_in(&mut tx, attempt_id, owner, result, next, now).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn complete_and_claim(
        &self,
        owner: &str,
        done: &[Completion<'_>],
        claim: ClaimRequest<'_>,
        now: Millis,
    ) -> StoreResult<(Vec<bool>, Vec<AttemptRecord>)> {
        let mut tx = self.pool.begin_with(self.begin_sql()).await?;
        // A rejected completion changes nothing (its first statement matches no row), so
        // the others stand.
        let mut recorded = Vec::with_capacity(done.len());
        for c in done {
            recorded.push(complete_in(&mut tx, c.attempt_id, owner, c.result, c.next, now).await?);
        }
        // A process whose every result was rejected has lost its leases: it claims nothing.
        let claimed = if !done.is_empty() && !recorded.iter().any(|r| *r) {
            Vec::new()
        } else {
            claim_in(&mut tx, self.dialect, owner, claim, now).await?
        };
        tx.commit().await?;
        Ok((recorded, claimed))
    }

    async fn expire_leases(
        &self,
        run_id: Option<&str>,
        dead_owners: &[String],
        now: Millis,
    ) -> StoreResult<Vec<AttemptRecord>> {
        let mut lost = Vec::new();
        let mut tx = self.pool.begin_with(self.begin_sql()).await?;
        let expired = sqlx::query(concat!(
            "UPDATE attempts SET state = 'lost', ended_at = $1, error = 'lost: the process running it stopped renewing its lease' \
             WHERE state = 'running' AND lease_until < $1 AND ($2 IS NULL OR run_id = $2) RETURNING ",
            attempt_cols!()
        ))
        .bind(now)
        .bind(run_id.map(String::from))
        .fetch_all(&mut *tx)
        .await?;
        for row in &expired {
            lost.push(attempt_from_row(row)?);
        }
        for owner in dead_owners {
            let rows = sqlx::query(concat!(
                "UPDATE attempts SET state = 'lost', ended_at = $1, error = 'lost: the process running it is gone' \
                 WHERE state = 'running' AND owner = $2 AND ($3 IS NULL OR run_id = $3) RETURNING ",
                attempt_cols!()
            ))
            .bind(now)
            .bind(owner)
            .bind(run_id.map(String::from))
            .fetch_all(&mut *tx)
            .await?;
            for row in &rows {
                lost.push(attempt_from_row(row)?);
            }
        }
        tx.commit().await?;
        Ok(lost)
    }

    async fn resolve_lost(
        &self,
        run_id: &str,
        task_id: &str,
        error: &str,
        next: Next,
        now: Millis,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin_with(self.begin_sql()).await?;
        let result = AttemptResult {
            error: Some(error.to_string()),
            ..Default::default()
        };
        apply_next(&mut tx, run_id, task_id, &result, next, now).await?;
        tx.commit().await?;
        Ok(())
    }
}
