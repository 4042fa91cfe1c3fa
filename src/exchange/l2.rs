//! The shared store behind the local cache (`cache.shared`): local → store
//! → AS. On a local miss the store is read; on a store miss one replica
//! takes a short lease and exchanges while the others wait for its value
//! (within their budget), so N replicas asking for one new subject make one
//! exchange. Whatever the store does — down, slow, garbage — the answer is
//! at worst a local exchange within the same budget.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::cache::{Entry, EntryKind, Key};
use super::index;
use super::seal::{self, Sealed};
use super::shared::{Lease, SharedStore};
use super::{ExchangeError, Exchanger, Origin, Policy};

/// Entries with less left than this are not shared (nor taken from the store).
const MIN_SHARED_TTL: Duration = Duration::from_secs(1);
/// First wait between two reads while another replica holds the lease.
const FIRST_POLL: Duration = Duration::from_millis(2);
const MAX_POLL: Duration = Duration::from_millis(100);
/// A lease lives this long unless its holder renews it (every half of it,
/// while its exchange runs): a holder that dies or is cancelled keeps the
/// others waiting at most this long.
const LEASE_TTL: Duration = Duration::from_secs(1);
/// How long a lease outlives the value it stood for.
const LEASE_AFTER_VALUE: Duration = Duration::from_millis(250);

/// Gives a lease back if the request holding it is dropped (its caller went
/// away) before the lease was settled.
struct LeaseGuard(Option<(Arc<SharedStore>, String)>);

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let (Some((store, key)), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move { store.release(&key).await });
        }
    }
}

impl Exchanger {
    /// A local miss: the store, then one exchange for the whole fleet.
    pub(super) async fn fill(
        &self,
        policy: &Policy,
        subject: &str,
        subject_hash: &[u8; 32],
        origin: Option<Origin<'_>>,
    ) -> Result<Arc<Entry>, ExchangeError> {
        // One budget for the whole miss, waiting included.
        let give_up = Instant::now() + policy.client.timeout();
        let Some(store) = &self.shared else { return self.exchange(policy, subject, origin, give_up, None).await };
        let Some(key) = store.key(&policy.store_subject(subject_hash), &policy.shared_digest) else {
            return self.exchange(policy, subject, origin, give_up, None).await;
        };
        // A purge that names this entry while it is exchanged keeps it out of the store.
        let since = (self.purges.now(), policy.key(subject_hash));
        let sub = origin.and_then(|o| o.sub);
        let read = |by| read(store, &key, policy, subject, sub, by);
        // The read and the lease share one `timeout`: the store never makes
        // a request wait longer than that, but for another replica's lease.
        let deadline = store.deadline();
        if let Some(entry) = read(deadline).await {
            return Ok(entry);
        }
        let mut lease = store.lease(&key, LEASE_TTL, deadline).await;
        if lease == Lease::Held {
            // Another replica is exchanging: wait for its value. A lease
            // given back or run out without a value is taken here at once.
            let mut pause = FIRST_POLL;
            while lease == Lease::Held && Instant::now() + pause < give_up {
                tokio::time::sleep(pause).await;
                if let Some(entry) = read(store.deadline()).await {
                    return Ok(entry);
                }
                lease = store.lease(&key, LEASE_TTL, store.deadline()).await;
                pause = (pause * 2).min(MAX_POLL);
            }
            // Taken just as the value was stored and the lease ran out?
            if lease == Lease::Taken {
                if let Some(entry) = read(store.deadline()).await {
                    let (store, key) = (store.clone(), key.clone());
                    tokio::spawn(async move { store.set_lease_ttl(&key, LEASE_AFTER_VALUE, "shortened").await });
                    return Ok(entry);
                }
            }
        }
        if lease != Lease::Taken {
            let result = self.exchange(policy, subject, origin, give_up, None).await;
            self.publish(store, key, (policy, subject), &result, false, since);
            return result;
        }
        // This replica holds the lease: renew it while the exchange runs,
        // and give it back if the request is dropped.
        let mut guard = LeaseGuard(Some((store.clone(), key.clone())));
        let exchange = self.exchange(policy, subject, origin, give_up, None);
        tokio::pin!(exchange);
        let result = loop {
            tokio::select! {
                r = &mut exchange => break r,
                _ = tokio::time::sleep(LEASE_TTL / 2) => {
                    let (store, key) = (store.clone(), key.clone());
                    tokio::spawn(async move { store.set_lease_ttl(&key, LEASE_TTL, "renewed").await });
                }
            }
        };
        guard.0 = None;
        self.publish(store, key, (policy, subject), &result, true, since);
        result
    }

