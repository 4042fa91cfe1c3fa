//! The exchange: what is sent to the AS, the cache, and how AS answers map
//! to the caller.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test]
async fn sends_the_rfc8693_form_and_forwards_the_new_token() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let routes = format!(
        "  - name: orders\n    match: {{ path_prefix: /orders }}\n    upstream: http://{backend}\n    exchange:\n      authorization_server: corp\n      audience: [orders-api, audit-api]\n      resource: [\"https://orders.internal/\", \"https://audit.internal/\"]\n      scope: [orders:read, orders:list]\n      requested_token_type: urn:ietf:params:oauth:token-type:access_token\n"
    );
    let gw = TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &routes)).await;

    let (status, _, body) = get(&format!("{}/orders/1?x=1", gw.url), Some("broad-token")).await;
    assert_eq!(status, 200, "{body}");
    let echo = echoed(&body);
    assert_eq!(seen(&echo, "authorization"), vec!["Bearer exchanged-1"]);
    assert_eq!(echo["path"], "/orders/1");
    assert_eq!(echo["query"], "x=1");
    assert!(!body.contains("broad-token"), "the broad token reached the backend: {body}");

    let r = auth_server.last();
    assert_eq!(r.path, "/token");
    assert_eq!(r.param("grant_type"), Some("urn:ietf:params:oauth:grant-type:token-exchange"));
    assert_eq!(r.param("subject_token"), Some("broad-token"));
    assert_eq!(r.param("subject_token_type"), Some("urn:ietf:params:oauth:token-type:access_token"));
    assert_eq!(r.params("audience"), vec!["orders-api", "audit-api"]);
    assert_eq!(r.params("resource"), vec!["https://orders.internal/", "https://audit.internal/"]);
    assert_eq!(r.param("scope"), Some("orders:read orders:list"));
    assert_eq!(r.param("requested_token_type"), Some("urn:ietf:params:oauth:token-type:access_token"));
    assert_eq!(r.param("actor_token"), None);
    assert_eq!(r.basic(), Some(("tokex".into(), "s3cret".into())));
    assert_eq!(r.param("client_secret"), None);
}

#[tokio::test]
async fn client_secret_basic_form_encodes_before_base64() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let auth = "{ method: client_secret_basic, client_id: \"my client\", client_secret: \"p@ss:w rd\" }";
    let gw =
        TestGateway::start(&config_with(&auth_server.token_url(), auth, &exchange_route("a", "/", backend, ""))).await;
    assert_eq!(get(&gw.url, Some("t")).await.0, 200);
    let header = auth_server.last().headers.get("authorization").unwrap().to_str().unwrap().to_owned();
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode(header.trim_start_matches("Basic ")).unwrap();
    assert_eq!(String::from_utf8(decoded).unwrap(), "my+client:p%40ss%3Aw+rd");
}

#[tokio::test]
async fn client_secret_post_and_none() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let post = "{ method: client_secret_post, client_id: tokex, client_secret: s3cret }";
    let gw =
        TestGateway::start(&config_with(&auth_server.token_url(), post, &exchange_route("a", "/", backend, ""))).await;
    assert_eq!(get(&gw.url, Some("t1")).await.0, 200);
    let r = auth_server.last();
    assert_eq!((r.param("client_id"), r.param("client_secret")), (Some("tokex"), Some("s3cret")));
    assert!(r.headers.get("authorization").is_none());

    let none = "{ method: none, client_id: public-tokex }";
    let gw =
        TestGateway::start(&config_with(&auth_server.token_url(), none, &exchange_route("a", "/", backend, ""))).await;
    assert_eq!(get(&gw.url, Some("t2")).await.0, 200);
    let r = auth_server.last();
    assert_eq!((r.param("client_id"), r.param("client_secret")), (Some("public-tokex"), None));
    assert!(r.headers.get("authorization").is_none());
}

#[tokio::test]
async fn cache_hits_skip_the_authorization_server() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw =
        TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("a", "/", backend, "")))
            .await;
    for _ in 0..5 {
        let (status, _, body) = get(&format!("{}/x", gw.url), Some("same-subject")).await;
        assert_eq!(status, 200);
        assert_eq!(seen(&echoed(&body), "authorization"), vec!["Bearer exchanged-1"]);
    }
    assert_eq!(auth_server.count(), 1);
    get(&format!("{}/x", gw.url), Some("other-subject")).await;
    assert_eq!(auth_server.count(), 2);
    let m = gw.metrics().await;
    assert!(m.contains("tokex_cache_lookups_total{route=\"a\",result=\"hit\"} 4"), "{m}");
    assert!(m.contains("tokex_cache_lookups_total{route=\"a\",result=\"miss\"} 2"), "{m}");
    assert!(m.contains("tokex_exchanges_total{server=\"corp\",outcome=\"ok\"} 2"), "{m}");
    assert!(m.contains("tokex_cache_entries 2"), "{m}");
}

