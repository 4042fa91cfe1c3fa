//! Auth0: On-Behalf-Of token exchange and Custom Token Exchange.
//!
//! Documentation (auth0.com/docs):
//! - api/authentication/on-behalf-of-token-exchange/get-token: grant_type
//!   token-exchange, subject_token_type access_token, subject_token,
//!   requested_token_type access_token (required), client_id and
//!   client_secret, audience (the downstream API); the answer
//!   (access_token, expires_in, token_type, issued_token_type).
//! - …/call-your-api-using-the-custom-token-exchange-flow: subject_token_type
//!   is "any URI scoped under your own ownership" (urn:ietf, urn:auth0,
//!   urn:okta and the auth0.com / okta.com URLs are reserved), audience,
//!   scope, organization. agentgateway#2891: Auth0 refuses a
//!   requested_token_type there ("Invalid subject_token_type and
//!   requested_token_type combination.").
//! - authenticate-with-ropg-and-mfa: the mfa_required error body;
//!   node-auth0 ICustomTokenExchange: consent_required ("Enable Allow
//!   Skipping User Consent in API settings").

use std::sync::Arc;

use serde_json::json;

use super::*;

const SECRET: &str = "auth0-client-secret";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

fn common(rec: &Recorded) -> Result<(), String> {
    if rec.path != "/oauth/token" {
        return Err(format!("not /oauth/token: {}", rec.path));
    }
    exactly(rec, "grant_type", "urn:ietf:params:oauth:grant-type:token-exchange")?;
    exactly(rec, "client_id", "tokex-api")?;
    exactly(rec, "client_secret", SECRET)?;
    caller_token(rec, "subject_token")?;
    absent(rec, &["resource", "actor_token"])
}

fn obo(rec: &Recorded) -> Result<(), String> {
    common(rec)?;
    exactly(rec, "subject_token_type", ACCESS)?;
    exactly(rec, "requested_token_type", ACCESS)?;
    exactly(rec, "audience", "https://calendar.example.com/")
}

fn cte(rec: &Recorded) -> Result<(), String> {
    common(rec)?;
    let t = one(rec, "subject_token_type")?;
    if ["urn:ietf", "urn:auth0", "urn:okta", "http://auth0.com", "https://auth0.com"].iter().any(|p| t.starts_with(p)) {
        return Err(format!("reserved subject_token_type {t}"));
    }
    if rec.param("requested_token_type").is_some() {
        return Err("Invalid subject_token_type and requested_token_type combination.".into());
    }
    exactly(rec, "audience", "https://calendar.example.com/")?;
    exactly(rec, "organization", "org_W7nT")
}

fn server() -> String {
    format!(
        "/oauth/token\n    profile: auth0\n    client_auth: {{ method: client_secret_post, client_id: tokex-api, client_secret: {SECRET} }}"
    )
}

fn success() -> Success {
    Arc::new(
        |_, n| json!({"access_token": format!("auth0-{n}"), "expires_in": 86400, "token_type": "Bearer", "issued_token_type": ACCESS}),
    )
}

#[tokio::test]
async fn on_behalf_of_token_exchange() {
    let routes = "  - name: calendar\n    match: { path_prefix: / }\n    upstream: http://BACKEND\n    exchange: { authorization_server: idp, audience: [\"https://calendar.example.com/\"] }\n";
    let fx = start(&server(), routes, Arc::new(obo), success()).await;
    fx.exchanged("/events", &fx.token(json!({})), "auth0-1").await;
    let mfa = json!({"error": "mfa_required", "error_description": "Multifactor authentication required", "mfa_token": "Fe26.2*SERVER_MFA_TOKEN"});
    let headers = fx.refused("/events", mfa, 401, "error=\"insufficient_user_authentication\"").await;
    assert!(!format!("{headers:?}").contains("Fe26"), "the mfa_token is not passed on");
    let denied = json!({"error": "access_denied", "error_description": "Unauthorized"});
    fx.refused("/events", denied, 403, "insufficient_scope").await;
}

#[tokio::test]
async fn custom_token_exchange_with_a_claim_as_organization() {
    let routes = "  - name: calendar\n    match: { path_prefix: / }\n    upstream: http://BACKEND\n    exchange:\n      authorization_server: idp\n      subject_token_type: \"urn:acme:legacy-token\"\n      audience: [\"https://calendar.example.com/\"]\n      extra_params: { organization: { claim: org_id, required: true } }\n";
    let fx = start(&server(), routes, Arc::new(cte), success()).await;
    fx.exchanged("/events", &fx.token(json!({"org_id": "org_W7nT"})), "auth0-1").await;
    // The claim is required: without it, no token request at all.
    let before = fx.auth_server.count();
    let (status, headers, _) = fx.call("/events", &fx.token(json!({}))).await;
    assert_eq!(status, 401);
    assert!(headers["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    assert_eq!(fx.auth_server.count(), before);
    let consent = json!({"error": "consent_required", "error_description": "Consent required"});
    fx.refuse(400, consent);
    let (status, _, _) = fx.call("/events", &fx.token(json!({"org_id": "org_W7nT"}))).await;
    assert_eq!(status, 502, "an API setting at Auth0, not the user's doing");
    assert_eq!(fx.violations(), Vec::<String>::new());
}