    /// Removes a token the backend refused from the store too, with its
    /// lease, so that the next request anywhere exchanges at once.
    pub async fn forget_shared(&self, policy: &Policy, subject_hash: &[u8; 32]) {
        if let Some(store) = &self.shared {
            if let Some(key) = store.key(&policy.store_subject(subject_hash), &policy.shared_digest) {
                store.delete(&key).await;
            }
        }
    }

    /// Shares a token refreshed in the background (begun at purge number
    /// `since`, under local cache key `local`).
    pub(super) fn share(
        &self,
        policy: &Policy,
        subject: &str,
        result: &Result<Arc<Entry>, ExchangeError>,
        since: (u64, Key),
    ) {
        if let Some(store) = &self.shared {
            let subject_hash: [u8; 32] = Sha256::digest(subject.as_bytes()).into();
            if let Some(key) = store.key(&policy.store_subject(&subject_hash), &policy.shared_digest) {
                self.publish(store, key, (policy, subject), result, false, since);
            }
        }
    }

    /// Writes a fresh token to the store in the background (the caller has
    /// its answer already). A lease this replica holds then runs out 250 ms
    /// later rather than at once: a replica that missed the store just
    /// before the write finds the lease held and reads the value, instead of
    /// taking a lease given back and exchanging again. With no value to
    /// share (the exchange failed) the lease is given back at once, so a
    /// waiter takes over. A token that a purge since the exchange began
    /// (purge number `since.0`) names is not shared.
    fn publish(
        &self,
        store: &Arc<SharedStore>,
        key: String,
        (policy, subject): (&Policy, &str),
        result: &Result<Arc<Entry>, ExchangeError>,
        holds_lease: bool,
        (since, local): (u64, Key),
    ) {
        let sealed = sealed(&key, policy, subject, result);
        if sealed.is_none() && !holds_lease {
            return;
        }
        let entry = result.as_ref().ok().cloned();
        let subjects = entry.as_ref().and_then(|e| e.meta.as_ref()).map(|m| [m.sub, m.email]);
        let (store, purges) = (store.clone(), self.purges.clone());
        tokio::spawn(async move {
            let purged = entry.as_ref().is_some_and(|e| purges.names_since(since, &local, e));
            match sealed {
                _ if purged => store.release(&key).await,
                Some((value, ttl)) => {
                    store.put(&key, &value, ttl, subjects.as_ref().map_or(&[][..], |s| &s[..])).await;
                    if holds_lease {
                        store.set_lease_ttl(&key, LEASE_AFTER_VALUE, "shortened").await;
                    }
                }
                None => store.release(&key).await,
            }
        });
    }
}

/// The store's entry for `subject`, when there is one that opens and has
/// time left (`sub`: the subject's, from introspection).
async fn read(
    store: &SharedStore,
    key: &str,
    policy: &Policy,
    subject: &str,
    sub: Option<&str>,
    by: Instant,
) -> Option<Arc<Entry>> {
    let sealed = store.get(key, by).await?;
    let Some(value) = seal::open(subject, &policy.shared_digest, key, &sealed) else {
        // Another key's value, altered bytes, another format: a miss.
        store.rejected();
        return None;
    };
    let left = Duration::from_millis(value.expires_at_unix_ms.saturating_sub(super::shared::unix_ms()));
    // Never longer than this route may keep a token (the digest has the
    // same max_ttl; this also bounds a writer's clock).
    let left = left.min(policy.cfg.max_ttl);
    if left < MIN_SHARED_TTL {
        return None;
    }
    let meta = policy.meta(super::unverified::peek(subject).as_ref(), index::id_of("sub", sub), Some(&value.token));
    let meta = index::Meta { bound: super::unverified::dpop_bound(subject), ..meta };
    // Bound to the key whose thumbprint is in the store key: this replica's.
    let bound = match value.dpop {
        true => Some(policy.client.dpop_key()?),
        false => None,
    };
    Entry::token(&value.token, bound, left, Some(meta))
}

/// A fresh token sealed for the store, with its store lifetime (never
/// longer than it lives). Refusals stay local.
fn sealed(
    key: &str,
    policy: &Policy,
    subject: &str,
    result: &Result<Arc<Entry>, ExchangeError>,
) -> Option<(Vec<u8>, Duration)> {
    let entry = result.as_ref().ok()?;
    if !matches!(entry.kind, EntryKind::Token(_)) {
        return None;
    }
    let left = entry.expires_at.saturating_duration_since(Instant::now());
    let token = entry.token_text().filter(|_| left >= MIN_SHARED_TTL)?;
    let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
    let dpop = matches!(&entry.kind, EntryKind::Token(t) if t.bound.is_some());
    let value =
        Sealed { token: token.to_owned(), expires_at_unix_ms: super::shared::unix_ms().saturating_add(ms), dpop };
    Some((seal::seal(subject, &policy.shared_digest, key, &value)?, left))
}
