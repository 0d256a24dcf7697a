-- What a transaction's command carried besides its content (see the engine's `Memo`): the client's
-- reference, flat string metadata (a JSON object) and the request's correlation id.
ALTER TABLE ledger_entries
    ADD COLUMN reference_id   TEXT,
    ADD COLUMN metadata       TEXT,
    ADD COLUMN correlation_id TEXT;

-- GET /ledger/reference/{referenceId}: the entries of a reference, newest first.
CREATE INDEX ledger_entries_by_reference ON ledger_entries (reference_id, transaction_id DESC)
    WHERE reference_id IS NOT NULL;

-- GET /ledger/wallet/{id}/summary, kept by the ledger projection in the transaction that writes
-- the entries, so reading it never scans the wallet's history.
CREATE TABLE wallet_summaries (
    wallet_id         TEXT COLLATE "C" PRIMARY KEY,
    currency          TEXT   NOT NULL,
    total_credits     BIGINT NOT NULL,
    total_debits      BIGINT NOT NULL,
    transaction_count BIGINT NOT NULL,
    last_version      BIGINT NOT NULL
);
