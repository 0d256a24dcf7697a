-- The journal is the outbox. The single writer commits transaction ids in order, so "unpublished"
-- is every event after one position: the relay's cursor. Publishing moves one row instead of
-- inserting and later deleting a copy of every event (the DELETE of a queue table scans its dead
-- tuples: it was the costliest statement under load).
CREATE TABLE outbox_cursor (
    singleton      BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    -- The last published event's position: (transaction_id, idx).
    transaction_id BIGINT NOT NULL,
    idx            INT    NOT NULL
);

-- Published through just before the oldest message still waiting, or through the last event.
-- Republishing the rest of a half-published transaction is allowed (delivery is at least once).
INSERT INTO outbox_cursor (transaction_id, idx)
SELECT COALESCE((SELECT MIN(transaction_id) - 1 FROM outbox), (SELECT MAX(transaction_id) FROM events), -1),
       2147483647;

DROP TABLE outbox;
