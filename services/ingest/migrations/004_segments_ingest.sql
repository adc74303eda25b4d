-- The segments the next version's manifest lists, in order: one per batch until the compactor
-- merges a run of small ones into one Parquet file. A version's manifest is then its parent's
-- segments plus the new batch, so writing one costs O(segments), not O(every batch ever).
CREATE TABLE segments (
    dataset    text        NOT NULL REFERENCES datasets (name),
    first_seq  int         NOT NULL,
    last_seq   int         NOT NULL,
    uri        text        NOT NULL,
    sha256     text        NOT NULL,
    size       bigint      NOT NULL,
    rows       bigint      NOT NULL,
    created_at timestamptz NOT NULL,
    until      timestamptz NOT NULL,
    principal  text,
    trusted    boolean,
    PRIMARY KEY (dataset, first_seq)
);

INSERT INTO segments (dataset, first_seq, last_seq, uri, sha256, size, rows, created_at, until, principal, trusted)
SELECT dataset, version, version, batch_uri, batch_sha256, batch_size, rows, created_at, created_at, principal, trusted
FROM versions;
