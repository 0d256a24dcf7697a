-- Each projection's checkpoint lives in its own rows (issue 14): the read model's is the wallet
-- row's `version` (the two were always written together), the ledger's a new
-- `wallet_summaries.projected_version` (every wallet the ledger projection has seen has a summary
-- row; one without entries has zero sums). A projected batch so writes two statements fewer and
-- reads one fewer, and `projection_checkpoints`, a second copy of each wallet's position, goes.
ALTER TABLE wallet_summaries ADD COLUMN projected_version INTEGER NOT NULL DEFAULT 0;
UPDATE wallet_summaries SET projected_version = COALESCE(
    (SELECT p.version FROM projection_checkpoints p
     WHERE p.projection = 'ledger-projector' AND p.wallet_id = wallet_summaries.wallet_id), 0);
-- A wallet with no entries yet: its summary row is zero. (One the read model has not seen yet is
-- left out; the ledger projector finds its next event past version 0 and repairs from the store.)
INSERT INTO wallet_summaries (wallet_id, currency, total_credits, total_debits, transaction_count, last_version,
                              projected_version)
    SELECT p.wallet_id, w.currency, 0, 0, 0, 0, p.version
    FROM projection_checkpoints p JOIN wallets w ON w.wallet_id = p.wallet_id
    WHERE p.projection = 'ledger-projector'
      AND NOT EXISTS (SELECT 1 FROM wallet_summaries s WHERE s.wallet_id = p.wallet_id);
DROP TABLE projection_checkpoints;
