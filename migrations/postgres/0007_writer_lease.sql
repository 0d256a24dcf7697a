-- The writer lease (issue 15): one row. Exactly one instance of a cluster decides: the one whose
-- lease is live. The epoch only grows (every takeover bumps it), and every group commit names the
-- epoch it was decided under and writes nothing unless it is still this row's, checked in the
-- same transaction: a writer that lost the lease can never commit again. `expires_at` is in
-- microseconds since the Unix epoch by the database's own clock, the one every instance shares.
CREATE TABLE writer_lease (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL,
    holder TEXT NOT NULL,
    address TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
INSERT INTO writer_lease (id, epoch, holder, address, expires_at) VALUES (1, 0, '', '', 0);
