//! The registered claims (RFC 7519 §4.1) of a JWT whose signature has been
//! verified: every one that is present must have its registered type (a
//! string `nbf`, a numeric `iss` or a `null` `aud` refuses the token, it is
//! not skipped), then `exp` (required), `nbf`, `iss` and `aud` are checked.
//! jsonwebtoken only verifies the signature; the decisions are made here so
//! that no claim of the wrong type is silently ignored.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::scopes::Granted;
use super::Invalid;

/// The claims tokex reads. A present member is `Some`, even when it is
/// `null` (so `null` is a wrong type, not an absent claim).
#[derive(Deserialize)]
pub struct Claims {
    #[serde(default, deserialize_with = "present")]
    exp: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    nbf: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    iat: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    iss: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    sub: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    aud: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    jti: Option<Value>,
    #[serde(default)]
    scope: Option<Value>,
    #[serde(default)]
    scp: Option<Value>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// What the claims must say.
pub struct Expected<'a> {
    pub issuer: &'a str,
    /// `aud` must name at least one.
    pub audiences: &'a [String],
    pub leeway: Duration,
}

/// The current time as a NumericDate (seconds since the epoch).
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// When a token may be used: its `exp` and `nbf`. The one time check, for a
/// token just verified and for one found in the verified-token cache.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub exp: f64,
    pub nbf: Option<f64>,
}

impl Window {
    /// `exp` (plus `leeway`) not past and `nbf` (minus `leeway`) reached at `now`.
    pub fn check_at(&self, leeway: Duration, now: f64) -> Result<(), Invalid> {
        let leeway = leeway.as_secs_f64();
        if self.exp + leeway < now {
            return Err(Invalid::Expired);
        }
        if self.nbf.is_some_and(|nbf| nbf > now + leeway) {
            return Err(Invalid::NotYetValid);
        }
        Ok(())
    }

    /// How long after `now` the token is still accepted (until `exp` plus
    /// `leeway`), at most `cap`; zero when that is past.
    pub fn remaining(&self, leeway: Duration, now: f64, cap: Duration) -> Duration {
        let secs = self.exp + leeway.as_secs_f64() - now;
        if secs >= cap.as_secs_f64() {
            return cap;
        }
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO)
    }
}

/// Claims that passed [`Claims::check`].
#[derive(Clone, Debug)]
pub struct Valid {
    pub granted: Granted,
    pub window: Window,
}

