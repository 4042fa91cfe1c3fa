//! JWT test helpers: signers (EC generated per test, the committed RSA
//! key), compact JWS built by hand (so any header or claim can be forged),
//! a JWKS endpoint that can go down or hang, and a gateway set up with
//! inbound JWT validation.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::{Request, Response};
use hyper::body::Incoming;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256};
use serde_json::{json, Value};

use super::*;

pub const ISS: &str = "https://issuer.test";
pub const INVALID_TOKEN: &str = "Bearer realm=\"tokex\", error=\"invalid_token\"";

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact JWS with any header, signed by `sign` over `header.payload`.
pub fn jws(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let sig = sign(input.as_bytes());
    format!("{input}.{}", b64(sig))
}

/// Valid claims for the test issuer and audience `edge`; `extra` overrides
/// (a `null` value removes the claim).
pub fn claims(extra: Value) -> Value {
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

pub struct EcSigner {
    pub kid: String,
    pub kp: EcdsaKeyPair,
    pub jwk: Value,
}

impl EcSigner {
    pub fn new(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let p = kp.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65]), "kid": kid, "alg": "ES256", "use": "sig"});
        EcSigner { kid: kid.to_owned(), kp, jwk }
    }

    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.kp.sign(&SystemRandom::new(), msg).unwrap().as_ref().to_vec()
    }

    pub fn header(&self) -> Value {
        json!({"alg": "ES256", "typ": "at+jwt", "kid": self.kid})
    }

    pub fn token(&self, claims: &Value) -> String {
        jws(&self.header(), claims, |m| self.sign(m))
    }
}

/// The committed test RSA key (tests/keys/, generated once with openssl).
pub struct RsaSigner {
    pub kid: String,
    pub kp: RsaKeyPair,
    pub jwk: Value,
    pub public_pem: &'static [u8],
}

impl RsaSigner {
    pub fn new(kid: &str) -> Self {
        let pem = include_str!("../keys/rsa-2048.pem");
        let der = STANDARD.decode(pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>()).unwrap();
        let kp = RsaKeyPair::from_pkcs8(&der).unwrap();
        let c: ring::rsa::PublicKeyComponents<Vec<u8>> = kp.public().into();
        let jwk = json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e), "kid": kid, "use": "sig"});
        RsaSigner { kid: kid.to_owned(), kp, jwk, public_pem: include_bytes!("../keys/rsa-2048.pub.pem") }
    }

    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let mut sig = vec![0; self.kp.public().modulus_len()];
        self.kp.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut sig).unwrap();
        sig
    }
}

pub fn hmac_sha256(secret: &[u8], msg: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::sign(&key, msg).as_ref().to_vec()
}

/// A JWKS endpoint that counts its fetches and can be switched off (503).
#[derive(Clone)]
pub struct JwksServer {
    pub addr: std::net::SocketAddr,
    pub fetches: Arc<AtomicUsize>,
    pub keys: Arc<Mutex<Vec<Value>>>,
    pub up: Arc<AtomicBool>,
    pub cache_control: Arc<Mutex<&'static str>>,
    /// While set, requests wait a minute before they are answered.
    pub hang: Arc<AtomicBool>,
}

impl JwksServer {
    pub async fn start(keys: Vec<Value>) -> Self {
        let fetches = Arc::new(AtomicUsize::new(0));
        let keys = Arc::new(Mutex::new(keys));
        let up = Arc::new(AtomicBool::new(true));
        let cache_control = Arc::new(Mutex::new("public, max-age=3600"));
        let hang = Arc::new(AtomicBool::new(false));
        let (f, k, u, cc, hg) = (fetches.clone(), keys.clone(), up.clone(), cache_control.clone(), hang.clone());
        let addr = serve(move |_req: Request<Incoming>| {
            let (f, k, u, cc, hg) = (f.clone(), k.clone(), u.clone(), cc.clone(), hg.clone());
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                if hg.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
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
        JwksServer { addr, fetches, keys, up, cache_control, hang }
    }

    pub fn uri(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

pub fn jwt_inbound(jwks_uri: &str, algorithms: &str, extra: &str) -> String {
    format!(
        "inbound:\n  jwt:\n    issuer: {ISS}\n    jwks_uri: {jwks_uri}\n    audiences: [edge, other-edge]\n    algorithms: {algorithms}\n    leeway: 5s\n    require_typ: at+jwt\n{extra}"
    )
}

pub async fn ready(gw: &TestGateway, within: Duration) -> bool {
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
pub fn metric(text: &str, line_prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_prefix) && l[line_prefix.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn rejections(text: &str, reason: &str) -> u64 {
    metric(text, &format!("tokex_inbound_rejections_total{{reason=\"{reason}\"}}"))
}

pub struct Setup {
    pub auth_server: RecordingAs,
    pub jwks: JwksServer,
    pub gw: TestGateway,
    /// The configuration the gateway runs (without `listen`/`admin`).
    pub yaml: String,
}

pub async fn setup(keys: Vec<Value>, algorithms: &str, jwt_extra: &str, route_extra: &str) -> Setup {
    let auth_server = RecordingAs::start().await;
    let jwks = JwksServer::start(keys).await;
    let backend = echo_backend().await;
    let yaml = jwt_inbound(&jwks.uri(), algorithms, jwt_extra)
        + &config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("orders", "/", backend, route_extra));
    let gw = TestGateway::start(&yaml).await;
    assert!(ready(&gw, Duration::from_secs(5)).await, "gateway not ready after the first JWKS fetch");
    Setup { auth_server, jwks, gw, yaml }
}
