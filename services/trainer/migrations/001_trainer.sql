-- The trainer's view of datasets and models, and its durable job queue.
CREATE TABLE datasets (
    name            text PRIMARY KEY,
    version         int         NOT NULL,
    total_rows      bigint      NOT NULL,
    manifest        jsonb       NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE models (
    name               text PRIMARY KEY,
    dataset            text        NOT NULL,
    last_trained_rows  bigint      NOT NULL DEFAULT 0,
    drift_since        timestamptz,
    drift_event_id     uuid,
    last_drift_job_at  timestamptz,
    champion_version   int,
    champion_artifact  jsonb,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    model            text        NOT NULL,
    dataset          text        NOT NULL,
    dataset_version  int         NOT NULL,
    manifest         jsonb       NOT NULL,
    trigger          text        NOT NULL,
    trigger_event_id uuid,
    reason           text        NOT NULL,
    since            timestamptz,
    status           text        NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    attempts         int         NOT NULL DEFAULT 0,
    correlation_id   text,
    trace_headers    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    result           jsonb,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    heartbeat_at     timestamptz,
    finished_at      timestamptz
);
-- At most one queued or running job per model: the database itself forbids a storm.
CREATE UNIQUE INDEX jobs_one_active_per_model ON jobs (model) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_queue ON jobs (created_at) WHERE status = 'queued';
