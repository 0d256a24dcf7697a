//! Identifiers and time, parsed once at the edge and trusted everywhere inside.
//!
//! Textual ids (`WalletId`, `OwnerId`, `HoldId`) are stored inline in a fixed 64-byte buffer, so they
//! are `Copy`, never allocate and hash only their used bytes: the engine clones ids into every event
//! it emits, and that must cost a memcpy, not a heap allocation.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ParseError;

/// The longest textual id, in bytes.
pub const ID_MAX_BYTES: usize = 64;

/// How many 16-byte words an inline key compares.
const WORDS: usize = ID_MAX_BYTES / 16;

/// 1..=64 bytes of `[A-Za-z0-9._:-]`, not `.` or `..`, inline, zero-padded.
#[derive(Clone, Copy)]
struct InlineKey {
    len: u8,
    bytes: [u8; ID_MAX_BYTES],
}

impl InlineKey {
    fn parse(what: &'static str, text: &str) -> Result<InlineKey, ParseError> {
        let raw = text.as_bytes();
        if raw.is_empty() || raw.len() > ID_MAX_BYTES {
            return Err(ParseError::IdLength { what, max: ID_MAX_BYTES });
        }
        if !raw.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')) {
            return Err(ParseError::IdCharset { what });
        }
        // A URL path cannot carry these as a segment: clients remove them as dot segments.
        if raw == b"." || raw == b".." {
            return Err(ParseError::IdDotSegment { what });
        }
        let mut bytes = [0u8; ID_MAX_BYTES];
        bytes[..raw.len()].copy_from_slice(raw);
        let len = u8::try_from(raw.len()).expect("length checked above");
        Ok(InlineKey { len, bytes })
    }

    /// The `index`-th 16 bytes of the (zero-padded) buffer, as one integer to compare.
    fn word(&self, index: usize) -> u128 {
        u128::from_le_bytes(self.bytes[index * 16..index * 16 + 16].try_into().expect("16 bytes"))
    }

    /// The used bytes. Comparisons and hashing work on bytes, never on `as_str`, which has to
    /// re-check UTF-8.
    fn used(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn as_str(&self) -> &str {
        // Only ASCII is ever stored (checked in `parse`), so this cannot fail.
        std::str::from_utf8(self.used()).expect("ids are ASCII")
    }
}

// Bytes past `len` are always zero (see `parse`), so comparing whole 16-byte words is equivalent to
// comparing the used bytes, and compiles to a few vector instructions instead of a `memcmp` call:
// id comparison is on the engine's hottest path.
impl PartialEq for InlineKey {
    fn eq(&self, other: &InlineKey) -> bool {
        self.len == other.len && (0..WORDS).all(|index| self.word(index) == other.word(index))
    }
}

impl Eq for InlineKey {}

impl PartialOrd for InlineKey {
    fn partial_cmp(&self, other: &InlineKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InlineKey {
    fn cmp(&self, other: &InlineKey) -> Ordering {
        // Byte order is text order for ASCII.
        self.used().cmp(other.used())
    }
}

impl Hash for InlineKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Only the words that hold used bytes: equal keys have equal lengths, hence equal words.
        state.write_u8(self.len);
        for index in 0..usize::from(self.len).div_ceil(8) {
            state.write_u64(u64::from_le_bytes(self.bytes[index * 8..index * 8 + 8].try_into().expect("8 bytes")));
        }
    }
}

