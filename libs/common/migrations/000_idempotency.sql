-- Idempotent HTTP edges: a mutating request that carries an Idempotency-Key is
-- remembered here with its answer, in the same transaction as its effect
-- (libs/common/idempotency.py), so a retry gets the original answer and
-- changes nothing.
CREATE TABLE idempotency_keys (
    scope        text        NOT NULL,
    key          text        NOT NULL,
    fingerprint  text        NOT NULL,
    status       int         NOT NULL DEFAULT 0,
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
