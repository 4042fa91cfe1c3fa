//! The audit event of a token request (`tokex::audit`), one per request
//! made to an authorization server. Its fields are a stable schema
//! (README "Audit event"); it never carries a token, only the subject
//! token's 8-hex fingerprint.

use std::time::Duration;

use super::{ExchangeError, Fingerprint};
use crate::telemetry::{clip, OrDash, MAX_LOGGED_CLAIM};

/// What an audit event names.
pub struct Audit<'a> {
    /// `token-exchange` or `client_credentials`.
    pub grant: &'static str,
    pub route: &'a str,
    pub server: &'a str,
    /// The subject token's `sub` and the actor token's, read unverified.
    pub sub: Option<&'a str>,
    pub actor: Option<&'a str>,
    pub audience: &'a [String],
    pub scope: &'a str,
    /// The subject token's fingerprint (exchanges only).
    pub token: Option<Fingerprint>,
    /// The `x-request-id` of the request that started it (none for a
    /// background refresh).
    pub request_id: Option<&'a str>,
}

impl Audit<'_> {
    /// Writes the event. `error` is the failure, if any; the AS's `error`
    /// and sanitised `error_description` go with it when it gave them.
    pub fn record(&self, outcome: &'static str, elapsed: Duration, error: Option<&ExchangeError>) {
        let refusal = error.and_then(ExchangeError::refusal);
        tracing::info!(
            target: "tokex::audit",
            grant = self.grant,
            route = self.route,
            server = self.server,
            sub = clip(self.sub.unwrap_or("-"), MAX_LOGGED_CLAIM).as_ref(),
            actor = clip(self.actor.unwrap_or("-"), MAX_LOGGED_CLAIM).as_ref(),
            audience = %self.audience.join(" "),
            scope = self.scope,
            token = %OrDash(self.token),
            request_id = self.request_id.unwrap_or("-"),
            outcome,
            latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            as_error = refusal.map(|r| r.error.as_str()),
            as_error_description = refusal.map(|r| r.description.as_str()).filter(|d| !d.is_empty()),
            "token request"
        );
    }
}
