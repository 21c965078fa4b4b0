ALTER TABLE task_runs ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
CREATE INDEX IF NOT EXISTS attempts_by_queue ON attempts (queue, state, available_at, id);
CREATE INDEX IF NOT EXISTS attempts_by_owner ON attempts (owner, state);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    slots INTEGER NOT NULL,
    queues TEXT NOT NULL,
    labels TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    stopped_at INTEGER,
    draining INTEGER NOT NULL DEFAULT 0
)
