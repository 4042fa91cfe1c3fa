//! An MCP client against tokex in front of an MCP server, driven the way
//! the MCP authorization spec says a client discovers its way in: call →
//! `401` with `resource_metadata` → RFC 9728 document → the authorization
//! server's RFC 8414 metadata → a token for the resource (RFC 8707) →
//! call again. The MCP server receives a token exchanged for its own
//! audience, never the client's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Response, StatusCode};
use serde_json::{json, Value};
use tokex::dev_sts::{self, ClientSpec, DevStsConfig};

use crate::common::*;

const RESOURCE: &str = "http://mcp.example.test/mcp";

/// A JSON-RPC MCP server: answers `initialize` and `tools/list`, and
/// remembers the `Authorization` header of every request.
async fn mcp_server(seen: Arc<Mutex<Vec<String>>>) -> std::net::SocketAddr {
    serve(move |req: http::Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap_or("").to_owned());
            seen.lock().unwrap().push(auth.unwrap_or_default());
            let body = http_body_util::BodyExt::collect(req.into_body()).await.unwrap().to_bytes();
            let call: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let result = match call["method"].as_str() {
                Some("initialize") => json!({
                    "protocolVersion": "2025-11-25",
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "files", "version": "1.0.0"}
                }),
                Some("tools/list") => json!({"tools": [{"name": "read_file", "inputSchema": {"type": "object"}}]}),
                _ => json!(null),
            };
            let answer = json!({"jsonrpc": "2.0", "id": call["id"], "result": result});
            Response::builder().header("content-type", "application/json").body(full(answer.to_string())).unwrap()
        }
    })
    .await
}

/// The MCP client's HTTP client: `mcp.example.test` is the gateway.
fn mcp_client(gw: std::net::SocketAddr) -> reqwest::Client {
    let tls = tokex::exchange::client::tls_config(None).unwrap();
    reqwest::Client::builder().use_preconfigured_tls(tls).resolve("mcp.example.test", gw).build().unwrap()
}

/// `name="value"` from a challenge.
fn param<'a>(challenge: &'a str, name: &str) -> Option<&'a str> {
    let at = challenge.find(&format!("{name}=\""))? + name.len() + 2;
    challenge[at..].split('"').next()
}

