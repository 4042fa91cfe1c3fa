//! Purges: what a revocation removes from the token cache (and from the
//! shared store), and the RFC 7009 revocation of the tokens it removed.
//! Which entries a selector names is decided by the caller
//! (`crate::revocation`), which knows the routes; here they are removed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::cache::{Entry, EntryKind, Key};
use super::index::Id;
use super::Exchanger;

/// The local entries a purge removes.
pub enum Target {
    /// Every entry (tokex's own client_credentials tokens too).
    All,
    /// Entries exchanged for the subject these identifiers name.
    Subject(Vec<Id>),
    /// The entries under these keys (a subject token under each policy,
    /// an egress route's own token).
    Keys(Vec<Key>),
    /// The entries exchanged under the policy with this tag (a route).
    Policy(u64),
}

impl Exchanger {
    /// Removes the entries `target` names from the local cache, and revokes
    /// (RFC 7009, in the background) the exchanged tokens among them. An
    /// exchange running meanwhile does not keep its token. How many were removed.
    pub async fn purge(&self, target: &Target) -> u64 {
        self.purges.fetch_add(1, Ordering::AcqRel);
        let keys = match target {
            Target::All => self.cache.keys_where(|_| true),
            Target::Subject(ids) => {
                let mut keys: Vec<Key> = ids.iter().flat_map(|id| self.index.keys(id)).collect();
                keys.sort_unstable();
                keys.dedup();
                keys
            }
            Target::Keys(keys) => keys.clone(),
            Target::Policy(tag) => self.cache.keys_where(|e| e.meta.as_ref().is_some_and(|m| m.policy == *tag)),
        };
        let mut purged = 0;
        for key in keys {
            if let Some(entry) = self.cache.take(&key).await {
                purged += 1;
                self.revoke(&entry);
            }
        }
        purged
    }

    /// Revokes an exchanged token at the server that issued it (RFC 7009),
    /// in the background, when that server has a revocation endpoint.
    pub fn revoke(&self, entry: &Entry) {
        let server = entry.meta.as_ref().and_then(|m| m.server.as_ref());
        if let (Some(server), EntryKind::Token(_), Some(token)) = (server, &entry.kind, entry.token_text()) {
            self.revoker.revoke(server, token);
        }
    }

    /// Forgets `entry` (a token the backend refused), unless a fresher one
    /// has already taken its place, and revokes it at its server.
    pub async fn evict(&self, key: &Key, entry: &Arc<Entry>) {
        self.cache.invalidate_entry(key, entry).await;
        self.revoke(entry);
    }

    /// Subjects in the revocation index.
    pub fn indexed_subjects(&self) -> usize {
        self.index.len()
    }

    /// RFC 7009 revocations waiting or in flight.
    pub fn revocations_pending(&self) -> usize {
        self.revoker.pending()
    }
}
