//! The in-process bus retains only what some consumer group has not committed.
//!
//! A million messages go through it while two groups consume at different paces (one commits
//! every poll, the other every third); after every round the retained log is at most what the
//! slowest group has not committed, and in the end each group has seen every message exactly once,
//! in order per partition, and nothing is retained. A member behind what its group committed
//! resumes at the group's offset.

use std::collections::BTreeMap;

use wallex_pipeline::bus::{InProcessBus, PARTITIONS};
use wallex_pipeline::ports::{Bus, BusMessage, Consumer};

const MESSAGES: u64 = 1_000_000;
const PER_ROUND: u64 = 10_000;
const POLL: usize = 4_096;

fn message(number: u64) -> BusMessage {
    BusMessage { key: format!("w{}", number % 997), payload: number.to_le_bytes().to_vec(), headers: Vec::new() }
}

struct Group {
    consumer: <InProcessBus as Bus>::Consumer,
    /// Per partition, the next offset expected and the last message number seen.
    next: BTreeMap<u32, (u64, Option<u64>)>,
    /// Per partition, the offset after the last delivery not yet committed.
    pending: BTreeMap<u32, u64>,
    polls: u64,
    commit_every: u64,
    received: u64,
}

impl Group {
    async fn drain(&mut self) {
        loop {
            let deliveries = self.consumer.poll(POLL, 0).await.unwrap();
            if deliveries.is_empty() {
                return;
            }
            for delivery in deliveries {
                let (next, last) = self.next.entry(delivery.partition).or_insert((0, None));
                assert_eq!(delivery.offset, *next, "offsets are contiguous per partition");
                let number = u64::from_le_bytes(delivery.payload.try_into().unwrap());
                assert!(last.is_none_or(|last| number > last), "publication order per partition");
                *next += 1;
                *last = Some(number);
                self.pending.insert(delivery.partition, *next);
                self.received += 1;
            }
            self.polls += 1;
            if self.polls.is_multiple_of(self.commit_every) {
                self.commit().await;
            }
        }
    }

    async fn commit(&mut self) {
        let offsets: Vec<(u32, u64)> = std::mem::take(&mut self.pending).into_iter().collect();
        self.consumer.commit(&offsets).await.unwrap();
    }

    /// The offset after the last message this group received, per partition.
    fn consumed(&self) -> BTreeMap<u32, u64> {
        self.next.iter().map(|(partition, (next, _))| (*partition, *next)).collect()
    }
}

#[tokio::test]
async fn a_million_messages_retain_only_what_is_uncommitted() {
    let bus = InProcessBus::with_groups(&["eager", "lazy"]);
    let mut eager = Group {
        consumer: bus.consumer("eager").await.unwrap(),
        next: BTreeMap::new(),
        pending: BTreeMap::new(),
        polls: 0,
        commit_every: 1,
        received: 0,
    };
    let mut lazy = Group {
        consumer: bus.consumer("lazy").await.unwrap(),
        next: BTreeMap::new(),
        pending: BTreeMap::new(),
        polls: 0,
        commit_every: 3,
        received: 0,
    };
    let mut published = 0;
    let mut most_retained = 0;
    while published < MESSAGES {
        let round: Vec<BusMessage> = (published..published + PER_ROUND).map(message).collect();
        assert!(bus.publish(&round).await.iter().all(Result::is_ok));
        published += PER_ROUND;
        eager.drain().await;
        lazy.drain().await;
        // What the slowest group has not committed: the end of each partition minus the smaller
        // of the two groups' committed offsets (the lazy group's commits lag its deliveries).
        let lag = bus.lag("lazy").await.unwrap().max(bus.lag("eager").await.unwrap());
        let retained = bus.retained();
        assert!(retained <= lag, "retained {retained} messages, but only {lag} are uncommitted by some group");
        most_retained = most_retained.max(retained);
    }
    eager.commit().await;
    lazy.commit().await;
    assert_eq!((eager.received, lazy.received), (MESSAGES, MESSAGES), "every group saw every message once");
    assert_eq!(eager.consumed(), lazy.consumed());
    assert_eq!(eager.consumed().values().sum::<u64>(), MESSAGES);
    assert_eq!(eager.consumed().len(), PARTITIONS as usize);
    assert_eq!(bus.retained(), 0, "nothing is retained once every group committed everything");
    assert!(most_retained < 3 * PER_ROUND, "the log stayed small: at most {most_retained} messages");
}

#[tokio::test]
async fn a_group_that_joins_later_starts_at_the_oldest_retained_message() {
    let bus = InProcessBus::with_groups(&["first"]);
    let mut first = bus.consumer("first").await.unwrap();
    let round: Vec<BusMessage> = (0..100).map(message).collect();
    bus.publish(&round).await;
    let delivered = first.poll(1_000, 0).await.unwrap();
    assert_eq!(delivered.len(), 100);
    let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
    for delivery in &delivered {
        ends.insert(delivery.partition, delivery.offset + 1);
    }
    first.commit(&ends.into_iter().collect::<Vec<_>>()).await.unwrap();
    assert_eq!(bus.retained(), 0);
    bus.publish(&[message(100)]).await;
    let mut late = bus.consumer("late").await.unwrap();
    let got = late.poll(1_000, 0).await.unwrap();
    assert_eq!(got.len(), 1, "the late group gets what is retained, from its true offset");
    assert_eq!(u64::from_le_bytes(got[0].payload.clone().try_into().unwrap()), 100);
    // And the first group's next message is the same one, not a repeat of what it committed.
    let next = first.poll(1_000, 0).await.unwrap();
    assert_eq!((next.len(), next[0].offset), (1, got[0].offset));
}

#[tokio::test]
async fn a_member_behind_what_its_group_committed_resumes_there() {
    // Two instances on one bus: each runs a member of the same group.
    let bus = InProcessBus::with_groups(&["projector"]);
    let mut ahead = bus.consumer("projector").await.unwrap();
    let mut behind = bus.consumer("projector").await.unwrap();
    bus.publish(&(0..100).map(message).collect::<Vec<_>>()).await;
    let delivered = ahead.poll(1_000, 0).await.unwrap();
    let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
    for delivery in &delivered {
        ends.insert(delivery.partition, delivery.offset + 1);
    }
    ahead.commit(&ends.into_iter().collect::<Vec<_>>()).await.unwrap();
    assert_eq!(bus.retained(), 0, "the group committed everything");
    bus.publish(&[message(100)]).await;
    let got = behind.poll(1_000, 0).await.unwrap();
    assert_eq!(got.len(), 1, "the member behind gets what the group has not committed, and only that");
    assert_eq!(u64::from_le_bytes(got[0].payload.clone().try_into().unwrap()), 100);
}

#[tokio::test]
async fn the_projections_groups_are_retained_for_before_either_joins() {
    // The pipeline's bus: whichever projection commits first, the other still gets everything.
    let bus = InProcessBus::new();
    bus.publish(&(0..50).map(message).collect::<Vec<_>>()).await;
    let [first_group, second_group] = wallex_pipeline::ports::Projection::ALL.map(|projection| projection.group());
    let mut first = bus.consumer(first_group).await.unwrap();
    let delivered = first.poll(1_000, 0).await.unwrap();
    let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
    for delivery in &delivered {
        ends.insert(delivery.partition, delivery.offset + 1);
    }
    first.commit(&ends.into_iter().collect::<Vec<_>>()).await.unwrap();
    let mut second = bus.consumer(second_group).await.unwrap();
    assert_eq!(second.poll(1_000, 0).await.unwrap().len(), 50, "the second group joined late and lost nothing");
}
