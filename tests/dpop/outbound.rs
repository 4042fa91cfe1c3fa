//! tokex's own proofs: to the authorization server with each token request,
//! and to the backend with each request that carries a DPoP-bound token.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::Incoming;

use super::*;

#[tokio::test]
async fn token_requests_carry_a_proof_and_bound_tokens_reach_the_backend_with_one_per_request() {
    for alg in ["ES256", "EdDSA"] {
        let auth_server = RecordingAs::start().await;
        auth_server.set(|_, n| dpop_token(n));
        let backend = echo_backend().await;
        let cfg = dpop_config(
            &auth_server.token_url(),
            &format!("{{ algorithm: {alg} }}"),
            &exchange_route("orders", "/", backend, ""),
        );
        let gw = TestGateway::start(&cfg).await;

        let mut seen_jti = Vec::new();
        for _ in 0..2 {
            let resp = client()
                .get(format!("{}/orders/7?x=1", gw.url))
                .bearer_auth("caller-token")
                .header("dpop", "the-callers-own-proof")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{alg}");
            let echo = echoed(&resp.text().await.unwrap());
            assert_eq!(seen(&echo, "authorization"), ["DPoP bound-1"], "{alg}");
            let proofs = seen(&echo, "dpop");
            assert_eq!(proofs.len(), 1, "one proof, never the caller's: {proofs:?}");
            // The URI the backend sees: the upstream URL (its Host; the
            // caller's is in X-Forwarded-Host), the path without the query.
            let htu = format!("http://{backend}/orders/7");
            assert_eq!(seen(&echo, "host"), [backend.to_string()]);
            assert_eq!(seen(&echo, "x-forwarded-host"), [gw.url.trim_start_matches("http://")]);
            let v = check(&proofs[0], "GET", &htu, Some("bound-1"), None);
            assert_eq!(claims_of(&proofs[0])["htu"], htu, "no query");
            seen_jti.push(v.jti);
        }
        assert_ne!(seen_jti[0], seen_jti[1], "a fresh proof per request");

        assert_eq!(auth_server.count(), 1, "one exchange, then the cache");
        let req = auth_server.last();
        let proof = req.headers["dpop"].to_str().unwrap();
        let header: Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                proof.split('.').next().unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], alg);
        assert_eq!(header["typ"], "dpop+jwt");
        assert!(header["jwk"].get("d").is_none(), "the public key only");
        let at_as = check(proof, "POST", &auth_server.token_url(), None, None);
        let echo = echoed(&get(&format!("{}/orders/7", gw.url), Some("caller-token")).await.2);
        let at_backend =
            check(&seen(&echo, "dpop")[0], "GET", &format!("http://{backend}/orders/7"), Some("bound-1"), None);
        assert_eq!(at_as.jkt, at_backend.jkt, "the token is bound to the key that proves at the backend");
    }
}

#[tokio::test]
async fn the_servers_nonce_is_sent_once_asked_for_and_remembered() {
    let auth_server = RecordingAs::start().await;
    auth_server.set(|req, n| {
        let proof = req.headers["dpop"].to_str().unwrap().to_owned();
        if claims_of(&proof)["nonce"] == "n-1" {
            return dpop_token(n);
        }
        let refusal = Reply::Json(400, json!({"error": "use_dpop_nonce", "error_description": "nonce required"}));
        Reply::Headers(vec![("dpop-nonce", "n-1".into())], Box::new(refusal))
    });
    let backend = echo_backend().await;
    let cfg = dpop_config(&auth_server.token_url(), "{}", &exchange_route("orders", "/", backend, ""));
    let gw = TestGateway::start(&cfg).await;
    assert_eq!(get(&format!("{}/a", gw.url), Some("caller-1")).await.0, 200);
    assert_eq!(auth_server.count(), 2, "asked for a nonce, sent again once with it");
    let requests = auth_server.requests();
    let first = claims_of(requests[0].headers["dpop"].to_str().unwrap());
    let second = claims_of(requests[1].headers["dpop"].to_str().unwrap());
    assert!(first.get("nonce").is_none());
    assert_eq!(second["nonce"], "n-1");
    assert_ne!(first["jti"], second["jti"]);
    assert_ne!(requests[0].param("client_id"), None.or(Some("")), "client authentication each time");

    assert_eq!(get(&format!("{}/a", gw.url), Some("caller-2")).await.0, 200);
    assert_eq!(auth_server.count(), 3, "the nonce was remembered: no second refusal");

    // A server that asks again and again gets one more request, not a loop.
    auth_server.set(|_, _| {
        let refusal = Reply::Json(400, json!({"error": "use_dpop_nonce"}));
        Reply::Headers(vec![("dpop-nonce", format!("n-{}", fastrand::u32(..)))], Box::new(refusal))
    });
    let (status, _, _) = get(&format!("{}/a", gw.url), Some("caller-3")).await;
    assert_eq!(status, 502);
    assert_eq!(auth_server.count(), 5);
}

