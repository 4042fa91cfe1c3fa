//! A dev-sts for tests of its endpoints: the clients they share, a form
//! POST with each client authentication, and a `private_key_jwt` key.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use tokex::dev_sts::{self, ClientSpec, DevSts, DevStsConfig, TrustedIssuer, JWT_BEARER};
use tokio::net::TcpListener;

use super::{client, now};

pub const GW_SECRET: &str = "gw-secret";

/// `tokex`: the gateway's client (orders-api, orders:read); the clients of
/// `more` (`--client` flags); `bot`: private_key_jwt, when a key is given;
/// served under `issuer_path` when not empty.
pub async fn start(bot_key_pem: Option<String>, issuer_path: &str, more: &[&str]) -> DevSts {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut clients =
        vec![ClientSpec::parse_flag(&format!("id=tokex,secret={GW_SECRET},audiences=orders-api,scopes=orders:read"))
            .unwrap()];
    clients.extend(more.iter().map(|flag| ClientSpec::parse_flag(flag).unwrap()));
    if let Some(pem) = bot_key_pem {
        clients.push(ClientSpec { id: "bot".into(), public_key_pem: Some(pem), ..Default::default() });
    }
    let issuer = (!issuer_path.is_empty()).then(|| format!("http://{addr}{issuer_path}"));
    dev_sts::start(DevStsConfig { issuer, clients, ..Default::default() }, listener).await.unwrap()
}

/// A dev-sts with exactly `clients`, accepting `jwt-bearer` assertions of
/// `trusted` issuers, issuing tokens for `expires_in`.
pub async fn start_trusting(
    clients: Vec<ClientSpec>,
    trusted: Vec<TrustedIssuer>,
    expires_in: std::time::Duration,
) -> DevSts {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = DevStsConfig { clients, trusted_issuers: trusted, expires_in, ..Default::default() };
    dev_sts::start(cfg, listener).await.unwrap()
}

/// `sts` as a trusted issuer: its issuer and its JWKS URL.
pub fn trust(sts: &DevSts) -> TrustedIssuer {
    TrustedIssuer { issuer: sts.issuer().to_owned(), jwks_uri: sts.jwks_uri() }
}

pub enum Auth<'a> {
    Basic(&'a str, &'a str),
    Post(&'a str, &'a str),
    Assertion(String),
    None,
}

/// The gateway client, with client_secret_basic.
pub fn gw() -> Auth<'static> {
    Auth::Basic("tokex", GW_SECRET)
}

/// Posts `form` to `url` with `auth`; the status, headers and body text.
pub async fn post(url: &str, auth: Auth<'_>, form: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
    post_with(url, auth, form, &[]).await
}

/// Like [`post`], with extra request headers (e.g. `DPoP`).
pub async fn post_with(
    url: &str,
    auth: Auth<'_>,
    form: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form {
        ser.append_pair(k, v);
    }
    let mut req = client().post(url).header("content-type", "application/x-www-form-urlencoded");
    match auth {
        Auth::Basic(id, secret) => {
            req = req.header("authorization", format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))))
        }
        Auth::Post(id, secret) => {
            ser.append_pair("client_id", id).append_pair("client_secret", secret);
        }
        Auth::Assertion(a) => {
            ser.append_pair("client_assertion_type", JWT_BEARER).append_pair("client_assertion", &a);
        }
        Auth::None => {}
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.body(ser.finish()).send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, headers, resp.text().await.unwrap())
}

/// An ES256 client key: (PKCS#8 DER, SPKI PEM).
pub fn client_key() -> (Vec<u8>, String) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    // SubjectPublicKeyInfo for id-ecPublicKey / prime256v1, then the point.
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
        0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(kp.public_key().as_ref());
    let pem = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", STANDARD.encode(&spki));
    (pkcs8.as_ref().to_vec(), pem)
}

/// An ES256 JWS of `claims` with `key` (PKCS#8 DER).
pub fn signed(key: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &EncodingKey::from_ec_der(key)).unwrap()
}

/// `bot`'s client assertion for `aud`, valid for a minute.
pub fn assertion(key: &[u8], aud: &str, jti: &str) -> String {
    signed(key, &json!({"iss": "bot", "sub": "bot", "aud": aud, "exp": now() + 60, "jti": jti}))
}

/// A `private_key_jwt` assertion of client `id` for `aud`, valid for a
/// minute, with a fresh `jti`.
pub fn client_assertion(key: &[u8], id: &str, aud: &str) -> String {
    let jti = format!("{:032x}", fastrand::u128(..));
    signed(key, &json!({"iss": id, "sub": id, "aud": aud, "exp": now() + 60, "jti": jti}))
}
