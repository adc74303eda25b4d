-- Models, their versions with full lineage, aliases and the audit log.
CREATE TABLE models (
    name       text PRIMARY KEY,
    dataset    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE versions (
    model            text        NOT NULL REFERENCES models (name),
    version          int         NOT NULL,
    source_event_id  uuid        NOT NULL UNIQUE,
    job_id           text        NOT NULL,
    dataset          text        NOT NULL,
    dataset_version  int         NOT NULL,
    trigger          text        NOT NULL,
    trigger_event_id uuid,
    params           jsonb       NOT NULL,
    metrics          jsonb       NOT NULL,
    champion_metrics jsonb,
    champion_version int,
    primary_metric   text        NOT NULL,
    seed             int         NOT NULL,
    code_version     text        NOT NULL,
    training_rows    int         NOT NULL,
    artifact         jsonb       NOT NULL,
    profile          jsonb       NOT NULL,
    schema           jsonb       NOT NULL,
    decision         text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, version)
);

CREATE TABLE aliases (
    model      text        NOT NULL REFERENCES models (name),
    alias      text        NOT NULL,
    version    int         NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, alias),
    FOREIGN KEY (model, version) REFERENCES versions (model, version)
);

CREATE TABLE audit (
    id           bigserial PRIMARY KEY,
    model        text        NOT NULL REFERENCES models (name),
    action       text        NOT NULL,
    alias        text,
    from_version int,
    to_version   int,
    actor        text        NOT NULL,
    reason       text        NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_model ON audit (model, id);
