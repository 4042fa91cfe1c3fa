//! Protecting the authorization server (SPEC §5): the concurrency bound, the
//! circuit breaker, `exchange.max_rate`, `Retry-After` from the AS, and the
//! retry with a fresh token after a backend `401 invalid_token`.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::json;

/// An AS that answers every request after `delay` (a token, or `status`
/// when it is not 200), counting requests and the most it held in flight at once.
struct SlowAs {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

async fn slow_as(delay: Duration, status: u16) -> SlowAs {
    let calls = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let now = Arc::new(AtomicUsize::new(0));
    let (c, p) = (calls.clone(), peak.clone());
    let addr = serve(move |_req: Request<Incoming>| {
        let (c, p, now) = (c.clone(), p.clone(), now.clone());
        async move {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            now.fetch_sub(1, Ordering::SeqCst);
            if status != 200 {
                return Response::builder().status(status).body(full("")).unwrap();
            }
            let body = json!({"access_token": format!("t{n}"), "token_type": "Bearer", "expires_in": 60});
            Response::builder().header("content-type", "application/json").body(full(body.to_string())).unwrap()
        }
    })
    .await;
    SlowAs { addr, calls, peak }
}

fn server(url: &str, settings: &str) -> String {
    format!(
        "authorization_servers:\n  corp:\n    token_endpoint: {url}\n{settings}cache: {{ expiry_skew: 0s }}\nroutes:\n"
    )
}

#[tokio::test]
async fn the_concurrency_bound_holds_and_waiters_get_503_within_their_budget() {
    let auth_server = slow_as(Duration::from_millis(300), 200).await;
    let backend = echo_backend().await;
    let settings =
        "    timeout: 1s\n    retries: 0\n    max_concurrent: 4\n    circuit_breaker: { consecutive_failures: 0 }\n";
    let cfg = server(&format!("http://{}/token", auth_server.addr), settings) + &exchange_route("a", "/", backend, "");
    let gw = TestGateway::start(&cfg).await;
    let started = Instant::now();
    let answers = futures_util::future::join_all((0..24).map(|i| {
        let url = gw.url.clone();
        async move {
            let t = Instant::now();
            let (status, headers, _) = get(&url, Some(&format!("subject-{i}"))).await;
            (status.as_u16(), headers.get("retry-after").cloned(), t.elapsed())
        }
    }))
    .await;
    assert!(auth_server.peak.load(Ordering::SeqCst) <= 4, "peak {}", auth_server.peak.load(Ordering::SeqCst));
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let unavailable: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    assert!(ok >= 8, "three waves of four fit in the budget: {answers:?}");
    assert_eq!(ok + unavailable.len(), 24, "{answers:?}");
    assert!(!unavailable.is_empty(), "24 requests of 300 ms at 4 at once do not fit 1 s: {answers:?}");
    assert!(unavailable.iter().all(|a| a.1.is_some()), "503 carries Retry-After");
    for a in &answers {
        assert!(a.2 < Duration::from_millis(1600), "waited within the budget: {a:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(gw.metrics().await.contains("tokex_exchanges_in_flight{server=\"corp\"} 0"));
}

#[tokio::test]
async fn waiters_for_one_key_share_one_exchange_under_the_bound() {
    let auth_server = slow_as(Duration::from_millis(200), 200).await;
    let backend = echo_backend().await;
    let cfg = server(&format!("http://{}/token", auth_server.addr), "    max_concurrent: 1\n")
        + &exchange_route("a", "/", backend, "");
    let gw = TestGateway::start(&cfg).await;
    let answers = futures_util::future::join_all((0..10).map(|_| get(&gw.url, Some("the-same-subject")))).await;
    assert!(answers.iter().all(|a| a.0 == 200));
    assert_eq!(auth_server.calls.load(Ordering::SeqCst), 1);
}

/// An AS whose answers are switched between a token and a status code.
fn switchable(auth_server: &RecordingAs, failing: &Arc<Mutex<Option<u16>>>) {
    let failing = failing.clone();
    auth_server.set(move |_, n| match *failing.lock().unwrap() {
        Some(status) => Reply::Json(status, json!({"error": "temporarily_unavailable"})),
        None => issue(n),
    });
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_spares_cached_traffic_and_probes_once() {
    let auth_server = RecordingAs::start().await;
    let failing = Arc::new(Mutex::new(None));
    switchable(&auth_server, &failing);
    let backend = echo_backend().await;
    let settings = "    retries: 0\n    circuit_breaker: { consecutive_failures: 3, open_for: 1s }\n";
    let gw = TestGateway::start(&(server(&auth_server.token_url(), settings) + &exchange_route("a", "/", backend, "")))
        .await;
    assert_eq!(get(&gw.url, Some("cached")).await.0, 200);
    *failing.lock().unwrap() = Some(503);
    for i in 0..3 {
        assert_eq!(get(&gw.url, Some(&format!("new-{i}"))).await.0, 503);
    }
    assert_eq!(auth_server.count(), 4);
    assert!(gw.metrics().await.contains("tokex_circuit_breaker_open{server=\"corp\"} 1"));
    // Open: no call, an answer at once, Retry-After the time left.
    for i in 0..10 {
        let t = Instant::now();
        let (status, headers, body) = get(&gw.url, Some(&format!("open-{i}"))).await;
        assert_eq!(status, 503, "{body}");
        assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
        assert_eq!(headers["retry-after"], "1");
    }
    assert_eq!(auth_server.count(), 4);
    let m = gw.metrics().await;
    assert!(m.contains("tokex_exchanges_total{server=\"corp\",outcome=\"circuit_open\"} 10"), "{m}");
    // Cached traffic never notices.
    assert_eq!(get(&gw.url, Some("cached")).await.0, 200);
    // After open_for: one probe; it fails, so the breaker opens again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&gw.url, Some("probe-1")).await.0, 503);
    assert_eq!(auth_server.count(), 5);
    assert_eq!(get(&gw.url, Some("probe-2")).await.0, 503);
    assert_eq!(auth_server.count(), 5);
    // The AS is back: exactly one probe among concurrent requests, then closed.
    *failing.lock().unwrap() = None;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let burst = futures_util::future::join_all((0..5).map(|i| {
        let url = gw.url.clone();
        async move { get(&url, Some(&format!("after-{i}"))).await.0 }
    }))
    .await;
    assert_eq!(auth_server.count(), 6, "one probe: {burst:?}");
    assert_eq!(burst.iter().filter(|s| s.as_u16() == 200).count(), 1, "{burst:?}");
    assert_eq!(get(&gw.url, Some("after-closed")).await.0, 200);
    assert!(gw.metrics().await.contains("tokex_circuit_breaker_open{server=\"corp\"} 0"));
}

#[tokio::test]
async fn a_healthy_as_saying_no_does_not_open_the_breaker() {
    let auth_server = RecordingAs::start().await;
    auth_server.set(|_, _| Reply::Json(400, json!({"error": "invalid_grant"})));
    let backend = echo_backend().await;
    let settings = "    circuit_breaker: { consecutive_failures: 2, open_for: 10s }\n";
    let gw = TestGateway::start(&(server(&auth_server.token_url(), settings) + &exchange_route("a", "/", backend, "")))
        .await;
    for i in 0..6 {
        assert_eq!(get(&gw.url, Some(&format!("refused-{i}"))).await.0, 401);
    }
    assert_eq!(auth_server.count(), 6, "no retries of a 4xx, and no breaker");
    // 429 counts: two requests with their retry each open it.
    auth_server.set(|_, _| Reply::Json(429, json!({})));
    assert_eq!(get(&gw.url, Some("throttled")).await.0, 503);
    assert!(gw.metrics().await.contains("tokex_circuit_breaker_open{server=\"corp\"} 1"));
}

#[tokio::test]
async fn max_rate_limits_new_exchanges_per_route_and_per_client() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let routes = exchange_route("a", "/a", backend, "      max_rate: { per_second: 0.5, burst: 2 }\n")
        + &exchange_route("b", "/b", backend, "      max_rate: { per_client: 0.5, per_client_burst: 1 }\n");
    let gw = TestGateway::start(&(server(&auth_server.token_url(), "") + &routes)).await;
    let a = format!("{}/a", gw.url);
    assert_eq!(get(&a, Some("s1")).await.0, 200);
    assert_eq!(get(&a, Some("s2")).await.0, 200);
    let (status, headers, body) = get(&a, Some("s3")).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("rate_limited"));
    assert!(headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    // Cached traffic never counts.
    for _ in 0..5 {
        assert_eq!(get(&a, Some("s1")).await.0, 200);
    }
    assert_eq!(auth_server.count(), 2);
    // Per client: 127.0.0.1 has spent its one; 127.0.0.2 has its own.
    let b = format!("{}/b", gw.url);
    let from = |ip: [u8; 4]| {
        let tls = tokex::exchange::client::tls_config(None).unwrap();
        reqwest::Client::builder().use_preconfigured_tls(tls).local_address(std::net::IpAddr::from(ip)).build().unwrap()
    };
    let status = |c: reqwest::Client, subject: &'static str| {
        let b = b.clone();
        async move { c.get(b).bearer_auth(subject).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(from([127, 0, 0, 1]), "c1").await, 200);
    assert_eq!(status(from([127, 0, 0, 1]), "c2").await, 429);
    assert_eq!(status(from([127, 0, 0, 2]), "c3").await, 200);
    let m = gw.metrics().await;
    assert!(m.contains("tokex_exchanges_rate_limited_total{route=\"a\",limit=\"route\"} 1"), "{m}");
    assert!(m.contains("tokex_exchanges_rate_limited_total{route=\"b\",limit=\"client\"} 1"), "{m}");
}

#[tokio::test]
async fn retry_after_from_the_as_is_honoured_within_the_budget() {
    let auth_server = RecordingAs::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let backend = echo_backend().await;
    let c = calls.clone();
    auth_server.set(move |_, n| match c.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::Raw(429, "application/json", b"{}".to_vec()),
        _ => issue(n),
    });
    let settings = "    timeout: 3s\n    retries: 1\n";
    let gw = TestGateway::start(&(server(&auth_server.token_url(), settings) + &exchange_route("a", "/", backend, "")))
        .await;
    // A 429 without Retry-After: the usual short backoff.
    let t = Instant::now();
    assert_eq!(get(&gw.url, Some("one")).await.0, 200);
    assert!(t.elapsed() < Duration::from_millis(500));
    drop(gw);

    let throttled = throttling_as("1").await;
    let cfg = server(&format!("http://{}/token", throttled.0), settings) + &exchange_route("a", "/", backend, "");
    let gw = TestGateway::start(&cfg).await;
    let t = Instant::now();
    assert_eq!(get(&gw.url, Some("two")).await.0, 200);
    assert!(t.elapsed() >= Duration::from_secs(1), "waited as asked: {:?}", t.elapsed());
    assert_eq!(throttled.1.load(Ordering::SeqCst), 2);

    // Asked for more than the budget holds: no second call, the wait passed on.
    let throttled = throttling_as("30").await;
    let cfg = server(&format!("http://{}/token", throttled.0), settings) + &exchange_route("a", "/", backend, "");
    let gw = TestGateway::start(&cfg).await;
    let t = Instant::now();
    let (status, headers, _) = get(&gw.url, Some("three")).await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "30");
    assert!(t.elapsed() < Duration::from_millis(500));
    assert_eq!(throttled.1.load(Ordering::SeqCst), 1);
}

