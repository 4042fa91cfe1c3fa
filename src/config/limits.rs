//! Lists and bounds that validation enforces and the runtime shares, defined
//! once here so that `config` depends on no other module.

use http::header::{CONNECTION, COOKIE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::HeaderName;

/// The JWS algorithms tokex accepts on inbound tokens and signs client
/// assertions with: asymmetric only (never `none`, never HMAC).
pub const ASYMMETRIC_ALGORITHMS: &[jsonwebtoken::Algorithm] = &[
    jsonwebtoken::Algorithm::RS256,
    jsonwebtoken::Algorithm::RS384,
    jsonwebtoken::Algorithm::RS512,
    jsonwebtoken::Algorithm::PS256,
    jsonwebtoken::Algorithm::PS384,
    jsonwebtoken::Algorithm::PS512,
    jsonwebtoken::Algorithm::ES256,
    jsonwebtoken::Algorithm::ES384,
    jsonwebtoken::Algorithm::EdDSA,
];

/// Algorithms tokex signs client assertions with (`private_key_jwt`).
pub const ASSERTION_ALGORITHMS: &[jsonwebtoken::Algorithm] = ASYMMETRIC_ALGORITHMS;

/// Largest bearer token accepted.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// `forward.remove_headers` when a route does not say.
pub const DEFAULT_REMOVED: [HeaderName; 2] = [COOKIE, HeaderName::from_static("forwarded")];

/// Headers tokex writes on every forwarded request (or on a DPoP-bound
/// one): a credential header that is one of them would be overwritten, or
/// would break the request (`host`, `content-length`).
pub const SET_BY_TOKEX: [HeaderName; 8] = [
    http::header::HOST,
    http::header::CONTENT_LENGTH,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("dpop"),
];

pub(crate) const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub(crate) const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded, never a route's
/// `forward.header`.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    // Per header of every message: most names are ruled out by length.
    if !matches!(name.as_str().len(), 2 | 7 | 10 | 16..=19) {
        return false;
    }
    [
        &CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &http::header::PROXY_AUTHENTICATE,
        &http::header::PROXY_AUTHORIZATION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
    ]
    .contains(&name)
}
