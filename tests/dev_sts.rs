//! The development authorization server over real HTTP: client
//! authentication, both grants, exchange narrowing, `act` chains, tokens
//! verified against its JWKS, discovery, and the `tokex dev-sts` command.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::sts::client_key;
use common::*;
use http::{HeaderMap, StatusCode};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use tokex::dev_sts::{self, ClientSpec, DevSts, DevStsConfig, ACCESS_TOKEN_TYPE, JWT_BEARER, TOKEN_EXCHANGE};
use tokio::net::TcpListener;

/// `gw`: the gateway's client (secret). `agent`: an actor (secret).
/// `weird id`: credentials that need form-encoding in Basic.
fn clients(extra: Vec<ClientSpec>) -> Vec<ClientSpec> {
    let mut v = vec![
        ClientSpec::parse_flag(
            "id=gw,secret=gw-secret,audiences=orders-api|billing-api|https://orders.internal/,scopes=orders:read|orders:write|profile",
        )
        .unwrap(),
        ClientSpec::parse_flag("id=agent,secret=agent-secret,audiences=*,scopes=*").unwrap(),
        ClientSpec {
            id: "weird id:é".into(),
            secret: Some("p+ss:w/rd&=%".into()),
            audiences: vec!["orders-api".into()],
            scopes: vec!["orders:read".into()],
            ..Default::default()
        },
    ];
    v.extend(extra);
    v
}

async fn start(extra: Vec<ClientSpec>) -> DevSts {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = DevStsConfig { clients: clients(extra), ..Default::default() };
    dev_sts::start(cfg, listener).await.unwrap()
}

enum Auth<'a> {
    Basic(&'a str, &'a str),
    /// A raw `Authorization` header value.
    Header(String),
    Post(&'a str, &'a str),
    None,
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn token(sts: &DevSts, auth: Auth<'_>, form: &[(&str, &str)]) -> (StatusCode, HeaderMap, Value) {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form {
        ser.append_pair(k, v);
    }
    let mut req = client().post(sts.token_endpoint()).header("content-type", "application/x-www-form-urlencoded");
    match auth {
        Auth::Basic(id, secret) => {
            let value = format!("Basic {}", STANDARD.encode(format!("{}:{}", enc(id), enc(secret))));
            req = req.header("authorization", value);
        }
        Auth::Header(v) => req = req.header("authorization", v),
        Auth::Post(id, secret) => {
            ser.append_pair("client_id", id).append_pair("client_secret", secret);
        }
        Auth::None => {}
    }
    let resp = req.body(ser.finish()).send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, headers, body)
}

async fn json_of<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> T {
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn gw() -> Auth<'static> {
    Auth::Basic("gw", "gw-secret")
}

fn assert_error(got: &(StatusCode, HeaderMap, Value), status: u16, code: &str) {
    assert_eq!(got.0.as_u16(), status, "{:?}", got.2);
    assert_eq!(got.2["error"], code, "{:?}", got.2);
    assert!(got.2["error_description"].is_string(), "{:?}", got.2);
    assert_eq!(got.1["cache-control"], "no-store");
}

/// Verifies `token` against the server's published JWKS; returns its claims.
async fn verify(sts: &DevSts, token: &str, aud: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, Algorithm::ES256);
    let jwks: JwkSet = json_of(client().get(format!("http://{}/jwks.json", sts.addr())).send().await.unwrap()).await;
    let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("kid is in the JWKS");
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[aud]);
    v.set_issuer(&[sts.issuer()]);
    v.leeway = 0;
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v).expect("token verifies").claims
}

fn exchange_form<'a>(subject: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut f =
        vec![("grant_type", TOKEN_EXCHANGE), ("subject_token", subject), ("subject_token_type", ACCESS_TOKEN_TYPE)];
    f.extend_from_slice(extra);
    f
}

const BROAD: &[&str] = &["orders:read", "orders:write", "profile"];
const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------
// Discovery and JWKS