/// An AS whose first answer is `503` with `Retry-After: secs`, then tokens.
async fn throttling_as(secs: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let addr = serve(move |_req: Request<Incoming>| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                return Response::builder().status(503).header("retry-after", secs).body(full("")).unwrap();
            }
            let body = json!({"access_token": "t", "token_type": "Bearer", "expires_in": 60});
            Response::builder().header("content-type", "application/json").body(full(body.to_string())).unwrap()
        }
    })
    .await;
    (addr, calls)
}

/// A backend that answers `401 invalid_token` to the tokens in `refused`
/// and echoes the token it accepts.
async fn picky_backend(refused: Arc<Mutex<HashSet<String>>>) -> SocketAddr {
    serve(move |req: Request<Incoming>| {
        let refused = refused.clone();
        async move {
            let token = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            if refused.lock().unwrap().contains(&token) || refused.lock().unwrap().contains("*") {
                return Response::builder()
                    .status(401)
                    .header("www-authenticate", "Bearer error=\"invalid_token\"")
                    .body(full(format!("refused {token}")))
                    .unwrap();
            }
            Response::new(full(token))
        }
    })
    .await
}

#[tokio::test]
async fn a_refused_token_is_exchanged_again_and_the_request_retried_once() {
    let auth_server = RecordingAs::start().await;
    let refused = Arc::new(Mutex::new(HashSet::from(["Bearer exchanged-1".to_owned()])));
    let backend = picky_backend(refused.clone()).await;
    let gw =
        TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("a", "/", backend, "")))
            .await;
    // The caller sees only the second answer.
    let (status, _, body) = get(&gw.url, Some("s")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "Bearer exchanged-2"));
    assert_eq!(auth_server.count(), 2);
    // The fresh token is cached.
    assert_eq!(get(&gw.url, Some("s")).await.2, "Bearer exchanged-2");
    assert_eq!(auth_server.count(), 2);

    // With a body: no retry; the backend's 401, and the entry is evicted.
    refused.lock().unwrap().insert("Bearer exchanged-2".into());
    let resp = client().post(&gw.url).bearer_auth("s").body("payload").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.text().await.unwrap(), "refused Bearer exchanged-2");
    assert_eq!(auth_server.count(), 2);
    // The next request gets a fresh token.
    let resp = client().post(&gw.url).bearer_auth("s").send().await.unwrap();
    assert_eq!(resp.status(), 200, "the evicted entry was exchanged again");
    assert_eq!(auth_server.count(), 3);

    // The fresh token refused too: the backend's second 401, both evicted.
    refused.lock().unwrap().insert("*".into());
    let (status, headers, body) = get(&gw.url, Some("s")).await;
    assert_eq!(status, 401);
    assert_eq!(body, "refused Bearer exchanged-4");
    assert!(headers["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    assert_eq!(auth_server.count(), 4);
    refused.lock().unwrap().clear();
    assert_eq!(get(&gw.url, Some("s")).await.2, "Bearer exchanged-5");
    let m = gw.metrics().await;
    assert!(m.contains("tokex_invalid_token_retries_total{route=\"a\",result=\"ok\"} 1"), "{m}");
    assert!(m.contains("tokex_invalid_token_retries_total{route=\"a\",result=\"refused\"} 1"), "{m}");
}

#[tokio::test]
async fn the_retry_can_be_turned_off_and_a_failed_exchange_keeps_the_backend_answer() {
    let auth_server = RecordingAs::start().await;
    let refused = Arc::new(Mutex::new(HashSet::from(["Bearer exchanged-1".to_owned()])));
    let backend = picky_backend(refused.clone()).await;
    let routes = exchange_route("off", "/off", backend, "    retry_on_invalid_token: false\n")
        + &exchange_route("on", "/on", backend, "");
    let gw = TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &routes)).await;
    let (status, _, body) = get(&format!("{}/off", gw.url), Some("s")).await;
    assert_eq!((status.as_u16(), body.as_str()), (401, "refused Bearer exchanged-1"));
    assert_eq!(auth_server.count(), 1);
    // The AS cannot give a fresh token: the caller gets the backend's 401.
    refused.lock().unwrap().insert("Bearer exchanged-2".into());
    auth_server.set(|_, n| match n {
        2 => issue(n),
        _ => Reply::Json(503, json!({})),
    });
    let (status, _, body) = get(&format!("{}/on", gw.url), Some("s")).await;
    assert_eq!((status.as_u16(), body.as_str()), (401, "refused Bearer exchanged-2"));
}

