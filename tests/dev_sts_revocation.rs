//! Revocation at the dev-sts: `POST /revoke` (RFC 7009) with the client
//! authentication of `/token`, revoked tokens refused at the next
//! exchange, `DevSts::revoke_subject`, and the metadata's
//! `revocation_endpoint`.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use http::{HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokex::dev_sts::{self, ClientSpec, DevSts, DevStsConfig, RevocationRecord, ACCESS_TOKEN_TYPE, JWT_BEARER};
use tokio::net::TcpListener;

const GW_SECRET: &str = "gw-secret";
const HOUR: Duration = Duration::from_secs(3600);

/// `tokex`: the gateway's client (orders-api, orders:read); `other`: a
/// second client with a secret; `bot`: private_key_jwt, when a key is given.
async fn start(bot_key_pem: Option<String>, issuer_path: &str) -> DevSts {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut clients = vec![
        ClientSpec::parse_flag(&format!("id=tokex,secret={GW_SECRET},audiences=orders-api,scopes=orders:read"))
            .unwrap(),
        ClientSpec::parse_flag("id=other,secret=other-secret").unwrap(),
    ];
    if let Some(pem) = bot_key_pem {
        clients.push(ClientSpec { id: "bot".into(), public_key_pem: Some(pem), ..Default::default() });
    }
    let issuer = (!issuer_path.is_empty()).then(|| format!("http://{addr}{issuer_path}"));
    dev_sts::start(DevStsConfig { issuer, clients, ..Default::default() }, listener).await.unwrap()
}

enum Auth<'a> {
    Basic(&'a str, &'a str),
    Post(&'a str, &'a str),
    Assertion(String),
    None,
}

/// Posts `form` to `url` with `auth`; the status, headers and body text.
async fn post(url: &str, auth: Auth<'_>, form: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
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
    let resp = req.body(ser.finish()).send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, headers, resp.text().await.unwrap())
}

fn gw() -> Auth<'static> {
    Auth::Basic("tokex", GW_SECRET)
}

async fn revoke(sts: &DevSts, auth: Auth<'_>, form: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
    post(&sts.revocation_endpoint(), auth, form).await
}

