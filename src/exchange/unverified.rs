//! Reads JWT claims WITHOUT verifying the signature. Used only to bound a
//! cache entry's lifetime by the subject token's `exp`, to name the
//! subject in audit events and to index entries for revocation (a purge by
//! `sub` may only remove more); never to make an access decision.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct PeekedClaims {
    #[serde(default)]
    pub sub: Option<String>,
    /// OIDC `email`: a Shared Signals event may name the subject by it.
    /// Any JSON here (a token with an odd `email` keeps its `sub` and `exp`).
    #[serde(default)]
    email: Option<serde_json::Value>,
    #[serde(default)]
    pub exp: Option<f64>,
}

impl PeekedClaims {
    /// `email`, when it is a string.
    pub fn email(&self) -> Option<&str> {
        self.email.as_ref().and_then(serde_json::Value::as_str)
    }
}

/// Claims of a compact JWS, or `None` when the token is not one.
pub fn peek(token: &str) -> Option<PeekedClaims> {
    serde_json::from_slice(&payload(token)?).ok()
}

/// Whether a compact JWS is DPoP-bound (`cnf.jkt`, RFC 9449 §6.1), read
/// whatever the types of its other claims.
pub fn dpop_bound(token: &str) -> bool {
    #[derive(Deserialize)]
    struct Confirmation {
        #[serde(default)]
        cnf: Option<serde_json::Value>,
    }
    payload(token)
        .and_then(|p| serde_json::from_slice::<Confirmation>(&p).ok())
        .is_some_and(|c| c.cnf.is_some_and(|c| c.get("jkt").is_some()))
}

/// `iss` and `sub` of a compact JWS (unverified): who a token names, to
/// tell two actors apart in a digest.
pub fn peek_identity(token: &str) -> Option<(String, String)> {
    let claims = claims_json(token)?;
    let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    Some((text("iss").unwrap_or_default(), text("sub")?))
}

/// All claims of a compact JWS as JSON (unverified; for display only).
pub fn claims_json(token: &str) -> Option<serde_json::Value> {
    serde_json::from_slice(&payload(token)?).ok()
}

fn payload(token: &str) -> Option<Vec<u8>> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > 16 * 1024 {
        return None;
    }
    URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sub_and_exp() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"alice","exp":1700000000}"#);
        let c = peek(&format!("e30.{payload}.sig")).unwrap();
        assert_eq!(c.sub.as_deref(), Some("alice"));
        assert_eq!(c.exp, Some(1_700_000_000.0));
    }

    #[test]
    fn a_dpop_binding_is_read_whatever_the_other_claims() {
        let jws = |claims: &str| format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims));
        assert!(dpop_bound(&jws(r#"{"cnf":{"jkt":"k"},"exp":"not a number","sub":7}"#)));
        assert!(!dpop_bound(&jws(r#"{"cnf":{"x5t#S256":"t"}}"#)), "a certificate binding is not DPoP's");
        assert!(!dpop_bound(&jws(r#"{"cnf":null}"#)));
        assert!(!dpop_bound(&jws(r#"{"sub":"a"}"#)));
        assert!(!dpop_bound("opaque"));
    }

    #[test]
    fn opaque_tokens_are_none() {
        assert!(peek("opaque-token").is_none());
        assert!(peek("a.b.c.d").is_none());
        assert!(peek("a.!!!.c").is_none());
    }
}
