-- Transactional outbox: events written in the same transaction as the state
-- they describe, published later by the relay (libs/common/outbox.py).
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text        NOT NULL,
    key         bytea,
    payload     bytea       NOT NULL,
    headers     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE sent_at IS NULL;

-- Idempotent consumers: one row per (consumer, event) processed, written in the
-- same transaction as the consumer's effects, so a redelivery changes nothing.
CREATE TABLE processed_events (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