#[tokio::test]
async fn forty_concurrent_misses_make_one_exchange() {
    let auth_server = RecordingAs::start().await;
    auth_server.set(|_, n| Reply::Delay(Duration::from_millis(300), Box::new(issue(n))));
    let backend = echo_backend().await;
    let gw =
        TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("a", "/", backend, "")))
            .await;
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let url = gw.url.clone();
        tasks.push(tokio::spawn(async move { get(&url, Some("hot-subject")).await }));
    }
    for t in tasks {
        let (status, _, body) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(seen(&echoed(&body), "authorization"), vec!["Bearer exchanged-1"]);
    }
    assert_eq!(auth_server.count(), 1);
}

#[tokio::test]
async fn routes_do_not_share_tokens() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let routes = exchange_route("orders", "/orders", backend, "") + &exchange_route("billing", "/billing", backend, "");
    let gw = TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &routes)).await;
    let (_, _, a) = get(&format!("{}/orders", gw.url), Some("subject")).await;
    let (_, _, b) = get(&format!("{}/billing", gw.url), Some("subject")).await;
    let (_, _, a2) = get(&format!("{}/orders/2", gw.url), Some("subject")).await;
    assert_eq!(seen(&echoed(&a), "authorization"), vec!["Bearer exchanged-1"]);
    assert_eq!(seen(&echoed(&b), "authorization"), vec!["Bearer exchanged-2"]);
    assert_eq!(seen(&echoed(&a2), "authorization"), vec!["Bearer exchanged-1"]);
    let audiences: Vec<String> =
        auth_server.requests().iter().map(|r| r.param("audience").unwrap().to_owned()).collect();
    assert_eq!(audiences, vec!["orders-api", "billing-api"]);
}

/// Each AS answer → what the caller gets.
#[tokio::test]
async fn authorization_server_errors_map_to_the_caller() {
    let cases: Vec<(Reply, u16, Option<&str>)> = vec![
        (
            Reply::Json(400, json!({"error": "invalid_grant"})),
            401,
            Some("Bearer realm=\"tokex\", error=\"invalid_token\""),
        ),
        (
            Reply::Json(400, json!({"error": "invalid_scope"})),
            403,
            Some("Bearer realm=\"tokex\", error=\"insufficient_scope\", scope=\"a:read\""),
        ),
        (
            Reply::Json(400, json!({"error": "invalid_target"})),
            403,
            Some("Bearer realm=\"tokex\", error=\"insufficient_scope\", scope=\"a:read\""),
        ),
        (Reply::Json(401, json!({"error": "invalid_client"})), 502, None),
        (Reply::Json(400, json!({"error": "unauthorized_client"})), 502, None),
        (Reply::Json(400, json!({"error": "unsupported_grant_type"})), 502, None),
        (Reply::Raw(200, "text/html", b"<html>hello</html>".to_vec()), 502, None),
        (Reply::Json(200, json!({"access_token": "x"})), 502, None),
        (Reply::Raw(200, "application/json", vec![b' '; 70 * 1024]), 502, None),
        (Reply::Json(404, json!({})), 502, None),
    ];
    let backend = echo_backend().await;
    for (reply, want, challenge) in cases {
        let auth_server = RecordingAs::start().await;
        let r = reply.clone();
        auth_server.set(move |_, _| r.clone());
        let gw = TestGateway::start(&config_with(
            &auth_server.token_url(),
            BASIC_AUTH,
            &exchange_route("a", "/", backend, ""),
        ))
        .await;
        let (status, headers, body) = get(&gw.url, Some("subject")).await;
        assert_eq!(status.as_u16(), want, "{reply:?} -> {body}");
        assert_eq!(headers.get("www-authenticate").map(|v| v.to_str().unwrap()), challenge, "{reply:?}");
        assert!(body.starts_with("{\"error\":"), "{body}");
        assert_eq!(auth_server.count(), 1, "{reply:?} must not be retried");
    }
}

