//! The check listener (`authz`, SPEC §8): a proxy a team already runs
//! (Envoy ext_authz, nginx `auth_request`, Traefik ForwardAuth) asks
//! whether a request may go on, and with which credential. The request it
//! describes takes phases 1 to 4 of `handler.rs` (match → extract →
//! validate → exchange); nothing is forwarded.
//!
//! Where the original method, target and host are read is the configured
//! dialect's, never guessed: the front proxies pass the caller's own
//! headers into the check, so another dialect's headers are the caller's
//! words and are never read.
//!
//! Allowed: `200`, no body, the route's forward header with the credential
//! and, for Envoy, `x-envoy-auth-headers-to-remove` naming the headers the
//! backend must not see. Refused: the proxy-mode status and challenge.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, PROXY_AUTHORIZATION};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use hyper::body::Incoming;

use super::handler::{Gateway, Original, Via};
use super::routes::Route;
use super::target::{self, Authority};
use super::Body;
use crate::config::{AuthzConfig, Dialect};
use crate::error::GatewayError;

/// Envoy removes the headers this answer header names from the request it
/// forwards (HTTP ext_authz; the gRPC answer's `headers_to_remove`).
pub const ENVOY_REMOVE: HeaderName = HeaderName::from_static("x-envoy-auth-headers-to-remove");

/// The HTTP check listener.
pub struct Checks {
    gateway: Arc<Gateway>,
    dialect: Dialect,
    path_prefix: Option<String>,
}

/// The original request a check describes.
pub(super) struct Described {
    pub method: Method,
    pub uri: Uri,
    pub authority: Option<Authority>,
}

impl Described {
    /// The described request, unless it is one tokex never serves.
    pub fn new(method: Method, uri: Uri, authority: Option<Authority>) -> Result<Self, &'static str> {
        if method == Method::CONNECT {
            return Err("CONNECT is not supported");
        }
        Ok(Described { method, uri, authority })
    }

    pub fn original<'a>(&'a self, headers: &'a HeaderMap, dialect: Dialect) -> Original<'a> {
        // Envoy removes the headers tokex names (x-envoy-auth-headers-to-remove,
        // headers_to_remove); nginx and Traefik remove what their configuration says.
        let via = if dialect == Dialect::Envoy { Via::Removing } else { Via::Front };
        let authority = self.authority.as_ref();
        Original { method: &self.method, uri: &self.uri, authority, headers, body: None, via }
    }
}

impl Checks {
    pub fn new(gateway: Arc<Gateway>, config: &AuthzConfig) -> Self {
        Checks { gateway, dialect: config.dialect, path_prefix: config.path_prefix.clone() }
    }

    async fn answer(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        // The body (Envoy may send it) is never read.
        let (parts, _) = req.into_parts();
        let described = describe(self.dialect, self.path_prefix.as_deref(), &parts);
        let original = match &described {
            Ok(d) => Ok(d.original(&parts.headers, self.dialect)),
            Err(why) => Err(GatewayError::BadTarget(why)),
        };
        let head = (&parts.method, &parts.uri, &parts.headers);
        let dialect = self.dialect;
        self.gateway.check(original, head, peer, |route, credential| allowed(dialect, route, credential)).await
    }
}

impl super::server::Handler for Checks {
    type Body = Body;

    fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        self.answer(req, peer)
    }
}

/// The original request of an HTTP check, read where `dialect` puts it.
fn describe(dialect: Dialect, path_prefix: Option<&str>, check: &Parts) -> Result<Described, &'static str> {
    let h = &check.headers;
    let (method, uri, authority) = match dialect {
        // The check is the original request line and headers, its path
        // behind `path_prefix`.
        Dialect::Envoy => {
            let target = check.uri.path_and_query().map_or("/", |p| p.as_str());
            let target = match path_prefix {
                None => target,
                Some(prefix) => match target.strip_prefix(prefix) {
                    Some(rest) if rest.starts_with('/') => rest,
                    _ => return Err("the check's path does not start with authz.path_prefix"),
                },
            };
            let uri = origin_form(target.as_bytes())?;
            let authority = target::authority(&check.method, check.version, &check.uri, h)?;
            (check.method.clone(), uri, authority)
        }
        // `auth_request`: a GET subrequest with the caller's headers; the
        // configuration sets these two and `Host`.
        Dialect::Nginx => {
            let method = method(one(h, "x-original-method")?.ok_or("nginx check without X-Original-Method")?)?;
            let uri = origin_form(one(h, "x-original-uri")?.ok_or("nginx check without X-Original-URI")?)?;
            let authority = target::authority(&method, check.version, &check.uri, h)?;
            (method, uri, authority)
        }
        // ForwardAuth sends its own request to tokex; the original one is
        // in these headers, which Traefik overwrites (`trustForwardHeader: false`).
        Dialect::Traefik => {
            let method = method(one(h, "x-forwarded-method")?.ok_or("Traefik check without X-Forwarded-Method")?)?;
            let uri = origin_form(one(h, "x-forwarded-uri")?.ok_or("Traefik check without X-Forwarded-Uri")?)?;
            let host = one(h, "x-forwarded-host")?.ok_or("Traefik check without X-Forwarded-Host")?;
            let host = HeaderValue::from_bytes(host).map_err(|_| "invalid X-Forwarded-Host")?;
            let authority = Authority::reported(host).map_err(|_| "invalid X-Forwarded-Host")?;
            (method, uri, Some(authority))
        }
    };
    Described::new(method, uri, authority)
}

