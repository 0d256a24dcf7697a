-- What a transaction's command carried besides its content (see the engine's `Memo`): the client's
-- reference, flat string metadata (a JSON object) and the request's correlation id.
ALTER TABLE ledger_entries ADD COLUMN reference_id TEXT;
ALTER TABLE ledger_entries ADD COLUMN metadata TEXT;
ALTER TABLE ledger_entries ADD COLUMN correlation_id TEXT;

-- GET /ledger/reference/{referenceId}: the entries of a reference, newest first.
CREATE INDEX ledger_entries_by_reference ON ledger_entries (reference_id, transaction_id DESC)
    WHERE reference_id IS NOT NULL;

-- GET /ledger/wallet/{id}/summary, kept by the ledger projection in the transaction that writes
-- the entries, so reading it never scans the wallet's history.
CREATE TABLE wallet_summaries (
    wallet_id         TEXT PRIMARY KEY,
    currency          TEXT    NOT NULL,
    total_credits     INTEGER NOT NULL,
    total_debits      INTEGER NOT NULL,
    transaction_count INTEGER NOT NULL,
    last_version      INTEGER NOT NULL
);
