//! The caller's credential: bearer extraction (RFC 6750), the inbound check
//! (local JWT validation against a JWKS, or RFC 7662 introspection, then the
//! route's required scopes), and an unverified look at JWT claims (only to
//! bound cache lifetime and label audit events).

pub mod bearer;
mod fetch;
pub mod inbound;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod scopes;
pub mod unverified;

pub use inbound::{Inbound, InboundError, Invalid};
