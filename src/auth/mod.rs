//! The inbound check of the caller's credential: local JWT validation
//! against a JWKS, or RFC 7662 introspection, then the route's required
//! scopes. (The bearer token is extracted in `proxy::bearer`.)

pub mod claims;
pub mod dpop;
pub(crate) mod fetch;
pub mod inbound;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod scopes;
mod verified;

pub use dpop::{DpopInbound, DpopRefusal};
pub use inbound::{Checked, Inbound, InboundError, Invalid};

pub use crate::config::limits::ASYMMETRIC_ALGORITHMS;
