//! Transaction Tokens (draft-ietf-oauth-transaction-tokens-10) at the token
//! endpoint: a token exchange request (RFC 8693) with `requested_token_type`
//! [`TXN_TOKEN_TYPE`] is answered with a short-lived Txn-Token for one
//! trust domain, carrying the subject of a token of this server and the
//! request's context.
//!
//! Rules: the client must have authenticated with `private_key_jwt` (the
//! Txn-Token Service needs strong client authentication; this plain-HTTP
//! server has no mTLS), else `unauthorized_client`. `subject_token` is
//! checked as for token exchange (`token.rs`). Exactly one `audience` (the
//! trust domain, allowed for the client), no `resource`, no `actor_token`.
//! Requested scopes must be allowed for the client and held by the subject
//! token when it names scopes. `request_context` and `request_details`,
//! when given, are JSON objects of at most [`MAX_CONTEXT_BYTES`], copied
//! unchanged into `rctx` and `tctx`. A `DPoP` proof is refused by the
//! endpoint: a Txn-Token is not sender-constrained.
//!
//! The token: header `typ: txntoken+jwt` and `kid`; claims `iss iat exp aud
//! txn sub` (+ `scope`, `tctx`, `rctx`), `exp` at most
//! [`MAX_TXN_TOKEN_LIFETIME`] (and the server's token lifetime) ahead and
//! never after the subject token's. The answer's `token_type` is `N_A`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Map, Value};

use super::clients::{AuthMethod, Client};
use super::endpoint::{OAuthError, Params};
use super::token::{check_subject, delegated_scopes, requested_scopes, scope_list, subject_param, Issued};
use super::State;

/// `requested_token_type` (and `issued_token_type`) of a Txn-Token.
pub const TXN_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:txn_token";
/// The JWT `typ` header of a Txn-Token.
pub const TXN_TOKEN_TYP: &str = "txntoken+jwt";
/// A Txn-Token lives at most this long (less when the server's token
/// lifetime or the subject token's expiry says so).
pub const MAX_TXN_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// Largest `request_context` / `request_details` value, in bytes.
pub const MAX_CONTEXT_BYTES: usize = 4 * 1024;

/// Issues a Txn-Token (see the module documentation for the rules).
pub(crate) fn txn_token(
    state: &State,
    client: &Client,
    method: AuthMethod,
    params: &Params,
    now: u64,
) -> Result<Issued, OAuthError> {
    if method != AuthMethod::PrivateKeyJwt {
        return Err(OAuthError::UnauthorizedClient(
            "a Txn-Token is issued only to a client authenticated with private_key_jwt",
        ));
    }
    let subject_token = subject_param(params)?;
    if params.one("actor_token")?.is_some() || params.one("actor_token_type")?.is_some() {
        return Err(OAuthError::InvalidRequest("a Txn-Token request takes no actor_token".into()));
    }
    let audience = match params.all("audience").as_slice() {
        [one] => *one,
        [] => return Err(OAuthError::InvalidRequest("audience (the trust domain) is required".into())),
        _ => {
            return Err(OAuthError::InvalidRequest("a Txn-Token names exactly one audience (the trust domain)".into()))
        }
    };
    if !params.all("resource").is_empty() {
        return Err(OAuthError::InvalidRequest(
            "a Txn-Token names its trust domain with audience, not resource".into(),
        ));
    }
    if !client.allows_audience(audience) {
        return Err(OAuthError::InvalidTarget("the audience (trust domain) is not allowed for this client".into()));
    }
    let rctx = params.one("request_context")?.map(|raw| context_object("request_context", raw)).transpose()?;
    let tctx = params.one("request_details")?.map(|raw| context_object("request_details", raw)).transpose()?;
    let requested = requested_scopes(params)?;

    let subject = check_subject(state, subject_token, now)?;
    let held = subject.claims.get("scope").map(|c| scope_list(Some(c)));
    let scope = delegated_scopes(requested, held.as_deref(), |s| client.allows_scope(s))
        .map_err(|r| r.into_error("the subject token"))?;
    let lifetime = state.expires_in.min(MAX_TXN_TOKEN_LIFETIME).as_secs();
    let subject_exp = subject.claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
    let exp = now.saturating_add(lifetime).min(subject_exp);
    let txn = new_txn_id().ok_or(OAuthError::ServerError)?;
    let content = TxnContent { iss: &state.issuer, sub: &subject.sub, aud: audience, txn: &txn, scope: &scope };
    let claims = txn_claims(&content, now, exp, rctx, tctx);
    let token = state.key.sign_typed(&claims, TXN_TOKEN_TYP).map_err(|_| OAuthError::ServerError)?;
    state.txn_tokens.fetch_add(1, Ordering::Relaxed);
    Ok(Issued {
        access_token: token,
        issued_token_type: Some(TXN_TOKEN_TYPE),
        token_type: "N_A",
        expires_in: exp.saturating_sub(now),
        scope,
        sub: subject.sub,
        aud: vec![audience.to_owned()],
        detail: Some(format!("txn={txn}")),
    })
}

