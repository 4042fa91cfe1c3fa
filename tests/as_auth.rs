//! tokex's side of the authorization server: client authentication
//! (`private_key_jwt`, `tls_client_auth`, rotated secret and key files) and
//! RFC 8414 discovery of the endpoints.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use tokex::dev_sts::{self, ClientSpec, DevStsConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

// ---------------------------------------------------------------------------
// Keys and files made at test time

/// A fresh signing key: its PKCS#8 PEM, and what verifies its signatures.
struct TestKey {
    alg: Algorithm,
    private_pem: String,
    /// EC: the uncompressed point; Ed25519: the 32-byte key.
    public: Vec<u8>,
}

impl TestKey {
    fn es256() -> Self {
        let rng = SystemRandom::new();
        let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_ref(), &rng).unwrap();
        TestKey {
            alg: Algorithm::ES256,
            private_pem: pem("PRIVATE KEY", der.as_ref()),
            public: kp.public_key().as_ref().to_vec(),
        }
    }

    fn eddsa() -> Self {
        let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap();
        TestKey {
            alg: Algorithm::EdDSA,
            private_pem: pem("PRIVATE KEY", der.as_ref()),
            public: kp.public_key().as_ref().to_vec(),
        }
    }

    fn decoding(&self) -> DecodingKey {
        match self.alg {
            Algorithm::EdDSA => DecodingKey::from_ed_der(&self.public),
            _ => DecodingKey::from_ec_der(&self.public),
        }
    }

    /// The SubjectPublicKeyInfo PEM (what dev-sts registers for the client).
    fn public_pem(&self) -> String {
        let prefix: &[u8] = match self.alg {
            Algorithm::EdDSA => &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00],
            _ => &[
                0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
                0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
            ],
        };
        pem("PUBLIC KEY", &[prefix, &self.public].concat())
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// A fresh directory for one test's files.
fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tokex-as-auth-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replaces `path` the way Kubernetes does: a new file renamed over the old.
fn rotate(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Verifies a client assertion: signature with `key`, `aud`, and the RFC 7523 claims.
fn verify_assertion(jwt: &str, key: &TestKey, aud: &str, client_id: &str) -> (jsonwebtoken::Header, Value) {
    verify_assertion_with(jwt, key.alg, &key.decoding(), aud, client_id)
}

/// [`verify_assertion`] with any algorithm and key (HS256 over a secret too).
fn verify_assertion_with(
    jwt: &str,
    alg: Algorithm,
    key: &DecodingKey,
    aud: &str,
    client_id: &str,
) -> (jsonwebtoken::Header, Value) {
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    let mut v = Validation::new(alg);
    v.set_audience(&[aud]);
    v.set_issuer(&[client_id]);
    v.sub = Some(client_id.to_owned());
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let claims =
        jsonwebtoken::decode::<Value>(jwt, key, &v).unwrap_or_else(|e| panic!("assertion does not verify: {e}")).claims;
    let (iat, exp) = (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap());
    assert!(exp > iat && exp - iat <= 60, "short-lived: iat {iat}, exp {exp}");
    assert!(iat <= now() + 1 && exp > now(), "current: iat {iat}, exp {exp}");
    assert!(!claims["jti"].as_str().unwrap().is_empty());
    (header, claims)
}

fn private_key_jwt(dir: &Path, key: &TestKey, extra: &str) -> String {
    let file = dir.join("client.key.pem");
    std::fs::write(&file, &key.private_pem).unwrap();
    format!("{{ method: private_key_jwt, client_id: gw, private_key_file: {}{extra} }}", file.display())
}

/// Two exchanges (two subjects) through a gateway whose server `corp`
/// authenticates tokex with `auth`: the two token requests, each checked
/// for what every assertion method sends (`client_assertion_type`,
/// `client_id`, no `client_secret`, no `Authorization`), and the token URL.
async fn two_assertion_requests(auth: &str) -> (Vec<Recorded>, String) {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let gw =
        TestGateway::start(&config_with(&auth_server.token_url(), auth, &exchange_route("a", "/", backend, ""))).await;
    assert_eq!(get(&gw.url, Some("subject-1")).await.0, 200);
    assert_eq!(get(&gw.url, Some("subject-2")).await.0, 200);
    let requests = auth_server.requests();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert_eq!(r.param("client_assertion_type"), Some(JWT_BEARER));
        assert_eq!(r.param("client_id"), Some("gw"));
        assert_eq!(r.param("client_secret"), None);
        assert!(r.headers.get("authorization").is_none());
    }
    (requests, auth_server.token_url())
}

