-- Reference profiles of promoted versions, the version monitored per model,
-- served predictions awaiting labels, window reports and alarms.
CREATE TABLE reference_profiles (
    model       text        NOT NULL,
    version     int         NOT NULL,
    dataset     text,
    profile     jsonb       NOT NULL,
    schema      jsonb       NOT NULL,
    metrics     jsonb       NOT NULL,
    promoted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, version)
);

CREATE TABLE monitored (
    model      text PRIMARY KEY,
    version    int         NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE predictions (
    request_id text PRIMARY KEY,
    model      text        NOT NULL,
    version    int         NOT NULL,
    prediction jsonb       NOT NULL,
    at         timestamptz NOT NULL,
    labelled   boolean     NOT NULL DEFAULT false
);
CREATE INDEX predictions_model_at ON predictions (model, at);

CREATE TABLE reports (
    id      bigserial PRIMARY KEY,
    model   text        NOT NULL,
    version int         NOT NULL,
    flagged boolean     NOT NULL,
    report  jsonb       NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reports_model ON reports (model, id);

CREATE TABLE alarms (
    id       bigserial PRIMARY KEY,
    model    text        NOT NULL,
    version  int         NOT NULL,
    event_id uuid        NOT NULL,
    kinds    text[]      NOT NULL,
    summary  text        NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);

-- Labels can overtake the predictions they answer (two topics, no order between
-- them); they wait here until the prediction arrives.
CREATE TABLE pending_labels (
    request_id text PRIMARY KEY,
    model      text        NOT NULL,
    label      jsonb       NOT NULL,
    at         timestamptz NOT NULL DEFAULT now()
);
