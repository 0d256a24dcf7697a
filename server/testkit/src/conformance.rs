//! The store conformance suite: one set of checks every store adapter must pass (memory, SQLite,
//! PostgreSQL, the simulator's), so the pipeline can rely on the same semantics from each.
//!
//! Call [`run`] with a fresh, empty store. It panics on the first broken promise, naming it.

use wallex_engine::{
    Amount, Command, CommandId, CommandKind, Config, CorrelationId, Currency, Event, Ledger, Memo, Metadata, Outcome,
    OwnerId, Reference, Timestamp, TransactionId, WalletId,
};

use wallex_pipeline::codec::encode_event;
use wallex_pipeline::ports::{
    ApiKey, Applied, AuditRecord, CommitBatch, Direction, EntryCursor, EntryFilter, Epoch, EventStore, KeyStore,
    OutboxMessage, OutboxPosition, Projection, ProjectionStore, Scope, StoreError, StoredSnapshot, WalletCursor,
    WalletFilter, WalletOrder,
};

/// Decides `kinds` on `ledger` (ids from `first_id`) and returns the batch the writer would commit.
fn batch(ledger: &mut Ledger, first_id: u64, kinds: Vec<CommandKind>) -> CommitBatch {
    let mut batch = CommitBatch::default();
    for (offset, kind) in (0u64..).zip(kinds) {
        let command = Command::new(CommandId(u128::from(first_id + offset)), kind);
        let before = batch.events.len();
        let now = Timestamp::from_unix_micros(1_000 + first_id + offset);
        let Outcome::Recorded(record) = ledger.execute(now, &command, &mut batch.events) else {
            panic!("conformance commands are new");
        };
        batch.records.push(record);
        for (index, event) in (0u32..).zip(&batch.events[before..]) {
            batch.outbox.push(OutboxMessage {
                position: OutboxPosition { transaction_id: record.transaction_id, index },
                key: event.wallet_id,
                payload: encode_event(event),
                committed_at: record.at,
            });
        }
    }
    batch
}

fn wallet(id: &str) -> WalletId {
    WalletId::parse(id).expect("valid id")
}

fn create(id: &str, owner: &str, initial: u64) -> CommandKind {
    CommandKind::CreateWallet {
        wallet_id: wallet(id),
        owner_id: OwnerId::parse(owner).expect("valid owner"),
        currency: Currency::USD,
        initial_balance: Amount::from_minor(initial).expect("small"),
        overdraft_limit: Amount::ZERO,
    }
}

fn transfer(from: &str, to: &str, amount: u64) -> CommandKind {
    CommandKind::Transfer {
        source: wallet(from),
        destination: wallet(to),
        currency: Currency::USD,
        amount: Amount::from_minor(amount).expect("small"),
        description: None,
    }
}

