//! `POST /mint` and `tokex dev-sts mint`: user tokens for hand testing.
//! Minting needs client authentication; the minted token verifies against
//! the JWKS, and works as the subject token of a real exchange through the
//! gateway configured by `examples/dev/config.yaml`.

mod common;

use std::time::Duration;

use common::process::BIN;
use common::sts::{assertion, client_key, gw, post, start, Auth, GW_SECRET};
use common::*;
use http::{HeaderMap, StatusCode};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use tokex::dev_sts::{self, DevSts, ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE};

/// `POST /mint` with `auth`: the status, headers and JSON answer.
async fn mint(sts: &DevSts, auth: Auth<'_>, form: &[(&str, &str)]) -> (StatusCode, HeaderMap, Value) {
    let (status, headers, text) = post(&sts.mint_endpoint(), auth, form).await;
    (status, headers, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")))
}

fn assert_error(got: &(StatusCode, HeaderMap, Value), status: u16, code: &str) {
    assert_eq!(got.0.as_u16(), status, "{:?}", got.2);
    assert_eq!(got.2["error"], code, "{:?}", got.2);
    assert!(got.2["error_description"].is_string(), "{:?}", got.2);
    assert_eq!(got.1["cache-control"], "no-store");
}

/// Verifies `token` against the server's published JWKS for `aud`; returns its claims.
async fn verify(sts: &DevSts, token: &str, aud: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let jwks: JwkSet =
        serde_json::from_str(&client().get(sts.jwks_uri()).send().await.unwrap().text().await.unwrap()).unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("kid is in the JWKS");
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[aud]);
    v.set_issuer(&[sts.issuer()]);
    v.leeway = 0;
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v).expect("token verifies").claims
}

// ---------------------------------------------------------------------------
// POST /mint

#[tokio::test]
async fn mints_a_verifiable_user_token_for_any_sub_aud_and_scope() {
    let sts = start(None, "", &[]).await;
    let form = [
        ("sub", "alice"),
        ("aud", "tokex billing-api"),
        ("aud", "tokex"),
        ("scope", "orders:read orders:write admin"),
        ("expires_in", "600"),
    ];
    let got = mint(&sts, gw(), &form).await;
    assert_eq!(got.0, 200, "{:?}", got.2);
    assert_eq!(got.1["cache-control"], "no-store");
    assert_eq!(got.1["content-type"], "application/json");
    let answer = got.2.as_object().unwrap();
    let mut keys: Vec<&str> = answer.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["access_token", "expires_in", "scope", "token_type"]);
    assert_eq!(got.2["token_type"], "Bearer");
    assert_eq!(got.2["expires_in"], 600);
    assert_eq!(got.2["scope"], "orders:read orders:write admin");

    // Audiences and scopes the client may not obtain at /token: minting is not bound by them.
    let c = verify(&sts, got.2["access_token"].as_str().unwrap(), "billing-api").await;
    assert_eq!(c["iss"], sts.issuer());
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["aud"], json!(["tokex", "billing-api"]));
    assert_eq!(c["scope"], "orders:read orders:write admin");
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 600);
    assert!(c["iat"].as_u64().unwrap().abs_diff(now()) <= 2);
    assert_eq!(c["jti"].as_str().map(str::len), Some(32));
    assert!(c.get("client_id").is_none() && c.get("act").is_none(), "the demo's user token shape: {c}");

    // Defaults: one hour, no scope; `act` makes a delegated token; `audience` is an alias.
    let got = mint(&sts, gw(), &[("sub", "bob"), ("audience", "tokex"), ("act", "agent-7")]).await;
    assert_eq!(got.0, 200, "{:?}", got.2);
    assert_eq!(got.2["expires_in"], 3600);
    assert!(got.2.get("scope").is_none());
    let c = verify(&sts, got.2["access_token"].as_str().unwrap(), "tokex").await;
    assert_eq!(c["aud"], "tokex");
    assert_eq!(c["act"], json!({"sub": "agent-7"}));
    assert!(c.get("scope").is_none());
    assert_eq!(sts.exchange_count(), 0, "a mint is not an exchange");
}

