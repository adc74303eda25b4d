-- Datasets, their append-only versions (one accepted batch each), every
-- submission's counts and the rejected rows with their reasons.
CREATE TABLE datasets (
    name         text PRIMARY KEY,
    schema       jsonb       NOT NULL,
    last_version int         NOT NULL DEFAULT 0,
    total_rows   bigint      NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE versions (
    dataset         text        NOT NULL REFERENCES datasets (name),
    version         int         NOT NULL,
    batch_uri       text        NOT NULL,
    batch_sha256    text        NOT NULL,
    batch_size      bigint      NOT NULL,
    rows            int         NOT NULL,
    manifest_uri    text        NOT NULL,
    manifest_sha256 text        NOT NULL,
    manifest_size   bigint      NOT NULL,
    total_rows      bigint      NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (dataset, version)
);

CREATE TABLE submissions (
    id         uuid PRIMARY KEY,
    dataset    text        NOT NULL REFERENCES datasets (name),
    source     text        NOT NULL,
    received   int         NOT NULL,
    accepted   int         NOT NULL,
    rejected   int         NOT NULL,
    version    int,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX submissions_dataset ON submissions (dataset, created_at);

CREATE TABLE rejections (
    id            bigserial PRIMARY KEY,
    dataset       text        NOT NULL REFERENCES datasets (name),
    submission_id uuid        NOT NULL REFERENCES submissions (id),
    row_index     int         NOT NULL,
    field         text,
    reason        text        NOT NULL,
    record        jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejections_dataset ON rejections (dataset, id);
