//! `cache.shared`: several gateways and one real `redis-server` (started by
//! the test on a free port). One exchange for the fleet, nothing usable in
//! the store, tampering is a miss, and a store that dies costs nothing but
//! local misses.

mod common;

use std::time::Duration;

use common::redis_server::RedisServer;
use common::*;
use serde_json::json;

/// A subject token that looks like a real JWT (so `sub` could leak).
fn subject(sub: &str) -> String {
    fake_jwt(json!({"sub": sub, "exp": now() + 3600, "scope": "orders:read"}))
}

fn config(as_url: &str, backend: std::net::SocketAddr, shared: &str) -> String {
    format!(
        "authorization_servers:\n  corp:\n    token_endpoint: {as_url}\n    client_auth: {BASIC_AUTH}\n    timeout: 3s\n    retries: 0\ncache:\n  expiry_skew: 0s\n{shared}routes:\n{}",
        exchange_route("orders", "/orders", backend, "")
    )
}

fn shared(url: &str) -> String {
    format!("  shared: {{ url: \"{url}\", timeout: 200ms, key_prefix: \"t1:\" }}\n")
}

async fn fleet(n: usize, as_url: &str, backend: std::net::SocketAddr, store: &str) -> Vec<TestGateway> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(TestGateway::start(&config(as_url, backend, &shared(store))).await);
    }
    out
}

#[tokio::test]
async fn three_replicas_make_one_exchange_for_one_subject() {
    let store = RedisServer::start().await;
    let as_ = RecordingAs::start().await;
    // A slow AS, so the three requests overlap: one lease, two waiters.
    as_.set(|_, n| Reply::Delay(Duration::from_millis(300), Box::new(issue(n))));
    let backend = echo_backend().await;
    let gws = fleet(3, &as_.token_url(), backend, &store.url()).await;
    let token = subject("alice-7f3e");
    let calls = gws.iter().map(|g| {
        let url = format!("{}/orders/1", g.url);
        let token = token.clone();
        async move { get(&url, Some(&token)).await }
    });
    let answers = futures_util::future::join_all(calls).await;
    for (status, _, body) in &answers {
        assert_eq!(status.as_u16(), 200, "{body}");
        assert_eq!(seen(&echoed(body), "authorization"), ["Bearer exchanged-1"], "all three got the one token");
    }
    assert_eq!(as_.count(), 1, "one exchange for the fleet");

    // A later request on a fourth replica is a store hit: still one exchange.
    let late = TestGateway::start(&config(&as_.token_url(), backend, &shared(&store.url()))).await;
    let (status, _, body) = get(&format!("{}/orders/2", late.url), Some(&token)).await;
    assert_eq!(status.as_u16(), 200, "{body}");
    assert_eq!(as_.count(), 1);
    let metrics = late.metrics().await;
    assert!(metrics.contains("tokex_shared_cache_operations_total{op=\"get\",result=\"hit\"} 1"), "{metrics}");
}

#[tokio::test]
async fn the_store_holds_nothing_usable_and_tampering_is_a_miss() {
    let store = RedisServer::start().await;
    let as_ = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gws = fleet(2, &as_.token_url(), backend, &store.url()).await;
    let tokens: Vec<String> = (0..5).map(|i| subject(&format!("user-{i}-d41d8c"))).collect();
    for t in &tokens {
        assert_eq!(get(&format!("{}/orders/1", gws[0].url), Some(t)).await.0.as_u16(), 200);
    }
    assert_eq!(as_.count(), 5);
    // Values are written in the background, once the caller has its answer.
    let mut dump = Vec::new();
    for _ in 0..100 {
        dump = store.dump().await;
        if dump.len() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        dump.len(),
        5,
        "one entry per subject, no lease left behind: {:?}",
        dump.iter().map(|d| &d.0).collect::<Vec<_>>()
    );
    for (key, value) in &dump {
        assert!(key.starts_with("t1:t:"), "{key}");
        let text = String::from_utf8_lossy(value);
        for (i, t) in tokens.iter().enumerate() {
            let sha = hex(&<sha2::Sha256 as sha2::Digest>::digest(t.as_bytes()));
            for needle in [t.as_str(), &t[..20], &format!("user-{i}"), "exchanged-", &sha[..16]] {
                assert!(!key.contains(needle) && !text.contains(needle), "{needle:?} in the store: {key}");
            }
        }
    }

    // A value copied under another subject's key does not open: a miss, and
    // a fresh exchange on the second replica.
    let mut conn = store.connection().await;
    let (k0, v0) = &dump[0];
    for (k, _) in &dump[1..] {
        let _: () = redis::cmd("SET").arg(k).arg(v0.as_slice()).query_async(&mut conn).await.unwrap();
    }
    // And an altered value under its own key.
    let mut bad = v0.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let _: () = redis::cmd("SET").arg(k0).arg(bad).query_async(&mut conn).await.unwrap();
    for t in &tokens {
        let (status, _, body) = get(&format!("{}/orders/1", gws[1].url), Some(t)).await;
        assert_eq!(status.as_u16(), 200, "{body}");
        let got = seen(&echoed(&body), "authorization");
        assert!(got[0].starts_with("Bearer exchanged-"), "{got:?}");
    }
    assert_eq!(as_.count(), 10, "every tampered or copied value was a miss");
}

#[tokio::test]
async fn a_store_that_dies_under_load_costs_no_request_and_is_used_again() {
    let mut store = RedisServer::start().await;
    let as_ = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = TestGateway::start(&config(&as_.token_url(), backend, &shared(&store.url()))).await;
    let url = format!("{}/orders/1", gw.url);
    let mut failed = 0;
    for round in 0..60 {
        if round == 20 {
            store.kill();
        }
        if round == 40 {
            store.restart().await;
        }
        // A new subject each time: every request goes to the store.
        let t = subject(&format!("load-{round}"));
        let started = std::time::Instant::now();
        let (status, _, _) = get(&url, Some(&t)).await;
        if status.as_u16() != 200 {
            failed += 1;
        }
        // The store adds at most its 200 ms budget to a miss.
        assert!(started.elapsed() < Duration::from_millis(700), "round {round}: the store made a request wait");
    }
    assert_eq!(failed, 0, "no request fails because of the store");
    let metrics = gw.metrics().await;
    let errors: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("tokex_shared_cache_operations_total") && (l.contains("error") || l.contains("timeout"))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(errors > 0, "the outage is visible:\n{metrics}");
    // Used again after the restart (once the back-off is over): a new
    // subject's token is written there.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, _) = get(&url, Some(&subject("after-restart"))).await;
    assert_eq!(status.as_u16(), 200);
    let mut written = false;
    for _ in 0..100 {
        if !store.dump().await.is_empty() {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(written, "the restarted store is written again");
    // /readyz never depended on it.
    let (status, _, _) = get(&format!("{}/readyz", gw.admin), None).await;
    assert_eq!(status.as_u16(), 200);
}
