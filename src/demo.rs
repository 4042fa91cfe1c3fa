//! `tokex demo`: the whole product in one process on 127.0.0.1 — the
//! development authorization server, an echo backend that shows what it
//! received, a backend that takes only DPoP-bound tokens (`secure.rs`), and
//! the gateway with a built-in configuration — followed by a walkthrough
//! printed side by side, then an MCP client's discovery and a Transaction
//! Token route (`agents.rs`). `--serve` keeps it running.

mod agents;
mod secure;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::dev_sts::{self, ClientSpec, DevStsConfig, SecurityEvent, SubjectFormat};
use crate::exchange::unverified;
use crate::proxy::server::{serve, Handler, Limits, Listening, Phase};
use crate::proxy::Body;

const GATEWAY_CLIENT: &str = "tokex-demo";
const GATEWAY_SECRET: &str = "tokex-demo-secret";
const CLI_CLIENT: &str = "demo-cli";
const CLI_SECRET: &str = "demo-cli-secret";
const BROAD_SCOPES: [&str; 4] = ["orders:read", "orders:write", "billing:read", "profile"];
/// The `aud` the dev-sts puts in the Security Event Tokens it pushes to tokex.
const SSF_AUDIENCE: &str = "tokex-demo";
const SSF_PATH: &str = "/.well-known/ssf/push";
/// The authorization server entry whose tokens are DPoP-bound (`dpop: {}`).
const DPOP_SERVER: &str = "dev-dpop";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo set-up failed: {0}")]
    Setup(String),
    #[error("demo step failed: {0}")]
    Step(String),
}

/// Checks tokens of the dev authorization server against its JWKS.
#[derive(Clone)]
struct Verifier {
    jwks: jsonwebtoken::jwk::JwkSet,
    issuer: String,
}

impl Verifier {
    /// The claims of a valid (signature, issuer, unexpired) token.
    fn claims(&self, token: &str) -> Option<Value> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let jwk = self.jwks.find(header.kid.as_deref()?)?;
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).ok()?;
        let mut v = jsonwebtoken::Validation::new(header.alg);
        v.set_issuer(&[&self.issuer]);
        v.validate_aud = false;
        jsonwebtoken::decode::<Value>(token, &key, &v).ok().map(|t| t.claims)
    }
}

/// The echo backend: answers with the headers it received and the claims of
/// the bearer token, verified against the dev authorization server's JWKS.
struct Echo {
    verifier: Verifier,
}

impl Echo {
    fn describe(&self, req: &Request<Incoming>) -> Value {
        let token = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let headers: serde_json::Map<String, Value> = req
            .headers()
            .iter()
            .filter(|(k, _)| *k != AUTHORIZATION)
            .map(|(k, v)| (k.to_string(), Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned())))
            .collect();
        let (claims, verified) = match &token {
            Some(t) => (unverified::claims_json(t), self.verifier.claims(t).is_some()),
            None => (None, false),
        };
        // A Transaction Token (`auth: transaction_token` routes).
        let txn = req.headers().get("txn-token").and_then(|v| v.to_str().ok()).map(|t| {
            json!({
                "typ": jsonwebtoken::decode_header(t).ok().and_then(|h| h.typ),
                "claims": unverified::claims_json(t),
                "verified": self.verifier.claims(t).is_some(),
            })
        });
        json!({
            "path": req.uri().path(),
            "received_token": token.is_some(),
            "signature_verified": verified,
            "claims": claims,
            "headers": headers,
            "txn": txn,
        })
    }
}

impl Handler for Echo {
    type Body = crate::proxy::Body;

