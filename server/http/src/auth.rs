//! API key secrets: made, hashed and checked here, and nowhere else.
//!
//! A secret is `wlx_<key id>_<64 hex digits>`: 256 random bits from the operating system after the
//! key's public id, so a request names its key without a table scan and the secret itself is
//! checked by comparing SHA-256 digests in constant time. The store keeps only the digest; the
//! secret is shown once, when the key is made. (A fast digest is the right one for a 256-bit random
//! secret: there is nothing to guess, so nothing for a slow password hash to slow down.)

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use wallex_engine::{OwnerId, Timestamp};
use wallex_pipeline::ports::{ApiKey, Scope};

/// The prefix of every secret, so a leaked one is recognizable by secret scanners.
pub const SECRET_PREFIX: &str = "wlx_";

/// A key just made: what to store, and its secret, to show once.
#[derive(Debug)]
pub struct NewKey {
    pub key: ApiKey,
    pub secret: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The SHA-256 of a secret: what the store keeps.
pub fn secret_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Makes a key with fresh randomness from the operating system. Scopes are sorted and deduplicated.
pub fn new_key(
    mut scopes: Vec<Scope>,
    owner_id: Option<OwnerId>,
    name: Option<String>,
    expires_at: Option<Timestamp>,
    now: Timestamp,
) -> Result<NewKey, getrandom::Error> {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id)?;
    getrandom::fill(&mut secret)?;
    scopes.sort_unstable();
    scopes.dedup();
    let id = format!("key_{}", hex(&id));
    let secret = format!("{SECRET_PREFIX}{id}_{}", hex(&secret));
    let key = ApiKey {
        id,
        name,
        scopes,
        owner_id,
        secret_hash: secret_hash(&secret),
        created_at: now,
        expires_at,
        revoked_at: None,
        first_used_at: None,
    };
    Ok(NewKey { key, secret })
}

/// The key id a presented secret names, if it has the form of one.
pub fn key_id(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix(SECRET_PREFIX)?;
    let (id, random) = rest.rsplit_once('_')?;
    (id.starts_with("key_") && random.len() == 64 && random.bytes().all(|byte| byte.is_ascii_hexdigit())).then_some(id)
}

/// Whether `secret` is `key`'s, compared in constant time.
pub fn is_secret_of(key: &ApiKey, secret: &str) -> bool {
    bool::from(secret_hash(secret).ct_eq(&key.secret_hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_names_its_key_and_only_it_matches() {
        let now = Timestamp::from_unix_micros(1);
        let made = new_key(vec![Scope::Write, Scope::Read, Scope::Write], None, None, None, now).unwrap();
        assert_eq!(made.key.scopes, [Scope::Read, Scope::Write], "sorted, once each");
        assert_eq!(key_id(&made.secret), Some(made.key.id.as_str()));
        assert!(is_secret_of(&made.key, &made.secret));
        let other = new_key(vec![Scope::Read], None, None, None, now).unwrap();
        assert_ne!(other.key.id, made.key.id, "fresh randomness");
        assert!(!is_secret_of(&made.key, &other.secret));
        let mut tampered = made.secret.clone();
        tampered.pop();
        tampered.push('x');
        assert!(!is_secret_of(&made.key, &tampered));
        assert!(!made.secret.contains(&hex(&made.key.secret_hash)), "the stored digest is not in the secret");
        assert_eq!(key_id("Bearer nothing"), None);
        assert_eq!(key_id("wlx_key_00_short"), None);
    }
}
