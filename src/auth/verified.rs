//! The verified-token cache of `inbound.jwt`: a JWT whose signature and
//! claims passed is remembered by its SHA-256 (never the token), so the same
//! token's next requests skip the signature check (50–100 µs). An entry holds
//! only what later checks need: the granted scopes, `exp` and `nbf`, and the
//! JWKS key generation it was verified under.
//!
//! - A hit re-checks `exp` and `nbf` with the configured leeway (the very
//!   check of the uncached path), so the cache never makes an expired token
//!   valid; refusals are never stored, so neither is a token not yet valid.
//! - An entry verified under another key generation is ignored: any change
//!   of the key set (a key removed, replaced or added, the JWKS taken over on
//!   a reload) verifies every token again on its next request.
//! - An entry lives until `exp` plus leeway, and never longer than
//!   [`MAX_AGE`] (the JWKS refresh interval without `Cache-Control`).
//! - At most [`MAX_ENTRIES`] entries (moka's TinyLFU keeps the busy ones),
//!   counted by weight: an entry weighs one per [`WEIGHT_UNIT`] bytes of
//!   scopes (at least one), so tokens with thousands of scopes cannot hold
//!   more memory than ordinary ones would.
//!   One is about 0.6 KiB with moka's bookkeeping (measured: +62 MiB
//!   resident for 100,000 entries of two scopes), so the cache stays within
//!   about 6 MiB; a busier edge only verifies more often. Only validly signed
//!   tokens get in, so a flood of garbage cannot fill it.
//! - One cache per validator: a reload that changes `inbound.jwt` (issuer,
//!   audiences, algorithms, `typ`, leeway, ...) starts with an empty one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

use super::claims::{self, Valid, Window};
use super::scopes::Granted;
use super::Invalid;
use crate::metrics::{Counters, Metrics};

/// Entries held at most.
pub const MAX_ENTRIES: u64 = 10_000;
/// Scope bytes an entry may hold per unit of [`MAX_ENTRIES`].
pub const WEIGHT_UNIT: usize = 512;
/// An entry's longest life, whatever the token's `exp`.
pub const MAX_AGE: Duration = Duration::from_secs(300);

/// `tokex_inbound_cache_total` results.
const RESULTS: [&str; 2] = ["hit", "miss"];

type Key = [u8; 32];

struct Entry {
    granted: Granted,
    window: Window,
    /// The JWKS key generation the token was verified under.
    generation: u64,
    ttl: Duration,
    /// In units of [`MAX_ENTRIES`].
    weight: u32,
}

struct PerEntry;

impl Expiry<Key, Arc<Entry>> for PerEntry {
    fn expire_after_create(&self, _: &Key, e: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(e.ttl)
    }

    /// A token verified again (under a new key generation) gets the new entry's lifetime.
    fn expire_after_update(&self, _: &Key, e: &Arc<Entry>, _: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(e.ttl)
    }
}

pub struct VerifiedCache {
    cache: moka::future::Cache<Key, Arc<Entry>>,
    leeway: Duration,
    lookups: Counters,
}

impl VerifiedCache {
    /// `leeway`: the validator's, applied to `exp` and `nbf` on every hit.
    pub fn new(leeway: Duration, metrics: &Metrics) -> Self {
        VerifiedCache {
            cache: moka::future::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .weigher(|_: &Key, e: &Arc<Entry>| e.weight)
                .expire_after(PerEntry)
                .build(),
            leeway,
            lookups: metrics.inbound_cache(&RESULTS),
        }
    }

    /// The scopes of the token whose SHA-256 is `hash`, when it was verified
    /// under the key `generation` in use; `None`: verify it.
    pub async fn get(&self, hash: &Key, generation: u64) -> Result<Option<Granted>, Invalid> {
        self.get_at(hash, generation, claims::now()).await
    }

    async fn get_at(&self, hash: &Key, generation: u64, now: f64) -> Result<Option<Granted>, Invalid> {
        let Some(entry) = self.cache.get(hash).await.filter(|e| e.generation == generation) else {
            self.lookups.inc("miss");
            return Ok(None);
        };
        self.lookups.inc("hit");
        if let Err(why) = entry.window.check_at(self.leeway, now) {
            self.cache.invalidate(hash).await;
            return Err(why);
        }
        Ok(Some(entry.granted.clone()))
    }

    /// Remembers a token that was just verified with a key of `generation`
    /// (read before the key was chosen).
    pub async fn insert(&self, hash: Key, valid: &Valid, generation: u64) {
        self.insert_at(hash, valid, generation, claims::now()).await;
    }

