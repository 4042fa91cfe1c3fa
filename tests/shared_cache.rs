//! `cache.shared`: several gateways and one real `redis-server` (started by
//! the test on a free port). One exchange for the fleet, nothing usable in
//! the store, tampering is a miss, and a store that dies costs nothing but
//! local misses.

mod common;

use std::time::Duration;

use common::process::temp_dir;
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
    let mut all = Vec::new();
    for _ in 0..100 {
        all = store.dump().await;
        if all.iter().filter(|(k, _)| !k.ends_with(":lease")).count() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Leases are left to expire once their value is stored; they hold "1".
    for (key, value) in all.iter().filter(|(k, _)| k.ends_with(":lease")) {
        assert!(key.starts_with("t1:t:"), "{key}");
        assert_eq!(value.as_slice(), b"1", "{key}");
    }
    let dump: Vec<(String, Vec<u8>)> = all.into_iter().filter(|(k, _)| !k.ends_with(":lease")).collect();
    assert_eq!(dump.len(), 5, "one entry per subject");
    for (key, value) in &dump {
        assert!(key.starts_with("t1:t:"), "{key}");
        let text = String::from_utf8_lossy(value);
        for (i, t) in tokens.iter().enumerate() {
            let sha = hex(&<sha2::Sha256 as sha2::Digest>::digest(t.as_bytes()));
            for needle in [t.as_str(), t.split('.').nth(1).unwrap_or(t), &format!("user-{i}"), "exchanged-", &sha[..16]]
            {
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
    // Eight clients, each sending a new subject (so every request goes to
    // the store) and a known one, while the store is killed and restarted.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut sent, mut failed, mut slowest) = (0u32, 0u32, Duration::ZERO);
                let known = subject(&format!("known-{c}"));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for t in [subject(&format!("load-{c}-{sent}")), known.clone()] {
                        let started = std::time::Instant::now();
                        if get(&url, Some(&t)).await.0.as_u16() != 200 {
                            failed += 1;
                        }
                        slowest = slowest.max(started.elapsed());
                        sent += 1;
                    }
                }
                (sent, failed, slowest)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.kill();
    tokio::time::sleep(Duration::from_millis(600)).await;
    store.restart().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut sent, mut failed) = (0, 0);
    for c in clients {
        let (s, f, slowest) = c.await.unwrap();
        sent += s;
        failed += f;
        // The store adds at most its 200 ms budget to a request.
        assert!(slowest < Duration::from_millis(900), "a request waited {slowest:?}");
    }
    assert!(sent > 50, "load ran: {sent} requests");
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
    // Used again after the restart (once the back-off is over and the
    // client has reconnected): new subjects' tokens are written there.
    let mut written = false;
    for i in 0..50 {
        let (status, _, _) = get(&url, Some(&subject(&format!("after-restart-{i}")))).await;
        assert_eq!(status.as_u16(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !store.dump().await.is_empty() {
            written = true;
            break;
        }
    }
    let metrics = gw.metrics().await;
    assert!(written, "the restarted store is written again:\n{metrics}");
    // /readyz never depended on it.
    let (status, _, _) = get(&format!("{}/readyz", gw.admin), None).await;
    assert_eq!(status.as_u16(), 200);
}

/// `rediss://` to a store whose certificate a private CA signed, trusted
/// through `ca_file`; without it the store is not trusted and tokex runs
/// local-only.
#[tokio::test]
async fn rediss_with_a_private_ca() {
    let dir = temp_dir("rediss");
    let pki = common::certs::local_pki();
    let (ca_path, cert_path, key_path) = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&ca_path, &pki.ca_pem).unwrap();
    std::fs::write(&cert_path, &pki.cert_pem).unwrap();
    std::fs::write(&key_path, &pki.key_pem).unwrap();
    let store = RedisServer::start_tls(&cert_path, &key_path, &ca_path).await;
    let url = format!("rediss://{}/0", store.addr);

    let as_ = RecordingAs::start().await;
    let backend = echo_backend().await;
    let trusted = format!("  shared: {{ url: \"{url}\", timeout: 500ms, ca_file: {} }}\n", ca_path.display());
    let a = TestGateway::start(&config(&as_.token_url(), backend, &trusted)).await;
    let b = TestGateway::start(&config(&as_.token_url(), backend, &trusted)).await;
    let t = subject("tls-user");
    assert_eq!(get(&format!("{}/orders/1", a.url), Some(&t)).await.0.as_u16(), 200);
    // The value is written in the background: wait until it is there.
    let mut conn_ok = false;
    for _ in 0..100 {
        let m = a.metrics().await;
        if m.contains("tokex_shared_cache_operations_total{op=\"put\",result=\"ok\"} 1") {
            conn_ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(conn_ok, "replica a stored the token over TLS:\n{}", a.metrics().await);
    assert_eq!(get(&format!("{}/orders/1", b.url), Some(&t)).await.0.as_u16(), 200);
    assert_eq!(as_.count(), 1, "the second replica read the TLS store");

    // Without the CA: not trusted, local-only, no request fails.
    let untrusted = format!("  shared: {{ url: \"{url}\", timeout: 500ms }}\n");
    let c = TestGateway::start(&config(&as_.token_url(), backend, &untrusted)).await;
    let before = as_.count();
    assert_eq!(get(&format!("{}/orders/1", c.url), Some(&t)).await.0.as_u16(), 200);
    assert_eq!(as_.count(), before + 1, "an untrusted store is not used");
    let m = c.metrics().await;
    assert!(m.contains("tokex_shared_cache_operations_total{op=\"get\",result=\"error\"} 1"), "{m}");
    // A CA file without a certificate is refused when the store is built.
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let cfg = tokex::config::parse(&format!(
        "listen: {{ address: \"127.0.0.1:0\" }}\n{}",
        config(&as_.token_url(), backend, &format!("  shared: {{ url: \"{url}\", ca_file: {} }}\n", empty.display()))
    ))
    .unwrap();
    let err = tokex::app::start(cfg).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("holds no PEM certificate"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A token the backend refuses leaves the store too: the next replica
/// exchanges afresh instead of reading it back.
#[tokio::test]
async fn a_refused_token_leaves_the_store() {
    let store = RedisServer::start().await;
    let as_ = RecordingAs::start().await;
    let backend = echo_backend().await;
    // A route whose backend path is the echo backend's `/status/NNN`.
    let yaml = config(&as_.token_url(), backend, &shared(&store.url()))
        .replace("routes:\n", &format!("routes:\n{}", exchange_route("st", "/status", backend, "")));
    let gws = [TestGateway::start(&yaml).await, TestGateway::start(&yaml).await];
    let t = subject("refused-user");
    assert_eq!(get(&format!("{}/status/200", gws[0].url), Some(&t)).await.0.as_u16(), 200);
    let entries = || async { store.dump().await.into_iter().filter(|(k, _)| !k.ends_with(":lease")).count() };
    for _ in 0..100 {
        if entries().await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(entries().await, 1);
    // The backend says 401 invalid_token (a POST: no retry, just eviction).
    let (status, _, _) = client()
        .post(format!("{}/status/401", gws[0].url))
        .bearer_auth(&t)
        .header("x-echo-www-authenticate", "Bearer error=\"invalid_token\"")
        .body("x")
        .send()
        .await
        .map(|r| (r.status(), (), ()))
        .unwrap();
    assert_eq!(status.as_u16(), 401);
    assert!(store.dump().await.is_empty(), "the entry and its lease are gone from the store");
    let before = as_.count();
    assert_eq!(get(&format!("{}/status/200", gws[1].url), Some(&t)).await.0.as_u16(), 200);
    assert_eq!(as_.count(), before + 1);
}

/// `password_file` is re-read when it changes: after the store's password
/// is rotated (and its connections dropped), tokex reconnects with the new
/// one.
#[tokio::test]
async fn a_rotated_password_file_is_used_for_the_next_connection() {
    let store = RedisServer::start().await;
    let mut admin = store.connection().await;
    let _: () =
        redis::cmd("CONFIG").arg("SET").arg("requirepass").arg("first-pw").query_async(&mut admin).await.unwrap();
    let dir = temp_dir("redis-pw");
    let pw = dir.join("password");
    std::fs::write(&pw, "first-pw\n").unwrap();
    let as_ = RecordingAs::start().await;
    let backend = echo_backend().await;
    let block = format!("  shared: {{ url: \"{}\", timeout: 300ms, password_file: {} }}\n", store.url(), pw.display());
    let gw = TestGateway::start(&config(&as_.token_url(), backend, &block)).await;
    // Entries only (not their leases, nor the subject sets revocation keeps).
    let count = |store_dump: &Vec<(String, Vec<u8>)>| {
        store_dump.iter().filter(|(k, _)| k.contains(":t:") && !k.ends_with(":lease")).count()
    };
    let authed = || async {
        let client = redis::Client::open(format!("redis://:{}@{}/0", "first-pw", store.addr)).unwrap();
        client.get_multiplexed_async_connection().await.ok()
    };
    let dump_with = |pwd: &'static str| {
        let addr = store.addr;
        async move {
            let client = redis::Client::open(format!("redis://:{pwd}@{addr}/0")).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut c).await.unwrap();
            keys.into_iter().map(|k| (k, Vec::new())).collect::<Vec<_>>()
        }
    };
    assert!(authed().await.is_some());
    assert_eq!(get(&format!("{}/orders/1", gw.url), Some(&subject("pw-1"))).await.0.as_u16(), 200);
    let mut n = 0;
    for _ in 0..100 {
        n = count(&dump_with("first-pw").await);
        if n == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(n, 1, "written with the first password");

    // Rotate: the store takes the new password, the file follows, and the
    // old connections are dropped.
    let mut admin = authed().await.unwrap();
    let _: () =
        redis::cmd("CONFIG").arg("SET").arg("requirepass").arg("second-pw").query_async(&mut admin).await.unwrap();
    std::fs::write(&pw, "second-pw\n").unwrap();
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query_async(&mut admin)
        .await
        .unwrap_or(redis::Value::Nil);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut written = false;
    for i in 0..40 {
        assert_eq!(get(&format!("{}/orders/1", gw.url), Some(&subject(&format!("pw-2-{i}")))).await.0.as_u16(), 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
        if count(&dump_with("second-pw").await) > 1 {
            written = true;
            break;
        }
    }
    assert!(written, "written again with the second password");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The replica holding the lease fails its exchange: the others take over
/// at once instead of waiting out the budget.
#[tokio::test]
async fn a_failed_lease_holder_hands_over() {
    let store = RedisServer::start().await;
    let as_ = RecordingAs::start().await;
    as_.set(|_, n| {
        if n == 1 {
            Reply::Delay(
                Duration::from_millis(200),
                Box::new(Reply::Json(503, json!({"error": "temporarily_unavailable"}))),
            )
        } else {
            Reply::Delay(Duration::from_millis(100), Box::new(issue(n)))
        }
    });
    let backend = echo_backend().await;
    let gws = fleet(3, &as_.token_url(), backend, &store.url()).await;
    let token = subject("handover");
    let started = std::time::Instant::now();
    let calls = gws.iter().map(|g| {
        let url = format!("{}/orders/1", g.url);
        let token = token.clone();
        async move { get(&url, Some(&token)).await.0.as_u16() }
    });
    let mut statuses = futures_util::future::join_all(calls).await;
    statuses.sort();
    assert_eq!(statuses, [200, 200, 503], "the holder's caller gets the AS's 503; the others a token");
    assert_eq!(as_.count(), 2, "one failed exchange, then one for the other two");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "no one waited out the 3 s budget: {:?}",
        started.elapsed()
    );
}

#[test]
fn shared_cache_settings_are_checked() {
    let base = |shared: &str| {
        format!(
            "listen: {{ address: \"127.0.0.1:8080\" }}\ncache:\n  shared: {shared}\nroutes:\n  - {{ name: r, auth: none, upstream: \"http://127.0.0.1:1\" }}\n"
        )
    };
    let ok = tokex::config::parse(&base("{ url: \"redis://127.0.0.1:6379/0\" }")).unwrap();
    let s = ok.cache.shared.unwrap();
    assert_eq!((s.timeout, s.key_prefix.as_str()), (Duration::from_millis(50), "tokex:"));
    for (shared, want) in [
        ("{ url: \"http://127.0.0.1:6379\" }", "cache.shared.url: invalid store URL"),
        ("{ url: \"redis://user:pw@127.0.0.1:6379/0\" }", "cache.shared.url: no credentials in the URL"),
        ("{ url: \"redis://127.0.0.1:6379/x\" }", "is not a number"),
        ("{ url: \"redis://127.0.0.1\", password: a, password_file: /x }", "set either password or password_file"),
        ("{ url: \"redis://127.0.0.1\", timeout: 10s }", "cache.shared.timeout"),
        ("{ url: \"redis://127.0.0.1\", key_prefix: \"a b\" }", "cache.shared.key_prefix"),
        ("{ url: \"redis://127.0.0.1\", ca_file: /etc/hostname }", "only used with a rediss:// URL"),
        ("{ url: \"redis://127.0.0.1\", password_file: /nonexistent/pw }", "cache.shared.password_file: cannot read"),
        ("{ url: \"redis://127.0.0.1\", bogus: 1 }", "unknown field `bogus`"),
    ] {
        let errors = common::config_errors(&base(shared));
        assert!(errors.contains(want), "{shared}: want {want:?} in:\n{errors}");
    }
}

/// A lease whose holder died (planted here, as a crashed replica would leave
/// it) delays the others by at most its one-second life, not a whole budget.
#[tokio::test]
async fn a_dead_lease_holder_costs_at_most_the_lease() {
    let store = RedisServer::start().await;
    let as_ = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = TestGateway::start(&config(&as_.token_url(), backend, &shared(&store.url()))).await;
    let t = subject("orphan");
    // Find the key the gateway uses: one request, then read it back.
    assert_eq!(get(&format!("{}/orders/1", gw.url), Some(&t)).await.0.as_u16(), 200);
    let mut key = None;
    for _ in 0..100 {
        key = store.dump().await.into_iter().map(|(k, _)| k).find(|k| !k.ends_with(":lease"));
        if key.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let key = key.expect("the entry was stored");
    // Another replica, same store: the value is gone and a lease is held by
    // a replica that died (1 s, as tokex sets it).
    let mut conn = store.connection().await;
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.unwrap();
    let _: () =
        redis::cmd("SET").arg(format!("{key}:lease")).arg(1).arg("PX").arg(1000).query_async(&mut conn).await.unwrap();
    let other = TestGateway::start(&config(&as_.token_url(), backend, &shared(&store.url()))).await;
    let started = std::time::Instant::now();
    assert_eq!(get(&format!("{}/orders/1", other.url), Some(&t)).await.0.as_u16(), 200);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1600), "waited {took:?} for a dead lease (budget 3 s)");
    assert_eq!(as_.count(), 2);
}

/// Two routes that ask for the same audience and scope but may keep a token
/// for different times, or two deployments with different clients, never
/// share an entry; a refusal is never shared.
#[tokio::test]
async fn what_shapes_a_token_separates_entries_and_refusals_stay_local() {
    let store = RedisServer::start().await;
    let as_ = RecordingAs::start().await;
    let backend = echo_backend().await;
    let routes = |max: &str| {
        format!(
            "  - name: a\n    match: {{ path_prefix: /a }}\n    upstream: http://{backend}\n    exchange: {{ authorization_server: corp, audience: [x], scope: [s], max_ttl: {max} }}\n"
        )
    };
    let yaml = |client_id: &str, max: &str| {
        format!(
            "authorization_servers:\n  corp:\n    token_endpoint: {}\n    client_auth: {{ method: client_secret_basic, client_id: {client_id}, client_secret: s3cret }}\n    timeout: 3s\n    retries: 0\ncache:\n  expiry_skew: 0s\n{}routes:\n{}",
            as_.token_url(),
            shared(&store.url()),
            routes(max)
        )
    };
    let base = TestGateway::start(&yaml("tokex", "60s")).await;
    let shorter = TestGateway::start(&yaml("tokex", "5s")).await;
    let other_client = TestGateway::start(&yaml("another-client", "60s")).await;
    let same = TestGateway::start(&yaml("tokex", "60s")).await;
    let t = subject("shaped");
    assert_eq!(get(&format!("{}/a/1", base.url), Some(&t)).await.0.as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(&format!("{}/a/1", shorter.url), Some(&t)).await.0.as_u16(), 200);
    assert_eq!(get(&format!("{}/a/1", other_client.url), Some(&t)).await.0.as_u16(), 200);
    assert_eq!(as_.count(), 3, "another max_ttl and another client each exchange");
    assert_eq!(get(&format!("{}/a/1", same.url), Some(&t)).await.0.as_u16(), 200);
    assert_eq!(as_.count(), 3, "the same policy shares");

    // invalid_grant: remembered locally, never written to the store.
    as_.set(|_, _| Reply::Json(400, json!({"error": "invalid_grant"})));
    let bad = subject("refused-grant");
    assert_eq!(get(&format!("{}/a/1", base.url), Some(&bad)).await.0.as_u16(), 401);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let values = store.dump().await.into_iter().filter(|(k, _)| !k.ends_with(":lease")).count();
    assert_eq!(values, 3, "only the three tokens are in the store");
}
