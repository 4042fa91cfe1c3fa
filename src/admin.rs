//! The admin listener: `/healthz` (the process serves), `/readyz` (listeners
//! bound, every start-up dependency up — `issuer:` discovery, the inbound
//! JWKS — and not draining: see `readiness`), `/metrics` (Prometheus text),
//! and `POST /cache/purge` (revocation, SPEC §5), the one mutating endpoint:
//! it needs `admin.token_file`'s token as a Bearer token (compared in
//! constant time) and does not exist (`404`) without one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::exchange::Exchanger;
use crate::metrics::Metrics;
use crate::proxy::server::Handler;
use crate::proxy::Body;
use crate::readiness::Readiness;
use crate::revocation::{PurgeError, Purger, Selector};
use crate::secret::Secret;

/// Largest purge request body.
const MAX_PURGE_BODY: usize = 4096;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub exchanger: Exchanger,
    pub readiness: Arc<Readiness>,
    /// `POST /cache/purge`: the purger and the admin token (`admin.token_file`).
    pub purge: Option<(Arc<Purger>, Secret)>,
}

/// A purge request: at most one selector; none purges everything.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    route: Option<String>,
    #[serde(default)]
    token_sha256: Option<String>,
}

impl Admin {
    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        if req.uri().path() == "/cache/purge" {
            return match &self.purge {
                Some((purger, token)) => purge(req, purger, token).await,
                None => json_response(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#),
            };
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return json_response(StatusCode::METHOD_NOT_ALLOWED, r#"{"error":"method_not_allowed"}"#);
        }
        match req.uri().path() {
            "/healthz" => json_response(StatusCode::OK, r#"{"status":"ok"}"#),
            "/readyz" if self.readiness.is_ready() => json_response(StatusCode::OK, r#"{"status":"ready"}"#),
            "/readyz" => json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not_ready"}"#),
            "/metrics" => {
                self.exchanger.cache().sync().await;
                let text = self.metrics.encode(self.exchanger.cache().entry_count());
                let mut resp = Response::new(Body::Right(http_body_util::Full::new(Bytes::from(text))));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                resp
            }
            _ => json_response(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#),
        }
    }
}

/// `POST /cache/purge`: the admin token, then the selector, then the purge.
async fn purge(req: Request<Incoming>, purger: &Purger, token: &Secret) -> Response<Body> {
    // The scheme without case (RFC 9110 §11.1), then the token.
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|v| &v[7..]);
    let expected = match token.get() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "admin.token_file cannot be read: purges are refused");
            return json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"admin_token_unreadable"}"#);
        }
    };
    // Digests compared in constant time: neither the token nor its length shows.
    let expected = Sha256::digest(expected.expose().trim().as_bytes());
    let good = presented.is_some_and(|p| bool::from(Sha256::digest(p).ct_eq(&expected)));
    if !good {
        let mut resp = json_response(StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#);
        resp.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tokex admin\""));
        return resp;
    }
    if req.method() != Method::POST {
        let mut resp = json_response(StatusCode::METHOD_NOT_ALLOWED, r#"{"error":"method_not_allowed"}"#);
        resp.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    let body = http_body_util::Limited::new(req.into_body(), MAX_PURGE_BODY).collect();
    let body = match tokio::time::timeout(Duration::from_secs(10), body).await {
        Ok(Ok(b)) => b.to_bytes(),
        _ => return bad_request("the body must be a JSON object of at most 4 KiB"),
    };
    let selector = match selector(&body) {
        Ok(s) => s,
        Err(why) => return bad_request(why),
    };
    match purger.purge(&selector, "admin").await {
        Ok(p) => {
            tracing::info!(
                selector = kind(&selector),
                purged = p.local,
                introspection = p.introspection,
                shared = p.shared,
                "cache purged"
            );
            let body = serde_json::json!({
                "purged": p.local, "introspection": p.introspection, "shared": p.shared, "announced": p.announced
            });
            json(StatusCode::OK, &body)
        }
        Err(e @ PurgeError::UnknownRoute(_)) => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": "unknown_route", "error_description": e.to_string() }),
        ),
    }
}

/// The selector a purge body names: `{}` (everything), or exactly one of
/// `sub`, `email`, `route`, `token_sha256` (64 hex digits).
fn selector(body: &[u8]) -> Result<Selector, &'static str> {
    // Everything is purged on an explicit `{}` only: never on an empty body,
    // nor on `[]` (which serde would read as a struct with no fields).
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("the body must be a JSON object: {}, {\"sub\": ...}, {\"route\": ...}, ...");
    }
    let r: PurgeRequest = serde_json::from_slice(body)
        .map_err(|_| "expected {}, {\"sub\": ...}, {\"email\": ...}, {\"route\": ...} or {\"token_sha256\": ...}")?;
    let named = [r.sub.is_some(), r.email.is_some(), r.route.is_some(), r.token_sha256.is_some()];
    if named.iter().filter(|n| **n).count() > 1 {
        return Err("name one of sub, email, route, token_sha256 (or none, to purge everything)");
    }
    let nonempty = |s: String| if s.is_empty() { Err("the selector must not be empty") } else { Ok(s) };
    Ok(match r {
        PurgeRequest { sub: Some(s), .. } => Selector::sub(&nonempty(s)?),
        PurgeRequest { email: Some(e), .. } => Selector::email(&nonempty(e)?),
        PurgeRequest { route: Some(r), .. } => Selector::Route(nonempty(r)?),
        PurgeRequest { token_sha256: Some(h), .. } => {
            Selector::token_hex(&h).ok_or("token_sha256: the SHA-256 of the subject token, 64 hex digits")?
        }
        _ => Selector::All,
    })
}

fn kind(s: &Selector) -> &'static str {
    match s {
        Selector::All => "all",
        Selector::Subject(_) => "subject",
        Selector::Route(_) => "route",
        Selector::Token(_) => "token",
    }
}

fn bad_request(why: &str) -> Response<Body> {
    json(StatusCode::BAD_REQUEST, &serde_json::json!({ "error": "invalid_request", "error_description": why }))
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Body::Right(http_body_util::Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

impl Handler for Admin {
    type Body = crate::proxy::Body;

    fn handle(
        &self,
        req: Request<Incoming>,
        _peer: SocketAddr,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        self.answer(req)
    }
}

/// A small JSON answer for paths that are not errors of the request pipeline.
pub fn json_response(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::Right(http_body_util::Full::new(Bytes::from_static(body.as_bytes()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_bodies() {
        assert!(selector(b"").is_err() && selector(b" ").is_err(), "an empty body purges nothing");
        assert_eq!(selector(b"{}"), Ok(Selector::All));
        assert_eq!(selector(br#"{"sub":"alice"}"#), Ok(Selector::sub("alice")));
        assert_eq!(selector(br#"{"email":"a@b"}"#), Ok(Selector::email("a@b")));
        assert_eq!(selector(br#"{"route":"orders"}"#), Ok(Selector::Route("orders".into())));
        let hex = "AB".repeat(32);
        assert_eq!(selector(format!(r#"{{"token_sha256":"{hex}"}}"#).as_bytes()), Ok(Selector::Token([0xab; 32])));
        for bad in [
            &br#"{"sub":"a","route":"b"}"#[..],
            br#"{"sub":""}"#,
            br#"{"token_sha256":"abc"}"#,
            br#"{"token_sha256":"zz"}"#,
            br#"{"nope":1}"#,
            br#"{"sub":7}"#,
            b"[]",
            b"not json",
        ] {
            assert!(selector(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