/// Runs every check against `store`, which must be empty.
pub async fn run<S: EventStore + ProjectionStore>(store: S) {
    let mut ledger = Ledger::new(Config::default());

    // An empty store.
    assert_eq!(store.latest_snapshot().await.unwrap(), None, "empty store has no snapshot");
    assert!(store.journal(TransactionId(0), 10).await.unwrap().is_empty(), "empty store has no journal");
    assert!(store.outbox_after(None, 10).await.unwrap().is_empty(), "empty store has no outbox");

    // A batch commits whole, and reads back in order.
    let first = batch(&mut ledger, 1, vec![create("a", "o1", 1_000), create("b", "o2", 0), transfer("a", "b", 250)]);
    store.commit(&first).await.unwrap();
    let journal = store.journal(TransactionId(0), 10).await.unwrap();
    assert_eq!(journal.len(), 3, "journal has every record");
    assert_eq!(journal.iter().map(|e| e.record).collect::<Vec<_>>(), first.records, "journal keeps records in order");
    assert_eq!(journal.iter().flat_map(|e| e.events.clone()).collect::<Vec<_>>(), first.events, "journal keeps events");
    assert_eq!(
        store.journal(TransactionId(1), 1).await.unwrap()[0].record.transaction_id,
        TransactionId(2),
        "journal pages"
    );
    // Transactions' events by id: any order and repeats in, transaction order out, unknown ids
    // contribute nothing.
    let third_then_first = store
        .transaction_events(&[TransactionId(3), TransactionId(99), TransactionId(1), TransactionId(3)])
        .await
        .unwrap();
    let expected: Vec<_> = [&journal[0], &journal[2]].into_iter().flat_map(|entry| entry.events.clone()).collect();
    assert!(expected.len() >= 3, "a create and a transfer have events");
    assert_eq!(third_then_first, expected, "transaction events in transaction order");
    assert_eq!(store.transaction_events(&[]).await.unwrap(), vec![], "no ids, no events");

    // Constraints: a command id or a stream version committed twice refuses the whole batch.
    let mut replay = first.clone();
    replay.records.truncate(1);
    replay.events.truncate(1);
    replay.outbox.truncate(1);
    assert!(matches!(store.commit(&replay).await, Err(StoreError::Refused(_))), "a committed transaction is refused");
    let mut clash = batch(&mut ledger, 10, vec![transfer("b", "a", 5)]);
    clash.events[0].version = 2; // b's version 2 exists already
    clash.records[0].command_id = CommandId(99);
    assert!(matches!(store.commit(&clash).await, Err(StoreError::Refused(_))), "duplicate stream version refused");
    assert_eq!(store.journal(TransactionId(3), 10).await.unwrap(), vec![], "a refused batch writes nothing");
    // The ledger above decided transaction 4 that the store refused: start again from the store.
    let mut ledger = Ledger::new(Config::default());
    for entry in &journal {
        ledger.replay(&entry.record, &entry.events).unwrap();
    }

    // Idempotency records: live for their retention, then forgotten (the journal keeps them).
    let ids = [CommandId(2), CommandId(77), CommandId(3)];
    let records = store.command_records(&ids, Timestamp::ZERO).await.unwrap();
    let mut found: Vec<_> = records.iter().map(|r| r.command_id).collect();
    found.sort();
    assert_eq!(found, vec![CommandId(2), CommandId(3)], "only committed ids are found");
    assert_eq!(records.iter().find(|r| r.command_id == CommandId(2)), Some(&first.records[1]), "the whole record");
    let after_second = Timestamp::from_unix_micros(first.records[1].at.unix_micros() + 1);
    let live = store.command_records(&ids, after_second).await.unwrap();
    assert_eq!(live.iter().map(|r| r.command_id).collect::<Vec<_>>(), vec![CommandId(3)], "older keys are not live");
    assert_eq!(store.forget_idempotency_keys(after_second, 1).await.unwrap(), 1, "at most the limit, oldest first");
    assert_eq!(
        store.command_records(&[CommandId(1), CommandId(2)], Timestamp::ZERO).await.unwrap(),
        vec![first.records[1]],
        "command 1's key went first"
    );
    assert_eq!(store.forget_idempotency_keys(after_second, 10).await.unwrap(), 1, "then command 2's");
    assert_eq!(store.forget_idempotency_keys(after_second, 10).await.unwrap(), 0, "and nothing more");
    assert!(store.command_records(&[CommandId(1), CommandId(2)], Timestamp::ZERO).await.unwrap().is_empty(), "gone");
    assert_eq!(store.journal(TransactionId(0), 10).await.unwrap().len(), 3, "the journal keeps forgotten commands");

    // Outbox: commit order, and marking published hides the prefix.
    let outbox = store.outbox_after(None, 100).await.unwrap();
    assert_eq!(outbox, first.outbox, "outbox in commit order");
    assert_eq!(store.outbox_after(Some(outbox[1].position), 1).await.unwrap(), vec![outbox[2].clone()], "outbox pages");
    let backlog = outbox.len() as u64;
    assert_eq!(store.outbox_backlog().await.unwrap(), (backlog, Some(outbox[0].committed_at)), "outbox backlog");
    store.mark_published(outbox[1].position).await.unwrap();
    assert_eq!(store.outbox_backlog().await.unwrap(), (backlog - 2, Some(outbox[2].committed_at)), "backlog after");
    assert_eq!(store.outbox_after(None, 100).await.unwrap(), outbox[2..].to_vec(), "published messages are gone");
    let mut second = batch(&mut ledger, 20, vec![transfer("b", "a", 50)]);
    // A forgotten id may be used again, by a new transaction.
    second.records[0].command_id = CommandId(1);
    store.commit(&second).await.unwrap();
    let reused = store.command_records(&[CommandId(1)], Timestamp::ZERO).await.unwrap();
    assert_eq!(reused, vec![second.records[0]], "the reused id points at its new transaction");
    let pending = store.outbox_after(Some(outbox[1].position), 100).await.unwrap();
    assert_eq!(pending.len(), outbox.len() - 2 + second.outbox.len(), "later commits follow in order");

    // Streams.
    let events: Vec<Event> = store.wallet_events(&wallet("a"), 1, 10).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "a wallet's events in version order"
    );
    assert_eq!(store.wallet_events(&wallet("a"), 2, 2).await.unwrap().len(), 1, "version range is inclusive");
    // A range past the largest version a store can hold is empty, not an error or a panic.
    assert!(store.wallet_events(&wallet("a"), u64::MAX - 1, u64::MAX).await.unwrap().is_empty());
    assert_eq!(store.wallet_events(&wallet("a"), 1, u64::MAX).await.unwrap().len(), events.len());

    // Stream heads: the wallets a range of transactions touched, each with its highest version.
    let (a, b) = (wallet("a"), wallet("b"));
    let heads = |after: u64, through: u64| store.stream_heads(TransactionId(after), TransactionId(through));
    assert_eq!(heads(0, 4).await.unwrap(), vec![(a, 3), (b, 3)], "the whole journal");
    assert_eq!(heads(0, 2).await.unwrap(), vec![(a, 1), (b, 1)], "the first two transactions");
    assert_eq!(heads(2, 3).await.unwrap(), vec![(a, 2), (b, 2)], "the third");
    assert_eq!(heads(4, 100).await.unwrap(), vec![], "nothing after the end");
    assert_eq!(heads(3, 3).await.unwrap(), vec![], "an empty range");

    // Snapshots: the latest wins. A snapshot is the state after its transaction, which never
    // changes: the one stored first for a transaction is kept, and an older one changes nothing.
    let snapshot = StoredSnapshot { transaction_id: ledger.last_transaction_id(), bytes: ledger.encode_snapshot() };
    let first_snapshot = StoredSnapshot { transaction_id: TransactionId(1), bytes: vec![1] };
    store.save_snapshot(&first_snapshot).await.unwrap();
    store.save_snapshot(&StoredSnapshot { transaction_id: TransactionId(1), bytes: vec![2] }).await.unwrap();
    assert_eq!(store.latest_snapshot().await.unwrap(), Some(first_snapshot), "a transaction's first snapshot is kept");
    store.save_snapshot(&snapshot).await.unwrap();
    assert_eq!(store.latest_snapshot().await.unwrap(), Some(snapshot.clone()), "the latest snapshot is returned");
    store.save_snapshot(&StoredSnapshot { transaction_id: TransactionId(1), bytes: vec![3] }).await.unwrap();
    let mut same_transaction = snapshot.clone();
    same_transaction.bytes.push(0);
    store.save_snapshot(&same_transaction).await.unwrap();
    assert_eq!(store.latest_snapshot().await.unwrap(), Some(snapshot), "neither an older nor a second one replaces it");

    // Projections: next version applies, duplicates skip, gaps hold.
    let all: Vec<Event> = journal.iter().flat_map(|e| e.events.clone()).chain(second.events.clone()).collect();
    for projection in Projection::ALL {
        let a_events: Vec<Event> = all.iter().filter(|e| e.wallet_id == wallet("a")).cloned().collect();
        let gap = store.project(projection, &a_events[1..2]).await.unwrap();
        assert_eq!(gap, vec![Applied::Gap { projected_version: 0 }], "{projection:?}: a gap is held");
        let verdicts = store.project(projection, &all).await.unwrap();
        assert!(verdicts.iter().all(|v| *v == Applied::Projected), "{projection:?}: in-order events apply");
        let again = store.project(projection, &all[..2]).await.unwrap();
        assert!(again.iter().all(|v| *v == Applied::Duplicate), "{projection:?}: duplicates are skipped");
        assert_eq!(store.projected_version(projection, &wallet("a")).await.unwrap(), 3, "{projection:?}: checkpoint");
        let versions = store.projected_versions(projection, &[wallet("b"), wallet("nobody"), wallet("a")]).await;
        assert_eq!(versions.unwrap(), vec![3, 0, 3], "{projection:?}: checkpoints in the order asked, 0 for none");
        assert!(store.projected_versions(projection, &[]).await.unwrap().is_empty());
    }
    let a = store.wallet(&wallet("a")).await.unwrap().expect("a is projected");
    assert_eq!((a.balance, a.version), (800, 3), "read model matches the write side");
    assert_eq!(a.balance, ledger.wallet(&wallet("a")).unwrap().balance);
    let by_id = |owner_id: Option<OwnerId>, after: Option<WalletId>| WalletFilter {
        owner_id,
        after: after.map(|wallet_id| WalletCursor { key: 0, wallet_id }),
        ..WalletFilter::default()
    };
    let listed = store.search_wallets(&by_id(None, None), 10).await.unwrap();
    assert_eq!(listed.iter().map(|w| w.wallet_id.as_str()).collect::<Vec<_>>(), ["a", "b"], "wallets by id");
    let after_a = store.search_wallets(&by_id(None, Some(wallet("a"))), 10).await.unwrap();
    assert_eq!(after_a.len(), 1, "wallets page after a cursor");
    let owner = OwnerId::parse("o2").unwrap();
    assert_eq!(
        store.search_wallets(&by_id(Some(owner), None), 10).await.unwrap()[0].wallet_id,
        wallet("b"),
        "owner filter"
    );
    let entries = store.ledger_entries(&wallet("a"), None, 10).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.version).collect::<Vec<_>>(), vec![3, 2, 1], "ledger newest first");
    assert_eq!(entries[1].amount, 250, "ledger amounts");
    assert_eq!(store.ledger_entries(&wallet("a"), Some(3), 1).await.unwrap()[0].version, 2, "ledger pages by version");
    // A bound past the largest version a store can hold means every entry.
    assert_eq!(store.ledger_entries(&wallet("a"), Some(u64::MAX), 10).await.unwrap(), entries);

    // Memos ride on the entries, a reference finds its transaction's entries, summaries keep sums.
    let memo = Memo {
        reference: Some(Reference::parse("inv-7").unwrap()),
        metadata: Metadata::parse([("order", "7"), ("channel", "web")]).unwrap(),
        correlation_id: Some(CorrelationId::parse("corr-1").unwrap()),
    };
    let mut referenced = Vec::new();
    let command = Command { id: CommandId(9_000), kind: transfer("a", "b", 50), memo: memo.clone() };
    let outcome = ledger.execute(Timestamp::from_unix_micros(90_000), &command, &mut referenced);
    assert!(outcome.result().is_ok(), "{outcome:?}");
    let verdicts = store.project(Projection::Ledger, &referenced).await.unwrap();
    assert!(verdicts.iter().all(|v| *v == Applied::Projected), "the referenced transfer applies: {verdicts:?}");
    let reference = Reference::parse("inv-7").unwrap();
    let found = store.entries_by_reference(&reference, 10).await.unwrap();
    let legs: Vec<_> = found.iter().map(|e| (e.wallet_id.as_str(), e.version)).collect();
    assert_eq!(legs, [("b", 4), ("a", 4)], "both legs, newest first by transaction then wallet");
    assert!(found.iter().all(|entry| entry.memo == memo), "the memo is stored whole: {found:?}");
    assert_eq!(store.entries_by_reference(&reference, 1).await.unwrap().len(), 1, "the limit holds");
    assert!(store.entries_by_reference(&Reference::parse("inv-8").unwrap(), 10).await.unwrap().is_empty());
    assert_eq!(store.ledger_entry(&wallet("a"), 4).await.unwrap().as_ref(), found.get(1), "an entry by version");
    assert_eq!(store.ledger_entry(&wallet("a"), 99).await.unwrap(), None);
    for name in ["a", "b"] {
        let entries = store.ledger_entries(&wallet(name), None, 100).await.unwrap();
        let sum = |direction| entries.iter().filter(|e| e.direction == direction).map(|e| e.amount).sum::<u64>();
        let summary = store.wallet_summary(&wallet(name)).await.unwrap().expect("a summary once entries exist");
        assert_eq!(
            (summary.total_credits, summary.total_debits, summary.transaction_count, summary.last_version),
            (sum(Direction::Credit), sum(Direction::Debit), entries.len() as u64, entries[0].version),
            "{name}: the summary is the sums of its entries, each counted once"
        );
    }
    assert_eq!(store.wallet_summary(&wallet("nobody")).await.unwrap(), None);

    search(&store, &mut ledger).await;
    atomic_groups(&store, &mut ledger).await;
    writer_lease(&store, &mut ledger).await;
}

