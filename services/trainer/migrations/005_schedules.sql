-- Scheduled retraining: one cron schedule per model. next_run_at is claimed in a transaction
-- (FOR UPDATE SKIP LOCKED) and moved forward in it, so a schedule fires once per due time
-- across restarts and replicas.
CREATE TABLE schedules (
    model        text PRIMARY KEY,
    dataset      text        NOT NULL,
    cron         text        NOT NULL,
    source       text        NOT NULL CHECK (source IN ('setting', 'api')),
    next_run_at  timestamptz NOT NULL,
    last_run_at  timestamptz,
    last_job_id  uuid,
    last_outcome text,
    updated_by   text        NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_due ON schedules (next_run_at);
