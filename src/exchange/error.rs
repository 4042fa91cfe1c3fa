//! What can go wrong getting a token, and the authorization server's own
//! words on a refusal (RFC 6749 §5.2), made safe for logs.

/// The AS's `error` and `error_description`, sanitised: the code is at most
/// 48 characters of `A-Z a-z 0-9 _`; the description at most
/// [`MAX_DESCRIPTION`] characters of RFC 6749's allowed set (others become
/// `?`), with anything that looks like a token (a run of 20 or more
/// base64url / base64 / hex characters) replaced by `[redacted]`, since an AS may
/// echo the token it refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refusal {
    pub error: String,
    /// Empty when the AS gave none.
    pub description: String,
}

/// Longest `error_description` kept, in characters.
pub const MAX_DESCRIPTION: usize = 200;

/// Shortest run of token characters taken for a token.
const TOKEN_RUN: usize = 20;

impl Refusal {
    pub fn new(error: &str, description: Option<&str>) -> Self {
        Refusal { error: sanitize_code(error), description: description.map(sanitize_description).unwrap_or_default() }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)?;
        if !self.description.is_empty() {
            write!(f, ": {}", self.description)?;
        }
        Ok(())
    }
}

/// Error codes are logged and labelled: keep them short and plain.
pub fn sanitize_code(code: &str) -> String {
    code.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(48).collect()
}

fn sanitize_description(text: &str) -> String {
    // RFC 6749 §5.2: %x20-21 / %x23-5B / %x5D-7E.
    let allowed = |c: char| matches!(c, ' '..='!' | '#'..='[' | ']'..='~');
    // base64url, base64 and hex characters, and `.` (a JWT is one run);
    // `/` splits a run, so a URL's path segments are kept.
    let token_char = |c: char| c.is_ascii_alphanumeric() || "-_.~+=".contains(c);
    let mut out = String::with_capacity(text.len().min(MAX_DESCRIPTION + 16));
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().count() >= TOKEN_RUN {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for (kept, c) in text.chars().enumerate() {
        if kept == MAX_DESCRIPTION {
            flush(&mut run, &mut out);
            out.push('…');
            return out;
        }
        if token_char(c) {
            run.push(c);
            continue;
        }
        flush(&mut run, &mut out);
        out.push(if allowed(c) { c } else { '?' });
    }
    flush(&mut run, &mut out);
    out
}

/// What an authorization server asked of the user, passed to the caller
/// in the `401` challenge: every value checked to fit a quoted-string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepUpHint {
    /// RFC 9470 `acr_values`.
    pub acr_values: Option<String>,
    /// RFC 9470 `max_age` (seconds).
    pub max_age: Option<u64>,
    /// Microsoft's claims challenge: the AS's `claims` JSON, base64.
    pub claims: Option<String>,
}

/// Longest `claims` JSON passed on, in bytes.
const MAX_CLAIMS_CHALLENGE: usize = 2048;

impl StepUpHint {
    /// From the members of an error answer; a value that is not of its
    /// form is left out.
    pub fn new(acr_values: Option<&str>, max_age: Option<&serde_json::Value>, claims: Option<&str>) -> Self {
        use base64::Engine;
        let acr_values = acr_values
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= 256
                    && v.bytes().all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
            })
            .map(str::to_owned);
        let max_age = match max_age {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) if s.len() <= 10 => s.parse().ok(),
            _ => None,
        };
        let claims = claims
            .filter(|c| c.len() <= MAX_CLAIMS_CHALLENGE)
            .filter(|c| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(c).is_ok())
            .map(|c| base64::engine::general_purpose::STANDARD.encode(c));
        StepUpHint { acr_values, max_age, claims }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    #[error("the authorization server refused the subject token ({0})")]
    InvalidGrant(Refusal),
    /// `invalid_grant` that names the actor token (its description says
    /// so, or the actor token has expired): the gateway's own credential,
    /// not the caller's.
    #[error("the authorization server refused the actor token ({0})")]
    ActorRejected(Refusal),
    #[error("the authorization server refused the scope or audience ({0})")]
    InsufficientScope(Refusal),
    /// The user must act at the authorization server (sign in again, a
    /// second factor, consent): `401 insufficient_user_authentication`
    /// with the server's hints (RFC 9470).
    #[error("the authorization server asks for user interaction ({0})")]
    StepUp(Refusal, StepUpHint),
    /// A `required` claim for `extra_params` is not in the caller's token.
    #[error("the caller's token has no usable claim {0:?} (needed by extra_params)")]
    MissingClaim(String),
    /// A sender-constrained token (`cnf`) presented without proof of possession.
    #[error("a DPoP-bound token presented as a bearer token")]
    BoundAsBearer,
    /// `enforce_may_act`: the subject token's `may_act` (RFC 8693 §4.4)
    /// does not name the route's actor.
    #[error("the subject token's may_act does not name the actor ({0})")]
    ActorNotNamed(&'static str),
    #[error("the authorization server refused tokex's client credentials ({0})")]
    ClientRejected(Refusal),
    /// An error code tokex does not map (SPEC §3.6: `502`).
    #[error("the authorization server answered HTTP {status} with error {refusal}")]
    OtherError { status: u16, refusal: Refusal },
    #[error("unusable answer from the authorization server: {0}")]
    BadAnswer(String),
    #[error("exchange set-up problem: {0}")]
    Config(String),
    #[error("authorization server unavailable: {0}")]
    Unavailable(String),
    /// The server asked (429/503 `Retry-After`) for a wait beyond the budget.
    #[error("the authorization server asked to retry after {retry_after}s")]
    Throttled { retry_after: u64 },
    /// `max_concurrent` requests were in flight at the server for the whole budget.
    #[error("too many requests in flight at the authorization server")]
    Busy,
    #[error("the authorization server's circuit breaker is open")]
    CircuitOpen { retry_after: u64 },
    /// `exchange.max_rate`: the route's bucket, or the client's, is empty.
    #[error("too many new exchanges on this route{}", if *per_client { " from this client" } else { "" })]
    RateLimited { retry_after: u64, per_client: bool },
}

