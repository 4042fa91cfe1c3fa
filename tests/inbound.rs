//! Inbound validation: the JWT attack suite (each refused with 401 and no
//! call to the authorization server), JWKS rotation and unknown-kid floods,
//! readiness, `require_scopes`, and RFC 7662 introspection.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::*;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256};
use serde_json::{json, Value};

const ISS: &str = "https://issuer.test";
const INVALID_TOKEN: &str = "Bearer realm=\"tokex\", error=\"invalid_token\"";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact JWS with any header, signed by `sign` over `header.payload`.
fn jws(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let sig = sign(input.as_bytes());
    format!("{input}.{}", b64(sig))
}

/// Valid claims for the test issuer and audience `edge`; `extra` overrides
/// (a `null` value removes the claim).
fn claims(extra: Value) -> Value {
    let now = now();
    let mut c = json!({
        "iss": ISS, "sub": "alice", "aud": "edge", "iat": now, "exp": now + 600,
        "scope": "orders:read profile", "client_id": "app", "jti": format!("{}", fastrand::u64(..)),
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

struct EcSigner {
    kid: String,
    kp: EcdsaKeyPair,
    jwk: Value,
}

impl EcSigner {
    fn new(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let p = kp.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65]), "kid": kid, "alg": "ES256", "use": "sig"});
        EcSigner { kid: kid.to_owned(), kp, jwk }
    }

    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.kp.sign(&SystemRandom::new(), msg).unwrap().as_ref().to_vec()
    }

    fn header(&self) -> Value {
        json!({"alg": "ES256", "typ": "at+jwt", "kid": self.kid})
    }

    fn token(&self, claims: &Value) -> String {
        jws(&self.header(), claims, |m| self.sign(m))
    }
}

/// The committed test RSA key (tests/keys/, generated once with openssl).
struct RsaSigner {
    kid: String,
    kp: RsaKeyPair,
    jwk: Value,
    public_pem: &'static [u8],
}

impl RsaSigner {
    fn new(kid: &str) -> Self {
        let pem = include_str!("keys/rsa-2048.pem");
        let der = STANDARD.decode(pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>()).unwrap();
        let kp = RsaKeyPair::from_pkcs8(&der).unwrap();
        let c: ring::rsa::PublicKeyComponents<Vec<u8>> = kp.public().into();
        let jwk = json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e), "kid": kid, "use": "sig"});
        RsaSigner { kid: kid.to_owned(), kp, jwk, public_pem: include_bytes!("keys/rsa-2048.pub.pem") }
    }

    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let mut sig = vec![0; self.kp.public().modulus_len()];
        self.kp.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut sig).unwrap();
        sig
    }
}

fn hmac_sha256(secret: &[u8], msg: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::sign(&key, msg).as_ref().to_vec()
}

