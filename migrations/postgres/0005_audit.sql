-- The audit trail and each key's first use (issue 13). The trail is append-only: updates, deletes
-- and truncation are refused by trigger, so a bug or a stolen connection cannot rewrite it.
ALTER TABLE api_keys ADD COLUMN first_used_at BIGINT;

CREATE TABLE audit_log (
    audit_id   BIGSERIAL PRIMARY KEY,
    at         BIGINT NOT NULL,
    -- The acting key's id (never its secret); NULL: the command line or development mode.
    actor      TEXT,
    action     TEXT   NOT NULL,
    target     TEXT,
    request_id TEXT,
    detail     TEXT
);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END
$$;

CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