#[tokio::test]
async fn a_reload_keeps_the_breaker_and_the_buckets_unless_their_settings_change() {
    let auth_server = RecordingAs::start().await;
    auth_server.set(|_, _| Reply::Json(503, json!({})));
    let backend = echo_backend().await;
    let settings = "    retries: 0\n    circuit_breaker: { consecutive_failures: 1, open_for: 30s }\n";
    let route = exchange_route("a", "/", backend, "      max_rate: { per_second: 0.01, burst: 2 }\n");
    let yaml = server(&auth_server.token_url(), settings) + &route;
    let gw = TestGateway::start(&yaml).await;
    assert_eq!(get(&gw.url, Some("one")).await.0, 503);
    assert_eq!(auth_server.count(), 1);

    let dir = std::env::temp_dir().join(format!("tokex-resilience-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokex.yaml");
    let listen = "listen: { address: \"127.0.0.1:0\" }\n";
    // Another route added, the server and the route's limit unchanged: still open.
    let other = "  - name: health\n    match: { path: /health }\n    upstream: http://127.0.0.1:1\n    auth: none\n";
    std::fs::write(&path, format!("{listen}{yaml}{other}")).unwrap();
    assert!(gw.running.reload(&path, "test"));
    auth_server.set(|_, n| issue(n));
    let (status, headers, _) = get(&gw.url, Some("two")).await;
    assert_eq!(status, 503);
    assert!(headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() > 20);
    assert_eq!(auth_server.count(), 1);

    // New breaker settings: a new, closed breaker; the route's bucket (one
    // exchange spent of two) carries over.
    let changed = yaml.replace("open_for: 30s", "open_for: 29s");
    std::fs::write(&path, format!("{listen}{changed}{other}")).unwrap();
    assert!(gw.running.reload(&path, "test"));
    assert_eq!(get(&gw.url, Some("three")).await.0, 200);
    assert_eq!(get(&gw.url, Some("four")).await.0, 429);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn requests_queued_for_a_slot_do_not_call_the_as_once_the_breaker_opens() {
    let auth_server = slow_as(Duration::from_millis(200), 503).await;
    let backend = echo_backend().await;
    let settings = "    timeout: 3s\n    retries: 0\n    max_concurrent: 1\n    circuit_breaker: { consecutive_failures: 1, open_for: 30s }\n";
    let cfg = server(&format!("http://{}/token", auth_server.addr), settings) + &exchange_route("a", "/", backend, "");
    let gw = TestGateway::start(&cfg).await;
    let answers = futures_util::future::join_all((0..5).map(|i| {
        let url = gw.url.clone();
        async move { get(&url, Some(&format!("queued-{i}"))).await.0.as_u16() }
    }))
    .await;
    assert_eq!(answers, vec![503; 5]);
    assert_eq!(auth_server.calls.load(Ordering::SeqCst), 1, "the four queued behind the failure were refused");
}

#[tokio::test]
async fn waiting_for_a_slot_does_not_make_a_healthy_as_look_slow() {
    // Each answer takes 600 ms of a 1 s budget and one slot: the third caller
    // runs out of budget mostly waiting, which says nothing about the AS.
    let auth_server = slow_as(Duration::from_millis(600), 200).await;
    let backend = echo_backend().await;
    let settings = "    timeout: 1s\n    retries: 0\n    max_concurrent: 1\n    circuit_breaker: { consecutive_failures: 2, open_for: 30s }\n";
    let cfg = server(&format!("http://{}/token", auth_server.addr), settings) + &exchange_route("a", "/", backend, "");
    let gw = TestGateway::start(&cfg).await;
    let answers = futures_util::future::join_all((0..3).map(|i| {
        let url = gw.url.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(50 * i)).await;
            get(&url, Some(&format!("staggered-{i}"))).await.0.as_u16()
        }
    }))
    .await;
    assert_eq!(answers[0], 200);
    assert!(gw.metrics().await.contains("tokex_circuit_breaker_open{server=\"corp\"} 0"), "{answers:?}");
    assert_eq!(get(&gw.url, Some("afterwards")).await.0, 200);
}

