-- Every version that became champion, with its artifact: a drift job scores the earlier ones on the
-- newest rows (a concept may recur) and reuses the best when it beats the model it just trained.
CREATE TABLE champions (
    model       text        NOT NULL,
    version     int         NOT NULL,
    artifact    jsonb       NOT NULL,
    promoted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, version)
);
-- The champions known before this table existed (their promotion time is unknown: now).
INSERT INTO champions (model, version, artifact)
SELECT name, champion_version, champion_artifact FROM models
WHERE champion_version IS NOT NULL AND champion_artifact IS NOT NULL;

-- A job answering a drift (its first model, or a post-drift refresh while those rows are few) searches
-- with the short drift budget (services/trainer/domain/policy.py, Decision.quick).
ALTER TABLE jobs ADD COLUMN quick boolean NOT NULL DEFAULT false;
