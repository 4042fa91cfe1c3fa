//! The request path, top to bottom: check the target → match → extract →
//! validate (inbound check, required scopes) → exchange (cache) → rewrite
//! and forward → on a backend `invalid_token`: evict, and send a bodiless
//! idempotent request again with a fresh token → log. A front proxy's
//! check (`authz.rs`, `grpc_authz.rs`) takes the same phases up to the
//! exchange (`authorize`) and answers with the credential instead of
//! forwarding (`check`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use hyper::body::Incoming;

use super::bearer;
use super::forward::{Forwarder, FreshNonce, Rewrite};
use super::metadata::Documents;
use super::outbound::{bound, credential, refused, Replay};
use super::routes::{Route, RouteAuth, RouteTable};
use super::target::{self, Authority};
use super::{caller, credentials, headers, ids};
use super::{Body, RequestBody};
use crate::auth::{DpopInbound, Inbound};
use crate::error::GatewayError;
use crate::exchange::cache::{Entry, Key};
use crate::exchange::client::AsClient;
use crate::exchange::{ExchangeError, Exchanger, Fingerprint, Origin, TxnRequest};
use crate::metrics::RouteMetrics;
use crate::otel::{RequestAttrs, RequestSpan, Tracer};
use crate::telemetry::access::{self, AccessLine};
use crate::telemetry::{clip, MAX_LOGGED_METHOD, MAX_LOGGED_PATH};

/// Everything that changes with a configuration reload.
pub struct Runtime {
    pub routes: RouteTable,
    /// The inbound check of `auth: exchange` routes, when configured.
    pub inbound: Option<Arc<Inbound>>,
    /// Callers' DPoP proofs on `auth: exchange` routes (`inbound.dpop`, not off).
    pub dpop: Option<Arc<DpopInbound>>,
    /// The authorization servers by name (endpoints, once discovered).
    pub servers: BTreeMap<String, Arc<AsClient>>,
    /// RFC 9728 documents of routes with `resource_metadata`.
    pub metadata: Documents,
}

/// The gateway: shared by every connection.
pub struct Gateway {
    /// Read once per request without a lock; swapped whole by a reload.
    runtime: ArcSwap<Runtime>,
    pub exchanger: Exchanger,
    forwarder: Forwarder,
    unmatched: RouteMetrics,
    /// OpenTelemetry export (`tracing.otlp`); none: no span is made.
    tracer: Option<Tracer>,
}

/// What the access line reports about one request.
pub(super) struct Trace {
    /// `x-request-id`: the caller's, or generated.
    pub(super) request_id: HeaderValue,
    /// The W3C trace id of the caller's `traceparent`.
    trace_id: Option<[u8; 32]>,
    /// From sending to the backend to its answer's head (the last send).
    upstream_time: Option<Duration>,
    route: Option<Arc<Route>>,
    pub(super) fingerprint: Option<Fingerprint>,
    cache: Option<bool>,
    exchange_time: Option<Duration>,
    evicted: bool,
    /// Sent again with a fresh token after the backend refused the first.
    retried: bool,
    /// The caller's token is in the method or the target: log neither.
    pub(super) redact: bool,
    /// The request's span, when tracing is on.
    pub(super) span: Option<RequestSpan>,
    /// On an exchange route with `inbound.dpop`: the check (for the
    /// challenges of a `401`) and whether the caller used DPoP.
    pub(super) dpop: Option<(Arc<DpopInbound>, bool)>,
}

/// The original request: as the proxy listener received it, or as a
/// front proxy's check describes it.
pub(super) struct Original<'a> {
    pub method: &'a Method,
    /// Origin-form: path and query.
    pub uri: &'a Uri,
    /// Checked (`proxy::target`); `None` only for HTTP/1.0 without `Host`.
    pub authority: Option<&'a Authority>,
    pub headers: &'a HeaderMap,
    /// `Some(declared length, at least)` when a body follows.
    pub body: Option<u64>,
    pub via: Via,
}

/// Who forwards the request, and what it removes on tokex's word.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// tokex: it removes and replaces the headers itself.
    Proxy,
    /// A front proxy that removes the headers tokex names (Envoy).
    Removing,
    /// A front proxy that removes nothing on tokex's word (nginx, Traefik).
    Front,
}

/// An exchanged credential's cache key and the subject token's SHA-256.
type Exchanged = (Key, [u8; 32]);

