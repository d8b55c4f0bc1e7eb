DROP TABLE balances;
DROP TABLE ledger_entries;
DROP TABLE ledger_txns;
DROP FUNCTION ledger_append_only();
DROP FUNCTION ledger_entries_apply();
