-- Live metrics per version. A shadow's predictions (copies of requests the champion or
-- canary answered, same request ids) wait for labels apart from the served ones; every
-- labelled prediction of any version gets its score in outcomes (1/0 correct, or the
-- squared error). live_versions holds each model's canary and shadow from model.promoted.
CREATE TABLE shadow_predictions (
    request_id text        NOT NULL,
    model      text        NOT NULL,
    version    int         NOT NULL,
    prediction jsonb       NOT NULL,
    at         timestamptz NOT NULL,
    PRIMARY KEY (request_id, version)
);
CREATE INDEX shadow_predictions_at ON shadow_predictions (at);

CREATE TABLE outcomes (
    model      text             NOT NULL,
    version    int              NOT NULL,
    request_id text             NOT NULL,
    shadow     boolean          NOT NULL,
    label      jsonb            NOT NULL,
    score      double precision NOT NULL,
    at         timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (model, version, request_id)
);
CREATE INDEX outcomes_request ON outcomes (request_id);
CREATE INDEX outcomes_at ON outcomes (at);

CREATE TABLE live_versions (
    model    text        NOT NULL,
    alias    text        NOT NULL,
    version  int         NOT NULL,
    since    timestamptz NOT NULL DEFAULT now(),
    compared int         NOT NULL DEFAULT 0,
    PRIMARY KEY (model, alias)
);
