-- Every lease a session held: which GPU, from when, until when.
--
-- `sessions` keeps only the GPUs a session holds now (its row forgets them
-- when it ends), so it cannot show that no GPU was ever held by two
-- sessions at once. This history can: the session store writes it in the
-- same statement as the session row, so a lease is on record exactly as
-- long as the row says the session holds that GPU. Rows are only ever
-- inserted, and updated once, to close them.
CREATE TABLE session_leases (
    session_id  UUID NOT NULL REFERENCES sessions (id),
    host        INTEGER NOT NULL CHECK (host BETWEEN 0 AND 65535),
    gpu_index   INTEGER NOT NULL CHECK (gpu_index >= 0),
    leased_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    released_at TIMESTAMPTZ,
    PRIMARY KEY (session_id, host, gpu_index),
    CONSTRAINT session_leases_released_after_leased CHECK (released_at >= leased_at)
);

CREATE INDEX session_leases_gpu_idx ON session_leases (host, gpu_index, leased_at);

-- Sessions that hold GPUs when this migration runs: on record from their
-- last update (the best the old schema knows).
INSERT INTO session_leases (session_id, host, gpu_index, leased_at)
SELECT s.id, s.host, g, s.updated_at
FROM sessions AS s, unnest(s.gpu_indices) AS g
WHERE s.state <> 'ended' AND s.host IS NOT NULL;
