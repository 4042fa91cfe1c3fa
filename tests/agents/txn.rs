//! `auth: transaction_token`: one Txn-Token request per incoming request,
//! its wire form, where the Txn-Token goes, and what never happens
//! (caching, the caller's token reaching the backend, weak client auth).

use serde_json::{json, Value};

use crate::common::*;

const TXN: &str = "urn:ietf:params:oauth:token-type:txn_token";

/// The repository's RSA test key as the client's private_key_jwt key.
fn key_auth() -> String {
    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa-2048.pem");
    format!("{{ method: private_key_jwt, client_id: gw, private_key_file: {key} }}")
}

fn txn_route(backend: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "  - name: internal\n    match: {{ path_prefix: /internal }}\n    upstream: http://{backend}\n    auth: transaction_token\n    transaction_token: {{ authorization_server: corp, audience: trust-domain.example, scope: [orders.read]{extra} }}\n"
    )
}

fn txn_answer(n: usize) -> Reply {
    Reply::Json(
        200,
        json!({"access_token": format!("txn-{n}"), "issued_token_type": TXN, "token_type": "N_A", "expires_in": 60}),
    )
}

#[tokio::test]
async fn one_txn_token_per_request_in_its_header_and_never_the_callers_token() {
    let r#as = RecordingAs::start().await;
    r#as.set(|_, n| txn_answer(n));
    let backend = echo_backend().await;
    let gw = TestGateway::start(&config_with(&r#as.token_url(), &key_auth(), &txn_route(backend, ""))).await;
    let caller = fake_jwt(json!({"sub": "alice", "client_id": "web-app", "exp": now() + 600}));

    for i in 0..3 {
        let (status, _, body) = get(&format!("{}/internal/orders/7?page=2", gw.url), Some(&caller)).await;
        assert_eq!(status, 200, "{body}");
        let echo = echoed(&body);
        assert_eq!(seen(&echo, "txn-token"), [format!("txn-{}", i + 1)], "a fresh Txn-Token, as it is");
        assert!(seen(&echo, "authorization").is_empty(), "the caller's credential is dropped");
        assert!(!body.contains(&caller), "the caller's token reaches the backend nowhere");
    }
    assert_eq!(r#as.count(), 3, "one request per incoming request: nothing cached");

    let req = r#as.last();
    assert_eq!(req.param("grant_type"), Some("urn:ietf:params:oauth:grant-type:token-exchange"));
    assert_eq!(req.param("requested_token_type"), Some(TXN));
    assert_eq!(req.param("subject_token"), Some(caller.as_str()));
    assert_eq!(req.param("subject_token_type"), Some("urn:ietf:params:oauth:token-type:access_token"));
    assert_eq!(req.params("audience"), ["trust-domain.example"]);
    assert_eq!(req.param("scope"), Some("orders.read"));
    assert_eq!(req.param("client_assertion_type"), Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"));
    let context: Value = serde_json::from_str(req.param("request_context").unwrap()).unwrap();
    assert_eq!(
        context,
        json!({"req_ip": "127.0.0.1", "authn": "urn:ietf:rfc:6750", "sub": "alice", "client_id": "web-app"})
    );
    let details: Value = serde_json::from_str(req.param("request_details").unwrap()).unwrap();
    assert_eq!(details, json!({"method": "GET", "path": "/internal/orders/7"}), "no query");

    // No token: 401, and no request to the token service.
    let (status, _, _) = get(&format!("{}/internal/x", gw.url), None).await;
    assert_eq!(status, 401);
    assert_eq!(r#as.count(), 3);
}

#[tokio::test]
async fn refusals_and_wrong_answers_from_the_token_service() {
    let r#as = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw =
        TestGateway::start(&config_with(&r#as.token_url(), &key_auth(), &txn_route(backend, ", header: x-txn"))).await;
    let url = format!("{}/internal/x", gw.url);
    let caller = fake_jwt(json!({"sub": "alice"}));
    for (answer, status) in [
        (Reply::Json(400, json!({"error": "invalid_grant"})), 401),
        (Reply::Json(400, json!({"error": "invalid_scope"})), 403),
        (Reply::Json(401, json!({"error": "invalid_client"})), 502),
        // An access token is not a Txn-Token, and a Txn-Token is not DPoP-bound.
        (issue(0), 502),
        (Reply::Json(200, json!({"access_token": "t", "issued_token_type": TXN, "token_type": "DPoP"})), 502),
        (Reply::Json(200, json!({"access_token": "t", "token_type": "N_A"})), 502),
        (Reply::Json(503, json!({"error": "temporarily_unavailable"})), 503),
    ] {
        let before = r#as.count();
        r#as.set(move |_, _| answer.clone());
        let (got, _, body) = get(&url, Some(&caller)).await;
        assert_eq!(got, status, "{body}");
        assert!(r#as.count() > before);
    }
    // A refusal is not remembered: the next request asks again.
    r#as.set(|_, n| txn_answer(n));
    let (status, _, body) = get(&url, Some(&caller)).await;
    assert_eq!(status, 200);
    assert_eq!(seen(&echoed(&body), "x-txn").len(), 1);
}

#[tokio::test]
async fn max_rate_bounds_the_requests_to_the_token_service() {
    let r#as = RecordingAs::start().await;
    r#as.set(|_, n| txn_answer(n));
    let backend = echo_backend().await;
    let route = txn_route(backend, ", max_rate: { per_second: 0.5, burst: 2 }");
    let gw = TestGateway::start(&config_with(&r#as.token_url(), &key_auth(), &route)).await;
    let caller = fake_jwt(json!({"sub": "alice"}));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, headers, _) = get(&format!("{}/internal/x", gw.url), Some(&caller)).await;
        if status == 429 {
            assert!(headers.contains_key("retry-after"));
        }
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert_eq!(r#as.count(), 2, "refused without asking the service");
    assert!(gw.metrics().await.contains("tokex_exchanges_rate_limited_total{route=\"internal\""), "counted");
}

#[test]
fn a_token_service_must_authenticate_tokex_mutually() {
    let yaml = |auth: &str, txn: &str| {
        format!("listen: {{ address: \"127.0.0.1:0\" }}\nauthorization_servers:\n  corp: {{ token_endpoint: \"https://txn.example.com/token\", client_auth: {auth} }}\nroutes:\n  - name: t\n    upstream: http://127.0.0.1:2\n    auth: transaction_token\n{txn}")
    };
    let good = "    transaction_token: { authorization_server: corp, audience: td }\n";
    let secret = "{ method: client_secret_basic, client_id: gw, client_secret: s }";
    let errors = config_errors(&yaml(secret, good));
    assert!(errors.contains("must authenticate tokex with tls_client_auth or private_key_jwt"), "{errors}");
    assert_eq!(config_errors(&yaml(&key_auth(), good)), "");
    for (txn, expected) in [
        ("", "auth: transaction_token needs a transaction_token: section"),
        ("    transaction_token: { authorization_server: corp }\n", "audience: required"),
        ("    transaction_token: { authorization_server: nope, audience: td }\n", "authorization_server"),
        (
            "    transaction_token: { authorization_server: corp, audience: td, header: authorization }\n",
            "cannot carry the Txn-Token",
        ),
        ("    transaction_token: { authorization_server: corp, audience: td, header: connection }\n", "hop-by-hop"),
        (
            "    transaction_token: { authorization_server: corp, audience: td, header: x-request-id }\n",
            "cannot carry the Txn-Token",
        ),
        (
            "    transaction_token: { authorization_server: corp, audience: td, header: dpop }\n",
            "cannot carry the Txn-Token",
        ),
        (
            &format!("{good}    exchange: {{ authorization_server: corp }}\n"),
            "exchange: is not used with auth: transaction_token",
        ),
        (&format!("{good}    forward: {{ header: x-t }}\n"), "a Txn-Token goes in transaction_token.header"),
    ] {
        let errors = config_errors(&yaml(&key_auth(), txn));
        assert!(errors.contains(expected), "{expected}: {errors}");
    }
    let cfg = tokex::config::parse(&yaml(&key_auth(), good)).unwrap();
    assert_eq!(cfg.routes[0].forward_header, "txn-token");
    assert!(cfg.warnings.iter().any(|w| w.message.contains("costs a request to the Txn-Token service")), "no inbound");
    let dpop = key_auth().replace(" }", " }, dpop: {}");
    let errors = config_errors(&yaml(&dpop, good));
    assert!(errors.contains("a Txn-Token is not sender-constrained"), "{errors}");
}
