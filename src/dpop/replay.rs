//! The DPoP replay cache: every accepted proof's `(jkt, jti)` is kept
//! with its `iat` until that leaves the acceptance window (the window of
//! the moment: a reload that widens it keeps older proofs longer), so a
//! proof is accepted once. Bounded: when full it refuses new proofs (fail
//! closed) rather than forgetting live ones, which would let them be
//! replayed. Sixteen shards, each swept of expired entries at most once a
//! second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::verify::{ProofError, Verified};

const SHARDS: usize = 16;

struct Shard {
    /// Proof id → its `iat` (Unix seconds).
    seen: HashMap<[u8; 16], u64>,
    next_sweep: u64,
}

pub struct ReplayCache {
    shards: Vec<Mutex<Shard>>,
    len: AtomicUsize,
    max: AtomicUsize,
    epoch: Instant,
    /// Unix time of `epoch`: now is measured on the monotonic clock from it.
    epoch_unix: u64,
    /// The widest window (seconds) ever asked for: entries are kept that
    /// long, so a reload that widens the window finds every proof it covers.
    widest: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache").field("len", &self.len()).field("max", &self.max.load(Ordering::Relaxed)).finish()
    }
}

impl ReplayCache {
    /// Holds at most `max` proofs.
    pub fn new(max: usize) -> Self {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        ReplayCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard { seen: HashMap::new(), next_sweep: 0 })).collect(),
            len: AtomicUsize::new(0),
            max: AtomicUsize::new(max.max(1)),
            epoch: Instant::now(),
            epoch_unix: unix,
            widest: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reload's new bound (the proofs held are kept).
    pub fn set_max(&self, max: usize) {
        self.max.store(max.max(1), Ordering::Relaxed);
    }

    fn id(proof: &Verified) -> [u8; 16] {
        let id: [u8; 32] = Sha256::new()
            .chain_update(proof.jkt.as_bytes())
            .chain_update([0u8])
            .chain_update(proof.jti.as_bytes())
            .finalize()
            .into();
        let mut key = [0u8; 16];
        key.copy_from_slice(&id[..16]);
        key
    }

    /// `window`, or a wider one asked for before.
    fn keep(&self, window: Duration) -> Duration {
        let secs = self.widest.fetch_max(window.as_secs(), Ordering::Relaxed).max(window.as_secs());
        Duration::from_secs(secs)
    }

    /// Unix seconds now.
    fn now(&self) -> u64 {
        self.epoch_unix + self.epoch.elapsed().as_secs()
    }

    /// Whether `proof` was accepted before and is still remembered (no
    /// change: a proof is remembered only once the request is accepted).
    pub fn seen(&self, proof: &Verified, window: Duration) -> bool {
        let window = self.keep(window);
        let key = Self::id(proof);
        let now = self.now();
        let shard = self.shards[usize::from(key[0]) % SHARDS].lock().unwrap_or_else(|p| p.into_inner());
        shard.seen.get(&key).is_some_and(|iat| live(*iat, window, now))
    }

    /// Records `proof`, whose `iat` was accepted within `window` (back and
    /// ahead); `Replayed` when it was recorded before, `ReplayFull` when
    /// the cache holds its bound.
    pub fn first_use(&self, proof: &Verified, window: Duration) -> Result<(), ProofError> {
        let window = self.keep(window);
        let key = Self::id(proof);
        let now = self.now();
        let iat = proof.iat;
        let mut shard = self.shards[usize::from(key[0]) % SHARDS].lock().unwrap_or_else(|p| p.into_inner());
        if now >= shard.next_sweep {
            let before = shard.seen.len();
            shard.seen.retain(|_, iat| live(*iat, window, now));
            self.len.fetch_sub(before - shard.seen.len(), Ordering::Relaxed);
            shard.next_sweep = now + 1;
        }
        if shard.seen.get(&key).is_some_and(|iat| live(*iat, window, now)) {
            return Err(ProofError::Replayed);
        }
        if self.len() >= self.max.load(Ordering::Relaxed) {
            return Err(ProofError::ReplayFull);
        }
        if shard.seen.insert(key, iat).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// A proof issued at `iat` is still inside `window` at `now` (a second of slack).
fn live(iat: u64, window: Duration, now: u64) -> bool {
    iat + window.as_secs() + 1 >= now
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proof(jti: &str) -> Verified {
        let iat = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        Verified { jkt: "k".into(), jti: jti.into(), iat }
    }

    #[test]
    fn a_proof_is_accepted_once_and_the_cache_is_bounded() {
        let c = ReplayCache::new(2);
        let w = Duration::from_secs(60);
        assert!(!c.seen(&proof("a"), w));
        assert_eq!(c.first_use(&proof("a"), w), Ok(()));
        assert!(c.seen(&proof("a"), w));
        assert_eq!(c.first_use(&proof("a"), w), Err(ProofError::Replayed));
        let other_key = Verified { jkt: "other".into(), ..proof("a") };
        assert_eq!(c.first_use(&other_key, w), Ok(()), "another key's jti is another proof");
        assert_eq!(c.first_use(&proof("b"), w), Err(ProofError::ReplayFull), "full: refused, nothing forgotten");
        assert_eq!(c.first_use(&proof("a"), w), Err(ProofError::Replayed));
        assert_eq!(c.len(), 2);
        c.set_max(3);
        assert_eq!(c.first_use(&proof("b"), w), Ok(()), "a reload's larger bound");
    }

    #[test]
    fn an_old_proof_is_kept_as_long_as_the_window_of_the_moment() {
        let c = ReplayCache::new(10);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let old = Verified { jkt: "k".into(), jti: "old".into(), iat: now - 30 };
        assert_eq!(c.first_use(&old, Duration::from_secs(60)), Ok(()));
        assert!(c.seen(&old, Duration::from_secs(600)), "a wider window keeps it");
        let fresh = ReplayCache::new(10);
        assert_eq!(fresh.first_use(&old, Duration::from_secs(10)), Ok(()));
        assert!(!fresh.seen(&old, Duration::from_secs(10)), "out of a 10 s window");
        assert!(fresh.seen(&old, Duration::from_secs(600)), "kept for a window widened later");
    }
}
