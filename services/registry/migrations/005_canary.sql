-- Canary releases: the running canary of each model, its share of traffic, whether the canary
-- policy judges it (false: an A/B test with a fixed share), when it started and its deadline.
CREATE TABLE canaries (
    model      text PRIMARY KEY REFERENCES models (name),
    version    int              NOT NULL,
    share      double precision NOT NULL CHECK (share >= 0 AND share <= 100),
    judged     boolean          NOT NULL,
    started_at timestamptz      NOT NULL DEFAULT now(),
    deadline   timestamptz      NOT NULL,
    last       jsonb
);
