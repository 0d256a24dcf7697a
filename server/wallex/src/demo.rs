//! A guided tour of the engine: the commands a wallet service runs, with what each one decided.

use std::fmt::Write as _;

use wallex_engine::{
    Amount, Command, CommandId, CommandKind, Currency, Description, Event, HoldId, Ledger, Outcome, OwnerId, Timestamp,
    WalletId,
};

/// Runs the tour and returns its transcript, one line per command and event, ending with the final
/// balances and the conservation check.
pub fn run() -> anyhow::Result<String> {
    let mut tour = Tour { ledger: Ledger::new(Default::default()), transcript: String::new(), next_id: 1, now: 0 };
    let usd = Currency::USD;
    let alice = WalletId::parse("alice")?;
    let bob = WalletId::parse("bob")?;
    let amount = |text: &str| Amount::parse(text, usd);

    tour.run(CommandKind::CreateWallet {
        wallet_id: alice,
        owner_id: OwnerId::parse("user-1")?,
        currency: usd,
        initial_balance: amount("100.00")?,
        overdraft_limit: Amount::ZERO,
    })?;
    tour.run(CommandKind::CreateWallet {
        wallet_id: bob,
        owner_id: OwnerId::parse("user-2")?,
        currency: usd,
        initial_balance: Amount::ZERO,
        overdraft_limit: Amount::ZERO,
    })?;
    tour.run(CommandKind::Credit {
        wallet_id: alice,
        currency: usd,
        amount: amount("50")?,
        description: Some(Description::parse("Deposit from bank")?),
    })?;
    let transfer = CommandKind::Transfer {
        source: alice,
        destination: bob,
        currency: usd,
        amount: amount("25.50")?,
        description: Some(Description::parse("Payment")?),
    };
    let transfer_id = tour.run(transfer.clone())?;
    tour.note("the client times out and retries the transfer with the same idempotency key:");
    tour.run_as(transfer_id, transfer)?;
    tour.run(CommandKind::Debit { wallet_id: bob, currency: usd, amount: amount("20")?, description: None })?;
    let hold = HoldId::parse("hold-1")?;
    tour.run(CommandKind::PlaceHold {
        hold_id: hold,
        wallet_id: alice,
        currency: usd,
        amount: amount("40")?,
        expires_at: Some(Timestamp::from_unix_micros(3_600_000_000)),
        description: Some(Description::parse("Hotel deposit")?),
    })?;
    tour.run(CommandKind::Debit { wallet_id: alice, currency: usd, amount: amount("90")?, description: None })?;
    tour.run(CommandKind::CaptureHold {
        hold_id: hold,
        amount: Some(amount("35")?),
        destination: Some(bob),
        description: None,
    })?;

    let transcript = &mut tour.transcript;
    writeln!(transcript, "final balances:")?;
    for wallet in tour.ledger.wallets() {
        let balance = wallet.currency.format_minor(i128::from(wallet.balance));
        writeln!(transcript, "  {:<6} {balance} {} (version {})", wallet.id, wallet.currency, wallet.version)?;
    }
    let world = tour.ledger.world_balance(usd);
    writeln!(transcript, "  @world:USD {}  (every currency sums to zero)", usd.format_minor(world))?;
    tour.ledger.check_invariants()?;
    Ok(tour.transcript)
}

struct Tour {
    ledger: Ledger,
    transcript: String,
    next_id: u128,
    now: u64,
}

impl Tour {
    fn run(&mut self, kind: CommandKind) -> anyhow::Result<CommandId> {
        let id = CommandId(self.next_id);
        self.next_id += 1;
        self.run_as(id, kind)?;
        Ok(id)
    }

    fn run_as(&mut self, id: CommandId, kind: CommandKind) -> anyhow::Result<()> {
        self.now += 1_000;
        let mut events = Vec::new();
        let name = kind.name();
        let outcome = self.ledger.execute(Timestamp::from_unix_micros(self.now), &Command::new(id, kind), &mut events);
        let verdict = match outcome {
            Outcome::Recorded(record) => match record.result {
                Ok(()) => format!("accepted as transaction {}", record.transaction_id),
                Err(rejection) => format!("rejected: {rejection}"),
            },
            Outcome::Duplicate(record) => format!("duplicate: original outcome {:?}, no new effect", record.outcome()),
            Outcome::KeyReused { .. } => "rejected: idempotency_key_reused".to_owned(),
        };
        writeln!(self.transcript, "{name} -> {verdict}")?;
        for event in &events {
            writeln!(self.transcript, "    {}", describe(event))?;
        }
        Ok(())
    }

    fn note(&mut self, text: &str) {
        self.transcript.push_str(text);
        self.transcript.push('\n');
    }
}

fn describe(event: &Event) -> String {
    let money = |minor: i128| event.currency.format_minor(minor);
    let posting = event.posting.map_or(String::new(), |posting| {
        format!(" [{} -> {} {}]", posting.source, posting.destination, posting.amount.format(posting.currency))
    });
    format!(
        "{} v{} {}{posting} balance {} held {}",
        event.wallet_id,
        event.version,
        event.kind.name(),
        money(i128::from(event.balance_after)),
        money(i128::from(event.held_after)),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tour_moves_money_exactly_and_conserves_it() {
        let transcript = super::run().unwrap();
        assert!(transcript.contains("duplicate: original outcome Ok(TransactionId(4))"), "{transcript}");
        assert!(
            transcript.contains("debit -> rejected: insufficient_funds"),
            "the hold blocks the debit: {transcript}"
        );
        assert!(transcript.contains("alice  89.50 USD"), "{transcript}");
        assert!(transcript.contains("bob    40.50 USD"), "{transcript}");
        assert!(transcript.contains("@world:USD -130.00"), "{transcript}");
    }
}
