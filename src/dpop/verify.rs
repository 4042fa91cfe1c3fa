//! Checking a DPoP proof (RFC 9449 §4.3), in the RFC's order: one
//! well-formed JWS; `typ: dpop+jwt`; an asymmetric `alg` from the allow-list
//! that suits the embedded `jwk`; a public `jwk` (no private member); the
//! signature; `htm` and `htu` equal to this request (RFC 3986 §6
//! normalisation, query and fragment ignored); the `nonce`, when one is
//! demanded; `iat` within the window; `ath` of the access token. What is
//! left to the caller: the replay cache (`replay.rs`) and that the token is
//! bound to the proof's key (its `cnf.jkt` equals [`Verified::jkt`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use ring::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use url::Url;

use super::{b64, thumbprint, MAX_PROOF_BYTES, PROOF_TYP};

/// Why a proof was refused. The reason goes to logs and metrics; callers
/// get `invalid_dpop_proof` (or `use_dpop_nonce`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("not exactly one DPoP header")]
    Count,
    #[error("not a well-formed JWS")]
    Malformed,
    #[error("typ is not dpop+jwt")]
    Typ,
    #[error("alg not allowed")]
    Alg,
    #[error("the jwk is not a public key that suits alg")]
    Jwk,
    #[error("bad signature")]
    Signature,
    #[error("a required claim is missing or of the wrong type")]
    Claims,
    #[error("htm does not match the request method")]
    Htm,
    #[error("htu does not match the request URI")]
    Htu,
    #[error("iat outside the accepted window")]
    Iat,
    #[error("the proof's nonce is missing or not the current one")]
    Nonce,
    #[error("ath does not match the access token")]
    Ath,
    #[error("the proof was used before")]
    Replayed,
    #[error("too many recent proofs to remember one more")]
    ReplayFull,
}

impl ProofError {
    pub const ALL: [ProofError; 14] = [
        ProofError::Count,
        ProofError::Malformed,
        ProofError::Typ,
        ProofError::Alg,
        ProofError::Jwk,
        ProofError::Signature,
        ProofError::Claims,
        ProofError::Htm,
        ProofError::Htu,
        ProofError::Iat,
        ProofError::Nonce,
        ProofError::Ath,
        ProofError::Replayed,
        ProofError::ReplayFull,
    ];

    /// Short, stable label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            ProofError::Count => "dpop_header_count",
            ProofError::Malformed => "dpop_malformed",
            ProofError::Typ => "dpop_typ",
            ProofError::Alg => "dpop_alg",
            ProofError::Jwk => "dpop_jwk",
            ProofError::Signature => "dpop_signature",
            ProofError::Claims => "dpop_claims",
            ProofError::Htm => "dpop_htm",
            ProofError::Htu => "dpop_htu",
            ProofError::Iat => "dpop_iat",
            ProofError::Nonce => "dpop_nonce",
            ProofError::Ath => "dpop_ath",
            ProofError::Replayed => "dpop_replayed",
            ProofError::ReplayFull => "dpop_replay_full",
        }
    }
}

/// What the proof must match.
pub struct Expect<'a> {
    pub algorithms: &'a [Algorithm],
    /// The request method.
    pub htm: &'a str,
    /// The request URI as the caller addressed it (query ignored).
    pub htu: &'a str,
    /// When not empty, `htu`'s origin is not compared: the proof's must be
    /// one of these (`scheme://host[:port]`), with `htu`'s path.
    pub origins: &'a [String],
    /// The access token sent with the proof: `ath` must be its hash.
    /// `None`: the proof must not carry one either (a token request).
    pub token: Option<&'a str>,
    /// The nonce the server demands, when it does.
    pub nonce: Option<&'a str>,
    /// How old `iat` may be, and how far in the future.
    pub max_age: Duration,
    pub leeway: Duration,
}

/// A proof that passed: its key's thumbprint, its `jti` and `iat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub jkt: String,
    pub jti: String,
    pub iat: u64,
}

