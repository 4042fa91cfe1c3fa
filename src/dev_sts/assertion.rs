//! The JWT bearer authorization grant (RFC 7523 §2.1, §3): a client trades
//! a JWT signed by a trusted issuer (`trusted.rs`) for an access token of
//! this server. This is the second step of identity chaining across trust
//! domains (draft-ietf-oauth-identity-chaining): the home authorization
//! server issues a JWT for this server (token exchange with
//! `requested_token_type=urn:ietf:params:oauth:token-type:jwt` and
//! `audience=<this issuer>`), and the client presents it here.
//!
//! The assertion must be a JWS with an asymmetric algorithm of
//! [`ASSERTION_GRANT_ALGS`] (never HMAC, never `none`) and no `typ`, or
//! `JWT` or `at+jwt` (a Txn-Token, a security event or a DPoP proof is no
//! grant), whose `iss` is a
//! trusted issuer (this server's own issuer only when listed), signed by the
//! key of that issuer's JWK Set named by `kid`, with an `aud` naming this
//! issuer or its token endpoint, an `exp` in the future (no leeway: no
//! token is issued already expired), `nbf` and `iat` not in the future
//! (leeway [`ASSERTION_GRANT_LEEWAY`]), a `sub`,
//! and not revoked here (`/revoke`). Any failure is `invalid_grant` naming
//! the check; the assertion itself is never echoed or logged.
//!
//! The token issued is shaped like a token exchange's: `sub` the
//! assertion's, `aud` the `audience` / `resource` asked for (allowed for the
//! client), `scope` the requested scopes allowed for the client and held by
//! the assertion when it has a `scope` claim (nothing requested: the
//! assertion's scopes the client may hold, or none), `client_id`, an `act`
//! of the assertion kept, an expiry no later than the assertion's, and
//! `cnf` for a DPoP proof. No `issued_token_type` (RFC 7523 is not RFC 8693).

use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;

use super::clients::Client;
use super::endpoint::{OAuthError, Params};
use super::token::{bind, build_claims, delegated_scopes, requested_scopes, scope_list, targets, token_type, Issued};
use super::trusted::{KeyError, TrustedIssuers};
use super::State;

/// `grant_type` of the JWT bearer grant (RFC 7523 §2.1).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Algorithms an assertion may be signed with.
pub const ASSERTION_GRANT_ALGS: [Algorithm; 9] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];
/// Clock-skew allowance for an assertion's `exp`, `nbf` and `iat`.
pub const ASSERTION_GRANT_LEEWAY: Duration = Duration::from_secs(5);
/// Largest assertion accepted.
const MAX_ASSERTION_BYTES: usize = 16 * 1024;

/// Which check an assertion failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    TooLarge,
    Malformed,
    Alg,
    NoIss,
    Untrusted,
    NoKid,
    JwksUnavailable,
    NoKey,
    Signature,
    Audience,
    NoExp,
    Expired,
    NotYetValid,
    IssuedInFuture,
    NoSub,
    Act,
    Revoked,
    /// A JWT of another kind: a Txn-Token, a Security Event Token, a DPoP proof.
    Typ,
}

impl Refusal {
    /// The answer's `error_description`.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Refusal::TooLarge => "the assertion is too large",
            Refusal::Malformed => "the assertion is not a well-formed JWT",
            Refusal::Alg => "the assertion's alg is not accepted (asymmetric algorithms only; never HMAC or none)",
            Refusal::NoIss => "the assertion has no iss",
            Refusal::Untrusted => "the assertion's iss is not a trusted issuer",
            Refusal::NoKid => "the assertion's header names no kid",
            Refusal::JwksUnavailable => "the trusted issuer's JWKS could not be fetched",
            Refusal::NoKey => "no key of the trusted issuer's JWKS matches the assertion's kid and alg",
            Refusal::Signature => "the assertion's signature does not verify",
            Refusal::Audience => "the assertion's aud names neither this issuer nor its token endpoint",
            Refusal::NoExp => "the assertion has no exp",
            Refusal::Expired => "the assertion has expired",
            Refusal::NotYetValid => "the assertion's nbf is in the future",
            Refusal::IssuedInFuture => "the assertion's iat is in the future",
            Refusal::NoSub => "the assertion has no sub",
            Refusal::Act => "the assertion's act is not an object",
            Refusal::Revoked => "the assertion was revoked",
            Refusal::Typ => {
                "the assertion's typ names another kind of JWT (a Txn-Token, a security event or a DPoP proof)"
            }
        }
    }
}

