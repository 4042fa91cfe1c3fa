//! The `generic` profile (RFC 8693 as written), for what every profile
//! shares: claim values in `extra_params`, and RFC 9470 step-up hints.

use std::sync::Arc;

use serde_json::json;

use super::*;

async fn fixture() -> Fixture {
    let server = "/token\n    client_auth: { method: client_secret_basic, client_id: tokex, client_secret: s }";
    let routes = "  - name: r\n    match: { path_prefix: / }\n    upstream: http://BACKEND\n    exchange:\n      authorization_server: idp\n      audience: [api]\n      extra_params: { org: { claim: org } }\n";
    let shape: Shape = Arc::new(|rec| caller_token(rec, "subject_token"));
    start(server, routes, shape, Arc::new(|_, n| issue_body(n))).await
}

fn issue_body(n: usize) -> serde_json::Value {
    json!({"access_token": format!("exchanged-{n}"), "token_type": "Bearer", "expires_in": 60})
}

#[tokio::test]
async fn claim_values_are_form_encoded_and_each_caller_keeps_its_own() {
    let fx = fixture().await;
    // A claim value cannot add a parameter: it is one encoded value.
    let rec = fx.exchanged("/a", &fx.token(json!({"org": "acme&scope=admin&audience=evil"})), "exchanged-1").await;
    exactly(&rec, "org", "acme&scope=admin&audience=evil").unwrap();
    assert!(rec.params("scope").is_empty());
    assert_eq!(rec.params("audience"), ["api"]);
    // Another caller, another claim: its own exchange and token.
    let rec = fx.exchanged("/a", &fx.token(json!({"org": "globex"})), "exchanged-2").await;
    exactly(&rec, "org", "globex").unwrap();
    // No claim: the parameter is left out.
    let rec = fx.exchanged("/a", &fx.token(json!({})), "exchanged-3").await;
    absent(&rec, &["org"]).unwrap();
    // A claim in a token the inbound check refuses never reaches the AS.
    let forged = EcSigner::new("k1").token(&claims(json!({"org": "acme"})));
    let (status, _, _) = fx.call("/a", &forged).await;
    assert_eq!(status, 401);
    assert_eq!(fx.auth_server.count(), 3);
}

#[tokio::test]
async fn a_step_up_answer_passes_its_hints_on() {
    let fx = fixture().await;
    let body = json!({"error": "insufficient_user_authentication", "error_description": "MFA needed", "acr_values": "urn:example:acr:mfa", "max_age": 300});
    fx.refused("/a", body, 401, "error=\"insufficient_user_authentication\", error_description=\"the authorization server requires the user to sign in again or approve (step-up)\", acr_values=\"urn:example:acr:mfa\", max_age=300").await;
    // A hint that would break the header is dropped, the answer stays.
    let body = json!({"error": "interaction_required", "acr_values": "x\", error=\"none", "max_age": "soon"});
    let headers = fx.refused("/a", body, 401, "insufficient_user_authentication").await;
    let www = headers["www-authenticate"].to_str().unwrap();
    assert!(!www.contains("acr_values") && !www.contains("max_age"), "{www}");
    // Not cached: the next request asks again.
    let before = fx.auth_server.count();
    fx.refuse(400, json!({"error": "login_required"}));
    let token = fx.token(json!({}));
    for _ in 0..2 {
        assert_eq!(fx.call("/a", &token).await.0, 401);
    }
    assert_eq!(fx.auth_server.count(), before + 2);
}
