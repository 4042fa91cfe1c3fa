//! ZITADEL, token exchange with an actor (its "impersonation").
//!
//! Documentation: zitadel.com/docs/guides/integrate/token-exchange: POST
//! /oauth/v2/token with grant_type token-exchange, subject_token and
//! subject_token_type, actor_token and actor_token_type ("only a valid
//! access token or ID token are allowed as actor token"),
//! requested_token_type (jwt for a JWT access token), audience and scope;
//! "Supplying [resource] will always result in a invalid_target error";
//! client authentication with Basic, body secrets or a JWT assertion; the
//! answer (access_token, issued_token_type, token_type, expires_in, scope,
//! and ZITADEL's own id_token member).

use std::sync::Arc;

use serde_json::json;

use super::*;

const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

fn shape(rec: &Recorded) -> Result<(), String> {
    if rec.path != "/oauth/v2/token" {
        return Err(format!("not /oauth/v2/token: {}", rec.path));
    }
    if rec.basic() != Some(("tokex@project".into(), "zitadel-secret".into())) {
        return Err("client_secret_basic expected".into());
    }
    if rec.param("resource").is_some() {
        return Err("invalid_target: resource is not supported".into());
    }
    exactly(rec, "grant_type", "urn:ietf:params:oauth:grant-type:token-exchange")?;
    caller_token(rec, "subject_token")?;
    exactly(rec, "subject_token_type", ACCESS)?;
    exactly(rec, "actor_token", "impersonator-access-token")?;
    exactly(rec, "actor_token_type", ACCESS)?;
    exactly(rec, "requested_token_type", JWT)?;
    exactly(rec, "audience", "275671427955294244")
}

#[tokio::test]
async fn delegation_with_an_actor_token() {
    let server = "/oauth/v2/token\n    profile: zitadel\n    client_auth: { method: client_secret_basic, client_id: tokex@project, client_secret: zitadel-secret }";
    let routes = format!("  - name: api\n    match: {{ path_prefix: / }}\n    upstream: http://BACKEND\n    exchange:\n      authorization_server: idp\n      audience: [\"275671427955294244\"]\n      requested_token_type: {JWT}\n      actor: {{ token: impersonator-access-token, token_type: {ACCESS} }}\n");
    let success: Success = Arc::new(
        |_, n| json!({"access_token": format!("zt-{n}"), "issued_token_type": JWT, "token_type": "Bearer", "expires_in": 43199, "scope": "openid profile", "id_token": "eyJ.non-standard.member"}),
    );
    let fx = start(server, &routes, Arc::new(shape), success).await;
    fx.exchanged("/things", &fx.token(json!({})), "zt-1").await;
    let denied = json!({"error": "invalid_grant", "error_description": "subject_token is invalid (OIDC-Ieb0e)"});
    fx.refused("/things", denied, 401, "invalid_token").await;
}