/// A backend that demands DPoP nonce `n-7`: without it, `401` with the
/// challenge; with it, the echo of what it received. It records every proof.
async fn nonce_backend() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let proofs = Arc::new(Mutex::new(Vec::new()));
    let seen = proofs.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            let proof = req.headers().get("dpop").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            seen.lock().unwrap().push(proof.clone());
            let path = req.uri().path().to_owned();
            if claims_of(&proof)["nonce"] != "n-7" {
                return Response::builder()
                    .status(401)
                    .header("www-authenticate", "DPoP error=\"use_dpop_nonce\", error_description=\"nonce\"")
                    .header("dpop-nonce", "n-7")
                    .body(full("nonce please"))
                    .unwrap();
            }
            Response::builder().status(200).header("dpop-nonce", "n-7").body(full(format!("ok {path}"))).unwrap()
        }
    })
    .await;
    (addr, proofs)
}

#[tokio::test]
async fn a_backends_nonce_is_retried_once_for_requests_that_can_be_sent_again() {
    let auth_server = RecordingAs::start().await;
    auth_server.set(|_, n| dpop_token(n));
    let (backend, proofs) = nonce_backend().await;
    let cfg = dpop_config(&auth_server.token_url(), "{}", &exchange_route("orders", "/", backend, ""));
    let gw = TestGateway::start(&cfg).await;

    let (status, _, body) = get(&format!("{}/x", gw.url), Some("caller")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok /x"));
    {
        let p = proofs.lock().unwrap();
        assert_eq!(p.len(), 2, "once without the nonce, once with it");
        check(&p[1], "GET", &format!("http://{backend}/x"), Some("bound-1"), Some("n-7"));
    }
    // The nonce is remembered: the next request carries it at once.
    assert_eq!(get(&format!("{}/y", gw.url), Some("caller")).await.0, 200);
    assert_eq!(proofs.lock().unwrap().len(), 3);
    assert_eq!(auth_server.count(), 1, "a nonce retry is not a new exchange");

    // A request with a body is not sent twice: the backend's answer stands.
    let cfg = dpop_config(&auth_server.token_url(), "{}", &exchange_route("orders", "/", backend, ""));
    let gw = TestGateway::start(&cfg).await;
    let before = proofs.lock().unwrap().len();
    let resp = client().post(format!("{}/z", gw.url)).bearer_auth("caller").body("data").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(proofs.lock().unwrap().len(), before + 1);
}

#[tokio::test]
async fn a_bearer_answer_stays_bearer_and_a_dpop_answer_needs_dpop() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let cfg = dpop_config(&auth_server.token_url(), "{}", &exchange_route("orders", "/", backend, ""));
    let gw = TestGateway::start(&cfg).await;
    let (status, _, body) = get(&format!("{}/a", gw.url), Some("caller")).await;
    assert_eq!(status, 200);
    let echo = echoed(&body);
    assert_eq!(seen(&echo, "authorization"), ["Bearer exchanged-1"], "the server ignored DPoP: a bearer token");
    assert!(seen(&echo, "dpop").is_empty());
    assert!(auth_server.last().headers.contains_key("dpop"), "it was asked with a proof");

    // Without `dpop:`, a DPoP answer cannot be used.
    let plain = RecordingAs::start().await;
    plain.set(|_, n| dpop_token(n));
    let gw =
        TestGateway::start(&config_with(&plain.token_url(), BASIC_AUTH, &exchange_route("o", "/", backend, ""))).await;
    assert_eq!(get(&format!("{}/a", gw.url), Some("caller")).await.0, 502);
    assert!(!plain.last().headers.contains_key("dpop"), "no proof without dpop:");
}