/// The writer lease: one holder at a time, an epoch that only grows, and a fence every commit
/// passes through: a batch of any epoch but the current one writes nothing.
async fn writer_lease<S: EventStore>(store: &S, ledger: &mut Ledger) {
    const LONG: u64 = 60_000;
    let before = ledger.last_transaction_id();
    let first = store.acquire_lease("one", "http://one", LONG).await.unwrap().expect("a free lease is taken");
    assert!(first.epoch > Epoch(0), "taking the lease bumps the epoch");
    let read = store.lease().await.unwrap().expect("the lease is held");
    assert_eq!((read.epoch, read.holder.as_str(), read.address.as_str()), (first.epoch, "one", "http://one"));
    assert!(read.is_live() && read.remaining_ms <= LONG, "live for at most its length: {read:?}");
    assert_eq!(store.acquire_lease("two", "http://two", LONG).await.unwrap(), None, "a live lease is not taken");
    assert!(store.renew_lease(first.epoch, LONG).await.unwrap(), "the holder renews");

    // A batch of an earlier epoch is fenced off and writes nothing; the current epoch commits.
    let mut stale = batch(ledger, 95_000, vec![transfer("a", "b", 3)]);
    stale.epoch = Epoch(first.epoch.0 - 1);
    match store.commit(&stale).await {
        Err(StoreError::Fenced { current }) => assert_eq!(current, first.epoch, "the refusal names the epoch"),
        other => panic!("a commit of an earlier epoch is fenced off, not {other:?}"),
    }
    assert_eq!(store.journal(before, 10).await.unwrap(), vec![], "a fenced batch writes nothing");
    stale.epoch = first.epoch;
    store.commit(&stale).await.unwrap();
    assert_eq!(store.journal(before, 10).await.unwrap().len(), 1, "the current epoch commits");

    // Released, the lease passes on with a new epoch, and the old one is fenced off for good.
    store.release_lease(first.epoch).await.unwrap();
    let second = store.acquire_lease("two", "http://two", LONG).await.unwrap().expect("a released lease is free");
    assert!(second.epoch > first.epoch, "every takeover bumps the epoch");
    assert!(!store.renew_lease(first.epoch, LONG).await.unwrap(), "the old holder cannot renew");
    store.release_lease(first.epoch).await.unwrap();
    assert_eq!(
        store.lease().await.unwrap().map(|lease| lease.holder),
        Some("two".to_owned()),
        "a stale release is void"
    );
    assert!(store.lease().await.unwrap().is_some_and(|lease| lease.is_live()), "and leaves the lease live");
    let mut late = batch(ledger, 96_000, vec![transfer("a", "b", 4)]);
    late.epoch = first.epoch;
    assert!(matches!(store.commit(&late).await, Err(StoreError::Fenced { .. })), "the old epoch never commits again");
    // A node takes its own lease back at once (a restart), under a new epoch.
    let again = store.acquire_lease("two", "http://two", LONG).await.unwrap().expect("its own lease");
    assert!(again.epoch > second.epoch);
    // A lease that lapses is free for anyone.
    store.release_lease(again.epoch).await.unwrap();
    let short = store.acquire_lease("one", "http://one", 50).await.unwrap().expect("free again");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(store.lease().await.unwrap().is_some_and(|lease| !lease.is_live()), "a lease lapses by itself");
    let third = store.acquire_lease("two", "http://two", LONG).await.unwrap().expect("a lapsed lease is free");
    assert!(third.epoch > short.epoch);
    late.epoch = third.epoch;
    store.commit(&late).await.unwrap();
}

