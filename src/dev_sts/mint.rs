//! `POST /mint`: a user (subject) token on demand, so that the gateway can
//! be tried by hand with curl alone. **Development only**, and not standard:
//! it is not advertised in the RFC 8414 metadata.
//!
//! The caller authenticates as any registered client, exactly as at
//! `/token` (`client_secret_basic`, `client_secret_post`, `private_key_jwt`),
//! so minting is never anonymous; but any registered client may then mint a
//! token for any `sub`, `aud` and `scope`: the client's own audience and
//! scope lists do not apply. The token has the shape of the demo's broad
//! user token ([`super::DevSts::mint`]): `at+jwt` with
//! `iss sub aud scope iat exp jti` (no `client_id`: it stands for a token
//! the user got elsewhere), `act: {sub}` when `act` is given (a token
//! that is already delegated), and `cnf: {jkt}` when `jkt` is given (a
//! token bound to the caller's DPoP key, RFC 9449 §6.1: a resource server
//! that checks DPoP accepts it only with proofs of that key). It is a valid
//! subject token at `/token` (which does not check possession of a bound
//! subject token).
//!
//! Form parameters (`application/x-www-form-urlencoded`, the `/token`
//! rules: empty values count as absent, single parameters may not repeat):
//!
//! | name | |
//! |---|---|
//! | `sub` | required; 1–256 characters, no control characters |
//! | `aud` (or `audience`) | required; repeatable and/or space-separated |
//! | `scope` | space-separated scope tokens (RFC 6749 §3.3); optional |
//! | `expires_in` | whole seconds, 1–86400; default 3600 |
//! | `act` | optional actor `sub`, same rules as `sub` |
//! | `jkt` | optional DPoP key thumbprint (RFC 7638, SHA-256, base64url: 43 characters) |
//!
//! Answer: `{"access_token", "token_type": "Bearer" (or "DPoP" with `jkt`), "expires_in", "scope"?}`
//! with `Cache-Control: no-store`; errors are RFC 6749 §5.2 JSON.

use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::clients::{is_scope_token, AssertionContext};
use super::dpop::is_thumbprint;
use super::endpoint::{read_form, OAuthError, Params};
use super::token::{bind, build_claims};
use super::{unix_now, State};

/// Lifetime of a minted token when the request names none.
pub const DEFAULT_MINT_LIFETIME: Duration = Duration::from_secs(3600);
/// Longest lifetime a minted token may have.
pub const MAX_MINT_LIFETIME: Duration = Duration::from_secs(86_400);
/// Longest `sub` / `act`, in characters.
const MAX_NAME_CHARS: usize = 256;
/// Longest single audience, in characters.
pub(super) const MAX_AUDIENCE_CHARS: usize = 1024;

/// A checked mint request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MintRequest {
    pub sub: String,
    /// In order, without repeats; never empty.
    pub aud: Vec<String>,
    /// In order, without repeats.
    pub scope: Vec<String>,
    /// Seconds, within 1..=86400.
    pub expires_in: u64,
    /// The actor's `sub`, for a token that is already delegated.
    pub act: Option<String>,
    /// The DPoP key thumbprint the token is bound to.
    pub jkt: Option<String>,
}

impl MintRequest {
    /// Checks the form (client authentication parameters are ignored here).
    pub fn from_params(params: &Params) -> Result<Self, OAuthError> {
        let sub = name(params, "sub")?.ok_or_else(|| invalid("sub is required"))?;
        let act = name(params, "act")?;
        let mut aud: Vec<String> = Vec::new();
        for value in params.all("aud").into_iter().chain(params.all("audience")) {
            for a in value.split(' ').filter(|a| !a.is_empty()) {
                if a.chars().count() > MAX_AUDIENCE_CHARS || a.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    return Err(invalid(
                        "each aud must be at most 1024 characters, without control characters or other whitespace",
                    ));
                }
                if !aud.iter().any(|o| o == a) {
                    aud.push(a.to_owned());
                }
            }
        }
        if aud.is_empty() {
            return Err(invalid("aud is required (one or more audiences)"));
        }
        let mut scope: Vec<String> = Vec::new();
        for s in params.one("scope")?.unwrap_or_default().split(' ').filter(|s| !s.is_empty()) {
            if !is_scope_token(s) {
                return Err(OAuthError::InvalidScope("malformed scope value".into()));
            }
            if !scope.iter().any(|o| o == s) {
                scope.push(s.to_owned());
            }
        }
        let expires_in = match params.one("expires_in")? {
            None => DEFAULT_MINT_LIFETIME.as_secs(),
            Some(v) => parse_lifetime(v).ok_or_else(|| invalid("expires_in must be whole seconds from 1 to 86400"))?,
        };
        let jkt = match params.one("jkt")? {
            Some(j) if is_thumbprint(j) => Some(j.to_owned()),
            Some(_) => return Err(invalid("jkt must be a SHA-256 JWK thumbprint, base64url (43 characters)")),
            None => None,
        };
        Ok(MintRequest { sub, aud, scope, expires_in, act, jkt })
    }
}

