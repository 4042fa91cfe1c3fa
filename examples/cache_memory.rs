//! Resident memory per cached token: fills the token cache with N entries
//! (an exchanged token of TOKEN_BYTES each, every entry forwarded once, as a
//! miss does) and prints the growth of this process's RSS per entry.
//!
//!   cargo run --release --example cache_memory -- [N] [TOKEN_BYTES] [MODE]
//!
//! MODE `cache` (default) is tokex's cache as a gateway that can purge
//! fills it: every entry with its revocation metadata, and in the subject
//! index (one subject per entry, by `sub` and `email`); `cache-noindex` is
//! the same without the index (a gateway with no admin token, no Shared
//! Signals and no shared store keeps none); `moka`, `moka-noexpiry` and
//! `moka-nolistener` are a bare moka cache with tokex's builder options
//! and a unit value (moka's own cost per entry); `values` keeps the entries
//! in a Vec (the value's own cost). Not a test: it takes seconds and a GiB.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokex::exchange::cache::{Entry, KeyHash, TokenCache};
use tokex::exchange::index::{id_of, Meta, SubjectIndex};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn key(i: u64) -> [u8; 32] {
    Sha256::digest(i.to_le_bytes()).into()
}

/// A token of `len` header-safe bytes, distinct per `i`.
fn token(i: u64, len: usize) -> String {
    let mut t = format!("eyJ{i:016x}.");
    t.extend(std::iter::repeat('Z').take(len.saturating_sub(t.len())));
    t
}

/// With `meta`, the metadata of an exchanged token (a subject of its own).
fn entry(i: u64, len: usize, meta: bool) -> Arc<Entry> {
    let meta = meta.then(|| {
        let sub = format!("user-{i}");
        Meta::new(7, id_of("sub", Some(&sub)), id_of("email", Some(&format!("{sub}@example.com"))), None)
    });
    let e = Entry::token(&token(i, len), None, Duration::from_secs(3600), meta).expect("a valid token");
    // Forwarded once (a miss forwards the token it just cached).
    if let tokex::exchange::cache::EntryKind::Token(t) = &e.kind {
        drop(t.authorization.clone());
    }
    e
}

fn moka(expiry: bool, listener: bool, n: u64) -> moka::future::Cache<[u8; 32], (), KeyHash> {
    struct Hour;
    impl moka::Expiry<[u8; 32], ()> for Hour {
        fn expire_after_create(&self, _: &[u8; 32], _: &(), _: std::time::Instant) -> Option<Duration> {
            Some(Duration::from_secs(3600))
        }
    }
    let mut b = moka::future::Cache::builder().max_capacity(n * 2);
    if expiry {
        b = b.expire_after(Hour);
    }
    if listener {
        b = b.eviction_listener(|_, _, _| {});
    }
    b.build_with_hasher(KeyHash)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let len: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(800);
    let mode = args.next().unwrap_or_else(|| "cache".into());
    let metrics = tokex::metrics::Metrics::new();
    let before = rss_bytes();
    let mut keep: Vec<Arc<Entry>> = Vec::new();
    let index = Arc::new(SubjectIndex::default());
    index.set_enabled(mode == "cache");
    let (cache, bare) = match mode.as_str() {
        "cache" | "cache-noindex" => (Some(TokenCache::new(n * 2, metrics.cache_evictions(), index.clone())), None),
        "moka" => (None, Some(moka(true, true, n))),
        "moka-noexpiry" => (None, Some(moka(false, true, n))),
        "moka-nolistener" => (None, Some(moka(true, false, n))),
        "values" => {
            keep.reserve_exact(usize::try_from(n).unwrap_or(0));
            (None, None)
        }
        other => panic!("unknown mode {other}"),
    };
    let base = rss_bytes();
    for i in 0..n {
        match (&cache, &bare) {
            (Some(c), _) => {
                let e = entry(i, len, true);
                if let Some(meta) = &e.meta {
                    index.add(&key(i), meta);
                }
                c.insert(key(i), e).await
            }
            (_, Some(m)) => m.insert(key(i), ()).await,
            _ => keep.push(entry(i, len, false)),
        }
    }
    if let Some(c) = &cache {
        c.sync().await;
        assert_eq!(c.entry_count(), n);
    }
    if let Some(m) = &bare {
        m.run_pending_tasks().await;
        assert_eq!(m.entry_count(), n);
    }
    let after = rss_bytes();
    let per = (after - base) as f64 / n as f64;
    println!(
        "{mode}: {n} entries, token {len} B: RSS {:.1} MiB (start {:.1} MiB, +{:.1} MiB for the empty container), {per:.0} B/entry",
        after as f64 / 1048576.0,
        before as f64 / 1048576.0,
        (base - before) as f64 / 1048576.0
    );
}