    fn handle(
        &self,
        req: Request<Incoming>,
        _peer: SocketAddr,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        let body = self.describe(&req).to_string();
        async move {
            let mut resp = Response::new(Body::Right(http_body_util::Full::new(Bytes::from(body))));
            resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
    }
}

/// Everything the demo started.
pub struct Demo {
    pub sts: dev_sts::DevSts,
    pub backend: SocketAddr,
    /// The backend that takes only DPoP-bound tokens (route `/secure`).
    pub secure_backend: SocketAddr,
    pub gateway: crate::app::Running,
    secure: Arc<secure::Secure>,
    backend_stop: watch::Sender<Phase>,
    backend_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// tokex's private_key_jwt key for the Txn-Token service (removed at stop).
    key_dir: std::path::PathBuf,
}

async fn bind() -> Result<TcpListener, DemoError> {
    TcpListener::bind("127.0.0.1:0").await.map_err(|e| DemoError::Setup(format!("cannot bind 127.0.0.1: {e}")))
}

/// Starts the dev authorization server, the echo backend and the gateway.
pub async fn start() -> Result<Demo, DemoError> {
    let txn_key = agents::TxnKey::new()?;
    let clients = vec![
        ClientSpec {
            id: GATEWAY_CLIENT.into(),
            secret: Some(GATEWAY_SECRET.into()),
            public_key_pem: None,
            audiences: vec!["orders-api".into(), "billing-api".into(), "secure-api".into(), "files-api".into()],
            scopes: vec!["orders:read".into(), "orders:write".into(), "billing:read".into(), "files:read".into()],
        },
        ClientSpec {
            id: CLI_CLIENT.into(),
            secret: Some(CLI_SECRET.into()),
            public_key_pem: None,
            audiences: vec!["tokex".into()],
            scopes: BROAD_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        },
        // An AI agent with a token of its own for the MCP server (step 8).
        ClientSpec {
            id: agents::AGENT_CLIENT.into(),
            secret: Some(agents::AGENT_SECRET.into()),
            public_key_pem: None,
            audiences: vec![agents::MCP_RESOURCE.into()],
            scopes: vec!["files:read".into()],
        },
        // tokex at the Txn-Token service: private_key_jwt (mutual authentication).
        ClientSpec {
            id: agents::TXN_CLIENT.into(),
            secret: None,
            public_key_pem: Some(txn_key.public_pem.clone()),
            audiences: vec![agents::TRUST_DOMAIN.into()],
            scopes: vec!["orders:read".into()],
        },
    ];
    let sts_cfg = DevStsConfig { issuer: None, clients, expires_in: Duration::from_secs(60), ..Default::default() };
    let sts = dev_sts::start(sts_cfg, bind().await?).await.map_err(|e| DemoError::Setup(e.to_string()))?;
    // DPoP nonces too (RFC 9449 §8): tokex retries its first proof with the nonce.
    sts.set_dpop_nonce(true);

    let jwks = serde_json::from_str(&sts.jwks_json()).map_err(|e| DemoError::Setup(format!("dev-sts JWKS: {e}")))?;
    let verifier = Verifier { jwks, issuer: sts.issuer().to_owned() };
    let echo = Arc::new(Echo { verifier: verifier.clone() });
    let listener = bind().await?;
    let backend = listener.local_addr().map_err(|e| DemoError::Setup(e.to_string()))?;
    let secure_listener = bind().await?;
    let secure_backend = secure_listener.local_addr().map_err(|e| DemoError::Setup(e.to_string()))?;
    let secure = Arc::new(secure::Secure::new(verifier, secure_backend));
    let (backend_stop, rx) = watch::channel(Phase::Serving);
    let limits = Limits::internal(64 * 1024);
    let backend_tasks = vec![
        tokio::spawn(serve(listener, Listening::plain(), limits, echo, rx.clone(), Duration::from_secs(1))),
        tokio::spawn(serve(secure_listener, Listening::plain(), limits, secure.clone(), rx, Duration::from_secs(1))),
    ];

    // The agent that acts for alice on /billing (delegation).
    let actor = sts.mint("agent-7", &["agent"], &["tokex"], Duration::from_secs(3600));
    let yaml = format!(
        r#"
listen: {{ address: "127.0.0.1:0" }}
admin: {{ address: "127.0.0.1:0" }}
authorization_servers:
  dev:
    token_endpoint: {token_endpoint}
    client_auth: {{ method: client_secret_basic, client_id: {GATEWAY_CLIENT}, client_secret: {GATEWAY_SECRET} }}
    timeout: 2s
  {DPOP_SERVER}:
    token_endpoint: {token_endpoint}
    client_auth: {{ method: client_secret_basic, client_id: {GATEWAY_CLIENT}, client_secret: {GATEWAY_SECRET} }}
    timeout: 2s
    dpop: {{}}
  txn:
    token_endpoint: {token_endpoint}
    client_auth: {{ method: private_key_jwt, client_id: {txn_client}, private_key_file: "{txn_key_file}" }}
    timeout: 2s
routes:
  - name: orders
    match: {{ path_prefix: /orders }}
    upstream: http://{backend}
    exchange: {{ authorization_server: dev, audience: [orders-api], scope: [orders:read] }}
  - name: billing
    match: {{ path_prefix: /billing }}
    upstream: http://{backend}
    exchange:
      authorization_server: dev
      audience: [billing-api]
      scope: [billing:read]
      actor: {{ token: "{actor}", token_type: "urn:ietf:params:oauth:token-type:access_token" }}
  - name: secure
    match: {{ path_prefix: /secure }}
    upstream: http://{secure_backend}
    exchange: {{ authorization_server: {DPOP_SERVER}, audience: [secure-api], scope: [orders:read] }}
{agent_routes}  - name: health
    match: {{ path: /health }}
    upstream: http://{backend}
    auth: none
revocation:
  ssf:
    path: {SSF_PATH}
    issuer: {issuer}
    jwks_uri: {jwks_uri}
    audience: {SSF_AUDIENCE}
"#,
        token_endpoint = sts.token_endpoint(),
        issuer = sts.issuer(),
        jwks_uri = sts.jwks_uri(),
        txn_client = agents::TXN_CLIENT,
        txn_key_file = txn_key.file.display(),
        agent_routes = agents::routes(&backend.to_string(), sts.issuer()),
    );
    let config = crate::config::parse(&yaml).map_err(|e| DemoError::Setup(format!("built-in config: {e}")))?;
    let gateway = crate::app::start(config).await.map_err(|e| DemoError::Setup(e.to_string()))?;
    Ok(Demo { sts, backend, secure_backend, gateway, secure, backend_stop, backend_tasks, key_dir: txn_key.dir })
}

impl Demo {
    pub async fn stop(self) {
        self.gateway.shutdown().await;
        let _ = self.backend_stop.send(Phase::Stopping);
        for task in self.backend_tasks {
            let _ = task.await;
        }
        self.sts.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.key_dir);
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// Claim values as one readable line each.
fn show(claims: &Value, key: &str) -> String {
    match claims.get(key) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if key == "exp" => {
            format!("in {} s", n.as_i64().map_or(0, |e| e - now()))
        }
        Some(v) => v.to_string(),
    }
}

async fn call(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> Result<(u16, Option<String>, Value), DemoError> {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| DemoError::Step(format!("GET {url}: {e}")))?;
    let status = resp.status().as_u16();
    let challenge = resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let text = resp.text().await.map_err(|e| DemoError::Step(format!("GET {url}: {e}")))?;
    Ok((status, challenge, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

fn side_by_side(out: &mut String, broad: &Value, received: &Value) {
    out.push_str(&format!(
        "     {:<10} {:<46} {}\n",
        "claim", "caller sent (broad token)", "backend received (exchanged)"
    ));
    for key in ["sub", "aud", "scope", "exp", "act", "client_id", "iss"] {
        out.push_str(&format!("     {:<10} {:<46} {}\n", key, show(broad, key), show(received, key)));
    }
}

/// What the later steps share: the demo, the HTTP client, the gateway's
/// URL and alice's broad token.
#[derive(Clone, Copy)]
struct Walk<'a> {
    demo: &'a Demo,
    client: &'a reqwest::Client,
    gw: &'a str,
    broad: &'a str,
}

/// Runs the walkthrough and returns what it printed.
pub async fn walkthrough(demo: &Demo) -> Result<String, DemoError> {
    let tls = crate::exchange::client::tls_config(None).map_err(DemoError::Setup)?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let gw = format!("http://{}", demo.gateway.addr);
    let broad = demo.sts.mint("alice", &BROAD_SCOPES, &["tokex"], Duration::from_secs(3600));
    let broad_claims = unverified::claims_json(&broad).unwrap_or(Value::Null);
    let mut out = String::new();
    out.push_str("tokex demo: token exchange (RFC 8693), everything on 127.0.0.1\n\n");
    out.push_str(&format!("  dev authorization server  {}   (development only)\n", demo.sts.issuer()));
    out.push_str(&format!("  echo backend              http://{}   (shows what it receives)\n", demo.backend));
    out.push_str(&format!(
        "  DPoP backend              http://{}   (takes only DPoP-bound tokens with a proof, RFC 9449)\n",
        demo.secure_backend
    ));
    out.push_str(&format!("  tokex gateway             {gw}\n"));
    out.push_str("     /orders  -> audience orders-api,  scope orders:read\n");
    out.push_str("     /billing -> audience billing-api, scope billing:read, actor agent-7 (delegation)\n");
    out.push_str(
        "     /secure  -> audience secure-api,  scope orders:read, DPoP-bound to tokex's key (DPoP backend)\n",
    );
    out.push_str(
        "     /mcp     -> audience files-api,   scope files:read, described by RFC 9728 metadata (an MCP server)\n",
    );
    out.push_str("     /internal -> a Transaction Token per request for the trust domain demo.internal\n\n");
    out.push_str(&format!(
        "1. alice holds a broad token: sub alice, aud tokex, scope \"{}\", expires in 3600 s\n\n",
        BROAD_SCOPES.join(" ")
    ));

    let mut step = 2;
    for (path, what) in [("/orders/42", "impersonation"), ("/billing/7", "delegation: agent-7 acts for alice")] {
        let (status, _, body) = call(&client, &format!("{gw}{path}"), Some(&broad)).await?;
        if status != 200 {
            return Err(DemoError::Step(format!("GET {path} answered {status}: {body}")));
        }
        let received = body.get("claims").cloned().unwrap_or(Value::Null);
        out.push_str(&format!("{step}. GET {path} with alice's broad token ({what}) -> {status}\n"));
        side_by_side(&mut out, &broad_claims, &received);
        out.push_str(&format!(
            "     backend verified the signature against dev-sts JWKS: {}; broad token reached the backend: {}\n\n",
            if body["signature_verified"] == true { "yes" } else { "NO" },
            if received.get("scope") == broad_claims.get("scope") { "YES (bad)" } else { "no" },
        ));
        step += 1;
    }

    let before = demo.sts.exchange_count();
    let (status, _, _) = call(&client, &format!("{gw}/orders/42"), Some(&broad)).await?;
    let after = demo.sts.exchange_count();
    out.push_str(&format!("{step}. GET /orders/42 again -> {status}\n"));
    out.push_str(&format!(
        "     exchanges at the authorization server: {before} before this call, {after} after -> {}\n\n",
        if before == after { "served from the cache (two calls, one exchange)" } else { "exchanged again" }
    ));
    step += 1;

    let (status, challenge, _) = call(&client, &format!("{gw}/orders/42"), None).await?;
    out.push_str(&format!("{step}. GET /orders/42 without a token -> {status}\n"));
    out.push_str(&format!("     WWW-Authenticate: {}\n\n", challenge.as_deref().unwrap_or("-")));
    step += 1;

    let forged = forge(&broad);
    let (status, challenge, _) = call(&client, &format!("{gw}/orders/42"), Some(&forged)).await?;
    out.push_str(&format!("{step}. GET /orders/42 with a forged token (payload edited, signature kept) -> {status}\n"));
    out.push_str(&format!("     WWW-Authenticate: {}\n\n", challenge.as_deref().unwrap_or("-")));
    step += 1;
    let walk = Walk { demo, client: &client, gw: &gw, broad: &broad };
    secure::walkthrough_step(&walk, step, &mut out).await?;
    step += 1;
    agents::mcp_step(demo, step, &mut out).await?;
    step += 1;
    agents::txn_step(&walk, step, &mut out).await?;
    step += 1;
    revoke(&walk, step, &mut out).await?;
    Ok(out)
}

/// alice's session is revoked at the authorization server, which pushes a
/// CAEP session-revoked Security Event Token to tokex: her cached tokens
/// go at once, and the next call re-exchanges — and is refused.
async fn revoke(w: &Walk<'_>, step: usize, out: &mut String) -> Result<(), DemoError> {
    let Walk { demo, client, gw, broad } = *w;
    demo.sts.revoke_subject("alice");
    let set = demo.sts.security_event("alice", SecurityEvent::SessionRevoked, SSF_AUDIENCE, SubjectFormat::IssSub);
    let started = std::time::Instant::now();
    let resp = client
        .post(format!("{gw}{SSF_PATH}"))
        .header(CONTENT_TYPE, "application/secevent+jwt")
        .body(set)
        .send()
        .await
        .map_err(|e| DemoError::Step(format!("POST {SSF_PATH}: {e}")))?;
    let took = started.elapsed();
    if resp.status() != http::StatusCode::ACCEPTED {
        return Err(DemoError::Step(format!("POST {SSF_PATH} answered {}", resp.status())));
    }
    out.push_str(&format!(
        "{step}. alice's session is revoked: the authorization server pushes a signed CAEP session-revoked event\n"
    ));
    out.push_str(&format!(
        "     POST {SSF_PATH} -> 202 in {:.1} ms: alice's cached tokens are purged\n",
        took.as_secs_f64() * 1000.0
    ));
    // Her cached token would have answered 200: a refusal means tokex asked again.
    let (status, challenge, _) = call(client, &format!("{gw}/orders/42"), Some(broad)).await?;
    out.push_str(&format!(
        "     GET /orders/42 with the same broad token -> {status} ({})\n     WWW-Authenticate: {}\n",
        if status == 401 {
            "not cached any more: tokex exchanged again, and the authorization server refused"
        } else {
            "still served: NOT purged"
        },
        challenge.as_deref().unwrap_or("-")
    ));
    Ok(())
}

/// alice's token with its payload rewritten to claim `sub: admin`.
fn forge(token: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let mut parts = token.splitn(3, '.');
    let (h, _, s) = (parts.next().unwrap_or(""), parts.next(), parts.next().unwrap_or(""));
    let mut claims = unverified::claims_json(token).unwrap_or(json!({}));
    claims["sub"] = json!("admin");
    format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode(claims.to_string()))
}

/// How to poke the running demo by hand.
pub fn curl_help(demo: &Demo) -> String {
    let gw = format!("http://{}", demo.gateway.addr);
    format!(
        "tokex demo is running (Ctrl-C to stop). Try:\n\n\
         # 1. get a broad token from the dev authorization server\n\
         TOKEN=$(curl -s -u {CLI_CLIENT}:{CLI_SECRET} -d grant_type=client_credentials \\\n    \
         -d 'scope={scopes}' {token} | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')\n\n\
         # 2. call the backend through tokex: it receives a narrowed token\n\
         curl -s -H \"Authorization: Bearer $TOKEN\" {gw}/orders/1\n\
         curl -s -H \"Authorization: Bearer $TOKEN\" {gw}/billing/1\n\
         curl -s -H \"Authorization: Bearer $TOKEN\" {gw}/secure/1   # DPoP: bound to tokex's key, with a proof\n\
         curl -s -H \"Authorization: Bearer $TOKEN\" {gw}/internal/1 # a Transaction Token per request\n\
         curl -s {gw}/.well-known/oauth-protected-resource/mcp       # the MCP route's RFC 9728 metadata\n\n\
         # 3. errors\n\
         curl -si {gw}/orders/1                       # 401, no token\n\
         curl -si -H 'Authorization: Bearer junk' {gw}/orders/1   # 401 invalid_token\n\
         curl -si -H \"Authorization: Bearer $TOKEN\" {secure}/secure/1   # 401: the DPoP backend takes no bearer token\n\n\
         # 4. revoke the session of that token's subject (demo-cli): the dev-sts pushes a\n\
         #    signed CAEP event to tokex, which purges its cached tokens (the next call is refused)\n\
         tokex dev-sts revoke --sts {issuer} --client-id {CLI_CLIENT} --client-secret {CLI_SECRET} \\\n    \
         --sub {CLI_CLIENT} --audience {SSF_AUDIENCE} --push {gw}{SSF_PATH}\n\
         curl -si -H \"Authorization: Bearer $TOKEN\" {gw}/orders/1   # 401 invalid_token\n\n\
         # admin: {admin}/metrics   dev-sts discovery: {issuer}/.well-known/oauth-authorization-server\n",
        scopes = BROAD_SCOPES.join(" "),
        token = demo.sts.token_endpoint(),
        admin = demo.gateway.admin_addr.map(|a| format!("http://{a}")).unwrap_or_default(),
        issuer = demo.sts.issuer(),
        secure = format_args!("http://{}", demo.secure_backend),
    )
}