/// An accepted atomic group is one transaction with every leg's events; a refused one is a record
/// that names its refused leg, read back whole from the journal and from its idempotency key.
async fn atomic_groups<S: EventStore>(store: &S, ledger: &mut Ledger) {
    let last = ledger.last_transaction_id();
    let group = CommandKind::Atomic(vec![create("g1", "o9", 0), transfer("a", "g1", 5), transfer("g1", "b", 2)]);
    let refused = CommandKind::Atomic(vec![transfer("a", "b", 1), transfer("g1", "a", 1_000_000)]);
    let batch = batch(ledger, 90_000, vec![group, refused]);
    assert_eq!(batch.records[1].refused_leg, Some(1), "the second leg overdraws g1");
    store.commit(&batch).await.unwrap();
    let journal = store.journal(last, 10).await.unwrap();
    assert_eq!(journal.iter().map(|entry| entry.record).collect::<Vec<_>>(), batch.records, "records whole");
    assert_eq!(journal[0].events, batch.events, "one transaction holds every leg's events");
    assert_eq!(journal[0].events.len(), 5);
    let ids = [batch.records[0].command_id, batch.records[1].command_id];
    let mut found = store.command_records(&ids, Timestamp::ZERO).await.unwrap();
    found.sort_by_key(|record| record.transaction_id);
    assert_eq!(found, batch.records, "an idempotency lookup returns the refused leg too");
}

