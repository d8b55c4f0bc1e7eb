-- Desktop sessions: enough to rebuild each session's actor after a crash or a
-- restart (the actors' SessionStore port). The billing columns are the
-- session's billing clock; the ledger holds the money.
CREATE TABLE sessions (
    id                UUID PRIMARY KEY,
    -- lower-case 0x address
    address           TEXT NOT NULL CHECK (address ~ '^0x[0-9a-f]{40}$'),
    gpus              INTEGER NOT NULL CHECK (gpus > 0),
    state             TEXT NOT NULL
        CHECK (state IN ('queued', 'launching', 'running', 'stopping', 'ended')),
    -- the GPU host and the device indices held there (empty unless held);
    -- INTEGER because a host number is a u16, which SMALLINT cannot hold
    host              INTEGER CHECK (host BETWEEN 0 AND 65535),
    gpu_indices       INTEGER[] NOT NULL DEFAULT '{}',
    container_id      TEXT,
    billed_intervals  BIGINT NOT NULL DEFAULT 0 CHECK (billed_intervals >= 0),
    billed_credit     BIGINT NOT NULL DEFAULT 0 CHECK (billed_credit >= 0),
    billed_ms         BIGINT NOT NULL DEFAULT 0 CHECK (billed_ms >= 0),
    -- {"kind": ..., "detail": ...} as the actors serialise EndReason
    end_reason        JSONB,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- first time the container ran, and when the session ended
    started_at        TIMESTAMPTZ,
    ended_at          TIMESTAMPTZ,
    -- named, so that a violation says which rule was broken
    CONSTRAINT sessions_ended_at_iff_ended CHECK ((state = 'ended') = (ended_at IS NOT NULL)),
    CONSTRAINT sessions_ended_has_reason CHECK (state <> 'ended' OR end_reason IS NOT NULL)
);

-- Recovery reads every session not yet ended; a wallet's own list is by address.
CREATE INDEX sessions_active_idx ON sessions (created_at, id) WHERE state <> 'ended';
CREATE INDEX sessions_address_idx ON sessions (address, created_at);
