//! What clients ask the ledger to do.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{Amount, CommandId, Currency, HoldId, Memo, OwnerId, ParseError, Timestamp, WalletId};

/// A free-text note carried into the events and the ledger entries: at most 512 characters (Unicode
/// scalar values, as JSON Schema's `maxLength` counts them), no control characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Description(String);

impl Description {
    pub const MAX_CHARS: usize = 512;

    pub fn parse(text: &str) -> Result<Description, ParseError> {
        // Bytes bound the count first, so a megabyte of text is refused without being walked.
        if text.len() > 4 * Description::MAX_CHARS || text.chars().count() > Description::MAX_CHARS {
            return Err(ParseError::DescriptionTooLong { max: Description::MAX_CHARS });
        }
        if text.chars().any(char::is_control) {
            return Err(ParseError::DescriptionControl);
        }
        Ok(Description(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Description {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for Description {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Description, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Description::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One request to the ledger: a client-unique id, what to do, and what the client attached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: CommandId,
    pub kind: CommandKind,
    #[serde(default, skip_serializing_if = "Memo::is_empty")]
    pub memo: Memo,
}

impl Command {
    /// A command with nothing attached.
    pub fn new(id: CommandId, kind: CommandKind) -> Command {
        Command { id, kind, memo: Memo::default() }
    }

    /// The digest of the command's content: its kind's, and, when it has any, its reference and
    /// metadata (a command without them digests exactly as before memos existed). The correlation
    /// id is not content.
    pub fn fingerprint(&self) -> Fingerprint {
        if !self.memo.is_content() {
            return self.kind.fingerprint();
        }
        let mut out = Canonical::default();
        out.push(&self.kind.fingerprint().0.to_le_bytes());
        match &self.memo.reference {
            Some(reference) => {
                out.tag(1);
                out.text(reference.as_str().as_bytes());
            }
            None => out.tag(0),
        }
        for (key, value) in self.memo.metadata.iter() {
            out.tag(1);
            out.text(key.as_bytes());
            out.text(value.as_bytes());
        }
        out.tag(0);
        Fingerprint(xxhash_rust::xxh3::xxh3_128(out.bytes()))
    }
}

/// What a command asks for. Amounts are in the currency the command names; the ledger rejects a
/// command whose currency is not the wallet's rather than converting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandKind {
    /// Opens a wallet, optionally funded from the currency's system account and optionally allowed
    /// to go below zero down to `-overdraft_limit`.
    CreateWallet {
        wallet_id: WalletId,
        owner_id: OwnerId,
        currency: Currency,
        initial_balance: Amount,
        overdraft_limit: Amount,
    },
    /// Money enters the wallet from outside (the currency's system account).
    Credit { wallet_id: WalletId, currency: Currency, amount: Amount, description: Option<Description> },
    /// Money leaves the wallet to outside (the currency's system account).
    Debit { wallet_id: WalletId, currency: Currency, amount: Amount, description: Option<Description> },
    /// Money moves between two wallets of the same currency, in one atomic decision.
    Transfer {
        source: WalletId,
        destination: WalletId,
        currency: Currency,
        amount: Amount,
        description: Option<Description>,
    },
    /// Reserves part of a wallet's available balance until captured, voided or expired.
    PlaceHold {
        hold_id: HoldId,
        wallet_id: WalletId,
        currency: Currency,
        amount: Amount,
        expires_at: Option<Timestamp>,
        description: Option<Description>,
    },
    /// Takes `amount` (all of it when `None`) of an active hold, to `destination` or out of the system
    /// when `None`, and releases the rest.
    CaptureHold {
        hold_id: HoldId,
        amount: Option<Amount>,
        destination: Option<WalletId>,
        description: Option<Description>,
    },
    /// Releases an active hold in full.
    VoidHold { hold_id: HoldId },
    /// Releases holds whose expiry is at or before `now`, oldest first, at most
    /// [`crate::MAX_EXPIRIES_PER_COMMAND`] of them.
    ExpireHolds,
    /// Several operations (legs) decided as one transaction: each leg sees the ledger as the legs
    /// before it left it, and either every leg takes effect, under one transaction id, or none
    /// does (the record names the first refused leg). A payment and its fee, a split, an exchange
    /// through house wallets. 1 to [`MAX_ATOMIC_LEGS`] legs, none of them `Atomic` or
    /// `ExpireHolds` (otherwise the group is refused `invalid_atomic_group`).
    Atomic(Vec<CommandKind>),
}

/// The most legs one atomic group may have (TigerBeetle's batch size less its header).
pub const MAX_ATOMIC_LEGS: usize = 8_189;

impl CommandKind {
    /// A short stable name of the command type, for logs, metrics and traces.
    pub const fn name(&self) -> &'static str {
        match self {
            CommandKind::CreateWallet { .. } => "create_wallet",
            CommandKind::Credit { .. } => "credit",
            CommandKind::Debit { .. } => "debit",
            CommandKind::Transfer { .. } => "transfer",
            CommandKind::PlaceHold { .. } => "place_hold",
            CommandKind::CaptureHold { .. } => "capture_hold",
            CommandKind::VoidHold { .. } => "void_hold",
            CommandKind::ExpireHolds => "expire_holds",
            CommandKind::Atomic(_) => "atomic",
        }
    }

    /// A 128-bit digest of the command's content, stable across builds, platforms and releases: it
    /// is persisted with the command record and compared when the same command id comes back.
    ///
    /// The content is written in a fixed little-endian layout (never through `Hash`, whose output
    /// Rust does not promise to keep) and digested with XXH3-128.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut out = Canonical::default();
        match self {
            CommandKind::CreateWallet { wallet_id, owner_id, currency, initial_balance, overdraft_limit } => {
                out.tag(1);
                out.text(wallet_id.as_bytes());
                out.text(owner_id.as_bytes());
                out.currency(*currency);
                out.amount(*initial_balance);
                out.amount(*overdraft_limit);
            }
            CommandKind::Credit { wallet_id, currency, amount, description } => {
                out.tag(2);
                out.text(wallet_id.as_bytes());
                out.currency(*currency);
                out.amount(*amount);
                out.description(description.as_ref());
            }
            CommandKind::Debit { wallet_id, currency, amount, description } => {
                out.tag(3);
                out.text(wallet_id.as_bytes());
                out.currency(*currency);
                out.amount(*amount);
                out.description(description.as_ref());
            }
            CommandKind::Transfer { source, destination, currency, amount, description } => {
                out.tag(4);
                out.text(source.as_bytes());
                out.text(destination.as_bytes());
                out.currency(*currency);
                out.amount(*amount);
                out.description(description.as_ref());
            }
            CommandKind::PlaceHold { hold_id, wallet_id, currency, amount, expires_at, description } => {
                out.tag(5);
                out.text(hold_id.as_bytes());
                out.text(wallet_id.as_bytes());
                out.currency(*currency);
                out.amount(*amount);
                out.option(expires_at.map(Timestamp::unix_micros));
                out.description(description.as_ref());
            }
            CommandKind::CaptureHold { hold_id, amount, destination, description } => {
                out.tag(6);
                out.text(hold_id.as_bytes());
                out.option(amount.map(Amount::minor));
                match destination {
                    Some(wallet_id) => {
                        out.tag(1);
                        out.text(wallet_id.as_bytes());
                    }
                    None => out.tag(0),
                }
                out.description(description.as_ref());
            }
            CommandKind::VoidHold { hold_id } => {
                out.tag(7);
                out.text(hold_id.as_bytes());
            }
            CommandKind::ExpireHolds => out.tag(8),
            CommandKind::Atomic(legs) => {
                // The legs' own digests, in order, streamed: a group of 8,189 legs outgrows the
                // stack buffer.
                let mut hasher = xxhash_rust::xxh3::Xxh3::new();
                hasher.update(&[9]);
                hasher.update(&(legs.len() as u64).to_le_bytes());
                for leg in legs {
                    hasher.update(&leg.fingerprint().0.to_le_bytes());
                }
                return Fingerprint(hasher.digest128());
            }
        }
        Fingerprint(xxhash_rust::xxh3::xxh3_128(out.bytes()))
    }
}

/// The digest of a command's content; see [`CommandKind::fingerprint`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub u128);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({:032x})", self.0)
    }
}

