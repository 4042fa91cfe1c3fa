//! tokex's own identity: `actor.client_credentials` (delegation where the
//! agent proves who it is) and `auth: client_credentials` (egress).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokex::dev_sts::{self, ClientSpec, DevStsConfig};

#[tokio::test]
async fn actor_client_credentials_obtains_caches_and_sends_tokex_own_token() {
    let auth_server = RecordingAs::start().await;
    auth_server.set(|r, n| match r.param("grant_type") {
        Some("client_credentials") => {
            Reply::Json(200, json!({"access_token": format!("machine-{n}"), "token_type": "Bearer", "expires_in": 300}))
        }
        _ => issue(n),
    });
    let backend = echo_backend().await;
    let extra =
        "      actor:\n        client_credentials: { authorization_server: corp, audience: [sts], scope: [agent] }\n";
    let gw = TestGateway::start(&config_with(
        &auth_server.token_url(),
        BASIC_AUTH,
        &exchange_route("a", "/", backend, extra),
    ))
    .await;

    assert_eq!(get(&gw.url, Some("subject-1")).await.0, 200);
    let reqs = auth_server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].param("grant_type"), Some("client_credentials"));
    assert_eq!(reqs[0].params("audience"), vec!["sts"]);
    assert_eq!(reqs[0].param("scope"), Some("agent"));
    assert_eq!(reqs[0].basic(), Some(("tokex".into(), "s3cret".into())));
    assert_eq!(reqs[1].param("grant_type"), Some("urn:ietf:params:oauth:grant-type:token-exchange"));
    assert_eq!(reqs[1].param("actor_token"), Some("machine-1"));
    assert_eq!(reqs[1].param("actor_token_type"), Some("urn:ietf:params:oauth:token-type:access_token"));

    // A second subject reuses the cached machine token: one more request, not two.
    assert_eq!(get(&gw.url, Some("subject-2")).await.0, 200);
    assert_eq!(auth_server.count(), 3);
    assert_eq!(auth_server.last().param("actor_token"), Some("machine-1"));
}

/// Same class as the JWKS budget: fetching tokex's own actor token and then
/// exchanging each had a full budget, so a caller could wait twice
/// `timeout`. Both together now stay within one.
#[tokio::test]
async fn the_actor_token_and_the_exchange_share_one_budget() {
    let auth_server = RecordingAs::start().await;
    auth_server.set(|r, n| {
        let answer = match r.param("grant_type") {
            Some("client_credentials") => Reply::Json(
                200,
                json!({"access_token": format!("machine-{n}"), "token_type": "Bearer", "expires_in": 300}),
            ),
            _ => issue(n),
        };
        Reply::Delay(Duration::from_millis(700), Box::new(answer))
    });
    let backend = echo_backend().await;
    let extra =
        "      actor:\n        client_credentials: { authorization_server: corp, audience: [sts], scope: [agent] }\n";
    let yaml = config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("a", "/", backend, extra))
        .replace("timeout: 2s", "timeout: 1s");
    let gw = TestGateway::start(&yaml).await;
    let started = std::time::Instant::now();
    let (status, headers, _) = get(&gw.url, Some("subject-1")).await;
    let waited = started.elapsed();
    assert_eq!(status, 503);
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    assert!(waited < Duration::from_millis(1300), "waited {waited:?} against a 1 s budget");
    // The actor token arrived meanwhile and is cached: the next exchange fits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&gw.url, Some("subject-1")).await.0, 200);
}

