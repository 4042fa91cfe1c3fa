//! `POST /cache/purge`: each selector purges what it names and nothing
//! else (the next request re-exchanges), the admin token, and RFC 7009.

use super::*;

#[tokio::test]
async fn each_selector_purges_what_it_names_and_the_next_request_re_exchanges() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = TestGateway::start(&(admin_section() + &config(&auth_server, backend, "", ""))).await;
    let (alice, bob) = (subject("alice"), subject("bob"));
    let warm = || async {
        call(&gw, "/orders/1", &alice).await;
        call(&gw, "/billing/1", &alice).await;
        call(&gw, "/orders/1", &bob).await;
    };
    warm().await;
    assert_eq!(exchanges(&auth_server), 3);
    warm().await;
    assert_eq!(exchanges(&auth_server), 3, "all cached");

    // By subject: alice's two entries, not bob's.
    let (status, answer) = purge(&gw, Some(ADMIN_TOKEN), json!({"sub": "alice"})).await;
    assert_eq!((status, answer["purged"].as_u64()), (200, Some(2)), "{answer}");
    assert_eq!(answer["shared"], Value::Null, "no shared store");
    call(&gw, "/orders/1", &bob).await;
    assert_eq!(exchanges(&auth_server), 3, "bob's entry stays");
    call(&gw, "/orders/1", &alice).await;
    call(&gw, "/billing/1", &alice).await;
    assert_eq!(exchanges(&auth_server), 5, "alice re-exchanges on both routes");

    // By email (the subject token's `email` claim).
    let (_, answer) = purge(&gw, Some(ADMIN_TOKEN), json!({"email": "ALICE@example.com"})).await;
    assert_eq!(answer["purged"], 2, "{answer}");
    warm().await;
    assert_eq!(exchanges(&auth_server), 7);

    // By route: orders (alice and bob), not billing.
    let (_, answer) = purge(&gw, Some(ADMIN_TOKEN), json!({"route": "orders"})).await;
    assert_eq!(answer["purged"], 2, "{answer}");
    call(&gw, "/billing/1", &alice).await;
    assert_eq!(exchanges(&auth_server), 7, "billing stays");
    call(&gw, "/orders/1", &alice).await;
    call(&gw, "/orders/1", &bob).await;
    assert_eq!(exchanges(&auth_server), 9);

    // By the subject token's SHA-256: bob's token on every route.
    let (_, answer) = purge(&gw, Some(ADMIN_TOKEN), json!({"token_sha256": sha256_hex(&bob)})).await;
    assert_eq!(answer["purged"], 1, "{answer}");
    call(&gw, "/orders/1", &alice).await;
    assert_eq!(exchanges(&auth_server), 9, "alice stays");
    call(&gw, "/orders/1", &bob).await;
    assert_eq!(exchanges(&auth_server), 10);

    // Everything.
    let (_, answer) = purge(&gw, Some(ADMIN_TOKEN), json!({})).await;
    assert_eq!(answer["purged"], 3, "{answer}");
    warm().await;
    assert_eq!(exchanges(&auth_server), 13);

    // Nothing cached for them: nothing purged, and no error.
    let (status, answer) = purge(&gw, Some(ADMIN_TOKEN), json!({"sub": "carol"})).await;
    assert_eq!((status, answer["purged"].as_u64()), (200, Some(0)));
    let (status, answer) = purge(&gw, Some(ADMIN_TOKEN), json!({"route": "nope"})).await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("unknown_route")));
    let (status, _) = purge(&gw, Some(ADMIN_TOKEN), json!({"sub": "a", "route": "orders"})).await;
    assert_eq!(status, 400);
    let (status, _) = purge(&gw, Some(ADMIN_TOKEN), json!({"token_sha256": "abc"})).await;
    assert_eq!(status, 400);
    let metrics = gw.metrics().await;
    assert!(metrics.contains("tokex_cache_purged_total{source=\"admin\"} 10"), "{metrics}");
}

