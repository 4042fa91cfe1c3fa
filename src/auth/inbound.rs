//! The inbound phase: the caller's token checked locally (JWT against the
//! issuer's JWKS) or at the authorization server (RFC 7662 introspection),
//! then the route's `require_scopes`. It runs before any exchange, so a
//! refused token never reaches the token endpoint.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::introspection::{IntrospectionPurge, Introspector};
use super::jwt::JwtValidator;
use super::scopes::RequiredScopes;
use crate::config::InboundConfig;
use crate::metrics::{Counters, Metrics};
use crate::readiness::Readiness;

/// Why a token was refused as invalid (`401 invalid_token`). The reason
/// goes to logs and metrics, never to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    TooLarge,
    Malformed,
    AlgNotAllowed,
    CritHeader,
    WrongTyp,
    UnknownKid,
    KeyMismatch,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim,
    /// A registered claim present with the wrong JSON type.
    ClaimType,
    Inactive,
}

impl Invalid {
    pub const ALL: [Invalid; 15] = [
        Invalid::TooLarge,
        Invalid::Malformed,
        Invalid::AlgNotAllowed,
        Invalid::CritHeader,
        Invalid::WrongTyp,
        Invalid::UnknownKid,
        Invalid::KeyMismatch,
        Invalid::BadSignature,
        Invalid::Expired,
        Invalid::NotYetValid,
        Invalid::WrongIssuer,
        Invalid::WrongAudience,
        Invalid::MissingClaim,
        Invalid::ClaimType,
        Invalid::Inactive,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Invalid::TooLarge => "too_large",
            Invalid::Malformed => "malformed",
            Invalid::AlgNotAllowed => "alg_not_allowed",
            Invalid::CritHeader => "crit_header",
            Invalid::WrongTyp => "wrong_typ",
            Invalid::UnknownKid => "unknown_kid",
            Invalid::KeyMismatch => "key_mismatch",
            Invalid::BadSignature => "bad_signature",
            Invalid::Expired => "expired",
            Invalid::NotYetValid => "not_yet_valid",
            Invalid::WrongIssuer => "wrong_issuer",
            Invalid::WrongAudience => "wrong_audience",
            Invalid::MissingClaim => "missing_claim",
            Invalid::ClaimType => "claim_type",
            Invalid::Inactive => "inactive",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum InboundError {
    #[error("invalid token ({})", .0.reason())]
    Invalid(Invalid),
    /// Carries the route's required scopes, space-joined, for the challenge.
    #[error("the token lacks a required scope ({0})")]
    InsufficientScope(Arc<str>),
    /// JWKS never fetched, or the introspection endpoint unreachable.
    #[error("inbound validation unavailable: {0}")]
    Unavailable(String),
    /// The introspection endpoint refused tokex or answered nonsense.
    #[error("introspection failed: {0}")]
    Introspection(String),
}

impl From<Invalid> for InboundError {
    fn from(i: Invalid) -> Self {
        InboundError::Invalid(i)
    }
}

impl InboundError {
    /// Reasons other than [`Invalid`]'s.
    const OTHER_REASONS: [&'static str; 3] = ["insufficient_scope", "unavailable", "introspection_failed"];

    /// Short, stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            InboundError::Invalid(i) => i.reason(),
            InboundError::InsufficientScope(_) => Self::OTHER_REASONS[0],
            InboundError::Unavailable(_) => Self::OTHER_REASONS[1],
            InboundError::Introspection(_) => Self::OTHER_REASONS[2],
        }
    }

    /// Every label [`InboundError::reason`] can return.
    pub fn all_reasons() -> Vec<&'static str> {
        Invalid::ALL.iter().map(|i| i.reason()).chain(Self::OTHER_REASONS).collect()
    }
}

/// What a passed check learned about the token.
#[derive(Debug, Default, Clone)]
pub struct Checked {
    /// The introspection answer's `sub` (a JWT's is in the token).
    pub sub: Option<Arc<str>>,
    /// `cnf.jkt`: the DPoP key the token is bound to (RFC 9449 §6).
    pub jkt: Option<Arc<str>>,
}

enum Check {
    Jwt(JwtValidator),
    Introspection(Introspector),
}

/// The configured inbound check, shared by every `auth: exchange` route.
pub struct Inbound {
    check: Check,
    rejections: Counters,
}

