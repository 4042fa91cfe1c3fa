//! Microsoft Entra ID, on-behalf-of and client credentials.
//!
//! Documentation (learn.microsoft.com/entra/identity-platform):
//! - v2-oauth2-on-behalf-of-flow: "grant_type … must be
//!   urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion", "scope",
//!   "requested_token_use … must be set to on_behalf_of", client_id and
//!   client_secret in the body (or Basic); the success body (token_type,
//!   scope, expires_in, ext_expires_in, access_token) and the Conditional
//!   Access error example (interaction_required, AADSTS50079, error_codes,
//!   claims).
//! - v2-oauth2-client-creds-grant-flow: grant_type=client_credentials,
//!   scope = "<App ID URI>/.default".
//! - reference-error-codes: AADSTS901002 "The 'resource' request parameter
//!   isn't supported", AADSTS500133, AADSTS53003, AADSTS7000215.

use std::sync::Arc;

use serde_json::json;

use super::*;

const SECRET: &str = "entra-client-secret";

fn shape(rec: &Recorded) -> Result<(), String> {
    if !rec.path.ends_with("/oauth2/v2.0/token") {
        return Err(format!("not the v2.0 token endpoint: {}", rec.path));
    }
    // AADSTS901002, and no RFC 8693 names.
    absent(
        rec,
        &["resource", "audience", "subject_token", "subject_token_type", "actor_token", "requested_token_type"],
    )?;
    exactly(rec, "client_id", "tokex-app")?;
    exactly(rec, "client_secret", SECRET)?;
    match one(rec, "grant_type")? {
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            caller_token(rec, "assertion")?;
            exactly(rec, "requested_token_use", "on_behalf_of")?;
            exactly(rec, "scope", "https://graph.microsoft.com/.default")
        }
        "client_credentials" => {
            absent(rec, &["assertion", "requested_token_use"])?;
            let scope = one(rec, "scope")?;
            if scope.ends_with("/.default") && !scope.contains(' ') {
                Ok(())
            } else {
                Err(format!("client credentials scope must be one <App ID URI>/.default, got {scope}"))
            }
        }
        other => Err(format!("unsupported grant_type {other}")),
    }
}

async fn fixture() -> Fixture {
    let server = format!(
        "/contoso.onmicrosoft.com/oauth2/v2.0/token\n    profile: entra\n    client_auth: {{ method: client_secret_post, client_id: tokex-app, client_secret: {SECRET} }}"
    );
    let routes = "  - name: graph\n    match: { path_prefix: /graph }\n    upstream: http://BACKEND\n    exchange:\n      authorization_server: idp\n      scope: [https://graph.microsoft.com/.default]\n      extra_params: { tenant_hint: contoso }\n  - name: m2m\n    match: { path_prefix: /m2m }\n    upstream: http://BACKEND\n    auth: client_credentials\n    exchange: { authorization_server: idp, scope: [api://orders/.default] }\n";
    let success: Success = Arc::new(|rec, n| match rec.param("grant_type") {
        Some("client_credentials") => {
            json!({"token_type": "Bearer", "expires_in": 3599, "access_token": format!("app-{n}")})
        }
        _ => json!({
            "token_type": "Bearer", "scope": "https://graph.microsoft.com/user.read",
            "expires_in": 3269, "ext_expires_in": 0, "access_token": format!("obo-{n}")
        }),
    });
    start(&server, routes, Arc::new(shape), success).await
}

#[tokio::test]
async fn on_behalf_of_and_client_credentials() {
    let fx = fixture().await;
    let rec = fx.exchanged("/graph/me", &fx.token(json!({})), "obo-1").await;
    // SPEC §7's example: a static extra parameter goes along.
    exactly(&rec, "tenant_hint", "contoso").unwrap();
    assert_eq!(rec.form[0], ("grant_type".into(), "urn:ietf:params:oauth:grant-type:jwt-bearer".into()));
    let (status, _, body) = fx.call("/m2m/x", "whatever-the-caller-sent").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&echoed(&body), "authorization"), ["Bearer app-2"]);
    assert_eq!(fx.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn entra_refusals_reach_the_caller_as_documented() {
    let fx = fixture().await;
    // Conditional Access asks for MFA: a step-up challenge carrying the
    // claims challenge (base64), as the OBO documentation says the middle
    // tier should answer.
    let claims = r#"{"access_token":{"polids":{"essential":true,"values":["9ab03e19-ed42-4168-b6b7-7001fb3e933a"]}}}"#;
    let mfa = json!({
        "error": "interaction_required",
        "error_description": "AADSTS50079: Due to a configuration change made by your administrator, or because you moved to a new location, you must enroll in multifactor authentication to access 'bf8d80f9-9098-4972-b203-500f535113b1'.\r\nTrace ID: b72a68c3-0926-4b8e-bc35-3150069c2800",
        "error_codes": [50079], "timestamp": "2017-05-01 22:43:20Z",
        "trace_id": "b72a68c3-0926-4b8e-bc35-3150069c2800", "correlation_id": "73d656cf-54b1-4eb2-b429-26d8165a52d7",
        "claims": claims
    });
    let headers = fx.refused("/graph/me", mfa, 401, "error=\"insufficient_user_authentication\"").await;
    let www = headers["www-authenticate"].to_str().unwrap();
    let b64claims = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, claims);
    assert!(www.contains(&format!("claims=\"{b64claims}\"")), "{www}");
    // An expired assertion is the caller's token: 401 invalid_token.
    let expired = json!({"error": "invalid_grant", "error_description": "AADSTS500133: Assertion isn't within its valid time range.", "error_codes": [500133]});
    fx.refused("/graph/me", expired, 401, "error=\"invalid_token\"").await;
    // Blocked by Conditional Access: no step-up helps.
    let blocked = json!({"error": "interaction_required", "error_description": "AADSTS53003: Access has been blocked by Conditional Access policies.", "error_codes": [53003], "suberror": "message_only"});
    fx.refused("/graph/me", blocked, 403, "insufficient_scope").await;
    // tokex's own secret is wrong: the gateway's problem.
    let secret = json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided.", "error_codes": [7000215]});
    fx.refused("/graph/me", secret, 502, "").await;
}
