//! `wallex-search`: the search benchmark. It fills a fresh PostgreSQL database (or an embedded
//! SQLite file) with a ledger of `--entries` entries (default 1,000,000) over `--wallets` wallets,
//! made by the engine and written by the projections exactly as the server writes them, then runs
//! every documented search filter `--queries` times with random arguments and prints each one's
//! latency percentiles (HDR histograms) and how many rows it found; `--plans FILE` also writes
//! each filter's query plan as Markdown (`docs/SEARCH.md`).
//!
//!   scripts/postgres start                      # prints DATABASE_URL=…
//!   cargo run --release -p wallex-benches --bin wallex-search -- --database-url "$DATABASE_URL"

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wallex_engine::{
    Amount, Command, CommandId, CommandKind, Config, Currency, Description, Event, Ledger, Memo, Metadata, OwnerId,
    Reference, Timestamp, WalletId,
};
use wallex_pipeline::ports::{EntryFilter, Projection, ProjectionStore, WalletFilter, WalletOrder};
use wallex_sql::{Dialect, SqlStore};

#[derive(Debug, Parser)]
#[command(name = "wallex-search", about = "Search benchmark for Wallex")]
struct Args {
    /// A PostgreSQL server URL (a fresh database is made on it, and dropped after); without it, an
    /// embedded SQLite file.
    #[arg(long)]
    database_url: Option<String>,
    /// Ledger entries to write.
    #[arg(long, default_value_t = 1_000_000)]
    entries: usize,
    /// Wallets (each one's opening balance is an entry too).
    #[arg(long, default_value_t = 100_000)]
    wallets: u64,
    /// Queries per filter.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Page size.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Writes each filter's plan here, as Markdown.
    #[arg(long)]
    plans: Option<std::path::PathBuf>,
}

const WORDS: [&str; 40] = [
    "rent",
    "coffee",
    "salary",
    "refund",
    "groceries",
    "fuel",
    "invoice",
    "gift",
    "taxi",
    "hotel",
    "flight",
    "lunch",
    "dinner",
    "books",
    "phone",
    "internet",
    "power",
    "water",
    "insurance",
    "gym",
    "cinema",
    "concert",
    "parking",
    "toll",
    "pharmacy",
    "doctor",
    "school",
    "tuition",
    "charity",
    "bonus",
    "dividend",
    "interest",
    "fee",
    "fine",
    "repair",
    "garden",
    "pet",
    "toys",
    "shoes",
    "bakery",
];
const CHANNELS: [&str; 3] = ["web", "app", "pos"];
const TIERS: [&str; 3] = ["gold", "silver", "iron"];
/// The first entry's time (2026-01-01T00:00:00Z); one transaction per millisecond after it.
const START_MICROS: u64 = 1_767_225_600_000_000;

fn wallet(n: u64) -> WalletId {
    WalletId::parse(&format!("wallet-{n}")).expect("a valid id")
}

/// What the corpus holds, for drawing query arguments that find something.
struct Corpus {
    transactions: u64,
    references: u64,
}

