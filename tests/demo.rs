//! `tokex demo` prints the walkthrough: narrowed tokens, the cache hit,
//! the error answers, DPoP-bound tokens, an MCP client's discovery, a
//! Transaction Token per request and revocation.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tokex");

/// The value columns of a claim row: (caller sent, backend received).
fn row<'a>(section: &'a str, claim: &str) -> (&'a str, &'a str) {
    let line = section
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{claim} ")))
        .unwrap_or_else(|| panic!("no {claim} row in:\n{section}"));
    let rest = line.trim_start()[claim.len()..].trim_start();
    // Columns are padded to 46 characters.
    let (sent, received) = rest.split_at(rest.char_indices().nth(46).map_or(rest.len(), |(i, _)| i));
    (sent.trim(), received.trim())
}

#[test]
fn demo_walkthrough() {
    let started = Instant::now();
    let out = Command::new(BIN).arg("demo").env_remove("TOKEX_LOG").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(20));

    let orders = text.split("2. GET /orders/42").nth(1).expect("orders step").split("\n3. ").next().unwrap();
    assert!(orders.contains("-> 200"), "{orders}");
    assert_eq!(row(orders, "sub"), ("alice", "alice"));
    assert_eq!(row(orders, "aud"), ("tokex", "orders-api"));
    assert_eq!(row(orders, "scope"), ("orders:read orders:write billing:read profile", "orders:read"));
    assert_eq!(row(orders, "act"), ("-", "-"));
    assert!(orders.contains("verified the signature against dev-sts JWKS: yes; broad token reached the backend: no"));

    let billing = text.split("3. GET /billing/7").nth(1).expect("billing step").split("\n4. ").next().unwrap();
    assert_eq!(row(billing, "aud"), ("tokex", "billing-api"));
    assert_eq!(row(billing, "scope").1, "billing:read");
    assert_eq!(row(billing, "act"), ("-", "{\"sub\":\"agent-7\"}"));

    assert!(
        text.contains("exchanges at the authorization server: 2 before this call, 2 after -> served from the cache (two calls, one exchange)"),
        "{text}"
    );
    assert!(text.contains("without a token -> 401\n     WWW-Authenticate: Bearer realm=\"tokex\"\n"), "{text}");
    assert!(text.contains("forged token (payload edited, signature kept) -> 401\n     WWW-Authenticate: Bearer realm=\"tokex\", error=\"invalid_token\""), "{text}");

    // DPoP: the backend gets a token bound to tokex's key with a fresh proof; a stolen copy is refused.
    assert!(text.contains("/secure  -> audience secure-api,  scope orders:read, DPoP-bound to tokex's key"), "{text}");
    let secure = text.split("7. GET /secure/42").nth(1).expect("DPoP step").split("\n8. ").next().unwrap();
    assert!(secure.contains("(DPoP: the exchanged token is bound to tokex's key) -> 200"), "{secure}");
    let jkt = secure.split("tokex's DPoP key   jkt ").nth(1).and_then(|r| r.split(' ').next()).expect("jkt");
    assert_eq!(jkt.len(), 43, "{secure}");
    assert!(
        secure.contains("dev-sts asked for a nonce (use_dpop_nonce), tokex retried with it -> token_type DPoP"),
        "{secure}"
    );
    assert!(secure.contains("backend received   Authorization: DPoP <token>, and a DPoP proof"), "{secure}");
    assert!(
        secure.contains("sub alice, aud secure-api, scope orders:read; signature verified against dev-sts JWKS: yes"),
        "{secure}"
    );
    assert!(secure.contains(&format!("cnf.jkt {jkt} (tokex's key: yes)")), "{secure}");
    assert!(secure.contains("/secure/42, ath = hash of that token, jti "), "{secure}");
    assert!(secure.contains(&format!("signed by {jkt} (the token's cnf.jkt: yes)")), "{secure}");
    let stolen = |what: &str| {
        let rest = secure.split(what).nth(1).unwrap_or_else(|| panic!("{what} in {secure}"));
        let mut lines = rest.lines();
        (lines.next().unwrap_or("").trim().to_owned(), lines.next().unwrap_or("").trim().to_owned())
    };
    assert_eq!(
        stolen("as Bearer "),
        (
            "-> 401  WWW-Authenticate: DPoP error=\"invalid_token\"".into(),
            "a DPoP-bound token (cnf.jkt) sent as a Bearer token".into()
        )
    );
    assert_eq!(
        stolen("as DPoP with the proof the backend saw "),
        ("-> 401  WWW-Authenticate: DPoP error=\"invalid_dpop_proof\"".into(), "the proof was used before".into())
    );
    assert_eq!(
        stolen("as DPoP with a fresh proof of another key "),
        (
            "-> 401  WWW-Authenticate: DPoP error=\"invalid_token\"".into(),
            "cnf.jkt is not the key that signed the proof".into()
        )
    );

    // An MCP client's discovery (RFC 9728): 401 → metadata → token for the resource → 200.
    let mcp = text.split("8. an AI agent calls an MCP server").nth(1).expect("MCP step").split("\n9. ").next().unwrap();
    assert!(mcp.contains("POST /mcp without a token -> 401\n     WWW-Authenticate: Bearer realm=\"tokex\", resource_metadata=\"http://mcp.demo.test/.well-known/oauth-protected-resource/mcp\", scope=\"files:read\"\n"), "{mcp}");
    assert!(mcp.contains("GET /.well-known/oauth-protected-resource/mcp -> 200 (RFC 9728): resource http://mcp.demo.test/mcp, authorization server http://127.0.0.1:"), "{mcp}");
    assert!(
        mcp.contains("a token for the resource (RFC 8707): aud http://mcp.demo.test/mcp, scope files:read"),
        "{mcp}"
    );
    assert!(
        mcp.contains("POST /mcp with it -> 200; the MCP server received sub agent-42, aud files-api, scope files:read (verified: yes); the agent's own token: never"),
        "{mcp}"
    );
    // A Transaction Token per request, never cached, no Authorization to the backend.
    let txn = text.split("9. GET /internal/orders/42").nth(1).expect("txn step").split("\n10. ").next().unwrap();
    assert!(
        txn.contains("txn-token: typ txntoken+jwt, sub alice, aud demo.internal, scope orders:read; signature verified: yes; Authorization: none"),
        "{txn}"
    );
    assert!(txn.contains("tctx {\"method\":\"GET\",\"path\":\"/internal/orders/42\"}"), "{txn}");
    assert!(txn.contains("\"req_ip\":\"127.0.0.1\""), "{txn}");
    assert!(txn.contains("(one transaction each; never cached: 2 requests to the token service for 2 calls)"), "{txn}");

    // Revocation: a signed CAEP event purges alice's tokens; the next call re-exchanges and is refused.
    let revoked = text.split("10. alice's session is revoked").nth(1).expect("revocation step");
    assert!(revoked.contains("POST /.well-known/ssf/push -> 202 in "), "{revoked}");
    assert!(
        revoked.contains("GET /orders/42 with the same broad token -> 401 (not cached any more: tokex exchanged again, and the authorization server refused)"),
        "{revoked}"
    );
    assert!(revoked.contains("error=\"invalid_token\""), "{revoked}");
}

#[test]
fn demo_serve_prints_curl_commands_and_keeps_running() {
    let mut child =
        Command::new(BIN).args(["demo", "--serve"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut gateway = None;
    let mut saw_curl = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(url) = line.trim().strip_prefix("tokex gateway") {
            gateway = Some(url.trim().to_owned());
        }
        if line.contains("grant_type=client_credentials") {
            saw_curl = true;
        }
        if line.contains("dev-sts discovery") {
            break;
        }
    }
    assert!(saw_curl);
    let gateway = gateway.expect("gateway address printed");
    // Still serving: a request without a token gets the gateway's 401.
    let addr = gateway.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /orders/1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