/// The canonical byte layout of a command, written into a stack buffer: the largest command (three
/// 64-byte ids and a 512-byte description, or a digest, a 128-character reference and 16 metadata
/// entries of 64-byte keys and 256-character values) takes under its capacity.
#[derive(Default)]
struct Canonical {
    buffer: arrayvec::ArrayVec<u8, { Canonical::CAPACITY }>,
}

impl Canonical {
    const CAPACITY: usize = 20 * 1024;

    fn push(&mut self, bytes: &[u8]) {
        self.buffer.try_extend_from_slice(bytes).expect("canonical command encoding overflows its buffer");
    }

    fn tag(&mut self, tag: u8) {
        self.push(&[tag]);
    }

    fn text(&mut self, text: &[u8]) {
        let len = u16::try_from(text.len()).expect("texts in commands are short");
        self.push(&len.to_le_bytes());
        self.push(text);
    }

    fn currency(&mut self, currency: Currency) {
        self.push(currency.code().as_bytes());
    }

    fn amount(&mut self, amount: Amount) {
        self.push(&amount.minor().to_le_bytes());
    }

    fn option(&mut self, value: Option<u64>) {
        match value {
            Some(value) => {
                self.tag(1);
                self.push(&value.to_le_bytes());
            }
            None => self.tag(0),
        }
    }

