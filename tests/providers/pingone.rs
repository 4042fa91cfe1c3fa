//! PingOne, token exchange with delegation (an actor token).
//!
//! Documentation (developer.pingidentity.com/pingone-api): "Token exchange
//! grant type": "an application presents a subject token and optionally an
//! actor token and receives an access token for a custom resource"; the
//! application's tokenEndpointAuthMethod is CLIENT_SECRET_BASIC,
//! CLIENT_SECRET_POST, PRIVATE_KEY_JWT or CLIENT_SECRET_JWT ("requires the
//! client_assertion and client_assertion_type properties"); "Trusted
//! issuers": for third-party JWTs "the subject_token_type and
//! actor_token_type parameter values … must be set to
//! urn:ietf:params:oauth:token-type:jwt". The endpoint is
//! {authPath}/{envID}/as/token. The success and error bodies are not in the
//! documentation found: RFC 6749 §5.1 / §5.2 shapes are assumed.

use std::sync::Arc;

use serde_json::json;

use super::*;

const SECRET: &str = "pingone-client-secret-32-bytes-long!";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const PATH: &str = "/9b3c1a2e-env/as/token";

fn shape(rec: &Recorded) -> Result<(), String> {
    if rec.path != PATH {
        return Err(format!("not {{envID}}/as/token: {}", rec.path));
    }
    secret_jwt(rec, "tokex-app", SECRET)?;
    exactly(rec, "grant_type", "urn:ietf:params:oauth:grant-type:token-exchange")?;
    caller_token(rec, "subject_token")?;
    exactly(rec, "subject_token_type", JWT)?;
    exactly(rec, "actor_token", "agent-actor-token")?;
    exactly(rec, "actor_token_type", JWT)?;
    exactly(rec, "scope", "invoices:read")
}

#[tokio::test]
async fn delegation_with_an_actor_token() {
    let server = format!(
        "{PATH}\n    profile: pingone\n    client_auth: {{ method: client_secret_jwt, client_id: tokex-app, client_secret: \"{SECRET}\" }}"
    );
    let routes = format!("  - name: invoices\n    match: {{ path_prefix: / }}\n    upstream: http://BACKEND\n    exchange:\n      authorization_server: idp\n      subject_token_type: {JWT}\n      scope: [invoices:read]\n      actor: {{ token: agent-actor-token, token_type: {JWT} }}\n");
    let success: Success = Arc::new(
        |_, n| json!({"access_token": format!("p1-{n}"), "token_type": "Bearer", "expires_in": 3600, "scope": "invoices:read"}),
    );
    let fx = start(&server, &routes, Arc::new(shape), success).await;
    fx.exchanged("/invoices", &fx.token(json!({})), "p1-1").await;
    let invalid = json!({"error": "invalid_grant", "error_description": "The subject token is invalid"});
    fx.refused("/invoices", invalid, 401, "invalid_token").await;
}