#[tokio::test]
async fn the_admin_token_is_required_and_without_one_the_endpoint_does_not_exist() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = TestGateway::start(&(admin_section() + &config(&auth_server, backend, "", ""))).await;
    let alice = subject("alice");
    call(&gw, "/orders/1", &alice).await;
    for token in [None, Some("wrong"), Some("admin-s3cret-toke"), Some("")] {
        let (status, _) = purge(&gw, token, json!({})).await;
        assert_eq!(status, 401, "{token:?}");
    }
    // Not Bearer: refused too.
    let resp = client()
        .post(format!("{}/cache/purge", gw.admin))
        .header("authorization", format!("Basic {ADMIN_TOKEN}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    call(&gw, "/orders/1", &alice).await;
    assert_eq!(exchanges(&auth_server), 1, "nothing was purged");
    // The read-only endpoints stay open.
    assert_eq!(client().get(format!("{}/healthz", gw.admin)).send().await.unwrap().status(), 200);
    let resp = client().get(format!("{}/cache/purge", gw.admin)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 405);

    // No admin.token_file: the endpoint does not exist, whatever is sent.
    let open = TestGateway::start(&config(&auth_server, backend, "", "")).await;
    let (status, answer) = purge(&open, Some(ADMIN_TOKEN), json!({})).await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn purged_and_refused_tokens_are_revoked_at_the_authorization_server() {
    let auth_server = RecordingAs::start().await;
    answer_revocations(&auth_server);
    let backend = echo_backend().await;
    let revoke = format!("    revocation_endpoint: http://{}/revoke\n", auth_server.addr);
    // A third route whose backend path answers 401 invalid_token on demand.
    let status = exchange_route("status", "/status", backend, "");
    let gw = TestGateway::start(&(admin_section() + &config(&auth_server, backend, &revoke, "") + &status)).await;
    let alice = subject("alice");
    assert_eq!(call(&gw, "/orders/1", &alice).await, "Bearer exchanged-1");
    assert!(revocations(&auth_server).is_empty(), "nothing revoked on the request path");

    let (_, answer) = purge(&gw, Some(ADMIN_TOKEN), json!({"sub": "alice"})).await;
    assert_eq!(answer["purged"], 1);
    within(Duration::from_secs(2), || revocations(&auth_server).len() == 1).await.expect("revoked in the background");
    let r = &revocations(&auth_server)[0];
    assert_eq!(r.param("token"), Some("exchanged-1"));
    assert_eq!(r.param("token_type_hint"), Some("access_token"));
    assert_eq!(r.basic(), Some(("tokex".to_owned(), "s3cret".to_owned())), "the AS's client authentication");
    assert_eq!(r.headers["content-type"], "application/x-www-form-urlencoded");
    assert!(r.param("client_secret").is_none());

    // A token the backend refuses (401 invalid_token) is revoked too.
    let resp = client()
        .get(format!("{}/status/401", gw.url))
        .bearer_auth(&alice)
        .header("x-echo-www-authenticate", "Bearer error=\"invalid_token\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Refused, retried with a fresh token (a bodiless GET), refused again: both revoked.
    within(Duration::from_secs(2), || revocations(&auth_server).len() == 3).await.expect("refused tokens revoked");
    let revoked: Vec<_> = revocations(&auth_server).iter().map(|r| r.param("token").unwrap().to_owned()).collect();
    // (the AS numbers every request it gets, revocations too)
    assert_eq!(revoked[1..], ["exchanged-3", "exchanged-4"]);
    let metrics = gw.metrics().await;
    assert!(metrics.contains("tokex_revocations_total{server=\"corp\",outcome=\"revoked\"} 3"), "{metrics}");

    // A server without a revocation endpoint: purged, nothing sent.
    let quiet = RecordingAs::start().await;
    let gw = TestGateway::start(&(admin_section() + &config(&quiet, backend, "", ""))).await;
    call(&gw, "/orders/1", &alice).await;
    purge(&gw, Some(ADMIN_TOKEN), json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(revocations(&quiet).is_empty());
}

#[tokio::test]
async fn the_revocation_endpoint_is_discovered_from_the_metadata() {
    let auth_server = RecordingAs::start().await;
    let base = format!("http://{}", auth_server.addr);
    let meta = json!({"issuer": base, "token_endpoint": format!("{base}/token"), "revocation_endpoint": format!("{base}/revoke")});
    auth_server.set(move |r, n| match r.path.as_str() {
        "/.well-known/oauth-authorization-server" => Reply::Json(200, meta.clone()),
        "/revoke" => Reply::Raw(200, "application/json", Vec::new()),
        _ => issue(n),
    });
    let backend = echo_backend().await;
    let yaml = format!(
        "{}authorization_servers:\n  corp:\n    issuer: {base}\n    client_auth: {BASIC_AUTH}\ncache: {{ expiry_skew: 0s }}\nroutes:\n{}",
        admin_section(),
        exchange_route("orders", "/orders", backend, "")
    );
    let gw = TestGateway::start(&yaml).await;
    let alice = subject("alice");
    assert!(common::jwt::ready(&gw, Duration::from_secs(5)).await, "discovered");
    let got = call(&gw, "/orders/1", &alice).await;
    purge(&gw, Some(ADMIN_TOKEN), json!({"token_sha256": sha256_hex(&alice)})).await;
    within(Duration::from_secs(2), || revocations(&auth_server).len() == 1).await.expect("revoked");
    assert_eq!(revocations(&auth_server)[0].param("token"), got.strip_prefix("Bearer "));
}

/// An exchange running when a purge comes keeps its token unless the purge
/// names it; a token it may not keep is revoked.
#[tokio::test]
async fn only_a_purge_that_names_an_exchange_in_flight_drops_its_token() {
    let auth_server = RecordingAs::start().await;
    auth_server.set(|r, n| match r.path.as_str() {
        "/token" => Reply::Delay(Duration::from_millis(300), Box::new(issue(n))),
        _ => Reply::Raw(200, "application/json", Vec::new()),
    });
    let backend = echo_backend().await;
    let revoke = format!("    revocation_endpoint: http://{}/revoke\n", auth_server.addr);
    let gw = TestGateway::start(&(admin_section() + &config(&auth_server, backend, &revoke, ""))).await;
    let alice = subject("alice");
    let in_flight = |who: String| {
        let url = gw.url.clone();
        tokio::spawn(async move { get(&format!("{url}/orders/1"), Some(&who)).await })
    };
    // A purge of someone else leaves alice's exchange alone.
    let first = in_flight(alice.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    purge(&gw, Some(ADMIN_TOKEN), json!({"sub": "bob"})).await;
    purge(&gw, Some(ADMIN_TOKEN), json!({"route": "billing"})).await;
    assert_eq!(first.await.unwrap().0, 200);
    call(&gw, "/orders/1", &alice).await;
    assert_eq!(exchanges(&auth_server), 1, "kept");
    assert!(revocations(&auth_server).is_empty());

    // A purge of alice while her exchange runs: the caller still gets it,
    // but it is not kept, and it is revoked.
    purge(&gw, Some(ADMIN_TOKEN), json!({"sub": "alice"})).await;
    let second = in_flight(alice.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    purge(&gw, Some(ADMIN_TOKEN), json!({"sub": "alice"})).await;
    let (status, _, body) = second.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let got = seen(&echoed(&body), "authorization")[0].clone();
    within(Duration::from_secs(2), || revocations(&auth_server).iter().any(|r| Some(&got[7..]) == r.param("token")))
        .await
        .expect("the token exchanged across the purge is revoked");
    call(&gw, "/orders/1", &alice).await;
    assert_eq!(exchanges(&auth_server), 3, "not kept");
}

#[tokio::test]
async fn admin_token_edge_cases() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw = TestGateway::start(&(admin_section() + &config(&auth_server, backend, "", ""))).await;
    // The scheme is case-insensitive; an empty body purges nothing.
    let resp = client()
        .post(format!("{}/cache/purge", gw.admin))
        .header("authorization", format!("bearer {ADMIN_TOKEN}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client().post(format!("{}/cache/purge", gw.admin)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 400, "an empty body");
    // A token file of whitespace is refused by check and by run.
    let blank = admin_token_file().with_file_name("blank-token");
    std::fs::write(&blank, "  \n").unwrap();
    let yaml = format!(
        "listen: {{ address: \"127.0.0.1:0\" }}\nadmin: {{ address: \"127.0.0.1:0\", token_file: \"{}\" }}\nroutes: [{{ name: r, auth: none, upstream: \"http://127.0.0.1:1\" }}]\n",
        blank.display()
    );
    let config = blank.with_file_name("blank.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let out = std::process::Command::new(common::process::BIN).args(["check", "-c"]).arg(&config).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("admin.token_file") && text.contains("empty"), "{text}");
    let err = tokex::app::start(tokex::config::parse(&yaml).unwrap()).await.err().expect("run refuses it");
    assert!(err.to_string().contains("admin.token_file"), "{err}");
}