#[tokio::test]
async fn an_mcp_client_discovers_its_way_in_and_the_server_never_sees_its_token() {
    let clients = vec![
        // tokex at the authorization server.
        ClientSpec::parse_flag("id=gw,secret=gw-secret,audiences=files-api,scopes=files:read").unwrap(),
        // The MCP client (an agent): tokens for the MCP resource.
        ClientSpec::parse_flag(&format!("id=agent,secret=agent-secret,audiences={RESOURCE},scopes=files:read"))
            .unwrap(),
    ];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sts =
        dev_sts::start(DevStsConfig { clients, expires_in: Duration::from_secs(300), ..Default::default() }, listener)
            .await
            .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = mcp_server(seen.clone()).await;
    let yaml = [
        "authorization_servers:",
        "  corp:",
        &format!("    token_endpoint: {}", sts.token_endpoint()),
        "    client_auth: { method: client_secret_basic, client_id: gw, client_secret: gw-secret }",
        "inbound:",
        "  jwt:",
        &format!("    issuer: {}", sts.issuer()),
        &format!("    jwks_uri: {}", sts.jwks_uri()),
        &format!("    audiences: [\"{RESOURCE}\"]"),
        "    algorithms: [ES256]",
        "routes:",
        "  - name: mcp-files",
        "    match: { path_prefix: /mcp }",
        &format!("    upstream: http://{backend}"),
        "    require_scopes: [files:read]",
        "    resource_metadata:",
        &format!("      resource: {RESOURCE}"),
        &format!("      authorization_servers: [{}]", sts.issuer()),
        "      resource_name: Files MCP server",
        "    exchange: { authorization_server: corp, audience: [files-api], scope: [files:read] }",
    ]
    .join("\n");
    let gw = TestGateway::start(&yaml).await;
    let http = mcp_client(gw.running.addr);
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "agent", "version": "1"}}});
    let mut transcript = Vec::new();

    // 1. Unauthenticated: 401, and the challenge says where to look.
    let resp = http
        .post(RESOURCE)
        .header("content-type", "application/json")
        .body(initialize.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
    transcript.push(format!("POST {RESOURCE} (no token) -> 401\n  WWW-Authenticate: {challenge}"));
    assert!(challenge.starts_with("Bearer realm=\"tokex\""), "{challenge}");
    let metadata_url = param(&challenge, "resource_metadata").expect("resource_metadata").to_owned();
    assert_eq!(metadata_url, "http://mcp.example.test/.well-known/oauth-protected-resource/mcp");
    assert_eq!(param(&challenge, "scope"), Some("files:read"));
    assert!(seen.lock().unwrap().is_empty(), "nothing reached the MCP server");

    // 2. The protected resource metadata (RFC 9728 §3).
    let resp = http.get(&metadata_url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let doc: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    transcript.push(format!("GET {metadata_url} -> 200\n  {doc}"));
    // §3.3: the resource must be the URL the client called.
    assert_eq!(doc["resource"], RESOURCE);
    assert_eq!(doc["authorization_servers"], json!([sts.issuer()]));
    assert_eq!(doc["scopes_supported"], json!(["files:read"]));
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    assert_eq!(doc["resource_name"], "Files MCP server");
    assert!(doc.get("dpop_bound_access_tokens_required").is_none());

    // 3. The authorization server's metadata (RFC 8414).
    let issuer = doc["authorization_servers"][0].as_str().unwrap().to_owned();
    let as_url = format!("{issuer}/.well-known/oauth-authorization-server");
    let as_meta: Value = serde_json::from_str(&http.get(&as_url).send().await.unwrap().text().await.unwrap()).unwrap();
    transcript.push(format!("GET {as_url} -> 200 (token_endpoint {})", as_meta["token_endpoint"]));
    assert_eq!(as_meta["issuer"], issuer.as_str());

    // 4. A token for this resource (RFC 8707 `resource`), with the scope the challenge named.
    let token_endpoint = as_meta["token_endpoint"].as_str().unwrap().to_owned();
    let form = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("grant_type", "client_credentials"), ("resource", RESOURCE), ("scope", "files:read")])
        .finish();
    let resp = http
        .post(&token_endpoint)
        .basic_auth("agent", Some("agent-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let answer: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    let token = answer["access_token"].as_str().expect("a token").to_owned();
    let claims = tokex::exchange::unverified::claims_json(&token).unwrap();
    transcript
        .push(format!("POST {token_endpoint} (client_credentials, resource={RESOURCE}) -> 200, aud {}", claims["aud"]));
    assert_eq!(claims["aud"], RESOURCE);

    // 5. The same call with the token: through to the MCP server.
    let resp = http
        .post(RESOURCE)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(initialize.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(answer["result"]["serverInfo"]["name"], "files");
    let resp = http
        .post(RESOURCE)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    transcript.push(
        "POST {RESOURCE} (Bearer <client token>) -> 200 initialize; -> 200 tools/list".replace("{RESOURCE}", RESOURCE),
    );

    // What the MCP server received: an exchanged token for itself, twice
    // (the second from tokex's cache), never the client's.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for auth in &seen {
        let forwarded = auth.strip_prefix("Bearer ").expect("a bearer token");
        assert_ne!(forwarded, token, "the client's token never reaches the MCP server");
        let c = tokex::exchange::unverified::claims_json(forwarded).unwrap();
        assert_eq!(c["aud"], "files-api");
        assert_eq!(c["sub"], "agent");
        assert_eq!(c["scope"], "files:read");
        assert_eq!(c["iss"], sts.issuer());
    }
    assert_eq!(sts.exchange_count(), 1, "one exchange, then the cache");
    transcript.push("MCP server saw: Bearer <exchanged token> (aud files-api, sub agent), twice; 1 exchange".into());

    // A token for another resource is refused, and still says where to look.
    let other = sts.mint("alice", &["files:read"], &["other-api"], Duration::from_secs(60));
    let resp = http
        .post(RESOURCE)
        .bearer_auth(&other)
        .header("content-type", "application/json")
        .body(initialize.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let c = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(c.contains("error=\"invalid_token\""), "{c}");
    assert_eq!(param(&c, "resource_metadata"), Some(metadata_url.as_str()));
    // A token without the scope: 403 insufficient_scope, with the metadata too.
    let narrow = sts.mint("alice", &["files:list"], &[RESOURCE], Duration::from_secs(60));
    let resp = http
        .post(RESOURCE)
        .bearer_auth(&narrow)
        .header("content-type", "application/json")
        .body(initialize.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let c = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(c.contains("error=\"insufficient_scope\"") && c.contains("scope=\"files:read\""), "{c}");
    assert_eq!(param(&c, "resource_metadata"), Some(metadata_url.as_str()));
    eprintln!("MCP walk-through:\n{}", transcript.join("\n"));
}
