//! tokex: a token exchange gateway. A reverse proxy that trades the caller's
//! broad bearer token for a short-lived, down-scoped one (RFC 8693) per
//! route, caches it, and forwards the request with it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod demo;
pub mod dev_sts;
pub mod dpop;
pub mod error;
pub mod exchange;
pub mod metrics;
pub mod oneshot;
pub mod otel;
pub mod proxy;
pub mod readiness;
pub mod revocation;
pub mod secret;
pub mod telemetry;
