//! End to end against a real, independent authorization server:
//! authgent-server 0.3.4 (PyPI), started as a child process. tokex trades a
//! broad client_credentials token of client A for a narrowed token, as
//! client B, and the backend gets a JWT that verifies against authgent's JWKS.
//!
//! The server is required: a missing binary fails the test (see `binary()`).

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::{json, Value};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const BROAD_SCOPE: &str = "orders:read orders:write profile";
const EDGE: &str = "https://edge.example.com";

/// `$AUTHGENT_BIN`, else the project venv that `scripts/test.sh` creates.
fn binary() -> PathBuf {
    let path = std::env::var_os("AUTHGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/authgent-server"));
    assert!(
        path.is_file(),
        "authgent-server not found at {}.\nThis end-to-end test needs it; run the test command from the README \
         (`scripts/test.sh`, which installs it), or install it by hand:\n  python3 -m venv .venv && \
         .venv/bin/pip install authgent-server==0.3.4\nor point AUTHGENT_BIN at an existing authgent-server.",
        path.display()
    );
    path
}

/// A running authgent-server in its own temp dir (it writes `authgent.db`
/// into its working directory). Killed and cleaned up on drop.
struct Authgent {
    /// `http://127.0.0.1:PORT`, also the issuer.
    base: String,
    dir: PathBuf,
    child: tokio::process::Child,
}

