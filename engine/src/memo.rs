//! What a client attaches to a command besides its content: a reference of its own (unique among
//! each wallet's transactions), flat metadata, and the request's correlation id. Every event of the
//! transaction carries them, so every read of the journal, the ledger or the bus shows them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::ParseError;

/// A client's own reference for a transaction (an invoice number, a payment id): 1 to 128
/// characters, no control characters. The ledger refuses a second transaction with the same
/// reference on a wallet (`reference_exists`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Reference(String);

impl Reference {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(text: &str) -> Result<Reference, ParseError> {
        let chars = text.chars().count();
        if text.is_empty() || text.len() > 4 * Reference::MAX_CHARS || chars > Reference::MAX_CHARS {
            return Err(ParseError::ReferenceLength { max: Reference::MAX_CHARS });
        }
        if text.chars().any(char::is_control) {
            return Err(ParseError::ReferenceControl);
        }
        Ok(Reference(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Reference, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Reference::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Flat string metadata: at most 16 entries; keys 1 to 64 of `[A-Za-z0-9_.-]`, values at most
/// 256 characters without control characters. Ordered by key, so it digests and prints the same
/// everywhere.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Metadata(BTreeMap<String, String>);

impl Metadata {
    pub const MAX_ENTRIES: usize = 16;
    pub const MAX_KEY_BYTES: usize = 64;
    pub const MAX_VALUE_CHARS: usize = 256;

    pub fn parse<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Metadata, ParseError> {
        let mut map = BTreeMap::new();
        for (key, value) in entries {
            Metadata::check_key(key)?;
            Metadata::check_value(value)?;
            map.insert(key.to_owned(), value.to_owned());
            if map.len() > Metadata::MAX_ENTRIES {
                return Err(ParseError::MetadataEntries { max: Metadata::MAX_ENTRIES });
            }
        }
        Ok(Metadata(map))
    }

    /// A key as metadata and its search accept it.
    pub fn check_key(key: &str) -> Result<(), ParseError> {
        let grammar = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-');
        if key.is_empty() || key.len() > Metadata::MAX_KEY_BYTES || !key.bytes().all(grammar) {
            return Err(ParseError::MetadataKey { max: Metadata::MAX_KEY_BYTES });
        }
        Ok(())
    }

    /// A value as metadata and its search accept it.
    pub fn check_value(value: &str) -> Result<(), ParseError> {
        let too_long = value.len() > 4 * Metadata::MAX_VALUE_CHARS || value.chars().count() > Metadata::MAX_VALUE_CHARS;
        if too_long || value.chars().any(char::is_control) {
            return Err(ParseError::MetadataValue { max: Metadata::MAX_VALUE_CHARS });
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(key, value)| (key.as_str(), value.as_str()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Metadata, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(deserializer)?;
        Metadata::parse(map.iter().map(|(key, value)| (key.as_str(), value.as_str()))).map_err(serde::de::Error::custom)
    }
}

/// The id that ties a request to its logs and its events: 1 to 128 visible ASCII characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct CorrelationId(String);

impl CorrelationId {
    pub const MAX_BYTES: usize = 128;

    pub fn parse(text: &str) -> Result<CorrelationId, ParseError> {
        if text.is_empty() || text.len() > CorrelationId::MAX_BYTES || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ParseError::CorrelationId { max: CorrelationId::MAX_BYTES });
        }
        Ok(CorrelationId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for CorrelationId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<CorrelationId, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        CorrelationId::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What a command carries besides its content, and every event of its transaction after it.
///
/// The reference and the metadata are content: they are part of the command's fingerprint, so the
/// same idempotency key with another reference is `idempotency_key_reused`. The correlation id is
/// not: a retry under a new correlation id is the same request, and its events keep the first's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Memo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<CorrelationId>,
}

impl Memo {
    /// Nothing attached: events without a memo serialize exactly as before memos existed.
    pub fn is_empty(&self) -> bool {
        self.reference.is_none() && self.metadata.is_empty() && self.correlation_id.is_none()
    }

    /// Whether the memo adds to the command's content (and so to its fingerprint).
    pub(crate) fn is_content(&self) -> bool {
        self.reference.is_some() || !self.metadata.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_metadata_and_correlation_ids_are_bounded() {
        assert!(Reference::parse("INV-2026/0001").is_ok());
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse(&"r".repeat(128)).is_ok());
        assert!(Reference::parse(&"r".repeat(129)).is_err());
        assert!(Reference::parse("a\nb").is_err());
        assert!(Metadata::parse([("order", "42"), ("channel", "web")]).is_ok());
        assert!(Metadata::parse([("bad key", "x")]).is_err());
        assert!(Metadata::parse([("k", "v\u{7}")]).is_err());
        let many: Vec<(String, String)> = (0..17).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert!(Metadata::parse(many.iter().map(|(k, v)| (k.as_str(), v.as_str()))).is_err());
        assert!(CorrelationId::parse("req-1").is_ok());
        assert!(CorrelationId::parse("has space").is_err());
    }
}
