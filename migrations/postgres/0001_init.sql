-- The PostgreSQL store: the write side (journal, idempotency records, outbox, snapshots) and the
-- read side (read model, ledger entries, projection checkpoints).

-- One row per recorded command: its journal position and outcome. Written in the same transaction as
-- its events and outbox rows, and kept (events reference it).
CREATE TABLE commands (
    transaction_id BIGINT      PRIMARY KEY,
    command_id     BYTEA       NOT NULL,
    fingerprint    BYTEA       NOT NULL,
    at             BIGINT      NOT NULL,
    rejection      TEXT,       -- NULL when accepted
    recorded_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The live idempotency keys: a command id points at its command for the retention period (24 h by
-- default), then the cleanup task deletes it and the id may be used again.
CREATE TABLE idempotency_keys (
    command_id     BYTEA  PRIMARY KEY,
    transaction_id BIGINT NOT NULL REFERENCES commands (transaction_id),
    at             BIGINT NOT NULL
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (at);

-- The event store: one row per event; a stream version exists once.
CREATE TABLE events (
    transaction_id BIGINT NOT NULL REFERENCES commands (transaction_id),
    idx            INT    NOT NULL,
    wallet_id      TEXT   NOT NULL,
    version        BIGINT NOT NULL,
    payload        BYTEA  NOT NULL,
    PRIMARY KEY (transaction_id, idx),
    UNIQUE (wallet_id, version)
);

-- Unpublished events in commit order. The single writer assigns transaction ids in commit order,
-- so (transaction_id, idx) never lets a later commit land behind the relay's cursor.
CREATE TABLE outbox (
    transaction_id BIGINT NOT NULL,
    idx            INT    NOT NULL,
    wallet_id      TEXT   NOT NULL,
    payload        BYTEA  NOT NULL,
    committed_at   BIGINT NOT NULL,
    PRIMARY KEY (transaction_id, idx)
);

CREATE TABLE snapshots (
    transaction_id BIGINT PRIMARY KEY,
    bytes          BYTEA  NOT NULL
);

CREATE TABLE projection_checkpoints (
    projection TEXT   NOT NULL,
    wallet_id  TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    PRIMARY KEY (projection, wallet_id)
);

-- Ids compare bytewise ("C"), as the engine orders them, whatever the cluster's locale.
CREATE TABLE wallets (
    wallet_id       TEXT COLLATE "C" PRIMARY KEY,
    owner_id        TEXT COLLATE "C" NOT NULL,
    currency        TEXT   NOT NULL,
    balance         BIGINT NOT NULL,
    held            BIGINT NOT NULL,
    overdraft_limit BIGINT NOT NULL,
    version         BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX wallets_by_owner ON wallets (owner_id, wallet_id);

CREATE TABLE ledger_entries (
    wallet_id      TEXT   NOT NULL,
    version        BIGINT NOT NULL,
    transaction_id BIGINT NOT NULL,
    entry_type     TEXT   NOT NULL,
    direction      TEXT   NOT NULL,
    amount         BIGINT NOT NULL,
    balance_after  BIGINT NOT NULL,
    currency       TEXT   NOT NULL,
    counterparty   TEXT   NOT NULL,
    description    TEXT,
    at             BIGINT NOT NULL,
    PRIMARY KEY (wallet_id, version)
);