/// Checks `proof` against `want` (see the module comment).
pub fn verify(proof: &str, want: &Expect<'_>) -> Result<Verified, ProofError> {
    verify_at(proof, want, SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64())
}

fn verify_at(proof: &str, want: &Expect<'_>, now: f64) -> Result<Verified, ProofError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(ProofError::Malformed);
    }
    let mut parts = proof.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(ProofError::Malformed);
    };
    let header = object(h)?;
    if header.contains_key("crit") {
        return Err(ProofError::Malformed);
    }
    if header.get("typ").and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() != Some(PROOF_TYP) {
        return Err(ProofError::Typ);
    }
    let alg = header.get("alg").and_then(Value::as_str).ok_or(ProofError::Alg)?;
    let alg: Algorithm = alg.parse().map_err(|_| ProofError::Alg)?;
    if !want.algorithms.contains(&alg) || !asymmetric(alg) {
        return Err(ProofError::Alg);
    }
    let jwk = header.get("jwk").and_then(Value::as_object).ok_or(ProofError::Jwk)?;
    let key = PublicKey::from_jwk(jwk, alg)?;
    let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| ProofError::Malformed)?;

    // The claims before the signature: comparisons cost less than a
    // signature check, and a proof for another request fails on them.
    let claims = object(p)?;
    let text = |name: &str| claims.get(name).and_then(Value::as_str).filter(|s| !s.is_empty());
    let (Some(jti), Some(htm), Some(htu), Some(iat)) =
        (text("jti"), text("htm"), text("htu"), claims.get("iat").and_then(Value::as_f64))
    else {
        return Err(ProofError::Claims);
    };
    if jti.len() > 256 {
        return Err(ProofError::Claims);
    }
    if htm != want.htm {
        return Err(ProofError::Htm);
    }
    let htu_ok = match want.origins {
        [] => same_uri(htu, want.htu),
        origins => Url::parse(want.htu).is_ok_and(|expected| {
            origins.iter().any(|origin| same_uri(htu, &format!("{}{}", origin.trim_end_matches('/'), expected.path())))
        }),
    };
    if !htu_ok {
        return Err(ProofError::Htu);
    }
    if let Some(nonce) = want.nonce {
        let given = claims.get("nonce").and_then(Value::as_str).unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(nonce.as_bytes())) {
            return Err(ProofError::Nonce);
        }
    }
    if !iat.is_finite() || iat < now - want.max_age.as_secs_f64() || iat > now + want.leeway.as_secs_f64() {
        return Err(ProofError::Iat);
    }
    match (want.token, claims.get("ath")) {
        (Some(token), Some(Value::String(ath))) if *ath == super::ath(token) => {}
        (None, None) => {}
        _ => return Err(ProofError::Ath),
    }
    let signed = &proof[..h.len() + 1 + p.len()];
    key.verify(alg, signed.as_bytes(), &signature)?;
    Ok(Verified { jkt: key.jkt, jti: jti.to_owned(), iat: iat as u64 })
}

/// A base64url segment that holds a JSON object.
fn object(segment: &str) -> Result<Map<String, Value>, ProofError> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| ProofError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| ProofError::Malformed)
}

fn asymmetric(alg: Algorithm) -> bool {
    use Algorithm::*;
    matches!(alg, ES256 | ES384 | EdDSA | RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
}

/// Two URIs name the same resource for `htu` (RFC 9449 §4.3 point 9): the
/// same scheme, host and port (defaults filled in, case ignored where RFC
/// 3986 §6.2.2 ignores it) and the same normalised path; query and
/// fragment are not compared.
pub fn same_uri(given: &str, expected: &str) -> bool {
    let (Ok(a), Ok(b)) = (Url::parse(given), Url::parse(expected)) else { return false };
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
        && a.username().is_empty()
        && a.password().is_none()
        && normalized_path(a.path()) == normalized_path(b.path())
}

/// A path with unreserved characters decoded and escapes in upper case
/// (RFC 3986 §6.2.2.1, §6.2.2.2); `url` has removed dot segments.
fn normalized_path(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                    out.push(char::from(v));
                } else {
                    out.push_str(&format!("%{v:02X}"));
                }
                i += 3;
                continue;
            }
        }
        out.push(char::from(b[i]));
        i += 1;
    }
    out
}

