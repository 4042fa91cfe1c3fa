//! An authorization server's answer, recorded (metrics, audit event, error
//! log) and turned into a cache entry with its lifetime.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

use super::audit::Audit;
use super::cache::{CachedToken, Entry, EntryKind};
use super::client::Issued;
use super::index::Meta;
use super::{unverified, ExchangeError, Exchanger, Refusal};

impl Exchanger {
    /// Records an AS answer (metrics, audit event, error log) and turns it
    /// into a cache entry. `invalid_grant` becomes a short negative entry;
    /// other errors are not cached.
    pub(super) fn finish(
        &self,
        audit: Audit<'_>,
        started: Instant,
        result: Result<Issued, ExchangeError>,
        (default_ttl, max_ttl): (Duration, Duration),
        subject_exp: Option<f64>,
        meta: impl FnOnce(Option<&str>) -> Meta,
    ) -> Result<Arc<Entry>, ExchangeError> {
        let elapsed = started.elapsed();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.reason(),
        };
        self.metrics.exchange(audit.server, outcome, elapsed);
        // A refusal that made no call is in the metrics and the access line,
        // not in the audit trail of token requests.
        if !result.as_ref().is_err_and(ExchangeError::made_no_call) {
            audit.record(outcome, elapsed, result.as_ref().err());
        }
        match result {
            Ok(issued) => {
                let meta = meta(Some(issued.access_token.expose()));
                Ok(self.entry_for(issued, default_ttl, max_ttl, subject_exp, meta))
            }
            Err(ExchangeError::InvalidGrant(_)) => {
                Ok(Entry::with_meta(EntryKind::Rejected, self.settings.negative_ttl, Some(meta(None))))
            }
            Err(e) => {
                match &e {
                    ExchangeError::ActorRejected(_) => {
                        tracing::error!(route = audit.route, server = audit.server, error = %e, "token request failed: the authorization server refused the actor token (tokex's own credential)")
                    }
                    ExchangeError::ClientRejected(_)
                    | ExchangeError::OtherError { .. }
                    | ExchangeError::BadAnswer(_)
                    | ExchangeError::Config(_) => {
                        tracing::error!(route = audit.route, server = audit.server, error = %e, "token request failed: gateway misconfigured or AS misbehaving")
                    }
                    // Refused without a call: the breaker's and the bound's own
                    // transitions are what is worth a warning, not each refusal.
                    e if e.made_no_call() => {
                        tracing::debug!(route = audit.route, server = audit.server, error = %e, "token request refused")
                    }
                    // (the refusals listed here for exhaustiveness are taken above)
                    ExchangeError::Unavailable(_)
                    | ExchangeError::Throttled { .. }
                    | ExchangeError::Busy
                    | ExchangeError::CircuitOpen { .. }
                    | ExchangeError::RateLimited { .. } => {
                        tracing::warn!(route = audit.route, server = audit.server, error = %e, "token request failed")
                    }
                    ExchangeError::InvalidGrant(_)
                    | ExchangeError::InsufficientScope(_)
                    | ExchangeError::StepUp(..)
                    | ExchangeError::MissingClaim(_)
                    | ExchangeError::BoundAsBearer
                    | ExchangeError::ActorNotNamed(_) => {}
                }
                Err(e)
            }
        }
    }

    /// Lifetime = min(expires_in or default_ttl, max_ttl, subject exp) − skew.
    fn entry_for(
        &self,
        issued: Issued,
        default_ttl: Duration,
        max_ttl: Duration,
        subject_exp: Option<f64>,
        meta: Meta,
    ) -> Arc<Entry> {
        let mut ttl = issued.expires_in.unwrap_or(default_ttl).min(max_ttl);
        if let Some(exp) = subject_exp {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            ttl = ttl.min(Duration::from_secs_f64((exp - now).clamp(0.0, 1e9)));
        }
        let ttl = ttl.saturating_sub(self.settings.expiry_skew);
        // `parse_answer` checked the token is a valid header value.
        let token = CachedToken::new(issued.access_token.expose(), issued.bound).unwrap_or_else(|| {
            let empty = HeaderValue::from_static("");
            CachedToken { authorization: empty.clone(), raw: empty, bound: None }
        });
        Entry::with_meta(EntryKind::Token(token), ttl, Some(meta))
    }
}

/// Whether an `invalid_grant` answer to a delegation is about the actor
/// token: the AS's description names it, or the actor token (a JWT) has
/// expired. RFC 8693 gives no field to say which token was refused.
pub(super) fn blames_actor(r: &Refusal, actor: Option<&unverified::PeekedClaims>) -> bool {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    r.description.to_ascii_lowercase().contains("actor") || actor.and_then(|c| c.exp).is_some_and(|exp| exp <= now)
}
