//! The HTTP side of the development authorization server: routing, the
//! capped form body, OAuth answers and errors (RFC 6749 §5.1 / §5.2).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::clients::AssertionContext;
use super::token::{self, CLIENT_CREDENTIALS, TOKEN_EXCHANGE};
use super::txn::{self, TXN_TOKEN_TYPE};
use super::{assertion, dpop, unix_now, State, JWT_BEARER_GRANT};
use crate::dpop::ProofError;
use crate::proxy::server::Handler;
use crate::proxy::Body;

/// Largest token request body.
pub const MAX_FORM_BYTES: usize = 64 * 1024;
/// Time allowed to receive a token request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// An OAuth error answer (RFC 6749 §5.2, RFC 8693 §2.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OAuthError {
    InvalidRequest(String),
    InvalidClient(&'static str),
    /// An authenticated client that may not use this grant or token type.
    UnauthorizedClient(&'static str),
    InvalidGrant(&'static str),
    InvalidScope(String),
    InvalidTarget(String),
    UnsupportedGrantType,
    /// The body exceeds [`MAX_FORM_BYTES`] (413, `invalid_request`).
    TooLarge,
    /// The revocation store is full of live revoked tokens (503, RFC 7009 §2.2.1).
    Unavailable,
    ServerError,
    /// A `DPoP` proof that fails a check (RFC 9449 §5).
    InvalidDpopProof(ProofError),
    /// A proof without the nonce this server demands (RFC 9449 §8).
    UseDpopNonce,
}

impl OAuthError {
    fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) | OAuthError::TooLarge => "invalid_request",
            OAuthError::InvalidClient(_) => "invalid_client",
            OAuthError::UnauthorizedClient(_) => "unauthorized_client",
            OAuthError::InvalidGrant(_) => "invalid_grant",
            OAuthError::InvalidScope(_) => "invalid_scope",
            OAuthError::InvalidTarget(_) => "invalid_target",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::Unavailable => "temporarily_unavailable",
            OAuthError::ServerError => "server_error",
            OAuthError::InvalidDpopProof(_) => "invalid_dpop_proof",
            OAuthError::UseDpopNonce => "use_dpop_nonce",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            OAuthError::InvalidClient(_) => StatusCode::UNAUTHORIZED,
            OAuthError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            OAuthError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            OAuthError::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            OAuthError::InvalidRequest(_)
            | OAuthError::UnauthorizedClient(_)
            | OAuthError::InvalidGrant(_)
            | OAuthError::InvalidScope(_)
            | OAuthError::InvalidTarget(_)
            | OAuthError::UnsupportedGrantType
            | OAuthError::InvalidDpopProof(_)
            | OAuthError::UseDpopNonce => StatusCode::BAD_REQUEST,
        }
    }

    pub(crate) fn description(&self) -> &str {
        match self {
            OAuthError::InvalidRequest(d) | OAuthError::InvalidScope(d) | OAuthError::InvalidTarget(d) => d,
            OAuthError::InvalidClient(d) | OAuthError::UnauthorizedClient(d) | OAuthError::InvalidGrant(d) => d,
            OAuthError::UnsupportedGrantType => {
                "supported: client_credentials, token exchange (RFC 8693, also for Txn-Tokens), and jwt-bearer (RFC 7523) when issuers are trusted (--trust-issuer)"
            }
            OAuthError::TooLarge => "request body too large",
            OAuthError::Unavailable => "too many live revoked tokens; retry later",
            OAuthError::ServerError => "internal error",
            OAuthError::InvalidDpopProof(e) => dpop_refusal(*e),
            OAuthError::UseDpopNonce => "the DPoP proof must carry the nonce in the DPoP-Nonce header",
        }
    }

    fn into_response(self) -> Response<Body> {
        let body = json!({"error": self.code(), "error_description": self.description()});
        let mut resp = json_answer(self.status(), &body);
        no_store(&mut resp);
        if let OAuthError::InvalidClient(_) = self {
            resp.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"tokex-dev-sts\""));
        }
        if let OAuthError::Unavailable = self {
            resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("60"));
        }
        resp
    }
}

