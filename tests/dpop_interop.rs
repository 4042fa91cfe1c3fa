//! tokex's DPoP (RFC 9449) against an independent implementation:
//! IdentityPython's idpyoidc (with cryptojwt), driven by
//! tests/interop/dpop_check.py, which also says what it checks by hand.
//!
//! - tokex → authorization server: the proof of the token request verifies
//!   (typ, alg, jwk, signature, htm POST, htu the token endpoint, no ath);
//! - tokex → backend: the DPoP-bound token goes as `Authorization: DPoP`
//!   with a fresh proof per request that verifies for the request as the
//!   backend sees it (htm, htu its scheme, Host and path without the query, ath of the token), by the
//!   key the token request named; ES256 and EdDSA, keys made by tokex and
//!   keys made by the library (`key_file`);
//! - client → tokex: proofs the library makes are accepted once, for a
//!   token bound to the library's key (`cnf.jkt`), and refused when replayed.
//!
//! The Python interpreter comes from `TOKEX_PYTHON`, with idpyoidc and
//! cryptojwt installed; `scripts/test.sh` sets both up. The tests fail,
//! never skip, without them.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::jwt::{claims, jwt_inbound, ready, EcSigner, JwksServer};
use common::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const SETUP: &str = "run the test command from the README (`bash scripts/test.sh`, which installs them into .venv \
                     and sets TOKEX_PYTHON), or by hand:\n  python3 -m venv .venv && .venv/bin/pip install \
                     idpyoidc==5.0.0 cryptojwt==1.11.0\n  TOKEX_PYTHON=$PWD/.venv/bin/python cargo test --test \
                     dpop_interop";

/// Runs `tests/interop/dpop_check.py COMMAND` with `input` as JSON on its
/// standard input; its JSON answer. Fails the test, with the script's
/// reason (the proof and the library's error), when the script does.
async fn python(command: &str, input: &Value) -> Value {
    let python = std::env::var_os("TOKEX_PYTHON")
        .unwrap_or_else(|| panic!("TOKEX_PYTHON is not set: this test needs a Python with idpyoidc; {SETUP}"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/dpop_check.py");
    let mut child = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("TOKEX_PYTHON={python:?} does not run ({e}); {SETUP}"));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("dpop_check.py did not finish within 30 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("ModuleNotFoundError") {
        panic!("TOKEX_PYTHON={python:?} lacks a package:\n{stderr}\n{SETUP}");
    }
    assert!(out.status.success(), "dpop_check.py {command} failed ({}):\n{stderr}", out.status);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("dpop_check.py {command}: not JSON ({e})"))
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// A gateway whose authorization server `corp` has `dpop: {dpop}` and
/// answers DPoP-bound tokens; one exchange, then a GET (with a query) and
/// a POST through to the echo backend. The library verifies the token
/// request's proof and both backend proofs; all name one key, `jkt` when
/// given. The key's algorithm and thumbprint.
async fn tokex_to_as_and_backend(dpop: &str, jkt: Option<&str>) -> (String, String) {
    let auth_server = RecordingAs::start().await;
    auth_server.set(|_, n| {
        Reply::Json(
            200,
            json!({
                "access_token": format!("dpop-bound-{n}"),
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "token_type": "DPoP",
                "expires_in": 300
            }),
        )
    });
    let backend = echo_backend().await;
    let yaml = format!(
        "authorization_servers:\n  corp:\n    token_endpoint: {}\n    client_auth: {BASIC_AUTH}\n    timeout: 2s\n    \
         retries: 1\n    dpop: {dpop}\ncache: {{ expiry_skew: 0s }}\nroutes:\n{}",
        auth_server.token_url(),
        exchange_route("orders", "/", backend, "")
    );
    let gw = TestGateway::start(&yaml).await;
    let caller = fake_jwt(json!({"sub": "alice", "exp": now() + 600}));

    let resp = client().get(format!("{}/orders/42?expand=items", gw.url)).bearer_auth(&caller).send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET through the gateway");
    let get = echoed(&resp.text().await.unwrap());
    let resp = client().post(format!("{}/orders/7", gw.url)).bearer_auth(&caller).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 200, "POST through the gateway");
    let post = echoed(&resp.text().await.unwrap());

    assert_eq!(auth_server.count(), 1, "one exchange, then the cache");
    let token_request = auth_server.last();
    let as_proofs: Vec<_> = token_request.headers.get_all("dpop").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(as_proofs.len(), 1, "one DPoP header on the token request");
    let token = "dpop-bound-1";
    let mut expected = vec![json!({
        "proof": as_proofs[0], "htm": "POST", "htu": auth_server.token_url(), "token": null, "jkt": jkt,
    })];
    for (echo, method, path) in [(&get, "GET", "/orders/42"), (&post, "POST", "/orders/7")] {
        assert_eq!(echo["method"], method);
        assert_eq!(echo["path"], path);
        assert_eq!(seen(echo, "authorization"), [format!("DPoP {token}")], "the bound token as DPoP");
        let proofs = seen(echo, "dpop");
        assert_eq!(proofs.len(), 1, "one proof per backend request: {proofs:?}");
        expected.push(json!({
            "proof": proofs[0], "htm": method, "htu": format!("http://{}{path}", seen(echo, "host")[0]), "token": token, "jkt": jkt,
        }));
    }

    let verified = python("verify", &Value::Array(expected)).await;
    let verified = verified.as_array().unwrap();
    let (alg, jkt) = (text(&verified[0]["alg"]), text(&verified[0]["jkt"]));
    for v in verified {
        assert_eq!((text(&v["alg"]), text(&v["jkt"])), (alg, jkt), "every proof by the key of the token request");
    }
    (alg.to_owned(), jkt.to_owned())
}

