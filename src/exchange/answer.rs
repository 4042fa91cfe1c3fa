//! A token endpoint's answer (RFC 6749 §5.1/§5.2, RFC 8693 §2.2), parsed
//! strictly, and a refusal mapped to what the caller gets: the server's
//! error map (its profile and `error_map`) first, then SPEC §3.6.

use std::time::Duration;

use http::HeaderValue;
use serde::Deserialize;
use serde_json::Value;

use super::client::{Issued, MAX_ANSWER_BYTES};
use super::error::sanitize_code;
use super::{ExchangeError, Refusal, StepUpHint};
use crate::config::{ErrorMap, Outcome};
use crate::secret::SecretString;

#[derive(Deserialize)]
struct Answer {
    access_token: Option<String>,
    issued_token_type: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    // Members only some providers send, read as any JSON: one of an
    // unexpected type is ignored, it never makes the answer unusable.
    /// Entra ID: the `AADSTS` numbers of the error.
    #[serde(default)]
    error_codes: Option<Value>,
    /// Entra ID: a finer reason (`consent_required`, `basic_action`, ...).
    #[serde(default)]
    suberror: Option<Value>,
    /// Step-up hints: RFC 9470's, and Entra's claims challenge.
    #[serde(default)]
    acr_values: Option<Value>,
    #[serde(default)]
    max_age: Option<Value>,
    #[serde(default)]
    claims: Option<Value>,
}

fn text(v: &Option<Value>) -> Option<&str> {
    v.as_ref().and_then(Value::as_str)
}

/// Parses a token endpoint answer; a refusal is mapped by `errors`, then
/// by SPEC §3.6.
pub fn parse_answer(status: u16, body: &[u8], errors: &ErrorMap) -> Result<Issued, ExchangeError> {
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|_| ExchangeError::BadAnswer(format!("HTTP {status} with a body that is not a JSON token answer")))?;
    if status != 200 {
        return Err(refusal(status, &answer, errors));
    }
    let access_token = answer
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ExchangeError::BadAnswer("no access_token".into()))?;
    if HeaderValue::from_str(&access_token).is_err() || access_token.len() > MAX_ANSWER_BYTES / 2 {
        return Err(ExchangeError::BadAnswer("access_token cannot be sent in a header".into()));
    }
    let dpop = match answer.token_type.as_deref() {
        Some(t) if t.eq_ignore_ascii_case("bearer") || t.eq_ignore_ascii_case("n_a") => false,
        Some(t) if t.eq_ignore_ascii_case("dpop") => true,
        Some(t) => return Err(ExchangeError::BadAnswer(format!("unsupported token_type {}", sanitize_code(t)))),
        None => return Err(ExchangeError::BadAnswer("no token_type".into())),
    };
    let expires_in = match answer.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => Some(n.as_f64().filter(|s| *s >= 0.0 && s.is_finite())),
        Some(serde_json::Value::String(s)) => Some(s.trim().parse::<f64>().ok().filter(|s| *s >= 0.0 && s.is_finite())),
        Some(_) => Some(None),
    };
    let expires_in = match expires_in {
        None => None,
        Some(Some(secs)) => Some(Duration::from_secs_f64(secs.min(1e9))),
        Some(None) => return Err(ExchangeError::BadAnswer("expires_in is not a non-negative number".into())),
    };
    Ok(Issued {
        access_token: SecretString::new(access_token),
        dpop,
        bound: None,
        issued_token_type: answer.issued_token_type,
        expires_in,
        scope: answer.scope,
    })
}

