-- Dead-lettered messages replayed by an operator, so none is replayed twice.
CREATE TABLE dlq_replays (
    dlq_topic     text        NOT NULL,
    dlq_partition int         NOT NULL,
    dlq_offset    bigint      NOT NULL,
    target_topic  text        NOT NULL,
    replayed_by   text        NOT NULL,
    replayed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);
