//! DPoP settings (RFC 9449, SPEC §6): tokex's own key per authorization
//! server, and what callers' proofs must satisfy.

use std::path::PathBuf;
use std::time::Duration;

/// `authorization_servers.NAME.dpop`: ask this server for DPoP-bound tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopKeyConfig {
    /// PKCS#8 EC P-256 or Ed25519 key, re-read when it changes; none: a key
    /// made in memory at start (`algorithm`).
    pub key_file: Option<PathBuf>,
    /// ES256 or EdDSA: the generated key's type (a file's key decides its own).
    pub algorithm: jsonwebtoken::Algorithm,
}

/// `inbound.dpop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DpopMode {
    /// `Authorization: Bearer` only (a DPoP-bound token is still refused as Bearer).
    #[default]
    Off,
    /// Bearer or DPoP.
    Allow,
    /// DPoP only.
    Require,
}

/// `inbound.dpop` and `inbound.dpop_proof`: callers' proofs.
#[derive(Debug, Clone, PartialEq)]
pub struct DpopInboundConfig {
    pub mode: DpopMode,
    /// Asymmetric algorithms accepted in proofs.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// A proof's `iat` at most this old, and at most `leeway` ahead.
    pub max_age: Duration,
    pub leeway: Duration,
    /// `htu` is compared with `X-Forwarded-Proto` / `X-Forwarded-Host` when
    /// the request has them (behind a TLS-terminating load balancer).
    pub trust_forwarded: bool,
    /// When not empty, a proof's `htu` must name one of these origins
    /// (`scheme://host[:port]`, normalised) and the request's path; the
    /// request's own scheme and host are not used.
    pub origins: Vec<String>,
    /// Proofs remembered for replay detection at most; beyond, new ones are refused.
    pub replay_cache_entries: usize,
}

impl Default for DpopInboundConfig {
    fn default() -> Self {
        DpopInboundConfig {
            mode: DpopMode::Off,
            algorithms: vec![jsonwebtoken::Algorithm::ES256, jsonwebtoken::Algorithm::EdDSA],
            max_age: Duration::from_secs(60),
            leeway: Duration::from_secs(5),
            trust_forwarded: false,
            origins: Vec::new(),
            replay_cache_entries: 1_000_000,
        }
    }
}