    fn description(&mut self, description: Option<&Description>) {
        match description {
            Some(description) => {
                self.tag(1);
                self.text(description.as_str().as_bytes());
            }
            None => self.tag(0),
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credit(amount: u64, description: Option<&str>) -> CommandKind {
        CommandKind::Credit {
            wallet_id: WalletId::parse("w1").unwrap(),
            currency: Currency::USD,
            amount: Amount::from_minor(amount).unwrap(),
            description: description.map(|text| Description::parse(text).unwrap()),
        }
    }

    #[test]
    fn fingerprints_are_equal_for_equal_content_and_differ_otherwise() {
        assert_eq!(credit(100, None).fingerprint(), credit(100, None).fingerprint());
        assert_ne!(credit(100, None).fingerprint(), credit(101, None).fingerprint());
        assert_ne!(credit(100, None).fingerprint(), credit(100, Some("")).fingerprint());
        assert_ne!(credit(100, Some("a")).fingerprint(), credit(100, Some("b")).fingerprint());
        let debit = CommandKind::Debit {
            wallet_id: WalletId::parse("w1").unwrap(),
            currency: Currency::USD,
            amount: Amount::from_minor(100).unwrap(),
            description: None,
        };
        assert_ne!(credit(100, None).fingerprint(), debit.fingerprint(), "the command type is content");
    }

    #[test]
    fn fingerprint_is_pinned_across_releases() {
        // A persisted fingerprint must keep matching after an upgrade: if this value changes, every
        // stored command record stops matching its retries. Change it only with a migration.
        assert_eq!(credit(12_345, Some("rent")).fingerprint().0, PINNED_CREDIT_FINGERPRINT);
    }

    const PINNED_CREDIT_FINGERPRINT: u128 = 0xa42d_f8d9_9367_8b9a_08b9_27e6_324f_86e2;

    #[test]
    fn the_largest_command_fits_the_canonical_buffer() {
        let id = "x".repeat(64);
        let kind = CommandKind::PlaceHold {
            hold_id: HoldId::parse(&id).unwrap(),
            wallet_id: WalletId::parse(&id).unwrap(),
            currency: Currency::KWD,
            amount: Amount::MAX,
            expires_at: Some(Timestamp::from_unix_micros(u64::MAX)),
            description: Some(Description::parse(&"é".repeat(256)).unwrap()),
        };
        let _ = kind.fingerprint();
        let capture = CommandKind::CaptureHold {
            hold_id: HoldId::parse(&id).unwrap(),
            amount: Some(Amount::MAX),
            destination: Some(WalletId::parse(&id).unwrap()),
            description: Some(Description::parse(&"z".repeat(512)).unwrap()),
        };
        assert_ne!(kind.fingerprint(), capture.fingerprint());
    }

    #[test]
    fn descriptions_are_bounded_and_printable() {
        assert_eq!(Description::parse("Deposit from bank").unwrap().as_str(), "Deposit from bank");
        assert!(Description::parse(&"a".repeat(512)).is_ok());
        assert!(Description::parse(&"é".repeat(512)).is_ok(), "characters, not bytes");
        assert!(Description::parse(&"😀".repeat(512)).is_ok(), "characters, not bytes");
        for long in ["a".repeat(513), "é".repeat(513), "😀".repeat(513)] {
            assert_eq!(Description::parse(&long), Err(ParseError::DescriptionTooLong { max: Description::MAX_CHARS }));
        }
        assert_eq!(Description::parse("line\nbreak"), Err(ParseError::DescriptionControl));
    }
}