impl Authgent {
    async fn start() -> Self {
        let bin = binary();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let base = format!("http://127.0.0.1:{port}");
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("tokex-authgent-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let child = tokio::process::Command::new(&bin)
            .args(["run", "--host", "127.0.0.1", "--port", &port.to_string()])
            .current_dir(&dir)
            .env("AUTHGENT_SERVER_URL", &base)
            .env("AUTHGENT_SECRET_KEY", "tokex-e2e-secret-key-0123456789abcdef")
            .env("AUTHGENT_TOKEN_RATE_LIMIT", "10000")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut server = Authgent { base, dir, child };

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("authgent-server exited early ({status}); log:\n{}", server.log());
            }
            if let Ok(r) = client().get(format!("{}/ready", server.base)).timeout(Duration::from_secs(2)).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            if Instant::now() > deadline {
                panic!("authgent-server not ready after 30 s; log:\n{}", server.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Dynamic client registration (RFC 7591); returns `(client_id, client_secret)`.
    async fn register(&self, name: &str, grant_types: &[&str]) -> (String, String) {
        let body = json!({ "client_name": name, "grant_types": grant_types, "scope": BROAD_SCOPE });
        let resp = client()
            .post(format!("{}/register", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 201, "register {name}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        (v["client_id"].as_str().unwrap().to_owned(), v["client_secret"].as_str().unwrap().to_owned())
    }

    /// `POST /token` with a form; returns the `access_token`.
    async fn token(&self, form: &[(&str, &str)]) -> String {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let resp = client()
            .post(format!("{}/token", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        let status = resp.status();

        let text = resp.text().await.unwrap();

        assert_eq!(status, 200, "token request failed: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        v["access_token"].as_str().expect("access_token").to_owned()
    }

    /// Verifies `token` (ES256) against the server's JWKS, with `aud` and `iss`.
    async fn verify(&self, token: &str, audience: &str) -> (Header, Value) {
        let jwks = client()
            .get(format!("{}/.well-known/jwks.json", self.base))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        let jwks: JwkSet = serde_json::from_str(&jwks.text().await.unwrap()).expect("JWKS parses");
        let header = jsonwebtoken::decode_header(token).expect("a JWT header");
        let kid = header.kid.as_deref().expect("a kid");
        let jwk = jwks.find(kid).unwrap_or_else(|| panic!("kid {kid} not in the JWKS"));
        let key = DecodingKey::from_jwk(jwk).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[&self.base]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<Value>(token, &key, &validation).expect("the token verifies against the JWKS");
        (data.header, data.claims)
    }
}

impl Drop for Authgent {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `fut`, or a panic naming `what` after 20 s (a hang must fail, not stall the suite).
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut).await.unwrap_or_else(|_| panic!("{what}: no answer within 20 s"))
}

/// The same JWT with one character in the middle of its signature changed.
fn tamper(jwt: &str) -> String {
    let mut bytes = jwt.as_bytes().to_vec();
    let i = jwt.rfind('.').unwrap() + (jwt.len() - jwt.rfind('.').unwrap()) / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn exchanges_at_authgent_and_the_backend_gets_a_verifiable_narrowed_token() {
    let started = Instant::now();
    let mut authgent = Authgent::start().await;
    let token_url = format!("{}/token", authgent.base);

    // A: the caller's broad token. B: tokex's identity at the AS.
    let (a_id, a_secret) = authgent.register("tokex-e2e-caller", &["client_credentials"]).await;
    let (b_id, b_secret) = authgent.register("tokex-e2e-gateway", &[TOKEN_EXCHANGE, "client_credentials"]).await;
    let subject = authgent
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", &a_id),
            ("client_secret", &a_secret),
            ("scope", BROAD_SCOPE),
            ("resource", EDGE),
        ])
        .await;
    let (_, subject_claims) = authgent.verify(&subject, EDGE).await;
    assert_eq!(subject_claims["sub"], format!("client:{a_id}"));
    assert_eq!(subject_claims["scope"], BROAD_SCOPE);
    // authgent ignores actor_token, but tokex must still send it (RFC 8693 delegation).
    let actor = authgent
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", &b_id),
            ("client_secret", &b_secret),
            ("scope", "profile"),
        ])
        .await;

    let backend = echo_backend().await;
    let auth = format!("{{ method: client_secret_basic, client_id: \"{b_id}\", client_secret: \"{b_secret}\" }}");
    let routes = format!(
        "  - name: orders\n    match: {{ path_prefix: /orders }}\n    upstream: http://{backend}\n    exchange:\n      authorization_server: corp\n      audience: [orders-api]\n      scope: [\"orders:read\"]\n      actor:\n        token: \"{actor}\"\n        token_type: {ACCESS_TOKEN_TYPE}\n"
    );
    let gw = TestGateway::start(&config_with(&token_url, &auth, &routes)).await;

    // 1. The exchange.
    let (status, _, body) =
        within("the first gateway call", get(&format!("{}/orders/1", gw.url), Some(&subject))).await;
    assert_eq!(status, 200, "{body}\n--- authgent log:\n{}", authgent.log());
    let forwarded = seen(&echoed(&body), "authorization");
    assert_eq!(forwarded.len(), 1, "exactly one Authorization header reaches the backend");
    let exchanged = forwarded[0].strip_prefix("Bearer ").expect("Bearer scheme").to_owned();
    assert_ne!(exchanged, subject, "the broad token reached the backend");
    assert!(!body.contains(&subject), "the broad token reached the backend");

    let (header, claims) = authgent.verify(&exchanged, "orders-api").await;
    println!("exchanged token header: {}", serde_json::to_string_pretty(&header).unwrap());
    println!("exchanged token claims: {}", serde_json::to_string_pretty(&claims).unwrap());
    let aud_ok = match &claims["aud"] {
        Value::String(s) => s == "orders-api",
        Value::Array(a) => a.iter().any(|v| v == "orders-api"),
        _ => false,
    };
    assert!(aud_ok, "aud: {}", claims["aud"]);
    assert_eq!(claims["iss"], authgent.base);
    assert_eq!(claims["scope"], "orders:read", "narrowed from {BROAD_SCOPE:?}");
    assert_eq!(claims["act"]["sub"], format!("client:{b_id}"));
    assert_eq!(claims["sub"], subject_claims["sub"]);
    let exp = claims["exp"].as_u64().expect("numeric exp");
    let now = now();
    assert!(exp > now && exp <= now + 300 + 60, "exp {exp}, now {now}");

    // 2. The repeat is a cache hit: same token, no second exchange.
    let (status, _, body) =
        within("the second gateway call", get(&format!("{}/orders/2", gw.url), Some(&subject))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&echoed(&body), "authorization"), vec![format!("Bearer {exchanged}")]);
    let m = within("/metrics", gw.metrics()).await;
    assert!(m.contains("tokex_exchanges_total{server=\"corp\",outcome=\"ok\"} 1\n"), "{m}");

    // 3. A tampered or garbage subject token: authgent says invalid_grant → 401 invalid_token.
    for bad in [tamper(&subject), "not-a-jwt".to_owned()] {
        let (status, headers, body) =
            within("a bad-token gateway call", get(&format!("{}/orders/1", gw.url), Some(&bad))).await;
        assert_eq!(status, 401, "{body}");
        let challenge = headers.get("www-authenticate").expect("WWW-Authenticate").to_str().unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    }

    let _ = authgent.child.kill().await;
    drop(authgent);
    println!("authgent end-to-end: {:.1?}", started.elapsed());
}
