//! Security Event Tokens from the dev-sts: `DevSts::security_event` and
//! `sign_security_event` verify against its JWKS; `POST /ssf/emit` revokes
//! the subject and pushes the SET to a receiver (RFC 8935); and
//! `tokex dev-sts revoke` does that from the command line.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::BIN;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use tokex::dev_sts::{self, ClientSpec, DevSts, DevStsConfig, SecurityEvent, SubjectFormat, ACCESS_TOKEN_TYPE};
use tokio::net::TcpListener;

const GW_SECRET: &str = "gw-secret";
const PUSH_PATH: &str = "/.well-known/ssf/push";
const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";

async fn start() -> DevSts {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clients =
        vec![ClientSpec::parse_flag(&format!("id=tokex,secret={GW_SECRET},audiences=orders-api,scopes=orders:read"))
            .unwrap()];
    dev_sts::start(DevStsConfig { clients, ..Default::default() }, listener).await.unwrap()
}

/// Verifies a SET with the dev-sts JWKS (as a receiver configured with its
/// `jwks_uri` would) for `aud`; checks the header; returns the claims.
fn verify_set(sts: &DevSts, set: &str, aud: &str) -> Result<Value, jsonwebtoken::errors::Error> {
    let header = jsonwebtoken::decode_header(set)?;
    assert_eq!(header.typ.as_deref(), Some("secevent+jwt"));
    assert_eq!(header.kid.as_deref(), Some(sts.kid()));
    assert_eq!(header.alg, Algorithm::ES256);
    let jwks: JwkSet = serde_json::from_str(&sts.jwks_json()).unwrap();
    let jwk = jwks.find(sts.kid()).expect("the kid is in the JWKS");
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[aud]);
    v.set_issuer(&[sts.issuer()]);
    v.set_required_spec_claims(&["iss", "aud"]);
    v.validate_exp = false;
    Ok(jsonwebtoken::decode::<Value>(set, &DecodingKey::from_jwk(jwk).unwrap(), &v)?.claims)
}

/// The one event of a SET: `(type URI, payload)`.
fn the_event(claims: &Value) -> (String, Value) {
    let events = claims["events"].as_object().expect("events");
    assert_eq!(events.len(), 1, "{claims}");
    let (uri, payload) = events.iter().next().unwrap();
    (uri.clone(), payload.clone())
}

/// One SET push as the receiver saw it.
#[derive(Clone, Debug)]
struct Push {
    path: String,
    content_type: String,
    accept: String,
    body: String,
}

/// A push receiver on 127.0.0.1:0 that records every request and answers
/// `status` with `answer` (JSON, when not empty).
async fn receiver(status: u16, answer: &'static str) -> (SocketAddr, Arc<Mutex<Vec<Push>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let header = |n: &str| parts.headers.get(n).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            let body = body.collect().await.unwrap().to_bytes();
            log.lock().unwrap().push(Push {
                path: parts.uri.path().to_owned(),
                content_type: header("content-type"),
                accept: header("accept"),
                body: String::from_utf8(body.to_vec()).unwrap(),
            });
            let mut resp = Response::builder().status(status);
            if !answer.is_empty() {
                resp = resp.header("content-type", "application/json");
            }
            resp.body(full(answer)).unwrap()
        }
    })
    .await;
    (addr, seen)
}

fn push_url(addr: SocketAddr) -> String {
    format!("http://{addr}{PUSH_PATH}")
}

/// `POST /ssf/emit` as the gateway client: `(status, JSON answer)`.
async fn emit(sts: &DevSts, secret: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let resp = client().post(sts.emit_endpoint()).basic_auth("tokex", Some(secret)).form(form).send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")))
}

