//! Local validation of the caller's JWT access token (RFC 9068, following
//! RFC 8725): size cap; header parsed by us first (`crit` refused, `alg`
//! from the allow-list only, so `none` and HMAC never pass; optional `typ`);
//! key from the issuer's JWKS by `kid`, of a type that suits `alg`; then the
//! signature (jsonwebtoken's ring verifier, nothing else of it) and the
//! registered claims, parsed and checked by us (`claims.rs`: types, `exp`,
//! `nbf`, `iss`, `aud`, with leeway). A token that passed is remembered by
//! its SHA-256 (`verified.rs`), for the key generation it was verified under.

use std::str::FromStr;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::claims::{Claims, Expected, Valid};
use super::jwks::{self, Jwks};
use super::scopes::Granted;
use super::verified::VerifiedCache;
use super::{InboundError, Invalid};
use crate::config::JwtConfig;
use crate::metrics::Metrics;

pub struct JwtValidator {
    cfg: JwtConfig,
    jwks: Arc<Jwks>,
    /// `require_typ`, lower-case, without `application/`.
    typ: Option<String>,
    /// Tokens that passed, for this configuration only.
    verified: VerifiedCache,
}

/// The JOSE header fields we decide on.
pub struct JoseHeader {
    pub alg: Algorithm,
    pub typ: Option<String>,
    pub kid: Option<String>,
}

impl JwtValidator {
    /// `servers` resolves `inbound.jwt.authorization_server`.
    pub fn new(
        cfg: &JwtConfig,
        metrics: &Metrics,
        servers: &std::collections::BTreeMap<String, Arc<crate::exchange::client::AsClient>>,
    ) -> Result<Self, String> {
        let uri =
            super::fetch::Remote::new(&cfg.jwks, servers, |c| c.jwks_uri()).map_err(|e| format!("inbound.jwt: {e}"))?;
        let http =
            super::fetch::client(cfg.ca_file.as_deref(), cfg.timeout).map_err(|e| format!("inbound.jwt: {e}"))?;
        let jwks = Jwks::new(uri, http, cfg, metrics.jwks_fetches(&jwks::OUTCOMES));
        Ok(JwtValidator {
            cfg: cfg.clone(),
            jwks: Arc::new(jwks),
            typ: cfg.require_typ.as_deref().map(normalize_typ),
            verified: VerifiedCache::new(cfg.leeway, metrics),
        })
    }

    pub fn config(&self) -> &JwtConfig {
        &self.cfg
    }

    pub fn jwks(&self) -> &Arc<Jwks> {
        &self.jwks
    }

    /// Validates `token` (`hash`: its SHA-256); the scopes it grants. A token
    /// verified before under the keys in use is only checked for `exp` and `nbf`.
    pub async fn validate(&self, token: &str, hash: &[u8; 32]) -> Result<Granted, InboundError> {
        // Read before the key is chosen: an entry never claims a generation
        // newer than the keys that verified it.
        let generation = self.jwks.key_generation();
        if let Some(granted) = self.verified.get(hash, generation).await? {
            return Ok(granted);
        }
        let valid = self.verify(token).await?;
        self.verified.insert(*hash, &valid, generation).await;
        Ok(valid.granted)
    }

