-- An ONNX export that arrived before its version (model.exported and model.trained travel on different
-- topics): kept here and stored with the version when model.trained registers it, never dead-lettered.
CREATE TABLE pending_exports (
    model       text        NOT NULL,
    job_id      text        NOT NULL,
    sha256      text        NOT NULL,
    onnx        jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, job_id, sha256)
);
