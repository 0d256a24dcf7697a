//! Every documented search filter is index-backed on both SQL stores: the query plan of each,
//! alone, reads the ledger entries and the wallets through an index, never by scanning the table
//! (on PostgreSQL with sequential scans priced out, so a plan that still scans has no index to use).
//! `benches/src/bin/wallex-search.rs` measures them on a million entries; `docs/SEARCH.md` shows
//! the plans.

use wallex_engine::{
    Amount, Command, CommandId, CommandKind, Config, Currency, Description, Ledger, Memo, Metadata, OwnerId, Reference,
    Timestamp, WalletId,
};
use wallex_pipeline::ports::{EntryFilter, Projection, ProjectionStore, WalletFilter, WalletOrder};
use wallex_sql::{Dialect, SqlStore};
use wallex_testkit::services as support;

/// A few hundred wallets and a few thousand entries with references, metadata and descriptions.
fn corpus() -> Vec<wallex_engine::Event> {
    let mut ledger = Ledger::new(Config::default());
    let mut events = Vec::new();
    let wallet = |n: u64| WalletId::parse(&format!("w{n}")).unwrap();
    let mut state = 7u64;
    let mut next = move |bound: u64| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % bound
    };
    let words = ["rent", "coffee", "salary", "refund", "groceries", "fuel", "invoice", "gift"];
    for n in 0..300u64 {
        let memo = Memo {
            reference: None,
            metadata: Metadata::parse([("tier", ["gold", "silver", "iron"][usize::try_from(n % 3).unwrap()])]).unwrap(),
            correlation_id: None,
        };
        let kind = CommandKind::CreateWallet {
            wallet_id: wallet(n),
            owner_id: OwnerId::parse(&format!("owner-{}", n % 50)).unwrap(),
            currency: if n % 10 == 0 { Currency::EUR } else { Currency::USD },
            initial_balance: Amount::from_minor(100_000).unwrap(),
            overdraft_limit: Amount::ZERO,
        };
        let command = Command { id: CommandId(u128::from(n) + 1), kind, memo };
        ledger.execute(Timestamp::from_unix_micros(1_000 + n), &command, &mut events);
    }
    for n in 0..4_000u64 {
        let (source, amount) = (wallet(next(300)), Amount::from_minor(1 + next(5_000)).unwrap());
        let description =
            Some(Description::parse(&format!("{} {}", words[usize::try_from(next(8)).unwrap()], n)).unwrap());
        let kind = match next(3) {
            0 => CommandKind::Credit { wallet_id: source, currency: Currency::USD, amount, description },
            1 => CommandKind::Debit { wallet_id: source, currency: Currency::USD, amount, description },
            _ => CommandKind::Transfer {
                source,
                destination: wallet(next(300)),
                currency: Currency::USD,
                amount,
                description,
            },
        };
        let memo = Memo {
            reference: (n % 4 == 0).then(|| Reference::parse(&format!("ref-{n}")).unwrap()),
            metadata: Metadata::parse([
                ("order", n.to_string().as_str()),
                ("parity", ["even", "odd"][usize::try_from(n % 2).unwrap()]),
            ])
            .unwrap(),
            correlation_id: None,
        };
        let command = Command { id: CommandId(10_000 + u128::from(n)), kind, memo };
        ledger.execute(Timestamp::from_unix_micros(1_000_000 + n * 1_000), &command, &mut events);
    }
    events
}

fn entry_filters() -> Vec<(&'static str, EntryFilter)> {
    let at = |micros| Some(Timestamp::from_unix_micros(micros));
    vec![
        ("newest first", EntryFilter::default()),
        ("walletId", EntryFilter { wallet_id: Some(WalletId::parse("w7").unwrap()), ..EntryFilter::default() }),
        ("transactionType", EntryFilter { entry_types: vec!["debited"], ..EntryFilter::default() }),
        ("date range", EntryFilter { from: at(2_000_000), to: at(2_100_000), ..EntryFilter::default() }),
        (
            "amount range",
            EntryFilter {
                currency: Some(Currency::USD),
                min_amount: Some(100),
                max_amount: Some(120),
                ..EntryFilter::default()
            },
        ),
        ("referenceId", EntryFilter { reference: Some(Reference::parse("ref-40").unwrap()), ..EntryFilter::default() }),
        ("description", EntryFilter { description: Some("groceries 12".to_owned()), ..EntryFilter::default() }),
        ("metadata", EntryFilter { metadata: Some(("order".to_owned(), "77".to_owned())), ..EntryFilter::default() }),
    ]
}

fn wallet_filters() -> Vec<(&'static str, WalletFilter)> {
    vec![
        ("by id", WalletFilter::default()),
        ("ownerId", WalletFilter { owner_id: Some(OwnerId::parse("owner-3").unwrap()), ..WalletFilter::default() }),
        ("currency", WalletFilter { currency: Some(Currency::EUR), ..WalletFilter::default() }),
        (
            "balance range, by balance",
            WalletFilter {
                currency: Some(Currency::USD),
                min_balance: Some(90_000),
                max_balance: Some(95_000),
                order: WalletOrder::Balance,
                ..WalletFilter::default()
            },
        ),
        (
            "created range, newest first",
            WalletFilter {
                created_from: Some(Timestamp::from_unix_micros(1_100)),
                created_to: Some(Timestamp::from_unix_micros(1_150)),
                order: WalletOrder::CreatedAt,
                descending: true,
                ..WalletFilter::default()
            },
        ),
        (
            "metadata",
            WalletFilter { metadata: Some(("tier".to_owned(), "gold".to_owned())), ..WalletFilter::default() },
        ),
    ]
}