/// The JWT bearer grant (see the module documentation).
pub(crate) async fn jwt_bearer(
    state: &State,
    trusted: &TrustedIssuers,
    client: &Client,
    params: &Params,
    now: u64,
    jkt: Option<&str>,
) -> Result<Issued, OAuthError> {
    let assertion =
        params.one("assertion")?.ok_or_else(|| OAuthError::InvalidRequest("assertion is required".into()))?;
    let aud = targets(client, params)?;
    let requested = requested_scopes(params)?;
    let claims = verify(state, trusted, assertion, now).await.map_err(|r| OAuthError::InvalidGrant(r.describe()))?;
    let sub = claims.get("sub").and_then(Value::as_str).ok_or(OAuthError::InvalidGrant(Refusal::NoSub.describe()))?;
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("-");
    let held = claims.get("scope").map(|c| scope_list(Some(c)));
    let scope = delegated_scopes(requested, held.as_deref(), |s| client.allows_scope(s))
        .map_err(|r| r.into_error("the assertion"))?;
    let assertion_exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
    let exp = now.saturating_add(state.expires_in.as_secs()).min(assertion_exp);
    let act = claims.get("act").cloned();
    let mut token = build_claims(&state.issuer, sub, &aud, &scope, Some(&client.id), now, exp, act);
    bind(&mut token, jkt);
    let access_token = state.key.sign(&token).map_err(|_| OAuthError::ServerError)?;
    state.jwt_bearer_grants.fetch_add(1, Ordering::Relaxed);
    Ok(Issued {
        access_token,
        issued_token_type: None,
        token_type: token_type(jkt),
        expires_in: exp.saturating_sub(now),
        scope,
        sub: sub.to_owned(),
        aud,
        detail: Some(format!("assertion_iss={iss}")),
    })
}

/// The checks of RFC 7523 §3, in order; the verified claims.
async fn verify(state: &State, trusted: &TrustedIssuers, assertion: &str, now: u64) -> Result<Value, Refusal> {
    if assertion.len() > MAX_ASSERTION_BYTES {
        return Err(Refusal::TooLarge);
    }
    let (header, payload) = unverified(assertion).ok_or(Refusal::Malformed)?;
    let alg = header.get("alg").and_then(Value::as_str).ok_or(Refusal::Malformed)?;
    let alg = Algorithm::from_str(alg).ok().filter(|a| ASSERTION_GRANT_ALGS.contains(a)).ok_or(Refusal::Alg)?;
    // Explicitly typed JWTs of other kinds (a Txn-Token, a security event,
    // a DPoP proof) are not grants (RFC 8725 §3.11): no `typ`, `JWT` or
    // `at+jwt` only.
    let typ = match header.get("typ") {
        None => Some("jwt".to_owned()),
        Some(Value::String(t)) => Some(t.to_ascii_lowercase()),
        Some(_) => None,
    };
    let typ = typ.as_deref().map(|t| t.strip_prefix("application/").unwrap_or(t));
    if !matches!(typ, Some("jwt" | "at+jwt")) {
        return Err(Refusal::Typ);
    }
    let iss = payload.get("iss").and_then(Value::as_str).ok_or(Refusal::NoIss)?;
    if !trusted.is_trusted(iss) {
        return Err(Refusal::Untrusted);
    }
    let kid = header.get("kid").and_then(Value::as_str).ok_or(Refusal::NoKid)?;
    let key = trusted.key(iss, kid, alg).await.map_err(|e| match e {
        KeyError::Untrusted => Refusal::Untrusted,
        KeyError::Unavailable => Refusal::JwksUnavailable,
        KeyError::NoKey => Refusal::NoKey,
    })?;
    // The signature here; the claims below, each with its own answer.
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.set_required_spec_claims::<&str>(&[]);
    let claims = match jsonwebtoken::decode::<Value>(assertion, &key, &v) {
        Ok(data) => data.claims,
        Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => return Err(Refusal::Signature),
        Err(_) => return Err(Refusal::Malformed),
    };
    check_claims(&claims, &[state.issuer.as_str(), state.token_endpoint.as_str()], now)?;
    if state.revocations.token_revoked(assertion) {
        return Err(Refusal::Revoked);
    }
    Ok(claims)
}

