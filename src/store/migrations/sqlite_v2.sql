CREATE TABLE IF NOT EXISTS schedules (
    pipeline TEXT PRIMARY KEY,
    last_fire INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
ALTER TABLE runs ADD COLUMN sla_missed_at INTEGER;
CREATE INDEX IF NOT EXISTS runs_by_pipeline_state ON runs (pipeline, state, id);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at, pipeline, state);
CREATE TABLE IF NOT EXISTS leaders (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    lease_until INTEGER NOT NULL
)
