-- What a transaction's command carried besides its content (see the engine's `Memo`): the client's
-- reference, flat string metadata (a JSON object) and the request's correlation id; on every
-- ledger entry, and on each wallet as its creation carried them.
ALTER TABLE ledger_entries
    ADD COLUMN reference_id   TEXT,
    ADD COLUMN metadata       TEXT,
    ADD COLUMN correlation_id TEXT;
ALTER TABLE wallets
    ADD COLUMN reference_id   TEXT,
    ADD COLUMN metadata       TEXT,
    ADD COLUMN correlation_id TEXT;

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

-- The search (GET /ledger/transactions, GET /ledger/reference/{id}): newest first is by time,
-- then transaction, then wallet (in byte order, as everywhere: COLLATE "C"), and every filter
-- has an index that yields that order or narrows to few rows: a wallet's entries by the primary
-- key, the types (each common) down the newest-first index. Plans: docs/SEARCH.md.
CREATE INDEX ledger_entries_newest ON ledger_entries (at, transaction_id, wallet_id COLLATE "C");
CREATE INDEX ledger_entries_by_amount ON ledger_entries (currency, amount, at);
CREATE INDEX ledger_entries_by_reference
    ON ledger_entries (reference_id, at, transaction_id, wallet_id COLLATE "C")
    WHERE reference_id IS NOT NULL;
-- Description contains: trigrams (pg_trgm is a trusted extension: the database owner may create it).
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX ledger_entries_description ON ledger_entries USING gin (description gin_trgm_ops);
-- One metadata key = value: a row per entry and key.
CREATE TABLE entry_metadata (
    key       TEXT COLLATE "C" NOT NULL,
    value     TEXT COLLATE "C" NOT NULL,
    wallet_id TEXT   NOT NULL,
    version   BIGINT NOT NULL,
    PRIMARY KEY (key, value, wallet_id, version)
);

-- The wallet search (GET /wallets): by owner (wallets_by_owner), currency and balance, creation
-- time, and one metadata key = value of the wallet's creation.
CREATE INDEX wallets_by_currency_balance ON wallets (currency, balance, wallet_id);
CREATE INDEX wallets_by_created ON wallets (created_at, wallet_id);
CREATE TABLE wallet_metadata (
    key       TEXT COLLATE "C" NOT NULL,
    value     TEXT COLLATE "C" NOT NULL,
    wallet_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (key, value, wallet_id)
);