#[tokio::test]
async fn actor_client_credentials_against_dev_sts_puts_tokex_in_act() {
    let clients = vec![ClientSpec {
        id: "tokex-agent".into(),
        secret: Some("agent-secret".into()),
        public_key_pem: None,
        audiences: vec!["orders-api".into(), "tokex".into()],
        scopes: vec!["orders:read".into(), "agent".into()],
    }];
    let cfg = DevStsConfig { issuer: None, clients, expires_in: Duration::from_secs(60), ..Default::default() };
    let sts = dev_sts::start(cfg, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
    let backend = echo_backend().await;
    let auth = "{ method: client_secret_basic, client_id: tokex-agent, client_secret: agent-secret }";
    let extra =
        "      actor:\n        client_credentials: { authorization_server: corp, audience: [tokex], scope: [agent] }\n";
    let route = format!(
        "  - name: orders\n    upstream: http://{backend}\n    exchange:\n      authorization_server: corp\n      audience: [orders-api]\n      scope: [orders:read]\n{extra}"
    );
    let gw = TestGateway::start(&config_with(&sts.token_endpoint(), auth, &route)).await;
    let subject = sts.mint("alice", &["orders:read", "orders:write"], &["tokex"], Duration::from_secs(600));
    let (status, _, body) = get(&format!("{}/orders/1", gw.url), Some(&subject)).await;
    assert_eq!(status, 200, "{body}");
    let token = seen(&echoed(&body), "authorization")[0].trim_start_matches("Bearer ").to_owned();
    let claims = tokex::exchange::unverified::claims_json(&token).unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], "orders-api");
    assert_eq!(claims["scope"], "orders:read");
    assert_eq!(claims["act"], json!({"sub": "tokex-agent"}), "the agent proves who it is");
}

#[tokio::test]
async fn egress_route_attaches_tokex_own_token_and_drops_the_callers() {
    let auth_server = RecordingAs::start().await;
    auth_server.set(|_, n| {
        Reply::Json(200, json!({"access_token": format!("machine-{n}"), "token_type": "Bearer", "expires_in": 300}))
    });
    let backend = echo_backend().await;
    let route = format!(
        "  - name: egress\n    upstream: http://{backend}\n    auth: client_credentials\n    exchange: {{ authorization_server: corp, audience: [payments-api], resource: [\"https://payments.internal/\"], scope: [payments:write] }}\n"
    );
    let gw = TestGateway::start(&config_with(&auth_server.token_url(), BASIC_AUTH, &route)).await;

    // No token needed from the local workload.
    let (status, _, body) = get(&format!("{}/pay", gw.url), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&echoed(&body), "authorization"), vec!["Bearer machine-1"]);
    // Anything the caller sent is replaced.
    let (_, _, body) = get(&format!("{}/pay", gw.url), Some("callers-own-token")).await;
    assert_eq!(seen(&echoed(&body), "authorization"), vec!["Bearer machine-1"]);
    assert!(!body.contains("callers-own-token"));
    let r = auth_server.last();
    assert_eq!(auth_server.count(), 1, "the machine token is cached");
    assert_eq!(r.param("grant_type"), Some("client_credentials"));
    assert_eq!(r.params("audience"), vec!["payments-api"]);
    assert_eq!(r.params("resource"), vec!["https://payments.internal/"]);
    assert_eq!(r.param("scope"), Some("payments:write"));
    assert_eq!(r.param("subject_token"), None);
}

#[test]
fn egress_and_actor_config_errors() {
    let base = "listen: { address: \"127.0.0.1:1\" }\nauthorization_servers: { corp: { token_endpoint: \"http://127.0.0.1:1/t\" } }\nroutes:\n";
    let bad = [
        ("  - name: e\n    upstream: http://127.0.0.1:2\n    auth: client_credentials\n", "auth: client_credentials needs an exchange: section"),
        (
            "  - name: e\n    upstream: http://127.0.0.1:2\n    auth: client_credentials\n    exchange: { authorization_server: corp, actor: { token: x } }\n",
            "routes[0].exchange.actor: not used for a client_credentials token",
        ),
        (
            "  - name: e\n    upstream: http://127.0.0.1:2\n    exchange: { authorization_server: corp, actor: { client_credentials: { authorization_server: nope } } }\n",
            "routes[0].exchange.actor.client_credentials.authorization_server: unknown authorization server \"nope\"",
        ),
    ];
    for (routes, want) in bad {
        let err = common::config_errors(&format!("{base}{routes}"));
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
}
