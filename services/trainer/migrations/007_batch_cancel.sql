-- Batch jobs can be cancelled (POST /v1/batch-jobs/{id}/cancel): a fourth end state, with who and why.
ALTER TABLE batch_jobs DROP CONSTRAINT batch_jobs_status_check;
ALTER TABLE batch_jobs ADD CONSTRAINT batch_jobs_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled'));
ALTER TABLE batch_jobs ADD COLUMN cancel_reason text;
-- The artifact GC asks for the files of live jobs and of recent finished ones.
CREATE INDEX batch_jobs_finished ON batch_jobs (finished_at) WHERE finished_at IS NOT NULL;
