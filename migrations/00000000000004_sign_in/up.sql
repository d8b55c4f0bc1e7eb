-- Sign-in with Ethereum (EIP-4361): the nonces handed out, and the bearer
-- tokens issued after a verified signature.
CREATE TABLE challenges (
    nonce      TEXT PRIMARY KEY CHECK (nonce ~ '^[A-Za-z0-9]{8,64}$'),
    address    TEXT NOT NULL CHECK (address ~ '^0x[0-9a-f]{40}$'),
    issued_at  TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL CHECK (expires_at > issued_at),
    -- set once, atomically, when a signature over this nonce is accepted
    used_at    TIMESTAMPTZ
);

CREATE INDEX challenges_expires_idx ON challenges (expires_at);

-- Only the SHA-256 of a token is stored: a copy of this table signs no one in.
CREATE TABLE auth_tokens (
    token_sha256 BYTEA PRIMARY KEY CHECK (length(token_sha256) = 32),
    address      TEXT NOT NULL CHECK (address ~ '^0x[0-9a-f]{40}$'),
    issued_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ
);

CREATE INDEX auth_tokens_address_idx ON auth_tokens (address);
CREATE INDEX auth_tokens_expires_idx ON auth_tokens (expires_at);