/// Form parameters of a token request, in order. Empty values count as
/// absent (RFC 6749 §3.1).
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(body: &[u8]) -> Self {
        Params(
            form_urlencoded::parse(body)
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// A parameter that may appear at most once (RFC 6749 §3.1).
    pub fn one(&self, key: &str) -> Result<Option<&str>, OAuthError> {
        let mut found = self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let first = found.next();
        if found.next().is_some() {
            return Err(OAuthError::InvalidRequest(format!("parameter {key} is repeated")));
        }
        Ok(first)
    }

    /// A parameter that may repeat (`audience`, `resource`).
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }
}

/// Why a proof was refused, as the answer says it.
fn dpop_refusal(e: ProofError) -> &'static str {
    match e {
        ProofError::Count => "not exactly one DPoP header",
        ProofError::Malformed => "the DPoP proof is not a well-formed JWS",
        ProofError::Typ => "the DPoP proof's typ is not dpop+jwt",
        ProofError::Alg => "the DPoP proof's alg is not supported (see dpop_signing_alg_values_supported)",
        ProofError::Jwk => "the DPoP proof's jwk is not a public key that suits its alg",
        ProofError::Signature => "the DPoP proof's signature does not verify",
        ProofError::Claims => "the DPoP proof lacks jti, htm, htu or iat",
        ProofError::Htm => "the DPoP proof's htm is not POST",
        ProofError::Htu => "the DPoP proof's htu is not this token endpoint",
        ProofError::Iat => "the DPoP proof's iat is too old or in the future",
        ProofError::Nonce => "the DPoP proof's nonce is not the current one",
        ProofError::Ath => "a DPoP proof for the token endpoint carries no ath",
        ProofError::Replayed => "the DPoP proof was used before",
        ProofError::ReplayFull => "too many recent DPoP proofs; retry later",
    }
}

enum Endpoint {
    Token,
    /// Not standard, not advertised: see `mint.rs`.
    Mint,
    /// RFC 7009: see `revoke.rs`.
    Revoke,
    /// Not standard, not advertised: see `emit.rs`.
    Emit,
    Jwks,
    Metadata,
}

impl Handler for State {
    type Body = crate::proxy::Body;

    fn handle(
        &self,
        req: Request<Incoming>,
        _peer: SocketAddr,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        self.answer(req)
    }
}