async fn exchange_status(sts: &DevSts, subject: &str) -> u16 {
    let form = [
        ("grant_type", dev_sts::TOKEN_EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
        ("audience", "orders-api"),
    ];
    let resp = client().post(sts.token_endpoint()).basic_auth("tokex", Some(GW_SECRET)).form(&form).send();
    resp.await.unwrap().status().as_u16()
}

// ---------------------------------------------------------------------------
// DevSts::security_event and sign_security_event

#[tokio::test]
async fn a_security_event_verifies_against_the_jwks() {
    let sts = start().await;
    let set = sts.security_event("alice", SecurityEvent::SessionRevoked, "tokex", SubjectFormat::IssSub);
    let c = verify_set(&sts, &set, "tokex").expect("the SET verifies");
    let mut keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["aud", "events", "iat", "iss", "jti", "sub_id"], "SSF 1.0: no sub, no exp: {c}");
    assert_eq!(c["iss"], sts.issuer());
    assert_eq!(c["aud"], "tokex", "a string");
    let iat = c["iat"].as_u64().expect("integer seconds");
    assert!(iat.abs_diff(now()) <= 2);
    let jti = c["jti"].as_str().unwrap();
    assert!(jti.len() == 32 && jti.bytes().all(|b| b.is_ascii_hexdigit()), "{jti}");
    assert_eq!(c["sub_id"], json!({"format": "iss_sub", "iss": sts.issuer(), "sub": "alice"}));
    assert_eq!(the_event(&c), (SESSION_REVOKED.to_owned(), json!({"event_timestamp": iat})));
    assert!(verify_set(&sts, &set, "other").is_err(), "aud is checked");

    // Making a SET does not revoke anyone; each has its own jti.
    assert_eq!(exchange_status(&sts, &sts.mint("alice", &[], &["tokex"], Duration::from_secs(60))).await, 200);
    let again = sts.security_event("alice", SecurityEvent::SessionRevoked, "tokex", SubjectFormat::IssSub);
    assert_ne!(verify_set(&sts, &again, "tokex").unwrap()["jti"], c["jti"]);
}

#[tokio::test]
async fn every_event_and_subject_format() {
    let sts = start().await;
    let caep = "https://schemas.openid.net/secevent/caep/event-type/";
    let risc = "https://schemas.openid.net/secevent/risc/event-type/";
    for (event, uri, extra) in [
        (SecurityEvent::SessionRevoked, format!("{caep}session-revoked"), json!({})),
        (
            SecurityEvent::CredentialChange,
            format!("{caep}credential-change"),
            json!({"credential_type": "password", "change_type": "update"}),
        ),
        (SecurityEvent::AccountDisabled, format!("{risc}account-disabled"), Value::Null),
        (SecurityEvent::AccountPurged, format!("{risc}account-purged"), Value::Null),
        (SecurityEvent::TokensRevoked, format!("{risc}tokens-revoked"), Value::Null),
    ] {
        let c = verify_set(&sts, &sts.security_event("alice", event, "tokex", SubjectFormat::IssSub), "tokex").unwrap();
        let (got_uri, payload) = the_event(&c);
        assert_eq!(got_uri, uri);
        let want = match extra {
            // RISC: an empty payload.
            Value::Null => json!({}),
            Value::Object(mut m) => {
                m.insert("event_timestamp".into(), c["iat"].clone());
                Value::Object(m)
            }
            _ => unreachable!(),
        };
        assert_eq!(payload, want, "{uri}");
    }
    for (format, sub_id) in [
        (SubjectFormat::Email, json!({"format": "email", "email": "alice@example.com"})),
        (SubjectFormat::Opaque, json!({"format": "opaque", "id": "alice@example.com"})),
    ] {
        let set = sts.security_event("alice@example.com", SecurityEvent::SessionRevoked, "tokex", format);
        assert_eq!(verify_set(&sts, &set, "tokex").unwrap()["sub_id"], sub_id);
    }
}

#[tokio::test]
async fn forged_variants_are_signed_as_given() {
    let sts = start().await;
    let claims = json!({
        "iss": sts.issuer(), "aud": "someone-else", "iat": now() - 3600, "jti": "reused",
        "sub_id": {"format": "opaque", "id": "alice"}, "events": {SESSION_REVOKED: {}},
    });
    let set = sts.sign_security_event(&claims);
    assert!(verify_set(&sts, &set, "tokex").is_err(), "the wrong audience");
    assert_eq!(verify_set(&sts, &set, "someone-else").unwrap(), claims);
}

// ---------------------------------------------------------------------------
// POST /ssf/emit

