//! DPoP (RFC 9449, issue 17, SPEC §6) through a real gateway: proofs to a
//! recording authorization server (and its nonce), DPoP-bound tokens
//! forwarded with a proof per request (and a backend's nonce), and callers'
//! proofs checked on the way in (`inbound.dpop`). Every proof tokex makes is
//! verified here with `tokex::dpop::verify`, which passes the RFC's own
//! example (unit tests); `tests/dpop_interop.rs` checks them with an
//! independent implementation.

#[path = "../common/mod.rs"]
mod common;

mod inbound;
mod outbound;

use std::time::Duration;

use serde_json::{json, Value};
use tokex::dpop::{self, Expect, Verified};

use common::*;

const ALGS: &[jsonwebtoken::Algorithm] = &[jsonwebtoken::Algorithm::ES256, jsonwebtoken::Algorithm::EdDSA];

/// A DPoP-bound answer of the recording AS.
fn dpop_token(n: usize) -> Reply {
    Reply::Json(200, json!({"access_token": format!("bound-{n}"), "token_type": "DPoP", "expires_in": 60}))
}

/// Checks `proof` for a request (`token`: the access token it goes with).
fn check(proof: &str, htm: &str, htu: &str, token: Option<&str>, nonce: Option<&str>) -> Verified {
    let want = Expect {
        algorithms: ALGS,
        htm,
        htu,
        origins: &[],
        token,
        nonce,
        max_age: Duration::from_secs(60),
        leeway: Duration::from_secs(5),
    };
    dpop::verify(proof, &want).unwrap_or_else(|e| panic!("proof refused ({e}): {proof}"))
}

/// The proof's claims, unverified.
fn claims_of(proof: &str) -> Value {
    let payload = proof.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap())
        .unwrap()
}

/// The config of one DPoP server `corp` (`dpop` is its `dpop:` value) and `routes`.
fn dpop_config(as_url: &str, dpop: &str, routes: &str) -> String {
    config_with(as_url, BASIC_AUTH, routes).replace("    retries: 1\n", &format!("    retries: 1\n    dpop: {dpop}\n"))
}
