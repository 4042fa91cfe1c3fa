//! The upstream side: request rewriting, the request-body limit, streaming
//! both ways, and upgrades, over the route's pooled client (`pool.rs`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use url::Url;

use super::body_scan::{is_form, Guarded, ScanFor};
use super::headers;
use super::pool::{HostPool, Lease, SendError, UpstreamClient};
use super::target::Authority as Target;
use super::{Body, RequestBody};
use crate::dpop::Nonce;
use crate::error::GatewayError;
use crate::exchange::cache::Bound;
use crate::telemetry::error_chain;

/// Where a route sends requests: scheme, authority and an optional base
/// path, and the pool of connections that reaches it.
#[derive(Clone)]
pub struct Upstream {
    authority: Authority,
    /// Prepended to the request path; empty or `/x` (no trailing slash).
    base: String,
    /// The client of the route's TLS setting (kept across a reload when unchanged).
    pub client: Arc<UpstreamClient>,
    pool: Arc<HostPool>,
    /// `http` or `https`: the scheme of DPoP proofs' `htu`.
    scheme: &'static str,
    /// `authority` as a `Host` value (requests with a DPoP-bound token).
    host: HeaderValue,
    /// Its latest `DPoP-Nonce` (RFC 9449 §9).
    nonce: Arc<Nonce>,
}

impl Upstream {
    pub fn new(url: &Url, client: Arc<UpstreamClient>) -> Result<Self, String> {
        let scheme = if url.scheme() == "https" { Scheme::HTTPS } else { Scheme::HTTP };
        let host = url.host_str().ok_or("upstream URL has no host")?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let authority = Authority::try_from(authority.as_str()).map_err(|e| format!("upstream {url}: {e}"))?;
        let pool = client.host(&scheme, &authority)?;
        let base = url.path().trim_end_matches('/').to_owned();
        let scheme_name = if scheme == Scheme::HTTPS { "https" } else { "http" };
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| format!("upstream {url}: {e}"))?;
        let nonce = Arc::new(Nonce::default());
        Ok(Upstream { authority, base, client, pool, scheme: scheme_name, host, nonce })
    }

    /// `host[:port]` of the backend.
    pub fn authority(&self) -> &str {
        self.authority.as_str()
    }

    /// The request target at the backend, in origin form (the pool makes it
    /// absolute for HTTP/2).
    fn uri(&self, pq: Option<&PathAndQuery>) -> Result<Uri, GatewayError> {
        let invalid = |_| GatewayError::InvalidRequest("request target cannot be forwarded");
        let path_and_query = match (pq, self.base.is_empty()) {
            (Some(pq), true) => pq.clone(),
            (None, true) => PathAndQuery::from_static("/"),
            (pq, false) => {
                PathAndQuery::try_from(format!("{}{}", self.base, pq.map_or("/", |p| p.as_str()))).map_err(invalid)?
            }
        };
        Ok(Uri::from(path_and_query))
    }
}

/// On an answer to a request with a DPoP proof: the backend gave a new
/// `DPoP-Nonce` (kept for the next proofs; the header is not passed on).
#[derive(Clone, Copy, Debug)]
pub struct FreshNonce;

/// How a request is rewritten for the backend.
pub struct Rewrite<'a> {
    /// The checked authority: `Host` and `X-Forwarded-Host` at the backend.
    pub authority: Option<&'a Target>,
    /// The header to add (the exchanged token).
    pub credential: Option<(&'a HeaderName, HeaderValue)>,
    /// A DPoP-bound token: a proof is signed for the request as the backend sees it.
    pub dpop: Option<&'a Bound>,
    /// Inbound headers removed besides `Authorization` (and from trailers too).
    pub remove: &'a Arc<[HeaderName]>,
    /// Exchange routes: the caller's token, which the body must not carry.
    pub caller_token: Option<&'a str>,
    /// Longer request bodies are cut off and answered `413`.
    pub max_body: Option<u64>,
    /// `x-request-id` for the backend.
    pub request_id: &'a HeaderValue,
    /// `traceparent` for the backend, replacing the caller's (tracing on).
    pub traceparent: Option<HeaderValue>,
}

#[derive(Clone)]
pub struct Forwarder {
    /// `X-Forwarded-Proto`: the listener's scheme.
    proto: &'static str,
    /// An upgraded connection with no byte either way this long is closed.
    tunnel_idle: Duration,
    /// Requests at upstreams at once (each may hold a connection, hence a
    /// file descriptor), when bounded.
    slots: Option<Arc<Semaphore>>,
}

