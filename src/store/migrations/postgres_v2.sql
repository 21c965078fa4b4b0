CREATE TABLE IF NOT EXISTS schedules (
    pipeline TEXT PRIMARY KEY,
    last_fire BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
ALTER TABLE runs ADD COLUMN IF NOT EXISTS sla_missed_at BIGINT;
CREATE INDEX IF NOT EXISTS runs_by_pipeline_state ON runs (pipeline, state, id);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at, pipeline, state);
CREATE TABLE IF NOT EXISTS leaders (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    lease_until BIGINT NOT NULL
)
