//! Google Cloud Security Token Service (workload identity federation).
//!
//! Documentation: cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token
//! (the sts/v1 discovery document): grantType "Must be
//! urn:ietf:params:oauth:grant-type:token-exchange"; subjectTokenType one
//! of jwt, id_token, aws4_request, access_token; requestedTokenType "Must
//! be urn:ietf:params:oauth:token-type:access_token"; audience "The full
//! resource name of the identity provider"; scope; options "serialized
//! JSON"; "do not send the Authorization HTTP header"; the answer
//! (access_token, issued_token_type, token_type "Always … Bearer",
//! expires_in). Refusals seen in google-github-actions/auth#202 and #211:
//! invalid_target (pool or provider disabled or missing) and
//! invalid_request (a malformed audience).

use std::sync::Arc;

use serde_json::{json, Value};

use super::*;

const AUDIENCE: &str =
    "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/pool/providers/tokex";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

fn shape(rec: &Recorded) -> Result<(), String> {
    if rec.path != "/v1/token" {
        return Err(format!("not /v1/token: {}", rec.path));
    }
    if rec.headers.contains_key("authorization") {
        return Err("the STS must not get an Authorization header".into());
    }
    absent(rec, &["client_id", "client_secret", "client_assertion", "actor_token", "resource"])?;
    exactly(rec, "grant_type", "urn:ietf:params:oauth:grant-type:token-exchange")?;
    caller_token(rec, "subject_token")?;
    exactly(rec, "subject_token_type", "urn:ietf:params:oauth:token-type:jwt")?;
    exactly(rec, "requested_token_type", ACCESS)?;
    exactly(rec, "audience", AUDIENCE)?;
    exactly(rec, "scope", "https://www.googleapis.com/auth/cloud-platform")?;
    let options: Value = serde_json::from_str(one(rec, "options")?).map_err(|e| format!("options: {e}"))?;
    if options["userProject"] != "billing-project" {
        return Err(format!("options: {options}"));
    }
    Ok(())
}

#[tokio::test]
async fn federated_access_token() {
    let server = "/v1/token\n    profile: google_sts\n    client_auth: { method: none }";
    let routes = format!("  - name: gcs\n    match: {{ path_prefix: / }}\n    upstream: http://BACKEND\n    exchange:\n      authorization_server: idp\n      audience: [\"{AUDIENCE}\"]\n      scope: [https://www.googleapis.com/auth/cloud-platform]\n      extra_params: {{ options: '{{\"userProject\":\"billing-project\"}}' }}\n");
    let success: Success = Arc::new(
        |_, n| json!({"access_token": format!("ya29.sts-{n}"), "issued_token_type": ACCESS, "token_type": "Bearer", "expires_in": 3599}),
    );
    let fx = start(server, &routes, Arc::new(shape), success).await;
    fx.exchanged("/storage/v1/b", &fx.token(json!({})), "ya29.sts-1").await;
    let disabled = json!({"error": "invalid_target", "error_description": "The target service indicated by the \"audience\" parameters is invalid. This might either be because the pool or provider is disabled or deleted or because it doesn't exist."});
    fx.refused("/storage/v1/b", disabled, 502, "").await;
    let bad = json!({"error": "invalid_grant", "error_description": "The audience in ID Token does not match the expected audience."});
    fx.refused("/storage/v1/b", bad, 401, "invalid_token").await;
}