/// The searches: every filter alone, together, and pages through them.
async fn search<S: ProjectionStore>(store: &S, ledger: &mut Ledger) {
    let memo = |reference: Option<&str>, entries: &[(&str, &str)]| Memo {
        reference: reference.map(|text| Reference::parse(text).unwrap()),
        metadata: Metadata::parse(entries.iter().copied()).unwrap(),
        correlation_id: None,
    };
    let created = |id: &str, currency, initial| CommandKind::CreateWallet {
        wallet_id: wallet(id),
        owner_id: OwnerId::parse("o-search").unwrap(),
        currency,
        initial_balance: Amount::from_minor(initial).unwrap(),
        overdraft_limit: Amount::ZERO,
    };
    let described = |text: &str| Some(wallex_engine::Description::parse(text).unwrap());
    let money = |minor| Amount::from_minor(minor).unwrap();
    let commands = [
        (created("s1", Currency::USD, 50_000), memo(None, &[("tier", "gold")])),
        (created("s2", Currency::EUR, 0), memo(None, &[("tier", "silver")])),
        (created("s3", Currency::USD, 5_000), memo(Some("open-s3"), &[("tier", "gold")])),
        (
            CommandKind::Credit {
                wallet_id: wallet("s1"),
                currency: Currency::USD,
                amount: money(2_345),
                description: described("Coffee at Blue Bottle"),
            },
            memo(Some("r-1"), &[("channel", "web")]),
        ),
        (
            CommandKind::Debit {
                wallet_id: wallet("s3"),
                currency: Currency::USD,
                amount: money(1_000),
                description: described("ATM withdrawal"),
            },
            memo(None, &[]),
        ),
        (
            CommandKind::Transfer {
                source: wallet("s1"),
                destination: wallet("s3"),
                currency: Currency::USD,
                amount: money(10_000),
                description: described("Rent for March, 50% off_x"),
            },
            memo(None, &[("channel", "app")]),
        ),
    ];
    let mut events = Vec::new();
    for (offset, (kind, memo)) in (0u64..).zip(commands) {
        let command = Command { id: CommandId(20_000 + u128::from(offset)), kind, memo };
        let at = Timestamp::from_unix_micros(10_000_000 + offset * 1_000);
        assert!(ledger.execute(at, &command, &mut events).result().is_ok(), "{command:?}");
    }
    for projection in Projection::ALL {
        let verdicts = store.project(projection, &events).await.unwrap();
        assert!(verdicts.iter().all(|v| *v == Applied::Projected), "{projection:?}: {verdicts:?}");
    }

    let entries = |filter: EntryFilter, limit: usize| async move {
        let found = store.search_entries(&filter, limit).await.unwrap();
        found.iter().map(|e| format!("{}:{}", e.wallet_id, e.version)).collect::<Vec<_>>()
    };
    let of = |id: &str| EntryFilter { wallet_id: Some(wallet(id)), ..EntryFilter::default() };
    assert_eq!(entries(of("s1"), 10).await, ["s1:3", "s1:2", "s1:1"], "one wallet's, newest first");
    let page = store.search_entries(&of("s1"), 2).await.unwrap();
    let rest = EntryFilter { before: Some(EntryCursor::of(&page[1])), ..of("s1") };
    assert_eq!(entries(rest, 10).await, ["s1:1"], "the cursor continues after the page");
    let recent = EntryFilter { from: Some(Timestamp::from_unix_micros(10_000_000)), ..EntryFilter::default() };
    assert_eq!(
        entries(recent.clone(), 10).await,
        ["s3:3", "s1:3", "s3:2", "s1:2", "s3:1", "s1:1"],
        "by time, then transaction, then wallet (s2 opened empty: no entry)"
    );
    let window = EntryFilter { to: Some(Timestamp::from_unix_micros(10_003_000)), ..recent.clone() };
    assert_eq!(entries(window, 10).await, ["s3:1", "s1:1"], "to is exclusive");
    let debits = EntryFilter { entry_types: vec!["debited", "transfer_sent"], ..recent.clone() };
    assert_eq!(entries(debits, 10).await, ["s1:3", "s3:2"], "any of the types");
    let amounts = EntryFilter {
        currency: Some(Currency::USD),
        min_amount: Some(2_300),
        max_amount: Some(2_345),
        ..EntryFilter::default()
    };
    assert_eq!(entries(amounts, 10).await, ["s1:2"], "amount bounds are inclusive, in the currency");
    let eur = EntryFilter { currency: Some(Currency::EUR), min_amount: Some(0), ..EntryFilter::default() };
    assert!(entries(eur, 10).await.is_empty(), "no EUR entry");
    let referenced = EntryFilter { reference: Some(Reference::parse("r-1").unwrap()), ..EntryFilter::default() };
    assert_eq!(entries(referenced, 10).await, ["s1:2"]);
    let contains = |text: &str| EntryFilter { description: Some(text.to_owned()), ..EntryFilter::default() };
    assert_eq!(entries(contains("BLUE bot"), 10).await, ["s1:2"], "contains, whatever the case");
    assert_eq!(entries(contains("rent"), 10).await, ["s3:3", "s1:3"], "both legs carry the description");
    assert_eq!(entries(contains("50% off_x"), 10).await, ["s3:3", "s1:3"], "% and _ are plain characters");
    assert!(entries(contains("50%%"), 10).await.is_empty());
    assert!(entries(contains("\"ATM"), 10).await.is_empty(), "a quote is a plain character");
    let tagged = |key: &str, value: &str| EntryFilter {
        metadata: Some((key.to_owned(), value.to_owned())),
        ..EntryFilter::default()
    };
    assert_eq!(entries(tagged("channel", "app"), 10).await, ["s3:3", "s1:3"]);
    assert_eq!(entries(tagged("tier", "gold"), 10).await, ["s3:1", "s1:1"], "the creation's entries");
    assert!(entries(tagged("channel", "APP"), 10).await.is_empty(), "values match exactly");
    let together = EntryFilter { description: Some("rent".to_owned()), ..of("s3") };
    assert_eq!(entries(together, 10).await, ["s3:3"], "filters combine");

    let wallets = |filter: WalletFilter, limit: usize| async move {
        let found = store.search_wallets(&filter, limit).await.unwrap();
        found.iter().map(|w| w.wallet_id.to_string()).collect::<Vec<_>>()
    };
    let owned = WalletFilter { owner_id: Some(OwnerId::parse("o-search").unwrap()), ..WalletFilter::default() };
    assert_eq!(wallets(owned.clone(), 10).await, ["s1", "s2", "s3"], "by id");
    let s1 = store.wallet(&wallet("s1")).await.unwrap().unwrap();
    assert_eq!(s1.memo.metadata.get("tier"), Some("gold"), "the read model keeps the creation's memo");
    let gold = WalletFilter { metadata: Some(("tier".to_owned(), "gold".to_owned())), ..WalletFilter::default() };
    assert_eq!(wallets(gold, 10).await, ["s1", "s3"]);
    let usd = WalletFilter { currency: Some(Currency::USD), ..owned.clone() };
    assert_eq!(wallets(usd.clone(), 10).await, ["s1", "s3"]);
    let range = WalletFilter { min_balance: Some(14_000), max_balance: Some(14_000), ..usd.clone() };
    assert_eq!(wallets(range, 10).await, ["s3"], "balance bounds are inclusive");
    let richest = WalletFilter { order: WalletOrder::Balance, descending: true, ..usd.clone() };
    assert_eq!(wallets(richest.clone(), 10).await, ["s1", "s3"], "42,345 then 14,000");
    let first = store.search_wallets(&richest, 1).await.unwrap();
    let next = WalletFilter {
        after: Some(WalletCursor { key: first[0].balance, wallet_id: first[0].wallet_id }),
        ..richest.clone()
    };
    assert_eq!(wallets(next, 10).await, ["s3"], "the cursor continues in the sort order");
    let newest = WalletFilter { order: WalletOrder::CreatedAt, descending: true, ..owned.clone() };
    assert_eq!(wallets(newest, 10).await, ["s3", "s2", "s1"]);
    let created_window = WalletFilter {
        created_from: Some(Timestamp::from_unix_micros(10_001_000)),
        created_to: Some(Timestamp::from_unix_micros(10_002_000)),
        ..WalletFilter::default()
    };
    assert_eq!(wallets(created_window, 10).await, ["s2"], "from inclusive, to exclusive");
    let after_s1 = WalletFilter { after: Some(WalletCursor { key: 0, wallet_id: wallet("s1") }), ..owned };
    assert_eq!(wallets(after_s1, 10).await, ["s2", "s3"], "by id after a cursor");
}

