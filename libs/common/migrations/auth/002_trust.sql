-- A producer principal's trust level: data from a trusted one (the upstream system's account, the
-- demo) retrains and promotes by itself; a version fed mostly by one untrusted principal waits
-- for an approver (services/registry/domain/provenance.py).
ALTER TABLE tokens ADD COLUMN trusted boolean NOT NULL DEFAULT false;