#[tokio::test]
async fn every_client_authentication_of_token_works_and_is_required() {
    let (key, pem) = client_key();
    let sts = start(Some(pem), "", &[]).await;
    let form = [("sub", "alice"), ("aud", "tokex")];
    assert_eq!(mint(&sts, Auth::Post("tokex", GW_SECRET), &form).await.0, 200);
    // private_key_jwt: the assertion may name /mint, /token or the issuer; a jti once.
    for (aud, jti) in [(sts.mint_endpoint(), "one"), (sts.token_endpoint(), "two"), (sts.issuer().to_owned(), "three")]
    {
        let got = mint(&sts, Auth::Assertion(assertion(&key, &aud, jti)), &form).await;
        assert_eq!(got.0, 200, "{aud}: {:?}", got.2);
    }
    assert_error(
        &mint(&sts, Auth::Assertion(assertion(&key, &sts.mint_endpoint(), "one")), &form).await,
        401,
        "invalid_client",
    );
    let elsewhere = assertion(&key, "https://elsewhere/mint", "four");
    assert_error(&mint(&sts, Auth::Assertion(elsewhere), &form).await, 401, "invalid_client");

    // Never anonymous, and a wrong or unknown secret is refused; the form is
    // not looked at before the client is known.
    for auth in [Auth::None, Auth::Basic("tokex", "wrong"), Auth::Post("tokex", "wrong"), Auth::Basic("nobody", "x")] {
        let got = mint(&sts, auth, &form).await;
        assert_error(&got, 401, "invalid_client");
        assert!(got.1.contains_key("www-authenticate"));
    }
    assert_error(&mint(&sts, Auth::None, &[("expires_in", "0")]).await, 401, "invalid_client");
}

#[tokio::test]
async fn bad_forms_are_invalid_request() {
    let sts = start(None, "", &[]).await;
    let refused = [
        vec![("aud", "tokex")],
        vec![("sub", "alice")],
        vec![("sub", "alice"), ("aud", " ")],
        vec![("sub", "al\nice"), ("aud", "tokex")],
        vec![("sub", "alice"), ("sub", "bob"), ("aud", "tokex")],
        vec![("sub", "alice"), ("aud", "tokex"), ("expires_in", "0")],
        vec![("sub", "alice"), ("aud", "tokex"), ("expires_in", "86401")],
        vec![("sub", "alice"), ("aud", "tokex"), ("expires_in", "1h")],
        vec![("sub", "alice"), ("aud", "tokex"), ("expires_in", "60"), ("expires_in", "60")],
    ];
    for form in &refused {
        assert_error(&mint(&sts, gw(), form).await, 400, "invalid_request");
    }
    let quote = [("sub", "alice"), ("aud", "tokex"), ("scope", "a\"b")];
    assert_error(&mint(&sts, gw(), &quote).await, 400, "invalid_scope");

    // The /token rules for the request itself.
    let resp = client().get(sts.mint_endpoint()).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.headers()["allow"].to_str().unwrap()), (405, "POST"));
    let resp = client()
        .post(sts.mint_endpoint())
        .basic_auth("tokex", Some(GW_SECRET))
        .header("content-type", "application/json")
        .body(r#"{"sub":"alice","aud":"tokex"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let big = format!("sub=alice&aud=tokex&pad={}", "x".repeat(dev_sts::MAX_FORM_BYTES));
    let resp = client()
        .post(sts.mint_endpoint())
        .basic_auth("tokex", Some(GW_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
}

#[tokio::test]
async fn served_under_the_issuer_path_and_not_advertised() {
    let sts = start(None, "/dev", &[]).await;
    assert!(sts.mint_endpoint().ends_with("/dev/mint"), "{}", sts.mint_endpoint());
    let got = mint(&sts, gw(), &[("sub", "alice"), ("aud", "tokex")]).await;
    assert_eq!(got.0, 200, "{:?}", got.2);
    let root = format!("http://{}/mint", sts.addr());
    let resp = client().post(root).basic_auth("tokex", Some(GW_SECRET)).form(&[("sub", "a"), ("aud", "t")]).send();
    assert_eq!(resp.await.unwrap().status(), 200, "also at the root, like /token");
    let meta = client().get(format!("http://{}/.well-known/oauth-authorization-server/dev", sts.addr())).send();
    let meta = meta.await.unwrap().text().await.unwrap();
    assert!(!meta.contains("mint"), "{meta}");
}

#[tokio::test]
async fn a_minted_token_is_a_subject_token_at_token() {
    let sts = start(None, "", &[]).await;
    let got = mint(&sts, gw(), &[("sub", "alice"), ("aud", "tokex"), ("scope", "orders:read orders:write")]).await;
    let user = got.2["access_token"].as_str().unwrap().to_owned();
    let form = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", user.as_str()),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
        ("audience", "orders-api"),
        ("scope", "orders:read"),
    ];
    let resp = client().post(sts.token_endpoint()).basic_auth("tokex", Some(GW_SECRET)).form(&form).send();
    let body: Value = serde_json::from_str(&resp.await.unwrap().text().await.unwrap()).unwrap();
    let c = verify(&sts, body["access_token"].as_str().expect("exchanged"), "orders-api").await;
    assert_eq!(
        (c["sub"].as_str(), c["scope"].as_str(), c["client_id"].as_str()),
        (Some("alice"), Some("orders:read"), Some("tokex"))
    );
}

// ---------------------------------------------------------------------------
// Through the gateway of examples/dev/config.yaml

/// `examples/dev/config.yaml` with the dev-sts, the backend and the secret
/// of this test (and ports 0 for the gateway and admin).
fn example_config(sts: &DevSts, backend: std::net::SocketAddr) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dev/config.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    for fixed in
        ["127.0.0.1:8080", "127.0.0.1:9901", "http://127.0.0.1:9400", "http://127.0.0.1:8081", "${TOKEX_CLIENT_SECRET}"]
    {
        assert!(text.contains(fixed), "examples/dev/config.yaml no longer names {fixed}");
    }
    text.replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace("http://127.0.0.1:9400", sts.issuer())
        .replace("http://127.0.0.1:8081", &format!("http://{backend}"))
        .replace("${TOKEX_CLIENT_SECRET}", GW_SECRET)
}