#[tokio::test]
async fn a_key_file_is_used_and_a_new_key_is_a_new_binding() {
    let dir = common::process::temp_dir("dpop-key");
    let key = dir.join("dpop.pem");
    dpop::write_new_key(&key, jsonwebtoken::Algorithm::ES256).unwrap();
    let auth_server = RecordingAs::start().await;
    auth_server.set(|_, n| dpop_token(n));
    let backend = echo_backend().await;
    let dpop_cfg = format!("{{ key_file: {} }}", key.display());
    let cfg = dpop_config(&auth_server.token_url(), &dpop_cfg, &exchange_route("orders", "/", backend, ""));
    let gw = TestGateway::start(&cfg).await;
    assert_eq!(get(&format!("{}/a", gw.url), Some("caller")).await.0, 200);
    let first =
        check(auth_server.last().headers["dpop"].to_str().unwrap(), "POST", &auth_server.token_url(), None, None);
    assert_eq!(get(&format!("{}/a", gw.url), Some("caller")).await.0, 200);
    assert_eq!(auth_server.count(), 1);

    // Rotated: looked at within a second; the next request is a new
    // exchange, bound to the new key.
    dpop::write_new_key(&key, jsonwebtoken::Algorithm::EdDSA).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, body) = get(&format!("{}/a", gw.url), Some("caller")).await;
    assert_eq!(status, 200);
    assert_eq!(auth_server.count(), 2, "another key: another cache entry");
    let second =
        check(auth_server.last().headers["dpop"].to_str().unwrap(), "POST", &auth_server.token_url(), None, None);
    assert_ne!(first.jkt, second.jkt);
    let at_backend =
        check(&seen(&echoed(&body), "dpop")[0], "GET", &format!("http://{backend}/a"), Some("bound-2"), None);
    assert_eq!(at_backend.jkt, second.jkt);

    // An unusable file keeps the key in use.
    std::fs::write(&key, "not a key").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&format!("{}/a", gw.url), Some("caller")).await.0, 200);
    assert_eq!(auth_server.count(), 2);
}

#[tokio::test]
async fn a_backends_own_401_passes_unchanged_and_its_nonce_stays_at_tokex() {
    let auth_server = RecordingAs::start().await;
    auth_server.set(|_, n| dpop_token(n));
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let backend = serve(move |_req: Request<Incoming>| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            Response::builder()
                .status(401)
                .header("www-authenticate", "DPoP error=\"invalid_token\", error_description=\"backend says no\"")
                .header("dpop-nonce", "backend-secret-nonce")
                .body(full("no"))
                .unwrap()
        }
    })
    .await;
    let route = exchange_route("orders", "/", backend, "    retry_on_invalid_token: false\n");
    let cfg = String::from("inbound:\n  dpop: allow\n") + &dpop_config(&auth_server.token_url(), "{}", &route);
    let gw = TestGateway::start(&cfg).await;
    let (status, headers, _) = get(&format!("{}/a", gw.url), Some("caller")).await;
    assert_eq!(status, 401);
    let challenges: Vec<_> = headers.get_all("www-authenticate").iter().collect();
    assert_eq!(
        challenges,
        ["DPoP error=\"invalid_token\", error_description=\"backend says no\""],
        "the backend's own"
    );
    assert!(!headers.contains_key("dpop-nonce"), "the backend's nonce is tokex's");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "retry_on_invalid_token: false is kept");
    assert_eq!(auth_server.count(), 1);
}

#[tokio::test]
async fn a_tokex_behind_tokex_accepts_the_proofs_of_the_one_in_front() {
    // Front: binds its tokens to its key file's key. Back: takes only DPoP,
    // reading the binding from the token as presented.
    let dir = common::process::temp_dir("dpop-b2b");
    let key_file = dir.join("front.pem");
    dpop::write_new_key(&key_file, jsonwebtoken::Algorithm::EdDSA).unwrap();
    let jkt = dpop::KeySource::new(Some(&key_file), jsonwebtoken::Algorithm::EdDSA).unwrap().current().jkt().to_owned();
    let bound = fake_jwt(json!({"sub": "alice", "exp": now() + 300, "cnf": {"jkt": jkt}}));
    let front_as = RecordingAs::start().await;
    front_as.set(move |_, _| Reply::Json(200, json!({"access_token": bound, "token_type": "DPoP", "expires_in": 60})));
    let back_as = RecordingAs::start().await;
    let backend = echo_backend().await;
    let back = TestGateway::start(
        &(String::from("inbound:\n  dpop: require\n")
            + &config_with(&back_as.token_url(), BASIC_AUTH, &exchange_route("orders", "/", backend, ""))),
    )
    .await;
    let back_addr: std::net::SocketAddr = back.url.trim_start_matches("http://").parse().unwrap();
    let front_cfg = format!("{{ key_file: {} }}", key_file.display());
    let front = TestGateway::start(&dpop_config(
        &front_as.token_url(),
        &front_cfg,
        &exchange_route("orders", "/", back_addr, ""),
    ))
    .await;
    let (status, _, body) = get(&format!("{}/orders/1", front.url), Some("caller")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&echoed(&body), "authorization"), ["Bearer exchanged-1"], "the back exchanged it in turn");
    assert_eq!(back_as.count(), 1);
}