/// A JWKS endpoint that counts its fetches and can be switched off (503).
#[derive(Clone)]
struct JwksServer {
    addr: std::net::SocketAddr,
    fetches: Arc<AtomicUsize>,
    keys: Arc<Mutex<Vec<Value>>>,
    up: Arc<AtomicBool>,
    cache_control: Arc<Mutex<&'static str>>,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> Self {
        let fetches = Arc::new(AtomicUsize::new(0));
        let keys = Arc::new(Mutex::new(keys));
        let up = Arc::new(AtomicBool::new(true));
        let cache_control = Arc::new(Mutex::new("public, max-age=3600"));
        let (f, k, u, cc) = (fetches.clone(), keys.clone(), up.clone(), cache_control.clone());
        let addr = serve(move |_req: Request<Incoming>| {
            let (f, k, u, cc) = (f.clone(), k.clone(), u.clone(), cc.clone());
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                if !u.load(Ordering::SeqCst) {
                    return Response::builder().status(503).body(full("down")).unwrap();
                }
                let body = json!({"keys": *k.lock().unwrap()}).to_string();
                Response::builder()
                    .header("content-type", "application/json")
                    .header("cache-control", *cc.lock().unwrap())
                    .body(full(body))
                    .unwrap()
            }
        })
        .await;
        JwksServer { addr, fetches, keys, up, cache_control }
    }

    fn uri(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn jwt_inbound(jwks_uri: &str, algorithms: &str, extra: &str) -> String {
    format!(
        "inbound:\n  jwt:\n    issuer: {ISS}\n    jwks_uri: {jwks_uri}\n    audiences: [edge, other-edge]\n    algorithms: {algorithms}\n    leeway: 5s\n    require_typ: at+jwt\n{extra}"
    )
}

async fn ready(gw: &TestGateway, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, _, _) = get(&format!("{}/readyz", gw.admin), None).await;
        if status == 200 {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one metric line, 0 when absent.
fn metric(text: &str, line_prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_prefix) && l[line_prefix.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rejections(text: &str, reason: &str) -> u64 {
    metric(text, &format!("tokex_inbound_rejections_total{{reason=\"{reason}\"}}"))
}

struct Setup {
    auth_server: RecordingAs,
    jwks: JwksServer,
    gw: TestGateway,
    /// The configuration the gateway runs (without `listen`/`admin`).
    yaml: String,
}

async fn setup(keys: Vec<Value>, algorithms: &str, jwt_extra: &str, route_extra: &str) -> Setup {
    let auth_server = RecordingAs::start().await;
    let jwks = JwksServer::start(keys).await;
    let backend = echo_backend().await;
    let yaml = jwt_inbound(&jwks.uri(), algorithms, jwt_extra)
        + &config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("orders", "/", backend, route_extra));
    let gw = TestGateway::start(&yaml).await;
    assert!(ready(&gw, Duration::from_secs(5)).await, "gateway not ready after the first JWKS fetch");
    Setup { auth_server, jwks, gw, yaml }
}

#[tokio::test]
async fn jwt_attack_suite_is_refused_without_calling_the_authorization_server() {
    let ec = EcSigner::new("ec-1");
    let rsa = RsaSigner::new("rsa-1");
    let s = setup(vec![ec.jwk.clone(), rsa.jwk.clone()], "[ES256]", "", "").await;
    assert_eq!(s.jwks.fetches(), 1);

    // The control: a valid token passes and is exchanged.
    let (status, _, body) = get(&s.gw.url, Some(&ec.token(&claims(json!({}))))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.auth_server.count(), 1);

    let valid = ec.token(&claims(json!({})));
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        let forged = b64(claims(json!({"sub": "admin", "scope": "orders:read orders:admin"})).to_string());
        format!("{}.{forged}.{}", parts[0], parts[2])
    };
    let ec_header = |extra: Value| {
        let mut h = ec.header();
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                h.as_object_mut().unwrap().remove(k);
            } else {
                h[k] = v.clone();
            }
        }
        h
    };
    let pad = "x".repeat(9000);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "typ": "at+jwt", "kid": "ec-1"}).to_string()),
                b64(claims(json!({})).to_string())
            ),
            "alg_not_allowed",
        ),
        (
            "HS256 signed with the RSA public key (key confusion)",
            jws(&json!({"alg": "HS256", "typ": "at+jwt", "kid": rsa.kid}), &claims(json!({})), |m| {
                hmac_sha256(rsa.public_pem, m)
            }),
            "alg_not_allowed",
        ),
        (
            "RS256 (valid signature, only ES256 allowed)",
            jws(&json!({"alg": "RS256", "typ": "at+jwt", "kid": rsa.kid}), &claims(json!({})), |m| rsa.sign(m)),
            "alg_not_allowed",
        ),
        ("expired", ec.token(&claims(json!({"exp": now() - 3600}))), "expired"),
        ("not yet valid (nbf)", ec.token(&claims(json!({"nbf": now() + 3600}))), "not_yet_valid"),
        ("wrong iss", ec.token(&claims(json!({"iss": "https://evil.test"}))), "wrong_issuer"),
        ("wrong aud", ec.token(&claims(json!({"aud": ["orders-api"]}))), "wrong_audience"),
        ("no exp", ec.token(&claims(json!({"exp": null}))), "missing_claim"),
        ("oversize (> 8 KiB)", ec.token(&claims(json!({"pad": pad}))), "too_large"),
        ("payload tampered, signature kept", tampered, "bad_signature"),
        ("signed by another key with a known kid", EcSigner::new("ec-1").token(&claims(json!({}))), "bad_signature"),
        (
            "crit header",
            jws(&ec_header(json!({"crit": ["exp"], "exp": now() + 60})), &claims(json!({})), |m| ec.sign(m)),
            "crit_header",
        ),
        (
            "typ missing (at+jwt required)",
            jws(&ec_header(json!({"typ": null})), &claims(json!({})), |m| ec.sign(m)),
            "wrong_typ",
        ),
        (
            "typ JWT (at+jwt required)",
            jws(&ec_header(json!({"typ": "JWT"})), &claims(json!({})), |m| ec.sign(m)),
            "wrong_typ",
        ),
        ("not a JWT", "opaque-token".to_owned(), "malformed"),
    ];
    eprintln!("| case | answer | AS calls | JWKS fetches | reason |");
    for (name, token, reason) in cases {
        let before = (s.auth_server.count(), s.jwks.fetches(), rejections(&s.gw.metrics().await, reason));
        let (status, headers, body) = get(&s.gw.url, Some(&token)).await;
        let fetched = s.jwks.fetches() - before.1;
        eprintln!("| {name} | {status} | {} | {fetched} | {reason} |", s.auth_server.count() - before.0);
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert_eq!(headers.get("www-authenticate").unwrap(), INVALID_TOKEN, "{name}");
        assert_eq!(s.auth_server.count(), before.0, "{name}: the AS was called");
        assert_eq!(fetched, 0, "{name}: the JWKS was refetched");
        assert_eq!(rejections(&s.gw.metrics().await, reason), before.2 + 1, "{name}: counted as {reason}");
        assert!(!body.contains(&token[..token.len().min(40)]), "{name}: the answer echoes the token");
    }
    // `application/at+jwt` is the same type as `at+jwt`.
    let token = jws(&ec_header(json!({"typ": "application/at+jwt"})), &claims(json!({})), |m| ec.sign(m));
    assert_eq!(get(&s.gw.url, Some(&token)).await.0, 200);
}