/// Writes the corpus through both projections, in commit order, a batch at a time.
async fn fill<D: Dialect>(store: &SqlStore<D>, args: &Args) -> anyhow::Result<Corpus> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut ledger = Ledger::new(Config::default());
    let mut events: Vec<Event> = Vec::new();
    let (mut entries, mut transactions, mut references) = (0usize, 0u64, 0u64);
    let started = Instant::now();
    let flush = async |events: &mut Vec<Event>, force: bool| -> anyhow::Result<()> {
        if events.len() >= 5_000 || (force && !events.is_empty()) {
            for projection in Projection::ALL {
                store.project(projection, events).await.context("projecting")?;
            }
            events.clear();
        }
        Ok(())
    };
    let mut next_id = 0u128;
    let mut execute = |ledger: &mut Ledger, kind: CommandKind, memo: Memo, events: &mut Vec<Event>, at: u64| {
        next_id += 1;
        let before = events.len();
        let outcome =
            ledger.execute(Timestamp::from_unix_micros(at), &Command { id: CommandId(next_id), kind, memo }, events);
        (outcome.result().is_ok(), events[before..].iter().filter(|event| event.posting.is_some()).count())
    };
    for n in 0..args.wallets {
        let memo = Memo {
            reference: None,
            metadata: Metadata::parse([("tier", TIERS[rng.random_range(0..3)])]).expect("valid"),
            correlation_id: None,
        };
        let kind = CommandKind::CreateWallet {
            wallet_id: wallet(n),
            owner_id: OwnerId::parse(&format!("owner-{}", n % (args.wallets / 10).max(1))).expect("valid"),
            currency: if n % 10 == 0 { Currency::EUR } else { Currency::USD },
            initial_balance: Amount::from_minor(rng.random_range(0..1_000_000)).expect("small"),
            overdraft_limit: Amount::ZERO,
        };
        transactions += 1;
        let (_, posted) = execute(&mut ledger, kind, memo, &mut events, START_MICROS + transactions * 1_000);
        entries += posted;
        flush(&mut events, false).await?;
    }
    while entries < args.entries {
        let source = rng.random_range(0..args.wallets);
        let currency = if source % 10 == 0 { Currency::EUR } else { Currency::USD };
        let amount = Amount::from_minor(rng.random_range(1..50_000)).expect("small");
        let text = format!("{} {} #{transactions}", WORDS[rng.random_range(0..40)], WORDS[rng.random_range(0..40)]);
        let description = Some(Description::parse(&text).expect("valid"));
        let kind = match rng.random_range(0..10) {
            0..4 => CommandKind::Credit { wallet_id: wallet(source), currency, amount, description },
            4..7 => CommandKind::Debit { wallet_id: wallet(source), currency, amount, description },
            _ => {
                // Same currency: wallets 10 apart.
                let destination = (source + 10 * rng.random_range(1..args.wallets / 10)) % args.wallets;
                CommandKind::Transfer {
                    source: wallet(source),
                    destination: wallet(destination),
                    currency,
                    amount,
                    description,
                }
            }
        };
        let referenced = rng.random_bool(0.2);
        let memo = Memo {
            reference: referenced.then(|| Reference::parse(&format!("ref-{references}")).expect("valid")),
            metadata: Metadata::parse([
                ("order", transactions.to_string().as_str()),
                ("channel", CHANNELS[rng.random_range(0..3)]),
            ])
            .expect("valid"),
            correlation_id: None,
        };
        transactions += 1;
        let (accepted, posted) = execute(&mut ledger, kind, memo, &mut events, START_MICROS + transactions * 1_000);
        if accepted && referenced {
            references += 1;
        }
        entries += posted;
        flush(&mut events, false).await?;
    }
    flush(&mut events, true).await?;
    let elapsed = started.elapsed();
    println!(
        "filled {entries} entries over {} wallets ({transactions} transactions) in {:.1} s ({:.0} entries/s)",
        args.wallets,
        elapsed.as_secs_f64(),
        entries as f64 / elapsed.as_secs_f64()
    );
    Ok(Corpus { transactions, references })
}