impl State {
    /// Paths are served at the root and also under the issuer's path, and
    /// the metadata also at the RFC 8414 §3.1 path-inserted location.
    fn route(&self, path: &str) -> Option<Endpoint> {
        const META: &str = "/.well-known/oauth-authorization-server";
        if !self.issuer_path.is_empty() && path.strip_prefix(META) == Some(self.issuer_path.as_str()) {
            return Some(Endpoint::Metadata);
        }
        let rel = match path.strip_prefix(self.issuer_path.as_str()) {
            Some(rest) if !self.issuer_path.is_empty() && rest.starts_with('/') => rest,
            _ => path,
        };
        match rel {
            "/token" => Some(Endpoint::Token),
            "/mint" => Some(Endpoint::Mint),
            "/revoke" => Some(Endpoint::Revoke),
            "/ssf/emit" => Some(Endpoint::Emit),
            "/jwks.json" | "/.well-known/jwks.json" => Some(Endpoint::Jwks),
            META => Some(Endpoint::Metadata),
            _ => None,
        }
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let endpoint = self.route(req.uri().path());
        let method = req.method().clone();
        match endpoint {
            None => json_answer(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
            Some(Endpoint::Token) if method != Method::POST => method_not_allowed("POST"),
            Some(Endpoint::Token) => {
                let with_proof = req.headers().contains_key(crate::dpop::HEADER);
                let mut resp = token_answer(self.token(req).await, "token request");
                // Every answer to a request with a proof carries the current nonce (when demanded).
                if let Some(n) = with_proof.then(|| self.dpop.nonce_header()).flatten() {
                    resp.headers_mut().insert(crate::dpop::NONCE_HEADER, n);
                }
                resp
            }
            Some(Endpoint::Mint) if method != Method::POST => method_not_allowed("POST"),
            Some(Endpoint::Mint) => token_answer(self.mint(req).await, "mint"),
            Some(Endpoint::Revoke) if method != Method::POST => method_not_allowed("POST"),
            Some(Endpoint::Revoke) => empty_answer(self.revoke(req).await, "revocation"),
            Some(Endpoint::Emit) if method != Method::POST => method_not_allowed("POST"),
            Some(Endpoint::Emit) => token_answer(self.emit(req).await, "security event"),
            Some(_) if method != Method::GET && method != Method::HEAD => method_not_allowed("GET, HEAD"),
            Some(Endpoint::Jwks) => document(&self.jwks),
            Some(Endpoint::Metadata) => document(&self.metadata),
        }
    }

    async fn token(&self, req: Request<Incoming>) -> Result<Value, OAuthError> {
        let proof = dpop::presented(req.headers(), req.uri());
        let form = read_form(req).await?;
        let params = &form.params;
        let now = unix_now();
        let audiences = [self.token_endpoint.as_str(), self.issuer.as_str()];
        let ctx = AssertionContext { audiences: &audiences, now };
        let (client, method) = self.clients.authenticate_by(form.authorization.as_deref(), params, &ctx)?;
        let grant = params.one("grant_type");
        let txn = grant == Ok(Some(TOKEN_EXCHANGE)) && params.one("requested_token_type") == Ok(Some(TXN_TOKEN_TYPE));
        // After client authentication: an anonymous caller learns nothing.
        let jkt = match proof.map_err(OAuthError::InvalidDpopProof)? {
            Some(_) if txn => return Err(OAuthError::InvalidRequest("a Txn-Token is not sender-constrained".into())),
            Some(p) => Some(self.dpop.check(&p, &self.token_endpoint)?),
            None => None,
        };
        let jkt = jkt.as_deref();
        let grant = grant?.ok_or_else(|| OAuthError::InvalidRequest("grant_type is required".into()))?;
        let (issued, label) = match grant {
            CLIENT_CREDENTIALS => (token::client_credentials(self, client, params, now, jkt)?, "client_credentials"),
            TOKEN_EXCHANGE if txn => (txn::txn_token(self, client, method, params, now)?, "txn_token"),
            TOKEN_EXCHANGE => (token::token_exchange(self, client, params, now, jkt)?, "token_exchange"),
            JWT_BEARER_GRANT => match &self.trusted {
                Some(trusted) => (assertion::jwt_bearer(self, trusted, client, params, now, jkt).await?, "jwt_bearer"),
                None => return Err(OAuthError::UnsupportedGrantType),
            },
            _ => return Err(OAuthError::UnsupportedGrantType),
        };
        tracing::info!(
            client_id = %client.id,
            grant = label,
            sub = %issued.sub,
            aud = %issued.aud.join(" "),
            scope = %issued.scope.join(" "),
            expires_in = issued.expires_in,
            dpop_jkt = jkt.unwrap_or("-"),
            detail = issued.detail.as_deref().unwrap_or("-"),
            "dev-sts: token issued"
        );
        let mut answer = json!({
            "access_token": issued.access_token,
            "token_type": issued.token_type,
            "expires_in": issued.expires_in,
        });
        if let Some(m) = answer.as_object_mut() {
            if let Some(t) = issued.issued_token_type {
                m.insert("issued_token_type".into(), Value::String(t.to_owned()));
            }
            if !issued.scope.is_empty() {
                m.insert("scope".into(), Value::String(issued.scope.join(" ")));
            }
        }
        Ok(answer)
    }
}

/// A form POST as the token endpoint reads it: the one `Authorization`
/// header (if any) and the parameters.
pub(crate) struct Form {
    pub authorization: Option<Vec<u8>>,
    pub params: Params,
}

/// Reads a token-endpoint style request (also `/mint`, `/revoke`,
/// `/ssf/emit`): an
/// `application/x-www-form-urlencoded` body of at most [`MAX_FORM_BYTES`],
/// received within [`BODY_TIMEOUT`], and at most one `Authorization` header.
pub(crate) async fn read_form(req: Request<Incoming>) -> Result<Form, OAuthError> {
    let (parts, body) = req.into_parts();
    let form_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !form_type {
        return Err(OAuthError::InvalidRequest("Content-Type must be application/x-www-form-urlencoded".into()));
    }
    let declared = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_FORM_BYTES as u64) {
        return Err(OAuthError::TooLarge);
    }
    let mut authorizations = parts.headers.get_all(AUTHORIZATION).iter();
    let authorization = authorizations.next().map(|v| v.as_bytes().to_vec());
    if authorizations.next().is_some() {
        return Err(OAuthError::InvalidRequest("several Authorization headers".into()));
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_FORM_BYTES).collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(OAuthError::TooLarge),
        Ok(Err(_)) => return Err(OAuthError::InvalidRequest("could not read the request body".into())),
        Err(_) => return Err(OAuthError::InvalidRequest("request body not received in time".into())),
    };
    Ok(Form { authorization, params: Params::parse(&body) })
}

