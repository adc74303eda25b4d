-- Re-judgement of stale comparisons: the holdout a version was scored on, and
-- the re-judged figures (the challenger and the then-current champion on it).
ALTER TABLE versions ADD COLUMN holdout jsonb;
ALTER TABLE versions ADD COLUMN rejudged jsonb;
-- Who supplied the training rows: the trust rule applies to a re-judged version too.
ALTER TABLE versions ADD COLUMN row_sources jsonb;