impl Inbound {
    /// Builds the check without I/O (so `tokex check` builds it too); for
    /// JWT, [`Inbound::start`] begins fetching the JWKS.
    /// `servers` are the authorization servers (for a discovered JWKS).
    pub fn new(
        cfg: &InboundConfig,
        metrics: &Metrics,
        servers: &std::collections::BTreeMap<String, Arc<crate::exchange::client::AsClient>>,
    ) -> Result<Self, String> {
        let check = match cfg {
            InboundConfig::Jwt(j) => Check::Jwt(JwtValidator::new(j, metrics, servers)?),
            InboundConfig::Introspection(i) => Check::Introspection(Introspector::new(i, metrics, servers)?),
        };
        Ok(Inbound { check, rejections: metrics.inbound_rejections(&InboundError::all_reasons()) })
    }

    /// Checks the caller's `token` (`token_hash`: its SHA-256) and the
    /// route's required scopes. With `binding`, what the token says of its
    /// DPoP key (`cnf.jkt`) is read too.
    pub async fn check(
        &self,
        token: &str,
        token_hash: &[u8; 32],
        required: &RequiredScopes,
        binding: bool,
    ) -> Result<Checked, InboundError> {
        let granted = match &self.check {
            Check::Jwt(v) => v.validate(token, token_hash).await.map(|g| {
                // Verified: its claims are the issuer's word.
                let jkt = binding.then(|| super::dpop::token_jkt(token)).flatten();
                (g, Checked { sub: None, jkt })
            }),
            Check::Introspection(i) => i.check(token, token_hash).await,
        };
        let result = granted.and_then(|(g, checked)| required.check(&g).map(|()| checked));
        if let Err(e) = &result {
            self.rejections.inc(e.reason());
        }
        result
    }

    /// Forgets cached introspection answers (none are kept for JWTs). How many.
    pub async fn purge(&self, target: IntrospectionPurge<'_>) -> u64 {
        match &self.check {
            Check::Introspection(i) => i.purge(target).await,
            Check::Jwt(_) => 0,
        }
    }

    /// Starts the background work: for JWT, the JWKS refresh, with a
    /// readiness gate that the first good fetch opens. The task stops on
    /// shutdown (or once this check is replaced by a reload).
    pub fn start(&self, readiness: &Arc<Readiness>, shutdown: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
        match &self.check {
            Check::Jwt(v) => {
                v.jwks().set_gate(readiness.gate());
                Some(v.jwks().spawn_refresh(shutdown))
            }
            Check::Introspection(_) => None,
        }
    }

    /// The check to run after a reload. An unchanged JWT configuration keeps
    /// the running one (its keys and refresh task). A changed one that reads
    /// the same JWKS starts with the keys already held, so requests never
    /// wait for a fetch (a hanging JWKS endpoint then costs nothing). One
    /// that reads another JWKS starts empty, and readiness waits for its
    /// first fetch (a gate the old one had not opened is taken over).
    /// Introspection answers carry over when the endpoint is the same.
    pub fn on_reload(
        old: Option<&Arc<Inbound>>,
        mut new: Option<Arc<Inbound>>,
        readiness: &Arc<Readiness>,
        shutdown: watch::Receiver<bool>,
    ) -> Option<Arc<Inbound>> {
        if let (Some(Check::Introspection(before)), Some(after)) =
            (old.map(|o| &o.check), new.as_mut().and_then(Arc::get_mut))
        {
            if let Check::Introspection(after) = &mut after.check {
                after.adopt_cache(before);
            }
        }
        let old_jwks = old.and_then(|o| o.jwks());
        if let (Some(old), Some(new)) = (old, &new) {
            if let (Check::Jwt(a), Check::Jwt(b)) = (&old.check, &new.check) {
                if a.config() == b.config() {
                    return Some(old.clone());
                }
            }
        }
        let pending = old_jwks.and_then(|j| j.take_gate());
        match new.as_ref().and_then(|n| n.jwks()) {
            Some(jwks) => {
                if let Some(old) = old_jwks.filter(|o| o.same_source(jwks)) {
                    jwks.adopt_keys(old);
                }
                match pending {
                    Some(gate) => jwks.set_gate(gate),
                    None if !jwks.is_loaded() => {
                        tracing::warn!(uri = %jwks.uri(), "inbound.jwt reads another JWKS: not ready until it is fetched");
                        jwks.set_gate(readiness.gate());
                    }
                    None => {}
                }
                drop(jwks.spawn_refresh(shutdown));
            }
            // Readiness no longer waits for a JWKS this configuration does not use.
            None => {
                if let Some(gate) = pending {
                    gate.open();
                }
            }
        }
        new
    }

    fn jwks(&self) -> Option<&Arc<super::jwks::Jwks>> {
        match &self.check {
            Check::Jwt(v) => Some(v.jwks()),
            Check::Introspection(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_unique() {
        let mut all = InboundError::all_reasons();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
        assert!(all.contains(&InboundError::InsufficientScope("a".into()).reason()));
    }
}