/// The proof's public key, and its thumbprint.
struct PublicKey {
    kind: Kind,
    jkt: String,
}

enum Kind {
    /// Uncompressed point.
    Ec(Vec<u8>),
    Ed25519(Vec<u8>),
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

/// Members of a JWK that only a private key has.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

impl PublicKey {
    fn from_jwk(jwk: &Map<String, Value>, alg: Algorithm) -> Result<Self, ProofError> {
        if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
            return Err(ProofError::Jwk);
        }
        let text = |name: &str| jwk.get(name).and_then(Value::as_str).ok_or(ProofError::Jwk);
        // Decoded and encoded again: the thumbprint is over the canonical form.
        let bytes = |name: &str| -> Result<Vec<u8>, ProofError> {
            URL_SAFE_NO_PAD.decode(text(name)?).map_err(|_| ProofError::Jwk)
        };
        let kty = text("kty")?;
        match (kty, alg) {
            ("EC", Algorithm::ES256 | Algorithm::ES384) => {
                let (crv, len) = if alg == Algorithm::ES256 { ("P-256", 32) } else { ("P-384", 48) };
                let (x, y) = (bytes("x")?, bytes("y")?);
                if text("crv")? != crv || x.len() != len || y.len() != len {
                    return Err(ProofError::Jwk);
                }
                let jkt = thumbprint(&[("crv", crv), ("kty", "EC"), ("x", &b64(&x)), ("y", &b64(&y))]);
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Ok(PublicKey { kind: Kind::Ec(point), jkt })
            }
            ("OKP", Algorithm::EdDSA) => {
                let x = bytes("x")?;
                if text("crv")? != "Ed25519" || x.len() != 32 {
                    return Err(ProofError::Jwk);
                }
                let jkt = thumbprint(&[("crv", "Ed25519"), ("kty", "OKP"), ("x", &b64(&x))]);
                Ok(PublicKey { kind: Kind::Ed25519(x), jkt })
            }
            ("RSA", _)
                if matches!(alg, Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512)
                    || matches!(alg, Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512) =>
            {
                let (n, e) = (bytes("n")?, bytes("e")?);
                // 2048 to 4096 bits: a larger key only makes the check dearer.
                if n.first() == Some(&0) || e.first() == Some(&0) || n.len() < 256 || n.len() > 512 || e.len() > 8 {
                    return Err(ProofError::Jwk);
                }
                let jkt = thumbprint(&[("e", &b64(&e)), ("kty", "RSA"), ("n", &b64(&n))]);
                Ok(PublicKey { kind: Kind::Rsa { n, e }, jkt })
            }
            _ => Err(ProofError::Jwk),
        }
    }

    fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> Result<(), ProofError> {
        use Algorithm::*;
        let ok = match (&self.kind, alg) {
            (Kind::Ec(p), ES256) => UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, p).verify(message, signature),
            (Kind::Ec(p), ES384) => UnparsedPublicKey::new(&sig::ECDSA_P384_SHA384_FIXED, p).verify(message, signature),
            (Kind::Ed25519(x), EdDSA) => UnparsedPublicKey::new(&sig::ED25519, x).verify(message, signature),
            (Kind::Rsa { n, e }, _) => {
                let params: &sig::RsaParameters = match alg {
                    RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                    RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                    RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
                    PS256 => &sig::RSA_PSS_2048_8192_SHA256,
                    PS384 => &sig::RSA_PSS_2048_8192_SHA384,
                    PS512 => &sig::RSA_PSS_2048_8192_SHA512,
                    _ => return Err(ProofError::Alg),
                };
                RsaPublicKeyComponents { n, e }.verify(params, message, signature)
            }
            _ => return Err(ProofError::Jwk),
        };
        ok.map_err(|_| ProofError::Signature)
    }
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
