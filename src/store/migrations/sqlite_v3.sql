CREATE TABLE IF NOT EXISTS watermarks (
    pipeline TEXT NOT NULL,
    task_id TEXT NOT NULL,
    value TEXT NOT NULL,
    run_id TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (pipeline, task_id)
)
