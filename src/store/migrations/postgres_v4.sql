ALTER TABLE task_runs ADD COLUMN IF NOT EXISTS queue TEXT NOT NULL DEFAULT 'default';
CREATE INDEX IF NOT EXISTS attempts_by_queue ON attempts (queue, state, available_at, id);
CREATE INDEX IF NOT EXISTS attempts_by_owner ON attempts (owner, state);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    slots BIGINT NOT NULL,
    queues TEXT NOT NULL,
    labels TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    stopped_at BIGINT,
    draining BIGINT NOT NULL DEFAULT 0
)
