-- Rate-limit buckets shared by every replica of a service (libs/common/ratelimit.py): one row per
-- scope (the installation's topic prefix and the intake, e.g. "feedback") and principal, so a
-- principal's budget does not grow with the number of replicas the autoscaler runs.
CREATE TABLE rate_buckets (
    scope text NOT NULL,
    principal text NOT NULL,
    tokens double precision NOT NULL,
    at timestamptz NOT NULL,
    PRIMARY KEY (scope, principal)
);
