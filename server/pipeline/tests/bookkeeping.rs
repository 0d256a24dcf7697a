//! The relay's and the projectors' bookkeeping, driven directly over many seeded sequences.
//!
//! `RelayCursor`: whatever order the partitions' lanes acknowledge in, what is marked is exactly the
//! longest acknowledged prefix of the outbox. `Offsets`: whatever order, duplication and gaps the bus delivers in, no
//! offset is ever committed past an event still held, and once every event is projected the
//! committed offsets reach the end of every partition (nothing is redelivered forever).

use std::collections::BTreeMap;

use wallex_engine::{CommandId, Currency, Event, EventKind, OwnerId, Timestamp, TransactionId, WalletId};
use wallex_pipeline::ports::OutboxPosition;
use wallex_pipeline::projector::Offsets;
use wallex_pipeline::relay::RelayCursor;

/// A small deterministic generator (xorshift), so every sequence replays from its seed.
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

fn position(transaction: u64, index: u32) -> OutboxPosition {
    OutboxPosition { transaction_id: TransactionId(transaction), index }
}

#[test]
fn the_relay_cursor_marks_only_the_acknowledged_prefix_whatever_order_lanes_acknowledge_in() {
    for seed in 1..300 {
        let mut random = Seeded(seed * 0x9E37_79B9);
        let mut cursor = RelayCursor::default();
        // Read, not yet acknowledged, in the order lanes will acknowledge them: any order.
        let mut outstanding: Vec<OutboxPosition> = Vec::new();
        let mut read: Vec<OutboxPosition> = Vec::new();
        let mut acknowledged = std::collections::BTreeSet::new();
        let mut transaction = 0;
        for _ in 0..200 {
            match random.below(3) {
                0 => {
                    transaction += 1 + random.below(3);
                    for index in 0..=u32::try_from(random.below(2)).unwrap() {
                        let position = position(transaction, index);
                        cursor.read(position);
                        read.push(position);
                        outstanding.push(position);
                    }
                }
                1 if !outstanding.is_empty() => {
                    let position = outstanding.remove(usize::try_from(random.below(outstanding.len() as u64)).unwrap());
                    cursor.acknowledge(position);
                    acknowledged.insert(position);
                }
                _ => {
                    if let Some(through) = cursor.to_mark() {
                        cursor.marked(through);
                        assert_eq!(cursor.to_mark(), None, "seed {seed}: marked up to the prefix");
                    }
                }
            }
            // The prefix is exactly the longest run of acknowledged messages from the start.
            let prefix = read.iter().take_while(|position| acknowledged.contains(position)).last().copied();
            assert_eq!(cursor.acknowledged_through(), prefix, "seed {seed}");
            assert_eq!(cursor.in_window(), read.len() - read.iter().take_while(|p| acknowledged.contains(p)).count());
            if let Some(through) = cursor.to_mark() {
                assert!(Some(through) == prefix, "seed {seed}: to_mark names the acknowledged prefix");
            }
        }
    }
}

#[test]
fn the_relay_cursor_refuses_to_read_back_or_acknowledge_what_it_did_not_read() {
    let mut cursor = RelayCursor::default();
    cursor.read(position(5, 0));
    let mut back = cursor.clone();
    assert!(std::panic::catch_unwind(move || back.read(position(4, 0))).is_err(), "reading back is a bug");
    let mut unknown = cursor.clone();
    assert!(std::panic::catch_unwind(move || unknown.acknowledge(position(6, 0))).is_err(), "unread ack is a bug");
    cursor.acknowledge(position(5, 0));
    let mut twice = cursor.clone();
    assert!(std::panic::catch_unwind(move || twice.acknowledge(position(5, 0))).is_err(), "a double ack is a bug");
}

#[test]
fn the_relay_cursor_refuses_to_mark_what_was_not_acknowledged() {
    let mut cursor = RelayCursor::default();
    cursor.read(position(5, 0));
    cursor.read(position(6, 0));
    cursor.acknowledge(position(6, 0));
    assert_eq!(cursor.to_mark(), None, "a later acknowledgement does not cover an earlier message");
    let marked_early = std::panic::catch_unwind(move || cursor.marked(position(6, 0)));
    assert!(marked_early.is_err(), "marking ahead of the bus is a bug the relay asserts");
}

