ALTER TABLE task_runs ADD COLUMN changed_at INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS task_runs_changes ON task_runs (run_id, changed_at)
