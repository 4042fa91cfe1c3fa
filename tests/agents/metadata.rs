//! RFC 9728 documents and challenges, and step-up (RFC 9470) on such a route.

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::*;

const PRM: &str = "/.well-known/oauth-protected-resource";

fn route(name: &str, prefix: &str, backend: std::net::SocketAddr, metadata: &str) -> String {
    format!(
        "  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n    upstream: http://{backend}\n    exchange: {{ authorization_server: corp, audience: [{name}-api], scope: [{name}:read] }}\n    resource_metadata: {metadata}\n"
    )
}

async fn fetch(method: Method, url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = client().request(method, url).send().await.unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, resp.text().await.unwrap())
}

#[tokio::test]
async fn documents_are_served_per_route_and_named_by_every_401() {
    let r#as = RecordingAs::start().await;
    let backend = echo_backend().await;
    let routes = route(
        "files",
        "/mcp/files",
        backend,
        "{ resource: \"https://gw.example.com/mcp/files\", authorization_servers: [\"https://as.example.com\"], scopes_supported: [files:read, files:write], resource_documentation: \"https://docs.example.com/files\" }",
    ) + &route(
        "mail",
        "/mail",
        backend,
        // The resource's path differs from the route's (an ingress strips a prefix).
        "{ resource: \"https://gw.example.com/v1/mail\", authorization_servers: [\"https://as.example.com\", \"https://partner.example.com\"] }",
    ) + &format!("  - name: open\n    upstream: http://{backend}\n    auth: none\n");
    let gw = TestGateway::start(&config_with(&r#as.token_url(), BASIC_AUTH, &routes)).await;

    let (status, headers, body) = fetch(Method::GET, &format!("{}{PRM}/mcp/files", gw.url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(headers["cache-control"].to_str().unwrap().contains("max-age"));
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        doc,
        json!({
            "resource": "https://gw.example.com/mcp/files",
            "authorization_servers": ["https://as.example.com"],
            "scopes_supported": ["files:read", "files:write"],
            "bearer_methods_supported": ["header"],
            "resource_documentation": "https://docs.example.com/files",
        })
    );
    // At the resource's well-known path and at the route's own.
    for path in ["/v1/mail", "/mail"] {
        let (status, _, body) = fetch(Method::GET, &format!("{}{PRM}{path}", gw.url)).await;
        assert_eq!(status, 200, "{path}");
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["resource"], "https://gw.example.com/v1/mail");
        assert!(doc.get("scopes_supported").is_none(), "no scopes to name");
    }
    // Two resources: no document at the bare prefix (it goes to the catch-all route).
    let (_, _, body) = fetch(Method::GET, &format!("{}{PRM}", gw.url)).await;
    assert_eq!(echoed(&body)["path"], PRM);
    let (status, _, body) = fetch(Method::HEAD, &format!("{}{PRM}/mcp/files", gw.url)).await;
    assert_eq!((status, body.as_str()), (200, ""));
    let (status, headers, _) = fetch(Method::POST, &format!("{}{PRM}/mcp/files", gw.url)).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET, HEAD");
    assert_eq!(r#as.count(), 0, "no document costs an exchange");

    // tokex's own 401s name the document and the scopes.
    let (status, headers, _) = get(&format!("{}/mcp/files/x", gw.url), None).await;
    assert_eq!(status, 401);
    assert_eq!(
        headers["www-authenticate"],
        "Bearer realm=\"tokex\", resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource/mcp/files\", scope=\"files:read files:write\""
    );
    r#as.set(|_, _| Reply::Json(400, json!({"error": "invalid_grant"})));
    let (status, headers, _) = get(&format!("{}/mail/x", gw.url), Some("expired-token")).await;
    assert_eq!(status, 401);
    assert_eq!(
        headers["www-authenticate"],
        "Bearer realm=\"tokex\", error=\"invalid_token\", resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource/v1/mail\""
    );
    // A route without metadata is unchanged.
    let (_, headers, _) = get(&format!("{}/other", gw.url), None).await;
    assert!(headers.get("www-authenticate").is_none());
}

#[tokio::test]
async fn a_single_resource_is_also_at_the_root_and_dpop_is_advertised() {
    let r#as = RecordingAs::start().await;
    let backend = echo_backend().await;
    let routes = route(
        "files",
        "/mcp",
        backend,
        "{ resource: \"https://GW.example.com:443/mcp\", authorization_servers: [\"https://as.example.com\"] }",
    );
    let yaml = config_with(&r#as.token_url(), BASIC_AUTH, &routes) + "inbound: { dpop: require }\n";
    let gw = TestGateway::start(&yaml).await;
    for path in [PRM.to_owned(), format!("{PRM}/mcp")] {
        let (status, _, body) = fetch(Method::GET, &format!("{}{path}", gw.url)).await;
        assert_eq!(status, 200, "{path}");
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["resource"], "https://GW.example.com:443/mcp", "as written (RFC 9728 §3.3)");
        assert_eq!(doc["dpop_bound_access_tokens_required"], true);
        assert_eq!(doc["dpop_signing_alg_values_supported"], json!(["ES256", "EdDSA"]));
    }
    // The DPoP challenge carries the document's URL too.
    let (status, headers, _) = get(&format!("{}/mcp", gw.url), None).await;
    assert_eq!(status, 401);
    let c = headers["www-authenticate"].to_str().unwrap();
    assert!(c.starts_with("DPoP ") && c.contains("algs=\"ES256 EdDSA\""), "{c}");
    assert!(c.contains("resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource/mcp\""), "{c}");
}

#[tokio::test]
async fn step_up_reaches_the_caller_with_the_servers_hints() {
    let r#as = RecordingAs::start().await;
    let backend = echo_backend().await;
    let routes = route(
        "files",
        "/status",
        backend,
        "{ resource: \"https://gw.example.com/mcp\", authorization_servers: [\"https://as.example.com\"] }",
    );
    let gw = TestGateway::start(&config_with(&r#as.token_url(), BASIC_AUTH, &routes)).await;
    // The authorization server asks for a stronger sign-in (RFC 9470 §3).
    r#as.set(|_, _| {
        Reply::Json(
            400,
            json!({"error": "insufficient_user_authentication", "error_description": "MFA needed", "acr_values": "urn:example:mfa phr", "max_age": 300}),
        )
    });
    let (status, headers, body) = get(&format!("{}/status/200", gw.url), Some("user-token")).await;
    assert_eq!(status, 401, "{body}");
    let c = headers["www-authenticate"].to_str().unwrap();
    assert!(c.starts_with("Bearer realm=\"tokex\", error=\"insufficient_user_authentication\""), "{c}");
    assert!(c.contains("acr_values=\"urn:example:mfa phr\"") && c.contains("max_age=300"), "{c}");
    assert!(c.contains("resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource/mcp\""), "{c}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "insufficient_user_authentication");

    // The backend's own step-up challenge passes unchanged, with the document's URL added.
    r#as.set(|_, n| issue(n));
    let challenge = "Bearer error=\"insufficient_user_authentication\", acr_values=\"urn:example:mfa\", max_age=60";
    let resp = client()
        .get(format!("{}/status/401", gw.url))
        .bearer_auth("user-token")
        .header("x-echo-www-authenticate", challenge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        format!("{challenge}, resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource/mcp\"")
            .as_str()
    );
    // A backend 401 with no challenge at all gets one that says where to look.
    let (status, headers, _) = get(&format!("{}/status/401", gw.url), Some("user-token")).await;
    assert_eq!(status, 401);
    assert_eq!(
        headers["www-authenticate"],
        "Bearer resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource/mcp\""
    );
}

#[test]
fn resource_metadata_is_validated() {
    let base = "listen: { address: \"127.0.0.1:0\" }\nauthorization_servers:\n  corp: { token_endpoint: \"http://127.0.0.1:1/token\" }\nroutes:\n";
    let r = |name: &str, extra: &str| {
        format!("  - name: {name}\n    match: {{ path_prefix: /{name} }}\n    upstream: http://127.0.0.1:2\n    exchange: {{ authorization_server: corp }}\n{extra}")
    };
    for (routes, expected) in [
        (r("a", "    resource_metadata: { resource: \"https://gw/a\" }\n"), "routes[0].resource_metadata.authorization_servers: list the issuer URL"),
        (r("a", "    resource_metadata: { resource: \"gw/a\", authorization_servers: [\"https://as\"] }\n"), "routes[0].resource_metadata.resource"),
        (r("a", "    resource_metadata: { resource: \"https://gw/a?x=1\", authorization_servers: [\"https://as\"] }\n"), "has no query"),
        (r("a", "    resource_metadata: { resource: \"https://gw/a\", authorization_servers: [\"as\"] }\n"), "routes[0].resource_metadata.authorization_servers[0]"),
        (r("a", "    resource_metadata: { resource: \"https://gw/a\", authorization_servers: [\"https://as\"], scopes_supported: [\"a b\"] }\n"), "scopes_supported[0]"),
        (r("a", "    resource_metadata: { resource: \"https://gw/a\", authorization_servers: [\"https://as\"], unknown: 1 }\n"), "unknown field"),
        (
            "  - name: n\n    upstream: http://127.0.0.1:2\n    auth: none\n    resource_metadata: { resource: \"https://gw/n\", authorization_servers: [\"https://as\"] }\n".to_owned(),
            "only on routes that take the caller's token",
        ),
        (
            r("a", "    resource_metadata: { resource: \"https://gw/x\", authorization_servers: [\"https://as\"] }\n")
                + &r("b", "    resource_metadata: { resource: \"https://gw/x\", authorization_servers: [\"https://as\"] }\n"),
            "route a already publishes metadata at /.well-known/oauth-protected-resource/x",
        ),
    ] {
        let errors = config_errors(&format!("{base}{routes}"));
        assert!(errors.contains(expected), "{expected}: {errors}");
    }
    let ok = format!("{base}{}", r("a", "    require_scopes: [a:read]\n    resource_metadata: { resource: \"https://gw/a\", authorization_servers: [\"https://as\"] }\n"));
    let ok = ok.replace(
        "routes:\n",
        "inbound: { jwt: { issuer: \"https://as\", jwks_uri: \"https://as/jwks\", audiences: [a] } }\nroutes:\n",
    );
    let cfg = tokex::config::parse(&ok).unwrap();
    assert_eq!(
        cfg.routes[0].resource_metadata.as_ref().unwrap().scopes_supported,
        ["a:read"],
        "defaults to require_scopes"
    );
}
