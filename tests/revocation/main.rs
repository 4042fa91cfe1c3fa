//! Revocation that reaches the cache (issue 16, SPEC §5): `POST /cache/purge`
//! on the admin listener by each selector, its admin token, RFC 7009
//! revocation of what was purged (or refused by the backend) observed at a
//! recording authorization server, the Shared Signals push endpoint with
//! SETs signed by a test transmitter (and forged, replayed, mis-addressed
//! and stale ones), and purges reaching every replica through a real
//! `redis-server`.

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod fleet;
mod purge;
mod ssf;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const ADMIN_TOKEN: &str = "admin-s3cret-token";

/// A subject token with `sub` and `email` (peeked, never verified here).
pub fn subject(sub: &str) -> String {
    fake_jwt(json!({"sub": sub, "email": format!("{sub}@example.com"), "exp": now() + 3600}))
}

pub fn sha256_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

/// A file holding the admin token.
pub fn admin_token_file() -> PathBuf {
    let path = common::process::temp_dir("revocation").join("admin-token");
    std::fs::write(&path, format!("{ADMIN_TOKEN}\n")).unwrap();
    path
}

/// `orders` and `billing` exchange routes at `auth_server`; `extra` goes
/// under the server (e.g. `revocation_endpoint:`), `top` at the top level.
pub fn config(auth_server: &RecordingAs, backend: SocketAddr, server_extra: &str, top: &str) -> String {
    format!(
        "authorization_servers:\n  corp:\n    token_endpoint: {}\n    client_auth: {BASIC_AUTH}\n    timeout: 2s\n    retries: 0\n{server_extra}cache: {{ expiry_skew: 0s }}\n{top}routes:\n{}{}",
        auth_server.token_url(),
        exchange_route("orders", "/orders", backend, ""),
        exchange_route("billing", "/billing", backend, ""),
    )
}

/// The admin section with the token file.
pub fn admin_section() -> String {
    format!("admin: {{ address: \"127.0.0.1:0\", token_file: \"{}\" }}\n", admin_token_file().display())
}

/// `POST /cache/purge` with `token` (none: no `Authorization`).
pub async fn purge(gw: &TestGateway, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = client()
        .post(format!("{}/cache/purge", gw.admin))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A request through the gateway that must succeed; the token the backend got.
pub async fn call(gw: &TestGateway, path: &str, token: &str) -> String {
    let (status, _, body) = get(&format!("{}{path}", gw.url), Some(token)).await;
    assert_eq!(status, 200, "{path}: {body}");
    seen(&echoed(&body), "authorization").first().cloned().unwrap_or_default()
}

/// The token requests (not revocations, not discovery) the AS received.
pub fn exchanges(auth_server: &RecordingAs) -> usize {
    auth_server.requests().iter().filter(|r| r.path == "/token").count()
}

/// The revocation requests the AS received.
pub fn revocations(auth_server: &RecordingAs) -> Vec<Recorded> {
    auth_server.requests().into_iter().filter(|r| r.path == "/revoke").collect()
}

/// Waits (up to `within`) until `f` holds; how long it took.
pub async fn within(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if f() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f().then(|| started.elapsed())
}

/// The AS answers token requests with `exchanged-N` and revocations with 200.
pub fn answer_revocations(auth_server: &RecordingAs) {
    auth_server.set(|r, n| match r.path.as_str() {
        "/revoke" => Reply::Raw(200, "application/json", Vec::new()),
        _ => issue(n),
    });
}