/// The durable stores' `requeue_unprojected` (for a bus that does not outlive the process): on a
/// fresh `store`, everything published but not applied by both projections is waiting again after
/// `requeue`, in commit order, and nothing else is.
pub async fn requeue<S, F, Fut>(store: S, requeue: F)
where
    S: EventStore + ProjectionStore,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<u64, StoreError>>,
{
    let mut ledger = Ledger::new(Config::default());
    let first = batch(&mut ledger, 1, vec![create("a", "o1", 1_000), create("b", "o2", 0), transfer("a", "b", 250)]);
    store.commit(&first).await.unwrap();
    let last = first.outbox.last().unwrap().position;
    store.mark_published(last).await.unwrap();
    assert_eq!(requeue().await.unwrap(), first.outbox.len() as u64, "nothing projected: everything waits again");
    store.mark_published(last).await.unwrap();

    // The read model has everything, the ledger only the creations: the transfer's events wait.
    store.project(Projection::ReadModel, &first.events).await.unwrap();
    store.project(Projection::Ledger, &first.events[..2]).await.unwrap();
    assert_eq!(requeue().await.unwrap(), 2, "the transfer's two events wait again");
    assert_eq!(store.outbox_after(None, 10).await.unwrap(), first.outbox[2..].to_vec(), "in commit order");

    store.mark_published(last).await.unwrap();
    store.project(Projection::Ledger, &first.events[2..]).await.unwrap();
    assert_eq!(requeue().await.unwrap(), 0, "fully projected: nothing to requeue");
    assert!(store.outbox_after(None, 10).await.unwrap().is_empty(), "the outbox stays empty");
}

