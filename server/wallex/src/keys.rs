//! `wallex keys create|list|revoke`: API keys in the configured store (the embedded one, or
//! `DATABASE_URL`, exactly as `serve` opens it). A new key's secret is printed once, alone on the
//! last line of standard output, and stored only as its SHA-256.

use anyhow::{Context as _, bail};
use clap::Subcommand;
use wallex_engine::{OwnerId, Timestamp};
use wallex_pipeline::ports::{AuditRecord, KeyStore, Scope};

use crate::config::ConfigArgs;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Makes a key and prints its secret once, alone on the last line.
    Create {
        /// What the key may do: read, write, mint, admin (comma-separated, or repeated).
        #[arg(long = "scope", value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// The only owner whose wallets the key sees and moves.
        #[arg(long)]
        owner: Option<String>,
        /// A name for people (shown by `list`).
        #[arg(long)]
        name: Option<String>,
        /// When the key stops working (RFC 3339).
        #[arg(long)]
        expires_at: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Lists every key (never a secret).
    List {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Revokes a key by its id.
    Revoke {
        id: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

impl KeysCommand {
    pub fn config(&self) -> &ConfigArgs {
        match self {
            KeysCommand::Create { config, .. } | KeysCommand::List { config } | KeysCommand::Revoke { config, .. } => {
                config
            }
        }
    }
}

fn now() -> Timestamp {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp::from_unix_micros(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
}

/// Appends what the command line did to the audit trail.
async fn audit<S: KeyStore>(store: &S, action: &str, key_id: &str, detail: String) -> anyhow::Result<()> {
    let record = AuditRecord {
        id: 0,
        at: now(),
        actor: None,
        action: action.to_owned(),
        target: Some(key_id.to_owned()),
        request_id: None,
        detail: Some(detail),
    };
    store.append_audit(&record).await.context("appending to the audit trail")
}

/// Carries out `command` on `store`; what it prints is the command's whole output.
pub async fn run<S: KeyStore>(store: &S, command: KeysCommand) -> anyhow::Result<String> {
    match command {
        KeysCommand::Create { scopes, owner, name, expires_at, .. } => {
            let scopes = scopes
                .iter()
                .map(|name| {
                    Scope::parse(name.trim()).with_context(|| format!("no scope {name}: read, write, mint or admin"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let owner = owner.as_deref().map(OwnerId::parse).transpose().context("--owner")?;
            let expires_at = match expires_at.as_deref() {
                Some(text) => {
                    let at: jiff::Timestamp = text.parse().context("--expires-at is an RFC 3339 instant")?;
                    Some(Timestamp::from_unix_micros(
                        u64::try_from(at.as_microsecond()).context("--expires-at is before 1970")?,
                    ))
                }
                None => None,
            };
            let made = wallex_http::auth::new_key(scopes, owner, name, expires_at, now())
                .map_err(|error| anyhow::anyhow!("drawing the key's secret: {error}"))?;
            store.create_key(&made.key).await.context("storing the key")?;
            let scopes = Scope::list(&made.key.scopes);
            audit(store, "key_created", &made.key.id, format!("scopes {scopes}, by the command line")).await?;
            Ok(format!(
                "created {} (scopes {}{}); its secret, shown this once:\n{}\n",
                made.key.id,
                scopes,
                made.key.owner_id.map(|owner| format!(", owner {owner}")).unwrap_or_default(),
                made.secret
            ))
        }
        KeysCommand::List { .. } => {
            let mut out = String::from("id\tname\tscopes\towner\tcreated\texpires\trevoked\n");
            for key in store.api_keys().await.context("reading the keys")? {
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                    key.id,
                    key.name.as_deref().unwrap_or("-"),
                    Scope::list(&key.scopes),
                    key.owner_id.map_or_else(|| "-".to_owned(), |owner| owner.to_string()),
                    wallex_http::rfc3339(key.created_at),
                    key.expires_at.map_or_else(|| "-".to_owned(), wallex_http::rfc3339),
                    key.revoked_at.map_or_else(|| "-".to_owned(), wallex_http::rfc3339),
                ));
            }
            Ok(out)
        }
        KeysCommand::Revoke { id, .. } => {
            if !store.revoke_key(&id, now()).await.context("revoking the key")? {
                bail!("no key {id} to revoke (unknown, or revoked already)");
            }
            audit(store, "key_revoked", &id, "by the command line".to_owned()).await?;
            Ok(format!("revoked {id}\n"))
        }
    }
}
