//! The RFC 8935 push endpoint (`revocation.ssf.path`) on the main listener:
//! `POST` of one SET (`Content-Type: application/secevent+jwt`, at most
//! 64 KiB within 10 s), rate-limited before any verification; `202` once
//! the subjects it names are purged, `400` with `err` / `description`
//! otherwise. Every other request goes to the gateway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::ssf::{Receiver, SetError};
use super::{Purger, Selector};
use crate::config::{Bucket, RateConfig};
use crate::exchange::rate::RateLimit;
use crate::metrics::Metrics;
use crate::proxy::handler::Gateway;
use crate::proxy::server::Handler;
use crate::proxy::Body;

/// Largest SET read.
const MAX_SET_BYTES: usize = 64 * 1024;
/// Time allowed for the body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Push {
    receiver: Receiver,
    purger: Arc<Purger>,
    limit: RateLimit,
    metrics: Arc<Metrics>,
}

impl Push {
    pub fn new(receiver: Receiver, purger: Arc<Purger>, metrics: Arc<Metrics>) -> Self {
        // Per client address: a flood from elsewhere does not hold the
        // transmitter's SETs off.
        let rate = f64::from(receiver.max_per_second());
        let limit =
            RateLimit::new(RateConfig { route: None, per_client: Some(Bucket { per_second: rate, burst: rate }) });
        Push { receiver, purger, limit, metrics }
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let (result, label) = match self.receive(req, peer).await {
            Ok(resp) => (resp, "accepted"),
            Err((resp, label)) => (resp, label),
        };
        self.metrics.security_event(label);
        result
    }

    async fn receive(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, (Response<Body>, &'static str)> {
        if req.method() != Method::POST {
            let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "POST a SET");
            resp.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static("POST"));
            return Err((resp, "invalid_request"));
        }
        let media = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let media = media.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/secevent+jwt") {
            let why = "Content-Type must be application/secevent+jwt (RFC 8935 §2)";
            return Err((error(StatusCode::BAD_REQUEST, "invalid_request", why), "invalid_request"));
        }
        // Before any work: a flood costs a token bucket, not a JWKS fetch each.
        if self.limit.admit(peer.ip()).is_err() {
            let mut resp = error(StatusCode::TOO_MANY_REQUESTS, "invalid_request", "too many SETs: retry later");
            resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return Err((resp, "rate_limited"));
        }
        let body = match tokio::time::timeout(
            BODY_TIMEOUT,
            http_body_util::Limited::new(req.into_body(), MAX_SET_BYTES).collect(),
        )
        .await
        {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => {
                let why = "the body is larger than 64 KiB, or was cut off";
                return Err((error(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request", why), "invalid_request"));
            }
            Err(_) => {
                return Err((
                    error(StatusCode::REQUEST_TIMEOUT, "invalid_request", "the body took too long"),
                    "invalid_request",
                ))
            }
        };
        let (accepted, jti) = match self.receiver.receive(&body).await {
            Ok(a) => a,
            Err(SetError::Refused { err, description }) => {
                tracing::warn!(err, description, client = %peer.ip(), "security event token refused");
                return Err((error(StatusCode::BAD_REQUEST, err, &description), err));
            }
            Err(SetError::Unavailable(why)) => {
                tracing::warn!(error = %why, "security event token not verified: the transmitter's JWKS is unavailable");
                let mut resp = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "invalid_key",
                    "the transmitter's keys are not available yet",
                );
                resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("5"));
                return Err((resp, "unavailable"));
            }
        };
        if !accepted.subjects.is_empty() {
            // `Selector::Subject` never names a route: this cannot fail.
            let purged =
                self.purger.purge(&Selector::Subject(accepted.subjects.clone()), "ssf").await.unwrap_or_default();
            if !purged.complete() {
                // The store's entries, or the other replicas, may still hold
                // the subject's tokens: the transmitter is to send it again.
                self.receiver.forget(jti).await;
                tracing::warn!(
                    purged = purged.local,
                    "security event: purged here, but the shared store did not take it; asking for the SET again"
                );
                let why = "purged on this replica only: the shared store did not answer; send the SET again";
                let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, "invalid_request", why);
                resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("5"));
                return Err((resp, "unavailable"));
            }
            tracing::info!(
                events = accepted.events.join(" "),
                purged = purged.local,
                introspection = purged.introspection,
                shared = purged.shared,
                "security event: cached tokens of the subject purged"
            );
        } else {
            tracing::debug!(ignored = accepted.ignored, "security event accepted; no event tokex acts on");
        }
        let mut resp = Response::new(Body::Right(http_body_util::Full::new(Bytes::new())));
        *resp.status_mut() = StatusCode::ACCEPTED;
        Ok(resp)
    }
}

/// An RFC 8935 §2.3 error answer: `{"err": ..., "description": ...}`.
fn error(status: StatusCode, err: &str, description: &str) -> Response<Body> {
    let body = serde_json::json!({ "err": err, "description": description }).to_string();
    let mut resp = Response::new(Body::Right(http_body_util::Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The main listener with a push endpoint: its path answered here, the
/// rest by the gateway. (Without `revocation.ssf` the gateway is served
/// directly: nothing is added to the request path.)
pub struct MainListener {
    pub gateway: Arc<Gateway>,
    pub push: Arc<Push>,
}

impl Handler for MainListener {
    type Body = Body;

    fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        let push = req.uri().path() == self.push.receiver.path();
        async move {
            if push {
                self.push.handle(req, peer).await
            } else {
                self.gateway.handle(req, peer).await
            }
        }
    }
}