#[tokio::test]
async fn a_call_that_opened_the_breaker_is_reported_as_the_call_it_was() {
    let auth_server = RecordingAs::start().await;
    auth_server.set(|_, _| Reply::Json(503, json!({})));
    let backend = echo_backend().await;
    let settings = "    retries: 2\n    circuit_breaker: { consecutive_failures: 1, open_for: 30s }\n";
    let gw = TestGateway::start(&(server(&auth_server.token_url(), settings) + &exchange_route("a", "/", backend, "")))
        .await;
    let (status, headers, _) = get(&gw.url, Some("first")).await;
    assert_eq!((status.as_u16(), headers["retry-after"].to_str().unwrap()), (503, "1"));
    assert_eq!(auth_server.count(), 1, "no retry once the breaker is open");
    let m = gw.metrics().await;
    assert!(m.contains("tokex_exchanges_total{server=\"corp\",outcome=\"unavailable\"} 1"), "{m}");
    assert!(!m.contains("outcome=\"circuit_open\"} 1"), "{m}");
}

#[tokio::test]
async fn the_as_retry_after_is_passed_on_from_the_last_attempt() {
    let throttled = throttling_as("30").await;
    let backend = echo_backend().await;
    let settings = "    retries: 0\n";
    let cfg = server(&format!("http://{}/token", throttled.0), settings) + &exchange_route("a", "/", backend, "");
    let gw = TestGateway::start(&cfg).await;
    let (status, headers, _) = get(&gw.url, Some("s")).await;
    assert_eq!((status.as_u16(), headers["retry-after"].to_str().unwrap()), (503, "30"));
}