/// The one value of `name`, if any: two are refused (which would count?).
fn one<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a [u8]>, &'static str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err("a check header that says where the original request went is repeated");
    }
    Ok(first.map(HeaderValue::as_bytes))
}

/// An original method: a token of at most 32 bytes.
pub(super) fn method(b: &[u8]) -> Result<Method, &'static str> {
    if b.len() > 32 {
        return Err("the original method is too long");
    }
    Method::from_bytes(b).map_err(|_| "invalid original method")
}

/// An original request target: origin-form (`/path?query`), in a form
/// every front proxy routes on as tokex matches it.
pub(super) fn origin_form(b: &[u8]) -> Result<Uri, &'static str> {
    if b.first() != Some(&b'/') {
        return Err("the original request target is not origin-form (/path?query)");
    }
    // A fragment never belongs in a request target; parsing would drop it
    // while the backend may read the target as sent.
    if b.contains(&b'#') {
        return Err("the original request target holds '#'");
    }
    let uri = Uri::try_from(b).map_err(|_| "invalid original request target")?;
    if ambiguous(uri.path()) {
        return Err("the original path has a form that proxies or backends read differently");
    }
    Ok(uri)
}

/// A path that the front proxy, or the backend behind it, may read in
/// another form than the one tokex matches: empty segments (merged by
/// nginx) and percent-encoded unreserved or control characters (decoded by
/// normalizers, RFC 3986 §6.2.2.2). Reading it one way and matching it the
/// other could give one route's token to another route's backend. (Dot
/// segments, `..;`, `%2F` and backslashes are refused for every request,
/// and routes match without segment parameters, in `handler.rs`.)
fn ambiguous(path: &str) -> bool {
    let b = path.as_bytes();
    b.windows(2).any(|w| w == b"//")
        || b.windows(3).any(|w| {
            w[0] == b'%'
                && match (hex(w[1]), hex(w[2])) {
                    (Some(hi), Some(lo)) => {
                        let c = hi << 4 | lo;
                        c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') || c.is_ascii_control()
                    }
                    _ => false,
                }
        })
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// The allowed answer: the credential in the route's forward header and
/// nothing else the caller's token could ride in; for Envoy, the headers
/// to remove before forwarding: the caller's `Authorization` unless the
/// credential replaces it, and the route's `forward.remove_headers`.
pub(super) fn allowed(
    dialect: Dialect,
    route: &Route,
    credential: Option<(&HeaderName, HeaderValue)>,
) -> Response<Body> {
    let mut resp = Response::new(Body::Right(http_body_util::Full::new(Bytes::new())));
    let replaces_authorization = credential.as_ref().is_some_and(|(name, _)| *name == AUTHORIZATION);
    if let Some((name, value)) = credential {
        resp.headers_mut().insert(name.clone(), value);
    }
    if dialect == Dialect::Envoy {
        let mut remove: Vec<&str> = Vec::with_capacity(3 + route.remove_headers.len());
        if !replaces_authorization {
            remove.push(AUTHORIZATION.as_str());
        }
        remove.push(PROXY_AUTHORIZATION.as_str());
        // A caller's DPoP proof is for tokex, never for the backend.
        remove.push(crate::dpop::HEADER);
        remove.extend(route.remove_headers.iter().map(HeaderName::as_str));
        // Header names: always a valid value.
        if let Ok(v) = HeaderValue::from_str(&remove.join(",")) {
            resp.headers_mut().insert(ENVOY_REMOVE, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().method("GET").uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn path_of(d: Result<Described, &'static str>) -> String {
        let d = d.unwrap();
        format!("{} {} {}", d.method, d.uri, d.authority.as_ref().map_or("-", |a| a.host()))
    }

    #[test]
    fn each_dialect_reads_only_its_own_headers() {
        // A caller's spoofs of the other dialects' headers.
        let spoofs = [
            ("x-original-uri", "/admin"),
            ("x-original-method", "DELETE"),
            ("x-forwarded-uri", "/admin"),
            ("x-forwarded-method", "DELETE"),
            ("x-forwarded-host", "evil.example"),
        ];
        let mut h: Vec<(&str, &str)> = vec![("host", "api.example.com")];
        h.extend(spoofs);
        assert_eq!(
            path_of(describe(Dialect::Envoy, None, &parts("/orders/1?x=1", &h))),
            "GET /orders/1?x=1 api.example.com"
        );
        assert_eq!(
            path_of(describe(Dialect::Envoy, Some("/check"), &parts("/check/orders/1", &h))),
            "GET /orders/1 api.example.com"
        );
        let nginx = [("host", "api.example.com"), ("x-original-uri", "/orders/2"), ("x-original-method", "POST")];
        let mut n: Vec<(&str, &str)> = nginx.to_vec();
        n.extend(&spoofs[2..]);
        assert_eq!(path_of(describe(Dialect::Nginx, None, &parts("/auth", &n))), "POST /orders/2 api.example.com");
        let traefik = [
            ("host", "tokex:9191"),
            ("x-forwarded-uri", "/orders/3"),
            ("x-forwarded-method", "PUT"),
            ("x-forwarded-host", "api.example.com"),
        ];
        let mut t: Vec<(&str, &str)> = traefik.to_vec();
        t.extend(&spoofs[..2]);
        assert_eq!(path_of(describe(Dialect::Traefik, None, &parts("/", &t))), "PUT /orders/3 api.example.com");
    }

    #[test]
    fn a_check_that_does_not_say_is_refused() {
        let e =
            |d, p: Option<&str>, uri, h: &[(&str, &str)]| describe(d, p, &parts(uri, h)).err().unwrap_or("accepted");
        assert!(e(Dialect::Envoy, Some("/check"), "/orders", &[("host", "a")]).contains("path_prefix"));
        assert!(e(Dialect::Envoy, Some("/check"), "/checkorders", &[("host", "a")]).contains("path_prefix"));
        assert!(e(Dialect::Nginx, None, "/", &[("host", "a"), ("x-original-method", "GET")]).contains("X-Original-URI"));
        assert!(e(Dialect::Nginx, None, "/", &[("host", "a"), ("x-original-uri", "/")]).contains("X-Original-Method"));
        let twice = [("host", "a"), ("x-original-method", "GET"), ("x-original-uri", "/a"), ("x-original-uri", "/b")];
        assert!(e(Dialect::Nginx, None, "/", &twice).contains("repeated"));
        let no_host = [("x-forwarded-method", "GET"), ("x-forwarded-uri", "/")];
        assert!(e(Dialect::Traefik, None, "/", &no_host).contains("X-Forwarded-Host"));
        let bad_host = [("x-forwarded-method", "GET"), ("x-forwarded-uri", "/"), ("x-forwarded-host", "a@b")];
        assert!(e(Dialect::Traefik, None, "/", &bad_host).contains("X-Forwarded-Host"));
        for target in [
            "orders",
            "http://a/orders",
            "//orders",
            "/a//b",
            "/%6frders",
            "/a%2Db",
            "/a%7e",
            "/orders/x#/../../billing",
            "/orders%00/x",
            "/orders%0a",
        ] {
            let h = [("host", "a"), ("x-original-method", "GET"), ("x-original-uri", target)];
            assert!(describe(Dialect::Nginx, None, &parts("/", &h)).is_err(), "{target}");
        }
        // Reserved characters stay encoded: they are not normalized away.
        let h = [("host", "a"), ("x-original-method", "GET"), ("x-original-uri", "/a%20b%3F/caf%C3%A9;v=1")];
        assert!(describe(Dialect::Nginx, None, &parts("/", &h)).is_ok());
        let h = [("host", "a"), ("x-original-method", "CONNECT"), ("x-original-uri", "/")];
        assert!(describe(Dialect::Nginx, None, &parts("/", &h)).is_err());
    }
}
