-- The credit ledger, in credit-seconds (one GPU for one second), double entry.
--
-- Accounts are plain names: 'wallet:<0x address>' for users, and the system
-- accounts 'revenue' (where credit comes from when a deposit is credited),
-- 'usage' (where billing debits go) and 'admin' (manual adjustments).
--
-- Both tables are append-only. Every transaction's entries sum to zero, and
-- its entries are written in one INSERT statement (the check below runs per
-- statement). A repeated idempotency key never writes a second transaction.
CREATE TABLE ledger_txns (
    id              BIGSERIAL PRIMARY KEY,
    -- 'credit', 'debit' or 'transfer'
    kind            TEXT NOT NULL CHECK (kind IN ('credit', 'debit', 'transfer')),
    idempotency_key TEXT NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    -- what the transaction is about: a session, a deposit, an admin ticket
    reference       TEXT,
    -- the first wallet's balance right after this transaction: what a
    -- repeated key answers
    balance_after   BIGINT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- 'system', 'admin' or 'wallet:<address>'
    created_by      TEXT NOT NULL
);

CREATE TABLE ledger_entries (
    txn_id  BIGINT NOT NULL REFERENCES ledger_txns (id),
    -- the order of the account in its transaction; the first one is the wallet
    -- whose balance_after is recorded
    seq     SMALLINT NOT NULL,
    account TEXT NOT NULL CHECK (account ~ '^(wallet:0x[0-9a-f]{40}|revenue|usage|admin)$'),
    amount  BIGINT NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (txn_id, seq)
);

CREATE INDEX ledger_entries_account_idx ON ledger_entries (account);

-- Wallet balances, kept equal to the sum of their entries by the trigger
-- below, whatever code writes the entries. System accounts are not
-- materialised: every debit would otherwise update the one 'usage' row and
-- all billing would queue on its lock. Their balances are sums over entries.
CREATE TABLE balances (
    account    TEXT PRIMARY KEY CHECK (account LIKE 'wallet:%'),
    amount     BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT wallet_balance_not_negative CHECK (amount >= 0)
);

CREATE FUNCTION ledger_entries_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unbalanced BIGINT;
BEGIN
    SELECT e.txn_id INTO unbalanced
    FROM (SELECT DISTINCT txn_id FROM new_entries) AS t
    JOIN ledger_entries AS e USING (txn_id)
    GROUP BY e.txn_id
    HAVING sum(e.amount) <> 0
    LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not sum to zero', unbalanced
            USING ERRCODE = 'check_violation';
    END IF;

    -- A wallet that would go negative fails wallet_balance_not_negative and
    -- aborts the whole transaction. Existing rows are updated, not upserted:
    -- PostgreSQL checks an upsert's proposed row (the delta alone, negative
    -- for a debit) before it finds the conflict.
    UPDATE balances AS b
    SET amount = b.amount + d.delta, updated_at = now()
    FROM (SELECT account, sum(amount) AS delta
          FROM new_entries
          WHERE account LIKE 'wallet:%'
          GROUP BY account) AS d
    WHERE b.account = d.account;

    INSERT INTO balances AS b (account, amount)
    SELECT account, sum(amount)
    FROM new_entries AS n
    WHERE account LIKE 'wallet:%'
      AND NOT EXISTS (SELECT 1 FROM balances AS x WHERE x.account = n.account)
    GROUP BY account
    ORDER BY account;
    RETURN NULL;
END
$$;

CREATE TRIGGER ledger_entries_apply
    AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_apply();

CREATE FUNCTION ledger_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER ledger_txns_append_only
    BEFORE UPDATE OR DELETE ON ledger_txns
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
