//! Why the ledger refused a command: outcomes are data, not exceptions.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Currency, money::Amount};

/// Every reason the ledger can refuse a command, with a stable snake_case `code`.
///
/// **Precedence.** When several reasons apply, the ledger reports the first one it checks. Checks run
/// from the cheapest and most fundamental to the most state-dependent: the command id, then the command
/// alone, then existence, then compatibility, then the hold's lifecycle, then bounds and funds. Per
/// command:
///
/// | command | checks, in order |
/// |---|---|
/// | create wallet | `idempotency_key_reused`, `wallet_exists` |
/// | credit | `idempotency_key_reused`, `invalid_amount`, `wallet_not_found`, `currency_mismatch`, `balance_limit_exceeded` |
/// | debit | `idempotency_key_reused`, `invalid_amount`, `wallet_not_found`, `currency_mismatch`, `insufficient_funds` |
/// | transfer | `idempotency_key_reused`, `invalid_amount`, `same_wallet_transfer`, `wallet_not_found`, `destination_wallet_not_found`, `currency_mismatch`, `insufficient_funds`, `balance_limit_exceeded` |
/// | place hold | `idempotency_key_reused`, `invalid_amount`, `hold_exists`, `wallet_not_found`, `currency_mismatch`, `invalid_expiry`, `insufficient_funds` |
/// | capture hold | `idempotency_key_reused`, `invalid_amount`, `hold_not_found`, `destination_wallet_not_found`, `same_wallet_transfer`, `currency_mismatch`, `hold_not_active`, `hold_expired`, `capture_exceeds_hold`, `balance_limit_exceeded` |
/// | void hold | `idempotency_key_reused`, `hold_not_found`, `hold_not_active`, `hold_expired` |
/// | expire holds | `idempotency_key_reused` |
/// | atomic group | `idempotency_key_reused`, `invalid_atomic_group`, then each leg's own checks in order (the first refused leg's rejection) |
///
/// Last of all, a command with a reference that would otherwise be accepted is refused as
/// `reference_exists` if any wallet it touches already has a transaction with that reference.
///
/// (A capture checks `same_wallet_transfer` after finding the hold, because only the hold knows its
/// wallet.) The auditor (`crate::auditor`) restates these orders independently, and the property
/// tests and the fuzzer hold the engine to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// The command id was already used for a command with different content.
    IdempotencyKeyReused,
    /// An amount that must be positive is zero.
    InvalidAmount,
    /// A transfer or capture names the same wallet as source and destination.
    SameWalletTransfer,
    /// A wallet with this id already exists.
    WalletExists,
    /// A hold with this id already exists.
    HoldExists,
    /// The wallet the command acts on does not exist.
    WalletNotFound,
    /// The hold does not exist.
    HoldNotFound,
    /// The destination wallet of a transfer or capture does not exist.
    DestinationWalletNotFound,
    /// The command's currency is not the wallet's (or the two wallets differ in currency).
    CurrencyMismatch,
    /// The hold was already captured or voided.
    HoldNotActive,
    /// The hold's expiry has passed (whether or not the expiry has been processed yet).
    HoldExpired,
    /// A new hold's expiry is not in the future.
    InvalidExpiry,
    /// A capture asks for more than the hold reserved.
    CaptureExceedsHold,
    /// The wallet's available balance (balance minus holds plus overdraft limit) is too small.
    InsufficientFunds,
    /// The credit would lift the balance above [`crate::MAX_BALANCE_MINOR`].
    BalanceLimitExceeded,
    /// A wallet the command touches already has a transaction with the command's reference.
    ReferenceExists,
    /// The owner already has as many wallets, or active holds, as the ledger allows one owner.
    QuotaExceeded,
    /// An atomic group with no legs, more than [`crate::MAX_ATOMIC_LEGS`], or a leg that is itself
    /// a group or `ExpireHolds`.
    InvalidAtomicGroup,
}

