-- The audit trail and each key's first use (issue 13). The trail is append-only: updates and
-- deletes are refused by trigger, so a bug cannot rewrite it.
ALTER TABLE api_keys ADD COLUMN first_used_at INTEGER;

CREATE TABLE audit_log (
    audit_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    -- The acting key's id (never its secret); NULL: the command line or development mode.
    actor      TEXT,
    action     TEXT    NOT NULL,
    target     TEXT,
    request_id TEXT,
    detail     TEXT
);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
