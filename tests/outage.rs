//! An authorization server outage under load (its own test binary, so no
//! other test shares the machine while it measures): tokens are cached,
//! load runs for 20 s, the AS is killed at 5 s and comes back at 12 s.
//! Cached traffic must not fail; uncached requests answer 503 at once while
//! the breaker is open; AS calls during the outage are bounded by the
//! breaker; service recovers without a restart. `cargo test --test outage
//! -- --nocapture` prints the figures quoted in the README.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::faulty::{Faulty, Mode};
use common::*;
use tokio::net::{TcpListener, TcpStream};

const RUN: Duration = Duration::from_secs(20);
const KILL_AT: Duration = Duration::from_secs(5);
const BACK_AT: Duration = Duration::from_secs(12);
const WORKERS: usize = 4;

/// A TCP front for the AS that counts every connection made to it (each
/// request of tokex's during the outage is a new connection) and passes it
/// to the AS, or closes it when the AS refuses.
async fn counting_front(to: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, count)
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    cached: bool,
    status: u16,
    latency: Duration,
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_as_outage_under_load() {
    let auth_server = Faulty::start(Mode::token("exchanged", "\"expires_in\":300")).await;
    let (front, calls) = counting_front(auth_server.addr).await;
    let backend = echo_backend().await;
    // The defaults of the breaker (5 failures, 5 s) and of max_concurrent.
    let cfg = format!(
        "authorization_servers:\n  corp:\n    token_endpoint: http://{front}/token\n    timeout: 1s\n    retries: 2\nroutes:\n{}",
        exchange_route("api", "/", backend, "")
    );
    let gw = TestGateway::start(&cfg).await;
    for i in 0..20 {
        assert_eq!(get(&gw.url, Some(&format!("cached-{i}"))).await.0, 200);
    }

    let started = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    // The breaker's state, sampled from /metrics every 20 ms.
    let breaker: Arc<Mutex<Vec<(Duration, bool)>>> = Arc::default();
    let watcher = {
        let (breaker, stop, admin) = (breaker.clone(), stop.clone(), gw.admin.clone());
        tokio::spawn(async move {
            let http = client();
            while !stop.load(Ordering::SeqCst) {
                if let Ok(r) = http.get(format!("{admin}/metrics")).send().await {
                    let open =
                        r.text().await.unwrap_or_default().contains("tokex_circuit_breaker_open{server=\"corp\"} 1");
                    breaker.lock().unwrap().push((started.elapsed(), open));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (url, samples, stop) = (gw.url.clone(), samples.clone(), stop.clone());
            tokio::spawn(async move {
                let http = client();
                let mut i = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let cached = i % 4 != 0;
                    let subject = if cached { format!("cached-{}", i % 20) } else { format!("new-{w}-{i}") };
                    let t = Instant::now();
                    let at = started.elapsed();
                    let status = match http.get(&url).bearer_auth(&subject).send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    samples.lock().unwrap().push(Sample { at, cached, status, latency: t.elapsed() });
                }
            })
        })
        .collect();

    tokio::time::sleep(KILL_AT).await;
    auth_server.down().await;
    let calls_at_kill = calls.load(Ordering::SeqCst);
    tokio::time::sleep(BACK_AT - KILL_AT).await;
    let calls_in_outage = calls.load(Ordering::SeqCst) - calls_at_kill;
    auth_server.up().await;
    tokio::time::sleep(RUN - BACK_AT).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    watcher.await.unwrap();

    let samples = samples.lock().unwrap().clone();
    let breaker = breaker.lock().unwrap().clone();
    let cached: Vec<_> = samples.iter().filter(|s| s.cached).collect();
    let cached_failures = cached.iter().filter(|s| s.status != 200).count();
    let opened = breaker.iter().find(|(at, open)| *open && *at >= KILL_AT).map(|b| b.0);
    let closed = breaker.iter().find(|(at, open)| !*open && *at >= BACK_AT).map(|b| b.0);
    let (Some(opened), Some(closed)) = (opened, closed) else {
        panic!("the breaker opened during the outage and closed after it: {breaker:?}")
    };
    // The last sample that saw it open: it was open until then at least.
    let open_until = breaker.iter().filter(|(at, open)| *open && *at < closed).map(|b| b.0).max().unwrap_or(opened);
    // Uncached requests made entirely while the breaker was surely open.
    let while_open: Vec<_> =
        samples.iter().filter(|s| !s.cached && s.at > opened && s.at + s.latency < open_until).collect();
    // The first uncached request served after the AS returned (the probe),
    // and every uncached one started after it finished.
    let recovered =
        samples.iter().find(|s| !s.cached && s.at >= BACK_AT && s.status == 200).map(|s| (s.at, s.at + s.latency));
    let after: Vec<_> = samples.iter().filter(|s| !s.cached && recovered.is_some_and(|r| s.at > r.1)).collect();
    let fast: Vec<_> = while_open.iter().map(|s| s.latency).collect();
    let outage_uncached: Vec<_> = samples.iter().filter(|s| !s.cached && s.at >= KILL_AT && s.at < BACK_AT).collect();
    eprintln!(
        "OUTAGE FIGURES: {} requests in {:?} ({} cached, {} uncached); cached failures: {cached_failures}; \
         AS killed at {KILL_AT:?}, back at {BACK_AT:?}; breaker opened at {opened:?} ({:?} after the kill), \
         closed at {closed:?}; uncached during the outage: {} ({} answered 503); uncached while open: {}, \
         503 in p50 {:?} / p99 {:?} / max {:?}; AS calls during the outage: {calls_in_outage}; \
         first uncached 200 after the AS returned: {:?} ({:?} after); uncached after recovery: {} ({} not 200)",
        samples.len(),
        RUN,
        cached.len(),
        samples.len() - cached.len(),
        opened - KILL_AT,
        outage_uncached.len(),
        outage_uncached.iter().filter(|s| s.status == 503).count(),
        while_open.len(),
        percentile(fast.clone(), 0.5),
        percentile(fast.clone(), 0.99),
        fast.iter().max().copied().unwrap_or_default(),
        recovered.map(|r| r.0),
        recovered.map(|r| r.0 - BACK_AT),
        after.len(),
        after.iter().filter(|s| s.status != 200).count(),
    );

    assert_eq!(cached_failures, 0, "cached tokens never fail");
    assert!(opened - KILL_AT < Duration::from_secs(2), "the breaker opened quickly: {opened:?}");
    assert!(!while_open.is_empty());
    assert!(while_open.iter().all(|s| s.status == 503), "uncached requests answer 503 while open");
    assert!(percentile(fast.clone(), 0.99) < Duration::from_millis(50), "503 at once while open: {fast:?}");
    // Before it opens: five failures, and the requests in flight at the
    // kill (each with its retries); then one probe per open_for.
    let bound = 5 + WORKERS * 3 + 2;
    assert!(calls_in_outage <= bound, "AS calls during the outage: {calls_in_outage} > {bound}");
    let (recovered, _) = recovered.expect("service recovered without a restart");
    assert!(recovered - BACK_AT <= Duration::from_secs(6), "recovered within open_for and a probe");
    assert!(!after.is_empty() && after.iter().all(|s| s.status == 200), "all uncached requests served after recovery");
}
