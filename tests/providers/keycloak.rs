//! Keycloak, standard token exchange (v2) and client credentials.
//!
//! Documentation: keycloak.org/securing-apps/token-exchange ("Standard token
//! exchange"): grant_type token-exchange, subject_token_type "must be
//! urn:ietf:params:oauth:token-type:access_token", optional
//! requested_token_type, audience (client ids, repeatable) and scope;
//! "does not yet have support for the resource parameter"; delegation "not
//! supported yet". The success body (access_token, expires_in, token_type,
//! issued_token_type, session_state, scope, refresh_expires_in,
//! not-before-policy). Client authentication per the client's
//! authenticator, here "Signed JWT with Client Secret" (client_secret_jwt).
//! Errors from StandardTokenExchangeProvider / AbstractTokenExchangeProvider:
//! invalid_request "Invalid token", invalid_request "Requested audience not
//! available: …", access_denied "Client is not within the token audience".

use std::sync::Arc;

use serde_json::json;

use super::*;

const SECRET: &str = "keycloak-client-secret-of-32-bytes!!";
const PATH: &str = "/realms/acme/protocol/openid-connect/token";

fn shape(rec: &Recorded) -> Result<(), String> {
    if rec.path != PATH {
        return Err(format!("not the realm's token endpoint: {}", rec.path));
    }
    secret_jwt(rec, "tokex", SECRET)?;
    match one(rec, "grant_type")? {
        "urn:ietf:params:oauth:grant-type:token-exchange" => {
            absent(rec, &["resource", "actor_token", "actor_token_type", "requested_subject", "requested_issuer"])?;
            caller_token(rec, "subject_token")?;
            exactly(rec, "subject_token_type", "urn:ietf:params:oauth:token-type:access_token")?;
            if rec.params("audience") != ["orders", "billing"] {
                return Err(format!("audience: {:?}", rec.params("audience")));
            }
            Ok(())
        }
        "client_credentials" => absent(rec, &["subject_token", "audience"]),
        other => Err(format!("unsupported grant_type {other}")),
    }
}

async fn fixture() -> Fixture {
    let server = format!(
        "{PATH}\n    profile: keycloak\n    client_auth: {{ method: client_secret_jwt, client_id: tokex, client_secret: \"{SECRET}\" }}"
    );
    let routes = "  - name: orders\n    match: { path_prefix: /orders }\n    upstream: http://BACKEND\n    exchange: { authorization_server: idp, audience: [orders, billing], scope: [orders:read] }\n  - name: m2m\n    match: { path_prefix: /m2m }\n    upstream: http://BACKEND\n    auth: client_credentials\n    exchange: { authorization_server: idp, scope: [reports] }\n";
    let success: Success = Arc::new(|rec, n| {
        let mut body = json!({
            "access_token": format!("kc-{n}"), "expires_in": 300, "token_type": "Bearer",
            "session_state": "8f8b2c1e", "scope": "orders:read", "refresh_expires_in": 0, "not-before-policy": 0
        });
        if rec.param("grant_type") != Some("client_credentials") {
            body["issued_token_type"] = json!("urn:ietf:params:oauth:token-type:access_token");
        }
        body
    });
    start(&server, routes, Arc::new(shape), success).await
}

#[tokio::test]
async fn standard_token_exchange_and_client_credentials() {
    let fx = fixture().await;
    let rec = fx.exchanged("/orders/1", &fx.token(json!({})), "kc-1").await;
    exactly(&rec, "scope", "orders:read").unwrap();
    // Keycloak's v2 default is an access token: tokex asks for nothing more.
    absent(&rec, &["requested_token_type"]).unwrap();
    let (status, _, body) = fx.call("/m2m/x", "ignored").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&echoed(&body), "authorization"), ["Bearer kc-2"]);
}

#[tokio::test]
async fn keycloak_refusals_are_read_from_their_descriptions() {
    let fx = fixture().await;
    let bad = json!({"error": "invalid_request", "error_description": "Invalid token"});
    fx.refused("/orders/1", bad, 401, "error=\"invalid_token\"").await;
    let audience =
        json!({"error": "invalid_request", "error_description": "Requested audience not available: billing"});
    fx.refused("/orders/1", audience, 403, "error=\"insufficient_scope\", scope=\"orders:read\"").await;
    let not_ours = json!({"error": "access_denied", "error_description": "Client is not within the token audience"});
    fx.refused("/orders/1", not_ours, 401, "error=\"invalid_token\"").await;
    let scope = json!({"error": "invalid_scope", "error_description": "Invalid scopes: orders:read"});
    fx.refused("/orders/1", scope, 403, "insufficient_scope").await;
    // Any other invalid_request is the gateway's configuration.
    let other = json!({"error": "invalid_request", "error_description": "requested_token_type unsupported"});
    fx.refused("/orders/1", other, 502, "").await;
}
