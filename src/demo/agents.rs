//! The demo's agent-era steps: an AI agent discovers its way into an MCP
//! server through tokex (RFC 9728), and a route that gets a Transaction
//! Token per request from the dev authorization server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::Value;

use super::{show, Demo, DemoError, Walk};

/// The MCP server's resource identifier: the URL agents are given
/// (`mcp.demo.test` is tokex here).
pub(super) const MCP_RESOURCE: &str = "http://mcp.demo.test/mcp";
const MCP_HOST: &str = "mcp.demo.test";
pub(super) const AGENT_CLIENT: &str = "agent-42";
pub(super) const AGENT_SECRET: &str = "agent-42-secret";
/// tokex's client at the Txn-Token service (private_key_jwt).
pub(super) const TXN_CLIENT: &str = "tokex-demo-txn";
pub(super) const TRUST_DOMAIN: &str = "demo.internal";

/// tokex's private_key_jwt key for the Txn-Token service: a fresh Ed25519
/// key in a private temporary directory (removed when the demo stops), and
/// its public key for the dev authorization server.
pub(super) struct TxnKey {
    pub dir: PathBuf,
    pub file: PathBuf,
    pub public_pem: String,
}

impl TxnKey {
    pub fn new() -> Result<Self, DemoError> {
        let setup = |e: String| DemoError::Setup(format!("demo key: {e}"));
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|e| setup(e.to_string()))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| setup(e.to_string()))?;
        // SubjectPublicKeyInfo for Ed25519 (RFC 8410 §4), then the key.
        let mut spki = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
        spki.extend_from_slice(pair.public_key().as_ref());
        let dir = std::env::temp_dir().join(format!("tokex-demo-{}-{}", std::process::id(), fastrand::u64(..)));
        let file = dir.join("txn-client.pem");
        let private = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", STANDARD.encode(pkcs8));
        write_private(&dir, &file, &private).map_err(|e| setup(format!("{}: {e}", file.display())))?;
        let public_pem = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", STANDARD.encode(&spki));
        Ok(TxnKey { dir, file, public_pem })
    }
}

/// A directory and a file only this user can read.
fn write_private(dir: &Path, file: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(file)?;
    f.write_all(text.as_bytes())
}

/// The routes of these steps, in the demo's configuration.
pub(super) fn routes(backend: &str, issuer: &str) -> String {
    format!(
        r#"  - name: mcp
    match: {{ path_prefix: /mcp }}
    upstream: http://{backend}
    resource_metadata: {{ resource: "{MCP_RESOURCE}", authorization_servers: ["{issuer}"], scopes_supported: [files:read] }}
    exchange: {{ authorization_server: dev, audience: [files-api], scope: [files:read] }}
  - name: internal
    match: {{ path_prefix: /internal }}
    upstream: http://{backend}
    auth: transaction_token
    transaction_token: {{ authorization_server: txn, audience: {TRUST_DOMAIN}, scope: [orders:read] }}
"#
    )
}

fn step_err(what: &str, e: impl std::fmt::Display) -> DemoError {
    DemoError::Step(format!("{what}: {e}"))
}

/// `name="value"` of a challenge.
fn param<'a>(challenge: &'a str, name: &str) -> Option<&'a str> {
    let at = challenge.find(&format!("{name}=\""))? + name.len() + 2;
    challenge[at..].split('"').next()
}

async fn json_of(resp: reqwest::Response, what: &str) -> Result<Value, DemoError> {
    let text = resp.text().await.map_err(|e| step_err(what, e))?;
    serde_json::from_str(&text).map_err(|e| step_err(what, e))
}