fn backend_claims(body: &str) -> Value {
    let auth = seen(&echoed(body), "authorization");
    assert_eq!(auth.len(), 1, "{body}");
    tokex::exchange::unverified::claims_json(auth[0].strip_prefix("Bearer ").unwrap()).unwrap()
}

#[tokio::test]
async fn the_example_walkthrough_through_a_real_gateway() {
    let sts = start(None, "", &[]).await;
    let backend = echo_backend().await;
    let gw_ = TestGateway::start(&example_config(&sts, backend)).await;
    let minted = |form: Vec<(&'static str, &'static str)>| {
        let sts = &sts;
        async move { mint(sts, gw(), &form).await.2["access_token"].as_str().unwrap().to_owned() }
    };

    let alice = minted(vec![("sub", "alice"), ("aud", "tokex"), ("scope", "orders:read orders:write")]).await;
    let (status, _, body) = get(&format!("{}/orders/42", gw_.url), Some(&alice)).await;
    assert_eq!(status, 200, "{body}");
    let c = backend_claims(&body);
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["aud"], "orders-api");
    assert_eq!(c["scope"], "orders:read");
    assert_eq!(c["client_id"], "tokex");
    assert_eq!(c["iss"], sts.issuer());
    assert_eq!(sts.exchange_count(), 1);

    // A pre-delegated token keeps its actor through the exchange.
    let delegated =
        minted(vec![("sub", "alice"), ("aud", "tokex"), ("scope", "orders:read"), ("act", "agent-7")]).await;
    let (status, _, body) = get(&format!("{}/orders/43", gw_.url), Some(&delegated)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(backend_claims(&body)["act"], json!({"sub": "agent-7"}));

    // inbound.jwt: another audience is refused before any exchange; so is a
    // token without orders:read at the exchange (invalid_scope → 403).
    let elsewhere = minted(vec![("sub", "alice"), ("aud", "other"), ("scope", "orders:read")]).await;
    let (status, headers, _) = get(&format!("{}/orders/1", gw_.url), Some(&elsewhere)).await;
    assert_eq!(status, 401);
    assert!(headers["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    let no_scope = minted(vec![("sub", "alice"), ("aud", "tokex")]).await;
    assert_eq!(get(&format!("{}/orders/1", gw_.url), Some(&no_scope)).await.0, 403);
    assert_eq!(sts.exchange_count(), 2);
}

// ---------------------------------------------------------------------------
// tokex dev-sts mint (the binary)

async fn run_mint(sts: &DevSts, args: &[&str], secret_env: Option<&str>) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["dev-sts", "mint", "--url", sts.issuer()]).args(args);
    cmd.env_remove("TOKEX_DEV_CLIENT_SECRET").env_remove("TOKEX_CONFIG").env_remove("TOKEX_LOG");
    if let Some(s) = secret_env {
        cmd.env("TOKEX_DEV_CLIENT_SECRET", s);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await.unwrap().unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn the_mint_command_prints_only_the_token() {
    let sts = start(None, "", &[]).await;
    let args = [
        "--client-id",
        "tokex",
        "--sub",
        "alice",
        "--aud",
        "tokex",
        "--aud",
        "orders-api",
        "--scope",
        "orders:read orders:write",
        "--scope",
        "profile",
        "--expires-in",
        "10m",
        "--act",
        "agent-7",
    ];
    let (code, stdout, stderr) = run_mint(&sts, &args, Some(GW_SECRET)).await;
    assert_eq!(code, Some(0), "{stderr}");
    let token = stdout.strip_suffix('\n').expect("the token and a newline");
    assert!(!token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)), "{stdout:?}");
    assert!(!stderr.contains(token) && !stderr.contains(GW_SECRET), "{stderr}");
    let c = verify(&sts, token, "orders-api").await;
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["aud"], json!(["tokex", "orders-api"]));
    assert_eq!(c["scope"], "orders:read orders:write profile");
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 600);
    assert_eq!(c["act"], json!({"sub": "agent-7"}));

    // --client-secret works as well as the environment.
    let (code, stdout, _) =
        run_mint(&sts, &["--client-id", "tokex", "--client-secret", GW_SECRET, "--sub", "bob", "--aud", "tokex"], None)
            .await;
    assert_eq!(code, Some(0));
    let c = verify(&sts, stdout.trim_end(), "tokex").await;
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 3600);
}

