//! DPoP (RFC 9449) at the development authorization server, over real
//! HTTP: a good proof binds the token (`cnf.jkt`, `token_type: DPoP`) for
//! both grants; bad, replayed and misdirected proofs are refused with
//! `invalid_dpop_proof`; in nonce mode a proof without the nonce gets
//! `use_dpop_nonce` and a `DPoP-Nonce`; no proof, no change (Bearer).

mod common;

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::*;
use http::{HeaderMap, StatusCode};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use tokex::dev_sts::{self, ClientSpec, DevSts, DevStsConfig, ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE};
use tokex::dpop::{self, ProofKey};
use tokio::net::TcpListener;

const HOUR: Duration = Duration::from_secs(3600);

async fn start() -> DevSts {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clients = vec![ClientSpec::parse_flag(
        "id=gw,secret=gw-secret,audiences=orders-api|billing-api,scopes=orders:read|orders:write",
    )
    .unwrap()];
    dev_sts::start(DevStsConfig { clients, ..Default::default() }, listener).await.unwrap()
}

fn key() -> ProofKey {
    ProofKey::generate(Algorithm::ES256).unwrap()
}

/// A proof for the token endpoint: `POST`, its URL, no `ath`.
fn proof(key: &ProofKey, sts: &DevSts, nonce: Option<&str>) -> String {
    key.proof("POST", &sts.token_endpoint(), None, nonce).unwrap()
}

/// POST /token as `gw` (client_secret_basic) with these `DPoP` headers.
async fn token(sts: &DevSts, proofs: &[&str], form: &[(&str, &str)]) -> (StatusCode, HeaderMap, Value) {
    token_as(sts, ("gw", "gw-secret"), proofs, form).await
}

async fn token_as(
    sts: &DevSts,
    (id, secret): (&str, &str),
    proofs: &[&str],
    form: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Value) {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form {
        ser.append_pair(k, v);
    }
    let mut req = client()
        .post(sts.token_endpoint())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))));
    for p in proofs {
        req = req.header("dpop", *p);
    }
    let resp = req.body(ser.finish()).send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let text = resp.text().await.unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")))
}

const CC: &[(&str, &str)] = &[("grant_type", "client_credentials"), ("audience", "orders-api")];

/// Verifies `token` against the server's JWKS; returns its claims.
async fn verified_claims(sts: &DevSts, token: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwks: JwkSet = serde_json::from_str(&sts.jwks_json()).unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[sts.issuer()]);
    v.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v).expect("token verifies").claims
}

fn refused(got: &(StatusCode, HeaderMap, Value), code: &str) {
    assert_eq!(got.0, StatusCode::BAD_REQUEST, "{:?}", got.2);
    assert_eq!(got.2["error"], code, "{:?}", got.2);
    assert!(got.2["error_description"].as_str().is_some_and(|d| !d.is_empty()), "{:?}", got.2);
    assert!(got.2.get("access_token").is_none());
    assert_eq!(got.1["cache-control"], "no-store");
}

#[tokio::test]
async fn a_good_proof_binds_the_token_to_its_key() {
    let sts = start().await;
    for alg in [Algorithm::ES256, Algorithm::EdDSA] {
        let key = ProofKey::generate(alg).unwrap();
        let got = token(&sts, &[&proof(&key, &sts, None)], CC).await;
        assert_eq!(got.0, StatusCode::OK, "{:?}", got.2);
        assert_eq!(got.2["token_type"], "DPoP");
        assert!(got.1.get("dpop-nonce").is_none(), "no nonce unless demanded");
        let claims = verified_claims(&sts, got.2["access_token"].as_str().unwrap()).await;
        assert_eq!(claims["cnf"], json!({ "jkt": key.jkt() }), "{alg:?}");
        assert_eq!(claims["sub"], "gw");
    }
    sts.shutdown().await;
}

#[tokio::test]
async fn without_a_proof_the_token_is_bearer_without_cnf() {
    let sts = start().await;
    let got = token(&sts, &[], CC).await;
    assert_eq!(got.0, StatusCode::OK, "{:?}", got.2);
    assert_eq!(got.2["token_type"], "Bearer");
    assert!(got.1.get("dpop-nonce").is_none());
    let claims = verified_claims(&sts, got.2["access_token"].as_str().unwrap()).await;
    assert!(claims.get("cnf").is_none(), "{claims}");
    sts.shutdown().await;
}