    /// The whole check of `token`, signature included.
    async fn verify(&self, token: &str) -> Result<Valid, InboundError> {
        if token.len() > self.cfg.max_token_bytes {
            return Err(Invalid::TooLarge.into());
        }
        let header = parse_header(token)?;
        if !self.cfg.algorithms.contains(&header.alg) {
            return Err(Invalid::AlgNotAllowed.into());
        }
        if let Some(want) = &self.typ {
            if header.typ.as_deref().map(normalize_typ).as_ref() != Some(want) {
                return Err(Invalid::WrongTyp.into());
            }
        }
        let key = self.jwks.key(header.kid.as_deref(), header.alg).await?;
        // `parse_header` saw exactly three segments.
        let (signed, signature) = token.rsplit_once('.').ok_or(Invalid::Malformed)?;
        // Only the signature is left to jsonwebtoken: its own claim checks
        // skip a claim of the wrong type (a string `nbf`) instead of refusing.
        let verified = jsonwebtoken::crypto::verify(signature, signed.as_bytes(), &key.decoding, header.alg)
            .map_err(|e| refusal(&e))?;
        if !verified {
            return Err(Invalid::BadSignature.into());
        }
        let claims = Claims::parse(signed.split_once('.').map_or("", |(_, p)| p))?;
        let want = Expected { issuer: &self.cfg.issuer, audiences: &self.cfg.audiences, leeway: self.cfg.leeway };
        Ok(claims.check(&want)?)
    }
}

/// `application/at+jwt` and `at+jwt` are the same type (RFC 7515 §4.1.9).
fn normalize_typ(t: &str) -> String {
    let t = t.to_ascii_lowercase();
    t.strip_prefix("application/").map(str::to_owned).unwrap_or(t)
}

/// Parses the JOSE header of a compact JWS ourselves, before any key is
/// chosen: exactly three segments, a JSON object, no `crit`, a known `alg`.
pub fn parse_header(token: &str) -> Result<JoseHeader, InboundError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Invalid::Malformed.into());
    };
    let bytes = URL_SAFE_NO_PAD.decode(header).map_err(|_| Invalid::Malformed)?;
    let map: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| Invalid::Malformed)?;
    // Extensions we would have to understand (RFC 7515 §4.1.11): we understand none.
    if map.contains_key("crit") {
        return Err(Invalid::CritHeader.into());
    }
    let text = |name: &str| -> Result<Option<String>, InboundError> {
        match map.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Invalid::Malformed.into()),
        }
    };
    // `none`, HMAC and unknown names all end here or in the allow-list check.
    let alg = text("alg")?.ok_or(Invalid::Malformed)?;
    let alg = Algorithm::from_str(&alg).map_err(|_| Invalid::AlgNotAllowed)?;
    Ok(JoseHeader { alg, typ: text("typ")?, kid: text("kid")? })
}

/// A jsonwebtoken error as a refusal reason (it checks only the signature).
fn refusal(e: &jsonwebtoken::errors::Error) -> Invalid {
    match e.kind() {
        ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => Invalid::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => Invalid::KeyMismatch,
        // Shape, base64, JSON, UTF-8 (jsonwebtoken's ErrorKind is non-exhaustive).
        _ => Invalid::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(header: &str) -> String {
        format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(header))
    }

    fn reason(t: &str) -> &'static str {
        match parse_header(t) {
            Ok(_) => "ok",
            Err(e) => e.reason(),
        }
    }

    #[test]
    fn header_checks_come_first() {
        assert_eq!(reason(&token(r#"{"alg":"ES256","kid":"k","typ":"at+jwt"}"#)), "ok");
        assert_eq!(reason(&token(r#"{"alg":"none"}"#)), "alg_not_allowed");
        assert_eq!(reason(&token(r#"{"alg":"None"}"#)), "alg_not_allowed");
        assert_eq!(reason(&token(r#"{"alg":"ES256","crit":["exp"],"exp":1}"#)), "crit_header");
        assert_eq!(reason(&token(r#"{"typ":"JWT"}"#)), "malformed");
        assert_eq!(reason(&token(r#"{"alg":"ES256","kid":7}"#)), "malformed");
        assert_eq!(reason(&token(r#"[1]"#)), "malformed");
        assert_eq!(reason("a.b"), "malformed");
        assert_eq!(reason("a.b.c.d.e"), "malformed");
        assert_eq!(reason("!!.b.c"), "malformed");
    }

    #[test]
    fn typ_ignores_the_application_prefix_and_case() {
        assert_eq!(normalize_typ("application/AT+JWT"), "at+jwt");
        assert_eq!(normalize_typ("at+jwt"), "at+jwt");
    }
}