/// What phases 1 to 4 decided.
struct Authorized<'r> {
    route: &'r Arc<Route>,
    /// The credential, and for an exchanged one its cache key and the
    /// subject token's SHA-256.
    token: Option<(Arc<Entry>, Option<Exchanged>)>,
    /// The caller's token, when a body follows that must be scanned for it.
    caller_token: Option<String>,
    /// The subject's `sub` from the introspection answer (revocation index).
    introspected: Option<Arc<str>>,
}

impl Gateway {
    pub fn new(
        runtime: Runtime,
        exchanger: Exchanger,
        forwarder: Forwarder,
        unmatched: RouteMetrics,
        tracer: Option<Tracer>,
    ) -> Self {
        Gateway { runtime: ArcSwap::from_pointee(runtime), exchanger, forwarder, unmatched, tracer }
    }

    pub fn tracer(&self) -> Option<&Tracer> {
        self.tracer.as_ref()
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Publishes a new configuration; requests in flight keep the old one.
    pub fn replace(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(runtime));
    }

    async fn serve(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        let uri = req.uri().clone(); // cheap: shares the request's bytes
        let mut trace = self.trace(&method, &uri, req.headers());
        let runtime = self.runtime();
        let result = self.process(&runtime, req, peer, &mut trace).await;
        self.finish(started, (&method, &uri), peer, trace, result)
    }

    /// A front proxy's check (`authz`, SPEC §8): phases 1 to 4 on the
    /// request it describes, and no forwarding. Allowed: `allow` writes the
    /// answer from the route and its credential; refused: the proxy-mode
    /// answer. `described` is an error when the check does not say what
    /// the original request was; `check` is then what is logged.
    pub(super) async fn check(
        &self,
        described: Result<Original<'_>, GatewayError>,
        check: (&Method, &Uri, &HeaderMap),
        peer: SocketAddr,
        allow: impl FnOnce(&Route, Option<(&HeaderName, HeaderValue)>) -> Response<Body>,
    ) -> Response<Body> {
        let started = Instant::now();
        let (method, uri, headers) = match &described {
            Ok(o) => (o.method, o.uri, o.headers),
            Err(_) => check,
        };
        let mut trace = self.trace(method, uri, headers);
        let result = match described {
            Ok(original) => {
                let runtime = self.runtime();
                self.authorize(&runtime, &original, peer, &mut trace).await.and_then(|a| {
                    // A DPoP-bound token needs a proof per request to the
                    // backend, which a front proxy does not sign.
                    if a.token.as_ref().is_some_and(|(entry, _)| bound(entry).is_some()) {
                        return Err(GatewayError::Exchange(ExchangeError::Config(
                            "a DPoP-bound token cannot be handed to a front proxy (it signs no proofs)".into(),
                        )));
                    }
                    let credential = a.token.as_ref().and_then(|(entry, _)| credential(a.route, entry));
                    Ok(allow(a.route, credential))
                })
            }
            Err(e) => Err(e),
        };
        self.finish(started, (method, uri), peer, trace, result)
    }