#[tokio::test]
async fn key_confusion_is_refused_when_rsa_is_allowed_too() {
    let ec = EcSigner::new("ec-1");
    let rsa = RsaSigner::new("rsa-1");
    let s = setup(vec![ec.jwk.clone(), rsa.jwk.clone()], "[ES256, RS256]", "", "").await;
    let rs256 =
        |kid: &str| jws(&json!({"alg": "RS256", "typ": "at+jwt", "kid": kid}), &claims(json!({})), |m| rsa.sign(m));
    let hs256 = |kid: &str| {
        jws(&json!({"alg": "HS256", "typ": "at+jwt", "kid": kid}), &claims(json!({})), |m| {
            hmac_sha256(rsa.public_pem, m)
        })
    };
    let es256_on_rsa_kid =
        jws(&json!({"alg": "ES256", "typ": "at+jwt", "kid": "rsa-1"}), &claims(json!({})), |m| ec.sign(m));
    for (name, token, reason) in [
        ("RS256 token naming the EC key", rs256("ec-1"), "key_mismatch"),
        ("ES256 token naming the RSA key", es256_on_rsa_kid, "key_mismatch"),
        ("HS256 with the RSA public key as secret", hs256("rsa-1"), "alg_not_allowed"),
    ] {
        let before = rejections(&s.gw.metrics().await, reason);
        let (status, headers, _) = get(&s.gw.url, Some(&token)).await;
        assert_eq!(status, 401, "{name}");
        assert_eq!(headers.get("www-authenticate").unwrap(), INVALID_TOKEN, "{name}");
        assert_eq!(rejections(&s.gw.metrics().await, reason), before + 1, "{name}");
    }
    assert_eq!(s.auth_server.count(), 0);
    // A genuine RS256 token passes.
    assert_eq!(get(&s.gw.url, Some(&rs256("rsa-1"))).await.0, 200);
    assert_eq!(s.jwks.fetches(), 1);
}