    async fn insert_at(&self, hash: Key, valid: &Valid, generation: u64, now: f64) {
        let ttl = valid.window.remaining(self.leeway, now, MAX_AGE);
        if ttl.is_zero() {
            return;
        }
        let units = valid.granted.heap_bytes().div_ceil(WEIGHT_UNIT).max(1);
        let weight = u32::try_from(units).unwrap_or(u32::MAX);
        let entry = Entry { granted: valid.granted.clone(), window: valid.window, generation, ttl, weight };
        self.cache.insert(hash, Arc::new(entry)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: f64 = 1_800_000_000.0;
    const LEEWAY: Duration = Duration::from_secs(5);

    fn valid(exp: f64, nbf: Option<f64>) -> Valid {
        Valid { granted: Granted::from_claims(Some(&json!("a b")), None), window: Window { exp, nbf } }
    }

    fn counted(metrics: &Metrics, result: &str) -> u64 {
        let text = metrics.encode(0);
        let line = format!("tokex_inbound_cache_total{{result=\"{result}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&line)).and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    #[tokio::test]
    async fn entries_weigh_by_their_scopes() {
        let metrics = Metrics::new();
        let c = VerifiedCache::new(LEEWAY, &metrics);
        c.insert_at([1; 32], &valid(NOW + 60.0, None), 1, NOW).await;
        let many: Vec<String> = (0..2000).map(|i| format!("s{i}")).collect();
        let big = Valid {
            granted: Granted::from_claims(Some(&json!(many.join(" "))), None),
            window: Window { exp: NOW + 60.0, nbf: None },
        };
        c.insert_at([2; 32], &big, 1, NOW).await;
        c.cache.run_pending_tasks().await;
        let want = 1 + big.granted.heap_bytes().div_ceil(WEIGHT_UNIT) as u64;
        assert!(want > 100, "{want}");
        assert_eq!(c.cache.weighted_size(), want, "an ordinary entry weighs 1, a large one by its bytes");
    }

    #[tokio::test]
    async fn a_hit_needs_the_same_token_and_key_generation() {
        let metrics = Metrics::new();
        let c = VerifiedCache::new(LEEWAY, &metrics);
        assert_eq!(c.get_at(&[1; 32], 1, NOW).await, Ok(None));
        c.insert_at([1; 32], &valid(NOW + 60.0, None), 1, NOW).await;
        let granted = c.get_at(&[1; 32], 1, NOW + 1.0).await.unwrap().unwrap();
        assert!(granted.contains("a") && granted.contains("b"));
        assert_eq!(c.get_at(&[2; 32], 1, NOW).await, Ok(None), "another token");
        assert_eq!(c.get_at(&[1; 32], 2, NOW).await, Ok(None), "keys changed since");
        assert_eq!((counted(&metrics, "hit"), counted(&metrics, "miss")), (1, 3));
        // Verified again under the new generation: a hit there, not under the old one.
        c.insert_at([1; 32], &valid(NOW + 60.0, None), 2, NOW).await;
        assert!(c.get_at(&[1; 32], 2, NOW).await.unwrap().is_some());
        assert_eq!(c.get_at(&[1; 32], 1, NOW).await, Ok(None));
    }

    #[tokio::test]
    async fn a_hit_checks_exp_and_nbf_with_the_leeway() {
        let c = VerifiedCache::new(LEEWAY, &Metrics::new());
        c.insert_at([1; 32], &valid(NOW + 1.0, None), 1, NOW).await;
        assert!(c.get_at(&[1; 32], 1, NOW + 6.0).await.unwrap().is_some(), "exp + leeway is still valid");
        assert_eq!(c.get_at(&[1; 32], 1, NOW + 6.01).await, Err(Invalid::Expired));
        assert_eq!(c.get_at(&[1; 32], 1, NOW).await, Ok(None), "an expired entry is dropped");
        // A clock set back before nbf - leeway: refused, as the uncached path would.
        c.insert_at([3; 32], &valid(NOW + 60.0, Some(NOW + 3.0)), 1, NOW).await;
        assert!(c.get_at(&[3; 32], 1, NOW).await.unwrap().is_some());
        assert_eq!(c.get_at(&[3; 32], 1, NOW - 2.5).await, Err(Invalid::NotYetValid));
    }

    #[tokio::test]
    async fn entries_live_until_exp_and_leeway_at_most_max_age() {
        let c = VerifiedCache::new(LEEWAY, &Metrics::new());
        let ttl = |hash: Key| {
            let c = &c;
            async move { c.cache.get(&hash).await.map(|e| e.ttl) }
        };
        c.insert_at([1; 32], &valid(NOW + 10.0, None), 1, NOW).await;
        assert_eq!(ttl([1; 32]).await, Some(Duration::from_secs(15)));
        c.insert_at([2; 32], &valid(NOW + 86_400.0, None), 1, NOW).await;
        assert_eq!(ttl([2; 32]).await, Some(MAX_AGE));
        // Nothing is left of a token past exp + leeway: not stored.
        c.insert_at([3; 32], &valid(NOW - 5.0, None), 1, NOW).await;
        assert_eq!(ttl([3; 32]).await, None);
    }

    #[tokio::test]
    async fn entries_expire_in_the_cache_too() {
        let c = VerifiedCache::new(Duration::ZERO, &Metrics::new());
        let now = claims::now();
        c.insert_at([1; 32], &valid(now + 0.2, None), 1, now).await;
        assert!(c.cache.get(&[1; 32]).await.is_some());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(c.cache.get(&[1; 32]).await.is_none(), "moka still holds an entry past its exp");
    }
}