#[tokio::test]
async fn discovery_document_and_jwks() {
    let sts = start(vec![]).await;
    let base = format!("http://{}", sts.addr());
    assert_eq!(sts.issuer(), base);
    let resp = client().get(format!("{base}/.well-known/oauth-authorization-server")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let meta: Value = json_of(resp).await;
    assert_eq!(meta["issuer"], base);
    assert_eq!(meta["token_endpoint"], format!("{base}/token"));
    assert_eq!(meta["token_endpoint"], sts.token_endpoint());
    assert_eq!(meta["jwks_uri"], format!("{base}/jwks.json"));
    assert_eq!(meta["grant_types_supported"], json!([TOKEN_EXCHANGE, "client_credentials"]));
    assert_eq!(
        meta["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post", "private_key_jwt"])
    );
    assert!(meta["token_endpoint_auth_signing_alg_values_supported"].as_array().unwrap().contains(&json!("ES256")));
    assert_eq!(meta["scopes_supported"], json!(["orders:read", "orders:write", "profile"]));

    let resp = client().get(format!("{base}/jwks.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let jwks: Value = json_of(resp).await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert_eq!((k["kty"].as_str(), k["crv"].as_str()), (Some("EC"), Some("P-256")));
    assert_eq!(k["alg"], "ES256");
    assert_eq!(k["use"], "sig");
    assert!(k["kid"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(k.get("d").is_none(), "no private part");
    assert_eq!(serde_json::from_str::<Value>(&sts.jwks_json()).unwrap(), jwks);

    let (status, _, _) = get(&format!("{base}/nope"), None).await;
    assert_eq!(status, 404);
    let (status, headers, _) = get(&sts.token_endpoint(), None).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST");
    sts.shutdown().await;
}

// ---------------------------------------------------------------------------
// Client authentication

#[tokio::test]
async fn client_secret_basic_form_encodes_credentials() {
    let sts = start(vec![]).await;
    let got = token(&sts, Auth::Basic("weird id:é", "p+ss:w/rd&=%"), &[("grant_type", "client_credentials")]).await;
    assert_eq!(got.0, 200, "{:?}", got.2);
    let claims = verify(&sts, got.2["access_token"].as_str().unwrap(), "orders-api").await;
    assert_eq!(claims["sub"], "weird id:é");
    assert_eq!(claims["client_id"], "weird id:é");

    // The same credentials without form-encoding: `+` decodes to a space.
    let raw = format!("Basic {}", STANDARD.encode("weird%20id%3A%C3%A9:p+ss:w/rd&=%25"));
    let got = token(&sts, Auth::Header(raw), &[("grant_type", "client_credentials")]).await;
    assert_error(&got, 401, "invalid_client");
}

#[tokio::test]
async fn client_secret_post_and_failures() {
    let sts = start(vec![]).await;
    let cc = [("grant_type", "client_credentials")];
    let got = token(&sts, Auth::Post("gw", "gw-secret"), &cc).await;
    assert_eq!(got.0, 200, "{:?}", got.2);

    for bad in [
        token(&sts, Auth::Basic("gw", "wrong"), &cc).await,
        token(&sts, Auth::Basic("nobody", "gw-secret"), &cc).await,
        token(&sts, Auth::Post("gw", "gw-secre"), &cc).await,
        token(&sts, Auth::None, &cc).await,
        token(&sts, Auth::Header("Bearer abc".into()), &cc).await,
        token(&sts, Auth::Header("Basic !!!".into()), &cc).await,
    ] {
        assert_error(&bad, 401, "invalid_client");
        assert_eq!(bad.1["www-authenticate"], "Basic realm=\"tokex-dev-sts\"");
    }
    // Two methods at once.
    let both = token(&sts, gw(), &[("grant_type", "client_credentials"), ("client_secret", "gw-secret")]).await;
    assert_error(&both, 400, "invalid_request");
}

fn assertion(key: &[u8], claims: Value) -> String {
    common::sts::signed(key, &claims)
}

#[tokio::test]
async fn private_key_jwt() {
    let (key, pem) = client_key();
    let (other_key, _) = client_key();
    let spec = ClientSpec {
        id: "bot".into(),
        public_key_pem: Some(pem),
        audiences: vec!["orders-api".into()],
        scopes: vec!["orders:read".into()],
        ..Default::default()
    };
    let sts = start(vec![spec]).await;
    let endpoint = sts.token_endpoint();
    let claims =
        |jti: &str, aud: &str, exp: u64| json!({"iss": "bot", "sub": "bot", "aud": aud, "exp": exp, "jti": jti});
    let send = |a: String| {
        let sts = &sts;
        async move {
            let form =
                [("grant_type", "client_credentials"), ("client_assertion_type", JWT_BEARER), ("client_assertion", &a)];
            token(sts, Auth::None, &form).await
        }
    };

    let a1 = assertion(&key, claims("one", &endpoint, now() + 60));
    let got = send(a1.clone()).await;
    assert_eq!(got.0, 200, "{:?}", got.2);
    let c = verify(&sts, got.2["access_token"].as_str().unwrap(), "orders-api").await;
    assert_eq!((c["sub"].as_str(), c["client_id"].as_str()), (Some("bot"), Some("bot")));
    assert_eq!(c["scope"], "orders:read");

    // Replay of the same assertion (same jti).
    assert_error(&send(a1).await, 401, "invalid_client");
    // The issuer is an accepted audience too; a new jti is fine.
    let got = send(assertion(&key, claims("two", sts.issuer(), now() + 60))).await;
    assert_eq!(got.0, 200, "{:?}", got.2);

    let refused = [
        assertion(&key, claims("three", "https://elsewhere/token", now() + 60)),
        assertion(&key, claims("four", &endpoint, now() - 30)),
        assertion(&key, json!({"iss": "bot", "sub": "bot", "aud": endpoint, "jti": "five"})),
        assertion(&key, json!({"iss": "bot", "sub": "bot", "aud": endpoint, "exp": now() + 60})),
        assertion(&key, json!({"iss": "gw", "sub": "bot", "aud": endpoint, "exp": now() + 60, "jti": "six"})),
        assertion(&other_key, claims("seven", &endpoint, now() + 60)),
        assertion(&key, claims("eight", &endpoint, now() + 86_400)),
        "not.a.jwt".to_owned(),
    ];
    for a in refused {
        assert_error(&send(a).await, 401, "invalid_client");
    }
    // A secret client cannot authenticate with an assertion.
    let a = assertion(&key, json!({"iss": "gw", "sub": "gw", "aud": endpoint, "exp": now() + 60, "jti": "x"}));
    assert_error(&send(a).await, 401, "invalid_client");
    // Wrong assertion type.
    let a = assertion(&key, claims("nine", &endpoint, now() + 60));
    let form = [("grant_type", "client_credentials"), ("client_assertion_type", "urn:other"), ("client_assertion", &a)];
    assert_error(&token(&sts, Auth::None, &form).await, 401, "invalid_client");
}

// ---------------------------------------------------------------------------
// Grants

#[tokio::test]
async fn client_credentials_issues_a_verifiable_token() {
    let sts = start(vec![]).await;
    let got = token(
        &sts,
        gw(),
        &[("grant_type", "client_credentials"), ("scope", "orders:read"), ("audience", "orders-api")],
    )
    .await;
    assert_eq!(got.0, 200, "{:?}", got.2);
    assert_eq!(got.1["cache-control"], "no-store");
    assert_eq!(got.1["content-type"], "application/json");
    let body = &got.2;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 60);
    assert_eq!(body["scope"], "orders:read");
    let c = verify(&sts, body["access_token"].as_str().unwrap(), "orders-api").await;
    assert_eq!(c["iss"], sts.issuer());
    assert_eq!(c["sub"], "gw");
    assert_eq!(c["client_id"], "gw");
    assert_eq!(c["aud"], "orders-api");
    assert_eq!(c["scope"], "orders:read");
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 60);
    assert!(c["jti"].as_str().is_some_and(|j| !j.is_empty()));

    // Defaults: all the client's scopes and audiences.
    let got = token(&sts, gw(), &[("grant_type", "client_credentials")]).await;
    let c = verify(&sts, got.2["access_token"].as_str().unwrap(), "billing-api").await;
    assert_eq!(c["scope"], "orders:read orders:write profile");
    assert_eq!(c["aud"], json!(["orders-api", "billing-api", "https://orders.internal/"]));

    let got = token(&sts, gw(), &[("grant_type", "client_credentials"), ("scope", "admin")]).await;
    assert_error(&got, 400, "invalid_scope");
    let got = token(&sts, gw(), &[("grant_type", "client_credentials"), ("audience", "payroll-api")]).await;
    assert_error(&got, 400, "invalid_target");
    assert_eq!(sts.exchange_count(), 0, "client_credentials is not an exchange");
}

#[tokio::test]
async fn exchange_narrows_scope_and_audience() {
    let sts = start(vec![]).await;
    let user = sts.mint("alice", BROAD, &["edge"], Duration::from_secs(30));
    let form = exchange_form(&user, &[("audience", "orders-api"), ("scope", "orders:read")]);
    let got = token(&sts, gw(), &form).await;
    assert_eq!(got.0, 200, "{:?}", got.2);
    assert_eq!(got.1["cache-control"], "no-store");
    assert_eq!(got.2["issued_token_type"], ACCESS_TOKEN_TYPE);
    assert_eq!(got.2["token_type"], "Bearer");
    assert_eq!(got.2["scope"], "orders:read");
    let expires_in = got.2["expires_in"].as_u64().unwrap();
    assert!((29..=30).contains(&expires_in), "capped by the subject token's exp: {expires_in}");
    let c = verify(&sts, got.2["access_token"].as_str().unwrap(), "orders-api").await;
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["client_id"], "gw");
    assert_eq!(c["aud"], "orders-api");
    assert_eq!(c["scope"], "orders:read");
    assert!(c.get("act").is_none(), "impersonation carries no act");
    assert_eq!(sts.exchange_count(), 1);

    // No scope requested: the subject's. Several audiences: an array.
    let form = exchange_form(&user, &[("audience", "orders-api"), ("audience", "billing-api")]);
    let got = token(&sts, gw(), &form).await;
    assert_eq!(got.0, 200, "{:?}", got.2);
    assert_eq!(got.2["scope"], "orders:read orders:write profile");
    let c = verify(&sts, got.2["access_token"].as_str().unwrap(), "billing-api").await;
    assert_eq!(c["aud"], json!(["orders-api", "billing-api"]));
    // `resource` is a target too.
    let got = token(&sts, gw(), &exchange_form(&user, &[("resource", "https://orders.internal/")])).await;
    assert_eq!(got.0, 200, "{:?}", got.2);
    assert_eq!(sts.exchange_count(), 3);

    // Refusals.
    let extra =
        token(&sts, gw(), &exchange_form(&user, &[("audience", "orders-api"), ("scope", "orders:read admin")])).await;
    assert_error(&extra, 400, "invalid_scope");
    let narrow = sts.mint("alice", &["orders:read"], &["edge"], HOUR);
    let wider = token(&sts, gw(), &exchange_form(&narrow, &[("scope", "orders:write")])).await;
    assert_error(&wider, 400, "invalid_scope");
    let aud = token(&sts, gw(), &exchange_form(&user, &[("audience", "payroll-api")])).await;
    assert_error(&aud, 400, "invalid_target");
    let res = token(&sts, gw(), &exchange_form(&user, &[("resource", "https://payroll.internal/")])).await;
    assert_error(&res, 400, "invalid_target");
    let res = token(&sts, gw(), &exchange_form(&user, &[("resource", "not a uri")])).await;
    assert_error(&res, 400, "invalid_target");
    assert_eq!(sts.exchange_count(), 3, "only successful exchanges count");
}

#[tokio::test]
async fn exchange_refuses_foreign_expired_and_garbage_subjects() {
    let sts = start(vec![]).await;
    let other = start(vec![]).await;
    let foreign = other.mint("alice", BROAD, &["edge"], HOUR);
    let expired = sts.mint("alice", BROAD, &["edge"], Duration::ZERO);
    let unsigned = fake_jwt(json!({"iss": sts.issuer(), "sub": "alice", "scope": "orders:read", "exp": now() + 60}));
    for subject in [foreign.as_str(), expired.as_str(), unsigned.as_str(), "garbage", "a.b.c"] {
        let got = token(&sts, gw(), &exchange_form(subject, &[("audience", "orders-api")])).await;
        assert_error(&got, 400, "invalid_grant");
    }
    // Request shape errors come first.
    let user = sts.mint("alice", BROAD, &["edge"], HOUR);
    let got = token(&sts, gw(), &[("grant_type", TOKEN_EXCHANGE), ("subject_token", &user)]).await;
    assert_error(&got, 400, "invalid_request");
    let got = token(&sts, gw(), &exchange_form(&user, &[("requested_token_type", "urn:x")])).await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(sts.exchange_count(), 0);
}

#[tokio::test]
async fn actor_tokens_add_and_nest_act() {
    let sts = start(vec![]).await;
    let user = sts.mint("alice", BROAD, &["edge"], HOUR);
    // The agent's own token, from client_credentials.
    let agent = token(&sts, Auth::Basic("agent", "agent-secret"), &[("grant_type", "client_credentials")]).await;
    let agent = agent.2["access_token"].as_str().unwrap().to_owned();

    let form = exchange_form(
        &user,
        &[
            ("audience", "orders-api"),
            ("scope", "orders:read orders:write"),
            ("actor_token", &agent),
            ("actor_token_type", ACCESS_TOKEN_TYPE),
        ],
    );
    let got = token(&sts, gw(), &form).await;
    assert_eq!(got.0, 200, "{:?}", got.2);
    let delegated = got.2["access_token"].as_str().unwrap().to_owned();
    let c = verify(&sts, &delegated, "orders-api").await;
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["act"], json!({"sub": "agent"}));

    // Exchanging the delegated token again with another actor nests the prior one.
    let tool = sts.mint("tool", &[], &[], HOUR);
    let form = exchange_form(
        &delegated,
        &[
            ("audience", "orders-api"),
            ("scope", "orders:read"),
            ("actor_token", &tool),
            ("actor_token_type", ACCESS_TOKEN_TYPE),
        ],
    );
    let got = token(&sts, gw(), &form).await;
    assert_eq!(got.0, 200, "{:?}", got.2);
    let c = verify(&sts, got.2["access_token"].as_str().unwrap(), "orders-api").await;
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["scope"], "orders:read");
    assert_eq!(c["act"], json!({"sub": "tool", "act": {"sub": "agent"}}));

    // Without an actor the chain is kept as it is.
    let got = token(&sts, gw(), &exchange_form(&delegated, &[("audience", "orders-api")])).await;
    let c = verify(&sts, got.2["access_token"].as_str().unwrap(), "orders-api").await;
    assert_eq!(c["act"], json!({"sub": "agent"}));

    // An actor token that is not ours, or without its type.
    let foreign = start(vec![]).await.mint("agent", &[], &[], HOUR);
    let form = exchange_form(&user, &[("actor_token", &foreign), ("actor_token_type", ACCESS_TOKEN_TYPE)]);
    assert_error(&token(&sts, gw(), &form).await, 400, "invalid_grant");
    let form = exchange_form(&user, &[("actor_token", &agent)]);
    assert_error(&token(&sts, gw(), &form).await, 400, "invalid_request");

    // may_act names who may act for the subject.
    let mut extra = serde_json::Map::new();
    extra.insert("may_act".into(), json!({"sub": "someone-else"}));
    let guarded = sts.mint_with("bob", BROAD, &["edge"], HOUR, extra).unwrap();
    let form = exchange_form(&guarded, &[("actor_token", &agent), ("actor_token_type", ACCESS_TOKEN_TYPE)]);
    assert_error(&token(&sts, gw(), &form).await, 400, "invalid_grant");
}

