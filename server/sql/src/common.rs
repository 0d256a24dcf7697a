//! What the SQL stores (SQLite and PostgreSQL) share: integer and error conversions, and turning
//! stored columns back into domain values. Both schemas store the same columns with the same
//! meaning; only the SQL dialect differs.
//!
//! The row types are `pub` only because the dialects' hooks return them; this module is private.

use wallex_engine::{
    CommandId, CommandRecord, CorrelationId, Currency, Fingerprint, Memo, Metadata, OwnerId, Reference, Rejection,
    Timestamp, TransactionId, WalletId,
};

use wallex_pipeline::ports::{
    ApiKey, AuditRecord, Direction, Epoch, Lease, LedgerEntry, OutboxMessage, OutboxPosition, Scope, StoreError,
    WalletSummary, WalletView,
};

/// A driver error as the pipeline sees it: a unique violation means the store refused the write
/// (nothing was written); anything else means the outcome is unknown.
pub(crate) fn store_error(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(database) if database.is_unique_violation() => StoreError::Refused(error.to_string()),
        _ => StoreError::Unavailable(error.to_string()),
    }
}

pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("stored data does not decode: {what}"))
}

/// u64 values (ids, versions, times, amounts) are stored as i64; all of them fit.
pub(crate) fn int(value: u64) -> i64 {
    i64::try_from(value).expect("stored integers fit in i64")
}

