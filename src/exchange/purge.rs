//! Purges: what a revocation removes from the token cache (and from the
//! shared store), and the RFC 7009 revocation of the tokens it removed.
//! Which entries a selector names is decided by the caller
//! (`crate::revocation`), which knows the routes; here they are removed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::cache::{Entry, EntryKind, Key};
use super::index::Id;
use super::Exchanger;

/// Purges remembered for exchanges that were running when they came.
const RECENT: usize = 1024;

/// The local entries a purge removes.
#[derive(Clone, Debug, PartialEq, Eq)]
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

impl Target {
    /// Whether this purge names the entry under `key`.
    fn names(&self, key: &Key, entry: &Entry) -> bool {
        match self {
            Target::All => true,
            Target::Subject(ids) => entry.meta.as_ref().is_some_and(|m| ids.iter().any(|id| m.names(id))),
            Target::Keys(keys) => keys.contains(key),
            Target::Policy(tag) => entry.meta.as_ref().is_some_and(|m| m.policy == *tag),
        }
    }
}

/// The last purges, numbered: an exchange notes the number when it starts,
/// and does not keep (nor share) its token when a purge since then names
/// it — a purge that came while the authorization server was answering
/// could not find the entry yet. Other purges leave it alone.
#[derive(Default)]
pub(super) struct Purges {
    seq: AtomicU64,
    recent: Mutex<VecDeque<(u64, Target)>>,
}

impl Purges {
    /// The number of the last purge.
    pub(super) fn now(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    fn record(&self, target: &Target) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.seq.load(Ordering::Acquire) + 1;
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back((n, target.clone()));
        self.seq.store(n, Ordering::Release);
    }

    /// Whether a purge after number `since` names the entry under `key`
    /// (when purges since then were too many to remember: yes).
    pub(super) fn names_since(&self, since: u64, key: &Key, entry: &Entry) -> bool {
        if self.now() == since {
            return false;
        }
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        match recent.front() {
            Some((oldest, _)) if *oldest > since + 1 => true,
            _ => recent.iter().filter(|(n, _)| *n > since).any(|(_, t)| t.names(key, entry)),
        }
    }
}

impl Exchanger {
    /// Removes the entries `target` names from the local cache, and revokes
    /// (RFC 7009, in the background) the exchanged tokens among them. An
    /// exchange running meanwhile whose entry it names does not keep its
    /// token. How many were removed.
    pub async fn purge(&self, target: &Target) -> u64 {
        self.purges.record(target);
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

    /// An entry just exchanged (from purge number `since`) that a purge
    /// since then names is not kept: it is removed and revoked (the request
    /// that waited for it still uses it). Whether it was.
    pub(super) async fn purged_meanwhile(&self, since: u64, key: &Key, entry: &Arc<Entry>) -> bool {
        if !self.purges.names_since(since, key, entry) {
            return false;
        }
        self.cache.invalidate_entry(key, entry).await;
        self.revoke(entry);
        true
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::index::{id, Meta};
    use std::time::Duration;

    #[test]
    fn only_a_purge_that_names_the_entry_since_it_started_counts() {
        let purges = Purges::default();
        let alice =
            Entry::token("t", None, Duration::from_secs(60), Some(Meta::new(7, Some(id("sub", "alice")), None, None)))
                .unwrap();
        let start = purges.now();
        assert!(!purges.names_since(start, &[1; 32], &alice));
        purges.record(&Target::Subject(vec![id("sub", "bob")]));
        purges.record(&Target::Policy(8));
        purges.record(&Target::Keys(vec![[2; 32]]));
        assert!(!purges.names_since(start, &[1; 32], &alice), "other subjects, policies, keys");
        purges.record(&Target::Policy(7));
        assert!(purges.names_since(start, &[1; 32], &alice));
        let later = purges.now();
        assert!(!purges.names_since(later, &[1; 32], &alice), "that purge came before");
        purges.record(&Target::Keys(vec![[1; 32]]));
        assert!(purges.names_since(later, &[1; 32], &alice));
        // Forgotten purges count as naming it.
        for _ in 0..RECENT {
            purges.record(&Target::Keys(vec![[9; 32]]));
        }
        assert!(purges.names_since(later, &[1; 32], &alice));
        assert!(!purges.names_since(purges.now() - 1, &[1; 32], &alice));
    }
}