/// The key store: a key reads back whole, ids are unique, revocation is once.
pub async fn keys<S: KeyStore>(store: S) {
    assert!(store.api_keys().await.unwrap().is_empty(), "an empty store has no keys");
    let key = |id: &str, scopes: Vec<Scope>, owner: Option<&str>| ApiKey {
        id: id.to_owned(),
        name: owner.map(|owner| format!("{owner}'s key")),
        scopes,
        owner_id: owner.map(|owner| OwnerId::parse(owner).unwrap()),
        secret_hash: [u8::try_from(id.len()).unwrap(); 32],
        created_at: Timestamp::from_unix_micros(1_000),
        expires_at: owner.map(|_| Timestamp::from_unix_micros(9_000)),
        revoked_at: None,
        first_used_at: None,
    };
    let admin = key("k-admin", vec![Scope::Admin], None);
    let owned = key("k-owned", vec![Scope::Read, Scope::Write, Scope::Mint], Some("alice"));
    store.create_key(&owned).await.unwrap();
    store.create_key(&admin).await.unwrap();
    assert!(matches!(store.create_key(&admin).await, Err(StoreError::Refused(_))), "an id is unique");
    assert_eq!(store.api_key("k-owned").await.unwrap(), Some(owned.clone()), "a key reads back whole");
    assert_eq!(store.api_key("nope").await.unwrap(), None);
    assert_eq!(store.api_keys().await.unwrap(), vec![admin.clone(), owned.clone()], "every key, by id");
    let at = Timestamp::from_unix_micros(5_000);
    assert!(store.revoke_key("k-owned", at).await.unwrap(), "revoked");
    assert!(!store.revoke_key("k-owned", Timestamp::from_unix_micros(6_000)).await.unwrap(), "once");
    assert!(!store.revoke_key("nope", at).await.unwrap(), "no such key");
    let revoked = store.api_key("k-owned").await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(at), "the first revocation's time stays");
    assert_eq!(store.api_key("k-admin").await.unwrap().unwrap().revoked_at, None, "others are untouched");

    // A first use is recorded once, whoever asks again.
    let used = Timestamp::from_unix_micros(7_000);
    assert!(store.mark_key_used("k-admin", used).await.unwrap(), "the first use");
    assert!(!store.mark_key_used("k-admin", Timestamp::from_unix_micros(8_000)).await.unwrap(), "not twice");
    assert!(!store.mark_key_used("nope", used).await.unwrap(), "no such key");
    assert_eq!(store.api_key("k-admin").await.unwrap().unwrap().first_used_at, Some(used));

    // The audit trail pages newest first, by the ids the store gave.
    assert!(store.audit_records(None, 10).await.unwrap().is_empty(), "an empty trail");
    for n in 0..5u64 {
        let record = AuditRecord {
            id: 0,
            at: Timestamp::from_unix_micros(10_000 + n),
            actor: (n % 2 == 0).then(|| "k-admin".to_owned()),
            action: format!("action-{n}"),
            target: Some(format!("target-{n}")),
            request_id: (n == 3).then(|| "req-3".to_owned()),
            detail: None,
        };
        store.append_audit(&record).await.unwrap();
    }
    let all = store.audit_records(None, 10).await.unwrap();
    let actions: Vec<&str> = all.iter().map(|record| record.action.as_str()).collect();
    assert_eq!(actions, ["action-4", "action-3", "action-2", "action-1", "action-0"], "newest first");
    assert!(all.windows(2).all(|pair| pair[0].id > pair[1].id), "ids grow with appends");
    assert_eq!(all[1].request_id.as_deref(), Some("req-3"));
    assert_eq!(all[0].actor.as_deref(), Some("k-admin"));
    assert_eq!(all[1].actor, None);
    assert_eq!(all[4].at, Timestamp::from_unix_micros(10_000));
    let page = store.audit_records(Some(all[1].id), 2).await.unwrap();
    assert_eq!(page, all[2..4].to_vec(), "a page continues below its cursor");
    assert_eq!(store.audit_records(Some(u64::MAX), 10).await.unwrap(), all, "any cursor a client sends");
}
