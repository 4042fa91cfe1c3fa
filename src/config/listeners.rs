//! The listeners' settings: the proxy listener (`listen:`) and the check
//! listeners (`authz:`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct ListenConfig {
    pub address: SocketAddr,
    /// TLS on the listener (HTTP/1.1 and h2 by ALPN).
    pub tls: Option<ListenTls>,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    /// Open connections at most; beyond it new ones wait in the backlog.
    pub max_connections: usize,
    /// Connections without a request in flight this long are closed.
    pub idle_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
}

impl ListenConfig {
    /// Every setting at its default (for `listen:` without them, and the
    /// check listeners' limits when there is no `listen:`).
    pub fn with_defaults(address: SocketAddr) -> Self {
        ListenConfig {
            address,
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_connections: 20_000,
            idle_timeout: Duration::from_secs(60),
            http2_max_concurrent_streams: 256,
        }
    }
}

/// `authz:` the check listeners another proxy asks (ext_authz,
/// auth_request, ForwardAuth): same routes, no forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzConfig {
    /// The HTTP check listener (with `dialect`).
    pub address: Option<SocketAddr>,
    pub dialect: Dialect,
    /// Envoy's gRPC ext_authz (`envoy.service.auth.v3.Authorization/Check`).
    pub grpc_address: Option<SocketAddr>,
    /// Stripped from the check's path before matching (Envoy's
    /// `http_service.path_prefix`); `envoy` dialect only.
    pub path_prefix: Option<String>,
}

/// Where an HTTP check carries the original request's method, target and
/// host. Configured, never guessed: the headers of the other dialects are
/// the caller's own and are never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Envoy `http_service`: the check is the original request line and
    /// headers (`path_prefix` first).
    Envoy,
    /// nginx `auth_request`: `X-Original-Method`, `X-Original-URI`, `Host`.
    Nginx,
    /// Traefik ForwardAuth: `X-Forwarded-Method`, `-Uri`, `-Host`.
    Traefik,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Envoy => "envoy",
            Dialect::Nginx => "nginx",
            Dialect::Traefik => "traefik",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
    /// When set, callers must present a certificate issued by one of these CAs.
    pub client_ca_file: Option<PathBuf>,
}