impl Claims {
    /// The claims of a JWS payload (base64url, no padding): a JSON object
    /// (RFC 7519 §7.2) — serde would also read an array by position.
    pub fn parse(payload_b64: &str) -> Result<Claims, Invalid> {
        let payload = URL_SAFE_NO_PAD.decode(payload_b64).map_err(|_| Invalid::Malformed)?;
        if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(Invalid::Malformed);
        }
        serde_json::from_slice(&payload).map_err(|_| Invalid::Malformed)
    }

    /// Checks the claims against `want` at the current time; the scopes the
    /// token grants and when it may be used.
    pub fn check(&self, want: &Expected<'_>) -> Result<Valid, Invalid> {
        self.check_at(want, now())
    }

    fn check_at(&self, want: &Expected<'_>, now: f64) -> Result<Valid, Invalid> {
        self.types()?;
        let exp = self.exp.as_ref().and_then(Value::as_f64).ok_or(Invalid::MissingClaim)?;
        let window = Window { exp, nbf: self.nbf.as_ref().and_then(Value::as_f64) };
        window.check_at(want.leeway, now)?;
        self.issuer_and_audience(want)?;
        Ok(Valid { granted: Granted::from_claims(self.scope.as_ref(), self.scp.as_ref()), window })
    }

    fn issuer_and_audience(&self, want: &Expected<'_>) -> Result<(), Invalid> {
        match self.iss.as_ref().and_then(Value::as_str) {
            None => return Err(Invalid::MissingClaim),
            Some(iss) if iss != want.issuer => return Err(Invalid::WrongIssuer),
            Some(_) => {}
        }
        let named = |a: &str| want.audiences.iter().any(|w| w == a);
        match &self.aud {
            None => Err(Invalid::MissingClaim),
            Some(Value::String(a)) if named(a) => Ok(()),
            Some(Value::Array(list)) if list.iter().filter_map(Value::as_str).any(named) => Ok(()),
            Some(_) => Err(Invalid::WrongAudience),
        }
    }

    /// The claims of a Security Event Token (RFC 8417 §2.2): `iss`, `aud`,
    /// `jti` and `iat` required, `iat` no older than `max_age` nor in the
    /// future (beyond the leeway), `exp` and `nbf` honoured when present.
    /// Its `jti`.
    pub fn check_event(&self, want: &Expected<'_>, max_age: Duration, now: f64) -> Result<&str, Invalid> {
        self.types()?;
        let iat = self.iat.as_ref().and_then(Value::as_f64).ok_or(Invalid::MissingClaim)?;
        let leeway = want.leeway.as_secs_f64();
        if iat + max_age.as_secs_f64() + leeway < now {
            return Err(Invalid::Expired);
        }
        if iat > now + leeway {
            return Err(Invalid::NotYetValid);
        }
        if let Some(exp) = self.exp.as_ref().and_then(Value::as_f64) {
            Window { exp, nbf: self.nbf.as_ref().and_then(Value::as_f64) }.check_at(want.leeway, now)?;
        } else if self.nbf.as_ref().and_then(Value::as_f64).is_some_and(|nbf| nbf > now + leeway) {
            return Err(Invalid::NotYetValid);
        }
        self.issuer_and_audience(want)?;
        match self.jti.as_ref().and_then(Value::as_str) {
            Some(jti) if !jti.is_empty() && jti.len() <= 256 => Ok(jti),
            Some(_) => Err(Invalid::Malformed),
            None => Err(Invalid::MissingClaim),
        }
    }

    /// Every present registered claim has its registered type: NumericDate
    /// (a non-negative JSON number) for `exp`, `nbf`, `iat`; a string for
    /// `iss`, `sub`, `jti`; a string or an array of strings for `aud`.
    fn types(&self) -> Result<(), Invalid> {
        let date = |v: &Option<Value>| v.as_ref().map_or(true, |v| v.as_f64().is_some_and(|n| n >= 0.0));
        let text = |v: &Option<Value>| v.as_ref().map_or(true, Value::is_string);
        let aud = match &self.aud {
            None | Some(Value::String(_)) => true,
            Some(Value::Array(list)) => list.iter().all(Value::is_string),
            Some(_) => false,
        };
        let ok = date(&self.exp)
            && date(&self.nbf)
            && date(&self.iat)
            && text(&self.iss)
            && text(&self.sub)
            && text(&self.jti)
            && aud;
        if ok {
            Ok(())
        } else {
            Err(Invalid::ClaimType)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: f64 = 1_800_000_000.0;

    fn check(extra: Value) -> Result<Granted, Invalid> {
        check_valid(extra).map(|v| v.granted)
    }

    /// `base` with `extra` applied (`"<absent>"` removes a claim).
    fn claims(mut base: Value, extra: Value) -> Claims {
        for (k, v) in extra.as_object().unwrap() {
            if v == &json!("<absent>") {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        serde_json::from_value(base).unwrap()
    }

    fn check_valid(extra: Value) -> Result<Valid, Invalid> {
        let base = json!({"iss": "https://iss", "aud": "edge", "exp": NOW + 60.0, "sub": "alice", "scope": "a b"});
        let claims = claims(base, extra);
        let audiences = ["edge".to_owned(), "other".to_owned()];
        let want = Expected { issuer: "https://iss", audiences: &audiences, leeway: Duration::from_secs(5) };
        claims.check_at(&want, NOW)
    }

    #[test]
    fn security_event_claims() {
        let want = Expected { issuer: "https://iss", audiences: &["tokex".to_owned()], leeway: Duration::from_secs(5) };
        let age = Duration::from_secs(300);
        let check = |extra: Value| {
            let base = json!({"iss": "https://iss", "aud": "tokex", "iat": NOW - 10.0, "jti": "j1"});
            claims(base, extra).check_event(&want, age, NOW).map(str::to_owned)
        };
        assert_eq!(check(json!({})), Ok("j1".to_owned()));
        assert_eq!(check(json!({"aud": ["x", "tokex"]})), Ok("j1".to_owned()));
        assert_eq!(check(json!({"iat": NOW - 306.0})), Err(Invalid::Expired));
        assert_eq!(check(json!({"iat": NOW + 6.0})), Err(Invalid::NotYetValid));
        assert_eq!(check(json!({"exp": NOW - 6.0})), Err(Invalid::Expired));
        assert_eq!(check(json!({"iss": "https://other"})), Err(Invalid::WrongIssuer));
        assert_eq!(check(json!({"aud": "other"})), Err(Invalid::WrongAudience));
        assert_eq!(check(json!({"jti": "<absent>"})), Err(Invalid::MissingClaim));
        assert_eq!(check(json!({"iat": "<absent>"})), Err(Invalid::MissingClaim));
        assert_eq!(check(json!({"jti": ""})), Err(Invalid::Malformed));
        assert_eq!(check(json!({"jti": 7})), Err(Invalid::ClaimType));
    }

    #[test]
    fn valid_claims_grant_their_scopes() {
        let granted = check(json!({})).unwrap();
        assert!(granted.contains("a") && granted.contains("b"));
        assert!(check(json!({"aud": ["x", "other"], "nbf": NOW, "iat": NOW - 1.5, "jti": "j"})).is_ok());
        // Leeway on both ends.
        assert!(check(json!({"exp": NOW - 4.0, "nbf": NOW + 4.0})).is_ok());
    }

    #[test]
    fn the_window_is_the_check_of_exp_and_nbf() {
        let v = check_valid(json!({"exp": NOW + 10.0, "nbf": NOW - 1.0})).unwrap();
        assert_eq!(v.window, Window { exp: NOW + 10.0, nbf: Some(NOW - 1.0) });
        assert_eq!(check_valid(json!({})).unwrap().window.nbf, None);
        let leeway = Duration::from_secs(5);
        let w = v.window;
        // Accepted up to exp + leeway exactly, refused just after.
        assert_eq!(w.check_at(leeway, NOW + 15.0), Ok(()));
        assert_eq!(w.check_at(leeway, NOW + 15.001), Err(Invalid::Expired));
        assert_eq!(w.check_at(Duration::ZERO, NOW + 10.001), Err(Invalid::Expired));
        let early = Window { exp: NOW + 60.0, nbf: Some(NOW + 10.0) };
        assert_eq!(early.check_at(leeway, NOW), Err(Invalid::NotYetValid));
        assert_eq!(early.check_at(leeway, NOW + 5.0), Ok(()));
        // What is left, capped; never negative, whatever the numbers.
        let cap = Duration::from_secs(300);
        assert_eq!(w.remaining(leeway, NOW, cap), Duration::from_secs(15));
        assert_eq!(w.remaining(leeway, NOW + 20.0, cap), Duration::ZERO);
        assert_eq!(Window { exp: 1e300, nbf: None }.remaining(leeway, NOW, cap), cap);
        assert_eq!(Window { exp: f64::NAN, nbf: None }.remaining(leeway, NOW, cap), Duration::ZERO);
    }

    #[test]
    fn time_issuer_and_audience() {
        assert_eq!(check(json!({"exp": NOW - 6.0})).unwrap_err(), Invalid::Expired);
        assert_eq!(check(json!({"nbf": NOW + 6.0})).unwrap_err(), Invalid::NotYetValid);
        assert_eq!(check(json!({"exp": "<absent>"})).unwrap_err(), Invalid::MissingClaim);
        assert_eq!(check(json!({"iss": "<absent>"})).unwrap_err(), Invalid::MissingClaim);
        assert_eq!(check(json!({"aud": "<absent>"})).unwrap_err(), Invalid::MissingClaim);
        assert_eq!(check(json!({"iss": "https://iss/"})).unwrap_err(), Invalid::WrongIssuer);
        assert_eq!(check(json!({"aud": "nope"})).unwrap_err(), Invalid::WrongAudience);
        assert_eq!(check(json!({"aud": []})).unwrap_err(), Invalid::WrongAudience);
    }

    #[test]
    fn a_present_claim_of_the_wrong_type_refuses_the_token() {
        for bad in [
            json!({"nbf": "0"}),
            json!({"nbf": null}),
            json!({"nbf": -1}),
            json!({"nbf": true}),
            json!({"exp": "9999999999"}),
            json!({"exp": null}),
            json!({"iat": "yesterday"}),
            json!({"iat": [1]}),
            json!({"iss": 7}),
            json!({"iss": null}),
            json!({"iss": ["https://iss"]}),
            json!({"sub": 42}),
            json!({"sub": {"id": 1}}),
            json!({"jti": 1}),
            json!({"aud": 1}),
            json!({"aud": null}),
            json!({"aud": ["edge", 1]}),
            json!({"aud": {"edge": true}}),
        ] {
            assert_eq!(check(bad.clone()).unwrap_err(), Invalid::ClaimType, "{bad}");
        }
    }
}