#[tokio::test]
async fn a_replayed_proof_is_refused() {
    let sts = start().await;
    let key = key();
    let p = proof(&key, &sts, None);
    assert_eq!(token(&sts, &[&p], CC).await.0, StatusCode::OK);
    let again = token(&sts, &[&p], CC).await;
    refused(&again, "invalid_dpop_proof");
    assert_eq!(again.2["error_description"], "the DPoP proof was used before");
    // A fresh proof of the same key is fine.
    assert_eq!(token(&sts, &[&proof(&key, &sts, None)], CC).await.0, StatusCode::OK);
    sts.shutdown().await;
}

#[tokio::test]
async fn proofs_for_another_request_or_with_ath_are_refused() {
    let sts = start().await;
    let key = key();
    let endpoint = sts.token_endpoint();
    let other_port = format!("http://127.0.0.1:{}/token", sts.addr().port().wrapping_add(1));
    let htu = "the DPoP proof's htu is not this token endpoint";
    let cases: Vec<(String, &str)> = vec![
        (key.proof("POST", &format!("{}/mint", sts.issuer()), None, None).unwrap(), htu),
        (key.proof("POST", &other_port, None, None).unwrap(), htu),
        (key.proof("POST", &endpoint.replace("http:", "https:"), None, None).unwrap(), htu),
        (key.proof("GET", &endpoint, None, None).unwrap(), "the DPoP proof's htm is not POST"),
        (
            key.proof("POST", &endpoint, Some(&dpop::ath("some-token")), None).unwrap(),
            "a DPoP proof for the token endpoint carries no ath",
        ),
        ("not-a-proof".to_owned(), "the DPoP proof is not a well-formed JWS"),
        (
            {
                let p = proof(&key, &sts, None);
                let (rest, _) = p.rsplit_once('.').unwrap();
                format!("{rest}.{}", URL_SAFE_NO_PAD.encode([7u8; 64]))
            },
            "the DPoP proof's signature does not verify",
        ),
    ];
    for (p, why) in &cases {
        let got = token(&sts, &[p], CC).await;
        refused(&got, "invalid_dpop_proof");
        assert_eq!(got.2["error_description"], *why);
    }
    let two = token(&sts, &[&proof(&key, &sts, None), &proof(&key, &sts, None)], CC).await;
    refused(&two, "invalid_dpop_proof");
    assert_eq!(two.2["error_description"], "not exactly one DPoP header");

    // Query and a differently written host of the same endpoint are the same htu.
    let same = endpoint.replace("/token", "/token?x=1");
    assert_eq!(token(&sts, &[&key.proof("POST", &same, None, None).unwrap()], CC).await.0, StatusCode::OK);
    sts.shutdown().await;
}

#[tokio::test]
async fn client_authentication_comes_before_the_proof() {
    let sts = start().await;
    let got = token_as(&sts, ("gw", "wrong"), &["not-a-proof"], CC).await;
    assert_eq!(got.0, StatusCode::UNAUTHORIZED, "{:?}", got.2);
    assert_eq!(got.2["error"], "invalid_client");
    sts.shutdown().await;
}

