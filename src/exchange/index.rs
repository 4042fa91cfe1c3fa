//! Who each cached token was exchanged for, so that revocation finds it:
//! an index from the subject's `sub` (and `email`) to the cache keys of its
//! entries. Entries carry their own [`Meta`]; the cache's eviction listener
//! takes an entry out of the index as it leaves, whatever the reason, so the
//! index never holds more than the cache does (bounded with it).
//!
//! Identifiers are SHA-256 over a domain tag, the kind and the value, cut to
//! 128 bits: the same on every replica (a purge announced by one is applied
//! by all), never the value itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use smallvec::SmallVec;

use super::cache::Key;
use super::client::AsClient;

/// A subject identifier (`sub` or `email`), hashed.
pub type Id = [u8; 16];

const ID_TAG: &[u8] = b"tokex/subject-id/v1";
const SHARDS: usize = 32;

/// `kind` (`sub`, `email`) and `value` as an identifier. Emails compare
/// without case (the domain is case-insensitive, and IdPs differ on the rest).
pub fn id(kind: &str, value: &str) -> Id {
    let mut h = Sha256::new();
    h.update(ID_TAG);
    h.update(kind.as_bytes());
    h.update([0]);
    if kind == "email" {
        h.update(value.to_ascii_lowercase().as_bytes());
    } else {
        h.update(value.as_bytes());
    }
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// What a cached token needs to be found and revoked.
pub struct Meta {
    /// Tells this entry from an earlier one under the same key.
    pub serial: u64,
    /// A tag of the policy (cache-key digest) it was exchanged under: a route purge.
    pub policy: u64,
    pub sub: Option<Id>,
    pub email: Option<Id>,
    /// The server that issued it (RFC 7009 revocation); none for tokex's own tokens.
    pub server: Option<Arc<AsClient>>,
    /// The subject token is DPoP-bound (`cnf.jkt`): only a caller that
    /// proved possession gets this entry.
    pub bound: bool,
}

impl Meta {
    pub fn new(policy: u64, sub: Option<Id>, email: Option<Id>, server: Option<Arc<AsClient>>) -> Self {
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        Meta { serial: SERIAL.fetch_add(1, Ordering::Relaxed), policy, sub, email, server, bound: false }
    }

    fn ids(&self) -> impl Iterator<Item = &Id> {
        self.sub.iter().chain(self.email.iter())
    }

    /// Whether the entry was exchanged for the subject `id` names.
    pub fn names(&self, id: &Id) -> bool {
        self.ids().any(|i| i == id)
    }
}

/// `id` of a non-empty value.
pub fn id_of(kind: &str, value: Option<&str>) -> Option<Id> {
    value.filter(|v| !v.is_empty()).map(|v| id(kind, v))
}

/// The first 8 bytes of a digest: a policy tag.
pub fn tag(digest: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(b)
}

/// Most subjects hold one entry (one token, one route): kept inline.
type Slots = SmallVec<[(Key, u64); 1]>;

/// Off (nothing is recorded: a purge by subject finds nothing) when no
/// purge can come: no `admin.token_file`, no `revocation.ssf`, no shared
/// store whose purge log other replicas write to.
pub struct SubjectIndex {
    shards: [Mutex<HashMap<Id, Slots>>; SHARDS],
    enabled: AtomicBool,
}

impl Default for SubjectIndex {
    fn default() -> Self {
        SubjectIndex { shards: Default::default(), enabled: AtomicBool::new(true) }
    }
}

impl SubjectIndex {
    /// Turns recording on or off (at start, before any entry is cached).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    fn shard(&self, id: &Id) -> std::sync::MutexGuard<'_, HashMap<Id, Slots>> {
        self.shards[usize::from(id[0]) % SHARDS].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the entry `meta` describes under `key` (before it enters the cache).
    pub fn add(&self, key: &Key, meta: &Meta) {
        if !self.is_enabled() {
            return;
        }
        for id in meta.ids() {
            let mut shard = self.shard(id);
            let slots = shard.entry(*id).or_default();
            if !slots.iter().any(|(k, s)| k == key && *s == meta.serial) {
                slots.push((*key, meta.serial));
            }
        }
    }

    /// Forgets the entry `meta` describes (it left the cache). A later entry
    /// under the same key has another serial and stays.
    pub fn remove(&self, key: &Key, meta: &Meta) {
        if !self.is_enabled() {
            return;
        }
        for id in meta.ids() {
            let mut shard = self.shard(id);
            if let Some(slots) = shard.get_mut(id) {
                slots.retain(|(k, s)| !(k == key && *s == meta.serial));
                if slots.is_empty() {
                    shard.remove(id);
                }
            }
        }
    }

    /// The cache keys of the subject `id` names.
    pub fn keys(&self, id: &Id) -> Vec<Key> {
        let shard = self.shard(id);
        let mut keys: Vec<Key> = shard.get(id).map(|s| s.iter().map(|(k, _)| *k).collect()).unwrap_or_default();
        keys.dedup();
        keys
    }

    /// Subjects indexed.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_and_go_by_serial() {
        let index = SubjectIndex::default();
        let alice = id_of("sub", Some("alice"));
        let a = Meta::new(1, alice, id_of("email", Some("Alice@Example.com")), None);
        let b = Meta::new(1, alice, None, None);
        index.add(&[1; 32], &a);
        index.add(&[2; 32], &b);
        assert_eq!(index.keys(&id("sub", "alice")).len(), 2);
        assert_eq!(index.keys(&id("email", "alice@example.COM")), vec![[1; 32]]);
        // A replacement under key 1 is added before the old one leaves.
        let a2 = Meta::new(1, alice, None, None);
        index.add(&[1; 32], &a2);
        index.remove(&[1; 32], &a);
        assert_eq!(index.keys(&id("sub", "alice")).len(), 2, "the replacement stays");
        assert!(index.keys(&id("email", "alice@example.com")).is_empty());
        index.remove(&[1; 32], &a2);
        index.remove(&[2; 32], &b);
        assert!(index.is_empty());
        index.set_enabled(false);
        index.add(&[3; 32], &a);
        assert!(index.is_empty(), "off: nothing recorded");
        assert!(a.names(&id("sub", "alice")) && !a.names(&id("sub", "bob")));
        assert_ne!(id("sub", "x"), id("email", "x"));
        assert_eq!(id_of("sub", Some("")), None);
    }
}