#[tokio::test]
async fn unknown_kid_flood_makes_at_most_one_jwks_fetch() {
    let ec = EcSigner::new("ec-1");
    let s = setup(vec![ec.jwk.clone()], "[ES256]", "", "").await;
    let before = s.jwks.fetches();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": format!("forged-{}", fastrand::u64(..))});
        let token = jws(&header, &claims(json!({})), |m| ec.sign(m));
        let url = s.gw.url.clone();
        tasks.push(tokio::spawn(async move { get(&url, Some(&token)).await }));
    }
    for t in tasks {
        let (status, headers, _) = t.await.unwrap();
        assert_eq!(status, 401);
        assert_eq!(headers.get("www-authenticate").unwrap(), INVALID_TOKEN);
    }
    let during = s.jwks.fetches() - before;
    eprintln!("unknown-kid flood: 100 requests -> {during} JWKS fetch(es), {} AS calls", s.auth_server.count());
    assert!(during <= 1, "{during} JWKS fetches for 100 forged kids");
    assert_eq!(s.auth_server.count(), 0);
    assert_eq!(rejections(&s.gw.metrics().await, "unknown_kid"), 100);
    let m = s.gw.metrics().await;
    assert_eq!(metric(&m, "tokex_jwks_fetches_total{outcome=\"ok\"}"), s.jwks.fetches() as u64, "{m}");
}

#[tokio::test]
async fn jwks_rotation_is_picked_up_without_restart() {
    let old = EcSigner::new("key-2025");
    let new = EcSigner::new("key-2026");
    let s = setup(vec![old.jwk.clone()], "[ES256]", "", "").await;
    let old_token = old.token(&claims(json!({})));
    assert_eq!(get(&s.gw.url, Some(&old_token)).await.0, 200);
    assert_eq!(s.jwks.fetches(), 1);

    // The AS rotates: the new key is published and the old one removed.
    *s.jwks.keys.lock().unwrap() = vec![new.jwk.clone()];
    let (status, _, body) = get(&s.gw.url, Some(&new.token(&claims(json!({}))))).await;
    assert_eq!(status, 200, "a token from the new key triggers a refetch: {body}");
    assert_eq!(s.jwks.fetches(), 2);

    // The old key is gone: its tokens are refused, even one whose exchange is cached.
    let (status, headers, _) = get(&s.gw.url, Some(&old_token)).await;
    assert_eq!(status, 401);
    assert_eq!(headers.get("www-authenticate").unwrap(), INVALID_TOKEN);
    assert_eq!(s.auth_server.count(), 2, "no exchange for the refused token");
    assert_eq!(s.jwks.fetches(), 2, "within the cooldown: no refetch for the old kid");
}