/// An upstream's answer body; it holds the request's upstream slot until it
/// is done, and gives the connection back to its pool once it has ended.
pub struct UpstreamBody {
    body: Incoming,
    lease: Option<Lease>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl UpstreamBody {
    /// The body has ended: its connection may take the next request.
    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(None) => self.release(),
            std::task::Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release(),
            // A failed body leaves its connection unusable: dropped with the lease.
            std::task::Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // An answer without a body (or whose end was not polled) is done too.
        if http_body::Body::is_end_stream(&self.body) {
            self.release();
        }
    }
}

impl Forwarder {
    /// `upstream_slots`: how many requests may be at upstreams at once
    /// (`None`: no bound).
    pub fn new(proto: &'static str, tunnel_idle: Duration, upstream_slots: Option<usize>) -> Self {
        let slots = upstream_slots.map(|n| Arc::new(Semaphore::new(n.clamp(1, Semaphore::MAX_PERMITS))));
        Forwarder { proto, tunnel_idle, slots }
    }

    /// Rewrites `req` for the upstream as `rewrite` says and sends it: the
    /// inbound `Authorization` and `rewrite.remove` are removed, then the
    /// credential is added.
    pub async fn forward(
        &self,
        upstream: &Upstream,
        mut req: Request<RequestBody>,
        peer: SocketAddr,
        rewrite: Rewrite<'_>,
        timeout: Duration,
    ) -> Result<Response<Body>, GatewayError> {
        let upgrade = match req.version() {
            Version::HTTP_11 => headers::upgrade_request(req.headers()),
            _ => None,
        };
        let upgrading = upgrade.is_some();
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
        *req.uri_mut() = upstream.uri(req.uri().path_and_query())?;
        *req.version_mut() = Version::HTTP_11;
        let h = req.headers_mut();
        headers::strip_hop_by_hop(h, upgrade);
        h.remove(http::header::AUTHORIZATION);
        for name in rewrite.remove.iter() {
            h.remove(name);
        }
        // The caller's own proof never reaches the backend.
        h.remove(crate::dpop::HEADER);
        if let Some((name, value)) = rewrite.credential {
            h.insert(name.clone(), value);
        }
        h.insert(super::ids::X_REQUEST_ID, rewrite.request_id.clone());
        if let Some(tp) = rewrite.traceparent {
            h.insert(crate::telemetry::TRACEPARENT, tp);
        }
        let host = rewrite.authority.map(|a| a.value().clone());
        match &host {
            // Usually the `Host` received, already in place.
            Some(host) if h.get(HOST) == Some(host) => {}
            Some(host) => {
                h.insert(HOST, host.clone());
            }
            None => {
                h.remove(HOST);
            }
        }
        headers::set_forwarded(h, peer.ip(), self.proto, host);
        if let Some(bound) = rewrite.dpop {
            sign(&mut req, upstream, bound)?;
        }
        let h = req.headers();

        let rewrite_dpop = rewrite.dpop.is_some();
        let leaked = rewrite.caller_token.map(|_| Arc::new(AtomicBool::new(false)));
        let scan =
            rewrite.caller_token.zip(leaked.clone()).map(|(token, found)| ScanFor { token, form: is_form(h), found });
        // A flag only for a body still to come (a GET's has ended: nothing to count).
        let open_body = !http_body::Body::is_end_stream(req.body());
        let too_large = rewrite.max_body.filter(|_| open_body).map(|max| (max, Arc::new(AtomicBool::new(false))));
        let limit = too_large.as_ref().map(|(max, flag)| (*max, flag.clone()));
        let req = req.map(|body| Guarded::new(body, rewrite.remove.clone(), scan, limit));
        // A slot at the upstreams, then the answer's head, within `timeout`.
        let deadline = tokio::time::Instant::now() + timeout;
        let slot = match &self.slots {
            None => None,
            Some(slots) => match tokio::time::timeout_at(deadline, slots.clone().acquire_owned()).await {
                Ok(Ok(slot)) => Some(slot),
                Ok(Err(_)) | Err(_) => return Err(GatewayError::AtCapacity),
            },
        };
        let (mut resp, lease) = match tokio::time::timeout_at(deadline, upstream.pool.send(req, upgrading)).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) if leaked.is_some_and(|l| l.load(Ordering::Acquire)) => {
                return Err(GatewayError::InvalidRequest("the bearer token is also in the request body"))
            }
            Ok(Err(_)) if too_large.is_some_and(|(_, l)| l.load(Ordering::Acquire)) => {
                return Err(GatewayError::BodyTooLarge)
            }
            Ok(Err(e)) => return Err(GatewayError::UpstreamUnavailable(failure_kind(&e), error_chain(&e))),
            Err(_) => return Err(GatewayError::UpstreamTimeout),
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                let idle = self.tunnel_idle;
                tokio::spawn(async move {
                    // The tunnel holds the upstream connection, and its slot.
                    let _slot = slot;
                    match tokio::try_join!(client_upgrade, upstream_upgrade) {
                        Ok((down, up)) => super::tunnel::relay(TokioIo::new(down), TokioIo::new(up), idle).await,
                        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                    }
                });
                return Ok(resp.map(|body| Body::Left(UpstreamBody { body, lease: None, _slot: None })));
            }
            return Err(GatewayError::UpstreamUnavailable(
                "protocol",
                "upstream switched protocols without an upgrade request".into(),
            ));
        }
        headers::strip_hop_by_hop(resp.headers_mut(), None);
        // A backend's nonce is for tokex's proofs, never the caller's.
        if rewrite_dpop && upstream.nonce.remember(resp.headers()) {
            resp.extensions_mut().insert(FreshNonce);
        }
        resp.headers_mut().remove(crate::dpop::NONCE_HEADER);
        Ok(resp.map(|body| Body::Left(UpstreamBody { body, lease, _slot: slot })))
    }
}

