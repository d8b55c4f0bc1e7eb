-- Deposits seen on chain, and the chain watcher's cursor.
--
-- A deposit is one transfer to the revenue address: an ERC-20 Transfer log
-- (its log index in the block) or a transaction's ETH value (log_index -1).
-- (chain_id, tx_hash, log_index) is its identity, and the ledger credits it
-- under the key 'deposit:<chain_id>:<tx_hash>:<log_index>', so it is
-- credited at most once.
CREATE TABLE deposits (
    id             BIGSERIAL PRIMARY KEY,
    chain_id       BIGINT NOT NULL,
    tx_hash        TEXT NOT NULL CHECK (tx_hash ~ '^0x[0-9a-f]{64}$'),
    log_index      BIGINT NOT NULL CHECK (log_index >= -1),
    block_number   BIGINT NOT NULL CHECK (block_number >= 0),
    block_hash     TEXT NOT NULL CHECK (block_hash ~ '^0x[0-9a-f]{64}$'),
    "from"         TEXT NOT NULL CHECK ("from" ~ '^0x[0-9a-f]{40}$'),
    "to"           TEXT NOT NULL CHECK ("to" ~ '^0x[0-9a-f]{40}$'),
    asset          TEXT NOT NULL CHECK (asset IN ('eth', 'token')),
    -- base units (wei or the token's), a U256
    amount         NUMERIC(78, 0) NOT NULL CHECK (amount >= 0),
    status         TEXT NOT NULL CHECK (status IN ('pending', 'credited', 'rejected', 'removed')),
    -- why it was rejected
    reason         TEXT,
    -- what it bought; fixed before the ledger credit so that a retried
    -- credit asks the ledger for the same amount
    credit_seconds BIGINT CHECK (credit_seconds >= 0),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    credited_at    TIMESTAMPTZ,
    -- set when a credited deposit's block left the chain (flagged in audit_log)
    reorged_at     TIMESTAMPTZ,
    UNIQUE (chain_id, tx_hash, log_index),
    CHECK ((status = 'credited') = (credited_at IS NOT NULL)),
    CHECK ((status = 'rejected') = (reason IS NOT NULL))
);

CREATE INDEX deposits_pending_idx ON deposits (chain_id, block_number) WHERE status = 'pending';
CREATE INDEX deposits_block_idx ON deposits (chain_id, block_number);
CREATE INDEX deposits_from_idx ON deposits ("from");

-- The blocks the chain watcher has fully processed (their deposits are in
-- `deposits`), recent ones only: the highest is the cursor, and the hashes
-- are compared with the node's to detect reorgs.
CREATE TABLE chain_blocks (
    chain_id     BIGINT NOT NULL,
    number       BIGINT NOT NULL CHECK (number >= 0),
    hash         TEXT NOT NULL CHECK (hash ~ '^0x[0-9a-f]{64}$'),
    parent_hash  TEXT NOT NULL CHECK (parent_hash ~ '^0x[0-9a-f]{64}$'),
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, number)
);
