CREATE TABLE IF NOT EXISTS cauce_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    pipeline_file TEXT NOT NULL,
    base_dir TEXT NOT NULL,
    source TEXT NOT NULL,
    state TEXT NOT NULL,
    params TEXT NOT NULL,
    selection TEXT NOT NULL,
    options TEXT NOT NULL,
    logical_date TEXT NOT NULL,
    trigger_kind TEXT NOT NULL,
    parent_run_id TEXT,
    parent_task_id TEXT,
    created_at INTEGER NOT NULL,
    ended_at INTEGER,
    owner TEXT,
    heartbeat_at INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_pipeline ON runs (pipeline, id);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state, id);
CREATE TABLE IF NOT EXISTS task_runs (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    task_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    state TEXT NOT NULL,
    critical INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    budget_base INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER,
    ended_at INTEGER,
    output TEXT,
    error TEXT,
    metrics TEXT,
    PRIMARY KEY (run_id, task_id)
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    task_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    state TEXT NOT NULL,
    queue TEXT NOT NULL DEFAULT 'default',
    available_at INTEGER NOT NULL,
    owner TEXT,
    lease_until INTEGER,
    started_at INTEGER,
    ended_at INTEGER,
    exit_code INTEGER,
    error TEXT,
    log_path TEXT,
    peak_rss_kb INTEGER,
    cpu_user_ms INTEGER,
    cpu_sys_ms INTEGER,
    output TEXT,
    metrics TEXT,
    UNIQUE (run_id, task_id, number)
);
CREATE INDEX IF NOT EXISTS attempts_ready ON attempts (state, available_at, id);
CREATE INDEX IF NOT EXISTS attempts_by_run ON attempts (run_id, state);
