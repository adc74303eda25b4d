-- The alarms behind drift retrains, with who supplied the labels that raised them:
-- a version trained because of an alarm is judged on where that alarm's labels came from.
CREATE TABLE alarms (
    event_id      uuid PRIMARY KEY,
    model         text        NOT NULL,
    kinds         text[]      NOT NULL,
    label_sources jsonb,
    at            timestamptz NOT NULL DEFAULT now()
);