#[tokio::test]
async fn a_reload_to_another_endpoint_starts_a_fresh_breaker_and_a_rejected_one_keeps_the_gauge() {
    let old = RecordingAs::start().await;
    old.set(|_, _| Reply::Json(503, json!({})));
    let new = RecordingAs::start().await;
    let backend = echo_backend().await;
    let settings = "    retries: 0\n    circuit_breaker: { consecutive_failures: 1, open_for: 30s }\n";
    let route = exchange_route("a", "/", backend, "");
    let gw = TestGateway::start(&(server(&old.token_url(), settings) + &route)).await;
    assert_eq!(get(&gw.url, Some("one")).await.0, 503);

    let dir = std::env::temp_dir().join(format!("tokex-resilience-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokex.yaml");
    let listen = "listen: { address: \"127.0.0.1:0\" }\n";
    // A reload that fails (an unreadable CA file) leaves the breaker and its gauge alone.
    let broken = server(&old.token_url(), &format!("{settings}    ca_file: {}/missing.pem\n", dir.display()));
    std::fs::write(&path, format!("{listen}{broken}{route}")).unwrap();
    assert!(!gw.running.reload(&path, "test"));
    assert!(gw.metrics().await.contains("tokex_circuit_breaker_open{server=\"corp\"} 1"));
    // The server moved: its new endpoint is not refused for the old one's outage.
    std::fs::write(&path, format!("{listen}{}{route}", server(&new.token_url(), settings))).unwrap();
    assert!(gw.running.reload(&path, "test"));
    assert_eq!(get(&gw.url, Some("two")).await.0, 200);
    assert_eq!(new.count(), 1);
    assert!(gw.metrics().await.contains("tokex_circuit_breaker_open{server=\"corp\"} 0"));
    let _ = std::fs::remove_dir_all(&dir);
}
