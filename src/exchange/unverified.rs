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

/// RFC 8693 §4.4: whether the subject token's `may_act` (when it has one)
/// names the actor, i.e. every member of `may_act` (`sub`, `iss`, ...) is
/// a claim of the actor token with the same value. `Err` says why not.
/// Read unverified: the check only refuses, before the AS decides.
pub fn may_act_names(subject: &str, actor: Option<&str>) -> Result<(), &'static str> {
    #[derive(Deserialize)]
    struct MayAct {
        #[serde(default)]
        may_act: Option<serde_json::Value>,
    }
    let Some(payload) = payload(subject) else { return Ok(()) };
    let may_act = match serde_json::from_slice::<MayAct>(&payload) {
        Ok(m) => m.may_act,
        // Unreadable (a repeated member, say) but naming it: refused, as
        // the authorization server may read it otherwise.
        Err(_) => {
            let named = serde_json::from_slice::<serde_json::Value>(&payload).is_ok_and(|v| v.get("may_act").is_some());
            match named || payload.windows(9).any(|w| w == b"\"may_act\"") {
                true => return Err("may_act cannot be read"),
                false => None,
            }
        }
    };
    let Some(may_act) = may_act else { return Ok(()) };
    let serde_json::Value::Object(named) = may_act else { return Err("may_act is not an object") };
    if named.is_empty() {
        return Err("may_act names no one");
    }
    let Some(actor) = actor else { return Err("no actor token to compare") };
    let Some(serde_json::Value::Object(claims)) = claims_json(actor) else {
        return Err("the actor token is not a JWT: its identity cannot be compared");
    };
    match named.iter().all(|(k, v)| claims.get(k) == Some(v)) {
        true => Ok(()),
        false => Err("the actor is not the party may_act names"),
    }
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

    fn jws(claims: &str) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims))
    }

    #[test]
    fn may_act_names_the_actor() {
        let actor = jws(r#"{"iss":"https://as","sub":"agent-1"}"#);
        let no_may_act = jws(r#"{"sub":"alice"}"#);
        assert_eq!(may_act_names(&no_may_act, Some(&actor)), Ok(()));
        assert_eq!(may_act_names("opaque", None), Ok(()), "no claims: nothing to enforce");
        let named = jws(r#"{"sub":"alice","may_act":{"sub":"agent-1","iss":"https://as"}}"#);
        assert_eq!(may_act_names(&named, Some(&actor)), Ok(()));
        let other = jws(r#"{"sub":"alice","may_act":{"sub":"agent-2"}}"#);
        assert!(may_act_names(&other, Some(&actor)).is_err());
        let other_iss = jws(r#"{"sub":"alice","may_act":{"sub":"agent-1","iss":"https://evil"}}"#);
        assert!(may_act_names(&other_iss, Some(&actor)).is_err());
        assert!(may_act_names(&named, None).is_err(), "no actor");
        assert!(may_act_names(&named, Some("opaque-actor")).is_err(), "an opaque actor cannot be compared");
        assert!(may_act_names(&jws(r#"{"may_act":"agent-1"}"#), Some(&actor)).is_err(), "not an object");
        assert!(may_act_names(&jws(r#"{"may_act":{}}"#), Some(&actor)).is_err(), "names no one");
        let typed = jws(r#"{"may_act":{"sub":1}}"#);
        assert!(may_act_names(&typed, Some(&jws(r#"{"sub":"1"}"#))).is_err(), "values compare as JSON");
        let twice = jws(r#"{"sub":"alice","may_act":{"sub":"agent-1"},"may_act":{"sub":"agent-9"}}"#);
        assert_eq!(may_act_names(&twice, Some(&actor)), Err("may_act cannot be read"), "fails closed");
        let escaped = jws(r#"{"may_act":{"sub":"agent-1"},"may\u005fact":{"sub":"agent-9"}}"#);
        assert!(may_act_names(&escaped, Some(&actor)).is_err(), "an escaped repeat too");
        assert_eq!(may_act_names(&jws("not json"), Some(&actor)), Ok(()), "not a JWT: nothing to enforce");
        assert!(may_act_names(&jws(r#"{"may_act": oops}"#), Some(&actor)).is_err(), "broken JSON naming it");
    }

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
