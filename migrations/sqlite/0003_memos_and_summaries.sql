-- What a transaction's command carried besides its content (see the engine's `Memo`): the client's
-- reference, flat string metadata (a JSON object) and the request's correlation id; on every
-- ledger entry, and on each wallet as its creation carried them.
ALTER TABLE ledger_entries ADD COLUMN reference_id TEXT;
ALTER TABLE ledger_entries ADD COLUMN metadata TEXT;
ALTER TABLE ledger_entries ADD COLUMN correlation_id TEXT;
ALTER TABLE wallets ADD COLUMN reference_id TEXT;
ALTER TABLE wallets ADD COLUMN metadata TEXT;
ALTER TABLE wallets ADD COLUMN correlation_id TEXT;

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

-- The search (GET /ledger/transactions, GET /ledger/reference/{id}): newest first is by time,
-- then transaction, then wallet, and every filter has an index that yields that order or
-- narrows to few rows: a wallet's entries by the primary key, the types (each common) down the
-- newest-first index. Plans: docs/SEARCH.md.
CREATE INDEX ledger_entries_newest ON ledger_entries (at, transaction_id, wallet_id);
CREATE INDEX ledger_entries_by_amount ON ledger_entries (currency, amount, at);
CREATE INDEX ledger_entries_by_reference ON ledger_entries (reference_id, at, transaction_id, wallet_id)
    WHERE reference_id IS NOT NULL;
-- Description contains: a trigram full-text index over the entries' descriptions (entries are
-- only ever inserted, so one trigger keeps it).
CREATE VIRTUAL TABLE ledger_descriptions USING fts5(
    description, content = 'ledger_entries', content_rowid = 'rowid', tokenize = 'trigram'
);
INSERT INTO ledger_descriptions (rowid, description)
    SELECT rowid, description FROM ledger_entries WHERE description IS NOT NULL;
CREATE TRIGGER ledger_entries_description AFTER INSERT ON ledger_entries
    WHEN new.description IS NOT NULL
BEGIN
    INSERT INTO ledger_descriptions (rowid, description) VALUES (new.rowid, new.description);
END;
-- One metadata key = value: a row per entry and key.
CREATE TABLE entry_metadata (
    key       TEXT    NOT NULL,
    value     TEXT    NOT NULL,
    wallet_id TEXT    NOT NULL,
    version   INTEGER NOT NULL,
    PRIMARY KEY (key, value, wallet_id, version)
) WITHOUT ROWID;

-- The wallet search (GET /wallets): by owner (wallets_by_owner), currency and balance, creation
-- time, and one metadata key = value of the wallet's creation.
CREATE INDEX wallets_by_currency_balance ON wallets (currency, balance, wallet_id);
CREATE INDEX wallets_by_created ON wallets (created_at, wallet_id);
CREATE TABLE wallet_metadata (
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    wallet_id TEXT NOT NULL,
    PRIMARY KEY (key, value, wallet_id)
) WITHOUT ROWID;