/// A refusal as the caller will see it. The provider's own code (Entra's
/// `error_codes`, or an `AADSTS50076:`-style prefix of the description)
/// is looked up first, then the sub-error, then the OAuth `error`.
fn refusal(status: u16, answer: &Answer, errors: &ErrorMap) -> ExchangeError {
    let refusal = Refusal::new(answer.error.as_deref().unwrap_or(""), answer.error_description.as_deref());
    if refusal.error.is_empty() {
        return ExchangeError::BadAnswer(format!("HTTP {status} without an error code"));
    }
    let numbered = answer
        .error_codes
        .as_ref()
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .map(|n| format!("AADSTS{n}"));
    let prefix = answer.error_description.as_deref().and_then(provider_code).map(str::to_owned);
    // Entra's sub-error only where its codes apply: elsewhere the member
    // means nothing, and must not override the OAuth error.
    let sub = text(&answer.suberror).filter(|_| errors.reads_suberror()).map(sanitize_code);
    let mut codes = numbered.take(4).chain(prefix);
    let mapped = codes
        .find_map(|code| errors.get(&code))
        .or_else(|| errors.described(&refusal.error, &refusal.description))
        .or_else(|| sub.into_iter().chain(std::iter::once(refusal.error.clone())).find_map(|c| errors.get(&c)));
    match mapped {
        Some(Outcome::InvalidToken) => ExchangeError::InvalidGrant(refusal),
        Some(Outcome::InsufficientScope) => ExchangeError::InsufficientScope(refusal),
        Some(Outcome::StepUp) => {
            let hint = StepUpHint::new(text(&answer.acr_values), answer.max_age.as_ref(), text(&answer.claims));
            ExchangeError::StepUp(refusal, hint)
        }
        Some(Outcome::BadGateway) => ExchangeError::OtherError { status, refusal },
        Some(Outcome::Unavailable) => ExchangeError::Unavailable(format!("HTTP {status}: {refusal}")),
        None => match refusal.error.as_str() {
            "invalid_grant" => ExchangeError::InvalidGrant(refusal),
            "invalid_scope" | "invalid_target" => ExchangeError::InsufficientScope(refusal),
            "invalid_client" | "unauthorized_client" => ExchangeError::ClientRejected(refusal),
            _ => ExchangeError::OtherError { status, refusal },
        },
    }
}

