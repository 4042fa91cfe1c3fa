//! Okta, On-Behalf-Of token exchange at a custom authorization server.
//!
//! Documentation: developer.okta.com/docs/guides/set-up-token-exchange: the
//! request (grant_type token-exchange, subject_token_type access_token,
//! subject_token, scope, "audience: audience of the authorization server")
//! sent by a service app; the answer (token_type, expires_in,
//! access_token, scope, issued_token_type). Client authentication:
//! developer.okta.com/docs/api/openapi/okta-oauth/guides/client-auth lists
//! client_secret_basic, client_secret_post, client_secret_jwt,
//! private_key_jwt and none. The refusal of a bad subject token:
//! support.okta.com "subject token is invalid" (invalid_grant).

use std::sync::Arc;

use serde_json::json;

use super::*;

const SECRET: &str = "okta-service-app-secret";

fn shape(rec: &Recorded) -> Result<(), String> {
    if rec.path != "/oauth2/default/v1/token" {
        return Err(format!("not a custom authorization server's token endpoint: {}", rec.path));
    }
    if rec.basic() != Some(("0oa-service-app".into(), SECRET.into())) {
        return Err("client_secret_basic with the service app's credentials expected".into());
    }
    exactly(rec, "grant_type", "urn:ietf:params:oauth:grant-type:token-exchange")?;
    caller_token(rec, "subject_token")?;
    exactly(rec, "subject_token_type", "urn:ietf:params:oauth:token-type:access_token")?;
    exactly(rec, "audience", "com.api.atko")?;
    exactly(rec, "scope", "api:access:read api:access:write")?;
    // Not in the guide: tokex sends neither.
    absent(rec, &["resource", "requested_token_type", "actor_token", "client_secret"])
}

#[tokio::test]
async fn on_behalf_of_token_exchange() {
    let server = format!(
        "/oauth2/default/v1/token\n    profile: okta\n    client_auth: {{ method: client_secret_basic, client_id: 0oa-service-app, client_secret: {SECRET} }}"
    );
    let routes = "  - name: api2\n    match: { path_prefix: / }\n    upstream: http://BACKEND\n    exchange: { authorization_server: idp, audience: [com.api.atko], scope: [\"api:access:read\", \"api:access:write\"] }\n";
    let success: Success = Arc::new(|_, n| {
        json!({
            "token_type": "Bearer", "expires_in": 3600, "access_token": format!("okta-{n}"),
            "scope": "api:access:read api:access:write",
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"
        })
    });
    let fx = start(&server, routes, Arc::new(shape), success).await;
    fx.exchanged("/x", &fx.token(json!({})), "okta-1").await;
    let invalid = json!({"error": "invalid_grant", "error_description": "subject token is invalid"});
    fx.refused("/x", invalid, 401, "error=\"invalid_token\"").await;
}