#[tokio::test]
async fn emit_revokes_the_subject_and_pushes_the_set() {
    let sts = start().await;
    let (addr, seen) = receiver(202, "").await;
    let alice = sts.mint("alice", &["orders:read"], &["tokex"], Duration::from_secs(600));
    assert_eq!(exchange_status(&sts, &alice).await, 200);

    let push = push_url(addr);
    let (status, answer) = emit(&sts, GW_SECRET, &[("sub", "alice"), ("audience", "tokex"), ("push", &push)]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pushed"], true, "{answer}");
    assert_eq!(answer["status"], 202);
    assert!(answer.get("error").is_none(), "{answer}");
    let pushes = seen.lock().unwrap().clone();
    assert_eq!(pushes.len(), 1);
    let p = &pushes[0];
    assert_eq!(
        (p.path.as_str(), p.content_type.as_str(), p.accept.as_str()),
        (PUSH_PATH, "application/secevent+jwt", "application/json")
    );
    let c = verify_set(&sts, &p.body, "tokex").expect("the pushed SET verifies");
    assert_eq!(c["jti"], answer["jti"]);
    assert_eq!(c["sub_id"], json!({"format": "iss_sub", "iss": sts.issuer(), "sub": "alice"}));
    assert_eq!(the_event(&c).0, SESSION_REVOKED);

    assert_eq!(exchange_status(&sts, &alice).await, 400, "the next exchange is refused");

    // Another event and format.
    let form = [
        ("sub", "bob@example.com"),
        ("audience", "https://gw.example"),
        ("push", &push),
        ("event", "credential-change"),
        ("format", "email"),
    ];
    let (status, answer) = emit(&sts, GW_SECRET, &form).await;
    assert_eq!((status.as_u16(), &answer["pushed"]), (200, &json!(true)), "{answer}");
    let body = seen.lock().unwrap()[1].body.clone();
    let c = verify_set(&sts, &body, "https://gw.example").unwrap();
    assert_eq!(c["sub_id"], json!({"format": "email", "email": "bob@example.com"}));
    assert_eq!(the_event(&c).1["change_type"], "update");
}

#[tokio::test]
async fn emit_reports_a_refusal_or_an_unreachable_receiver() {
    let sts = start().await;
    let (addr, seen) = receiver(400, r#"{"err":"invalid_audience","description":"not for us"}"#).await;
    let push = push_url(addr);
    let alice = sts.mint("alice", &["orders:read"], &["tokex"], Duration::from_secs(600));
    let (status, answer) = emit(&sts, GW_SECRET, &[("sub", "alice"), ("audience", "tokex"), ("push", &push)]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pushed"], false);
    assert_eq!(answer["status"], 400);
    assert_eq!(answer["error"], "invalid_audience: not for us");
    assert_eq!(answer["jti"].as_str().map(str::len), Some(32));
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(exchange_status(&sts, &alice).await, 400, "revoked at the dev-sts all the same");

    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let push = push_url(closed);
    let (status, answer) = emit(&sts, GW_SECRET, &[("sub", "bob"), ("audience", "tokex"), ("push", &push)]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((&answer["pushed"], &answer["status"]), (&json!(false), &Value::Null), "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("cannot reach"), "{answer}");
}

#[tokio::test]
async fn emit_needs_a_client_and_a_good_form() {
    let sts = start().await;
    let (addr, seen) = receiver(202, "").await;
    let push = push_url(addr);
    let good = [("sub", "alice"), ("audience", "tokex"), ("push", push.as_str())];
    let (status, answer) = emit(&sts, "wrong", &good).await;
    assert_eq!((status.as_u16(), answer["error"].as_str()), (401, Some("invalid_client")));
    for bad in [
        vec![("audience", "tokex"), ("push", push.as_str())],
        vec![("sub", "alice"), ("push", push.as_str())],
        vec![("sub", "alice"), ("audience", "tokex")],
        vec![("sub", "alice"), ("audience", "tokex"), ("push", "ftp://127.0.0.1/")],
        vec![("sub", "alice"), ("audience", "tokex"), ("push", push.as_str()), ("event", "logout")],
        vec![("sub", "alice"), ("audience", "tokex"), ("push", push.as_str()), ("format", "phone_number")],
    ] {
        let (status, answer) = emit(&sts, GW_SECRET, &bad).await;
        assert_eq!((status.as_u16(), answer["error"].as_str()), (400, Some("invalid_request")), "{bad:?}");
    }
    assert!(seen.lock().unwrap().is_empty(), "nothing pushed");
    let alice = sts.mint("alice", &["orders:read"], &["tokex"], Duration::from_secs(600));
    assert_eq!(exchange_status(&sts, &alice).await, 200, "nobody revoked");
    let resp = client().get(sts.emit_endpoint()).send().await.unwrap();
    assert_eq!(resp.status(), 405);
}

// ---------------------------------------------------------------------------
// tokex dev-sts revoke (the binary)

async fn run_revoke(sts: &DevSts, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["dev-sts", "revoke", "--sts", sts.issuer(), "--client-id", "tokex"]).args(args);
    cmd.env_remove("TOKEX_CONFIG").env_remove("TOKEX_LOG").env("TOKEX_DEV_CLIENT_SECRET", GW_SECRET);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await.unwrap().unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn the_revoke_command_exits_0_when_the_receiver_accepts() {
    let sts = start().await;
    let (addr, seen) = receiver(202, "").await;
    let push = push_url(addr);
    let alice = sts.mint("alice", &["orders:read"], &["tokex"], Duration::from_secs(600));
    let (code, stdout, stderr) = run_revoke(&sts, &["--sub", "alice", "--audience", "tokex", "--push", &push]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "pushed session-revoked for alice: receiver answered 202\n");
    let pushes = seen.lock().unwrap().clone();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].content_type, "application/secevent+jwt");
    let c = verify_set(&sts, &pushes[0].body, "tokex").unwrap();
    assert_eq!(c["sub_id"]["sub"], "alice");
    assert!(!stderr.contains(&pushes[0].body) && !stderr.contains(GW_SECRET), "{stderr}");
    assert_eq!(exchange_status(&sts, &alice).await, 400);

    let args =
        ["--sub", "bob", "--audience", "tokex", "--push", &push, "--event", "account-disabled", "--format", "opaque"];
    let (code, stdout, stderr) = run_revoke(&sts, &args).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "pushed account-disabled for bob: receiver answered 202\n");
    let c = verify_set(&sts, &seen.lock().unwrap()[1].body, "tokex").unwrap();
    assert_eq!(c["sub_id"], json!({"format": "opaque", "id": "bob"}));
}

#[tokio::test]
async fn the_revoke_command_exits_1_when_refused_and_64_for_bad_flags() {
    let sts = start().await;
    let (addr, _) = receiver(400, r#"{"err":"invalid_issuer","description":"unknown issuer"}"#).await;
    let push = push_url(addr);
    let (code, stdout, stderr) = run_revoke(&sts, &["--sub", "alice", "--audience", "tokex", "--push", &push]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("receiver answered 400: invalid_issuer: unknown issuer"), "{stderr}");

    let closed = push_url(TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap());
    let (code, _, stderr) = run_revoke(&sts, &["--sub", "alice", "--audience", "tokex", "--push", &closed]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");

    // The dev-sts refuses: a wrong secret.
    let (ok_addr, seen) = receiver(202, "").await;
    let ok = push_url(ok_addr);
    let args = ["--client-secret", "wrong", "--sub", "alice", "--audience", "tokex", "--push", &ok];
    let (code, _, stderr) = run_revoke(&sts, &args).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("invalid_client"), "{stderr}");

    for bad in [
        vec!["--sub", "alice", "--audience", "tokex", "--push", &ok, "--event", "logout"],
        vec!["--sub", "alice", "--audience", "tokex", "--push", &ok, "--format", "phone"],
        vec!["--sub", "alice", "--audience", "tokex"],
        vec!["--sub", "alice", "--audience", "tokex", "--push", "ftp://127.0.0.1/"],
        vec!["--sub", "alice", "--audience", "to kex", "--push", &ok],
    ] {
        let (code, stdout, stderr) = run_revoke(&sts, &bad).await;
        assert_eq!(code, Some(64), "{bad:?}: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
    }
    assert!(seen.lock().unwrap().is_empty());
}