/// `AADSTS50076` of `AADSTS50076: Due to a configuration change ...`: a
/// leading run of capitals then digits, ended by `:`.
fn provider_code(description: &str) -> Option<&str> {
    let (code, _) = description.split_once(':')?;
    let letters = code.bytes().take_while(u8::is_ascii_uppercase).count();
    let digits = code.len() - letters;
    (letters > 0 && digits > 0 && code.len() <= 24 && code[letters..].bytes().all(|b| b.is_ascii_digit()))
        .then_some(code)
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;

    use super::*;

    #[test]
    fn parses_success() {
        let ok = parse_answer(
            200,
            br#"{"access_token":"t","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":60,"scope":"a b"}"#,
            &ErrorMap::default(),
        )
        .unwrap();
        assert_eq!(ok.access_token.expose(), "t");
        assert_eq!(ok.expires_in, Some(Duration::from_secs(60)));
        assert_eq!(ok.scope.as_deref(), Some("a b"));
        let na =
            parse_answer(200, br#"{"access_token":"t","token_type":"N_A","expires_in":"30"}"#, &ErrorMap::default())
                .unwrap();
        assert_eq!(na.expires_in, Some(Duration::from_secs(30)));
    }

    #[test]
    fn maps_errors() {
        let e = |body: &[u8]| parse_answer(400, body, &ErrorMap::default()).unwrap_err();
        // Members of unexpected types are ignored, on a refusal or a success.
        assert!(matches!(
            e(br#"{"error":"invalid_grant","error_codes":"x","claims":{"a":1}}"#),
            ExchangeError::InvalidGrant(_)
        ));
        let ok = parse_answer(
            200,
            br#"{"access_token":"t","token_type":"Bearer","claims":{"x":1},"suberror":7}"#,
            &ErrorMap::default(),
        );
        assert!(ok.is_ok());
        // A sub-error means something only where Entra's codes apply.
        let generic = crate::config::Profile::Generic.error_map();
        let sub = parse_answer(400, br#"{"error":"invalid_grant","suberror":"temporarily_unavailable"}"#, &generic);
        assert!(matches!(sub, Err(ExchangeError::InvalidGrant(_))));
        assert!(matches!(e(br#"{"error":"invalid_grant"}"#), ExchangeError::InvalidGrant(_)));
        assert!(matches!(e(br#"{"error":"invalid_scope"}"#), ExchangeError::InsufficientScope(_)));
        assert!(matches!(e(br#"{"error":"invalid_target"}"#), ExchangeError::InsufficientScope(_)));
        assert!(matches!(e(br#"{"error":"invalid_client"}"#), ExchangeError::ClientRejected(_)));
        assert!(matches!(e(br#"{"error":"unauthorized_client"}"#), ExchangeError::ClientRejected(_)));
        assert!(matches!(e(br#"{"error":"whatever"}"#), ExchangeError::OtherError { .. }));
        assert!(matches!(e(b"<html>"), ExchangeError::BadAnswer(_)));
    }

    #[test]
    fn a_dpop_token_type_is_read() {
        let issued = parse_answer(200, br#"{"access_token":"t","token_type":"DPoP"}"#, &ErrorMap::default()).unwrap();
        assert!(issued.dpop && issued.bound.is_none());
        let issued = parse_answer(200, br#"{"access_token":"t","token_type":"bearer"}"#, &ErrorMap::default()).unwrap();
        assert!(!issued.dpop);
    }

    #[test]
    fn rejects_unusable_success() {
        for body in [
            &br#"{"token_type":"Bearer"}"#[..],
            br#"{"access_token":"t"}"#,
            br#"{"access_token":"t","token_type":"mac"}"#,
            br#"{"access_token":"t","token_type":"Bearer","expires_in":-1}"#,
            br#"{"access_token":"t\n","token_type":"Bearer"}"#,
            b"[]",
        ] {
            assert!(
                matches!(parse_answer(200, body, &ErrorMap::default()), Err(ExchangeError::BadAnswer(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn provider_codes_map_before_the_oauth_error() {
        let entra = crate::config::Profile::Entra.error_map();
        let e = |body: &str| parse_answer(400, body.as_bytes(), &entra).unwrap_err();
        // Entra's MFA answer (learn.microsoft.com, OBO flow "Error response example").
        let mfa = e(
            r#"{"error":"invalid_grant","error_description":"AADSTS50076: Due to a configuration change made by your administrator, you must use multi-factor authentication.","error_codes":[50076],"suberror":"basic_action","claims":"{\"access_token\":{\"capolids\":{\"essential\":true,\"values\":[\"c1\"]}}}"}"#,
        );
        match mfa {
            ExchangeError::StepUp(r, hint) => {
                assert_eq!(r.error, "invalid_grant");
                let claims = STANDARD.decode(hint.claims.unwrap()).unwrap();
                assert!(String::from_utf8(claims).unwrap().starts_with("{\"access_token\""));
            }
            other => panic!("{other:?}"),
        }
        // The prefix alone is enough; an unmapped one falls back to SPEC §3.6.
        let blocked = e(r#"{"error":"invalid_client","error_description":"AADSTS53003: blocked"}"#);
        assert!(matches!(blocked, ExchangeError::InsufficientScope(_)), "{blocked:?}");
        let unknown = e(r#"{"error":"invalid_grant","error_description":"AADSTS99999: x"}"#);
        assert!(matches!(unknown, ExchangeError::InvalidGrant(_)), "{unknown:?}");
        assert!(matches!(e(r#"{"error":"interaction_required"}"#), ExchangeError::StepUp(..)));
        assert!(matches!(e(r#"{"error":"temporarily_unavailable"}"#), ExchangeError::Unavailable(_)));
        // RFC 9470 hints pass; malformed ones are dropped.
        match e(
            r#"{"error":"insufficient_user_authentication","acr_values":"urn:mace:incommon:iap:silver","max_age":"300","claims":"not json"}"#,
        ) {
            ExchangeError::StepUp(_, h) => {
                assert_eq!(h.acr_values.as_deref(), Some("urn:mace:incommon:iap:silver"));
                assert_eq!(h.max_age, Some(300));
                assert_eq!(h.claims, None);
            }
            other => panic!("{other:?}"),
        }
        match e(r#"{"error":"login_required","acr_values":"a\"b","max_age":-1}"#) {
            ExchangeError::StepUp(_, h) => assert_eq!(h, StepUpHint::default()),
            other => panic!("{other:?}"),
        }
        let keycloak = crate::config::Profile::Keycloak.error_map();
        let k = |body: &str| parse_answer(400, body.as_bytes(), &keycloak).unwrap_err();
        assert!(matches!(
            k(r#"{"error":"invalid_request","error_description":"Invalid token"}"#),
            ExchangeError::InvalidGrant(_)
        ));
        let aud = k(r#"{"error":"invalid_request","error_description":"Requested audience not available: x"}"#);
        assert!(matches!(aud, ExchangeError::InsufficientScope(_)), "{aud:?}");
        let wrong_type =
            k(r#"{"error":"invalid_request","error_description":"Invalid token type, must be access token"}"#);
        assert!(matches!(wrong_type, ExchangeError::OtherError { .. }), "the route's configuration: {wrong_type:?}");
        let other = k(r#"{"error":"invalid_request","error_description":"requested_token_type unsupported"}"#);
        assert!(matches!(other, ExchangeError::OtherError { .. }), "{other:?}");
        assert_eq!(provider_code("AADSTS50076: x"), Some("AADSTS50076"));
        for no in ["aadsts1: x", "AADSTS: x", "50076: x", "AADSTS1x: y", "no colon"] {
            assert_eq!(provider_code(no), None, "{no}");
        }
    }
}