/// `request_context` / `request_details` (named `name`): a JSON object of
/// at most [`MAX_CONTEXT_BYTES`] (`invalid_request` otherwise).
fn context_object(name: &str, raw: &str) -> Result<Map<String, Value>, OAuthError> {
    if raw.len() > MAX_CONTEXT_BYTES {
        return Err(OAuthError::InvalidRequest(format!("{name} is larger than {MAX_CONTEXT_BYTES} bytes")));
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(OAuthError::InvalidRequest(format!("{name} is not a JSON object"))),
        Err(_) => Err(OAuthError::InvalidRequest(format!("{name} is not valid JSON"))),
    }
}

/// A fresh transaction id: 128 random bits, base64url (22 characters).
fn new_txn_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

/// What a Txn-Token says besides its times and contexts.
struct TxnContent<'a> {
    iss: &'a str,
    sub: &'a str,
    /// The trust domain.
    aud: &'a str,
    txn: &'a str,
    scope: &'a [String],
}

/// The claims of a Txn-Token: `scope`, `rctx` and `tctx` only when present.
fn txn_claims(
    c: &TxnContent<'_>,
    iat: u64,
    exp: u64,
    rctx: Option<Map<String, Value>>,
    tctx: Option<Map<String, Value>>,
) -> Value {
    let mut claims = json!({"iss": c.iss, "iat": iat, "exp": exp, "aud": c.aud, "txn": c.txn, "sub": c.sub});
    let Some(m) = claims.as_object_mut() else { return claims };
    if !c.scope.is_empty() {
        m.insert("scope".into(), Value::String(c.scope.join(" ")));
    }
    if let Some(rctx) = rctx {
        m.insert("rctx".into(), Value::Object(rctx));
    }
    if let Some(tctx) = tctx {
        m.insert("tctx".into(), Value::Object(tctx));
    }
    claims
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_are_json_objects_of_bounded_size() {
        let m = context_object("request_context", r#"{"req_ip":"192.0.2.1","authn":"urn:x:pwd"}"#).unwrap();
        assert_eq!(m["req_ip"], "192.0.2.1");
        assert_eq!(m["authn"], "urn:x:pwd");
        assert!(context_object("request_details", "{}").unwrap().is_empty());
        let describe = |raw: &str| context_object("request_context", raw).unwrap_err().description().to_owned();
        assert_eq!(describe("{not json"), "request_context is not valid JSON");
        assert_eq!(describe("[1, 2]"), "request_context is not a JSON object");
        assert_eq!(describe("\"text\""), "request_context is not a JSON object");
        assert_eq!(describe("null"), "request_context is not a JSON object");
        // Exactly the limit passes; one byte more does not.
        let fill = |n: usize| format!(r#"{{"k":"{}"}}"#, "a".repeat(n - 8));
        assert_eq!(fill(MAX_CONTEXT_BYTES).len(), MAX_CONTEXT_BYTES);
        assert!(context_object("request_context", &fill(MAX_CONTEXT_BYTES)).is_ok());
        assert_eq!(describe(&fill(MAX_CONTEXT_BYTES + 1)), "request_context is larger than 4096 bytes");
    }

    #[test]
    fn claims_carry_only_what_was_given() {
        let scope = vec!["orders:read".to_owned(), "orders:write".to_owned()];
        let c = TxnContent { iss: "http://as", sub: "alice", aud: "trust.example", txn: "t1", scope: &scope };
        let rctx = json!({"req_ip": "192.0.2.1"}).as_object().cloned();
        let tctx = json!({"action": "GET /orders"}).as_object().cloned();
        let claims = txn_claims(&c, 10, 70, rctx, tctx);
        assert_eq!(
            claims,
            json!({"iss": "http://as", "iat": 10, "exp": 70, "aud": "trust.example", "txn": "t1", "sub": "alice",
                   "scope": "orders:read orders:write", "rctx": {"req_ip": "192.0.2.1"}, "tctx": {"action": "GET /orders"}})
        );
        let bare = txn_claims(&TxnContent { scope: &[], ..c }, 10, 70, None, None);
        assert!(bare.get("scope").is_none() && bare.get("rctx").is_none() && bare.get("tctx").is_none());
        assert!(bare.get("jti").is_none() && bare.get("client_id").is_none());
    }

    #[test]
    fn transaction_ids_are_fresh_128_bit_values() {
        let (a, b) = (new_txn_id().unwrap(), new_txn_id().unwrap());
        assert_eq!(a.len(), 22);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }
}
