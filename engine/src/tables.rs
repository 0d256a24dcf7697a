//! The ledger's two large tables, each a dense array with a compact hash index beside it.
//!
//! The index stores only a position (4 or 8 bytes per entry), so a lookup touches a small, cache
//! friendly table and then the one record it needs; the records themselves stay in a deterministic
//! order (creation order for wallets, oldest first for commands) and are what equality, snapshots and
//! invariant checks iterate. The index is never iterated.
//!
//! Ids come from clients, so the index hashes them with keyed SipHash-1-3 under a [`HashSeed`] the
//! caller passes in with the configuration: without the key nobody can choose ids that share one
//! probe sequence (with an unkeyed hash such as FxHash they can, and every create and lookup then
//! walks one chain). The engine stays pure: the server draws the seed at start, the simulator from
//! its own seed.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{Hash, Hasher};

use hashbrown::HashTable;
use siphasher::sip::SipHasher13;

use crate::ledger::{CommandRecord, Wallet};
use crate::{CommandId, WalletId};

/// The secret key of the engine's id indexes (128 bits of SipHash key).
///
/// Lookups only, never iteration order, depend on it: two ledgers with different seeds and the same
/// history decide the same and encode the same snapshot. A server draws it from the operating system at
/// start and never stores or logs it; [`HashSeed::default`] is a fixed, public key for tests and tools
/// that read no client input.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct HashSeed {
    k0: u64,
    k1: u64,
}

impl HashSeed {
    pub const fn new(k0: u64, k1: u64) -> HashSeed {
        HashSeed { k0, k1 }
    }

    pub fn from_bytes(bytes: [u8; 16]) -> HashSeed {
        let (k0, k1) = bytes.split_at(8);
        HashSeed {
            k0: u64::from_le_bytes(k0.try_into().expect("8 bytes")),
            k1: u64::from_le_bytes(k1.try_into().expect("8 bytes")),
        }
    }

    pub(crate) fn hash_of<T: Hash>(self, value: &T) -> u64 {
        let mut hasher = SipHasher13::new_with_keys(self.k0, self.k1);
        value.hash(&mut hasher);
        hasher.finish()
    }
}

impl fmt::Debug for HashSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A secret: never printed, not even in a panic message or a debug log.
        f.write_str("HashSeed(..)")
    }
}

/// Wallets in creation order, indexed by id.
#[derive(Clone, Debug, Default)]
pub(crate) struct WalletTable {
    wallets: Vec<Wallet>,
    index: HashTable<u32>,
    seed: HashSeed,
}

impl PartialEq for WalletTable {
    fn eq(&self, other: &WalletTable) -> bool {
        // The index is a function of the wallets (checked by `check_index`).
        self.wallets == other.wallets
    }
}

impl Eq for WalletTable {}

impl WalletTable {
    pub(crate) fn new(seed: HashSeed) -> WalletTable {
        WalletTable { wallets: Vec::new(), index: HashTable::new(), seed }
    }

    /// Builds the table from wallets in creation order; fails on a repeated id.
    pub(crate) fn from_wallets(seed: HashSeed, wallets: Vec<Wallet>) -> Result<WalletTable, WalletId> {
        let mut table = WalletTable { wallets: Vec::new(), index: HashTable::with_capacity(wallets.len()), seed };
        table.wallets.reserve_exact(wallets.len());
        for wallet in wallets {
            let id = wallet.id;
            table.push(wallet).map_err(|()| id)?;
        }
        Ok(table)
    }

    pub(crate) fn position(&self, wallet_id: &WalletId) -> Option<usize> {
        let wallets = &self.wallets;
        self.index
            .find(self.seed.hash_of(wallet_id), |&position| wallets[position as usize].id == *wallet_id)
            .map(|&p| p as usize)
    }

    pub(crate) fn get(&self, wallet_id: &WalletId) -> Option<&Wallet> {
        self.position(wallet_id).map(|position| &self.wallets[position])
    }

    pub(crate) fn contains(&self, wallet_id: &WalletId) -> bool {
        self.position(wallet_id).is_some()
    }

    pub(crate) fn at(&self, position: usize) -> &Wallet {
        &self.wallets[position]
    }

    pub(crate) fn at_mut(&mut self, position: usize) -> &mut Wallet {
        &mut self.wallets[position]
    }

