-- Record keys of datasets whose schema declares one: a key stored once is refused afterwards.
CREATE TABLE record_keys (
    dataset text NOT NULL,
    key     text NOT NULL,
    PRIMARY KEY (dataset, key)
);
