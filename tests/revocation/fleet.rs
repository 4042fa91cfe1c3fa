//! Two replicas and one real `redis-server`: a purge on one (admin or SSF)
//! deletes the store's entries and reaches the other replica's local cache
//! through the purge log.

use common::jwt::metric;
use common::redis_server::RedisServer;

use super::*;

async fn replicas(auth_server: &RecordingAs, store: &RedisServer) -> (TestGateway, TestGateway) {
    let backend = echo_backend().await;
    let shared = format!(
        "cache:\n  expiry_skew: 0s\n  shared: {{ url: \"redis://{}/0\", timeout: 500ms, key_prefix: \"rv:\" }}\n",
        store.addr
    );
    let yaml = admin_section() + &config(auth_server, backend, "", "").replace("cache: { expiry_skew: 0s }\n", &shared);
    (TestGateway::start(&yaml).await, TestGateway::start(&yaml).await)
}

fn replica_purges(metrics: &str) -> u64 {
    metric(metrics, "tokex_cache_purged_total{source=\"replica\"}")
}

#[tokio::test]
async fn a_purge_on_one_replica_reaches_the_store_and_every_replica() {
    let store = RedisServer::start().await;
    let auth_server = RecordingAs::start().await;
    let (a, b) = replicas(&auth_server, &store).await;
    let (alice, bob) = (subject("alice"), subject("bob"));
    // Give both replicas time to find the end of the purge log.
    tokio::time::sleep(Duration::from_millis(500)).await;
    call(&a, "/orders/1", &alice).await;
    call(&a, "/billing/1", &alice).await;
    call(&a, "/orders/1", &bob).await;
    // Written to the store in the background; B finds them there.
    tokio::time::sleep(Duration::from_millis(200)).await;
    call(&b, "/orders/1", &alice).await;
    call(&b, "/billing/1", &alice).await;
    call(&b, "/orders/1", &bob).await;
    assert_eq!(exchanges(&auth_server), 3, "one exchange per subject and route for the fleet");

    let started = Instant::now();
    let (status, answer) = purge(&a, Some(ADMIN_TOKEN), json!({"sub": "alice"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["purged"], 2, "{answer}");
    assert_eq!(answer["shared"], 2, "both store entries: {answer}");
    let mut seen_by_b = None;
    while started.elapsed() < Duration::from_secs(1) {
        if replica_purges(&b.metrics().await) >= 2 {
            seen_by_b = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen_by_b = seen_by_b.expect("replica B purged alice within a second");
    eprintln!("purge on A reached B's local cache after {seen_by_b:?}");
    call(&b, "/orders/1", &alice).await;
    assert_eq!(exchanges(&auth_server), 4, "B re-exchanges alice (nothing left locally nor in the store)");
    call(&b, "/orders/1", &bob).await;
    call(&a, "/orders/1", &bob).await;
    assert_eq!(exchanges(&auth_server), 4, "bob untouched everywhere");

    // By route and everything: the store follows.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, answer) = purge(&b, Some(ADMIN_TOKEN), json!({"route": "orders"})).await;
    assert!(answer["shared"].as_u64().unwrap() >= 2, "{answer}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    call(&a, "/orders/1", &bob).await;
    assert_eq!(exchanges(&auth_server), 5, "A re-exchanges bob on orders");
    call(&a, "/billing/1", &alice).await;
    assert_eq!(exchanges(&auth_server), 6, "billing on A was purged by the earlier sub purge");
    let (_, answer) = purge(&a, Some(ADMIN_TOKEN), json!({})).await;
    assert!(answer["shared"].as_u64().unwrap() >= 1, "{answer}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    call(&b, "/billing/1", &alice).await;
    assert_eq!(exchanges(&auth_server), 7, "B's local copy went with the purge of everything");

    // By the subject token's hash.
    tokio::time::sleep(Duration::from_millis(200)).await;
    call(&a, "/billing/1", &alice).await;
    assert_eq!(exchanges(&auth_server), 7, "A reads B's token from the store");
    let (_, answer) = purge(&a, Some(ADMIN_TOKEN), json!({"token_sha256": sha256_hex(&alice)})).await;
    assert_eq!(answer["shared"], 1, "{answer}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    call(&b, "/billing/1", &alice).await;
    assert_eq!(exchanges(&auth_server), 8);
}

#[tokio::test]
async fn replicas_skip_what_they_cannot_read_in_the_purge_log() {
    let store = RedisServer::start().await;
    let auth_server = RecordingAs::start().await;
    let (a, b) = replicas(&auth_server, &store).await;
    let alice = subject("alice");
    tokio::time::sleep(Duration::from_millis(500)).await;
    call(&a, "/orders/1", &alice).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    call(&b, "/orders/1", &alice).await;
    assert_eq!(exchanges(&auth_server), 1);
    // Garbage in the log (more than one read's worth) is skipped; the real
    // purge after it is applied.
    let mut conn = redis::Client::open(format!("redis://{}/0", store.addr)).unwrap();
    let _: String = redis::cmd("XADD").arg("rv:purges").arg("*").arg("m").arg("v9 nonsense").query(&mut conn).unwrap();
    for _ in 0..300 {
        let _: String = redis::cmd("XADD").arg("rv:purges").arg("*").arg("x").arg("y").query(&mut conn).unwrap();
    }
    purge(&a, Some(ADMIN_TOKEN), json!({"sub": "alice"})).await;
    let started = Instant::now();
    while replica_purges(&b.metrics().await) == 0 && started.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = b.metrics().await;
    assert_eq!(replica_purges(&metrics), 1, "{metrics}");
    call(&b, "/orders/1", &alice).await;
    assert_eq!(exchanges(&auth_server), 2);
}

/// A replica whose exchange was running when another replica purged its
/// subject, and that wrote the token to the store just after the purge
/// deleted the store's entries, deletes it again once it reads the purge.
#[tokio::test]
async fn a_token_written_to_the_store_just_after_a_purge_does_not_survive_it() {
    let store = RedisServer::start().await;
    let auth_server = RecordingAs::start().await;
    auth_server.set(|r, n| match r.path.as_str() {
        "/token" => Reply::Delay(Duration::from_millis(500), Box::new(issue(n))),
        _ => Reply::Raw(200, "application/json", Vec::new()),
    });
    let (a, b) = replicas(&auth_server, &store).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alice = subject("alice");
    let slow = {
        let (url, alice) = (b.url.clone(), alice.clone());
        tokio::spawn(async move { get(&format!("{url}/orders/1"), Some(&alice)).await })
    };
    // The purge lands on A while B's exchange is still at the authorization server.
    tokio::time::sleep(Duration::from_millis(450)).await;
    purge(&a, Some(ADMIN_TOKEN), json!({"sub": "alice"})).await;
    let (status, _, body) = slow.await.unwrap();
    assert_eq!(status, 200, "{body}");
    // B finished after the purge deleted the store's entries, and reads it within 200 ms.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = exchanges(&auth_server);
    call(&a, "/orders/1", &alice).await;
    assert_eq!(exchanges(&auth_server), before + 1, "A exchanges anew: B's token is not in the store");
}

/// Subject sets hold only live members: expired ones go with each write.
#[tokio::test]
async fn subject_sets_in_the_store_do_not_grow_with_expired_entries() {
    let store = RedisServer::start().await;
    let auth_server = RecordingAs::start().await;
    auth_server.set(|_, n| {
        Reply::Json(200, json!({"access_token": format!("exchanged-{n}"), "token_type": "Bearer", "expires_in": 2}))
    });
    let (a, _b) = replicas(&auth_server, &store).await;
    for i in 0..3 {
        if i > 0 {
            // The previous token has expired (in the store too).
            tokio::time::sleep(Duration::from_millis(2300)).await;
        }
        // A new subject token of the same subject each time.
        let token = fake_jwt(json!({"sub": "svc", "exp": now() + 3600, "n": i}));
        call(&a, "/orders/1", &token).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut conn = redis::Client::open(format!("redis://{}/0", store.addr)).unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("rv:s:*").query(&mut conn).unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let members: u64 = redis::cmd("ZCARD").arg(&keys[0]).query(&mut conn).unwrap();
    assert!(members <= 1, "expired members were dropped: {members}");
}

/// A SET whose purge the shared store did not take gets 503: the transmitter
/// sends it again, and that is not a replay.
#[tokio::test]
async fn a_set_whose_purge_the_store_did_not_take_is_asked_for_again() {
    use common::jwt::{jws, EcSigner, JwksServer};
    let store = RedisServer::start().await;
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let signer = EcSigner::new("ssf-1");
    let jwks = JwksServer::start(vec![signer.jwk.clone()]).await;
    let yaml = format!(
        "cache:\n  expiry_skew: 0s\n  shared: {{ url: \"redis://{}/0\", timeout: 200ms, key_prefix: \"rv:\" }}\nrevocation:\n  ssf: {{ issuer: https://idp.example, jwks_uri: {}, audience: tokex, algorithms: [ES256] }}\n{}",
        store.addr,
        jwks.uri(),
        config(&auth_server, backend, "", "").replace("cache: { expiry_skew: 0s }\n", "")
    );
    let gw = TestGateway::start(&yaml).await;
    let alice = subject("alice");
    call(&gw, "/orders/1", &alice).await;
    let claims = json!({
        "iss": "https://idp.example", "aud": "tokex", "iat": now(), "jti": "set-1",
        "sub_id": {"format": "iss_sub", "iss": "https://idp.example", "sub": "alice"},
        "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {}},
    });
    let set = jws(&json!({"alg": "ES256", "kid": "ssf-1", "typ": "secevent+jwt"}), &claims, |m| signer.sign(m));
    let push = |set: String| {
        let url = format!("{}/.well-known/ssf/push", gw.url);
        async move {
            let resp =
                client().post(url).header("content-type", "application/secevent+jwt").body(set).send().await.unwrap();
            (resp.status().as_u16(), resp.headers().get("retry-after").is_some())
        }
    };
    let mut conn = redis::Client::open(format!("redis://{}/0", store.addr)).unwrap();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(4000).arg("ALL").query(&mut conn).unwrap();
    assert_eq!(push(set.clone()).await, (503, true));
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(push(set).await.0, 202, "the retry is not a replay");
}
