-- Segments that compaction replaced, and when (the artifact GC, services/ingest/adapters/gc.py).
-- The manifests of the versions written while a segment was current list it, so its file stays
-- in use until those versions are older than DRIFTLOOP_RETENTION_SUPERSEDED_BATCHES_DAYS: every
-- such version was written before the segment was replaced. A trigger records it, so whatever
-- removes a segment row (the compactor, a replica losing a race) is covered. Segments replaced
-- before this migration were not recorded: a compacted file replaced then is judged as unused.
CREATE TABLE superseded_segments (
    sha256        text        NOT NULL,
    superseded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX superseded_segments_at ON superseded_segments (superseded_at);

CREATE FUNCTION record_superseded_segment() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO superseded_segments (sha256) VALUES (OLD.sha256);
    RETURN OLD;
END
$$;

CREATE TRIGGER segments_superseded AFTER DELETE ON segments
    FOR EACH ROW EXECUTE FUNCTION record_superseded_segment();