#[tokio::test]
async fn server_errors_are_retried_then_503_with_retry_after() {
    let auth_server = RecordingAs::start().await;
    auth_server.set(|_, _| Reply::Json(503, json!({"error": "temporarily_unavailable"})));
    let backend = echo_backend().await;
    let gw =
        TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("a", "/", backend, "")))
            .await;
    let (status, headers, _) = get(&gw.url, Some("subject")).await;
    assert_eq!(status, 503);
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    assert_eq!(auth_server.count(), 2, "retries: 1 means two attempts");

    // A transient failure then success: the caller sees 200.
    auth_server.set(|_, n| if n % 2 == 1 { Reply::Json(500, json!({})) } else { issue(n) });
    let (status, _, _) = get(&gw.url, Some("subject-2")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn unreachable_authorization_server_is_503() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let backend = echo_backend().await;
    let gw = TestGateway::start(&config_with(
        &format!("http://{dead}/token"),
        BASIC_AUTH,
        &exchange_route("a", "/", backend, ""),
    ))
    .await;
    let (status, headers, _) = get(&gw.url, Some("subject")).await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"));
}

#[tokio::test]
async fn a_hanging_authorization_server_is_bounded_by_the_timeout() {
    let auth_server = RecordingAs::start().await;
    auth_server.set(|_, n| Reply::Delay(Duration::from_secs(10), Box::new(issue(n))));
    let backend = echo_backend().await;
    let cfg = config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("a", "/", backend, ""))
        .replace("timeout: 2s", "timeout: 300ms");
    let gw = TestGateway::start(&cfg).await;
    let started = Instant::now();
    let (status, _, _) = get(&gw.url, Some("subject")).await;
    let waited = started.elapsed();
    assert_eq!(status, 503);
    assert!(waited >= Duration::from_millis(290) && waited < Duration::from_millis(800), "waited {waited:?}");
}

#[tokio::test]
async fn invalid_grant_is_negatively_cached() {
    let auth_server = RecordingAs::start().await;
    auth_server.set(|_, _| Reply::Json(400, json!({"error": "invalid_grant"})));
    let backend = echo_backend().await;
    let cfg = config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("a", "/", backend, ""))
        .replace("cache: { expiry_skew: 0s }", "cache: { expiry_skew: 0s, negative_ttl: 400ms }");
    let gw = TestGateway::start(&cfg).await;
    for _ in 0..3 {
        assert_eq!(get(&gw.url, Some("revoked")).await.0, 401);
    }
    assert_eq!(auth_server.count(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(&gw.url, Some("revoked")).await.0, 401);
    assert_eq!(auth_server.count(), 2);
}

#[tokio::test]
async fn lifetime_is_bounded_by_expires_in_max_ttl_and_subject_exp() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    // expires_in 1 s: the second call after 1.2 s exchanges again.
    auth_server.set(|_, n| {
        Reply::Json(200, json!({"access_token": format!("t{n}"), "token_type": "Bearer", "expires_in": 1}))
    });
    let gw =
        TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("a", "/", backend, "")))
            .await;
    get(&gw.url, Some("s1")).await;
    get(&gw.url, Some("s1")).await;
    assert_eq!(auth_server.count(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    get(&gw.url, Some("s1")).await;
    assert_eq!(auth_server.count(), 2);

    // max_ttl 1s caps a 60 s answer.
    auth_server.set(|_, n| issue(n));
    let gw = TestGateway::start(&config_with(
        &auth_server.token_url(),
        BASIC_AUTH,
        &exchange_route("b", "/", backend, "      max_ttl: 1s\n"),
    ))
    .await;
    get(&gw.url, Some("s2")).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    get(&gw.url, Some("s2")).await;
    assert_eq!(auth_server.count(), 4);

    // A subject JWT expiring in 2 s caps it too (exp has 1 s granularity).
    let gw =
        TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("c", "/", backend, "")))
            .await;
    let jwt = fake_jwt(json!({"sub": "alice", "exp": now() + 2}));
    get(&gw.url, Some(&jwt)).await;
    get(&gw.url, Some(&jwt)).await;
    assert_eq!(auth_server.count(), 5);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    get(&gw.url, Some(&jwt)).await;
    assert_eq!(auth_server.count(), 6);
}

