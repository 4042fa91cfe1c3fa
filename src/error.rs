//! The one error type of the request path and its HTTP answer (RFC 6750
//! `WWW-Authenticate` where it applies). The mapping is an exhaustive match:
//! a new variant cannot be added without deciding its status.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::auth::{DpopRefusal, InboundError};
use crate::dpop::ProofError;
use crate::exchange::ExchangeError;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route matches the request")]
    NoRoute,
    #[error("request path has dot segments")]
    BadPath,
    /// The request target or its `Host` (RFC 9112 §3.2).
    #[error("bad request target: {0}")]
    BadTarget(&'static str),
    #[error("no bearer token presented")]
    MissingToken,
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    #[error("inbound check failed: {0}")]
    Inbound(#[from] InboundError),
    /// A caller's DPoP proof or the token's binding (RFC 9449).
    #[error("{0}")]
    Dpop(#[from] DpopRefusal),
    #[error("token exchange failed: {0}")]
    Exchange(#[from] ExchangeError),
    /// The backend did not answer: what failed (`connect`, `tls`, `reset`,
    /// `protocol`) and the cause.
    #[error("upstream unavailable ({0}): {1}")]
    UpstreamUnavailable(&'static str, String),
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    /// Every upstream slot (file descriptors) is taken, for the whole timeout.
    #[error("too many requests at upstreams")]
    AtCapacity,
    /// The body is longer than the route's `max_body_bytes` (declared or sent).
    #[error("request body too large")]
    BodyTooLarge,
}

const REALM: &str = "Bearer realm=\"tokex\"";

impl GatewayError {
    /// Short, stable reason for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "no_route",
            GatewayError::BadPath => "bad_path",
            GatewayError::BadTarget(_) => "bad_target",
            GatewayError::MissingToken => "missing_token",
            GatewayError::InvalidRequest(_) => "invalid_request",
            GatewayError::Inbound(e) => e.reason(),
            GatewayError::Dpop(e) => e.reason(),
            GatewayError::Exchange(e) => e.reason(),
            GatewayError::UpstreamUnavailable(..) => "upstream_unavailable",
            GatewayError::UpstreamTimeout => "upstream_timeout",
            GatewayError::AtCapacity => "at_capacity",
            GatewayError::BodyTooLarge => "body_too_large",
        }
    }

    /// `tokex_upstream_errors_total{kind}`: how the backend failed, for
    /// errors that are the backend's (or the way to it).
    pub fn upstream_kind(&self) -> Option<&'static str> {
        match self {
            GatewayError::UpstreamUnavailable(kind, _) => Some(kind),
            GatewayError::UpstreamTimeout => Some("timeout"),
            GatewayError::AtCapacity => Some("at_capacity"),
            _ => None,
        }
    }

    /// The answer sent to the caller. `scope` is the route's exchange scope,
    /// named in `insufficient_scope` challenges.
    pub fn to_response(&self, scope: &str) -> Response<Full<Bytes>> {
        use ExchangeError as X;
        use InboundError as I;
        let (status, code, challenge, retry_after): (StatusCode, &str, Option<String>, Option<u64>) = match self {
            GatewayError::NoRoute => (StatusCode::NOT_FOUND, "no_route", None, None),
            GatewayError::BadPath | GatewayError::BadTarget(_) => {
                (StatusCode::BAD_REQUEST, "invalid_request", None, None)
            }
            GatewayError::MissingToken => (StatusCode::UNAUTHORIZED, "unauthorized", Some(REALM.to_owned()), None),
            GatewayError::InvalidRequest(_) => {
                (StatusCode::BAD_REQUEST, "invalid_request", Some(format!("{REALM}, error=\"invalid_request\"")), None)
            }
            GatewayError::Inbound(e) => match e {
                I::Invalid(_) => {
                    (StatusCode::UNAUTHORIZED, "invalid_token", Some(format!("{REALM}, error=\"invalid_token\"")), None)
                }
                I::InsufficientScope(required) => (
                    StatusCode::FORBIDDEN,
                    "insufficient_scope",
                    Some(format!("{REALM}, error=\"insufficient_scope\", scope=\"{}\"", scope_attr(required))),
                    None,
                ),
                I::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", None, Some(1)),
                I::Introspection(_) => (StatusCode::BAD_GATEWAY, "bad_gateway", None, None),
            },
            // The handler turns these challenges into DPoP ones (`auth::dpop`).
            GatewayError::Dpop(DpopRefusal::Proof(ProofError::ReplayFull)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", None, Some(1))
            }
            GatewayError::Dpop(DpopRefusal::Proof(_)) => (
                StatusCode::UNAUTHORIZED,
                "invalid_dpop_proof",
                Some(format!("{REALM}, error=\"invalid_dpop_proof\"")),
                None,
            ),
            GatewayError::Dpop(_) => {
                (StatusCode::UNAUTHORIZED, "invalid_token", Some(format!("{REALM}, error=\"invalid_token\"")), None)
            }
            GatewayError::Exchange(e) => match e {
                X::InvalidGrant(_) | X::MissingClaim(_) | X::BoundAsBearer => {
                    (StatusCode::UNAUTHORIZED, "invalid_token", Some(format!("{REALM}, error=\"invalid_token\"")), None)
                }
                X::StepUp(_, hint) => {
                    (StatusCode::UNAUTHORIZED, "insufficient_user_authentication", Some(step_up(hint)), None)
                }
                X::ActorNotNamed(_) => (StatusCode::FORBIDDEN, "access_denied", None, None),
                X::InsufficientScope(_) => (
                    StatusCode::FORBIDDEN,
                    "insufficient_scope",
                    Some(format!("{REALM}, error=\"insufficient_scope\", scope=\"{}\"", scope_attr(scope))),
                    None,
                ),
                X::ClientRejected(_) | X::ActorRejected(_) | X::OtherError { .. } | X::BadAnswer(_) | X::Config(_) => {
                    (StatusCode::BAD_GATEWAY, "bad_gateway", None, None)
                }
                X::Unavailable(_) | X::Throttled { .. } | X::Busy | X::CircuitOpen { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", None, e.retry_after())
                }
                X::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", None, e.retry_after()),
            },
            GatewayError::UpstreamUnavailable(..) => (StatusCode::BAD_GATEWAY, "upstream_unavailable", None, None),
            GatewayError::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", None, None),
            GatewayError::AtCapacity => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", None, Some(1)),
            GatewayError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", None, None),
        };
        let body = format!("{{\"error\":\"{code}\",\"error_description\":\"{}\"}}", self.public_description());
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(c) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            h.insert(WWW_AUTHENTICATE, c);
        }
        if let Some(secs) = retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }

    /// What the caller is told: fixed text, never an upstream's or the AS's
    /// words (so it needs no JSON escaping).
    fn public_description(&self) -> &'static str {
        use ExchangeError as X;
        use InboundError as I;
        match self {
            GatewayError::NoRoute => "no route matches this request",
            GatewayError::BadPath => "paths with '.' or '..' segments, an encoded '/' or a backslash are refused",
            GatewayError::BadTarget(why) => why,
            GatewayError::MissingToken => "a bearer token is required",
            GatewayError::InvalidRequest(why) => why,
            GatewayError::Inbound(e) => match e {
                I::Invalid(_) => "the token was rejected",
                I::InsufficientScope(_) => "the token does not allow this request",
                I::Unavailable(_) => "the token cannot be checked right now",
                I::Introspection(_) => "the gateway could not check the token",
            },
            GatewayError::Dpop(e) => match e {
                DpopRefusal::Proof(ProofError::ReplayFull) => "too many DPoP proofs to check right now",
                DpopRefusal::Proof(_) => "the DPoP proof was rejected",
                DpopRefusal::NotBound => "the token is not bound to the DPoP proof's key",
                DpopRefusal::BoundAsBearer => "a DPoP-bound token must be presented with the DPoP scheme and a proof",
                DpopRefusal::Required => "this gateway requires DPoP-bound tokens and a DPoP proof",
            },
            GatewayError::Exchange(e) => match e {
                X::InvalidGrant(_) | X::MissingClaim(_) => "the token was rejected",
                X::BoundAsBearer => "a DPoP-bound token must be presented with the DPoP scheme and a proof",
                X::StepUp(..) => STEP_UP,
                X::ActorNotNamed(_) => "the token's may_act does not allow this gateway's actor to act for its subject",
                X::InsufficientScope(_) => "the token does not allow this request",
                X::ClientRejected(_) | X::ActorRejected(_) | X::OtherError { .. } | X::BadAnswer(_) | X::Config(_) => {
                    "the gateway could not obtain a token"
                }
                X::Unavailable(_) | X::Throttled { .. } | X::CircuitOpen { .. } => {
                    "the authorization server is unavailable"
                }
                X::Busy => "the authorization server is busy",
                X::RateLimited { .. } => "too many new tokens requested; retry later",
            },
            GatewayError::UpstreamUnavailable(..) => "the upstream is unavailable",
            GatewayError::UpstreamTimeout => "the upstream did not answer in time",
            GatewayError::AtCapacity => "the gateway is at capacity",
            GatewayError::BodyTooLarge => "the request body is larger than this route allows",
        }
    }
}

/// The step-up description, in the body and the challenge.
const STEP_UP: &str = "the authorization server requires the user to sign in again or approve (step-up)";

/// RFC 9470 §3: `insufficient_user_authentication` with the authorization
/// server's `acr_values` and `max_age`, and Microsoft's claims challenge
/// (`claims`, base64) when it sent one. Each was checked to fit a
/// quoted-string when it was read.
fn step_up(hint: &crate::exchange::StepUpHint) -> String {
    let mut c = format!("{REALM}, error=\"insufficient_user_authentication\", error_description=\"{STEP_UP}\"");
    if let Some(acr) = &hint.acr_values {
        c.push_str(&format!(", acr_values=\"{acr}\""));
    }
    if let Some(age) = hint.max_age {
        c.push_str(&format!(", max_age={age}"));
    }
    if let Some(claims) = &hint.claims {
        c.push_str(&format!(", claims=\"{claims}\""));
    }
    c
}

/// Scope tokens are config-validated (no spaces); drop anything that could
/// break the quoted-string of the challenge anyway.
fn scope_attr(s: &str) -> String {
    s.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect()
}