#[tokio::test]
async fn jwks_refresh_follows_max_age_within_bounds() {
    let ec = EcSigner::new("ec-1");
    let jwks = JwksServer::start(vec![ec.jwk.clone()]).await;
    *jwks.cache_control.lock().unwrap() = "max-age=0";
    let backend = echo_backend().await;
    let auth_server = RecordingAs::start().await;
    // max-age=0 is clamped up to the 1 s floor: about one fetch per second, not a busy loop.
    let yaml = jwt_inbound(&jwks.uri(), "[ES256]", "    jwks_refresh_min: 1s\n    jwks_refresh_max: 2s\n")
        + &config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("orders", "/", backend, ""));
    let gw = TestGateway::start(&yaml).await;
    assert!(ready(&gw, Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let n = jwks.fetches();
    assert!((3..=4).contains(&n), "{n} fetches in 2.5 s with a 1 s floor");
    // A long max-age is clamped down to the 2 s ceiling.
    *jwks.cache_control.lock().unwrap() = "max-age=86400";
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let m = jwks.fetches() - n;
    assert!((1..=3).contains(&m), "{m} fetches in 4.5 s with a 2 s ceiling");
    gw.running.shutdown().await;
    let after = jwks.fetches();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(jwks.fetches(), after, "the refresh task stops on shutdown");
}

#[tokio::test]
async fn reload_keeps_unchanged_keys_and_follows_a_changed_jwks_uri() {
    let a = EcSigner::new("a");
    let b = EcSigner::new("b");
    let s = setup(vec![a.jwk.clone()], "[ES256]", "", "").await;
    let other = JwksServer::start(vec![b.jwk.clone()]).await;
    let dir = std::env::temp_dir().join(format!("tokex-inbound-reload-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokex.yaml");
    let listen = "listen: { address: \"127.0.0.1:0\" }\n";

    std::fs::write(&path, format!("{listen}{}", s.yaml)).unwrap();
    assert!(s.gw.running.reload(&path, "test"));
    assert_eq!(get(&s.gw.url, Some(&a.token(&claims(json!({}))))).await.0, 200);
    assert_eq!(s.jwks.fetches(), 1, "an unchanged inbound section keeps its keys");

    std::fs::write(&path, format!("{listen}{}", s.yaml.replace(&s.jwks.uri(), &other.uri()))).unwrap();
    assert!(s.gw.running.reload(&path, "test"));
    let (status, _, body) = get(&s.gw.url, Some(&b.token(&claims(json!({}))))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(&s.gw.url, Some(&a.token(&claims(json!({}))))).await.0, 401);
    assert!(ready(&s.gw, Duration::from_secs(1)).await);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn not_ready_until_the_jwks_is_fetched() {
    let ec = EcSigner::new("ec-1");
    let auth_server = RecordingAs::start().await;
    let jwks = JwksServer::start(vec![ec.jwk.clone()]).await;
    jwks.up.store(false, Ordering::SeqCst);
    let backend = echo_backend().await;
    let yaml = jwt_inbound(&jwks.uri(), "[ES256]", "    jwks_refresh_min: 1s\n")
        + &config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("orders", "/", backend, ""));
    let gw = TestGateway::start(&yaml).await;

    assert!(!ready(&gw, Duration::from_millis(1500)).await, "ready while the JWKS server is down");
    assert!(jwks.fetches() >= 2, "retries while down: {}", jwks.fetches());
    // Meanwhile tokens cannot be checked: 503, and nothing reaches the AS.
    let (status, headers, _) = get(&gw.url, Some(&ec.token(&claims(json!({}))))).await;
    assert_eq!(status, 503);
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    assert_eq!(auth_server.count(), 0);
    let m = gw.metrics().await;
    assert!(metric(&m, "tokex_jwks_fetches_total{outcome=\"unreachable\"}") >= 2, "{m}");

    jwks.up.store(true, Ordering::SeqCst);
    assert!(ready(&gw, Duration::from_secs(5)).await, "not ready after the JWKS server came up");
    assert_eq!(get(&gw.url, Some(&ec.token(&claims(json!({}))))).await.0, 200);
    gw.running.shutdown().await;
}

#[tokio::test]
async fn require_scopes_reads_scope_and_scp() {
    let ec = EcSigner::new("ec-1");
    let s = setup(vec![ec.jwk.clone()], "[ES256]", "", "    require_scopes: [orders:read, orders:list]\n").await;
    let both = "orders:read orders:list";
    for (name, extra, want) in [
        ("scope string with both", json!({"scope": format!("profile {both}")}), 200),
        ("scp array with both", json!({"scope": null, "scp": ["orders:list", "orders:read"]}), 200),
        ("scope string missing one", json!({"scope": "orders:read profile"}), 403),
        ("scp array missing one", json!({"scope": null, "scp": ["orders:read"]}), 403),
        ("no scope at all", json!({"scope": null}), 403),
    ] {
        let before = s.auth_server.count();
        let (status, headers, body) = get(&s.gw.url, Some(&ec.token(&claims(extra)))).await;
        assert_eq!(status, want, "{name}: {body}");
        if want == 403 {
            assert_eq!(
                headers.get("www-authenticate").unwrap(),
                "Bearer realm=\"tokex\", error=\"insufficient_scope\", scope=\"orders:read orders:list\"",
                "{name}"
            );
            assert_eq!(s.auth_server.count(), before, "{name}: the AS was called");
        }
    }
    assert_eq!(rejections(&s.gw.metrics().await, "insufficient_scope"), 3);
}

/// A recording AS that also answers RFC 7662 introspection at `/introspect`:
/// tokens `active-*` are active (scope `orders:read`, `exp` per the suffix
/// `-ttlN`, default 600 s), anything else inactive.
fn introspecting(auth_server: &RecordingAs) {
    auth_server.set(|r, n| {
        if r.path != "/introspect" {
            return issue(n);
        }
        let token = r.param("token").unwrap_or_default();
        if !token.starts_with("active-") {
            return Reply::Json(200, json!({"active": false}));
        }
        let ttl = token.rsplit_once("-ttl").and_then(|(_, n)| n.parse::<u64>().ok()).unwrap_or(600);
        Reply::Json(200, json!({"active": true, "scope": "orders:read", "exp": now() + ttl, "sub": "alice"}))
    });
}

fn introspections(auth_server: &RecordingAs) -> usize {
    auth_server.requests().iter().filter(|r| r.path == "/introspect").count()
}

async fn introspection_gateway(auth_server: &RecordingAs, endpoint: &str, route_extra: &str) -> TestGateway {
    let backend = echo_backend().await;
    let yaml = format!(
        "inbound:\n  introspection:\n    endpoint: {endpoint}\n    client_auth: {BASIC_AUTH}\n    cache_ttl: 30s\n    timeout: 1s\n"
    ) + &config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("orders", "/", backend, route_extra));
    TestGateway::start(&yaml).await
}

#[tokio::test]
async fn introspection_active_is_forwarded_and_cached() {
    let auth_server = RecordingAs::start().await;
    introspecting(&auth_server);
    let endpoint = format!("http://{}/introspect", auth_server.addr);
    let gw = introspection_gateway(&auth_server, &endpoint, "    require_scopes: [orders:read]\n").await;
    assert!(ready(&gw, Duration::from_secs(2)).await);

    let (status, _, body) = get(&gw.url, Some("active-alice")).await;
    assert_eq!(status, 200, "{body}");
    let r = auth_server.requests().into_iter().find(|r| r.path == "/introspect").unwrap();
    assert_eq!(r.param("token"), Some("active-alice"));
    assert_eq!(r.param("token_type_hint"), Some("access_token"));
    assert_eq!(r.basic(), Some(("tokex".into(), "s3cret".into())), "the exchange's client authentication");
    assert!(!body.contains("active-alice"), "the caller's token reached the backend");

    // The second call uses the cached answer: no introspection request.
    assert_eq!(get(&gw.url, Some("active-alice")).await.0, 200);
    assert_eq!(introspections(&auth_server), 1);
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "tokex_introspections_total{outcome=\"active\"}"), 1, "{m}");
}

