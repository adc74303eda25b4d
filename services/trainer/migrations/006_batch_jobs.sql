-- Batch predictions: durable jobs (queued → running → succeeded | failed) leased like training
-- jobs, and the chunks each has finished, so a restarted worker resumes after the last one.
CREATE TABLE batch_jobs (
    id              uuid PRIMARY KEY,
    model           text        NOT NULL,
    version         int         NOT NULL,
    alias           text,
    artifact        jsonb       NOT NULL,
    dataset_schema  jsonb       NOT NULL,
    input           jsonb       NOT NULL,
    total_rows      bigint      NOT NULL,
    chunk_rows      int         NOT NULL,
    chunks          int         NOT NULL,
    status          text        NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    attempts        int         NOT NULL DEFAULT 0,
    resumed_at      int[]       NOT NULL DEFAULT '{}',
    output          jsonb,
    error           text,
    worker_pid      int,
    requested_by    text        NOT NULL,
    correlation_id  text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    heartbeat_at    timestamptz,
    finished_at     timestamptz
);
CREATE INDEX batch_jobs_queue ON batch_jobs (created_at) WHERE status = 'queued';

CREATE TABLE batch_chunks (
    job_id    uuid        NOT NULL REFERENCES batch_jobs (id) ON DELETE CASCADE,
    seq       int         NOT NULL,
    rows      int         NOT NULL,
    artifact  jsonb       NOT NULL,
    done_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq)
);
