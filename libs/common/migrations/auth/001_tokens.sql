-- Bearer tokens of every service (libs/common/auth.py). Only the SHA-256 of a
-- token is stored: the token itself is shown once, when it is created.
CREATE TABLE tokens (
    id           text        PRIMARY KEY,
    principal    text        NOT NULL,
    roles        text[]      NOT NULL,
    token_sha256 text        NOT NULL UNIQUE,
    created_by   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX tokens_principal ON tokens (principal);