/// The first page of `filter`'s entries, newest first, from the events alone (no store code).
fn expected(events: &[wallex_engine::Event], filter: &EntryFilter) -> Vec<String> {
    let mut found: Vec<&wallex_engine::Event> = events
        .iter()
        .filter(|event| event.posting.is_some())
        .filter(|event| {
            let amount = event.posting.map_or(0, |posting| posting.amount.minor());
            let text = event.description.as_ref().map_or(String::new(), |d| d.as_str().to_lowercase());
            filter.wallet_id.is_none_or(|wallet| event.wallet_id == wallet)
                && filter
                    .metadata
                    .as_ref()
                    .is_none_or(|(key, value)| event.memo.metadata.get(key) == Some(value.as_str()))
                && filter.description.as_ref().is_none_or(|needle| text.contains(&needle.to_lowercase()))
                && filter.currency.is_none_or(|currency| event.currency == currency)
                && filter.min_amount.is_none_or(|min| amount >= min)
                && filter.max_amount.is_none_or(|max| amount <= max)
        })
        .collect();
    found.sort_by_key(|event| std::cmp::Reverse((event.at, event.transaction_id, event.wallet_id)));
    found.iter().take(50).map(|event| format!("{}:{}", event.wallet_id, event.version)).collect()
}

/// Projects the corpus, then checks every filter's plan with `scans` (true: the plan scans a
/// table whole) and that every filter finds something; common and rare filters find exactly
/// the entries they must, whichever way the store runs them.
async fn check<D: Dialect>(store: &SqlStore<D>, scans: impl Fn(&str) -> bool) {
    let events = corpus();
    for chunk in events.chunks(2_000) {
        for projection in Projection::ALL {
            store.project(projection, chunk).await.unwrap();
        }
    }
    for (name, filter) in entry_filters() {
        let plan = store.explain_entries(&filter, 50).await.unwrap();
        assert!(!plan.iter().any(|line| scans(line)), "ledger search by {name} scans the table:\n{}", plan.join("\n"));
        assert!(!store.search_entries(&filter, 50).await.unwrap().is_empty(), "{name} finds nothing");
    }
    let tagged = |key: &str, value: &str| EntryFilter {
        metadata: Some((key.to_owned(), value.to_owned())),
        ..EntryFilter::default()
    };
    let worded = |text: &str| EntryFilter { description: Some(text.to_owned()), ..EntryFilter::default() };
    let priced = |min, max| EntryFilter {
        currency: Some(Currency::USD),
        min_amount: Some(min),
        max_amount: Some(max),
        ..EntryFilter::default()
    };
    for filter in [
        tagged("parity", "even"),
        tagged("order", "1234"),
        worded("RENT"),
        worded("groceries 12"),
        priced(0, 5_000),
        priced(100, 101),
        EntryFilter { wallet_id: Some(WalletId::parse("w7").unwrap()), ..worded("rent") },
        EntryFilter { wallet_id: Some(WalletId::parse("w8").unwrap()), ..tagged("parity", "odd") },
    ] {
        let found = store.search_entries(&filter, 50).await.unwrap();
        let found: Vec<String> = found.iter().map(|e| format!("{}:{}", e.wallet_id, e.version)).collect();
        assert_eq!(found, expected(&events, &filter), "{filter:?}");
    }
    for (name, filter) in wallet_filters() {
        let plan = store.explain_wallets(&filter, 50).await.unwrap();
        assert!(!plan.iter().any(|line| scans(line)), "wallet search by {name} scans the table:\n{}", plan.join("\n"));
        assert!(!store.search_wallets(&filter, 50).await.unwrap().is_empty(), "{name} finds nothing");
    }
}

#[tokio::test]
async fn every_search_filter_is_index_backed_on_postgres() {
    let database = support::postgres().await;
    // Sequential scans priced out: a plan that still has one has no index to use.
    let url = format!("{}?options=-c%20enable_seqscan%3Doff", database.url);
    let store = wallex_sql::PostgresStore::connect(&url).await.unwrap();
    check(&store, |line| line.contains("Seq Scan on ledger_entries") || line.contains("Seq Scan on wallets")).await;
    store.close().await;
}

#[tokio::test]
async fn every_search_filter_is_index_backed_on_sqlite() {
    let directory = std::env::temp_dir().join(format!("wallex-plans-{}", uuid::Uuid::new_v4()));
    let store = wallex_sql::SqliteStore::open(&directory).await.unwrap();
    // `SCAN e` alone is the whole table; `SCAN e USING INDEX …` walks an index in order.
    check(&store, |line| line.trim() == "SCAN e" || line.trim() == "SCAN w").await;
    store.close().await;
    std::fs::remove_dir_all(&directory).unwrap();
}
