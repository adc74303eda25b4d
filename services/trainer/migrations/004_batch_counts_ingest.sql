-- Rows per dataset version and when ingest accepted them, from data.arrived: the retrain policy
-- counts "rows since" here instead of reading the version's manifest on every event.
CREATE TABLE dataset_batches (
    dataset    text        NOT NULL,
    version    int         NOT NULL,
    rows       bigint      NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (dataset, version)
);
CREATE INDEX dataset_batches_time ON dataset_batches (dataset, created_at);