    /// What the access line will report, started from the request head.
    fn trace(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Trace {
        // A request line that holds the caller's token is never logged.
        Trace {
            request_id: ids::request_id(headers),
            trace_id: crate::telemetry::trace_id(headers).and_then(|t| t.as_bytes().try_into().ok()),
            upstream_time: None,
            route: None,
            fingerprint: None,
            cache: None,
            exchange_time: None,
            evicted: false,
            retried: false,
            redact: credentials::bearer_in_request_line(method, uri, headers),
            span: self.tracer.as_ref().map(|t| t.request(headers, method)),
            dpop: None,
        }
    }

    /// The answer (an error's, when it failed), its metrics, span and access line.
    fn finish(
        &self,
        started: Instant,
        (method, uri): (&Method, &Uri),
        peer: SocketAddr,
        mut trace: Trace,
        result: Result<Response<Body>, GatewayError>,
    ) -> Response<Body> {
        let (mut resp, error) = match result {
            Ok(resp) => (resp, None),
            Err(e) => {
                let scope = trace.route.as_ref().map_or("", |r| r.auth.scope());
                (e.to_response(scope).map(Body::Right), Some(e))
            }
        };
        // tokex's own refusals only: a backend's 401 is passed on as it is.
        if let (Some((dpop, used)), http::StatusCode::UNAUTHORIZED, true) =
            (&trace.dpop, resp.status(), error.is_some())
        {
            dpop.challenge(resp.headers_mut(), *used);
        }
        // RFC 9728: where the route's metadata is (the backend's 401s too).
        if let Some(c) = trace.route.as_ref().and_then(|r| r.challenge.as_ref()) {
            c.apply(resp.status(), resp.headers_mut(), error.is_some());
        }
        let elapsed = started.elapsed();
        let status = resp.status().as_u16();
        let metrics = trace.route.as_ref().map_or(&self.unmatched, |r| &r.metrics);
        metrics.request(status, elapsed);
        if let Some(hit) = trace.cache {
            metrics.cache(hit);
        }
        if let Some(GatewayError::Exchange(ExchangeError::RateLimited { per_client, .. })) = &error {
            metrics.rate_limited(*per_client);
        }
        if let Some(kind) = error.as_ref().and_then(GatewayError::upstream_kind) {
            metrics.upstream_failed(kind);
        }
        if !resp.headers().contains_key(ids::X_REQUEST_ID) {
            resp.headers_mut().insert(ids::X_REQUEST_ID, trace.request_id.clone());
        }
        let started_trace = match (&trace.trace_id, &trace.span) {
            (None, Some(span)) => Some(span.trace_id()),
            _ => None,
        };
        if let Some(span) = trace.span.take() {
            let path = if trace.redact { "(redacted)" } else { uri.path() };
            span.end(RequestAttrs {
                route: trace.route.as_ref().map_or("-", |r| r.name.as_str()),
                path,
                status,
                client: peer.ip(),
                cache: trace.cache,
                request_id: request_id_str(&trace.request_id),
            });
        }
        if tracing::enabled!(target: "tokex::access", tracing::Level::INFO) {
            let (method, path) = match trace.redact {
                true => (Cow::Borrowed("(redacted)"), Cow::Borrowed("(redacted)")),
                false => (clip(method.as_str(), MAX_LOGGED_METHOD), clip(uri.path(), MAX_LOGGED_PATH)),
            };
            access::write(&AccessLine {
                client: peer.ip(),
                // A method is a token and a parsed path holds no space or
                // control character, so neither can forge a field.
                method: &method,
                path: &path,
                route: trace.route.as_ref().map_or("-", |r| r.name.as_str()),
                status,
                latency_us: micros(elapsed),
                upstream_us: trace.upstream_time.map(micros),
                cache: match trace.cache {
                    Some(true) => "hit",
                    Some(false) => "miss",
                    None => "-",
                },
                exchange_us: trace.exchange_time.map(micros),
                token: trace.fingerprint.map(|f| f.0),
                // Checked: visible ASCII without quote or space.
                request_id: request_id_str(&trace.request_id),
                trace_id: trace
                    .trace_id
                    .as_ref()
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .or(started_trace.as_deref()),
                evicted: trace.evicted,
                retried: trace.retried,
                error: error.as_ref().map(|e| e.reason()),
            });
        }
        resp
    }

    async fn process(
        &self,
        runtime: &Runtime,
        req: Request<Incoming>,
        peer: SocketAddr,
        trace: &mut Trace,
    ) -> Result<Response<Body>, GatewayError> {
        // 0. The target: exactly one valid authority, no userinfo (RFC 9112 §3.2).
        let authority = target::authority(req.method(), req.version(), req.uri(), req.headers())
            .map_err(GatewayError::BadTarget)?;
        // RFC 9728 documents, before any route (a catch-all would take them).
        let host = authority.as_ref().map(Authority::host);
        if let Some((route, doc)) = runtime.metadata.find(req.method(), req.uri().path(), host) {
            trace.route = Some(route.clone());
            return Ok(doc);
        }
        let body = hyper::body::Body::size_hint(req.body()).lower();
        let original = Original {
            method: req.method(),
            uri: req.uri(),
            authority: authority.as_ref(),
            headers: req.headers(),
            body: (!hyper::body::Body::is_end_stream(req.body())).then_some(body),
            via: Via::Proxy,
        };
        // 1. to 4.
        let Authorized { route, token, caller_token, introspected } =
            self.authorize(runtime, &original, peer, trace).await?;
        let route = &**route;
        let dpop = token.as_ref().and_then(|(entry, _)| bound(entry));
        let replay = match &token {
            Some((_, Some(_))) if route.retry_on_invalid_token => Replay::of(&req),
            Some(_) if dpop.is_some() => Replay::of(&req),
            _ => None,
        };

        // 5. Rewrite and forward with the exchanged token (and, for a
        // DPoP-bound one, a proof signed for this request).
        let request_id = trace.request_id.clone();
        let rewrite = |credential, dpop, caller_token| Rewrite {
            authority: authority.as_ref(),
            credential,
            dpop,
            remove: &route.remove_headers,
            caller_token,
            max_body: route.max_body_bytes,
            request_id: &request_id,
            traceparent: None,
        };
        let first =
            rewrite(token.as_ref().and_then(|(entry, _)| credential(route, entry)), dpop, caller_token.as_deref());
        let req = req.map(RequestBody::Left);
        let mut resp = self.send(route, req, peer, first, trace).await?;
        // A backend that wants a DPoP nonce (its answer gave one): the same
        // token once more, with a proof that carries it.
        let new_nonce = resp.extensions().get::<FreshNonce>().is_some();
        if let (Some(dpop), Some(again), true) =
            (dpop, &replay, new_nonce && headers::asks_for_dpop_nonce(resp.status(), resp.headers()))
        {
            let credential = token.as_ref().and_then(|(entry, _)| credential(route, entry));
            drop(resp);
            resp =
                self.send(route, again.clone().request(), peer, rewrite(credential, Some(dpop), None), trace).await?;
        }

        // 6. A backend that calls the token invalid gets a fresh one next
        // time — or at once, for a request that can be sent again.
        let Some((entry, Some((key, subject_hash)))) = &token else { return Ok(resp) };
        if !refused(&resp) {
            return Ok(resp);
        }
        self.exchanger.evict(key, entry).await;
        if let RouteAuth::Exchange(policy) = &route.auth {
            self.exchanger.forget_shared(policy, subject_hash).await;
        }
        trace.evicted = true;
        let (Some(replay), RouteAuth::Exchange(policy), true) = (replay, &route.auth, route.retry_on_invalid_token)
        else {
            return Ok(resp);
        };
        let dpop_on = runtime.dpop.is_some();
        let Ok((subject, proven)) = bearer::extract_with_dpop(&replay.headers, dpop_on) else { return Ok(resp) };
        // The fresh token, or else the backend's answer stands.
        let origin =
            Origin { client: peer.ip(), request_id: request_id_str(&request_id), sub: introspected.as_deref(), proven };
        let lookup = match self.exchanger.token(policy, subject, subject_hash, *key, origin).await {
            Ok(lookup) => lookup,
            Err(_) => return Ok(resp),
        };
        trace.retried = true;
        trace.exchange_time = match (trace.exchange_time, lookup.exchange_time) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        drop(resp);
        let again = rewrite(credential(route, &lookup.entry), bound(&lookup.entry), None);
        let resp = self.send(route, replay.request(), peer, again, trace).await?;
        let refused_again = refused(&resp);
        if refused_again {
            self.exchanger.evict(key, &lookup.entry).await;
            self.exchanger.forget_shared(policy, subject_hash).await;
        }
        route.metrics.token_retry(refused_again);
        Ok(resp)
    }

    /// Phases 1 to 4: match → extract → validate → exchange (cache first).
    async fn authorize<'r>(
        &self,
        runtime: &'r Runtime,
        req: &Original<'_>,
        peer: SocketAddr,
        trace: &mut Trace,
    ) -> Result<Authorized<'r>, GatewayError> {
        // 1. Match, on the path without segment parameters.
        let host = req.authority.map(Authority::host);
        let path = headers::without_params(req.uri.path());
        let route = runtime.routes.find(req.method, &path, host, req.headers).ok_or(GatewayError::NoRoute)?;
        trace.route = Some(route.clone());
        if headers::has_dot_segments(req.uri.path()) {
            return Err(GatewayError::BadPath);
        }
        // A body declared longer than the route allows: refused before any
        // exchange or backend call (one sent longer is cut off while it streams).
        if route.max_body_bytes.is_some_and(|max| req.body.unwrap_or(0) > max) {
            return Err(GatewayError::BodyTooLarge);
        }
        if credentials::url_names_token(req.uri) {
            return Err(GatewayError::InvalidRequest("an access_token parameter in the URL is refused"));
        }
        // A front proxy that is not told to overwrite the route's forward
        // header would pass on the caller's own value; and a backend may
        // read `x_token` as `x-token`, whoever forwards.
        if req.via != Via::Proxy
            && route.forward_header != AUTHORIZATION
            && req.headers.contains_key(&route.forward_header)
        {
            return Err(GatewayError::InvalidRequest("the request already carries the route's forward header"));
        }
        if headers::aliases(&route.forward_header, req.headers) {
            return Err(GatewayError::InvalidRequest("a header that backends may read as the route's forward header"));
        }