/// A token answer (`Cache-Control: no-store`), or the error answer, logged.
fn token_answer(result: Result<Value, OAuthError>, what: &'static str) -> Response<Body> {
    match result {
        Ok(body) => {
            let mut resp = json_answer(StatusCode::OK, &body);
            no_store(&mut resp);
            resp
        }
        Err(e) => refused(e, what),
    }
}

/// `200` with an empty body (RFC 7009 §2.2), or the error answer, logged.
fn empty_answer(result: Result<(), OAuthError>, what: &'static str) -> Response<Body> {
    match result {
        Ok(()) => {
            let mut resp = Response::new(Body::Right(Full::new(Bytes::new())));
            no_store(&mut resp);
            resp
        }
        Err(e) => refused(e, what),
    }
}

fn refused(e: OAuthError, what: &'static str) -> Response<Body> {
    tracing::info!(error = e.code(), reason = e.description(), "dev-sts: {what} refused");
    e.into_response()
}

fn json_answer(status: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Body::Right(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Discovery and JWKS: the key changes on every start, so caches revalidate.
fn document(text: &str) -> Response<Body> {
    let mut resp = Response::new(Body::Right(Full::new(Bytes::from(text.to_owned()))));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// RFC 6749 §5.1: token answers are never cached.
fn no_store(resp: &mut Response<Body>) {
    resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut().insert(PRAGMA, HeaderValue::from_static("no-cache"));
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = json_answer(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "method_not_allowed"}));
    resp.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_refuse_repeats_except_for_lists() {
        let p = Params::parse(b"grant_type=a&audience=x&audience=y&scope=&scope=s&client_id=c&client_id=c");
        assert_eq!(p.one("grant_type"), Ok(Some("a")));
        assert_eq!(p.all("audience"), ["x", "y"]);
        assert_eq!(p.one("scope"), Ok(Some("s")), "empty values count as absent");
        assert!(p.one("client_id").is_err());
        assert_eq!(p.one("missing"), Ok(None));
    }

    #[test]
    fn error_status_and_codes() {
        assert_eq!(OAuthError::InvalidClient("x").status(), StatusCode::UNAUTHORIZED);
        assert_eq!(OAuthError::InvalidTarget("x".into()).code(), "invalid_target");
        assert_eq!(OAuthError::TooLarge.code(), "invalid_request");
        let resp = OAuthError::InvalidClient("x").into_response();
        assert!(resp.headers().get(WWW_AUTHENTICATE).is_some());
        assert_eq!(resp.headers().get(CACHE_CONTROL).unwrap(), "no-store");
    }
}