/// A documented filter and how to draw its arguments.
enum Search {
    Entries(&'static str, Box<dyn Fn(&mut StdRng) -> EntryFilter>),
    Wallets(&'static str, Box<dyn Fn(&mut StdRng) -> WalletFilter>),
}

fn searches(corpus: &Corpus, wallets: u64) -> Vec<Search> {
    let (transactions, references) = (corpus.transactions, corpus.references.max(1));
    let time = move |rng: &mut StdRng| START_MICROS + rng.random_range(0..transactions) * 1_000;
    vec![
        Search::Entries("newest first", Box::new(|_| EntryFilter::default())),
        Search::Entries(
            "walletId",
            Box::new(move |rng| EntryFilter {
                wallet_id: Some(wallet(rng.random_range(0..wallets))),
                ..EntryFilter::default()
            }),
        ),
        Search::Entries(
            "transactionType",
            Box::new(|rng| {
                let types =
                    [&["debited"][..], &["wallet_created", "credited"], &["transfer_sent"], &["transfer_received"]];
                EntryFilter { entry_types: types[rng.random_range(0..4)].to_vec(), ..EntryFilter::default() }
            }),
        ),
        Search::Entries(
            "date range (1 hour)",
            Box::new(move |rng| {
                let from = time(rng);
                EntryFilter {
                    from: Some(Timestamp::from_unix_micros(from)),
                    to: Some(Timestamp::from_unix_micros(from + 3_600_000_000)),
                    ..EntryFilter::default()
                }
            }),
        ),
        Search::Entries(
            "amount range (1.00 wide)",
            Box::new(|rng| {
                let min = rng.random_range(0..49_900);
                EntryFilter {
                    currency: Some(Currency::USD),
                    min_amount: Some(min),
                    max_amount: Some(min + 100),
                    ..EntryFilter::default()
                }
            }),
        ),
        Search::Entries(
            "amount range (half of all)",
            Box::new(|_| EntryFilter {
                currency: Some(Currency::USD),
                min_amount: Some(25_000),
                max_amount: Some(1_000_000),
                ..EntryFilter::default()
            }),
        ),
        Search::Entries(
            "referenceId",
            Box::new(move |rng| EntryFilter {
                reference: Some(Reference::parse(&format!("ref-{}", rng.random_range(0..references))).expect("valid")),
                ..EntryFilter::default()
            }),
        ),
        Search::Entries(
            "description (a rare text)",
            Box::new(move |rng| EntryFilter {
                description: Some(format!("#{}", rng.random_range(wallets..transactions))),
                ..EntryFilter::default()
            }),
        ),
        Search::Entries(
            "description (a common word)",
            Box::new(|rng| EntryFilter {
                description: Some(WORDS[rng.random_range(0..40)].to_owned()),
                ..EntryFilter::default()
            }),
        ),
        Search::Entries(
            "metadata (a rare value)",
            Box::new(move |rng| EntryFilter {
                metadata: Some(("order".to_owned(), rng.random_range(wallets..transactions).to_string())),
                ..EntryFilter::default()
            }),
        ),
        Search::Entries(
            "metadata (a common value)",
            Box::new(|rng| EntryFilter {
                metadata: Some(("channel".to_owned(), CHANNELS[rng.random_range(0..3)].to_owned())),
                ..EntryFilter::default()
            }),
        ),
        Search::Entries(
            "walletId + description",
            Box::new(move |rng| EntryFilter {
                wallet_id: Some(wallet(rng.random_range(0..wallets))),
                description: Some(WORDS[rng.random_range(0..40)].to_owned()),
                ..EntryFilter::default()
            }),
        ),
        Search::Wallets("wallets by id", Box::new(|_| WalletFilter::default())),
        Search::Wallets(
            "wallets: ownerId",
            Box::new(move |rng| WalletFilter {
                owner_id: Some(
                    OwnerId::parse(&format!("owner-{}", rng.random_range(0..(wallets / 10).max(1)))).expect("valid"),
                ),
                ..WalletFilter::default()
            }),
        ),
        Search::Wallets(
            "wallets: currency",
            Box::new(|_| WalletFilter { currency: Some(Currency::EUR), ..WalletFilter::default() }),
        ),
        Search::Wallets(
            "wallets: balance range, by balance desc",
            Box::new(|rng| {
                let min = rng.random_range(0..900_000);
                WalletFilter {
                    currency: Some(Currency::USD),
                    min_balance: Some(min),
                    max_balance: Some(min + 10_000),
                    order: WalletOrder::Balance,
                    descending: true,
                    ..WalletFilter::default()
                }
            }),
        ),
        Search::Wallets(
            "wallets: created range, newest first",
            Box::new(move |rng| {
                let from = START_MICROS + rng.random_range(0..wallets) * 1_000;
                WalletFilter {
                    created_from: Some(Timestamp::from_unix_micros(from)),
                    created_to: Some(Timestamp::from_unix_micros(from + 60_000_000)),
                    order: WalletOrder::CreatedAt,
                    descending: true,
                    ..WalletFilter::default()
                }
            }),
        ),
        Search::Wallets(
            "wallets: metadata",
            Box::new(|rng| WalletFilter {
                metadata: Some(("tier".to_owned(), TIERS[rng.random_range(0..3)].to_owned())),
                ..WalletFilter::default()
            }),
        ),
    ]
}

async fn measure<D: Dialect>(store: &SqlStore<D>, args: &Args, corpus: &Corpus) -> anyhow::Result<String> {
    let mut rng = StdRng::seed_from_u64(args.seed + 1);
    let mut plans = String::new();
    println!("{:<40} {:>9} {:>9} {:>9} {:>9}", "filter", "p50 ms", "p99 ms", "max ms", "rows");
    for search in searches(corpus, args.wallets) {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        let mut rows = 0usize;
        let (name, plan) = match &search {
            Search::Entries(name, draw) => (*name, store.explain_entries(&draw(&mut rng), args.limit).await?),
            Search::Wallets(name, draw) => (*name, store.explain_wallets(&draw(&mut rng), args.limit).await?),
        };
        for _ in 0..args.queries {
            let started = Instant::now();
            rows += match &search {
                Search::Entries(_, draw) => store.search_entries(&draw(&mut rng), args.limit).await?.len(),
                Search::Wallets(_, draw) => store.search_wallets(&draw(&mut rng), args.limit).await?.len(),
            };
            histogram.saturating_record(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX).max(1));
        }
        let ms = |quantile: f64| Duration::from_micros(histogram.value_at_quantile(quantile)).as_secs_f64() * 1e3;
        println!(
            "{name:<40} {:>9.2} {:>9.2} {:>9.2} {:>9.1}",
            ms(0.5),
            ms(0.99),
            Duration::from_micros(histogram.max()).as_secs_f64() * 1e3,
            rows as f64 / args.queries as f64
        );
        plans.push_str(&format!(
            "### {name}\n\np50 {:.2} ms, p99 {:.2} ms, {:.1} rows per page\n\n```\n{}\n```\n\n",
            ms(0.5),
            ms(0.99),
            rows as f64 / args.queries as f64,
            plan.join("\n")
        ));
    }
    Ok(plans)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let plans = match &args.database_url {
        Some(url) => {
            let name = format!("wallex_search_{}", uuid::Uuid::new_v4().simple());
            let admin = sqlx::PgPool::connect(url).await.context("connecting to PostgreSQL")?;
            // The name is ours (a UUID): safe to splice.
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await?;
            let (base, _) = url.rsplit_once('/').context("a database URL")?;
            let database = format!("{base}/{name}");
            let store = wallex_sql::PostgresStore::connect(&database).await?;
            let corpus = fill(&store, &args).await?;
            let analyze = sqlx::PgPool::connect(&database).await?;
            sqlx::query("VACUUM ANALYZE").execute(&analyze).await?;
            analyze.close().await;
            let plans = measure(&store, &args, &corpus).await?;
            store.close().await;
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)"))).execute(&admin).await?;
            plans
        }
        None => {
            let directory = std::env::temp_dir().join(format!("wallex-search-{}", uuid::Uuid::new_v4().simple()));
            let store = wallex_sql::SqliteStore::open(&directory).await?;
            let corpus = fill(&store, &args).await?;
            let plans = measure(&store, &args, &corpus).await?;
            store.close().await;
            std::fs::remove_dir_all(&directory)?;
            plans
        }
    };
    if let Some(path) = &args.plans {
        std::fs::write(path, plans).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
