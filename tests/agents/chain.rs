//! Identity chaining (`exchange.chain`) on the wire, with two recording
//! servers, and `exchange.enforce_may_act`.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

#[tokio::test]
async fn two_legs_each_with_its_own_server_authentication_and_cache_entry() {
    let home = RecordingAs::start().await;
    let partner = RecordingAs::start().await;
    home.set(|_, n| {
        Reply::Json(200, json!({"access_token": format!("grant-{n}"), "issued_token_type": JWT, "token_type": "N_A", "expires_in": 120}))
    });
    partner.set(|_, n| {
        Reply::Json(200, json!({"access_token": format!("partner-{n}"), "token_type": "Bearer", "expires_in": 60}))
    });
    let backend = echo_backend().await;
    let yaml = format!(
        "authorization_servers:\n  home:\n    token_endpoint: {}\n    client_auth: {{ method: client_secret_basic, client_id: gw-home, client_secret: a }}\n  partner:\n    token_endpoint: {}\n    client_auth: {{ method: client_secret_post, client_id: gw-partner, client_secret: b }}\ncache: {{ expiry_skew: 0s }}\nroutes:\n  - name: partner-files\n    upstream: http://{backend}\n    exchange:\n      authorization_server: home\n      scope: [files:read]\n      chain: {{ authorization_server: partner, audience: [partner-api], scope: [read] }}\n",
        home.token_url(),
        partner.token_url()
    );
    let gw = TestGateway::start(&yaml).await;
    let alice = fake_jwt(json!({"sub": "alice", "exp": now() + 600}));
    for _ in 0..2 {
        let (status, _, body) = get(&format!("{}/files/1", gw.url), Some(&alice)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(seen(&echoed(&body), "authorization"), ["Bearer partner-1"]);
    }
    assert_eq!((home.count(), partner.count()), (1, 1), "the second request is a hit");
    let leg1 = home.last();
    assert_eq!(leg1.param("grant_type"), Some("urn:ietf:params:oauth:grant-type:token-exchange"));
    assert_eq!(leg1.param("subject_token"), Some(alice.as_str()));
    assert_eq!(leg1.param("requested_token_type"), Some(JWT));
    assert_eq!(leg1.params("audience"), [partner.token_url().as_str()], "the next server");
    assert_eq!(leg1.param("scope"), Some("files:read"));
    assert_eq!(leg1.basic().map(|b| b.0), Some("gw-home".into()));
    let leg2 = partner.last();
    assert_eq!(leg2.param("grant_type"), Some("urn:ietf:params:oauth:grant-type:jwt-bearer"));
    assert_eq!(leg2.param("assertion"), Some("grant-1"));
    assert_eq!(leg2.param("subject_token"), None);
    assert_eq!(leg2.params("audience"), ["partner-api"]);
    assert_eq!(leg2.param("scope"), Some("read"));
    assert_eq!(leg2.param("client_id"), Some("gw-partner"));

    // The partner refuses the grant: a fresh one is tried once more, then
    // 401 for the caller.
    let bob = fake_jwt(json!({"sub": "bob", "exp": now() + 600}));
    partner.set(|_, _| Reply::Json(400, json!({"error": "invalid_grant", "error_description": "assertion expired"})));
    let (status, _, _) = get(&format!("{}/files/1", gw.url), Some(&bob)).await;
    assert_eq!(status, 401);
    assert_eq!((home.count(), partner.count()), (3, 3));
    // The home server refuses the caller: the partner is never asked.
    let carol = fake_jwt(json!({"sub": "carol", "exp": now() + 600}));
    home.set(|_, _| Reply::Json(400, json!({"error": "invalid_scope"})));
    let (status, _, _) = get(&format!("{}/files/1", gw.url), Some(&carol)).await;
    assert_eq!(status, 403);
    assert_eq!((home.count(), partner.count()), (4, 3));
    // Each leg is its own exchange in the metrics.
    let metrics = gw.metrics().await;
    assert!(metrics.contains("server=\"home\""), "{metrics}");
    assert!(metrics.contains("server=\"partner\""), "{metrics}");
}

#[tokio::test]
async fn may_act_is_enforced_before_the_authorization_server_is_asked() {
    let r#as = RecordingAs::start().await;
    let backend = echo_backend().await;
    let actor = fake_jwt(json!({"iss": "https://as.example.com", "sub": "agent-1"}));
    let routes = format!(
        "  - name: orders\n    upstream: http://{backend}\n    exchange:\n      authorization_server: corp\n      audience: [orders-api]\n      enforce_may_act: true\n      actor: {{ token: \"{actor}\" }}\n"
    );
    // The same exchange without the check: its entries are not the enforced route's.
    let routes = routes.replace("  - name: orders\n", "  - name: orders\n    match: { path_prefix: /orders }\n")
        + &routes.replace("name: orders", "name: open").replace("      enforce_may_act: true\n", "");
    let gw = TestGateway::start(&config_with(&r#as.token_url(), BASIC_AUTH, &routes)).await;
    let url = format!("{}/orders/1", gw.url);
    let named = fake_jwt(json!({"sub": "alice", "may_act": {"sub": "agent-1", "iss": "https://as.example.com"}}));
    assert_eq!(get(&url, Some(&named)).await.0, 200);
    assert_eq!(r#as.last().param("actor_token"), Some(actor.as_str()));
    let no_claim = fake_jwt(json!({"sub": "bob"}));
    assert_eq!(get(&url, Some(&no_claim)).await.0, 200, "no may_act: nothing to enforce");
    assert_eq!(r#as.count(), 2);
    for other in [
        json!({"sub": "carol", "may_act": {"sub": "agent-2"}}),
        json!({"sub": "dave", "may_act": {"sub": "agent-1", "iss": "https://elsewhere.example.com"}}),
        json!({"sub": "erin", "may_act": "agent-1"}),
    ] {
        let (status, headers, body) = get(&url, Some(&fake_jwt(other))).await;
        assert_eq!(status, 403, "{body}");
        assert!(headers.get("www-authenticate").is_none());
        assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"], "access_denied");
    }
    assert_eq!(r#as.count(), 2, "refused locally");
    // A token exchanged on the open route is no way around the check.
    let carol = fake_jwt(json!({"sub": "carol", "may_act": {"sub": "agent-2"}}));
    assert_eq!(get(&format!("{}/other", gw.url), Some(&carol)).await.0, 200);
    assert_eq!(get(&url, Some(&carol)).await.0, 403, "not served from the open route's entry");
}

#[tokio::test]
async fn each_leg_has_its_own_time_budget() {
    let home = RecordingAs::start().await;
    let partner = RecordingAs::start().await;
    // The home server takes most of its 2 s; the partner has 1 s of its own.
    home.set(|_, n| {
        let grant = json!({"access_token": format!("grant-{n}"), "issued_token_type": JWT, "token_type": "N_A"});
        Reply::Delay(Duration::from_millis(1300), Box::new(Reply::Json(200, grant)))
    });
    partner.set(|_, n| Reply::Json(200, json!({"access_token": format!("partner-{n}"), "token_type": "Bearer"})));
    let backend = echo_backend().await;
    let yaml = format!(
        "authorization_servers:\n  home:\n    token_endpoint: {}\n    timeout: 2s\n  partner:\n    token_endpoint: {}\n    timeout: 1s\nroutes:\n  - name: r\n    upstream: http://{backend}\n    exchange: {{ authorization_server: home, scope: [read], chain: {{ authorization_server: partner, scope: [read] }} }}\n",
        home.token_url(),
        partner.token_url()
    );
    let gw = TestGateway::start(&yaml).await;
    let (status, _, body) = get(&format!("{}/x", gw.url), Some(&fake_jwt(json!({"sub": "alice"})))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&echoed(&body), "authorization"), ["Bearer partner-1"]);
}

#[tokio::test]
async fn a_refused_cached_grant_is_replaced_once() {
    let home = RecordingAs::start().await;
    let partner = RecordingAs::start().await;
    home.set(|_, n| {
        Reply::Json(200, json!({"access_token": format!("grant-{n}"), "issued_token_type": JWT, "token_type": "N_A", "expires_in": 300}))
    });
    // The partner takes each grant once (a one-time `jti`), and its tokens live 1 s.
    let used = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    partner.set(move |req, n| {
        let grant = req.param("assertion").unwrap_or_default().to_owned();
        match used.lock().unwrap().insert(grant) {
            true => Reply::Json(
                200,
                json!({"access_token": format!("partner-{n}"), "token_type": "Bearer", "expires_in": 1}),
            ),
            false => Reply::Json(400, json!({"error": "invalid_grant", "error_description": "assertion already used"})),
        }
    });
    let backend = echo_backend().await;
    let yaml = format!(
        "authorization_servers:\n  home:\n    token_endpoint: {}\n  partner:\n    token_endpoint: {}\ncache: {{ expiry_skew: 0s }}\nroutes:\n  - name: r\n    upstream: http://{backend}\n    exchange: {{ authorization_server: home, scope: [read], chain: {{ authorization_server: partner, scope: [read] }} }}\n",
        home.token_url(),
        partner.token_url()
    );
    let gw = TestGateway::start(&yaml).await;
    let alice = fake_jwt(json!({"sub": "alice", "exp": now() + 600}));
    assert_eq!(get(&format!("{}/x", gw.url), Some(&alice)).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The partner's token expired; the cached grant is refused as used, so a
    // fresh one is asked for at once, and the caller never sees the refusal.
    let (status, _, body) = get(&format!("{}/x", gw.url), Some(&alice)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((home.count(), partner.count()), (2, 3));
    assert_eq!(partner.last().param("assertion"), Some("grant-2"));
    // The refusal that made tokex ask again is counted like any call.
    let metrics = gw.metrics().await;
    let refused = metrics.lines().find(|l| {
        l.starts_with("tokex_exchanges_total") && l.contains("server=\"partner\"") && l.contains("invalid_grant")
    });
    assert!(refused.is_some_and(|l| l.ends_with(" 1")), "{metrics}");
}

#[test]
fn chain_and_may_act_settings_are_checked() {
    let base = "listen: { address: \"127.0.0.1:0\" }\nauthorization_servers:\n  home: { token_endpoint: \"https://home/token\" }\n  partner: { token_endpoint: \"https://partner/token\" }\nroutes:\n  - name: r\n    upstream: http://127.0.0.1:2\n    exchange:\n      authorization_server: home\n";
    for (extra, expected) in [
        ("      chain: { authorization_server: nope, scope: [s] }\n", "exchange.chain.authorization_server"),
        ("      chain: { authorization_server: partner }\n", "exchange.chain.scope: required"),
        ("      chain: { authorization_server: partner, scope: [s], other: 1 }\n", "unknown field"),
        ("      grant: jwt_bearer\n      scope: [s]\n      chain: { authorization_server: partner, scope: [s] }\n", "starts with a token exchange"),
        (
            "      requested_token_type: urn:ietf:params:oauth:token-type:access_token\n      chain: { authorization_server: partner, scope: [s] }\n",
            "asks for a JWT authorization grant",
        ),
    ] {
        let errors = config_errors(&format!("{base}{extra}"));
        assert!(errors.contains(expected), "{expected}: {errors}");
    }
    let cfg = tokex::config::parse(&format!("{base}      enforce_may_act: true\n")).unwrap();
    assert!(
        cfg.warnings.iter().any(|w| w.message.contains("has no effect without exchange.actor")),
        "{:?}",
        cfg.warnings
    );
    let cfg =
        tokex::config::parse(&format!("{base}      chain: {{ authorization_server: partner, scope: [s] }}\n")).unwrap();
    assert!(cfg.warnings.is_empty(), "both servers are used: {:?}", cfg.warnings);
}