macro_rules! textual_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(InlineKey);

        impl $name {
            /// Parses 1 to 64 characters of `[A-Za-z0-9._:-]`.
            pub fn parse(text: &str) -> Result<$name, ParseError> {
                InlineKey::parse($what, text).map($name)
            }

            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }

            /// The id's ASCII bytes, without the cost of re-checking them as UTF-8.
            pub fn as_bytes(&self) -> &[u8] {
                self.0.used()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                $name::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

textual_id!(
    /// A wallet, and the id of its event stream.
    WalletId,
    "wallet id"
);
textual_id!(
    /// The party that owns a wallet; the ledger only stores and filters by it.
    OwnerId,
    "owner id"
);
textual_id!(
    /// A hold (an authorization that reserves part of a wallet's balance).
    HoldId,
    "hold id"
);

/// The client-unique id of a command: the idempotency key, in the engine's terms.
///
/// The server derives it from the HTTP `Idempotency-Key` (or mints a fresh one when a request has
/// none). Two commands with the same id are the same request: the second one returns the first one's
/// outcome and has no effect.
///
/// In human-readable formats (JSON) it is 32 lowercase hex digits, since JSON numbers lose
/// precision beyond 2^53; in binary formats (snapshots) it is the plain integer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommandId(pub u128);

impl Serialize for CommandId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() { serializer.collect_str(self) } else { serializer.serialize_u128(self.0) }
    }
}

impl<'de> Deserialize<'de> for CommandId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<CommandId, D::Error> {
        if deserializer.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            if text.len() != 32 {
                return Err(serde::de::Error::custom("a command id is 32 hex digits"));
            }
            u128::from_str_radix(&text, 16).map(CommandId).map_err(serde::de::Error::custom)
        } else {
            u128::deserialize(deserializer).map(CommandId)
        }
    }
}

impl fmt::Debug for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandId({:032x})", self.0)
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The journal position of a recorded command, assigned by the ledger: 1, 2, 3, ... in decision
/// order. Every newly recorded command takes the next id, whether it is accepted or rejected, so the
/// id totally orders the journal; a rejected command's transaction simply has no events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TransactionId(pub u64);

impl TransactionId {
    pub fn next(self) -> TransactionId {
        TransactionId(self.0.checked_add(1).expect("transaction ids never run out"))
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A point in time in microseconds since the Unix epoch. The engine never reads a clock: the caller
/// passes `now` with every command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(u64);

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);

    pub const fn from_unix_micros(micros: u64) -> Timestamp {
        Timestamp(micros)
    }

    pub const fn unix_micros(self) -> u64 {
        self.0
    }

    /// `self + micros`, saturating at the end of time instead of overflowing.
    pub const fn saturating_add_micros(self, micros: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(micros))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wallet_id_accepts_the_documented_alphabet_and_length() {
        assert_eq!(WalletId::parse("wallet-123").unwrap().as_str(), "wallet-123");
        assert!(WalletId::parse("A.b_c:d-0").is_ok());
        assert!(WalletId::parse(&"x".repeat(64)).is_ok());
        assert_eq!(WalletId::parse(&"x".repeat(65)), Err(ParseError::IdLength { what: "wallet id", max: 64 }));
        assert_eq!(WalletId::parse(""), Err(ParseError::IdLength { what: "wallet id", max: 64 }));
        for bad in ["a b", "@world:USD", "é", "a/b", "a\n"] {
            assert_eq!(WalletId::parse(bad), Err(ParseError::IdCharset { what: "wallet id" }), "{bad:?}");
        }
    }

    #[test]
    fn ids_order_and_compare_by_text() {
        let a = WalletId::parse("ab").unwrap();
        let b = WalletId::parse("b").unwrap();
        assert!(a < b, "lexicographic, not by length");
        assert_eq!(a, WalletId::parse("ab").unwrap());
    }

    #[test]
    fn ids_round_trip_through_serde_and_reject_bad_text() {
        let id = HoldId::parse("hold-1").unwrap();
        assert_eq!(id.to_string(), "hold-1");
        let encoded = bincode::serde::encode_to_vec(id, bincode::config::standard()).unwrap();
        let (decoded, _): (HoldId, usize) =
            bincode::serde::decode_from_slice(&encoded, bincode::config::standard()).unwrap();
        assert_eq!(decoded, id);
        let bad = bincode::serde::encode_to_vec("no spaces", bincode::config::standard()).unwrap();
        assert!(bincode::serde::decode_from_slice::<HoldId, _>(&bad, bincode::config::standard()).is_err());
    }
}
