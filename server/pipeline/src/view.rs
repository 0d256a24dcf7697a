//! The committed view: what every acknowledged write did to its wallets, readable without asking
//! the writer.
//!
//! The writer publishes a wallet here, from its ledger, before it sends the answer to a command
//! that changed it; the read-model projector removes the wallet once the read model has that
//! version. So the view holds exactly the wallets whose read model is behind, and a read that
//! takes the newer of the view and the read model sees every write acknowledged before it began,
//! on any connection, without a place in the writer's queue.

use std::collections::BTreeMap;
use std::sync::RwLock;

use wallex_engine::{TransactionId, Wallet, WalletId};

use crate::ports::WalletView;

/// Wallets committed and not yet in the read model, at their latest committed version; and the
/// wallets whose ledger entries are behind.
#[derive(Debug, Default)]
pub struct CommittedView {
    /// Each wallet at its latest committed version, with the earliest of its transactions the
    /// read model may still lack.
    wallets: RwLock<BTreeMap<WalletId, (Wallet, TransactionId)>>,
    /// The same for the ledger projection (entries, searches): each wallet's latest committed
    /// version and the earliest of its transactions the ledger may still lack. A search "after a
    /// position" waits on both: the ledger projection may trail the read model.
    ledger: RwLock<BTreeMap<WalletId, (u64, TransactionId)>>,
}

impl CommittedView {
    /// The writer committed `wallet` at its version, in `transaction` (a later version replaces an
    /// earlier one; the earliest transaction still unprojected is kept).
    pub fn publish(&self, wallet: &Wallet, transaction: TransactionId) {
        let mut wallets = self.wallets.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        match wallets.get_mut(&wallet.id) {
            Some((held, _)) if held.version >= wallet.version => {}
            Some((held, _)) => *held = wallet.clone(),
            None => {
                wallets.insert(wallet.id, (wallet.clone(), transaction));
            }
        }
        metrics::gauge!("wallex_committed_view_wallets").set(wallets.len() as f64);
        drop(wallets);
        self.ledger_behind(wallet.id, wallet.version, transaction);
    }

    /// The ledger projection may lack `wallet_id`'s versions through `version`, from `transaction`
    /// on (a later version replaces an earlier one; the earliest transaction is kept).
    pub fn ledger_behind(&self, wallet_id: WalletId, version: u64, transaction: TransactionId) {
        let mut ledger = self.ledger.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = ledger.entry(wallet_id).or_insert((version, transaction));
        entry.0 = entry.0.max(version);
    }

    /// The ledger projection has `wallet_id` at `version`.
    pub fn ledger_projected(&self, wallet_id: &WalletId, version: u64) {
        let mut ledger = self.ledger.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if ledger.get(wallet_id).is_some_and(|(held, _)| *held <= version) {
            ledger.remove(wallet_id);
        }
    }

    /// The read model has `wallet_id` at `version`: the view no longer needs it, unless it holds
    /// a later version.
    pub fn projected(&self, wallet_id: &WalletId, version: u64) {
        let mut wallets = self.wallets.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if wallets.get(wallet_id).is_some_and(|(held, _)| held.version <= version) {
            wallets.remove(wallet_id);
        }
    }

    /// The wallet as committed, if its read model may be behind.
    pub fn wallet(&self, wallet_id: &WalletId) -> Option<WalletView> {
        let wallets = self.wallets.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        wallets.get(wallet_id).map(|(wallet, _)| WalletView {
            wallet_id: wallet.id,
            owner_id: wallet.owner_id,
            currency: wallet.currency,
            balance: wallet.balance,
            held: wallet.held,
            overdraft_limit: wallet.overdraft_limit.minor(),
            version: wallet.version,
            created_at: wallet.created_at,
            updated_at: wallet.updated_at,
            memo: wallet.memo.as_deref().cloned().unwrap_or_default(),
        })
    }

    /// How many wallets may still lack, in the read model or the ledger projection, a write
    /// committed at or before `position` (0: both have every write through it).
    pub fn pending_through(&self, position: TransactionId) -> usize {
        let wallets = self.wallets.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let read_model = wallets.values().filter(|(_, transaction)| *transaction <= position).count();
        drop(wallets);
        let ledger = self.ledger.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        read_model + ledger.values().filter(|(_, transaction)| *transaction <= position).count()
    }

    /// Forgets every wallet: a writer that stepped down publishes nothing more, and the next one
    /// seeds the view afresh from its recovered ledger.
    pub fn clear(&self) {
        self.wallets.write().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        self.ledger.write().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    /// How many wallets the view holds: those whose read model is behind.
    pub fn len(&self) -> usize {
        self.wallets.read().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use wallex_engine::{Amount, Currency, OwnerId, Timestamp};

    use super::*;

    fn wallet(version: u64) -> Wallet {
        Wallet {
            id: WalletId::parse("w").unwrap(),
            owner_id: OwnerId::parse("o").unwrap(),
            currency: Currency::USD,
            balance: 0,
            held: 0,
            overdraft_limit: Amount::ZERO,
            version,
            created_at: Timestamp::ZERO,
            updated_at: Timestamp::ZERO,
            memo: None,
        }
    }

    #[test]
    fn a_position_is_pending_until_the_read_model_and_the_ledger_both_have_it() {
        let view = CommittedView::default();
        let id = WalletId::parse("w").unwrap();
        view.publish(&wallet(1), TransactionId(7));
        view.publish(&wallet(2), TransactionId(9));
        assert_eq!(view.pending_through(TransactionId(6)), 0, "nothing committed through 6");
        assert_eq!(view.pending_through(TransactionId(9)), 2);
        view.projected(&id, 2);
        assert_eq!(view.pending_through(TransactionId(9)), 1, "the ledger projection is still behind");
        assert!(view.wallet(&id).is_none(), "the read model has the wallet");
        view.ledger_projected(&id, 1);
        assert_eq!(view.pending_through(TransactionId(9)), 1, "version 2 is not in the ledger yet");
        view.ledger_projected(&id, 2);
        assert_eq!(view.pending_through(TransactionId(9)), 0);
    }
}
