-- Loop policy: cancelled jobs (drift outranks routine work), the worker process
-- of a running job, the version a kept alarm is about, and the data horizon.
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled'));
ALTER TABLE jobs ADD COLUMN cancel_reason text;
ALTER TABLE jobs ADD COLUMN worker_pid int;
ALTER TABLE models ADD COLUMN drift_version int;
ALTER TABLE models ADD COLUMN last_drift_version int;
ALTER TABLE models ADD COLUMN horizon timestamptz;
