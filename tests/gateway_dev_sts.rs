//! The gateway against the development authorization server: flows that
//! authgent-server cannot do (nested `act`) and the real error answers.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokex::dev_sts::{self, ClientSpec, DevStsConfig};

async fn sts() -> dev_sts::DevSts {
    let clients = vec![ClientSpec {
        id: "gw".into(),
        secret: Some("gw-secret".into()),
        public_key_pem: None,
        audiences: vec!["orders-api".into()],
        scopes: vec!["orders:read".into(), "orders:write".into()],
    }];
    let cfg = DevStsConfig { issuer: None, clients, expires_in: Duration::from_secs(60), ..Default::default() };
    dev_sts::start(cfg, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap()
}

fn claims(body: &str) -> Value {
    let auth = seen(&echoed(body), "authorization");
    let token = auth[0].strip_prefix("Bearer ").unwrap().to_owned();
    tokex::exchange::unverified::claims_json(&token).unwrap()
}

#[tokio::test]
async fn delegation_nests_act_when_the_subject_already_has_one() {
    let sts = sts().await;
    let backend = echo_backend().await;
    let actor = sts.mint("agent-2", &["agent"], &["tokex"], Duration::from_secs(600));
    let routes = format!(
        "  - name: orders\n    upstream: http://{backend}\n    exchange:\n      authorization_server: corp\n      audience: [orders-api]\n      scope: [orders:read]\n      actor: {{ token: \"{actor}\", token_type: \"urn:ietf:params:oauth:token-type:access_token\" }}\n"
    );
    let auth = "{ method: client_secret_post, client_id: gw, client_secret: gw-secret }";
    let gw = TestGateway::start(&config_with(&sts.token_endpoint(), auth, &routes)).await;

    // alice → agent-1 already (a delegated token), now agent-2 acts on it.
    let mut extra = serde_json::Map::new();
    extra.insert("act".into(), json!({"sub": "agent-1"}));
    let subject =
        sts.mint_with("alice", &["orders:read", "orders:write"], &["tokex"], Duration::from_secs(600), extra).unwrap();
    let (status, _, body) = get(&format!("{}/orders/1", gw.url), Some(&subject)).await;
    assert_eq!(status, 200, "{body}");
    let c = claims(&body);
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["aud"], "orders-api");
    assert_eq!(c["scope"], "orders:read");
    assert_eq!(c["act"], json!({"sub": "agent-2", "act": {"sub": "agent-1"}}));
    assert_eq!(sts.exchange_count(), 1);
}

#[tokio::test]
async fn real_authorization_server_errors_map_to_the_caller() {
    let sts = sts().await;
    let backend = echo_backend().await;
    let auth = "{ method: client_secret_basic, client_id: gw, client_secret: gw-secret }";
    let route = |name: &str, aud: &str, scope: &str| {
        format!("  - name: {name}\n    match: {{ path_prefix: /{name} }}\n    upstream: http://{backend}\n    exchange: {{ authorization_server: corp, audience: [{aud}], scope: [{scope}] }}\n")
    };
    let routes = route("ok", "orders-api", "orders:read")
        + &route("scope", "orders-api", "orders:write")
        + &route("target", "billing-api", "orders:read");
    let gw = TestGateway::start(&config_with(&sts.token_endpoint(), auth, &routes)).await;
    let subject = sts.mint("alice", &["orders:read"], &["tokex"], Duration::from_secs(600));

    assert_eq!(get(&format!("{}/ok", gw.url), Some(&subject)).await.0, 200);
    // The subject does not hold orders:write → invalid_scope → 403.
    let (status, headers, _) = get(&format!("{}/scope", gw.url), Some(&subject)).await;
    assert_eq!(status, 403);
    assert_eq!(
        headers["www-authenticate"],
        "Bearer realm=\"tokex\", error=\"insufficient_scope\", scope=\"orders:write\""
    );
    // billing-api is not allowed for this client → invalid_target → 403.
    assert_eq!(get(&format!("{}/target", gw.url), Some(&subject)).await.0, 403);
    // Not a token of this AS → invalid_grant → 401 invalid_token.
    let (status, headers, _) = get(&format!("{}/ok", gw.url), Some(&fake_jwt(json!({"sub": "mallory"})))).await;
    assert_eq!(status, 401);
    assert!(headers["www-authenticate"].to_str().unwrap().contains("error=\"invalid_token\""));
    // Wrong client secret → invalid_client → 502.
    let bad = "{ method: client_secret_basic, client_id: gw, client_secret: wrong }";
    let gw2 =
        TestGateway::start(&config_with(&sts.token_endpoint(), bad, &route("ok", "orders-api", "orders:read"))).await;
    assert_eq!(get(&format!("{}/ok", gw2.url), Some(&subject)).await.0, 502);
}