#[tokio::test]
async fn nonce_mode_asks_for_the_nonce_then_accepts_it() {
    let sts = start().await;
    sts.set_dpop_nonce(true);
    let key = key();
    let first = token(&sts, &[&proof(&key, &sts, None)], CC).await;
    refused(&first, "use_dpop_nonce");
    let nonce = first.1.get("dpop-nonce").expect("DPoP-Nonce header").to_str().unwrap().to_owned();
    assert!(nonce.len() >= 16 && nonce.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(sts.dpop_nonce_challenges(), 1);

    let wrong = token(&sts, &[&proof(&key, &sts, Some("not-the-nonce"))], CC).await;
    refused(&wrong, "use_dpop_nonce");
    assert_eq!(wrong.1["dpop-nonce"], nonce.as_str());

    let retry = token(&sts, &[&proof(&key, &sts, Some(&nonce))], CC).await;
    assert_eq!(retry.0, StatusCode::OK, "{:?}", retry.2);
    assert_eq!(retry.2["token_type"], "DPoP");
    assert_eq!(retry.1["dpop-nonce"], nonce.as_str(), "success answers carry the nonce too");
    let claims = verified_claims(&sts, retry.2["access_token"].as_str().unwrap()).await;
    assert_eq!(claims["cnf"]["jkt"], key.jkt());

    // Other refusals of a request with a proof carry it as well; Bearer requests are untouched.
    let bad = token(&sts, &[&key.proof("GET", &sts.token_endpoint(), None, Some(&nonce)).unwrap()], CC).await;
    refused(&bad, "invalid_dpop_proof");
    assert_eq!(bad.1["dpop-nonce"], nonce.as_str());
    let bearer = token(&sts, &[], CC).await;
    assert_eq!((bearer.0, bearer.2["token_type"].as_str()), (StatusCode::OK, Some("Bearer")));
    assert!(bearer.1.get("dpop-nonce").is_none());

    sts.set_dpop_nonce(false);
    assert_eq!(token(&sts, &[&proof(&key, &sts, None)], CC).await.0, StatusCode::OK);
    assert_eq!(sts.dpop_nonce_challenges(), 2);
    sts.shutdown().await;
}

#[tokio::test]
async fn token_exchange_binds_to_the_requester_not_the_subject() {
    let sts = start().await;
    let (alice_key, gw_key) = (key(), key());
    let subject = sts.mint_bound("alice", &["orders:read", "orders:write"], &["tokex"], HOUR, alice_key.jkt());
    assert_eq!(verified_claims(&sts, &subject).await["cnf"]["jkt"], alice_key.jkt());
    let form = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", subject.as_str()),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
        ("audience", "orders-api"),
        ("scope", "orders:read"),
    ];

    let bound = token(&sts, &[&proof(&gw_key, &sts, None)], &form).await;
    assert_eq!(bound.0, StatusCode::OK, "{:?}", bound.2);
    assert_eq!(bound.2["token_type"], "DPoP");
    assert_eq!(bound.2["issued_token_type"], ACCESS_TOKEN_TYPE);
    let claims = verified_claims(&sts, bound.2["access_token"].as_str().unwrap()).await;
    assert_eq!(claims["cnf"], json!({ "jkt": gw_key.jkt() }), "the requester's key, not alice's");
    assert_eq!((claims["sub"].as_str(), claims["scope"].as_str()), (Some("alice"), Some("orders:read")));

    let bearer = token(&sts, &[], &form).await;
    assert_eq!(bearer.0, StatusCode::OK, "{:?}", bearer.2);
    assert_eq!(bearer.2["token_type"], "Bearer");
    let claims = verified_claims(&sts, bearer.2["access_token"].as_str().unwrap()).await;
    assert!(claims.get("cnf").is_none(), "the subject's cnf is not carried over: {claims}");
    assert_eq!(sts.exchange_count(), 2);
    sts.shutdown().await;
}

#[tokio::test]
async fn mint_with_jkt_makes_a_bound_user_token() {
    let sts = start().await;
    let key = key();
    let body = format!("sub=alice&aud=tokex&scope=orders%3Aread&jkt={}", key.jkt());
    let resp = client()
        .post(sts.mint_endpoint())
        .basic_auth("gw", Some("gw-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(answer["token_type"], "DPoP");
    let claims = verified_claims(&sts, answer["access_token"].as_str().unwrap()).await;
    assert_eq!(claims["cnf"]["jkt"], key.jkt());
    assert_eq!(claims["sub"], "alice");

    let resp = client()
        .post(sts.mint_endpoint())
        .basic_auth("gw", Some("gw-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("sub=alice&aud=tokex&jkt=nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    sts.shutdown().await;
}

#[tokio::test]
async fn metadata_advertises_the_proof_algorithms() {
    let sts = start().await;
    let url = format!("{}/.well-known/oauth-authorization-server", sts.issuer());
    let meta: Value = serde_json::from_str(&client().get(url).send().await.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(meta["dpop_signing_alg_values_supported"], json!(["ES256", "ES384", "EdDSA", "RS256", "PS256"]));
    sts.shutdown().await;
}

#[tokio::test]
async fn dev_sts_command_demands_nonces_with_the_flag() {
    let sts = common::process::DevStsProcess::start(
        &["--dpop-nonce", "--client", "id=demo,secret=demo-secret,audiences=orders-api,scopes=orders:read"],
        |line| line.contains("curl "),
    )
    .await;
    let text = sts.banner.join("\n");
    assert!(text.contains("  dpop            proofs at /token bind the token to their key (ES256 ES384 EdDSA RS256 PS256); nonces demanded"), "{text}");
    let endpoint = format!("http://127.0.0.1:{}/token", sts.port);
    let key = key();
    let ask = |proof: String| {
        client()
            .post(&endpoint)
            .basic_auth("demo", Some("demo-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("dpop", proof)
            .body("grant_type=client_credentials")
            .send()
    };
    let first = ask(key.proof("POST", &endpoint, None, None).unwrap()).await.unwrap();
    assert_eq!(first.status(), 400);
    let nonce = first.headers()["dpop-nonce"].to_str().unwrap().to_owned();
    let second = ask(key.proof("POST", &endpoint, None, Some(&nonce)).unwrap()).await.unwrap();
    assert_eq!(second.status(), 200);
    let body: Value = serde_json::from_str(&second.text().await.unwrap()).unwrap();
    assert_eq!(body["token_type"], "DPoP");
    sts.stop().await;
}