/// A bound of a query (a version or position a caller names, not a value being stored): past the
/// largest stored integer it bounds nothing, so it saturates rather than fails.
pub(crate) fn bound(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn uint(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(corrupt)
}

pub(crate) fn id_bytes(id: u128) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

fn id_from(bytes: Vec<u8>, what: &str) -> Result<u128, StoreError> {
    Ok(u128::from_be_bytes(bytes.try_into().map_err(|_| corrupt(what))?))
}

/// A stored `commands` row.
#[derive(Debug, sqlx::FromRow)]
pub struct RecordRow {
    pub transaction_id: i64,
    pub command_id: Vec<u8>,
    pub fingerprint: Vec<u8>,
    pub at: i64,
    pub rejection: Option<String>,
    pub refused_leg: Option<i32>,
}

impl RecordRow {
    pub(crate) fn into_record(self) -> Result<CommandRecord, StoreError> {
        let result = match self.rejection {
            None => Ok(()),
            Some(code) => Err(Rejection::from_code(&code).ok_or_else(|| corrupt(format!("rejection {code}")))?),
        };
        Ok(CommandRecord {
            command_id: CommandId(id_from(self.command_id, "command id")?),
            fingerprint: Fingerprint(id_from(self.fingerprint, "fingerprint")?),
            at: Timestamp::from_unix_micros(uint(self.at)?),
            transaction_id: TransactionId(uint(self.transaction_id)?),
            result,
            refused_leg: self
                .refused_leg
                .map(|leg| u16::try_from(leg).map_err(|_| corrupt(format!("refused leg {leg}"))))
                .transpose()?,
        })
    }
}

/// A stored `wallets` row.
#[derive(Debug, sqlx::FromRow)]
pub struct WalletRow {
    pub wallet_id: String,
    pub owner_id: String,
    pub currency: String,
    pub balance: i64,
    pub held: i64,
    pub overdraft_limit: i64,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub reference_id: Option<String>,
    pub metadata: Option<String>,
    pub correlation_id: Option<String>,
}

/// A memo from its stored columns.
fn stored_memo(
    reference_id: Option<&str>,
    metadata: Option<&str>,
    correlation_id: Option<&str>,
) -> Result<Memo, StoreError> {
    Ok(Memo {
        reference: reference_id.map(Reference::parse).transpose().map_err(corrupt)?,
        metadata: match metadata {
            Some(text) => serde_json::from_str(text).map_err(|error| corrupt(format!("metadata: {error}")))?,
            None => Metadata::default(),
        },
        correlation_id: correlation_id.map(CorrelationId::parse).transpose().map_err(corrupt)?,
    })
}

impl WalletRow {
    pub(crate) fn into_view(self) -> Result<WalletView, StoreError> {
        Ok(WalletView {
            wallet_id: WalletId::parse(&self.wallet_id).map_err(corrupt)?,
            owner_id: OwnerId::parse(&self.owner_id).map_err(corrupt)?,
            currency: Currency::parse(&self.currency).map_err(corrupt)?,
            balance: self.balance,
            held: uint(self.held)?,
            overdraft_limit: uint(self.overdraft_limit)?,
            version: uint(self.version)?,
            created_at: Timestamp::from_unix_micros(uint(self.created_at)?),
            updated_at: Timestamp::from_unix_micros(uint(self.updated_at)?),
            memo: stored_memo(self.reference_id.as_deref(), self.metadata.as_deref(), self.correlation_id.as_deref())?,
        })
    }
}

/// A stored `ledger_entries` row.
#[derive(Debug, sqlx::FromRow)]
pub struct EntryRow {
    pub wallet_id: String,
    pub version: i64,
    pub transaction_id: i64,
    pub entry_type: String,
    pub direction: String,
    pub amount: i64,
    pub balance_after: i64,
    pub currency: String,
    pub counterparty: String,
    pub description: Option<String>,
    pub at: i64,
    pub reference_id: Option<String>,
    pub metadata: Option<String>,
    pub correlation_id: Option<String>,
}

/// A memo's metadata as stored: a JSON object of strings, or NULL when there is none.
pub(crate) fn metadata_text(memo: &Memo) -> Option<String> {
    (!memo.metadata.is_empty()).then(|| serde_json::to_string(&memo.metadata).expect("metadata serializes"))
}

/// A stored `api_keys` row.
#[derive(Debug, sqlx::FromRow)]
pub struct KeyRow {
    pub key_id: String,
    pub name: Option<String>,
    pub scopes: String,
    pub owner_id: Option<String>,
    pub secret_hash: Vec<u8>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub first_used_at: Option<i64>,
}

impl KeyRow {
    pub(crate) fn into_key(self) -> Result<ApiKey, StoreError> {
        let time = |micros: i64| uint(micros).map(Timestamp::from_unix_micros);
        Ok(ApiKey {
            id: self.key_id,
            name: self.name,
            scopes: scopes_from(&self.scopes)?,
            owner_id: self.owner_id.as_deref().map(OwnerId::parse).transpose().map_err(corrupt)?,
            secret_hash: self.secret_hash.try_into().map_err(|_| corrupt("a secret hash is 32 bytes"))?,
            created_at: time(self.created_at)?,
            expires_at: self.expires_at.map(time).transpose()?,
            revoked_at: self.revoked_at.map(time).transpose()?,
            first_used_at: self.first_used_at.map(time).transpose()?,
        })
    }
}

/// A stored `audit_log` row.
#[derive(Debug, sqlx::FromRow)]
pub struct AuditRow {
    pub audit_id: i64,
    pub at: i64,
    pub actor: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub request_id: Option<String>,
    pub detail: Option<String>,
}

impl AuditRow {
    pub(crate) fn into_record(self) -> Result<AuditRecord, StoreError> {
        Ok(AuditRecord {
            id: uint(self.audit_id)?,
            at: Timestamp::from_unix_micros(uint(self.at)?),
            actor: self.actor,
            action: self.action,
            target: self.target,
            request_id: self.request_id,
            detail: self.detail,
        })
    }
}

/// Scopes as stored: their names, comma-separated.
pub(crate) fn scopes_text(scopes: &[Scope]) -> String {
    Scope::list(scopes)
}

fn scopes_from(text: &str) -> Result<Vec<Scope>, StoreError> {
    text.split(',')
        .filter(|name| !name.is_empty())
        .map(|name| Scope::parse(name).ok_or_else(|| corrupt(format!("scope {name}"))))
        .collect()
}

/// A stored `wallet_summaries` row.
#[derive(Debug, sqlx::FromRow)]
pub struct SummaryRow {
    pub wallet_id: String,
    pub currency: String,
    pub total_credits: i64,
    pub total_debits: i64,
    pub transaction_count: i64,
    pub last_version: i64,
}

impl SummaryRow {
    pub(crate) fn into_summary(self) -> Result<WalletSummary, StoreError> {
        Ok(WalletSummary {
            wallet_id: WalletId::parse(&self.wallet_id).map_err(corrupt)?,
            currency: Currency::parse(&self.currency).map_err(corrupt)?,
            total_credits: uint(self.total_credits)?,
            total_debits: uint(self.total_debits)?,
            transaction_count: uint(self.transaction_count)?,
            last_version: uint(self.last_version)?,
        })
    }
}

impl EntryRow {
    pub(crate) fn into_entry(self) -> Result<LedgerEntry, StoreError> {
        Ok(LedgerEntry {
            wallet_id: WalletId::parse(&self.wallet_id).map_err(corrupt)?,
            transaction_id: TransactionId(uint(self.transaction_id)?),
            version: uint(self.version)?,
            entry_type: self.entry_type,
            direction: match self.direction.as_str() {
                "credit" => Direction::Credit,
                "debit" => Direction::Debit,
                other => return Err(corrupt(format!("direction {other}"))),
            },
            amount: uint(self.amount)?,
            balance_after: self.balance_after,
            currency: Currency::parse(&self.currency).map_err(corrupt)?,
            counterparty: self.counterparty,
            description: self.description,
            at: Timestamp::from_unix_micros(uint(self.at)?),
            memo: Memo {
                reference: self.reference_id.as_deref().map(Reference::parse).transpose().map_err(corrupt)?,
                metadata: match self.metadata.as_deref() {
                    Some(text) => serde_json::from_str(text).map_err(|error| corrupt(format!("metadata: {error}")))?,
                    None => Metadata::default(),
                },
                correlation_id: self
                    .correlation_id
                    .as_deref()
                    .map(CorrelationId::parse)
                    .transpose()
                    .map_err(corrupt)?,
            },
        })
    }
}

pub(crate) fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Credit => "credit",
        Direction::Debit => "debit",
    }
}