async fn readyz(gw: &TestGateway) -> u16 {
    get(&format!("{}/readyz", gw.admin), None).await.0.as_u16()
}

// ---------------------------------------------------------------------------
// private_key_jwt

#[tokio::test]
async fn private_key_jwt_es256_and_eddsa_assertions() {
    for key in [TestKey::es256(), TestKey::eddsa()] {
        let dir = temp_dir("pkjwt");
        let (requests, token_url) = two_assertion_requests(&private_key_jwt(&dir, &key, ", key_id: gw-key-1")).await;
        let mut jtis = Vec::new();
        for r in &requests {
            let (header, claims) = verify_assertion(r.param("client_assertion").unwrap(), &key, &token_url, "gw");
            assert_eq!(header.alg, key.alg);
            assert_eq!(header.kid.as_deref(), Some("gw-key-1"));
            assert_eq!(claims["aud"], token_url.as_str(), "aud defaults to the token endpoint");
            jtis.push(claims["jti"].as_str().unwrap().to_owned());
        }
        assert_ne!(jtis[0], jtis[1], "jti is unique per assertion");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

// ---------------------------------------------------------------------------
// client_secret_jwt

/// RFC 7523 §2.2 with HS256 over the client secret (OpenID Connect Core §9
/// `client_secret_jwt`; Okta, PingOne and Keycloak offer it): the secret
/// itself never travels, each request has its own assertion.
#[tokio::test]
async fn client_secret_jwt_sends_an_hs256_assertion_and_never_the_secret() {
    let secret = "0123456789abcdef0123456789abcdef-okta";
    let auth = format!("{{ method: client_secret_jwt, client_id: gw, client_secret: \"{secret}\" }}");
    let (requests, token_url) = two_assertion_requests(&auth).await;
    let mut jtis = Vec::new();
    for r in &requests {
        assert!(r.form.iter().all(|(_, v)| !v.contains(secret)), "the secret itself is not sent");
        let jwt = r.param("client_assertion").unwrap();
        let key = DecodingKey::from_secret(secret.as_bytes());
        let (header, claims) = verify_assertion_with(jwt, Algorithm::HS256, &key, &token_url, "gw");
        assert_eq!(header.alg, Algorithm::HS256);
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[&token_url]);
        let wrong = DecodingKey::from_secret(b"another-secret-of-enough-length-000");
        assert!(jsonwebtoken::decode::<Value>(jwt, &wrong, &v).is_err(), "another secret does not verify it");
        jtis.push(claims["jti"].as_str().unwrap().to_owned());
    }
    assert_ne!(jtis[0], jtis[1], "jti is unique per assertion");
}

#[test]
fn client_secret_jwt_needs_a_secret_of_hs256_length() {
    let config = |auth: &str| {
        format!(
            "listen: {{ address: \"127.0.0.1:8080\" }}\nauthorization_servers:\n  corp:\n    token_endpoint: https://as.example.com/token\n    client_auth: {auth}\nroutes:\n  - {{ name: r, upstream: \"http://127.0.0.1:1\", exchange: {{ authorization_server: corp }} }}\n"
        )
    };
    let short = config("{ method: client_secret_jwt, client_id: gw, client_secret: short }");
    let e = tokex::config::parse(&short).unwrap_err().to_string();
    assert!(e.contains("at least 32 bytes"), "{e}");
    let no_secret = config("{ method: client_secret_jwt, client_id: gw }");
    let e = tokex::config::parse(&no_secret).unwrap_err().to_string();
    assert!(e.contains("needs client_secret or client_secret_file"), "{e}");
    let alg = config("{ method: client_secret_jwt, client_id: gw, client_secret: 0123456789abcdef0123456789abcdef, algorithm: ES256 }");
    let e = tokex::config::parse(&alg).unwrap_err().to_string();
    assert!(e.contains("algorithm") && e.contains("only by private_key_jwt"), "{e}");
    let issuer_aud = config("{ method: client_secret_jwt, client_id: gw, client_secret: 0123456789abcdef0123456789abcdef, assertion_audience: issuer }");
    let e = tokex::config::parse(&issuer_aud).unwrap_err().to_string();
    assert!(e.contains("issuer needs the server configured with issuer:"), "{e}");
    let ok = config("{ method: client_secret_jwt, client_id: gw, client_secret: 0123456789abcdef0123456789abcdef }");
    assert!(tokex::config::parse(&ok).is_ok());
}

#[tokio::test]
async fn a_retried_request_carries_a_fresh_assertion() {
    let dir = temp_dir("retry");
    let key = TestKey::es256();
    let auth_server = RecordingAs::start().await;
    auth_server.set(|_, n| if n == 1 { Reply::Json(503, json!({})) } else { issue(n) });
    let backend = echo_backend().await;
    let auth = private_key_jwt(&dir, &key, "");
    let gw =
        TestGateway::start(&config_with(&auth_server.token_url(), &auth, &exchange_route("a", "/", backend, ""))).await;
    assert_eq!(get(&gw.url, Some("s")).await.0, 200);
    let assertions: Vec<String> =
        auth_server.requests().iter().map(|r| r.param("client_assertion").unwrap().to_owned()).collect();
    assert_eq!(assertions.len(), 2);
    assert_ne!(assertions[0], assertions[1], "an assertion (its jti) is never sent twice");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn rotated_private_key_file_is_picked_up() {
    let dir = temp_dir("key-rotation");
    let first = TestKey::es256();
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let auth = private_key_jwt(&dir, &first, "");
    let gw =
        TestGateway::start(&config_with(&auth_server.token_url(), &auth, &exchange_route("a", "/", backend, ""))).await;
    assert_eq!(get(&gw.url, Some("s1")).await.0, 200);
    verify_assertion(auth_server.last().param("client_assertion").unwrap(), &first, &auth_server.token_url(), "gw");

    // A new key (of another type: the algorithm follows it) renamed over the old file.
    let second = TestKey::eddsa();
    rotate(&dir.join("client.key.pem"), &second.private_pem);
    assert_eq!(get(&gw.url, Some("s2")).await.0, 200);
    let (header, _) = verify_assertion(
        auth_server.last().param("client_assertion").unwrap(),
        &second,
        &auth_server.token_url(),
        "gw",
    );
    assert_eq!(header.alg, Algorithm::EdDSA);

    // A broken replacement is refused (502, logged), never sent; a good one recovers.
    rotate(&dir.join("client.key.pem"), "not a key");
    assert_eq!(get(&gw.url, Some("s3")).await.0, 502);
    assert_eq!(auth_server.count(), 2);
    rotate(&dir.join("client.key.pem"), &first.private_pem);
    assert_eq!(get(&gw.url, Some("s4")).await.0, 200);
    verify_assertion(auth_server.last().param("client_assertion").unwrap(), &first, &auth_server.token_url(), "gw");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn rotated_client_secret_file_is_picked_up() {
    let dir = temp_dir("secret-rotation");
    let file = dir.join("client-secret");
    std::fs::write(&file, "first-secret\n").unwrap();
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let auth = format!("{{ method: client_secret_basic, client_id: tokex, client_secret_file: {} }}", file.display());
    let gw =
        TestGateway::start(&config_with(&auth_server.token_url(), &auth, &exchange_route("a", "/", backend, ""))).await;
    assert_eq!(get(&gw.url, Some("s1")).await.0, 200);
    assert_eq!(auth_server.last().basic(), Some(("tokex".into(), "first-secret".into())));
    rotate(&file, "second-secret");
    assert_eq!(get(&gw.url, Some("s2")).await.0, 200);
    assert_eq!(auth_server.last().basic(), Some(("tokex".into(), "second-secret".into())));
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn dev_sts_with_key(key: &TestKey) -> dev_sts::DevSts {
    let clients = vec![ClientSpec {
        id: "gw".into(),
        secret: None,
        public_key_pem: Some(key.public_pem()),
        audiences: vec!["orders-api".into()],
        scopes: vec!["orders:read".into()],
    }];
    let cfg = DevStsConfig { issuer: None, clients, expires_in: Duration::from_secs(60), ..Default::default() };
    dev_sts::start(cfg, TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap()
}

fn orders_route(backend: SocketAddr) -> String {
    format!("  - name: orders\n    upstream: http://{backend}\n    exchange: {{ authorization_server: corp, audience: [orders-api], scope: [orders:read] }}\n")
}

/// The exchanged token the backend received, decoded (unverified).
fn backend_claims(body: &str) -> Value {
    let auth = seen(&echoed(body), "authorization");
    tokex::exchange::unverified::claims_json(auth[0].strip_prefix("Bearer ").unwrap()).unwrap()
}

#[tokio::test]
async fn private_key_jwt_against_dev_sts() {
    let backend = echo_backend().await;

    // ES256, a configured token endpoint, aud = the token endpoint.
    let key = TestKey::es256();
    let sts = dev_sts_with_key(&key).await;
    let dir = temp_dir("dev-sts");
    let auth = private_key_jwt(&dir, &key, ", key_id: k1");
    let gw = TestGateway::start(&config_with(&sts.token_endpoint(), &auth, &orders_route(backend))).await;
    let subject = sts.mint("alice", &["orders:read"], &["tokex"], Duration::from_secs(600));
    let (status, _, body) = get(&gw.url, Some(&subject)).await;
    assert_eq!(status, 200, "{body}");
    let c = backend_claims(&body);
    assert_eq!(
        (c["sub"].as_str(), c["client_id"].as_str(), c["aud"].as_str()),
        (Some("alice"), Some("gw"), Some("orders-api"))
    );
    // Every exchange signs a new assertion: dev-sts refuses a replayed jti.
    let other = sts.mint("bob", &["orders:read"], &["tokex"], Duration::from_secs(600));
    assert_eq!(get(&gw.url, Some(&other)).await.0, 200);
    assert_eq!(sts.exchange_count(), 2);

    // EdDSA, discovery from the issuer, aud = the issuer.
    let key = TestKey::eddsa();
    let sts = dev_sts_with_key(&key).await;
    let auth = private_key_jwt(&dir, &key, ", assertion_audience: issuer, algorithm: EdDSA");
    let cfg = config_with("unused", &auth, &orders_route(backend))
        .replace("token_endpoint: unused", &format!("issuer: {}", sts.issuer()));
    let gw = TestGateway::start(&cfg).await;
    assert!(eventually_async(Duration::from_secs(5), || readyz(&gw), 200).await, "discovery from dev-sts");
    let subject = sts.mint("carol", &["orders:read"], &["tokex"], Duration::from_secs(600));
    let (status, _, body) = get(&gw.url, Some(&subject)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(backend_claims(&body)["client_id"], "gw");
    // A client the AS does not know → invalid_client → 502.
    let stranger = TestKey::eddsa();
    let stranger_dir = temp_dir("stranger");
    let auth = private_key_jwt(&stranger_dir, &stranger, "");
    let gw = TestGateway::start(&config_with(&sts.token_endpoint(), &auth, &orders_route(backend))).await;
    assert_eq!(get(&gw.url, Some(&subject)).await.0, 502);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&stranger_dir).unwrap();
}

/// Polls `probe` until it returns `want` or `timeout` passes.
async fn eventually_async<F, Fut>(timeout: Duration, mut probe: F, want: u16) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if probe().await == want {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// RFC 8414 discovery

/// Serves `handler` (HTTP/1.1) on `listener` until aborted.
fn serve_on<F>(listener: TcpListener, handler: F) -> JoinHandle<()>
where
    F: Fn(&str) -> (u16, String) + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (status, body) = handler(req.uri().path());
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(full(body))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}

fn metadata(issuer: &str, token_endpoint: &str) -> String {
    json!({
        "issuer": issuer,
        "token_endpoint": token_endpoint,
        "jwks_uri": format!("{issuer}/jwks.json"),
        "introspection_endpoint": format!("{issuer}/introspect"),
        "grant_types_supported": ["urn:ietf:params:oauth:grant-type:token-exchange"],
    })
    .to_string()
}

fn issuer_config(issuer: &str, client_auth: &str, routes: &str) -> String {
    config_with("unused", client_auth, routes).replace("token_endpoint: unused", &format!("issuer: {issuer}"))
}

#[tokio::test]
async fn discovery_gates_readiness_until_the_metadata_server_comes_up() {
    // The metadata server answers 503 until it "comes up". (Its port stays
    // bound throughout: a port released and bound again later can be taken
    // in between by any connection of the other tests.)
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let auth_server = RecordingAs::start().await;
    let token_url = auth_server.token_url();
    let (iss, tok, is_up) = (issuer.clone(), token_url.clone(), up.clone());
    let metadata_server = serve_on(listener, move |path| match path {
        _ if !is_up.load(std::sync::atomic::Ordering::SeqCst) => (503, "{}".into()),
        "/.well-known/oauth-authorization-server" => (200, metadata(&iss, &tok)),
        _ => (404, "{}".into()),
    });
    let backend = echo_backend().await;
    let dir = temp_dir("discovery");
    let key = TestKey::es256();
    let auth = private_key_jwt(&dir, &key, ", assertion_audience: issuer");
    let yaml = issuer_config(&issuer, &auth, &exchange_route("a", "/", backend, ""));
    let gw = TestGateway::start(&yaml).await;

    // Bound and serving, but not ready; exchanges answer 503 with Retry-After.
    assert_eq!(readyz(&gw).await, 503);
    let (status, headers, _) = get(&gw.url, Some("s1")).await;
    assert_eq!(status, 503);
    assert_eq!(headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    let server = gw.running.gateway.runtime().servers["corp"].clone();
    assert!(server.endpoints().is_none() && server.jwks_uri().is_none());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(readyz(&gw).await, 503);
    assert_eq!(auth_server.count(), 0);

    up.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(eventually_async(Duration::from_secs(5), || readyz(&gw), 200).await, "ready once discovered");
    assert_eq!(server.issuer(), Some(issuer.as_str()));
    assert_eq!(server.endpoints().unwrap().token_endpoint.as_str(), token_url);
    assert_eq!(server.jwks_uri().unwrap().as_str(), format!("{issuer}/jwks.json"));
    assert_eq!(server.introspection_endpoint().unwrap().as_str(), format!("{issuer}/introspect"));

    let (status, _, body) = get(&gw.url, Some("s1")).await;
    assert_eq!(status, 200, "{body}");
    let r = auth_server.last();
    assert_eq!(r.param("subject_token"), Some("s1"));
    let (_, claims) = verify_assertion(r.param("client_assertion").unwrap(), &key, &issuer, "gw");
    assert_eq!(claims["aud"], issuer.as_str(), "assertion_audience: issuer");

    // A reload keeps what discovery found, even with the metadata server gone.
    metadata_server.abort();
    let file = dir.join("tokex.yaml");
    std::fs::write(&file, format!("listen: {{ address: \"127.0.0.1:0\" }}\n{yaml}")).unwrap();
    assert!(gw.running.reload(&file, "test"));
    assert_eq!(readyz(&gw).await, 200);
    assert_eq!(get(&gw.url, Some("s2")).await.0, 200);
    assert_eq!(auth_server.count(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn discovery_refuses_a_document_for_another_issuer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let auth_server = RecordingAs::start().await;
    let (other, tok) = (format!("{issuer}/other"), auth_server.token_url());
    let _metadata = serve_on(listener, move |_| (200, metadata(&other, &tok)));
    let backend = echo_backend().await;
    let gw = TestGateway::start(&issuer_config(&issuer, BASIC_AUTH, &exchange_route("a", "/", backend, ""))).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(readyz(&gw).await, 503, "RFC 8414 §3.3: a mismatched issuer is never used");
    let (status, headers, _) = get(&gw.url, Some("s")).await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(auth_server.count(), 0);
}

#[tokio::test]
async fn discovery_falls_back_to_openid_configuration() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}/tenant", listener.local_addr().unwrap());
    let auth_server = RecordingAs::start().await;
    let (iss, tok) = (issuer.clone(), auth_server.token_url());
    let seen_paths = Arc::new(Mutex::new(Vec::new()));
    let paths = seen_paths.clone();
    let _metadata = serve_on(listener, move |path| {
        paths.lock().unwrap().push(path.to_owned());
        match path {
            "/tenant/.well-known/openid-configuration" => (200, metadata(&iss, &tok)),
            _ => (404, "{}".into()),
        }
    });
    let backend = echo_backend().await;
    let gw = TestGateway::start(&issuer_config(&issuer, BASIC_AUTH, &exchange_route("a", "/", backend, ""))).await;
    assert!(eventually_async(Duration::from_secs(5), || readyz(&gw), 200).await);
    assert_eq!(get(&gw.url, Some("s")).await.0, 200);
    assert_eq!(auth_server.last().basic(), Some(("tokex".into(), "s3cret".into())));
    assert_eq!(
        seen_paths.lock().unwrap()[..3],
        [
            "/.well-known/oauth-authorization-server/tenant",
            "/tenant/.well-known/oauth-authorization-server",
            "/tenant/.well-known/openid-configuration"
        ]
    );
}

// ---------------------------------------------------------------------------
// tls_client_auth (RFC 8705 §2)

struct Pki {
    dir: PathBuf,
    ca_pem: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    client_der: Vec<u8>,
    server_config: Arc<rustls::ServerConfig>,
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate
/// (CN tokex-client) it issued; the server requires a client certificate
/// from that CA.
fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let dir = temp_dir("pki");
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "tokex test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let server_cert =
        CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&server_key, &issuer).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params.distinguished_name.push(DnType::CommonName, "tokex-client");
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();

    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_pem = write("ca.pem", ca_cert.pem());
    let client_cert_path = write("client.pem", client_cert.pem());
    let client_key_path = write("client.key", client_key.serialize_pem());

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
    let key = rustls_pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server_cert.der().clone()], key)
        .unwrap();
    Pki {
        dir,
        ca_pem,
        client_cert: client_cert_path,
        client_key: client_key_path,
        client_der: client_cert.der().to_vec(),
        server_config: Arc::new(server_config),
    }
}

type Form = Vec<(String, String)>;

/// A token endpoint over TLS that requires a client certificate.
#[derive(Clone, Default)]
struct MtlsAs {
    /// DER of the client certificate presented on each accepted connection.
    client_certs: Arc<Mutex<Vec<Vec<u8>>>>,
    failed_handshakes: Arc<AtomicUsize>,
    /// Form parameters of each token request.
    forms: Arc<Mutex<Vec<Form>>>,
}

impl MtlsAs {
    async fn start(config: Arc<rustls::ServerConfig>) -> (Self, SocketAddr) {
        let this = MtlsAs::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let state = this.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (acceptor, state) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    let tls = match acceptor.accept(stream).await {
                        Ok(tls) => tls,
                        Err(_) => {
                            state.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    if let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                        state.client_certs.lock().unwrap().push(cert.to_vec());
                    }
                    let forms = state.forms.clone();
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let forms = forms.clone();
                        async move {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let form =
                                form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
                            forms.lock().unwrap().push(form);
                            let answer =
                                json!({"access_token": "mtls-token", "token_type": "Bearer", "expires_in": 60});
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(full(answer.to_string()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        (this, addr)
    }
}

fn mtls_config(token_url: &str, ca: &Path, client_auth: &str, routes: &str) -> String {
    config_with(token_url, client_auth, routes)
        .replace("    timeout: 2s\n", &format!("    ca_file: {}\n    timeout: 2s\n", ca.display()))
}

#[tokio::test]
async fn tls_client_auth_presents_the_client_certificate() {
    let pki = pki();
    let (auth_server, addr) = MtlsAs::start(pki.server_config.clone()).await;
    let backend = echo_backend().await;
    let auth = format!(
        "{{ method: tls_client_auth, client_id: tokex-mtls, cert_file: {}, key_file: {} }}",
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let cfg = mtls_config(
        &format!("https://127.0.0.1:{}/token", addr.port()),
        &pki.ca_pem,
        &auth,
        &exchange_route("a", "/", backend, ""),
    );
    let gw = TestGateway::start(&cfg).await;
    let (status, _, body) = get(&gw.url, Some("subject")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&echoed(&body), "authorization"), vec!["Bearer mtls-token"]);

    let certs = auth_server.client_certs.lock().unwrap().clone();
    assert!(!certs.is_empty(), "the AS saw a client certificate");
    assert_eq!(certs[0], pki.client_der, "the configured client certificate");
    assert!(certs[0].windows(b"tokex-client".len()).any(|w| w == b"tokex-client"), "subject CN tokex-client");
    let form = auth_server.forms.lock().unwrap()[0].clone();
    let param = |k: &str| form.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    assert_eq!(param("client_id"), Some("tokex-mtls"));
    assert_eq!((param("client_secret"), param("client_assertion")), (None, None));
    assert_eq!(param("subject_token"), Some("subject"));
    std::fs::remove_dir_all(&pki.dir).unwrap();
}

#[tokio::test]
async fn without_the_client_certificate_the_handshake_fails() {
    let pki = pki();
    let (auth_server, addr) = MtlsAs::start(pki.server_config.clone()).await;
    let backend = echo_backend().await;
    let cfg = mtls_config(
        &format!("https://127.0.0.1:{}/token", addr.port()),
        &pki.ca_pem,
        "{ method: none, client_id: tokex-mtls }",
        &exchange_route("a", "/", backend, ""),
    );
    let gw = TestGateway::start(&cfg).await;
    let (status, _, _) = get(&gw.url, Some("subject")).await;
    assert!(status == 503 || status == 502, "{status}");
    assert!(auth_server.failed_handshakes.load(Ordering::SeqCst) >= 1);
    assert!(auth_server.forms.lock().unwrap().is_empty(), "no token request got through");
    std::fs::remove_dir_all(&pki.dir).unwrap();
}

// ---------------------------------------------------------------------------
// Configuration checks

#[test]
fn client_auth_configuration_errors() {
    let dir = temp_dir("check");
    let key = dir.join("key.pem");
    std::fs::write(&key, TestKey::es256().private_pem).unwrap();
    let errors = |server: &str| -> String {
        let yaml = format!(
            "listen: {{ address: \"127.0.0.1:0\" }}\nauthorization_servers:\n  corp:\n{server}routes:\n  - name: a\n    upstream: http://127.0.0.1:1\n    exchange: {{ authorization_server: corp }}\n"
        );
        common::config_errors(&yaml)
    };
    let k = key.display();
    for (server, want) in [
        (
            "    token_endpoint: http://as/token\n    client_auth: { method: tls_client_auth, client_id: x, cert_file: /etc/hostname, key_file: /etc/hostname }\n".to_owned(),
            "tls_client_auth needs an https:// token endpoint",
        ),
        (
            format!("    token_endpoint: https://as/token\n    client_auth: {{ method: private_key_jwt, client_id: x, private_key_file: {k}, assertion_audience: issuer }}\n"),
            "assertion_audience: issuer needs the server configured with issuer:",
        ),
        (
            format!("    token_endpoint: https://as/token\n    client_auth: {{ method: private_key_jwt, client_id: x, private_key_file: {k}, algorithm: HS256 }}\n"),
            "client_auth.algorithm: unsupported algorithm \"HS256\"",
        ),
        (
            "    token_endpoint: https://as/token\n    client_auth: { method: private_key_jwt, client_id: x }\n".to_owned(),
            "method private_key_jwt needs private_key_file",
        ),
        (
            format!("    token_endpoint: https://as/token\n    client_auth: {{ method: client_secret_post, client_id: x, client_secret: s, private_key_file: {k} }}\n"),
            "client_auth.private_key_file: not used by method client_secret_post",
        ),
        ("    issuer: https://as/?q=1\n".to_owned(), "corp.issuer: an issuer has no query"),
        (
            "    issuer: https://as\n    token_endpoint: https://as/token\n".to_owned(),
            "set either token_endpoint or issuer, not both",
        ),
    ] {
        let errs = errors(&server);
        assert!(errs.contains(want), "want {want:?} in:\n{errs}");
    }

    // The key file is read when the gateway is built (and by `tokex check`).
    std::fs::write(&key, "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n").unwrap();
    let yaml = format!(
        "listen: {{ address: \"127.0.0.1:0\" }}\nauthorization_servers:\n  corp:\n    token_endpoint: https://as/token\n    client_auth: {{ method: private_key_jwt, client_id: x, private_key_file: {k} }}\nroutes:\n  - name: a\n    upstream: http://127.0.0.1:1\n    exchange: {{ authorization_server: corp }}\n"
    );
    let config = tokex::config::parse(&yaml).unwrap();
    let err =
        tokex::app::build_runtime(&config, &tokex::metrics::Metrics::new(), None).err().expect("unusable key refused");
    assert!(err.to_string().contains("PKCS#8"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