#[tokio::test]
async fn the_mint_command_exits_1_when_refused_and_64_for_bad_flags() {
    let sts = start(None, "", &[]).await;
    let base = ["--client-id", "tokex", "--sub", "alice", "--aud", "tokex"];
    let (code, stdout, stderr) = run_mint(&sts, &base, Some("wrong")).await;
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("invalid_client") && stderr.contains("client authentication failed"), "{stderr}");
    assert!(!stderr.contains("wrong"), "the secret is not echoed: {stderr}");

    for bad in [
        vec!["--client-id", "tokex", "--sub", "alice"],
        vec!["--client-id", "tokex", "--sub", "alice", "--aud", "tokex", "--expires-in", "2d"],
        vec!["--client-id", "tokex", "--sub", "alice", "--aud", "tokex", "--expires-in", "soon"],
        vec!["--client-id", "tokex", "--sub", "", "--aud", "tokex"],
        vec!["--client-id", "tokex", "--sub", "alice", "--aud", "tokex", "--bogus"],
    ] {
        let (code, stdout, stderr) = run_mint(&sts, &bad, Some(GW_SECRET)).await;
        assert_eq!(code, Some(64), "{bad:?}: {stderr}");
        assert!(stdout.is_empty());
    }
    let (code, _, stderr) = run_mint(&sts, &base, None).await;
    assert_eq!(code, Some(64), "no secret: {stderr}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["dev-sts", "mint", "--url", &format!("http://{closed}")])
        .args(base)
        .env("TOKEX_DEV_CLIENT_SECRET", GW_SECRET)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "unreachable");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

// ---------------------------------------------------------------------------
// The banner of `tokex dev-sts`

#[tokio::test]
async fn the_banner_mint_commands_work_as_printed() {
    let sts = common::process::DevStsProcess::start(
        &["--client", "id=tokex,secret=dev-secret,audiences=orders-api,scopes=orders:read|orders:write"],
        |line| line.contains("tokex dev-sts mint"),
    )
    .await;
    let (port, out) = (sts.port, &sts.banner);
    let curl =
        out.iter().find(|l| l.contains("/mint") && l.trim_start().starts_with("curl ")).expect("a curl to /mint");
    let command = out.last().unwrap().trim();
    assert!(curl.ends_with(&format!(" http://127.0.0.1:{port}/mint")), "{curl}");

    // The tokex form, as printed (with this build for `tokex`).
    let inner = command.strip_prefix("TOKEN=$(").and_then(|c| c.strip_suffix(')')).expect("TOKEN=$(...)");
    let script = inner.replacen("tokex ", &format!("{BIN} "), 1);
    let run =
        tokio::process::Command::new("sh").args(["-c", &script]).env_remove("TOKEX_CONFIG").output().await.unwrap();
    assert!(run.status.success(), "{script}: {}", String::from_utf8_lossy(&run.stderr));
    let token = String::from_utf8(run.stdout).unwrap();
    let claims = tokex::exchange::unverified::claims_json(token.trim_end()).unwrap();
    assert_eq!((claims["sub"].as_str(), claims["aud"].as_str()), (Some("alice"), Some("tokex")));
    assert_eq!(claims["scope"], "orders:read orders:write");

    // The curl form, where curl is installed.
    if std::process::Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let run = tokio::process::Command::new("sh").args(["-c", curl.trim()]).output().await.unwrap();
        let body: Value = serde_json::from_slice(&run.stdout).unwrap();
        assert_eq!(body["token_type"], "Bearer", "{body}");
        assert_eq!(body["scope"], "orders:read orders:write");
    }

    sts.stop().await;
}