// ---------------------------------------------------------------------------
// Request handling

#[tokio::test]
async fn malformed_requests() {
    let sts = start(vec![]).await;
    assert_error(&token(&sts, gw(), &[("grant_type", "password")]).await, 400, "unsupported_grant_type");
    assert_error(&token(&sts, gw(), &[("scope", "x")]).await, 400, "invalid_request");
    let dup = token(&sts, gw(), &[("grant_type", "client_credentials"), ("grant_type", "client_credentials")]).await;
    assert_error(&dup, 400, "invalid_request");

    let resp = client()
        .post(sts.token_endpoint())
        .header("content-type", "application/json")
        .basic_auth("gw", Some("gw-secret"))
        .body(r#"{"grant_type":"client_credentials"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let big = format!("grant_type=client_credentials&pad={}", "x".repeat(dev_sts::MAX_FORM_BYTES));
    let resp = client()
        .post(sts.token_endpoint())
        .header("content-type", "application/x-www-form-urlencoded")
        .basic_auth("gw", Some("gw-secret"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = json_of(resp).await;
    assert_eq!(body["error"], "invalid_request");
}

#[tokio::test]
async fn configured_issuer_and_lifetime() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = DevStsConfig {
        issuer: Some(format!("http://{addr}/dev/")),
        clients: clients(vec![]),
        expires_in: Duration::from_secs(300),
        ..Default::default()
    };
    let sts = dev_sts::start(cfg, listener).await.unwrap();
    assert_eq!(sts.issuer(), format!("http://{addr}/dev"));
    assert_eq!(sts.token_endpoint(), format!("http://{addr}/dev/token"));
    // RFC 8414 §3.1: the well-known segment goes before the issuer's path.
    let meta: Value = json_of(
        client().get(format!("http://{addr}/.well-known/oauth-authorization-server/dev")).send().await.unwrap(),
    )
    .await;
    assert_eq!(meta["issuer"], sts.issuer());
    let got = token(&sts, gw(), &[("grant_type", "client_credentials")]).await;
    assert_eq!(got.0, 200, "{:?}", got.2);
    assert_eq!(got.2["expires_in"], 300);
    let c = verify(&sts, got.2["access_token"].as_str().unwrap(), "orders-api").await;
    assert_eq!(c["iss"], format!("http://{addr}/dev"));

    let bad = DevStsConfig { issuer: Some("ftp://x".into()), ..Default::default() };
    assert!(dev_sts::start(bad, TcpListener::bind("127.0.0.1:0").await.unwrap()).await.is_err());
}

// ---------------------------------------------------------------------------
// The command

#[tokio::test]
async fn dev_sts_command_serves_and_prints_a_curl() {
    let sts = common::process::DevStsProcess::start(
        &[
            "--expires-in",
            "2m",
            "--client",
            "id=demo,secret=demo-secret,audiences=orders-api,scopes=orders:read|billing:read",
        ],
        |line| line.contains("curl "),
    )
    .await;
    let (port, out) = (sts.port, &sts.banner);
    let text = out.join("\n");
    assert!(text.contains(&format!("listening on 127.0.0.1:{port}")), "{text}");
    assert!(text.contains(&format!("http://127.0.0.1:{port}/token")), "{text}");
    assert!(text.contains("-u 'demo:demo-secret' -d grant_type=client_credentials"), "{text}");

    let resp = client()
        .post(format!("http://127.0.0.1:{port}/token"))
        .basic_auth("demo", Some("demo-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&scope=orders%3Aread")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = json_of(resp).await;
    assert_eq!(body["expires_in"], 120);

    sts.stop().await;
}