        // 2. Extract the caller's token, 3. validate it (inbound check and
        // required scopes: a refused token never reaches the AS) and
        // 4. exchange it (cache first).
        let mut caller_token = None;
        let mut introspected = None;
        let token = match &route.auth {
            RouteAuth::None => None,
            RouteAuth::Exchange(policy) => {
                let mut caller = caller::caller(runtime, route, req, trace).await?;
                if req.body.is_some() {
                    caller_token = Some(caller.subject.to_owned());
                }
                introspected = caller.sub.take();
                let key = policy.key(&caller.hash);
                let origin = Origin {
                    client: peer.ip(),
                    request_id: request_id_str(&trace.request_id),
                    sub: introspected.as_deref(),
                    proven: caller.proof.is_some(),
                };
                let child = trace.span.as_ref().map(|s| s.child("token exchange"));
                let lookup = self.exchanger.token(policy, caller.subject, &caller.hash, key, origin).await;
                if let Some(mut child) = child {
                    child.set("tokex.as.server", policy.client.name.clone());
                    if let Ok(l) = &lookup {
                        child.set("tokex.cache", if l.hit { "hit" } else { "miss" }.to_owned());
                    }
                    child.end(None, lookup.as_ref().err().map(ExchangeError::reason));
                }
                let lookup = lookup?;
                trace.cache = Some(lookup.hit);
                trace.exchange_time = lookup.exchange_time;
                caller.accept(runtime.dpop.as_ref())?;
                Some((lookup.entry, Some((key, caller.hash))))
            }
            // A Txn-Token for this request: asked for every time, never cached.
            RouteAuth::Transaction(txn) => {
                let caller = caller::caller(runtime, route, req, trace).await?;
                if req.body.is_some() {
                    caller_token = Some(caller.subject.to_owned());
                }
                let at = TxnRequest {
                    client: peer.ip(),
                    request_id: request_id_str(&trace.request_id),
                    dpop: caller.proof.is_some(),
                    method: req.method.as_str(),
                    path: &headers::without_params(req.uri.path()),
                };
                let child = trace.span.as_ref().map(|s| s.child("transaction token"));
                let lookup = self.exchanger.transaction_token(txn, caller.subject, at).await;
                if let Some(mut child) = child {
                    child.set("tokex.as.server", txn.client.name.clone());
                    child.end(None, lookup.as_ref().err().map(ExchangeError::reason));
                }
                let lookup = lookup?;
                trace.exchange_time = lookup.exchange_time;
                caller.accept(runtime.dpop.as_ref())?;
                Some((lookup.entry, None))
            }
            // Egress: whatever the caller sent is dropped by the forwarder.
            RouteAuth::ClientCredentials(machine) => {
                let lookup = self.exchanger.machine_token(machine, Some(request_id_str(&trace.request_id))).await?;
                trace.cache = Some(lookup.hit);
                trace.exchange_time = lookup.exchange_time;
                Some((lookup.entry, None))
            }
        };
        Ok(Authorized { route, token, caller_token, introspected })
    }

    /// Forwards to the route's backend, timing the wait for its answer.
    async fn send(
        &self,
        route: &Route,
        req: Request<RequestBody>,
        peer: SocketAddr,
        mut rewrite: Rewrite<'_>,
        trace: &mut Trace,
    ) -> Result<Response<Body>, GatewayError> {
        // Validation gives every route an upstream when the proxy listener is on.
        let upstream = route.upstream.as_ref().ok_or(GatewayError::NoRoute)?;
        let child = trace.span.as_ref().map(|s| s.child("upstream"));
        rewrite.traceparent = child.as_ref().map(|c| c.traceparent());
        let sent = Instant::now();
        let result = self.forwarder.forward(upstream, req, peer, rewrite, route.timeout).await;
        if let Some(mut child) = child {
            child.set("server.address", upstream.authority().to_owned());
            match &result {
                Ok(resp) => child.end(Some(resp.status().as_u16()), None),
                Err(e) => child.end(None, Some(e.reason())),
            }
        }
        let resp = result?;
        let waited = sent.elapsed();
        route.metrics.upstream_answered(waited);
        trace.upstream_time = Some(waited);
        Ok(resp)
    }
}

/// A request id as text: [`ids::request_id`] returns visible ASCII only.
fn request_id_str(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("-")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl super::server::Handler for Gateway {
    type Body = Body;

    fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        self.serve(req, peer)
    }
}