impl Rejection {
    /// Every rejection, in declaration order.
    pub const ALL: &'static [Rejection] = &[
        Rejection::IdempotencyKeyReused,
        Rejection::InvalidAmount,
        Rejection::SameWalletTransfer,
        Rejection::WalletExists,
        Rejection::HoldExists,
        Rejection::WalletNotFound,
        Rejection::HoldNotFound,
        Rejection::DestinationWalletNotFound,
        Rejection::CurrencyMismatch,
        Rejection::HoldNotActive,
        Rejection::HoldExpired,
        Rejection::InvalidExpiry,
        Rejection::CaptureExceedsHold,
        Rejection::InsufficientFunds,
        Rejection::BalanceLimitExceeded,
        Rejection::ReferenceExists,
        Rejection::QuotaExceeded,
        Rejection::InvalidAtomicGroup,
    ];

    /// The stable machine-readable code, as it appears in API errors and events.
    pub const fn code(self) -> &'static str {
        match self {
            Rejection::IdempotencyKeyReused => "idempotency_key_reused",
            Rejection::InvalidAmount => "invalid_amount",
            Rejection::SameWalletTransfer => "same_wallet_transfer",
            Rejection::WalletExists => "wallet_exists",
            Rejection::HoldExists => "hold_exists",
            Rejection::WalletNotFound => "wallet_not_found",
            Rejection::HoldNotFound => "hold_not_found",
            Rejection::DestinationWalletNotFound => "destination_wallet_not_found",
            Rejection::CurrencyMismatch => "currency_mismatch",
            Rejection::HoldNotActive => "hold_not_active",
            Rejection::HoldExpired => "hold_expired",
            Rejection::InvalidExpiry => "invalid_expiry",
            Rejection::CaptureExceedsHold => "capture_exceeds_hold",
            Rejection::InsufficientFunds => "insufficient_funds",
            Rejection::BalanceLimitExceeded => "balance_limit_exceeded",
            Rejection::ReferenceExists => "reference_exists",
            Rejection::QuotaExceeded => "quota_exceeded",
            Rejection::InvalidAtomicGroup => "invalid_atomic_group",
        }
    }

    /// The rejection with this `code`, for reading stored records back.
    pub fn from_code(code: &str) -> Option<Rejection> {
        Rejection::ALL.iter().copied().find(|rejection| rejection.code() == code)
    }

    /// Whether the same request, sent again under a *new* command id, may later succeed because it
    /// depends on ledger state that other commands can change (funds arrive, a wallet is created).
    ///
    /// Under the *same* command id the outcome is pinned and never changes, retryable or not.
    pub const fn is_retryable(self) -> bool {
        match self {
            Rejection::WalletNotFound
            | Rejection::HoldNotFound
            | Rejection::DestinationWalletNotFound
            | Rejection::InsufficientFunds
            | Rejection::BalanceLimitExceeded
            | Rejection::QuotaExceeded => true,
            Rejection::IdempotencyKeyReused
            | Rejection::InvalidAmount
            | Rejection::SameWalletTransfer
            | Rejection::WalletExists
            | Rejection::HoldExists
            | Rejection::CurrencyMismatch
            | Rejection::HoldNotActive
            | Rejection::HoldExpired
            | Rejection::InvalidExpiry
            | Rejection::CaptureExceedsHold
            | Rejection::ReferenceExists
            | Rejection::InvalidAtomicGroup => false,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Text at the edge that is not a valid id, currency, amount or description.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{what} must be 1 to {max} characters long")]
    IdLength { what: &'static str, max: usize },
    #[error("{what} may contain only ASCII letters, digits and the characters . _ : -")]
    IdCharset { what: &'static str },
    #[error("{what} must not be `.` or `..`, which a URL path cannot carry")]
    IdDotSegment { what: &'static str },
    #[error("unknown currency: expected an upper-case ISO 4217 code such as USD")]
    UnknownCurrency,
    #[error("amount is not a plain decimal number")]
    AmountSyntax,
    #[error("amount has more decimal places than {currency} allows ({scale})")]
    AmountPrecision { currency: Currency, scale: u32 },
    #[error("amount must not be negative")]
    AmountNegative,
    #[error("amount must be greater than zero")]
    AmountNotPositive,
    #[error("amount exceeds the maximum of {} minor units", Amount::MAX_MINOR)]
    AmountTooLarge,
    #[error("description must be at most {max} characters")]
    DescriptionTooLong { max: usize },
    #[error("description must not contain control characters")]
    DescriptionControl,
    #[error("referenceId must be 1 to {max} characters long")]
    ReferenceLength { max: usize },
    #[error("referenceId must not contain control characters")]
    ReferenceControl,
    #[error("metadata has at most {max} entries")]
    MetadataEntries { max: usize },
    #[error("a metadata key is 1 to {max} of ASCII letters, digits and . _ -")]
    MetadataKey { max: usize },
    #[error("a metadata value is a string of at most {max} characters, no control characters")]
    MetadataValue { max: usize },
    #[error("a correlation id is 1 to {max} visible ASCII characters")]
    CorrelationId { max: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_match_serde() {
        let mut codes: Vec<&str> = Rejection::ALL.iter().map(|r| r.code()).collect();
        for (rejection, code) in Rejection::ALL.iter().zip(&codes) {
            assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{code}");
            let encoded = bincode::serde::encode_to_vec(rejection, bincode::config::standard()).unwrap();
            let (decoded, _): (Rejection, usize) =
                bincode::serde::decode_from_slice(&encoded, bincode::config::standard()).unwrap();
            assert_eq!(decoded, *rejection);
            assert_eq!(rejection.to_string(), *code);
            assert_eq!(Rejection::from_code(code), Some(*rejection));
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Rejection::ALL.len());
    }

    #[test]
    fn all_lists_every_rejection_in_declaration_order() {
        let mut sorted = Rejection::ALL.to_vec();
        sorted.sort();
        assert_eq!(sorted, Rejection::ALL);
    }

    #[test]
    fn state_dependent_rejections_are_retryable_and_malformed_ones_are_not() {
        assert!(Rejection::InsufficientFunds.is_retryable());
        assert!(Rejection::WalletNotFound.is_retryable());
        assert!(!Rejection::IdempotencyKeyReused.is_retryable());
        assert!(!Rejection::CurrencyMismatch.is_retryable());
        assert!(!Rejection::InvalidAmount.is_retryable());
    }
}
