//! Connections to backends, on hyper's connection API: one pool per backend
//! (scheme, host and port), with its idle HTTP/1.1 connections kept per
//! worker thread, so a request takes and gives back a connection under a
//! lock no other thread touches: no shared map lookup, no task per request.
//! An https backend that offers h2 by ALPN gets one shared HTTP/2 connection
//! instead. Upgrade requests (WebSocket) use HTTP/1.1 only: an idle
//! connection, or a new one that offers no h2 (with or without `upstream_tls`).
//!
//! A connection goes back to its pool when its answer's body has ended
//! ([`Lease`]); idle ones are closed after `idle_timeout` by a sweeper task
//! per pool (nothing on the request path). A request the backend never saw
//! (a reused connection closed under it) is sent again on another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower_service::Service;

use super::body_scan::Guarded;
use super::reload::FileBacked;
use super::tls::{self, Connect};
use super::RequestBody;
use crate::config::{PoolConfig, UpstreamTlsConfig};
use crate::metrics::Counters;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Https = HttpsConnector<HttpConnector>;
type Io = MaybeHttpsStream<TokioIo<TcpStream>>;
/// What is sent to a backend: the caller's body, checked as it streams.
pub type Outgoing = Guarded<RequestBody>;

/// Opens a backend connection with the TLS settings of the moment.
#[derive(Clone)]
pub enum Connector {
    Fixed(Https),
    /// The route's TLS settings, rebuilt when its CA or client certificate
    /// files change (shared by its two connectors), and how to connect.
    Reloading {
        tls: Arc<FileBacked<rustls::ClientConfig>>,
        connect: Connect,
        server_name: Option<Arc<str>>,
    },
}

impl Connector {
    async fn connect(&self, dest: Uri) -> Result<Io, BoxError> {
        match self {
            Connector::Fixed(c) => c.clone().call(dest).await,
            Connector::Reloading { tls, connect, server_name } => {
                tls::connector(&tls.get(), connect.clone(), server_name.as_deref()).call(dest).await
            }
        }
    }
}

/// Why a backend did not answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Opening the connection failed (TCP, TLS or the HTTP/2 handshake).
    #[error("connecting to the backend")]
    Connect(#[source] BoxError),
    /// The connection failed while the request was under way.
    #[error("sending to the backend")]
    Send(#[source] hyper::Error),
}

/// The connectors and pools of one TLS setting.
pub struct UpstreamClient {
    /// What it was built from (a reload keeps a client whose settings did not change).
    pub settings: (Option<UpstreamTlsConfig>, PoolConfig),
    /// Offers h2 by ALPN to https backends.
    any: Connector,
    /// HTTP/1.1 only (no h2 offered), for upgrades.
    h1: Connector,
    /// One pool per backend, shared by the routes that name it.
    /// (Weak: a pool no route names any more goes, with its connections.)
    hosts: Mutex<HashMap<(bool, Authority), Weak<HostPool>>>,
}

impl UpstreamClient {
    /// `tls`: the route's name and its `upstream_tls`, or none (web PKI).
    pub fn new(tls: Option<(&str, &UpstreamTlsConfig)>, pool: PoolConfig, reloads: &Counters) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(pool.connect_timeout));
        let files = match tls {
            Some((route, cfg)) => {
                Some(Arc::new(tls::upstream(format!("routes[{route}].upstream_tls"), cfg, reloads.clone())?))
            }
            None => None,
        };
        let server_name: Option<Arc<str>> = tls.and_then(|(_, cfg)| cfg.server_name.as_deref()).map(Arc::from);
        let connector = |h2: bool| -> Connector {
            let connect = Connect { http: http.clone(), h2 };
            match &files {
                None => Connector::Fixed(tls::default_connector(connect)),
                Some(files) => Connector::Reloading { tls: files.clone(), connect, server_name: server_name.clone() },
            }
        };
        Ok(UpstreamClient {
            settings: (tls.map(|(_, t)| t.clone()), pool),
            any: connector(true),
            h1: connector(false),
            hosts: Mutex::new(HashMap::new()),
        })
    }

    /// The pool of the backend at `scheme://authority` (made on first use).
    pub fn host(&self, scheme: &Scheme, authority: &Authority) -> Result<Arc<HostPool>, String> {
        let https = *scheme == Scheme::HTTPS;
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = hosts.get(&(https, authority.clone())).and_then(Weak::upgrade) {
            return Ok(pool);
        }
        hosts.retain(|_, pool| pool.strong_count() > 0);
        let dest = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("upstream {authority}: {e}"))?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| format!("upstream {authority}: {e}"))?;
        let pool = self.settings.1;
        let shards = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_SHARDS);
        let made = Arc::new(HostPool {
            dest,
            host,
            any: self.any.clone(),
            h1: self.h1.clone(),
            idle: (0..shards).map(|_| Mutex::new(Vec::new())).collect(),
            max_idle: pool.max_idle_per_host,
            idle_timeout: pool.idle_timeout,
            h2: Mutex::new(None),
            h2_seen: AtomicBool::new(false),
            sweeping: AtomicBool::new(false),
        });
        hosts.insert((https, authority.clone()), Arc::downgrade(&made));
        Ok(made)
    }
}

