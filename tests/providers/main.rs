//! Provider profiles end to end (issue 14): for each authorization server
//! product, a recording token endpoint that enforces the request shape the
//! provider documents (each module cites its documentation) and answers
//! with the provider's documented success and error bodies, with tokex
//! between a caller and an echo backend. A request that breaks the
//! documented shape is recorded as a violation and refused, so a test
//! fails on the shape, not only on the status.

#[path = "../common/mod.rs"]
mod common;

mod auth0;
mod entra;
mod generic;
mod google_sts;
mod keycloak;
mod okta;
mod pingone;
mod zitadel;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::jwt::*;
use common::*;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

/// Checks a request against the provider's documented shape.
pub type Shape = Arc<dyn Fn(&Recorded) -> Result<(), String> + Send + Sync>;
/// The provider's documented success body for request number `n`.
pub type Success = Arc<dyn Fn(&Recorded, usize) -> Value + Send + Sync>;

pub struct Fixture {
    pub auth_server: RecordingAs,
    pub gw: TestGateway,
    signer: EcSigner,
    shape: Shape,
    success: Success,
    violations: Arc<Mutex<Vec<String>>>,
}

/// The caller's token is an ES256 JWT verified by `inbound.jwt` (issuer
/// `https://issuer.test`, audience `edge`).
pub async fn start(server: &str, routes: &str, shape: Shape, success: Success) -> Fixture {
    let auth_server = RecordingAs::start().await;
    let signer = EcSigner::new("k1");
    let jwks = JwksServer::start(vec![signer.jwk.clone()]).await;
    let backend = echo_backend().await;
    let yaml = format!(
        "{}authorization_servers:\n  idp:\n    token_endpoint: http://{}{}\n    timeout: 2s\n    retries: 0\ncache: {{ expiry_skew: 0s, negative_ttl: 0s }}\nroutes:\n{}",
        jwt_inbound(&jwks.uri(), "[ES256]", ""),
        auth_server.addr,
        server,
        routes.replace("BACKEND", &backend.to_string()),
    );
    let gw = TestGateway::start(&yaml).await;
    assert!(ready(&gw, Duration::from_secs(5)).await, "gateway not ready");
    let fx = Fixture { auth_server, gw, signer, shape, success, violations: Arc::default() };
    fx.answer_with(None);
    // Every JWKS fetch in the test is by this server; keep it alive.
    std::mem::forget(jwks);
    fx
}

impl Fixture {
    /// From now on the token endpoint answers `status` with `body` to a
    /// well-shaped request (`None`: the documented success).
    pub fn refuse(&self, status: u16, body: Value) {
        self.answer_with(Some((status, body)));
    }

    fn answer_with(&self, refusal: Option<(u16, Value)>) {
        let (shape, success, violations) = (self.shape.clone(), self.success.clone(), self.violations.clone());
        self.auth_server.set(move |rec, n| {
            if let Err(why) = shape(rec) {
                violations.lock().unwrap().push(why.clone());
                return Reply::Json(400, json!({"error": "invalid_request", "error_description": why}));
            }
            match &refusal {
                Some((status, body)) => Reply::Json(*status, body.clone()),
                None => Reply::Json(200, success(rec, n)),
            }
        });
    }

    /// Shape violations seen so far.
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    /// A fresh caller token with these claims over the defaults.
    pub fn token(&self, extra: Value) -> String {
        self.signer.token(&claims(extra))
    }

    pub async fn call(&self, path: &str, token: &str) -> (StatusCode, HeaderMap, String) {
        get(&format!("{}{path}", self.gw.url), Some(token)).await
    }

    /// A caller's token exchanged and forwarded, then served from the
    /// cache: the backend gets `Authorization: Bearer <expected>` and never
    /// the caller's token. The token request made, for the module to check.
    pub async fn exchanged(&self, path: &str, token: &str, expected: &str) -> Recorded {
        let before = self.auth_server.count();
        for round in 0..2 {
            let (status, _, body) = self.call(path, token).await;
            assert_eq!(status, 200, "round {round}: {body}; violations: {:?}", self.violations());
            let echo = echoed(&body);
            assert_eq!(seen(&echo, "authorization"), [format!("Bearer {expected}")], "round {round}");
            assert!(!body.contains(token), "the caller's token reached the backend");
        }
        assert_eq!(self.auth_server.count(), before + 1, "the repeat call is a cache hit");
        assert_eq!(self.violations(), Vec::<String>::new());
        self.auth_server.last()
    }

