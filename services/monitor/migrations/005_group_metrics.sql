-- Live group metrics per declared sensitive feature. A sensitive model input is kept with its
-- prediction (its group name, as logged); a sensitive attribute that is not an input comes with
-- the label (waiting with it when the label overtakes its prediction). Each labelled served
-- prediction of a model with sensitive features gets a row in group_outcomes: its prediction,
-- label and group per sensitive feature, the window the live group figures are computed over.
ALTER TABLE predictions ADD COLUMN sensitive jsonb;
ALTER TABLE pending_labels ADD COLUMN attributes jsonb;

CREATE TABLE group_outcomes (
    model      text        NOT NULL,
    version    int         NOT NULL,
    request_id text        NOT NULL,
    prediction jsonb       NOT NULL,
    label      jsonb       NOT NULL,
    groups     jsonb       NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, version, request_id)
);
CREATE INDEX group_outcomes_recent ON group_outcomes (model, version, at DESC);
CREATE INDEX group_outcomes_at ON group_outcomes (at);
