-- Who did what, when: admin actions, security events and chain anomalies
-- (a credited deposit reorged away, say) that an operator must be able to
-- review. Rows are only ever inserted.
CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- 'admin', 'system' or 'wallet:<address>'
    actor       TEXT NOT NULL,
    -- dotted verb, e.g. 'credit.adjust', 'gpu.drain', 'deposit.reorged'
    action      TEXT NOT NULL,
    -- what the action concerns, e.g. a session id or a wallet account
    subject     TEXT,
    details     JSONB NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX audit_log_at_idx ON audit_log (at);
CREATE INDEX audit_log_subject_idx ON audit_log (subject);