/// Idle-connection lists per backend, at most (one per worker thread).
const MAX_SHARDS: usize = 64;

/// An idle HTTP/1.1 connection and when it became idle.
struct Idle {
    tx: http1::SendRequest<Outgoing>,
    since: Instant,
}

/// The connections to one backend.
pub struct HostPool {
    /// `scheme://authority/`: what the connector is called with.
    dest: Uri,
    /// `Host` for HTTP/1.1 requests that have none.
    host: HeaderValue,
    any: Connector,
    h1: Connector,
    /// Idle HTTP/1.1 connections, per worker thread (most recent last).
    idle: Box<[Mutex<Vec<Idle>>]>,
    /// Idle connections kept per worker thread at most.
    max_idle: usize,
    idle_timeout: Duration,
    /// The shared HTTP/2 connection, once the backend chose h2.
    h2: Mutex<Option<http2::SendRequest<Outgoing>>>,
    /// The backend has chosen h2 at least once (so `h2` is worth a look).
    h2_seen: AtomicBool,
    /// The idle sweeper runs.
    sweeping: AtomicBool,
}

/// This thread's idle list index.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SHARD.with(|s| *s)
}

/// How a request fared on an HTTP/2 connection.
enum OnH2 {
    Sent(Response<Incoming>),
    /// Refused before it was sent (the connection was going away).
    Unsent(Request<Outgoing>, hyper::Error),
}

enum Fresh {
    H1(http1::SendRequest<Outgoing>),
    H2(http2::SendRequest<Outgoing>),
}