#[tokio::test]
async fn introspection_inactive_is_401_without_an_exchange() {
    let auth_server = RecordingAs::start().await;
    introspecting(&auth_server);
    let gw = introspection_gateway(&auth_server, &format!("http://{}/introspect", auth_server.addr), "").await;
    for _ in 0..3 {
        let (status, headers, _) = get(&gw.url, Some("revoked-token")).await;
        assert_eq!(status, 401);
        assert_eq!(headers.get("www-authenticate").unwrap(), INVALID_TOKEN);
    }
    assert_eq!(introspections(&auth_server), 1, "inactive answers are remembered briefly");
    assert_eq!(auth_server.count(), 1, "no token exchange");
    assert_eq!(rejections(&gw.metrics().await, "inactive"), 3);
}

#[tokio::test]
async fn introspection_cache_ends_with_the_token() {
    let auth_server = RecordingAs::start().await;
    introspecting(&auth_server);
    let gw = introspection_gateway(&auth_server, &format!("http://{}/introspect", auth_server.addr), "").await;
    // exp is 2 s away (whole seconds): the answer is cached at most that long, not cache_ttl (30 s).
    assert_eq!(get(&gw.url, Some("active-short-ttl2")).await.0, 200);
    assert_eq!(get(&gw.url, Some("active-short-ttl2")).await.0, 200);
    assert_eq!(introspections(&auth_server), 1);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(get(&gw.url, Some("active-short-ttl2")).await.0, 200);
    assert_eq!(introspections(&auth_server), 2, "the cached answer outlived the token's exp");
}