/// A stored `outbox` row (`idx` read as a 64-bit integer on every store).
#[derive(Debug, sqlx::FromRow)]
pub struct OutboxRow {
    pub transaction_id: i64,
    pub idx: i64,
    pub wallet_id: String,
    pub payload: Vec<u8>,
    pub committed_at: i64,
}

impl OutboxRow {
    pub(crate) fn into_message(self) -> Result<OutboxMessage, StoreError> {
        Ok(OutboxMessage {
            position: OutboxPosition {
                transaction_id: TransactionId(uint(self.transaction_id)?),
                index: u32::try_from(self.idx).map_err(corrupt)?,
            },
            key: WalletId::parse(&self.wallet_id).map_err(corrupt)?,
            payload: self.payload,
            committed_at: Timestamp::from_unix_micros(uint(self.committed_at)?),
        })
    }
}

/// A row of the outbox backlog: how many events wait, and when the first of them was committed.
#[derive(Debug, sqlx::FromRow)]
pub struct BacklogRow {
    pub backlog: i64,
    pub oldest: Option<i64>,
}

impl BacklogRow {
    pub(crate) fn into_backlog(self) -> Result<(u64, Option<Timestamp>), StoreError> {
        Ok((uint(self.backlog)?, self.oldest.map(uint).transpose()?.map(Timestamp::from_unix_micros)))
    }
}

/// The writer lease's row, with the microseconds until it lapses (negative once it has).
#[derive(Debug, sqlx::FromRow)]
pub struct LeaseRow {
    pub epoch: i64,
    pub holder: String,
    pub address: String,
    pub remaining: i64,
}

impl LeaseRow {
    /// The lease; `None` while it was never taken (epoch 0).
    pub(crate) fn into_lease(self) -> Result<Option<Lease>, StoreError> {
        if self.epoch == 0 {
            return Ok(None);
        }
        Ok(Some(Lease {
            epoch: Epoch(uint(self.epoch)?),
            holder: self.holder,
            address: self.address,
            remaining_ms: uint(self.remaining.max(0))? / 1_000,
        }))
    }
}

/// A command record found through its idempotency key, with the key's age.
#[derive(Debug, sqlx::FromRow)]
pub struct KeyedRecord {
    #[sqlx(flatten)]
    pub record: RecordRow,
    pub key_at: i64,
}

/// One wallet's checkpoint in a projection: how far its events are projected.
#[derive(Debug, sqlx::FromRow)]
pub struct CheckpointRow {
    pub wallet_id: String,
    pub version: i64,
}
