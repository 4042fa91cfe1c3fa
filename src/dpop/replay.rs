//! The DPoP replay cache: every accepted proof's `(jkt, jti)` is kept
//! until its `iat` leaves the acceptance window, so a proof is accepted
//! once. Bounded: when full it refuses new proofs (fail closed) rather than
//! forgetting live ones, which would let them be replayed. Sixteen shards,
//! each swept of expired entries at most once a second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::verify::{ProofError, Verified};

const SHARDS: usize = 16;

struct Shard {
    /// Proof id → the second (since `epoch`) after which it may be forgotten.
    seen: HashMap<[u8; 16], u64>,
    next_sweep: u64,
}

pub struct ReplayCache {
    shards: Vec<Mutex<Shard>>,
    len: AtomicUsize,
    max: usize,
    epoch: Instant,
    /// Unix time of `epoch`, to place a proof's `iat`.
    epoch_unix: u64,
}

impl std::fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache").field("len", &self.len()).field("max", &self.max).finish()
    }
}

impl ReplayCache {
    /// Holds at most `max` proofs.
    pub fn new(max: usize) -> Self {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        ReplayCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard { seen: HashMap::new(), next_sweep: 0 })).collect(),
            len: AtomicUsize::new(0),
            max: max.max(1),
            epoch: Instant::now(),
            epoch_unix: unix,
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records `proof`, accepted with an `iat` window reaching `window`
    /// into the past and the future; `Replayed` when it was seen before.
    pub fn first_use(&self, proof: &Verified, window: Duration) -> Result<(), ProofError> {
        let id: [u8; 32] = Sha256::new()
            .chain_update(proof.jkt.as_bytes())
            .chain_update([0u8])
            .chain_update(proof.jti.as_bytes())
            .finalize()
            .into();
        let mut key = [0u8; 16];
        key.copy_from_slice(&id[..16]);
        let now = self.epoch.elapsed().as_secs();
        // Kept until its iat is out of the window, measured on this clock.
        let iat = proof.iat.saturating_sub(self.epoch_unix);
        let until = iat.max(now) + window.as_secs() + 1;
        let shard = &self.shards[usize::from(key[0]) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        if now >= shard.next_sweep {
            let before = shard.seen.len();
            shard.seen.retain(|_, until| *until > now);
            self.len.fetch_sub(before - shard.seen.len(), Ordering::Relaxed);
            shard.next_sweep = now + 1;
        }
        if let Some(kept) = shard.seen.get(&key) {
            if *kept > now {
                return Err(ProofError::Replayed);
            }
        }
        if self.len() >= self.max {
            return Err(ProofError::ReplayFull);
        }
        if shard.seen.insert(key, until).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
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
        assert_eq!(c.first_use(&proof("a"), w), Ok(()));
        assert_eq!(c.first_use(&proof("a"), w), Err(ProofError::Replayed));
        let other_key = Verified { jkt: "other".into(), ..proof("a") };
        assert_eq!(c.first_use(&other_key, w), Ok(()), "another key's jti is another proof");
        assert_eq!(c.first_use(&proof("b"), w), Err(ProofError::ReplayFull), "full: refused, nothing forgotten");
        assert_eq!(c.first_use(&proof("a"), w), Err(ProofError::Replayed));
        assert_eq!(c.len(), 2);
    }
}
