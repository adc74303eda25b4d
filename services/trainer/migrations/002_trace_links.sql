-- A drift-triggered job is queued by the data that completes it, but the drift
-- caused it too: its trace context is kept and becomes a span link of the job.
ALTER TABLE models ADD COLUMN drift_trace jsonb;
ALTER TABLE jobs ADD COLUMN link_headers jsonb NOT NULL DEFAULT '[]'::jsonb;