/// An agent that knows only the MCP server's URL: `401` → the RFC 9728
/// document → the authorization server's metadata → a token for the
/// resource → the call. The MCP server (the echo backend) gets a token
/// exchanged for its own audience.
pub(super) async fn mcp_step(demo: &Demo, step: usize, out: &mut String) -> Result<(), DemoError> {
    let tls = crate::exchange::client::tls_config(None).map_err(DemoError::Setup)?;
    let agent = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(5))
        .resolve(MCP_HOST, demo.gateway.addr)
        .build()
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let post = |token: Option<&str>| {
        let mut req = agent.post(MCP_RESOURCE).header("content-type", "application/json").body(call);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    out.push_str(&format!(
        "{step}. an AI agent calls an MCP server through tokex, knowing only its URL {MCP_RESOURCE} (tokex here)\n"
    ));
    let resp = post(None).await.map_err(|e| step_err("POST /mcp", e))?;
    let challenge = resp
        .headers()
        .get(http::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_default();
    out.push_str(&format!("     POST /mcp without a token -> {}\n", resp.status().as_u16()));
    out.push_str(&format!("     WWW-Authenticate: {challenge}\n"));
    let metadata_url =
        param(&challenge, "resource_metadata").ok_or_else(|| step_err("401", "no resource_metadata"))?.to_owned();
    let resp = agent.get(&metadata_url).send().await.map_err(|e| step_err(&metadata_url, e))?;
    let status = resp.status().as_u16();
    let doc = json_of(resp, &metadata_url).await?;
    let issuer = doc["authorization_servers"][0].as_str().unwrap_or_default().to_owned();
    out.push_str(&format!(
        "     GET {} -> {status} (RFC 9728): resource {}, authorization server {issuer}\n",
        metadata_url.trim_start_matches("http://mcp.demo.test"),
        show(&doc, "resource"),
    ));
    let as_url = format!("{issuer}/.well-known/oauth-authorization-server");
    let as_meta = json_of(agent.get(&as_url).send().await.map_err(|e| step_err(&as_url, e))?, &as_url).await?;
    let token_endpoint = as_meta["token_endpoint"].as_str().unwrap_or_default().to_owned();
    let form = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("grant_type", "client_credentials"), ("resource", MCP_RESOURCE), ("scope", "files:read")])
        .finish();
    let resp = agent
        .post(&token_endpoint)
        .basic_auth(AGENT_CLIENT, Some(AGENT_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .map_err(|e| step_err(&token_endpoint, e))?;
    let answer = json_of(resp, &token_endpoint).await?;
    let token = answer["access_token"].as_str().ok_or_else(|| step_err(&token_endpoint, "no token"))?.to_owned();
    let own = crate::exchange::unverified::claims_json(&token).unwrap_or(Value::Null);
    out.push_str(&format!(
        "     its token endpoint (RFC 8414) gives {AGENT_CLIENT} a token for the resource (RFC 8707): aud {}, scope {}\n",
        show(&own, "aud"),
        show(&own, "scope"),
    ));
    let resp = post(Some(&token)).await.map_err(|e| step_err("POST /mcp", e))?;
    let status = resp.status().as_u16();
    let body = json_of(resp, "POST /mcp").await?;
    let received = &body["claims"];
    let passed = body["headers"].to_string().contains(&token);
    out.push_str(&format!(
        "     POST /mcp with it -> {status}; the MCP server received sub {}, aud {}, scope {} (verified: {}); the agent's own token: {}\n\n",
        show(received, "sub"),
        show(received, "aud"),
        show(received, "scope"),
        if body["signature_verified"] == true { "yes" } else { "NO" },
        if passed { "YES (bad)" } else { "never" },
    ));
    Ok(())
}

/// A Transaction Token per request: the backend gets a Txn-Token for this
/// transaction in `txn-token`, and no `Authorization`.
pub(super) async fn txn_step(w: &Walk<'_>, step: usize, out: &mut String) -> Result<(), DemoError> {
    let Walk { demo, client, gw, broad } = *w;
    let path = "/internal/orders/42";
    let before = demo.sts.txn_token_count();
    let mut txns = Vec::new();
    for i in 0..2 {
        let (status, _, body) = super::call(client, &format!("{gw}{path}"), Some(broad)).await?;
        if status != 200 {
            return Err(DemoError::Step(format!("GET {path} answered {status}: {body}")));
        }
        let txn = &body["txn"];
        let claims = &txn["claims"];
        if i == 0 {
            out.push_str(&format!(
                "{step}. GET {path} with alice's broad token (a Transaction Token per request) -> {status}\n"
            ));
            out.push_str(&format!(
                "     backend received   txn-token: typ {}, sub {}, aud {}, scope {}; signature verified: {}; Authorization: {}\n",
                txn["typ"].as_str().unwrap_or("-"),
                show(claims, "sub"),
                show(claims, "aud"),
                show(claims, "scope"),
                if txn["verified"] == true { "yes" } else { "NO" },
                if body["received_token"] == true { "YES (bad)" } else { "none" },
            ));
            out.push_str(&format!("                        rctx {}\n", show(claims, "rctx")));
            out.push_str(&format!("                        tctx {}\n", show(claims, "tctx")));
        }
        txns.push(show(claims, "txn"));
    }
    let asked = demo.sts.txn_token_count().saturating_sub(before);
    out.push_str(&format!(
        "     txn {} then {} ({}; never cached: {asked} requests to the token service for 2 calls)\n\n",
        txns[0],
        txns[1],
        if txns[0] != txns[1] { "one transaction each" } else { "THE SAME" },
    ));
    Ok(())
}
