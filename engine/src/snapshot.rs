//! The whole ledger state as bytes, and back, exactly.
//!
//! Layout: the bincode (standard config) encoding of the format version and [`SnapshotState`],
//! followed by the XXH3-64 of those bytes, little-endian. The format version comes first so layouts
//! can be read side by side: format 1 also carried the engine's settings, which a restore now takes
//! from its caller (format 2 drops them; format 1 is still read, its settings skipped); format 4
//! adds each command record's refused leg (atomic groups). Restoring
//! re-checks every invariant: a snapshot that decodes but describes an impossible ledger is refused,
//! never loaded.

use serde::{Deserialize, Serialize, Serializer};

use crate::ledger::{CommandRecord, Config, Hold, Ledger, Wallet};
use crate::tables::{CommandMemory, WalletTable};
use crate::{Currency, Timestamp, TransactionId};

/// The snapshot layout this build writes (it reads this one and formats 1 to 3).
pub const SNAPSHOT_FORMAT_VERSION: u32 = 4;

/// Format 3: format 4 without the refused leg of each command record (written before atomic
/// groups).
const FORMAT_WITHOUT_LEGS: u32 = 3;

/// Format 2: format 3 without the references (written before transactions carried them).
const FORMAT_WITHOUT_REFERENCES: u32 = 2;

/// Format 1: the same state, after the engine's settings of the time (one `u64`, the command
/// retention), which are skipped.
const FORMAT_WITH_SETTINGS: u32 = 1;

const CHECKSUM_BYTES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is shorter than its checksum")]
    Truncated,
    #[error("snapshot checksum mismatch: the bytes are corrupted")]
    Checksum,
    #[error("snapshot does not decode: {0}")]
    Decode(String),
    #[error("snapshot format {found} is not a supported format (1 to {SNAPSHOT_FORMAT_VERSION})")]
    Format { found: u32 },
    #[error("snapshot describes an impossible ledger: {0}")]
    Invalid(String),
}

/// The decoded state, after the format version (and, in format 1, the settings). Field order is the
/// wire order.
#[derive(Deserialize)]
struct SnapshotState<W, R> {
    clock: Timestamp,
    last_transaction_id: TransactionId,
    wallets: Vec<W>,
    holds: Vec<Hold>,
    world: Vec<(Currency, i128)>,
    commands: Vec<R>,
}

/// A command record as formats 1 to 3 wrote it: without the refused leg.
#[derive(Deserialize)]
struct RecordWithoutLeg {
    command_id: crate::CommandId,
    fingerprint: crate::Fingerprint,
    at: Timestamp,
    transaction_id: TransactionId,
    result: Result<(), crate::Rejection>,
}

impl From<RecordWithoutLeg> for CommandRecord {
    fn from(old: RecordWithoutLeg) -> CommandRecord {
        let RecordWithoutLeg { command_id, fingerprint, at, transaction_id, result } = old;
        CommandRecord { command_id, fingerprint, at, transaction_id, result, refused_leg: None }
    }
}

/// A wallet as formats 1 and 2 wrote it: without its memo.
#[derive(Deserialize)]
struct WalletWithoutMemo {
    id: crate::WalletId,
    owner_id: crate::OwnerId,
    currency: Currency,
    balance: i64,
    held: u64,
    overdraft_limit: crate::Amount,
    version: u64,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl From<WalletWithoutMemo> for Wallet {
    fn from(old: WalletWithoutMemo) -> Wallet {
        let WalletWithoutMemo {
            id,
            owner_id,
            currency,
            balance,
            held,
            overdraft_limit,
            version,
            created_at,
            updated_at,
        } = old;
        Wallet { id, owner_id, currency, balance, held, overdraft_limit, version, created_at, updated_at, memo: None }
    }
}

impl<W: Into<Wallet>, R: Into<CommandRecord>> SnapshotState<W, R> {
    fn current(self) -> SnapshotState<Wallet, CommandRecord> {
        SnapshotState {
            clock: self.clock,
            last_transaction_id: self.last_transaction_id,
            wallets: self.wallets.into_iter().map(Into::into).collect(),
            holds: self.holds,
            world: self.world,
            commands: self.commands.into_iter().map(Into::into).collect(),
        }
    }
}

/// The encoded form, borrowing the ledger instead of cloning a million wallets.
#[derive(Serialize)]
struct SnapshotBodyRef<'a> {
    format_version: u32,
    clock: Timestamp,
    last_transaction_id: TransactionId,
    wallets: &'a [Wallet],
    #[serde(serialize_with = "holds_in_id_order")]
    holds: &'a Ledger,
    world: Vec<(Currency, i128)>,
    #[serde(serialize_with = "commands_oldest_first")]
    commands: &'a Ledger,
    #[serde(serialize_with = "references_in_order")]
    references: &'a Ledger,
}

fn references_in_order<S: Serializer>(ledger: &&Ledger, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(ledger.references.iter())
}

fn holds_in_id_order<S: Serializer>(ledger: &&Ledger, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(ledger.holds.values())
}

fn commands_oldest_first<S: Serializer>(ledger: &&Ledger, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(ledger.commands.iter())
}

