//! `POST /ssf/emit`: revoke a subject at the dev-sts and push a Security
//! Event Token about it to a receiver (RFC 8935 push delivery), so a
//! gateway's revocation can be tried by hand (`tokex dev-sts revoke`).
//! **Development only**, not standard, not advertised; the caller
//! authenticates as any registered client, exactly as at `/mint`. The
//! dev-sts then sends a request to the URL given: keep it on loopback.
//!
//! Form parameters (`application/x-www-form-urlencoded`, the `/token`
//! rules):
//!
//! | name | |
//! |---|---|
//! | `sub` | required; 1–256 characters, no control characters |
//! | `event` | `session-revoked` (default), `credential-change`, `account-disabled`, `account-purged`, `tokens-revoked` |
//! | `audience` | required: the receiver's `aud`; at most 1024 characters, no whitespace |
//! | `format` | of `sub_id`: `iss_sub` (default), `email`, `opaque` |
//! | `push` | required: the receiver's push endpoint, an http(s) URL |
//!
//! The subject is revoked (as [`super::DevSts::revoke_subject`]) before
//! the push, whatever the receiver answers. The SET goes out with
//! `Content-Type: application/secevent+jwt`; the answer is read for at most
//! [`PUSH_TIMEOUT`] and [`MAX_RECEIVER_ANSWER_BYTES`]. Answer: `200`
//! `{"pushed": <receiver answered 202>, "status": <its status or null>,
//! "jti", "error"?: <its err and description, or why it was not reached>}`.

use std::time::Duration;

use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::clients::AssertionContext;
use super::endpoint::{read_form, OAuthError, Params};
use super::mint::{name, MAX_AUDIENCE_CHARS};
use super::outbound::{http_client, printable, read_capped};
use super::ssf::{new_jti, set_claims, SecurityEvent, SetContent, SubjectFormat, SET_TYP};
use super::{unix_now, State};

/// Time allowed for the whole push, to the last byte of the answer.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest receiver answer read.
pub const MAX_RECEIVER_ANSWER_BYTES: usize = 64 * 1024;
/// Longest `push` URL, in bytes.
const MAX_PUSH_URL_BYTES: usize = 2048;

/// A checked emit request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EmitRequest {
    pub sub: String,
    pub event: SecurityEvent,
    pub audience: String,
    pub format: SubjectFormat,
    pub push: url::Url,
}

impl EmitRequest {
    /// Checks the form (client authentication parameters are ignored here).
    pub fn from_params(params: &Params) -> Result<Self, OAuthError> {
        let invalid = |why: String| OAuthError::InvalidRequest(why);
        let sub = name(params, "sub")?.ok_or_else(|| invalid("sub is required".into()))?;
        let event = match params.one("event")? {
            None => SecurityEvent::default(),
            Some(e) => e.parse().map_err(|e: super::ssf::UnknownName| invalid(e.to_string()))?,
        };
        let format = match params.one("format")? {
            None => SubjectFormat::default(),
            Some(f) => f.parse().map_err(|e: super::ssf::UnknownName| invalid(e.to_string()))?,
        };
        let audience = params.one("audience")?.ok_or_else(|| invalid("audience is required".into()))?;
        if audience.chars().count() > MAX_AUDIENCE_CHARS
            || audience.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(invalid(format!(
                "audience must be at most {MAX_AUDIENCE_CHARS} characters, without control characters or whitespace"
            )));
        }
        let push =
            params.one("push")?.ok_or_else(|| invalid("push (the receiver's push endpoint) is required".into()))?;
        let push = push_url(push).map_err(|why| invalid(format!("push: {why}")))?;
        Ok(EmitRequest { sub, event, audience: audience.to_owned(), format, push })
    }
}

/// An absolute http(s) URL without credentials or fragment.
fn push_url(s: &str) -> Result<url::Url, &'static str> {
    if s.len() > MAX_PUSH_URL_BYTES {
        return Err("longer than 2048 bytes");
    }
    let u = url::Url::parse(s).map_err(|_| "not an absolute URL")?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err("must be an http or https URL");
    }
    if !u.username().is_empty() || u.password().is_some() || u.fragment().is_some() {
        return Err("must have no credentials and no fragment");
    }
    Ok(u)
}

/// How a push went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    /// Why it is not a 202, if it is not.
    pub error: Option<String>,
}