    /// Appends a new wallet and returns its position; `Err` if the id exists.
    pub(crate) fn push(&mut self, wallet: Wallet) -> Result<usize, ()> {
        let position = self.wallets.len();
        let stored = u32::try_from(position).expect("fewer than 2^32 wallets");
        let wallets = &self.wallets;
        let seed = self.seed;
        // One probe both to detect a duplicate and to find the free slot.
        match self.index.entry(
            seed.hash_of(&wallet.id),
            |&p| wallets[p as usize].id == wallet.id,
            |&p| seed.hash_of(&wallets[p as usize].id),
        ) {
            hashbrown::hash_table::Entry::Occupied(_) => Err(()),
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(stored);
                self.wallets.push(wallet);
                Ok(position)
            }
        }
    }

    /// Removes the newest wallet (an atomic group's creation, undone).
    pub(crate) fn pop(&mut self) -> Option<Wallet> {
        let wallet = self.wallets.pop()?;
        let position = u32::try_from(self.wallets.len()).expect("fewer than 2^32 wallets");
        if let Ok(entry) = self.index.find_entry(self.seed.hash_of(&wallet.id), |&p| p == position) {
            entry.remove();
        }
        Some(wallet)
    }

    pub(crate) fn as_slice(&self) -> &[Wallet] {
        &self.wallets
    }

    /// Every wallet is found at its own position, and the index holds nothing else.
    pub(crate) fn check_index(&self) -> Result<(), String> {
        if self.index.len() != self.wallets.len() {
            return Err(format!(
                "the wallet index has {} entries for {} wallets",
                self.index.len(),
                self.wallets.len()
            ));
        }
        for (position, wallet) in self.wallets.iter().enumerate() {
            if self.position(&wallet.id) != Some(position) {
                return Err(format!("wallet {} is not indexed at {position}", wallet.id));
            }
        }
        Ok(())
    }
}

/// Where the record with `sequence` sits in the queue, given how many were forgotten before it.
fn slot(sequence: u64, forgotten: u64) -> usize {
    usize::try_from(sequence - forgotten).expect("remembered records fit in memory")
}

/// Remembered command records, oldest first, indexed by command id.
///
/// Records are forgotten from the front only, so the index stores each record's sequence number
/// (how many records were ever remembered before it) and a record's place in the queue is its
/// sequence number minus the number forgotten.
///
/// An id is normally remembered once. Replaying a journal written under a shorter retention can
/// remember an id again while its earlier record is still queued: the index then points at the
/// newer record, and the superseded one leaves the queue in its turn without touching the index.
#[derive(Clone, Debug, Default)]
pub(crate) struct CommandMemory {
    records: VecDeque<CommandRecord>,
    forgotten: u64,
    index: HashTable<u64>,
    seed: HashSeed,
}

impl PartialEq for CommandMemory {
    fn eq(&self, other: &CommandMemory) -> bool {
        // What is remembered, not how many were forgotten before: a snapshot restarts the count.
        self.records == other.records
    }
}

impl Eq for CommandMemory {}

impl CommandMemory {
    pub(crate) fn new(seed: HashSeed) -> CommandMemory {
        CommandMemory { records: VecDeque::new(), forgotten: 0, index: HashTable::new(), seed }
    }

    pub(crate) fn from_records(seed: HashSeed, records: Vec<CommandRecord>) -> Result<CommandMemory, CommandId> {
        let mut memory = CommandMemory {
            records: VecDeque::with_capacity(records.len()),
            forgotten: 0,
            index: HashTable::with_capacity(records.len()),
            seed,
        };
        for record in records {
            if memory.get(&record.command_id).is_some_and(|kept| kept.transaction_id >= record.transaction_id) {
                return Err(record.command_id);
            }
            memory.remember(record);
        }
        Ok(memory)
    }

    pub(crate) fn get(&self, command_id: &CommandId) -> Option<&CommandRecord> {
        let records = &self.records;
        let forgotten = self.forgotten;
        self.index
            .find(self.seed.hash_of(command_id), |&sequence| {
                records[slot(sequence, forgotten)].command_id == *command_id
            })
            .map(|&sequence| &self.records[slot(sequence, forgotten)])
    }

    pub(crate) fn oldest(&self) -> Option<&CommandRecord> {
        self.records.front()
    }

    pub(crate) fn forget_oldest(&mut self) {
        let Some(oldest) = self.records.front() else { return };
        let sequence = self.forgotten;
        // Absent when a later record of the same id superseded this one.
        if let Ok(entry) =
            self.index.find_entry(self.seed.hash_of(&oldest.command_id), |&candidate| candidate == sequence)
        {
            entry.remove();
        }
        self.records.pop_front();
        self.forgotten += 1;
    }

    /// Remembers a record; if its id is remembered already, the new record supersedes the old.
    pub(crate) fn remember(&mut self, record: CommandRecord) {
        let sequence = self.forgotten + self.records.len() as u64;
        let seed = self.seed;
        let hash = seed.hash_of(&record.command_id);
        let command_id = record.command_id;
        self.records.push_back(record);
        let records = &self.records;
        let forgotten = self.forgotten;
        match self.index.entry(
            hash,
            |&s| records[slot(s, forgotten)].command_id == command_id,
            |&s| seed.hash_of(&records[slot(s, forgotten)].command_id),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut superseded) => *superseded.get_mut() = sequence,
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(sequence);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Oldest first.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = &CommandRecord> {
        self.records.iter()
    }

    /// Every record is found under its own id (or superseded by a later record of that id), and
    /// the index holds nothing else.
    pub(crate) fn check_index(&self) -> Result<(), String> {
        let mut indexed = 0;
        for record in &self.records {
            match self.get(&record.command_id) {
                Some(found) if found == record => indexed += 1,
                Some(found) if found.transaction_id > record.transaction_id => {}
                _ => return Err(format!("command {} is not indexed", record.command_id)),
            }
        }
        if indexed != self.index.len() {
            return Err(format!("the command index has {} entries for {indexed} live records", self.index.len()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod flooding;
