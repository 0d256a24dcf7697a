//! The wire form of events on the bus and in the outbox: JSON with a schema version.
//!
//! `{"schemaVersion":1,"event":{...}}`, where `event` is the engine's `Event` in its serde form
//! (amounts in integer minor units, with the currency beside them). A consumer that meets another
//! schema version refuses the message (it goes to the dead-letter topic) rather than guessing.

use serde::{Deserialize, Serialize};
use wallex_engine::Event;

/// The event schema this build writes and reads.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeRef<'a> {
    schema_version: u32,
    event: &'a Event,
}

/// The event stays raw text until its schema version is checked, then parses straight into
/// `Event` (through `serde_json::Value` it cost the projectors a third of their time).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    schema_version: u32,
    #[serde(borrow)]
    event: &'a serde_json::value::RawValue,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not an event envelope: {0}")]
    Malformed(String),
    #[error("event schema version {0} is not {EVENT_SCHEMA_VERSION}")]
    SchemaVersion(u32),
}

pub fn encode_event(event: &Event) -> Vec<u8> {
    serde_json::to_vec(&EnvelopeRef { schema_version: EVENT_SCHEMA_VERSION, event }).expect("events always serialize")
}

pub fn decode_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    let envelope: Envelope =
        serde_json::from_slice(bytes).map_err(|error| DecodeError::Malformed(error.to_string()))?;
    if envelope.schema_version != EVENT_SCHEMA_VERSION {
        return Err(DecodeError::SchemaVersion(envelope.schema_version));
    }
    serde_json::from_str(envelope.event.get()).map_err(|error| DecodeError::Malformed(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallex_engine::{Account, Amount, CommandId, Currency, EventKind, Posting, Timestamp, TransactionId, WalletId};

    fn transfer_event() -> Event {
        let alice = WalletId::parse("alice").unwrap();
        let bob = WalletId::parse("bob").unwrap();
        Event {
            wallet_id: alice,
            version: 3,
            transaction_id: TransactionId(4),
            command_id: CommandId(u128::MAX - 1),
            at: Timestamp::from_unix_micros(1_700_000_000_000_000),
            currency: Currency::USD,
            kind: EventKind::TransferSent { destination: bob },
            posting: Some(Posting {
                source: Account::Wallet(alice),
                destination: Account::Wallet(bob),
                currency: Currency::USD,
                amount: Amount::from_minor(2_550).unwrap(),
            }),
            description: None,
            balance_after: 12_450,
            held_after: 0,
            memo: Default::default(),
        }
    }

    #[test]
    fn events_round_trip_and_the_wire_form_is_pinned() {
        let event = transfer_event();
        let bytes = encode_event(&event);
        assert_eq!(decode_event(&bytes).unwrap(), event);
        // Consumers outside this repository parse this: a change here is a schema change.
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"schemaVersion":1,"event":{"wallet_id":"alice","version":3,"transaction_id":4,"command_id":"fffffffffffffffffffffffffffffffe","at":1700000000000000,"currency":"USD","kind":{"TransferSent":{"destination":"bob"}},"posting":{"source":{"Wallet":"alice"},"destination":{"Wallet":"bob"},"currency":"USD","amount":2550},"description":null,"balance_after":12450,"held_after":0}}"#
        );
    }

    #[test]
    fn foreign_schema_versions_and_garbage_are_refused() {
        let bytes = encode_event(&transfer_event());
        let text = String::from_utf8(bytes).unwrap().replace("\"schemaVersion\":1", "\"schemaVersion\":2");
        assert_eq!(decode_event(text.as_bytes()), Err(DecodeError::SchemaVersion(2)));
        assert!(matches!(decode_event(b"not json"), Err(DecodeError::Malformed(_))));
        assert!(matches!(
            decode_event(br#"{"schemaVersion":1,"event":{"wallet_id":"bad id"}}"#),
            Err(DecodeError::Malformed(_))
        ));
    }
}
