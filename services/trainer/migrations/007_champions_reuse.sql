-- Every version that became champion, with its artifact: a drift job scores the earlier ones on the
-- newest rows (a concept may recur) and reuses the best when it beats the model it just trained.
CREATE TABLE champions (
    model       text        NOT NULL,
    version     int         NOT NULL,
    artifact    jsonb       NOT NULL,
    promoted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, version)
);