/// Pushes `set` to `url` (RFC 8935 §2): success is `202 Accepted`; a
/// refusal's `err` and `description` (§2.3) are kept.
pub(crate) async fn push(url: &url::Url, set: String) -> Pushed {
    let failed = |status: Option<u16>, why: String| Pushed { status, error: Some(why) };
    let http = match http_client(PUSH_TIMEOUT) {
        Ok(h) => h,
        Err(e) => return failed(None, format!("cannot make an HTTP client: {e}")),
    };
    let sent = http
        .post(url.clone())
        .header(CONTENT_TYPE, "application/secevent+jwt")
        .header(ACCEPT, "application/json")
        .body(set)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => return failed(None, format!("cannot reach {url}: {}", crate::telemetry::error_chain(&e))),
    };
    let status = resp.status();
    let code = Some(status.as_u16());
    if status == StatusCode::ACCEPTED {
        return Pushed { status: code, error: None };
    }
    let body = match read_capped(resp, MAX_RECEIVER_ANSWER_BYTES).await {
        Ok(b) => b,
        Err(e) => return failed(code, format!("HTTP {}: {e}", status.as_u16())),
    };
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let field = |k: &str| json.as_ref().and_then(|v| v.get(k)).and_then(Value::as_str).map(printable);
    let why = match (field("err"), field("description")) {
        (Some(err), Some(d)) => format!("{err}: {d}"),
        (Some(err), None) => err,
        (None, _) if status.is_success() => format!("HTTP {} instead of 202 (RFC 8935 §2.2)", status.as_u16()),
        (None, _) => format!("HTTP {}", status.as_u16()),
    };
    failed(code, why)
}

impl State {
    /// `POST /ssf/emit`: authenticate the client (as at `/mint`), check the
    /// form, revoke the subject, sign the SET and push it.
    pub(super) async fn emit(&self, req: Request<Incoming>) -> Result<Value, OAuthError> {
        let form = read_form(req).await?;
        let now = unix_now();
        let audiences = [self.emit_endpoint.as_str(), self.token_endpoint.as_str(), self.issuer.as_str()];
        let ctx = AssertionContext { audiences: &audiences, now };
        let client = self.clients.authenticate(form.authorization.as_deref(), &form.params, &ctx)?;
        let e = EmitRequest::from_params(&form.params)?;
        self.revocations.revoke_subject(&e.sub, now);
        let jti = new_jti();
        let content =
            SetContent { issuer: &self.issuer, sub: &e.sub, event: e.event, audience: &e.audience, format: e.format };
        let set =
            self.key.sign_typed(&set_claims(&content, &jti, now), SET_TYP).map_err(|_| OAuthError::ServerError)?;
        let pushed = push(&e.push, set).await;
        tracing::info!(
            client_id = %client.id,
            sub = %e.sub,
            event = e.event.name(),
            aud = %e.audience,
            push = %e.push,
            jti = %jti,
            status = pushed.status.unwrap_or(0),
            error = pushed.error.as_deref().unwrap_or("-"),
            "dev-sts: subject revoked, security event pushed"
        );
        let mut answer = json!({
            "pushed": pushed.status == Some(202) && pushed.error.is_none(),
            "status": pushed.status,
            "jti": jti,
        });
        if let (Some(why), Some(m)) = (pushed.error, answer.as_object_mut()) {
            m.insert("error".into(), Value::String(why));
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(form: &str) -> Result<EmitRequest, OAuthError> {
        EmitRequest::from_params(&Params::parse(form.as_bytes()))
    }

    const PUSH: &str = "push=http%3A%2F%2F127.0.0.1%3A8080%2F.well-known%2Fssf%2Fpush";

    #[test]
    fn defaults_and_a_full_request() {
        let e = check(&format!("sub=alice&audience=tokex&{PUSH}")).unwrap();
        assert_eq!((e.event, e.format), (SecurityEvent::SessionRevoked, SubjectFormat::IssSub));
        assert_eq!(e.push.as_str(), "http://127.0.0.1:8080/.well-known/ssf/push");
        let e = check(&format!("sub=a%40x&audience=tokex&event=account-purged&format=email&{PUSH}")).unwrap();
        assert_eq!((e.sub.as_str(), e.event, e.format), ("a@x", SecurityEvent::AccountPurged, SubjectFormat::Email));
    }

    #[test]
    fn bad_forms_are_invalid_request() {
        for bad in [
            format!("audience=tokex&{PUSH}"),
            format!("sub=alice&{PUSH}"),
            "sub=alice&audience=tokex".to_owned(),
            format!("sub=alice&audience=tokex&event=session_revoked&{PUSH}"),
            format!("sub=alice&audience=tokex&format=phone&{PUSH}"),
            format!("sub=alice&audience=a+b&{PUSH}"),
            format!("sub=al%0Aice&audience=tokex&{PUSH}"),
            format!("sub=alice&audience=tokex&event=a&event=b&{PUSH}"),
            "sub=alice&audience=tokex&push=ftp%3A%2F%2Fx%2F".to_owned(),
            "sub=alice&audience=tokex&push=%2Frelative".to_owned(),
            "sub=alice&audience=tokex&push=http%3A%2F%2Fu%3Ap%40x%2F".to_owned(),
            "sub=alice&audience=tokex&push=http%3A%2F%2Fx%2F%23f".to_owned(),
        ] {
            assert!(matches!(check(&bad), Err(OAuthError::InvalidRequest(_))), "{bad}");
        }
        let Err(OAuthError::InvalidRequest(why)) = check(&format!("sub=a&audience=t&event=nope&{PUSH}")) else {
            panic!("accepted")
        };
        assert!(why.contains("session-revoked"), "{why}");
    }
}
