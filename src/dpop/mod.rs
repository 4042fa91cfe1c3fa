//! DPoP (RFC 9449): proofs of possession that tokex signs (`key.rs`) —
//! to the authorization server with each token request, and to backends
//! with each request that carries a DPoP-bound token — and proofs that
//! tokex verifies (`verify.rs`) from callers, from dev-sts's token
//! endpoint and from the demo's backend. Keys are identified by their
//! RFC 7638 thumbprint (`jkt`). Only `ring` does the cryptography.

mod key;
mod replay;
mod verify;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

pub use key::{write_new_key, KeySource, ProofKey};
pub use replay::ReplayCache;
pub use verify::{verify, Expect, ProofError, Verified};

/// `typ` of a DPoP proof (RFC 9449 §4.2).
pub const PROOF_TYP: &str = "dpop+jwt";
/// The request header that carries a proof, and the `Authorization` scheme.
pub const HEADER: &str = "dpop";
pub const SCHEME: &str = "DPoP";
/// The header a server uses to hand out a nonce (RFC 9449 §8, §9).
pub const NONCE_HEADER: &str = "dpop-nonce";
/// Largest proof read (the JWK of a 4096-bit RSA key and a few claims fit).
pub const MAX_PROOF_BYTES: usize = 8 * 1024;

/// Longest nonce taken from a server.
const MAX_NONCE: usize = 512;

/// A server's latest `DPoP-Nonce` (RFC 9449 §8, §9), sent in later proofs.
#[derive(Debug, Default)]
pub struct Nonce(std::sync::Mutex<Option<std::sync::Arc<str>>>);

impl Nonce {
    pub fn get(&self) -> Option<std::sync::Arc<str>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes the answer's `DPoP-Nonce`, when it sent a usable one; true if so.
    pub fn remember(&self, headers: &http::HeaderMap) -> bool {
        let Some(v) = headers.get(NONCE_HEADER).and_then(|v| v.to_str().ok()) else { return false };
        // RFC 9449 §8.1: 1*NQCHAR, visible ASCII but `"` and `\`.
        let nqchar = |b: u8| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\';
        if v.is_empty() || v.len() > MAX_NONCE || !v.bytes().all(nqchar) {
            return false;
        }
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::sync::Arc::from(v));
        true
    }
}

/// base64url without padding, as JOSE writes it.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `ath`: the base64url SHA-256 of an access token (RFC 9449 §4.2).
pub fn ath(token: &str) -> String {
    b64(&Sha256::digest(token.as_bytes()))
}

/// The RFC 7638 thumbprint of a public key, from its required members in
/// lexicographic order: `(name, base64url value)` pairs, `kty` included.
fn thumbprint(members: &[(&str, &str)]) -> String {
    let mut json = String::from("{");
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        // Names and base64url values need no escaping.
        json.push_str(&format!("\"{name}\":\"{value}\""));
    }
    json.push('}');
    b64(&Sha256::digest(json.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let tp = thumbprint(&[("e", "AQAB"), ("kty", "RSA"), ("n", n)]);
        assert_eq!(tp, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn ath_is_base64url_sha256() {
        // RFC 9449 §7.1: the access token of Figure 13 and its `ath`.
        assert_eq!(ath("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"), "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo");
    }
}
