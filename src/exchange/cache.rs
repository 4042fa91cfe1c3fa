//! The token cache: moka, keyed by SHA-256 (never by a raw token), with a
//! lifetime per entry. Entries hold either an issued token or a short-lived
//! record that the AS refused the subject token (`invalid_grant`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use moka::Expiry;

pub type Key = [u8; 32];

/// An issued token ready to forward. Its header values are marked sensitive
/// and nothing here implements `Display`.
pub struct CachedToken {
    /// `Bearer <token>`, for the `authorization` header.
    pub bearer: HeaderValue,
    /// The bare token, for any other configured header.
    pub raw: HeaderValue,
}

pub enum EntryKind {
    Token(CachedToken),
    /// The AS answered `invalid_grant` for this subject token.
    Rejected,
}

pub struct Entry {
    pub kind: EntryKind,
    ttl: Duration,
    pub expires_at: Instant,
    refreshing: AtomicBool,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            EntryKind::Token(_) => "token",
            EntryKind::Rejected => "rejected",
        };
        f.debug_struct("Entry").field("kind", &kind).field("ttl", &self.ttl).finish()
    }
}

impl Entry {
    pub fn new(kind: EntryKind, ttl: Duration) -> Arc<Self> {
        Arc::new(Entry { kind, ttl, expires_at: Instant::now() + ttl, refreshing: AtomicBool::new(false) })
    }

    /// An issued token, ready to forward, for `ttl`; `None` when the token
    /// is not a valid header value.
    pub fn token(token: &str, ttl: Duration) -> Option<Arc<Self>> {
        let mut raw = HeaderValue::from_str(token).ok()?;
        let mut bearer = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
        raw.set_sensitive(true);
        bearer.set_sensitive(true);
        Some(Entry::new(EntryKind::Token(CachedToken { bearer, raw }), ttl))
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

struct PerEntry;

impl Expiry<Key, Arc<Entry>> for PerEntry {
    fn expire_after_create(&self, _: &Key, v: &Arc<Entry>, _: std::time::Instant) -> Option<Duration> {
        Some(v.ttl)
    }
    fn expire_after_update(
        &self,
        _: &Key,
        v: &Arc<Entry>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
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
    /// `invalidated`, `replaced`).
    pub fn new(max_entries: u64, evictions: crate::metrics::Counters) -> Self {
        use moka::notification::RemovalCause;
        TokenCache {
            inner: moka::future::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntry)
                .eviction_listener(move |_, _, cause| {
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

    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }

    /// Applies pending evictions and counts (tests and metrics use this).
    pub async fn sync(&self) {
        self.inner.run_pending_tasks().await;
    }
}
