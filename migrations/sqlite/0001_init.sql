-- The embedded store: the write side (journal, idempotency records, outbox, snapshots) and the
-- read side (read model, ledger entries, projection checkpoints) in one SQLite file.
-- Integers are i64: transaction ids, versions, minor units and microsecond times all fit.

-- One row per recorded command: its journal position and outcome (kept: events reference it).
CREATE TABLE commands (
    transaction_id INTEGER PRIMARY KEY,
    command_id     BLOB    NOT NULL,
    fingerprint    BLOB    NOT NULL,
    at             INTEGER NOT NULL,
    rejection      TEXT    -- NULL when accepted
);

-- The live idempotency keys: a command id points at its command for the retention period, then the
-- cleanup task deletes it and the id may be used again.
CREATE TABLE idempotency_keys (
    command_id     BLOB    PRIMARY KEY,
    transaction_id INTEGER NOT NULL REFERENCES commands (transaction_id),
    at             INTEGER NOT NULL
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (at);

-- The event store: one row per event, unique per stream version.
CREATE TABLE events (
    transaction_id INTEGER NOT NULL REFERENCES commands (transaction_id),
    idx            INTEGER NOT NULL,
    wallet_id      TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    payload        BLOB    NOT NULL,
    PRIMARY KEY (transaction_id, idx),
    UNIQUE (wallet_id, version)
);

-- Unpublished events, in commit order; the relay deletes what the bus acknowledged.
CREATE TABLE outbox (
    transaction_id INTEGER NOT NULL,
    idx            INTEGER NOT NULL,
    wallet_id      TEXT    NOT NULL,
    payload        BLOB    NOT NULL,
    committed_at   INTEGER NOT NULL,
    PRIMARY KEY (transaction_id, idx)
);

CREATE TABLE snapshots (
    transaction_id INTEGER PRIMARY KEY,
    bytes          BLOB    NOT NULL
);

CREATE TABLE projection_checkpoints (
    projection TEXT    NOT NULL,
    wallet_id  TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    PRIMARY KEY (projection, wallet_id)
);

CREATE TABLE wallets (
    wallet_id       TEXT    PRIMARY KEY,
    owner_id        TEXT    NOT NULL,
    currency        TEXT    NOT NULL,
    balance         INTEGER NOT NULL,
    held            INTEGER NOT NULL,
    overdraft_limit INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX wallets_by_owner ON wallets (owner_id, wallet_id);

CREATE TABLE ledger_entries (
    wallet_id      TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    transaction_id INTEGER NOT NULL,
    entry_type     TEXT    NOT NULL,
    direction      TEXT    NOT NULL,
    amount         INTEGER NOT NULL,
    balance_after  INTEGER NOT NULL,
    currency       TEXT    NOT NULL,
    counterparty   TEXT    NOT NULL,
    description    TEXT,
    at             INTEGER NOT NULL,
    PRIMARY KEY (wallet_id, version)
);