#[tokio::test]
async fn introspection_scope_and_unreachable_endpoint() {
    let auth_server = RecordingAs::start().await;
    introspecting(&auth_server);
    let gw = introspection_gateway(
        &auth_server,
        &format!("http://{}/introspect", auth_server.addr),
        "    require_scopes: [orders:write]\n",
    )
    .await;
    let (status, headers, _) = get(&gw.url, Some("active-bob")).await;
    assert_eq!(status, 403, "the scope comes from the introspection answer");
    assert_eq!(
        headers.get("www-authenticate").unwrap(),
        "Bearer realm=\"tokex\", error=\"insufficient_scope\", scope=\"orders:write\""
    );
    assert_eq!(auth_server.count(), 1, "only the introspection request");

    // An endpoint nobody listens on: 503 with Retry-After, like the exchange.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = introspection_gateway(&auth_server, &format!("http://{closed}/introspect"), "").await;
    let (status, headers, _) = get(&gw.url, Some("active-carol")).await;
    assert_eq!(status, 503);
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    assert_eq!(auth_server.count(), 1);
}

#[tokio::test]
async fn dev_sts_tokens_pass_inbound_validation_end_to_end() {
    use tokex::dev_sts::{self, ClientSpec, DevStsConfig};
    let cfg = DevStsConfig {
        clients: vec![ClientSpec::parse_flag("id=gw,secret=s3cret,audiences=orders-api,scopes=orders:read").unwrap()],
        ..DevStsConfig::default()
    };
    let sts = dev_sts::start(cfg, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
    let backend = echo_backend().await;
    let yaml = format!(
        "inbound:\n  jwt:\n    issuer: {}\n    jwks_uri: {}\n    audiences: [edge]\n    algorithms: [ES256]\n    require_typ: at+jwt\n",
        sts.issuer(),
        sts.jwks_uri()
    ) + &config_with(
        &sts.token_endpoint(),
        "{ method: client_secret_basic, client_id: gw, client_secret: s3cret }",
        &format!(
            "  - name: orders\n    match: {{ path_prefix: / }}\n    upstream: http://{backend}\n    require_scopes: [orders:read]\n    exchange:\n      authorization_server: corp\n      audience: [orders-api]\n      scope: [orders:read]\n"
        ),
    );
    let gw = TestGateway::start(&yaml).await;
    assert!(ready(&gw, Duration::from_secs(5)).await);
    let ttl = Duration::from_secs(300);
    let (status, _, body) = get(&gw.url, Some(&sts.mint("alice", &["orders:read", "profile"], &["edge"], ttl))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sts.exchange_count(), 1);
    let (status, _, _) = get(&gw.url, Some(&sts.mint("alice", &["orders:read"], &["elsewhere"], ttl))).await;
    assert_eq!(status, 401);
    let (status, _, _) = get(&gw.url, Some(&sts.mint("alice", &["profile"], &["edge"], ttl))).await;
    assert_eq!(status, 403);
    assert_eq!(sts.exchange_count(), 1, "refused tokens never reach the AS");
}

/// `inbound.jwt.authorization_server`: the JWKS URL and the issuer come from
/// the RFC 8414 metadata of an `issuer:` server; nothing is ready before it.
#[tokio::test]
async fn jwks_from_a_discovered_authorization_server() {
    use tokex::dev_sts::{self, ClientSpec, DevStsConfig};
    let cfg = DevStsConfig {
        clients: vec![ClientSpec::parse_flag("id=gw,secret=s3cret,audiences=orders-api,scopes=orders:read").unwrap()],
        ..DevStsConfig::default()
    };
    let sts = dev_sts::start(cfg, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
    let other = dev_sts::start(DevStsConfig::default(), tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await
        .unwrap();
    let backend = echo_backend().await;
    let yaml = format!(
        "inbound:\n  jwt:\n    authorization_server: corp\n    audiences: [edge]\n    algorithms: [ES256]\n\
         authorization_servers:\n  corp:\n    issuer: {}\n    client_auth: {{ method: client_secret_basic, client_id: gw, client_secret: s3cret }}\n\
         routes:\n  - name: orders\n    upstream: http://{backend}\n    exchange: {{ authorization_server: corp, audience: [orders-api], scope: [orders:read] }}\n",
        sts.issuer()
    );
    let gw = TestGateway::start(&yaml).await;
    assert!(ready(&gw, Duration::from_secs(10)).await, "discovery, then the JWKS, then ready");
    let ttl = Duration::from_secs(300);
    let (status, _, body) = get(&gw.url, Some(&sts.mint("alice", &["orders:read"], &["edge"], ttl))).await;
    assert_eq!(status, 200, "{body}");
    // Signed by another issuer's key: refused locally, the AS never sees it.
    let (status, headers, _) = get(&gw.url, Some(&other.mint("alice", &["orders:read"], &["edge"], ttl))).await;
    assert_eq!(status, 401);
    assert!(headers["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    assert_eq!(sts.exchange_count(), 1);
}

#[test]
fn discovered_jwks_needs_an_issuer_server() {
    let yaml =
        "listen: { address: \"127.0.0.1:0\" }\ninbound:\n  jwt: { authorization_server: corp, audiences: [edge] }\n\
                authorization_servers:\n  corp: { token_endpoint: \"http://127.0.0.1:1/token\" }\n\
                routes:\n  - name: r\n    upstream: http://127.0.0.1:2\n    exchange: { authorization_server: corp }\n";
    let err = tokex::config::parse(yaml).unwrap_err().to_string();
    assert!(err.contains("inbound.jwt.authorization_server") && err.contains("set jwks_uri instead"), "{err}");
    let both = yaml.replace(
        "authorization_server: corp, audiences",
        "authorization_server: corp, jwks_uri: \"http://x/j\", audiences",
    );
    assert!(tokex::config::parse(&both).unwrap_err().to_string().contains("not both"));
}

/// `inbound.introspection.authorization_server`: the introspection endpoint
/// comes from the discovered metadata.
#[tokio::test]
async fn introspection_endpoint_from_a_discovered_authorization_server() {
    let auth_server = RecordingAs::start().await;
    let issuer = format!("http://{}", auth_server.addr);
    let meta = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/token"),
        "introspection_endpoint": format!("{issuer}/introspect"),
    });
    auth_server.set(move |r, n| match r.path.as_str() {
        "/.well-known/oauth-authorization-server" => Reply::Json(200, meta.clone()),
        "/introspect" if r.param("token") == Some("good") => {
            Reply::Json(200, serde_json::json!({"active": true, "scope": "orders:read", "exp": now() + 60}))
        }
        "/introspect" => Reply::Json(200, serde_json::json!({"active": false})),
        _ => issue(n),
    });
    let backend = echo_backend().await;
    let yaml = format!(
        "inbound:\n  introspection:\n    authorization_server: corp\n    client_auth: {{ method: client_secret_post, client_id: tokex, client_secret: s3cret }}\n\
         authorization_servers:\n  corp:\n    issuer: {issuer}\n    client_auth: {BASIC_AUTH}\n\
         routes:\n  - name: orders\n    upstream: http://{backend}\n    require_scopes: [orders:read]\n    exchange: {{ authorization_server: corp, audience: [orders-api] }}\n"
    );
    let gw = TestGateway::start(&yaml).await;
    assert!(ready(&gw, Duration::from_secs(10)).await);
    assert_eq!(get(&gw.url, Some("good")).await.0, 200);
    assert_eq!(get(&gw.url, Some("bad")).await.0, 401);
    let paths: Vec<String> = auth_server.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.iter().filter(|p| *p == "/introspect").count(), 2, "{paths:?}");
    assert_eq!(paths.iter().filter(|p| *p == "/token").count(), 1, "only the active token is exchanged: {paths:?}");
    let introspected = auth_server.requests().into_iter().find(|r| r.path == "/introspect").unwrap();
    assert_eq!(introspected.param("client_id"), Some("tokex"));
}
