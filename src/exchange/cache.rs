//! The token cache: moka, keyed by SHA-256 (never by a raw token), with a
//! lifetime per entry. Entries hold either an issued token or a short-lived
//! record that the AS refused the subject token (`invalid_grant`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use moka::Expiry;

use super::index::{Meta, SubjectIndex};
use crate::dpop::ProofKey;

pub type Key = [u8; 32];

/// An issued token ready to forward: one buffer, `Bearer <token>` (or
/// `DPoP <token>`), seen whole and past its scheme (the token is stored
/// once). Both header values are marked sensitive and nothing here
/// implements `Display`.
pub struct CachedToken {
    /// `Bearer <token>` or `DPoP <token>`, for the `authorization` header.
    pub authorization: HeaderValue,
    /// The bare token, for any other configured header: a view of `authorization`.
    pub raw: HeaderValue,
    /// A DPoP-bound token (RFC 9449): the key it is bound to, which signs
    /// a proof for every request that carries it.
    pub bound: Option<Box<Bound>>,
}

/// What a proof for a DPoP-bound token needs besides the request.
pub struct Bound {
    pub key: Arc<ProofKey>,
    /// base64url SHA-256 of the token (the proofs' `ath`).
    pub ath: String,
}

const BEARER: &[u8] = b"Bearer ";
const DPOP: &[u8] = b"DPoP ";

impl CachedToken {
    /// `None` when `token` is not a valid header value. `bound`: the key of
    /// a DPoP-bound token.
    pub(super) fn new(token: &str, bound: Option<Arc<ProofKey>>) -> Option<Self> {
        let scheme = if bound.is_some() { DPOP } else { BEARER };
        let mut buf = Vec::with_capacity(scheme.len() + token.len());
        buf.extend_from_slice(scheme);
        buf.extend_from_slice(token.as_bytes());
        // Exact capacity: the buffer is the allocation the bytes share, with
        // no spare room; `slice` shares it rather than copying.
        let whole = Bytes::from(buf);
        let mut raw = HeaderValue::from_maybe_shared(whole.slice(scheme.len()..)).ok()?;
        let mut authorization = HeaderValue::from_maybe_shared(whole).ok()?;
        raw.set_sensitive(true);
        authorization.set_sensitive(true);
        let bound = bound.map(|key| Box::new(Bound { key, ath: crate::dpop::ath(token) }));
        Some(CachedToken { authorization, raw, bound })
    }
}

pub enum EntryKind {
    Token(CachedToken),
    /// The AS answered `invalid_grant` for this subject token.
    Rejected,
}

/// A cache entry. Kept small: a million of them is the sizing case
/// (`examples/cache_memory.rs` measures one), and the lifetime moka
/// enforces is read from `expires_at`, not kept beside it.
pub struct Entry {
    pub kind: EntryKind,
    pub expires_at: Instant,
    refreshing: AtomicBool,
    /// Who it was exchanged for, for revocation (see `index`).
    pub meta: Option<Meta>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            EntryKind::Token(_) => "token",
            EntryKind::Rejected => "rejected",
        };
        let left = self.expires_at.saturating_duration_since(Instant::now());
        f.debug_struct("Entry").field("kind", &kind).field("left", &left).finish()
    }
}

impl Entry {
    pub fn new(kind: EntryKind, ttl: Duration) -> Arc<Self> {
        Entry::with_meta(kind, ttl, None)
    }

    pub fn with_meta(kind: EntryKind, ttl: Duration, meta: Option<Meta>) -> Arc<Self> {
        Arc::new(Entry { kind, expires_at: Instant::now() + ttl, refreshing: AtomicBool::new(false), meta })
    }

    /// An issued token, ready to forward, for `ttl` (`bound`: the key of a
    /// DPoP-bound one); `None` when the token is not a valid header value.
    pub fn token(token: &str, bound: Option<Arc<ProofKey>>, ttl: Duration, meta: Option<Meta>) -> Option<Arc<Self>> {
        Some(Entry::with_meta(EntryKind::Token(CachedToken::new(token, bound)?), ttl, meta))
    }

    /// The issued token's text (not for a refusal).
    pub fn token_text(&self) -> Option<&str> {
        match &self.kind {
            EntryKind::Token(t) => t.raw.to_str().ok(),
            EntryKind::Rejected => None,
        }
    }

    /// True once per entry: the caller that gets `true` starts the refresh.
    pub fn claim_refresh(&self) -> bool {
        self.refreshing.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }
}

/// An entry lives until its `expires_at`, from whenever it enters the cache.
struct PerEntry;

impl Expiry<Key, Arc<Entry>> for PerEntry {
    fn expire_after_create(&self, _: &Key, v: &Arc<Entry>, now: Instant) -> Option<Duration> {
        Some(v.expires_at.saturating_duration_since(now))
    }
    fn expire_after_update(&self, _: &Key, v: &Arc<Entry>, now: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(v.expires_at.saturating_duration_since(now))
    }
}

/// Keys are SHA-256 outputs over a secret per-process salt (see
/// [`salt`]), so nobody can compute one, let alone choose colliding ones:
/// their first 8 bytes are the hash (no SipHash over a hash).
#[derive(Clone, Copy, Default)]
pub struct KeyHash;

#[derive(Default)]
pub struct KeyHasher(u64);

impl std::hash::BuildHasher for KeyHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length, then its bytes: keep the bytes.
        if bytes.len() >= 8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[..8]);
            self.0 ^= u64::from_le_bytes(b);
        } else {
            for &x in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(x);
            }
        }
    }
}