    /// The token endpoint refuses with the provider's `body`; the caller
    /// gets `status` and a challenge containing `challenge` (`""`: none).
    pub async fn refused(&self, path: &str, body: Value, status: u16, challenge: &str) -> HeaderMap {
        self.refuse(400, body.clone());
        let (got, headers, text) = self.call(path, &self.token(json!({}))).await;
        self.answer_with(None);
        assert_eq!(got.as_u16(), status, "{body} → {text}");
        let www = headers.get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
        match www {
            Some(www) => assert!(
                !challenge.is_empty() && www.contains(challenge),
                "{body}: challenge {www:?}, want {challenge:?}"
            ),
            None => assert!(challenge.is_empty(), "{body}: no challenge, want {challenge:?}"),
        }
        assert_eq!(self.violations(), Vec::<String>::new());
        headers
    }
}

/// A parameter that must be absent.
pub fn absent(rec: &Recorded, names: &[&str]) -> Result<(), String> {
    match names.iter().find(|n| rec.param(n).is_some()) {
        Some(n) => Err(format!("parameter {n} must not be sent")),
        None => Ok(()),
    }
}

/// A parameter that must be sent once with this value.
pub fn exactly(rec: &Recorded, name: &str, value: &str) -> Result<(), String> {
    match rec.params(name).as_slice() {
        [v] if *v == value => Ok(()),
        other => Err(format!("{name} must be {value:?} once, got {other:?}")),
    }
}

/// A parameter that must be sent once, non-empty; its value.
pub fn one<'a>(rec: &'a Recorded, name: &str) -> Result<&'a str, String> {
    match rec.params(name).as_slice() {
        [v] if !v.is_empty() => Ok(v),
        other => Err(format!("{name} must be sent once, got {other:?}")),
    }
}

/// `client_secret_jwt` (RFC 7523 §2.2, HS256 over the secret): the
/// assertion's signature, `iss` = `sub` = `client_id`, `aud` = the token
/// endpoint the request was sent to, a `jti` and an `exp`.
pub fn secret_jwt(rec: &Recorded, client_id: &str, secret: &str) -> Result<(), String> {
    let host = rec.headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or_default();
    let endpoint = format!("http://{host}{}", rec.path);
    exactly(rec, "client_id", client_id)?;
    exactly(rec, "client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")?;
    let assertion = one(rec, "client_assertion")?;
    let parts: Vec<&str> = assertion.split('.').collect();
    let [h, p, s] = parts[..] else { return Err("client_assertion is not a compact JWS".into()) };
    let sig = b64(hmac_sha256(secret.as_bytes(), format!("{h}.{p}").as_bytes()));
    if sig != s {
        return Err("client_assertion: bad HS256 signature".into());
    }
    let dec = |x: &str| -> Value {
        let raw = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, x).unwrap_or_default();
        serde_json::from_slice(&raw).unwrap_or(Value::Null)
    };
    let (header, claims) = (dec(h), dec(p));
    let ok = header["alg"] == "HS256"
        && claims["iss"] == client_id
        && claims["sub"] == client_id
        && claims["aud"] == endpoint
        && claims["jti"].is_string()
        && claims["exp"].is_number();
    if !ok || rec.headers.contains_key("authorization") {
        return Err(format!("client_assertion claims {claims} / header {header} not as RFC 7523 §3 requires"));
    }
    Ok(())
}

/// The caller's token must be the one sent as `name`.
pub fn caller_token(rec: &Recorded, name: &str) -> Result<(), String> {
    let t = one(rec, name)?;
    if t.split('.').count() == 3 && t.starts_with("eyJ") {
        Ok(())
    } else {
        Err(format!("{name} is not the caller's JWT"))
    }
}

/// Every configuration in docs/providers/ checks (offline: its secret
/// files exist only where tokex runs) and uses its page's profile.
#[test]
fn the_provider_pages_configurations_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/providers");
    let tmp = common::process::temp_dir("provider-docs");
    let mut pages = 0;
    for profile in ["entra", "keycloak", "okta", "auth0", "pingone", "google_sts", "zitadel"] {
        let text = std::fs::read_to_string(dir.join(format!("{profile}.md"))).unwrap();
        let blocks: Vec<&str> =
            text.split("```yaml\n").skip(1).map(|b| b.split("\n```").next().unwrap_or_default()).collect();
        assert!(!blocks.is_empty(), "{profile}.md has no yaml block");
        for (i, block) in blocks.iter().enumerate() {
            let file = tmp.join(format!("{profile}-{i}.yaml"));
            std::fs::write(&file, block).unwrap();
            let out = std::process::Command::new(common::process::BIN)
                .args(["check", "--offline", "-c", file.to_str().unwrap()])
                .env_remove("TOKEX_STRICT")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "docs/providers/{profile}.md yaml block {i} does not check:\n{text}\n---\n{block}"
            );
            assert!(block.contains(&format!("profile: {profile}")), "{profile}.md block {i} does not use its profile");
        }
        pages += 1;
    }
    assert_eq!(pages, 7);
    std::fs::remove_dir_all(&tmp).unwrap();
}