/// Adds a DPoP proof for a DPoP-bound token. The request then names the
/// upstream as its `Host` (the caller's stays in `X-Forwarded-Host`), and
/// `htu` is the upstream URL: the URI the backend sees over HTTP/1.1 and
/// HTTP/2 alike, and never a host the caller chose. With the backend's
/// latest nonce.
fn sign(req: &mut Request<RequestBody>, upstream: &Upstream, bound: &Bound) -> Result<(), GatewayError> {
    let authority = upstream.authority.as_str();
    let htu = format!("{}://{authority}{}", upstream.scheme, req.uri().path());
    let nonce = upstream.nonce.get();
    let proof = bound.key.proof(req.method().as_str(), &htu, Some(&bound.ath), nonce.as_deref());
    let failed = || crate::exchange::ExchangeError::Config("could not sign a DPoP proof for the backend".into());
    let proof = proof.ok().and_then(|p| HeaderValue::try_from(p).ok()).ok_or_else(failed)?;
    req.headers_mut().insert(HOST, upstream.host.clone());
    req.headers_mut().insert(crate::dpop::HEADER, proof);
    Ok(())
}

/// What went wrong with a request the backend did not answer: `connect`
/// (TCP), `tls` (the handshake or the backend's certificate), `reset` (the
/// connection failed mid-request).
fn failure_kind(e: &SendError) -> &'static str {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if is_tls(s) {
            return "tls";
        }
        source = s.source();
    }
    match e {
        SendError::Connect(_) => "connect",
        SendError::Send(_) => "reset",
    }
}

/// A rustls error, or an `io::Error` wrapping one (hyper-rustls wraps
/// tokio-rustls's `io::Error` in another, and `source()` skips both).
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    e.is::<rustls::Error>()
        || e.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref).is_some_and(|inner| is_tls(inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uri_keeps_path_and_query() {
        let pool = crate::config::PoolConfig {
            max_idle_per_host: 1,
            idle_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        };
        let client = Arc::new(UpstreamClient::new(None, pool, &Default::default()).unwrap());
        let u = Upstream::new(&Url::parse("http://127.0.0.1:8081").unwrap(), client.clone()).unwrap();
        let pq = PathAndQuery::from_static("/orders/1?x=1");
        assert_eq!(u.uri(Some(&pq)).unwrap().to_string(), "/orders/1?x=1");
        assert_eq!(u.uri(None).unwrap().to_string(), "/");
        let b = Upstream::new(&Url::parse("https://api.example.com/base/").unwrap(), client.clone()).unwrap();
        assert_eq!(b.uri(Some(&pq)).unwrap().to_string(), "/base/orders/1?x=1");
        assert_eq!(b.uri(None).unwrap().to_string(), "/base/");
        // Routes naming one backend share its pool; another backend has its own.
        let again = Upstream::new(&Url::parse("http://127.0.0.1:8081/other").unwrap(), client).unwrap();
        assert!(Arc::ptr_eq(&u.pool, &again.pool));
        assert!(!Arc::ptr_eq(&u.pool, &b.pool));
    }
}