#[tokio::test]
async fn tokex_es256_proofs_verify_with_idpyoidc() {
    let (alg, _) = tokex_to_as_and_backend("{}", None).await;
    assert_eq!(alg, "ES256", "the default key");
}

#[tokio::test]
async fn tokex_eddsa_proofs_verify_with_idpyoidc() {
    let (alg, _) = tokex_to_as_and_backend("{ algorithm: EdDSA }", None).await;
    assert_eq!(alg, "EdDSA");
}

/// `key_file`: PKCS#8 keys made by the library; tokex's proofs carry their
/// public keys (the thumbprints the library computed).
#[tokio::test]
async fn tokex_signs_with_key_files_made_by_cryptojwt() {
    let keys = python("keygen", &json!({"algs": ["ES256", "EdDSA"]})).await;
    let dir = std::env::temp_dir().join(format!("tokex-dpop-interop-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    for key in keys.as_array().unwrap() {
        let (alg, jkt) = (text(&key["alg"]), text(&key["jkt"]));
        let file = dir.join(format!("{alg}.pem"));
        std::fs::write(&file, text(&key["pkcs8_pem"])).unwrap();
        let dpop = format!("{{ key_file: {} }}", file.display());
        let (signed_alg, signed_jkt) = tokex_to_as_and_backend(&dpop, Some(jkt)).await;
        assert_eq!((signed_alg.as_str(), signed_jkt.as_str()), (alg, jkt));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The library makes a key and a proof for a request to the gateway; the
/// caller's token is bound to that key. The first use passes, a replay is
/// refused with a DPoP challenge. With `inbound.jwt` (ES256 key: `cnf.jkt`
/// of the verified token) and with no inbound check (EdDSA key: `cnf.jkt`
/// of the token as presented).
#[tokio::test]
async fn idpyoidc_proofs_are_accepted_once() {
    let keys = python("keygen", &json!({"algs": ["ES256", "EdDSA"]})).await;
    let (es, ed) = (&keys[0], &keys[1]);
    assert_eq!((text(&es["alg"]), text(&ed["alg"])), ("ES256", "EdDSA"));

    let signer = EcSigner::new("caller-key");
    let jwks = JwksServer::start(vec![signer.jwk.clone()]).await;
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let routes = exchange_route("orders", "/", backend, "");
    let with_jwt = jwt_inbound(&jwks.uri(), "[ES256]", "  dpop: require\n")
        + &config_with(&auth_server.token_url(), BASIC_AUTH, &routes);
    let with_jwt = TestGateway::start(&with_jwt).await;
    assert!(ready(&with_jwt, Duration::from_secs(5)).await, "gateway not ready after the first JWKS fetch");
    let as_presented =
        "inbound:\n  dpop: require\n".to_owned() + &config_with(&auth_server.token_url(), BASIC_AUTH, &routes);
    let as_presented = TestGateway::start(&as_presented).await;

    let cases = [
        (&with_jwt, es, signer.token(&claims(json!({"cnf": {"jkt": es["jkt"]}})))),
        (&as_presented, ed, fake_jwt(json!({"sub": "bob", "exp": now() + 600, "cnf": {"jkt": ed["jkt"]}}))),
    ];
    let requests: Vec<Value> = cases
        .iter()
        .map(|(gw, key, token)| {
            json!({"jwk": key["jwk"], "alg": key["alg"], "htm": "GET", "htu": format!("{}/orders/1", gw.url), "token": token})
        })
        .collect();
    let proofs = python("prove", &Value::Array(requests)).await;

    for ((gw, key, token), proof) in cases.iter().zip(proofs.as_array().unwrap()) {
        let alg = text(&key["alg"]);
        let proof = text(&proof["proof"]);
        let send = || {
            client()
                .get(format!("{}/orders/1?page=2", gw.url))
                .header("authorization", format!("DPoP {token}"))
                .header("dpop", proof)
                .send()
        };
        let resp = send().await.unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert_eq!(status, 200, "{alg}: the library's proof refused: {body}\nproof: {proof}");
        let echo = echoed(&body);
        assert_eq!(echo["path"], "/orders/1");
        assert!(seen(&echo, "dpop").is_empty(), "{alg}: the caller's proof reached the backend");
        assert!(
            seen(&echo, "authorization").first().is_some_and(|a| a.starts_with("Bearer exchanged-")),
            "{alg}: the exchanged token, not the caller's: {echo}"
        );

        let resp = send().await.unwrap();
        assert_eq!(resp.status(), 401, "{alg}: a replayed proof");
        let challenge = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
        let challenge = challenge.unwrap_or_default();
        assert!(
            challenge.starts_with("DPoP ") && challenge.contains("error=\"invalid_dpop_proof\""),
            "{alg}: challenge {challenge:?}"
        );
    }
    assert_eq!(auth_server.count(), 2, "one exchange per gateway, none for a replay");
}
