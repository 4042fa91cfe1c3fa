//! The proxy: accept loop (`server`), the request phases (`handler`), the
//! upstream client (`forward`) and header rules (`headers`); the check
//! listeners another proxy asks (`authz`, `grpc_authz`).

pub mod authz;
pub mod bearer;
pub mod body_scan;
mod caller;
pub mod conn;
pub mod credentials;
pub mod forward;
pub mod grpc_authz;
pub mod handler;
pub mod headers;
pub mod ids;
pub mod metadata;
mod outbound;
pub mod pool;
pub mod reload;
pub mod routes;
pub mod server;
pub mod target;
pub mod tls;
pub mod token_scan;
pub mod tunnel;
pub mod workers;

/// Response body: a streamed upstream body or a small local answer.
pub type Body = http_body_util::Either<forward::UpstreamBody, http_body_util::Full<bytes::Bytes>>;

/// A request body as forwarded: the caller's, or none (a request sent again).
pub type RequestBody = http_body_util::Either<hyper::body::Incoming, http_body_util::Empty<bytes::Bytes>>;