/// 128 random bits drawn once per process and folded into every policy
/// digest, hence into every cache key. Without it a key would be a public
/// function of the configuration and the subject token, and whoever knows
/// the configuration could search offline for garbage subject tokens whose
/// keys share the hash table's bucket and control bits (or the admission
/// sketch's counters), then send them to slow lookups down for everyone.
pub fn salt() -> &'static [u8; 16] {
    static SALT: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    SALT.get_or_init(|| {
        let mut s = [0u8; 16];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut s).is_err() {
            // Never seen on Linux; std's own randomly keyed hasher is the fallback.
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u8(1);
            let a = h.finish();
            h.write_u8(2);
            s = (u128::from(a) << 64 | u128::from(h.finish())).to_le_bytes();
        }
        s
    })
}

#[derive(Clone)]
pub struct TokenCache {
    inner: moka::future::Cache<Key, Arc<Entry>, KeyHash>,
}

impl TokenCache {
    /// `evictions` counts entries leaving, by reason (`expired`, `size`,
    /// `invalidated`, `replaced`); `index` loses each as it leaves.
    pub fn new(max_entries: u64, evictions: crate::metrics::Counters, index: Arc<SubjectIndex>) -> Self {
        use moka::notification::RemovalCause;
        TokenCache {
            inner: moka::future::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntry)
                .eviction_listener(move |key: Arc<Key>, entry: Arc<Entry>, cause| {
                    if let Some(meta) = &entry.meta {
                        index.remove(&key, meta);
                    }
                    evictions.inc(match cause {
                        RemovalCause::Expired => "expired",
                        RemovalCause::Size => "size",
                        RemovalCause::Explicit => "invalidated",
                        RemovalCause::Replaced => "replaced",
                    })
                })
                .build_with_hasher(KeyHash),
        }
    }

    pub async fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        self.inner.get(key).await
    }

    /// The entry for `key`, computing it with `init` when absent. Concurrent
    /// callers for one key wait for a single `init`. Returns whether this call
    /// found the entry already present.
    pub async fn get_or_try_insert<E, F>(&self, key: Key, init: F) -> Result<(Arc<Entry>, bool), Arc<E>>
    where
        E: Send + Sync + 'static,
        F: std::future::Future<Output = Result<Arc<Entry>, E>>,
    {
        let e = self.inner.entry(key).or_try_insert_with(init).await?;
        let fresh = e.is_fresh();
        Ok((e.into_value(), !fresh))
    }

    pub async fn insert(&self, key: Key, entry: Arc<Entry>) {
        self.inner.insert(key, entry).await;
    }

    /// Removes `entry` from under `key`, unless it has been replaced already
    /// (by a concurrent request's fresh exchange, which must stay).
    pub async fn invalidate_entry(&self, key: &Key, entry: &Arc<Entry>) {
        use moka::ops::compute::Op;
        self.inner
            .entry(*key)
            .and_compute_with(|current| {
                let op = match current {
                    Some(c) if Arc::ptr_eq(c.value(), entry) => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }

    /// Removes whatever is under `key`.
    pub async fn remove(&self, key: &Key) {
        self.inner.invalidate(key).await;
    }

    /// Removes and returns whatever is under `key`.
    pub async fn take(&self, key: &Key) -> Option<Arc<Entry>> {
        self.inner.remove(key).await
    }

    /// The keys of the entries `keep` selects (a walk over the whole cache).
    pub fn keys_where(&self, keep: impl Fn(&Entry) -> bool) -> Vec<Key> {
        self.inner.iter().filter(|(_, e)| keep(e)).map(|(k, _)| *k).collect()
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }

    /// Applies pending evictions and counts (tests and metrics use this).
    pub async fn sync(&self) {
        self.inner.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_stored_once_and_forwarded_sensitive() {
        let e = Entry::token("abc.def", None, Duration::from_secs(60), None).unwrap();
        let EntryKind::Token(t) = &e.kind else { panic!("a token entry") };
        assert_eq!(t.authorization.as_bytes(), b"Bearer abc.def");
        assert_eq!(t.raw.as_bytes(), b"abc.def");
        // The bare token is a view of the `Bearer` buffer, not a copy.
        assert_eq!(t.raw.as_bytes().as_ptr(), t.authorization.as_bytes()[BEARER.len()..].as_ptr());
        assert!(t.authorization.is_sensitive() && t.raw.is_sensitive());
        assert_eq!(e.token_text(), Some("abc.def"));
        assert!(Entry::token("a\nb", None, Duration::from_secs(60), None).is_none());
    }

    #[test]
    fn an_entry_lives_until_its_expiry() {
        let e = Entry::new(EntryKind::Rejected, Duration::from_secs(30));
        let now = Instant::now();
        let left = PerEntry.expire_after_create(&[0; 32], &e, now).unwrap();
        assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(29));
        let later = now + Duration::from_secs(10);
        let left = PerEntry.expire_after_update(&[0; 32], &e, later, None).unwrap();
        assert!(left <= Duration::from_secs(20) && left > Duration::from_secs(19));
        assert_eq!(PerEntry.expire_after_create(&[0; 32], &e, now + Duration::from_secs(31)), Some(Duration::ZERO));
    }

    #[tokio::test]
    async fn an_expired_entry_is_gone() {
        let cache = TokenCache::new(10, crate::metrics::Metrics::new().cache_evictions(), Default::default());
        cache.insert([1; 32], Entry::new(EntryKind::Rejected, Duration::from_millis(50))).await;
        cache.insert([2; 32], Entry::new(EntryKind::Rejected, Duration::from_secs(60))).await;
        assert!(cache.get(&[1; 32]).await.is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(cache.get(&[1; 32]).await.is_none());
        assert!(cache.get(&[2; 32]).await.is_some());
    }
}