/// `aud` names one of `audiences`; `exp` present and not past, `nbf` and
/// `iat` not ahead (with the leeway); `sub` present; `act`, if any,
/// an object.
fn check_claims(claims: &Value, audiences: &[&str], now: u64) -> Result<(), Refusal> {
    let leeway = ASSERTION_GRANT_LEEWAY.as_secs();
    let named = match claims.get("aud") {
        Some(Value::String(a)) => audiences.contains(&a.as_str()),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(|a| audiences.contains(&a)),
        _ => false,
    };
    if !named {
        return Err(Refusal::Audience);
    }
    let exp = claims.get("exp").ok_or(Refusal::NoExp)?.as_u64().ok_or(Refusal::Malformed)?;
    // No leeway here: a grant for an assertion already past its `exp` would
    // be a token that has expired too.
    if exp <= now {
        return Err(Refusal::Expired);
    }
    let ahead = |name: &str| match claims.get(name) {
        None => Ok(false),
        Some(v) => v.as_u64().map(|t| t > now.saturating_add(leeway)).ok_or(Refusal::Malformed),
    };
    if ahead("nbf")? {
        return Err(Refusal::NotYetValid);
    }
    if ahead("iat")? {
        return Err(Refusal::IssuedInFuture);
    }
    if !claims.get("sub").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
        return Err(Refusal::NoSub);
    }
    if claims.get("act").is_some_and(|a| !a.is_object()) {
        return Err(Refusal::Act);
    }
    Ok(())
}

/// The header and payload of a compact JWS, unverified: two JSON objects.
fn unverified(token: &str) -> Option<(Value, Value)> {
    let mut parts = token.split('.');
    let (header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = |part: &str| -> Option<Value> {
        let v: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()?;
        v.is_object().then_some(v)
    };
    Some((json(header)?, json(payload)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const AUDS: &[&str] = &["http://b.example", "http://b.example/token"];

    fn claims(extra: Value) -> Value {
        let mut c =
            json!({"iss": "http://a.example", "sub": "alice", "aud": "http://b.example", "exp": 1_000, "iat": 900});
        if let (Some(m), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                if v.is_null() {
                    m.remove(k);
                } else {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        c
    }

    #[test]
    fn claims_are_checked_in_order_with_leeway() {
        let at = |c: Value, now: u64| check_claims(&c, AUDS, now);
        assert_eq!(at(claims(json!({})), 950), Ok(()));
        assert_eq!(at(claims(json!({"aud": ["x", "http://b.example/token"]})), 950), Ok(()));
        assert_eq!(at(claims(json!({"aud": "http://b.example/"})), 950), Err(Refusal::Audience), "exact match");
        assert_eq!(at(claims(json!({"aud": null})), 950), Err(Refusal::Audience));
        assert_eq!(at(claims(json!({"exp": null})), 950), Err(Refusal::NoExp));
        assert_eq!(at(claims(json!({"exp": "soon"})), 950), Err(Refusal::Malformed));
        assert_eq!(at(claims(json!({})), 999), Ok(()));
        assert_eq!(at(claims(json!({})), 1_000), Err(Refusal::Expired), "no leeway after exp");
        assert_eq!(at(claims(json!({})), 1_005), Err(Refusal::Expired));
        assert_eq!(at(claims(json!({"nbf": 955})), 950), Ok(()), "nbf within the leeway");
        assert_eq!(at(claims(json!({"nbf": 956})), 950), Err(Refusal::NotYetValid));
        assert_eq!(at(claims(json!({"iat": 956})), 950), Err(Refusal::IssuedInFuture));
        assert_eq!(at(claims(json!({"sub": null})), 950), Err(Refusal::NoSub));
        assert_eq!(at(claims(json!({"sub": ""})), 950), Err(Refusal::NoSub));
        assert_eq!(at(claims(json!({"act": "bot"})), 950), Err(Refusal::Act));
        assert_eq!(at(claims(json!({"act": {"sub": "bot"}})), 950), Ok(()));
    }

    #[test]
    fn only_compact_jws_with_json_objects_is_read() {
        let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let (h, p) = (part(&json!({"alg": "ES256"})), part(&json!({"iss": "x"})));
        let (header, payload) = unverified(&format!("{h}.{p}.sig")).unwrap();
        assert_eq!((header["alg"].as_str(), payload["iss"].as_str()), (Some("ES256"), Some("x")));
        assert!(unverified(&format!("{h}.{p}")).is_none());
        assert!(unverified(&format!("{h}.{p}.s.x")).is_none());
        assert!(unverified(&format!("{h}.{}.s", part(&json!([1])))).is_none());
        assert!(unverified("garbage").is_none());
    }

    #[test]
    fn every_refusal_says_what_failed() {
        for r in [Refusal::Alg, Refusal::Untrusted, Refusal::Signature, Refusal::Audience, Refusal::Revoked] {
            assert!(r.describe().starts_with("the assertion"), "{r:?}");
        }
        assert!(!ASSERTION_GRANT_ALGS
            .iter()
            .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)));
    }
}
