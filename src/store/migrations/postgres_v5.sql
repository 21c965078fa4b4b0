ALTER TABLE task_runs ADD COLUMN IF NOT EXISTS changed_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS task_runs_changes ON task_runs (run_id, changed_at)