impl ExchangeError {
    /// Outcome label for metrics, logs and audit events.
    pub fn reason(&self) -> &'static str {
        match self {
            ExchangeError::InvalidGrant(_) => "invalid_grant",
            ExchangeError::ActorRejected(_) => "actor_rejected",
            ExchangeError::InsufficientScope(_) => "insufficient_scope",
            ExchangeError::StepUp(..) => "step_up",
            ExchangeError::MissingClaim(_) => "missing_claim",
            ExchangeError::BoundAsBearer => "dpop_bound_as_bearer",
            ExchangeError::ActorNotNamed(_) => "may_act",
            ExchangeError::ClientRejected(_) => "client_rejected",
            ExchangeError::OtherError { .. } | ExchangeError::BadAnswer(_) => "bad_answer",
            ExchangeError::Config(_) => "config",
            ExchangeError::Unavailable(_) => "unavailable",
            ExchangeError::Throttled { .. } => "throttled",
            ExchangeError::Busy => "busy",
            ExchangeError::CircuitOpen { .. } => "circuit_open",
            ExchangeError::RateLimited { .. } => "rate_limited",
        }
    }

    /// The AS's own words, for a refusal that carried them.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            ExchangeError::InvalidGrant(r)
            | ExchangeError::ActorRejected(r)
            | ExchangeError::InsufficientScope(r)
            | ExchangeError::StepUp(r, _)
            | ExchangeError::ClientRejected(r)
            | ExchangeError::OtherError { refusal: r, .. } => Some(r),
            _ => None,
        }
    }

    /// Refused before any call to the authorization server.
    pub fn made_no_call(&self) -> bool {
        matches!(
            self,
            ExchangeError::Busy
                | ExchangeError::CircuitOpen { .. }
                | ExchangeError::RateLimited { .. }
                | ExchangeError::MissingClaim(_)
                | ExchangeError::BoundAsBearer
                | ExchangeError::ActorNotNamed(_)
        )
    }

    /// Seconds the caller is asked to wait (`Retry-After`), for errors that pass.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ExchangeError::Unavailable(_) | ExchangeError::Busy => Some(1),
            ExchangeError::Throttled { retry_after }
            | ExchangeError::CircuitOpen { retry_after }
            | ExchangeError::RateLimited { retry_after, .. } => Some(*retry_after),
            ExchangeError::InvalidGrant(_)
            | ExchangeError::ActorRejected(_)
            | ExchangeError::InsufficientScope(_)
            | ExchangeError::StepUp(..)
            | ExchangeError::MissingClaim(_)
            | ExchangeError::BoundAsBearer
            | ExchangeError::ActorNotNamed(_)
            | ExchangeError::ClientRejected(_)
            | ExchangeError::OtherError { .. }
            | ExchangeError::BadAnswer(_)
            | ExchangeError::Config(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_bounded_plain_and_token_free() {
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWhlcmUtbG9uZ2VyLXRoYW4tdHdlbnR5";
        let r = Refusal::new("invalid_grant\n", Some(&format!("token {jwt} expired\r\n\"x\"\\ é")));
        assert_eq!(r.error, "invalid_grant");
        assert_eq!(r.description, "token [redacted] expired???x?? ?");
        assert!(!r.to_string().contains("eyJ"));
        let long = "word ".repeat(100);
        let d = Refusal::new("x", Some(&long)).description;
        assert_eq!(d.chars().count(), MAX_DESCRIPTION + 1, "{d}");
        assert!(d.ends_with('…'));
        assert_eq!(Refusal::new("x", None).to_string(), "x");
        let url = "see https://as.example.com/oauth2/token";
        assert_eq!(Refusal::new("x", Some(url)).description, url, "short runs are kept");
    }
}
