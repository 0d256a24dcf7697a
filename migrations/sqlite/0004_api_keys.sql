-- API keys: what each may do and the SHA-256 of its secret, never the secret (issue 13).
CREATE TABLE api_keys (
    key_id      TEXT   PRIMARY KEY,
    name        TEXT,
    -- Scope names, comma-separated, in scope order: read, write, mint, admin.
    scopes      TEXT   NOT NULL,
    owner_id    TEXT,
    secret_hash BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);