/// Decimal digits only (no sign, no unit), within 1..=86400.
fn parse_lifetime(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u64>().ok().filter(|n| (1..=MAX_MINT_LIFETIME.as_secs()).contains(n))
}

/// `sub` or `act`: at most once, 1–256 characters, no control characters.
pub(super) fn name(params: &Params, key: &str) -> Result<Option<String>, OAuthError> {
    let Some(v) = params.one(key)? else { return Ok(None) };
    if v.chars().count() > MAX_NAME_CHARS || v.chars().any(char::is_control) {
        return Err(OAuthError::InvalidRequest(format!(
            "{key} must be 1 to {MAX_NAME_CHARS} characters without control characters"
        )));
    }
    Ok(Some(v.to_owned()))
}

fn invalid(why: &str) -> OAuthError {
    OAuthError::InvalidRequest(why.to_owned())
}

impl State {
    /// `POST /mint`: authenticate the client (as at `/token`), check the
    /// form, sign. The client is authenticated first, so an anonymous
    /// caller learns nothing about the form.
    pub(super) async fn mint(&self, req: Request<Incoming>) -> Result<Value, OAuthError> {
        let form = read_form(req).await?;
        let now = unix_now();
        // An assertion may name this endpoint, the token endpoint or the issuer.
        let audiences = [self.mint_endpoint.as_str(), self.token_endpoint.as_str(), self.issuer.as_str()];
        let ctx = AssertionContext { audiences: &audiences, now };
        let client = self.clients.authenticate(form.authorization.as_deref(), &form.params, &ctx)?;
        let m = MintRequest::from_params(&form.params)?;
        let exp = now.saturating_add(m.expires_in);
        let act = m.act.as_deref().map(|a| json!({ "sub": a }));
        let mut claims = build_claims(&self.issuer, &m.sub, &m.aud, &m.scope, None, now, exp, act);
        bind(&mut claims, m.jkt.as_deref());
        let access_token = self.key.sign(&claims).map_err(|_| OAuthError::ServerError)?;
        tracing::info!(
            client_id = %client.id,
            sub = %m.sub,
            aud = %m.aud.join(" "),
            scope = %m.scope.join(" "),
            expires_in = m.expires_in,
            act = m.act.as_deref().unwrap_or("-"),
            dpop_jkt = m.jkt.as_deref().unwrap_or("-"),
            "dev-sts: user token minted"
        );
        let mut answer = json!({
            "access_token": access_token,
            "token_type": if m.jkt.is_some() { "DPoP" } else { "Bearer" },
            "expires_in": m.expires_in,
        });
        if !m.scope.is_empty() {
            if let Some(obj) = answer.as_object_mut() {
                obj.insert("scope".into(), Value::String(m.scope.join(" ")));
            }
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(form: &str) -> Result<MintRequest, OAuthError> {
        MintRequest::from_params(&Params::parse(form.as_bytes()))
    }

    fn code(form: &str) -> &'static str {
        match check(form) {
            Ok(_) => "ok",
            Err(OAuthError::InvalidRequest(_)) => "invalid_request",
            Err(OAuthError::InvalidScope(_)) => "invalid_scope",
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn a_full_request() {
        let m = check("sub=alice&scope=orders%3Aread+orders%3Awrite+orders%3Aread&aud=tokex&aud=a+b+tokex&expires_in=600&act=agent-7&client_id=ignored")
            .unwrap();
        assert_eq!(m.sub, "alice");
        assert_eq!(m.scope, ["orders:read", "orders:write"], "split on spaces, repeats dropped");
        assert_eq!(m.aud, ["tokex", "a", "b"], "repeatable and space-separated, repeats dropped");
        assert_eq!(m.expires_in, 600);
        assert_eq!(m.act.as_deref(), Some("agent-7"));
    }

    #[test]
    fn defaults_and_the_audience_alias() {
        let m = check("sub=alice&audience=orders-api").unwrap();
        assert_eq!(m.aud, ["orders-api"]);
        assert!(m.scope.is_empty());
        assert_eq!(m.expires_in, 3600);
        assert_eq!(m.act, None);
        assert_eq!(m.jkt, None);
        assert_eq!(check("sub=alice&aud=x&scope=").unwrap().scope, Vec::<String>::new(), "empty = absent");
        assert_eq!(check("sub=user%20with%20spaces%20%C3%A9&aud=x").unwrap().sub, "user with spaces é");
    }

    #[test]
    fn sub_is_required_and_bounded() {
        assert_eq!(code("aud=x"), "invalid_request");
        assert_eq!(code("sub=&aud=x"), "invalid_request", "empty counts as absent");
        assert_eq!(code("sub=a&sub=b&aud=x"), "invalid_request", "repeated");
        assert_eq!(code(&format!("sub={}&aud=x", "é".repeat(256))), "ok", "256 characters, not bytes");
        assert_eq!(code(&format!("sub={}&aud=x", "a".repeat(257))), "invalid_request");
        assert_eq!(code("sub=al%0Aice&aud=x"), "invalid_request", "control character");
        assert_eq!(code("sub=alice&aud=x&act=a%00b"), "invalid_request");
        assert_eq!(code("sub=alice&aud=x&act=a&act=b"), "invalid_request");
    }

    #[test]
    fn aud_is_required_and_checked() {
        assert_eq!(code("sub=alice"), "invalid_request");
        assert_eq!(code("sub=alice&aud=+++"), "invalid_request", "only spaces");
        assert_eq!(code("sub=alice&aud=a%09b"), "invalid_request", "tab");
        assert_eq!(code(&format!("sub=alice&aud={}", "a".repeat(1025))), "invalid_request");
        assert_eq!(code(&format!("sub=alice&aud={}", "a".repeat(1024))), "ok");
        assert_eq!(code("sub=alice&aud=https%3A%2F%2Forders.internal%2F"), "ok");
    }

    #[test]
    fn jkt_is_a_thumbprint() {
        let jkt = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
        assert_eq!(check(&format!("sub=a&aud=x&jkt={jkt}")).unwrap().jkt.as_deref(), Some(jkt));
        assert_eq!(code("sub=a&aud=x&jkt=short"), "invalid_request");
        assert_eq!(code(&format!("sub=a&aud=x&jkt={jkt}&jkt={jkt}")), "invalid_request", "repeated");
        assert_eq!(code(&format!("sub=a&aud=x&jkt={}", jkt.replace('-', "%2B"))), "invalid_request", "not base64url");
    }

    #[test]
    fn scope_values_are_scope_tokens() {
        assert_eq!(code("sub=alice&aud=x&scope=a%22b"), "invalid_scope", "a quote is not a scope-token character");
        assert_eq!(code("sub=alice&aud=x&scope=a&scope=b"), "invalid_request", "repeated");
    }

    #[test]
    fn expires_in_is_whole_seconds_up_to_a_day() {
        for ok in ["1", "86400", "0600"] {
            assert_eq!(code(&format!("sub=a&aud=x&expires_in={ok}")), "ok", "{ok}");
        }
        for bad in ["0", "86401", "-1", "%2B5", "1.5", "10m", "99999999999999999999999", "1&expires_in=2"] {
            assert_eq!(code(&format!("sub=a&aud=x&expires_in={bad}")), "invalid_request", "{bad}");
        }
    }
}
