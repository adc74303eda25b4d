-- Rejected rows are quarantined as one block per submission (services/ingest/domain/quarantine.py):
-- a compressed Arrow IPC stream, written once and read a page at a time, instead of one row each.
-- Ids stay per rejection: a block holds first_id .. first_id + rows - 1, from the dataset's counter,
-- which starts above the dataset's rows in the old table (still read, no longer written). Stop old ingest
-- replicas before the new version starts: they would go on writing the old table (docs/development.md).
ALTER TABLE datasets ADD COLUMN rejections_issued bigint NOT NULL DEFAULT 0;
UPDATE datasets d SET rejections_issued = COALESCE((SELECT max(id) FROM rejections r WHERE r.dataset = d.name), 0);

ALTER TABLE submissions ADD CONSTRAINT submissions_id_dataset UNIQUE (id, dataset);

CREATE TABLE rejection_blocks (
    dataset       text        NOT NULL,
    first_id      bigint      NOT NULL CHECK (first_id > 0),
    rows          int         NOT NULL CHECK (rows > 0),
    submission_id uuid        NOT NULL,
    block         bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset, first_id),
    FOREIGN KEY (submission_id, dataset) REFERENCES submissions (id, dataset)
);
-- The block is compressed already (LZ4): stored out of line without a second compression.
ALTER TABLE rejection_blocks ALTER COLUMN block SET STORAGE EXTERNAL;
CREATE INDEX rejection_blocks_created ON rejection_blocks (created_at);
