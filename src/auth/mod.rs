//! The caller's credential: bearer extraction (RFC 6750), the inbound check
//! (local JWT validation against a JWKS, or RFC 7662 introspection, then the
//! route's required scopes), and an unverified look at JWT claims (only to
//! bound cache lifetime and label audit events).

pub mod bearer;
pub mod claims;
mod fetch;
pub mod inbound;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod scopes;
pub mod unverified;

pub use inbound::{Inbound, InboundError, Invalid};

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
