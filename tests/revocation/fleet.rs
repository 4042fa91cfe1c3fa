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
    // Garbage in the log is skipped; the real purge after it is applied.
    let mut conn = redis::Client::open(format!("redis://{}/0", store.addr)).unwrap();
    let _: String = redis::cmd("XADD").arg("rv:purges").arg("*").arg("m").arg("v9 nonsense").query(&mut conn).unwrap();
    let _: String = redis::cmd("XADD").arg("rv:purges").arg("*").arg("x").arg("y").query(&mut conn).unwrap();
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