impl HostPool {
    /// Sends `req` (origin-form target) on an idle connection or a new one;
    /// the [`Lease`] gives an HTTP/1.1 connection back once the answer's
    /// body has ended. `upgrade`: the request asks for a protocol upgrade.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Outgoing>,
        upgrade: bool,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        if !upgrade && self.h2_seen.load(Ordering::Relaxed) {
            if let Some(tx) = self.shared_h2() {
                match self.send_h2(tx, req).await? {
                    OnH2::Sent(resp) => return Ok((resp, None)),
                    // The connection was going away (`GOAWAY`): another one, below.
                    OnH2::Unsent(unsent, _) => req = unsent,
                }
            }
        }
        // HTTP/1.1 needs a `Host` (HTTP/2 takes the target's authority).
        let added_host = !req.headers().contains_key(HOST);
        if added_host {
            req.headers_mut().insert(HOST, self.host.clone());
        }
        // Idle connections first; one the backend closed meanwhile is
        // skipped, and a request it refused unseen goes on the next.
        while let Some(mut tx) = self.take_idle() {
            if tx.ready().await.is_err() {
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Some(Lease { pool: self.clone(), tx }))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::Send(e.into_error())),
                },
            }
        }
        match self.connect(upgrade).await? {
            Fresh::H1(mut tx) => match tx.send_request(req).await {
                Ok(resp) => Ok((resp, Some(Lease { pool: self.clone(), tx }))),
                Err(e) => Err(SendError::Send(e)),
            },
            Fresh::H2(tx) => {
                if added_host {
                    req.headers_mut().remove(HOST);
                }
                match self.send_h2(tx, req).await? {
                    OnH2::Sent(resp) => Ok((resp, None)),
                    OnH2::Unsent(_, e) => Err(SendError::Send(e)),
                }
            }
        }
    }

    /// On an HTTP/2 connection, which takes the scheme and authority from
    /// the target; a request refused unsent comes back in origin form.
    async fn send_h2(
        &self,
        mut tx: http2::SendRequest<Outgoing>,
        mut req: Request<Outgoing>,
    ) -> Result<OnH2, SendError> {
        let pq = req.uri().path_and_query().cloned();
        let mut parts = self.dest.clone().into_parts();
        parts.path_and_query = pq.clone();
        // The parts of a valid URI: a failure would be a bug, answered 502.
        *req.uri_mut() = Uri::from_parts(parts).map_err(|e| SendError::Connect(e.into()))?;
        match tx.try_send_request(req).await {
            Ok(resp) => Ok(OnH2::Sent(resp)),
            Err(mut e) => match e.take_message() {
                Some(mut unsent) => {
                    *unsent.uri_mut() = pq.map_or_else(|| Uri::from_static("/"), Uri::from);
                    Ok(OnH2::Unsent(unsent, e.into_error()))
                }
                None => Err(SendError::Send(e.into_error())),
            },
        }
    }

    /// The HTTP/2 connection, while it is open.
    fn shared_h2(&self) -> Option<http2::SendRequest<Outgoing>> {
        let mut slot = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(tx) if !tx.is_closed() => Some(tx.clone()),
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }

    /// The most recently used idle connection of this thread that is still
    /// fresh; older ones are dropped (which closes them).
    fn take_idle(&self) -> Option<http1::SendRequest<Outgoing>> {
        let mut idle = self.shard().lock().unwrap_or_else(|p| p.into_inner());
        while let Some(i) = idle.pop() {
            if i.since.elapsed() < self.idle_timeout && !i.tx.is_closed() {
                return Some(i.tx);
            }
        }
        None
    }

    fn shard(&self) -> &Mutex<Vec<Idle>> {
        &self.idle[shard_index() % self.idle.len()]
    }

    /// Keeps `tx` for the next request (the oldest idle one goes when the
    /// list is full).
    fn put(self: &Arc<Self>, tx: http1::SendRequest<Outgoing>) {
        if self.max_idle == 0 || tx.is_closed() {
            return;
        }
        {
            let mut idle = self.shard().lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() >= self.max_idle {
                idle.remove(0);
            }
            idle.push(Idle { tx, since: Instant::now() });
        }
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            tokio::spawn(sweep(Arc::downgrade(self), self.idle_timeout));
        }
    }

    async fn connect(&self, upgrade: bool) -> Result<Fresh, SendError> {
        let connector = if upgrade { &self.h1 } else { &self.any };
        let io = connector.connect(self.dest.clone()).await.map_err(SendError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|e| SendError::Connect(e.into()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                }
            });
            // Shared by the requests to come, unless nothing is to be kept.
            if self.max_idle > 0 {
                *self.h2.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
                self.h2_seen.store(true, Ordering::Relaxed);
            }
            return Ok(Fresh::H2(tx));
        }
        let (tx, conn) = http1::handshake(io).await.map_err(|e| SendError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Fresh::H1(tx))
    }
}

/// Closes idle connections older than `idle_timeout` (and closed ones), for
/// as long as the pool lives.
async fn sweep(pool: Weak<HostPool>, idle_timeout: Duration) {
    let every = (idle_timeout / 2).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        for shard in pool.idle.iter() {
            let mut idle = shard.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|i| i.since.elapsed() < idle_timeout && !i.tx.is_closed());
        }
    }
}

/// An HTTP/1.1 connection lent to one request: back to its pool when the
/// answer's body has ended, closed when dropped before.
pub struct Lease {
    pool: Arc<HostPool>,
    tx: http1::SendRequest<Outgoing>,
}

impl Lease {
    /// The answer's body has ended. The connection goes back once it can
    /// take a request: at once usually; while the request's own body is
    /// still being sent (a backend that answered early), after that, within
    /// `idle_timeout`, or not at all. A connection in the idle list is never
    /// one another request would have to wait for.
    pub fn release(self) {
        let Lease { pool, mut tx } = self;
        if tx.is_ready() {
            pool.put(tx);
            return;
        }
        let wait = pool.idle_timeout;
        tokio::spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(wait, tx.ready()).await {
                pool.put(tx);
            }
        });
    }
}
