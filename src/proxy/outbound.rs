//! What goes to the backend besides the request: the exchanged token's
//! header, a DPoP-bound token's key, whether the backend refused the token,
//! and a request kept so that it can be sent again.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;

use super::headers;
use super::routes::Route;
use super::{Body, RequestBody};
use crate::exchange::cache::{Bound, Entry, EntryKind};

/// The header carrying the exchanged token to the backend.
pub(super) fn credential<'r>(route: &'r Route, entry: &Entry) -> Option<(&'r HeaderName, HeaderValue)> {
    match &entry.kind {
        EntryKind::Token(t) if route.forward_header == http::header::AUTHORIZATION => {
            Some((&route.forward_header, t.authorization.clone()))
        }
        EntryKind::Token(t) => Some((&route.forward_header, t.raw.clone())),
        EntryKind::Rejected => None,
    }
}

/// A DPoP-bound token's key and `ath`.
pub(super) fn bound(entry: &Entry) -> Option<&Bound> {
    match &entry.kind {
        EntryKind::Token(t) => t.bound.as_deref(),
        EntryKind::Rejected => None,
    }
}

/// The backend refused the exchanged token (`401` with `error="invalid_token"`).
pub(super) fn refused(resp: &Response<Body>) -> bool {
    resp.status() == http::StatusCode::UNAUTHORIZED && headers::says_invalid_token(resp.headers())
}

/// A request that can be sent again as it was: an idempotent method
/// (RFC 9110 §9.2.2), no body, no upgrade.
#[derive(Clone)]
pub(super) struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    pub(super) headers: HeaderMap,
}

impl Replay {
    pub(super) fn of(req: &Request<Incoming>) -> Option<Self> {
        let idempotent = matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
        );
        let bodiless = hyper::body::Body::is_end_stream(req.body());
        let upgrade = req.headers().contains_key(http::header::UPGRADE);
        (idempotent && bodiless && !upgrade).then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    pub(super) fn request(self) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::Right(http_body_util::Empty::new()));
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}