fn encoding() -> bincode::config::Configuration {
    bincode::config::standard()
}

impl Ledger {
    /// Encodes the whole state; [`Ledger::restore`] turns the bytes back into an equal ledger.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let body = SnapshotBodyRef {
            format_version: SNAPSHOT_FORMAT_VERSION,
            clock: self.clock,
            last_transaction_id: self.last_transaction_id,
            wallets: self.wallets.as_slice(),
            holds: self,
            world: Currency::ALL
                .iter()
                .filter(|currency| self.world[currency.index()] != 0)
                .map(|currency| (*currency, self.world[currency.index()]))
                .collect(),
            commands: self,
            references: self,
        };
        let mut bytes = bincode::serde::encode_to_vec(&body, encoding()).expect("encoding into memory cannot fail");
        let checksum = xxhash_rust::xxh3::xxh3_64(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        bytes
    }

    /// Decodes a snapshot written by [`Ledger::encode_snapshot`], verifying its checksum, format and
    /// every ledger invariant. The ledger runs under `config`, whatever settings it was written
    /// under: a shorter retention forgets the older ids at the next command.
    pub fn restore(bytes: &[u8], config: Config) -> Result<Ledger, SnapshotError> {
        let split = bytes.len().checked_sub(CHECKSUM_BYTES).ok_or(SnapshotError::Truncated)?;
        let (body, checksum) = bytes.split_at(split);
        let checksum = u64::from_le_bytes(checksum.try_into().expect("split at CHECKSUM_BYTES"));
        if xxhash_rust::xxh3::xxh3_64(body) != checksum {
            return Err(SnapshotError::Checksum);
        }
        // The format version comes first: read it alone so a future layout fails as "format", not
        // as a confusing decode error.
        let decode_error = |error: bincode::error::DecodeError| SnapshotError::Decode(error.to_string());
        let (format_version, mut read): (u32, usize) =
            bincode::serde::decode_from_slice(body, encoding()).map_err(decode_error)?;
        match format_version {
            SNAPSHOT_FORMAT_VERSION | FORMAT_WITHOUT_LEGS | FORMAT_WITHOUT_REFERENCES => {}
            FORMAT_WITH_SETTINGS => {
                let (_retention, skipped): (u64, usize) =
                    bincode::serde::decode_from_slice(&body[read..], encoding()).map_err(decode_error)?;
                read += skipped;
            }
            found => return Err(SnapshotError::Format { found }),
        }
        let state = &body[read..];
        let (snapshot, state_bytes) = match format_version {
            SNAPSHOT_FORMAT_VERSION => {
                bincode::serde::decode_from_slice::<SnapshotState<Wallet, CommandRecord>, _>(state, encoding())
                    .map_err(decode_error)?
            }
            FORMAT_WITHOUT_LEGS => {
                let (old, bytes) =
                    bincode::serde::decode_from_slice::<SnapshotState<Wallet, RecordWithoutLeg>, _>(state, encoding())
                        .map_err(decode_error)?;
                (old.current(), bytes)
            }
            _ => {
                let (old, bytes) = bincode::serde::decode_from_slice::<
                    SnapshotState<WalletWithoutMemo, RecordWithoutLeg>,
                    _,
                >(state, encoding())
                .map_err(decode_error)?;
                (old.current(), bytes)
            }
        };
        read += state_bytes;
        let mut references = Vec::new();
        if format_version >= FORMAT_WITHOUT_LEGS {
            let (decoded, bytes): (Vec<(u128, TransactionId)>, usize) =
                bincode::serde::decode_from_slice(&body[read..], encoding()).map_err(decode_error)?;
            references = decoded;
            read += bytes;
        }
        if read != body.len() {
            return Err(SnapshotError::Decode(format!("{} trailing bytes", body.len() - read)));
        }

        let mut ledger = Ledger::new(config);
        ledger.clock = snapshot.clock;
        ledger.last_transaction_id = snapshot.last_transaction_id;
        ledger.wallets = WalletTable::from_wallets(config.hash_seed, snapshot.wallets)
            .map_err(|wallet_id| SnapshotError::Invalid(format!("wallet {wallet_id} appears twice")))?;
        for hold in snapshot.holds {
            if hold.status == crate::ledger::HoldStatus::Active
                && let Some(expires_at) = hold.expires_at
            {
                ledger.hold_expiries.insert((expires_at, hold.id));
            }
            if let Some(previous) = ledger.holds.insert(hold.id, hold) {
                return Err(SnapshotError::Invalid(format!("hold {} appears twice", previous.id)));
            }
        }
        for (currency, balance) in snapshot.world {
            ledger.world[currency.index()] = balance;
        }
        ledger.commands = CommandMemory::from_records(config.hash_seed, snapshot.commands)
            .map_err(|command_id| SnapshotError::Invalid(format!("command {command_id} appears twice")))?;
        ledger.references = references.into_iter().collect();
        ledger.recount_usage();
        ledger.check_invariants().map_err(|violation| SnapshotError::Invalid(violation.to_string()))?;
        Ok(ledger)
    }
}