#[tokio::test]
async fn expiry_skew_and_default_ttl() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    // No expires_in: default_ttl (1s) applies. Skew 2s > ttl: never cached.
    auth_server.set(|_, n| Reply::Json(200, json!({"access_token": format!("t{n}"), "token_type": "N_A"})));
    let routes = exchange_route("a", "/", backend, "      default_ttl: 1s\n");
    let cfg = config_with(&auth_server.token_url(), BASIC_AUTH, &routes).replace("expiry_skew: 0s", "expiry_skew: 2s");
    let gw = TestGateway::start(&cfg).await;
    get(&gw.url, Some("s")).await;
    get(&gw.url, Some("s")).await;
    assert_eq!(auth_server.count(), 2);
}

#[tokio::test]
async fn backend_invalid_token_evicts_the_cache_entry() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    // Without the retry (tests/resilience.rs has it): the caller gets the 401.
    let route = exchange_route("a", "/", backend, "    retry_on_invalid_token: false\n");
    let gw = TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &route)).await;
    assert_eq!(get(&format!("{}/x", gw.url), Some("s")).await.0, 200);
    // A 401 without invalid_token keeps the entry.
    let resp = client().get(format!("{}/status/401", gw.url)).bearer_auth("s").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(get(&format!("{}/x", gw.url), Some("s")).await.0, 200);
    assert_eq!(auth_server.count(), 1);
    // A 401 with error="invalid_token" evicts it.
    let resp = client()
        .get(format!("{}/status/401", gw.url))
        .bearer_auth("s")
        .header("x-echo-www-authenticate", "Bearer error=\"invalid_token\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let (_, _, body) = get(&format!("{}/x", gw.url), Some("s")).await;
    assert_eq!(auth_server.count(), 2);
    assert_eq!(seen(&echoed(&body), "authorization"), vec!["Bearer exchanged-2"]);
}

#[tokio::test]
async fn refresh_ahead_renews_in_the_background() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    auth_server.set(|_, n| {
        Reply::Json(200, json!({"access_token": format!("t{n}"), "token_type": "Bearer", "expires_in": 2}))
    });
    let cfg = config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("a", "/", backend, ""))
        .replace("cache: { expiry_skew: 0s }", "cache: { expiry_skew: 0s, refresh_ahead: 1500ms }");
    let gw = TestGateway::start(&cfg).await;
    get(&gw.url, Some("s")).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Within 1.5 s of expiry: served from cache, and a refresh starts.
    let (_, _, body) = get(&gw.url, Some("s")).await;
    assert_eq!(seen(&echoed(&body), "authorization"), vec!["Bearer t1"]);
    assert!(eventually(Duration::from_secs(2), || auth_server.count() == 2).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, _, body) = get(&gw.url, Some("s")).await;
    assert_eq!(seen(&echoed(&body), "authorization"), vec!["Bearer t2"]);
}

#[tokio::test]
async fn actor_token_file_is_sent_and_reread_on_rotation() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let dir = std::env::temp_dir().join(format!("tokex-actor-{}-{}", std::process::id(), now()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "actor-one\n").unwrap();
    let extra = format!("      actor:\n        token_file: {}\n", file.display());
    let gw = TestGateway::start(&config_with(
        &auth_server.token_url(),
        BASIC_AUTH,
        &exchange_route("a", "/", backend, &extra),
    ))
    .await;
    get(&gw.url, Some("s1")).await;
    let r = auth_server.last();
    assert_eq!(r.param("actor_token"), Some("actor-one"));
    assert_eq!(r.param("actor_token_type"), Some("urn:ietf:params:oauth:token-type:jwt"));
    // Kubernetes-style rotation: write a new file, rename it over the old one.
    let tmp = dir.join("token.tmp");
    std::fs::write(&tmp, "actor-two").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    get(&gw.url, Some("s2")).await;
    assert_eq!(auth_server.last().param("actor_token"), Some("actor-two"));
    // The cache is keyed by the actor's identity (the file), not its current value.
    get(&gw.url, Some("s1")).await;
    assert_eq!(auth_server.count(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn inline_actor_token() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let extra = "      actor:\n        token: inline-actor\n        token_type: urn:ietf:params:oauth:token-type:access_token\n";
    let gw = TestGateway::start(&config_with(
        &auth_server.token_url(),
        BASIC_AUTH,
        &exchange_route("a", "/", backend, extra),
    ))
    .await;
    get(&gw.url, Some("s1")).await;
    let r = auth_server.last();
    assert_eq!(r.param("actor_token"), Some("inline-actor"));
    assert_eq!(r.param("actor_token_type"), Some("urn:ietf:params:oauth:token-type:access_token"));
}