fn event(wallet: &str, version: u64) -> Event {
    Event {
        wallet_id: WalletId::parse(wallet).unwrap(),
        version,
        transaction_id: TransactionId(version),
        command_id: CommandId(u128::from(version)),
        at: Timestamp::from_unix_micros(version),
        currency: Currency::USD,
        kind: EventKind::WalletCreated { owner_id: OwnerId::parse("o").unwrap(), overdraft_limit: Default::default() },
        posting: None,
        balance_after: 0,
        held_after: 0,
        memo: Default::default(),
        description: None,
    }
}

#[test]
fn no_offset_is_committed_past_a_held_event_and_all_are_committed_in_the_end() {
    const PARTITIONS: u32 = 3;
    const WALLETS: u64 = 6;
    const VERSIONS: u64 = 8;
    for seed in 1..300 {
        let mut random = Seeded(seed * 0x2545_F491);
        // Each partition's log: (wallet, version) in an order where a wallet's versions may arrive
        // out of order across redeliveries, with duplicates.
        let mut logs: Vec<Vec<(String, u64)>> = vec![Vec::new(); PARTITIONS as usize];
        for wallet in 0..WALLETS {
            let partition = usize::try_from(wallet % u64::from(PARTITIONS)).unwrap();
            for version in 1..=VERSIONS {
                logs[partition].push((format!("w{wallet}"), version));
                if random.below(4) == 0 {
                    let back = version.saturating_sub(random.below(3)).max(1);
                    logs[partition].push((format!("w{wallet}"), back)); // a duplicate, maybe older
                }
            }
            // Swap neighbours now and then: a later version before an earlier one (a gap).
            let log = &mut logs[partition];
            for index in 1..log.len() {
                if random.below(5) == 0 {
                    log.swap(index - 1, index);
                }
            }
        }
        let mut offsets = Offsets::default();
        let mut projected: BTreeMap<String, u64> = BTreeMap::new();
        let mut next_offset = [0u64; PARTITIONS as usize];
        let mut committed = [0u64; PARTITIONS as usize];
        for _round in 0..10_000 {
            let done = (0..PARTITIONS as usize).all(|p| next_offset[p] == logs[p].len() as u64);
            if done && offsets.held_count() == 0 {
                break;
            }
            // Deliver a few messages from a random partition.
            let partition = usize::try_from(random.below(u64::from(PARTITIONS))).unwrap();
            for _ in 0..=random.below(3) {
                let offset = next_offset[partition];
                let Some((wallet, version)) = logs[partition].get(usize::try_from(offset).unwrap()) else { break };
                let partition_id = u32::try_from(partition).unwrap();
                offsets.delivered(partition_id, offset);
                let _fresh = offsets.hold(event(wallet, *version), partition_id, offset);
                next_offset[partition] += 1;
            }
            // Project: apply each wallet's next version, skip duplicates, keep gaps held.
            loop {
                let mut progressed = false;
                for held in offsets.held_events() {
                    let at = projected.entry(held.wallet_id.to_string()).or_insert(0);
                    if held.version <= *at {
                        offsets.settled(&held);
                    } else if held.version == *at + 1 {
                        *at = held.version;
                        offsets.settled(&held);
                        progressed = true;
                    }
                }
                if !progressed {
                    break;
                }
            }
            // Commit (the bus acknowledges two times in three).
            let due = offsets.offsets_to_commit();
            for held in offsets.held_events() {
                let projected_version = projected.get(&held.wallet_id.to_string()).copied().unwrap_or(0);
                assert!(held.version > projected_version + 1, "seed {seed}: a held event was projectable");
            }
            if random.below(3) > 0 {
                for (partition, offset) in due {
                    let partition = partition as usize;
                    assert!(offset <= next_offset[partition], "seed {seed}: committed past what was delivered");
                    committed[partition] = offset;
                }
                offsets.committed();
            }
        }
        // A commit with everything settled reaches the end of every partition.
        for (partition, offset) in offsets.offsets_to_commit() {
            committed[partition as usize] = offset;
        }
        for partition in 0..PARTITIONS as usize {
            assert_eq!(committed[partition], logs[partition].len() as u64, "seed {seed}: partition {partition}");
        }
        assert!(projected.values().all(|version| *version == VERSIONS), "seed {seed}: {projected:?}");
    }
}
