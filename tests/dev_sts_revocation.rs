//! Revocation at the dev-sts: `POST /revoke` (RFC 7009) with the client
//! authentication of `/token`, revoked tokens refused at the next
//! exchange, `DevSts::revoke_subject`, and the metadata's
//! `revocation_endpoint`.

mod common;

use std::time::Duration;

use common::sts::{assertion, client_key, gw, post, start, Auth, GW_SECRET};
use common::*;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokex::dev_sts::{self, DevSts, RevocationRecord, ACCESS_TOKEN_TYPE};

const HOUR: Duration = Duration::from_secs(3600);
/// A second client with a secret, besides the gateway's `tokex`.
const OTHER: &[&str] = &["id=other,secret=other-secret"];

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

// ---------------------------------------------------------------------------
// POST /revoke

#[tokio::test]
async fn a_revoked_token_is_refused_as_subject_token_afterwards() {
    let sts = start(None, "", OTHER).await;
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
    let sts = start(None, "", OTHER).await;
    let alice = user(&sts, "alice");
    let agent = user(&sts, "agent-7");
    assert_eq!(exchange(&sts, &alice, Some(&agent)).await.0, 200);
    assert_eq!(revoke(&sts, gw(), &[("token", &agent)]).await.0, 200);
    refused_grant(&exchange(&sts, &alice, Some(&agent)).await, "actor_token was revoked");
    assert_eq!(exchange(&sts, &alice, None).await.0, 200, "the subject token is not revoked");
}

#[tokio::test]
async fn any_token_is_answered_200_and_recorded() {
    let sts = start(None, "", OTHER).await;
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
    let sts = start(Some(pem), "", OTHER).await;
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
    let sts = start(None, "", OTHER).await;
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
    let sts = start(None, "/dev", OTHER).await;
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
    let sts = start(None, "", OTHER).await;
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
