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

/// Wallets committed and not yet in the read model, at their latest committed version.
#[derive(Debug, Default)]
pub struct CommittedView {
    /// Each wallet at its latest committed version, with the earliest of its transactions the
    /// read model may still lack.
    wallets: RwLock<BTreeMap<WalletId, (Wallet, TransactionId)>>,
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

    /// How many wallets may still lack in the read model a write committed at or before
    /// `position` (0: the read model has every write through it).
    pub fn pending_through(&self, position: TransactionId) -> usize {
        let wallets = self.wallets.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        wallets.values().filter(|(_, transaction)| *transaction <= position).count()
    }

    /// How many wallets the view holds: those whose read model is behind.
    pub fn len(&self) -> usize {
        self.wallets.read().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