fn assert_error(got: &(StatusCode, HeaderMap, String), status: u16, code: &str) -> Value {
    let body: Value = serde_json::from_str(&got.2).unwrap_or_else(|_| panic!("not JSON: {}", got.2));
    assert_eq!(got.0.as_u16(), status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(body["error_description"].is_string(), "{body}");
    body
}

/// A token exchange by the gateway client: `(status, body)`.
async fn exchange(sts: &DevSts, subject: &str, actor: Option<&str>) -> (StatusCode, Value) {
    let mut form = vec![
        ("grant_type", dev_sts::TOKEN_EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
        ("audience", "orders-api"),
    ];
    if let Some(a) = actor {
        form.extend([("actor_token", a), ("actor_token_type", ACCESS_TOKEN_TYPE)]);
    }
    let (status, _, text) = post(&sts.token_endpoint(), gw(), &form).await;
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")))
}

fn refused_grant(got: &(StatusCode, Value), why: &str) {
    assert_eq!(got.0, 400, "{}", got.1);
    assert_eq!(got.1["error"], "invalid_grant", "{}", got.1);
    assert_eq!(got.1["error_description"], why, "{}", got.1);
}

fn sha256_hex(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn user(sts: &DevSts, sub: &str) -> String {
    sts.mint(sub, &["orders:read"], &["tokex"], HOUR)
}

/// A P-256 key pair: PKCS#8 DER (to sign assertions) and the public PEM.
fn client_key() -> (Vec<u8>, String) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
        0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(kp.public_key().as_ref());
    let pem = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", STANDARD.encode(&spki));
    (pkcs8.as_ref().to_vec(), pem)
}

fn assertion(key: &[u8], aud: &str, jti: &str) -> String {
    let claims = json!({"iss": "bot", "sub": "bot", "aud": aud, "exp": now() + 60, "jti": jti});
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &EncodingKey::from_ec_der(key)).unwrap()
}

// ---------------------------------------------------------------------------
// POST /revoke

#[tokio::test]
async fn a_revoked_token_is_refused_as_subject_token_afterwards() {
    let sts = start(None, "").await;
    let alice = user(&sts, "alice");
    let bob = user(&sts, "bob");
    assert_eq!(exchange(&sts, &alice, None).await.0, 200, "usable before");

    let got = revoke(&sts, gw(), &[("token", &alice), ("token_type_hint", "access_token")]).await;
    assert_eq!(got.0, 200, "{}", got.2);
    assert_eq!(got.2, "", "RFC 7009 §2.2: an empty body");
    assert_eq!(got.1["cache-control"], "no-store");
    assert_eq!(
        sts.revocations(),
        [RevocationRecord {
            client_id: "tokex".into(),
            token_sha256_hex: sha256_hex(&alice),
            token_type_hint: Some("access_token".into()),
        }]
    );
    refused_grant(&exchange(&sts, &alice, None).await, "subject_token was revoked");
    assert_eq!(exchange(&sts, &bob, None).await.0, 200, "only that token");

    // Revoking again changes nothing; any registered client may revoke.
    assert_eq!(revoke(&sts, Auth::Post("other", "other-secret"), &[("token", &alice)]).await.0, 200);
    assert_eq!(sts.revocations().len(), 1);
    assert_eq!(sts.exchange_count(), 2);
}

#[tokio::test]
async fn a_revoked_actor_token_is_refused_too() {
    let sts = start(None, "").await;
    let alice = user(&sts, "alice");
    let agent = user(&sts, "agent-7");
    assert_eq!(exchange(&sts, &alice, Some(&agent)).await.0, 200);
    assert_eq!(revoke(&sts, gw(), &[("token", &agent)]).await.0, 200);
    refused_grant(&exchange(&sts, &alice, Some(&agent)).await, "actor_token was revoked");
    assert_eq!(exchange(&sts, &alice, None).await.0, 200, "the subject token is not revoked");
}

#[tokio::test]
async fn any_token_is_answered_200_and_recorded() {
    let sts = start(None, "").await;
    let expired = sts.mint("alice", &[], &["tokex"], Duration::ZERO);
    let foreign = fake_jwt(json!({"iss": "https://elsewhere", "sub": "alice"}));
    for (token, hint) in [("not-a-token", Some("refresh_token")), (expired.as_str(), None), (&foreign, Some("x"))] {
        let mut form = vec![("token", token)];
        form.extend(hint.map(|h| ("token_type_hint", h)));
        let got = revoke(&sts, gw(), &form).await;
        assert_eq!((got.0.as_u16(), got.2.as_str()), (200, ""), "{token}");
    }
    let got: Vec<(String, Option<String>)> =
        sts.revocations().into_iter().map(|r| (r.token_sha256_hex, r.token_type_hint)).collect();
    assert_eq!(
        got,
        [
            (sha256_hex("not-a-token"), Some("refresh_token".to_owned())),
            (sha256_hex(&expired), None),
            (sha256_hex(&foreign), Some("x".to_owned())),
        ]
    );
}

#[tokio::test]
async fn revoke_takes_the_client_authentication_of_token() {
    let (key, pem) = client_key();
    let sts = start(Some(pem), "").await;
    let token = user(&sts, "alice");
    let form = [("token", token.as_str())];
    assert_eq!(revoke(&sts, Auth::Post("tokex", GW_SECRET), &form).await.0, 200);
    // private_key_jwt: the assertion may name /revoke, /token or the issuer.
    for (aud, jti) in [(sts.revocation_endpoint(), "1"), (sts.token_endpoint(), "2"), (sts.issuer().to_owned(), "3")] {
        let got = revoke(&sts, Auth::Assertion(assertion(&key, &aud, jti)), &form).await;
        assert_eq!(got.0, 200, "{aud}: {}", got.2);
    }
    let elsewhere = assertion(&key, "https://elsewhere/revoke", "4");
    assert_error(&revoke(&sts, Auth::Assertion(elsewhere), &form).await, 401, "invalid_client");

    // Bad or missing client authentication: 401, before the form is read.
    for auth in [Auth::None, Auth::Basic("tokex", "wrong"), Auth::Post("tokex", "wrong"), Auth::Basic("nobody", "x")] {
        let got = revoke(&sts, auth, &form).await;
        assert_error(&got, 401, "invalid_client");
        assert!(got.1.contains_key("www-authenticate"));
        assert_eq!(got.1["cache-control"], "no-store");
    }
    assert_error(&revoke(&sts, Auth::None, &[]).await, 401, "invalid_client");
    let records = sts.revocations();
    assert_eq!(records.len(), 1, "one token, revoked four times");
    assert_eq!(records[0].client_id, "tokex");
}

#[tokio::test]
async fn bad_revocation_requests() {
    let sts = start(None, "").await;
    assert_error(&revoke(&sts, gw(), &[]).await, 400, "invalid_request");
    assert_error(&revoke(&sts, gw(), &[("token_type_hint", "access_token")]).await, 400, "invalid_request");
    assert_error(&revoke(&sts, gw(), &[("token", "")]).await, 400, "invalid_request");
    assert_error(&revoke(&sts, gw(), &[("token", "a"), ("token", "b")]).await, 400, "invalid_request");
    let long_hint = "h".repeat(129);
    assert_error(&revoke(&sts, gw(), &[("token", "a"), ("token_type_hint", &long_hint)]).await, 400, "invalid_request");
    assert!(sts.revocations().is_empty());

    let resp = client().get(sts.revocation_endpoint()).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.headers()["allow"].to_str().unwrap()), (405, "POST"));
    let json = client()
        .post(sts.revocation_endpoint())
        .basic_auth("tokex", Some(GW_SECRET))
        .header("content-type", "application/json")
        .body(r#"{"token":"a"}"#)
        .send();
    assert_eq!(json.await.unwrap().status(), 400);
    let big = format!("token=a&pad={}", "x".repeat(dev_sts::MAX_FORM_BYTES));
    let resp = client()
        .post(sts.revocation_endpoint())
        .basic_auth("tokex", Some(GW_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(big)
        .send();
    assert_eq!(resp.await.unwrap().status(), 413);
    assert!(sts.revocations().is_empty());
}

#[tokio::test]
async fn the_metadata_advertises_the_revocation_endpoint() {
    let sts = start(None, "/dev").await;
    assert!(sts.revocation_endpoint().ends_with("/dev/revoke"), "{}", sts.revocation_endpoint());
    let url = format!("http://{}/.well-known/oauth-authorization-server/dev", sts.addr());
    let meta: Value = serde_json::from_str(&client().get(url).send().await.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(meta["revocation_endpoint"], sts.revocation_endpoint());
    assert_eq!(
        meta["revocation_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post", "private_key_jwt"])
    );
    assert_eq!(meta["revocation_endpoint_auth_signing_alg_values_supported"][0], "ES256");
    assert!(!meta.to_string().contains("ssf"), "/ssf/emit is not advertised: {meta}");

    // Served under the issuer's path and at the root, like /token.
    let token = user(&sts, "alice");
    assert_eq!(revoke(&sts, gw(), &[("token", &token)]).await.0, 200);
    let root = format!("http://{}/revoke", sts.addr());
    assert_eq!(post(&root, gw(), &[("token", "other")]).await.0, 200);
    assert_eq!(sts.revocations().len(), 2);
}

// ---------------------------------------------------------------------------
// DevSts::revoke_subject

#[tokio::test]
async fn a_revoked_subject_refuses_older_tokens_and_accepts_newer_ones() {
    let sts = start(None, "").await;
    let old = user(&sts, "alice");
    let bob = user(&sts, "bob");
    assert_eq!(exchange(&sts, &old, None).await.0, 200);

    sts.revoke_subject("alice");
    let revoked_by = now();
    refused_grant(&exchange(&sts, &old, None).await, "subject's session was revoked");
    assert_eq!(exchange(&sts, &bob, None).await.0, 200, "another subject is untouched");

    // `iat` is in whole seconds: a token of the revocation's second is still
    // refused; from the next second on, tokens work again.
    assert!(eventually(Duration::from_secs(3), || now() > revoked_by).await);
    let new = user(&sts, "alice");
    assert_eq!(exchange(&sts, &new, None).await.0, 200);
    refused_grant(&exchange(&sts, &old, None).await, "subject's session was revoked");

    // A token without `iat` counts as issued before the revocation.
    let mut claims = serde_json::Map::new();
    claims.insert("iat".into(), Value::Null);
    let no_iat = sts.mint_with("alice", &["orders:read"], &["tokex"], HOUR, claims).unwrap();
    refused_grant(&exchange(&sts, &no_iat, None).await, "subject's session was revoked");
    assert!(sts.revocations().is_empty(), "subject revocation is not token revocation");
}
